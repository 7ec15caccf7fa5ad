//! Health-check benchmark (issue 22): three real `lb-node` processes on
//! loopback serving a services file of `--backends` backends (services of
//! 10 backends each) with a TCP health check every `--interval` seconds,
//! so each backend is probed by two members.
//!
//! The backends are loopback addresses (127.1.0.0/16 and up) on four
//! ports this program listens on (every address of 127/8 is local). After
//! the members have probed everything once and reported it:
//!
//! 1. Steady state, `--seconds`: each member's CPU (user + system, as a
//!    share of one core), resident memory, probes made, and the log
//!    entries committed (the cluster's applied index).
//! 2. Churn: one of the four listeners closes (a quarter of the backends
//!    refuse) and later opens again: the log entries and reports it took,
//!    and how long until every member's table had them all down, then up.
//! 3. The floor, with the members stopped: one thread of this program
//!    makes the probes one member owes (two probers per backend, spread
//!    over three members: 2 x backends / interval / 3 a second) in the
//!    cheapest way there is, a blocking connect and a close by reset, and
//!    its CPU time is what the kernel alone charges for them. On loopback
//!    the prober also pays the backend's side of each handshake (the
//!    packets are processed in the sender's system call), so this floor is
//!    what any prober on this machine pays, the members' figures are
//!    compared with it.
//!
//!   cargo build --release --workspace --bins
//!   cargo run --release -p ha-tests --bin health-bench -- [--backends 100000] [--interval 5] [--seconds 30]

use std::time::{Duration, Instant};

use anyhow::Context as _;
use ha_tests::scale::peak_rss_mib;

struct Args {
    backends: usize,
    interval: u64,
    seconds: u64,
    /// The same table without health checks: the members' cost without
    /// probing, to subtract.
    no_checks: bool,
}

fn args() -> anyhow::Result<Args> {
    let mut a = Args {
        backends: 100_000,
        interval: 5,
        seconds: 30,
        no_checks: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = || {
            it.next()
                .context("a value")
                .and_then(|v| Ok(v.parse::<u64>()?))
        };
        match arg.as_str() {
            "--backends" => a.backends = value()? as usize,
            "--interval" => a.interval = value()?,
            "--seconds" => a.seconds = value()?,
            "--no-checks" => a.no_checks = true,
            other => anyhow::bail!(
                "unknown argument {other:?}; usage: health-bench [--backends N] [--interval SECONDS] [--seconds N] [--no-checks]"
            ),
        }
    }
    Ok(a)
}

/// The backend `i`: a loopback address of its own.
fn backend(i: usize) -> std::net::Ipv4Addr {
    let n = 0x7f01_0000u32 + i as u32;
    std::net::Ipv4Addr::from(n)
}

/// CPU time (user + system) of a process so far, seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let (u, s) = cpu_split(pid);
    u + s
}

/// User and system CPU time of a process so far, seconds.
fn cpu_split(pid: u32) -> (f64, f64) {
    let ticks = 100.0; // USER_HZ on Linux
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            let rest = s.rsplit_once(')')?.1;
            let f: Vec<&str> = rest.split_whitespace().collect();
            Some((
                f.get(11)?.parse::<f64>().ok()? / ticks,
                f.get(12)?.parse::<f64>().ok()? / ticks,
            ))
        })
        .unwrap_or((0.0, 0.0))
}

/// Resident memory now (VmRSS), MiB.
fn rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(0.0, |kib| kib / 1024.0)
}

fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

/// The applied log index of a member.
async fn applied(m: &ha_tests::Member) -> anyhow::Result<u64> {
    Ok(ha_tests::cluster_status(m).await?.applied_index)
}

/// The floor: `rate` TCP probes a second for `seconds` over the backends,
/// each a blocking connect (on loopback the handshake completes within
/// the call) and a close by reset, in one thread; its CPU time (user,
/// system) in seconds and the probes made.
fn floor(
    ports: &[u16],
    backends: usize,
    rate: f64,
    seconds: u64,
) -> anyhow::Result<((f64, f64), u64)> {
    use nix::sys::resource::{UsageWho, getrusage};
    let cpu = || -> anyhow::Result<(f64, f64)> {
        let u = getrusage(UsageWho::RUSAGE_THREAD)?;
        let secs = |t: nix::sys::time::TimeVal| t.tv_sec() as f64 + t.tv_usec() as f64 / 1e6;
        Ok((secs(u.user_time()), secs(u.system_time())))
    };
    let (u0, s0) = cpu()?;
    let started = Instant::now();
    let mut made = 0u64;
    let mut refused = 0u64;
    while started.elapsed() < Duration::from_secs(seconds) {
        // Paced: as many as are due by now, then a millisecond's sleep.
        let due = (started.elapsed().as_secs_f64() * rate) as u64;
        while made < due {
            let i = (made as usize) % backends;
            let to = std::net::SocketAddr::from((backend(i), ports[i % ports.len()]));
            match std::net::TcpStream::connect(to) {
                Ok(s) => {
                    socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO))?;
                }
                Err(_) => refused += 1,
            }
            made += 1;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    anyhow::ensure!(
        refused * 100 <= made,
        "the floor's probes failed: {refused} of {made}"
    );
    let (u1, s1) = cpu()?;
    Ok(((u1 - u0, s1 - s0), made))
}

/// A member's `/metrics`, waiting up to a minute: a member saturated by
/// its probes may answer slowly, and how slowly is a figure of the bench
/// (`slowest_metrics_answer_ms`, the slowest seen in `slowest`).
fn metrics_of(m: &ha_tests::Member, slowest: &mut Duration) -> anyhow::Result<String> {
    let started = Instant::now();
    let (_, text) = m.http_get_within("/metrics", Duration::from_secs(60))?;
    *slowest = (*slowest).max(started.elapsed());
    Ok(text)
}

/// A listener that accepts and drops every connection, until aborted.
async fn listen(port: u16) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    // Every 127/8 address reaches it; nothing else is sent to.
    socket.bind((std::net::Ipv4Addr::UNSPECIFIED, port).into())?;
    let listener = socket.listen(4096)?;
    Ok(tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            drop(s);
        }
    }))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let a = args()?;
    let dir = tempfile::tempdir()?;
    let ports: Vec<u16> = (0..4)
        .map(|_| ha_tests::free_port())
        .collect::<anyhow::Result<_>>()?;
    let mut listeners = Vec::new();
    for p in &ports {
        listeners.push(listen(*p).await?);
    }
    let services = a.backends.div_ceil(10);
    let mut text = String::with_capacity(a.backends * 60);
    for s in 0..services {
        let vip = std::net::Ipv4Addr::from(0x0a40_0000u32 + s as u32);
        text += &format!("[[service]]\nname = \"svc-{s}\"\nvip = \"{vip}\"\nport = 80\n");
        if !a.no_checks {
            text += &format!(
                "[service.health_check]\nkind = \"tcp\"\ninterval = \"{}s\"\ntimeout = \"1s\"\n",
                a.interval
            );
        }
        for b in 0..10 {
            let i = s * 10 + b;
            if i >= a.backends {
                break;
            }
            text += &format!(
                "[[service.backend]]\naddress = \"{}\"\nport = {}\n",
                backend(i),
                ports[i % 4]
            );
        }
    }
    let layout = ha_tests::ClusterLayout::write(dir.path(), 3, &text, "health-bench")?;
    let members = layout.start_all()?;
    let started = Instant::now();
    let mut slowest = Duration::ZERO;
    // Warm: every member probing its share and every backend reported up
    // by both its probers (two reports each).
    let expected_probed = if a.no_checks { 0 } else { 2 * a.backends };
    loop {
        let mut probed = 0.0;
        let mut up = 0.0;
        for m in members.values() {
            let text = metrics_of(m, &mut slowest)?;
            probed += metric(&text, "lb_health_probed_backends ");
            up += metric(&text, "lb_health_probes_total{result=\"up\"} ");
        }
        if probed as usize >= expected_probed && up as usize >= expected_probed {
            break;
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(300),
            "members not probing everything after 300 s: {probed} of {expected_probed} probed, {up} probes up"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // One more interval for the reports to be committed.
    tokio::time::sleep(Duration::from_secs(a.interval + 2)).await;
    let warm = started.elapsed();
    let leader_member = members.get(&1).context("member 1")?;
    // 1. Steady state.
    let cpu0: Vec<f64> = members.values().map(|m| cpu_seconds(m.pid())).collect();
    let sys0: Vec<f64> = members.values().map(|m| cpu_split(m.pid()).1).collect();
    let probes0: Vec<f64> = members
        .values()
        .map(|m| {
            metrics_of(m, &mut slowest)
                .map(|t| {
                    metric(&t, "lb_health_probes_total{result=\"up\"} ")
                        + metric(&t, "lb_health_probes_total{result=\"down\"} ")
                })
                .unwrap_or(0.0)
        })
        .collect();
    let index0 = applied(leader_member).await?;
    let t0 = Instant::now();
    tokio::time::sleep(Duration::from_secs(a.seconds)).await;
    let span = t0.elapsed().as_secs_f64();
    let index1 = applied(leader_member).await?;
    let mut per_member = Vec::new();
    for (i, (id, m)) in members.iter().enumerate() {
        let t = metrics_of(m, &mut slowest)?;
        let probes = metric(&t, "lb_health_probes_total{result=\"up\"} ")
            + metric(&t, "lb_health_probes_total{result=\"down\"} ")
            - probes0[i];
        per_member.push(serde_json::json!({
            "member": id,
            "probed_backends": metric(&t, "lb_health_probed_backends "),
            "cpu_cores": ((cpu_seconds(m.pid()) - cpu0[i]) / span * 1000.0).round() / 1000.0,
            "system_cpu_cores": ((cpu_split(m.pid()).1 - sys0[i]) / span * 1000.0).round() / 1000.0,
            "probes_per_s": (probes / span).round(),
            "rss_mib": rss_mib(m.pid()).round(),
            "peak_rss_mib": peak_rss_mib(m.pid()).round(),
        }));
    }
    let steady_entries = index1 - index0;
    // 2. Churn: a quarter of the backends refuse, then answer again.
    let down_count = a.backends.div_ceil(4);
    let mut churn = serde_json::Map::new();
    let phases: &[(&str, bool)] = if a.no_checks {
        &[]
    } else {
        &[("down", true), ("up", false)]
    };
    for &(phase, closing) in phases {
        let index_before = applied(leader_member).await?;
        let t = Instant::now();
        if closing {
            listeners[0].abort();
            // The listener's socket closes once its task is dropped.
            tokio::time::sleep(Duration::from_millis(50)).await;
        } else {
            listeners[0] = listen(ports[0]).await?;
        }
        // Until every member's state has the quarter down (or none).
        let want_down = if closing { down_count } else { 0 };
        let mut done = None;
        while t.elapsed() < Duration::from_secs(a.interval * 6 + 30) {
            // Each member's count of backends its state has down.
            let mut all = true;
            for m in members.values() {
                let t = metrics_of(m, &mut slowest)?;
                let down = metric(&t, "lb_health_backends_down ");
                if down as usize != want_down {
                    all = false;
                }
            }
            if all {
                done = Some(t.elapsed());
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let index_after = applied(leader_member).await?;
        churn.insert(
            phase.into(),
            serde_json::json!({
                "backends": down_count,
                "all_members_agree_after_ms": done.map(|d| d.as_millis()),
                "log_entries": index_after - index_before,
            }),
        );
    }
    drop(members);
    // 3. The floor, at the rate one member owes.
    let due_per_member = 2.0 * a.backends as f64 / a.interval as f64 / 3.0;
    let floor_figures = if a.no_checks {
        serde_json::Value::Null
    } else {
        let (ports_c, backends, seconds) = (ports.clone(), a.backends, a.seconds.min(20));
        let ((user, system), made) =
            tokio::task::spawn_blocking(move || floor(&ports_c, backends, due_per_member, seconds))
                .await??;
        let span = seconds as f64;
        serde_json::json!({
            "probes_per_s": (made as f64 / span).round(),
            "cpu_cores": ((user + system) / span * 1000.0).round() / 1000.0,
            "system_cpu_cores": (system / span * 1000.0).round() / 1000.0,
            "cpu_us_per_probe": ((user + system) / made as f64 * 1e7).round() / 10.0,
        })
    };
    for m in &mut per_member {
        let (cores, rate) = (m["cpu_cores"].as_f64(), m["probes_per_s"].as_f64());
        if let (Some(c), Some(r)) = (cores, rate)
            && r > 0.0
        {
            m["cpu_us_per_probe"] = serde_json::json!((c / r * 1e7).round() / 10.0);
        }
    }
    let report = serde_json::json!({
        "bench": "health",
        "backends": a.backends,
        "checks": !a.no_checks,
        "interval_s": a.interval,
        "warm_up_s": warm.as_secs(),
        "steady_seconds": span.round(),
        "steady_log_entries_per_s": (steady_entries as f64 / span * 100.0).round() / 100.0,
        "probes_due_per_member_per_s": due_per_member.round(),
        "slowest_metrics_answer_ms": slowest.as_millis(),
        "members": per_member,
        "churn": churn,
        "floor": floor_figures,
    });
    println!("{report}");
    Ok(())
}
