//! The drills through a real router (`routerdrills.rs`: FRR with BFD and
//! graceful restart, a client behind it), every drill in both modes, once:
//! each report must pass (no request failed where none may, no path that
//! had to stay ever left the router's kernel table), and a lost or stalled
//! member's routes must be gone far below the BGP hold time (9 s), by BFD.
//! Ten release runs of each, with figures: docs/drills.md.

use ha_tests::routerdrills::{Mode, ROUTER_DRILLS, run};

#[test]
fn every_router_drill_passes_in_both_modes() -> anyhow::Result<()> {
    let mut failed = Vec::new();
    for name in ROUTER_DRILLS {
        for mode in [Mode::Owner, Mode::Ecmp] {
            // The cost drill's check (BFD at 50 ms steady for 30 s under
            // no load) does not depend on the mode.
            if name == "bgp-bfd-cost" && mode == Mode::Ecmp {
                continue;
            }
            // Its own test below.
            if name == "learner-scale-out" {
                continue;
            }
            let report = run(name, mode)?;
            let line = report.value();
            eprintln!("{line}");
            if !report.passed {
                failed.push(format!("{name} ({}): {:?}", mode.name(), report.failures));
            }
            if matches!(name, "bgp-machine-lost" | "bgp-stalled-member") {
                let gone = line["victim_routes_gone_ms"].as_u64();
                if gone.is_none_or(|ms| ms >= 3_000) {
                    failed.push(format!(
                        "{name} ({}): the member's routes gone after {gone:?} ms, not by BFD",
                        mode.name()
                    ));
                }
            }
        }
    }
    assert!(failed.is_empty(), "{failed:#?}");
    Ok(())
}

/// Learners join under traffic in ECMP mode and serve; a voter's loss
/// elects a voter, a learner's elects nobody (issue 23).
#[test]
fn learners_scale_out_and_their_loss_costs_only_their_flows() -> anyhow::Result<()> {
    let report = run("learner-scale-out", Mode::Ecmp)?;
    eprintln!("{}", report.value());
    assert!(report.passed, "{:?}", report.failures);
    Ok(())
}
