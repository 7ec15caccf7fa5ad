//! Fault scenarios of the simulated cluster, each over many seeds. A failure
//! names its seed; the run replays exactly with that seed.

use super::{NetFaults, Sim};

/// Seeds per scenario: 128 since the simulation runs on in-memory logs
/// in one thread (16 on raft-engine logs took longer; docs/replication.md).
/// `SIM_SEEDS=N` runs N instead, for a deeper search.
fn seeds() -> u64 {
    std::env::var("SIM_SEEDS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(128)
}

/// Runs `scenario` for every seed and checks the cluster's promises after.
fn over_seeds(name: &str, members: u64, scenario: impl Fn(&mut Sim)) {
    for seed in 0..seeds() {
        let mut sim = Sim::new(members, seed);
        assert!(
            sim.run_until_converged(5_000),
            "{name}, seed {seed}: no leader at start:\n{}",
            sim.describe()
        );
        scenario(&mut sim);
        sim.faults = NetFaults::CALM;
        sim.heal();
        assert!(
            sim.run_until_converged(20_000),
            "{name}, seed {seed}: the cluster did not converge:\n{}",
            sim.describe()
        );
        if let Err(e) = sim.check_invariants() {
            panic!("{name}, seed {seed}: {e}");
        }
        assert!(
            !sim.acknowledged.is_empty(),
            "{name}, seed {seed}: nothing was acknowledged, the test proved nothing"
        );
    }
}

/// Proposes in small bursts for `ms`, through whoever leads.
fn load(sim: &mut Sim, ms: u64) {
    let mut t = 0;
    while t < ms {
        sim.propose(3);
        sim.run(25);
        t += 25;
    }
}

fn follower(sim: &Sim) -> u64 {
    let leader = sim.leader().expect("a leader");
    sim.ids()
        .into_iter()
        .find(|id| *id != leader && sim.is_up(*id))
        .expect("a follower")
}

#[test]
fn leader_crash_loses_no_acknowledged_command() {
    over_seeds("leader crash", 3, |sim| {
        load(sim, 300);
        let leader = sim.leader().expect("a leader");
        sim.crash(leader);
        let before = sim.acknowledged.len();
        load(sim, 1_500);
        assert_ne!(sim.leader(), Some(leader));
        assert!(
            sim.acknowledged.len() > before,
            "the new leader must acknowledge new commands"
        );
        sim.start(leader);
        load(sim, 300);
    });
}

#[test]
fn minority_partition_keeps_the_majority_serving() {
    over_seeds("minority partition", 5, |sim| {
        load(sim, 200);
        let f = follower(sim);
        sim.isolate(&[f]);
        load(sim, 1_000);
    });
}

#[test]
fn leader_cut_into_the_minority_is_replaced() {
    over_seeds("majority partition", 5, |sim| {
        load(sim, 200);
        let leader = sim.leader().expect("a leader");
        let other = sim
            .ids()
            .into_iter()
            .find(|id| *id != leader)
            .expect("another member");
        // The old leader and one follower on one side, three on the other.
        sim.isolate(&[leader, other]);
        load(sim, 2_000);
        let new = sim.leader().expect("the majority elects a leader");
        assert!(
            new != leader && new != other,
            "the leader must be on the majority side"
        );
    });
}

#[test]
fn no_majority_anywhere_then_healed() {
    over_seeds("split three ways", 5, |sim| {
        load(sim, 200);
        sim.isolate(&[1, 2]);
        sim.isolate(&[3, 4]);
        load(sim, 1_500);
        sim.heal();
        load(sim, 500);
    });
}

#[test]
fn message_loss_duplication_and_reordering() {
    over_seeds("rough network", 3, |sim| {
        sim.faults = NetFaults::ROUGH;
        load(sim, 3_000);
    });
}

#[test]
fn follower_restart_replays_its_log() {
    over_seeds("follower restart", 3, |sim| {
        load(sim, 200);
        let f = follower(sim);
        let applied = sim.applied_index(f);
        let state = sim.state(f);
        let programmed = sim.dataplane(f).clone();
        sim.crash(f);
        load(sim, 400);
        sim.start(f);
        // Opened, before its first ready, it already holds what it had
        // applied: its dataplane is never programmed from an older state
        // (a restart would have wiped the kernel's table and refilled it).
        assert_eq!(sim.state_at_open(f), state, "replayed when opened");
        // Before it hears from the leader, it is back where it stopped.
        assert_eq!(sim.applied_index(f), applied, "replayed up to where it was");
        assert_eq!(sim.state(f), state, "the same state as before the crash");
        assert_eq!(sim.dataplane(f), &programmed, "the same table programmed");
        load(sim, 200);
    });
}

#[test]
fn wiped_member_rejoins_from_a_snapshot() {
    over_seeds("wiped disk", 3, |sim| {
        load(sim, 200);
        let f = follower(sim);
        sim.crash(f);
        // Enough entries that the others compact their logs past what the
        // wiped member would need: only a snapshot can bring it back.
        load(sim, 1_000);
        sim.wipe(f);
        sim.start(f);
        load(sim, 300);
        sim.run_until_converged(10_000);
        assert!(
            sim.snapshots_installed(f) > 0,
            "the wiped member must catch up from a snapshot"
        );
    });
}

#[test]
fn same_seed_same_run() {
    let run = |seed| {
        let mut sim = Sim::new(3, seed);
        sim.faults = NetFaults::ROUGH;
        load(&mut sim, 1_000);
        (
            sim.leader(),
            sim.acknowledged.len(),
            sim.ids()
                .iter()
                .map(|id| sim.applied_index(*id))
                .collect::<Vec<_>>(),
        )
    };
    assert_eq!(run(7), run(7));
}

#[test]
fn members_are_added_and_removed_through_raft() {
    for seed in 0..seeds() {
        let mut sim = Sim::new(3, seed);
        assert!(sim.run_until_converged(5_000), "seed {seed}: no leader");
        load(&mut sim, 200);
        // Two new machines join one at a time; each catches up by snapshot
        // or log, whichever the leader still has.
        for id in [4, 5] {
            sim.new_process(id);
            assert!(sim.propose_add_member(id), "seed {seed}: add {id} proposed");
            load(&mut sim, 300);
            assert!(
                sim.run_until_converged(10_000),
                "seed {seed}: no convergence after adding {id}:\n{}",
                sim.describe()
            );
        }
        for id in sim.ids() {
            assert_eq!(
                sim.voters(id),
                vec![1, 2, 3, 4, 5],
                "seed {seed}: member {id}"
            );
        }
        // Member 1 is removed, then shut down. A leader cannot remove
        // itself: leadership moves away first.
        if sim.leader() == Some(1) {
            assert!(
                !sim.propose_remove_member(1),
                "seed {seed}: a leader must not remove itself"
            );
            sim.transfer_leader(2);
            sim.run(1_000);
            assert_eq!(sim.leader(), Some(2), "seed {seed}");
        }
        assert!(sim.propose_remove_member(1), "seed {seed}: remove proposed");
        load(&mut sim, 1_500);
        sim.crash(1);
        load(&mut sim, 300);
        assert!(
            sim.run_until_converged(10_000),
            "seed {seed}: no convergence after removing 1:\n{}",
            sim.describe()
        );
        for id in 2..=5 {
            assert_eq!(sim.voters(id), vec![2, 3, 4, 5], "seed {seed}: member {id}");
            assert!(!sim.state(id).expect("up").members().contains_key(&1));
        }
        if let Err(e) = sim.check_invariants() {
            panic!("seed {seed}: {e}");
        }
    }
}

#[test]
fn leadership_is_transferred_to_the_named_member() {
    for seed in 0..seeds() {
        let mut sim = Sim::new(3, seed);
        assert!(sim.run_until_converged(5_000), "seed {seed}: no leader");
        load(&mut sim, 200);
        let target = follower(&sim);
        sim.transfer_leader(target);
        sim.run(1_000);
        assert_eq!(
            sim.leader(),
            Some(target),
            "seed {seed}:\n{}",
            sim.describe()
        );
        load(&mut sim, 200);
        assert!(sim.run_until_converged(5_000));
        if let Err(e) = sim.check_invariants() {
            panic!("seed {seed}: {e}");
        }
    }
}

/// The VIP ownership and announcement scenarios.
mod learners;
mod vips;
