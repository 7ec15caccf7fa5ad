//! The reconciler: the one task that owns the dataplane.
//!
//! Level-based: on every new state it plans against what it believes is
//! programmed and applies the difference; every `repair_interval` (and after
//! any failure) it forgets that belief, dumps the dataplane and plans against
//! what is really there, which repairs drift such as an `ipvsadm -C` by hand.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::dataplane::{Dataplane, Table, plan};
use crate::model::State;

/// After a failed sync, try again this soon rather than waiting for the
/// repair interval.
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(1);

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
    // The proposal time of the newest change programmed; None until the
    // first sync, whose changes may be old (a restart replays the log) and
    // are not counted.
    let mut propagated: Option<u64> = None;
    let mut housekeeping = tokio::time::interval(Duration::from_secs(1));
    housekeeping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let wait = if pending || programmed.is_none() {
            let state = states.borrow_and_update().clone();
            let repairing = programmed.is_none();
            if sync(&mut dataplane, &state, &mut programmed, repairing, &status).await {
                pending = false;
                let changed_at = state.changed_at_unix_us();
                match propagated {
                    Some(seen) if changed_at > seen => {
                        let now = crate::replication::replica::unix_now_us();
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
                if let Err(e) = dataplane.maintain().await {
                    warn!(error = %e, "dataplane housekeeping failed; resyncing");
                    programmed = None;
                }
            }
            _ = tokio::time::sleep_until(wait) => {
                debug!("dataplane repair: dumping to compare with the state");
                programmed = None;
            }
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
            let keys = state.changed_keys_since(previous);
            plan(&Table::from_state_for(state, &keys), &observed.only(&keys))
        }
        None => plan(&Table::from_state(state), observed),
    }
}

/// One sync. Returns false when it must be retried from a fresh dump.
async fn sync<D: Dataplane>(
    dataplane: &mut D,
    state: &Arc<State>,
    programmed: &mut Option<(Table, Arc<State>)>,
    repairing: bool,
    status: &watch::Sender<DataplaneStatus>,
) -> bool {
    let (observed, previous) = match programmed.take() {
        Some((table, previous)) => (table, Some(previous)),
        None => match dataplane.dump().await {
            Ok(table) => (table, None),
            Err(e) => {
                warn!(error = %e, "dataplane dump failed; retrying");
                status.send_modify(|s| s.last_error = e.to_string());
                return false;
            }
        },
    };
    let started = std::time::Instant::now();
    let ops = plan_sync(state, &observed, previous.as_deref());
    let report = dataplane.apply(&ops).await;
    let metrics = &crate::metrics::METRICS;
    metrics
        .dataplane_sync_seconds
        .observe(started.elapsed().as_secs_f64());
    metrics.dataplane_operations.inc_by(report.applied as u64);
    metrics.dataplane_errors.inc_by(report.failed.len() as u64);
    // The destination count moves by what the touched services changed:
    // counting the whole table per sync would cost O(table).
    let touched: std::collections::BTreeSet<crate::model::ServiceKey> =
        ops.iter().map(|op| op.service()).collect();
    let count_touched = |t: &Table| -> u64 {
        touched
            .iter()
            .filter_map(|k| t.services.get(k))
            .map(|s| s.destinations.len() as u64)
            .sum()
    };
    let before = count_touched(&observed);
    let base = match &previous {
        Some(_) => status.borrow().programmed_destinations,
        None => observed.destination_count() as u64,
    };
    let mut now_programmed = observed;
    for op in &ops {
        // Conflicts here only mean our belief was stale; the next dump fixes it.
        let _ = now_programmed.apply(op);
    }
    // The first few failures name their service; the rest are counted.
    for failure in report.failed.iter().take(5) {
        warn!(service = %failure.op.service(), error = %failure.error, "dataplane operation failed; will retry");
    }
    if report.failed.len() > 5 {
        warn!(
            more = report.failed.len() - 5,
            "more dataplane operations failed; will retry"
        );
    }
    if !ops.is_empty() {
        info!(
            revision = state.revision(),
            ops = ops.len(),
            failed = report.failed.len(),
            repair = repairing,
            took_ms = started.elapsed().as_secs_f64() * 1000.0,
            "dataplane synced"
        );
    }
    let ok = report.failed.is_empty();
    status.send_modify(|s| {
        // A repair that finds work while the state did not move is drift.
        if repairing && s.last_sync_unix_ms > 0 && s.synced_revision == state.revision() {
            s.drift_repairs += ops.len() as u64;
            metrics.drift_repairs.inc_by(ops.len() as u64);
        }
        s.last_sync_unix_ms = unix_ms(SystemTime::now());
        s.synced_revision = state.revision();
        s.last_sync_ops = ops.len() as u64;
        s.last_error = report
            .failed
            .first()
            .map(|f| f.error.to_string())
            .unwrap_or_default();
        s.programmed_services = now_programmed.services.len() as u64;
        s.programmed_destinations = (base + count_touched(&now_programmed)).saturating_sub(before);
    });
    if ok {
        *programmed = Some((now_programmed, state.clone()));
    }
    ok
}

pub fn unix_ms(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}
