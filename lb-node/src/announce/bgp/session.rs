//! One BGP session's IO: the TCP stream, the writer task, the timers, BFD
//! and the routes to announce, around the pure machine in `fsm`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::codec::Message;
use super::config::{BgpConfig, PeerConfig, PeerStatus};
use super::fsm::{self, Action, Event, Session};
use super::md5;
use crate::announce::bfd::packet::State as BfdState;

pub(super) async fn session(
    config: &BgpConfig,
    peer: &PeerConfig,
    mut announced: watch::Receiver<Arc<fsm::Routes>>,
    handle: &mut PeerHandle,
    first: bool,
    shutdown: &CancellationToken,
    established: &mut bool,
) -> anyhow::Result<Ended> {
    let mut settled = handle.settled.clone();
    let mut bfd = handle.bfd.clone();
    let mut bfd_was_up = bfd
        .as_mut()
        .is_some_and(|b| b.borrow_and_update().state == BfdState::Up);
    let stream = tokio::select! {
        _ = shutdown.cancelled() => return Ok(Ended::Shutdown),
        s = open(peer, handle.incoming.as_mut()) => s?,
    };
    let local = stream.local_addr()?.ip();
    let (mut read, write) = stream.into_split();
    let (queue, queued) = mpsc::unbounded_channel::<Vec<u8>>();
    let stall = Duration::from_secs(u64::from(config.hold_time).max(30));
    let mut writer = tokio::spawn(write_loop(write, queued, stall));
    let mut fsm = Session::new(peer.session_config(config, first));
    let mut closing: Option<(String, bool)> = None;
    let mut act = |actions: Vec<Action>, closing: &mut Option<(String, bool)>| {
        for a in actions {
            match a {
                Action::Send(m) => {
                    let _ = queue.send(m.encode());
                }
                Action::Established(n) => {
                    *established = true;
                    handle.update(|p| {
                        p.state = "established";
                        p.established_since_unix_ms =
                            crate::clock::unix_ms(std::time::SystemTime::now());
                    });
                    info!(peer = %peer.address, asn = peer.asn, hold_s = n.hold_time,
                          families = ?n.families, four_octet = n.four_octet,
                          graceful_restart = n.graceful_restart, "BGP session established");
                    crate::metrics::METRICS
                        .bgp_sessions
                        .with_label_values(&[&peer.address.to_string()])
                        .set(1);
                }
                Action::RoutesUpdated {
                    announced,
                    withdrawn,
                    total,
                } => {
                    info!(peer = %peer.address, announced, withdrawn, "BGP routes updated");
                    handle.update(|p| p.routes = total);
                }
                Action::Close { reason, clean } => *closing = Some((reason, clean)),
            }
        }
    };
    act(fsm.handle(Event::Connected { local }), &mut closing);
    act(
        fsm.handle(Event::Routes(routes_for(
            peer,
            &announced.borrow_and_update(),
        ))),
        &mut closing,
    );
    if *settled.borrow_and_update() {
        act(fsm.handle(Event::Settled), &mut closing);
    }
    // Graceful restart: the End-of-RIB goes once the member settled, or
    // after the restart time at the latest (a member that cannot rejoin
    // must not keep its stale routes for ever).
    let end_of_rib_by = tokio::time::Instant::now()
        + Duration::from_secs(u64::from(config.graceful_restart.unwrap_or(0)));
    let mut settle_pending = config.graceful_restart.is_some() && !*settled.borrow();
    // Until the OPENs are exchanged, 30 s of silence ends the attempt.
    let mut last_heard = tokio::time::Instant::now();
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 4096];
    let mut keepalive_at: Option<tokio::time::Instant> = None;
    loop {
        if let Some((reason, clean)) = closing.take() {
            // What was queued goes first (withdrawals, the NOTIFICATION),
            // for at most 2 s: a peer that does not read does not hold a
            // stop up.
            drop(queue);
            let _ = tokio::time::timeout(Duration::from_secs(2), &mut writer).await;
            writer.abort();
            if clean {
                info!(peer = %peer.address, routes = fsm.advertised().len(), "BGP session closed: {reason}");
                return Ok(Ended::Shutdown);
            }
            return Ok(Ended::Reset(reason));
        }
        let hold = fsm.negotiated().map(|n| n.hold_time);
        let hold_for = match hold {
            Some(0) => None,
            Some(h) => Some(Duration::from_secs(u64::from(h))),
            None => Some(Duration::from_secs(30)),
        };
        if let (Some(h), None) = (hold_for, keepalive_at)
            && hold.is_some()
        {
            keepalive_at = Some(tokio::time::Instant::now() + h / 3);
        }
        tokio::select! {
            _ = shutdown.cancelled() => act(fsm.handle(Event::Stop), &mut closing),
            changed = settled.changed(), if settle_pending => {
                if changed.is_err() || *settled.borrow_and_update() {
                    settle_pending = false;
                    // The routes published before it first: the select may
                    // wake this branch before the routes' own.
                    if announced.has_changed().unwrap_or(false) {
                        let routes = routes_for(peer, &announced.borrow_and_update());
                        act(fsm.handle(Event::Routes(routes)), &mut closing);
                    }
                    act(fsm.handle(Event::Settled), &mut closing);
                }
            }
            () = tokio::time::sleep_until(end_of_rib_by), if settle_pending => {
                settle_pending = false;
                warn!(peer = %peer.address, "not settled within the restart time: End-of-RIB sent anyway");
                act(fsm.handle(Event::Settled), &mut closing);
            }
            changed = async {
                match bfd.as_mut() {
                    Some(b) => b.changed().await,
                    None => std::future::pending().await,
                }
            } => {
                if changed.is_err() {
                    bfd = None;
                    continue;
                }
                let now = bfd.as_mut().map(|b| b.borrow_and_update().clone()).unwrap_or_default();
                let up = now.state == BfdState::Up;
                // Down after Up, the peer not administratively down (RFC
                // 5882 §3.2: that is no failure of the path): the path is
                // gone, and the session with it.
                // Our own AdminDown is a stop, which the session sees
                // itself.
                if bfd_was_up
                    && now.state == BfdState::Down
                    && !now.peer_admin_down
                    && !shutdown.is_cancelled()
                {
                    act(fsm.handle(Event::BfdDown), &mut closing);
                }
                bfd_was_up = up;
            }
            changed = announced.changed() => {
                // The sender goes away only when the member stops.
                let event = if changed.is_err() {
                    Event::Stop
                } else {
                    Event::Routes(routes_for(peer, &announced.borrow_and_update()))
                };
                act(fsm.handle(event), &mut closing);
            }
            () = async {
                match keepalive_at {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            } => {
                act(fsm.handle(Event::KeepaliveDue), &mut closing);
                keepalive_at = hold_for.map(|h| tokio::time::Instant::now() + h / 3);
            }
            () = async {
                match hold_for {
                    Some(h) => tokio::time::sleep_until(last_heard + h).await,
                    None => std::future::pending().await,
                }
            } => act(fsm.handle(Event::HoldTimerExpired), &mut closing),
            n = read.read(&mut chunk) => {
                let n = n.context("read")?;
                if n == 0 {
                    anyhow::bail!("the peer closed the connection");
                }
                buf.extend_from_slice(&chunk[..n]);
                loop {
                    match Message::decode(&buf) {
                        Ok(Some((m, len))) => {
                            buf.drain(..len);
                            last_heard = tokio::time::Instant::now();
                            act(fsm.handle(Event::Received(m)), &mut closing);
                        }
                        Ok(None) => break,
                        Err(e) => {
                            act(fsm.handle(Event::Malformed(e)), &mut closing);
                            break;
                        }
                    }
                    if closing.is_some() {
                        break;
                    }
                }
            }
            written = &mut writer => {
                return Err(match written {
                    Ok(Err(e)) => e,
                    Ok(Ok(())) => anyhow::anyhow!("the writer stopped"),
                    Err(e) => anyhow::anyhow!("the writer failed: {e}"),
                });
            }
        }
    }
}

/// The routes for this peer.
fn routes_for(peer: &PeerConfig, all: &Arc<fsm::Routes>) -> Arc<fsm::Routes> {
    if peer.prefixes.is_empty() {
        return all.clone();
    }
    Arc::new(
        all.iter()
            .filter(|(r, _)| peer.takes(r))
            .map(|(r, t)| (*r, t.clone()))
            .collect(),
    )
}

/// Writes what the session queues, in order; fails when one message makes
/// no progress for `stall` (the peer stopped reading).
async fn write_loop(
    mut stream: tokio::net::tcp::OwnedWriteHalf,
    mut queue: mpsc::UnboundedReceiver<Vec<u8>>,
    stall: Duration,
) -> anyhow::Result<()> {
    while let Some(bytes) = queue.recv().await {
        tokio::time::timeout(stall, stream.write_all(&bytes))
            .await
            .with_context(|| format!("the peer has read nothing for {stall:?}"))?
            .context("cannot write to the peer")?;
    }
    let _ = stream.shutdown().await;
    Ok(())
}

/// A session's links to the rest: its line in the status, its BFD, and
/// whether the member's routes are settled.
pub(super) struct PeerHandle {
    pub(super) index: usize,
    pub(super) status: watch::Sender<Vec<PeerStatus>>,
    pub(super) bfd: Option<watch::Receiver<crate::announce::bfd::Status>>,
    pub(super) settled: watch::Receiver<bool>,
    /// A passive peer's connections, from the listener.
    pub(super) incoming: Option<mpsc::Receiver<TcpStream>>,
}

impl PeerHandle {
    pub(super) fn update(&self, f: impl FnOnce(&mut PeerStatus)) {
        self.status.send_modify(|s| {
            if let Some(p) = s.get_mut(self.index) {
                f(p);
            }
        });
    }
}

/// How a session ended.
pub(super) enum Ended {
    Shutdown,
    Reset(String),
}

/// The session's connection: a passive peer's next accepted one, or one
/// we open; either way without Nagle and with the peer's TTL.
async fn open(
    peer: &PeerConfig,
    incoming: Option<&mut mpsc::Receiver<TcpStream>>,
) -> anyhow::Result<TcpStream> {
    let stream = match incoming {
        Some(incoming) => incoming.recv().await.context("the BGP listener stopped")?,
        None => connect(peer).await?,
    };
    stream.set_nodelay(true)?;
    if let Some(ttl) = peer.ttl {
        stream.set_ttl(ttl).context("cannot set the TTL")?;
    }
    Ok(stream)
}

/// Connects to the peer, from its source address when configured.
async fn connect(peer: &PeerConfig) -> anyhow::Result<TcpStream> {
    let socket = if peer.address.is_ipv4() {
        tokio::net::TcpSocket::new_v4()
    } else {
        tokio::net::TcpSocket::new_v6()
    }
    .context("socket")?;
    if let Some(key) = &peer.password {
        md5::set(&socket, peer.address.ip(), Some(key))
            .context("cannot set the TCP MD5 password (a kernel without CONFIG_TCP_MD5SIG?)")?;
    }
    if let Some(source) = peer.source {
        socket
            .bind(SocketAddr::new(source, 0))
            .with_context(|| format!("cannot bind the source address {source}"))?;
    }
    tokio::time::timeout(Duration::from_secs(5), socket.connect(peer.address))
        .await
        .context("connect timed out")?
        .context("cannot connect")
}
