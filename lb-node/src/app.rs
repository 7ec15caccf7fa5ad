//! Wires a member's tasks together.
//!
//! ```text
//!   services file ──(SIGHUP, change)──▶ source::file::run          ┐ leader only
//!   API server ──────(list/watch)─────▶ source::kubernetes::run    ┘ (run_source_while_leader)
//!                                                   │ Vec<Command> (Proposer)
//!                                                   ▼
//!                     replication: standalone log, or the Raft node thread
//!                     (replication::node) with its peer transport
//!                                │ watch<Arc<State>> (every member)   │ watch<RaftStatus>
//!          ┌───────────────┬─────┴──────────┬─────────────┐           │
//!          ▼               ▼                ▼             ▼           ▼
//!   dataplane::       dataplane::      admin::serve,   announced_vips (the gate:
//!   reconcile::run    routes::run      metrics::serve  lease, owners, dataplane synced)
//!   (IPVS or memory)  (pod routes,                        │ watch<VIPs>
//!          │          endpoint check)                     ▼
//!          │ watch<DataplaneStatus>            announce::l2::run | announce::bgp::run
//!          └──▶ report_dataplane_ready (a member takes VIPs once programmed)
//!
//!   netlink::Netlink: one rtnetlink connection for the VIP interface, the
//!   L2 announcer and the routes
//! ```
//!
//! Each task owns its resource and ends on the shared `CancellationToken`.
//! In a cluster, a supervisor starts the source when this member becomes
//! leader and stops it when it stops being leader: only the leader reads
//! the source and proposes. A clean stop (`stop`) hands VIPs and
//! leadership over first (`hand_over`).

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::admin::{self, AdminService, ClusterHandle};
use crate::config::{ClusterConfig, Config, DataplaneKind, SourceConfig};
use crate::dataplane::MemoryDataplane;
use crate::dataplane::reconcile::{self, DataplaneStatus};
use crate::model::{State, commands_towards};
use crate::replication::node::{self, RaftStatus};
use crate::replication::replica::{Replica, ReplicaConfig};
use crate::replication::storage::LogStore;
use crate::replication::transport::{self, PeerOutbox, PeerService};
use crate::replication::{self, Proposer};
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

/// How long a member stopping cleanly waits for the others to take its
/// VIPs and leadership before it stops anyway.
pub const HAND_OVER_TIMEOUT: Duration = Duration::from_secs(5);

/// Runs a member until `shutdown`, or until `stop` asks for a clean stop:
/// a cluster member then first hands its VIPs and leadership to the others
/// (`hand_over`), then shuts down. Returns an error when the initial
/// services file is invalid or the Raft log cannot be opened.
pub async fn run(
    config: Config,
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
    // The kernel is checked before the member joins: `ipvs` on a kernel
    // without IPVS stops here with a message that says so.
    let ecmp = matches!(&config.announce, crate::announce::AnnounceConfig::Bgp(b) if b.ecmp);
    let ipvs = match config.dataplane.kind {
        DataplaneKind::Memory => None,
        DataplaneKind::Ipvs => Some(
            open_ipvs(&config.dataplane, ecmp, &netlink)
                .await
                .with_context(|| format!("{}: dataplane.kind = \"ipvs\"", config.file.display()))?,
        ),
        DataplaneKind::Auto => match open_ipvs(&config.dataplane, ecmp, &netlink).await {
            Ok(d) => Some(d),
            Err(e @ crate::dataplane::ipvs::IpvsError::NoIpvs) => {
                tracing::warn!(error = %e, "dataplane.kind = \"auto\": no IPVS here; using the memory dataplane");
                None
            }
            Err(e) => return Err(e).context("dataplane.kind = \"auto\""),
        },
    };
    // Checked at start on every member, leader or not: a typo stops it here.
    let services = match &config.source {
        SourceConfig::File { path, .. } => file::load_services(path, &config.health)?,
        SourceConfig::Kubernetes(_) => Vec::new(),
    };
    if let crate::announce::AnnounceConfig::L2(l2) = &config.announce {
        crate::announce::l2::check(l2)?;
        for s in &services {
            let routed = l2.service_cidrs.iter().any(|n| n.contains(&s.key.vip));
            if !routed && !l2.vip_ranges.iter().any(|r| r.contains(&s.key.vip)) {
                anyhow::bail!(crate::config::ConfigError::new(
                    &config.file,
                    "announce.vip_ranges",
                    format!(
                        "service {:?} has VIP {}, outside every announce.vip_ranges network",
                        s.name, s.key.vip
                    ),
                ));
            }
        }
    }
    let (source_kind, source_location) = match &config.source {
        SourceConfig::File { path, .. } => ("file", path.display().to_string()),
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
    let fatal = Fatal::default();
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

    let (source_tx, source_rx) = watch::channel(SourceStatus {
        kind: source_kind,
        location: source_location,
        ..SourceStatus::default()
    });
    // A follower keeps the stored Kubernetes objects decoded, so that it
    // starts the source at once if it becomes leader.
    let standby: Option<kubernetes::Standby> = match (&config.source, &cluster) {
        (SourceConfig::Kubernetes(_), Some(c)) => {
            let cache = kubernetes::Standby::default();
            tasks.push(tokio::spawn(kubernetes::standby(
                cache.clone(),
                states.clone(),
                c.node.status.clone(),
                shutdown.clone(),
            )));
            Some(cache)
        }
        _ => None,
    };
    let run_source = {
        let (source, states, proposer) = (config.source.clone(), states.clone(), proposer.clone());
        let node_id = config.node_id;
        let health = config.health;
        move |stop: CancellationToken| -> std::pin::Pin<Box<dyn Future<Output = ()> + Send>> {
            match &source {
                SourceConfig::File {
                    path,
                    check_interval,
                    settle,
                } => Box::pin(file::run(
                    path.clone(),
                    *check_interval,
                    *settle,
                    health,
                    hangups.clone(),
                    proposer.clone(),
                    states.clone(),
                    source_tx.clone(),
                    stop,
                )),
                SourceConfig::Kubernetes(k) => Box::pin(kubernetes::run(
                    k.clone(),
                    node_id,
                    proposer.clone(),
                    states.clone(),
                    source_tx.clone(),
                    standby.clone(),
                    stop,
                )),
            }
        }
    };
    match &cluster {
        None => tasks.push(tokio::spawn(run_source(shutdown.clone()))),
        Some(c) => tasks.push(tokio::spawn(run_source_while_leader(
            c.node.status.clone(),
            run_source,
            shutdown.clone(),
        ))),
    }

    let (dataplane_tx, dataplane_rx) = watch::channel(DataplaneStatus::default());
    let (bgp_tx, bgp_rx) = watch::channel(Vec::new());
    match config.announce.clone() {
        crate::announce::AnnounceConfig::None => {}
        crate::announce::AnnounceConfig::L2(l2) => {
            let (announced, _) = announced_vips(
                &states,
                &dataplane_rx,
                cluster.as_ref(),
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
        crate::announce::AnnounceConfig::Bgp(bgp) => {
            let vips = announced_vips(
                &states,
                &dataplane_rx,
                cluster.as_ref(),
                bgp.ecmp,
                config.announce.scope(),
                &shutdown,
            );
            // ECMP mode: every member announces every VIP, nothing moves.
            let linger = if bgp.ecmp { Duration::ZERO } else { bgp.linger };
            let (announced, settled) = bgp_routes(
                vips,
                linger,
                bgp.service_cidrs.clone(),
                &states,
                cluster.as_ref(),
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
        if matches!(config.announce, crate::announce::AnnounceConfig::Bgp(_)) {
            tasks.push(tokio::spawn(report_announcer_ready(
                c.node.clone(),
                bgp_rx.clone(),
                shutdown.clone(),
            )));
        }
    }

    let views = crate::metrics::Views {
        states: states.clone(),
        source: source_rx.clone(),
        dataplane: dataplane_rx.clone(),
        routes: routes_rx.clone(),
        raft: cluster.as_ref().map(|c| c.node.status.clone()),
    };
    let metrics_shutdown = shutdown.clone();
    let metrics_listener =
        crate::listener::GuardedListener::new(listeners.metrics, "metrics", config.limits);
    tasks.push(tokio::spawn(async move {
        if let Err(e) =
            crate::metrics::serve(metrics_listener, views, metrics_shutdown.clone()).await
        {
            tracing::error!(error = %e, "metrics endpoint failed; stopping");
            metrics_shutdown.cancel();
        }
    }));

    {
        let (node, states, shutdown) = (
            cluster.as_ref().map(|c| c.node.clone()),
            states.clone(),
            shutdown.clone(),
        );
        let heartbeat = config
            .cluster
            .as_ref()
            .map_or(Duration::ZERO, |c| c.tick * c.heartbeat_ticks as u32);
        // After its VIPs moved, a stopping member serves what still
        // arrives (the new owners announce three heartbeats after the
        // change) and, in L2 mode, what the new owners hand over
        // (`announce.linger`, docs/announcement.md): it stays that long.
        let stay = heartbeat * 5
            + match &config.announce {
                crate::announce::AnnounceConfig::L2(l2) => l2.linger,
                _ => Duration::ZERO,
            };
        let id = config.node_id;
        let scope = config.announce.scope();
        tokio::spawn(async move {
            tokio::select! {
                () = stop.cancelled() => {}
                () = shutdown.cancelled() => return,
            }
            if let Some(node) = node {
                tokio::select! {
                    () = hand_over(&node, states, &scope, id, stay) => {}
                    () = shutdown.cancelled() => {}
                }
            }
            shutdown.cancel();
        });
    }
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

/// `run`'s error when this member was removed from the cluster: it stops
/// and must not be started again as it is (`main` exits with
/// `EXIT_REMOVED`, which the systemd unit does not restart).
#[derive(Debug)]
pub struct RemovedFromCluster;

impl std::fmt::Display for RemovedFromCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(
            "this member was removed from the cluster and stopped; to bring it back, empty its data_dir and add it again (lbctl member add)",
        )
    }
}

impl std::error::Error for RemovedFromCluster {}

/// Tells the cluster this member may take VIPs once its dataplane has
/// programmed the table it caught up to: when the member may announce (in
/// touch, caught up), the state's revision then is the mark, and the
/// member is ready once a sync reached it. Until then the leader gives it
/// no VIP and it announces none, so a member that just started never
/// attracts traffic it has no kernel table for (at 50,000 services the
/// first sync takes seconds). A dataplane that never syncs keeps the member
/// out of the VIPs' way, which is what it should do. With `catch_up`
/// (connection sync), not before that long after the start either.
async fn report_dataplane_ready(
    node: node::NodeHandle,
    states: watch::Receiver<Arc<State>>,
    mut dataplane: watch::Receiver<DataplaneStatus>,
    catch_up: Option<Duration>,
    shutdown: CancellationToken,
) {
    let started = tokio::time::Instant::now();
    let mut status = node.status.clone();
    let ready = async {
        status.wait_for(|s| s.may_announce).await.ok()?;
        let mark = states.borrow().revision();
        dataplane
            .wait_for(|d| d.last_sync_unix_ms > 0 && d.synced_revision >= mark)
            .await
            .ok()?;
        if let Some(wait) = catch_up {
            let left = (started + wait).saturating_duration_since(tokio::time::Instant::now());
            if !left.is_zero() {
                info!(
                    wait = ?left,
                    "dataplane programmed; waiting for the other members' connections (connection sync) before taking VIPs"
                );
                tokio::time::sleep(left).await;
            }
        }
        Some(mark)
    };
    tokio::select! {
        mark = ready => {
            if let Some(mark) = mark
                && node.dataplane_ready().is_ok()
            {
                info!(revision = mark, "dataplane programmed the table: this member takes VIPs");
            }
        }
        () = shutdown.cancelled() => {}
    }
}

/// BGP: tells the replica whether this member can announce at all (a
/// session with at least one peer established). A member that cannot is
/// given no VIP (its VIPs go to members whose routers hear them), so that
/// owner mode never leaves a VIP with a member no router listens to; one
/// that comes back gets VIPs again once its session is up, not before.
async fn report_announcer_ready(
    node: node::NodeHandle,
    mut peers: watch::Receiver<Vec<crate::announce::bgp::PeerStatus>>,
    shutdown: CancellationToken,
) {
    let mut told: Option<bool> = None;
    loop {
        let ready = peers
            .borrow_and_update()
            .iter()
            .any(|p| p.state == "established");
        if told != Some(ready) {
            if node.announce_ready(ready).is_err() {
                return;
            }
            if told.is_some() || ready {
                info!(
                    ready,
                    "BGP: {}",
                    if ready {
                        "a session is up: this member takes VIPs"
                    } else {
                        "no session is up: this member's VIPs go to others"
                    }
                );
            }
            told = Some(ready);
        }
        tokio::select! {
            changed = peers.changed() => if changed.is_err() { return },
            () = shutdown.cancelled() => return,
        }
    }
}

/// A clean stop of a cluster member: tells the others it is leaving (the
/// leader gives its VIPs away as if it were drained; a leader first hands
/// leadership over), waits until the committed state gives each of its
/// VIPs to another member and the new owners had time to announce them
/// (their takeover wait, docs/announcement.md) and handed it what was
/// still on its way here (`stay`), at most `HAND_OVER_TIMEOUT` for the
/// move. Returns at once where nobody could take over: a member alone, or
/// out of touch with a quorum.
async fn hand_over(
    node: &node::NodeHandle,
    mut states: watch::Receiver<Arc<State>>,
    scope: &crate::announce::ownership::AnnounceScope,
    id: u64,
    stay: Duration,
) {
    let lonely = {
        let s = node.status.borrow();
        s.voters.len() < 2 || !s.lease_held
    };
    if lonely || node.leave().is_err() {
        info!("stopping: nobody to hand VIPs over to");
        return;
    }
    info!("stopping: handing VIPs and leadership over first");
    let started = tokio::time::Instant::now();
    let mut status = node.status.clone();
    let done = async {
        loop {
            let handed = {
                let s = status.borrow_and_update();
                let state = states.borrow_and_update();
                let owners = state.vip_owners();
                !s.is_leader()
                    && s.announced.is_empty()
                    && owners.len() == scope.vips(&state).len()
                    && owners.values().all(|o| *o != id)
            };
            if handed {
                return;
            }
            tokio::select! {
                r = status.changed() => if r.is_err() { return },
                r = states.changed() => if r.is_err() { return },
            }
        }
    };
    if tokio::time::timeout(HAND_OVER_TIMEOUT, done).await.is_err() {
        tracing::warn!(
            timeout = ?HAND_OVER_TIMEOUT,
            "stopping: the others did not take this member's VIPs in time; stopping anyway"
        );
        return;
    }
    tokio::time::sleep(stay).await;
    info!(took = ?started.elapsed(), "stopping: VIPs and leadership handed over");
}

async fn open_ipvs(
    config: &crate::config::DataplaneConfig,
    ecmp: bool,
    netlink: &crate::netlink::Netlink,
) -> Result<crate::dataplane::ipvs::IpvsDataplane, crate::dataplane::ipvs::IpvsError> {
    use crate::dataplane::ipvs::{IpvsDataplane, IpvsSettings, Ownership, local::LocalSettings};
    let ownership = if config.own_whole_table {
        Ownership::WholeTable
    } else if !config.managed_networks.is_empty() {
        Ownership::Networks(config.managed_networks.clone())
    } else {
        Ownership::VipInterface
    };
    let local = (!config.vip_interface.is_empty()).then(|| LocalSettings {
        interface: config.vip_interface.clone(),
        masquerade: config.masquerade,
        // Owner mode only: under ECMP the answers to a VIP would reach
        // whichever member the router hashes them to, not the one that
        // forwarded the request (docs/connections.md).
        masquerade_to_vip: config.connection_sync.is_some() && !ecmp,
    });
    IpvsDataplane::open(
        IpvsSettings {
            ownership,
            drain_timeout: config.drain_timeout,
            udp_drain_timeout: config.udp_drain_timeout,
            local,
            sync: config.connection_sync.clone(),
        },
        netlink,
    )
    .await
}

/// The VIPs to announce: in a cluster, what the replica says this member
/// may announce (`ecmp`: every VIP, BGP's ECMP mode); standalone, every
/// VIP of the table. A VIP joins the set only once the dataplane has
/// programmed the state that was current when it became this member's,
/// so a member never attracts traffic for a service its kernel does not
/// have yet (a member just started, a new service); it leaves the set at
/// once.
fn announced_vips(
    states: &watch::Receiver<Arc<State>>,
    dataplane: &watch::Receiver<DataplaneStatus>,
    cluster: Option<&ClusterHandle>,
    ecmp: bool,
    scope: crate::announce::ownership::AnnounceScope,
    shutdown: &CancellationToken,
) -> (
    watch::Receiver<Arc<std::collections::BTreeSet<std::net::IpAddr>>>,
    watch::Receiver<bool>,
) {
    let (tx, rx) = watch::channel(Arc::default());
    let (settled_tx, settled_rx) = watch::channel(false);
    let shutdown = shutdown.clone();
    let mut states = states.clone();
    let mut dataplane = dataplane.clone();
    let mut status = cluster.map(|c| c.node.status.clone());
    tokio::spawn(async move {
        let mut gate = crate::announce::ownership::AnnounceGate::default();
        // Standalone: every VIP of the table, computed again only when the
        // table changed (most wakes are a dataplane sync).
        let mut table_vips: Option<Arc<std::collections::BTreeSet<std::net::IpAddr>>> = None;
        loop {
            // A cluster member's decision holds until its lease's end: past
            // it with no word from the node thread (stalled: a frozen
            // disk), nothing is announced.
            let mut until = None;
            let mut decided = false;
            let wanted = match &mut status {
                Some(status) => {
                    let s = status.borrow_and_update();
                    until = Some(s.announce_until);
                    decided = s.serving && within(s.announce_until);
                    if !within(s.announce_until) {
                        Arc::default()
                    } else if ecmp {
                        s.ecmp.clone()
                    } else {
                        s.announced.clone()
                    }
                }
                None => match &table_vips {
                    Some(vips) if !states.has_changed().unwrap_or(false) => vips.clone(),
                    _ => table_vips
                        .insert(Arc::new(scope.vips(&states.borrow_and_update())))
                        .clone(),
                },
            };
            let revision = states.borrow_and_update().revision();
            let synced = {
                let d = dataplane.borrow_and_update();
                (d.last_sync_unix_ms > 0).then_some(d.synced_revision)
            };
            if status.is_none() {
                decided = synced.is_some();
            }
            if let Some(now) = gate.update(wanted, revision, synced) {
                tx.send_replace(now);
            }
            // Decided, and nothing held back by the gate: what is
            // announced now is what the member means to announce (BGP's
            // End-of-RIB waits for it). After the VIPs, so that a reader
            // that sees it sees them.
            if decided && !gate.holds_back() {
                settled_tx.send_if_modified(|s| !std::mem::replace(s, true));
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                changed = async {
                    match &mut status {
                        Some(status) => status.changed().await,
                        None => states.changed().await,
                    }
                } => if changed.is_err() { return },
                changed = dataplane.changed() => if changed.is_err() { return },
                () = lease_end(until.flatten()) => {}
            }
        }
    });
    (rx, settled_rx)
}

/// Whether a decision valid until `until` still holds (None: it never
/// did).
fn within(until: Option<std::time::Instant>) -> bool {
    until.is_some_and(|t| std::time::Instant::now() < t)
}

/// Sleeps until `until`, when what was decided up to then must be looked
/// at again (the node thread moves the end forward with every echo, and a
/// stalled one does not); never, without an end.
async fn lease_end(until: Option<std::time::Instant>) {
    match until {
        Some(t) if std::time::Instant::now() < t => {
            tokio::time::sleep_until(tokio::time::Instant::from_std(t)).await;
        }
        _ => std::future::pending().await,
    }
}

/// What the BGP speaker announces: each announced VIP as a host route,
/// and the service CIDRs whole while this member serves (a cluster
/// member: in touch, ready, not drained or leaving; standalone: once its
/// dataplane has synced), so that the routers spread ClusterIP traffic
/// over every healthy member. The second receiver turns true the first
/// time the member serves: what it announces is decided from then on.
fn bgp_routes(
    (mut vips, mut vips_settled): (
        watch::Receiver<Arc<std::collections::BTreeSet<std::net::IpAddr>>>,
        watch::Receiver<bool>,
    ),
    linger: Duration,
    service_cidrs: Vec<ipnet::IpNet>,
    states: &watch::Receiver<Arc<State>>,
    cluster: Option<&ClusterHandle>,
    dataplane: &watch::Receiver<DataplaneStatus>,
    shutdown: &CancellationToken,
) -> (
    watch::Receiver<Arc<crate::announce::bgp::fsm::Routes>>,
    watch::Receiver<bool>,
) {
    let (tx, rx) = watch::channel(Arc::default());
    let (settled_tx, settled_rx) = watch::channel(false);
    let shutdown = shutdown.clone();
    let mut dataplane = dataplane.clone();
    // Read for each route's communities (those of the services on its VIP).
    let mut states = states.clone();
    let mut status = cluster.map(|c| c.node.status.clone());
    tokio::spawn(async move {
        // VIPs that moved away while this member's lease holds: announced
        // until their time is up (owner mode's make before break).
        let mut linger = crate::announce::ownership::Linger::new(linger);
        loop {
            let mut until = None;
            let serving = match &mut status {
                Some(s) => {
                    let s = s.borrow_and_update();
                    until = s.announce_until;
                    s.serving && within(until)
                }
                None => dataplane.borrow_and_update().last_sync_unix_ms > 0,
            };
            let vips_decided = *vips_settled.borrow_and_update();
            let current = vips.borrow_and_update().clone();
            let state = states.borrow_and_update().clone();
            let lease = match &status {
                Some(_) => within(until),
                None => serving,
            };
            let mut routes: crate::announce::bgp::fsm::Routes = current
                .iter()
                .chain(linger.update(&current, lease, std::time::Instant::now()))
                .map(|ip| {
                    (
                        ipnet::IpNet::from(*ip),
                        crate::announce::bgp::route_tags(&state, *ip),
                    )
                })
                .collect();
            if serving {
                routes.extend(service_cidrs.iter().map(|c| (*c, Default::default())));
            }
            let next_end = linger.next_end().map(tokio::time::Instant::from_std);
            tx.send_if_modified(|now| {
                let changed = **now != routes;
                if changed {
                    *now = Arc::new(routes);
                }
                changed
            });
            // After the routes, so that a session sees them first.
            if serving && vips_decided {
                settled_tx.send_if_modified(|s| !std::mem::replace(s, true));
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                changed = vips.changed() => if changed.is_err() { return },
                changed = vips_settled.changed() => if changed.is_err() { return },
                changed = states.changed() => if changed.is_err() { return },
                changed = async {
                    match &mut status {
                        Some(s) => s.changed().await,
                        None => dataplane.changed().await,
                    }
                } => if changed.is_err() { return },
                () = lease_end(until) => {}
                () = async {
                    match next_end {
                        Some(end) => tokio::time::sleep_until(end).await,
                        None => std::future::pending().await,
                    }
                } => {}
            }
        }
    });
    (rx, settled_rx)
}

/// What stopped the member from inside (the raft node thread failed, or
/// this member was removed: `RemovedFromCluster`), reported as the
/// member's exit status.
type Fatal = Arc<std::sync::Mutex<Option<anyhow::Error>>>;

type RaftParts = (
    Proposer,
    watch::Receiver<Arc<State>>,
    node::NodeHandle,
    tokio::task::JoinHandle<()>,
);

/// Opens the Raft log, starts the node thread, the peer server and the
/// peer senders. The returned task ends when the node thread has stopped.
async fn start_raft(
    node_id: u64,
    cluster: &ClusterConfig,
    announce: &crate::announce::AnnounceConfig,
    peer_listener: crate::listener::GuardedListener,
    // The member's TLS files (for dialing peers) and its acceptor.
    tls: Option<(&crate::config::TlsConfig, tokio_rustls::TlsAcceptor)>,
    fatal: &Fatal,
    shutdown: &CancellationToken,
) -> anyhow::Result<RaftParts> {
    if tls.is_none() && !cluster.listen.ip().is_loopback() {
        // Only with node.insecure (the configuration refuses it otherwise).
        tracing::error!(
            listen = %cluster.listen,
            "INSECURE: the peer port has no TLS and is reachable beyond this machine: anything that reaches it can speak for a member and force elections (node.insecure = true); configure [tls] outside a lab"
        );
    }
    let store = LogStore::open(&cluster.data_dir)?;
    let replica = Replica::open(
        ReplicaConfig {
            id: node_id,
            election_ticks: cluster.election_ticks,
            heartbeat_ticks: cluster.heartbeat_ticks,
            snapshot_after_entries: cluster.snapshot_after_entries,
            fixed_election_timeout: None,
            initial_admin: cluster.initial_admin.clone(),
            wait_for_dataplane: true,
            scope: announce.scope(),
            // BGP ECMP with graceful restart: the routes stay through a
            // restart (docs/announcement.md, *Graceful restart*).
            serve_while_leaving: matches!(announce, crate::announce::AnnounceConfig::Bgp(b)
                if b.ecmp && b.graceful_restart.is_some()),
            // BGP: no VIP for a member with no session up
            // (`report_announcer_ready`).
            wait_for_announcer: matches!(announce, crate::announce::AnnounceConfig::Bgp(_)),
        },
        store,
        &cluster.initial_members,
    )?;
    let (inputs, inputs_rx) = std::sync::mpsc::channel();
    let (state_tx, states) = watch::channel(Arc::new(replica.state().clone()));
    let (status_tx, status) = watch::channel(RaftStatus::default());
    let outbox = PeerOutbox::new(
        cluster.id.clone(),
        node_id,
        states.clone(),
        inputs.clone(),
        tokio::runtime::Handle::current(),
        shutdown.clone(),
        tls.as_ref().map(|(files, _)| files.client()),
    );
    let tick = cluster.tick;
    let node_thread = std::thread::Builder::new()
        .name("raft-node".into())
        .spawn(move || node::run(replica, inputs_rx, tick, outbox, state_tx, status_tx))
        .context("cannot start the raft node thread")?;
    let service = PeerService::new(cluster.id.clone(), node_id, states.clone(), inputs.clone());
    let server_tls = tls.map(|(_, acceptor)| acceptor);
    let peer_shutdown = shutdown.clone();
    let peer_addr = peer_listener.local_addr()?;
    tokio::spawn(async move {
        if let Err(e) =
            transport::serve(peer_listener, service, server_tls, peer_shutdown.clone()).await
        {
            tracing::error!(error = %e, "peer server failed; stopping");
            peer_shutdown.cancel();
        }
    });
    info!(node = node_id, peer = %peer_addr, "raft peer port listening");
    let stop_inputs = inputs.clone();
    let node_shutdown = shutdown.clone();
    let fatal = fatal.clone();
    let node = tokio::spawn(async move {
        node_shutdown.cancelled().await;
        let _ = stop_inputs.send(node::Input::Stop);
        let end = match tokio::task::spawn_blocking(move || node_thread.join()).await {
            Ok(Ok(Ok(node::Ended::Removed))) => Some(anyhow::Error::new(RemovedFromCluster)),
            Ok(Ok(Err(e))) => Some(anyhow::anyhow!("raft node failed: {e}")),
            Ok(Err(_)) => Some(anyhow::anyhow!("raft node thread panicked")),
            _ => None,
        };
        if let Some(end) = end {
            if end.downcast_ref::<RemovedFromCluster>().is_none() {
                tracing::error!("{end}");
            }
            *fatal
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(end);
        }
    });
    // A fatal error in the node thread stops the member: it must not go on
    // serving a table it can no longer keep in step.
    let mut watch_status = status.clone();
    let fatal_shutdown = shutdown.clone();
    tokio::spawn(async move {
        while watch_status.changed().await.is_ok() {}
        fatal_shutdown.cancel();
    });
    let handle = node::NodeHandle {
        inputs: inputs.clone(),
        status,
    };
    Ok((Proposer::raft(inputs), states, handle, node))
}

/// Runs the source only while this member leads.
async fn run_source_while_leader<F, Fut>(
    mut status: watch::Receiver<RaftStatus>,
    run_source: F,
    shutdown: CancellationToken,
) where
    F: Fn(CancellationToken) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let mut running: Option<(CancellationToken, tokio::task::JoinHandle<()>)> = None;
    loop {
        // A new leader starts the source only once it applied its first
        // entry: entries of the last leader that it commits on taking over
        // are then in the state the source starts from (otherwise its view
        // of the objects lags the table it compares against).
        let leader = {
            let s = status.borrow_and_update();
            s.is_leader() && s.applied_current_term
        };
        match (leader, running.is_some()) {
            (true, false) => {
                info!("leader: starting the source");
                let stop = shutdown.child_token();
                running = Some((stop.clone(), tokio::spawn(run_source(stop))));
            }
            (false, true) => {
                info!("no longer leader: stopping the source");
                if let Some((stop, task)) = running.take() {
                    stop.cancel();
                    let _ = task.await;
                }
            }
            _ => {}
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            changed = status.changed() => if changed.is_err() { break },
            // A source that ended on its own is restarted while leading.
            _ = tokio::time::sleep(Duration::from_secs(1)), if running.as_ref().is_some_and(|(_, t)| t.is_finished()) => {
                running = None;
            }
        }
    }
    if let Some((stop, task)) = running {
        stop.cancel();
        let _ = task.await;
    }
}
