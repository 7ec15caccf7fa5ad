//! A clean stop of a cluster member (SIGTERM, `lbctl member stop`): its
//! VIPs and leadership go to the others before it stops, so a planned
//! restart moves traffic without a failover (docs/announcement.md).
//!
//! Must not: decide who takes the VIPs (the leader's ownership rules do);
//! it only asks to leave and waits for the committed state to show it.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::announce::AnnounceConfig;
use crate::announce::ownership::AnnounceScope;
use crate::config::ClusterConfig;
use crate::model::State;
use crate::replication::node::NodeHandle;

/// How long a member stopping cleanly waits for the others to take its
/// VIPs and leadership before it stops anyway.
pub const HAND_OVER_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a stopping member stays after its VIPs moved: it serves what
/// still arrives (the new owners announce three heartbeats after the
/// change) and, in L2 mode, what the new owners hand over
/// (`announce.linger`, docs/announcement.md).
pub fn stay_after_hand_over(
    cluster: Option<&ClusterConfig>,
    announce: &AnnounceConfig,
) -> Duration {
    let heartbeat = cluster.map_or(Duration::ZERO, |c| c.tick * c.heartbeat_ticks as u32);
    heartbeat * 5
        + match announce {
            AnnounceConfig::L2(l2) => l2.linger,
            _ => Duration::ZERO,
        }
}

/// Waits for `stop` (a clean stop asked for), hands over when this member
/// is in a cluster (`node`), then ends the member through `shutdown`.
pub fn spawn_clean_stop(
    node: Option<NodeHandle>,
    states: watch::Receiver<Arc<State>>,
    scope: AnnounceScope,
    id: u64,
    stay: Duration,
    stop: CancellationToken,
    shutdown: CancellationToken,
) {
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

/// A clean stop of a cluster member: tells the others it is leaving (the
/// leader gives its VIPs away as if it were drained; a leader first hands
/// leadership over), waits until the committed state gives each of its
/// VIPs to another member and the new owners had time to announce them
/// (their takeover wait, docs/announcement.md) and handed it what was
/// still on its way here (`stay`), at most `HAND_OVER_TIMEOUT` for the
/// move. Returns at once where nobody could take over: a member alone, or
/// out of touch with a quorum.
async fn hand_over(
    node: &NodeHandle,
    mut states: watch::Receiver<Arc<State>>,
    scope: &AnnounceScope,
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
