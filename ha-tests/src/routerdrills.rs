//! Drills through a real router: the L2 lab's three members announce the
//! VIPs by BGP, with BFD (50 ms x 3) and graceful restart, to FRR in the
//! router namespace (`c`), whose zebra installs them in that namespace's
//! kernel (one path per VIP in owner mode, three in ECMP mode, hashed per
//! connection: `fib_multipath_hash_policy` 1). The client lives behind the
//! router (`cl`, 10.78.0.2, its default route through `c`) and opens a new
//! connection to every VIP 50 times a second; every member serves every
//! VIP (the VIPs are on its loopback, answered by a small HTTP server), so
//! where a request lands is the router's choice alone, and a member's
//! kernel keeps serving whatever happens to its lb-node, as IPVS does.
//! The router's kernel table is read every 10 ms through the drill.
//!
//! The router's BFD: the restart drill runs FRR with `bfd
//! check-control-plane-failure` (a BFD Down during a graceful restart is
//! the restart), the failure drills without (a BFD Down is a lost path):
//! while lb-node's BFD shares fate with its control plane (C bit 0), no
//! router configuration tried gets both (docs/announcement.md). BIRD
//! 2.0.12 takes even an AdminDown for a failure.
//!
//! Drills (`--mode owner|ecmp`, both when not given):
//! - `bgp-leader-crash`: the leader's lb-node SIGKILLed;
//! - `bgp-owner-crash`: another member's lb-node SIGKILLed;
//! - `bgp-machine-lost`: a member's link down (no FIN, no RST);
//! - `bgp-stalled-member`: a member's lb-node SIGSTOPped;
//! - `bgp-rolling-restart`: every member stopped (SIGTERM) and started
//!   again, followers first;
//! - `bgp-bfd-cost`: no fault; the CPU time of every member's lb-node and
//!   of FRR's daemons over 30 s with the sessions up, and every BFD
//!   session up throughout (`DRILL_BFD_MS=0` runs it without BFD, the
//!   baseline);
//! - `learner-scale-out` (ECMP mode only): two machines join as learners
//!   under traffic, then a voter's and a learner's machine are lost
//!   (`scaleout.rs`).

use std::collections::BTreeSet;
use std::process::Child;
use std::time::Duration;

use anyhow::Context as _;

use crate::l2lab::{Lab, VIPS, since_ms, unix_now};
use crate::netdrills::{leader_other_than, settled};
use crate::report::Report;
use crate::routers::{Frr, PeerSetup};
pub use crate::routertable::Mode;
use crate::routertable::{REQUESTS_PER_SECOND, Sampler, Table, complete, in_router};
use crate::traffic::Traffic;

pub const ROUTER_DRILLS: [&str; 7] = [
    "bgp-leader-crash",
    "bgp-owner-crash",
    "bgp-machine-lost",
    "bgp-stalled-member",
    "bgp-rolling-restart",
    "bgp-bfd-cost",
    "learner-scale-out",
];

/// How long `bgp-bfd-cost` measures.
const COST_WINDOW: Duration = Duration::from_secs(30);

const HOLD: u64 = 9;
const RESTART_TIME: u64 = 60;

/// The client's namespace, deleted on drop.
struct ClientNs(String);

impl Drop for ClientNs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &self.0])
            .status();
    }
}

/// Runs one drill in a fresh lab.
pub fn run(name: &str, mode: Mode) -> anyhow::Result<Report> {
    let index = ROUTER_DRILLS
        .iter()
        .position(|d| *d == name)
        .with_context(|| {
            format!(
                "unknown router drill {name:?}; drills: {}",
                ROUTER_DRILLS.join(", ")
            )
        })?;
    let scale_out = name == "learner-scale-out";
    anyhow::ensure!(
        !scale_out || mode == Mode::Ecmp,
        "learner-scale-out runs in ECMP mode only (--mode ecmp)"
    );
    let mut lab = Lab::new(&format!("r{index}{}", &mode.name()[..1]))?;
    lab.admin_on_lan = true;
    lab.ipv6_service = false;
    // learner-scale-out: two more machines, which join as learners.
    let machines: u64 = if scale_out {
        for id in crate::scaleout::LEARNERS {
            lab.add_host(&format!("m{id}"), &format!("10.77.0.{id}"))?;
        }
        5
    } else {
        3
    };

    // The client behind the router.
    let client = ClientNs(lab.ns("cl"));
    let run = |args: &[&str]| -> anyhow::Result<()> {
        let status = std::process::Command::new(args[0])
            .args(&args[1..])
            .status()
            .with_context(|| format!("cannot run {}", args.join(" ")))?;
        anyhow::ensure!(status.success(), "{} failed", args.join(" "));
        Ok(())
    };
    run(&["ip", "netns", "add", &client.0])?;
    lab.exec(
        "c",
        &[
            "ip", "link", "add", "eth1", "type", "veth", "peer", "name", "cl0",
        ],
    )?;
    lab.exec("c", &["ip", "link", "set", "cl0", "netns", &client.0])?;
    lab.exec("c", &["ip", "addr", "add", "10.78.0.1/24", "dev", "eth1"])?;
    lab.exec("c", &["ip", "link", "set", "eth1", "up"])?;
    for sysctl in [
        "net.ipv4.ip_forward=1",
        "net.ipv4.fib_multipath_hash_policy=1",
    ] {
        lab.exec("c", &["sysctl", "-qw", sysctl])?;
    }
    let in_client = |args: &[&str]| -> anyhow::Result<()> {
        let mut full = vec!["ip", "netns", "exec", &client.0];
        full.extend_from_slice(args);
        run(&full)
    };
    in_client(&["ip", "link", "set", "lo", "up"])?;
    in_client(&["ip", "addr", "add", "10.78.0.2/24", "dev", "cl0"])?;
    in_client(&["ip", "link", "set", "cl0", "up"])?;
    in_client(&["ip", "route", "add", "default", "via", "10.78.0.1"])?;
    // Every member's kernel serves every VIP (as IPVS would), answers ARP
    // only for its own addresses (so the router never finds a VIP by ARP),
    // and reaches the client through the router.
    for id in 1..=machines {
        let m = format!("m{id}");
        lab.exec(&m, &["sysctl", "-qw", "net.ipv4.conf.all.arp_ignore=1"])?;
        for vip in VIPS {
            lab.exec(
                &m,
                &["ip", "addr", "add", &format!("{vip}/32"), "dev", "lo"],
            )?;
        }
        lab.exec(
            &m,
            &["ip", "route", "add", "10.78.0.0/24", "via", "10.77.0.100"],
        )?;
    }

    // BFD's interval on both sides: 50 ms (lb-node's default) unless
    // `DRILL_BFD_MS` says; 0 is no BFD (only `bgp-bfd-cost` takes it: the
    // failure drills measure BFD).
    let bfd_ms: u64 = std::env::var("DRILL_BFD_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|ms| (10..=1000).contains(ms) || (*ms == 0 && name == "bgp-bfd-cost"))
        .unwrap_or(50);
    let bfd = bfd_ms != 0;
    let frr = Frr::start(
        &lab,
        &PeerSetup {
            hold: HOLD,
            bfd_interval_ms: bfd_ms,
            // One router configuration cannot have both today (lb-node's
            // BFD shares fate with its control plane, C bit 0): the
            // restart drill runs the router that takes a BFD Down during
            // a graceful restart for the restart, the failure drills the
            // one that takes it for a lost path (docs/drills.md).
            bfd_ignores_restarts: name == "bgp-rolling-restart",
            ipv6: false,
            bfd,
            graceful_restart: true,
            members: machines,
            ..PeerSetup::new(65000, 65001, 179)
        },
    )?;
    let ecmp = mode == Mode::Ecmp;
    let bfd_section = if bfd {
        format!("[announce.bfd]\ninterval = \"{bfd_ms}ms\"\nmultiplier = 3\n")
    } else {
        String::new()
    };
    let announce = |id: u64| {
        format!(
            "[announce]\nmode = \"bgp\"\nlocal_as = 65001\nrouter_id = \"10.77.0.{id}\"\nhold_time = {HOLD}\necmp = {ecmp}\n\
             graceful_restart = \"{RESTART_TIME}s\"\n{bfd_section}\
             [[announce.peer]]\naddress = \"10.77.0.100\"\nas = 65000\n"
        )
    };
    lab.start_members_with(announce)?;
    let lab_http = crate::binary("lab-http")?;
    let lab_http = lab_http.to_str().context("lab-http path")?;
    let mut servers: Vec<Child> = (1..=machines)
        .map(|id| {
            lab.spawn(
                &format!("m{id}"),
                &[lab_http, "serve", "0.0.0.0:80", &format!("m{id}")],
            )
        })
        .collect::<anyhow::Result<_>>()?;

    let client_ns = client.0.clone();
    let router_ns = lab.ns("c");
    let result = std::thread::scope(|s| {
        s.spawn(|| -> anyhow::Result<Report> {
            crate::netns::enter(&client_ns)?;
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?;
            let result = runtime.block_on(drill(
                &mut lab, &frr, name, mode, &router_ns, bfd, &announce,
            ));
            if std::env::var_os("DRILL_LOGS").is_some() {
                for (id, log) in &lab.past_logs {
                    eprintln!("==== member {id} (before its restart)\n{log}");
                }
                for (id, m) in &lab.members {
                    eprintln!("==== member {id}\n{}", m.log());
                }
                eprintln!("==== FRR\n{}", frr.log());
            } else if result.as_ref().is_ok_and(|r| !r.passed) {
                // A failure explains itself (in CI too): what the members
                // and the router said about sessions, leases and routes.
                eprintln!("{}", failure_logs(&lab, &frr));
            }
            result
        })
        .join()
        .map_err(|_| anyhow::anyhow!("the drill thread panicked"))?
    });
    for server in &mut servers {
        let _ = server.kill();
        let _ = server.wait();
    }
    drop(frr);
    result.map(|mut r| {
        r.extra.insert("bfd_ms".into(), serde_json::json!(bfd_ms));
        r.extra.insert(
            "router_bfd".into(),
            serde_json::json!(if name == "bgp-rolling-restart" {
                "check-control-plane-failure"
            } else {
                "down is down"
            }),
        );
        r
    })
}

/// The lines of the members' and the router's logs that say why paths
/// left the router: warnings, BGP, BFD, leases and VIP owners (the last
/// `LINES` of each).
fn failure_logs(lab: &Lab, frr: &Frr) -> String {
    const LINES: usize = 150;
    let keep = |log: &str, words: &[&str]| -> String {
        let lines: Vec<&str> = log
            .lines()
            .filter(|l| words.iter().any(|w| l.contains(w)))
            .collect();
        lines[lines.len().saturating_sub(LINES)..].join("\n")
    };
    let member_words = [
        "WARN",
        "ERROR",
        "BGP",
        "BFD",
        "lease",
        "VIP owners",
        "role changed",
    ];
    let mut out = String::new();
    let members = lab
        .past_logs
        .iter()
        .map(|(id, log)| (format!("member {id} (before its restart)"), log.clone()))
        .chain(
            lab.members
                .iter()
                .map(|(id, m)| (format!("member {id}"), m.log())),
        );
    for (who, log) in members {
        out.push_str(&format!("==== {who}\n{}\n", keep(&log, &member_words)));
    }
    let router_words = [
        "Down",
        "down",
        "Up",
        "up",
        "withdraw",
        "NOTIFICATION",
        "reset",
        "BFD",
        "bfd",
    ];
    for daemon in ["bgpd", "bfdd"] {
        out.push_str(&format!(
            "==== FRR {daemon}\n{}\n",
            keep(&frr.daemon_log(daemon), &router_words)
        ));
    }
    out
}

async fn drill(
    lab: &mut Lab,
    frr: &Frr,
    name: &str,
    mode: Mode,
    router_ns: &str,
    bfd: bool,
    announce: &dyn Fn(u64) -> String,
) -> anyhow::Result<Report> {
    let mut report = Report {
        drill: name.into(),
        tier: "netns-router",
        ..Report::default()
    };
    report
        .extra
        .insert("mode".into(), serde_json::json!(mode.name()));
    let all: BTreeSet<u64> = (1..=3).collect();
    let leader = settled(lab, Duration::from_secs(30)).await?;
    let before = crate::eventually(
        "the router's table complete",
        Duration::from_secs(30),
        || async {
            let t = in_router(router_ns)?;
            Ok(complete(&t, mode, &all).then_some(t))
        },
    )
    .await?;
    // BFD up with every member, or a fault would be found by the hold
    // time and prove nothing about BFD.
    if bfd {
        crate::eventually(
            "the router's BFD sessions up",
            Duration::from_secs(20),
            || async { Ok((frr.bfd_up()?.len() == 3).then_some(())) },
        )
        .await?;
    }
    if name == "bgp-bfd-cost" {
        return cost(lab, frr, report, bfd).await;
    }
    if name == "learner-scale-out" {
        return crate::scaleout::drill(lab, router_ns, announce, report).await;
    }
    let has_routes = |m: u64| before.values().any(|s| s.contains(&m));
    let victim = match name {
        "bgp-leader-crash" | "bgp-rolling-restart" => leader,
        _ => *all
            .iter()
            .find(|m| **m != leader && has_routes(**m))
            .context("a follower with routes")?,
    };
    // The VIPs the victim alone carries (owner mode).
    let victim_vips: BTreeSet<&str> = VIPS
        .iter()
        .copied()
        .filter(|v| {
            before
                .get(*v)
                .is_some_and(|s| s == &BTreeSet::from([victim]))
        })
        .collect();

    let sampler = Sampler::start(router_ns.to_owned());
    let mut traffic = Vec::new();
    for v in VIPS {
        traffic.push((
            v,
            Traffic::start(
                (v.parse::<std::net::Ipv4Addr>()?, 80).into(),
                REQUESTS_PER_SECOND,
            ),
        ));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;

    let t0 = unix_now();
    // When the fault was undone (the member back): VIPs may move back to
    // it from then on.
    let mut repaired = f64::INFINITY;
    match name {
        "bgp-leader-crash" | "bgp-owner-crash" => {
            let member = lab.members.remove(&victim).context("victim")?;
            member.signal("KILL")?;
            if name == "bgp-leader-crash" {
                match leader_other_than(lab, victim, Duration::from_secs(10)).await {
                    Ok(_) => report.time_to_new_leader_ms = Some(since_ms(t0)),
                    Err(e) => report.failures.push(format!("no new leader: {e:#}")),
                }
            }
            tokio::time::sleep(Duration::from_secs(3)).await;
            let mut member = member;
            member.wait_exit(Duration::from_secs(5))?;
            lab.retire(victim, member);
            repaired = unix_now();
            lab.restart(victim)?;
        }
        "bgp-machine-lost" => {
            let port = format!("p{}", victim - 1);
            lab.exec("sw", &["ip", "link", "set", &port, "down"])?;
            tokio::time::sleep(Duration::from_secs(3)).await;
            repaired = unix_now();
            lab.exec("sw", &["ip", "link", "set", &port, "up"])?;
        }
        "bgp-stalled-member" => {
            lab.members[&victim].signal("STOP")?;
            tokio::time::sleep(Duration::from_secs(3)).await;
            repaired = unix_now();
            lab.members[&victim].signal("CONT")?;
        }
        "bgp-rolling-restart" => {
            let mut order: Vec<u64> = all.iter().copied().filter(|id| *id != leader).collect();
            order.push(leader);
            for id in order {
                let mut member = lab.members.remove(&id).context("member")?;
                member.signal("TERM")?;
                member.wait_exit(Duration::from_secs(15))?;
                lab.retire(id, member);
                lab.restart(id)?;
                settled(lab, Duration::from_secs(30)).await?;
                // Its BGP session back, and its share of VIPs in owner
                // mode, before the next one goes.
                crate::eventually(
                    "the restarted member's routes",
                    Duration::from_secs(20),
                    || async {
                        let t = in_router(router_ns)?;
                        Ok(
                            (complete(&t, mode, &all) && t.values().any(|s| s.contains(&id)))
                                .then_some(()),
                        )
                    },
                )
                .await?;
            }
        }
        _ => anyhow::bail!("unknown router drill {name:?}"),
    }
    settled(lab, Duration::from_secs(30)).await?;
    crate::eventually(
        "the router's table complete again",
        Duration::from_secs(30),
        || async { Ok(complete(&in_router(router_ns)?, mode, &all).then_some(())) },
    )
    .await?;
    report.time_to_converged_ms = Some(since_ms(t0));
    tokio::time::sleep(Duration::from_secs(1)).await;
    let samples = sampler.finish();

    // The router's table after the fault: when the victim's routes left
    // it (and, in owner mode, when its VIPs came back through another
    // member); any moment a survivor's route was missing.
    let after: Vec<&(f64, Table)> = samples.iter().filter(|(at, _)| *at >= t0).collect();
    report
        .extra
        .insert("router_samples".into(), serde_json::json!(after.len()));
    let gone = after
        .iter()
        .find(|(_, t)| t.values().all(|s| !s.contains(&victim)))
        .map(|(at, _)| ((at - t0) * 1000.0) as u64);
    report
        .extra
        .insert("victim_routes_gone_ms".into(), serde_json::json!(gone));
    if mode == Mode::Owner {
        let moved = after
            .iter()
            .find(|(_, t)| {
                !victim_vips.is_empty()
                    && victim_vips.iter().all(|v| {
                        t.get(*v)
                            .is_some_and(|s| !s.is_empty() && !s.contains(&victim))
                    })
            })
            .map(|(at, _)| ((at - t0) * 1000.0) as u64);
        report.time_to_vip_moved_ms = moved;
    }
    let hitless = name == "bgp-rolling-restart";
    let mut survivor_missing = 0u64;
    let mut first_missing: Option<String> = None;
    for (at, t) in &after {
        let broken = match mode {
            // Every path but the victim's stays (in a rolling restart,
            // every path).
            Mode::Ecmp => VIPS.iter().any(|v| {
                let have = t.get(*v).cloned().unwrap_or_default();
                before[*v]
                    .iter()
                    .any(|m| (hitless || *m != victim) && !have.contains(m))
            }),
            // Every VIP keeps a route, but the victim's own while it
            // moves (in a rolling restart, every VIP).
            Mode::Owner => VIPS.iter().any(|v| {
                (hitless || !victim_vips.contains(v)) && t.get(*v).is_none_or(|s| s.is_empty())
            }),
        };
        if broken {
            survivor_missing += 1;
            first_missing.get_or_insert_with(|| format!("{:+.3} s: {t:?}", at - t0));
        }
    }
    report.extra.insert(
        "samples_with_a_path_missing".into(),
        serde_json::json!(survivor_missing),
    );
    if let Some(first) = first_missing {
        report.failures.push(format!(
            "{survivor_missing} samples of the router's table lacked a path that had to stay; first at {first}"
        ));
    }

    // Requests: in owner mode only the victim's VIPs may fail (none in a
    // rolling restart); in ECMP mode the flows that hashed to the victim
    // may, and how long after the fault the last one failed is the
    // figure.
    let mut last_failure: Option<f64> = None;
    let mut failed_in_failback = 0u64;
    for (v, t) in traffic {
        let records = t.finish().await;
        if std::env::var_os("DRILL_TRAFFIC").is_some() {
            for r in &records {
                let answer = r.answer.as_deref().unwrap_or("-");
                eprintln!("{v} {:+.3} {answer} {} ms", r.at - t0, r.took_ms);
            }
        }
        for r in records.iter().filter(|r| r.answer.is_none() && r.at >= t0) {
            last_failure = Some(last_failure.map_or(r.at, |l: f64| l.max(r.at)));
        }
        let may_fail = !hitless
            && match mode {
                Mode::Owner => victim_vips.contains(v),
                Mode::Ecmp => true,
            };
        // Owner mode: once the member is back, a VIP moved to it (the
        // rebalance) switches the router's path, and a request in flight
        // at that instant lands on a member that has no state for it:
        // reported, not failed (the promise is about the fault; keeping
        // such connections is the connection-survival issue's).
        let (during, failback): (Vec<_>, Vec<_>) = records
            .iter()
            .cloned()
            .partition(|r| may_fail || r.at < repaired || r.answer.is_some());
        failed_in_failback += failback.len() as u64;
        report.add_traffic(v, &during, may_fail);
        report.requests_sent = Some(report.requests_sent.unwrap_or(0) + failback.len() as u64);
    }
    report.extra.insert(
        "failed_in_failback".into(),
        serde_json::json!(failed_in_failback),
    );
    report.extra.insert(
        "last_failure_ms".into(),
        serde_json::json!(last_failure.map(|l| ((l - t0) * 1000.0) as u64)),
    );
    report
        .extra
        .insert("victim".into(), serde_json::json!(victim));
    report.passed = report.failures.is_empty();
    Ok(report)
}

/// `bgp-bfd-cost`: the CPU time every member's lb-node and each FRR daemon
/// spend over [`COST_WINDOW`] with every session up and nothing
/// happening, in milliseconds of CPU per second; with BFD, every session
/// must stay up throughout (FRR's `uptime` covers the window).
async fn cost(lab: &Lab, frr: &Frr, mut report: Report, bfd: bool) -> anyhow::Result<Report> {
    let mut pids: Vec<(String, u32)> = lab
        .members
        .iter()
        .map(|(id, m)| (format!("lb-node m{id}"), m.pid()))
        .collect();
    pids.extend(frr.pids().into_iter().map(|(d, pid)| (d.to_owned(), pid)));
    let before: Vec<f64> = pids
        .iter()
        .map(|(_, pid)| cpu_seconds(*pid))
        .collect::<anyhow::Result<_>>()?;
    let t0 = unix_now();
    tokio::time::sleep(COST_WINDOW).await;
    let elapsed = unix_now() - t0;
    let mut per_process = serde_json::Map::new();
    for ((name, pid), before) in pids.iter().zip(before) {
        let used = cpu_seconds(*pid)? - before;
        // Milliseconds of CPU per second, one decimal.
        let rate = (used / elapsed * 10_000.0).round() / 10.0;
        per_process.insert(name.clone(), serde_json::json!(rate));
    }
    let members: Vec<f64> = per_process
        .iter()
        .filter(|(k, _)| k.starts_with("lb-node"))
        .filter_map(|(_, v)| v.as_f64())
        .collect();
    report.extra.insert(
        "lb_node_cpu_ms_per_s_mean".into(),
        serde_json::json!(
            (members.iter().sum::<f64>() / members.len().max(1) as f64 * 10.0).round() / 10.0
        ),
    );
    report.extra.insert(
        "cpu_ms_per_s".into(),
        serde_json::Value::Object(per_process),
    );
    report
        .extra
        .insert("window_s".into(), serde_json::json!(elapsed.round()));
    if bfd {
        let peers = frr.vtysh_json("show bfd peers json")?;
        let steady = peers
            .as_array()
            .into_iter()
            .flatten()
            .filter(|p| {
                p.get("status").and_then(|s| s.as_str()) == Some("up")
                    // Whole seconds, truncated.
                    && p.get("uptime").and_then(|u| u.as_f64()).unwrap_or(0.0) >= elapsed.floor()
            })
            .count();
        if steady != 3 {
            report.failures.push(format!(
                "{steady} of 3 BFD sessions stayed up through the {elapsed:.0} s window: {peers}"
            ));
        }
    }
    report.passed = report.failures.is_empty();
    Ok(report)
}

/// A process's CPU time so far (user and system), in seconds.
fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("process {pid} is gone"))?;
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    // utime and stime: fields 14 and 15 of the line, counted from the
    // state (field 3), in clock ticks of 1/100 s (Linux's USER_HZ).
    let ticks = |n: usize| -> anyhow::Result<f64> {
        fields
            .get(n - 3)
            .and_then(|f| f.parse::<f64>().ok())
            .with_context(|| format!("/proc/{pid}/stat has no field {n}"))
    };
    Ok((ticks(14)? + ticks(15)?) / 100.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(rows: &[(&str, &[u64])]) -> Table {
        rows.iter()
            .map(|(v, ms)| ((*v).to_owned(), ms.iter().copied().collect()))
            .collect()
    }

    #[test]
    fn complete_tables_by_mode() {
        let all: BTreeSet<u64> = (1..=3).collect();
        let ecmp = table(&[
            (VIPS[0], &[1, 2, 3]),
            (VIPS[1], &[1, 2, 3]),
            (VIPS[2], &[1, 2, 3]),
        ]);
        assert!(complete(&ecmp, Mode::Ecmp, &all));
        assert!(!complete(&ecmp, Mode::Owner, &all));
        let owner = table(&[(VIPS[0], &[1]), (VIPS[1], &[2]), (VIPS[2], &[3])]);
        assert!(complete(&owner, Mode::Owner, &all));
        let lopsided = table(&[(VIPS[0], &[1]), (VIPS[1], &[1]), (VIPS[2], &[3])]);
        assert!(!complete(&lopsided, Mode::Owner, &all));
        let missing = table(&[(VIPS[0], &[1, 2, 3]), (VIPS[1], &[1, 2, 3])]);
        assert!(!complete(&missing, Mode::Ecmp, &all));
    }
}
