//! BGP announcement against a real peer: BIRD 2 in the router namespace of
//! the lab peers (eBGP, AS 65000) with three lb-node members (AS 65001),
//! which announce the VIPs they own. Checks BIRD's routing table: each VIP
//! via its owner; a member killed: its routes gone within the hold time and
//! its VIP announced by another; a member stopped cleanly or drained: its
//! routes withdrawn at once; a member cut from the quorum (its Raft port
//! blocked, its BGP session up): it withdraws.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Child;
use std::time::{Duration, Instant};

use ha_tests::l2lab::{Lab, VIP6, VIPS};
use ha_tests::wait_for;

const HOLD: u64 = 6;

/// BIRD's BFD, 100 ms x 3 on every interface.
const BIRD_BFD: &str = "protocol bfd {\n  interface \"*\" { min rx interval 100 ms; min tx interval 100 ms; multiplier 3; };\n}\n";

struct Bird {
    child: Child,
}

impl Drop for Bird {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_bird(lab: &Lab) -> anyhow::Result<Bird> {
    start_bird_as(lab, "bird", 179, 65000, 65001)
}

/// `start_bird_as` with more configuration: `global` at the top level,
/// `session` in every BGP session, and the hold time.
struct BirdExtra<'a> {
    global: &'a str,
    session: &'a str,
    hold: u64,
}

/// A BIRD instance `name` in the router namespace, listening on `port`,
/// in AS `asn`, peering with the three members (AS `member_as`).
fn start_bird_as(
    lab: &Lab,
    name: &str,
    port: u16,
    asn: u32,
    member_as: u32,
) -> anyhow::Result<Bird> {
    start_bird_with(
        lab,
        name,
        port,
        asn,
        member_as,
        BirdExtra {
            global: "",
            session: "",
            hold: HOLD,
        },
    )
}

fn start_bird_with(
    lab: &Lab,
    name: &str,
    port: u16,
    asn: u32,
    member_as: u32,
    extra: BirdExtra<'_>,
) -> anyhow::Result<Bird> {
    let BirdExtra {
        global,
        session,
        hold,
    } = extra;
    // iBGP with members on the shared segment: a direct session (BIRD
    // takes iBGP for multihop otherwise).
    let direct = if asn == member_as { "direct;\n  " } else { "" };
    let mut text = format!(
        "router id 10.77.0.100;\nprotocol device {{ }}\n{global}\
         template bgp lbnode {{\n  local 10.77.0.100 port {port} as {asn};\n  hold time {hold};\n  passive on;\n  error wait time 1, 5;\n  {direct}{session}\
         ipv4 {{ import all; export none; }};\n  ipv6 {{ import all; export none; }};\n}}\n"
    );
    for id in 1..=3 {
        text.push_str(&format!(
            "protocol bgp m{id} from lbnode {{ neighbor 10.77.0.{id} as {member_as}; }}\n"
        ));
    }
    spawn_bird(lab, name, &text)
}

/// BIRD instance `name` in the router namespace with configuration `text`.
fn spawn_bird(lab: &Lab, name: &str, text: &str) -> anyhow::Result<Bird> {
    let dir = lab.dir();
    let config = dir.join(format!("{name}.conf"));
    std::fs::write(&config, text)?;
    let socket = dir.join(format!("{name}.ctl"));
    let child = lab.spawn(
        "c",
        &[
            "bird",
            "-f",
            "-c",
            config.to_str().unwrap_or_default(),
            "-s",
            socket.to_str().unwrap_or_default(),
            "-P",
            dir.join(format!("{name}.pid")).to_str().unwrap_or_default(),
        ],
    )?;
    Ok(Bird { child })
}

fn show_routes(lab: &Lab, name: &str) -> anyhow::Result<String> {
    show_routes_for(lab, name, &[])
}

/// `birdc show route all [for <prefix>]` of BIRD instance `name`.
fn show_routes_for(lab: &Lab, name: &str, extra: &[&str]) -> anyhow::Result<String> {
    let socket = lab.dir().join(format!("{name}.ctl"));
    let mut args = vec![
        "birdc",
        "-s",
        socket.to_str().unwrap_or_default(),
        "show",
        "route",
        "all",
    ];
    args.extend_from_slice(extra);
    lab.exec("c", &args)
}

/// VIP -> the members BIRD has a route to it through.
fn routes(lab: &Lab) -> anyhow::Result<BTreeMap<String, BTreeSet<u64>>> {
    routes_of(lab, "bird")
}

fn routes_of(lab: &Lab, name: &str) -> anyhow::Result<BTreeMap<String, BTreeSet<u64>>> {
    Ok(parse_routes(&show_routes(lab, name)?))
}

/// VIP -> the members of its next hops, from `birdc show route all`.
fn parse_routes(out: &str) -> BTreeMap<String, BTreeSet<u64>> {
    let mut table: BTreeMap<String, BTreeSet<u64>> = BTreeMap::new();
    let mut current: Option<String> = None;
    for line in out.lines() {
        let first = line.split_whitespace().next().unwrap_or("");
        if let Some(prefix) = first
            .strip_suffix("/32")
            .or_else(|| first.strip_suffix("/128"))
        {
            current = Some(prefix.to_owned());
        }
        let member = line
            .trim()
            .strip_prefix("BGP.next_hop: ")
            .and_then(|h| h.split_whitespace().next())
            .and_then(|h| {
                h.strip_prefix("10.77.0.")
                    .or_else(|| h.strip_prefix("fd00:77::"))
            })
            .and_then(|m| m.parse::<u64>().ok());
        if let (Some(vip), Some(member)) = (&current, member) {
            table.entry(vip.clone()).or_default().insert(member);
        }
    }
    table
}

/// Each VIP with exactly one next hop, and who.
fn owners(lab: &Lab) -> anyhow::Result<Option<BTreeMap<String, u64>>> {
    let t = routes(lab)?;
    if std::env::var_os("BGP_TRACE").is_some() {
        eprintln!("routes: {t:?}");
    }
    let ok = VIPS.iter().all(|v| t.get(*v).is_some_and(|s| s.len() == 1));
    Ok(ok.then(|| {
        t.into_iter()
            .filter_map(|(v, s)| s.into_iter().next().map(|m| (v, m)))
            .collect()
    }))
}

#[test]
fn bird_sees_owners_and_withdrawals() -> anyhow::Result<()> {
    let mut lab = Lab::new("b")?;
    let _bird = start_bird(&lab)?;
    lab.start_members_with(|id| {
        format!(
            "[announce]\nmode = \"bgp\"\nlocal_as = 65001\nrouter_id = \"10.77.0.{id}\"\nhold_time = {HOLD}\n\
             communities = [\"65001:100\"]\n[[announce.peer]]\naddress = \"10.77.0.100\"\nas = 65000\n"
        )
    })?;
    // Every VIP via exactly one member: its owner.
    let first = wait_for("each VIP via its owner", Duration::from_secs(30), || {
        owners(&lab)
    })?;
    eprintln!("owners: {first:?}");

    // Cut from the quorum (its packets to the other members blackholed,
    // its BGP session untouched): it withdraws on its own once its lease
    // runs out, and its VIP moves.
    let (cut_vip, cut) = first
        .iter()
        .last()
        .map(|(v, m)| (v.clone(), *m))
        .expect("a VIP");
    let others: Vec<String> = (1..=3u64)
        .filter(|id| *id != cut)
        .map(|id| format!("10.77.0.{id}/32"))
        .collect();
    let t0 = Instant::now();
    for net in &others {
        lab.exec(
            &format!("m{cut}"),
            &["ip", "route", "add", "blackhole", net],
        )?;
    }
    wait_for("the cut member withdraws", Duration::from_secs(5), || {
        Ok(routes(&lab)?
            .values()
            .all(|s| !s.contains(&cut))
            .then_some(()))
    })?;
    eprintln!(
        "member {cut} cut from the quorum: withdrew after {:?}",
        t0.elapsed()
    );
    assert!(
        !lab.members[&cut].log().contains("BGP session reset"),
        "the withdrawal came from the member, not from a lost session"
    );
    wait_for(
        "its VIP via another member",
        Duration::from_secs(10),
        || {
            Ok(owners(&lab)?
                .and_then(|o| o.get(&cut_vip).copied())
                .filter(|m| *m != cut))
        },
    )?;
    for net in &others {
        lab.exec(
            &format!("m{cut}"),
            &["ip", "route", "del", "blackhole", net],
        )?;
    }
    let healed = wait_for(
        "every VIP announced once after the heal",
        Duration::from_secs(30),
        || owners(&lab),
    )?;

    // Gone silently (its link down: no FIN, no RST): BIRD drops its routes
    // when the hold timer expires. A member that has routes, or the test
    // would prove nothing.
    let silent = *healed.values().next().expect("a member with a VIP");
    let t0 = Instant::now();
    lab.exec(
        "sw",
        &["ip", "link", "set", &format!("p{}", silent - 1), "down"],
    )?;
    wait_for(
        "the silent member's routes gone",
        Duration::from_secs(HOLD + 3),
        || {
            Ok(routes(&lab)?
                .values()
                .all(|s| !s.contains(&silent))
                .then_some(()))
        },
    )?;
    let gone = t0.elapsed();
    eprintln!("member {silent} silent: its routes gone after {gone:?} (hold time {HOLD} s)");
    assert!(
        gone <= Duration::from_secs(HOLD + 2),
        "routes outlived the hold time: {gone:?}"
    );
    lab.exec(
        "sw",
        &["ip", "link", "set", &format!("p{}", silent - 1), "up"],
    )?;
    let first = wait_for(
        "every VIP announced once after the link is back",
        Duration::from_secs(30),
        || owners(&lab),
    )?;

    // Killed: BIRD drops its routes (at once: the kernel closes the
    // connection), and the VIP comes back through another member.
    let (vip, victim) = first
        .iter()
        .next()
        .map(|(v, m)| (v.clone(), *m))
        .expect("a VIP");
    let mut m = lab.members.remove(&victim).expect("member");
    let t0 = Instant::now();
    m.signal("KILL")?;
    m.wait_exit(Duration::from_secs(5))?;
    wait_for(
        "the killed member's routes gone",
        Duration::from_secs(HOLD + 3),
        || {
            Ok(routes(&lab)?
                .values()
                .all(|s| !s.contains(&victim))
                .then_some(()))
        },
    )?;
    let gone = t0.elapsed();
    let moved = wait_for(
        "the VIP back via another member",
        Duration::from_secs(10),
        || {
            Ok(owners(&lab)?
                .and_then(|o| o.get(&vip).copied())
                .filter(|m| *m != victim))
        },
    )?;
    eprintln!("member {victim} killed: its routes gone after {gone:?}; {vip} now via {moved}");
    assert!(
        gone <= Duration::from_secs(HOLD + 2),
        "routes outlived the hold time: {gone:?}"
    );

    // Drained: its routes withdrawn at once (and its VIPs move).
    // lbctl runs in the leader's namespace (each admin API listens on its
    // own namespace's loopback).
    let leader_id = wait_for("a leader", Duration::from_secs(10), || Ok(lab.leader()))?;
    let drained = *lab
        .members
        .keys()
        .find(|id| **id != leader_id)
        .expect("a member");
    let t0 = Instant::now();
    let (code, out) = lab.lbctl(leader_id, &["member", "drain", &drained.to_string()])?;
    assert_eq!(code, 0, "{out}");
    wait_for(
        "the drained member's routes gone",
        Duration::from_secs(5),
        || {
            Ok(routes(&lab)?
                .values()
                .all(|s| !s.contains(&drained))
                .then_some(()))
        },
    )?;
    eprintln!(
        "member {drained} drained: routes gone after {:?}",
        t0.elapsed()
    );
    assert!(
        t0.elapsed() < Duration::from_secs(HOLD),
        "a drain waited for the hold time"
    );
    let (code, out) = lab.lbctl(leader_id, &["member", "undrain", &drained.to_string()])?;
    assert_eq!(code, 0, "{out}");

    // Stopped cleanly: withdrawn at once, Cease sent.
    let holder = wait_for("a member with routes", Duration::from_secs(10), || {
        Ok(owners(&lab)?.and_then(|o| o.values().next().copied()))
    })?;
    let mut m = lab.members.remove(&holder).expect("member");
    let t0 = Instant::now();
    m.signal("TERM")?;
    m.wait_exit(Duration::from_secs(10))?;
    // The log reader thread may be a line behind the exit.
    std::thread::sleep(Duration::from_millis(300));
    assert!(m.log().contains("Cease sent"), "{}", m.log());
    wait_for(
        "the stopped member's routes gone",
        Duration::from_secs(5),
        || {
            Ok(routes(&lab)?
                .values()
                .all(|s| !s.contains(&holder))
                .then_some(()))
        },
    )?;
    eprintln!(
        "member {holder} stopped: routes gone after {:?}",
        t0.elapsed()
    );
    assert!(
        t0.elapsed() < Duration::from_secs(HOLD),
        "a clean stop waited for the hold time"
    );
    Ok(())
}

/// ECMP mode with two peers at once: an eBGP BIRD (AS 65000) and an iBGP
/// one (AS 65001, the members' own). Every VIP reaches both through all
/// three members (the IPv6 VIP too, in MP_REACH over the IPv4 sessions);
/// eBGP routes carry the members' AS, iBGP ones LOCAL_PREF
/// and the community; a drained member leaves both tables.
#[test]
fn ecmp_with_an_ebgp_and_an_ibgp_peer() -> anyhow::Result<()> {
    let mut lab = Lab::new("e")?;
    let _ebgp = start_bird_as(&lab, "ebgp", 179, 65000, 65001)?;
    let _ibgp = start_bird_as(&lab, "ibgp", 1179, 65001, 65001)?;
    lab.start_members_with(|id| {
        format!(
            "[announce]\nmode = \"bgp\"\nlocal_as = 65001\nrouter_id = \"10.77.0.{id}\"\nhold_time = {HOLD}\necmp = true\n\
             communities = [\"65001:100\"]\nlocal_pref = 150\nnext_hop_v6 = \"fd00:77::{id}\"\n\
             [[announce.peer]]\naddress = \"10.77.0.100\"\nas = 65000\n\
             [[announce.peer]]\naddress = \"10.77.0.100:1179\"\nas = 65001\n"
        )
    })?;
    let all: BTreeSet<u64> = (1..=3).collect();
    for name in ["ebgp", "ibgp"] {
        wait_for(
            &format!("{name}: every VIP via all three"),
            Duration::from_secs(30),
            || {
                let t = routes_of(&lab, name)?;
                Ok(VIPS
                    .iter()
                    .chain([&VIP6])
                    .all(|v| t.get(*v) == Some(&all))
                    .then_some(()))
            },
        )?;
    }
    let ebgp = show_routes(&lab, "ebgp")?;
    assert!(ebgp.contains("BGP.as_path: 65001"), "{ebgp}");
    assert!(ebgp.contains("BGP.community: (65001,100)"), "{ebgp}");
    let ibgp = show_routes(&lab, "ibgp")?;
    assert!(ibgp.contains("BGP.local_pref: 150"), "{ibgp}");
    assert!(
        ibgp.contains("BGP.as_path: \n") || ibgp.lines().any(|l| l.trim() == "BGP.as_path:"),
        "{ibgp}"
    );

    let leader = wait_for("a leader", Duration::from_secs(10), || Ok(lab.leader()))?;
    let drained = if leader == 1 { 2 } else { 1 };
    let (code, out) = lab.lbctl(leader, &["member", "drain", &drained.to_string()])?;
    assert_eq!(code, 0, "{out}");
    let rest: BTreeSet<u64> = all.iter().copied().filter(|m| *m != drained).collect();
    for name in ["ebgp", "ibgp"] {
        wait_for(
            &format!("{name}: the drained member gone"),
            Duration::from_secs(5),
            || {
                let t = routes_of(&lab, name)?;
                Ok(VIPS
                    .iter()
                    .chain([&VIP6])
                    .all(|v| t.get(*v) == Some(&rest))
                    .then_some(()))
            },
        )?;
    }
    Ok(())
}

/// BFD against BIRD's (RFC 5880/5881, 100 ms x 3 on both sides), with a
/// BGP hold time of 30 s that would otherwise keep a lost member's routes:
/// the sessions come up and `lbctl status` shows them; a member whose link
/// goes down (no FIN, no RST) or whose process stalls (SIGSTOP) leaves
/// BIRD's table in the detection time plus BIRD's reaction, not the hold
/// time; each comes back when its path does.
#[test]
fn bfd_drops_a_lost_or_stalled_member_at_once() -> anyhow::Result<()> {
    let mut lab = Lab::new("f")?;
    let _bird = start_bird_with(
        &lab,
        "bird",
        179,
        65000,
        65001,
        BirdExtra {
            global: BIRD_BFD,
            session: "bfd on;\n  ",
            hold: 30,
        },
    )?;
    lab.start_members_with(|id| {
        format!(
            "[announce]\nmode = \"bgp\"\nlocal_as = 65001\nrouter_id = \"10.77.0.{id}\"\nhold_time = 30\n\
             [announce.bfd]\ninterval = \"100ms\"\nmultiplier = 3\n\
             [[announce.peer]]\naddress = \"10.77.0.100\"\nas = 65000\n"
        )
    })?;
    wait_for("each VIP via its owner", Duration::from_secs(30), || {
        owners(&lab)
    })?;
    let socket = lab.dir().join("bird.ctl");
    let bfd_sessions = |lab: &Lab| -> anyhow::Result<String> {
        lab.exec(
            "c",
            &[
                "birdc",
                "-s",
                socket.to_str().unwrap_or_default(),
                "show",
                "bfd",
                "sessions",
            ],
        )
    };
    wait_for(
        "BIRD's three BFD sessions up",
        Duration::from_secs(20),
        || {
            let out = bfd_sessions(&lab)?;
            Ok((out.lines().filter(|l| l.contains(" Up ")).count() == 3).then_some(()))
        },
    )?;
    eprintln!("{}", bfd_sessions(&lab)?);
    // Every member's session up too (a member whose first connection
    // came before BIRD listened waits for its backoff; until then it is
    // unready and owns nothing, so the wait above does not see it).
    for id in 1..=3u64 {
        wait_for(
            "the member's session and BFD up",
            Duration::from_secs(20),
            || {
                let (code, out) = lab.lbctl(id, &["status"])?;
                anyhow::ensure!(code == 0, "{out}");
                Ok(
                    (out.contains("bgp peer   10.77.0.100:179 AS 65000: established since")
                        && out.contains("bfd up"))
                    .then_some(()),
                )
            },
        )?;
    }

    // A member with routes.
    let with_routes = |lab: &Lab| -> anyhow::Result<Option<u64>> {
        Ok(owners(lab)?.and_then(|o| o.values().next().copied()))
    };
    let gone = |lab: &Lab, member: u64| -> anyhow::Result<Option<()>> {
        Ok(routes(lab)?
            .values()
            .all(|s| !s.contains(&member))
            .then_some(()))
    };

    // Its link down: no FIN, no RST.
    let lost = wait_for("a member with routes", Duration::from_secs(10), || {
        with_routes(&lab)
    })?;
    let t0 = Instant::now();
    lab.exec(
        "sw",
        &["ip", "link", "set", &format!("p{}", lost - 1), "down"],
    )?;
    wait_for(
        "the lost member's routes gone",
        Duration::from_secs(10),
        || gone(&lab, lost),
    )?;
    let lost_after = t0.elapsed();
    lab.exec(
        "sw",
        &["ip", "link", "set", &format!("p{}", lost - 1), "up"],
    )?;
    wait_for(
        "every VIP announced once after the link is back",
        Duration::from_secs(30),
        || owners(&lab),
    )?;

    // Stalled: SIGSTOP (a frozen process is a lost member).
    let stalled = wait_for("a member with routes", Duration::from_secs(10), || {
        with_routes(&lab)
    })?;
    let t0 = Instant::now();
    lab.members[&stalled].signal("STOP")?;
    let waited = wait_for(
        "the stalled member's routes gone",
        Duration::from_secs(10),
        || gone(&lab, stalled),
    );
    let stalled_after = t0.elapsed();
    lab.members[&stalled].signal("CONT")?;
    waited?;
    wait_for(
        "every VIP announced once after the stall",
        Duration::from_secs(30),
        || owners(&lab),
    )?;
    let (_, status) = lab.lbctl(stalled, &["status"])?;
    eprintln!(
        "BFD 100 ms x 3, hold time 30 s: link down -> routes gone after {lost_after:?}; \
         SIGSTOP -> routes gone after {stalled_after:?}\n{status}"
    );
    // Far below the hold time (the figure is what counts; the bound only
    // keeps a loaded machine from failing the test).
    for (what, after) in [("link down", lost_after), ("SIGSTOP", stalled_after)] {
        assert!(
            after < Duration::from_secs(3),
            "{what}: routes outlived BFD's detection by far: {after:?}"
        );
    }
    Ok(())
}

/// Graceful restart (RFC 4724) in ECMP mode with BFD, against BIRD as the
/// receiving speaker (its default, `graceful restart aware`) with `bfd
/// graceful` (BIRD 2.0.12 counts a neighbor's AdminDown as a failure;
/// this makes a BFD failure a restart): a member stopped (SIGTERM) and
/// started again keeps its path to every VIP in BIRD's table the whole
/// time (sampled back to back), and the restarted member's End-of-RIB
/// leaves the routes in place. A member stopped and not started again
/// loses its routes when the restart time runs out.
#[test]
fn graceful_restart_keeps_the_routes_through_a_restart() -> anyhow::Result<()> {
    const RESTART_TIME: u64 = 8;
    let mut lab = Lab::new("g")?;
    let _bird = start_bird_with(
        &lab,
        "bird",
        179,
        65000,
        65001,
        BirdExtra {
            global: &format!(
                "log \"{}\" all;\ndebug protocols {{ states, routes, events }};\n{BIRD_BFD}",
                lab.dir().join("bird.log").display()
            ),
            session: "bfd graceful;\n  ",
            hold: HOLD,
        },
    )?;
    lab.start_members_with(|id| {
        format!(
            "[announce]\nmode = \"bgp\"\nlocal_as = 65001\nrouter_id = \"10.77.0.{id}\"\nhold_time = {HOLD}\necmp = true\n\
             graceful_restart = \"{RESTART_TIME}s\"\n[announce.bfd]\n\
             [[announce.peer]]\naddress = \"10.77.0.100\"\nas = 65000\n"
        )
    })?;
    let all: BTreeSet<u64> = (1..=3).collect();
    let every_vip_via = |lab: &Lab, members: &BTreeSet<u64>| -> anyhow::Result<Option<()>> {
        let t = routes(lab)?;
        Ok(VIPS
            .iter()
            .all(|v| t.get(*v) == Some(members))
            .then_some(()))
    };
    wait_for("every VIP via all three", Duration::from_secs(30), || {
        every_vip_via(&lab, &all)
    })?;
    // BFD up everywhere first, so that the stop's AdminDown is tested.
    for id in 1..=3u64 {
        wait_for("BFD up", Duration::from_secs(20), || {
            let (_, out) = lab.lbctl(id, &["status"])?;
            Ok(out.contains("bfd up").then_some(()))
        })?;
    }

    // A sampler: BIRD's table back to back, until told to stop.
    let sampling = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let sampler = {
        let (ns, socket) = (lab.ns("c"), lab.dir().join("bird.ctl"));
        let sampling = sampling.clone();
        std::thread::spawn(move || {
            let mut samples: Vec<(Instant, BTreeMap<String, BTreeSet<u64>>)> = Vec::new();
            while sampling.load(std::sync::atomic::Ordering::Relaxed) {
                let out = std::process::Command::new("ip")
                    .args(["netns", "exec", &ns, "birdc", "-s"])
                    .arg(&socket)
                    .args(["show", "route", "all"])
                    .output();
                if let Ok(out) = out {
                    samples.push((
                        Instant::now(),
                        parse_routes(&String::from_utf8_lossy(&out.stdout)),
                    ));
                }
            }
            samples
        })
    };

    // Member 1 stopped (SIGTERM) and started again.
    let restarted = 1u64;
    let t0 = Instant::now();
    let mut m = lab.members.remove(&restarted).expect("member");
    m.signal("TERM")?;
    m.wait_exit(Duration::from_secs(15))?;
    std::thread::sleep(Duration::from_millis(300));
    let log = m.log();
    lab.retire(restarted, m);
    assert!(
        log.contains("routes left to the peer's graceful restart"),
        "{log}"
    );
    let stopped_after = t0.elapsed();
    lab.restart(restarted)?;
    wait_for(
        "the restarted member settled",
        Duration::from_secs(30),
        || {
            let (_, out) = lab.lbctl(restarted, &["status"])?;
            Ok((out.contains("established since") && out.contains("bfd up")).then_some(()))
        },
    )?;
    // Past its End-of-RIB, and a little more.
    std::thread::sleep(Duration::from_secs(2));
    sampling.store(false, std::sync::atomic::Ordering::Relaxed);
    let samples = sampler.join().expect("sampler");
    let missing: Vec<f64> = samples
        .iter()
        .filter(|(_, t)| VIPS.iter().any(|v| t.get(*v) != Some(&all)))
        .map(|(at, _)| at.duration_since(t0).as_secs_f64())
        .collect();
    eprintln!(
        "graceful restart of member {restarted}: stopped after {stopped_after:?}, back and settled after {:?}; \
         {} samples of BIRD's table, {} with a path missing {:?}",
        t0.elapsed(),
        samples.len(),
        missing.len(),
        missing.iter().take(5).collect::<Vec<_>>()
    );
    for (at, t) in samples
        .iter()
        .filter(|(_, t)| VIPS.iter().any(|v| t.get(*v) != Some(&all)))
        .take(3)
    {
        eprintln!("at {:?}: {t:?}", at.duration_since(t0));
    }
    if !missing.is_empty() {
        let bird = std::fs::read_to_string(lab.dir().join("bird.log")).unwrap_or_default();
        for line in bird.lines().filter(|l| l.contains("m1")) {
            eprintln!("bird: {line}");
        }
        for line in lab.members[&restarted].log().lines() {
            if line.contains("BGP") || line.contains("BFD") || line.contains("takes VIPs") {
                eprintln!("{line}");
            }
        }
    }
    assert!(samples.len() > 20, "too few samples: {}", samples.len());
    assert!(
        missing.is_empty(),
        "a path left BIRD's table during the restart"
    );
    assert!(
        lab.members[&restarted]
            .log()
            .contains("BGP session established"),
        "restarted"
    );

    // Stopped for good: BIRD keeps the routes for the restart time, then
    // drops them.
    let gone_member = 2u64;
    let mut m = lab.members.remove(&gone_member).expect("member");
    let t0 = Instant::now();
    m.signal("TERM")?;
    m.wait_exit(Duration::from_secs(15))?;
    let rest: BTreeSet<u64> = all.iter().copied().filter(|m| *m != gone_member).collect();
    wait_for(
        "its routes gone after the restart time",
        Duration::from_secs(RESTART_TIME + 10),
        || every_vip_via(&lab, &rest),
    )?;
    let gone = t0.elapsed();
    eprintln!(
        "member {gone_member} stopped for good: its routes gone after {gone:?} (restart time {RESTART_TIME} s)"
    );
    assert!(
        gone >= Duration::from_secs(RESTART_TIME - 1),
        "the routes went before the restart time ({gone:?}): not graceful"
    );
    lab.retire(gone_member, m);
    Ok(())
}

/// TCP MD5 (RFC 2385) with BIRD: members 1 and 2 have the password,
/// member 3 a wrong one. BIRD takes routes from 1 and 2 only.
#[test]
fn bird_takes_sessions_with_the_md5_password_only() -> anyhow::Result<()> {
    let mut lab = Lab::new("5")?;
    let _bird = start_bird_with(
        &lab,
        "bird",
        179,
        65000,
        65001,
        BirdExtra {
            global: "",
            session: "password \"bird-s3cret\";\n  ",
            hold: HOLD,
        },
    )?;
    lab.start_members_with(|id| {
        let password = if id == 3 { "not-the-s3cret" } else { "bird-s3cret" };
        format!(
            "[announce]\nmode = \"bgp\"\nlocal_as = 65001\nrouter_id = \"10.77.0.{id}\"\nhold_time = {HOLD}\necmp = true\n\
             [[announce.peer]]\naddress = \"10.77.0.100\"\nas = 65000\npassword = \"{password}\"\n"
        )
    })?;
    let signed: BTreeSet<u64> = [1, 2].into();
    wait_for("every VIP via 1 and 2", Duration::from_secs(30), || {
        let t = routes(&lab)?;
        Ok(VIPS
            .iter()
            .all(|v| t.get(*v) == Some(&signed))
            .then_some(()))
    })
    .map_err(|e| anyhow::anyhow!("{e}\n{:?}", routes(&lab)))?;
    // Long enough for several connection attempts of member 3.
    std::thread::sleep(Duration::from_secs(3));
    let t = routes(&lab)?;
    assert!(
        VIPS.iter().all(|v| t.get(*v) == Some(&signed)),
        "only the members with the password: {t:?}"
    );
    let (_, status) = lab.lbctl(3, &["status"])?;
    assert!(!status.contains("established"), "member 3:\n{status}");
    Ok(())
}

/// Communities per service with BIRD: the second service's
/// `bgp_communities` ride on its VIP's route only, with the member's own.
#[test]
fn bird_sees_each_services_communities() -> anyhow::Result<()> {
    let mut lab = Lab::new("7")?;
    let _bird = start_bird(&lab)?;
    lab.services_file = Some(lab.services_text(|i| {
        if i == 1 {
            "bgp_communities = [\"65010:42\", \"65010:1:2\"]\n".into()
        } else {
            String::new()
        }
    }));
    lab.start_members_with(|id| {
        format!(
            "[announce]\nmode = \"bgp\"\nlocal_as = 65001\nrouter_id = \"10.77.0.{id}\"\nhold_time = {HOLD}\necmp = true\n\
             communities = [\"65001:100\"]\n[[announce.peer]]\naddress = \"10.77.0.100\"\nas = 65000\n"
        )
    })?;
    let all: BTreeSet<u64> = (1..=3).collect();
    wait_for("every VIP via all three", Duration::from_secs(30), || {
        let t = routes(&lab)?;
        Ok(VIPS.iter().all(|v| t.get(*v) == Some(&all)).then_some(()))
    })?;
    // `show route all for <prefix>`: each path's attributes.
    let attributes = |vip: &str| show_routes_for(&lab, "bird", &["for", &format!("{vip}/32")]);
    let tagged = attributes(VIPS[1])?;
    assert!(
        tagged.contains("BGP.community: (65001,100) (65010,42)")
            && tagged.contains("BGP.large_community: (65010, 1, 2)"),
        "{tagged}"
    );
    let plain = attributes(VIPS[0])?;
    assert!(
        plain.contains("BGP.community: (65001,100)")
            && !plain.contains("65010")
            && !plain.contains("large_community"),
        "{plain}"
    );
    Ok(())
}

/// BIRD over IPv6 transport, connecting to passive members: the members
/// listen on their IPv6 address (`passive = true`), BIRD opens the
/// sessions from fd00:77::100 and takes every VIP of both families.
#[test]
fn bird_connects_to_passive_members_over_ipv6() -> anyhow::Result<()> {
    let mut lab = Lab::new("8")?;
    let mut text = String::from(
        "router id 10.77.0.100;\nprotocol device { }\n\
         template bgp lbnode {\n  local fd00:77::100 as 65000;\n  hold time 6;\n  connect retry time 1;\n  error wait time 1, 5;\n\
         ipv4 { import all; export none; };\n  ipv6 { import all; export none; };\n}\n",
    );
    for id in 1..=3 {
        text.push_str(&format!(
            "protocol bgp m{id} from lbnode {{ neighbor fd00:77::{id} port 179 as 65001; }}\n"
        ));
    }
    let _bird = spawn_bird(&lab, "bird", &text)?;
    lab.start_members_with(|id| {
        format!(
            "[announce]\nmode = \"bgp\"\nlocal_as = 65001\nrouter_id = \"10.77.0.{id}\"\nhold_time = {HOLD}\necmp = true\n\
             next_hop_v4 = \"10.77.0.{id}\"\nnext_hop_v6 = \"fd00:77::{id}\"\nlisten = \"[fd00:77::{id}]:179\"\n\
             [[announce.peer]]\naddress = \"fd00:77::100\"\nas = 65000\npassive = true\n"
        )
    })?;
    let all: BTreeSet<u64> = (1..=3).collect();
    wait_for(
        "BIRD: every VIP via all three, sessions it opened over IPv6",
        Duration::from_secs(30),
        || {
            let t = routes(&lab)?;
            Ok(VIPS
                .iter()
                .chain([&VIP6])
                .all(|v| t.get(*v) == Some(&all))
                .then_some(()))
        },
    )
    .map_err(|e| anyhow::anyhow!("{e}\n{:?}", routes(&lab)))?;
    Ok(())
}
