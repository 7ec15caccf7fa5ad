//! Three lb-node processes on loopback form a Raft cluster. The leader is
//! killed with SIGKILL: the two survivors elect a new leader and keep
//! serving (a change to the services file still reaches both); the killed
//! member restarts, replays its log and rejoins with the same table.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use ha_tests::{ClusterLayout, Member, cluster_status, eventually};
use proto::admin::v1 as pb;

const SERVICES: &str = include_str!("../../deploy/examples/services.toml");

async fn weight_of_web(member: &Member) -> anyhow::Result<Option<u32>> {
    let services = member
        .client()
        .await?
        .list_services(pb::ListServicesRequest { name: "web".into() })
        .await?
        .into_inner()
        .services;
    Ok(services
        .first()
        .and_then(|s| s.backends.first())
        .map(|b| b.weight))
}

/// Waits until the members agree on one leader (among them) and have all
/// applied the same index; returns the leader's id.
async fn settled(members: &BTreeMap<u64, Member>, timeout: Duration) -> anyhow::Result<u64> {
    eventually("one leader, everyone caught up", timeout, || async {
        let mut leaders = Vec::new();
        let mut applied = Vec::new();
        for m in members.values() {
            let s = cluster_status(m).await?;
            leaders.push(s.leader);
            applied.push(s.applied_index);
        }
        let leader = leaders[0];
        let agreed =
            leader != 0 && leaders.iter().all(|l| *l == leader) && members.contains_key(&leader);
        let caught_up = applied.iter().all(|a| *a == applied[0]);
        Ok((agreed && caught_up).then_some(leader))
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_killed_survivors_serve_and_it_rejoins() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let layout = ClusterLayout::write(dir.path(), 3, SERVICES, "test-cluster")?;
    let mut members = layout.start_all()?;
    let leader = settled(&members, Duration::from_secs(20)).await?;
    // The leader proposes the file's table once it leads: "settled" can
    // come first (everyone at the election's entry), so the table is
    // waited for, not assumed (run-all on ec29b79 failed here once:
    // "no service matches web" one second in).
    for m in members.values() {
        eventually(
            "every member serves the file's table",
            Duration::from_secs(10),
            || async { Ok((weight_of_web(m).await.ok().flatten() == Some(3)).then_some(())) },
        )
        .await?;
    }

    // kill -9 the leader.
    let mut killed = members.remove(&leader).expect("leader is a member");
    killed.signal("KILL")?;
    killed.wait_exit(Duration::from_secs(5))?;
    let t0 = Instant::now();
    let new_leader = settled(&members, Duration::from_secs(10)).await?;
    let failover = t0.elapsed();
    assert_ne!(new_leader, leader);
    eprintln!("new leader {new_leader} after {failover:?}");

    // The survivors keep serving changes: the new leader's source proposes
    // the edit and both survivors apply it.
    let edited = SERVICES.replacen("weight = 3", "weight = 5", 1);
    ha_tests::replace_file(&layout.services, &edited)?;
    for m in members.values() {
        eventually(
            "the edit on every survivor",
            Duration::from_secs(10),
            || async { Ok((weight_of_web(m).await? == Some(5)).then_some(())) },
        )
        .await?;
    }

    // The killed member restarts from its disk, replays and catches up.
    drop(killed);
    let mut restarted = Member::start(&layout.config(leader))?;
    restarted.wait_for_log("raft node started", Duration::from_secs(5))?;
    members.insert(leader, restarted);
    settled(&members, Duration::from_secs(20)).await?;
    let rejoined = &members[&leader];
    assert_eq!(
        weight_of_web(rejoined).await?,
        Some(5),
        "the rejoined member has the change made while it was down"
    );
    let log = rejoined.log();
    assert!(!log.contains("ERROR"), "clean restart expected:\n{log}");
    for m in members.values() {
        let s = cluster_status(m).await?;
        assert_eq!(s.voters, vec![1, 2, 3]);
    }
    Ok(())
}

/// A member whose snapshot file was damaged while it was stopped refuses to
/// start, naming the file and what is wrong, rather than start empty.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_snapshot_stops_the_member_by_name() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let layout = ClusterLayout::write(dir.path(), 1, SERVICES, "solo")?;
    let mut member = Member::start(&layout.config(1))?;
    member.wait_for_log("services file loaded", Duration::from_secs(20))?;
    member.signal("TERM")?;
    assert!(member.wait_exit(Duration::from_secs(10))?.success());

    let snapshot = dir.path().join("data-1/snapshot.bin");
    let mut bytes = std::fs::read(&snapshot)?;
    let last = bytes.len() - 1;
    bytes[last] ^= 0x01;
    std::fs::write(&snapshot, bytes)?;

    let out = std::process::Command::new(ha_tests::binary("lb-node")?)
        .arg("--config")
        .arg(layout.config(1))
        .output()?;
    assert!(
        !out.status.success(),
        "a damaged snapshot must stop the member"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("snapshot.bin") && err.contains("checksum mismatch"),
        "{err}"
    );
    Ok(())
}
