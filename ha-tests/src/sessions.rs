//! Long-lived client connections for the connection-survival drills
//! (issue 21): many TCP connections to one address, each sending a small
//! request and reading its echo at a fixed interval, for as long as the
//! drill runs. What a connection must never see is an error (a reset, an
//! end of stream, no answer at all); how long it waited for an answer
//! across a failover is its pause.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::l2lab::unix_now;

/// How long one answer may take before the connection counts as failed:
/// long enough for TCP's retransmissions across a failover (the client
/// backs off 200, 400, 800 ms ...), short of what an operator would call
/// a hung connection.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// One connection's story.
#[derive(Debug, Clone, Default)]
pub struct Session {
    /// Unix times of its answers, in order.
    pub answers: Vec<f64>,
    /// How it ended before the drill stopped it, and when the request
    /// that failed was sent.
    pub error: Option<(f64, String)>,
}

impl Session {
    /// Whether it ended by a reset (the kernel's "connection reset" or a
    /// write into a reset connection).
    pub fn reset(&self) -> bool {
        self.error
            .as_ref()
            .is_some_and(|(_, e)| e.contains("reset") || e.contains("Broken pipe"))
    }

    /// The longest wait for an answer within [from, to]: from the answer
    /// before (or `from`) to the next answer (or `to` for one that never
    /// came), in ms.
    pub fn pause_ms(&self, from: f64, to: f64) -> f64 {
        let mut last = from;
        let mut longest: f64 = 0.0;
        for a in self.answers.iter().copied() {
            if a < from {
                last = from.max(a);
                continue;
            }
            if a > to {
                break;
            }
            longest = longest.max(a - last);
            last = a;
        }
        longest.max(to - last) * 1000.0
    }
}

/// Running sessions; `finish` stops them and returns each one's story.
#[derive(Debug)]
pub struct Sessions {
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<Session>>,
}

impl Sessions {
    /// Opens `count` connections to `to` (all open before it returns, or
    /// an error naming how many did), from `from` (any address when
    /// `None`), each sending 16 bytes and reading their echo every `every`.
    pub async fn start(
        from: Option<std::net::IpAddr>,
        to: SocketAddr,
        count: usize,
        every: Duration,
    ) -> anyhow::Result<Sessions> {
        let mut streams = Vec::with_capacity(count);
        for i in 0..count {
            let socket = tokio::net::TcpSocket::new_v4()?;
            if let Some(from) = from {
                socket.bind((from, 0).into())?;
            }
            let s = tokio::time::timeout(Duration::from_secs(5), socket.connect(to))
                .await
                .map_err(|_| {
                    anyhow::anyhow!("connection {i} of {count} to {to}: no answer in 5 s")
                })?
                .map_err(|e| anyhow::anyhow!("connection {i} of {count} to {to}: {e}"))?;
            s.set_nodelay(true)?;
            streams.push(s);
        }
        let stop = Arc::new(AtomicBool::new(false));
        let tasks = streams
            .into_iter()
            .enumerate()
            .map(|(i, s)| {
                let stop = stop.clone();
                // Spread over the interval, so the load is even.
                let offset = every.mul_f64(i as f64 / count as f64);
                tokio::spawn(run(s, every, offset, stop))
            })
            .collect();
        Ok(Sessions { stop, tasks })
    }

    pub async fn finish(self) -> Vec<Session> {
        self.stop.store(true, Ordering::Relaxed);
        let mut out = Vec::new();
        for t in self.tasks {
            out.push(t.await.unwrap_or_else(|e| Session {
                answers: Vec::new(),
                error: Some((unix_now(), format!("the session task failed: {e}"))),
            }));
        }
        out
    }
}

async fn run(
    mut s: tokio::net::TcpStream,
    every: Duration,
    offset: Duration,
    stop: Arc<AtomicBool>,
) -> Session {
    let mut session = Session::default();
    tokio::time::sleep(offset).await;
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut n: u64 = 0;
    let mut buf = [0u8; 16];
    while !stop.load(Ordering::Relaxed) {
        tick.tick().await;
        n += 1;
        let request = format!("{n:015}\n");
        let sent = unix_now();
        let outcome = tokio::time::timeout(ANSWER_TIMEOUT, async {
            s.write_all(request.as_bytes()).await?;
            s.read_exact(&mut buf).await?;
            Ok::<_, std::io::Error>(())
        })
        .await;
        match outcome {
            Ok(Ok(())) if buf == *request.as_bytes() => session.answers.push(unix_now()),
            Ok(Ok(())) => {
                session.error = Some((
                    sent,
                    format!("answer {:?} to {request:?}", String::from_utf8_lossy(&buf)),
                ));
                break;
            }
            Ok(Err(e)) => {
                session.error = Some((sent, e.to_string()));
                break;
            }
            Err(_) => {
                session.error = Some((sent, format!("no answer within {ANSWER_TIMEOUT:?}")));
                break;
            }
        }
    }
    session
}

/// What `churn` made: connections completed (connected, 16 bytes echoed,
/// closed) and failed, and the first failure.
#[derive(Debug, Clone, Default)]
pub struct Churn {
    pub completed: u64,
    pub failed: u64,
    pub first_error: Option<String>,
}

/// New short connections to `to` for `span`, as fast as `concurrency`
/// clients can make them one after another: each connects, sends 16 bytes,
/// reads their echo and closes (the client closes first, so the member's
/// IPVS entry goes through every TCP state, each of which the sync sends).
pub async fn churn(to: SocketAddr, concurrency: usize, span: Duration) -> Churn {
    let end = tokio::time::Instant::now() + span;
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| {
            tokio::spawn(async move {
                let mut c = Churn::default();
                while tokio::time::Instant::now() < end {
                    let once = tokio::time::timeout(Duration::from_secs(2), async {
                        let mut s = tokio::net::TcpStream::connect(to).await?;
                        s.set_nodelay(true)?;
                        s.write_all(b"0123456789abcde\n").await?;
                        let mut buf = [0u8; 16];
                        s.read_exact(&mut buf).await?;
                        Ok::<_, std::io::Error>(())
                    })
                    .await;
                    match once {
                        Ok(Ok(())) => c.completed += 1,
                        Ok(Err(e)) => {
                            c.failed += 1;
                            c.first_error.get_or_insert_with(|| e.to_string());
                        }
                        Err(_) => {
                            c.failed += 1;
                            c.first_error
                                .get_or_insert_with(|| "no answer within 2 s".into());
                        }
                    }
                }
                c
            })
        })
        .collect();
    let mut all = Churn::default();
    for t in tasks {
        match t.await {
            Ok(c) => {
                all.completed += c.completed;
                all.failed += c.failed;
                if all.first_error.is_none() {
                    all.first_error = c.first_error;
                }
            }
            Err(e) => {
                all.failed += 1;
                all.first_error
                    .get_or_insert_with(|| format!("a client task failed: {e}"));
            }
        }
    }
    all
}

/// One query: when it was sent and when (if) it was answered (Unix time).
pub type Query = (f64, Option<f64>);

/// A DNS-like UDP client on one socket (one source port throughout, the
/// case that pins a flow), sending a query every `every` and recording
/// when each was sent and whether it was answered.
#[derive(Debug)]
pub struct Queries {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<anyhow::Result<Vec<Query>>>,
}

impl Queries {
    pub async fn start(
        to: SocketAddr,
        name: &'static str,
        every: Duration,
    ) -> anyhow::Result<Queries> {
        let socket = tokio::net::UdpSocket::bind("0.0.0.0:0").await?;
        socket.connect(to).await?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let task = tokio::spawn(async move {
            let socket = Arc::new(socket);
            let answered = Arc::new(std::sync::Mutex::new(std::collections::BTreeMap::new()));
            let reader = {
                let (socket, answered) = (socket.clone(), answered.clone());
                tokio::spawn(async move {
                    let mut buf = [0u8; 512];
                    while let Ok(n) = socket.recv(&mut buf).await {
                        if n >= 2 {
                            let id = u16::from_be_bytes([buf[0], buf[1]]);
                            if crate::dns::parse_answer(id, &buf[..n]).is_ok() {
                                answered
                                    .lock()
                                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                                    .entry(id)
                                    .or_insert_with(unix_now);
                            }
                        }
                    }
                })
            };
            let mut sent = Vec::new();
            let mut tick = tokio::time::interval(every);
            let mut id: u16 = 0;
            while !flag.load(Ordering::Relaxed) && id < u16::MAX {
                tick.tick().await;
                id += 1;
                sent.push((id, unix_now()));
                // A send that fails (no route for a moment) is a query
                // unanswered, not the end of the client.
                let _ = socket.send(&crate::dns::query(id, name)).await;
            }
            // Answers to the last queries.
            tokio::time::sleep(Duration::from_millis(500)).await;
            reader.abort();
            let answered = answered
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone();
            Ok(sent
                .into_iter()
                .map(|(id, at)| (at, answered.get(&id).copied()))
                .collect())
        });
        Ok(Queries { stop, task })
    }

    /// Each query: when it was sent and when (if) it was answered.
    pub async fn finish(self) -> anyhow::Result<Vec<Query>> {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await?
    }
}

/// p-th percentile (0-100) of sorted values, nearest rank.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pause_spans_the_longest_wait_inside_the_window() {
        let s = Session {
            answers: vec![0.9, 1.0, 1.1, 2.3, 2.4],
            error: None,
        };
        // From 1.1 to 2.3: 1.2 s.
        assert!((s.pause_ms(1.0, 3.0) - 1200.0).abs() < 1e-6);
        // An answer that never came after 2.4 counts to the window's end.
        assert!((s.pause_ms(1.0, 5.0) - 2600.0).abs() < 1e-6);
        let reset = Session {
            answers: vec![],
            error: Some((1.0, "Connection reset by peer (os error 104)".into())),
        };
        assert!(reset.reset());
        assert!(!s.reset());
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let v: Vec<f64> = (1..=200).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), 100.0);
        assert_eq!(percentile(&v, 99.0), 198.0);
        assert_eq!(percentile(&v, 100.0), 200.0);
    }
}
