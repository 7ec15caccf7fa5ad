//! BGP sessions against scripted peers over loopback TCP.

use super::*;
use std::net::Ipv4Addr;

use codec::{Attributes, Message, Open, error};
use ipnet::IpNet;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
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
                route_refresh: true,
                graceful_restart: None,
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
        linger: Duration::ZERO,
        listen: None,
        local_as: 65001,
        router_id: Ipv4Addr::new(127, 0, 0, 1),
        peers: vec![PeerConfig::new(
            SocketAddr::from(([127, 0, 0, 1], port)),
            peer_as,
        )],
        hold_time: 9,
        communities: vec![],
        large_communities: vec![],
        med: None,
        local_pref: 100,
        next_hop_v4: None,
        next_hop_v6: None,
        ecmp: false,
        service_cidrs: vec![],
        bfd: None,
        graceful_restart: None,
    }
}

/// Host routes of the addresses.
fn ips(list: &[&str]) -> Arc<fsm::Routes> {
    Arc::new(
        list.iter()
            .map(|s| {
                (
                    IpNet::from(s.parse::<IpAddr>().expect("ip")),
                    Default::default(),
                )
            })
            .collect(),
    )
}

#[tokio::test]
async fn announces_follows_changes_resets_on_bad_input_and_ceases() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let (tx, rx) = watch::channel(ips(&["192.0.2.10"]));
    let stop = CancellationToken::new();
    let speaker = tokio::spawn(run(
        config(port, 65000),
        rx,
        watch::channel(true).1,
        watch::channel(Vec::new()).0,
        stop.clone(),
    ));

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
        attributes: Some(Attributes {
            as_path: vec![65001],
            four_octet: true,
            next_hop: Some("127.0.0.1".parse().expect("ip")),
            // eBGP: no LOCAL_PREF.
            local_pref: None,
            ..c.peers[0].session_config(&c, true).attributes
        }),
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
    let speaker = tokio::spawn(run(
        config(port, 65000),
        rx,
        watch::channel(true).1,
        watch::channel(Vec::new()).0,
        stop.clone(),
    ));
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
            route_refresh: false,
            graceful_restart: None,
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
