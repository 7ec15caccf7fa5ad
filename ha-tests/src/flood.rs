//! The `connection-flood` drill's attacker: connections opened from many
//! source addresses of one network namespace and held open without a byte
//! sent (half-open from the member's side: no TLS handshake, no HTTP/2
//! preface), as a client that wants to exhaust a member's descriptors
//! would (issue 19: 20,000 of them took every descriptor of a member).
//!
//! Each process may hold at most its descriptor limit (20,000 here, and
//! raising it needs CAP_SYS_RESOURCE), so the flood is several `lab-flood`
//! processes in the attacker's namespace, `PER_PROCESS` connections each;
//! the drill's traffic, writer and probes go on meanwhile.

use std::net::{Ipv4Addr, SocketAddr};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context as _;

/// Connections one `lab-flood` process opens.
pub const PER_PROCESS: usize = 10_000;

/// What the flood did.
#[derive(Debug, Clone, Copy, Default)]
pub struct Outcome {
    /// Connections the handshake completed for (the member may have
    /// closed them since).
    pub opened: u64,
    /// Connections that could not be made (timed out, reset).
    pub failed: u64,
    /// How long opening them took (the slowest process).
    pub seconds: f64,
}

/// The longest a process spends opening connections.
const OPENING_AT_MOST: Duration = Duration::from_secs(60);

/// `lab-flood`'s work: opens `count` connections to `to` from `sources` in
/// turns, holds them for `hold` after the last one opened, closes them.
pub fn flood(to: SocketAddr, count: usize, hold: Duration, sources: &[Ipv4Addr]) -> Outcome {
    let mut held = Vec::with_capacity(count);
    let mut outcome = Outcome::default();
    let started = Instant::now();
    for n in 0..count {
        if started.elapsed() > OPENING_AT_MOST || sources.is_empty() {
            break;
        }
        let from = SocketAddr::from((sources[n % sources.len()], 0));
        match connect(from, to) {
            Ok(s) => {
                outcome.opened += 1;
                held.push(s);
            }
            Err(_) => outcome.failed += 1,
        }
    }
    outcome.seconds = started.elapsed().as_secs_f64();
    std::thread::sleep(hold);
    drop(held);
    outcome
}

/// A flood under way: its processes.
#[derive(Debug)]
pub struct Flood {
    processes: Vec<Child>,
}

impl Flood {
    /// Opens `per_target` connections to each of `targets` from namespace
    /// `ns` (`PER_PROCESS` per process, all at once), the sources in turns,
    /// and holds them for `hold` after the last one opened.
    pub fn start(
        ns: &str,
        sources: &[Ipv4Addr],
        targets: &[SocketAddr],
        per_target: usize,
        hold: Duration,
    ) -> anyhow::Result<Flood> {
        let bin = crate::binary("lab-flood")?;
        let sources: Vec<String> = sources.iter().map(Ipv4Addr::to_string).collect();
        let mut processes = Vec::new();
        for to in targets {
            let mut left = per_target;
            while left > 0 {
                let count = left.min(PER_PROCESS);
                left -= count;
                let child = Command::new("ip")
                    .args(["netns", "exec", ns])
                    .arg(&bin)
                    .arg(to.to_string())
                    .arg(count.to_string())
                    .arg(hold.as_millis().to_string())
                    .args(&sources)
                    .stdout(Stdio::piped())
                    .stderr(Stdio::inherit())
                    .spawn()
                    .context("cannot start lab-flood")?;
                processes.push(child);
            }
        }
        Ok(Flood { processes })
    }

    /// Whether every process has opened, held and closed its connections.
    pub fn is_finished(&mut self) -> bool {
        self.processes
            .iter_mut()
            .all(|c| matches!(c.try_wait(), Ok(Some(_))))
    }

    /// Waits for the processes and adds up what they did.
    pub fn finish(self) -> anyhow::Result<Outcome> {
        let mut total = Outcome::default();
        for child in self.processes {
            let out = child.wait_with_output()?;
            let text = String::from_utf8_lossy(&out.stdout);
            let mut words = text.split_whitespace();
            let (Some(opened), Some(failed), Some(seconds)) =
                (words.next(), words.next(), words.next())
            else {
                anyhow::bail!("lab-flood said {text:?} ({})", out.status);
            };
            total.opened += opened.parse::<u64>()?;
            total.failed += failed.parse::<u64>()?;
            total.seconds = total.seconds.max(seconds.parse()?);
        }
        Ok(total)
    }
}

/// One connection from `from` to `to`, closed with a reset when dropped
/// (no FIN handshake for tens of thousands of sockets at once).
fn connect(from: SocketAddr, to: SocketAddr) -> std::io::Result<socket2::Socket> {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    s.set_linger(Some(Duration::ZERO))?;
    s.bind(&from.into())?;
    s.connect_timeout(&to.into(), Duration::from_secs(1))?;
    Ok(s)
}

/// A GET over HTTP/1.0 with a deadline: (status, body).
pub async fn http_get(to: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let exchange = async {
        let mut s = tokio::net::TcpStream::connect(to).await?;
        s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {to}\r\n\r\n").as_bytes())
            .await?;
        let mut text = String::new();
        s.read_to_string(&mut text).await?;
        anyhow::Ok(text)
    };
    let text = tokio::time::timeout(Duration::from_secs(1), exchange)
        .await
        .map_err(|_| anyhow::anyhow!("GET {path}: no answer within 1 s"))??;
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("GET {path}: not an HTTP answer: {text:.80}"))?;
    let body = text
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_owned();
    Ok((status, body))
}
