//! The reconciler: the one task that owns the dataplane.
//!
//! Level-based: on every new state it plans against what it believes is
//! programmed and applies the difference; every `repair_interval` (and after
//! a failure to reach the dataplane) it forgets that belief, dumps the
//! dataplane and plans against what is really there, which repairs drift
//! such as an `ipvsadm -C` by hand.
//!
//! The periodic repair goes a slice at a time (services read back with
//! `dump_only`, as many as take 10-40 ms to read), with the
//! changes that arrive applied between its slices: a whole-table dump at
//! 50,000 x 10 took 43 s in the kernel lab, every change waited behind it,
//! and the table was built twice (what the kernel held, what it should
//! hold) (issue 20). A
//! whole dump is left for the start and after the dataplane was
//! unreachable, when nothing is known of what it holds.
//!
//! A service the dataplane refuses (a scheduler the kernel lacks) is set
//! apart: its belief is read back from the dataplane (a refused operation
//! changes nothing), it is reported, and it is retried on its own after 1,
//! 2, 4, ... 60 s, while every other change goes on at its own cost. One
//! refused service once made every sync a whole-table dump, every second
//! (issue 20: 17.4 s of CPU per 20 s with a 5,000 x 10 table).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::clock::unix_ms;
use crate::dataplane::{Dataplane, DataplaneError, Op, Table, plan};
use crate::model::{ServiceKey, State};

/// A batch of at least this many operations is recorded in the belief on
/// another thread while the dataplane programs it.
const RECORD_BESIDE: usize = 4096;

/// After a failed sync, try again this soon rather than waiting for the
/// repair interval.
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(1);

/// A refused service is retried after this, doubled at each refusal up to
/// `REFUSED_RETRY_MAX`.
const REFUSED_RETRY_FIRST: Duration = Duration::from_secs(1);
const REFUSED_RETRY_MAX: Duration = Duration::from_secs(60);

/// A repair round takes at most a fifth of the time from its start to the
/// next one's: the next waits `repair_interval`, or this many times the
/// round's own time when that is longer. A round of 50,000 x 10 took
/// 45-72 s in the kernel lab's emulated guest: with 30 s between rounds
/// the member was repairing most of the time, and every change shared the
/// two CPUs with it (issue 20).
const REPAIR_REST_FACTOR: u32 = 4;

/// A repair round reads back services until their believed destinations
/// reach a budget (one service at least), then lets changes through. The
/// budget starts here and follows how long a slice takes: halved when a
/// slice took over `SLICE_TOO_LONG`, doubled under `SLICE_SHORT`, so that
/// a change waits about `SLICE_SHORT`..`SLICE_TOO_LONG` for the slice in
/// progress whatever the machine (a slice of 2,048 took 0.2 s in the
/// kernel lab's emulated guest).
const REPAIR_SLICE_DESTINATIONS: usize = 2048;
const SLICE_BUDGET_MIN: usize = 16;
const SLICE_BUDGET_MAX: usize = 16_384;
const SLICE_SHORT: Duration = Duration::from_millis(10);
const SLICE_TOO_LONG: Duration = Duration::from_millis(40);

/// A periodic repair in progress: every service the kernel or the belief
/// held at its start, compared a slice at a time.
#[derive(Debug)]
struct Round {
    keys: Vec<ServiceKey>,
    next: usize,
    /// Destinations' worth of services in the next slice.
    budget: usize,
    started: std::time::Instant,
    slices: usize,
    /// Operations the round's slices applied: drift.
    repaired: usize,
}

impl Round {
    fn new(kernel: Vec<ServiceKey>, belief: &Table) -> Round {
        let keys: BTreeSet<ServiceKey> = kernel
            .into_iter()
            .chain(belief.services.keys().copied())
            .collect();
        Round {
            keys: keys.into_iter().collect(),
            next: 0,
            budget: REPAIR_SLICE_DESTINATIONS,
            started: std::time::Instant::now(),
            slices: 0,
            repaired: 0,
        }
    }

    /// The next slice's services, none when the round is over.
    fn next_slice(&mut self, belief: &Table, refused: &RefusedServices) -> BTreeSet<ServiceKey> {
        let mut slice = BTreeSet::new();
        let mut destinations = 0;
        while destinations < self.budget
            && let Some(key) = self.keys.get(self.next)
        {
            self.next += 1;
            // A refused service is retried on its own schedule.
            if refused.contains_key(key) {
                continue;
            }
            destinations += belief
                .services
                .get(key)
                .map_or(1, |s| s.destinations.len().max(1));
            slice.insert(*key);
        }
        if !slice.is_empty() {
            self.slices += 1;
        }
        slice
    }

    /// The last slice took `took`: the next one's budget.
    fn took(&mut self, took: Duration) {
        if took > SLICE_TOO_LONG {
            self.budget = (self.budget / 2).max(SLICE_BUDGET_MIN);
        } else if took < SLICE_SHORT {
            self.budget = (self.budget * 2).min(SLICE_BUDGET_MAX);
        }
    }
}

/// What one step of a repair round came to.
#[derive(Debug, PartialEq, Eq)]
enum Step {
    More,
    Done,
    /// The dataplane could not be reached: resync from a whole dump.
    Unreachable,
}

/// A service the dataplane refused: when it is tried again.
#[derive(Debug, Clone, Copy)]
struct Refused {
    refusals: u32,
    retry_at: tokio::time::Instant,
}

/// The services set apart, with their retry times.
type RefusedServices = BTreeMap<ServiceKey, Refused>;

/// What the reconciler last did, for status and metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DataplaneStatus {
    pub kind: &'static str,
    /// Unix milliseconds of the last completed sync; 0 if none yet.
    pub last_sync_unix_ms: i64,
    /// Revision of the state the last sync programmed.
    pub synced_revision: u64,
    /// Operations the last sync applied.
    pub last_sync_ops: u64,
    /// Operations applied after a dump found the dataplane different from
    /// what had been programmed (someone changed it by hand).
    pub drift_repairs: u64,
    /// Empty when the last sync succeeded.
    pub last_error: String,
    pub programmed_services: u64,
    pub programmed_destinations: u64,
}

/// A request for the kernel counters of some services, answered by the
/// reconciler (which owns the dataplane) between syncs.
#[derive(Debug)]
pub struct CountersQuery {
    pub keys: Vec<crate::model::ServiceKey>,
    pub reply: tokio::sync::oneshot::Sender<
        Result<Vec<crate::dataplane::ServiceCounters>, crate::dataplane::DataplaneError>,
    >,
}

/// Keeps `dataplane` equal to the latest state from `states` until
/// `shutdown`. The dataplane is left programmed on shutdown: a member that
/// stops keeps forwarding until something else takes over (fail static).
pub async fn run<D: Dataplane>(
    mut dataplane: D,
    mut states: watch::Receiver<Arc<State>>,
    repair_interval: Duration,
    status: watch::Sender<DataplaneStatus>,
    mut queries: tokio::sync::mpsc::Receiver<CountersQuery>,
    shutdown: CancellationToken,
) {
    let kind = dataplane.kind();
    status.send_modify(|s| s.kind = kind);
    // What we believe is programmed, and the state it was programmed from;
    // None means "dump before planning".
    let mut programmed: Option<(Table, Arc<State>)> = None;
    // Whether the latest state still has to be programmed.
    let mut pending = true;
    let mut next_repair = tokio::time::Instant::now() + repair_interval;
    let mut refused = RefusedServices::new();
    // The proposal time of the newest change programmed; None until the
    // first sync, whose changes may be old (a restart replays the log) and
    // are not counted.
    let mut propagated: Option<u64> = None;
    let mut round: Option<Round> = None;
    // The listing that starts a round, running beside the loop.
    let mut listing: Option<tokio::task::JoinHandle<Result<Vec<ServiceKey>, DataplaneError>>> =
        None;
    let mut housekeeping = tokio::time::interval(Duration::from_secs(1));
    housekeeping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let wait = if pending || programmed.is_none() {
            let state = states.borrow_and_update().clone();
            let repairing = programmed.is_none();
            let synced = sync(
                &mut dataplane,
                &state,
                &mut programmed,
                &mut refused,
                repairing,
                &status,
            )
            .await;
            if synced {
                pending = false;
                let changed_at = state.changed_at_unix_us();
                match propagated {
                    Some(seen) if changed_at > seen => {
                        let now = crate::clock::now_unix_us();
                        crate::metrics::METRICS
                            .propagation_seconds
                            .observe(now.saturating_sub(changed_at) as f64 / 1e6);
                        propagated = Some(changed_at);
                    }
                    Some(_) => {}
                    None => propagated = Some(changed_at),
                }
                if repairing {
                    next_repair = tokio::time::Instant::now() + repair_interval;
                }
                next_repair
            } else {
                programmed = None;
                tokio::time::Instant::now() + RETRY_AFTER_FAILURE
            }
        } else {
            next_repair
        };
        if programmed.is_none() {
            // The whole dump that comes next replaces the round.
            round = None;
            if let Some(l) = listing.take() {
                l.abort();
            }
        }
        let retry_at = refused.values().map(|r| r.retry_at).min();
        let refused_due = || retry_at.is_some_and(|r| r <= tokio::time::Instant::now());
        if let Some(r) = round.as_mut() {
            // One slice, then the loop again: a change that came meanwhile
            // is applied before the next slice, and a stream of changes
            // does not hold the round up (one slice between two syncs).
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => return,
                Some(q) = queries.recv() => {
                    let _ = q.reply.send(dataplane.counters(&q.keys).await);
                }
                _ = housekeeping.tick() => {
                    if !housekeep(&mut dataplane).await {
                        programmed = None;
                    }
                }
                () = std::future::ready(()) => {
                    if refused_due() {
                        if !retry_refused(&mut dataplane, &mut programmed, &mut refused, &status).await {
                            programmed = None;
                        }
                    } else {
                        let round_started = r.started;
                        match repair_step(&mut dataplane, &mut programmed, &mut refused, r, &status).await {
                            Step::More => {}
                            Step::Done => {
                                round = None;
                                let rest = repair_interval.max(round_started.elapsed() * REPAIR_REST_FACTOR);
                                if rest > repair_interval {
                                    debug!(next_in_s = rest.as_secs(), "the repair round was long: the next one waits longer");
                                }
                                next_repair = tokio::time::Instant::now() + rest;
                            }
                            Step::Unreachable => programmed = None,
                        }
                    }
                }
            }
            tokio::task::yield_now().await;
            match states.has_changed() {
                Ok(changed) => pending |= changed,
                Err(_) => return,
            }
            continue;
        }
        // While a listing runs, its end is what starts the round.
        let wait = match listing {
            Some(_) => tokio::time::Instant::now() + repair_interval,
            None => wait,
        };
        let wake = retry_at.map_or(wait, |r| r.min(wait));
        tokio::select! {
            _ = shutdown.cancelled() => return,
            changed = states.changed() => match changed {
                Ok(()) => pending = true,
                Err(_) => return,
            },
            Some(q) = queries.recv() => {
                let _ = q.reply.send(dataplane.counters(&q.keys).await);
            }
            _ = housekeeping.tick() => {
                if !housekeep(&mut dataplane).await {
                    programmed = None;
                }
            }
            listed = async { listing.as_mut().expect("guarded by the condition").await }, if listing.is_some() => {
                listing = None;
                match listed {
                    Ok(Ok(kernel)) => {
                        round = programmed.as_ref().map(|(belief, _)| Round::new(kernel, belief));
                    }
                    Ok(Err(e)) => {
                        warn!(error = %e, "dataplane unreachable for the repair; resyncing from a dump");
                        status.send_modify(|s| s.last_error = e.to_string());
                        programmed = None;
                    }
                    Err(e) => {
                        warn!(error = %e, "the repair's listing failed; resyncing from a dump");
                        programmed = None;
                    }
                }
            }
            _ = tokio::time::sleep_until(wake) => {
                if refused_due() {
                    if !retry_refused(&mut dataplane, &mut programmed, &mut refused, &status).await {
                        programmed = None;
                    }
                } else if tokio::time::Instant::now() >= wait && programmed.is_some() && listing.is_none() {
                    debug!("dataplane repair: listing the services to compare with the state");
                    listing = Some(tokio::spawn(dataplane.list_services()));
                }
            }
        }
    }
}

/// The once-a-second housekeeping (IPVS: drained destinations deleted).
/// False when the dataplane must be resynced from a dump.
async fn housekeep<D: Dataplane>(dataplane: &mut D) -> bool {
    match dataplane.maintain().await {
        Ok(()) => true,
        Err(e) => {
            warn!(error = %e, "dataplane housekeeping failed; resyncing");
            false
        }
    }
}

/// The operations that take the dataplane from what it holds to `state`.
///
/// With `previous`, the state `observed` was programmed from, only the
/// services that changed since are planned: the cost follows the change,
/// not the table. Without it (after a dump), the whole table is compared.
pub fn plan_sync(
    state: &State,
    observed: &Table,
    previous: Option<&State>,
) -> Vec<crate::dataplane::Op> {
    match previous {
        Some(previous) => {
            // Its parts timed: a change's first plan after a full sync took
            // 1.8-3.2 ms in the kernel lab's emulated guest, later ones
            // 0.1-0.4 ms (issue 20).
            let t0 = std::time::Instant::now();
            let keys = state.changed_keys_since(previous);
            let t1 = std::time::Instant::now();
            let desired = Table::from_state_for(state, &keys);
            let t2 = std::time::Instant::now();
            let held = observed.only(&keys);
            let t3 = std::time::Instant::now();
            let ops = plan(&desired, &held);
            let us = |a: std::time::Instant, b: std::time::Instant| (b - a).as_secs_f64() * 1e6;
            debug!(
                services = keys.len(),
                changed_keys_us = us(t0, t1).round(),
                desired_us = us(t1, t2).round(),
                held_us = us(t2, t3).round(),
                compare_us = us(t3, std::time::Instant::now()).round(),
                "change planned"
            );
            ops
        }
        None => plan(&Table::from_state(state), observed),
    }
}

/// One sync. Returns false when it must be retried from a fresh dump.
async fn sync<D: Dataplane>(
    dataplane: &mut D,
    state: &Arc<State>,
    programmed: &mut Option<(Table, Arc<State>)>,
    refused: &mut RefusedServices,
    repairing: bool,
    status: &watch::Sender<DataplaneStatus>,
) -> bool {
    let (observed, previous) = match programmed.take() {
        Some((table, previous)) => (table, Some(previous)),
        None => {
            crate::metrics::METRICS.dataplane_dumps.inc();
            match dataplane.dump().await {
                Ok(table) => (table, None),
                Err(e) => {
                    warn!(error = %e, "dataplane dump failed; retrying");
                    status.send_modify(|s| s.last_error = e.to_string());
                    return false;
                }
            }
        }
    };
    let started = std::time::Instant::now();
    let ops = plan_sync(state, &observed, previous.as_deref());
    let planned = started.elapsed();
    let base = match &previous {
        Some(_) => status.borrow().programmed_destinations,
        None => observed.destination_count() as u64,
    };
    let n_ops = ops.len();
    let Some(now_programmed) = apply(dataplane, ops, observed, refused, base, status).await else {
        return false;
    };
    if n_ops > 0 {
        // From the proposal of the newest change to now: what waiting
        // behind other work (a repair, a dump) adds to the sync itself.
        let changed_at = state.changed_at_unix_us();
        let since_change_ms = (changed_at > 0)
            .then(|| (crate::clock::now_unix_us().saturating_sub(changed_at) as f64 / 1e3).round());
        info!(
            revision = state.revision(),
            ops = n_ops,
            refused_services = refused.len(),
            repair = repairing,
            took_ms = (started.elapsed().as_secs_f64() * 1e6).round() / 1e3,
            plan_ms = (planned.as_secs_f64() * 1e6).round() / 1e3,
            since_change_ms,
            "dataplane synced"
        );
    }
    let metrics = &crate::metrics::METRICS;
    status.send_modify(|s| {
        // A repair that finds work while the state did not move is drift.
        if repairing && s.last_sync_unix_ms > 0 && s.synced_revision == state.revision() {
            s.drift_repairs += n_ops as u64;
            metrics.drift_repairs.inc_by(n_ops as u64);
        }
        s.last_sync_unix_ms = unix_ms(SystemTime::now());
        s.synced_revision = state.revision();
        s.last_sync_ops = n_ops as u64;
    });
    *programmed = Some((now_programmed, state.clone()));
    true
}

/// One slice of a repair round: its services read back from the
/// dataplane, compared with the state the rest was programmed from, and
/// what differs applied (drift: the belief was that state). At the
/// round's end, what the dataplane keeps beside the services is checked
/// against the whole belief.
async fn repair_step<D: Dataplane>(
    dataplane: &mut D,
    programmed: &mut Option<(Table, Arc<State>)>,
    refused: &mut RefusedServices,
    round: &mut Round,
    status: &watch::Sender<DataplaneStatus>,
) -> Step {
    let Some((mut belief, from)) = programmed.take() else {
        return Step::Unreachable;
    };
    let keys = round.next_slice(&belief, refused);
    if keys.is_empty() {
        dataplane.repair_beside(&belief).await;
        let took = round.started.elapsed();
        let metrics = &crate::metrics::METRICS;
        metrics.repair_rounds.inc();
        metrics.repair_round_seconds.set(took.as_secs_f64());
        let took_s = (took.as_secs_f64() * 1e3).round() / 1e3;
        if round.repaired > 0 {
            warn!(
                services = round.keys.len(),
                slices = round.slices,
                operations = round.repaired,
                took_s,
                "the dataplane differed from what was programmed (changed by hand?); repaired"
            );
        } else {
            debug!(
                services = round.keys.len(),
                slices = round.slices,
                took_s,
                "dataplane repair round: no drift"
            );
        }
        *programmed = Some((belief, from));
        return Step::Done;
    }
    let read = std::time::Instant::now();
    let observed = match dataplane.dump_only(&keys).await {
        Ok(t) => {
            round.took(read.elapsed());
            t
        }
        Err(e) => {
            warn!(error = %e, "dataplane unreachable during the repair; resyncing from a dump");
            status.send_modify(|s| s.last_error = e.to_string());
            return Step::Unreachable;
        }
    };
    let ops = plan(&Table::from_state_for(&from, &keys), &observed);
    if ops.is_empty() {
        *programmed = Some((belief, from));
        return Step::More;
    }
    // What the kernel holds replaces the belief of these services, and
    // the destination count follows.
    let believed = belief.only(&keys).destination_count() as u64;
    for k in &keys {
        belief.services.remove(k);
    }
    let base = (status.borrow().programmed_destinations + observed.destination_count() as u64)
        .saturating_sub(believed);
    belief.services.extend(observed.services);
    round.repaired += ops.len();
    debug!(
        services = keys.len(),
        ops = ops.len(),
        "repair slice: the dataplane differs from what was programmed"
    );
    let metrics = &crate::metrics::METRICS;
    metrics.drift_repairs.inc_by(ops.len() as u64);
    status.send_modify(|s| s.drift_repairs += ops.len() as u64);
    match apply(dataplane, ops, belief, refused, base, status).await {
        Some(table) => {
            *programmed = Some((table, from));
            Step::More
        }
        None => Step::Unreachable,
    }
}

/// Tries the refused services whose time has come, planned against the
/// state the rest was programmed from (a newer state is the next sync's).
/// Returns false when the dataplane could not be reached.
async fn retry_refused<D: Dataplane>(
    dataplane: &mut D,
    programmed: &mut Option<(Table, Arc<State>)>,
    refused: &mut RefusedServices,
    status: &watch::Sender<DataplaneStatus>,
) -> bool {
    let Some((table, from)) = programmed.take() else {
        return true;
    };
    let now = tokio::time::Instant::now();
    let due: BTreeSet<ServiceKey> = refused
        .iter()
        .filter(|(_, r)| r.retry_at <= now)
        .map(|(k, _)| *k)
        .collect();
    let ops = plan(&Table::from_state_for(&from, &due), &table.only(&due));
    if ops.is_empty() {
        // Nothing left to do for them (the state moved on): set free.
        for k in &due {
            refused.remove(k);
        }
        crate::metrics::METRICS
            .dataplane_refused_services
            .set(refused.len() as i64);
        *programmed = Some((table, from));
        return true;
    }
    let base = status.borrow().programmed_destinations;
    let Some(table) = apply(dataplane, ops, table, refused, base, status).await else {
        return false;
    };
    *programmed = Some((table, from));
    true
}

/// Applies `ops` to the dataplane and to `belief` (what is programmed,
/// `base` destinations in all). A refused service's belief is read back
/// from the dataplane and the service set apart in `refused`; a service
/// whose operations all went through is set free. None when the dataplane
/// could not be reached (the caller resyncs from a dump).
async fn apply<D: Dataplane>(
    dataplane: &mut D,
    ops: Vec<Op>,
    mut belief: Table,
    refused: &mut RefusedServices,
    base: u64,
    status: &watch::Sender<DataplaneStatus>,
) -> Option<Table> {
    let started = std::time::Instant::now();
    // The destination count moves by what the touched services changed:
    // counting the whole table per sync would cost O(table).
    let touched: BTreeSet<ServiceKey> = ops.iter().map(Op::service).collect();
    let count_touched = |t: &Table| -> u64 {
        touched
            .iter()
            .filter_map(|k| t.services.get(k))
            .map(|s| s.destinations.len() as u64)
            .sum()
    };
    let before = count_touched(&belief);
    // Every operation is recorded, a refused one's too: the services
    // with a refusal are read back from the dataplane below, replacing
    // what was recorded for them. So a big batch is recorded on another
    // thread while the dataplane works (0.9-1.3 s of a 550,000-operation
    // sync in the kernel lab, issue 20).
    let ops = Arc::new(ops);
    let recording = if ops.len() >= RECORD_BESIDE {
        let ops = ops.clone();
        Recording::Beside(tokio::task::spawn_blocking(move || {
            record(&mut belief, &ops);
            belief
        }))
    } else {
        Recording::Here(belief)
    };
    let report = dataplane.apply(&ops).await;
    let applied = started.elapsed();
    let metrics = &crate::metrics::METRICS;
    metrics
        .dataplane_sync_seconds
        .observe(applied.as_secs_f64());
    metrics.dataplane_operations.inc_by(report.applied as u64);
    metrics.dataplane_errors.inc_by(report.failed.len() as u64);
    if let Some(f) = report
        .failed
        .iter()
        .find(|f| matches!(f.error, DataplaneError::Unavailable(_)))
    {
        warn!(error = %f.error, "dataplane unreachable; resyncing from a dump");
        status.send_modify(|s| s.last_error = f.error.to_string());
        return None;
    }
    let failed: BTreeSet<ServiceKey> = report.failed.iter().map(|f| f.op.service()).collect();
    let mut belief = match recording {
        Recording::Here(mut belief) => {
            record(&mut belief, &ops);
            belief
        }
        Recording::Beside(task) => match task.await {
            Ok(belief) => belief,
            Err(e) => {
                warn!(error = %e, "recording what was programmed failed; resyncing from a dump");
                return None;
            }
        },
    };
    if !failed.is_empty() {
        // A refused operation changed nothing, but the others of its
        // service may have: read those services back.
        match dataplane.dump_only(&failed).await {
            Ok(now) => {
                for k in &failed {
                    belief.services.remove(k);
                }
                belief.services.extend(now.services);
            }
            Err(e) => {
                warn!(error = %e, "cannot read back refused services; resyncing from a dump");
                return None;
            }
        }
    }
    let now = tokio::time::Instant::now();
    for k in touched.difference(&failed) {
        if refused.remove(k).is_some() {
            info!(service = %k, "a refused service is programmed now");
        }
    }
    for f in &report.failed {
        let key = f.op.service();
        let entry = refused.entry(key).or_insert(Refused {
            refusals: 0,
            retry_at: now,
        });
        if entry.retry_at > now {
            // Another operation of the same service, already counted.
            continue;
        }
        entry.refusals += 1;
        let backoff = REFUSED_RETRY_FIRST
            .saturating_mul(1 << entry.refusals.saturating_sub(1).min(16))
            .min(REFUSED_RETRY_MAX);
        entry.retry_at = now + backoff;
        let errno = match &f.error {
            DataplaneError::Rejected { errno, .. } => *errno,
            DataplaneError::Unavailable(_) => None,
        };
        warn!(
            service = %key,
            error = %f.error,
            errno,
            refusals = entry.refusals,
            retry_in_s = backoff.as_secs(),
            "the dataplane refused a service; the others go on, it is retried on its own"
        );
    }
    metrics.dataplane_refused_services.set(refused.len() as i64);
    status.send_modify(|s| {
        // A refused service stays the last error until it is programmed.
        if let Some(f) = report.failed.first() {
            s.last_error = f.error.to_string();
        } else if refused.is_empty() {
            s.last_error.clear();
        }
        s.programmed_services = belief.services.len() as u64;
        s.programmed_destinations = (base + count_touched(&belief)).saturating_sub(before);
    });
    if !ops.is_empty() {
        // Where a sync's time goes besides the plan: the dataplane's own
        // work, then updating what this member believes is programmed.
        debug!(
            ops = ops.len(),
            dataplane_ms = (applied.as_secs_f64() * 1e6).round() / 1e3,
            bookkeeping_ms = ((started.elapsed() - applied).as_secs_f64() * 1e6).round() / 1e3,
            "dataplane operations applied and recorded"
        );
    }
    Some(belief)
}

/// Where the belief is brought up to date with a batch (`apply`).
enum Recording {
    Here(Table),
    Beside(tokio::task::JoinHandle<Table>),
}

/// Records `ops` in `belief`.
fn record(belief: &mut Table, ops: &[Op]) {
    for op in ops {
        // Conflicts here only mean our belief was stale; the next dump fixes it.
        let _ = belief.apply(op);
    }
}
