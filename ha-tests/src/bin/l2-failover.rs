//! L2 failover benchmark: in the network-namespace lab (three members on a
//! bridge, a client asking for the VIP by ARP every 50 ms and capturing
//! every ARP frame), the VIP's owner is killed with SIGKILL `--runs` times
//! (restarted after each run); the figure is the time from the kill to the
//! new owner's first gratuitous ARP as the client captured it. Default
//! timers (tick 50 ms, election timeout 10-15 ticks). Also checks, over the
//! whole run, that no two members ever answered for the VIP at once.
//!
//!   cargo build --release --workspace --bins
//!   cargo run --release -p ha-tests --bin l2-failover -- [--runs 40]
//!
//! Needs root, iproute2 and tcpdump.

use std::time::Duration;

use anyhow::Context as _;
use ha_tests::l2lab::{Lab, VIPS, split_brain, unix_now};

fn main() -> anyhow::Result<()> {
    let mut runs = 40;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--runs" => runs = args.next().context("--runs N")?.parse()?,
            other => anyhow::bail!("unknown argument {other:?}; usage: l2-failover [--runs N]"),
        }
    }
    let mut lab = Lab::new("f")?;
    lab.start_arp_watch()?;
    lab.start_members()?;
    for vip in VIPS {
        lab.wait_garp(vip, 0.0, None, Duration::from_secs(30))?;
    }
    let mut took = Vec::new();
    let mut leader_took = Vec::new();
    for run in 0..runs {
        // Let the member restarted by the last run rejoin and settle.
        std::thread::sleep(Duration::from_secs(3));
        let leader = lab.leader().context("no leader")?;
        let now = unix_now();
        // Who answers for each VIP now.
        let owners: Vec<(&str, u64)> = VIPS
            .iter()
            .filter_map(|vip| {
                lab.answering(vip)
                    .filter(|(at, _)| now - at < 0.5)
                    .map(|(_, m)| (*vip, m))
            })
            .collect();
        // Odd runs kill the leader's VIP owner (the leader itself), even
        // runs a follower that owns one.
        let want_leader = run % 2 == 1;
        let Some((vip, owner)) = owners
            .iter()
            .find(|(_, m)| (*m == leader) == want_leader)
            .copied()
        else {
            eprintln!(
                "run {run}: no VIP owned by {}; owners {owners:?}",
                if want_leader {
                    "the leader"
                } else {
                    "a follower"
                }
            );
            continue;
        };
        let (new, t) = lab.owner_crash(owner, vip)?;
        eprintln!(
            "run {run}: owner {owner} of {vip}{} killed, member {new} announced after {:.0} ms",
            if owner == leader { " (the leader)" } else { "" },
            t * 1e3
        );
        if owner == leader {
            leader_took.push(t);
        } else {
            took.push(t);
        }
    }
    let summary = |mut v: Vec<f64>| {
        if v.is_empty() {
            return "no runs".to_owned();
        }
        v.sort_by(f64::total_cmp);
        let pct = |p: f64| v[((v.len() as f64 - 1.0) * p).round() as usize] * 1e3;
        format!(
            "{} runs: p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
            v.len(),
            pct(0.5),
            pct(0.99),
            pct(1.0)
        )
    };
    let mut answers = 0;
    let mut brain = None;
    for vip in VIPS {
        let replies = lab.replies(vip);
        answers += replies.len();
        if let Some(problem) = split_brain(&replies, 0.04) {
            brain = Some(format!("{vip}: {problem}"));
        }
    }
    println!(
        "L2 owner crash -> new owner's first gratuitous ARP: owner a follower: {}; owner the leader: {}; {} ARP answers checked, split brain: {}",
        summary(took),
        summary(leader_took),
        answers,
        brain.as_deref().unwrap_or("none")
    );
    anyhow::ensure!(brain.is_none(), "split brain");
    Ok(())
}
