//! Failover drills on the host tier: three real `lb-node` processes on
//! loopback, a steady stream of acknowledged writes through the admin API,
//! one fault, and the figures an operator asks for, printed as one JSON line.
//!
//! The drills with client traffic run in network namespaces
//! (`netdrills`), the ones of the Kubernetes source against the fake API
//! server (`kube`); this module holds the report, the writer, and the
//! loopback drill `disk-wiped`.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use proto::admin::v1 as pb;
use serde_json::json;

use crate::{ClusterLayout, Member, cluster_status};

/// The drills this tier runs, by name (the ones with client traffic run in
/// network namespaces: `netdrills`).
pub const DRILLS: [&str; 1] = ["disk-wiped"];

/// Every drill, both tiers.
pub fn all_drills() -> Vec<&'static str> {
    let mut all: Vec<&str> = crate::netdrills::NET_DRILLS.to_vec();
    all.extend(DRILLS);
    all.extend(crate::kube::KUBE_DRILLS);
    all.push("scale-50k");
    all
}

/// How big a drill runs: what the command line asks for, or what a test
/// can afford.
#[derive(Debug, Clone, Copy)]
pub struct Size {
    /// How long `apiserver-outage` keeps the API server away.
    pub outage: Duration,
    /// How big `scale-50k` is.
    pub scale: crate::scale::Scale,
}

impl Default for Size {
    fn default() -> Size {
        Size {
            outage: Duration::from_secs(60),
            scale: crate::scale::Scale::FULL,
        }
    }
}

/// Runs a drill of any tier by name.
pub async fn run_any(name: &str, size: Size) -> anyhow::Result<Report> {
    if crate::netdrills::NET_DRILLS.contains(&name) {
        let name = name.to_owned();
        tokio::task::spawn_blocking(move || {
            crate::netdrills::run(&name, crate::netdrills::Dataplane::Memory)
        })
        .await?
    } else if crate::kube::KUBE_DRILLS.contains(&name) {
        crate::kube::run(name, size.outage).await
    } else if name == "scale-50k" {
        crate::scale::run(size.scale).await
    } else {
        run(name).await
    }
}

const SERVICES: &str = include_str!("../../deploy/examples/services.toml");
/// The backend the writer overrides.
const BACKEND: &str = "198.51.100.12:8080";

/// A drill's outcome, printed as one JSON line.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub drill: String,
    pub passed: bool,
    /// The longest time client traffic through the VIP went unanswered,
    /// and the requests that failed; None where the drill sends none.
    pub disruption_ms: Option<u64>,
    pub requests_failed: Option<u64>,
    pub requests_sent: Option<u64>,
    /// The longest an answered request took (a request not answered within
    /// `traffic::REQUEST_TIMEOUT` failed).
    pub slowest_answer_ms: Option<u64>,
    /// Where it ran: "loopback" or "netns" (real ARP and packets).
    pub tier: &'static str,
    pub failures: Vec<String>,
    pub commands_lost: Option<u64>,
    pub commands_acknowledged: u64,
    pub time_to_new_leader_ms: Option<u64>,
    pub time_to_vip_moved_ms: Option<u64>,
    pub time_to_converged_ms: Option<u64>,
    /// Figures particular to one drill (the scale run's), added to the
    /// JSON line as they are.
    pub extra: BTreeMap<String, serde_json::Value>,
}

impl Report {
    /// Every member in `ids` must hold the last acknowledged write or a
    /// later attempted one (`weight_of` reads a member's); counts the
    /// members that lack it as `commands_lost`.
    pub(crate) async fn check_writes<F, Fut>(
        &mut self,
        ids: &[u64],
        acknowledged: u32,
        attempted: u32,
        weight_of: F,
    ) where
        F: Fn(u64) -> Fut,
        Fut: std::future::Future<Output = anyhow::Result<Option<u32>>>,
    {
        self.commands_acknowledged = u64::from(acknowledged);
        let mut lost = 0;
        for id in ids {
            let holds = crate::eventually(
                "the last write applied",
                Duration::from_secs(10),
                || async {
                    Ok(weight_of(*id)
                        .await?
                        .filter(|w| *w >= acknowledged && *w <= attempted))
                },
            )
            .await;
            if holds.is_err() {
                lost += 1;
                self.failures.push(format!(
                    "member {id} lacks acknowledged write {acknowledged}"
                ));
            }
        }
        self.commands_lost = Some(lost);
        if acknowledged == 0 {
            self.failures
                .push("no write was acknowledged: the drill proved nothing".into());
        }
    }

    /// Adds one probe's requests (sent at, answer) to the traffic figures:
    /// the longest outage over all probes, failed and sent summed. Failures
    /// where none may happen (`may_fail` false), and a probe never
    /// answered at all, are broken promises.
    pub(crate) fn add_traffic(
        &mut self,
        to: &str,
        records: &[crate::traffic::Sent],
        may_fail: bool,
    ) {
        let (outage, failed) = crate::traffic::disruption(records);
        if records.iter().all(|r| r.answer.is_none()) {
            self.failures
                .push(format!("no request to {to} was ever answered"));
        }
        if failed > 0 && !may_fail {
            self.failures.push(format!(
                "{failed} of {} requests to {to} failed ({outage} ms unanswered), where none may",
                records.len()
            ));
        }
        self.disruption_ms = Some(self.disruption_ms.unwrap_or(0).max(outage));
        self.requests_failed = Some(self.requests_failed.unwrap_or(0) + failed);
        self.requests_sent = Some(self.requests_sent.unwrap_or(0) + records.len() as u64);
        let slowest = records
            .iter()
            .filter(|r| r.answer.is_some())
            .map(|r| r.took_ms)
            .max();
        self.slowest_answer_ms = self.slowest_answer_ms.max(slowest);
    }

    pub fn json(&self) -> String {
        self.value().to_string()
    }

    /// The report as one JSON object.
    pub fn value(&self) -> serde_json::Value {
        let mut line = json!({
            "drill": self.drill,
            "passed": self.passed,
            "tier": self.tier,
            "disruption_ms": self.disruption_ms,
            "requests_failed": self.requests_failed,
            "requests_sent": self.requests_sent,
            "slowest_answer_ms": self.slowest_answer_ms,
            "commands_lost": self.commands_lost,
            "commands_acknowledged": self.commands_acknowledged,
            "time_to_new_leader_ms": self.time_to_new_leader_ms,
            "time_to_vip_moved_ms": self.time_to_vip_moved_ms,
            "time_to_converged_ms": self.time_to_converged_ms,
            "failures": self.failures,
        });
        if let Some(map) = line.as_object_mut() {
            for (k, v) in &self.extra {
                map.insert(k.clone(), v.clone());
            }
        }
        line
    }
}

struct Cluster {
    layout: ClusterLayout,
    members: BTreeMap<u64, Member>,
}

impl Cluster {
    fn start(dir: &Path) -> anyhow::Result<Cluster> {
        let layout = ClusterLayout::write(dir, 3, SERVICES, "drill")?;
        let members = layout.start_all()?;
        Ok(Cluster { layout, members })
    }

    /// The leader every live member agrees on, once caught up.
    async fn settled(&self, timeout: Duration) -> anyhow::Result<u64> {
        crate::eventually("an agreed leader, everyone caught up", timeout, || async {
            let mut leaders = Vec::new();
            let mut applied = Vec::new();
            for m in self.members.values() {
                let s = cluster_status(m).await?;
                leaders.push(s.leader);
                applied.push(s.applied_index);
            }
            let ok = leaders[0] != 0
                && leaders.iter().all(|l| *l == leaders[0])
                && self.members.contains_key(&leaders[0])
                && applied.iter().all(|a| *a == applied[0]);
            Ok(ok.then_some(leaders[0]))
        })
        .await
    }

    /// VIP -> the member that may announce it now, from every live member.
    async fn announcers(&self) -> anyhow::Result<BTreeMap<String, u64>> {
        let mut out = BTreeMap::new();
        for (id, m) in &self.members {
            let vips = m
                .client()
                .await?
                .list_vips(pb::ListVipsRequest {})
                .await?
                .into_inner();
            for v in vips.vips.into_iter().filter(|v| v.announced_here) {
                out.insert(v.vip, *id);
            }
        }
        Ok(out)
    }

    fn endpoints(&self) -> Vec<String> {
        self.members
            .values()
            .map(|m| format!("http://{}", m.admin))
            .collect()
    }
}

/// Writes backend weights 1, 2, 3, ... through whichever member leads, at
/// `rate` per second, until stopped; remembers the last acknowledged and
/// the last attempted value, and counts the writes no member acknowledged.
pub(crate) struct Writer {
    stop: Arc<AtomicBool>,
    acknowledged: Arc<AtomicU32>,
    attempted: Arc<AtomicU32>,
    unacknowledged: Arc<AtomicU32>,
    task: tokio::task::JoinHandle<()>,
}

impl Writer {
    pub(crate) fn start(
        endpoints: Vec<String>,
        rate: u32,
        service: &'static str,
        backend: &'static str,
    ) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        let acknowledged = Arc::new(AtomicU32::new(0));
        let attempted = Arc::new(AtomicU32::new(0));
        let unacknowledged = Arc::new(AtomicU32::new(0));
        let (s, ack, att, unack) = (
            stop.clone(),
            acknowledged.clone(),
            attempted.clone(),
            unacknowledged.clone(),
        );
        let task = tokio::spawn(async move {
            let mut weight = 0u32;
            let interval = Duration::from_secs_f64(1.0 / f64::from(rate));
            while !s.load(Ordering::SeqCst) {
                weight += 1;
                att.store(weight, Ordering::SeqCst);
                let mut written = false;
                'endpoints: for e in &endpoints {
                    let Ok(channel) = tonic::transport::Channel::from_shared(e.clone()) else {
                        continue;
                    };
                    let Ok(channel) = channel
                        .connect_timeout(Duration::from_millis(200))
                        .timeout(Duration::from_secs(2))
                        .connect()
                        .await
                    else {
                        continue;
                    };
                    let request = pb::SetBackendOverrideRequest {
                        service: service.into(),
                        backend: backend.into(),
                        action: Some(pb::set_backend_override_request::Action::Weight(weight)),
                    };
                    if pb::admin_client::AdminClient::new(channel)
                        .set_backend_override(request)
                        .await
                        .is_ok()
                    {
                        ack.store(weight, Ordering::SeqCst);
                        written = true;
                        break 'endpoints;
                    }
                }
                if !written {
                    unack.fetch_add(1, Ordering::SeqCst);
                }
                tokio::time::sleep(interval).await;
            }
        });
        Writer {
            stop,
            acknowledged,
            attempted,
            unacknowledged,
            task,
        }
    }

    /// The writes so far that no member acknowledged.
    pub(crate) fn unacknowledged(&self) -> u32 {
        self.unacknowledged.load(Ordering::SeqCst)
    }

    pub(crate) async fn finish(self) -> (u32, u32) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.task.await;
        (
            self.acknowledged.load(Ordering::SeqCst),
            self.attempted.load(Ordering::SeqCst),
        )
    }
}

/// The override weight of the writer's backend as `member` holds it.
async fn written_weight(member: &Member) -> anyhow::Result<Option<u32>> {
    override_weight(member.client().await?, "web", [198, 51, 100, 12], 8080).await
}

/// The override weight of backend `address:port` of `service`, as the
/// member behind `client` holds it.
pub(crate) async fn override_weight(
    mut client: pb::admin_client::AdminClient<tonic::transport::Channel>,
    service: &str,
    address: [u8; 4],
    port: u32,
) -> anyhow::Result<Option<u32>> {
    let r = client
        .list_services(pb::ListServicesRequest {
            name: service.into(),
        })
        .await?
        .into_inner();
    Ok(r.overrides.iter().find_map(|o| match o.action {
        Some(proto::state::v1::backend_override::Action::Weight(w))
            if o.port == port && o.address == address =>
        {
            Some(w)
        }
        _ => None,
    }))
}

pub(crate) fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Runs one drill by name in a fresh temporary directory.
pub async fn run(name: &str) -> anyhow::Result<Report> {
    anyhow::ensure!(
        DRILLS.contains(&name),
        "unknown drill {name:?}; drills: {}",
        DRILLS.join(", ")
    );
    let dir = tempfile::tempdir()?;
    let mut cluster = Cluster::start(dir.path())?;
    let mut report = Report {
        drill: name.into(),
        tier: "loopback",
        ..Report::default()
    };
    let leader = cluster.settled(Duration::from_secs(30)).await?;
    // Every VIP announced before the fault.
    crate::eventually("every VIP announced", Duration::from_secs(10), || async {
        Ok((cluster.announcers().await?.len() == 3).then_some(()))
    })
    .await?;
    let writer = Writer::start(cluster.endpoints(), 20, "web", BACKEND);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let t0 = Instant::now();

    match name {
        "disk-wiped" => {
            let victim = *cluster
                .members
                .keys()
                .find(|id| **id != leader)
                .context("a follower")?;
            let mut dead = cluster.members.remove(&victim).context("victim")?;
            dead.signal("TERM")?;
            dead.wait_exit(Duration::from_secs(10))?;
            drop(dead);
            // Enough writes that the others snapshot past it, then its disk goes.
            let _ = cluster.members[&leader].lbctl(&["snapshot"]);
            std::fs::remove_dir_all(cluster.layout.dir.join(format!("data-{victim}")))?;
            cluster
                .members
                .insert(victim, Member::start(&cluster.layout.config(victim))?);
        }
        _ => unreachable!("checked above"),
    }

    cluster.settled(Duration::from_secs(30)).await?;
    report.time_to_converged_ms = Some(ms(t0.elapsed()));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (acknowledged, attempted) = writer.finish().await;
    let ids: Vec<u64> = cluster.members.keys().copied().collect();
    let members = &cluster.members;
    report
        .check_writes(&ids, acknowledged, attempted, |id| async move {
            written_weight(&members[&id]).await
        })
        .await;
    report.passed = report.failures.is_empty();
    Ok(report)
}
