//! Wires a member's tasks together; the policies are in the modules it
//! starts.
//!
//! ```text
//!   services file ─(SIGHUP, change)─▶ source::file::run        ┐ standalone: always;
//!   API server ────(list/watch)─────▶ source::kubernetes::run  ┘ cluster: leader only
//!                                          │ Vec<Command>          (source::leader)
//!                                          ▼ (Proposer)
//!        replication::standalone, or the Raft node thread and peer server
//!        (replication::start; health::run reports verdicts the same way)
//!                       │ watch<Arc<State>> (every member)        │ watch<RaftStatus>
//!      ┌────────────────┼────────────────┬──────────────┐         │
//!      ▼                ▼                ▼              ▼         ▼
//!   dataplane::      dataplane::      health::run    admin::serve, exporter::serve
//!   reconcile::run   routes::run      (probes)       serving::announced_vips (the gate:
//!   (dataplane::open: (pod routes,                   lease, owners, dataplane synced)
//!    IPVS or memory)  endpoint check)                  │ watch<VIPs> (BGP: serving::bgp_routes)
//!      │ watch<DataplaneStatus>                        ▼
//!      └─▶ serving::report_dataplane_ready     announce::l2::run | announce::bgp::run
//!          (a member takes VIPs once programmed)      │ BGP sessions
//!                                                     └─▶ serving::report_announcer_ready
//!
//!   netlink::Netlink: the rtnetlink connections (VIP routes, the L2
//!   announcer's addresses with the memory dataplane, pod routes);
//!   replication::leave: the clean stop
//! ```
//!
//! Each task owns its resource and ends on the shared `CancellationToken`.
//! Only the member that may propose runs the source. A clean stop
//! (`stop`) hands VIPs and leadership over first
//! (`replication::leave`).

use std::time::Duration;

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::admin::{self, AdminService, ClusterHandle};
use crate::announce::AnnounceConfig;
use crate::config::{Config, SourceConfig};
use crate::dataplane::MemoryDataplane;
use crate::dataplane::open::open_kernel;
use crate::dataplane::reconcile::{self, DataplaneStatus};
use crate::model::{State, commands_towards};
use crate::replication::start::{Fatal, start_raft};
use crate::replication::{self, leave};
use crate::serving::{
    BgpRoutes, announced_vips, bgp_routes, report_announcer_ready, report_dataplane_ready,
};
use crate::source::leader::SourceParts;
use crate::source::{SourceStatus, file, kubernetes};

/// The sockets a member serves on, bound by the caller so tests can use
/// port 0.
#[derive(Debug)]
pub struct Listeners {
    pub admin: TcpListener,
    /// `/metrics`, `/healthz`, `/readyz`.
    pub metrics: TcpListener,
    /// The Raft peer port; required when the config has a `[cluster]`.
    pub peer: Option<TcpListener>,
}

/// Runs a member until `shutdown`, or until `stop` asks for a clean stop:
/// a cluster member then first hands its VIPs and leadership to the others
/// (`hand_over`), then shuts down. Returns an error when the initial
/// services file is invalid or the Raft log cannot be opened.
pub async fn run(
    mut config: Config,
    listeners: Listeners,
    stop: CancellationToken,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    // Registered before anything else, so a SIGHUP never kills the member.
    let mut hangup_signal = signal(SignalKind::hangup()).context("cannot listen for SIGHUP")?;
    let (hangup_tx, hangups) = watch::channel(0u64);
    tokio::spawn(async move {
        while hangup_signal.recv().await.is_some() {
            hangup_tx.send_modify(|n| *n += 1);
        }
    });
    // The member's one rtnetlink connection (VIP addresses, pod routes).
    let netlink = crate::netlink::Netlink::open()?;
    // The kernel is checked before the member joins.
    let ecmp = matches!(&config.announce, AnnounceConfig::Bgp(b) if b.ecmp);
    let ipvs = open_kernel(&config.dataplane, &config.file, ecmp, &netlink).await?;
    // IPVS makes every VIP local itself; else the L2 announcer does.
    if let AnnounceConfig::L2(l2) = &mut config.announce {
        let vip_interface = config.dataplane.vip_interface(ipvs.is_some());
        l2.vip_interface =
            (ipvs.is_none() && !vip_interface.is_empty()).then(|| vip_interface.to_owned());
        // With connection sync the masquerade is to the VIP: a member that
        // takes one over makes the conntrack entries of its connections.
        l2.seed_conntrack = ipvs.is_some() && config.dataplane.connection_sync.is_some();
    }
    // Checked at start on every member, leader or not: a typo stops it here.
    let (text, services) = match &config.source {
        SourceConfig::File(f) => {
            let (text, services) = file::read_services(&f.path, f.max_bytes, &config.health)?;
            (Some(text), services)
        }
        SourceConfig::Kubernetes(_) => (None, Vec::new()),
    };
    if let AnnounceConfig::L2(l2) = &config.announce {
        crate::announce::l2::check(l2)?;
        crate::announce::l2::check_services(l2, &services, &config.file)?;
    }
    let (source_kind, source_location) = match &config.source {
        SourceConfig::File(f) => ("file", f.path.display().to_string()),
        SourceConfig::Kubernetes(k) => ("kubernetes", kubernetes::location(k)),
    };

    // The TLS side of the admin and peer servers: one acceptor for both
    // (the files were checked at load).
    let server_tls = config
        .tls
        .as_ref()
        .map(crate::config::TlsConfig::acceptor)
        .transpose()
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut tasks = Vec::new();
    tasks.push(tokio::spawn(crate::runtime_lag::watch(shutdown.clone())));
    let fatal = Fatal::default();
    // A standalone member's table starts as the file: its source starts
    // from that text. A cluster's leader reads the file itself.
    let applied_text = text.filter(|_| config.cluster.is_none());
    let (proposer, states, cluster) = match &config.cluster {
        None => {
            let mut initial = State::default();
            for c in commands_towards(&initial.clone(), services) {
                initial.apply(&c)?;
            }
            let (proposer, states, log_task) = replication::standalone(initial, shutdown.clone());
            tasks.push(tokio::spawn(log_task));
            (proposer, states, None)
        }
        Some(cluster) => {
            // Checked; the leader's source reads the file again.
            drop(services);
            let peer = listeners
                .peer
                .context("a cluster member needs a peer listener")?;
            let peer = crate::listener::GuardedListener::new(peer, "peer", config.limits);
            let (proposer, states, handle, node) = start_raft(
                config.node_id,
                cluster,
                &config.announce,
                peer,
                config.tls.as_ref().zip(server_tls.clone()),
                &fatal,
                &shutdown,
            )
            .await?;
            tasks.push(node);
            (
                proposer,
                states,
                Some(ClusterHandle {
                    cluster_id: cluster.id.clone(),
                    node: handle,
                }),
            )
        }
    };
    info!(
        node = config.node_id,
        source = %source_location,
        admin = %listeners.admin.local_addr()?,
        metrics = %listeners.metrics.local_addr()?,
        cluster = cluster.as_ref().map_or("standalone", |c| c.cluster_id.as_str()),
        "lb-node starting"
    );
    if config.tls.is_none() && !config.admin.listen.ip().is_loopback() {
        // Only with node.insecure (the configuration refuses it otherwise).
        tracing::error!(
            listen = %config.admin.listen,
            "INSECURE: the admin port has no TLS and is reachable beyond this machine: anything that reaches it can change the table and drain members (node.insecure = true); configure [tls] outside a lab"
        );
    }

    // The Raft node's status, in a cluster.
    let raft = cluster.as_ref().map(|c| c.node.status.clone());
    let (source_tx, source_rx) = watch::channel(SourceStatus {
        kind: source_kind,
        location: source_location,
        ..SourceStatus::default()
    });
    // A follower keeps the view of the stored Kubernetes objects in step,
    // so that it starts the source at once if it becomes leader.
    let standby: Option<kubernetes::Standby> = match (&config.source, &cluster) {
        (SourceConfig::Kubernetes(k), Some(c)) => {
            let cache = kubernetes::Standby::default();
            tasks.push(tokio::spawn(kubernetes::standby(
                cache.clone(),
                k.clone(),
                states.clone(),
                c.node.status.clone(),
                shutdown.clone(),
            )));
            Some(cache)
        }
        _ => None,
    };
    tasks.push(crate::source::leader::spawn(
        SourceParts {
            source: config.source.clone(),
            node_id: config.node_id,
            health: config.health,
            hangups,
            proposer: proposer.clone(),
            states: states.clone(),
            status: source_tx,
            standby,
            applied_text: std::sync::Mutex::new(applied_text),
        },
        raft.clone(),
        shutdown.clone(),
    ));

    let (dataplane_tx, dataplane_rx) = watch::channel(DataplaneStatus::default());
    let (bgp_tx, bgp_rx) = watch::channel(Vec::new());
    match config.announce.clone() {
        AnnounceConfig::None => {}
        AnnounceConfig::L2(l2) => {
            let (announced, _) = announced_vips(
                &states,
                &dataplane_rx,
                raft.as_ref(),
                false,
                config.announce.scope(),
                &shutdown,
            );
            let (stop, netlink) = (shutdown.clone(), netlink.clone());
            tasks.push(tokio::spawn(async move {
                if let Err(e) = crate::announce::l2::run(l2, netlink, announced, stop.clone()).await
                {
                    tracing::error!(error = format!("{e:#}"), "L2 announcer failed; stopping");
                    stop.cancel();
                }
            }));
        }
        AnnounceConfig::Bgp(bgp) => {
            let vips = announced_vips(
                &states,
                &dataplane_rx,
                raft.as_ref(),
                bgp.ecmp,
                config.announce.scope(),
                &shutdown,
            );
            // ECMP mode: every member announces every VIP, nothing moves.
            let linger = if bgp.ecmp { Duration::ZERO } else { bgp.linger };
            let routes = BgpRoutes {
                linger,
                service_cidrs: bgp.service_cidrs.clone(),
                // With connection sync owner mode masquerades to the VIP
                // (ECMP mode to the member's own address): a member that
                // takes one over makes its connections' conntrack entries.
                seed_conntrack: !bgp.ecmp
                    && ipvs.is_some()
                    && config.dataplane.connection_sync.is_some(),
            };
            let (announced, settled) = bgp_routes(
                vips,
                routes,
                &states,
                raft.as_ref(),
                &dataplane_rx,
                &shutdown,
            );
            let stop = shutdown.clone();
            tasks.push(tokio::spawn(async move {
                if let Err(e) =
                    crate::announce::bgp::run(bgp, announced, settled, bgp_tx, stop.clone()).await
                {
                    tracing::error!(error = format!("{e:#}"), "BGP speaker failed; stopping");
                    stop.cancel();
                }
            }));
        }
    }

    // Routes to pods: installed from the Nodes with pod_routes; checked
    // for every endpoint wherever the kernel forwards (IPVS).
    let pod_routes = matches!(&config.source, SourceConfig::Kubernetes(k) if k.pod_routes);
    let (routes_tx, routes_rx) = watch::channel(crate::dataplane::routes::RoutesStatus::default());
    if pod_routes || ipvs.is_some() {
        tasks.push(tokio::spawn(crate::dataplane::routes::run(
            netlink.clone(),
            states.clone(),
            crate::dataplane::routes::RoutesSettings {
                pod_routes,
                check_endpoints: ipvs.is_some(),
                repair_interval: config.dataplane.repair_interval,
            },
            routes_tx,
            shutdown.clone(),
        )));
    }

    // Active health checks (issue 22): this member's share of the
    // backends of services that ask for them.
    let health = crate::health::LocalView::default();
    tasks.push(tokio::spawn(crate::health::run(
        config.node_id,
        states.clone(),
        proposer.clone(),
        health.clone(),
        shutdown.clone(),
    )));

    let (counters_tx, counters_rx) = tokio::sync::mpsc::channel(16);
    match ipvs {
        Some(dataplane) => tasks.push(tokio::spawn(reconcile::run(
            dataplane,
            states.clone(),
            config.dataplane.repair_interval,
            dataplane_tx,
            counters_rx,
            shutdown.clone(),
        ))),
        None => tasks.push(tokio::spawn(reconcile::run(
            MemoryDataplane::new(),
            states.clone(),
            config.dataplane.repair_interval,
            dataplane_tx,
            counters_rx,
            shutdown.clone(),
        ))),
    }

    if let Some(c) = &cluster {
        // With connection sync, a member that starts (or returns) takes
        // VIPs only once the others have sent it their connections: each
        // busy one is sent again at least every `refresh`, and a sender
        // holds a message that does not fill a packet for up to 2 s
        // (the kernel's IPVS_SYNC_FLUSH_TIME): failback that resets
        // nothing, issue 21; docs/connections.md.
        let catch_up = config
            .dataplane
            .connection_sync
            .as_ref()
            .map(|s| s.refresh + Duration::from_secs(3));
        tasks.push(tokio::spawn(report_dataplane_ready(
            c.node.clone(),
            states.clone(),
            dataplane_rx.clone(),
            catch_up,
            shutdown.clone(),
        )));
        if matches!(config.announce, AnnounceConfig::Bgp(_)) {
            tasks.push(tokio::spawn(report_announcer_ready(
                c.node.clone(),
                bgp_rx.clone(),
                shutdown.clone(),
            )));
        }
    }

    let views = crate::exporter::Views {
        states: states.clone(),
        source: source_rx.clone(),
        dataplane: dataplane_rx.clone(),
        routes: routes_rx.clone(),
        raft: raft.clone(),
    };
    let metrics_shutdown = shutdown.clone();
    let metrics_listener =
        crate::listener::GuardedListener::new(listeners.metrics, "metrics", config.limits);
    tasks.push(tokio::spawn(async move {
        if let Err(e) =
            crate::exporter::serve(metrics_listener, views, metrics_shutdown.clone()).await
        {
            tracing::error!(error = %e, "metrics endpoint failed; stopping");
            metrics_shutdown.cancel();
        }
    }));

    leave::spawn_clean_stop(
        cluster.as_ref().map(|c| c.node.clone()),
        states.clone(),
        config.announce.scope(),
        config.node_id,
        leave::stay_after_hand_over(config.cluster.as_ref(), &config.announce),
        stop,
        shutdown.clone(),
    );
    let admin = AdminService {
        node_id: config.node_id,
        states,
        source: source_rx,
        dataplane: dataplane_rx,
        routes: routes_rx,
        bgp_peers: bgp_rx,
        scope: config.announce.scope(),
        counters: counters_tx,
        health,
        proposer,
        cluster,
        shutdown: shutdown.clone(),
    };
    let admin_listener =
        crate::listener::GuardedListener::new(listeners.admin, "admin", config.limits);
    let admin_result = admin::serve(admin_listener, admin, server_tls, shutdown.clone()).await;
    // The admin server ends only on shutdown (or a fatal error): stop the rest.
    shutdown.cancel();
    for task in tasks {
        let _ = task.await;
    }
    admin_result.context("admin server failed")?;
    if let Some(end) = fatal
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .take()
    {
        return Err(end);
    }
    info!("lb-node stopped");
    Ok(())
}
