//! A layer-2 lab in network namespaces: three lb-node members and a client
//! on one bridge, the client watching ARP with tcpdump and asking for the
//! VIP with `arp-probe` (broadcast, every 50 ms). Used by the L2 test and the
//! failover benchmark.
//!
//! ```text
//!   <p>-m1 (10.77.0.1) ─┐
//!   <p>-m2 (10.77.0.2) ─┼─ br0 in <p>-sw ─ <p>-c (10.77.0.100: tcpdump, arping)
//!   <p>-m3 (10.77.0.3) ─┘            VIP 10.77.0.50
//! ```
//!
//! Everything stays inside the namespaces this lab creates; they are
//! deleted on drop. Needs root, iproute2 and tcpdump.

use std::collections::BTreeMap;
use std::io::{BufRead as _, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context as _, bail};

use crate::netns::{in_ns, run};
use crate::{Member, free_port};

/// The VIPs of the lab's three services (one each, so that every member
/// owns one).
pub const VIPS: [&str; 3] = ["10.77.0.50", "10.77.0.51", "10.77.0.52"];
pub const VIP: &str = VIPS[0];
/// An IPv6 VIP of a fourth service (on-link in fd00:77::/64).
pub const VIP6: &str = "fd00:77::50";

/// One ARP frame the client saw.
#[derive(Debug, Clone, PartialEq)]
pub struct ArpSeen {
    /// Seconds since the epoch (tcpdump's clock).
    pub at: f64,
    pub src_mac: String,
    /// The VIP it is about.
    pub vip: String,
    /// A gratuitous ARP (request or reply naming the VIP as sender).
    pub gratuitous: bool,
    /// An answer to a question: "Reply VIP is-at MAC" not broadcast.
    pub reply: bool,
}

/// One ARP frame of tcpdump's `-n -e -tt` output, when it is about one
/// of `addresses`.
fn parse_tcpdump(line: &str, addresses: &[String]) -> Option<ArpSeen> {
    // 1700000000.123456 02:aa:..:01 > ff:ff:ff:ff:ff:ff, ethertype ARP (0x0806), length 42: Request who-has 10.77.0.50 tell 10.77.0.50, length 28
    let mut words = line.split_whitespace();
    let at: f64 = words.next()?.parse().ok()?;
    let src_mac = words.next()?.to_owned();
    words.next()?; // >
    let dst = words.next()?.trim_end_matches(',').to_owned();
    let rest = line.split_once(": ")?.1;
    let vip = addresses.iter().find(|v| {
        rest.contains(&format!("tell {v},")) || rest.starts_with(&format!("Reply {v} is-at"))
    })?;
    let gratuitous = (rest.starts_with("Request who-has")
        && rest.contains(&format!("who-has {vip} tell {vip},")))
        || (rest.starts_with("Reply") && dst == "ff:ff:ff:ff:ff:ff");
    let reply = rest.starts_with("Reply") && dst != "ff:ff:ff:ff:ff:ff";
    Some(ArpSeen {
        at,
        src_mac,
        vip: (*vip).to_owned(),
        gratuitous,
        reply,
    })
}

/// tcpdump watching ARP on an interface of a namespace: every frame about
/// the given addresses, with its time and sender. Stopped when dropped.
#[derive(Debug)]
pub struct ArpCapture {
    child: Child,
    pub seen: Arc<Mutex<Vec<ArpSeen>>>,
}

impl Drop for ArpCapture {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl ArpCapture {
    pub fn start(ns: &str, interface: &str, addresses: &[&str]) -> anyhow::Result<ArpCapture> {
        let mut child = Command::new("ip")
            .args(["netns", "exec", ns, "tcpdump"])
            // Stay root (no `tcpdump` user in the kernel lab's guest).
            .args([
                "-Z", "root", "-i", interface, "-l", "-n", "-e", "-tt", "arp",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("cannot start tcpdump (the test command installs it)")?;
        let stdout = child.stdout.take().context("tcpdump stdout")?;
        let seen: Arc<Mutex<Vec<ArpSeen>>> = Arc::default();
        let sink = seen.clone();
        let addresses: Vec<String> = addresses.iter().map(|a| (*a).to_owned()).collect();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(s) = parse_tcpdump(&line, &addresses) {
                    sink.lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .push(s);
                }
            }
        });
        // tcpdump needs a moment before it captures.
        std::thread::sleep(Duration::from_millis(300));
        Ok(ArpCapture { child, seen })
    }

    pub fn seen(&self) -> Vec<ArpSeen> {
        self.seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// The first gratuitous ARP for `address` at or after `since` from a
    /// MAC that `member` maps to a member other than `not`: (member, time).
    pub fn garp(
        &self,
        address: &str,
        since: f64,
        member: impl Fn(&str) -> Option<u64>,
        not: Option<u64>,
    ) -> Option<(u64, f64)> {
        self.seen().into_iter().find_map(|s| {
            let m = member(&s.src_mac)?;
            (s.gratuitous && s.vip == address && s.at >= since && Some(m) != not)
                .then_some((m, s.at))
        })
    }
}

pub fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Milliseconds since the Unix time `t0`.
pub fn since_ms(t0: f64) -> u64 {
    ((unix_now() - t0) * 1000.0).max(0.0) as u64
}

/// The lab: namespaces, members, capture.
#[derive(Debug)]
pub struct Lab {
    prefix: String,
    dir: tempfile::TempDir,
    pub members: BTreeMap<u64, Member>,
    /// The logs of members that stopped or were killed before a restart
    /// (`DRILL_LOGS` prints them too).
    pub past_logs: Vec<(u64, String)>,
    /// Member id by MAC address.
    pub macs: BTreeMap<String, u64>,
    capture: Option<ArpCapture>,
    arping: Option<Child>,
    admin_ports: BTreeMap<u64, u16>,
    peer_ports: BTreeMap<u64, u16>,
    /// The founding members' `cluster.member` list, which a joiner's
    /// config lists too (`start_joiner`).
    founders: String,
    /// Members' admin APIs (and metrics endpoints) listen on every address
    /// of their namespace (not only loopback), so that the client namespace
    /// reaches them at 10.77.0.N (the drills' writer and probes run there).
    pub admin_on_lan: bool,
    /// The members' `[dataplane]` section (empty: the memory dataplane).
    pub dataplane: String,
    /// The backends of the VIPs' services (port 8080).
    pub backends: Vec<&'static str>,
    /// Whether a fourth service has the IPv6 VIP (`VIP6`). The drills
    /// leave it out: three VIPs over three members is one each.
    pub ipv6_service: bool,
    /// The services file instead of the lab's VIPs' (a benchmark's table).
    pub services_file: Option<String>,
    /// Namespaces added with `add_host`, deleted on drop.
    hosts: Vec<String>,
    /// Each member's data directory on a loop-mounted disk of its own
    /// (`disks`), which a drill can freeze.
    pub loop_disks: bool,
    pub disks: BTreeMap<u64, crate::disk::LoopFs>,
    /// Disks replaced by a drill, under the new ones: unmounted last.
    pub failed_disks: Vec<crate::disk::LoopFs>,
}

impl Drop for Lab {
    fn drop(&mut self) {
        // Thawed first: a member blocked on a frozen disk cannot be killed.
        for d in self.disks.values() {
            let _ = d.thaw();
        }
        self.capture = None;
        if let Some(mut child) = self.arping.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.members.clear();
        for ns in ["m1", "m2", "m3", "c", "sw"] {
            let _ = run(&["ip", "netns", "del", &format!("{}-{ns}", self.prefix)]);
        }
        for ns in &self.hosts {
            let _ = run(&["ip", "netns", "del", ns]);
        }
    }
}

impl Lab {
    pub fn ns(&self, name: &str) -> String {
        format!("{}-{name}", self.prefix)
    }

    /// Builds the namespaces and starts the capture (members not yet).
    pub fn new(tag: &str) -> anyhow::Result<Lab> {
        let prefix = format!("lbt{}{tag}", std::process::id() % 100_000);
        let mut lab = Lab {
            prefix,
            dir: tempfile::tempdir()?,
            members: BTreeMap::new(),
            past_logs: Vec::new(),
            macs: BTreeMap::new(),
            capture: None,
            arping: None,
            admin_ports: BTreeMap::new(),
            peer_ports: BTreeMap::new(),
            founders: String::new(),
            admin_on_lan: false,
            dataplane: String::new(),
            backends: vec!["10.77.0.200"],
            ipv6_service: true,
            services_file: None,
            hosts: Vec::new(),
            loop_disks: false,
            disks: BTreeMap::new(),
            failed_disks: Vec::new(),
        };
        let sw = lab.ns("sw");
        run(&["ip", "netns", "add", &sw])?;
        in_ns(&sw, &["ip", "link", "add", "br0", "type", "bridge"])?;
        in_ns(&sw, &["ip", "link", "set", "br0", "up"])?;
        for (i, (name, ip)) in [
            ("m1", "10.77.0.1"),
            ("m2", "10.77.0.2"),
            ("m3", "10.77.0.3"),
            ("c", "10.77.0.100"),
        ]
        .into_iter()
        .enumerate()
        {
            let mac = lab.attach(&format!("p{i}"), name, ip)?;
            if name.starts_with('m') {
                lab.macs.insert(mac, (i + 1) as u64);
            }
        }
        Ok(lab)
    }

    /// Adds a host on the bridge: namespace `<prefix>-<name>` with address
    /// `ip` (/24, and fd00:77::<last octet>/64); deleted with the lab.
    pub fn add_host(&mut self, name: &str, ip: &str) -> anyhow::Result<()> {
        let port = format!("h{}", self.hosts.len());
        self.hosts.push(self.ns(name));
        self.attach(&port, name, ip)?;
        Ok(())
    }

    /// Creates namespace `name` joined to the bridge by switch port `port`;
    /// returns its MAC address.
    fn attach(&self, port: &str, name: &str, ip: &str) -> anyhow::Result<String> {
        let sw = self.ns("sw");
        let ns = self.ns(name);
        run(&["ip", "netns", "add", &ns])?;
        // The veth is created in the switch and one end moved over.
        in_ns(
            &sw,
            &[
                "ip", "link", "add", port, "type", "veth", "peer", "name", "eth0",
            ],
        )?;
        in_ns(&sw, &["ip", "link", "set", "eth0", "netns", &ns])?;
        in_ns(&sw, &["ip", "link", "set", port, "master", "br0", "up"])?;
        in_ns(&ns, &["ip", "link", "set", "lo", "up"])?;
        in_ns(
            &ns,
            &["ip", "addr", "add", &format!("{ip}/24"), "dev", "eth0"],
        )?;
        // IPv6 on the same segment, without duplicate address detection
        // (it would hold the address back for a second or two).
        let host = ip.rsplit('.').next().unwrap_or("0");
        in_ns(
            &ns,
            &[
                "ip",
                "addr",
                "add",
                &format!("fd00:77::{host}/64"),
                "dev",
                "eth0",
                "nodad",
            ],
        )?;
        in_ns(&ns, &["ip", "link", "set", "eth0", "up"])?;
        let out = Command::new("ip")
            .args(["netns", "exec", &ns, "cat", "/sys/class/net/eth0/address"])
            .output()?;
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    /// tcpdump in the client's namespace: a line per frame matching
    /// `filter`, with link-layer addresses and Unix times.
    fn client_capture(&self, filter: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.ns("c"), "tcpdump"])
            // Stay root (no `tcpdump` user in the kernel lab's guest).
            .args(["-Z", "root", "-i", "eth0", "-l", "-n", "-e", "-tt", filter]);
        c
    }

    /// Debugging: every TCP reset the client receives, with the MAC that
    /// sent it (which member), on standard output.
    pub fn watch_resets(&self) -> anyhow::Result<Child> {
        self.client_capture("tcp[tcpflags] & tcp-rst != 0")
            .stdout(Stdio::inherit())
            .stderr(Stdio::null())
            .spawn()
            .context("cannot start tcpdump")
    }

    /// Starts the client's capture of ARP and its questions for the VIPs.
    pub fn start_arp_watch(&mut self) -> anyhow::Result<()> {
        let lab = self;
        // The capture: every ARP frame the client sees, with its time.
        lab.capture = Some(ArpCapture::start(&lab.ns("c"), "eth0", &VIPS)?);
        // The client keeps asking, by broadcast, every 50 ms.
        lab.arping = Some(
            Command::new("ip")
                .args(["netns", "exec", &lab.ns("c")])
                .arg(crate::binary("arp-probe")?)
                .args(["eth0", "10.77.0.100", &VIPS.join(","), "50"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("cannot start arp-probe")?,
        );
        Ok(())
    }

    /// Writes the members' configs and starts them, announcing by L2
    /// with the default settings. `DRILL_FLOW_HANDOVER=0` turns the flow
    /// hand-over off (docs/announcement.md), to measure what it saves. In
    /// the kernel lab (`DRILL_EMULATED`, set by the lab's guest) the
    /// hand-over's probe waits 100 ms instead of 30: an emulated member
    /// took up to 30 ms to answer one.
    pub fn start_members(&mut self) -> anyhow::Result<()> {
        let mut extra = String::new();
        if std::env::var("DRILL_FLOW_HANDOVER").is_ok_and(|v| v == "0") {
            extra.push_str("flow_handover = false\n");
        }
        if std::env::var_os("DRILL_EMULATED").is_some() {
            extra.push_str("handover_probe_wait = \"100ms\"\n");
        }
        self.start_members_with(|_| {
            format!(
                "[announce]\nmode = \"l2\"\ninterface = \"eth0\"\nvip_ranges = [\"10.77.0.48/28\", \"fd00:77::40/122\"]\n{extra}"
            )
        })
    }

    /// The lab's services file (one service per VIP of `VIPS`, port 80 to
    /// the backends' 8080) with `extra(i)` added to the i-th service's
    /// settings; without the IPv6 service.
    pub fn services_text(&self, extra: impl Fn(usize) -> String) -> String {
        VIPS.iter()
            .enumerate()
            .map(|(i, vip)| {
                let backends: String = self
                    .backends
                    .iter()
                    .map(|b| format!("[[service.backend]]\naddress = \"{b}\"\nport = 8080\n\n"))
                    .collect();
                let extra = extra(i);
                format!("[[service]]\nname = \"web-{i}\"\nvip = \"{vip}\"\nport = 80\nprotocol = \"tcp\"\nscheduler = \"rr\"\n{extra}\n{backends}")
            })
            .collect()
    }

    /// Writes the members' configs with `announce(id)` as their
    /// `[announce]` section, and starts them.
    pub fn start_members_with(&mut self, announce: impl Fn(u64) -> String) -> anyhow::Result<()> {
        let peers: Vec<(u64, u16, u16)> = (1..=3)
            .map(|id| Ok((id, free_port()?, free_port()?)))
            .collect::<anyhow::Result<_>>()?;
        let list: Vec<String> = peers
            .iter()
            .map(|(id, peer, admin)| {
                if self.admin_on_lan {
                    format!("{{ id = {id}, address = \"10.77.0.{id}:{peer}\", admin = \"10.77.0.{id}:{admin}\" }}")
                } else {
                    format!("{{ id = {id}, address = \"10.77.0.{id}:{peer}\" }}")
                }
            })
            .collect();
        let admin_host = if self.admin_on_lan {
            "0.0.0.0"
        } else {
            "127.0.0.1"
        };
        let on_lan = self.admin_on_lan;
        let metrics_host = move |id: u64| {
            if on_lan {
                format!("10.77.0.{id}")
            } else {
                "127.0.0.1".to_owned()
            }
        };
        let services = self.services_text(|_| String::new())
            + &if !self.ipv6_service {
                String::new()
            } else {
                format!(
                    "[[service]]\nname = \"web-v6\"\nvip = \"{VIP6}\"\nport = 80\nprotocol = \"tcp\"\nscheduler = \"rr\"\n\n[[service.backend]]\naddress = \"fd00:77::200\"\nport = 8080\n"
                )
            };
        let services = self.services_file.clone().unwrap_or(services);
        std::fs::write(self.dir.path().join("services.toml"), services)?;
        self.founders = list.join(", ");
        for (id, peer, admin) in &peers {
            if self.loop_disks && !self.disks.contains_key(id) {
                let fs = crate::disk::LoopFs::mount(
                    &self.dir.path().join(format!("disk-{id}.img")),
                    &self.dir.path().join(format!("data-{id}")),
                )?;
                self.disks.insert(*id, fs);
            }
            let config = self.write_config(
                *id,
                *peer,
                &format!("{admin_host}:{admin}"),
                &metrics_host(*id),
                &announce(*id),
            )?;
            let ns = self.ns(&format!("m{id}"));
            self.admin_ports.insert(*id, *admin);
            self.peer_ports.insert(*id, *peer);
            self.members
                .insert(*id, Member::start_in(Some(&ns), &config)?);
        }
        Ok(())
    }

    /// Writes `member-<id>.toml`: the lab's source, this member's ports
    /// and `announce` section, the founding members as `cluster.member`.
    fn write_config(
        &self,
        id: u64,
        peer: u16,
        admin: &str,
        metrics_host: &str,
        announce: &str,
    ) -> anyhow::Result<std::path::PathBuf> {
        let config = self.dir.path().join(format!("member-{id}.toml"));
        std::fs::write(
            &config,
            format!(
                "[node]\nid = {id}\ninsecure = true\n\n[source.file]\npath = \"services.toml\"\n\n[admin]\nlisten = \"{admin}\"\nmetrics_listen = \"{metrics_host}:0\"\n\n\
                 {announce}\n{}\n\
                 [cluster]\nid = \"l2-lab\"\ndata_dir = \"data-{id}\"\nlisten = \"10.77.0.{id}:{peer}\"\nmember = [{}]\n",
                self.dataplane, self.founders
            ),
        )?;
        Ok(config)
    }

    /// Starts member `id` on host `m<id>` (added with `add_host` at
    /// 10.77.0.<id>) as a new machine: its config lists the founding
    /// members, so it waits to be added (`lbctl member add`, with
    /// `admin_on_lan`). Returns its peer and admin addresses.
    pub fn start_joiner(&mut self, id: u64, announce: &str) -> anyhow::Result<(String, String)> {
        anyhow::ensure!(self.admin_on_lan, "a joiner's admin API is on the LAN");
        let (peer, admin) = (free_port()?, free_port()?);
        let config = self.write_config(
            id,
            peer,
            &format!("0.0.0.0:{admin}"),
            &format!("10.77.0.{id}"),
            announce,
        )?;
        let ns = self.ns(&format!("m{id}"));
        self.admin_ports.insert(id, admin);
        self.peer_ports.insert(id, peer);
        self.members
            .insert(id, Member::start_in(Some(&ns), &config)?);
        Ok((
            format!("10.77.0.{id}:{peer}"),
            format!("10.77.0.{id}:{admin}"),
        ))
    }

    pub fn seen(&self) -> Vec<ArpSeen> {
        self.capture
            .as_ref()
            .map(ArpCapture::seen)
            .unwrap_or_default()
    }

    /// Waits for a gratuitous ARP for `vip` at or after `since` from a
    /// member other than `not`; returns (member, time).
    pub fn wait_garp(
        &self,
        vip: &str,
        since: f64,
        not: Option<u64>,
        timeout: Duration,
    ) -> anyhow::Result<(u64, f64)> {
        let deadline = Instant::now() + timeout;
        let capture = self.capture.as_ref().context("no ARP capture started")?;
        loop {
            if let Some(found) = capture.garp(vip, since, |mac| self.macs.get(mac).copied(), not) {
                return Ok(found);
            }
            if Instant::now() > deadline {
                bail!(
                    "no gratuitous ARP for {vip} within {timeout:?}; seen: {:?}",
                    self.seen()
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Every ARP reply to the client's questions for `vip`, in time order,
    /// as (time, member): the split-brain check reads it.
    pub fn replies(&self, vip: &str) -> Vec<(f64, u64)> {
        let mut r: Vec<(f64, u64)> = self
            .seen()
            .into_iter()
            .filter(|s| s.reply && s.vip == vip)
            .map(|s| (s.at, self.macs.get(&s.src_mac).copied().unwrap_or(0)))
            .collect();
        r.sort_by(|a, b| a.0.total_cmp(&b.0));
        r
    }

    /// Who answered for `vip` last, and when.
    pub fn answering(&self, vip: &str) -> Option<(f64, u64)> {
        self.replies(vip).last().copied()
    }

    /// The member that leads, by its last role change in its log.
    pub fn leader(&self) -> Option<u64> {
        self.members.iter().find_map(|(id, m)| {
            m.log()
                .lines()
                .rev()
                .find(|l| l.contains("raft role changed"))
                .filter(|l| l.contains("role=Leader"))
                .map(|_| *id)
        })
    }

    /// Kills the VIP owner `owner` (SIGKILL) and measures until another
    /// member's first gratuitous ARP; restarts the killed member after.
    pub fn owner_crash(&mut self, owner: u64, vip: &str) -> anyhow::Result<(u64, f64)> {
        let mut m = self.members.remove(&owner).context("no such member")?;
        let t0 = unix_now();
        m.signal("KILL")?;
        let (new, at) = self.wait_garp(vip, t0, Some(owner), Duration::from_secs(10))?;
        m.wait_exit(Duration::from_secs(5))?;
        drop(m);
        let config = self.dir.path().join(format!("member-{owner}.toml"));
        let ns = self.ns(&format!("m{owner}"));
        self.members
            .insert(owner, Member::start_in(Some(&ns), &config)?);
        Ok((new, at - t0))
    }

    /// Member `id`'s admin API as the client namespace reaches it (with
    /// `admin_on_lan`).
    pub fn admin_endpoint(&self, id: u64) -> String {
        format!("http://10.77.0.{id}:{}", self.admin_ports[&id])
    }

    /// Member `id`'s admin and peer ports on the lab's LAN.
    pub fn admin_address(&self, id: u64) -> std::net::SocketAddr {
        ([10, 77, 0, id as u8], self.admin_ports[&id]).into()
    }

    pub fn peer_address(&self, id: u64) -> std::net::SocketAddr {
        ([10, 77, 0, id as u8], self.peer_ports[&id]).into()
    }

    /// Keeps the log of member `id`, stopped or killed, for `DRILL_LOGS`.
    pub fn retire(&mut self, id: u64, member: Member) {
        self.past_logs.push((id, member.log()));
    }

    /// Starts member `id` again with its config (after a crash or stop).
    pub fn restart(&mut self, id: u64) -> anyhow::Result<()> {
        let config = self.dir.path().join(format!("member-{id}.toml"));
        let ns = self.ns(&format!("m{id}"));
        self.members
            .insert(id, Member::start_in(Some(&ns), &config)?);
        Ok(())
    }

    /// Runs lbctl against member `id` inside its namespace; (code, stdout).
    pub fn lbctl(&self, id: u64, args: &[&str]) -> anyhow::Result<(i32, String)> {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.ns(&format!("m{id}"))])
            .arg(crate::binary("lbctl")?)
            .arg("--endpoint")
            .arg(format!("http://127.0.0.1:{}", self.admin_ports[&id]))
            .args(args)
            .output()?;
        Ok((
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        ))
    }

    /// Runs a command inside namespace `name` ("m1", "c", "sw").
    pub fn exec(&self, name: &str, args: &[&str]) -> anyhow::Result<String> {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.ns(name)])
            .args(args)
            .output()
            .with_context(|| format!("cannot run {}", args[0]))?;
        if !out.status.success() {
            bail!(
                "{} in {name}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Starts a command inside namespace `name`, in the background.
    pub fn spawn(&self, name: &str, args: &[&str]) -> anyhow::Result<Child> {
        Command::new("ip")
            .args(["netns", "exec", &self.ns(name)])
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("cannot start {}", args[0]))
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

/// Whether two members ever answered for the VIP at the same time. The
/// client asks every 50 ms and each question gets one answer from one
/// member; two members answering show as answers from different members
/// closer together than `overlap` seconds.
pub fn split_brain(replies: &[(f64, u64)], overlap: f64) -> Option<String> {
    for pair in replies.windows(2) {
        let ((then, a), (at, b)) = (pair[0], pair[1]);
        if a == 0 || b == 0 {
            return Some(format!("a reply from an unknown MAC near {at}"));
        }
        if a != b && at - then < overlap {
            return Some(format!(
                "members {a} and {b} answered {:.3} s apart at {at}",
                at - then
            ));
        }
    }
    None
}
