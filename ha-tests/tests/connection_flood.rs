//! A flood of idle connections on the leader's admin and peer ports (3,000
//! each, from one address, held open) takes nothing from the member: its
//! descriptors stay few, lbctl from another address is answered, writes
//! commit, `/readyz` answers, the refusals are counted, and the admitted
//! flood connections are closed once their first-bytes deadline passes.
//! Before the caps, every one of them took a descriptor (20,000 took them
//! all: issue 19).

use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use ha_tests::{ClusterLayout, cluster_status, eventually};

const SERVICES: &str = include_str!("../../deploy/examples/services.toml");
const BACKEND: &str = "198.51.100.11:8080";

/// `count` connections to `to` from `from` (a loopback address of its
/// own), kept open; those the member closes at once are kept too.
fn flood(from: &str, to: SocketAddr, count: usize) -> anyhow::Result<Vec<TcpStream>> {
    let mut held = Vec::with_capacity(count);
    for _ in 0..count {
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
        socket.bind(&format!("{from}:0").parse::<SocketAddr>()?.into())?;
        socket.connect_timeout(&to.into(), Duration::from_secs(2))?;
        held.push(socket.into());
    }
    Ok(held)
}

/// A metric's value from the member's `/metrics` text.
fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(f64::NAN)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_idle_connections_takes_nothing_from_the_member() -> anyhow::Result<()> {
    // The flood's own descriptors.
    let (_, hard) = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)?;
    nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, hard, hard)?;
    anyhow::ensure!(
        hard >= 7_000,
        "the descriptor limit {hard} is too low for the flood"
    );

    let dir = tempfile::tempdir()?;
    let layout = ClusterLayout::write(dir.path(), 3, SERVICES, "flood")?;
    for id in 1..=3 {
        let path = layout.config(id);
        let text = std::fs::read_to_string(&path)?.replacen(
            "[node]\n",
            "[node]\nfirst_bytes_timeout = \"3s\"\n",
            1,
        );
        std::fs::write(&path, text)?;
    }
    let members = layout.start_all()?;
    let leader = eventually("a leader", Duration::from_secs(20), || async {
        let s = cluster_status(&members[&1]).await?;
        Ok((s.leader != 0).then_some(s.leader))
    })
    .await?;
    let m = &members[&leader];
    let peer: SocketAddr = ([127, 0, 0, 1], layout.peer_ports[leader as usize - 1]).into();

    let admin_flood = flood("127.0.0.2", m.admin, 3_000)?;
    let peer_flood = flood("127.0.0.2", peer, 3_000)?;

    // The member works on: lbctl (from 127.0.0.1) reads and writes, the
    // write commits on every member, /readyz answers.
    let (code, out, err) = m.lbctl(&["status"])?;
    assert_eq!(code, 0, "lbctl status during the flood: {err}");
    assert!(out.contains("leader"), "{out}");
    let (code, _, err) = m.lbctl(&["backend", "weight", "web", BACKEND, "3"])?;
    assert_eq!(code, 0, "a write during the flood: {err}");
    for (id, member) in &members {
        eventually("the write applied", Duration::from_secs(5), || async {
            let (_, out, _) = member.lbctl(&["services", "web"])?;
            Ok(out.contains("[weight 3 (override)]").then_some(()))
        })
        .await
        .map_err(|e| anyhow::anyhow!("member {id}: {e}"))?;
    }
    let (status, _) = m.http_get("/readyz")?;
    assert_eq!(status, 200, "/readyz during the flood");

    // What it cost: a share of one source per port, the rest refused.
    let (_, text) = m.http_get("/metrics")?;
    let fds = metric(&text, "process_open_fds ");
    assert!(fds < 1_000.0, "the member holds {fds} descriptors");
    for listener in ["admin", "peer"] {
        let refused = metric(
            &text,
            &format!(
                "lb_connections_refused_total{{listener=\"{listener}\",reason=\"source_full\"}} "
            ),
        );
        // 64 admitted at a time; those closed at the deadline while the
        // flood went on made room for a few hundred more.
        assert!(
            refused >= 2_500.0,
            "{listener}: {refused} refused of 3,000 from one source"
        );
    }

    // The admitted flood connections said nothing: closed at the deadline.
    eventually(
        "the idle connections closed",
        Duration::from_secs(10),
        || async {
            let (_, text) = m.http_get("/metrics")?;
            let admin = metric(&text, "lb_connections_open{listener=\"admin\"} ");
            let peer = metric(&text, "lb_connections_open{listener=\"peer\"} ");
            Ok((admin < 10.0 && peer < 10.0).then_some(()))
        },
    )
    .await?;
    assert!(
        !m.log().contains("Too many open files"),
        "the member ran out of descriptors"
    );
    drop((admin_flood, peer_flood));
    Ok(())
}
