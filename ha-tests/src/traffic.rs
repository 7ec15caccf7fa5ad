//! Client traffic for the drills: a new TCP connection and one HTTP/1.0
//! request at a fixed rate, each success and failure timestamped.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::l2lab::unix_now;

/// How long one request may take before it counts as failed: less than
/// the client kernel's first SYN retransmission (1 s), so a connection
/// attempt whose SYN was lost (a VIP nobody answered for, a frame dropped
/// during a move) always fails, as does a refused or reset one; an answer
/// that is only slow does not. The slowest answer is reported on its own
/// (`slowest_answer_ms`). It was 300 ms: in the kernel lab the whole guest
/// stops for about 100 ms while a member starts (a real-time thread stalls
/// too), and the debug-built client's runtime for up to 300 ms, and
/// requests answered late were counted as failed.
pub const REQUEST_TIMEOUT: Duration = Duration::from_millis(900);

/// One request through a VIP, as the client saw it.
#[derive(Debug, Clone, PartialEq)]
pub struct Sent {
    /// Unix time it was sent.
    pub at: f64,
    /// The answer's body; None when it failed.
    pub answer: Option<String>,
    /// How long it took, answered or not.
    pub took_ms: u64,
}

/// One request: a new connection to `to`, "GET /", the answer's body once
/// complete (by Content-Length, or the server closing). None when it fails
/// or takes longer than `REQUEST_TIMEOUT`.
pub async fn request(to: SocketAddr) -> Option<String> {
    let sent = unix_now();
    // How far the attempt got: its local port once known, and the stage a
    // timeout names.
    let stage = std::sync::Mutex::new(Stage {
        port: None,
        what: "before connecting".into(),
    });
    let outcome = tokio::time::timeout(REQUEST_TIMEOUT, attempt(to, &stage)).await;
    let stage = stage
        .into_inner()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let outcome = outcome.unwrap_or_else(|_| {
        Err(format!(
            "no answer within {REQUEST_TIMEOUT:?} ({})",
            stage.what
        ))
    });
    outcome
        .map_err(|why| {
            if std::env::var_os("DRILL_TRAFFIC").is_some() {
                eprintln!("{:.3} request to {to} failed: {why}", unix_now());
            }
            failed()
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .push(Failure {
                    to,
                    at: sent,
                    port: stage.port,
                    why,
                });
        })
        .ok()
}

/// How far one request got.
struct Stage {
    /// Its local port, once the SYN is sent.
    port: Option<u16>,
    /// Where it is: said by a timeout.
    what: String,
}

/// One failed request: where it went, when it was sent (Unix time), from
/// which local port (if it got that far), and what the client saw (a
/// reset, a refusal, a timeout and how far it got).
struct Failure {
    to: SocketAddr,
    at: f64,
    port: Option<u16>,
    why: String,
}

/// Every failed request of this process.
fn failed() -> &'static std::sync::Mutex<Vec<Failure>> {
    static FAILED: std::sync::OnceLock<std::sync::Mutex<Vec<Failure>>> = std::sync::OnceLock::new();
    FAILED.get_or_init(Default::default)
}

/// The failed requests to `to` sent in `[from, until)`: (Unix time sent,
/// local port if it got one, why).
pub fn failures_to(to: SocketAddr, from: f64, until: f64) -> Vec<(f64, Option<u16>, String)> {
    failed()
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .iter()
        .filter(|f| f.to == to && f.at >= from && f.at < until)
        .map(|f| (f.at, f.port, f.why.clone()))
        .collect()
}

/// One request; on failure, the stage that failed and why. `stage` says
/// how far it got (the local port once the SYN is sent, the request sent,
/// bytes received), for a timeout to name.
async fn attempt(to: SocketAddr, stage: &std::sync::Mutex<Stage>) -> Result<String, String> {
    let set = |port: u16, what: String| {
        if let Ok(mut s) = stage.lock() {
            *s = Stage {
                port: Some(port),
                what,
            };
        }
    };
    let (stream, port) = connect(to).map_err(|e| format!("connect: {e}"))?;
    let from = format!("from port {port}");
    set(port, format!("{from}: SYN sent, no SYN-ACK"));
    let mut stream = stream.await.map_err(|e| format!("connect {from}: {e}"))?;
    set(port, format!("{from}: connected, sending the request"));
    stream
        .write_all(format!("GET / HTTP/1.0\r\nHost: {to}\r\n\r\n").as_bytes())
        .await
        .map_err(|e| format!("send {from}: {e}"))?;
    set(port, format!("{from}: request sent, no answer"));
    let mut answer = Vec::new();
    let mut buf = [0u8; 2048];
    loop {
        let n = stream
            .read(&mut buf)
            .await
            .map_err(|e| format!("receive after connecting {from}: {e}"))?;
        answer.extend_from_slice(&buf[..n]);
        set(
            port,
            format!("{from}: {} bytes of the answer received", answer.len()),
        );
        let text = String::from_utf8_lossy(&answer);
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            if !head.starts_with("HTTP/") {
                return Err(format!("not HTTP: {head:?}"));
            }
            let length = head.lines().find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse::<usize>().ok())
                    .flatten()
            });
            // The client closes first when it knows the length (the
            // lab's server waits for that).
            if n == 0 || length.is_some_and(|l| body.len() >= l) {
                return Ok(body.trim().to_owned());
            }
        }
        if n == 0 {
            return Err(format!("closed before the whole answer ({from})"));
        }
    }
}

/// Starts a connection to `to` and says its local port at once (the
/// kernel picks it when the SYN is sent), so that a connection that never
/// completes can still be found in a capture. The future completes the
/// connection.
fn connect(
    to: SocketAddr,
) -> std::io::Result<(
    impl std::future::Future<Output = std::io::Result<tokio::net::TcpStream>>,
    u16,
)> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(to),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    socket.set_nonblocking(true)?;
    match socket.connect(&to.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(nix::libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    let port = socket.local_addr()?.as_socket().map_or(0, |a| a.port());
    let stream = tokio::net::TcpStream::from_std(std::net::TcpStream::from(socket))?;
    Ok((
        async move {
            stream.writable().await?;
            match stream.take_error()? {
                Some(e) => Err(e),
                None => Ok(stream),
            }
        },
        port,
    ))
}

/// Requests to one address at a fixed rate until `finish`.
#[derive(Debug)]
pub struct Traffic {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<Vec<Sent>>,
}

impl Traffic {
    /// New connections with one HTTP request each (`request`).
    pub fn start(to: SocketAddr, per_second: u64) -> Traffic {
        Traffic::start_with(per_second, move || request(to))
    }

    /// Any probe at a fixed rate: `probe` answers something (recorded as
    /// the answer) or None (failed). The cluster lab's DNS lookups use it.
    pub fn start_with<F, Fut>(per_second: u64, probe: F) -> Traffic
    where
        F: Fn() -> Fut + Send + 'static,
        Fut: std::future::Future<Output = Option<String>> + Send + 'static,
    {
        let stop = Arc::new(AtomicBool::new(false));
        let halt = stop.clone();
        let task = tokio::spawn(async move {
            let mut out = Vec::new();
            let mut tick = tokio::time::interval(Duration::from_millis(1000 / per_second.max(1)));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            let mut pending = tokio::task::JoinSet::new();
            while !halt.load(Ordering::SeqCst) {
                tick.tick().await;
                let (at, started) = (unix_now(), std::time::Instant::now());
                let attempt = probe();
                pending.spawn(async move {
                    // From when it was due, not when the task first ran:
                    // a client that stalls counts against its requests.
                    let answer = attempt.await;
                    let took_ms = started.elapsed().as_millis() as u64;
                    Sent {
                        at,
                        answer,
                        took_ms,
                    }
                });
                while let Some(Ok(done)) = pending.try_join_next() {
                    out.push(done);
                }
            }
            while let Some(Ok(done)) = pending.join_next().await {
                out.push(done);
            }
            out.sort_by(|a, b| a.at.total_cmp(&b.at));
            out
        });
        Traffic { stop, task }
    }

    pub async fn finish(self) -> Vec<Sent> {
        self.stop.store(true, Ordering::SeqCst);
        self.task.await.unwrap_or_default()
    }
}

impl Sent {
    /// Unix time it was answered (or given up on).
    pub fn done(&self) -> f64 {
        self.at + self.took_ms as f64 / 1000.0
    }
}

/// The longest stretch without an answer: from the answer of the last
/// request answered before a failure to the answer of the first one
/// answered after it (ms), and how many failed. Answer times, not send
/// times: a request sent during an outage and answered late (its SYN held
/// in the client's ARP queue until the VIP's new owner answered) ends the
/// outage when its answer comes.
pub fn disruption(records: &[Sent]) -> (u64, u64) {
    let failed = records.iter().filter(|r| r.answer.is_none()).count() as u64;
    let mut longest = 0.0f64;
    let mut last_ok: Option<f64> = None;
    let mut in_outage = false;
    for r in records {
        match r.answer {
            Some(_) => {
                if in_outage && let Some(ok) = last_ok {
                    longest = longest.max(r.done() - ok);
                }
                in_outage = false;
                last_ok = Some(r.done());
            }
            None => in_outage = true,
        }
    }
    if in_outage && let (Some(ok), Some(last)) = (last_ok, records.last()) {
        longest = longest.max(last.done() - ok);
    }
    ((longest * 1000.0).round() as u64, failed)
}

#[cfg(test)]
mod tests {
    use super::{Sent, disruption};

    fn r(at: f64, ok: bool) -> Sent {
        Sent {
            at,
            answer: ok.then(|| "m1".to_owned()),
            took_ms: 1,
        }
    }

    #[test]
    fn the_longest_outage_spans_last_answer_to_next_answer() {
        let records = [
            r(0.0, true),
            r(0.02, true),
            r(0.04, false),
            r(0.06, false),
            r(0.08, true),
            r(0.10, false),
            r(0.12, true),
        ];
        assert_eq!(disruption(&records), (60, 3));
        assert_eq!(disruption(&[r(0.0, true), r(0.02, true)]), (0, 0));
        // An outage still open at the end counts up to the last request.
        assert_eq!(disruption(&[r(0.0, true), r(0.5, false)]), (500, 1));
        // A request sent during the outage but answered late ends it when
        // its answer comes, not when it was sent.
        let late = Sent {
            at: 0.06,
            answer: Some("m2".into()),
            took_ms: 400,
        };
        assert_eq!(
            disruption(&[r(0.0, true), r(0.02, false), late, r(0.08, true)]),
            (459, 1)
        );
    }
}
