//! `LogStore`: the durable Raft log of a member, on raft-engine (TiKV's log
//! engine), implementing raft-rs's `Storage`.
//!
//! On disk, under the member's data directory:
//! - `raft-log/`: raft-engine's files: the entries, the hard state (term,
//!   vote, commit) and the conf state, every write checksummed;
//! - `snapshot.bin`: the latest snapshot (the raft snapshot whose data is the
//!   `lb.state.v1.Snapshot` protobuf), with a magic, a CRC32 and a length,
//!   written to a temporary file, synced and renamed into place.
//!
//! - `raft-log.mark`: the high-water mark: the last index, term and vote
//!   written, rewritten (not synced) after every write.
//!
//! Everything the log acknowledges is synced first (`write(.., sync)`).
//! raft-engine runs in its `TolerateTailCorruption` recovery mode: after a
//! crash, the unwritten tail of its last file (pre-allocated zeros, or a
//! torn record after a power cut) is dropped. That mode would also drop,
//! without a word, everything after a damaged record in the middle of the
//! last file, synced entries and votes included; the mark catches that: a
//! log that opens shorter than the mark, or with an older term, was damaged,
//! and `open` refuses it with the file and what is missing. (The mark is
//! not synced: after a power cut it may be older than the log, never newer
//! than what was synced, so it never refuses a sound log.) A snapshot whose
//! checksum fails is refused the same way: a member never silently starts
//! with less than it acknowledged. The operator's way out is to wipe the
//! member's data directory: it rejoins and catches up from a snapshot.
//!
//! `RaftStore` is what the replica needs of a log; `LogStore` (here) is
//! the one members run on, `MemStore` its in-memory twin for the
//! simulation, as raft-rs keeps `MemStorage` beside its `Storage`.

use std::path::PathBuf;

use raft::eraftpb::{ConfState, Entry, HardState, Snapshot};

mod engine;
mod memory;
mod warnings;

pub use engine::LogStore;
pub use memory::MemStore;
pub use warnings::{NotOpenWarnings, OpenWarnings, is_open_warning};

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
