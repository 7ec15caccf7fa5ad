//! The service table that Raft replicates, as plain data: value types
//! (`service`), the log entry (`Command`), the state it builds (`State`),
//! the diff that turns a desired table into commands (`diff`) and the
//! protobuf form of all of it (`wire`).
//!
//! Pure: no I/O, no clock, no tokio. Everything here is deterministic so
//! every member that applies the same log holds the same table.

mod command;
mod diff;
pub mod fixtures;
mod health;
mod pools;
mod service;
mod state;
mod wire;

pub use command::{Command, HealthReport, KubeDelta, KubeKind};
pub use diff::commands_towards;
pub use health::{
    BackendSlot, HealthCheck, HealthSeen, OnDown, PROBERS_PER_BACKEND, ProbeKind, probers_of,
    verdict,
};
pub use pools::{AllocError, allocate, in_pools};
pub use service::{
    Backend, BackendOverride, BackendState, Forwarding, InvalidService, MAX_PERSISTENCE_TIMEOUT,
    MAX_WEIGHT, Protocol, Scheduler, ServiceKey, SocketText, UnknownName, VirtualService,
};
pub use state::{Applied, ApplyError, KubeObjects, State};
pub use wire::{
    Batch, SNAPSHOT_FORMAT_VERSION, WireError, ip_bytes, key_to_pb, override_to_pb, service_to_pb,
};

#[cfg(test)]
mod tests;
