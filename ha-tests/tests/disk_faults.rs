//! Disk faults under a running cluster (root: a loop-mounted ext4 holds
//! one member's data directory). A filesystem that turns read-only after
//! an error (ext4's `errors=remount-ro`, triggered through sysfs) stops
//! the member with a clear error and exit status 1, not an abort, and
//! the others go on committing.

use std::time::Duration;

use ha_tests::disk::LoopFs;
use ha_tests::{ClusterLayout, cluster_status, eventually, replace_file};

const SERVICES: &str = "[[service]]\nname = \"web\"\nvip = \"192.0.2.10\"\nport = 80\nprotocol = \"tcp\"\nscheduler = \"rr\"\n\n[[service.backend]]\naddress = \"198.51.100.1\"\nport = 8080\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_filesystem_turned_read_only_stops_the_member_cleanly() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let layout = ClusterLayout::write(dir.path(), 3, SERVICES, "disk-faults")?;
    let fs = LoopFs::mount(&dir.path().join("disk.img"), &dir.path().join("data-1"))?;
    let mut members = layout.start_all()?;
    eventually("a leader", Duration::from_secs(20), || async {
        let s = cluster_status(&members[&2]).await?;
        Ok((s.leader != 0 && s.commit_index > 1).then_some(()))
    })
    .await?;

    fs.fail()?;
    // A change to commit: member 1 must write it to its log.
    replace_file(
        &layout.services,
        &SERVICES.replace("port = 8080", "port = 8081"),
    )?;
    let mut one = members
        .remove(&1)
        .ok_or_else(|| anyhow::anyhow!("member 1"))?;
    let status = one.wait_exit(Duration::from_secs(20))?;
    let log = one.log();
    assert_eq!(
        status.code(),
        Some(1),
        "a clean failure, not an abort: {status:?}\n{log}"
    );
    assert!(
        log.contains("the raft log's disk failed") && log.contains("the member stops"),
        "{log}"
    );
    // The others go on committing.
    let before = cluster_status(&members[&2]).await?.commit_index;
    replace_file(
        &layout.services,
        &SERVICES.replace("port = 8080", "port = 8082"),
    )?;
    eventually(
        "a commit without member 1",
        Duration::from_secs(20),
        || async { Ok((cluster_status(&members[&2]).await?.commit_index > before).then_some(())) },
    )
    .await?;
    drop(members);
    drop(fs);
    Ok(())
}
