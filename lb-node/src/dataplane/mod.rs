//! The dataplane boundary: what a member programs into its kernel.
//!
//! - `table`: the kernel's view (`Table`, `Op`) and what a `State` means
//!   for it (`Table::from_state`);
//! - `plan`: the pure diff `plan(desired, observed) -> Vec<Op>`;
//! - `rules`: a table in `ipvsadm -Sn` form;
//! - `memory`: the in-memory dataplane;
//! - `reconcile`: the task that owns the dataplane and keeps it equal to the
//!   replicated state (level-based: diff, apply, repair drift).
//!
//! Nothing here decides *what* should be served; that is the model's job.

use std::future::Future;

pub mod ipvs;
mod memory;
mod plan;
pub mod reconcile;
mod rules;
mod table;

pub use memory::MemoryDataplane;
pub use plan::plan;
pub use rules::ipvsadm_rules;
pub use table::{DestKey, Destination, Op, OpConflict, ProgrammedService, ServiceSettings, Table};

/// What a dataplane could not do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DataplaneError {
    /// The dataplane cannot be reached or read (socket closed, lost reply).
    /// Retryable: the reconciler resyncs from a fresh dump.
    #[error("dataplane unavailable: {0}")]
    Unavailable(String),
    /// The dataplane refused one operation. Retried at the next sync; the
    /// other operations of the batch are applied regardless.
    #[error("{op}: {reason}")]
    Rejected { op: String, reason: String },
}

/// One operation that failed, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpFailure {
    pub op: Op,
    pub error: DataplaneError,
}

/// The outcome of a batch: one failed operation never stops the others.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApplyReport {
    pub applied: usize,
    pub failed: Vec<OpFailure>,
}

/// A place virtual services are programmed: kernel IPVS, or memory.
///
/// Implementations treat "already exists" on add and "does not exist" on
/// delete as success, so a batch can be replayed safely.
pub trait Dataplane: Send + 'static {
    /// A short name for status and logs ("memory", "ipvs").
    fn kind(&self) -> &'static str;
    /// Everything programmed now.
    fn dump(&mut self) -> impl Future<Output = Result<Table, DataplaneError>> + Send;
    /// Applies operations in order, going on after a failure.
    fn apply(&mut self, ops: &[Op]) -> impl Future<Output = ApplyReport> + Send;
    /// Periodic housekeeping (about once a second): IPVS deletes the
    /// destinations that have finished draining.
    fn maintain(&mut self) -> impl Future<Output = Result<(), DataplaneError>> + Send {
        async { Ok(()) }
    }
}

#[cfg(test)]
mod tests;
