//! Starting a cluster member's replication: the Raft log on disk, the
//! node thread, the peer server and the peer senders, and what ends the
//! member from inside (the node thread failed, or the member was removed).
//!
//! Must not: decide anything about the table or the VIPs; it only starts
//! the parts and reports how they ended.

use std::sync::Arc;

use anyhow::Context as _;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::announce::AnnounceConfig;
use crate::config::{ClusterConfig, TlsConfig};
use crate::listener::GuardedListener;
use crate::model::State;
use crate::replication::Proposer;
use crate::replication::node::{self, RaftStatus};
use crate::replication::replica::{Replica, ReplicaConfig};
use crate::replication::storage::LogStore;
use crate::replication::transport::{self, PeerOutbox, PeerService};

/// `app::run`'s error when this member was removed from the cluster: it stops
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

/// What stopped the member from inside (the raft node thread failed, or
/// this member was removed: `RemovedFromCluster`), reported as the
/// member's exit status.
pub type Fatal = Arc<std::sync::Mutex<Option<anyhow::Error>>>;

pub type RaftParts = (
    Proposer,
    watch::Receiver<Arc<State>>,
    node::NodeHandle,
    tokio::task::JoinHandle<()>,
);

/// Opens the Raft log, starts the node thread, the peer server and the
/// peer senders. The returned task ends when the node thread has stopped.
pub async fn start_raft(
    node_id: u64,
    cluster: &ClusterConfig,
    announce: &AnnounceConfig,
    peer_listener: GuardedListener,
    // The member's TLS files (for dialing peers) and its acceptor.
    tls: Option<(&TlsConfig, tokio_rustls::TlsAcceptor)>,
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
            serve_while_leaving: matches!(announce, AnnounceConfig::Bgp(b)
                if b.ecmp && b.graceful_restart.is_some()),
            // BGP: no VIP for a member with no session up
            // (`report_announcer_ready`).
            wait_for_announcer: matches!(announce, AnnounceConfig::Bgp(_)),
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
