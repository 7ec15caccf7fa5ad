//! Failover drills on the host tier: three real `lb-node` processes on
//! loopback, a steady stream of acknowledged writes through the admin API,
//! one fault, and the figures an operator asks for, printed as one JSON line.
//!
//! The drills with client traffic run in network namespaces
//! (`netdrills`), the ones of the Kubernetes source against the fake API
//! server (`kube`); this module holds the catalogue of every tier's drills
//! (`run_any`) and the loopback drill `disk-wiped`. The report is
//! `report`'s, the writer `writer`'s.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use proto::admin::v1 as pb;

use crate::report::Report;
use crate::report::ms;
use crate::writer::{Writer, override_weight};
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
    } else if name == "scale-100k" {
        crate::scale::run(crate::scale::Scale::HUNDRED_K).await
    } else {
        run(name).await
    }
}

const SERVICES: &str = include_str!("../../deploy/examples/services.toml");
/// The backend the writer overrides.
const BACKEND: &str = "198.51.100.12:8080";

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

/// The override weight of the writer's backend as `member` holds it.
async fn written_weight(member: &Member) -> anyhow::Result<Option<u32>> {
    override_weight(member.client().await?, "web", [198, 51, 100, 12], 8080).await
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
