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
//! `rolling-restart` has its own guest and test, so that each guest's run
//! stays short. Neither test is retried. The lost requests of earlier lab
//! runs had two causes, both found with the members' logs and fixed: a
//! reset the flow hand-over missed after a leadership change (the
//! announcer), and answers that the 300 ms timeout of the time called
//! failed while the emulated guest stopped for a moment at a member's
//! start-up (the drills' timeout). One earlier failure (`minority-partition`,
//! in CI without traffic detail) was never captured; docs/drills.md.

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
    let drills: Vec<&str> = ha_tests::netdrills::ipvs_tier()
        .into_iter()
        .filter(|d| *d != "rolling-restart" && !ha_tests::netdrills::IPVS_ONLY_DRILLS.contains(d))
        .collect();
    assert_eq!(drills.len(), 6);
    check(&drills)
}

#[test]
fn rolling_restart_passes_through_real_ipvs() -> anyhow::Result<()> {
    check(&["rolling-restart"])
}

/// Issue 21: 200 long-lived connections and a UDP client through a lost
/// member's VIP, carried on by the member that takes it over (IPVS
/// connection sync, masquerade to the VIP) and through the failback; the
/// same by direct routing.
#[test]
fn established_connections_survive_the_owners_crash_and_failback() -> anyhow::Result<()> {
    check(&["owner-crash-established", "owner-crash-established-dr"])
}

/// Issue 21: new connections as fast as the lab makes them, with the
/// connection sync and without: none fails, and a backup holds every one
/// of the owner's connections within 10 s of the load's end.
#[test]
fn the_connection_sync_keeps_up_with_new_connections() -> anyhow::Result<()> {
    check(&["connection-sync-lag"])
}

/// Issue 22: HTTP health checks through real IPVS: a backend whose server
/// is killed, and one whose link is cut, get no new request within 3.5 s
/// and are back once they recover; a backend flapping faster than the
/// hysteresis barely changes the table, while a real outage does.
#[test]
fn health_checks_take_dead_backends_out_and_ignore_flapping() -> anyhow::Result<()> {
    check(&["dead-backend", "flapping-backend"])
}
