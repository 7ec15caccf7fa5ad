//! Active health checks (issue 22): each member probes its share of the
//! backends of services that ask for checks, and reports its verdicts
//! through the replicated log; the table takes a backend out only when its
//! probers agree (`model::verdict`).
//!
//! ```text
//!   state watch ──► run: which backends are mine (model::probers_of)
//!                    │ spawns one probe task per backend (probe.rs)
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

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

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
const FLUSH_EVERY: Duration = Duration::from_millis(100);

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

/// This member's probe results, shared with the admin API.
pub type LocalView = Arc<Mutex<BTreeMap<BackendSlot, LocalResult>>>;

fn unix_ms() -> u64 {
    crate::dataplane::reconcile::unix_ms(SystemTime::now()).max(0) as u64
}

/// The backends this member probes in `state`, with their check and the
/// address probed: those of services with a check, not `not-ready`, whose
/// probers (`State::probers_for`) include `me`, or every one when no
/// member is known (a standalone member).
pub fn mine(state: &State, me: u64) -> BTreeMap<BackendSlot, (HealthCheck, SocketAddr)> {
    let members = state.probing_members();
    let mut out = BTreeMap::new();
    for s in state.services() {
        let Some(check) = &s.health else { continue };
        for b in &s.backends {
            if b.state == BackendState::NotReady {
                continue;
            }
            let probed = members.is_empty()
                || crate::model::probers_of(&members, b.address, b.port).contains(&me);
            if probed {
                let to = SocketAddr::new(b.address, check.port.unwrap_or(b.port));
                out.insert((s.key, b.address, b.port), (HealthCheck::clone(check), to));
            }
        }
    }
    out
}

/// The verdicts `me` should send: each decided backend whose verdict the
/// state does not hold yet, and a withdrawal of each report the state
/// holds for a backend `me` no longer probes.
pub fn due_reports(
    state: &State,
    me: u64,
    decided: &BTreeMap<BackendSlot, bool>,
    probed: &BTreeSet<BackendSlot>,
) -> Vec<HealthReport> {
    let mut out = Vec::new();
    for (slot, down) in decided {
        let held = state
            .health_of(slot)
            .and_then(|seen| seen.get(&me))
            .map(|s| s.down);
        if held != Some(*down) {
            out.push(HealthReport {
                key: slot.0,
                address: slot.1,
                port: slot.2,
                down: Some(*down),
            });
        }
    }
    for (slot, seen) in state.health() {
        if seen.contains_key(&me) && !probed.contains(slot) {
            out.push(HealthReport {
                key: slot.0,
                address: slot.1,
                port: slot.2,
                down: None,
            });
        }
    }
    out
}

struct Probing {
    check: HealthCheck,
    to: SocketAddr,
    task: JoinHandle<()>,
    /// The probe task's verdict (its `Machine`'s state), as last told.
    health: Health,
}

/// What a probe task tells after each probe.
struct Probed {
    slot: BackendSlot,
    outcome: probe::Outcome,
    health: Health,
    changed: bool,
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
    let (tx, mut results) = mpsc::channel::<Probed>(1024);
    let mut probing: HashMap<BackendSlot, Probing> = HashMap::new();
    let mut dirty = true;
    // Verdicts sent and when, so an unchanged one is not sent each flush.
    let mut sent: HashMap<BackendSlot, (Option<bool>, Instant)> = HashMap::new();
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
            Some(Probed { slot, outcome, health, changed }) = results.recv() => {
                let Some(p) = probing.get_mut(&slot) else { continue };
                p.health = health;
                crate::metrics::METRICS
                    .health_probes
                    .with_label_values(&[if outcome.ok { "up" } else { "down" }])
                    .inc();
                crate::metrics::METRICS
                    .health_probe_seconds
                    .observe(outcome.latency.as_secs_f64());
                let now = unix_ms();
                let mut view = local.lock().unwrap_or_else(PoisonError::into_inner);
                let entry = view.entry(slot).or_insert_with(|| LocalResult {
                    health: Health::Unknown,
                    since_unix_ms: now,
                    last: outcome.clone(),
                    at_unix_ms: now,
                });
                if changed {
                    info!(
                        service = %slot.0,
                        backend = %crate::model::SocketText(slot.1, slot.2),
                        health = ?health,
                        last = %outcome.detail,
                        "backend health changed (this member's probes)"
                    );
                    entry.since_unix_ms = now;
                }
                entry.health = health;
                entry.last = outcome;
                entry.at_unix_ms = now;
            }
            _ = flush.tick() => {
                let state = states.borrow_and_update().clone();
                if dirty {
                    dirty = false;
                    resync(&state, me, &mut probing, &tx, &local);
                }
                let decided: BTreeMap<BackendSlot, bool> = probing
                    .iter()
                    .filter_map(|(slot, p)| match p.health {
                        Health::Up => Some((*slot, false)),
                        Health::Down => Some((*slot, true)),
                        Health::Unknown => None,
                    })
                    .collect();
                let probed: BTreeSet<BackendSlot> = probing.keys().copied().collect();
                let now = Instant::now();
                let due: Vec<HealthReport> = due_reports(&state, me, &decided, &probed)
                    .into_iter()
                    .filter(|r| {
                        let slot = (r.key, r.address, r.port);
                        match sent.get(&slot) {
                            Some((v, at)) if *v == r.down => now.duration_since(*at) >= RESEND_AFTER,
                            _ => true,
                        }
                    })
                    .collect();
                sent.retain(|slot, _| probed.contains(slot) || state.health_of(slot).is_some());
                for chunk in due.chunks(REPORTS_PER_ENTRY) {
                    for r in chunk {
                        sent.insert((r.key, r.address, r.port), (r.down, now));
                    }
                    debug!(reports = chunk.len(), "health reports sent");
                    proposer.report(vec![Command::ReportHealth {
                        member: me,
                        at_unix_ms: unix_ms(),
                        reports: chunk.to_vec(),
                    }]);
                }
            }
        }
    }
    for (_, p) in probing.drain() {
        p.task.abort();
    }
}

/// Starts and stops probe tasks so that exactly this member's backends
/// are probed, each with its service's current check.
fn resync(
    state: &State,
    me: u64,
    probing: &mut HashMap<BackendSlot, Probing>,
    tx: &mpsc::Sender<Probed>,
    local: &LocalView,
) {
    let wanted = mine(state, me);
    probing.retain(|slot, p| {
        let keep = wanted
            .get(slot)
            .is_some_and(|(check, to)| *check == p.check && *to == p.to);
        if !keep {
            p.task.abort();
        }
        keep
    });
    local
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .retain(|slot, _| probing.contains_key(slot) || wanted.contains_key(slot));
    let mut started = 0;
    for (slot, (check, to)) in wanted {
        if probing.contains_key(&slot) {
            continue;
        }
        let task = tokio::spawn(probe_loop(slot, check.clone(), to, tx.clone()));
        probing.insert(
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
    if started > 0 {
        info!(started, probing = probing.len(), "health probes started");
    }
    crate::metrics::METRICS
        .health_probed_backends
        .set(probing.len() as i64);
}

/// Probes one backend, the first time after a delay spread over one
/// interval by the backend, then as its `Machine` says (`next_in`), until
/// aborted.
async fn probe_loop(
    slot: BackendSlot,
    check: HealthCheck,
    to: SocketAddr,
    tx: mpsc::Sender<Probed>,
) {
    let spread = {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        slot.hash(&mut h);
        h.finish()
    };
    tokio::time::sleep(machine::first_delay(check.interval, spread)).await;
    let mut machine = Machine::new(check.rise, check.fall);
    loop {
        let started = tokio::time::Instant::now();
        let outcome = probe::probe(&check.kind, to, check.timeout).await;
        let changed = machine.observe(outcome.ok).is_some();
        let health = machine.state();
        if tx
            .send(Probed {
                slot,
                outcome,
                health,
                changed,
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
