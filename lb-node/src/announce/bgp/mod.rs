//! An announce-only BGP-4 speaker: one session per configured peer, which
//! announces this member's routes with itself as the next hop and
//! withdraws them as they go: its VIPs as host routes (/32, /128), and the
//! service CIDRs whole while it serves (`announce.service_cidrs`, from every
//! healthy member: the routers spread ClusterIP traffic by ECMP). Received
//! routes are ignored.
//!
//! The session (RFC 4271 §8, the part an announce-only speaker needs):
//! connect (active), OPEN both ways (four-octet AS and multiprotocol IPv4 /
//! IPv6 unicast capabilities; the peer's AS must be the configured one; hold
//! time the smaller of both, 0 or at least 3 s), KEEPALIVE to establish,
//! then UPDATEs as the announced set changes, KEEPALIVEs every third of the
//! hold time, and the hold timer on what the peer sends. A malformed
//! message gets the NOTIFICATION with RFC 4271's code and subcode; the
//! session then resets and reconnects with backoff (1 s doubling to 30 s).
//! A clean stop withdraws every route and ends with a Cease NOTIFICATION
//! (Administrative Shutdown).

pub mod codec;

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use ipnet::IpNet;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use codec::{Attributes, Message, Open, error};

/// `[announce]` with `mode = "bgp"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BgpConfig {
    pub local_as: u32,
    pub router_id: Ipv4Addr,
    pub peers: Vec<PeerConfig>,
    /// Proposed hold time, seconds (0 or 3..=65535).
    pub hold_time: u16,
    pub communities: Vec<u32>,
    /// LOCAL_PREF on iBGP sessions.
    pub local_pref: u32,
    /// Next hop for IPv4 routes; `None`: the session's own address.
    pub next_hop_v4: Option<Ipv4Addr>,
    /// Next hop for IPv6 routes; `None`: the session's own address when it
    /// is IPv6 (IPv6 VIPs are not announced otherwise).
    pub next_hop_v6: Option<std::net::Ipv6Addr>,
    /// Every healthy member announces every VIP (ECMP), rather than only
    /// the owner.
    pub ecmp: bool,
    /// Announced whole by every healthy member, and the VIPs inside them
    /// not one by one (the Kubernetes service CIDRs).
    pub service_cidrs: Vec<ipnet::IpNet>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerConfig {
    pub address: SocketAddr,
    pub asn: u32,
}

/// Runs one session per peer until `shutdown`.
pub async fn run(
    config: BgpConfig,
    announced: watch::Receiver<Arc<BTreeSet<IpNet>>>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let config = Arc::new(config);
    let mut sessions = Vec::new();
    for peer in config.peers.clone() {
        sessions.push(tokio::spawn(peer_loop(
            config.clone(),
            peer,
            announced.clone(),
            shutdown.clone(),
        )));
    }
    for s in sessions {
        let _ = s.await;
    }
    Ok(())
}

async fn peer_loop(
    config: Arc<BgpConfig>,
    peer: PeerConfig,
    announced: watch::Receiver<Arc<BTreeSet<IpNet>>>,
    shutdown: CancellationToken,
) {
    let mut backoff = Duration::from_secs(1);
    loop {
        match session(&config, &peer, announced.clone(), &shutdown).await {
            Ok(Ended::Shutdown) => return,
            Ok(Ended::Reset(why)) => {
                warn!(peer = %peer.address, reason = %why, "BGP session reset");
                backoff = Duration::from_secs(1);
            }
            Err(e) => warn!(peer = %peer.address, error = format!("{e:#}"), "BGP session failed"),
        }
        crate::metrics::METRICS
            .bgp_sessions
            .with_label_values(&[&peer.address.to_string()])
            .set(0);
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(30));
    }
}

enum Ended {
    Shutdown,
    Reset(String),
}

struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    async fn send(&mut self, m: &Message) -> anyhow::Result<()> {
        self.stream
            .write_all(&m.encode())
            .await
            .context("cannot write to the peer")
    }

    /// The next message; a malformed one is answered with its
    /// NOTIFICATION and ends the session.
    async fn next(&mut self) -> anyhow::Result<Message> {
        loop {
            match Message::decode(&self.buf) {
                Ok(Some((m, n))) => {
                    self.buf.drain(..n);
                    return Ok(m);
                }
                Ok(None) => {}
                Err(e) => {
                    let _ = self
                        .send(&Message::Notification {
                            code: e.code,
                            subcode: e.subcode,
                            data: e.data.clone(),
                        })
                        .await;
                    bail!("malformed message from the peer: {e}");
                }
            }
            let mut chunk = [0u8; 4096];
            let n = self.stream.read(&mut chunk).await.context("read")?;
            if n == 0 {
                bail!("the peer closed the connection");
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

fn attributes(config: &BgpConfig, peer: &PeerConfig, next_hop: IpAddr) -> Attributes {
    let ebgp = peer.asn != config.local_as;
    Attributes {
        as_path: if ebgp { vec![config.local_as] } else { vec![] },
        next_hop,
        local_pref: (!ebgp).then_some(config.local_pref),
        communities: config.communities.clone(),
    }
}

/// A clean end of a session: every advertised route withdrawn, then a
/// Cease (Administrative Shutdown) NOTIFICATION.
async fn close(conn: &mut Conn, peer: &PeerConfig, advertised: &BTreeSet<IpNet>) {
    let all: Vec<IpNet> = advertised.iter().copied().collect();
    for chunk in all.chunks(200) {
        let _ = conn
            .send(&Message::Update {
                withdrawn: chunk.to_vec(),
                announced: vec![],
                attributes: None,
            })
            .await;
    }
    let _ = conn
        .send(&Message::Notification {
            code: error::CEASE,
            subcode: error::CEASE_ADMINISTRATIVE_SHUTDOWN,
            data: vec![],
        })
        .await;
    let _ = conn.stream.shutdown().await;
    info!(peer = %peer.address, routes = advertised.len(), "BGP session closed: routes withdrawn, Cease sent");
}

async fn session(
    config: &BgpConfig,
    peer: &PeerConfig,
    mut announced: watch::Receiver<Arc<BTreeSet<IpNet>>>,
    shutdown: &CancellationToken,
) -> anyhow::Result<Ended> {
    let stream = tokio::select! {
        _ = shutdown.cancelled() => return Ok(Ended::Shutdown),
        s = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(peer.address)) => {
            s.context("connect timed out")?.context("cannot connect")?
        }
    };
    stream.set_nodelay(true)?;
    let local = stream.local_addr()?.ip();
    let mut conn = Conn {
        stream,
        buf: Vec::new(),
    };
    conn.send(&Message::Open(Open {
        asn: config.local_as,
        hold_time: config.hold_time,
        bgp_id: config.router_id,
        families: vec![(1, 1), (2, 1)],
        four_octet: true,
    }))
    .await?;
    let open = tokio::time::timeout(Duration::from_secs(30), conn.next())
        .await
        .context("no OPEN from the peer")??;
    let Message::Open(theirs) = open else {
        conn.send(&Message::Notification {
            code: error::FSM,
            subcode: 0,
            data: vec![],
        })
        .await?;
        bail!("expected an OPEN, got {open:?}");
    };
    if theirs.asn != peer.asn {
        conn.send(&Message::Notification {
            code: error::OPEN,
            subcode: error::OPEN_BAD_PEER_AS,
            data: vec![],
        })
        .await?;
        bail!("the peer says AS {}, configured {}", theirs.asn, peer.asn);
    }
    let hold = Duration::from_secs(u64::from(config.hold_time.min(theirs.hold_time)));
    conn.send(&Message::Keepalive).await?;
    match tokio::time::timeout(Duration::from_secs(30), conn.next()).await?? {
        Message::Keepalive => {}
        Message::Notification { code, subcode, .. } => {
            bail!("the peer refused the session: NOTIFICATION {code}/{subcode}")
        }
        other => bail!("expected a KEEPALIVE, got {other:?}"),
    }
    info!(peer = %peer.address, asn = peer.asn, hold_s = hold.as_secs(), "BGP session established");
    crate::metrics::METRICS
        .bgp_sessions
        .with_label_values(&[&peer.address.to_string()])
        .set(1);

    let next_v4 = config
        .next_hop_v4
        .map(IpAddr::V4)
        .or(local.is_ipv4().then_some(local));
    let next_v6 = config
        .next_hop_v6
        .map(IpAddr::V6)
        .or(local.is_ipv6().then_some(local));
    let mut advertised: BTreeSet<IpNet> = BTreeSet::new();
    let keepalive_every = if hold.is_zero() {
        Duration::from_secs(3600)
    } else {
        hold / 3
    };
    let mut keepalive = tokio::time::interval(keepalive_every);
    keepalive.tick().await;
    let mut last_heard = tokio::time::Instant::now();
    let mut wanted_changed = true;
    loop {
        if wanted_changed {
            wanted_changed = false;
            let wanted: BTreeSet<IpNet> = announced
                .borrow_and_update()
                .iter()
                .copied()
                .filter(|net| match net {
                    IpNet::V4(_) => next_v4.is_some(),
                    IpNet::V6(_) => next_v6.is_some(),
                })
                .collect();
            for v6 in [false, true] {
                let withdrawn: Vec<IpNet> = advertised
                    .difference(&wanted)
                    .filter(|net| matches!(net, IpNet::V6(_)) == v6)
                    .copied()
                    .collect();
                let added: Vec<IpNet> = wanted
                    .difference(&advertised)
                    .filter(|net| matches!(net, IpNet::V6(_)) == v6)
                    .copied()
                    .collect();
                let next_hop = if v6 { next_v6 } else { next_v4 };
                // Chunks keep each UPDATE under 4,096 bytes.
                for chunk in withdrawn.chunks(200) {
                    conn.send(&Message::Update {
                        withdrawn: chunk.to_vec(),
                        announced: vec![],
                        attributes: None,
                    })
                    .await?;
                }
                if let Some(nh) = next_hop {
                    for chunk in added.chunks(150) {
                        conn.send(&Message::Update {
                            withdrawn: vec![],
                            announced: chunk.to_vec(),
                            attributes: Some(attributes(config, peer, nh)),
                        })
                        .await?;
                    }
                }
                if !withdrawn.is_empty() || !added.is_empty() {
                    info!(peer = %peer.address, announced = added.len(), withdrawn = withdrawn.len(), "BGP routes updated");
                }
            }
            advertised = wanted;
        }
        let hold_deadline = last_heard + hold;
        tokio::select! {
            _ = shutdown.cancelled() => {
                close(&mut conn, peer, &advertised).await;
                return Ok(Ended::Shutdown);
            }
            changed = announced.changed() => {
                // The sender goes away only when the member stops: the
                // same clean close as a shutdown, whichever branch won.
                if changed.is_err() {
                    close(&mut conn, peer, &advertised).await;
                    return Ok(Ended::Shutdown);
                }
                wanted_changed = true;
            }
            _ = keepalive.tick(), if !hold.is_zero() => conn.send(&Message::Keepalive).await?,
            _ = tokio::time::sleep_until(hold_deadline), if !hold.is_zero() => {
                let _ = conn.send(&Message::Notification { code: error::HOLD_TIMER_EXPIRED, subcode: 0, data: vec![] }).await;
                return Ok(Ended::Reset("hold timer expired".into()));
            }
            m = conn.next() => match m? {
                Message::Keepalive | Message::Update { .. } => last_heard = tokio::time::Instant::now(),
                Message::Notification { code, subcode, .. } => {
                    return Ok(Ended::Reset(format!("the peer sent NOTIFICATION {code}/{subcode}")));
                }
                Message::Open(_) => {
                    let _ = conn.send(&Message::Notification { code: error::FSM, subcode: 0, data: vec![] }).await;
                    return Ok(Ended::Reset("an OPEN on an established session".into()));
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    /// A scripted peer: reads whole messages, answers what the test says.
    struct Peer {
        stream: TcpStream,
        buf: Vec<u8>,
    }

    impl Peer {
        async fn next(&mut self) -> Message {
            self.next_raw().await.0
        }

        /// The next message and its bytes.
        async fn next_raw(&mut self) -> (Message, Vec<u8>) {
            loop {
                if let Ok(Some((m, n))) = Message::decode(&self.buf) {
                    let raw = self.buf.drain(..n).collect();
                    return (m, raw);
                }
                let mut chunk = [0u8; 4096];
                let n = tokio::time::timeout(Duration::from_secs(5), self.stream.read(&mut chunk))
                    .await
                    .expect("the speaker said something in time")
                    .expect("read");
                assert!(n > 0, "the speaker closed the connection");
                self.buf.extend_from_slice(&chunk[..n]);
            }
        }

        async fn send(&mut self, bytes: &[u8]) {
            self.stream.write_all(bytes).await.expect("write");
        }

        async fn accept(listener: &TcpListener) -> Peer {
            let (stream, _) = tokio::time::timeout(Duration::from_secs(10), listener.accept())
                .await
                .expect("the speaker connected")
                .expect("accept");
            Peer {
                stream,
                buf: Vec::new(),
            }
        }

        /// OPEN both ways and KEEPALIVE: the session is established.
        async fn establish(&mut self, asn: u32) -> Open {
            let Message::Open(theirs) = self.next().await else {
                panic!("expected an OPEN")
            };
            self.send(
                &Message::Open(Open {
                    asn,
                    hold_time: 9,
                    bgp_id: Ipv4Addr::new(127, 0, 0, 2),
                    families: vec![(1, 1)],
                    four_octet: true,
                })
                .encode(),
            )
            .await;
            assert_eq!(self.next().await, Message::Keepalive);
            self.send(&Message::Keepalive.encode()).await;
            theirs
        }
    }

    fn config(port: u16, peer_as: u32) -> BgpConfig {
        BgpConfig {
            local_as: 65001,
            router_id: Ipv4Addr::new(127, 0, 0, 1),
            peers: vec![PeerConfig {
                address: SocketAddr::from(([127, 0, 0, 1], port)),
                asn: peer_as,
            }],
            hold_time: 9,
            communities: vec![],
            local_pref: 100,
            next_hop_v4: None,
            next_hop_v6: None,
            ecmp: false,
            service_cidrs: vec![],
        }
    }

    /// Host routes of the addresses.
    fn ips(list: &[&str]) -> Arc<BTreeSet<IpNet>> {
        Arc::new(
            list.iter()
                .map(|s| IpNet::from(s.parse::<IpAddr>().expect("ip")))
                .collect(),
        )
    }

    #[tokio::test]
    async fn announces_follows_changes_resets_on_bad_input_and_ceases() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let (tx, rx) = watch::channel(ips(&["192.0.2.10"]));
        let stop = CancellationToken::new();
        let speaker = tokio::spawn(run(config(port, 65000), rx, stop.clone()));

        let mut peer = Peer::accept(&listener).await;
        let open = peer.establish(65000).await;
        assert_eq!(open.asn, 65001);
        assert!(open.four_octet);
        assert_eq!(open.families, vec![(1, 1), (2, 1)]);
        // eBGP: the VIP with our AS in the path and ourselves (the
        // session's address) as next hop, byte for byte.
        let c = config(port, 65000);
        let (_, raw) = peer.next_raw().await;
        let expected = Message::Update {
            withdrawn: vec![],
            announced: vec!["192.0.2.10/32".parse().expect("net")],
            attributes: Some(attributes(
                &c,
                &c.peers[0],
                "127.0.0.1".parse().expect("ip"),
            )),
        };
        assert_eq!(raw, expected.encode());
        assert!(
            raw.windows(6).any(|w| w == [0x40, 2, 6, 2, 1, 0]),
            "AS_PATH [65001]"
        );

        // The set changes: one withdrawal UPDATE.
        tx.send_replace(ips(&[]));
        let (_, raw) = peer.next_raw().await;
        let withdrawal = Message::Update {
            withdrawn: vec!["192.0.2.10/32".parse().expect("net")],
            announced: vec![],
            attributes: None,
        };
        assert_eq!(raw, withdrawal.encode());

        // A malformed message: NOTIFICATION 1/1 (marker), then a reset and
        // a new connection after the backoff.
        let mut bad = Message::Keepalive.encode();
        bad[0] = 0;
        peer.send(&bad).await;
        assert_eq!(
            peer.next().await,
            Message::Notification {
                code: error::HEADER,
                subcode: error::HEADER_NOT_SYNCHRONIZED,
                data: vec![]
            }
        );
        let mut peer = Peer::accept(&listener).await;
        peer.establish(65000).await;

        // A clean stop: Cease, Administrative Shutdown.
        tx.send_replace(ips(&["192.0.2.11"]));
        assert!(matches!(peer.next().await, Message::Update { .. }));
        stop.cancel();
        assert!(
            matches!(peer.next().await, Message::Update { .. }),
            "withdrawn first"
        );
        assert_eq!(
            peer.next().await,
            Message::Notification {
                code: error::CEASE,
                subcode: error::CEASE_ADMINISTRATIVE_SHUTDOWN,
                data: vec![]
            }
        );
        speaker.await.expect("join").expect("run");
    }

    #[tokio::test]
    async fn a_peer_with_the_wrong_as_is_refused() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let (_tx, rx) = watch::channel(ips(&[]));
        let stop = CancellationToken::new();
        let speaker = tokio::spawn(run(config(port, 65000), rx, stop.clone()));
        let mut peer = Peer::accept(&listener).await;
        let Message::Open(_) = peer.next().await else {
            panic!("expected an OPEN")
        };
        peer.send(
            &Message::Open(Open {
                asn: 64999,
                hold_time: 9,
                bgp_id: Ipv4Addr::new(127, 0, 0, 2),
                families: vec![],
                four_octet: true,
            })
            .encode(),
        )
        .await;
        assert_eq!(
            peer.next().await,
            Message::Notification {
                code: error::OPEN,
                subcode: error::OPEN_BAD_PEER_AS,
                data: vec![]
            }
        );
        stop.cancel();
        speaker.await.expect("join").expect("run");
    }
}
