//! The BGP speaker against FRR and GoBGP (BIRD has `bgp.rs`), each a real
//! daemon in the lab's router namespace, read back through its own CLI.
//! Together with `bgp.rs` every feature is checked against the three
//! implementations operators run:
//!
//! - ECMP from three members with a four-octet AS, IPv4 and IPv6 (MP over
//!   the IPv4 session), communities, large communities and MED, to FRR
//!   (both families) and GoBGP (IPv4 unicast only: nothing of IPv6 may
//!   reach it, or it resets the session); no session drops;
//! - an OPEN with no capabilities at all (FRR's `dont-capability-negotiate`,
//!   an old router): IPv4 routes only, the AS_PATH in two octets with
//!   AS_TRANS;
//! - drain and clean stop withdraw at once from both;
//! - BFD with FRR's bfdd: a member's link down leaves FRR's table in the
//!   detection time, not the hold time;
//! - graceful restart with FRR and GoBGP as helpers: a member's restart
//!   keeps its paths in both tables the whole time.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use ha_tests::l2lab::{Lab, VIP6, VIPS};
use ha_tests::routers::{Frr, Gobgp, PeerSetup, Table};
use ha_tests::wait_for;

/// The members' AS: four octets.
const MEMBER_AS: u32 = 4_200_000_001;
const FRR_PORT: u16 = 2179;
const GOBGP_PORT: u16 = 3179;

/// Whether every VIP of `vips` has paths through exactly `members`.
fn all_via(table: &Table, vips: &[&str], members: &BTreeSet<u64>) -> bool {
    vips.iter().all(|v| table.get(*v) == Some(members))
}

/// The members' `[announce]`: ECMP to every peer given (address:port, AS).
fn announce(id: u64, extra: &str, peers: &[(u16, u32)]) -> String {
    let mut text = format!(
        "[announce]\nmode = \"bgp\"\nlocal_as = {MEMBER_AS}\nrouter_id = \"10.77.0.{id}\"\nhold_time = 6\necmp = true\n\
         next_hop_v6 = \"fd00:77::{id}\"\n{extra}"
    );
    for (port, asn) in peers {
        text.push_str(&format!(
            "[[announce.peer]]\naddress = \"10.77.0.100:{port}\"\nas = {asn}\n"
        ));
    }
    text
}

/// FRR's first path to `vip`, with every attribute
/// (`show bgp ipv4 unicast <prefix> json`).
fn frr_path(frr: &Frr, vip: &str) -> anyhow::Result<serde_json::Value> {
    let json = frr.vtysh_json(&format!("show bgp ipv4 unicast {vip}/32 json"))?;
    Ok(json.pointer("/paths/0").cloned().unwrap_or_default())
}

fn v4_and_v6() -> Vec<&'static str> {
    VIPS.iter().copied().chain([VIP6]).collect()
}

#[test]
fn frr_and_gobgp_take_every_vip_from_every_member() -> anyhow::Result<()> {
    let mut lab = Lab::new("i")?;
    let frr = Frr::start(&lab, &PeerSetup::new(65000, MEMBER_AS, FRR_PORT))?;
    let gobgp = Gobgp::start(
        &lab,
        &PeerSetup {
            ipv6: false,
            ..PeerSetup::new(65002, MEMBER_AS, GOBGP_PORT)
        },
    )?;
    lab.start_members_with(|id| {
        announce(
            id,
            "communities = [\"65001:100\"]\nlarge_communities = [\"4200000001:7:9\"]\nmed = 50\n",
            &[(FRR_PORT, 65000), (GOBGP_PORT, 65002)],
        )
    })?;
    let all: BTreeSet<u64> = (1..=3).collect();
    wait_for(
        "FRR: every VIP (v4 and v6) via all three",
        Duration::from_secs(30),
        || Ok(all_via(&frr.table()?, &v4_and_v6(), &all).then_some(())),
    )
    .map_err(|e| anyhow::anyhow!("{e}\n{:?}\n{}", frr.table(), frr.log()))?;
    wait_for(
        "GoBGP: every IPv4 VIP via all three",
        Duration::from_secs(30),
        || Ok(all_via(&gobgp.table()?, &VIPS, &all).then_some(())),
    )
    .map_err(|e| anyhow::anyhow!("{e}\n{:?}\n{}", gobgp.table(), gobgp.log()))?;

    // Stable: a while later, nothing dropped anywhere, and GoBGP (which
    // negotiated IPv4 only) never saw IPv6.
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(frr.established()?, all, "FRR's sessions");
    assert_eq!(gobgp.established()?, all, "GoBGP's sessions");
    let drops = frr.drops()?;
    assert!(drops.values().all(|d| *d == 0), "FRR dropped: {drops:?}");
    let table = gobgp.table()?;
    assert!(
        !table.contains_key(VIP6),
        "IPv6 reached GoBGP, which did not negotiate it: {table:?}"
    );
    for (id, m) in &lab.members {
        let log = m.log();
        assert!(
            !log.contains("NOTIFICATION received") && !log.contains("session reset"),
            "member {id}: {log}"
        );
    }

    // The attributes, as FRR and GoBGP decoded them.
    let path = frr_path(&frr, VIPS[0])?;
    let text = path.to_string();
    assert_eq!(
        path.pointer("/aspath/string").and_then(|s| s.as_str()),
        Some("4200000001"),
        "FRR's AS path: {text}"
    );
    assert_eq!(
        path.get("metric").and_then(|m| m.as_u64()),
        Some(50),
        "MED: {text}"
    );
    assert_eq!(
        path.pointer("/community/string").and_then(|s| s.as_str()),
        Some("65001:100"),
        "community: {text}"
    );
    assert_eq!(
        path.pointer("/largeCommunity/string")
            .and_then(|s| s.as_str()),
        Some("4200000001:7:9"),
        "large community: {text}"
    );
    let paths = gobgp.paths("ipv4", &format!("{}/32", VIPS[0]))?;
    let text = paths.to_string();
    assert!(text.contains("4200000001"), "GoBGP's AS path: {text}");
    assert!(text.contains("\"metric\":50"), "GoBGP's MED: {text}");

    // Drained: gone from both at once.
    let leader = wait_for("a leader", Duration::from_secs(10), || Ok(lab.leader()))?;
    let drained = if leader == 1 { 2 } else { 1 };
    let (code, out) = lab.lbctl(leader, &["member", "drain", &drained.to_string()])?;
    assert_eq!(code, 0, "{out}");
    let rest: BTreeSet<u64> = all.iter().copied().filter(|m| *m != drained).collect();
    let t0 = Instant::now();
    wait_for(
        "FRR: the drained member gone",
        Duration::from_secs(5),
        || Ok(all_via(&frr.table()?, &v4_and_v6(), &rest).then_some(())),
    )?;
    wait_for(
        "GoBGP: the drained member gone",
        Duration::from_secs(5),
        || Ok(all_via(&gobgp.table()?, &VIPS, &rest).then_some(())),
    )?;
    eprintln!(
        "member {drained} drained: gone from FRR and GoBGP after {:?}",
        t0.elapsed()
    );

    // Stopped cleanly (the leader, to be sure its stop is not a drain): its
    // paths withdrawn at once, a Cease sent to each.
    let stopped = leader;
    let mut m = lab.members.remove(&stopped).expect("member");
    let t0 = Instant::now();
    m.signal("TERM")?;
    m.wait_exit(Duration::from_secs(10))?;
    let last: BTreeSet<u64> = rest.iter().copied().filter(|m| *m != stopped).collect();
    wait_for(
        "FRR: the stopped member gone",
        Duration::from_secs(5),
        || Ok(all_via(&frr.table()?, &v4_and_v6(), &last).then_some(())),
    )?;
    wait_for(
        "GoBGP: the stopped member gone",
        Duration::from_secs(5),
        || Ok(all_via(&gobgp.table()?, &VIPS, &last).then_some(())),
    )?;
    eprintln!(
        "member {stopped} stopped: gone from FRR and GoBGP after {:?}",
        t0.elapsed()
    );
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(m.log().matches("Cease sent").count(), 2, "{}", m.log());
    Ok(())
}

/// An old router: FRR told to send an OPEN without capabilities (no
/// four-octet AS, no multiprotocol). The members (AS 4200000001) must speak
/// RFC 4271 as it was: IPv4 NLRI in the UPDATE's own fields, AS_PATH in two
/// octets with AS_TRANS (RFC 6793), no IPv6, and the session stays up.
/// FRR (like BIRD with `enable as4 off`) still reads the members'
/// four-octet capability, so it leaves AS4_PATH alone and shows AS_TRANS:
/// that AS4_PATH carries the real AS is read off the wire by tcpdump's
/// own BGP decoder.
#[test]
fn an_old_router_gets_as_trans_and_ipv4_only() -> anyhow::Result<()> {
    let mut lab = Lab::new("o")?;
    // Port 179, where tcpdump decodes BGP.
    let frr = Frr::start(
        &lab,
        &PeerSetup {
            no_capabilities: true,
            ..PeerSetup::new(65000, MEMBER_AS, 179)
        },
    )?;
    let capture = lab.dir().join("bgp.pcap.txt");
    let mut tcpdump = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            &lab.ns("c"),
            "tcpdump",
            "-Z",
            "root",
            "-l",
            "-vv",
            "-n",
        ])
        .args(["-i", "eth0", "tcp port 179"])
        .stdout(std::fs::File::create(&capture)?)
        .stderr(std::process::Stdio::null())
        .spawn()?;
    std::thread::sleep(Duration::from_millis(500));
    lab.start_members_with(|id| announce(id, "", &[(179, 65000)]))?;
    let all: BTreeSet<u64> = (1..=3).collect();
    wait_for(
        "FRR: every IPv4 VIP via all three",
        Duration::from_secs(30),
        || Ok(all_via(&frr.table()?, &VIPS, &all).then_some(())),
    )
    .map_err(|e| anyhow::anyhow!("{e}\n{:?}\n{}", frr.table(), frr.log()))?;
    std::thread::sleep(Duration::from_secs(3));
    let table = frr.table()?;
    assert!(!table.contains_key(VIP6), "IPv6 without MP: {table:?}");
    let drops = frr.drops()?;
    assert!(drops.values().all(|d| *d == 0), "FRR dropped: {drops:?}");
    let path = frr_path(&frr, VIPS[0])?;
    assert_eq!(
        path.pointer("/aspath/string").and_then(|s| s.as_str()),
        Some("23456"),
        "two-octet AS_PATH with AS_TRANS: {path}"
    );
    let _ = tcpdump.kill();
    let _ = tcpdump.wait();
    let wire = std::fs::read_to_string(&capture)?;
    let as4_path = wire
        .lines()
        .filter(|l| l.contains("AS4 Path"))
        .collect::<Vec<_>>();
    assert!(
        !as4_path.is_empty() && wire.contains("4200000001"),
        "no AS4_PATH with the member's AS on the wire:\n{wire}"
    );
    assert!(
        !wire.contains("Multi-Protocol Reach"),
        "MP_REACH to a router that did not negotiate it:\n{wire}"
    );
    Ok(())
}

/// Graceful restart with FRR and GoBGP as helpers, BFD with FRR (100 ms x
/// 3, `check-control-plane-failure`: lb-node's BFD shares fate with its
/// control plane, so its going down in a restart is the restart): a member
/// stopped and started again keeps its paths in both tables the whole
/// time. Without that setting FRR dropped them in some restarts (BFD's
/// AdminDown reached bgpd as a failure); with it, a lost machine's paths
/// stay for the restart time too (docs/announcement.md). BFD for a lost
/// machine, with FRR: `bgp_and_bfd_over_ipv6_with_frr` and the drills.
#[test]
fn graceful_restart_with_frr_and_gobgp_as_helpers() -> anyhow::Result<()> {
    const RESTART_TIME: u64 = 8;
    let mut lab = Lab::new("r")?;
    let frr = Frr::start(
        &lab,
        &PeerSetup {
            hold: 30,
            bfd: true,
            bfd_ignores_restarts: true,
            graceful_restart: true,
            ..PeerSetup::new(65000, MEMBER_AS, FRR_PORT)
        },
    )?;
    let gobgp = Gobgp::start(
        &lab,
        &PeerSetup {
            hold: 30,
            graceful_restart: true,
            ..PeerSetup::new(65002, MEMBER_AS, GOBGP_PORT)
        },
    )?;
    lab.start_members_with(|id| {
        announce(
            id,
            &format!("graceful_restart = \"{RESTART_TIME}s\"\n[announce.bfd]\ninterval = \"100ms\"\nmultiplier = 3\n"),
            &[(FRR_PORT, 65000), (GOBGP_PORT, 65002)],
        )
        // GoBGP runs no BFD: the member's session to it opts out.
        .replace(
            "as = 65002\n",
            "as = 65002\nbfd = false\n",
        )
    })?;
    let all: BTreeSet<u64> = (1..=3).collect();
    let vips = v4_and_v6();
    wait_for(
        "FRR: every VIP via all three",
        Duration::from_secs(30),
        || Ok(all_via(&frr.table()?, &vips, &all).then_some(())),
    )
    .map_err(|e| anyhow::anyhow!("{e}\n{:?}\n{}", frr.table(), frr.log()))?;
    wait_for(
        "GoBGP: every VIP via all three",
        Duration::from_secs(30),
        || Ok(all_via(&gobgp.table()?, &vips, &all).then_some(())),
    )?;
    wait_for("FRR's BFD sessions up", Duration::from_secs(20), || {
        Ok((frr.bfd_up()? == all).then_some(()))
    })
    .map_err(|e| anyhow::anyhow!("{e}\n{}", frr.vtysh("show bfd peers").unwrap_or_default()))?;
    for id in 1..=3u64 {
        wait_for("the member sees BFD up", Duration::from_secs(10), || {
            let (_, out) = lab.lbctl(id, &["status"])?;
            Ok(out.contains("bfd up").then_some(()))
        })?;
    }

    // Graceful restart of member 1: its paths stay in both tables the
    // whole time, sampled back to back.
    let sampling = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let sampler = std::thread::scope(|scope| -> anyhow::Result<_> {
        let handle = scope.spawn(|| {
            let mut samples: Vec<(Instant, Table, Table)> = Vec::new();
            while sampling.load(std::sync::atomic::Ordering::Relaxed) {
                if let (Ok(f), Ok(g)) = (frr.table(), gobgp.table()) {
                    samples.push((Instant::now(), f, g));
                }
            }
            samples
        });
        let restarted = 1u64;
        let t0 = Instant::now();
        let mut m = lab.members.remove(&restarted).expect("member");
        m.signal("TERM")?;
        m.wait_exit(Duration::from_secs(15))?;
        lab.retire(restarted, m);
        lab.restart(restarted)?;
        wait_for(
            "the restarted member settled",
            Duration::from_secs(30),
            || {
                let (_, out) = lab.lbctl(restarted, &["status"])?;
                Ok(
                    (out.matches("established since").count() == 2 && out.contains("bfd up"))
                        .then_some(()),
                )
            },
        )?;
        std::thread::sleep(Duration::from_secs(2));
        sampling.store(false, std::sync::atomic::Ordering::Relaxed);
        let samples = handle.join().map_err(|_| anyhow::anyhow!("sampler"))?;
        Ok((t0, samples))
    })?;
    let (t0, samples) = sampler;
    let missing = |pick: fn(&(Instant, Table, Table)) -> &Table| -> Vec<f64> {
        samples
            .iter()
            .filter(|s| !all_via(pick(s), &vips, &all))
            .map(|s| s.0.duration_since(t0).as_secs_f64())
            .collect()
    };
    let (frr_missing, gobgp_missing) = (missing(|s| &s.1), missing(|s| &s.2));
    eprintln!(
        "graceful restart: {} samples; FRR missed a path in {} ({:?}), GoBGP in {} ({:?})",
        samples.len(),
        frr_missing.len(),
        frr_missing.iter().take(5).collect::<Vec<_>>(),
        gobgp_missing.len(),
        gobgp_missing.iter().take(5).collect::<Vec<_>>()
    );
    for s in samples
        .iter()
        .filter(|s| !all_via(&s.1, &vips, &all))
        .take(3)
    {
        eprintln!("FRR at {:?}: {:?}", s.0.duration_since(t0), s.1);
    }
    if !frr_missing.is_empty() {
        for line in lab.members[&1].log().lines() {
            if line.contains("BGP") || line.contains("BFD") {
                eprintln!("{line}");
            }
        }
        eprintln!("{}", frr.log());
        eprintln!("{}", frr.daemon_log("bfdd"));
    }
    assert!(samples.len() > 10, "too few samples: {}", samples.len());
    assert!(
        frr_missing.is_empty() && gobgp_missing.is_empty(),
        "a path left a table during a graceful restart\n{}",
        frr.log()
    );

    Ok(())
}

/// BGP and BFD over IPv6 transport, against FRR: the members peer with
/// fd00:77::100 and carry both families over that session (IPv4 routes
/// with `next_hop_v4`); BFD runs over IPv6 too, and a member's link down
/// leaves FRR's table by BFD, far below the hold time.
#[test]
fn bgp_and_bfd_over_ipv6_with_frr() -> anyhow::Result<()> {
    let mut lab = Lab::new("6")?;
    let frr = Frr::start(
        &lab,
        &PeerSetup {
            hold: 30,
            bfd: true,
            ipv6_transport: true,
            ..PeerSetup::new(65000, MEMBER_AS, FRR_PORT)
        },
    )?;
    lab.start_members_with(|id| {
        format!(
            "[announce]\nmode = \"bgp\"\nlocal_as = {MEMBER_AS}\nrouter_id = \"10.77.0.{id}\"\nhold_time = 30\necmp = true\n\
             next_hop_v4 = \"10.77.0.{id}\"\nnext_hop_v6 = \"fd00:77::{id}\"\n\
             [announce.bfd]\ninterval = \"100ms\"\nmultiplier = 3\n\
             [[announce.peer]]\naddress = \"[fd00:77::100]:{FRR_PORT}\"\nas = 65000\n"
        )
    })?;
    let all: BTreeSet<u64> = (1..=3).collect();
    let vips = v4_and_v6();
    wait_for(
        "FRR: every VIP via all three, over IPv6 sessions",
        Duration::from_secs(30),
        || Ok(all_via(&frr.table()?, &vips, &all).then_some(())),
    )
    .map_err(|e| anyhow::anyhow!("{e}\n{:?}\n{}", frr.table(), frr.log()))?;
    assert_eq!(frr.established()?, all, "FRR's sessions (by IPv6 address)");
    wait_for("FRR's BFD sessions up", Duration::from_secs(20), || {
        Ok((frr.bfd_up()? == all).then_some(()))
    })
    .map_err(|e| anyhow::anyhow!("{e}\n{}", frr.vtysh("show bfd peers").unwrap_or_default()))?;
    let lost = 3u64;
    let rest: BTreeSet<u64> = all.iter().copied().filter(|m| *m != lost).collect();
    let t0 = Instant::now();
    lab.exec(
        "sw",
        &["ip", "link", "set", &format!("p{}", lost - 1), "down"],
    )?;
    wait_for("FRR: the lost member gone", Duration::from_secs(10), || {
        Ok(all_via(&frr.table()?, &vips, &rest).then_some(()))
    })?;
    let gone = t0.elapsed();
    eprintln!("BGP and BFD over IPv6: link down -> FRR dropped the member's paths after {gone:?}");
    assert!(
        gone < Duration::from_secs(3),
        "a lost member's paths outlived BFD's detection by far: {gone:?}"
    );
    Ok(())
}

/// Passive peers: the members listen (`passive = true`, `announce.listen`)
/// and FRR connects to them; a connection from an address that is no
/// passive peer is closed.
#[test]
fn frr_connects_to_passive_members() -> anyhow::Result<()> {
    let mut lab = Lab::new("p")?;
    let frr = Frr::start(
        &lab,
        &PeerSetup {
            connects: true,
            // Signed too: the listener has each passive peer's key.
            password: Some("passive-s3cret".into()),
            ..PeerSetup::new(65000, MEMBER_AS, FRR_PORT)
        },
    )?;
    lab.start_members_with(|id| {
        format!(
            "[announce]\nmode = \"bgp\"\nlocal_as = {MEMBER_AS}\nrouter_id = \"10.77.0.{id}\"\nhold_time = 6\necmp = true\n\
             next_hop_v6 = \"fd00:77::{id}\"\nlisten = \"10.77.0.{id}:179\"\n\
             [[announce.peer]]\naddress = \"10.77.0.100\"\nas = 65000\npassive = true\npassword = \"passive-s3cret\"\n"
        )
    })?;
    let all: BTreeSet<u64> = (1..=3).collect();
    wait_for(
        "FRR: every VIP via all three, sessions it opened",
        Duration::from_secs(30),
        || Ok(all_via(&frr.table()?, &v4_and_v6(), &all).then_some(())),
    )
    .map_err(|e| anyhow::anyhow!("{e}\n{:?}\n{}", frr.table(), lab.members[&1].log()))?;
    // A stranger (another address in the router's namespace) is turned
    // away: its connection closed before anything is said.
    lab.exec("c", &["ip", "addr", "add", "10.77.0.99/24", "dev", "eth0"])?;
    let ns = lab.ns("c");
    let read = std::thread::spawn(move || -> anyhow::Result<usize> {
        ha_tests::netns::enter(&ns)?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(async {
            use tokio::io::AsyncReadExt as _;
            let socket = tokio::net::TcpSocket::new_v4()?;
            socket.bind("10.77.0.99:0".parse()?)?;
            let mut stream = socket.connect("10.77.0.1:179".parse()?).await?;
            let mut buf = [0u8; 64];
            let n = tokio::time::timeout(Duration::from_secs(3), stream.read(&mut buf)).await??;
            Ok(n)
        })
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the stranger panicked"))??;
    assert_eq!(read, 0, "a stranger was answered");
    wait_for(
        "the member logs the stranger",
        Duration::from_secs(2),
        || {
            Ok(lab.members[&1]
                .log()
                .contains("no passive peer")
                .then_some(()))
        },
    )?;
    Ok(())
}

/// TCP MD5 (RFC 2385) with FRR and GoBGP at once: members 1 and 2 have
/// each router's password, member 3 a wrong one for FRR and none for
/// GoBGP. The routers take sessions from 1 and 2 only (the kernel drops
/// the others' segments), and member 3 says so in its status.
#[test]
fn md5_passwords_with_frr_and_gobgp() -> anyhow::Result<()> {
    let mut lab = Lab::new("m")?;
    let frr = Frr::start(
        &lab,
        &PeerSetup {
            password: Some("frr-s3cret".into()),
            ..PeerSetup::new(65000, MEMBER_AS, FRR_PORT)
        },
    )?;
    let gobgp = Gobgp::start(
        &lab,
        &PeerSetup {
            password: Some("gobgp-s3cret".into()),
            ipv6: false,
            ..PeerSetup::new(65010, MEMBER_AS, GOBGP_PORT)
        },
    )?;
    std::fs::write(lab.dir().join("frr.key"), "frr-s3cret\n")?;
    let key_file = lab.dir().join("frr.key");
    lab.start_members_with(|id| {
        let (frr_password, gobgp_password) = if id == 3 {
            ("password = \"not-the-s3cret\"".to_owned(), String::new())
        } else {
            (
                format!("password_file = \"{}\"", key_file.display()),
                "password = \"gobgp-s3cret\"".to_owned(),
            )
        };
        format!(
            "[announce]\nmode = \"bgp\"\nlocal_as = {MEMBER_AS}\nrouter_id = \"10.77.0.{id}\"\nhold_time = 6\necmp = true\n\
             [[announce.peer]]\naddress = \"10.77.0.100:{FRR_PORT}\"\nas = 65000\n{frr_password}\n\
             [[announce.peer]]\naddress = \"10.77.0.100:{GOBGP_PORT}\"\nas = 65010\n{gobgp_password}\n"
        )
    })?;
    let signed: BTreeSet<u64> = [1, 2].into();
    wait_for(
        "FRR and GoBGP: every VIP via the two members with the password",
        Duration::from_secs(30),
        || {
            Ok(
                (all_via(&frr.table()?, &VIPS, &signed)
                    && all_via(&gobgp.table()?, &VIPS, &signed))
                .then_some(()),
            )
        },
    )
    .map_err(|e| {
        anyhow::anyhow!(
            "{e}\nFRR {:?}\nGoBGP {:?}\n{}",
            frr.table(),
            gobgp.table(),
            lab.members[&1].log()
        )
    })?;
    // Long enough for several connection attempts of member 3.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(frr.established()?, signed, "FRR's sessions");
    assert_eq!(gobgp.established()?, signed, "GoBGP's sessions");
    let (_, status) = lab.lbctl(3, &["status"])?;
    assert!(
        !status.contains("established"),
        "member 3 has no session up:\n{status}"
    );
    // The password never reaches the member's log.
    for id in 1..=3 {
        let log = lab.members[&id].log();
        assert!(!log.contains("s3cret"), "member {id} logged a password");
    }
    Ok(())
}

/// Communities per service: a service's `bgp_communities` (standard,
/// large and a well-known name) ride on its VIP's route only, besides the
/// member's own, as FRR and GoBGP decode them; a change in the file is
/// announced again with the new set.
#[test]
fn communities_per_service_reach_frr_and_gobgp() -> anyhow::Result<()> {
    let mut lab = Lab::new("c")?;
    let frr = Frr::start(&lab, &PeerSetup::new(65000, MEMBER_AS, FRR_PORT))?;
    let gobgp = Gobgp::start(
        &lab,
        &PeerSetup {
            ipv6: false,
            ..PeerSetup::new(65010, MEMBER_AS, GOBGP_PORT)
        },
    )?;
    let second = |extra: &'static str| {
        move |i: usize| {
            if i == 1 {
                extra.to_owned()
            } else {
                String::new()
            }
        }
    };
    lab.services_file = Some(lab.services_text(second(
        "bgp_communities = [\"65010:42\", \"65010:1:2\", \"no-export\"]\n",
    )));
    lab.start_members_with(|id| {
        announce(
            id,
            "communities = [\"65001:100\"]\n",
            &[(FRR_PORT, 65000), (GOBGP_PORT, 65010)],
        )
    })?;
    let all: BTreeSet<u64> = (1..=3).collect();
    wait_for("every VIP via all three", Duration::from_secs(30), || {
        Ok(
            (all_via(&frr.table()?, &VIPS, &all) && all_via(&gobgp.table()?, &VIPS, &all))
                .then_some(()),
        )
    })?;
    let community = |vip: &str| -> anyhow::Result<(String, String)> {
        let p = frr_path(&frr, vip)?;
        Ok((
            p.pointer("/community/string")
                .and_then(|s| s.as_str())
                .unwrap_or_default()
                .to_owned(),
            p.pointer("/largeCommunity/string")
                .and_then(|s| s.as_str())
                .unwrap_or_default()
                .to_owned(),
        ))
    };
    assert_eq!(
        community(VIPS[1])?,
        ("65001:100 65010:42 no-export".into(), "65010:1:2".into()),
        "FRR, the service's VIP"
    );
    assert_eq!(
        community(VIPS[0])?,
        ("65001:100".into(), String::new()),
        "FRR, another VIP"
    );
    // GoBGP's JSON: standard communities as numbers, large as parts.
    let text = gobgp.paths("ipv4", &format!("{}/32", VIPS[1]))?.to_string();
    let c42 = (65010u64 << 16) + 42;
    assert!(
        text.contains(&c42.to_string()) && text.contains("\"ASN\":65010"),
        "GoBGP, the service's VIP: {text}"
    );
    let text = gobgp.paths("ipv4", &format!("{}/32", VIPS[0]))?.to_string();
    assert!(
        !text.contains(&c42.to_string()),
        "GoBGP, another VIP: {text}"
    );

    // Changed in the file: announced again with the new set.
    std::fs::write(
        lab.dir().join("services.toml"),
        lab.services_text(second("bgp_communities = [\"65010:43\"]\n")),
    )?;
    wait_for("FRR: the new communities", Duration::from_secs(15), || {
        Ok((community(VIPS[1])? == ("65001:100 65010:43".into(), String::new())).then_some(()))
    })
    .map_err(|e| anyhow::anyhow!("{e}: {:?}", community(VIPS[1])))?;
    let c43 = (65010u64 << 16) + 43;
    wait_for(
        "GoBGP: the new communities",
        Duration::from_secs(15),
        || {
            let text = gobgp.paths("ipv4", &format!("{}/32", VIPS[1]))?.to_string();
            Ok((text.contains(&c43.to_string()) && !text.contains(&c42.to_string())).then_some(()))
        },
    )?;
    Ok(())
}

/// GoBGP over IPv6 transport, connecting to passive members: the members
/// listen on their IPv6 address (`passive = true`), GoBGP opens the
/// sessions from fd00:77::100, and takes every VIP of both families.
#[test]
fn gobgp_connects_to_passive_members_over_ipv6() -> anyhow::Result<()> {
    let mut lab = Lab::new("q")?;
    let gobgp = Gobgp::start(
        &lab,
        &PeerSetup {
            connects: true,
            ipv6_transport: true,
            ..PeerSetup::new(65010, MEMBER_AS, GOBGP_PORT)
        },
    )?;
    lab.start_members_with(|id| {
        format!(
            "[announce]\nmode = \"bgp\"\nlocal_as = {MEMBER_AS}\nrouter_id = \"10.77.0.{id}\"\nhold_time = 6\necmp = true\n\
             next_hop_v4 = \"10.77.0.{id}\"\nnext_hop_v6 = \"fd00:77::{id}\"\nlisten = \"[fd00:77::{id}]:179\"\n\
             [[announce.peer]]\naddress = \"fd00:77::100\"\nas = 65010\npassive = true\n"
        )
    })?;
    let all: BTreeSet<u64> = (1..=3).collect();
    wait_for(
        "GoBGP: every VIP via all three, sessions it opened over IPv6",
        Duration::from_secs(30),
        || Ok(all_via(&gobgp.table()?, &v4_and_v6(), &all).then_some(())),
    )
    .map_err(|e| anyhow::anyhow!("{e}\n{:?}\n{}", gobgp.table(), gobgp.log()))?;
    assert_eq!(
        gobgp.established()?,
        all,
        "GoBGP's sessions (by IPv6 address)"
    );
    Ok(())
}
