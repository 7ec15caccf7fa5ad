//! Garbage on the peer port, a message from another cluster, from a member
//! not in the configuration, or with undecodable bytes: each is refused with
//! a log line naming the peer, and the cluster goes on as if nothing
//! happened.

use std::io::Write as _;
use std::time::Duration;

use ha_tests::{ClusterLayout, cluster_status, eventually};
use proto::peer::v1::Envelope;
use proto::peer::v1::peer_client::PeerClient;

const SERVICES: &str = include_str!("../../deploy/examples/services.toml");

async fn send_one(port: u16, envelope: Envelope) -> Result<(), tonic::Status> {
    let mut client = PeerClient::connect(format!("http://127.0.0.1:{port}"))
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    client
        .send(tokio_stream::iter([envelope]))
        .await
        .map(|_| ())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_peer_input_is_refused_and_named() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let layout = ClusterLayout::write(dir.path(), 3, SERVICES, "good-cluster")?;
    let mut members = layout.start_all()?;
    let leader = eventually("a leader", Duration::from_secs(20), || async {
        let s = cluster_status(&members[&1]).await?;
        Ok((s.leader != 0).then_some(s.leader))
    })
    .await?;
    let port = layout.peer_ports[0];

    // Raw garbage, and a truncated HTTP/2 preface.
    for junk in [vec![0xde_u8; 4096], b"PRI * HTTP/2.0\r\n".to_vec()] {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
        let _ = s.write_all(&junk);
    }

    // Another cluster's message.
    let valid_raft_bytes = {
        use protobuf::Message as _;
        raft::eraftpb::Message {
            from: 2,
            to: 1,
            ..Default::default()
        }
        .write_to_bytes()?
    };
    let err = send_one(
        port,
        Envelope {
            cluster_id: "other-cluster".into(),
            from: 2,
            to: 1,
            message: valid_raft_bytes.clone(),
            ..Default::default()
        },
    )
    .await
    .expect_err("another cluster is refused");
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
    assert!(
        err.message().contains("\"other-cluster\""),
        "{}",
        err.message()
    );
    // Not a member.
    let err = send_one(
        port,
        Envelope {
            cluster_id: "good-cluster".into(),
            from: 99,
            to: 1,
            message: valid_raft_bytes,
            ..Default::default()
        },
    )
    .await
    .expect_err("a stranger is refused");
    assert!(
        err.message().contains("member 99") && err.message().contains("not a member"),
        "{}",
        err.message()
    );
    // Undecodable bytes from a real member id.
    let err = send_one(
        port,
        Envelope {
            cluster_id: "good-cluster".into(),
            from: 2,
            to: 1,
            message: vec![0xff; 37],
            ..Default::default()
        },
    )
    .await
    .expect_err("garbage is refused");
    assert!(
        err.message().contains("undecodable raft message"),
        "{}",
        err.message()
    );

    // A beat (no Raft message) whose view does not add up.
    let err = send_one(
        port,
        Envelope {
            cluster_id: "good-cluster".into(),
            from: 2,
            to: 1,
            hears: vec![1, 3],
            hears_applied: vec![7],
            ..Default::default()
        },
    )
    .await
    .expect_err("a malformed view is refused");
    assert!(
        err.message()
            .contains("2 members heard but 1 applied indexes"),
        "{}",
        err.message()
    );

    let m1 = members.get_mut(&1).expect("member 1");
    m1.wait_for_log("not this cluster's", Duration::from_secs(5))?;
    m1.wait_for_log("member 99", Duration::from_secs(5))?;
    m1.wait_for_log("undecodable raft message", Duration::from_secs(5))?;
    assert!(!m1.log().contains("panicked"), "{}", m1.log());

    // Nothing changed for the cluster: same leader, everyone alive and caught up.
    for (id, m) in &members {
        let s = cluster_status(m).await?;
        assert_eq!(s.leader, leader, "member {id} sees the same leader");
    }
    Ok(())
}
