//! Dataplane planning benchmark, on the memory dataplane (this machine's
//! kernel has no IPVS; the kernel side is measured in the kernel lab):
//! the member's own cost of turning a committed change into dataplane
//! operations, at 50,000 services of 10 backends each.
//!
//! - full sync: plan the whole table against an empty dataplane and apply;
//! - one backend change: the incremental plan (only the changed service)
//!   against the full plan of the same change (the reference, same run);
//! - peak memory of the process.
//!
//!   cargo run --release -p ha-tests --bin dataplane-bench -- [--services 50000] [--changes 1000]

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use lb_node::dataplane::reconcile::plan_sync;
use lb_node::dataplane::{Dataplane, MemoryDataplane, Table};
use lb_node::model::{Command, State, VirtualService};

fn service(n: u32) -> VirtualService {
    lb_node::model::fixtures::numbered_service(n, 10)
}

fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .map(str::to_owned)
        })
        .and_then(|l| {
            l.split_whitespace()
                .nth(1)
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    sorted
        .get(((sorted.len().max(1) - 1) as f64 * p).round() as usize)
        .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let mut services = 50_000u32;
    let mut changes = 1_000u32;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--services" => services = args.next().context("--services N")?.parse()?,
            "--changes" => changes = args.next().context("--changes N")?.parse()?,
            other => anyhow::bail!("unknown argument {other:?}"),
        }
    }
    let mut state = State::default();
    for n in 0..services {
        state.apply(&Command::UpsertService(service(n)))?;
    }
    let mut dataplane = MemoryDataplane::new();

    let t0 = Instant::now();
    let ops = plan_sync(&state, &Table::default(), None);
    let report = dataplane.apply(&ops).await;
    let full_sync = t0.elapsed();
    anyhow::ensure!(report.failed.is_empty(), "full sync failed");
    let op_count = ops.len();

    // One backend weight change at a time, as the reconciler sees them.
    let mut programmed = Table::from_state(&state);
    let mut previous = Arc::new(state);
    let mut incremental = Vec::new();
    let mut full = Vec::new();
    for i in 0..changes {
        let n = (i * 7919) % services;
        let mut s = service(n);
        s.backends[(i % 10) as usize].weight = 2 + i % 50;
        let mut next = State::clone(&previous);
        next.apply(&Command::ReplaceBackends {
            key: s.key,
            backends: s.backends,
        })?;
        let next = Arc::new(next);

        let t = Instant::now();
        let ops = plan_sync(&next, &programmed, Some(&previous));
        let report = dataplane.apply(&ops).await;
        incremental.push(t.elapsed());
        anyhow::ensure!(
            ops.len() == 1 && report.failed.is_empty(),
            "one change, one operation: {ops:?}"
        );

        let t = Instant::now();
        let reference = plan_sync(&next, &programmed, None);
        full.push(t.elapsed());
        anyhow::ensure!(reference == ops, "the full plan agrees");

        for op in &ops {
            programmed.apply(op).ok();
        }
        previous = next;
    }
    incremental.sort();
    full.sort();
    let (inc50, inc99) = (
        percentile(&incremental, 0.5),
        percentile(&incremental, 0.99),
    );
    let (full50, full99) = (percentile(&full, 0.5), percentile(&full, 0.99));
    println!("dataplane-bench: {services} services x 10 backends, memory dataplane");
    println!(
        "  full sync into an empty table: {:.0} ms for {op_count} operations",
        full_sync.as_secs_f64() * 1000.0
    );
    println!(
        "  one backend change, incremental plan + apply: p50 {inc50:.3} ms  p99 {inc99:.3} ms  ({changes} changes)"
    );
    println!(
        "  reference, full plan of the same change:        p50 {full50:.3} ms  p99 {full99:.3} ms  ({:.0}x slower at p50)",
        full50 / inc50.max(1e-9)
    );
    println!("  peak memory: {:.0} MiB", peak_rss_mib());
    println!(
        "{}",
        serde_json::json!({
            "bench": "dataplane", "services": services, "full_sync_ms": full_sync.as_secs_f64() * 1000.0,
            "change_p50_ms": inc50, "change_p99_ms": inc99, "full_plan_p50_ms": full50, "full_plan_p99_ms": full99,
            "peak_rss_mib": peak_rss_mib(),
        })
    );
    Ok(())
}
