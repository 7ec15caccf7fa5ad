//! What a replica needs of its log (`RaftStore`), whichever keeps it,
//! and why a log could not be opened, read or written.

use std::path::PathBuf;

use raft::eraftpb::{ConfState, Entry, HardState, Snapshot};

/// What a replica writes to its log, on top of what raft-rs reads from it
/// (`raft::Storage`). Every write is durable when it returns (but
/// `set_commit`, which a crash may lose: the leader says it again).
pub trait RaftStore: raft::Storage {
    /// Whether nothing was ever written: a new member.
    fn is_empty(&self) -> bool;
    /// Persists new entries (replacing any conflicting tail) and, if
    /// given, the hard state.
    fn append(
        &mut self,
        entries: &[Entry],
        hard_state: Option<&HardState>,
    ) -> Result<(), LogStoreError>;
    /// Records a new commit index.
    fn set_commit(&mut self, commit: u64) -> Result<(), LogStoreError>;
    fn set_conf_state(&mut self, cs: ConfState) -> Result<(), LogStoreError>;
    /// Installs a snapshot received from the leader: it replaces the log.
    fn apply_snapshot(&mut self, snapshot: Snapshot) -> Result<(), LogStoreError>;
    /// Records a snapshot of the member's own applied state and drops the
    /// entries it covers.
    fn compact(&mut self, snapshot: Snapshot) -> Result<(), LogStoreError>;
    /// The index of the latest snapshot (0: none).
    fn snapshot_index(&self) -> u64;
    fn conf_state(&self) -> ConfState;
    /// The latest snapshot, data included (the empty one if none).
    fn latest_snapshot(&self) -> Snapshot;
}

/// Why the log could not be opened, read or written.
#[derive(Debug, thiserror::Error)]
pub enum LogStoreError {
    /// raft-engine failed (I/O, or corruption found while opening). Not
    /// retryable without an operator: the member must not run on it.
    #[error("raft log in {dir}: {source}")]
    Engine {
        dir: PathBuf,
        #[source]
        source: raft_engine::Error,
    },
    /// The snapshot file is damaged or unreadable. Not retryable.
    #[error("snapshot file {path}: {reason}")]
    Snapshot { path: PathBuf, reason: String },
    /// The data directory was deleted or replaced under the running
    /// member: it stops writing (and stops).
    #[error(
        "the data directory {dir} was {what} while the member ran: it stops rather than acknowledge writes it would lose. Start it again: with its data gone it rejoins and catches up from a snapshot"
    )]
    DirGone { dir: PathBuf, what: String },
    /// Creating the data directory or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// What raft-rs's `Storage::entries` asks for, against a log holding
/// `first..=last`: below `first` is compacted, past `last` unavailable.
/// Both logs check it the same way.
pub(super) fn check_range(low: u64, high: u64, first: u64, last: u64) -> raft::Result<()> {
    if low < first {
        return Err(raft::Error::Store(raft::StorageError::Compacted));
    }
    if high > last + 1 {
        return Err(raft::Error::Store(raft::StorageError::Unavailable));
    }
    Ok(())
}
