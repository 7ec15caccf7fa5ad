//! The seven drills with client traffic, through real IPVS: a guest of the
//! kernel lab (Debian's kernel under qemu) runs `ha-tests drill NAME --tier
//! ipvs` for each (`netdrills::run_in_kernel_lab`), the same scenario code
//! as the host tier's network-namespace drills (`tests/drills.rs`), with
//! every member programming IPVS and two backends behind the VIPs. Every
//! promise of every drill must hold (docs/drills.md): no acknowledged
//! command lost, no split brain, no failed request where none may fail (a
//! follower crash, a partition, a leadership transfer and a drain, a
//! rolling restart), the VIP of a crashed member back.
//!
//! `rolling-restart` has its own guest and test: as the seventh drill of a
//! guest it lost one request (a timeout, not a reset, while another member
//! was starting: most likely the shared emulated CPUs, docs/drills.md) in
//! four of twelve lab runs of 2026-11-26, and alone in one of twelve
//! (in CI, 44 ms unanswered: not a timeout). The
//! six others lost a request once in sixteen runs (`minority-partition`,
//! in CI). So nextest retries both tests (.config/nextest.toml; a pass on
//! retry shows as FLAKY in the log).

fn check(drills: &[&str]) -> anyhow::Result<()> {
    let reports = ha_tests::netdrills::run_in_kernel_lab(drills)?;
    assert_eq!(reports.len(), drills.len());
    let mut failed = Vec::new();
    for r in &reports {
        // The figures go to the test's output, for the CI log.
        println!("{r}");
        if r["passed"] != true {
            failed.push(format!(
                "{}: {}",
                r["drill"],
                r.get("failures")
                    .or_else(|| r.get("error"))
                    .map_or_else(|| "no reason given".to_owned(), ToString::to_string)
            ));
        }
    }
    assert!(
        failed.is_empty(),
        "drills failed in the kernel lab:\n{}",
        failed.join("\n")
    );
    Ok(())
}

#[test]
fn crashes_partitions_transfer_and_drain_pass_through_real_ipvs() -> anyhow::Result<()> {
    let drills: Vec<&str> = ha_tests::netdrills::NET_DRILLS
        .into_iter()
        .filter(|d| *d != "rolling-restart")
        .collect();
    assert_eq!(drills.len(), 6);
    check(&drills)
}

#[test]
fn rolling_restart_passes_through_real_ipvs() -> anyhow::Result<()> {
    check(&["rolling-restart"])
}
