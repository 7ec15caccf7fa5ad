//! BFD for the BGP sessions (RFC 5880 asynchronous mode over UDP: RFC
//! 5881 single hop on port 3784, RFC 5883 multihop on port 4784): a lost
//! member's routes leave the routers in the detection time (150 ms with
//! the default 50 ms x 3) instead of the BGP hold time, and a router the
//! member lost ends its BGP session as fast.
//!
//! `packet` is the wire format, `session` the pure state machine; this
//! module owns the sockets and the clock. One receiving socket per port
//! and family hands packets to the sessions (by the discriminator they
//! carry, or by the sender's address before the peer knows ours); each
//! session sends from its own socket (source port 49152-65535, TTL 255,
//! RFC 5881 §4). Everything runs on the member's async runtime, so a
//! stalled lb-node stops answering and its peers see it go down.
//!
//! Single-hop packets are taken only with TTL (hop limit) 255, RFC 5881
//! §5's GTSM check, read from `IP_RECVTTL` / `IPV6_RECVHOPLIMIT`. Not done:
//! authentication, demand mode and the echo function.

pub mod packet;
pub mod session;

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use rand::Rng as _;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use packet::{Packet, State};
pub use session::Timers;
use session::{Change, Session};

pub const SINGLE_HOP_PORT: u16 = 3784;
pub const MULTIHOP_PORT: u16 = 4784;

/// One BFD session to set up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerSpec {
    pub address: IpAddr,
    /// The local address to send from; `None`: the kernel's choice.
    pub source: Option<IpAddr>,
    /// RFC 5883 (port 4784) rather than single hop.
    pub multihop: bool,
}

/// What a session's user (the BGP session, the status) sees.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    pub state: State,
    /// The diagnostic of the last change.
    pub diag: u8,
    /// Changes to or from Up since the start.
    pub flaps: u64,
    /// The peer said it is administratively down: no failure of the path.
    pub peer_admin_down: bool,
}

impl Default for Status {
    fn default() -> Status {
        Status {
            state: State::Down,
            diag: packet::diag::NONE,
            flaps: 0,
            peer_admin_down: false,
        }
    }
}

type Inbox = mpsc::Sender<(Packet, Instant)>;

/// Who gets a packet: by our discriminator, or by the sender's address.
#[derive(Default)]
struct Demux {
    by_discriminator: HashMap<u32, Inbox>,
    by_address: HashMap<(IpAddr, u16), Inbox>,
}

/// Starts one session per peer; their statuses, in order, and the
/// sessions' tasks, which end once `shutdown` told each peer AdminDown
/// (the caller waits for them, so a stop is never mistaken for a failure
/// by a peer that missed it). Fails when a receiving socket cannot be
/// bound (the port is taken).
pub async fn spawn(
    timers: Timers,
    peers: Vec<PeerSpec>,
    shutdown: CancellationToken,
) -> anyhow::Result<(
    Vec<watch::Receiver<Status>>,
    Vec<tokio::task::JoinHandle<()>>,
)> {
    let demux = Arc::new(Mutex::new(Demux::default()));
    let mut listening = std::collections::BTreeSet::new();
    let mut statuses = Vec::new();
    let mut tasks = Vec::new();
    for peer in peers {
        let port = if peer.multihop {
            MULTIHOP_PORT
        } else {
            SINGLE_HOP_PORT
        };
        let v6 = peer.address.is_ipv6();
        if listening.insert((v6, port)) {
            let socket = listen(v6, port)?;
            tokio::spawn(receive(socket, port, demux.clone(), shutdown.clone()));
        }
        let sender = sender_socket(&peer).await?;
        let discriminator = loop {
            let d: u32 = rand::thread_rng().r#gen();
            let Ok(mut map) = demux.lock() else {
                anyhow::bail!("the BFD demultiplexer is poisoned");
            };
            if d != 0 && !map.by_discriminator.contains_key(&d) {
                let (tx, rx) = mpsc::channel(64);
                map.by_discriminator.insert(d, tx.clone());
                map.by_address.insert((peer.address, port), tx);
                break (d, rx);
            }
        };
        let (status_tx, status_rx) = watch::channel(Status::default());
        tasks.push(tokio::spawn(run_session(
            Session::new(timers, discriminator.0),
            peer,
            port,
            sender,
            discriminator.1,
            status_tx,
            shutdown.clone(),
        )));
        statuses.push(status_rx);
    }
    Ok((statuses, tasks))
}

fn listen(v6: bool, port: u16) -> anyhow::Result<UdpSocket> {
    let (domain, addr) = if v6 {
        (
            socket2::Domain::IPV6,
            SocketAddr::from((Ipv6Addr::UNSPECIFIED, port)),
        )
    } else {
        (
            socket2::Domain::IPV4,
            SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)),
        )
    };
    let socket = socket2::Socket::new(domain, socket2::Type::DGRAM, Some(socket2::Protocol::UDP))?;
    if v6 {
        socket.set_only_v6(true)?;
    }
    // Each packet's TTL (hop limit) comes with it: single hop takes only
    // 255 (RFC 5881 §5, GTSM).
    use nix::sys::socket::{setsockopt, sockopt};
    if v6 {
        setsockopt(&socket, sockopt::Ipv6RecvHopLimit, &true)
    } else {
        setsockopt(&socket, sockopt::Ipv4RecvTtl, &true)
    }
    .context("cannot ask for received packets' TTL")?;
    socket.set_nonblocking(true)?;
    socket
        .bind(&addr.into())
        .with_context(|| format!("cannot listen for BFD on UDP {addr}"))?;
    Ok(UdpSocket::from_std(socket.into())?)
}

/// A socket bound to a free port in 49152-65535, TTL 255.
async fn sender_socket(peer: &PeerSpec) -> anyhow::Result<UdpSocket> {
    let ip = peer.source.unwrap_or(if peer.address.is_ipv6() {
        IpAddr::V6(Ipv6Addr::UNSPECIFIED)
    } else {
        IpAddr::V4(Ipv4Addr::UNSPECIFIED)
    });
    let mut last = None;
    for _ in 0..64 {
        let port = rand::thread_rng().gen_range(49152..=65535u16);
        match UdpSocket::bind(SocketAddr::new(ip, port)).await {
            Ok(s) => {
                let r = socket2::SockRef::from(&s);
                if peer.address.is_ipv6() {
                    r.set_unicast_hops_v6(255)?;
                } else {
                    r.set_ttl_v4(255)?;
                }
                return Ok(s);
            }
            Err(e) => last = Some(e),
        }
    }
    Err(anyhow::anyhow!(
        "no free source port for BFD to {}: {last:?}",
        peer.address
    ))
}

async fn receive(
    socket: UdpSocket,
    port: u16,
    demux: Arc<Mutex<Demux>>,
    shutdown: CancellationToken,
) {
    let mut buf = [0u8; 128];
    let mut control = vec![0u8; 64];
    loop {
        let (n, from, ttl) = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = socket.async_io(tokio::io::Interest::READABLE, || {
                receive_one(&socket, &mut buf, &mut control)
            }) => match r {
                Ok(r) => r,
                Err(e) => {
                    warn!(error = %e, "BFD receive failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        // Single hop: a packet that crossed a router (or was sent with
        // less than 255) is not from a neighbour (RFC 5881 §5). Multihop
        // has no such check (RFC 5883 leaves it to configuration).
        if port == SINGLE_HOP_PORT && ttl != Some(255) {
            debug!(%from, ?ttl, "BFD packet dropped: single hop takes TTL 255 only");
            continue;
        }
        let at = Instant::now();
        let Ok(p) = Packet::decode(&buf[..n]) else {
            continue;
        };
        let inbox = {
            let Ok(map) = demux.lock() else { return };
            if p.your_discriminator != 0 {
                map.by_discriminator.get(&p.your_discriminator).cloned()
            } else {
                map.by_address
                    .get(&(from.ip().to_canonical(), port))
                    .cloned()
            }
        };
        if let Some(inbox) = inbox {
            // A full inbox drops the packet, as a lossy network would.
            let _ = inbox.try_send((p, at));
        }
    }
}

/// One datagram: its length, sender and TTL (or hop limit), when the
/// kernel gave it.
fn receive_one(
    socket: &UdpSocket,
    buf: &mut [u8],
    control: &mut [u8],
) -> std::io::Result<(usize, SocketAddr, Option<u8>)> {
    use nix::sys::socket::{ControlMessageOwned, MsgFlags, SockaddrStorage, recvmsg};
    use std::os::fd::AsRawFd as _;
    let mut iov = [std::io::IoSliceMut::new(buf)];
    let msg = recvmsg::<SockaddrStorage>(
        socket.as_raw_fd(),
        &mut iov,
        Some(control),
        MsgFlags::empty(),
    )
    .map_err(std::io::Error::from)?;
    let from = msg
        .address
        .and_then(|a| {
            a.as_sockaddr_in()
                .map(|v4| SocketAddr::from(std::net::SocketAddrV4::from(*v4)))
                .or_else(|| {
                    a.as_sockaddr_in6()
                        .map(|v6| SocketAddr::from(std::net::SocketAddrV6::from(*v6)))
                })
        })
        .ok_or_else(|| std::io::Error::other("a datagram without a sender address"))?;
    let mut ttl = None;
    if let Ok(cmsgs) = msg.cmsgs() {
        for c in cmsgs {
            match c {
                ControlMessageOwned::Ipv4Ttl(t) => ttl = u8::try_from(t).ok(),
                ControlMessageOwned::Ipv6HopLimit(h) => ttl = u8::try_from(h).ok(),
                _ => {}
            }
        }
    }
    Ok((msg.bytes, from, ttl))
}

fn jittered(interval: Duration, multiplier: u8) -> Duration {
    // 75-100 % (75-90 % with a multiplier of 1), RFC 5880 §6.8.7.
    let top = if multiplier == 1 { 0.90 } else { 1.0 };
    interval.mul_f64(rand::thread_rng().gen_range(0.75..top))
}

async fn run_session(
    mut s: Session,
    peer: PeerSpec,
    port: u16,
    socket: UdpSocket,
    mut inbox: mpsc::Receiver<(Packet, Instant)>,
    status: watch::Sender<Status>,
    shutdown: CancellationToken,
) {
    let to = SocketAddr::new(peer.address, port);
    let label = peer.address.to_string();
    let multiplier = s.packet().detect_mult;
    let send = |s: &mut Session| {
        let bytes = s.packet().encode();
        // A send error (no route yet) is a lost packet.
        let _ = socket.try_send_to(&bytes, to);
    };
    let mut next_tx = Instant::now();
    loop {
        let deadline = s.deadline().map(Instant::from_std);
        let change = tokio::select! {
            _ = shutdown.cancelled() => {
                let change = s.admin_down();
                report(&label, &status, change, false);
                // Told three times, 100 ms apart.
                for _ in 0..3 {
                    send(&mut s);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                return;
            }
            got = inbox.recv() => {
                let Some((p, at)) = got else { return };
                let before = s.tx_interval();
                let change = s.receive(&p, at.into_std());
                if s.reply_due() {
                    send(&mut s);
                }
                // The peer asked for packets more often (its required
                // min RX went down: FRR asks for 1 s until Up): the new
                // pace starts now, not after a packet sent at the old one
                // (its detection time would run out first).
                if let Some(now) = s.tx_interval().filter(|_| s.tx_interval() != before) {
                    next_tx = next_tx.min(Instant::now() + jittered(now, multiplier));
                }
                change
            }
            () = tokio::time::sleep_until(next_tx), if s.tx_interval().is_some() => {
                send(&mut s);
                next_tx = Instant::now()
                    + jittered(s.tx_interval().unwrap_or(session::SLOW_TX), multiplier);
                None
            }
            () = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => std::future::pending().await,
                }
            } => s.tick(Instant::now().into_std()),
        };
        if let Some(c) = change {
            report(
                &label,
                &status,
                Some(c),
                s.remote_state() == State::AdminDown,
            );
            // A faster or slower pace starts now.
            next_tx = next_tx.min(
                Instant::now() + jittered(s.tx_interval().unwrap_or(session::SLOW_TX), multiplier),
            );
        }
    }
}

fn report(
    label: &str,
    status: &watch::Sender<Status>,
    change: Option<Change>,
    peer_admin_down: bool,
) {
    let Some(c) = change else { return };
    let why = packet::diag::name(c.diag);
    if c.to == State::Up {
        info!(peer = label, "BFD session up");
    } else if c.to == State::AdminDown || peer_admin_down {
        // A stop, ours or the peer's: no failure of the path.
        info!(
            peer = label,
            state = c.to.name(),
            reason = why,
            "BFD session administratively down"
        );
    } else if c.from == State::Up {
        warn!(
            peer = label,
            state = c.to.name(),
            reason = why,
            "BFD session down"
        );
    }
    crate::metrics::METRICS
        .bfd_sessions
        .with_label_values(&[label])
        .set(i64::from(c.to == State::Up));
    status.send_modify(|s| {
        if c.to == State::Up || c.from == State::Up {
            s.flaps += 1;
        }
        s.state = c.to;
        s.diag = c.diag;
        s.peer_admin_down = peer_admin_down;
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 5881 §5: a single-hop packet is taken only with TTL 255; the
    /// same packet sent with TTL 254 (one router away) is dropped.
    #[tokio::test]
    async fn single_hop_takes_ttl_255_only() -> anyhow::Result<()> {
        let socket = listen(false, 0)?;
        let port = socket.local_addr()?.port();
        let demux = Arc::new(Mutex::new(Demux::default()));
        let (tx, mut rx) = mpsc::channel(8);
        demux
            .lock()
            .map_err(|_| anyhow::anyhow!("poisoned"))?
            .by_address
            .insert((IpAddr::V4(Ipv4Addr::LOCALHOST), SINGLE_HOP_PORT), tx);
        let stop = CancellationToken::new();
        tokio::spawn(receive(socket, SINGLE_HOP_PORT, demux, stop.clone()));
        let sender = UdpSocket::bind("127.0.0.1:0").await?;
        let bytes = Session::new(Timers::default(), 7).packet().encode();
        let to = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let heard = |rx: &mut mpsc::Receiver<(Packet, Instant)>| {
            let got = rx.try_recv().ok();
            got.map(|(p, _)| p.my_discriminator)
        };

        socket2::SockRef::from(&sender).set_ttl_v4(254)?;
        sender.send_to(&bytes, to).await?;
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(heard(&mut rx), None, "TTL 254 taken");

        socket2::SockRef::from(&sender).set_ttl_v4(255)?;
        sender.send_to(&bytes, to).await?;
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(heard(&mut rx), Some(7), "TTL 255 dropped");
        stop.cancel();
        Ok(())
    }
}
