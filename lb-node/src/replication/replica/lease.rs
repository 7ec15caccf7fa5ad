//! What the replica asks of and tells `announce::ownership` for the lease
//! and the VIPs (peer health, the lease, what this member may announce
//! and serve, the owners it proposes) and the health checks' probers.

use std::collections::BTreeSet;

use tracing::info;

use super::{PeerHealth, RaftStore, Replica};
use crate::model::Command;

impl<S: RaftStore> Replica<S> {
    /// On the leader: each other member's (id, healthy, match index),
    /// voters and learners. Empty on a follower.
    pub fn peer_health(&self) -> Vec<PeerHealth> {
        if !self.is_leader() {
            return Vec::new();
        }
        let healthy = self.healthy_members();
        self.view()
            .members()
            .into_iter()
            .filter(|id| *id != self.config.id)
            .map(|id| {
                let matched = self.raw.raft.prs().get(id).map_or(0, |p| p.matched);
                PeerHealth {
                    id,
                    healthy: healthy.contains(&id),
                    match_index: matched,
                }
            })
            .collect()
    }

    /// Members this member has heard from within an election timeout
    /// (itself included): on the leader, those that may own VIPs.
    pub fn healthy_members(&self) -> BTreeSet<u64> {
        self.ownership.healthy_members(&self.view())
    }

    /// Whether this member's lease holds (`Ownership::lease_valid`).
    pub fn lease_valid(&self) -> bool {
        self.ownership.lease_valid(&self.view())
    }

    /// The last tick at which the lease holds without news; None when it
    /// does not hold. What this member announces is valid until then.
    pub fn lease_until(&self) -> Option<u64> {
        self.ownership.lease_until(&self.view())
    }

    /// Whether this member may start announcing: its lease holds and its
    /// state is known current (`Ownership::may_announce`).
    pub fn may_announce(&self) -> bool {
        self.ownership.may_announce(&self.view())
    }

    /// Whether this member applied an entry of its current term: for a
    /// leader, its first entry, so every entry of earlier terms it will
    /// ever commit is applied too.
    pub fn applied_current_term(&self) -> bool {
        self.applied_term == self.raw.raft.term
    }

    /// Whether this member carries traffic for everyone now
    /// (`Ownership::serving`).
    pub fn serving(&self) -> bool {
        self.ownership.serving()
    }

    /// Every VIP announced one by one, while this member serves (BGP
    /// ECMP mode).
    pub fn ecmp_vips(&self) -> BTreeSet<std::net::IpAddr> {
        self.ownership.ecmp_vips(&self.state)
    }

    /// What `announced_vips` and `ecmp_vips` depend on: equal keys, equal
    /// sets (`Ownership::announce_key` and the table's VIPs: `keys_tag`).
    pub fn announce_key(&self) -> ((u64, bool, bool), u64) {
        (self.ownership.announce_key(), self.state.keys_tag())
    }

    /// The VIPs this member announces now (`Ownership::announced_vips`).
    pub fn announced_vips(&self) -> BTreeSet<std::net::IpAddr> {
        self.ownership.announced_vips()
    }

    /// Proposes the VIP owners ownership asked for, if it did.
    pub(super) fn propose_owners(&mut self, owners: Option<crate::announce::ownership::Owners>) {
        let Some(owners) = owners else { return };
        if self
            .propose(vec![Command::SetVipOwners(owners.clone())])
            .is_ok()
        {
            self.ownership.proposed(owners);
        }
    }

    /// On the leader: the members that probe backends (health checks,
    /// issue 22) are those it hears, so a lost member's share of the
    /// backends goes to the others within a lease; proposed when that
    /// differs from the state's (empty: every member, the usual case, so a
    /// healthy cluster never proposes it).
    pub(super) fn maybe_set_probers(&mut self) {
        let v = self.view();
        if !self.ownership.leader_settled(&v) {
            return;
        }
        let healthy = self.ownership.healthy_members(&v);
        let members: BTreeSet<u64> = v.members().into_iter().collect();
        let want = if healthy == members {
            BTreeSet::new()
        } else {
            healthy
        };
        if *self.state.probers() == want {
            self.probers_proposed = None;
            self.probers_candidate = None;
            return;
        }
        // Only a set that held for a while: a member unheard for a moment
        // (a busy machine delays beats) would otherwise hand its share of
        // the probing to the others and back, which loads them more. Six
        // election timeouts to drop a member, one to take it back.
        let since = match &self.probers_candidate {
            Some((candidate, since)) if *candidate == want => *since,
            _ => {
                self.probers_candidate = Some((want.clone(), self.ticks));
                self.ticks
            }
        };
        let current = self.state.probing_members();
        let shrinks = !want.is_empty() && current.iter().any(|m| !want.contains(m));
        let settle = self.config.election_ticks as u64 * if shrinks { 6 } else { 1 };
        if self.ticks < since + settle {
            return;
        }
        // Once per 50 ticks at most (a proposal lost to a leader change is
        // made again).
        if let Some((proposed, at)) = &self.probers_proposed
            && *proposed == want
            && self.ticks < at + 50
        {
            return;
        }
        if self
            .propose(vec![Command::SetProbers(want.clone())])
            .is_ok()
        {
            info!(member = self.config.id, probers = ?want, "health probers change");
            self.probers_proposed = Some((want, self.ticks));
        }
    }
}
