//! The member's process-wide Prometheus counters and histograms.
//!
//! They live in one registry and are bumped where things happen
//! (proposals, dataplane syncs, source reloads, leader changes). The
//! gauges read from the owners' status channels, and the HTTP endpoint,
//! are `exporter`'s.
//!
//! Must not: import anything of the crate. Every layer bumps these
//! counters, so this file sits below them all.

use std::sync::LazyLock;

use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry};

/// The process-wide counters and histograms.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub proposals: IntCounterVec,
    pub commit_seconds: Histogram,
    pub leader_changes: IntCounter,
    pub dataplane_operations: IntCounter,
    pub dataplane_errors: IntCounter,
    pub dataplane_sync_seconds: Histogram,
    pub drift_repairs: IntCounter,
    pub dataplane_dumps: IntCounter,
    pub repair_rounds: IntCounter,
    pub repair_round_seconds: prometheus::Gauge,
    pub dataplane_refused_services: IntGauge,
    pub source_loads: IntCounterVec,
    pub watch_events: IntCounterVec,
    pub watch_errors: IntCounterVec,
    pub relists: IntCounterVec,
    pub malformed_objects: IntCounterVec,
    pub skipped_fields: IntCounter,
    pub status_writes: IntCounterVec,
    pub kube_plan_seconds: Histogram,
    pub kube_batch_events: Histogram,
    pub runtime_lag_seconds: Histogram,
    pub bgp_sessions: prometheus::IntGaugeVec,
    pub bfd_sessions: prometheus::IntGaugeVec,
    pub ipvs_sysctls: prometheus::IntGaugeVec,
    pub propagation_seconds: Histogram,
    pub vip_owner_changes: IntCounter,
    pub health_probes: IntCounterVec,
    pub health_probe_seconds: Histogram,
    pub health_probed_backends: IntGauge,
    pub health_backends_down: IntGauge,
    pub connections_open: prometheus::IntGaugeVec,
    pub connections_refused: IntCounterVec,
    pub tls_handshakes_failed: IntCounterVec,
}

impl Metrics {
    /// Every registered metric's samples, for the exporter.
    pub fn gather(&self) -> Vec<prometheus::proto::MetricFamily> {
        self.registry.gather()
    }
}

fn registered<T: prometheus::core::Collector + Clone + 'static>(
    registry: &Registry,
    metric: prometheus::Result<T>,
) -> T {
    // Names and labels are constants of this file: a failure here is a bug
    // found by the first test that touches metrics.
    #[allow(clippy::expect_used)]
    let metric = metric.expect("valid metric definition");
    #[allow(clippy::expect_used)]
    registry
        .register(Box::new(metric.clone()))
        .expect("metric registered once");
    metric
}

/// Latency buckets from 100 µs to 10 s.
fn latency_buckets() -> Vec<f64> {
    vec![
        0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
        5.0, 10.0,
    ]
}

pub static METRICS: LazyLock<Metrics> = LazyLock::new(|| {
    let registry = Registry::new();
    let metrics = Metrics {
        proposals: registered(
            &registry,
            IntCounterVec::new(
                Opts::new(
                    "lb_proposals_total",
                    "Batches of commands proposed, by result.",
                ),
                &["result"],
            ),
        ),
        commit_seconds: registered(
            &registry,
            Histogram::with_opts(
                HistogramOpts::new(
                    "lb_proposal_commit_seconds",
                    "Time from proposal to applied on this member (the leader).",
                )
                .buckets(latency_buckets()),
            ),
        ),
        leader_changes: registered(
            &registry,
            IntCounter::new(
                "lb_raft_leader_changes_total",
                "Times this member saw the leader change.",
            ),
        ),
        dataplane_operations: registered(
            &registry,
            IntCounter::new(
                "lb_dataplane_operations_total",
                "Dataplane operations applied.",
            ),
        ),
        dataplane_errors: registered(
            &registry,
            IntCounter::new(
                "lb_dataplane_operation_errors_total",
                "Dataplane operations that failed.",
            ),
        ),
        dataplane_sync_seconds: registered(
            &registry,
            Histogram::with_opts(
                HistogramOpts::new(
                    "lb_dataplane_sync_seconds",
                    "Duration of one dataplane sync (plan and apply).",
                )
                .buckets(latency_buckets()),
            ),
        ),
        drift_repairs: registered(
            &registry,
            IntCounter::new(
                "lb_dataplane_drift_repairs_total",
                "Operations that repaired a dataplane changed by hand.",
            ),
        ),
        dataplane_dumps: registered(
            &registry,
            IntCounter::new(
                "lb_dataplane_dumps_total",
                "Whole-table dumps of the dataplane (start, resyncs after an error).",
            ),
        ),
        repair_rounds: registered(
            &registry,
            IntCounter::new(
                "lb_dataplane_repair_rounds_total",
                "Periodic repairs completed (the table compared with the kernel a slice at a time).",
            ),
        ),
        repair_round_seconds: registered(
            &registry,
            prometheus::Gauge::new(
                "lb_dataplane_repair_round_seconds",
                "Duration of the last completed repair round, changes between its slices included.",
            ),
        ),
        dataplane_refused_services: registered(
            &registry,
            IntGauge::new(
                "lb_dataplane_refused_services",
                "Services the dataplane refused, retried on their own with backoff.",
            ),
        ),
        source_loads: registered(
            &registry,
            IntCounterVec::new(
                Opts::new("lb_source_loads_total", "Loads of the source, by result."),
                &["result"],
            ),
        ),
        watch_events: registered(
            &registry,
            IntCounterVec::new(
                Opts::new(
                    "lb_kube_watch_events_total",
                    "Watch events received from the API server (leader only), by kind.",
                ),
                &["kind"],
            ),
        ),
        watch_errors: registered(
            &registry,
            IntCounterVec::new(
                Opts::new(
                    "lb_kube_watch_errors_total",
                    "Failed lists and watches, by kind.",
                ),
                &["kind"],
            ),
        ),
        relists: registered(
            &registry,
            IntCounterVec::new(
                Opts::new(
                    "lb_kube_relists_total",
                    "Full lists of a kind (first start or 410 Gone), by kind.",
                ),
                &["kind"],
            ),
        ),
        malformed_objects: registered(
            &registry,
            IntCounterVec::new(
                Opts::new(
                    "lb_kube_malformed_objects_total",
                    "Watch events whose object could not be decoded; skipped.",
                ),
                &["kind"],
            ),
        ),
        skipped_fields: registered(
            &registry,
            IntCounter::new(
                "lb_kube_translation_warnings_total",
                "Things left out of the translation (bad address, port, protocol...).",
            ),
        ),
        status_writes: registered(
            &registry,
            IntCounterVec::new(
                Opts::new(
                    "lb_kube_status_writes_total",
                    "Writes of status.loadBalancer, by result.",
                ),
                &["result"],
            ),
        ),
        kube_plan_seconds: registered(
            &registry,
            Histogram::with_opts(
                HistogramOpts::new(
                    "lb_kube_plan_seconds",
                    "Time to turn one batch of watch events into commands (leader).",
                )
                .buckets(latency_buckets()),
            ),
        ),
        kube_batch_events: registered(
            &registry,
            Histogram::with_opts(
                HistogramOpts::new(
                    "lb_kube_batch_events",
                    "Watch events coalesced into one proposal (leader).",
                )
                .buckets(vec![
                    1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 1000.0, 10000.0,
                ]),
            ),
        ),
        runtime_lag_seconds: registered(
            &registry,
            Histogram::with_opts(
                HistogramOpts::new(
                    "lb_runtime_lag_seconds",
                    "How late a 10 ms timer of the async runtime fired (a stall delays BFD, Raft and admin tasks).",
                )
                .buckets(latency_buckets()),
            ),
        ),
        bgp_sessions: registered(
            &registry,
            prometheus::IntGaugeVec::new(
                Opts::new(
                    "lb_bgp_session_established",
                    "1 while the BGP session with the peer is established.",
                ),
                &["peer"],
            ),
        ),
        bfd_sessions: registered(
            &registry,
            prometheus::IntGaugeVec::new(
                Opts::new(
                    "lb_bfd_session_up",
                    "1 while the BFD session with the BGP peer is up.",
                ),
                &["peer"],
            ),
        ),
        ipvs_sysctls: registered(
            &registry,
            prometheus::IntGaugeVec::new(
                Opts::new(
                    "lb_ipvs_sysctl",
                    "A sysctl the IPVS dataplane sets, as read back (-1: unreadable).",
                ),
                &["name"],
            ),
        ),
        propagation_seconds: registered(
            &registry,
            Histogram::with_opts(
                HistogramOpts::new(
                    "lb_propagation_seconds",
                    "Time from a service-table change's proposal (on the proposing member's clock) to programmed in this member's dataplane; the newest change of each sync.",
                )
                .buckets(latency_buckets()),
            ),
        ),
        vip_owner_changes: registered(
            &registry,
            IntCounter::new(
                "lb_vip_owner_changes_total",
                "VIPs whose committed owner changed, as this member applied it (moves, releases and first assignments).",
            ),
        ),
        health_probes: registered(
            &registry,
            IntCounterVec::new(
                Opts::new(
                    "lb_health_probes_total",
                    "Health probes this member made, by result (up: the probe passed).",
                ),
                &["result"],
            ),
        ),
        health_probe_seconds: registered(
            &registry,
            Histogram::with_opts(
                HistogramOpts::new(
                    "lb_health_probe_seconds",
                    "How long this member's health probes took (a failed one: up to its timeout).",
                )
                .buckets(latency_buckets()),
            ),
        ),
        health_probed_backends: registered(
            &registry,
            IntGauge::new(
                "lb_health_probed_backends",
                "Backends this member probes (its share of those with health checks).",
            ),
        ),
        health_backends_down: registered(
            &registry,
            IntGauge::new(
                "lb_health_backends_down",
                "Backends the probers agree are down, in this member's applied state (before failing open).",
            ),
        ),
        connections_open: registered(
            &registry,
            prometheus::IntGaugeVec::new(
                Opts::new(
                    "lb_connections_open",
                    "Connections open on each port the member listens on.",
                ),
                &["listener"],
            ),
        ),
        connections_refused: registered(
            &registry,
            IntCounterVec::new(
                Opts::new(
                    "lb_connections_refused_total",
                    "Connections closed at accept: the listener full, the source's share full, or accept failing.",
                ),
                &["listener", "reason"],
            ),
        ),
        tls_handshakes_failed: registered(
            &registry,
            IntCounterVec::new(
                Opts::new(
                    "lb_tls_handshakes_failed_total",
                    "TLS handshakes on the admin and peer ports that failed, by why: no_certificate, unknown_ca, expired, not_yet_valid, bad_certificate (the client's), refused_ours (the client refused this member's), not_tls, timeout, other.",
                ),
                &["listener", "reason"],
            ),
        ),
        registry,
    };
    for listener in ["admin", "peer", "metrics"] {
        metrics.connections_open.with_label_values(&[listener]);
        for reason in ["listener_full", "source_full", "accept_error"] {
            metrics
                .connections_refused
                .with_label_values(&[listener, reason]);
        }
    }
    for listener in ["admin", "peer"] {
        for reason in [
            "no_certificate",
            "unknown_ca",
            "expired",
            "not_yet_valid",
            "bad_certificate",
            "refused_ours",
            "not_tls",
            "timeout",
            "other",
        ] {
            metrics
                .tls_handshakes_failed
                .with_label_values(&[listener, reason]);
        }
    }
    for kind in ["services", "endpointslices"] {
        metrics.watch_events.with_label_values(&[kind]);
        metrics.watch_errors.with_label_values(&[kind]);
        metrics.relists.with_label_values(&[kind]);
        metrics.malformed_objects.with_label_values(&[kind]);
    }
    for result in ["ok", "error"] {
        metrics.status_writes.with_label_values(&[result]);
    }
    // Every known label value from the start, so a series reads 0 rather
    // than being absent until its first event.
    for result in ["committed", "not_leader", "failed"] {
        metrics.proposals.with_label_values(&[result]);
    }
    for result in ["ok", "error"] {
        metrics.source_loads.with_label_values(&[result]);
    }
    metrics
});
