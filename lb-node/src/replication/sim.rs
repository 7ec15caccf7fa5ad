//! Deterministic simulation: N replicas (the real `Replica`, on real
//! raft-engine logs in a temporary directory) over an in-memory network that
//! drops, delays, duplicates, reorders and partitions messages, all driven
//! by one seeded random generator and a virtual clock. Each member programs
//! a memory dataplane from its applied state.
//!
//! The same seed gives the same run, so a failing seed can be replayed.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;

use raft::eraftpb::{Message, MessageType};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use super::replica::{Replica, ReplicaConfig};
use super::storage::LogStore;
use crate::dataplane::{Table, plan};
use crate::model::{
    Backend, BackendState, Command, Forwarding, Protocol, Scheduler, ServiceKey, State,
    VirtualService,
};

/// Virtual milliseconds per simulation step.
pub const STEP_MS: u64 = 5;
/// Virtual milliseconds per Raft tick.
pub const TICK_MS: u64 = 50;

/// How the network misbehaves.
#[derive(Debug, Clone, Copy)]
pub struct NetFaults {
    /// Probability that a message is lost.
    pub drop: f64,
    /// Probability that a message is delivered twice.
    pub duplicate: f64,
    /// Delivery delay, uniformly drawn, in virtual milliseconds. Different
    /// delays reorder messages.
    pub delay_ms: (u64, u64),
}

impl NetFaults {
    pub const CALM: NetFaults = NetFaults {
        drop: 0.0,
        duplicate: 0.0,
        delay_ms: (1, 3),
    };
    pub const ROUGH: NetFaults = NetFaults {
        drop: 0.1,
        duplicate: 0.05,
        delay_ms: (1, 40),
    };
}

struct Member {
    replica: Option<Replica>,
    dir: PathBuf,
    dataplane: Table,
    /// Proposal id -> commands, for proposals in flight on this member.
    in_flight: BTreeMap<u64, Vec<Command>>,
}

struct InFlight {
    at: u64,
    seq: u64,
    message: Message,
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
    _tmp: tempfile::TempDir,
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
        let tmp = tempfile::tempdir().expect("temporary directory for the simulation");
        let initial: Vec<(u64, String)> = (1..=n).map(|id| (id, format!("sim-{id}:0"))).collect();
        let config = ReplicaConfig {
            id: 0,
            election_ticks: 10,
            heartbeat_ticks: 1,
            snapshot_after_entries: 40,
            fixed_election_timeout: true,
        };
        let mut sim = Sim {
            rng: SmallRng::seed_from_u64(seed),
            now: 0,
            seq: 0,
            members: BTreeMap::new(),
            initial,
            network: Vec::new(),
            cut: BTreeSet::new(),
            faults: NetFaults::CALM,
            reports: Vec::new(),
            timeouts: BTreeMap::new(),
            trace: std::env::var_os("SIM_TRACE").is_some(),
            snapshots_installed: BTreeMap::new(),
            next_service: 0,
            acknowledged: Vec::new(),
            abandoned: 0,
            config,
            _tmp: tmp,
        };
        for id in 1..=n {
            let dir = sim._tmp.path().join(format!("member-{id}"));
            sim.members.insert(
                id,
                Member {
                    replica: None,
                    dir,
                    dataplane: Table::default(),
                    in_flight: BTreeMap::new(),
                },
            );
            sim.start(id);
        }
        sim
    }

    /// Starts (or restarts) a member from its disk.
    pub fn start(&mut self, id: u64) {
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
            election_ticks,
            ..self.config.clone()
        };
        let member = self.members.get_mut(&id).expect("known member");
        let store = LogStore::open_with(&member.dir, false).expect("log opens");
        member.replica = Some(Replica::open(config, store, &self.initial).expect("replica opens"));
        // A member replays its own log before it hears from anyone.
        self.drain_ready(id);
        // A restarted process starts with an empty kernel view only if the
        // machine rebooted; keep the dataplane as a process crash would.
    }

    /// kill -9: the member's process is gone; its disk stays.
    pub fn crash(&mut self, id: u64) {
        let member = self.members.get_mut(&id).expect("known member");
        member.replica = None;
        self.acknowledge_nothing(id);
    }

    /// The member's disk is wiped while it is down.
    pub fn wipe(&mut self, id: u64) {
        let member = self.members.get_mut(&id).expect("known member");
        assert!(member.replica.is_none(), "wipe a crashed member");
        std::fs::remove_dir_all(&member.dir).expect("wipe member dir");
        member.dataplane = Table::default();
    }

    fn acknowledge_nothing(&mut self, id: u64) {
        let member = self.members.get_mut(&id).expect("known member");
        self.abandoned += member.in_flight.len();
        member.in_flight.clear();
    }

    /// Cuts every link between `a` and the rest.
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

    pub fn heal(&mut self) {
        self.cut.clear();
    }

    pub fn is_up(&self, id: u64) -> bool {
        self.members[&id].replica.is_some()
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
                m.replica
                    .as_ref()
                    .filter(|r| r.is_leader())
                    .map(|r| (r.term(), *id))
            })
            .max()
            .map(|(_, id)| id)
    }

    pub fn state(&self, id: u64) -> Option<&State> {
        self.members[&id].replica.as_ref().map(Replica::state)
    }

    /// How many snapshots `id` installed from a leader.
    pub fn snapshots_installed(&self, id: u64) -> usize {
        self.snapshots_installed.get(&id).copied().unwrap_or(0)
    }

    pub fn applied_index(&self, id: u64) -> u64 {
        self.members[&id]
            .replica
            .as_ref()
            .map_or(0, Replica::applied_index)
    }

    /// A new, unique service: applying it twice would show (see
    /// `check_invariants`).
    fn new_service(&mut self) -> VirtualService {
        self.next_service += 1;
        let n = self.next_service;
        VirtualService {
            key: ServiceKey {
                vip: IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + n)),
                port: 80,
                protocol: Protocol::Tcp,
            },
            name: format!("svc-{n}"),
            scheduler: Scheduler::Rr,
            persistence_timeout: None,
            forwarding: Forwarding::Masquerade,
            allowed_sources: vec![],
            backends: vec![Backend {
                address: IpAddr::V4(Ipv4Addr::new(192, 168, (n >> 8) as u8, n as u8)),
                port: 8080,
                weight: 1,
                state: BackendState::Ready,
            }],
        }
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
            let replica = member.replica.as_mut().expect("leader is up");
            if let Ok(id) = replica.propose(vec![command.clone()]) {
                member.in_flight.insert(id, vec![command]);
                accepted += 1;
            }
        }
        accepted
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
        let live: Vec<&Replica> = self
            .members
            .values()
            .filter_map(|m| m.replica.as_ref())
            .collect();
        let Some(first) = live.first() else {
            return true;
        };
        live.iter().any(|r| r.is_leader())
            && live.iter().all(|r| {
                r.applied_index() == first.applied_index()
                    && r.commit_index() == r.applied_index()
                    && r.state() == first.state()
            })
    }

    fn step(&mut self) {
        self.now += STEP_MS;
        // Deliver what is due, in (time, send order).
        self.network.sort_by_key(|m| (m.at, m.seq));
        let due = self.network.partition_point(|m| m.at <= self.now);
        let delivering: Vec<InFlight> = self.network.drain(..due).collect();
        for m in delivering {
            let (from, to) = (m.message.from, m.message.to);
            let snapshot = m.message.get_msg_type() == MessageType::MsgSnapshot;
            let delivered = match self
                .members
                .get_mut(&to)
                .and_then(|mem| mem.replica.as_mut())
            {
                Some(replica) => {
                    replica.step(m.message);
                    true
                }
                None => false,
            };
            // The real transport knows when a stream breaks or a snapshot
            // has been sent, and tells the sender; so does the simulation.
            if snapshot {
                self.reports.push((from, to, Some(delivered)));
            } else if !delivered {
                self.reports.push((from, to, None));
            }
        }
        for (from, to, snapshot) in std::mem::take(&mut self.reports) {
            if let Some(replica) = self.members.get_mut(&from).and_then(|m| m.replica.as_mut()) {
                match snapshot {
                    Some(ok) => replica.report_snapshot(to, ok),
                    None => replica.report_unreachable(to),
                }
            }
        }
        if self.now.is_multiple_of(TICK_MS) {
            for m in self.members.values_mut() {
                if let Some(r) = m.replica.as_mut() {
                    r.tick();
                }
            }
        }
        let ids = self.ids();
        for id in ids {
            self.drain_ready(id);
        }
    }

    fn drain_ready(&mut self, id: u64) {
        loop {
            let member = self.members.get_mut(&id).expect("known member");
            let Some(replica) = member.replica.as_mut() else {
                return;
            };
            if !replica.has_ready() {
                return;
            }
            let out = replica.handle_ready().expect("ready handled");
            if out.installed_snapshot.is_some() {
                *self.snapshots_installed.entry(id).or_default() += 1;
            }
            if out.state_changed {
                // The reconciler's work, synchronously: plan and apply.
                let desired = Table::from_state(replica.state());
                for op in plan(&desired, &member.dataplane) {
                    member.dataplane.apply(&op).expect("plan fits the table");
                }
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
            for message in out.messages {
                self.send(message);
            }
        }
    }

    fn send(&mut self, message: Message) {
        if self.trace {
            eprintln!(
                "t={} {:?} {}->{} term {} index {} log_term {} commit {} reject {}",
                self.now,
                message.get_msg_type(),
                message.from,
                message.to,
                message.term,
                message.index,
                message.log_term,
                message.commit,
                message.reject
            );
        }
        if self.cut.contains(&(message.from, message.to)) {
            let snapshot = message.get_msg_type() == MessageType::MsgSnapshot;
            self.reports
                .push((message.from, message.to, snapshot.then_some(false)));
            return;
        }
        // Snapshots travel on their own reliable stream in the real
        // transport; losing them here only slows things down.
        let snapshot = message.get_msg_type() == MessageType::MsgSnapshot;
        if !snapshot && self.rng.gen_bool(self.faults.drop) {
            return;
        }
        let copies = if self.rng.gen_bool(self.faults.duplicate) {
            2
        } else {
            1
        };
        for _ in 0..copies {
            let delay = self
                .rng
                .gen_range(self.faults.delay_ms.0..=self.faults.delay_ms.1);
            self.seq += 1;
            self.network.push(InFlight {
                at: self.now + delay,
                seq: self.seq,
                message: message.clone(),
            });
        }
    }

    /// The promises that must hold once the cluster has converged: every
    /// live member holds an equal state and has programmed exactly it;
    /// every acknowledged command is present; no command was applied twice.
    /// One line per member: role, term, indexes. For failure messages.
    pub fn describe(&self) -> String {
        self.members
            .iter()
            .map(|(id, m)| match &m.replica {
                Some(r) => format!(
                    "member {id}: {:?} term {} leader {} commit {} applied {} services {}",
                    r.role(),
                    r.term(),
                    r.leader(),
                    r.commit_index(),
                    r.applied_index(),
                    r.state().len()
                ),
                None => format!("member {id}: down"),
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    pub fn check_invariants(&self) -> Result<(), String> {
        let live: Vec<(u64, &Member)> = self
            .members
            .iter()
            .filter(|(_, m)| m.replica.is_some())
            .map(|(id, m)| (*id, m))
            .collect();
        let (first_id, first) = live.first().ok_or("no live member")?;
        let state = first.replica.as_ref().ok_or("down")?.state();
        for (id, m) in &live {
            let r = m.replica.as_ref().ok_or("down")?;
            if r.state() != state {
                return Err(format!(
                    "member {id} holds another state than member {first_id}"
                ));
            }
            if m.dataplane != Table::from_state(r.state()) {
                return Err(format!(
                    "member {id} programmed another table than its state"
                ));
            }
        }
        for c in &self.acknowledged {
            if state.service(&c.key()).is_none() {
                return Err(format!("acknowledged command for {} is lost", c.key()));
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

#[cfg(test)]
mod tests;
