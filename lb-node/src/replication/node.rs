//! The node thread: the one owner of a member's `Replica`.
//!
//! ```text
//!   Proposer / admin ──Input::Propose, AddMember, ...──┐
//!   peer server ───────Input::Raft(Message)────────────┤ std mpsc
//!   peer senders ──────Input::Unreachable, Snapshot────┘
//!                                                      ▼
//!                      node thread: tick / step / propose / handle_ready
//!                        │ messages           │ watch<Arc<State>>   │ watch<RaftStatus>
//!                        ▼                    ▼                      ▼
//!                    Outbox (peer lanes)   reconciler, admin     source supervisor
//! ```
//!
//! A dedicated OS thread, not a tokio task: every ready ends in an fsync,
//! which must not stall the runtime's workers.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::time::{Duration, Instant};

use raft::eraftpb::Message;
use tokio::sync::{oneshot, watch};
use tracing::{error, info, warn};

use super::proposal::{Answer, Committed, ProposeError};
use super::replica::{PeerHealth, Replica};
use crate::model::{Command, State};

/// A late tick worth a warning: half the default lease (500 ms), so a
/// lapse it causes has its cause in the log.
const STALL_WORTH_A_WARNING: Duration = Duration::from_millis(250);

/// How often the thread's scheduler accounting is read, for a late tick's
/// warning to say where the time went (`thread_time`).
const ACCOUNTING_EVERY: Duration = Duration::from_millis(100);

/// What other tasks ask of the node thread.
#[derive(Debug)]
pub enum Input {
    Propose(
        Vec<Command>,
        oneshot::Sender<Result<Committed, ProposeError>>,
    ),
    /// Entries proposed in order, each answered; once one is refused,
    /// the rest are refused too (what commits is a prefix).
    ProposeAll(Vec<(Vec<Command>, Answer)>),
    Raft(Box<Message>, super::replica::Stamp),
    /// Commands proposed from any member, unanswered (`Proposer::report`):
    /// a follower's go to the leader through Raft's proposal forwarding.
    Report(Vec<Command>),
    /// A peer's beat: its stamp, no Raft message.
    Beat(u64, super::replica::Stamp),
    Unreachable(u64),
    SnapshotSent {
        to: u64,
        ok: bool,
    },
    TransferLeader(u64),
    /// Stopping cleanly: hand VIPs and leadership over (`Replica::leave`).
    Leave,
    /// The dataplane programmed the table: take VIPs
    /// (`Replica::dataplane_ready`).
    DataplaneReady,
    /// The announcer can (or cannot) announce (`Replica::announce_ready`).
    AnnounceReady(bool),
    AddMember {
        id: u64,
        peer_address: String,
        admin_address: Option<String>,
        learner: bool,
        done: oneshot::Sender<Result<(), ProposeError>>,
    },
    /// Promote a learner (`learner` false) or demote a voter.
    MemberRole {
        id: u64,
        learner: bool,
        done: oneshot::Sender<Result<(), ProposeError>>,
    },
    RemoveMember {
        id: u64,
        done: oneshot::Sender<Result<(), ProposeError>>,
    },
    /// Snapshot the state and compact the log now.
    Snapshot,
    Stop,
}

/// Where the node thread sends Raft messages. Must not block.
pub trait Outbox: Send + 'static {
    fn send(&self, message: Message, stamp: super::replica::Stamp);
    /// A beat to `to`: the stamp alone (the VIP lease's all-to-all
    /// exchange).
    fn beat(&self, to: u64, stamp: super::replica::Stamp);
}

/// The cluster as this member sees it, for status and for deciding who runs
/// the source.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RaftStatus {
    pub id: u64,
    pub role: Role,
    pub term: u64,
    pub leader: u64,
    pub commit_index: u64,
    pub applied_index: u64,
    pub voters: Vec<u64>,
    /// Members that replicate, program and announce, but never vote.
    pub learners: Vec<u64>,
    /// The VIPs this member may announce now (owner, lease held, fenced).
    pub announced: Arc<std::collections::BTreeSet<std::net::IpAddr>>,
    /// Every VIP while this member may announce (lease, in touch, not
    /// drained): BGP's ECMP mode announces these.
    pub ecmp: Arc<std::collections::BTreeSet<std::net::IpAddr>>,
    /// Whether this member carries traffic for everyone (may announce,
    /// ready, not leaving, not drained): BGP announces the service CIDRs
    /// while it does.
    pub serving: bool,
    /// Until when what this member announces stays valid without news
    /// from the node thread: the end of its lease. The announcers stop on
    /// their own clock then, so a stalled node thread (a frozen disk)
    /// stops announcing by itself. None: nothing may be announced.
    pub announce_until: Option<std::time::Instant>,
    /// Whether this member's lease holds, and whether it may announce.
    pub lease_held: bool,
    pub may_announce: bool,
    /// Whether this member applied an entry of its current term (a new
    /// leader: every earlier entry is applied; the source waits for it).
    pub applied_current_term: bool,
    /// Whether this member's dataplane has programmed the table (until
    /// then it takes and announces no VIP).
    pub dataplane_ready: bool,
    /// On the leader: how every other voter is doing.
    pub peers: Vec<PeerHealth>,
}

impl RaftStatus {
    pub fn is_leader(&self) -> bool {
        self.role == Role::Leader
    }

    /// Whether `id` is a member of the configuration, voter or learner.
    pub fn is_member(&self, id: u64) -> bool {
        self.voters.contains(&id) || self.learners.contains(&id)
    }

    /// Whether `id` is a learner (`learner`) or a voter (not).
    pub fn has_role(&self, id: u64, learner: bool) -> bool {
        if learner {
            self.learners.contains(&id)
        } else {
            self.voters.contains(&id)
        }
    }
}

/// A member's Raft role.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Role {
    #[default]
    Follower,
    PreCandidate,
    Candidate,
    Leader,
    /// A follower that never votes nor stands for election.
    Learner,
}

impl Role {
    /// As `lbctl status` and the admin API spell it.
    pub fn name(self) -> &'static str {
        match self {
            Role::Follower => "follower",
            Role::PreCandidate => "pre-candidate",
            Role::Candidate => "candidate",
            Role::Leader => "leader",
            Role::Learner => "learner",
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// When the node thread's last tick happened: tick numbers (the lease's
/// ends) to instants, counted from the latest tick, so a node thread that
/// falls behind real time moves the instants earlier, never later.
#[derive(Debug, Clone, Copy)]
struct TickClock {
    at: Instant,
    tick: u64,
    length: Duration,
}

impl TickClock {
    fn instant(&self, tick: u64) -> Instant {
        let ahead = u32::try_from(tick.saturating_sub(self.tick)).unwrap_or(u32::MAX);
        self.at + self.length.saturating_mul(ahead)
    }
}

type AnnouncedSets = (
    Arc<std::collections::BTreeSet<std::net::IpAddr>>,
    Arc<std::collections::BTreeSet<std::net::IpAddr>>,
);

/// The member's status; `announced` is computed again only when asked
/// (`None`), because it costs O(VIPs) and the loop runs per message.
fn status_of(replica: &Replica, announced: Option<AnnouncedSets>, clock: &TickClock) -> RaftStatus {
    let (announced, ecmp) = announced.unwrap_or_else(|| {
        (
            Arc::new(replica.announced_vips()),
            Arc::new(replica.ecmp_vips()),
        )
    });
    let learners = replica.learners();
    RaftStatus {
        id: replica.id(),
        role: match replica.role() {
            raft::StateRole::Leader => Role::Leader,
            raft::StateRole::Follower if learners.contains(&replica.id()) => Role::Learner,
            raft::StateRole::Follower => Role::Follower,
            raft::StateRole::Candidate => Role::Candidate,
            raft::StateRole::PreCandidate => Role::PreCandidate,
        },
        term: replica.term(),
        leader: replica.leader(),
        commit_index: replica.commit_index(),
        applied_index: replica.applied_index(),
        voters: replica.voters(),
        learners,
        announced,
        ecmp,
        serving: replica.serving(),
        announce_until: replica.lease_until().map(|t| clock.instant(t)),
        lease_held: replica.lease_valid(),
        may_announce: replica.may_announce(),
        applied_current_term: replica.applied_current_term(),
        dataplane_ready: replica.is_dataplane_ready(),
        peers: replica.peer_health(),
    }
}

thread_local! {
    /// Inside `guarded`: a panic there is the member's error, not a crash.
    static IN_GUARDED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// A panic caught by `guarded` is reported once, as the member's error
/// (`the raft log's disk failed (...)`), not also as a raw panic message
/// on stderr: the hook stays quiet for it (its place at debug level) and
/// hands every other panic to the previous hook.
fn quiet_guarded_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if IN_GUARDED.with(std::cell::Cell::get) {
                tracing::debug!(at = ?info.location(), "the log engine panicked: {info}");
            } else {
                previous(info);
            }
        }));
    });
}

/// Runs a write to the log, turning raft-engine's panic on a failed
/// `fdatasync` (its `unwrap` when the filesystem turned read-only) into
/// the member's fatal error: it stops with a clear message and a non-zero
/// exit, its peers take over, instead of aborting. Nothing of the replica
/// is used after such a panic.
fn guarded<T>(
    write: impl FnOnce() -> Result<T, super::replica::ReplicaError>,
) -> Result<T, super::replica::ReplicaError> {
    quiet_guarded_panics();
    IN_GUARDED.with(|g| g.set(true));
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(write));
    IN_GUARDED.with(|g| g.set(false));
    result.unwrap_or_else(|panic| {
        let what = panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
            .unwrap_or_else(|| "a panic in the log engine".to_owned());
        Err(super::replica::ReplicaError::DiskFailed(what))
    })
}

/// Leaves a replica whose log engine failed as it is: dropping it would
/// have the engine flush to the failed disk once more, and panic again
/// (raft-engine's writer unwraps its `ftruncate` and `fdatasync` on
/// drop; seen in the `disk-readonly` drill). The process is stopping.
fn abandon(replica: Replica) {
    std::mem::forget(replica);
}

/// Why the node thread ended without an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// Told to stop (the member stops).
    Stopped,
    /// This member was removed from the cluster: it must not run again
    /// with this configuration (the process exits with its own status).
    Removed,
}

/// Runs the node loop until `Input::Stop`, every sender is gone, or this
/// member is removed. Returns the replica's fatal error, if any.
pub fn run(
    mut replica: Replica,
    inputs: Receiver<Input>,
    tick: Duration,
    outbox: impl Outbox,
    states: watch::Sender<Arc<State>>,
    status: watch::Sender<RaftStatus>,
) -> Result<Ended, super::replica::ReplicaError> {
    let mut waiting: HashMap<u64, Answer> = HashMap::new();
    let mut next_tick = Instant::now() + tick;
    states.send_replace(Arc::new(replica.state().clone()));
    let mut clock = TickClock {
        at: Instant::now(),
        tick: replica.ticks(),
        length: tick,
    };
    status.send_replace(status_of(&replica, None, &clock));
    // The announced and ECMP sets, and what they were computed from.
    let mut announced_cache: Option<(_, AnnouncedSets)> = None;
    info!(member = replica.id(), "raft node started");
    // The scheduler's accounting of this thread when last read, and the
    // longest step (one wake-up's work) since: a late tick's causes.
    let mut accounting = (Instant::now(), crate::thread_time::Reading::now());
    let mut longest_step = Duration::ZERO;
    loop {
        let timeout = next_tick.saturating_duration_since(Instant::now());
        let first = match inputs.recv_timeout(timeout) {
            Ok(input) => Some(input),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => return Ok(Ended::Stopped),
        };
        let woke = Instant::now();
        // Take everything queued, so one ready (one fsync) covers it all.
        for input in first
            .into_iter()
            .chain(std::iter::from_fn(|| inputs.try_recv().ok()))
        {
            match input {
                Input::Propose(commands, done) => match replica.propose(commands) {
                    Ok(id) => {
                        waiting.insert(id, done);
                    }
                    Err(e) => {
                        let _ = done.send(Err(e));
                    }
                },
                Input::ProposeAll(proposals) => super::proposal::propose_in_order(
                    proposals,
                    |c| replica.propose(c),
                    &mut waiting,
                ),
                Input::Raft(message, stamp) => replica.step(*message, stamp),
                Input::Report(commands) => replica.report(commands),
                Input::Beat(from, stamp) => replica.beat(from, &stamp),
                Input::Unreachable(id) => replica.report_unreachable(id),
                Input::SnapshotSent { to, ok } => replica.report_snapshot(to, ok),
                Input::TransferLeader(to) => replica.transfer_leader(to),
                Input::Leave => replica.leave(),
                Input::DataplaneReady => replica.dataplane_ready(),
                Input::AnnounceReady(ready) => replica.announce_ready(ready),
                Input::AddMember {
                    id,
                    peer_address,
                    admin_address,
                    learner,
                    done,
                } => {
                    let _ = done.send(replica.propose_add_member(
                        id,
                        &peer_address,
                        admin_address.as_deref(),
                        learner,
                    ));
                }
                Input::MemberRole { id, learner, done } => {
                    let _ = done.send(replica.propose_member_role(id, learner));
                }
                Input::RemoveMember { id, done } => {
                    let _ = done.send(replica.propose_remove_member(id));
                }
                Input::Snapshot => {
                    if let Err(e) = guarded(|| replica.snapshot_now()) {
                        error!(error = %e, "raft node stopped: cannot go on with this log");
                        abandon(replica);
                        return Err(e);
                    }
                }
                Input::Stop => return Ok(Ended::Stopped),
            }
        }
        if Instant::now() >= next_tick {
            // Ticks missed while this thread could not run (a stalled
            // disk, a paused process) count for the leases, which are real
            // time, though Raft gets one tick, not a burst.
            let missed = Instant::now()
                .saturating_duration_since(next_tick)
                .as_nanos()
                / tick.as_nanos().max(1);
            replica.tick();
            let stalled = tick.saturating_mul(u32::try_from(missed).unwrap_or(u32::MAX));
            if stalled >= STALL_WORTH_A_WARNING {
                // Since the accounting was last read: time on a CPU, time
                // runnable without one, and the rest blocked or asleep.
                // (This wake-up's own work so far counts as a step.)
                let (since, before) = accounting;
                let longest_step_ms = longest_step.max(woke.elapsed()).as_millis() as u64;
                let message = "the raft thread could not run (CPU starved, paused, a stalled disk): its lease counts the time";
                match crate::thread_time::Reading::now()
                    .zip(before)
                    .map(|(now, before)| now.since(before))
                {
                    Some(spent) => warn!(
                        stalled_ms = stalled.as_millis() as u64,
                        over_ms = since.elapsed().as_millis() as u64,
                        ran_ms = spent.ran.as_millis() as u64,
                        waited_for_a_cpu_ms = spent.waited.as_millis() as u64,
                        longest_step_ms,
                        "{message}"
                    ),
                    // No accounting from this kernel: no split to give.
                    None => warn!(
                        stalled_ms = stalled.as_millis() as u64,
                        longest_step_ms, "{message}"
                    ),
                }
            }
            if stalled >= STALL_WORTH_A_WARNING || accounting.0.elapsed() >= ACCOUNTING_EVERY {
                accounting = (Instant::now(), crate::thread_time::Reading::now());
                longest_step = Duration::ZERO;
            }
            if missed > 0 {
                replica.skip_ticks(u64::try_from(missed).unwrap_or(u64::MAX));
            }
            clock = TickClock {
                at: Instant::now(),
                tick: replica.ticks(),
                length: tick,
            };
            for to in replica.take_beats() {
                outbox.beat(to, replica.stamp_for(to));
            }
            next_tick += tick;
            // After a long stall, do not fire a burst of ticks.
            if next_tick < Instant::now() {
                next_tick = Instant::now() + tick;
            }
        }
        let mut state_changed = false;
        let mut completed = Vec::new();
        while replica.has_ready() {
            let out = match guarded(|| replica.handle_ready()) {
                Ok(out) => out,
                Err(e) => {
                    error!(error = %e, "raft node stopped: cannot go on with this log");
                    abandon(replica);
                    return Err(e);
                }
            };
            for message in out.messages {
                let stamp = replica.stamp_for(message.to);
                outbox.send(message, stamp);
            }
            completed.extend(out.completed);
            for id in out.abandoned {
                if let Some(done) = waiting.remove(&id) {
                    let _ = done.send(Err(ProposeError::Unknown));
                }
            }
            state_changed |= out.state_changed;
        }
        if state_changed {
            states.send_replace(Arc::new(replica.state().clone()));
        }
        // Answered only after the state is published: a proposer that reads
        // the state next sees its own proposal in it.
        for (id, outcomes) in completed {
            if let Some(done) = waiting.remove(&id) {
                // A proposal completes in this member's term (a change of
                // role abandons the pending ones), so the state published
                // above holds it and nothing of a later leader's.
                let state = states.borrow().clone();
                let _ = done.send(Ok(Committed { outcomes, state }));
            }
        }
        if replica.is_removed() {
            info!(
                member = replica.id(),
                "this member was removed from the cluster; raft stops"
            );
            return Ok(Ended::Removed);
        }
        // What is announced is computed again (O(VIPs)) only when what it
        // depends on changed: not with every tick or message.
        let key = replica.announce_key();
        let keep = match &announced_cache {
            Some((k, sets)) if *k == key => Some(sets.clone()),
            _ => None,
        };
        let recompute = keep.is_none();
        let now = status_of(&replica, keep, &clock);
        if recompute {
            announced_cache = Some((key, (now.announced.clone(), now.ecmp.clone())));
        }
        status.send_if_modified(|s| {
            if s.leader != now.leader && now.leader != 0 {
                crate::metrics::METRICS.leader_changes.inc();
            }
            // The lease's end moves with every echo: stored, but nobody is
            // woken for that alone (the announcers read it when their
            // timer for the previous end fires).
            let changed = RaftStatus {
                announce_until: s.announce_until,
                ..now.clone()
            } != *s
                // Except when the end had passed: the announcers, which
                // stopped then, must start again.
                || (now.announce_until != s.announce_until
                    && s.announce_until.is_none_or(|t| t <= Instant::now()));
            *s = now;
            changed
        });
        longest_step = longest_step.max(woke.elapsed());
    }
}

/// A handle to the node thread.
#[derive(Debug, Clone)]
pub struct NodeHandle {
    pub inputs: Sender<Input>,
    pub status: watch::Receiver<RaftStatus>,
}

impl NodeHandle {
    async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, ProposeError>>) -> Input,
    ) -> Result<T, ProposeError> {
        let (done, answer) = oneshot::channel();
        self.inputs
            .send(make(done))
            .map_err(|_| ProposeError::Stopped)?;
        answer.await.map_err(|_| ProposeError::Stopped)?
    }

    /// Proposes adding a member, a voter or a learner; returns once
    /// proposed (the change takes effect when committed).
    pub async fn add_member(
        &self,
        id: u64,
        peer_address: String,
        admin_address: Option<String>,
        learner: bool,
    ) -> Result<(), ProposeError> {
        self.ask(|done| Input::AddMember {
            id,
            peer_address,
            admin_address,
            learner,
            done,
        })
        .await
    }

    /// Proposes promoting a learner (`learner` false) or demoting a voter.
    pub async fn set_member_role(&self, id: u64, learner: bool) -> Result<(), ProposeError> {
        self.ask(|done| Input::MemberRole { id, learner, done })
            .await
    }

    pub async fn remove_member(&self, id: u64) -> Result<(), ProposeError> {
        self.ask(|done| Input::RemoveMember { id, done }).await
    }

    pub fn transfer_leader(&self, to: u64) -> Result<(), ProposeError> {
        self.inputs
            .send(Input::TransferLeader(to))
            .map_err(|_| ProposeError::Stopped)
    }

    pub fn leave(&self) -> Result<(), ProposeError> {
        self.inputs
            .send(Input::Leave)
            .map_err(|_| ProposeError::Stopped)
    }

    pub fn dataplane_ready(&self) -> Result<(), ProposeError> {
        self.inputs
            .send(Input::DataplaneReady)
            .map_err(|_| ProposeError::Stopped)
    }

    pub fn announce_ready(&self, ready: bool) -> Result<(), ProposeError> {
        self.inputs
            .send(Input::AnnounceReady(ready))
            .map_err(|_| ProposeError::Stopped)
    }

    pub fn snapshot(&self) -> Result<(), ProposeError> {
        self.inputs
            .send(Input::Snapshot)
            .map_err(|_| ProposeError::Stopped)
    }
}
