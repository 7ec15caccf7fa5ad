//! `Replica`: one member's Raft node and the state it applies, driven
//! synchronously. The only code that calls raft-rs's `RawNode`
//! (`tick/step/propose/ready/advance`), following raft-rs's
//! `examples/five_mem_node`.
//!
//! It does no networking and owns no thread: its caller feeds it ticks and
//! messages and sends what `handle_ready` returns. Who may announce what
//! (the lease, the VIPs announced, the owners the leader proposes) is
//! `announce::ownership::Ownership`'s: the replica feeds it a view of Raft
//! with every tick, stamp and apply, and proposes the owners it asks for. The daemon's node task and
//! the deterministic simulation both drive this same code.

use std::collections::{BTreeMap, BTreeSet};

use raft::eraftpb::{Message, MessageType, Snapshot};
use raft::{RawNode, StateRole};
use tracing::{debug, info, warn};

use super::proposal::ProposeError;
use super::storage::{LogStore, LogStoreError, RaftStore};
pub use crate::announce::ownership::Stamp;
use crate::announce::ownership::{Ownership, OwnershipConfig, RaftView};
use crate::model::{Applied, ApplyError, Batch, Command, State, WireError};

mod lease;
mod members;
mod ready;

/// Timing and thresholds of a replica.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaConfig {
    pub id: u64,
    /// Ticks without a leader's word before a follower stands for election
    /// (randomized up to 1.2 times this).
    pub election_ticks: usize,
    /// Ticks between a leader's heartbeats.
    pub heartbeat_ticks: usize,
    /// Take a snapshot and compact the log after this many applied entries.
    pub snapshot_after_entries: u64,
    /// Use exactly this election timeout (in ticks) instead of a random one
    /// in `[election_ticks, 1.2 * election_ticks)`. raft-rs draws that
    /// random number from its own generator, so only the simulation, which
    /// must be reproducible, fixes it (and gives each member a different
    /// one). The lease and the leader's health window stay
    /// `election_ticks`, the same on every member, as in production.
    pub fixed_election_timeout: Option<usize>,
    /// Admin API addresses of the initial members, where configured.
    pub initial_admin: BTreeMap<u64, String>,
    /// Start unready: take and announce no VIP until the dataplane has
    /// programmed the table (`dataplane_ready`). lb-node sets it; the
    /// simulation, which has no dataplane, does not.
    pub wait_for_dataplane: bool,
    /// Which addresses get an owner (`AnnounceScope`): the table's VIPs
    /// outside the service CIDRs, and the service gateways.
    pub scope: crate::announce::ownership::AnnounceScope,
    /// A leaving member serves on until it stops (BGP ECMP mode with
    /// graceful restart: its routes stay with the routers through the
    /// restart rather than being withdrawn and announced again).
    pub serve_while_leaving: bool,
    /// Start with the announcer unable to announce (BGP: no session yet):
    /// take no VIP until `announce_ready(true)`.
    pub wait_for_announcer: bool,
}

/// Why a replica cannot go on. Fatal for the member: it stops rather than
/// serve from a log it cannot trust.
#[derive(Debug, thiserror::Error)]
pub enum ReplicaError {
    #[error(transparent)]
    Store(#[from] LogStoreError),
    #[error("raft: {0}")]
    Raft(#[from] raft::Error),
    /// The log's disk failed under raft-engine (it aborts the write with a
    /// panic when an `fdatasync` fails: a filesystem turned read-only, a
    /// disk gone).
    #[error(
        "the raft log's disk failed ({0}); the member stops. Check the filesystem under its data directory (read-only after an error, full, gone), then start the member again"
    )]
    DiskFailed(String),
    /// A snapshot from the leader whose state does not decode.
    #[error("snapshot at index {index}: {source}")]
    BadSnapshot {
        index: u64,
        #[source]
        source: WireError,
    },
}

/// How the leader sees another voter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerHealth {
    pub id: u64,
    /// Heard from within an election timeout.
    pub healthy: bool,
    /// The last log index known to be on it.
    pub match_index: u64,
}

/// What one `handle_ready` produced, for the caller to act on.
#[derive(Debug, Default)]
pub struct ReadyOutput {
    /// Messages to send to peers.
    pub messages: Vec<Message>,
    /// Own proposals that were applied, with what each command did.
    pub completed: Vec<(u64, Vec<Result<Applied, ApplyError>>)>,
    /// Own proposals whose fate is unknown because leadership was lost:
    /// they may or may not be applied later.
    pub abandoned: Vec<u64>,
    /// Whether the applied state changed.
    pub state_changed: bool,
    /// The index of a snapshot installed from the leader, if one was.
    pub installed_snapshot: Option<u64>,
}

/// One member's Raft node with its applied state, on its log: a member's
/// `LogStore`, or the simulation's `MemStore`.
pub struct Replica<S: RaftStore = LogStore> {
    raw: RawNode<S>,
    state: State,
    applied: u64,
    config: ReplicaConfig,
    next_proposal: u64,
    pending: BTreeSet<u64>,
    role: StateRole,
    term: u64,
    /// This member was removed from the cluster: it takes no more input.
    removed: bool,
    /// The probers last proposed (`maybe_set_probers`) and when (tick).
    probers_proposed: Option<(BTreeSet<u64>, u64)>,
    /// The probers the leader would name, and since when (tick).
    probers_candidate: Option<(BTreeSet<u64>, u64)>,
    /// A member was added: snapshot once this ready is applied.
    snapshot_for_new_member: bool,
    /// Ticks since start.
    ticks: u64,
    /// Who may announce what: the lease, the VIPs this member announces
    /// and serves, the owners it proposes when it leads.
    ownership: Ownership,
    /// The term of the last entry applied (or of the installed snapshot).
    applied_term: u64,
    /// Stamps proposals (Unix µs): the wall clock, or the simulation's.
    clock: fn() -> u64,
}

impl<S: RaftStore> std::fmt::Debug for Replica<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replica")
            .field("id", &self.config.id)
            .field("role", &self.role)
            .field("term", &self.term)
            .field("applied", &self.applied)
            .finish()
    }
}

/// How many ticks past the election timeout a member first stands for
/// election. With check-quorum, a member ignores (pre-)votes until a full
/// election timeout (`election_ticks`, not its drawn one) has passed since
/// it last heard the leader, and the survivors of a leader's crash heard
/// its last heartbeat up to a tick or so apart. Without the margin, a
/// member drawing exactly `election_ticks` could stand while the other
/// survivor was one tick short of it: ignored, and the other's own
/// pre-vote then refused by priority, both waited a whole timeout more
/// (a leader crash cost about 1.3 s instead of 0.8 s in 2 of 20 host
/// drills). Three ticks (30 ms with the defaults) cover a late tick or two.
fn lease_margin(election_ticks: usize) -> usize {
    (election_ticks / 16).max(2)
}

impl<S: RaftStore> Replica<S> {
    /// Opens a replica on its log. A new log (empty disk) is bootstrapped
    /// with `initial_members` as voters when the member is one of them;
    /// otherwise the member waits to be added and sent a snapshot.
    pub fn open(
        config: ReplicaConfig,
        mut store: S,
        initial_members: &[(u64, String)],
    ) -> Result<Replica<S>, ReplicaError> {
        if store.is_empty() && initial_members.iter().any(|(id, _)| *id == config.id) {
            // A new cluster starts from a snapshot at index 1 that holds the
            // initial configuration, identical on every initial member. A
            // member added later cannot be sent entry 1 (it lives only in
            // that snapshot), so it always starts from a snapshot and learns
            // the true configuration, never one rebuilt from a partial log.
            let mut state = State::default();
            for (id, address) in initial_members {
                state.set_member(*id, address.clone());
            }
            for (id, address) in &config.initial_admin {
                state.set_admin_address(*id, address.clone());
            }
            let mut snapshot = Snapshot::default();
            snapshot.set_data(state.encode_snapshot().into());
            let meta = snapshot.mut_metadata();
            meta.index = 1;
            meta.term = 1;
            meta.mut_conf_state().voters = initial_members.iter().map(|(id, _)| *id).collect();
            store.apply_snapshot(snapshot)?;
        }
        let snapshot = store.latest_snapshot();
        let mut state = if snapshot.get_metadata().index > 0 {
            State::decode_snapshot(snapshot.get_data()).map_err(|source| {
                ReplicaError::BadSnapshot {
                    index: snapshot.get_metadata().index,
                    source,
                }
            })?
        } else {
            State::default()
        };
        // A member waiting to be added knows its peers only from its
        // configuration until the leader's snapshot brings the real list.
        if state.members().is_empty() {
            for (id, address) in initial_members {
                state.set_member(*id, address.clone());
            }
        }
        let applied = snapshot.get_metadata().index;
        let applied_term = snapshot.get_metadata().term;
        let raft_config = raft::Config {
            id: config.id,
            election_tick: config.election_ticks,
            heartbeat_tick: config.heartbeat_ticks,
            applied,
            max_size_per_msg: 1024 * 1024,
            max_inflight_msgs: 256,
            check_quorum: true,
            pre_vote: true,
            // Ties: when two survivors of a leader's crash stand within the
            // same moment, each would grant the other's pre-vote, vote for
            // itself and split the vote, costing a second election timeout
            // (about one election in 25 before this). With priorities a
            // member grants a (pre-)vote to an equally up-to-date candidate
            // only if the candidate's priority is at least its own, so the
            // higher id wins the tie; a candidate with a longer log wins
            // regardless. A leadership transfer lifts the transferee's
            // priority for its campaign (`step`).
            priority: config.id as i64,
            min_election_tick: config
                .fixed_election_timeout
                .unwrap_or(config.election_ticks + lease_margin(config.election_ticks)),
            max_election_tick: if let Some(fixed) = config.fixed_election_timeout {
                fixed + 1
            } else {
                // raft-rs's default spread is [e, 2e). Ties between
                // candidates are broken by priority (below), so the spread
                // need not keep them apart: a fifth of the timeout keeps
                // members from standing all at once while a dead leader is
                // replaced within 1.2 election timeouts.
                config.election_ticks
                    + lease_margin(config.election_ticks)
                    + (config.election_ticks / 5).max(1)
            },
            ..Default::default()
        };
        raft_config.validate()?;
        let raw = RawNode::new(&raft_config, store, &super::raft_log::logger(config.id))?;
        let disk_term = raw.raft.term;
        let ownership = Ownership::new(
            OwnershipConfig {
                me: config.id,
                election_ticks: config.election_ticks as u64,
                heartbeat_ticks: config.heartbeat_ticks as u64,
                scope: config.scope.clone(),
                serve_while_leaving: config.serve_while_leaving,
                wait_for_dataplane: config.wait_for_dataplane,
                wait_for_announcer: config.wait_for_announcer,
            },
            disk_term,
            crate::clock::now_unix_us(),
        );
        let mut replica = Replica {
            raw,
            state,
            applied,
            config,
            next_proposal: 1,
            pending: BTreeSet::new(),
            probers_proposed: None,
            probers_candidate: None,
            role: StateRole::Follower,
            term: 0,
            removed: false,
            snapshot_for_new_member: false,
            ticks: 0,
            ownership,
            applied_term,
            clock: crate::clock::now_unix_us,
        };
        replica.replay_committed()?;
        Ok(replica)
    }

    /// Applies the entries this member's log holds as committed but had
    /// not applied when it stopped, before anything reads the state. Without
    /// it a restarted member's state is its last snapshot's until the node
    /// thread's first ready, and its dataplane, which programs whatever
    /// state it is given, would wipe the kernel's table back to that
    /// snapshot (on a new cluster: to nothing) and program it again a moment
    /// later. raft-rs hands the same entries over again in the first ready;
    /// `apply_entries` skips what is already applied.
    fn replay_committed(&mut self) -> Result<(), ReplicaError> {
        let Some(entries) = self
            .raw
            .raft
            .raft_log
            .next_entries_since(self.applied, None)
        else {
            return Ok(());
        };
        let (from, to) = (
            self.applied,
            entries.last().map_or(self.applied, |e| e.index),
        );
        let mut out = ReadyOutput::default();
        self.apply_entries(entries, &mut out)?;
        self.raw.advance_apply_to(self.applied);
        info!(
            member = self.config.id,
            from,
            to,
            revision = self.state.revision(),
            "replayed the committed log"
        );
        Ok(())
    }

    pub fn id(&self) -> u64 {
        self.config.id
    }

    /// Sets this run's incarnation (the simulation's runs must not depend
    /// on the wall clock, which gives the default).
    pub fn set_incarnation(&mut self, incarnation: u64) {
        self.ownership.set_incarnation(incarnation);
    }

    /// The stamp to send with a message to `to`.
    pub fn stamp_for(&self, to: u64) -> Stamp {
        self.ownership.stamp_for(self.ticks, self.applied, to)
    }

    /// What ownership reads of Raft now.
    fn view(&self) -> RaftView {
        let raft = &self.raw.raft;
        RaftView {
            now: self.ticks,
            voters: self.voters(),
            learners: self.learners(),
            leader: raft.leader_id,
            is_leader: raft.state == StateRole::Leader,
            term: raft.term,
            vote: raft.vote,
            applied: self.applied,
            applied_term: self.applied_term,
            removed: self.removed,
        }
    }

    /// Replaces the clock that stamps proposals (the simulation's runs must
    /// not depend on the wall clock).
    pub fn set_clock(&mut self, clock: fn() -> u64) {
        self.clock = clock;
    }

    pub fn state(&self) -> &State {
        &self.state
    }

    pub fn role(&self) -> StateRole {
        self.raw.raft.state
    }

    pub fn is_leader(&self) -> bool {
        self.raw.raft.state == StateRole::Leader
    }

    /// The leader this member knows of; 0 for none.
    pub fn leader(&self) -> u64 {
        self.raw.raft.leader_id
    }

    pub fn term(&self) -> u64 {
        self.raw.raft.term
    }

    pub fn commit_index(&self) -> u64 {
        self.raw.raft.raft_log.committed
    }

    pub fn applied_index(&self) -> u64 {
        self.applied
    }

    /// Ticks since start.
    pub fn ticks(&self) -> u64 {
        self.ticks
    }

    /// Whether a committed configuration change removed this member. A
    /// removed member must stop: raft-rs is not built to go on without
    /// itself in the configuration.
    pub fn is_removed(&self) -> bool {
        self.removed
    }

    pub fn tick(&mut self) {
        if !self.removed {
            self.raw.tick();
            self.ticks += 1;
            let proposal = self.ownership.tick(&self.view(), &self.state);
            self.propose_owners(proposal);
            self.maybe_set_probers();
        }
    }

    /// Moves the lease clock `n` ticks on without ticking Raft: the ticks
    /// this member's thread missed while it could not run. What it heard
    /// before is that much older now, and its lease may have lapsed
    /// meanwhile: it then announces nothing until it is current again.
    pub fn skip_ticks(&mut self, n: u64) {
        if self.removed || n == 0 {
            return;
        }
        self.ticks += n;
        self.ownership.skipped(&self.view(), &self.state);
    }

    /// The voters due a beat from this member (once per heartbeat; the
    /// caller sends each, stamped, with no Raft message).
    pub fn take_beats(&mut self) -> Vec<u64> {
        if self.removed {
            return Vec::new();
        }
        self.ownership.take_beats(&self.view())
    }

    /// A beat from a peer: its stamp, no Raft message.
    pub fn beat(&mut self, from: u64, stamp: &Stamp) {
        if self.removed {
            return;
        }
        self.heard_from(from, stamp);
        self.ownership.note(&self.view(), &self.state);
    }

    /// Feeds a message from a peer. Messages raft-rs rejects (a stale term,
    /// an unknown peer) are dropped with a warning, never fatal.
    pub fn step(&mut self, mut message: Message, stamp: Stamp) {
        if self.removed {
            return;
        }
        let from = message.from;
        // A leader tells a follower the commit index it believes the
        // follower has reached. A member whose disk was wiped has less than
        // the leader remembers, and raft-rs would abort on a commit index
        // past its log; clamp it. The leader learns the truth from the
        // follower's next reply and sends what is missing (or a snapshot).
        if message.get_msg_type() == MessageType::MsgHeartbeat {
            let last = self.raw.raft.raft_log.last_index();
            if message.commit > last {
                message.commit = last;
            }
        }
        if message.get_msg_type() == MessageType::MsgTimeoutNow {
            // Asked to take over leadership: no voter may refuse it for
            // its priority (lowered again on the next role change).
            self.raw.raft.set_priority(i64::MAX);
        }
        self.heard_from(from, &stamp);
        if let Err(e) = self.raw.step(message) {
            warn!(peer = from, error = %e, "raft message dropped");
        }
    }

    /// What a peer's stamp says: its clock and the echo of this member's,
    /// its flags, its applied index and its view.
    fn heard_from(&mut self, from: u64, stamp: &Stamp) {
        if self.ownership.heard(self.ticks, from, stamp) && self.is_leader() {
            let proposal = self.ownership.reassign(&self.view(), &self.state);
            self.propose_owners(proposal);
        }
    }

    /// Proposes a batch of commands as one entry; returns its proposal id,
    /// which `handle_ready` reports in `completed` or `abandoned`.
    pub fn propose(&mut self, commands: Vec<Command>) -> Result<u64, ProposeError> {
        if !self.is_leader() {
            return Err(ProposeError::NotLeader {
                leader: self.leader(),
            });
        }
        let proposal_id = self.next_proposal;
        let data = Batch {
            proposer: self.config.id,
            proposal_id,
            commands,
            proposed_at_unix_us: (self.clock)(),
        }
        .encode();
        self.raw
            .propose(Vec::new(), data)
            .map_err(|e| ProposeError::Dropped(e.to_string()))?;
        self.next_proposal += 1;
        self.pending.insert(proposal_id);
        Ok(proposal_id)
    }

    /// Proposes commands from any member, unanswered: the leader proposes
    /// them; a follower hands them to Raft, which forwards them to the
    /// leader it knows (a proposal lost on the way is the caller's to
    /// send again: it sees whether the state took it). Used for health
    /// reports, which every member makes.
    pub fn report(&mut self, commands: Vec<Command>) {
        if self.is_leader() {
            if let Err(e) = self.propose(commands) {
                debug!(error = ?e, "report not proposed");
            }
            return;
        }
        if self.removed || self.leader() == 0 {
            return;
        }
        let data = Batch {
            proposer: self.config.id,
            // Never awaited: no id of `pending`'s.
            proposal_id: u64::MAX,
            commands,
            proposed_at_unix_us: (self.clock)(),
        }
        .encode();
        if let Err(e) = self.raw.propose(Vec::new(), data) {
            debug!(error = %e, "report not forwarded");
        }
    }

    /// Asks the leader (this member) to hand leadership to `to`.
    pub fn transfer_leader(&mut self, to: u64) {
        self.raw.transfer_leader(to);
    }

    /// Whether this member still waits for its dataplane.
    pub fn is_dataplane_ready(&self) -> bool {
        self.ownership.is_dataplane_ready()
    }

    /// Whether the announcer can make the network know this member's VIPs
    /// (`Ownership::announce_ready`).
    pub fn announce_ready(&mut self, ready: bool) {
        self.ownership.announce_ready(ready);
    }

    /// This member's dataplane has programmed the table it caught up to:
    /// it may take and announce VIPs from now on (its next messages say
    /// so).
    pub fn dataplane_ready(&mut self) {
        self.ownership.dataplane_ready();
    }

    /// This member is stopping cleanly: every message it sends says so
    /// from now on, and whoever leads gives its VIPs to the others as if
    /// it were drained (nothing is committed about it: a restarted member
    /// is eligible again). A leader also hands leadership to the healthy
    /// voter whose log is furthest along.
    pub fn leave(&mut self) {
        self.ownership.leave();
        if !self.is_leader() {
            return;
        }
        let healthy = self.healthy_members();
        let best = self
            .voters()
            .into_iter()
            .filter(|id| {
                *id != self.config.id && healthy.contains(id) && !self.ownership.is_leaving(*id)
            })
            .max_by_key(|id| self.raw.raft.prs().get(*id).map_or(0, |p| p.matched));
        if let Some(to) = best {
            info!(
                member = self.config.id,
                to, "leaving: handing leadership over"
            );
            self.raw.transfer_leader(to);
        }
    }

    /// Tells raft a peer could not be reached, so it stops pipelining to it.
    pub fn report_unreachable(&mut self, id: u64) {
        self.raw.report_unreachable(id);
    }

    /// Tells raft how sending a snapshot to `id` ended.
    pub fn report_snapshot(&mut self, id: u64, ok: bool) {
        let status = if ok {
            raft::SnapshotStatus::Finish
        } else {
            raft::SnapshotStatus::Failure
        };
        self.raw.report_snapshot(id, status);
    }
}
