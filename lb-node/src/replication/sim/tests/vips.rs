//! Who announces which VIP, through crashes, partitions, drains, clean
//! stops and slow starts: never two members at once, and a dead owner's
//! VIPs back within bounds.

use super::{follower, seeds};
use crate::replication::sim::{NetFaults, STEP_MS, Sim};

/// Owner counts per member as member `id` sees them.
fn owner_counts(sim: &Sim, id: u64) -> std::collections::BTreeMap<u64, usize> {
    let mut counts = std::collections::BTreeMap::new();
    for owner in sim.state(id).expect("up").vip_owners().values() {
        *counts.entry(*owner).or_default() += 1;
    }
    counts
}

#[test]
fn vips_move_off_crashed_and_drained_members() {
    use crate::model::Command;
    for seed in 0..seeds() {
        let mut sim = Sim::new(3, seed);
        assert!(sim.run_until_converged(5_000), "seed {seed}: no leader");
        // Nine services, nine VIPs: three each.
        sim.propose(9);
        sim.run(1_000);
        let leader = sim.leader().expect("a leader");
        let counts = owner_counts(&sim, leader);
        assert_eq!(
            counts.values().copied().collect::<Vec<_>>(),
            vec![3, 3, 3],
            "seed {seed}: {counts:?}"
        );

        // A follower dies: its VIPs go to the two others.
        let dead = follower(&sim);
        sim.crash(dead);
        sim.run(2_000);
        let leader = sim.leader().expect("a leader");
        let counts = owner_counts(&sim, leader);
        assert!(
            !counts.contains_key(&dead),
            "seed {seed}: the dead member still owns VIPs: {counts:?}"
        );
        assert_eq!(counts.values().sum::<usize>(), 9);

        // The other follower is drained: the leader owns everything.
        let drained = sim
            .ids()
            .into_iter()
            .find(|id| *id != leader && *id != dead)
            .expect("another");
        assert!(sim.propose_command(Command::SetMemberDrained {
            member: drained,
            drained: true
        }));
        sim.run(1_000);
        assert_eq!(
            owner_counts(&sim, leader),
            std::collections::BTreeMap::from([(leader, 9)]),
            "seed {seed}"
        );

        // Back to three: balanced again, every member agreeing.
        sim.start(dead);
        assert!(sim.propose_command(Command::SetMemberDrained {
            member: drained,
            drained: false
        }));
        sim.run(2_000);
        assert!(sim.run_until_converged(5_000), "seed {seed}");
        for id in sim.ids() {
            let counts = owner_counts(&sim, id);
            assert_eq!(
                counts.values().copied().collect::<Vec<_>>(),
                vec![3, 3, 3],
                "seed {seed}, member {id}: {counts:?}"
            );
        }
        if let Err(e) = sim.check_invariants() {
            panic!("seed {seed}: {e}");
        }
    }
}

/// Runs until `vip` is announced by a member other than `not`, up to
/// `max_ms`; returns the virtual milliseconds it took.
fn time_until_announced_elsewhere(
    sim: &mut Sim,
    vip: std::net::IpAddr,
    not: u64,
    max_ms: u64,
) -> Option<u64> {
    let mut t = 0;
    while t <= max_ms {
        if sim
            .announcers()
            .get(&vip)
            .is_some_and(|owner| *owner != not)
        {
            return Some(t);
        }
        sim.run(STEP_MS);
        t += STEP_MS;
    }
    None
}

#[test]
fn no_vip_is_ever_announced_twice_and_a_dead_owners_vips_come_back() {
    let mut worst = 0;
    for seed in 0..seeds() {
        let mut sim = Sim::new(3, seed);
        sim.check_announcements = true;
        assert!(sim.run_until_converged(5_000), "seed {seed}: no leader");
        sim.propose(6);
        sim.run(2_000);
        let announcers = sim.announcers();
        assert_eq!(
            announcers.len(),
            6,
            "seed {seed}: every VIP announced: {announcers:?}"
        );

        // The owner of some VIP dies (the leader, for even seeds).
        let victim = if seed % 2 == 0 {
            sim.leader().expect("leader")
        } else {
            follower(&sim)
        };
        let vip = *announcers
            .iter()
            .find(|(_, m)| **m == victim)
            .expect("the victim announces a VIP")
            .0;
        sim.crash(victim);
        let took =
            time_until_announced_elsewhere(&mut sim, vip, victim, 5_000).unwrap_or_else(|| {
                panic!(
                    "seed {seed}: {vip} never announced again:\n{}",
                    sim.describe()
                )
            });
        worst = worst.max(took);

        // The leader is cut off from the others: it must stop announcing
        // before anyone else starts with its VIPs.
        sim.start(victim);
        sim.run(3_000);
        let leader = sim.leader().expect("leader");
        sim.isolate(&[leader]);
        sim.run(4_000);
        assert!(
            sim.announced(leader).is_empty(),
            "seed {seed}: an isolated member must withdraw"
        );
        sim.heal();
        sim.run(3_000);
        assert_eq!(
            sim.announcers().len(),
            6,
            "seed {seed}: all VIPs announced after healing"
        );

        // Graceful moves on a rough network: drain each member in turn;
        // the previous owners are alive and must stop before anyone starts.
        sim.faults = NetFaults::ROUGH;
        for id in sim.ids() {
            assert!(
                sim.propose_command(crate::model::Command::SetMemberDrained {
                    member: id,
                    drained: true
                }),
                "seed {seed}: drain proposed"
            );
            sim.run(1_500);
            assert!(
                sim.announced(id).is_empty(),
                "seed {seed}: drained member {id} still announces"
            );
            sim.propose_command(crate::model::Command::SetMemberDrained {
                member: id,
                drained: false,
            });
            sim.run(1_500);
        }
        sim.faults = NetFaults::CALM;
        sim.run(2_000);

        assert!(
            sim.split_brain.is_empty(),
            "seed {seed}: split brain: {:?}",
            &sim.split_brain[..sim.split_brain.len().min(5)]
        );
    }
    // Detection (no word for an election timeout, 0.5-1 s), a new leader's
    // grace, commit, then the new owner's fencing lease (0.5-1 s).
    assert!(worst <= 3_000, "worst time to re-announce: {worst} ms");
    eprintln!("worst time for a dead owner's VIP to be announced again: {worst} ms (virtual)");
}

#[test]
fn a_member_back_in_touch_announces_nothing_stale() {
    for seed in 0..seeds() {
        let mut sim = Sim::new(3, seed);
        sim.check_announcements = true;
        assert!(sim.run_until_converged(5_000), "seed {seed}: no leader");
        sim.propose(6);
        sim.run(2_000);
        let victim = follower(&sim);
        let vips = sim.announced(victim);
        assert!(
            !vips.is_empty(),
            "seed {seed}: the follower announces a VIP"
        );
        // Cut off, the member withdraws and the leader gives its VIPs away;
        // its own state still says they are its own.
        sim.isolate(&[victim]);
        sim.run(2_000);
        assert!(
            sim.announced(victim).is_empty(),
            "seed {seed}: cut off, it withdrew"
        );
        // Odd seeds: a new term begins while it is away (it did not vote),
        // so it comes back to a term newer than its state.
        if seed % 2 == 1 {
            let leader = sim.leader().expect("a leader");
            let other = sim
                .ids()
                .into_iter()
                .find(|id| *id != leader && *id != victim)
                .expect("a third member");
            sim.transfer_leader(other);
            sim.run(1_000);
            assert_eq!(sim.leader(), Some(other), "seed {seed}: leadership moved");
        }
        let moved = sim.announcers();
        assert!(
            vips.iter()
                .all(|v| moved.get(v).is_some_and(|m| *m != victim)),
            "seed {seed}: its VIPs are announced elsewhere: {moved:?}"
        );
        // Back in touch, heartbeats arrive (its lease holds again) but log
        // entries do not for 300 ms (less than a lease): it must not
        // announce from its stale state.
        sim.starved.insert(victim);
        sim.heal();
        sim.run(300);
        sim.starved.clear();
        sim.run(3_000);
        assert!(
            sim.split_brain.is_empty(),
            "seed {seed}: split brain: {:?}",
            &sim.split_brain[..sim.split_brain.len().min(5)]
        );
        assert_eq!(
            sim.announcers().len(),
            6,
            "seed {seed}: every VIP announced"
        );
    }
}

#[test]
fn a_member_heard_but_not_hearing_back_withdraws() {
    for seed in 0..seeds() {
        let mut sim = Sim::new(3, seed);
        sim.check_announcements = true;
        assert!(sim.run_until_converged(5_000), "seed {seed}: no leader");
        sim.propose(6);
        sim.run(2_000);
        let leader = sim.leader().expect("a leader");
        let victim = follower(&sim);
        assert!(
            !sim.announced(victim).is_empty(),
            "seed {seed}: it announces"
        );
        // Its messages to the leader are lost.
        sim.cut_one_way(victim, leader);
        // Of the leader's messages only heartbeats get through, as when a
        // TCP stream's acknowledgments are lost: it stalls, and the entry
        // that moves the member's VIPs never reaches it.
        sim.starved.insert(victim);
        sim.run(3_000);
        assert!(
            sim.announced(victim).is_empty(),
            "seed {seed}: a member the leader cannot hear must withdraw"
        );
        assert_eq!(
            sim.announcers().len(),
            6,
            "seed {seed}: its VIPs announced elsewhere"
        );
        sim.starved.clear();
        sim.heal();
        sim.run(3_000);
        assert!(
            sim.split_brain.is_empty(),
            "seed {seed}: split brain: {:?}",
            &sim.split_brain[..sim.split_brain.len().min(5)]
        );
    }
}

/// A member stopping cleanly (SIGTERM) first hands its VIPs over, and a
/// leader its leadership, with nothing committed about it: no split brain,
/// the leaving member announces nothing and owns nothing, every VIP is
/// announced by another member, and once it is back (a new process) it
/// takes its share again.
#[test]
fn a_leaving_member_hands_over_before_it_stops() {
    for seed in 0..seeds() {
        let mut sim = Sim::new(3, seed);
        assert!(sim.run_until_converged(5_000), "seed {seed}: no leader");
        sim.propose(9);
        sim.run(1_000);
        let leader = sim.leader().expect("a leader");
        // Odd seeds: the leader leaves; even seeds: a follower.
        let leaving = if seed % 2 == 1 {
            leader
        } else {
            follower(&sim)
        };
        sim.leave(leaving);
        let mut handed = None;
        for step in 0..400u64 {
            sim.run(5);
            let announcers = sim.announcers();
            let new_leader = sim.leader();
            if sim.announced(leaving).is_empty()
                && announcers.len() == 9
                && announcers.values().all(|m| *m != leaving)
                && new_leader.is_some_and(|l| l != leaving)
            {
                handed = Some(step * 5);
                break;
            }
        }
        let handed = handed.unwrap_or_else(|| {
            panic!(
                "seed {seed}: member {leaving} did not hand over in 2 s:\n{}",
                sim.describe()
            )
        });
        let state = sim.state(leaving).expect("still up");
        assert!(
            !state.drained_members().contains(&leaving),
            "seed {seed}: leaving was committed as a drain"
        );
        assert!(
            !state.vip_owners().values().any(|m| *m == leaving),
            "seed {seed}: it still owns VIPs"
        );
        // It stops, and comes back as a new process: eligible again.
        sim.crash(leaving);
        sim.start(leaving);
        sim.run(3_000);
        let leader = sim.leader().expect("a leader");
        assert!(
            owner_counts(&sim, leader)
                .get(&leaving)
                .copied()
                .unwrap_or(0)
                > 0,
            "seed {seed}: the restarted member got no VIP back"
        );
        assert!(
            sim.split_brain.is_empty(),
            "seed {seed}: split brain: {:?}",
            &sim.split_brain[..sim.split_brain.len().min(5)]
        );
        eprintln!("seed {seed}: member {leaving} handed over in {handed} ms (virtual)");
    }
}

/// A member that starts again takes no VIP, and announces none, until its
/// dataplane has programmed the table (lb-node tells it so): the others
/// carry every VIP meanwhile; once ready it gets its share back, with no
/// split brain. (Without the gate a restarted member got VIPs before its
/// kernel table existed: the kernel-lab drills saw it, docs/drills.md.)
#[test]
fn a_member_takes_no_vip_before_its_dataplane_is_ready() {
    for seed in 0..seeds() {
        let mut sim = Sim::new(3, seed);
        assert!(sim.run_until_converged(5_000), "seed {seed}: no leader");
        sim.propose(9);
        sim.run(1_000);
        let restarted = follower(&sim);
        sim.crash(restarted);
        sim.run(1_000);
        sim.start_unready(restarted);
        // Two seconds (virtual) of a slow first sync.
        for _ in 0..400 {
            sim.run(5);
            assert!(
                sim.announced(restarted).is_empty(),
                "seed {seed}: member {restarted} announces before its dataplane is ready"
            );
            if let Some(leader) = sim.leader() {
                assert_eq!(
                    owner_counts(&sim, leader).get(&restarted),
                    None,
                    "seed {seed}: member {restarted} was given VIPs before it was ready:\n{}",
                    sim.describe()
                );
            }
        }
        assert_eq!(
            sim.announcers().len(),
            9,
            "seed {seed}: the others carry every VIP meanwhile:\n{}",
            sim.describe()
        );
        sim.dataplane_ready(restarted);
        let mut back = None;
        for step in 0..400u64 {
            sim.run(5);
            if !sim.announced(restarted).is_empty() {
                back = Some(step * 5);
                break;
            }
        }
        let back = back.unwrap_or_else(|| {
            panic!(
                "seed {seed}: member {restarted} got no VIP within 2 s of being ready:\n{}",
                sim.describe()
            )
        });
        assert!(
            sim.split_brain.is_empty(),
            "seed {seed}: split brain: {:?}",
            &sim.split_brain[..sim.split_brain.len().min(5)]
        );
        eprintln!("seed {seed}: member {restarted} announcing {back} ms (virtual) after ready");
    }
}

/// A leader's crash withdraws no VIP of a live member (ARCHITECTURE.md,
/// rules 5 and 8): from the crash until a new leader has given the dead
/// leader's VIPs away, at every step, each survivor announces every VIP it
/// announced before and goes on serving (what BGP's ECMP mode and the
/// service CIDRs announce). Before leases held without a leader, every
/// member withdrew everything for about an election.
#[test]
fn a_leader_crash_withdraws_no_vip_of_a_live_member() {
    use std::collections::{BTreeMap, BTreeSet};
    for seed in 0..seeds() {
        let mut sim = Sim::new(3, seed);
        sim.check_announcements = true;
        assert!(sim.run_until_converged(5_000), "seed {seed}: no leader");
        sim.propose(6);
        sim.run(2_000);
        let leader = sim.leader().expect("a leader");
        let survivors: Vec<u64> = sim.ids().into_iter().filter(|id| *id != leader).collect();
        let before: BTreeMap<u64, BTreeSet<std::net::IpAddr>> = survivors
            .iter()
            .map(|id| (*id, sim.announced(*id)))
            .collect();
        assert!(
            before.values().all(|v| !v.is_empty()),
            "seed {seed}: each survivor announces: {before:?}"
        );
        assert!(survivors.iter().all(|id| sim.serving(*id)), "seed {seed}");
        sim.crash(leader);
        let mut t = 0;
        while t < 3_000 {
            sim.run(STEP_MS);
            t += STEP_MS;
            for id in &survivors {
                let now = sim.announced(*id);
                assert!(
                    before[id].is_subset(&now),
                    "seed {seed}: {t} ms after the leader's crash member {id} announces {now:?}, not all of {:?}",
                    before[id]
                );
                assert!(
                    sim.serving(*id),
                    "seed {seed}: {t} ms after the leader's crash member {id} stopped serving"
                );
            }
        }
        assert_eq!(
            sim.announcers().len(),
            6,
            "seed {seed}: the dead leader's VIPs announced again"
        );
        assert!(
            sim.split_brain.is_empty(),
            "seed {seed}: split brain: {:?}",
            &sim.split_brain[..sim.split_brain.len().min(5)]
        );
    }
}

/// The leader loses a member that the other member still hears (their
/// link cut, the rest fine): the member's lease holds (a quorum hears it),
/// so it announces on, and the leader must not give its VIPs away on its
/// own silence; only once the member has stopped (out of touch with any
/// leader for the leaderless grace) do they move. At no step do two
/// members announce one VIP. A lease that counts only the leader's ear
/// gives a split brain here.
#[test]
fn a_member_only_the_leader_lost_is_not_announced_over() {
    for seed in 0..seeds() {
        let mut sim = Sim::new(3, seed);
        sim.check_announcements = true;
        assert!(sim.run_until_converged(5_000), "seed {seed}: no leader");
        sim.propose(6);
        sim.run(2_000);
        let leader = sim.leader().expect("a leader");
        let cut = follower(&sim);
        assert!(!sim.announced(cut).is_empty(), "seed {seed}");
        sim.cut_one_way(leader, cut);
        sim.cut_one_way(cut, leader);
        sim.run(6_000);
        assert!(
            sim.split_brain.is_empty(),
            "seed {seed}: split brain: {:?}",
            &sim.split_brain[..sim.split_brain.len().min(5)]
        );
        assert_eq!(
            sim.announcers().len(),
            6,
            "seed {seed}: every VIP announced by somebody"
        );
        sim.heal();
        sim.run(3_000);
        assert!(
            sim.split_brain.is_empty(),
            "seed {seed}: split brain after the heal: {:?}",
            &sim.split_brain[..sim.split_brain.len().min(5)]
        );
        assert_eq!(sim.announcers().len(), 6, "seed {seed}");
    }
}

/// The leader dies in the middle of a VIP move (a member is drained: its
/// VIPs are released, then given to others in a second commit): the new
/// leader inherits the half-done move and finishes it; at no step do two
/// members announce one VIP, and every VIP is announced again.
#[test]
fn a_leader_crash_in_the_middle_of_a_vip_move_finishes_it_safely() {
    use crate::model::Command;
    for seed in 0..seeds() {
        let mut sim = Sim::new(3, seed);
        sim.check_announcements = true;
        assert!(sim.run_until_converged(5_000), "seed {seed}: no leader");
        sim.propose(6);
        sim.run(2_000);
        let leader = sim.leader().expect("a leader");
        let drained = follower(&sim);
        assert!(sim.propose_command(Command::SetMemberDrained {
            member: drained,
            drained: true
        }));
        // Until the leader has released the drained member's VIPs (some
        // VIP without an owner), then it dies.
        let mut t = 0;
        while t < 2_000 {
            sim.run(STEP_MS);
            t += STEP_MS;
            let state = sim.state(leader).expect("the leader is up");
            if state.vip_owners().len() < 6 {
                break;
            }
        }
        assert!(t < 2_000, "seed {seed}: no VIP was ever released");
        sim.crash(leader);
        sim.run(4_000);
        assert!(
            sim.split_brain.is_empty(),
            "seed {seed}: split brain: {:?}",
            &sim.split_brain[..sim.split_brain.len().min(5)]
        );
        assert!(
            sim.announced(drained).is_empty(),
            "seed {seed}: the drained member announces"
        );
        assert_eq!(
            sim.announcers().len(),
            6,
            "seed {seed}: every VIP announced after the new leader finished the move"
        );
    }
}
