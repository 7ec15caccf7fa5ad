//! Real BGP peers other than BIRD, for the L2 lab's router namespace
//! (`c`, 10.77.0.100): FRR (zebra, bgpd and bfdd, Debian's `frr`) and
//! GoBGP (Debian's `gobgpd`). Each is started with its own files in the
//! lab's directory, listens on its own BGP port, and is read back through
//! its own client (`vtysh`, `gobgp`) as an operator would; their tables
//! come back in one shape: VIP -> the members it has a path through.
//!
//! The members are 10.77.0.1-3 (fd00:77::1-3); a path's member is taken
//! from its next hop (FRR) or the neighbor it came from (GoBGP).

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::Child;

use anyhow::Context as _;

use crate::l2lab::Lab;

/// VIP (address without its length) -> the members it has a path through.
pub type Table = BTreeMap<String, BTreeSet<u64>>;

/// The member behind a lab address: 10.77.0.N or fd00:77::N.
fn member_of(address: &str) -> Option<u64> {
    address
        .strip_prefix("10.77.0.")
        .or_else(|| address.strip_prefix("fd00:77::"))
        .and_then(|m| m.parse().ok())
        .filter(|m| (1..=9).contains(m))
}

/// Processes killed on drop.
#[derive(Debug)]
struct Daemons(Vec<Child>);

impl Drop for Daemons {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// What a peer is told about the members.
#[derive(Debug, Clone)]
pub struct PeerSetup {
    /// Its own AS.
    pub asn: u32,
    /// The members' AS.
    pub member_as: u32,
    /// The port it listens on (the members connect; the router is passive).
    pub port: u16,
    /// Hold time it offers, seconds.
    pub hold: u64,
    /// Whether it takes IPv6 unicast besides IPv4 (over the IPv4 session).
    pub ipv6: bool,
    /// FRR: BFD on the sessions (bfdd, `bfd_interval_ms` x 3).
    pub bfd: bool,
    /// FRR's BFD transmit and receive interval, milliseconds.
    pub bfd_interval_ms: u64,
    /// FRR: `bfd check-control-plane-failure` (a graceful restart survives
    /// BFD going down; so does a lost machine's path, until the restart
    /// time).
    pub bfd_ignores_restarts: bool,
    /// Graceful restart as the receiving (helper) speaker.
    pub graceful_restart: bool,
    /// FRR: `dont-capability-negotiate` (an OPEN with no capabilities: no
    /// four-octet AS, no multiprotocol), as an old router would.
    pub no_capabilities: bool,
    /// FRR and GoBGP: the sessions (FRR's BFD too) over IPv6,
    /// fd00:77::100 to fd00:77::1-3, instead of IPv4.
    pub ipv6_transport: bool,
    /// FRR and GoBGP: it connects to the members (their port 179), rather than
    /// waiting for them: for members whose peer is `passive`.
    pub connects: bool,
    /// TCP MD5 password of every session (FRR and GoBGP).
    pub password: Option<String>,
    /// FRR: the members it peers with, 10.77.0.1 to .N (3 unless a drill
    /// adds machines).
    pub members: u64,
}

impl PeerSetup {
    pub fn new(asn: u32, member_as: u32, port: u16) -> PeerSetup {
        PeerSetup {
            asn,
            member_as,
            port,
            hold: 6,
            ipv6: true,
            bfd: false,
            bfd_interval_ms: 100,
            bfd_ignores_restarts: false,
            graceful_restart: false,
            no_capabilities: false,
            ipv6_transport: false,
            connects: false,
            password: None,
            members: 3,
        }
    }
}

/// FRR 8 in the router namespace: zebra (routes into the namespace's
/// kernel), bgpd and, with BFD, bfdd.
#[derive(Debug)]
pub struct Frr {
    _daemons: Daemons,
    ns: String,
    dir: PathBuf,
}

impl Frr {
    pub fn start(lab: &Lab, setup: &PeerSetup) -> anyhow::Result<Frr> {
        let dir = lab.dir().join(format!("frr-{}", setup.port));
        std::fs::create_dir_all(&dir)?;
        let path = |name: &str| dir.join(name).to_string_lossy().into_owned();
        let PeerSetup {
            asn,
            member_as,
            port,
            hold,
            ipv6,
            bfd,
            bfd_interval_ms,
            bfd_ignores_restarts,
            graceful_restart,
            no_capabilities,
            ipv6_transport,
            connects,
            password,
            members: peers,
        } = setup.clone();
        let (members, listen) = if ipv6_transport {
            ("fd00:77::", "fd00:77::100")
        } else {
            ("10.77.0.", "10.77.0.100")
        };
        let keepalive = (hold / 3).max(1);
        let mut bgp = format!(
            "frr defaults traditional\nhostname frr\nlog file {} debugging\ndebug bgp neighbor-events\ndebug bgp bfd\ndebug bgp graceful-restart\n!\n\
             router bgp {asn}\n bgp router-id 10.77.0.100\n no bgp ebgp-requires-policy\n\
             no bgp network import-check\n bgp bestpath as-path multipath-relax\n",
            path("bgpd.log")
        );
        if graceful_restart {
            bgp.push_str(" bgp graceful-restart\n");
        }
        bgp.push_str(&format!(
            " neighbor lb peer-group\n neighbor lb remote-as {member_as}\n\
             neighbor lb timers {keepalive} {hold}\n neighbor lb timers connect 1\n"
        ));
        if !connects {
            bgp.push_str(" neighbor lb passive\n");
        }
        if let Some(password) = &password {
            bgp.push_str(&format!(" neighbor lb password {password}\n"));
        }
        if bfd {
            bgp.push_str(" neighbor lb bfd profile fast\n");
            if bfd_ignores_restarts {
                // A BFD Down from a graceful-restart peer whose C bit is 0
                // (BFD shares fate with its control plane) is taken for a
                // restart, not a lost path: a lost machine too.
                bgp.push_str(" neighbor lb bfd check-control-plane-failure\n");
            }
        }
        if no_capabilities {
            bgp.push_str(" neighbor lb dont-capability-negotiate\n");
        }
        for id in 1..=peers {
            bgp.push_str(&format!(" neighbor {members}{id} peer-group lb\n"));
        }
        bgp.push_str(
            " address-family ipv4 unicast\n  maximum-paths 8\n  maximum-paths ibgp 8\n  neighbor lb activate\n exit-address-family\n",
        );
        if ipv6 {
            bgp.push_str(" address-family ipv6 unicast\n  maximum-paths 8\n  maximum-paths ibgp 8\n  neighbor lb activate\n exit-address-family\n");
        }
        std::fs::write(dir.join("bgpd.conf"), bgp)?;
        std::fs::write(
            dir.join("zebra.conf"),
            format!(
                "hostname frr\nlog file {} informational\n",
                path("zebra.log")
            ),
        )?;
        std::fs::write(
            dir.join("bfdd.conf"),
            format!(
                "hostname frr\nlog file {} debugging\ndebug bfd peer\ndebug bfd zebra\nbfd\n profile fast\n  receive-interval {bfd_interval_ms}\n  transmit-interval {bfd_interval_ms}\n  detect-multiplier 3\n !\n!\n",
                path("bfdd.log")
            ),
        )?;
        let zserv = path("zserv.api");
        let mut daemons = Daemons(Vec::new());
        let common = |name: &str| -> Vec<String> {
            vec![
                format!("/usr/lib/frr/{name}"),
                "-f".into(),
                path(&format!("{name}.conf")),
                "-i".into(),
                path(&format!("{name}.pid")),
                "--vty_socket".into(),
                path(""),
                "-z".into(),
                zserv.clone(),
                "-u".into(),
                "root".into(),
                // Root, in FRR's vty group (the daemons refuse a user
                // outside it).
                "-g".into(),
                "frrvty".into(),
                "-A".into(),
                "127.0.0.1".into(),
                "-P".into(),
                "0".into(),
            ]
        };
        let spawn = |args: Vec<String>| -> anyhow::Result<Child> {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            lab.spawn("c", &args)
        };
        daemons.0.push(spawn(common("zebra"))?);
        wait_file(&dir.join("zserv.api"), "zebra's socket")?;
        if bfd {
            let mut args = common("bfdd");
            args.extend(["--bfdctl".into(), path("bfdd.sock")]);
            daemons.0.push(spawn(args)?);
            wait_file(&dir.join("bfdd.vty"), "bfdd's vty")?;
        }
        let mut args = common("bgpd");
        args.extend(["-p".into(), port.to_string(), "-l".into(), listen.into()]);
        daemons.0.push(spawn(args)?);
        wait_file(&dir.join("bgpd.vty"), "bgpd's vty")?;
        Ok(Frr {
            _daemons: daemons,
            ns: lab.ns("c"),
            dir,
        })
    }

    /// The process id of each daemon (zebra, bfdd when BFD is on, bgpd),
    /// by name.
    pub fn pids(&self) -> Vec<(&'static str, u32)> {
        let names: &[&'static str] = if self._daemons.0.len() == 3 {
            &["zebra", "bfdd", "bgpd"]
        } else {
            &["zebra", "bgpd"]
        };
        names
            .iter()
            .zip(&self._daemons.0)
            .map(|(name, child)| (*name, child.id()))
            .collect()
    }

    /// `vtysh -c <command>` against this instance.
    pub fn vtysh(&self, command: &str) -> anyhow::Result<String> {
        let out = std::process::Command::new("ip")
            .args(["netns", "exec", &self.ns, "vtysh", "--vty_socket"])
            .arg(&self.dir)
            .args(["-c", command])
            .output()
            .context("cannot run vtysh")?;
        if !out.status.success() {
            anyhow::bail!(
                "vtysh -c '{command}': {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// A `... json` command's output, parsed.
    pub fn vtysh_json(&self, command: &str) -> anyhow::Result<serde_json::Value> {
        let text = self.vtysh(command)?;
        serde_json::from_str(&text).with_context(|| format!("vtysh -c '{command}' printed {text}"))
    }

    /// `show bgp <family> unicast json`, parsed.
    pub fn json(&self, family: &str) -> anyhow::Result<serde_json::Value> {
        self.vtysh_json(&format!("show bgp {family} unicast json"))
    }

    /// Both families' valid paths: VIP -> members.
    pub fn table(&self) -> anyhow::Result<Table> {
        let mut table = Table::new();
        for family in ["ipv4", "ipv6"] {
            let json = self.json(family)?;
            let Some(routes) = json.get("routes").and_then(|r| r.as_object()) else {
                continue;
            };
            for (prefix, paths) in routes {
                let vip = prefix.split('/').next().unwrap_or(prefix).to_owned();
                for path in paths.as_array().into_iter().flatten() {
                    if path.get("valid").and_then(|v| v.as_bool()) != Some(true) {
                        continue;
                    }
                    let hop = path
                        .pointer("/nexthops/0/ip")
                        .and_then(|h| h.as_str())
                        .and_then(member_of);
                    if let Some(member) = hop {
                        table.entry(vip.clone()).or_default().insert(member);
                    }
                }
            }
        }
        Ok(table)
    }

    /// The members whose session is Established.
    pub fn established(&self) -> anyhow::Result<BTreeSet<u64>> {
        let json = self.vtysh_json("show bgp neighbors json")?;
        Ok(json
            .as_object()
            .into_iter()
            .flatten()
            .filter(|(_, n)| n.get("bgpState").and_then(|s| s.as_str()) == Some("Established"))
            .filter_map(|(address, _)| member_of(address))
            .collect())
    }

    /// The members whose BFD session is up (`show bfd peers json`).
    pub fn bfd_up(&self) -> anyhow::Result<BTreeSet<u64>> {
        let json = self.vtysh_json("show bfd peers json")?;
        Ok(json
            .as_array()
            .into_iter()
            .flatten()
            .filter(|p| p.get("status").and_then(|s| s.as_str()) == Some("up"))
            .filter_map(|p| p.get("peer").and_then(|a| a.as_str()).and_then(member_of))
            .collect())
    }

    /// Sessions dropped since start, per member (FRR's
    /// `connectionsDropped`).
    pub fn drops(&self) -> anyhow::Result<BTreeMap<u64, u64>> {
        let json = self.vtysh_json("show bgp neighbors json")?;
        Ok(json
            .as_object()
            .into_iter()
            .flatten()
            .filter_map(|(address, n)| {
                Some((member_of(address)?, n.get("connectionsDropped")?.as_u64()?))
            })
            .collect())
    }

    /// bgpd's log, for a failure's message.
    pub fn log(&self) -> String {
        self.daemon_log("bgpd")
    }

    /// A daemon's log ("bgpd", "bfdd", "zebra").
    pub fn daemon_log(&self, daemon: &str) -> String {
        std::fs::read_to_string(self.dir.join(format!("{daemon}.log"))).unwrap_or_default()
    }
}

/// GoBGP 3 in the router namespace (no kernel routes: its table only).
#[derive(Debug)]
pub struct Gobgp {
    _daemons: Daemons,
    ns: String,
    api: u16,
    dir: PathBuf,
}

impl Gobgp {
    pub fn start(lab: &Lab, setup: &PeerSetup) -> anyhow::Result<Gobgp> {
        let dir = lab.dir().join(format!("gobgp-{}", setup.port));
        std::fs::create_dir_all(&dir)?;
        let api = crate::free_port()?;
        let PeerSetup {
            asn,
            member_as,
            port,
            hold,
            ipv6,
            graceful_restart,
            password,
            ipv6_transport,
            connects,
            ..
        } = setup.clone();
        let (members, local) = if ipv6_transport {
            ("fd00:77::", "fd00:77::100")
        } else {
            ("10.77.0.", "10.77.0.100")
        };
        // Connecting to the members (their port 179) instead of waiting.
        let transport = if connects {
            "    passive-mode = false\n    remote-port = 179\n"
        } else {
            "    passive-mode = true\n"
        };
        let keepalive = (hold / 3).max(1);
        let mut text = format!(
            "[global.config]\n  as = {asn}\n  router-id = \"10.77.0.100\"\n  port = {port}\n  local-address-list = [\"{local}\"]\n\
             [global.use-multiple-paths.config]\n  enabled = true\n"
        );
        let auth = password
            .map(|p| format!("    auth-password = \"{p}\"\n"))
            .unwrap_or_default();
        for id in 1..=3 {
            text.push_str(&format!(
                "\n[[neighbors]]\n  [neighbors.config]\n    neighbor-address = \"{members}{id}\"\n    peer-as = {member_as}\n\
                 {auth}[neighbors.timers.config]\n    hold-time = {hold}\n    keepalive-interval = {keepalive}\n    connect-retry = 1\n\
                 [neighbors.transport.config]\n{transport}    local-address = \"{local}\"\n"
            ));
            if graceful_restart {
                text.push_str(
                    "  [neighbors.graceful-restart.config]\n    enabled = true\n    restart-time = 30\n",
                );
            }
            let families: &[&str] = if ipv6 {
                &["ipv4-unicast", "ipv6-unicast"]
            } else {
                &["ipv4-unicast"]
            };
            for family in families {
                text.push_str(&format!(
                    "  [[neighbors.afi-safis]]\n    [neighbors.afi-safis.config]\n      afi-safi-name = \"{family}\"\n"
                ));
                if graceful_restart {
                    text.push_str(
                        "    [neighbors.afi-safis.mp-graceful-restart.config]\n      enabled = true\n",
                    );
                }
            }
        }
        let config = dir.join("gobgpd.toml");
        std::fs::write(&config, text)?;
        let log = std::fs::File::create(dir.join("gobgpd.log"))?;
        let child = std::process::Command::new("ip")
            .args(["netns", "exec", &lab.ns("c"), "gobgpd", "-f"])
            .arg(&config)
            .args([
                "-p",
                "--pprof-disable",
                &format!("--api-hosts=127.0.0.1:{api}"),
            ])
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("cannot start gobgpd")?;
        let gobgp = Gobgp {
            _daemons: Daemons(vec![child]),
            ns: lab.ns("c"),
            api,
            dir,
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while gobgp.cli(&["neighbor"]).is_err() {
            if std::time::Instant::now() > deadline {
                anyhow::bail!("gobgpd's API did not answer in 10 s: {}", gobgp.log());
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        Ok(gobgp)
    }

    /// `gobgp -p <api> -j <args>`.
    pub fn cli(&self, args: &[&str]) -> anyhow::Result<serde_json::Value> {
        let out = std::process::Command::new("ip")
            .args(["netns", "exec", &self.ns, "gobgp", "-p"])
            .arg(self.api.to_string())
            .arg("-j")
            .args(args)
            .output()
            .context("cannot run gobgp")?;
        if !out.status.success() {
            anyhow::bail!(
                "gobgp {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        let text = String::from_utf8_lossy(&out.stdout);
        if text.trim().is_empty() {
            return Ok(serde_json::Value::Null);
        }
        serde_json::from_str(&text).with_context(|| format!("gobgp printed {text}"))
    }

    /// The global RIB, both families: VIP -> the members it has a path
    /// from.
    pub fn table(&self) -> anyhow::Result<Table> {
        let mut table = Table::new();
        for family in ["ipv4", "ipv6"] {
            let json = self.cli(&["global", "rib", "-a", family])?;
            for (prefix, paths) in json.as_object().into_iter().flatten() {
                let vip = prefix.split('/').next().unwrap_or(prefix).to_owned();
                for path in paths.as_array().into_iter().flatten() {
                    let from = path
                        .get("neighbor-ip")
                        .and_then(|n| n.as_str())
                        .and_then(member_of);
                    if let Some(member) = from {
                        table.entry(vip.clone()).or_default().insert(member);
                    }
                }
            }
        }
        Ok(table)
    }

    /// The paths of one prefix, as GoBGP prints them (attributes and all).
    pub fn paths(&self, family: &str, prefix: &str) -> anyhow::Result<serde_json::Value> {
        let json = self.cli(&["global", "rib", "-a", family])?;
        Ok(json.get(prefix).cloned().unwrap_or_default())
    }

    /// The neighbors, as GoBGP prints them.
    pub fn neighbors(&self) -> anyhow::Result<serde_json::Value> {
        self.cli(&["neighbor"])
    }

    /// The members whose session is Established.
    pub fn established(&self) -> anyhow::Result<BTreeSet<u64>> {
        Ok(self
            .neighbors()?
            .as_array()
            .into_iter()
            .flatten()
            .filter(|n| {
                let state = n.pointer("/state/session_state");
                state.and_then(|s| s.as_u64()) == Some(6)
                    || state.and_then(|s| s.as_str()) == Some("established")
            })
            .filter_map(|n| {
                n.pointer("/state/neighbor_address")
                    .or_else(|| n.pointer("/conf/neighbor_address"))
                    .and_then(|a| a.as_str())
                    .and_then(member_of)
            })
            .collect())
    }

    /// gobgpd's log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("gobgpd.log")).unwrap_or_default()
    }
}

/// Waits (up to 10 s) for a daemon's file to appear.
fn wait_file(path: &std::path::Path, what: &str) -> anyhow::Result<()> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !path.exists() {
        if std::time::Instant::now() > deadline {
            anyhow::bail!("{what} ({}) did not appear in 10 s", path.display());
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::member_of;

    #[test]
    fn members_are_read_from_lab_addresses_only() {
        assert_eq!(member_of("10.77.0.2"), Some(2));
        assert_eq!(member_of("fd00:77::3"), Some(3));
        assert_eq!(member_of("10.77.0.100"), None);
        assert_eq!(member_of("10.77.0.50"), None);
        assert_eq!(member_of("192.0.2.1"), None);
    }
}
