//! Active health checks (issue 22): each member probes its share of the
//! backends of services that ask for checks, and reports its verdicts
//! through the replicated log; the table takes a backend out only when its
//! probers agree (`model::verdict`).
//!
//! ```text
//!   state watch ──► run: which backends are mine (model::probers_of)
//!                    │ spawns one probe task per backend (probe.rs) on
//!                    │ threads of their own (ProbeThreads)
//!                    │ ◄── results ── probe tasks
//!                    │ Machine per backend (machine.rs: rise / fall)
//!                    └─► Proposer::report(ReportHealth) when a verdict
//!                        differs from what the applied state holds
//! ```
//!
//! Level-based like the rest: what this member reported is in the state;
//! a report lost on its way (a leader change) is sent again once it is
//! overdue, and a member that restarts reports afresh.

pub mod machine;
pub mod probe;
pub mod settings;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use crate::model::{BackendSlot, BackendState, Command, HealthCheck, HealthReport, State};
use crate::replication::{Proposer, StateWatch};
use machine::{Health, Machine};

/// At most this many verdicts in one log entry.
const REPORTS_PER_ENTRY: usize = 5_000;
/// A verdict not seen in the state this long after it was sent is sent
/// again (lost with a leader change, or to a follower without a leader).
const RESEND_AFTER: Duration = Duration::from_secs(2);
/// How often changes are gathered into reports.
/// At most this many entries a second per member, however many
/// backends change.
const FLUSH_EVERY: Duration = Duration::from_millis(250);

/// What this member's own probes found of one backend (for `lbctl` and
/// the metrics; the replicated verdicts are in the state).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalResult {
    pub health: Health,
    /// When `health` last changed (Unix ms).
    pub since_unix_ms: u64,
    pub last: probe::Outcome,
    /// When the last probe ended (Unix ms).
    pub at_unix_ms: u64,
}

/// One backend's `LocalResult`, written by its probe task after each
/// probe (an uncontended lock), read by the admin API.
pub type ResultCell = Arc<Mutex<LocalResult>>;

/// This member's probe results, shared with the admin API: the map
/// changes only when probing starts or stops, not with each probe.
pub type LocalView = Arc<Mutex<BTreeMap<BackendSlot, ResultCell>>>;

/// The backends this member probes in `state`, with their check and the
/// address probed: those of services with a check, not `not-ready`, whose
/// probers (`State::probers_for`) include `me`, or every one when no
/// member is known (a standalone member).
#[cfg(test)]
pub fn mine(state: &State, me: u64) -> BTreeMap<BackendSlot, (HealthCheck, SocketAddr)> {
    let members = state.probing_members();
    let mut out = BTreeMap::new();
    for s in state.services() {
        out.extend(mine_of(s, me, &members));
    }
    out
}

/// `mine` for one service, with the probing members given.
fn mine_of(
    s: &crate::model::VirtualService,
    me: u64,
    members: &BTreeSet<u64>,
) -> Vec<(BackendSlot, (HealthCheck, SocketAddr))> {
    let Some(check) = &s.health else {
        return Vec::new();
    };
    s.backends
        .iter()
        .filter(|b| b.state != BackendState::NotReady)
        .filter(|b| {
            members.is_empty() || crate::model::probers_of(members, b.address, b.port).contains(&me)
        })
        .map(|b| {
            let to = SocketAddr::new(b.address, check.port.unwrap_or(b.port));
            ((s.key, b.address, b.port), (HealthCheck::clone(check), to))
        })
        .collect()
}

/// The report `me` owes for one backend: its verdict (`decided`: down or
/// up; `None` while undecided or not probed) when the state holds
/// another, or a withdrawal when it no longer probes it (`probed` false)
/// and the state still holds its word.
fn report_for(
    state: &State,
    me: u64,
    slot: &BackendSlot,
    probed: bool,
    decided: Option<bool>,
) -> Option<HealthReport> {
    let held = state
        .health_of(slot)
        .and_then(|seen| seen.get(&me))
        .map(|s| s.down);
    let down = match (probed, decided) {
        (true, Some(down)) if held != Some(down) => Some(down),
        (false, _) if held.is_some() => None,
        _ => return None,
    };
    Some(HealthReport {
        key: slot.0,
        address: slot.1,
        port: slot.2,
        down,
    })
}

/// The verdicts `me` should send: each decided backend whose verdict the
/// state does not hold yet, and a withdrawal of each report the state
/// holds for a backend `me` no longer probes.
#[cfg(test)]
pub fn due_reports(
    state: &State,
    me: u64,
    decided: &BTreeMap<BackendSlot, bool>,
    probed: &BTreeSet<BackendSlot>,
) -> Vec<HealthReport> {
    let mut out: Vec<HealthReport> = decided
        .iter()
        .filter_map(|(slot, down)| report_for(state, me, slot, true, Some(*down)))
        .collect();
    out.extend(
        state
            .health()
            .keys()
            .filter(|slot| !probed.contains(slot))
            .filter_map(|slot| report_for(state, me, slot, false, None)),
    );
    out
}

struct Probing {
    check: HealthCheck,
    to: SocketAddr,
    task: JoinHandle<()>,
    /// The probe task's verdict (its `Machine`'s state), as last told.
    health: Health,
}

/// What a probe task tells when its verdict changed (each probe's result
/// goes to its `ResultCell`).
struct Probed {
    slot: BackendSlot,
    /// The probe that changed it ("connection refused").
    detail: std::borrow::Cow<'static, str>,
    health: Health,
}

/// Probes this member's share of the backends and reports verdicts until
/// `shutdown`.
pub async fn run(
    me: u64,
    mut states: StateWatch,
    proposer: Proposer,
    local: LocalView,
    shutdown: CancellationToken,
) {
    let probes = match ProbeThreads::start() {
        Ok(p) => p,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the health-probe threads: no health checks on this member");
            return;
        }
    };
    let (tx, mut results) = mpsc::channel::<Probed>(4096);
    let mut runner = Runner {
        me,
        probes,
        tx,
        local,
        probing: HashMap::new(),
        touched: HashSet::new(),
        pending: HashMap::new(),
        last: None,
    };
    let mut dirty = true;
    let mut flush = tokio::time::interval(FLUSH_EVERY);
    flush.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            changed = states.changed() => {
                if changed.is_err() {
                    break;
                }
                dirty = true;
            }
            Some(p) = results.recv() => runner.probed(p),
            _ = flush.tick() => {
                if dirty {
                    dirty = false;
                    let state = states.borrow_and_update().clone();
                    runner.follow(&state);
                }
                let state = states.borrow().clone();
                let due = runner.due(&state);
                for chunk in due.chunks(REPORTS_PER_ENTRY) {
                    debug!(reports = chunk.len(), "health reports sent");
                    proposer.report(vec![Command::ReportHealth {
                        member: me,
                        at_unix_ms: crate::clock::now_unix_ms(),
                        reports: chunk.to_vec(),
                    }]);
                }
            }
        }
    }
    for (_, p) in runner.probing.drain() {
        p.task.abort();
    }
}

/// The threads the probes run on: runtimes of one thread each, one per
/// core (at most `MAX_PROBE_THREADS`), each backend's probes always on the
/// same one. Probing costs what the probes cost (no wake-ups and task
/// stealing between the member's worker threads for tens of thousands of
/// small tasks), and a flood of probes waits behind itself, not in the
/// queues of the tasks that keep Raft's heartbeats, the admin API and
/// `/metrics` going: with 100,000 backends on a saturated machine those
/// answered in seconds when the probes ran among them (`health-bench`,
/// docs/health.md).
struct ProbeThreads {
    handles: Vec<tokio::runtime::Handle>,
    /// Dropped, each ends its thread (its runtime drops what is left).
    _stops: Vec<tokio::sync::oneshot::Sender<()>>,
}

/// At most this many probe threads, whatever the cores.
const MAX_PROBE_THREADS: usize = 4;

impl ProbeThreads {
    fn start() -> std::io::Result<ProbeThreads> {
        let count = std::thread::available_parallelism()
            .map_or(1, usize::from)
            .clamp(1, MAX_PROBE_THREADS);
        let mut handles = Vec::with_capacity(count);
        let mut stops = Vec::with_capacity(count);
        for i in 0..count {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            handles.push(runtime.handle().clone());
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            stops.push(stop);
            // Not joined: its stop dropped, the thread drops its runtime
            // and the probe tasks left on it.
            std::thread::Builder::new()
                .name(format!("health-probes-{i}"))
                .spawn(move || {
                    let _ = runtime.block_on(stopped);
                })?;
        }
        Ok(ProbeThreads {
            handles,
            _stops: stops,
        })
    }

    /// The runtime `slot`'s probes run on.
    fn for_slot(&self, slot: &BackendSlot) -> &tokio::runtime::Handle {
        let i = (spread_of(slot) % self.handles.len() as u64) as usize;
        &self.handles[i]
    }
}

/// A hash of a backend, to spread its probes (over the interval, over the
/// probe threads).
fn spread_of(slot: &BackendSlot) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    slot.hash(&mut h);
    h.finish()
}

/// The probe tasks and what is owed to the log. Work is in proportion to
/// what changed: a state change that touched only health reports costs
/// nothing here; one that changed services resyncs only those; a change
/// of the probing members resyncs everything.
struct Runner {
    me: u64,
    /// Where probe tasks run.
    probes: ProbeThreads,
    tx: mpsc::Sender<Probed>,
    local: LocalView,
    probing: HashMap<BackendSlot, Probing>,
    /// Backends whose report may be owed (verdict changed, started or
    /// stopped probing).
    touched: HashSet<BackendSlot>,
    /// Reports sent and not yet seen in the state, and when.
    pending: HashMap<BackendSlot, (Option<bool>, Instant)>,
    /// The state last followed.
    last: Option<Arc<State>>,
}

impl Runner {
    /// A probe task's verdict changed.
    fn probed(&mut self, p: Probed) {
        let Some(probing) = self.probing.get_mut(&p.slot) else {
            return;
        };
        probing.health = p.health;
        info!(
            service = %p.slot.0,
            backend = %crate::model::SocketText(p.slot.1, p.slot.2),
            health = ?p.health,
            last = %p.detail,
            "backend health changed (this member's probes)"
        );
        self.touched.insert(p.slot);
    }

    /// Follows a new applied state: probes started and stopped where
    /// services (or the probing members) changed.
    fn follow(&mut self, state: &Arc<State>) {
        let members = state.probing_members();
        let scope: Option<Vec<crate::model::ServiceKey>> = match &self.last {
            Some(last) if last.probing_members() == members => Some(
                state
                    .service_changes_since(last)
                    .into_iter()
                    .map(|(key, _, _)| key)
                    .collect(),
            ),
            _ => None,
        };
        let health_changed = self
            .last
            .as_ref()
            .is_none_or(|last| !last.health().ptr_eq(state.health()) || scope.is_none());
        if health_changed {
            crate::metrics::METRICS
                .health_backends_down
                .set(state.backends_down() as i64);
        }
        self.last = Some(state.clone());
        let mut wanted: HashMap<BackendSlot, (HealthCheck, SocketAddr)> = HashMap::new();
        let keys: BTreeSet<crate::model::ServiceKey> = match &scope {
            Some(keys) if keys.is_empty() => return,
            Some(keys) => keys.iter().copied().collect(),
            None => state.services().map(|s| s.key).collect(),
        };
        for key in &keys {
            if let Some(s) = state.service(key) {
                wanted.extend(mine_of(s, self.me, &members));
            }
        }
        // Stop what is no longer wanted (within the scope).
        let mut stopped = Vec::new();
        self.probing.retain(|slot, p| {
            if !keys.contains(&slot.0) {
                return true;
            }
            let keep = wanted
                .get(slot)
                .is_some_and(|(check, to)| *check == p.check && *to == p.to);
            if !keep {
                p.task.abort();
                stopped.push(*slot);
            }
            keep
        });
        self.local
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|slot, _| self.probing.contains_key(slot));
        for slot in &stopped {
            // A verdict on a backend no longer probed (or gone) is not
            // owed any more; a withdrawal may be (`due`).
            self.pending.remove(slot);
        }
        self.touched.extend(stopped);
        // Reports this member holds in the state for backends in scope it
        // does not probe (after a restart: from its previous run).
        if scope.is_none() {
            for (slot, seen) in state.health() {
                if seen.contains_key(&self.me) && !wanted.contains_key(slot) {
                    self.touched.insert(*slot);
                }
            }
        }
        let mut started = 0;
        let mut local = self.local.lock().unwrap_or_else(PoisonError::into_inner);
        for (slot, (check, to)) in wanted {
            if self.probing.contains_key(&slot) {
                continue;
            }
            let now = crate::clock::now_unix_ms();
            let cell: ResultCell = Arc::new(Mutex::new(LocalResult {
                health: Health::Unknown,
                since_unix_ms: now,
                last: probe::Outcome {
                    ok: false,
                    latency: Duration::ZERO,
                    detail: "not probed yet".into(),
                },
                at_unix_ms: 0,
            }));
            let task = self.probes.for_slot(&slot).spawn(probe_loop(
                slot,
                check.clone(),
                to,
                cell.clone(),
                self.tx.clone(),
            ));
            local.insert(slot, cell);
            self.probing.insert(
                slot,
                Probing {
                    health: Health::Unknown,
                    check,
                    to,
                    task,
                },
            );
            started += 1;
        }
        drop(local);
        if started > 0 {
            info!(
                started,
                probing = self.probing.len(),
                "health probes started"
            );
        }
        crate::metrics::METRICS
            .health_probed_backends
            .set(self.probing.len() as i64);
    }

    /// The reports owed now: for each touched backend, and again for each
    /// sent one the state has not taken after `RESEND_AFTER`.
    fn due(&mut self, state: &State) -> Vec<HealthReport> {
        let now = Instant::now();
        let mut out = Vec::new();
        for slot in self.touched.drain() {
            let p = self.probing.get(&slot);
            let decided = p.and_then(|p| match p.health {
                Health::Up => Some(false),
                Health::Down => Some(true),
                Health::Unknown => None,
            });
            if let Some(r) = report_for(state, self.me, &slot, p.is_some(), decided) {
                if matches!(self.pending.get(&slot), Some((v, _)) if *v == r.down) {
                    continue;
                }
                self.pending.insert(slot, (r.down, now));
                out.push(r);
            }
        }
        let me = self.me;
        self.pending.retain(|slot, (v, at)| {
            let held = state
                .health_of(slot)
                .and_then(|seen| seen.get(&me))
                .map(|s| s.down);
            let taken = match v {
                Some(down) => held == Some(*down),
                None => held.is_none(),
            };
            if taken {
                return false;
            }
            if now.duration_since(*at) >= RESEND_AFTER {
                *at = now;
                out.push(HealthReport {
                    key: slot.0,
                    address: slot.1,
                    port: slot.2,
                    down: *v,
                });
            }
            true
        });
        out
    }
}

/// Probes one backend, the first time after a delay spread over one
/// interval by the backend, then as its `Machine` says (`next_in`), until
/// aborted. Each result goes to `cell` and the metrics; a changed verdict
/// also to the runner.
async fn probe_loop(
    slot: BackendSlot,
    check: HealthCheck,
    to: SocketAddr,
    cell: ResultCell,
    tx: mpsc::Sender<Probed>,
) {
    let metrics = &crate::metrics::METRICS;
    let (probes_up, probes_down) = (
        metrics.health_probes.with_label_values(&["up"]),
        metrics.health_probes.with_label_values(&["down"]),
    );
    tokio::time::sleep(machine::first_delay(check.interval, spread_of(&slot))).await;
    let mut machine = Machine::new(check.rise, check.fall);
    loop {
        let started = tokio::time::Instant::now();
        let outcome = probe::probe(&check.kind, to, check.timeout).await;
        if outcome.ok {
            probes_up.inc();
        } else {
            probes_down.inc();
        }
        metrics
            .health_probe_seconds
            .observe(outcome.latency.as_secs_f64());
        let changed = machine.observe(outcome.ok).is_some();
        let health = machine.state();
        let detail = changed.then(|| outcome.detail.clone());
        {
            let now = crate::clock::now_unix_ms();
            let mut r = cell.lock().unwrap_or_else(PoisonError::into_inner);
            if changed {
                r.since_unix_ms = now;
            }
            r.health = health;
            r.last = outcome;
            r.at_unix_ms = now;
        }
        if let Some(detail) = detail
            && tx
                .send(Probed {
                    slot,
                    detail,
                    health,
                })
                .await
                .is_err()
        {
            break;
        }
        tokio::time::sleep_until(started + machine.next_in(check.interval, check.timeout)).await;
    }
}

#[cfg(test)]
mod tests;
