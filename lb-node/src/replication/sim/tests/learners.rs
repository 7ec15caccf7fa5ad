//! Learners (issue 23): members that replicate the table, own and
//! announce VIPs, and never vote nor lead; promoted and demoted through
//! Raft.

use std::collections::BTreeMap;
use std::net::IpAddr;

use super::{load, seeds};
use crate::replication::sim::Sim;

/// The VIP owners as member `id` sees them.
fn owners(sim: &Sim, id: u64) -> BTreeMap<IpAddr, u64> {
    sim.state(id).expect("up").vip_owners().clone()
}

#[test]
fn learners_own_vips_and_never_vote_nor_lead() {
    // A long scenario: a quarter of the seeds by default (`SIM_SEEDS`
    // searches deeper).
    for seed in 0..seeds().div_ceil(4) {
        let mut sim = Sim::new(3, seed);
        sim.check_announcements = true;
        assert!(sim.run_until_converged(5_000), "seed {seed}: no leader");
        for id in [4, 5] {
            sim.new_process(id);
            assert!(sim.propose_join(id, true), "seed {seed}: add {id}");
            load(&mut sim, 300);
            assert!(
                sim.run_until_converged(10_000),
                "seed {seed}: no convergence after adding learner {id}:\n{}",
                sim.describe()
            );
        }
        sim.run(2_000);
        for id in sim.ids() {
            let v = sim.view(id).expect("up");
            assert_eq!(v.voters, vec![1, 2, 3], "seed {seed}: member {id}");
            assert_eq!(v.learners, vec![4, 5], "seed {seed}: member {id}");
        }
        // The learners hold leases, take their share and announce it.
        let leader = sim.leader().expect("a leader");
        let mut counts = BTreeMap::<u64, usize>::new();
        for owner in owners(&sim, leader).values() {
            *counts.entry(*owner).or_default() += 1;
        }
        let (least, most) = (
            counts.values().min().copied().unwrap_or(0),
            counts.values().max().copied().unwrap_or(0),
        );
        assert!(
            counts.keys().copied().eq(1..=5) && most - least <= 1,
            "seed {seed}: owners {counts:?}"
        );
        for id in [4, 5] {
            assert_eq!(
                sim.announced(id).len(),
                counts[&id],
                "seed {seed}: learner {id}"
            );
        }

        // Only the leader loses learner 5: the other voters still hear it,
        // so its lease holds and it goes on announcing (until, out of
        // touch with any leader, it stops by itself); nobody else may
        // announce its VIPs meanwhile, and every VIP stays announced.
        let vips = owners(&sim, leader).len();
        sim.cut_one_way(leader, 5);
        sim.cut_one_way(5, leader);
        sim.run(6_000);
        assert!(
            sim.split_brain.is_empty(),
            "seed {seed}: split brain: {:?}",
            &sim.split_brain[..sim.split_brain.len().min(5)]
        );
        assert_eq!(sim.announcers().len(), vips, "seed {seed}: unannounced");
        sim.heal();
        sim.run(3_000);

        // The leader crashes: a voter leads next, never a learner, and the
        // learners go on announcing.
        sim.crash(leader);
        load(&mut sim, 3_000);
        let new = sim.leader().expect("a new leader");
        assert!(
            new != leader && new <= 3,
            "seed {seed}: member {new} leads:\n{}",
            sim.describe()
        );
        for id in [4, 5] {
            assert!(!sim.announced(id).is_empty(), "seed {seed}: learner {id}");
        }

        // A learner crashes: its VIPs move, nobody else's.
        let before = owners(&sim, new);
        sim.crash(4);
        sim.run(3_000);
        let after = owners(&sim, new);
        assert!(
            !after.values().any(|o| *o == 4),
            "seed {seed}: the dead learner still owns VIPs: {after:?}"
        );
        for (vip, owner) in &before {
            if *owner != 4 {
                assert_eq!(after.get(vip), Some(owner), "seed {seed}: {vip} moved");
            }
        }

        // Learner 5 is promoted, then demoted again.
        assert!(sim.propose_member_role(5, false), "seed {seed}: promote");
        load(&mut sim, 1_000);
        let voters: Vec<u64> = [1, 2, 3, 5]
            .into_iter()
            .filter(|id| *id != leader)
            .collect();
        let all_voters = {
            let mut v = voters.clone();
            v.push(leader);
            v.sort_unstable();
            v
        };
        assert_eq!(sim.voters(new), all_voters, "seed {seed}: after promotion");
        assert!(sim.propose_member_role(5, true), "seed {seed}: demote");
        load(&mut sim, 1_000);
        let v = sim.view(new).expect("up");
        assert_eq!(v.learners, vec![4, 5], "seed {seed}: after demotion");

        sim.start(leader);
        sim.start(4);
        assert!(
            sim.run_until_converged(20_000),
            "seed {seed}: no convergence at the end:\n{}",
            sim.describe()
        );
        assert!(
            sim.split_brain.is_empty(),
            "seed {seed}: split brain: {:?}",
            &sim.split_brain[..sim.split_brain.len().min(5)]
        );
        if let Err(e) = sim.check_invariants() {
            panic!("seed {seed}: {e}");
        }
    }
}
