//! The dataplane boundary: what a member programs into its kernel.
//!
//! - `table`: the kernel's view (`Table`, `Op`) and what a `State` means
//!   for it (`Table::from_state`);
//! - `plan`: the pure diff `plan(desired, observed) -> Vec<Op>`;
//! - `rules`: a table in `ipvsadm -Sn` form;
//! - `drain`: pure: a removed destination's graceful termination;
//! - `memory`: the in-memory dataplane;
//! - `open`: which of the two the member config asks for;
//! - `reconcile`: the task that owns the dataplane and keeps it equal to the
//!   replicated state (level-based: diff, apply, repair drift);
//! - `routes`: the routes to pods (from the Nodes, where only the nodes
//!   know them) and the check that every endpoint has one.
//!
//! Nothing here decides *what* should be served; that is the model's job.

use std::future::Future;

use crate::model::ServiceKey;

mod drain;
pub mod ipvs;
mod memory;
pub mod open;
mod plan;
pub mod reconcile;
pub mod routes;
mod rules;
mod table;

pub use drain::{DrainEnd, Drains};
pub use memory::MemoryDataplane;
pub use plan::plan;
pub use rules::ipvsadm_rules;
pub use table::{
    DestKey, Destination, Op, OpConflict, ProgrammedService, ServiceSettings, Table,
    health_fails_open,
};

/// What a dataplane could not do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DataplaneError {
    /// The dataplane cannot be reached or read (socket closed, lost reply).
    /// Retryable: the reconciler resyncs from a fresh dump.
    #[error("dataplane unavailable: {0}")]
    Unavailable(String),
    /// The dataplane refused one operation. Retried at the next sync; the
    /// other operations of the batch are applied regardless. `errno`: the
    /// kernel's answer (None from the memory dataplane).
    #[error("{op}: {reason}")]
    Rejected {
        op: String,
        reason: String,
        errno: Option<i32>,
    },
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

/// Traffic counters of a service or destination, as the kernel keeps them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    pub connections: u64,
    pub packets_in: u64,
    pub packets_out: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub connections_per_second: u64,
    pub bytes_in_per_second: u64,
    pub bytes_out_per_second: u64,
}

/// One destination's counters and connection counts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DestinationCounters {
    pub dest: DestKey,
    pub weight: u32,
    pub active_connections: u32,
    pub inactive_connections: u32,
    pub counters: Counters,
}

/// One service's counters with its destinations'.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceCounters {
    pub key: ServiceKey,
    pub counters: Counters,
    pub destinations: Vec<DestinationCounters>,
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
    /// What is programmed now for these services only (the others are not
    /// in the table): after a refusal, the reconciler reads back the
    /// services concerned at the cost of those.
    fn dump_only(
        &mut self,
        keys: &std::collections::BTreeSet<ServiceKey>,
    ) -> impl Future<Output = Result<Table, DataplaneError>> + Send {
        async move { Ok(self.dump().await?.only(keys)) }
    }
    /// The keys of every service the dataplane holds that lb-node owns,
    /// without their destinations: the start of a sliced repair, which
    /// then reads the services a slice at a time with `dump_only`. The
    /// listing runs beside the reconciler (IPVS: a socket and a thread of
    /// its own), which goes on applying changes meanwhile: the listing of
    /// 50,000 services took 4-7 s in the kernel lab.
    fn list_services(
        &self,
    ) -> impl Future<Output = Result<Vec<ServiceKey>, DataplaneError>> + Send + 'static;
    /// The end of a sliced repair: what the dataplane keeps beside the
    /// services (IPVS: the VIP interface and the masquerade table) is
    /// checked against `table`, everything programmed.
    fn repair_beside(&mut self, table: &Table) -> impl Future<Output = ()> + Send {
        let _ = table;
        async {}
    }
    /// Applies operations in order, going on after a failure.
    fn apply(&mut self, ops: &[Op]) -> impl Future<Output = ApplyReport> + Send;
    /// Periodic housekeeping (about once a second): IPVS deletes the
    /// destinations that have finished draining.
    fn maintain(&mut self) -> impl Future<Output = Result<(), DataplaneError>> + Send {
        async { Ok(()) }
    }
    /// The kernel's counters of these services (those it holds); empty
    /// from a dataplane that keeps none.
    fn counters(
        &mut self,
        keys: &[ServiceKey],
    ) -> impl Future<Output = Result<Vec<ServiceCounters>, DataplaneError>> + Send {
        let _ = keys;
        async { Ok(Vec::new()) }
    }
}

#[cfg(test)]
mod tests;
