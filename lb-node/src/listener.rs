//! Listeners no client can exhaust: every port a member listens on (admin,
//! peer, metrics and probes) accepts through a [`GuardedListener`], which
//! caps the connections open at once, in all and per source address, and
//! closes a connection that sends nothing within a deadline (a half-open
//! connection, a client that never starts its TLS handshake).
//!
//! Without it, about 20,000 half-open connections on the admin port took
//! every descriptor of the member: the admin API, `/readyz` and the
//! services-file reload all failed (issue 19). A refused connection is
//! closed at once and counted in `lb_connections_refused_total{listener,
//! reason}`; what the member needs for its own work (its log, its netlink
//! sockets, its files) stays out of the caps' reach.
//!
//! Owns nothing else: what is spoken on the connection is the server's.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tracing::warn;

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
}

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// `max` connections open.
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

/// The counts of one listener, shared with its connections.
#[derive(Debug, Clone)]
struct Admission {
    name: &'static str,
    limits: Limits,
    counts: Arc<Mutex<Counts>>,
}

impl Admission {
    /// A permit for one more connection from `source`, or why not.
    fn admit(&self, source: IpAddr) -> Result<Permit, Refusal> {
        let source = source.to_canonical();
        let mut c = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        if c.total >= self.limits.max {
            return Err(Refusal::Full);
        }
        let from = c.by_source.entry(source).or_default();
        if *from >= self.limits.per_source {
            return Err(Refusal::SourceFull);
        }
        *from += 1;
        c.total += 1;
        crate::metrics::METRICS
            .connections_open
            .with_label_values(&[self.name])
            .set(c.total as i64);
        Ok(Permit {
            admission: self.clone(),
            source,
        })
    }
}

/// One admitted connection's place; given back when it closes.
#[derive(Debug)]
struct Permit {
    admission: Admission,
    source: IpAddr,
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut c = self
            .admission
            .counts
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        c.total = c.total.saturating_sub(1);
        if let Some(n) = c.by_source.get_mut(&self.source) {
            *n -= 1;
            if *n == 0 {
                c.by_source.remove(&self.source);
            }
        }
        crate::metrics::METRICS
            .connections_open
            .with_label_values(&[self.admission.name])
            .set(c.total as i64);
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
            let (stream, from) = match self.inner.accept().await {
                Ok(a) => a,
                Err(e) => {
                    crate::metrics::METRICS
                        .connections_refused
                        .with_label_values(&[self.admission.name, "accept_error"])
                        .inc();
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
                            _permit: permit,
                            first_bytes: Some(deadline),
                        },
                        from,
                    );
                }
                Err(refusal) => {
                    crate::metrics::METRICS
                        .connections_refused
                        .with_label_values(&[self.admission.name, refusal.label()])
                        .inc();
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
/// fails its first read if no byte came by the deadline.
#[derive(Debug)]
pub struct GuardedStream {
    inner: TcpStream,
    _permit: Permit,
    first_bytes: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl AsyncRead for GuardedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(r) => {
                if buf.filled().len() > before {
                    this.first_bytes = None;
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

    #[tokio::test]
    async fn caps_in_all_and_per_source_and_places_come_back() {
        let l = Arc::new(
            listener(Limits {
                max: 3,
                per_source: 2,
                first_bytes: Duration::from_secs(30),
            })
            .await,
        );
        let at = l.local_addr().expect("addr");
        let accepted = Arc::new(Mutex::new(Vec::new()));
        let server = {
            let (l, accepted) = (l.clone(), accepted.clone());
            tokio::spawn(async move {
                loop {
                    let (s, _) = l.accept().await;
                    accepted.lock().expect("lock").push(s);
                }
            })
        };
        // Two from 127.0.0.1 get in, the third from it does not.
        let mut a = TcpStream::connect(at).await.expect("a");
        let mut b = TcpStream::connect(at).await.expect("b");
        let mut c = TcpStream::connect(at).await.expect("c");
        assert!(closed(&mut c).await, "a third from one source is closed");
        // Another source (127.0.0.2) takes the last place; a fourth
        // connection finds the listener full.
        let from2 = tokio::net::TcpSocket::new_v4().expect("socket");
        from2
            .bind("127.0.0.2:0".parse().expect("addr"))
            .expect("bind");
        let mut d = from2.connect(at).await.expect("d");
        let from3 = tokio::net::TcpSocket::new_v4().expect("socket");
        from3
            .bind("127.0.0.3:0".parse().expect("addr"))
            .expect("bind");
        let mut e = from3.connect(at).await.expect("e");
        assert!(closed(&mut e).await, "the listener is full");
        // The admitted ones work.
        a.write_all(b"x").await.expect("write");
        d.write_all(b"y").await.expect("write");
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(accepted.lock().expect("lock").len(), 3);
        // One closes on the server side: its place comes back.
        drop(accepted.lock().expect("lock").remove(0));
        assert!(closed(&mut a).await || closed(&mut b).await);
        let mut f = TcpStream::connect(at).await.expect("f");
        f.write_all(b"z").await.expect("write");
        assert!(!closed(&mut f).await, "a freed place is taken again");
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
