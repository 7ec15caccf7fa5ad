//! The announce gate's tasks: between the Raft node's decisions, the
//! dataplane's progress and the announcers.
//!
//! - `announced_vips`: the VIPs an announcer may announce now (the node's
//!   decision within its lease, held back by `AnnounceGate` until the
//!   dataplane has programmed them);
//! - `bgp_routes`: those VIPs as the BGP speaker's routes, with owner
//!   mode's make before break (`Linger`) and the service CIDRs;
//! - `report_dataplane_ready`, `report_announcer_ready`: tell the node
//!   when this member may be given VIPs at all.
//!
//! The rules are pure and live in `announce::ownership`; this file only
//! runs them on the channels. Must not: talk to the network or the kernel.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::dataplane::reconcile::DataplaneStatus;
use crate::model::State;
use crate::replication::node::{NodeHandle, RaftStatus};

/// The VIPs to announce: in a cluster, what the replica says this member
/// may announce (`ecmp`: every VIP, BGP's ECMP mode); standalone, every
/// VIP of the table. A VIP joins the set only once the dataplane has
/// programmed the state that was current when it became this member's,
/// so a member never attracts traffic for a service its kernel does not
/// have yet (a member just started, a new service); it leaves the set at
/// once.
pub fn announced_vips(
    states: &watch::Receiver<Arc<State>>,
    dataplane: &watch::Receiver<DataplaneStatus>,
    raft: Option<&watch::Receiver<RaftStatus>>,
    ecmp: bool,
    scope: crate::announce::ownership::AnnounceScope,
    shutdown: &CancellationToken,
) -> (
    watch::Receiver<Arc<BTreeSet<IpAddr>>>,
    watch::Receiver<bool>,
) {
    let (tx, rx) = watch::channel(Arc::default());
    let (settled_tx, settled_rx) = watch::channel(false);
    let shutdown = shutdown.clone();
    let mut states = states.clone();
    let mut dataplane = dataplane.clone();
    let mut status = raft.cloned();
    tokio::spawn(async move {
        let mut gate = crate::announce::ownership::AnnounceGate::default();
        // Standalone: every VIP of the table, computed again only when the
        // table changed (most wakes are a dataplane sync).
        let mut table_vips: Option<Arc<BTreeSet<IpAddr>>> = None;
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
pub fn bgp_routes(
    (mut vips, mut vips_settled): (
        watch::Receiver<Arc<BTreeSet<IpAddr>>>,
        watch::Receiver<bool>,
    ),
    routes_config: BgpRoutes,
    states: &watch::Receiver<Arc<State>>,
    raft: Option<&watch::Receiver<RaftStatus>>,
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
    let BgpRoutes {
        linger,
        service_cidrs,
        seed_conntrack,
    } = routes_config;
    // Read for each route's communities (those of the services on its VIP).
    let mut states = states.clone();
    let mut status = raft.cloned();
    tokio::spawn(async move {
        // VIPs that moved away while this member's lease holds: announced
        // until their time is up (owner mode's make before break).
        let mut linger = crate::announce::ownership::Linger::new(linger);
        // The VIPs this member owned when it last sent its routes: one
        // that is new is taken over (its connections' conntrack entries
        // are made first, `seed_conntrack`).
        let mut owned: Arc<BTreeSet<IpAddr>> = Arc::default();
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
            if seed_conntrack && serving {
                let taken = taken_over(&owned, &current);
                if !taken.is_empty() {
                    crate::dataplane::ipvs::conntrack::seed_logged(taken).await;
                }
            }
            owned = if serving {
                current.clone()
            } else {
                Arc::default()
            };
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

/// How `bgp_routes` announces.
#[derive(Debug, Clone)]
pub struct BgpRoutes {
    /// How long a VIP that moved away stays announced (owner mode).
    pub linger: Duration,
    /// Announced whole while this member serves.
    pub service_cidrs: Vec<ipnet::IpNet>,
    /// Owner mode with connection sync (the masquerade to the VIP): make
    /// the conntrack entries of a VIP's synced connections before
    /// announcing a VIP taken over, as the L2 announcer does.
    pub seed_conntrack: bool,
}

/// The IPv4 VIPs in `now` that were not in `before`.
fn taken_over(before: &BTreeSet<IpAddr>, now: &BTreeSet<IpAddr>) -> Vec<std::net::Ipv4Addr> {
    now.difference(before)
        .filter_map(|ip| match ip {
            IpAddr::V4(v4) => Some(*v4),
            IpAddr::V6(_) => None,
        })
        .collect()
}

/// Tells the cluster this member may take VIPs once its dataplane has
/// programmed the table it caught up to: when the member may announce (in
/// touch, caught up), the state's revision then is the mark, and the
/// member is ready once a sync reached it. Until then the leader gives it
/// no VIP and it announces none, so a member that just started never
/// attracts traffic it has no kernel table for (at 50,000 services the
/// first sync takes seconds). A dataplane that never syncs keeps the member
/// out of the VIPs' way, which is what it should do. With `catch_up`
/// (connection sync), not before that long after the start either.
pub async fn report_dataplane_ready(
    node: NodeHandle,
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
pub async fn report_announcer_ready(
    node: NodeHandle,
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::net::IpAddr;

    use super::taken_over;

    fn set(list: &[&str]) -> BTreeSet<IpAddr> {
        list.iter().filter_map(|s| s.parse().ok()).collect()
    }

    #[test]
    fn only_the_ipv4_vips_gained_are_taken_over() {
        let v4 = std::net::Ipv4Addr::new;
        let before = set(&["10.0.0.1", "10.0.0.2"]);
        let now = set(&["10.0.0.2", "10.0.0.3", "fd00::3"]);
        assert_eq!(before.len() + now.len(), 5);
        assert_eq!(taken_over(&before, &now), vec![v4(10, 0, 0, 3)]);
        assert_eq!(taken_over(&now, &before), vec![v4(10, 0, 0, 1)]);
        assert!(taken_over(&now, &now).is_empty());
    }
}
