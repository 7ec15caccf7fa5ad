//! The in-memory dataplane: a `Table` behind a lock, with the kernel's rules
//! for conflicts. For tests, simulations and machines without IPVS.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use crate::dataplane::table::{Op, OpConflict, Table};
use crate::dataplane::{ApplyReport, Dataplane, DataplaneError, OpFailure};
use crate::model::Scheduler;

/// How many of its calls a `MemoryDataplane` records.
const CALLS_KEPT: usize = 10_000;

/// A dataplane that programs a `Table` in memory. Clones share the table,
/// so a test can look at it, or tamper with it to simulate drift.
#[derive(Clone, Debug, Default)]
pub struct MemoryDataplane {
    table: Arc<Mutex<Table>>,
    /// A scheduler it refuses, as a kernel without its module does.
    refused: Arc<Mutex<Option<Scheduler>>>,
    dumps: Arc<AtomicU64>,
    /// What the reconciler asked, in order ("dump", "keys",
    /// "dump_only N", "apply N"), for tests of its order of work: the
    /// first `CALLS_KEPT`, so that a member serving from memory for
    /// months does not grow.
    calls: Arc<Mutex<Vec<String>>>,
}

impl MemoryDataplane {
    pub fn new() -> Self {
        Self::default()
    }

    /// The table as programmed now.
    pub fn table(&self) -> Table {
        self.lock().clone()
    }

    /// Refuses services with `scheduler` from now on (None: accepts all),
    /// as a kernel without that scheduler's module does.
    pub fn refuse_scheduler(&self, scheduler: Option<Scheduler>) {
        *self.refused.lock().unwrap_or_else(PoisonError::into_inner) = scheduler;
    }

    /// Whole-table dumps so far.
    pub fn dumps(&self) -> u64 {
        self.dumps.load(Ordering::SeqCst)
    }

    /// What was asked of this dataplane so far, in order (the first
    /// `CALLS_KEPT` calls).
    pub fn calls(&self) -> Vec<String> {
        self.calls
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn called(&self, what: String) {
        let mut calls = self.calls.lock().unwrap_or_else(PoisonError::into_inner);
        if calls.len() < CALLS_KEPT {
            calls.push(what);
        }
    }

    /// Direct access, as `ipvsadm` by hand would have.
    pub fn lock(&self) -> MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Dataplane for MemoryDataplane {
    fn kind(&self) -> &'static str {
        "memory"
    }

    async fn dump(&mut self) -> Result<Table, DataplaneError> {
        self.dumps.fetch_add(1, Ordering::SeqCst);
        self.called("dump".into());
        Ok(self.table())
    }

    async fn dump_only(
        &mut self,
        keys: &std::collections::BTreeSet<crate::model::ServiceKey>,
    ) -> Result<Table, DataplaneError> {
        self.called(format!("dump_only {}", keys.len()));
        // Only those services copied: the repair reads the table a slice
        // at a time, and a copy of the whole table per slice was most of
        // the CPU of the 100,000-Service scale run (`perf`, 2026-12-07).
        Ok(self.lock().only(keys))
    }

    fn list_services(
        &self,
    ) -> impl std::future::Future<Output = Result<Vec<crate::model::ServiceKey>, DataplaneError>>
    + Send
    + 'static {
        self.called("keys".into());
        let table = self.table.clone();
        async move {
            Ok(table
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .services
                .keys()
                .copied()
                .collect())
        }
    }

    async fn apply(&mut self, ops: &[Op]) -> ApplyReport {
        self.called(format!("apply {}", ops.len()));
        let refused = *self.refused.lock().unwrap_or_else(PoisonError::into_inner);
        let mut table = self.lock();
        let mut report = ApplyReport::default();
        for op in ops {
            if let Op::AddService { settings, .. } | Op::UpdateService { settings, .. } = op
                && Some(settings.scheduler) == refused
            {
                report.failed.push(OpFailure {
                    op: op.clone(),
                    error: DataplaneError::Rejected {
                        op: op.to_string(),
                        reason: format!("no scheduler {:?}", settings.scheduler.name()),
                        errno: None,
                    },
                });
                continue;
            }
            match table.apply(op) {
                Ok(()) => report.applied += 1,
                // Idempotent like the kernel calls: adding what exists and
                // removing what is gone are success.
                Err(OpConflict::Exists(_))
                    if matches!(op, Op::AddService { .. } | Op::AddDestination { .. }) =>
                {
                    report.applied += 1
                }
                Err(OpConflict::Missing(_))
                    if matches!(op, Op::DeleteService { .. } | Op::DeleteDestination { .. }) =>
                {
                    report.applied += 1
                }
                Err(conflict) => report.failed.push(OpFailure {
                    op: op.clone(),
                    error: DataplaneError::Rejected {
                        op: op.to_string(),
                        reason: conflict.to_string(),
                        errno: None,
                    },
                }),
            }
        }
        report
    }
}
