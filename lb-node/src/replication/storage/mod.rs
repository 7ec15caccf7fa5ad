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

mod engine;
mod memory;
mod store;
mod warnings;

pub use engine::LogStore;
pub use memory::MemStore;
pub use store::{LogStoreError, RaftStore};
pub use warnings::{NotOpenWarnings, OpenWarnings, is_open_warning};
