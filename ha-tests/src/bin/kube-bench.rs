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

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use ha_tests::fake_api::{FakeApi, Kind};
use ha_tests::{ClusterLayout, Member};
use proto::admin::v1 as pb;
use serde_json::{Value, json};
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

fn service(i: usize) -> Value {
    let ip = format!("10.{}.{}.{}", 96 + i / 65_536, i / 256 % 256, i % 256);
    json!({
        "metadata": {"name": format!("svc-{i}"), "namespace": "bench"},
        "spec": {"type": "ClusterIP", "clusterIP": ip, "clusterIPs": [ip],
                 "ports": [{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"}]}
    })
}

/// Service `i`'s slice, version `v`: endpoints 1..n of its pod network,
/// the last one's host part moving with `v`. Changes of one service in a
/// run are `services` versions apart, which is never a multiple of 150
/// for the sizes used, so every change is a real one.
fn slice(i: usize, n: usize, v: u64) -> Value {
    let endpoints: Vec<Value> = (0..n)
        .map(|e| {
            // Version 0 (the initial one) is the only one with host 99.
            let host = match (e + 1 == n, v) {
                (false, _) => e + 1,
                (true, 0) => 99,
                (true, v) => 100 + (v % 150) as usize,
            };
            json!({"addresses": [format!("172.{}.{}.{host}", 16 + i / 65_536, i / 256 % 256)],
                   "conditions": {"ready": true, "serving": true, "terminating": false},
                   "nodeName": format!("node-{}", (i + e) % 5000),
                   "targetRef": {"kind": "Pod", "namespace": "bench", "name": format!("svc-{i}-pod-{e}")}})
        })
        .collect();
    json!({
        "metadata": {"name": format!("svc-{i}-abcde"), "namespace": "bench",
                     "labels": {"kubernetes.io/service-name": format!("svc-{i}"), "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io"}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": endpoints
    })
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn peak_rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| {
                l.split_whitespace()
                    .nth(1)
                    .and_then(|k| k.parse::<f64>().ok())
            })
        })
        .map_or(0.0, |kib| kib / 1024.0)
}

/// Per service index: when its pending change was written, and which
/// members have applied it.
type Pending = Arc<Mutex<HashMap<usize, (Instant, u8)>>>;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let a = args()?;
    let api = FakeApi::start(Duration::from_secs(60)).await?;
    eprintln!(
        "populating {} services x {} endpoints",
        a.services, a.endpoints
    );
    for i in 0..a.services {
        api.apply(Kind::Services, service(i))?;
        api.apply(Kind::EndpointSlices, slice(i, a.endpoints, 0))?;
    }
    let dir = tempfile::tempdir()?;
    api.write_kubeconfig(dir.path(), "kube")?;
    let layout = ClusterLayout::write_with_source(
        dir.path(),
        3,
        "[source.kubernetes]\nkubeconfig = \"kube.kubeconfig\"\n",
        "kube-bench",
    )?;

    // 1. Cold start.
    let started = Instant::now();
    let mut members = BTreeMap::new();
    for id in 1..=3u64 {
        members.insert(id, Member::start(&layout.config(id))?);
    }
    let want = a.services as u64;
    let want_destinations = (a.services * a.endpoints) as u64;
    loop {
        let mut done = 0;
        for m in members.values() {
            let s = m
                .client()
                .await?
                .get_status(pb::GetStatusRequest {})
                .await?
                .into_inner();
            if s.services == want
                && s.dataplane.is_some_and(|d| {
                    d.programmed_services == want && d.programmed_destinations == want_destinations
                })
            {
                done += 1;
            }
        }
        if done == 3 {
            break;
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(600),
            "cold start did not finish in 10 minutes"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let cold = started.elapsed();
    println!(
        "cold start: {} services, {} endpoints: all 3 members programmed in {:.2} s",
        a.services,
        a.services * a.endpoints,
        cold.as_secs_f64()
    );

    // 2. Propagation.
    let pending: Pending = Arc::default();
    let latencies = Arc::new(Mutex::new(Vec::<Duration>::new()));
    let per_member = Arc::new(Mutex::new(BTreeMap::<usize, Vec<Duration>>::new()));
    for (bit, m) in members.values().enumerate() {
        let mut stream = m
            .client()
            .await?
            .watch_events(pb::WatchEventsRequest::default())
            .await?
            .into_inner();
        let pending = pending.clone();
        let latencies = latencies.clone();
        let per_member = per_member.clone();
        tokio::spawn(async move {
            while let Some(Ok(e)) = stream.next().await {
                let now = Instant::now();
                let Some(i) = e
                    .message
                    .strip_prefix("service bench/svc-")
                    .and_then(|r| r.split(':').next())
                    .and_then(|n| n.parse::<usize>().ok())
                else {
                    continue;
                };
                let mut p = pending
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                if let Some((sent, seen)) = p.get_mut(&i) {
                    if *seen & (1 << bit) == 0 {
                        per_member
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner)
                            .entry(bit)
                            .or_default()
                            .push(now - *sent);
                    }
                    *seen |= 1 << bit;
                    if *seen == 0b111 {
                        let l = now - *sent;
                        let at = *sent;
                        p.remove(&i);
                        latencies
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner)
                            .push(l);
                        if std::env::var_os("KUBE_BENCH_TRACE").is_some()
                            && l > Duration::from_millis(100)
                        {
                            eprintln!("slow: sent at {:?} took {l:?}", at);
                        }
                    }
                }
            }
        });
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    api.reset_stats();
    let total = a.rate * a.seconds;
    let drive = |count: u64, offset: u64| {
        let api = &api;
        let pending = pending.clone();
        let (rate, services, endpoints) = (a.rate, a.services, a.endpoints);
        async move {
            let t0 = tokio::time::Instant::now();
            for k in 0..count {
                let at = t0 + Duration::from_nanos(k * 1_000_000_000 / rate);
                tokio::time::sleep_until(at).await;
                let i = ((k + offset) as usize) % services;
                pending
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .insert(i, (Instant::now(), 0));
                api.apply(Kind::EndpointSlices, slice(i, endpoints, k + offset + 1))?;
            }
            anyhow::Ok(t0.elapsed())
        }
    };
    let took = drive(total, 0).await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut l = latencies
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    l.sort();
    let lost = {
        let p = pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut never: Vec<_> = p.iter().map(|(i, (_, seen))| (*i, *seen)).collect();
        never.sort();
        if !never.is_empty() {
            eprintln!("never seen on all members (service, members bitmask): {never:?}");
        }
        p.len()
    };
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
    for (bit, l) in per_member
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .iter_mut()
    {
        l.sort();
        println!(
            "  member {}: applied p50 {:.1} ms, p99 {:.1} ms",
            bit + 1,
            percentile(l, 0.5).as_secs_f64() * 1e3,
            percentile(l, 0.99).as_secs_f64() * 1e3
        );
    }
    let stats = api.stats();
    for (agent, s) in &stats {
        if agent.starts_with("lb-node") {
            println!(
                "  API server -> {agent}: requests {:?}, {:.1} MB",
                s.requests,
                s.bytes_sent as f64 / 1e6
            );
        }
    }
    for (id, m) in &members {
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
        let kubeconfig = api.write_kubeconfig(dir.path(), "node")?;
        let version = api.resource_version().to_string();
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
        api.reset_stats();
        let count = a.rate * seconds;
        drive(count, total).await?;
        tokio::time::sleep(Duration::from_secs(1)).await;
        stop.cancel();
        let stats = api.stats();
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
