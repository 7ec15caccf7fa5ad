//! The scale run: three real members fed by the fake API server with
//! `services` Services of one `endpoints`-endpoint EndpointSlice each.
//!
//! 1. Cold start: from starting the members until all three have
//!    programmed the whole table.
//! 2. Propagation: EndpointSlice changes at `rate` per second for
//!    `seconds` (each replaces one endpoint of one service, every service
//!    in turn); per change, from the write on the API server until every
//!    member applied it (each member's admin event stream).
//! 3. Leadership transfers under the same stream, there and back: the
//!    member that stops leading must keep its view (`Warm::resumed`),
//!    say what that cost and start its next term from it, and no change
//!    may be lost (`handover` in the report).
//! 4. Leader crash at that scale, under the same change stream: the
//!    leader is SIGKILLed; the time until a change written after the kill
//!    is applied on both survivors, and whether the new leader listed
//!    anything (it must resume from the replicated cursors).
//! 5. Peak memory (VmHWM) of every member.
//!
//! `ha-tests drill scale-50k` runs it at 50,000 × 10, 1,000 changes/s for
//! 60 s, `scale-100k` at 100,000 × 10 with issue 23's targets; the test
//! runs it at a size CI affords. `kube-bench` adds the API
//! server's cost of per-node watchers to phases 1-2.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use proto::admin::v1 as pb;
use serde_json::{Value, json};
use tokio_stream::StreamExt as _;

use crate::fake_api::{FakeApi, Kind};
use crate::report::{Report, ms};
use crate::{ClusterLayout, Member};

/// How big a scale run is, the drill's name and what it must meet.
#[derive(Debug, Clone, Copy)]
pub struct Scale {
    pub services: usize,
    pub endpoints: usize,
    /// Changes per second in phases 2 and 3.
    pub rate: u64,
    /// Length of phase 2.
    pub seconds: u64,
    pub name: &'static str,
    pub targets: Targets,
}

/// What a scale run must meet.
#[derive(Debug, Clone, Copy)]
pub struct Targets {
    /// Peak memory of every member.
    pub memory_mib: f64,
    /// Until changes are applied again: from the leader's crash, or from
    /// the new leader's election (`pause_from_election`).
    pub crash_pause: Duration,
    /// Whether `crash_pause` counts from the election (issue 23's 100k
    /// target) instead of from the crash.
    pub pause_from_election: bool,
    /// From starting the members until all three programmed the table.
    pub cold_start: Option<Duration>,
    /// Propagation's p99 (phase 2).
    pub p99: Option<Duration>,
}

impl Scale {
    /// The size `scale-50k` names, with issue 23's room: under 600 MiB
    /// (was 1 GiB), a crash's pause under 1.5 s from the crash (was 2 s),
    /// propagation p99 under 150 ms.
    pub const FULL: Scale = Scale {
        services: 50_000,
        endpoints: 10,
        rate: 1_000,
        seconds: 60,
        name: "scale-50k",
        targets: Targets {
            memory_mib: 600.0,
            crash_pause: Duration::from_millis(1_500),
            pause_from_election: false,
            cold_start: None,
            p99: Some(Duration::from_millis(150)),
        },
    };

    /// `scale-100k`: twice as many Services, issue 23's targets.
    pub const HUNDRED_K: Scale = Scale {
        services: 100_000,
        name: "scale-100k",
        targets: Targets {
            memory_mib: 1024.0,
            crash_pause: Duration::from_secs(1),
            pause_from_election: true,
            cold_start: Some(Duration::from_secs(40)),
            p99: Some(Duration::from_millis(250)),
        },
        ..Scale::FULL
    };
}

/// Service `i`: ClusterIP 10.(96+i/65536).x.y port 80.
pub fn service(i: usize) -> Value {
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
pub fn slice(i: usize, n: usize, v: u64) -> Value {
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

pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// A process's peak resident memory (VmHWM), MiB.
pub fn peak_rss_mib(pid: u32) -> f64 {
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

fn ms_f(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e4).round() / 10.0
}

/// Changes written and not yet applied everywhere: service index ->
/// (written at, members that applied it as a bitmask); and the changes
/// applied everywhere: (written at, applied on the last member at).
#[derive(Debug, Default)]
pub struct Tracker {
    pending: HashMap<usize, (Instant, u8)>,
    /// The members a change must reach (bit `id - 1`).
    required: u8,
    pub done: Vec<(Instant, Instant)>,
    pub per_member: BTreeMap<u64, Vec<Duration>>,
}

impl Tracker {
    pub fn lost(&self) -> usize {
        self.pending.len()
    }
}

/// The fake API server and three members, once all three programmed the
/// whole table.
#[derive(Debug)]
pub struct Bench {
    pub api: FakeApi,
    pub dir: tempfile::TempDir,
    pub members: BTreeMap<u64, Member>,
    pub tracker: Arc<Mutex<Tracker>>,
    pub scale: Scale,
    /// Changes written so far (each a new version of one slice).
    written: u64,
    pub cold_start: Duration,
}

fn lock(t: &Mutex<Tracker>) -> std::sync::MutexGuard<'_, Tracker> {
    t.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Bench {
    /// Populates the API server, starts three members, and waits until all
    /// three have programmed every service and endpoint (phase 1).
    pub async fn start(scale: Scale) -> anyhow::Result<Bench> {
        let api = FakeApi::start(Duration::from_secs(60)).await?;
        for i in 0..scale.services {
            api.apply(Kind::Services, service(i))?;
            api.apply(Kind::EndpointSlices, slice(i, scale.endpoints, 0))?;
        }
        let dir = tempfile::tempdir()?;
        api.write_kubeconfig(dir.path(), "kube")?;
        let layout = ClusterLayout::write_with_source(
            dir.path(),
            3,
            "[source.kubernetes]\nkubeconfig = \"kube.kubeconfig\"\n",
            "kube-bench",
        )?;
        let started = Instant::now();
        let members = layout.start_all()?;
        let want = scale.services as u64;
        let want_destinations = (scale.services * scale.endpoints) as u64;
        crate::eventually(
            "all three members programmed the whole table",
            Duration::from_secs(600),
            || async {
                for m in members.values() {
                    let s = m
                        .client()
                        .await?
                        .get_status(pb::GetStatusRequest {})
                        .await?
                        .into_inner();
                    let programmed = s.services == want
                        && s.dataplane.is_some_and(|d| {
                            d.programmed_services == want
                                && d.programmed_destinations == want_destinations
                        });
                    if !programmed {
                        return Ok(None);
                    }
                }
                Ok(Some(()))
            },
        )
        .await?;
        let cold_start = started.elapsed();
        let tracker = Arc::new(Mutex::new(Tracker {
            required: 0b111,
            ..Tracker::default()
        }));
        for (id, m) in &members {
            let mut stream = m
                .client()
                .await?
                .watch_events(pb::WatchEventsRequest::default())
                .await?
                .into_inner();
            let tracker = tracker.clone();
            let bit = 1u8 << (id - 1);
            let id = *id;
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
                    let mut t = lock(&tracker);
                    let required = t.required;
                    let Some((sent, seen)) = t.pending.get(&i).copied() else {
                        continue;
                    };
                    if seen & bit == 0 {
                        t.per_member.entry(id).or_default().push(now - sent);
                    }
                    let seen = seen | bit;
                    if seen & required == required {
                        t.pending.remove(&i);
                        t.done.push((sent, now));
                    } else if let Some(p) = t.pending.get_mut(&i) {
                        p.1 = seen;
                    }
                }
            });
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        Ok(Bench {
            api,
            dir,
            members,
            tracker,
            scale,
            written: 0,
            cold_start,
        })
    }

    /// Writes `count` changes at the scale's rate; returns how long it took.
    pub async fn drive(&mut self, count: u64) -> anyhow::Result<Duration> {
        let t0 = tokio::time::Instant::now();
        let (rate, services, endpoints) =
            (self.scale.rate, self.scale.services, self.scale.endpoints);
        for k in 0..count {
            let at = t0 + Duration::from_nanos(k * 1_000_000_000 / rate.max(1));
            tokio::time::sleep_until(at).await;
            let n = self.written + k;
            let i = (n as usize) % services;
            lock(&self.tracker).pending.insert(i, (Instant::now(), 0));
            self.api
                .apply(Kind::EndpointSlices, slice(i, endpoints, n + 1))?;
        }
        self.written += count;
        Ok(t0.elapsed())
    }

    /// The leader, as member 1..3 says.
    async fn leader(&self) -> anyhow::Result<u64> {
        crate::eventually("a leader", Duration::from_secs(20), || async {
            for m in self.members.values() {
                let s = crate::cluster_status(m).await?;
                if s.leader != 0 && self.members.contains_key(&s.leader) {
                    return Ok(Some(s.leader));
                }
            }
            Ok(None)
        })
        .await
    }
}

/// Runs the scale run and reports it as a drill (`scale.name`).
pub async fn run(scale: Scale) -> anyhow::Result<Report> {
    let mut report = Report {
        drill: scale.name.into(),
        tier: "loopback",
        ..Report::default()
    };
    let mut bench = Bench::start(scale).await?;
    report.time_to_converged_ms = Some(ms(bench.cold_start));
    report
        .extra
        .insert("services".into(), json!(scale.services));
    report
        .extra
        .insert("endpoints".into(), json!(scale.services * scale.endpoints));
    report
        .extra
        .insert("cold_start_ms".into(), json!(ms(bench.cold_start)));
    if let Some(target) = scale.targets.cold_start
        && bench.cold_start > target
    {
        report.failures.push(format!(
            "cold start took {} ms (target {} ms)",
            ms(bench.cold_start),
            ms(target)
        ));
    }

    // 2. Propagation.
    bench.api.reset_stats();
    let total = scale.rate * scale.seconds;
    let took = bench.drive(total).await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (mut latencies, lost) = {
        let mut t = lock(&bench.tracker);
        let l: Vec<Duration> = t.done.iter().map(|(s, d)| *d - *s).collect();
        let lost = t.lost();
        t.done.clear();
        (l, lost)
    };
    latencies.sort();
    report.extra.insert(
        "propagation".into(),
        json!({
            "changes": total,
            "offered_per_second": (total as f64 / took.as_secs_f64()).round(),
            "p50_ms": ms_f(percentile(&latencies, 0.5)),
            "p99_ms": ms_f(percentile(&latencies, 0.99)),
            "max_ms": ms_f(latencies.last().copied().unwrap_or_default()),
            "never_applied": lost,
        }),
    );
    if lost > 0 {
        report
            .failures
            .push(format!("{lost} changes never applied on every member"));
    }
    let p99 = percentile(&latencies, 0.99);
    if let Some(target) = scale.targets.p99
        && p99 > target
    {
        report.failures.push(format!(
            "propagation p99 {} ms (target {} ms)",
            ms_f(p99),
            ms(target)
        ));
    }

    // 3. Leadership transfers under the stream, there and back: the
    // member that stops leading must keep its view (`Warm::resumed`) and
    // say what that cost, and start its next term from it; no change may
    // be lost on the way.
    let first = bench.leader().await?;
    let to = *bench
        .members
        .keys()
        .find(|id| **id != first)
        .context("a follower")?;
    let mut kept = None;
    for (from, to) in [(first, to), (to, first)] {
        kept = None;
        let before = kept_views(&bench.members[&from].log());
        bench.members[&from]
            .client()
            .await?
            .transfer_leadership(pb::TransferLeadershipRequest { to })
            .await
            .context("leadership transfer")?;
        bench.drive(scale.rate * 2).await?;
        for _ in 0..100 {
            let log = bench.members[&from].log();
            if kept_views(&log) > before {
                kept = kept_view(&log);
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        if kept.is_none() {
            report.failures.push(format!(
                "member {from} stopped leading and did not keep its view"
            ));
        }
    }
    let mut unapplied = 0;
    for _ in 0..100 {
        unapplied = lock(&bench.tracker).lost();
        if unapplied == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    report.extra.insert(
        "handover".into(),
        json!({
            "members": [first, to],
            "kept_view_ms": kept.map(|(took, _)| took),
            "kept_view_unsure": kept.map(|(_, unsure)| unsure),
            "never_applied": unapplied,
        }),
    );
    if unapplied > 0 {
        report.failures.push(format!(
            "{unapplied} changes never applied on every member across the leadership transfers ({})",
            pending_sample(&bench.tracker)
        ));
    }

    // 4. Leader crash under the same stream.
    let leader = bench.leader().await?;
    let survivors: u8 = (1..=3u64)
        .filter(|id| *id != leader)
        .map(|id| 1u8 << (id - 1))
        .sum();
    bench.api.reset_stats();
    let crash_changes = scale.rate * 6;
    let kill_after = scale.rate * 2;
    bench.drive(kill_after).await?;
    {
        let mut t = lock(&bench.tracker);
        t.required = survivors;
        t.done.clear();
        // A change both survivors applied before now is not lost, though
        // the leader's event for it had not come yet: only a later event
        // for the same service would look at it again.
        t.pending
            .retain(|_, (_, seen)| *seen & survivors != survivors);
    }
    let mut dead = bench.members.remove(&leader).context("the leader")?;
    let leader_peak = peak_rss_mib(dead.pid());
    // The survivors are asked every 20 ms who leads, beside the stream:
    // the first answer naming one of them is the election's time.
    let mut survivor_clients = Vec::new();
    for m in bench.members.values() {
        survivor_clients.push(m.client().await?);
    }
    let killed_at = Instant::now();
    dead.signal("KILL")?;
    let elected = tokio::spawn(async move {
        loop {
            for c in &mut survivor_clients {
                if let Ok(s) = c.get_status(pb::GetStatusRequest {}).await
                    && let Some(cluster) = s.into_inner().cluster
                    && cluster.leader != 0
                    && cluster.leader != leader
                {
                    return Instant::now();
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    bench.drive(crash_changes - kill_after).await?;
    tokio::time::sleep(Duration::from_secs(5)).await;
    dead.wait_exit(Duration::from_secs(5))?;
    save_log(leader, &dead.log());
    let mut snapshots = BTreeMap::new();
    snapshots.insert(leader.to_string(), snapshots_taken(&dead.log()));
    let mut elected = elected;
    let elected = match tokio::time::timeout(Duration::from_secs(5), &mut elected).await {
        Ok(Ok(at)) => Some(at),
        _ => {
            elected.abort();
            None
        }
    };
    let (flowing, lost_in_crash) = {
        let t = lock(&bench.tracker);
        let first = t
            .done
            .iter()
            .filter(|(sent, _)| *sent > killed_at)
            .map(|(_, applied)| *applied)
            .min();
        (first.map(|at| at - killed_at), t.lost())
    };
    // From the election to the first change applied after the crash.
    let after_election = flowing
        .zip(elected)
        .map(|(d, at)| (killed_at + d).saturating_duration_since(at));
    report.extra.insert(
        "crash".into(),
        json!({
            "elected_after_ms": elected.map(|at| ms(at - killed_at)),
            "changes_flowed_after_ms": flowing.map(ms),
            "changes_flowed_after_election_ms": after_election.map(ms),
        }),
    );
    match flowing {
        Some(d) if scale.targets.pause_from_election => {
            report.time_to_new_leader_ms = Some(ms(d));
            match after_election {
                Some(e) if e > scale.targets.crash_pause => report.failures.push(format!(
                    "changes flowed again {} ms after the new leader's election ({} ms after the crash; target {} ms from the election)",
                    ms(e),
                    ms(d),
                    ms(scale.targets.crash_pause)
                )),
                Some(_) => {}
                None => report
                    .failures
                    .push("no survivor named a new leader".into()),
            }
        }
        Some(d) => {
            report.time_to_new_leader_ms = Some(ms(d));
            if d > scale.targets.crash_pause {
                report.failures.push(format!(
                    "changes flowed again {} ms after the leader crash (target {} ms)",
                    ms(d),
                    ms(scale.targets.crash_pause)
                ));
            }
        }
        None => report
            .failures
            .push("no change applied after the leader crash".into()),
    }
    if lost_in_crash > 0 {
        report.failures.push(format!(
            "{lost_in_crash} changes never applied on the survivors after the crash ({})",
            pending_sample(&bench.tracker)
        ));
    }
    // 5. A snapshot on each survivor (`lbctl snapshot`): what a joiner
    // would receive at this size, and what taking it costs the raft
    // thread that takes it. Reported, not judged.
    let before = leader_and_terms(&bench).await?;
    let taken = |log: &str| log.matches(SNAPSHOT_TAKEN).count();
    for (id, m) in &bench.members {
        let earlier = taken(&m.log());
        let mut client = m.client().await?;
        client
            .trigger_snapshot(pb::TriggerSnapshotRequest {})
            .await
            .with_context(|| format!("member {id}: snapshot"))?;
        for _ in 0..600 {
            if taken(&m.log()) > earlier {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let after = leader_and_terms(&bench).await?;
    for (id, m) in &bench.members {
        let log = m.log();
        save_log(*id, &log);
        snapshots.insert(id.to_string(), snapshots_taken(&log));
    }
    snapshots.insert(
        "leader_and_term".into(),
        json!({"before": before, "after": after}),
    );
    report.extra.insert("snapshots".into(), json!(snapshots));
    if std::env::var_os("DRILL_LOGS").is_some() {
        eprintln!(
            "leader {leader} killed at {:?} after start",
            killed_at.elapsed()
        );
        for (id, m) in &bench.members {
            for line in m.log().lines().filter(|l| {
                l.contains("role changed") || l.contains("source") || l.contains("Kubernetes")
            }) {
                eprintln!("member {id}: {line}");
            }
        }
    }
    let mut relists = 0;
    for (agent, s) in bench.api.stats() {
        if agent.starts_with("lb-node") {
            relists += s.count("list services") + s.count("list endpointslices");
        }
    }
    report
        .extra
        .insert("relists_after_crash".into(), json!(relists));
    if relists > 0 {
        report.failures.push(format!(
            "the new leader listed {relists} times instead of resuming"
        ));
    }
    report.commands_lost = Some((lost + lost_in_crash) as u64);
    report.commands_acknowledged = bench.written;

    // 4. Memory.
    let mut memory = BTreeMap::new();
    memory.insert(leader.to_string(), json!(leader_peak));
    for (id, m) in &bench.members {
        memory.insert(id.to_string(), json!(peak_rss_mib(m.pid())));
    }
    let worst = memory
        .values()
        .filter_map(Value::as_f64)
        .fold(0.0f64, f64::max);
    report.extra.insert("peak_rss_mib".into(), json!(memory));
    let limit = scale.targets.memory_mib;
    if worst > limit {
        report.failures.push(format!(
            "a member peaked at {worst:.0} MiB (limit {limit:.0} MiB)"
        ));
    }
    report.passed = report.failures.is_empty();
    Ok(report)
}

/// Some of the changes not yet applied everywhere, and the members that
/// applied each (bit `id - 1`).
fn pending_sample(tracker: &Mutex<Tracker>) -> String {
    lock(tracker)
        .pending
        .iter()
        .take(5)
        .map(|(i, (_, seen))| format!("svc-{i} seen by {seen:#05b}"))
        .collect::<Vec<_>>()
        .join(", ")
}

const KEPT: &str = "its view kept for the next takeover";

/// How many times a member's source kept its view.
fn kept_views(log: &str) -> usize {
    log.lines().filter(|l| l.contains(KEPT)).count()
}

/// What keeping its view cost a member whose source stopped (its last
/// "view kept" log line): milliseconds, and objects and services taken
/// again.
fn kept_view(log: &str) -> Option<(u64, u64)> {
    let line = log.lines().rev().find(|l| l.contains(KEPT))?;
    let field = |key: &str| {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(key))
            .and_then(|v| v.parse::<u64>().ok())
    };
    Some((field("took_ms=")?, field("unsure=")?))
}

/// Each member's (leader, term), as it says.
async fn leader_and_terms(bench: &Bench) -> anyhow::Result<Vec<Option<(u64, u64)>>> {
    let mut terms = Vec::new();
    for m in bench.members.values() {
        let status = m
            .client()
            .await?
            .get_status(pb::GetStatusRequest {})
            .await?;
        terms.push(status.into_inner().cluster.map(|c| (c.leader, c.term)));
    }
    Ok(terms)
}

/// A member's log line for each snapshot it takes.
const SNAPSHOT_TAKEN: &str = "snapshot taken";

/// The snapshots a member took (its "snapshot taken" log lines): how
/// many, and the largest one's bytes, encoding and writing times.
fn snapshots_taken(log: &str) -> Value {
    let taken: Vec<&str> = log.lines().filter(|l| l.contains(SNAPSHOT_TAKEN)).collect();
    let field = |line: &str, key: &str| {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(key))
            .and_then(|v| v.parse::<f64>().ok())
    };
    let largest = taken.iter().max_by(|a, b| {
        field(a, "bytes=")
            .unwrap_or(0.0)
            .total_cmp(&field(b, "bytes=").unwrap_or(0.0))
    });
    json!({
        "taken": taken.len(),
        "largest_bytes": largest.and_then(|l| field(l, "bytes=")),
        "largest_encode_ms": largest.and_then(|l| field(l, "encode_ms=")),
        "largest_write_ms": largest.and_then(|l| field(l, "write_ms=")),
    })
}

/// Debugging (`DRILL_LOG_DIR`): member `id`'s whole log written to
/// `member-<id>.log` there.
fn save_log(id: u64, log: &str) {
    if let Some(dir) = std::env::var_os("DRILL_LOG_DIR") {
        let path = std::path::Path::new(&dir).join(format!("member-{id}.log"));
        if let Err(e) = std::fs::write(&path, log) {
            eprintln!("cannot write {}: {e}", path.display());
        }
    }
}
