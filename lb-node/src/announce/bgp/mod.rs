//! An announce-only BGP-4 speaker: one session per configured peer, which
//! announces this member's routes with itself as the next hop and
//! withdraws them as they go: its VIPs as host routes (/32, /128), and the
//! service CIDRs whole while it serves (`announce.service_cidrs`, from every
//! healthy member: the routers spread ClusterIP traffic by ECMP). Received
//! routes are ignored.
//!
//! The protocol is the pure state machine of `fsm` (OPEN, negotiation,
//! UPDATEs of the negotiated families, NOTIFICATIONs); `session` owns the
//! TCP connection and the timers and turns them into its events, and this
//! module the peers' configuration, their reconnect loops and the passive
//! listener. Writes go
//! through a writer task, so a peer that stops reading never holds up the
//! session's timers or a stop: a write that makes no progress for the hold
//! time (or 30 s without one) ends the session. A session error resets
//! with backoff (1 s doubling to 30 s, back to 1 s after a session that
//! was established). A clean stop withdraws every route and ends with a
//! Cease NOTIFICATION (Administrative Shutdown), waiting at most 2 s for
//! the peer to take them.

pub mod codec;
mod config;
pub mod fsm;
pub mod md5;
mod session;

pub use config::{BgpConfig, PeerConfig, PeerStatus};
use session::{Ended, PeerHandle};

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// Runs one session per peer until `shutdown`, with BFD where
/// configured; publishes the peers' states in `status`.
/// `settled` turns true once what the member announces is decided (the
/// End-of-RIB of graceful restart waits for it).
pub async fn run(
    config: BgpConfig,
    announced: watch::Receiver<Arc<fsm::Routes>>,
    settled: watch::Receiver<bool>,
    status: watch::Sender<Vec<PeerStatus>>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let config = Arc::new(config);
    status.send_replace(
        config
            .peers
            .iter()
            .map(|p| PeerStatus {
                address: p.address,
                asn: p.asn,
                state: "connecting",
                established_since_unix_ms: 0,
                routes: 0,
                last_error: String::new(),
                bfd: p.bfd_spec(&config).map(|_| Default::default()),
            })
            .collect(),
    );
    let specs: Vec<(usize, crate::announce::bfd::PeerSpec)> = config
        .peers
        .iter()
        .enumerate()
        .filter_map(|(i, p)| p.bfd_spec(&config).map(|s| (i, s)))
        .collect();
    let mut bfd: Vec<Option<watch::Receiver<crate::announce::bfd::Status>>> =
        vec![None; config.peers.len()];
    // BFD stops after the BGP sessions: a peer hears the session close
    // (a graceful restart's, or a Cease) before BFD's AdminDown, so that
    // it never takes the stop for a failure of the path.
    let bfd_stop = CancellationToken::new();
    // Also on an early return.
    let bfd_guard = bfd_stop.clone().drop_guard();
    let mut bfd_tasks = Vec::new();
    if let Some(timers) = config.bfd {
        let (receivers, tasks) = crate::announce::bfd::spawn(
            timers,
            specs.iter().map(|(_, s)| s.clone()).collect(),
            bfd_stop.clone(),
        )
        .await
        .context("BFD")?;
        bfd_tasks = tasks;
        for ((i, _), rx) in specs.iter().zip(receivers) {
            // The status follows the BFD session, in a session or not.
            let (mut copy, status) = (rx.clone(), status.clone());
            let i = *i;
            tokio::spawn(async move {
                loop {
                    let now = copy.borrow_and_update().clone();
                    status.send_modify(|s| {
                        if let Some(p) = s.get_mut(i) {
                            p.bfd = Some(now);
                        }
                    });
                    if copy.changed().await.is_err() {
                        return;
                    }
                }
            });
            bfd[i] = Some(rx);
        }
    }
    // Passive peers: one listener hands each accepted connection to the
    // peer it comes from.
    let mut incoming: Vec<Option<mpsc::Receiver<TcpStream>>> =
        (0..config.peers.len()).map(|_| None).collect();
    if config.peers.iter().any(|p| p.passive) {
        let at = config
            .listen
            .unwrap_or_else(|| SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, 179)));
        let listener = passive_listener(at, &config.peers)
            .with_context(|| format!("cannot listen on {at} for passive BGP peers"))?;
        let mut routes = Vec::new();
        for (i, p) in config.peers.iter().enumerate() {
            if p.passive {
                let (tx, rx) = mpsc::channel(1);
                incoming[i] = Some(rx);
                routes.push((p.address.ip(), tx));
            }
        }
        info!(%at, "listening for passive BGP peers");
        tokio::spawn(accept_loop(listener, routes, shutdown.clone()));
    }
    let mut sessions = Vec::new();
    for (i, peer) in config.peers.clone().into_iter().enumerate() {
        sessions.push(tokio::spawn(peer_loop(
            config.clone(),
            peer,
            announced.clone(),
            PeerHandle {
                index: i,
                status: status.clone(),
                bfd: bfd[i].take(),
                settled: settled.clone(),
                incoming: incoming[i].take(),
            },
            shutdown.clone(),
        )));
    }
    for s in sessions {
        let _ = s.await;
    }
    // A router whose BFD and BGP are separate processes (FRR's bfdd and
    // bgpd) may hear BFD's AdminDown before its BGP has read the closed
    // session, and then drops the routes a graceful restart would keep
    // (seen in 4 of 10 rolling restarts through FRR): BFD goes on for a
    // moment after the sessions closed.
    if !bfd_tasks.is_empty() {
        tokio::time::sleep(BFD_AFTER_BGP).await;
    }
    drop(bfd_guard);
    for t in bfd_tasks {
        let _ = t.await;
    }
    Ok(())
}

/// How long BFD outlives the BGP sessions at a stop.
const BFD_AFTER_BGP: Duration = Duration::from_millis(500);

const BACKOFF_FIRST: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

async fn peer_loop(
    config: Arc<BgpConfig>,
    peer: PeerConfig,
    announced: watch::Receiver<Arc<fsm::Routes>>,
    mut handle: PeerHandle,
    shutdown: CancellationToken,
) {
    let mut backoff = BACKOFF_FIRST;
    let mut first = true;
    loop {
        let mut established = false;
        let ended = session::session(
            &config,
            &peer,
            announced.clone(),
            &mut handle,
            first,
            &shutdown,
            &mut established,
        )
        .await;
        first = false;
        crate::metrics::METRICS
            .bgp_sessions
            .with_label_values(&[&peer.address.to_string()])
            .set(0);
        let error = match ended {
            Ok(Ended::Shutdown) => return,
            Ok(Ended::Reset(why)) => {
                warn!(peer = %peer.address, reason = %why, "BGP session reset");
                why
            }
            Err(e) => {
                let e = format!("{e:#}");
                warn!(peer = %peer.address, error = %e, "BGP session failed");
                e
            }
        };
        handle.update(|p| {
            p.state = "connecting";
            p.established_since_unix_ms = 0;
            p.routes = 0;
            p.last_error = error;
        });
        // A session that got as far as established ends the outage the
        // backoff counted: the next failure starts from the first step.
        if established {
            backoff = BACKOFF_FIRST;
        }
        // A passive peer calls again when it wants: no backoff of ours.
        if peer.passive {
            continue;
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// Accepts passive peers' connections: each goes to the session of the
/// peer whose address it comes from (IPv4-mapped addresses read as IPv4);
/// one from anywhere else, or for a peer whose session is busy, is closed.
async fn accept_loop(
    listener: tokio::net::TcpListener,
    peers: Vec<(IpAddr, mpsc::Sender<TcpStream>)>,
    shutdown: CancellationToken,
) {
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => return,
            a = listener.accept() => a,
        };
        let (stream, from) = match accepted {
            Ok(a) => a,
            Err(e) => {
                warn!(error = %e, "cannot accept a BGP connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let ip = from.ip().to_canonical();
        match peers.iter().find(|(a, _)| *a == ip) {
            Some((_, tx)) => {
                if tx.try_send(stream).is_err() {
                    debug!(%from, "BGP connection from a peer whose session is busy: closed");
                }
            }
            None => warn!(%from, "BGP connection from an address that is no passive peer: closed"),
        }
    }
}

/// The passive peers' listener, with each one's password set before it
/// listens (no connection is accepted unsigned).
fn passive_listener(
    at: SocketAddr,
    peers: &[PeerConfig],
) -> anyhow::Result<tokio::net::TcpListener> {
    let socket = if at.is_ipv4() {
        tokio::net::TcpSocket::new_v4()
    } else {
        tokio::net::TcpSocket::new_v6()
    }?;
    socket.set_reuseaddr(true)?;
    socket.bind(at)?;
    for p in peers.iter().filter(|p| p.passive) {
        if let Some(key) = &p.password {
            md5::set(&socket, p.address.ip(), Some(key)).with_context(|| {
                format!("cannot set the TCP MD5 password of peer {}", p.address)
            })?;
        }
    }
    Ok(socket.listen(1024)?)
}

/// The communities of `vip`'s route: those of every service on it,
/// merged (a lookup of the VIP's services, not a scan of the table).
pub fn route_tags(state: &crate::model::State, vip: IpAddr) -> fsm::RouteTags {
    let mut t = fsm::RouteTags::default();
    for s in state.services_on(vip) {
        t.communities.extend(&s.bgp_communities);
        t.large_communities.extend(&s.bgp_large_communities);
    }
    t.communities.sort_unstable();
    t.communities.dedup();
    t.large_communities.sort_unstable();
    t.large_communities.dedup();
    t
}

#[cfg(test)]
mod tests;
