//! The in-memory dataplane: a `Table` behind a lock, with the kernel's rules
//! for conflicts. For tests, simulations and machines without IPVS.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use crate::dataplane::table::{Op, OpConflict, Table};
use crate::dataplane::{ApplyReport, Dataplane, DataplaneError, OpFailure};

/// A dataplane that programs a `Table` in memory. Clones share the table,
/// so a test can look at it, or tamper with it to simulate drift.
#[derive(Clone, Debug, Default)]
pub struct MemoryDataplane {
    table: Arc<Mutex<Table>>,
}

impl MemoryDataplane {
    pub fn new() -> Self {
        Self::default()
    }

    /// The table as programmed now.
    pub fn table(&self) -> Table {
        self.lock().clone()
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
        Ok(self.table())
    }

    async fn apply(&mut self, ops: &[Op]) -> ApplyReport {
        let mut table = self.lock();
        let mut report = ApplyReport::default();
        for op in ops {
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
                    },
                }),
            }
        }
        report
    }
}
