//! Three members' `Ownership`s, no Raft: the tests play the log
//! (what is committed, and who has applied it) and the network (who
//! hears whom) by hand.

use super::*;
use crate::model::Command;

/// The lease (election timeout) and heartbeat, in ticks.
const E: u64 = 10;
const H: u64 = 2;

struct Node {
    o: Ownership,
    v: RaftView,
    state: State,
}

struct Lab {
    nodes: Vec<Node>,
    /// Members cut off from everyone.
    cut: BTreeSet<u64>,
    leader: u64,
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("address")
}

/// Members 1-3 with `leader` leading term 2 and every member's vote,
/// `vips` (as gateways: owned without services) owned as `owners`;
/// `disk_term` 2 makes every member wait a full lease in touch before
/// it may announce (its state is not proven current by the term).
fn lab(leader: u64, vips: &[&str], owners: &[(&str, u64)], unready: &[u64], disk_term: u64) -> Lab {
    let scope = AnnounceScope {
        aggregates: Vec::new(),
        gateways: vips.iter().map(|v| ip(v)).collect(),
    };
    let mut state = State::default();
    state
        .apply(&Command::SetVipOwners(
            owners.iter().map(|(v, m)| (ip(v), *m)).collect(),
        ))
        .expect("owners");
    let nodes = (1..=3)
        .map(|me| Node {
            o: Ownership::new(
                OwnershipConfig {
                    me,
                    election_ticks: E,
                    heartbeat_ticks: H,
                    scope: scope.clone(),
                    serve_while_leaving: false,
                    wait_for_dataplane: unready.contains(&me),
                    wait_for_announcer: false,
                },
                disk_term,
                100 + me,
            ),
            v: RaftView {
                now: 0,
                voters: vec![1, 2, 3],
                learners: vec![],
                leader,
                is_leader: me == leader,
                term: 2,
                vote: leader,
                applied: 1,
                applied_term: 2,
                removed: false,
            },
            state: state.clone(),
        })
        .collect();
    Lab {
        nodes,
        cut: BTreeSet::new(),
        leader,
    }
}

impl Lab {
    fn node(&mut self, id: u64) -> &mut Node {
        &mut self.nodes[id as usize - 1]
    }

    /// One tick on every member, then every member not cut tells
    /// every other; returns what the leader asked to propose.
    fn tick(&mut self) -> Option<Owners> {
        let mut proposal = None;
        for n in &mut self.nodes {
            n.v.now += 1;
            if let Some(p) = n.o.tick(&n.v, &n.state) {
                proposal = Some(p);
            }
        }
        for from in 1..=3u64 {
            for to in 1..=3u64 {
                if from == to || self.cut.contains(&from) || self.cut.contains(&to) {
                    continue;
                }
                let a = &self.nodes[from as usize - 1];
                let stamp = a.o.stamp_for(a.v.now, a.v.applied, to);
                let b = self.node(to);
                if b.o.heard(b.v.now, from, &stamp)
                    && b.v.is_leader
                    && let Some(p) = b.o.reassign(&b.v, &b.state)
                {
                    proposal = Some(p);
                }
                b.o.note(&b.v, &b.state);
            }
        }
        proposal
    }

    /// The leader proposed `owners`, and `members` applied the entry.
    fn commit(&mut self, owners: &Owners, members: &[u64]) {
        let leader = self.leader;
        self.node(leader).o.proposed(owners.clone());
        for id in members {
            let n = self.node(*id);
            n.state
                .apply(&Command::SetVipOwners(owners.clone()))
                .expect("owners");
            n.v.applied += 1;
            n.o.note(&n.v, &n.state);
        }
    }

    /// The members announcing `vip`.
    fn announcing(&self, vip: &str) -> Vec<u64> {
        (1..=3u64)
            .filter(|id| {
                self.nodes[*id as usize - 1]
                    .o
                    .announced_vips()
                    .contains(&ip(vip))
            })
            .collect()
    }
}

#[test]
fn an_owner_announces_once_current_and_stops_before_a_silent_vip_moves() {
    let vip = "10.0.0.1";
    let mut lab = lab(3, &[vip], &[(vip, 1)], &[], 2);
    // Started with a term on disk it cannot prove current: it waits a
    // full lease in touch with the leader, then announces.
    for _ in 0..E {
        assert_eq!(lab.tick(), None, "nothing moves while all are healthy");
        assert!(lab.announcing(vip).is_empty());
    }
    for _ in 0..3 {
        lab.tick();
    }
    assert_eq!(lab.announcing(vip), [1]);
    // Member 1 goes silent (a lost machine): it stops on its own
    // clock when its lease lapses, and the leader gives the VIP away
    // only after that. Never two announcers.
    lab.cut.insert(1);
    let mut stopped_at = None;
    let mut moved_at = None;
    for t in 0..6 * E {
        if let Some(owners) = lab.tick() {
            assert_eq!(moved_at, None, "one move");
            assert_eq!(
                owners.get(&ip(vip)),
                Some(&2),
                "to the lower-loaded live member"
            );
            // Member 1 hears nothing: it changes only in its own tick,
            // which came before this tick's messages.
            assert!(!lab.announcing(vip).contains(&1), "moved while 1 announced");
            moved_at = Some(t);
            lab.commit(&owners, &[2, 3]);
        }
        let now = lab.announcing(vip);
        assert!(now.len() <= 1, "two announcers at {t}: {now:?}");
        if stopped_at.is_none() && !now.contains(&1) {
            stopped_at = Some(t);
        }
    }
    let (stopped, moved) = (stopped_at.expect("1 stopped"), moved_at.expect("moved"));
    assert!(
        stopped <= E + 1,
        "1 announced {stopped} ticks into its silence"
    );
    assert!(
        moved >= stopped,
        "moved at {moved} before 1 stopped at {stopped}"
    );
    assert_eq!(lab.announcing(vip), [2]);
}

#[test]
fn a_live_owner_gives_a_vip_up_in_two_commits() {
    let vip = "10.0.0.1";
    let mut lab = lab(3, &[vip], &[(vip, 1)], &[], 1);
    for _ in 0..2 * E {
        assert_eq!(lab.tick(), None);
    }
    assert_eq!(lab.announcing(vip), [1]);
    // Member 1 leaves: the first commit takes the VIP from it.
    lab.node(1).o.leave();
    let release = (0..2 * H).find_map(|_| lab.tick()).expect("a release");
    assert_eq!(release.get(&ip(vip)), None, "released first");
    // Member 2 lags: it has not applied the release.
    lab.commit(&release, &[1, 3]);
    assert!(lab.announcing(vip).is_empty(), "1 stops on applying it");
    for _ in 0..3 * E {
        assert_eq!(
            lab.tick(),
            None,
            "no grant while a member has not applied the release"
        );
    }
    lab.commit(&release, &[2]);
    let grant = (0..2 * H).find_map(|_| lab.tick()).expect("a grant");
    let to = *grant.get(&ip(vip)).expect("granted");
    assert_ne!(to, 1, "not to the leaving member");
    lab.commit(&grant, &[1, 2, 3]);
    for _ in 0..4 * H {
        assert_eq!(lab.tick(), None);
    }
    assert_eq!(lab.announcing(vip), [to]);
}

#[test]
fn a_member_whose_dataplane_is_not_ready_is_given_nothing() {
    let vips = ["10.0.0.1", "10.0.0.2", "10.0.0.3"];
    let mut lab = lab(3, &vips, &[], &[2], 1);
    let owners = (0..2 * E).find_map(|_| lab.tick()).expect("owners");
    assert_eq!(owners.len(), 3);
    assert!(owners.values().all(|m| *m != 2), "{owners:?}");
    lab.commit(&owners, &[1, 2, 3]);
    for _ in 0..2 * E {
        assert_eq!(lab.tick(), None, "nothing moves while 2 is unready");
    }
    for vip in vips {
        assert_eq!(lab.announcing(vip).len(), 1, "{vip}");
    }
    // Ready: it takes its share (a VIP released, then granted to it).
    lab.node(2).o.dataplane_ready();
    let release = (0..2 * H).find_map(|_| lab.tick()).expect("a release");
    assert_eq!(release.len(), 2);
    lab.commit(&release, &[1, 2, 3]);
    let grant = (0..4 * H).find_map(|_| lab.tick()).expect("a grant");
    assert_eq!(grant.values().filter(|m| **m == 2).count(), 1, "{grant:?}");
}
