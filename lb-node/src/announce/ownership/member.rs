//! One member's side of "who may announce what": what it heard of its
//! peers and they of it (the lease), what it may announce and serve, and
//! on the leader, which VIP owners to propose.
//!
//! Pure: the replica hands it a small view of Raft (`RaftView`) and the
//! applied `State` with every input, and proposes what it returns. No
//! raft-rs, no clock (ticks come in the view), no I/O, so every rule here
//! is unit-tested without a log or a thread (`member/tests.rs`), and the simulation
//! drives the same code through the replica.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use super::{AnnounceScope, Lease};

mod reassign;
use crate::model::State;

/// VIP owners as states share them (`State::vip_owners_shared`).
type SharedOwners = std::sync::Arc<BTreeMap<IpAddr, u64>>;

/// Heartbeats a member waits after a VIP becomes its own before announcing
/// it: long enough for a live previous owner, which learns of the change
/// from the same commit, to have applied it and stopped. A silent previous
/// owner needs no wait here: the leader only gives its VIPs away after an
/// election timeout without a word from it, by which time its own lease
/// (as long) has run out.
const TAKEOVER_HEARTBEATS: u64 = 3;

/// Leases (in election timeouts) a member goes on announcing after it
/// lost touch with its leader, its lease holding: long enough to see a
/// new leader elected (an election takes about 1.2 election timeouts)
/// without withdrawing anything, short enough that a member cut from its
/// leader alone (its other links fine) does not serve a stale table for
/// long. A leader that has not heard a member for this plus a lease knows
/// it stopped.
const LEADERLESS_LEASES: u64 = 2;

/// VIP owners, as committed (`Command::SetVipOwners`).
pub type Owners = BTreeMap<IpAddr, u64>;

/// What a member's ownership rules need to know.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OwnershipConfig {
    pub me: u64,
    /// The lease, and the leader's health window, in ticks (the election
    /// timeout, the same on every member).
    pub election_ticks: u64,
    /// Ticks between heartbeats: beats go out and the leader reconsiders
    /// owners this often.
    pub heartbeat_ticks: u64,
    /// Which addresses get an owner.
    pub scope: AnnounceScope,
    /// A leaving member serves on until it stops (BGP ECMP mode with
    /// graceful restart).
    pub serve_while_leaving: bool,
    /// Start unready: no VIP until `dataplane_ready`.
    pub wait_for_dataplane: bool,
    /// Start with the announcer down: no VIP until `announce_ready(true)`.
    pub wait_for_announcer: bool,
}

/// What ownership reads of Raft at one moment: the replica builds it for
/// every call.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RaftView {
    /// This member's tick (ticks since it started).
    pub now: u64,
    /// Voters of the current configuration, sorted.
    pub voters: Vec<u64>,
    /// Learners of the current configuration (members that replicate,
    /// program and announce, but never vote nor lead), sorted.
    pub learners: Vec<u64>,
    /// The leader this member knows of; 0 for none.
    pub leader: u64,
    /// Whether this member is the leader.
    pub is_leader: bool,
    /// This member's current term and its vote in it.
    pub term: u64,
    pub vote: u64,
    /// The index and term of the last entry applied (or snapshot installed).
    pub applied: u64,
    pub applied_term: u64,
    /// A committed change removed this member: it announces nothing.
    pub removed: bool,
}

impl RaftView {
    /// Every member of the configuration, voters and learners, sorted:
    /// those that take part in the leases and may own VIPs.
    pub fn members(&self) -> Vec<u64> {
        let mut all: Vec<u64> = self.voters.iter().chain(&self.learners).copied().collect();
        all.sort_unstable();
        all.dedup();
        all
    }

    /// Whether `id` is a member (a voter or a learner).
    pub fn is_member(&self, id: u64) -> bool {
        self.voters.contains(&id) || self.learners.contains(&id)
    }
}

/// Sent with every Raft message and beat: the sender's clock (its
/// incarnation and tick) and the latest clock reading of the receiver that
/// the sender has received (the echo). An echo of its own tick proves to a
/// member that the peer heard it at that tick, so a lease built on echoes
/// needs the link to work both ways: a member that still hears its leader
/// but is no longer heard (a one-way partition) loses its lease as the
/// leader stops hearing it, not never.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stamp {
    pub incarnation: u64,
    pub tick: u64,
    pub echo_incarnation: u64,
    pub echo_tick: u64,
    /// The sender is stopping cleanly and wants its VIPs taken over first
    /// (`Ownership::leave`).
    pub leaving: bool,
    /// The sender's dataplane has not programmed the table yet, or its
    /// announcer cannot announce.
    pub unready: bool,
    /// The sender's applied index.
    pub applied: u64,
    /// The members the sender heard within its lease (its view), with
    /// the latest applied index each told it.
    pub hears: Vec<(u64, u64)>,
}

/// The flags a member's messages carry about itself (`Stamp`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Says {
    leaving: bool,
    unready: bool,
}

/// One member's lease, what it announces and serves, and (leading) the
/// owners it proposes.
#[derive(Debug, Clone)]
pub struct Ownership {
    config: OwnershipConfig,
    /// What this member heard of its peers, and they of it: its lease,
    /// each peer's.
    lease: Lease,
    /// The latest applied index each member told (directly or through
    /// another's view): the leader gives a released VIP away once every
    /// member that may still announce it has applied its release.
    known_applied: BTreeMap<u64, u64>,
    /// Beats are due to every other voter (once per heartbeat, and at
    /// once when this member stops or starts hearing someone: the leader
    /// learns a silence from the views without waiting a heartbeat).
    beats_due: bool,
    /// The view sent last.
    last_view: Vec<u64>,
    /// This process's run of the member (a restart starts a new one): the
    /// ticks of an earlier run mean nothing to this one.
    incarnation: u64,
    /// Each peer's latest clock reading received: (incarnation, tick).
    stamps_from: BTreeMap<u64, (u64, u64)>,
    /// This member is stopping cleanly (`leave`); its dataplane has not
    /// programmed the table yet (`dataplane_ready`); what each peer's
    /// latest message said of the same.
    leaving: bool,
    unready: bool,
    /// The announcer cannot make the network know anything (BGP: no
    /// session established): like unready, but both ways
    /// (`announce_ready`), and sent as unready.
    announce_down: bool,
    peers_say: BTreeMap<u64, Says>,
    /// The tick this member became leader.
    leader_since: u64,
    /// The (table's VIPs: `State::keys_tag`, VIP owners, eligible members) of the last
    /// ownership round that found the owners right: nothing else changes
    /// its outcome (health reports and other entries that leave the table
    /// and the owners alone do not).
    settled: Option<(u64, SharedOwners, BTreeSet<u64>)>,
    /// The VIP owners `owned_since` reflects.
    noted_owners: Option<SharedOwners>,
    /// VIP owners proposed and not yet applied.
    proposed: Option<Owners>,
    /// On the leader: VIPs without an owner and the applied index at which
    /// this leader first saw them so. Such a VIP is given to its new owner
    /// only once every member has applied that entry, or its lease must
    /// have lapsed (its previous owner, whoever it was, then stopped).
    release_marks: BTreeMap<IpAddr, u64>,
    /// The tick at which each VIP this member owns became its own.
    owned_since: BTreeMap<IpAddr, u64>,
    /// The VIPs this member announces: once started, a VIP goes on while
    /// the lease holds and the state says it is this member's, through a
    /// leader's election; starting needs a state known current.
    announcing: BTreeSet<IpAddr>,
    /// Bumped whenever `announcing` changes, so that what is announced is
    /// computed again only then (`announce_key`).
    announce_version: u64,
    /// This member serves every VIP (ECMP mode, service CIDRs): the same
    /// going-on for the whole table.
    serving: bool,
    /// The tick since which this member has been in touch with a leader
    /// (heard and heard back) without a break: its state is current once
    /// that lasted a full lease.
    in_touch_since: Option<u64>,
    /// The last tick at which this member was in touch with a leader.
    last_in_touch: u64,
    /// The term of the last tick at which this member was in touch with a
    /// leader (at start: the term on disk).
    touch_term: u64,
    /// `touch_term` as it was when the current stretch in touch began: the
    /// last term of which this member's state is known current.
    stretch_after_term: u64,
    /// Whether the lease held at the last `note`: its end is logged once.
    lease_held: bool,
}

impl Ownership {
    /// A member starting with `disk_term` on its disk, in its run
    /// `incarnation`.
    pub fn new(config: OwnershipConfig, disk_term: u64, incarnation: u64) -> Ownership {
        Ownership {
            lease: Lease::new(config.election_ticks),
            known_applied: BTreeMap::new(),
            beats_due: false,
            last_view: Vec::new(),
            incarnation,
            stamps_from: BTreeMap::new(),
            leaving: false,
            unready: config.wait_for_dataplane,
            announce_down: config.wait_for_announcer,
            peers_say: BTreeMap::new(),
            leader_since: 0,
            settled: None,
            noted_owners: None,
            proposed: None,
            release_marks: BTreeMap::new(),
            owned_since: BTreeMap::new(),
            announcing: BTreeSet::new(),
            announce_version: 0,
            serving: false,
            in_touch_since: None,
            last_in_touch: 0,
            touch_term: disk_term,
            stretch_after_term: disk_term,
            lease_held: false,
            config,
        }
    }

    /// Sets this run's incarnation (the simulation's runs must not depend
    /// on the wall clock).
    pub fn set_incarnation(&mut self, incarnation: u64) {
        self.incarnation = incarnation;
    }

    /// The stamp to send with a message to `to`, at tick `now` with
    /// `applied` applied (every message sent: no view of Raft needed).
    pub fn stamp_for(&self, now: u64, applied: u64, to: u64) -> Stamp {
        let (echo_incarnation, echo_tick) = self.stamps_from.get(&to).copied().unwrap_or_default();
        Stamp {
            incarnation: self.incarnation,
            tick: now,
            echo_incarnation,
            echo_tick,
            leaving: self.leaving,
            unready: self.not_ready(),
            applied,
            hears: self
                .lease
                .view(now)
                .into_iter()
                .map(|m| (m, self.known_applied.get(&m).copied().unwrap_or(0)))
                .collect(),
        }
    }

    /// One tick went by (`v.now` is the new tick). Returns the owners to
    /// propose, if this member leads and they should change.
    pub fn tick(&mut self, v: &RaftView, state: &State) -> Option<Owners> {
        let view = self.lease.view(v.now);
        if view != self.last_view {
            self.last_view = view;
            self.beats_due = true;
        }
        let mut proposal = None;
        if v.now.is_multiple_of(self.config.heartbeat_ticks.max(1)) {
            // Every member beats to every other, leader or not: the
            // leases do not depend on who leads.
            self.beats_due = true;
            // The leader reconsiders VIP owners once per heartbeat.
            proposal = self.reassign(v, state);
        }
        // In touch with a leader: the state is current once that has
        // lasted a full lease (or on proof: `caught_up_in_new_term`).
        if self.in_touch_with_leader(v) {
            if self.in_touch_since.is_none() {
                self.in_touch_since = Some(v.now);
                self.stretch_after_term = self.touch_term;
            }
            self.touch_term = v.term;
            self.last_in_touch = v.now;
        } else {
            self.in_touch_since = None;
        }
        // A member whose lease lapsed forgets since when it owns its VIPs
        // and stops announcing: back, its state may be stale (others may
        // own them now), so it starts again only once it is current.
        self.note(v, state);
        proposal
    }

    /// The clock jumped to `v.now` without ticks: the ticks this member's
    /// thread missed while it could not run. What it heard before is that
    /// much older now, and its lease may have lapsed meanwhile: it then
    /// announces nothing until it is current again.
    pub fn skipped(&mut self, v: &RaftView, state: &State) {
        if self.in_touch_since.is_some() && !self.in_touch_with_leader(v) {
            self.in_touch_since = None;
        }
        self.note(v, state);
    }

    /// The members due a beat from this member (once per heartbeat):
    /// every other one, voters and learners (a learner's lease is the
    /// voters' echoes of its ticks, and its view tells them whom it hears).
    pub fn take_beats(&mut self, v: &RaftView) -> Vec<u64> {
        if !std::mem::take(&mut self.beats_due) {
            return Vec::new();
        }
        v.members()
            .into_iter()
            .filter(|id| *id != self.config.me)
            .collect()
    }

    /// A message or beat from `from` at tick `now`, with its stamp (every
    /// message received: no view of Raft needed). Returns whether the
    /// peer's view changed: a member heard or no longer heard, so an owner
    /// may have stopped, and a leader reconsiders owners now
    /// (`reassign`), not at the next heartbeat.
    pub fn heard(&mut self, now: u64, from: u64, stamp: &Stamp) -> bool {
        self.peers_say.insert(
            from,
            Says {
                leaving: stamp.leaving,
                unready: stamp.unready,
            },
        );
        let seen = self.stamps_from.entry(from).or_default();
        let restarted = seen.0 != stamp.incarnation;
        if restarted {
            *seen = (stamp.incarnation, stamp.tick);
        } else {
            seen.1 = seen.1.max(stamp.tick);
        }
        let echoed = (stamp.echo_incarnation == self.incarnation).then_some(stamp.echo_tick);
        let view: Vec<u64> = stamp.hears.iter().map(|(m, _)| *m).collect();
        let view_changed = self.lease.heard(from, now, echoed, Some(&view));
        // A restarted member's applied index starts again from its disk.
        let known = self.known_applied.entry(from).or_default();
        *known = if restarted {
            stamp.applied
        } else {
            (*known).max(stamp.applied)
        };
        for (member, applied) in &stamp.hears {
            if *member != self.config.me && *member != from {
                let known = self.known_applied.entry(*member).or_default();
                *known = (*known).max(*applied);
            }
        }
        view_changed
    }

    /// This member's role or term changed (`became_leader`: it leads now).
    pub fn role_changed(&mut self, v: &RaftView, became_leader: bool) {
        if became_leader {
            self.leader_since = v.now;
        }
        self.proposed = None;
        self.settled = None;
    }

    /// The owners returned were proposed (the next round waits for them).
    pub fn proposed(&mut self, owners: Owners) {
        self.proposed = Some(owners);
    }

    /// Members this member has heard from within an election timeout
    /// (itself included): on the leader, those that may own VIPs.
    /// Whether this member leads and has for a few heartbeats (every live
    /// follower has answered once, so none is taken for dead).
    pub fn leader_settled(&self, v: &RaftView) -> bool {
        v.is_leader && v.now > self.leader_since + 2 * self.config.heartbeat_ticks
    }

    pub fn healthy_members(&self, v: &RaftView) -> BTreeSet<u64> {
        v.members()
            .into_iter()
            .filter(|id| *id == self.config.me || self.lease.hears(*id, v.now))
            .collect()
    }

    /// Whether this member's lease holds: a majority of the voters (it
    /// included) heard it and said so (echoed one of its ticks) within
    /// the lease, counted from when it sent what they echoed. Whoever
    /// leads: an election ends nobody's lease. A member that can no
    /// longer make a quorum stops announcing within a lease, before the
    /// others may give its VIPs away (`Lease::lapsed`).
    pub fn lease_valid(&self, v: &RaftView) -> bool {
        !v.removed && self.lease.holds(self.config.me, &v.voters, v.now)
    }

    /// The last tick at which the lease holds without news; None when it
    /// does not hold. What this member announces is valid until then.
    pub fn lease_until(&self, v: &RaftView) -> Option<u64> {
        if v.removed {
            return None;
        }
        self.lease.until(self.config.me, &v.voters, v.now)
    }

    /// Whether this member is in touch with a leader, both ways: a leader
    /// with its lease; a follower whose leader echoed one of its ticks
    /// within the lease.
    fn in_touch_with_leader(&self, v: &RaftView) -> bool {
        if v.is_leader {
            return self.lease_valid(v);
        }
        v.leader != 0 && self.lease.echoed_by(v.leader, v.now)
    }

    /// Ticks a member goes on announcing without a leader in touch.
    fn leaderless_grace(&self) -> u64 {
        LEADERLESS_LEASES * self.config.election_ticks
    }

    /// Whether `member` has stopped announcing by now, as this member
    /// knows: its lease must have lapsed (`Lease::lapsed`), or this member
    /// (the leader) has not heard it for a lease plus the leaderless grace,
    /// so whatever leader it was in touch with heard it last before that,
    /// and it stopped (both counted from when it sent: equal tick rates).
    fn stopped(&self, v: &RaftView, member: u64) -> bool {
        let lease = self.config.election_ticks;
        !v.is_member(member)
            || self.lease.lapsed(self.config.me, member, &v.voters, v.now)
            || (v.is_leader
                && self.lease.silent_for(member, v.now) > lease + self.leaderless_grace())
    }

    /// Whether this member may start announcing: its lease holds and its
    /// state is known current. Back in touch with a leader (or just
    /// started), its state may be stale: it waits a full lease to catch
    /// up, or less when it has proof (`caught_up_in_new_term`). What it
    /// announces already goes on while the lease holds (`announced_vips`).
    pub fn may_announce(&self, v: &RaftView) -> bool {
        if !self.lease_valid(v) {
            return false;
        }
        let lease = self.config.election_ticks;
        self.in_touch_since.is_some_and(|t| v.now >= t + lease) || caught_up_in_new_term(v, self)
    }

    /// Whether this member carries traffic for everyone now: BGP
    /// announces the service CIDRs while it does, and in ECMP mode every
    /// VIP. It starts once its lease holds and its state is current, and
    /// goes on while the lease holds and it is ready, not leaving and not
    /// drained (through a leader's election, too).
    pub fn serving(&self) -> bool {
        self.serving
    }

    /// Every VIP announced one by one, while this member serves: what a
    /// member announces in BGP ECMP mode, where every healthy member with
    /// quorum carries every VIP.
    pub fn ecmp_vips(&self, state: &State) -> BTreeSet<IpAddr> {
        if !self.serving {
            return BTreeSet::new();
        }
        self.config.scope.vips(state)
    }

    /// What `announced_vips` and `ecmp_vips` depend on besides the
    /// table's VIPs (`State::keys_tag`): equal keys, equal sets. Computing the
    /// sets costs O(VIPs); this costs nothing.
    pub fn announce_key(&self) -> (u64, bool, bool) {
        (self.announce_version, self.not_ready(), self.serving)
    }

    /// The VIPs this member announces now: the ones the committed state
    /// gives it, while its lease holds; each started only once its state
    /// was known current and a few heartbeats after the VIP became its own
    /// (so a live previous owner has applied the change and stopped; a
    /// silent one stopped when its lease lapsed, before the leader gave
    /// its VIPs away). No two members announce one VIP at the same time;
    /// the simulation checks it at every step of its fault scenarios. A
    /// member whose dataplane has not programmed the table announces
    /// nothing (it could not serve what it attracts).
    pub fn announced_vips(&self) -> BTreeSet<IpAddr> {
        if self.not_ready() {
            return BTreeSet::new();
        }
        self.announcing.clone()
    }

    /// Tracks since when this member owns each VIP, and what it announces
    /// and serves (after every tick, apply and beat).
    pub fn note(&mut self, v: &RaftView, state: &State) {
        // What it announces goes on while its lease holds, and, without a
        // leader in touch, for `LEADERLESS_LEASES` more (an election).
        let lease = self.lease_valid(v)
            && v.now.saturating_sub(self.last_in_touch) <= self.leaderless_grace();
        let current = self.may_announce(v);
        let mut owners_changed = false;
        if self.lease_held && !lease && !v.removed {
            // Why this member stops announcing: whom it has not heard, or
            // not heard back (a stalled thread shows as every peer at once).
            let ages: Vec<String> = self
                .lease
                .ages(self.config.me, &v.voters, v.now)
                .into_iter()
                .map(|(m, heard, echoed)| {
                    let t = |a: Option<u64>| a.map_or("never".to_owned(), |a| a.to_string());
                    format!(
                        "member {m}: heard {} ticks ago, echoed {}",
                        t(heard),
                        t(echoed)
                    )
                })
                .collect();
            tracing::warn!(
                member = self.config.me,
                lease_ticks = self.config.election_ticks,
                since_in_touch_with_a_leader_ticks = v.now.saturating_sub(self.last_in_touch),
                peers = %ages.join("; "),
                "announcement lease lapsed: this member stops announcing until it is current again"
            );
        }
        self.lease_held = lease;
        if !lease {
            // Back, every VIP it owns then is noted afresh (even if no
            // owner changed meanwhile).
            self.owned_since.clear();
            self.noted_owners = None;
        } else {
            // Most calls change no owner: then there is nothing to note.
            // Owners equal by value but built anew (a snapshot) are taken
            // as the noted ones, so the next call compares pointers only.
            let owners = state.vip_owners_shared();
            owners_changed = match &self.noted_owners {
                Some(noted) if std::sync::Arc::ptr_eq(noted, owners) => false,
                Some(noted) if **noted == **owners => {
                    self.noted_owners = Some(owners.clone());
                    false
                }
                _ => true,
            };
        }
        if owners_changed {
            self.noted_owners = Some(state.vip_owners_shared().clone());
            let me = self.config.me;
            let mine: BTreeSet<IpAddr> = state
                .vip_owners()
                .iter()
                .filter(|(_, owner)| **owner == me)
                .map(|(vip, _)| *vip)
                .collect();
            self.owned_since.retain(|vip, _| mine.contains(vip));
            for vip in mine {
                self.owned_since.entry(vip).or_insert(v.now);
            }
        }
        // O(VIPs) only when something can change: the owned VIPs changed
        // (above), or some owned VIP is not announced yet. A member that
        // announces all it owns (the steady state) does nothing here.
        if !lease {
            if !self.announcing.is_empty() {
                self.announcing.clear();
                self.announce_version += 1;
            }
        } else {
            if owners_changed {
                let before = self.announcing.len();
                self.announcing
                    .retain(|ip| self.owned_since.contains_key(ip));
                if self.announcing.len() != before {
                    self.announce_version += 1;
                }
            }
            if current && self.announcing.len() < self.owned_since.len() {
                let takeover = TAKEOVER_HEARTBEATS * self.config.heartbeat_ticks;
                for (vip, since) in &self.owned_since {
                    if v.now >= since + takeover && self.announcing.insert(*vip) {
                        self.announce_version += 1;
                    }
                }
            }
        }
        let may_serve = lease
            && (!self.leaving || self.config.serve_while_leaving)
            && !self.not_ready()
            && !state.drained_members().contains(&self.config.me);
        self.serving = may_serve && (self.serving || current);
    }

    /// Whether `member` said it is stopping cleanly (or is this member,
    /// stopping).
    pub fn is_leaving(&self, member: u64) -> bool {
        self.says(member).leaving
    }

    /// What `member` said of itself last (this member: what it is).
    fn says(&self, member: u64) -> Says {
        if member == self.config.me {
            Says {
                leaving: self.leaving,
                unready: self.not_ready(),
            }
        } else {
            self.peers_say.get(&member).copied().unwrap_or_default()
        }
    }

    /// Whether this member still waits for its dataplane.
    pub fn is_dataplane_ready(&self) -> bool {
        !self.unready
    }

    /// Unready for VIPs: the dataplane has not programmed the table yet,
    /// or the announcer cannot announce.
    fn not_ready(&self) -> bool {
        self.unready || self.announce_down
    }

    /// Whether the announcer can make the network know this member's VIPs
    /// (BGP: a session with at least one peer is established). While it
    /// cannot, the member says it is unready and whoever leads gives its
    /// VIPs to the others; once it can again, it is eligible again.
    pub fn announce_ready(&mut self, ready: bool) {
        self.announce_down = !ready;
    }

    /// This member's dataplane has programmed the table it caught up to:
    /// it may take and announce VIPs from now on (its next messages say
    /// so).
    pub fn dataplane_ready(&mut self) {
        self.unready = false;
    }

    /// This member is stopping cleanly: every message it sends says so
    /// from now on, and whoever leads gives its VIPs to the others as if
    /// it were drained (nothing is committed about it: a restarted member
    /// is eligible again).
    pub fn leave(&mut self) {
        self.leaving = true;
    }
}

/// Proof that a member back in touch has applied everything committed
/// before its current leader was elected, without waiting a full lease:
/// its current term is newer than the last term it was in touch in, it
/// voted for the current leader in this term (a leader votes for itself),
/// and it has applied an entry of this term. By Raft's leader
/// completeness the leader's log holds every committed entry, and by log
/// matching a member that applied the leader's first entry of the term
/// has applied all of them. What the leader commits later about this
/// member's VIPs treats it as live: the leader heard its vote, so it
/// counts as healthy, and a VIP moves away from a live member only in two
/// commits with the takeover wait (`Ownership::reassign`).
fn caught_up_in_new_term(v: &RaftView, o: &Ownership) -> bool {
    v.term > o.stretch_after_term && v.leader != 0 && v.vote == v.leader && v.applied_term == v.term
}

#[cfg(test)]
mod tests;
