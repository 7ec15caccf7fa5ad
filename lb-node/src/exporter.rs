//! The HTTP endpoint of the member's metrics (`/metrics`) with
//! `/healthz` and `/readyz`.
//!
//! The counters are `metrics`'; the gauges are read here from the owners'
//! `watch` channels at scrape time, so they are never stale.
//!
//! Must not: change anything. It reads the status channels of the
//! dataplane, the source and Raft, and the counters.

use std::sync::Arc;

use axum::Router;
use axum::extract::State as AxumState;
use axum::http::StatusCode;
use axum::routing::get;
use prometheus::{Encoder, IntGauge, TextEncoder};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::dataplane::reconcile::DataplaneStatus;
use crate::metrics::METRICS;
use crate::model::State;
use crate::replication::node::RaftStatus;
use crate::source::SourceStatus;

/// What the endpoint reads at scrape time.
#[derive(Debug, Clone)]
pub struct Views {
    pub states: watch::Receiver<Arc<State>>,
    pub source: watch::Receiver<SourceStatus>,
    pub dataplane: watch::Receiver<DataplaneStatus>,
    pub routes: watch::Receiver<crate::dataplane::routes::RoutesStatus>,
    pub raft: Option<watch::Receiver<RaftStatus>>,
}

fn gauge(name: &str, help: &str, value: i64) -> Option<IntGauge> {
    let g = IntGauge::new(name, help).ok()?;
    g.set(value);
    Some(g)
}

/// The metric names in a text (`lb_...` and `process_...` words), as the
/// alert rules and dashboard in deploy/ use them: their tests check each
/// is exported.
pub fn metric_names_in(text: &str) -> std::collections::BTreeSet<String> {
    text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("lb_") || w.starts_with("process_"))
        .map(str::to_owned)
        .collect()
}

/// The metrics in Prometheus' text format.
pub fn render(views: &Views) -> String {
    let mut families = METRICS.gather();
    let state = views.states.borrow().clone();
    let dataplane = views.dataplane.borrow().clone();
    let source = views.source.borrow().clone();
    let routes = views.routes.borrow().clone();
    let mut gauges = vec![
        gauge(
            "lb_services",
            "Virtual services in the applied state.",
            state.len() as i64,
        ),
        gauge(
            "lb_state_revision",
            "Commands applied to build the state.",
            state.revision() as i64,
        ),
        gauge(
            "lb_dataplane_programmed_services",
            "Virtual services programmed.",
            dataplane.programmed_services as i64,
        ),
        gauge(
            "lb_dataplane_programmed_destinations",
            "Destinations programmed.",
            dataplane.programmed_destinations as i64,
        ),
        gauge(
            "lb_dataplane_synced_revision",
            "State revision the dataplane last synced.",
            dataplane.synced_revision as i64,
        ),
        gauge(
            "lb_pod_routes_wanted",
            "Pod routes the committed Nodes mean (source.kubernetes.pod_routes).",
            routes.wanted as i64,
        ),
        gauge(
            "lb_pod_routes_installed",
            "Pod routes of lb-node's in the kernel that match what the Nodes mean.",
            routes.installed as i64,
        ),
        gauge(
            "lb_endpoints_unrouted",
            "Endpoints no route covers (with pod routes: none more specific than a default one; checked with a kernel dataplane).",
            routes.endpoints_unrouted as i64,
        ),
        gauge(
            "lb_source_healthy",
            "1 when the last load of the source succeeded.",
            i64::from(source.last_error.is_empty()),
        ),
        gauge(
            "lb_source_disconnected_since_seconds",
            "Unix time since when the source (API server) is unreachable; 0 when reachable.",
            source.disconnected_since_unix_ms / 1000,
        ),
    ];
    if let Some(raft) = &views.raft {
        let r = raft.borrow().clone();
        gauges.extend([
            gauge("lb_raft_term", "Current Raft term.", r.term as i64),
            gauge(
                "lb_raft_is_leader",
                "1 when this member leads.",
                i64::from(r.is_leader()),
            ),
            gauge(
                "lb_raft_leader",
                "Id of the leader this member knows; 0 for none.",
                r.leader as i64,
            ),
            gauge(
                "lb_raft_commit_index",
                "Raft commit index.",
                r.commit_index as i64,
            ),
            gauge(
                "lb_raft_applied_index",
                "Raft applied index.",
                r.applied_index as i64,
            ),
            gauge(
                "lb_raft_apply_lag",
                "Committed entries not yet applied.",
                r.commit_index.saturating_sub(r.applied_index) as i64,
            ),
            gauge("lb_raft_voters", "Voting members.", r.voters.len() as i64),
            gauge(
                "lb_vips_owned",
                "VIPs the committed state gives this member.",
                state
                    .vip_owners()
                    .values()
                    .filter(|owner| **owner == r.id)
                    .count() as i64,
            ),
            gauge(
                "lb_vips_announced",
                "VIPs this member announces now (owned, lease held, fenced).",
                r.announced.len() as i64,
            ),
        ]);
    }
    for g in gauges.into_iter().flatten() {
        families.extend(prometheus::core::Collector::collect(&g));
    }
    let mut out = Vec::new();
    let _ = TextEncoder::new().encode(&families, &mut out);
    let mut text = String::from_utf8(out).unwrap_or_default();
    text.push_str(&process_metrics(&ProcSelf::read()));
    text
}

/// What `/proc/self` says of this process (Linux; zeros elsewhere).
#[derive(Debug, Default, Clone, PartialEq)]
struct ProcSelf {
    open_fds: u64,
    max_fds: u64,
    resident_bytes: u64,
    virtual_bytes: u64,
    cpu_seconds: f64,
    threads: u64,
}

impl ProcSelf {
    fn read() -> ProcSelf {
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
        let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
        let open_fds = std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count() as u64);
        // The clock ticks of utime and stime (USER_HZ: 100 on Linux).
        let ticks = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
            .ok()
            .flatten()
            .filter(|t| *t > 0)
            .unwrap_or(100) as f64;
        ProcSelf::parse(&status, &limits, &stat, open_fds, ticks)
    }

    fn parse(status: &str, limits: &str, stat: &str, open_fds: u64, ticks: f64) -> ProcSelf {
        let kib = |key: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|rest| rest.split_whitespace().next()?.parse::<u64>().ok())
                .unwrap_or(0)
        };
        let max_fds = limits
            .lines()
            .find(|l| l.starts_with("Max open files"))
            .and_then(|l| l.split_whitespace().nth(3)?.parse().ok())
            .unwrap_or(0);
        // Fields after the command name (which may hold spaces), from
        // the state (field 3): utime and stime are fields 14 and 15.
        let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
        let fields: Vec<&str> = after.split_whitespace().collect();
        let field = |n: usize| {
            fields
                .get(n - 3)
                .and_then(|f| f.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        ProcSelf {
            open_fds,
            max_fds,
            resident_bytes: kib("VmRSS:") * 1024,
            virtual_bytes: kib("VmSize:") * 1024,
            cpu_seconds: (field(14) + field(15)) / ticks,
            threads: kib("Threads:"),
        }
    }
}

/// The `process_*` metrics every Prometheus client library exports, so
/// an operator sees descriptors, memory or CPU running out before they
/// do.
fn process_metrics(p: &ProcSelf) -> String {
    let mut out = String::new();
    let mut one = |name: &str, kind: &str, help: &str, value: String| {
        out.push_str(&format!(
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n"
        ));
    };
    one(
        "process_open_fds",
        "gauge",
        "Number of open file descriptors.",
        p.open_fds.to_string(),
    );
    one(
        "process_max_fds",
        "gauge",
        "Maximum number of open file descriptors.",
        p.max_fds.to_string(),
    );
    one(
        "process_resident_memory_bytes",
        "gauge",
        "Resident memory size in bytes.",
        p.resident_bytes.to_string(),
    );
    one(
        "process_virtual_memory_bytes",
        "gauge",
        "Virtual memory size in bytes.",
        p.virtual_bytes.to_string(),
    );
    one(
        "process_cpu_seconds_total",
        "counter",
        "Total user and system CPU time spent in seconds.",
        format!("{:.2}", p.cpu_seconds),
    );
    one(
        "process_threads",
        "gauge",
        "Number of OS threads in the process.",
        p.threads.to_string(),
    );
    out
}

/// Whether the member is ready to serve, and if not, why.
pub fn readiness(views: &Views) -> Result<(), String> {
    let dataplane = views.dataplane.borrow().clone();
    if dataplane.last_sync_unix_ms == 0 {
        return Err("the dataplane has not been synced yet".into());
    }
    if let Some(raft) = &views.raft {
        let r = raft.borrow().clone();
        if r.leader == 0 {
            return Err("no leader known".into());
        }
        if r.commit_index > r.applied_index {
            return Err(format!(
                "applying: {} of {} entries",
                r.applied_index, r.commit_index
            ));
        }
    }
    Ok(())
}

async fn metrics(AxumState(views): AxumState<Views>) -> String {
    render(&views)
}

async fn ready(AxumState(views): AxumState<Views>) -> (StatusCode, String) {
    match readiness(&views) {
        Ok(()) => (StatusCode::OK, "ready\n".into()),
        Err(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}\n"),
        ),
    }
}

/// Serves `/metrics`, `/healthz` and `/readyz` on `listener` until `shutdown`.
pub async fn serve(
    listener: crate::listener::GuardedListener,
    views: Views,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .with_state(views);
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
}

#[cfg(test)]
mod process_tests {
    use super::*;

    #[test]
    fn proc_self_is_read_as_linux_writes_it() {
        let status = "Name:\tlb-node\nVmSize:\t  204800 kB\nVmRSS:\t   51200 kB\nThreads:\t7\n";
        let limits = "Limit                     Soft Limit           Hard Limit           Units\nMax open files            1024                 524288               files\n";
        let stat =
            "42 (lb node) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 7 0 100 209715200 12800";
        let p = ProcSelf::parse(status, limits, stat, 12, 100.0);
        assert_eq!(
            p,
            ProcSelf {
                open_fds: 12,
                max_fds: 1024,
                resident_bytes: 51200 * 1024,
                virtual_bytes: 204800 * 1024,
                cpu_seconds: 3.0,
                threads: 7,
            }
        );
        let text = process_metrics(&p);
        assert!(
            text.contains("process_open_fds 12\n")
                && text.contains("process_cpu_seconds_total 3.00\n"),
            "{text}"
        );
        // This process, for real.
        let me = ProcSelf::read();
        assert!(
            me.open_fds > 0 && me.max_fds > 0 && me.resident_bytes > 0,
            "{me:?}"
        );
    }
}

#[cfg(test)]
mod deploy_tests {
    use super::*;

    /// The BGP and BFD metrics the shipped alert rules and dashboard use
    /// (deploy/prometheus, deploy/grafana) exist: they have samples only
    /// with peers configured, so they are checked here, with a peer's
    /// label set as the speaker sets it; the rest are checked against a
    /// running cluster's /metrics (ha-tests/tests/admin.rs).
    #[test]
    fn the_bgp_and_bfd_metrics_the_deploy_files_use_exist() {
        let used: std::collections::BTreeSet<String> = [
            include_str!("../../deploy/prometheus/lb-node-alerts.yml"),
            include_str!("../../deploy/grafana/lb-node-dashboard.json"),
        ]
        .iter()
        .flat_map(|t| metric_names_in(t))
        .filter(|w| w.starts_with("lb_bgp_") || w.starts_with("lb_bfd_"))
        .collect();
        assert!(!used.is_empty());
        METRICS
            .bgp_sessions
            .with_label_values(&["192.0.2.254"])
            .set(1);
        METRICS
            .bfd_sessions
            .with_label_values(&["192.0.2.254"])
            .set(1);
        let exported: std::collections::BTreeSet<String> = METRICS
            .gather()
            .iter()
            .map(|f| f.get_name().to_owned())
            .collect();
        for name in &used {
            assert!(exported.contains(name), "{name} is not a metric of lb-node");
        }
    }
}
