//! Kubernetes source benchmark: three real `lb-node` processes (the
//! workspace's release binaries) and the fake API server on loopback.
//!
//! 1. Cold start: the API server holds `--services` Services with one
//!    EndpointSlice of `--endpoints` endpoints each; time from starting the
//!    members until all three hold the whole table.
//! 2. Propagation: EndpointSlice changes at `--rate` per second for
//!    `--seconds` (each change replaces one endpoint of one service, every
//!    service in turn); for each change, the time from the write on the API
//!    server until all three members have applied it (seen on each
//!    member's admin event stream). p50, p99, max; changes never seen are
//!    reported as lost.
//! 3. API server cost, measured in the same run: the requests and bytes
//!    the API server sent to the appliance during phase 2 (one watch per
//!    kind, from the leader), then the same change stream for a shorter
//!    phase with `--node-watchers` kube-rs clients watching EndpointSlices
//!    as per-node proxies do; their bytes per watcher times N is what N
//!    nodes cost.
//!
//!   cargo build --release --workspace --bins
//!   cargo run --release -p ha-tests --bin kube-bench -- [--services 10000] [--endpoints 10]
//!       [--rate 1000] [--seconds 30] [--node-watchers 20]

use std::time::Duration;

use anyhow::Context as _;
use ha_tests::scale::{Bench, Scale, peak_rss_mib, percentile};
use tokio_stream::StreamExt as _;

struct Args {
    services: usize,
    endpoints: usize,
    rate: u64,
    seconds: u64,
    node_watchers: usize,
}

fn args() -> anyhow::Result<Args> {
    let mut a = Args {
        services: 10_000,
        endpoints: 10,
        rate: 1_000,
        seconds: 30,
        node_watchers: 20,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = || {
            it.next()
                .context("a value")
                .and_then(|v| Ok(v.parse::<u64>()?))
        };
        match arg.as_str() {
            "--services" => a.services = value()? as usize,
            "--endpoints" => a.endpoints = value()? as usize,
            "--rate" => a.rate = value()?,
            "--seconds" => a.seconds = value()?,
            "--node-watchers" => a.node_watchers = value()? as usize,
            other => anyhow::bail!(
                "unknown argument {other:?}; usage: kube-bench [--services N] [--endpoints N] [--rate N] [--seconds N] [--node-watchers N]"
            ),
        }
    }
    Ok(a)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let a = args()?;
    eprintln!(
        "populating {} services x {} endpoints",
        a.services, a.endpoints
    );
    // 1. Cold start.
    let mut bench = Bench::start(Scale {
        services: a.services,
        endpoints: a.endpoints,
        rate: a.rate,
        seconds: a.seconds,
        ..Scale::FULL
    })
    .await?;
    println!(
        "cold start: {} services, {} endpoints: all 3 members programmed in {:.2} s",
        a.services,
        a.services * a.endpoints,
        bench.cold_start.as_secs_f64()
    );

    // 2. Propagation.
    bench.api.reset_stats();
    let total = a.rate * a.seconds;
    let took = bench.drive(total).await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (mut l, lost, mut per_member) = {
        let t = bench
            .tracker
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let l: Vec<Duration> = t.done.iter().map(|(s, d)| *d - *s).collect();
        (l, t.lost(), t.per_member.clone())
    };
    l.sort();
    println!(
        "propagation: {} changes in {:.1} s ({:.0}/s offered): API server write -> applied on all 3 members: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms; {} measured, {} never seen",
        total,
        took.as_secs_f64(),
        total as f64 / took.as_secs_f64(),
        percentile(&l, 0.5).as_secs_f64() * 1e3,
        percentile(&l, 0.99).as_secs_f64() * 1e3,
        l.last().copied().unwrap_or_default().as_secs_f64() * 1e3,
        l.len(),
        lost
    );
    for (id, l) in &mut per_member {
        l.sort();
        println!(
            "  member {id}: applied p50 {:.1} ms, p99 {:.1} ms",
            percentile(l, 0.5).as_secs_f64() * 1e3,
            percentile(l, 0.99).as_secs_f64() * 1e3
        );
    }
    let stats = bench.api.stats();
    for (agent, s) in &stats {
        if agent.starts_with("lb-node") {
            println!(
                "  API server -> {agent}: requests {:?}, {:.1} MB",
                s.requests,
                s.bytes_sent as f64 / 1e6
            );
        }
    }
    for (id, m) in &bench.members {
        println!("  member {id}: peak RSS {:.0} MiB", peak_rss_mib(m.pid()));
        if let Ok((_, metrics)) = m.http_get("/metrics") {
            let get = |name: &str| {
                metrics
                    .lines()
                    .find_map(|l| l.strip_prefix(name))
                    .and_then(|v| v.trim().parse::<f64>().ok())
                    .unwrap_or(0.0)
            };
            let proposals = get("lb_proposal_commit_seconds_count ");
            if proposals > 0.0 {
                println!(
                    "  member {id} (leader): {proposals:.0} proposals, mean commit {:.2} ms, mean plan {:.2} ms, mean batch {:.1} events, {:.0} watch events",
                    get("lb_proposal_commit_seconds_sum ") / proposals * 1e3,
                    get("lb_kube_plan_seconds_sum ") / get("lb_kube_plan_seconds_count ").max(1.0)
                        * 1e3,
                    get("lb_kube_batch_events_sum ") / get("lb_kube_batch_events_count ").max(1.0),
                    get("lb_kube_watch_events_total{kind=\"endpointslices\"} ")
                );
            }
        }
    }

    // 3. The same stream to per-node watchers.
    if a.node_watchers > 0 {
        let seconds = (a.seconds / 3).max(5);
        let kubeconfig = bench.api.write_kubeconfig(bench.dir.path(), "node")?;
        let version = bench.api.resource_version().to_string();
        let stop = tokio_util::sync::CancellationToken::new();
        for n in 0..a.node_watchers {
            let mut config = kube::Config::from_custom_kubeconfig(
                kube::config::Kubeconfig::read_from(&kubeconfig)?,
                &kube::config::KubeConfigOptions::default(),
            )
            .await?;
            config.headers.push((
                http::header::USER_AGENT,
                http::HeaderValue::from_str(&format!("node-proxy/{n}"))?,
            ));
            let client = kube::Client::try_from(config)?;
            let slices: kube::Api<k8s_openapi::api::discovery::v1::EndpointSlice> =
                kube::Api::all(client);
            let version = version.clone();
            let stop = stop.clone();
            tokio::spawn(async move {
                let Ok(stream) = slices
                    .watch(&kube::api::WatchParams::default(), &version)
                    .await
                else {
                    return;
                };
                let mut stream = std::pin::pin!(stream);
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        e = stream.next() => if e.is_none() { return },
                    }
                }
            });
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        bench.api.reset_stats();
        bench.drive(a.rate * seconds).await?;
        tokio::time::sleep(Duration::from_secs(1)).await;
        stop.cancel();
        let stats = bench.api.stats();
        let node_bytes: Vec<u64> = stats
            .iter()
            .filter(|(agent, _)| agent.starts_with("node-proxy/"))
            .map(|(_, s)| s.bytes_sent)
            .collect();
        let appliance: u64 = stats
            .iter()
            .filter(|(agent, _)| agent.starts_with("lb-node"))
            .map(|(_, s)| s.bytes_sent)
            .sum();
        let per_node = node_bytes.iter().sum::<u64>() as f64 / node_bytes.len().max(1) as f64;
        println!(
            "API server cost over {seconds} s at {}/s: the appliance (leader's watches) {:.1} MB; one per-node EndpointSlice watcher {:.1} MB ({} measured); \
             N nodes cost N x that: 1,000 nodes {:.1} GB, 5,000 nodes {:.1} GB, i.e. {:.0}x and {:.0}x the appliance",
            a.rate,
            appliance as f64 / 1e6,
            per_node / 1e6,
            node_bytes.len(),
            per_node * 1000.0 / 1e9,
            per_node * 5000.0 / 1e9,
            per_node * 1000.0 / appliance.max(1) as f64,
            per_node * 5000.0 / appliance.max(1) as f64,
        );
    }
    Ok(())
}
