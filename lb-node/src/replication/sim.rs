//! Deterministic simulation: N replicas (the real `Replica`, on in-memory
//! logs: `MemStore`, `LogStore`'s twin) over an in-memory network that
//! drops, delays, duplicates, reorders and partitions messages, all driven
//! by one seeded random generator and a virtual clock, in one thread. Each
//! member programs a memory dataplane from its applied state.
//!
//! The same seed gives the same run, so a failing seed can be replayed.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use raft::eraftpb::MessageType;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use super::replica::ReplicaConfig;
use super::storage::MemStore;
use crate::dataplane::{Table, plan};
use crate::model::{Command, State, VirtualService};

/// Virtual milliseconds per simulation step.
pub const STEP_MS: u64 = 5;
/// Virtual milliseconds per Raft tick.
pub const TICK_MS: u64 = 50;

type Replica = super::replica::Replica<MemStore>;

struct Member {
    /// The member's disk: it outlives the replica's crash.
    disk: MemStore,
    /// The running process's replica; None while it is down.
    replica: RefCell<Option<Replica>>,
    up: bool,
    dataplane: Table,
    /// The state the member's replica had when it was opened, before any
    /// ready: what lb-node's dataplane programs first.
    opened_with: Option<State>,
    /// Proposal id -> commands, for proposals in flight on this member.
    in_flight: BTreeMap<u64, Vec<Command>>,
}

impl Member {
    /// Runs `f` on the replica if the member is up.
    fn with<R>(&self, f: impl FnOnce(&mut Replica) -> R) -> Option<R> {
        if !self.up {
            return None;
        }
        self.replica.borrow_mut().as_mut().map(f)
    }
}

/// What one member looks like from outside, for checks and messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct View {
    pub leader: bool,
    pub role: raft::StateRole,
    pub term: u64,
    pub known_leader: u64,
    pub commit: u64,
    pub applied: u64,
    pub voters: Vec<u64>,
    pub learners: Vec<u64>,
}

fn view(r: &mut Replica) -> View {
    View {
        leader: r.is_leader(),
        role: r.role(),
        term: r.term(),
        known_leader: r.leader(),
        commit: r.commit_index(),
        applied: r.applied_index(),
        voters: r.voters(),
        learners: r.learners(),
    }
}

/// A simulated cluster.
pub struct Sim {
    rng: SmallRng,
    now: u64,
    seq: u64,
    members: BTreeMap<u64, Member>,
    initial: Vec<(u64, String)>,
    network: Vec<InFlight>,
    /// Cut links, both directions.
    cut: BTreeSet<(u64, u64)>,
    /// Members that get no log entries (appends and snapshots are lost on
    /// the way to them) while heartbeats still arrive: a member back in
    /// touch but not yet caught up.
    pub starved: BTreeSet<u64>,
    pub faults: NetFaults,
    /// What the transport tells senders: (sender, peer, snapshot delivered?)
    /// for snapshots, (sender, peer, None) for an unreachable peer.
    reports: Vec<(u64, u64, Option<bool>)>,
    /// Each member's election timeout in ticks.
    timeouts: BTreeMap<u64, usize>,
    /// Print every message sent (`SIM_TRACE=1`), to replay a failing seed.
    trace: bool,
    /// Snapshots each member installed from a leader.
    snapshots_installed: BTreeMap<u64, usize>,
    /// Check at every step that no two members announce one VIP.
    pub check_announcements: bool,
    /// Every instant two members announced one VIP.
    pub split_brain: Vec<String>,
    next_service: u32,
    /// Commands whose proposal was acknowledged (applied on the proposer).
    pub acknowledged: Vec<Command>,
    /// Commands proposed whose outcome is unknown.
    pub abandoned: usize,
    config: ReplicaConfig,
}

impl std::fmt::Debug for Sim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sim").field("now", &self.now).finish()
    }
}

impl Sim {
    /// A cluster of `n` members, ids 1..=n, all up and bootstrapped.
    pub fn new(n: u64, seed: u64) -> Sim {
        let initial: Vec<(u64, String)> = (1..=n).map(|id| (id, format!("sim-{id}:0"))).collect();
        let config = ReplicaConfig {
            id: 0,
            election_ticks: 10,
            heartbeat_ticks: 1,
            snapshot_after_entries: 40,
            fixed_election_timeout: None,
            initial_admin: BTreeMap::new(),
            wait_for_dataplane: false,
            scope: Default::default(),
            serve_while_leaving: false,
            wait_for_announcer: false,
        };
        let mut sim = Sim {
            rng: SmallRng::seed_from_u64(seed),
            now: 0,
            seq: 0,
            members: BTreeMap::new(),
            initial,
            network: Vec::new(),
            cut: BTreeSet::new(),
            starved: BTreeSet::new(),
            faults: NetFaults::CALM,
            reports: Vec::new(),
            timeouts: BTreeMap::new(),
            trace: std::env::var_os("SIM_TRACE").is_some(),
            snapshots_installed: BTreeMap::new(),
            check_announcements: false,
            split_brain: Vec::new(),
            next_service: 0,
            acknowledged: Vec::new(),
            abandoned: 0,
            config,
        };
        for id in 1..=n {
            sim.new_process(id);
        }
        sim
    }

    /// A new machine with an empty disk, started: a member of the initial
    /// list bootstraps, any other waits to be added.
    pub fn new_process(&mut self, id: u64) {
        self.members.insert(
            id,
            Member {
                disk: MemStore::new(),
                replica: RefCell::new(None),
                up: false,
                dataplane: Table::default(),
                opened_with: None,
                in_flight: BTreeMap::new(),
            },
        );
        self.start(id);
    }

    fn on_leader<R>(&self, f: impl FnOnce(&mut Replica) -> R) -> Option<R> {
        let leader = self.leader()?;
        self.members.get(&leader)?.with(f)
    }

    /// Proposes, through the leader, adding member `id` as a voter.
    pub fn propose_add_member(&mut self, id: u64) -> bool {
        self.propose_join(id, false)
    }

    /// Proposes, through the leader, adding member `id`, a voter or a
    /// learner.
    pub fn propose_join(&mut self, id: u64, learner: bool) -> bool {
        self.on_leader(move |r| {
            r.propose_add_member(id, &format!("sim-{id}:0"), None, learner)
                .is_ok()
        })
        .unwrap_or(false)
    }

    /// Proposes, through the leader, promoting learner `id` (`learner`
    /// false) or demoting voter `id`.
    pub fn propose_member_role(&mut self, id: u64, learner: bool) -> bool {
        self.on_leader(move |r| r.propose_member_role(id, learner).is_ok())
            .unwrap_or(false)
    }

    /// Proposes, through the leader, removing member `id`.
    pub fn propose_remove_member(&mut self, id: u64) -> bool {
        self.on_leader(move |r| r.propose_remove_member(id).is_ok())
            .unwrap_or(false)
    }

    /// Member `id` is stopping cleanly (`Replica::leave`).
    pub fn leave(&mut self, id: u64) {
        if let Some(member) = self.members.get(&id) {
            member.with(Replica::leave);
        }
    }

    /// Asks the leader to hand leadership to `to`.
    pub fn transfer_leader(&mut self, to: u64) {
        self.on_leader(move |r| r.transfer_leader(to));
    }

    /// The voters member `id` knows of.
    pub fn voters(&self, id: u64) -> Vec<u64> {
        self.view(id).map(|v| v.voters).unwrap_or_default()
    }

    pub fn view(&self, id: u64) -> Option<View> {
        self.members[&id].with(view)
    }

    /// Starts (or restarts) a member from its disk.
    pub fn start(&mut self, id: u64) {
        self.start_as(id, false);
    }

    /// Starts a member that waits for its dataplane, as lb-node does: it
    /// takes no VIP until `dataplane_ready`.
    pub fn start_unready(&mut self, id: u64) {
        self.start_as(id, true);
    }

    /// Member `id`'s dataplane has programmed the table.
    pub fn dataplane_ready(&mut self, id: u64) {
        if let Some(member) = self.members.get(&id) {
            member.with(Replica::dataplane_ready);
        }
    }

    fn start_as(&mut self, id: u64, wait_for_dataplane: bool) {
        // Each start draws this member's election timeout from the seed,
        // different from every other member's: reproducible runs without
        // endless split votes.
        let taken: Vec<usize> = self
            .timeouts
            .iter()
            .filter(|(m, _)| **m != id)
            .map(|(_, t)| *t)
            .collect();
        let election_ticks = loop {
            let t = self.config.election_ticks + self.rng.gen_range(0..self.config.election_ticks);
            if !taken.contains(&t) {
                break t;
            }
        };
        self.timeouts.insert(id, election_ticks);
        let config = ReplicaConfig {
            id,
            fixed_election_timeout: Some(election_ticks),
            wait_for_dataplane,
            ..self.config.clone()
        };
        let initial = self.initial.clone();
        self.seq += 1;
        let incarnation = self.seq;
        let member = self.members.get_mut(&id).expect("known member");
        let mut replica =
            Replica::open(config, member.disk.clone(), &initial).expect("replica opens");
        // Runs replay exactly: no wall clock in the log, and each run of a
        // member its own incarnation.
        replica.set_clock(|| 0);
        replica.set_incarnation(incarnation);
        let opened = replica.state().clone();
        *member.replica.get_mut() = Some(replica);
        // lb-node's reconciler programs the state it is started with at
        // once, before the node thread's first ready.
        program(&mut member.dataplane, &opened);
        member.opened_with = Some(opened);
        member.up = true;
        // A member replays its own log before it hears from anyone.
        self.drain_ready(id);
    }

    /// kill -9: the member's process is gone; its disk stays.
    pub fn crash(&mut self, id: u64) {
        let member = self.members.get_mut(&id).expect("known member");
        *member.replica.get_mut() = None;
        member.up = false;
        self.abandoned += member.in_flight.len();
        member.in_flight.clear();
    }

    /// The member's disk is wiped while it is down.
    pub fn wipe(&mut self, id: u64) {
        let member = self.members.get_mut(&id).expect("known member");
        assert!(!member.up, "wipe a crashed member");
        member.disk = MemStore::new();
        member.dataplane = Table::default();
    }

    /// Cuts every link between `group` and the rest.
    pub fn isolate(&mut self, group: &[u64]) {
        let ids: Vec<u64> = self.members.keys().copied().collect();
        for &a in group {
            for &b in &ids {
                if !group.contains(&b) {
                    self.cut.insert((a, b));
                    self.cut.insert((b, a));
                }
            }
        }
    }

    /// Drops every message from `from` to `to`; the other direction works
    /// (a one-way partition: an ACL, a half-broken link).
    pub fn cut_one_way(&mut self, from: u64, to: u64) {
        self.cut.insert((from, to));
    }

    pub fn heal(&mut self) {
        self.cut.clear();
    }

    pub fn is_up(&self, id: u64) -> bool {
        self.members[&id].up
    }

    pub fn ids(&self) -> Vec<u64> {
        self.members.keys().copied().collect()
    }

    /// The member that believes it leads (the one with the highest term if
    /// several do during a partition).
    pub fn leader(&self) -> Option<u64> {
        self.members
            .iter()
            .filter_map(|(id, m)| {
                m.with(|r| (r.is_leader(), r.term()))
                    .filter(|(l, _)| *l)
                    .map(|(_, t)| (t, *id))
            })
            .max()
            .map(|(_, id)| id)
    }

    /// A copy of member `id`'s applied state.
    pub fn state(&self, id: u64) -> Option<State> {
        self.members[&id].with(|r| r.state().clone())
    }

    /// The VIPs member `id` announces now (empty when it is down).
    pub fn announced(&self, id: u64) -> BTreeSet<IpAddr> {
        self.members[&id]
            .with(|r| r.announced_vips())
            .unwrap_or_default()
    }

    /// Whether member `id` serves every VIP now (ECMP mode, service
    /// CIDRs); false when it is down.
    pub fn serving(&self, id: u64) -> bool {
        self.members[&id].with(|r| r.serving()).unwrap_or(false)
    }

    /// Which member announces each VIP now (the first one found, if several).
    pub fn announcers(&self) -> BTreeMap<IpAddr, u64> {
        let mut by_vip = BTreeMap::new();
        for id in self.ids() {
            for vip in self.announced(id) {
                by_vip.entry(vip).or_insert(id);
            }
        }
        by_vip
    }

    fn check_split_brain(&mut self) {
        let mut by_vip: BTreeMap<IpAddr, Vec<u64>> = BTreeMap::new();
        for id in self.ids() {
            for vip in self.announced(id) {
                by_vip.entry(vip).or_default().push(id);
            }
        }
        for (vip, ids) in by_vip {
            if ids.len() > 1 {
                self.split_brain
                    .push(format!("t={}ms: {vip} announced by {ids:?}", self.now));
            }
        }
    }

    /// How many snapshots `id` installed from a leader.
    pub fn snapshots_installed(&self, id: u64) -> usize {
        self.snapshots_installed.get(&id).copied().unwrap_or(0)
    }

    /// The state member `id` had when it was last opened, before any
    /// ready.
    pub fn state_at_open(&self, id: u64) -> Option<State> {
        self.members[&id].opened_with.clone()
    }

    /// The table member `id`'s dataplane holds.
    pub fn dataplane(&self, id: u64) -> &Table {
        &self.members[&id].dataplane
    }

    pub fn applied_index(&self, id: u64) -> u64 {
        self.view(id).map_or(0, |v| v.applied)
    }

    /// A new, unique service: applying it twice would show (see
    /// `check_invariants`).
    fn new_service(&mut self) -> VirtualService {
        self.next_service += 1;
        crate::model::fixtures::numbered_service(self.next_service, 1)
    }

    /// Proposes `count` new services, one per entry, through whichever
    /// member leads now. Returns how many were accepted for proposal.
    pub fn propose(&mut self, count: usize) -> usize {
        let Some(leader) = self.leader() else {
            return 0;
        };
        let mut accepted = 0;
        for _ in 0..count {
            let command = Command::UpsertService(self.new_service());
            let member = self.members.get_mut(&leader).expect("leader is a member");
            let c = command.clone();
            if let Some(Ok(id)) = member.with(move |r| r.propose(vec![c])) {
                member.in_flight.insert(id, vec![command]);
                accepted += 1;
            }
        }
        accepted
    }

    /// Proposes one command through the leader, untracked.
    pub fn propose_command(&mut self, command: Command) -> bool {
        self.on_leader(move |r| r.propose(vec![command]).is_ok())
            .unwrap_or(false)
    }

    /// Runs for `ms` virtual milliseconds.
    pub fn run(&mut self, ms: u64) {
        let end = self.now + ms;
        while self.now < end {
            self.step();
        }
    }

    /// Runs until every live member has applied the same index and holds
    /// the same state, or `max_ms` passes. Returns whether it converged.
    pub fn run_until_converged(&mut self, max_ms: u64) -> bool {
        let end = self.now + max_ms;
        while self.now < end {
            self.step();
            if self.now.is_multiple_of(100) && self.converged() {
                // One more round so dataplanes catch up with the last apply.
                self.run(50);
                return true;
            }
        }
        false
    }

    fn converged(&self) -> bool {
        let live: Vec<View> = self
            .ids()
            .into_iter()
            .filter_map(|id| self.view(id))
            .collect();
        let Some(first) = live.first() else {
            return true;
        };
        if !(live.iter().any(|v| v.leader)
            && live
                .iter()
                .all(|v| v.applied == first.applied && v.commit == v.applied))
        {
            return false;
        }
        let states: Vec<State> = self
            .ids()
            .into_iter()
            .filter_map(|id| self.state(id))
            .collect();
        states.windows(2).all(|w| w[0] == w[1])
    }

    fn step(&mut self) {
        self.now += STEP_MS;
        // Deliver what is due, in (time, send order).
        self.network.sort_by_key(|m| (m.at, m.seq));
        let due = self.network.partition_point(|m| m.at <= self.now);
        let delivering: Vec<InFlight> = self.network.drain(..due).collect();
        for m in delivering {
            let (from, to) = (m.from, m.to);
            let snapshot = m
                .message
                .as_ref()
                .is_some_and(|m| m.get_msg_type() == MessageType::MsgSnapshot);
            let (message, stamp) = (m.message, m.stamp);
            let delivered = self
                .members
                .get(&to)
                .and_then(|mem| {
                    mem.with(move |r| match message {
                        Some(message) => r.step(message, stamp),
                        None => r.beat(from, &stamp),
                    })
                })
                .is_some();
            // The real transport knows when a stream breaks or a snapshot
            // has been sent, and tells the sender; so does the simulation.
            if snapshot {
                self.reports.push((from, to, Some(delivered)));
            } else if !delivered {
                self.reports.push((from, to, None));
            }
        }
        for (from, to, snapshot) in std::mem::take(&mut self.reports) {
            if let Some(m) = self.members.get(&from) {
                m.with(move |r| match snapshot {
                    Some(ok) => r.report_snapshot(to, ok),
                    None => r.report_unreachable(to),
                });
            }
        }
        if self.now.is_multiple_of(TICK_MS) {
            let mut beats = Vec::new();
            for (id, m) in &self.members {
                let id = *id;
                if let Some(stamped) = m.with(move |r| {
                    r.tick();
                    r.take_beats()
                        .into_iter()
                        .map(|to| (to, r.stamp_for(to)))
                        .collect::<Vec<_>>()
                }) {
                    beats.extend(stamped.into_iter().map(|(to, stamp)| (id, to, stamp)));
                }
            }
            for (from, to, stamp) in beats {
                self.transmit(from, to, None, stamp);
            }
        }
        for id in self.ids() {
            self.drain_ready(id);
        }
        if self.check_announcements {
            self.check_split_brain();
        }
    }

    fn drain_ready(&mut self, id: u64) {
        let member = self.members.get_mut(&id).expect("known member");
        // Everything the member has ready.
        let Some((outputs, state)) = member.with(|r| {
            let mut outputs = Vec::new();
            while r.has_ready() {
                let out = r.handle_ready().expect("ready handled");
                // Stamped as the node thread stamps them, when sent.
                let stamps: Vec<_> = out.messages.iter().map(|m| r.stamp_for(m.to)).collect();
                outputs.push((out, stamps));
            }
            let changed = outputs.iter().any(|(o, _)| o.state_changed);
            (outputs, changed.then(|| r.state().clone()))
        }) else {
            return;
        };
        if let Some(state) = state {
            program(&mut member.dataplane, &state);
        }
        let mut messages = Vec::new();
        for (out, stamps) in outputs {
            if out.installed_snapshot.is_some() {
                *self.snapshots_installed.entry(id).or_default() += 1;
            }
            for (pid, _outcomes) in out.completed {
                if let Some(commands) = member.in_flight.remove(&pid) {
                    self.acknowledged.extend(commands);
                }
            }
            for pid in out.abandoned {
                if member.in_flight.remove(&pid).is_some() {
                    self.abandoned += 1;
                }
            }
            messages.extend(out.messages.into_iter().zip(stamps));
        }
        for (message, stamp) in messages {
            self.send(message, stamp);
        }
    }

    /// One line per member: role, term, indexes. For failure messages.
    pub fn describe(&self) -> String {
        self.ids()
            .into_iter()
            .map(|id| match self.view(id) {
                Some(v) => format!(
                    "member {id}: {:?} term {} leader {} commit {} applied {} voters {:?}",
                    v.role, v.term, v.known_leader, v.commit, v.applied, v.voters
                ),
                None => format!("member {id}: down"),
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The promises that must hold once the cluster has converged: every
    /// live member holds an equal state and has programmed exactly it;
    /// every acknowledged command is present; no command was applied twice.
    pub fn check_invariants(&self) -> Result<(), String> {
        let live: Vec<(u64, State)> = self
            .ids()
            .into_iter()
            .filter_map(|id| self.state(id).map(|s| (id, s)))
            .collect();
        let (first_id, state) = live.first().ok_or("no live member")?;
        for (id, s) in &live {
            if s != state {
                return Err(format!(
                    "member {id} holds another state than member {first_id}"
                ));
            }
            if self.members[id].dataplane != Table::from_state(s) {
                return Err(format!(
                    "member {id} programmed another table than its state"
                ));
            }
        }
        for c in &self.acknowledged {
            let Some(key) = c.service_key() else { continue };
            if state.service(&key).is_none() {
                return Err(format!("acknowledged command for {key} is lost"));
            }
        }
        // Each command creates a new service, so the revision (commands
        // applied) equals the number of services unless one was applied twice.
        if state.revision() != state.len() as u64 {
            return Err(format!(
                "{} commands applied for {} services: some command was applied twice",
                state.revision(),
                state.len()
            ));
        }
        Ok(())
    }
}

/// The reconciler's work, synchronously: plans `state` against the table
/// and applies it.
fn program(dataplane: &mut Table, state: &State) {
    for op in plan(&Table::from_state(state), dataplane) {
        dataplane.apply(&op).expect("plan fits the table");
    }
}

mod network;

use network::InFlight;
pub use network::NetFaults;

#[cfg(test)]
mod tests;
