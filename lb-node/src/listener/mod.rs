//! Listeners no client can exhaust: every port a member listens on (admin,
//! peer, metrics and probes) accepts through a [`GuardedListener`], which
//! caps the connections open at once, in all and per source address, and
//! closes a connection that sends nothing within a deadline (a half-open
//! connection, a client that never starts its TLS handshake).
//!
//! A full listener does not turn newcomers away while it holds connections
//! that have said nothing yet: it evicts the oldest of those (counted as
//! `reason="evicted"`) and admits the newcomer. A flood from many
//! addresses then only churns its own silent connections, and a real
//! client, which speaks within a round trip of connecting (the HTTP/2
//! preface, a TLS ClientHello), is safe from eviction from its first byte
//! on. It survives unspoken for `max` / (flood rate) seconds: 50 ms at
//! 20,000 connections a second with the default 1,024. Only when every
//! place is held by a connection that spoke are newcomers refused
//! (`listener_full`).
//!
//! Without it, about 20,000 half-open connections on the admin port took
//! every descriptor of the member: the admin API, `/readyz` and the
//! services-file reload all failed (issue 19). A refused connection is
//! closed at once and counted in `lb_connections_refused_total{listener,
//! reason}`; what the member needs for its own work (its log, its netlink
//! sockets, its files) stays out of the caps' reach.
//!
//! `tls`: the handshakes of the admin and peer ports, done here so that a
//! failed one is named by its cause.
//!
//! Owns nothing else: what is spoken on the connection is the server's.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::task::AtomicWaker;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tracing::warn;

pub mod tls;

/// Connections the kernel queues for `accept` (capped by
/// `net.core.somaxconn`, 4,096 on current kernels): a flood must not fill
/// the queue between two accepts, or a real client's handshake is dropped
/// and retried only a second later.
pub const BACKLOG: u32 = 4096;

/// A listening socket at `addr` with the `BACKLOG` queue.
pub async fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

/// How much one listener takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Connections open at once.
    pub max: usize,
    /// Connections open at once from one address.
    pub per_source: usize,
    /// A connection that sends no byte within this is closed; with TLS,
    /// also the time the handshake may take.
    pub first_bytes: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max: 1024,
            per_source: 64,
            first_bytes: Duration::from_secs(10),
        }
    }
}

#[derive(Debug, Default)]
struct Counts {
    total: usize,
    by_source: HashMap<IpAddr, usize>,
    /// The admitted connections that have sent nothing yet, by admission
    /// number (oldest first): the ones a full listener evicts.
    silent: BTreeMap<u64, Arc<Place>>,
    admitted: u64,
    /// Evicted connections whose tasks have not closed them yet: out of
    /// the counts, but still holding a descriptor each.
    evicted_open: usize,
}

impl Counts {
    /// Takes `place` out of the counts.
    fn remove(&mut self, place: &Place) {
        self.total = self.total.saturating_sub(1);
        if let Some(n) = self.by_source.get_mut(&place.source) {
            *n -= 1;
            if *n == 0 {
                self.by_source.remove(&place.source);
            }
        }
        self.silent.remove(&place.number);
    }
}

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// `max` connections open, every one of which has spoken.
    Full,
    /// `per_source` connections open from that address.
    SourceFull,
}

impl Refusal {
    fn label(self) -> &'static str {
        match self {
            Refusal::Full => "listener_full",
            Refusal::SourceFull => "source_full",
        }
    }
}

/// One admitted connection's place, shared by its stream and the counts.
#[derive(Debug)]
struct Place {
    number: u64,
    source: IpAddr,
    /// Out of the counts (closed or evicted): given back exactly once.
    released: AtomicBool,
    /// Evicted by a newcomer: its next read fails.
    evicted: AtomicBool,
    /// The task reading the connection, woken by an eviction.
    reader: AtomicWaker,
}

/// The counts of one listener, shared with its connections.
#[derive(Debug, Clone)]
struct Admission {
    name: &'static str,
    limits: Limits,
    counts: Arc<Mutex<Counts>>,
    metrics: Arc<ListenerMetrics>,
}

/// The listener's series, looked up once (an accept under a flood must
/// cost little).
#[derive(Debug)]
struct ListenerMetrics {
    open: prometheus::IntGauge,
    evicted: prometheus::IntCounter,
    full: prometheus::IntCounter,
    source_full: prometheus::IntCounter,
    accept_error: prometheus::IntCounter,
}

impl ListenerMetrics {
    fn new(name: &str) -> Self {
        let m = &crate::metrics::METRICS;
        let refused = |reason| m.connections_refused.with_label_values(&[name, reason]);
        ListenerMetrics {
            open: m.connections_open.with_label_values(&[name]),
            evicted: refused("evicted"),
            full: refused(Refusal::Full.label()),
            source_full: refused(Refusal::SourceFull.label()),
            accept_error: refused("accept_error"),
        }
    }

    fn refused(&self, why: Refusal) -> &prometheus::IntCounter {
        match why {
            Refusal::Full => &self.full,
            Refusal::SourceFull => &self.source_full,
        }
    }
}

/// Evicted connections still open at most, per listener, before the
/// listener stops accepting until their tasks have closed them: under a
/// flood, accepting outran the closing, and descriptors piled up (16,899
/// in the `connection-flood` drill) toward the process's limit.
const EVICTED_OPEN_AT_MOST: usize = 256;

impl Admission {
    fn evicted_open(&self) -> usize {
        self.counts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .evicted_open
    }

    /// A permit for one more connection from `source`, or why not.
    fn admit(&self, source: IpAddr) -> Result<Permit, Refusal> {
        let source = source.to_canonical();
        let mut c = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        if c.by_source.get(&source).copied().unwrap_or(0) >= self.limits.per_source {
            return Err(Refusal::SourceFull);
        }
        while c.total >= self.limits.max {
            let Some((_, oldest)) = c.silent.pop_first() else {
                return Err(Refusal::Full);
            };
            // Released already: its own drop is about to take it out.
            if oldest.released.swap(true, Ordering::SeqCst) {
                continue;
            }
            c.remove(&oldest);
            c.evicted_open += 1;
            oldest.evicted.store(true, Ordering::SeqCst);
            oldest.reader.wake();
            self.metrics.evicted.inc();
        }
        c.admitted += 1;
        let place = Arc::new(Place {
            number: c.admitted,
            source,
            released: AtomicBool::new(false),
            evicted: AtomicBool::new(false),
            reader: AtomicWaker::new(),
        });
        *c.by_source.entry(source).or_default() += 1;
        c.total += 1;
        c.silent.insert(place.number, place.clone());
        self.metrics.open.set(c.total as i64);
        Ok(Permit {
            admission: self.clone(),
            place,
        })
    }
}

/// One admitted connection's place in the counts; given back when it
/// closes.
#[derive(Debug)]
struct Permit {
    admission: Admission,
    place: Arc<Place>,
}

impl Permit {
    /// The connection spoke: it can no longer be evicted.
    fn spoke(&self) {
        let mut c = self
            .admission
            .counts
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        c.silent.remove(&self.place.number);
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let released = self.place.released.swap(true, Ordering::SeqCst);
        let mut c = self
            .admission
            .counts
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if released {
            // Evicted (the flag is set under the lock): its descriptor is
            // closed now.
            if self.place.evicted.load(Ordering::SeqCst) {
                c.evicted_open = c.evicted_open.saturating_sub(1);
            }
            return;
        }
        c.remove(&self.place);
        self.admission.metrics.open.set(c.total as i64);
    }
}

/// A TCP listener with caps; see the module docs.
#[derive(Debug)]
pub struct GuardedListener {
    inner: TcpListener,
    admission: Admission,
}

impl GuardedListener {
    /// `name` labels its metrics and log lines ("admin", "peer",
    /// "metrics").
    pub fn new(inner: TcpListener, name: &'static str, limits: Limits) -> Self {
        GuardedListener {
            inner,
            admission: Admission {
                name,
                limits,
                counts: Arc::default(),
                metrics: Arc::new(ListenerMetrics::new(name)),
            },
        }
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    /// The next admitted connection. Refused ones are closed and counted;
    /// an accept that fails for want of descriptors waits a little and
    /// goes on (the member's own work has them back as connections close).
    pub async fn accept(&self) -> (GuardedStream, SocketAddr) {
        loop {
            // Back-pressure: connections wait in the kernel's queue, not
            // as descriptors of the member.
            while self.admission.evicted_open() > EVICTED_OPEN_AT_MOST {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            let (stream, from) = match self.inner.accept().await {
                Ok(a) => a,
                Err(e) => {
                    self.admission.metrics.accept_error.inc();
                    warn!(listener = self.admission.name, error = %e, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            match self.admission.admit(from.ip()) {
                Ok(permit) => {
                    let _ = stream.set_nodelay(true);
                    let deadline = Box::pin(tokio::time::sleep(self.admission.limits.first_bytes));
                    return (
                        GuardedStream {
                            inner: stream,
                            permit,
                            first_bytes: Some(deadline),
                        },
                        from,
                    );
                }
                Err(refusal) => {
                    self.admission.metrics.refused(refusal).inc();
                    // Closed at once: dropping the stream.
                    drop(stream);
                }
            }
        }
    }

    /// The admitted connections as a stream, for tonic's
    /// `serve_with_incoming_shutdown`.
    pub fn into_stream(
        self,
    ) -> impl futures_util::Stream<Item = io::Result<GuardedStream>> + Send + 'static {
        futures_util::stream::unfold(self, |listener| async move {
            let (stream, _) = listener.accept().await;
            Some((Ok(stream), listener))
        })
    }
}

impl axum::serve::Listener for GuardedListener {
    type Io = GuardedStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (GuardedStream, SocketAddr) {
        GuardedListener::accept(self).await
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }
}

/// An admitted connection: its place in the counts goes with it, and it
/// fails its first read if no byte came by the deadline or a newcomer
/// evicted it before.
#[derive(Debug)]
pub struct GuardedStream {
    inner: TcpStream,
    permit: Permit,
    first_bytes: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl AsyncRead for GuardedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let evicted = || {
            Poll::Ready(Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "evicted: the listener was full and this connection had sent nothing",
            )))
        };
        if this.first_bytes.is_some() {
            this.permit.place.reader.register(cx.waker());
            if this.permit.place.evicted.load(Ordering::SeqCst) {
                return evicted();
            }
        }
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(r) => {
                if this.first_bytes.is_some() && buf.filled().len() > before {
                    if this.permit.place.evicted.load(Ordering::SeqCst) {
                        return evicted();
                    }
                    this.first_bytes = None;
                    this.permit.spoke();
                }
                Poll::Ready(r)
            }
            Poll::Pending => {
                let expired = this
                    .first_bytes
                    .as_mut()
                    .is_some_and(|deadline| deadline.as_mut().poll(cx).is_ready());
                if expired {
                    Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "no bytes within the first-bytes deadline",
                    )))
                } else {
                    Poll::Pending
                }
            }
        }
    }
}

impl AsyncWrite for GuardedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// tonic reads the peer's address (and, through TLS, its certificates)
/// from this: the same information as a plain `TcpStream`'s.
impl tonic::transport::server::Connected for GuardedStream {
    type ConnectInfo = tonic::transport::server::TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn listener(limits: Limits) -> GuardedListener {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        GuardedListener::new(l, "test", limits)
    }

    /// Whether the server closed `c` (a read ends or fails) within 1 s.
    async fn closed(c: &mut TcpStream) -> bool {
        let mut b = [0u8; 1];
        matches!(
            tokio::time::timeout(Duration::from_secs(1), c.read(&mut b)).await,
            Ok(Ok(0) | Err(_))
        )
    }

    /// Serves `l`: each admitted connection echoes what it reads until
    /// it ends.
    fn echo(l: GuardedListener) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            loop {
                let (mut s, _) = l.accept().await;
                tokio::spawn(async move {
                    let mut b = [0u8; 64];
                    while let Ok(n @ 1..) = s.read(&mut b).await {
                        if s.write_all(&b[..n]).await.is_err() {
                            break;
                        }
                    }
                });
            }
        })
    }

    /// A connection from `source` that has spoken (its byte echoed).
    async fn talking(at: SocketAddr, source: &str) -> TcpStream {
        let mut c = connect_from(at, source).await;
        assert!(echoes(&mut c).await, "{source}: admitted and answered");
        c
    }

    async fn connect_from(at: SocketAddr, source: &str) -> TcpStream {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket
            .bind(format!("{source}:0").parse().expect("addr"))
            .expect("bind");
        socket.connect(at).await.expect("connect")
    }

    /// Whether `c` is served: a byte written comes back.
    async fn echoes(c: &mut TcpStream) -> bool {
        if c.write_all(b"x").await.is_err() {
            return false;
        }
        let mut b = [0u8; 1];
        matches!(
            tokio::time::timeout(Duration::from_secs(1), c.read(&mut b)).await,
            Ok(Ok(1))
        )
    }

    #[tokio::test]
    async fn caps_in_all_and_per_source_and_places_come_back() {
        let l = listener(Limits {
            max: 3,
            per_source: 2,
            first_bytes: Duration::from_secs(30),
        })
        .await;
        let at = l.local_addr().expect("addr");
        let server = echo(l);
        // Two from 127.0.0.1 get in, the third from it does not.
        let a = talking(at, "127.0.0.1").await;
        let _b = talking(at, "127.0.0.1").await;
        let mut c = connect_from(at, "127.0.0.1").await;
        assert!(closed(&mut c).await, "a third from one source is closed");
        // Another source takes the last place; with every place held by a
        // connection that spoke, a fourth finds the listener full.
        let mut d = talking(at, "127.0.0.2").await;
        let mut e = connect_from(at, "127.0.0.3").await;
        assert!(closed(&mut e).await, "the listener is full");
        assert!(echoes(&mut d).await, "the admitted ones are served");
        // One closes: its place comes back.
        drop(a);
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut f = talking(at, "127.0.0.3").await;
        assert!(echoes(&mut f).await, "a freed place is taken again");
        server.abort();
    }

    #[tokio::test]
    async fn a_full_listener_evicts_its_oldest_silent_connection_for_a_newcomer() {
        let l = listener(Limits {
            max: 3,
            per_source: 10,
            first_bytes: Duration::from_secs(30),
        })
        .await;
        let at = l.local_addr().expect("addr");
        let server = echo(l);
        // A flood's two silent connections and a client that spoke.
        let mut old_silent = connect_from(at, "127.0.0.2").await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        let mut new_silent = connect_from(at, "127.0.0.3").await;
        let mut client = talking(at, "127.0.0.1").await;
        // A newcomer takes the oldest silent one's place, not the client's.
        let mut newcomer = talking(at, "127.0.0.4").await;
        assert!(closed(&mut old_silent).await, "the oldest silent one");
        assert!(echoes(&mut client).await, "a connection that spoke stays");
        assert!(echoes(&mut newcomer).await);
        // The next newcomer takes the other silent one's place; after
        // that every place is held by a connection that spoke.
        let _second = talking(at, "127.0.0.5").await;
        assert!(closed(&mut new_silent).await, "the other silent one");
        let mut refused = connect_from(at, "127.0.0.6").await;
        assert!(closed(&mut refused).await, "full of talkers: refused");
        assert!(echoes(&mut client).await);
        server.abort();
    }

    #[tokio::test]
    async fn a_connection_that_says_nothing_is_closed_at_the_deadline() {
        let l = listener(Limits {
            max: 10,
            per_source: 10,
            first_bytes: Duration::from_millis(200),
        })
        .await;
        let at = l.local_addr().expect("addr");
        let server = tokio::spawn(async move {
            let mut results = Vec::new();
            for _ in 0..2 {
                let (mut s, _) = l.accept().await;
                let mut b = [0u8; 4];
                let started = std::time::Instant::now();
                let r = s.read(&mut b).await;
                results.push((r.map_err(|e| e.kind()), started.elapsed()));
                // A second read after the first bytes has no deadline.
                if results.len() == 2 {
                    let second =
                        tokio::time::timeout(Duration::from_millis(500), s.read(&mut b)).await;
                    assert!(second.is_err(), "no deadline after the first bytes");
                }
            }
            results
        });
        let _silent = TcpStream::connect(at).await.expect("silent");
        tokio::time::sleep(Duration::from_millis(400)).await;
        let mut talking = TcpStream::connect(at).await.expect("talking");
        talking.write_all(b"hi").await.expect("write");
        let results = server.await.expect("server");
        assert_eq!(results[0].0, Err(io::ErrorKind::TimedOut));
        assert!(results[0].1 >= Duration::from_millis(190));
        assert_eq!(results[1].0, Ok(2));
    }
}
