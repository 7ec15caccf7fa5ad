//! The leader's side of ownership: which VIP owners to propose, over the
//! healthy, undrained, ready members.

use std::collections::{BTreeMap, BTreeSet};

use tracing::info;

use super::{Owners, Ownership, RaftView};
use crate::announce::ownership::assign_owners;
use crate::model::State;

impl Ownership {
    /// On the leader: the VIP owners over the healthy, undrained, ready
    /// members, when they differ from the committed ones and were not
    /// proposed already. Waits a few heartbeats after an election, so
    /// that every live follower has answered once and none is taken for
    /// dead.
    pub fn reassign(&mut self, v: &RaftView, state: &State) -> Option<Owners> {
        if !v.is_leader || v.now < self.leader_since + 2 * self.config.heartbeat_ticks + 1 {
            return None;
        }
        if self.proposed.as_ref() == Some(state.vip_owners()) {
            self.proposed = None;
        }
        // Members whose dataplane has not programmed the table yet (just
        // started) get nothing: they could not serve it. When nobody is
        // ready (the whole cluster starting), owners stay as they are.
        let undrained: BTreeSet<u64> = self
            .healthy_members(v)
            .into_iter()
            .filter(|m| !state.drained_members().contains(m) && !self.says(*m).unready)
            .collect();
        if undrained.is_empty() {
            return None;
        }
        // Leaving members hand their VIPs to the others, unless everyone
        // is leaving (the whole cluster stopping): then they keep them
        // until they stop, rather than nobody announcing meanwhile.
        let staying: BTreeSet<u64> = undrained
            .iter()
            .copied()
            .filter(|m| !self.says(*m).leaving)
            .collect();
        let eligible = if staying.is_empty() {
            undrained
        } else {
            staying
        };
        // Neither the table's VIPs nor the owners nor anybody's health
        // changed since the last round found nothing to do: skip the
        // O(VIPs) work on the raft thread (an endpoint change leaves the
        // VIPs as they were: `keys_tag`).
        let owners_now = state.vip_owners_shared();
        if let Some((keys, owners, members)) = &self.settled
            && *keys == state.keys_tag()
            && std::sync::Arc::ptr_eq(owners, owners_now)
            && *members == eligible
        {
            return None;
        }
        let inputs = (state.keys_tag(), owners_now.clone(), eligible);
        let (_, _, eligible) = &inputs;
        let current = state.vip_owners().clone();
        let target = assign_owners(&self.config.scope.vips(state), eligible, &current);
        // A VIP moves in two commits: its previous owner first releases it
        // (it is left out), and only once every member has applied the
        // entry that released it, or its lease must have lapsed, does its
        // new owner get it. So the previous owner has stopped, or will
        // within the new owner's takeover wait, before the new owner
        // starts. An owner whose own lease must have lapsed (so many
        // others stopped hearing it that it cannot make a quorum) has
        // stopped already: its VIPs move at once. Not merely one this
        // leader stopped hearing: others may still hear it, and it
        // announces on (its lease holds) until it applies the release.
        let me = self.config.me;
        let members = v.members();
        let stopped: BTreeSet<u64> = members
            .iter()
            .copied()
            .filter(|id| self.stopped(v, *id))
            .collect();
        let known_applied = &self.known_applied;
        let everyone_has = |index: u64| {
            members.iter().all(|id| {
                *id == me
                    || known_applied.get(id).is_some_and(|a| *a >= index)
                    || stopped.contains(id)
            })
        };
        let mut owners = BTreeMap::new();
        let mut waiting = false;
        let healthy = self.healthy_members(v);
        let release_marks = &mut self.release_marks;
        for (vip, owner) in &target {
            match current.get(vip) {
                Some(old) if old == owner || stopped.contains(old) => {
                    owners.insert(*vip, *owner);
                }
                // Silent, but it may still announce: it keeps the VIP until
                // it must have stopped (then it moves in one commit).
                Some(old) if !healthy.contains(old) => {
                    owners.insert(*vip, *old);
                    waiting = true;
                }
                Some(_) => waiting = true, // released by this proposal
                None => {
                    let mark = *release_marks.entry(*vip).or_insert(v.applied);
                    if everyone_has(mark) {
                        owners.insert(*vip, *owner);
                    } else {
                        waiting = true;
                    }
                }
            }
        }
        self.release_marks
            .retain(|vip, _| !current.contains_key(vip) && target.contains_key(vip));
        if owners == current {
            if !waiting {
                self.settled = Some(inputs);
            }
            return None;
        }
        if self.proposed.as_ref() == Some(&owners) {
            return None;
        }
        info!(member = me, eligible = ?eligible, "VIP owners change");
        Some(owners)
    }
}
