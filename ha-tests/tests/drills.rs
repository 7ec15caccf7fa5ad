//! Every host-tier drill, as a test: the fault is injected into a real
//! three-member cluster under a steady stream of writes (and, for the
//! network-namespace drills, client requests to a VIP and an ARP capture),
//! and the drill's own promises (a new leader, VIPs moved, nothing
//! acknowledged lost, no two members answering for one VIP, everyone
//! converged) must hold.

async fn drill(name: &str) -> anyhow::Result<()> {
    let report = ha_tests::drills::run_any(name).await?;
    println!("{}", report.json());
    anyhow::ensure!(report.passed, "drill {name} failed: {}", report.json());
    anyhow::ensure!(report.commands_lost == Some(0), "{}", report.json());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_crash() -> anyhow::Result<()> {
    drill("leader-crash").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follower_crash() -> anyhow::Result<()> {
    drill("follower-crash").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn owner_crash() -> anyhow::Result<()> {
    drill("owner-crash").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transfer_and_drain() -> anyhow::Result<()> {
    drill("transfer-and-drain").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_wiped() -> anyhow::Result<()> {
    drill("disk-wiped").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_isolated() -> anyhow::Result<()> {
    drill("leader-isolated").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn minority_partition() -> anyhow::Result<()> {
    drill("minority-partition").await
}
