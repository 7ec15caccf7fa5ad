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

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use protobuf::Message as _;
use raft::eraftpb::{ConfState, Entry, HardState, Snapshot};
use raft::{GetEntriesContext, RaftState, StorageError};
use raft_engine::{Command as EngineCommand, Engine, LogBatch, MessageExt};

/// Where raft-engine warns while it opens the log (log records bridged
/// to tracing keep the module path as their target).
const OPEN_WARNINGS_TARGET: &str = "raft_engine::file_pipe_log::pipe_builder";

/// raft-engine's warnings while opening, kept for `LogStore::open` to say
/// again in the member's words.
static OPEN_WARNINGS: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

/// Whether an event is one of raft-engine's warnings while it opens the
/// log (the member's log shows them through `LogStore::open` instead).
/// raft-engine logs with the `log` crate: the bridge's events carry the
/// module in their normalized metadata.
pub fn is_open_warning(event: &tracing::Event<'_>) -> bool {
    use tracing_log::NormalizeEvent as _;
    let normalized = event.normalized_metadata();
    let meta = normalized.as_ref().unwrap_or_else(|| event.metadata());
    meta.target() == OPEN_WARNINGS_TARGET && *meta.level() == tracing::Level::WARN
}

/// A filter for the member's log output: raft-engine's opening warnings
/// are left to `LogStore::open`.
#[derive(Debug)]
pub struct NotOpenWarnings;

impl<S> tracing_subscriber::layer::Filter<S> for NotOpenWarnings {
    fn enabled(
        &self,
        _: &tracing::Metadata<'_>,
        _: &tracing_subscriber::layer::Context<'_, S>,
    ) -> bool {
        true
    }

    fn event_enabled(
        &self,
        event: &tracing::Event<'_>,
        _: &tracing_subscriber::layer::Context<'_, S>,
    ) -> bool {
        !is_open_warning(event)
    }
}

/// A tracing layer that keeps raft-engine's opening warnings.
#[derive(Debug)]
pub struct OpenWarnings;

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for OpenWarnings {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        if !is_open_warning(event) {
            return;
        }
        struct Message(String);
        impl tracing::field::Visit for Message {
            fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
                if field.name() == "message" {
                    self.0 = format!("{value:?}");
                }
            }
        }
        let mut m = Message(String::new());
        event.record(&mut m);
        OPEN_WARNINGS
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(m.0);
    }
}

/// Says raft-engine's opening warnings again: a truncated last file is
/// the torn tail of an unclean stop (kill -9, power loss), expected, and
/// checked against the mark; anything else is passed on as it was.
fn report_open_warnings(log_dir: &Path, warnings: Vec<String>, sound: bool) {
    for w in warnings {
        if sound && w.starts_with("Truncating log file due to broken") {
            tracing::info!(
                dir = %log_dir.display(),
                raft_engine = %w,
                "the raft log's last file ended in a torn write from an unclean stop (kill -9, a crash, a power loss): its unwritten tail was cut, as expected; nothing acknowledged was lost (checked against raft-log.mark)"
            );
        } else {
            tracing::warn!(dir = %log_dir.display(), "raft-engine: {w}");
        }
    }
}

/// The one raft group this engine holds.
const GROUP: u64 = 1;
const HARD_STATE_KEY: &[u8] = b"hard_state";
const CONF_STATE_KEY: &[u8] = b"conf_state";
const SNAPSHOT_MAGIC: &[u8; 8] = b"LBSNAP\0\x01";
const SNAPSHOT_FILE: &str = "snapshot.bin";
const MARK_FILE: &str = "raft-log.mark";
const MARK_MAGIC: &[u8; 8] = b"LBMARK\0\x01";

struct EntryExt;

impl MessageExt for EntryExt {
    type Entry = Entry;
    fn index(e: &Entry) -> u64 {
        e.index
    }
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

/// A member's durable Raft log.
pub struct LogStore {
    engine: Arc<Engine>,
    /// Whether writes that must be durable are synced. Off only in the
    /// simulation, where a crash loses no page cache.
    sync: bool,
    dir: PathBuf,
    hard_state: HardState,
    conf_state: ConfState,
    /// The latest snapshot (data included), or the empty one.
    snapshot: Snapshot,
    /// The high-water mark file, rewritten after every write.
    mark: std::fs::File,
    /// The data directory's (device, inode) at open: a directory deleted
    /// or replaced under the running member is noticed before the next
    /// write, not at the next restart.
    identity: (u64, u64),
}

/// The (device, inode) of a directory.
fn identity_of(dir: &Path) -> std::io::Result<(u64, u64)> {
    use std::os::unix::fs::MetadataExt as _;
    let m = std::fs::metadata(dir)?;
    Ok((m.dev(), m.ino()))
}

impl std::fmt::Debug for LogStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogStore")
            .field("dir", &self.dir)
            .field("first_index", &self.first())
            .field("last_index", &self.last())
            .field("snapshot_index", &self.snapshot.get_metadata().index)
            .finish()
    }
}

impl LogStore {
    /// Opens (or creates) the log in `dir`. See the module docs for what is
    /// refused.
    pub fn open(dir: &Path) -> Result<LogStore, LogStoreError> {
        Self::open_with(dir, true)
    }

    /// `open`, choosing whether durable writes are synced. Only the
    /// simulation turns syncing off: it crashes processes, not machines.
    pub fn open_with(dir: &Path, sync: bool) -> Result<LogStore, LogStoreError> {
        std::fs::create_dir_all(dir).map_err(|source| LogStoreError::Io {
            path: dir.to_owned(),
            source,
        })?;
        let log_dir = dir.join("raft-log");
        let engine_err = |source| LogStoreError::Engine {
            dir: log_dir.clone(),
            source,
        };
        let config = raft_engine::Config {
            dir: log_dir.to_string_lossy().into_owned(),
            recovery_mode: raft_engine::RecoveryMode::TolerateTailCorruption,
            recovery_threads: 1,
            target_file_size: raft_engine::ReadableSize::mb(32),
            purge_threshold: raft_engine::ReadableSize::mb(256),
            ..Default::default()
        };
        let engine = Engine::open(config);
        let open_warnings = std::mem::take(
            &mut *OPEN_WARNINGS
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        let engine = match engine {
            Ok(e) => Arc::new(e),
            Err(e) => {
                report_open_warnings(&log_dir, open_warnings, false);
                return Err(engine_err(e));
            }
        };
        let hard_state = engine
            .get_message::<HardState>(GROUP, HARD_STATE_KEY)
            .map_err(engine_err)?
            .unwrap_or_default();
        let conf_state = engine
            .get_message::<ConfState>(GROUP, CONF_STATE_KEY)
            .map_err(engine_err)?
            .unwrap_or_default();
        let snapshot = read_snapshot(&dir.join(SNAPSHOT_FILE))?.unwrap_or_default();
        let mark_path = dir.join(MARK_FILE);
        let previous_mark = read_mark(&mark_path)?;
        let mark = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&mark_path)
            .map_err(|source| LogStoreError::Io {
                path: mark_path.clone(),
                source,
            })?;
        let identity = identity_of(dir).map_err(|source| LogStoreError::Io {
            path: dir.to_owned(),
            source,
        })?;
        let store = LogStore {
            engine,
            sync,
            dir: dir.to_owned(),
            hard_state,
            conf_state,
            snapshot,
            mark,
            identity,
        };
        let checked = store
            .check_consistency()
            .and_then(|()| store.verify_entries());
        let lost = previous_mark.is_some_and(|(last_index, term)| {
            store.last() < last_index || store.hard_state.term < term
        });
        report_open_warnings(&log_dir, open_warnings, checked.is_ok() && !lost);
        checked?;
        if let Some((last_index, term)) = previous_mark
            && (store.last() < last_index || store.hard_state.term < term)
        {
            return Err(LogStoreError::Engine {
                dir: log_dir,
                source: raft_engine::Error::Corruption(format!(
                    "the log opens at last index {} term {}, but index {last_index} term {term} had been written: records were lost to damage (raft-engine dropped what followed a broken record), so the log is damaged. Do not edit it: stop this member, move its data directory aside ({}) and start it again; it rejoins and catches up from a snapshot",
                    store.last(),
                    store.hard_state.term,
                    store.dir.display()
                )),
            });
        }
        store.write_mark();
        Ok(store)
    }

    /// Reads every entry once, so that damage in the middle of the log (a
    /// flipped byte: raft-engine checks a record's checksum when it reads
    /// it, not when it opens) is found here, with the file and what to do,
    /// and not by raft-rs, which aborts on a storage error in the middle
    /// of replaying the log. The log holds only what follows the last
    /// snapshot, so this is bounded (`snapshot_after_entries`).
    fn verify_entries(&self) -> Result<(), LogStoreError> {
        let (Some(first), Some(last)) = (
            self.engine.first_index(GROUP),
            self.engine.last_index(GROUP),
        ) else {
            return Ok(());
        };
        let mut from = first;
        let mut buf = Vec::new();
        while from <= last {
            let to = (from + 1024).min(last + 1);
            buf.clear();
            if let Err(e) = self
                .engine
                .fetch_entries_to::<EntryExt>(GROUP, from, to, None, &mut buf)
            {
                return Err(LogStoreError::Engine {
                    dir: self.dir.join("raft-log"),
                    source: raft_engine::Error::Corruption(format!(
                        "entries {from} to {}, of {first} to {last}, cannot be read ({e}): the log is damaged. Do not edit it: stop this member, move its data directory aside ({}) and start it again; it rejoins and catches up from a snapshot",
                        to - 1,
                        self.dir.display()
                    )),
                });
            }
            from = to;
        }
        Ok(())
    }

    /// The log and the snapshot must meet: the log may not start after the
    /// snapshot's next index (a hole nothing could fill).
    fn check_consistency(&self) -> Result<(), LogStoreError> {
        let snap_index = self.snapshot.get_metadata().index;
        if let Some(first) = self.engine.first_index(GROUP)
            && first > snap_index + 1
        {
            return Err(LogStoreError::Snapshot {
                path: self.dir.join(SNAPSHOT_FILE),
                reason: format!(
                    "the snapshot ends at index {snap_index} but the log starts at {first}: entries are missing (was snapshot.bin replaced by an older one?)"
                ),
            });
        }
        Ok(())
    }

    /// Whether nothing was ever written: a new member.
    pub fn is_empty(&self) -> bool {
        self.hard_state == HardState::default()
            && self.conf_state == ConfState::default()
            && self.engine.last_index(GROUP).is_none()
            && self.snapshot.get_metadata().index == 0
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn set_conf_state(&mut self, cs: ConfState) -> Result<(), LogStoreError> {
        let mut batch = LogBatch::default();
        batch
            .put_message(GROUP, CONF_STATE_KEY.to_vec(), &cs)
            .map_err(|source| self.engine_error(source))?;
        self.write(&mut batch, true)?;
        self.conf_state = cs;
        Ok(())
    }

    /// Persists new entries and, if given, the hard state, with one sync.
    pub fn append(
        &mut self,
        entries: &[Entry],
        hard_state: Option<&HardState>,
    ) -> Result<(), LogStoreError> {
        let mut batch = LogBatch::default();
        // raft-engine refuses batches over its size limit; split large ones.
        for chunk in entries.chunks(256) {
            batch
                .add_entries::<EntryExt>(GROUP, chunk)
                .map_err(|source| self.engine_error(source))?;
        }
        if let Some(hs) = hard_state {
            batch
                .put_message(GROUP, HARD_STATE_KEY.to_vec(), hs)
                .map_err(|source| self.engine_error(source))?;
        }
        if batch.is_empty() {
            return Ok(());
        }
        self.write(&mut batch, true)?;
        if let Some(hs) = hard_state {
            self.hard_state = hs.clone();
        }
        self.write_mark();
        Ok(())
    }

    /// Records a new commit index. Not synced: a commit index lost in a
    /// crash is learned again from the leader.
    pub fn set_commit(&mut self, commit: u64) -> Result<(), LogStoreError> {
        let mut hs = self.hard_state.clone();
        hs.commit = commit;
        let mut batch = LogBatch::default();
        batch
            .put_message(GROUP, HARD_STATE_KEY.to_vec(), &hs)
            .map_err(|source| self.engine_error(source))?;
        self.write(&mut batch, false)?;
        self.hard_state = hs;
        Ok(())
    }

    /// Installs a snapshot received from the leader: it replaces the whole
    /// log. The snapshot file is durable before the log is cleared, so a
    /// crash in between leaves a consistent (if longer) log.
    pub fn apply_snapshot(&mut self, snapshot: Snapshot) -> Result<(), LogStoreError> {
        self.check_dir()?;
        write_snapshot(&self.dir.join(SNAPSHOT_FILE), &snapshot)?;
        let meta = snapshot.get_metadata();
        let mut hs = self.hard_state.clone();
        hs.term = hs.term.max(meta.term);
        hs.commit = hs.commit.max(meta.index);
        // The log may get shorter: lower the mark first, so a crash between
        // here and the end never leaves a mark above the log.
        self.write_mark_of(self.last().min(meta.index), self.hard_state.term);
        let mut batch = LogBatch::default();
        batch.add_command(GROUP, EngineCommand::Clean);
        batch
            .put_message(GROUP, HARD_STATE_KEY.to_vec(), &hs)
            .map_err(|source| self.engine_error(source))?;
        batch
            .put_message(GROUP, CONF_STATE_KEY.to_vec(), meta.get_conf_state())
            .map_err(|source| self.engine_error(source))?;
        self.write(&mut batch, true)?;
        self.hard_state = hs;
        self.conf_state = meta.get_conf_state().clone();
        self.snapshot = snapshot;
        self.write_mark();
        Ok(())
    }

    /// Records a snapshot this member made of its own applied state and
    /// drops the log entries it covers.
    pub fn compact(&mut self, snapshot: Snapshot) -> Result<(), LogStoreError> {
        self.check_dir()?;
        write_snapshot(&self.dir.join(SNAPSHOT_FILE), &snapshot)?;
        let index = snapshot.get_metadata().index;
        self.snapshot = snapshot;
        self.engine.compact_to(GROUP, index + 1);
        // Reclaim the files the compaction emptied; failure only costs disk.
        if let Err(e) = self.engine.purge_expired_files() {
            tracing::warn!(error = %e, "raft log purge failed");
        }
        Ok(())
    }

    pub fn snapshot_index(&self) -> u64 {
        self.snapshot.get_metadata().index
    }

    pub fn hard_state(&self) -> &HardState {
        &self.hard_state
    }

    pub fn conf_state(&self) -> &ConfState {
        &self.conf_state
    }

    /// The latest snapshot (data included).
    pub fn latest_snapshot(&self) -> &Snapshot {
        &self.snapshot
    }

    fn first(&self) -> u64 {
        let after_snapshot = self.snapshot.get_metadata().index + 1;
        self.engine
            .first_index(GROUP)
            .map_or(after_snapshot, |f| f.max(after_snapshot))
    }

    fn last(&self) -> u64 {
        self.engine
            .last_index(GROUP)
            .unwrap_or(0)
            .max(self.snapshot.get_metadata().index)
    }

    /// Rewrites the high-water mark in place. Not synced (see the module
    /// docs); a failure only weakens the damage check, so it is logged.
    fn write_mark(&self) {
        self.write_mark_of(self.last(), self.hard_state.term);
    }

    fn write_mark_of(&self, last: u64, term: u64) {
        use std::os::unix::fs::FileExt as _;
        let mut bytes = Vec::with_capacity(32);
        bytes.extend_from_slice(MARK_MAGIC);
        bytes.extend_from_slice(&last.to_le_bytes());
        bytes.extend_from_slice(&term.to_le_bytes());
        bytes.extend_from_slice(&crc32fast::hash(&bytes[8..24]).to_le_bytes());
        if let Err(e) = self.mark.write_all_at(&bytes, 0) {
            tracing::warn!(error = %e, "cannot update {MARK_FILE}");
        }
    }

    /// Refuses to write once the data directory is gone or replaced: the
    /// files still open would take the writes and acknowledge them, and
    /// lose them at the next start.
    fn check_dir(&self) -> Result<(), LogStoreError> {
        match identity_of(&self.dir) {
            Ok(now) if now == self.identity => Ok(()),
            found => Err(LogStoreError::DirGone {
                dir: self.dir.clone(),
                what: match found {
                    Ok(_) => "replaced by another directory".into(),
                    Err(e) => format!("gone ({e})"),
                },
            }),
        }
    }

    fn write(&self, batch: &mut LogBatch, sync: bool) -> Result<(), LogStoreError> {
        self.check_dir()?;
        self.engine
            .write(batch, sync && self.sync)
            .map(|_| ())
            .map_err(|source| self.engine_error(source))
    }

    fn engine_error(&self, source: raft_engine::Error) -> LogStoreError {
        LogStoreError::Engine {
            dir: self.dir.join("raft-log"),
            source,
        }
    }
}

fn storage_error(e: impl std::fmt::Display) -> raft::Error {
    raft::Error::Store(StorageError::Other(e.to_string().into()))
}

impl raft::Storage for LogStore {
    fn initial_state(&self) -> raft::Result<RaftState> {
        Ok(RaftState {
            hard_state: self.hard_state.clone(),
            conf_state: self.conf_state.clone(),
        })
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        if low < self.first() {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if high > self.last() + 1 {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        let mut entries = Vec::with_capacity((high - low) as usize);
        let max_size = max_size
            .into()
            .map(|m| usize::try_from(m).unwrap_or(usize::MAX));
        self.engine
            .fetch_entries_to::<EntryExt>(GROUP, low, high, max_size, &mut entries)
            .map_err(storage_error)?;
        // raft-rs expects at least one entry when any is in range, even past
        // max_size; raft-engine already gives that.
        Ok(entries)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        let meta = self.snapshot.get_metadata();
        if idx == meta.index {
            return Ok(meta.term);
        }
        if idx < self.first() {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if idx > self.last() {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        match self
            .engine
            .get_entry::<EntryExt>(GROUP, idx)
            .map_err(storage_error)?
        {
            Some(e) => Ok(e.term),
            None => Err(raft::Error::Store(StorageError::Unavailable)),
        }
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.first())
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.last())
    }

    fn snapshot(&self, _request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        // The log is compacted only up to the latest snapshot, so it always
        // covers what a follower that needs a snapshot is missing.
        Ok(self.snapshot.clone())
    }
}

fn read_snapshot(path: &Path) -> Result<Option<Snapshot>, LogStoreError> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(LogStoreError::Io {
                path: path.to_owned(),
                source,
            });
        }
    };
    let bad = |reason: String| LogStoreError::Snapshot {
        path: path.to_owned(),
        reason,
    };
    if bytes.len() < 20 || &bytes[..8] != SNAPSHOT_MAGIC {
        return Err(bad("not a snapshot file (bad magic or too short)".into()));
    }
    let crc = u32::from_le_bytes(bytes[8..12].try_into().map_err(|_| bad("header".into()))?);
    let len = u64::from_le_bytes(bytes[12..20].try_into().map_err(|_| bad("header".into()))?);
    let body = &bytes[20..];
    if body.len() as u64 != len {
        return Err(bad(format!("truncated: {} bytes of {len}", body.len())));
    }
    if crc32fast::hash(body) != crc {
        return Err(bad("checksum mismatch: the file is corrupted".into()));
    }
    let snapshot =
        Snapshot::parse_from_bytes(body).map_err(|e| bad(format!("cannot decode: {e}")))?;
    Ok(Some(snapshot))
}

/// The (last index, term) of the mark file, if there is a readable one. A
/// mark that fails its checksum (a torn rewrite) is ignored: it only ever
/// guards, never decides.
fn read_mark(path: &Path) -> Result<Option<(u64, u64)>, LogStoreError> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(LogStoreError::Io {
                path: path.to_owned(),
                source,
            });
        }
    };
    if bytes.len() < 28 || &bytes[..8] != MARK_MAGIC {
        return Ok(None);
    }
    let word = |at: usize| bytes[at..at + 8].try_into().map(u64::from_le_bytes).ok();
    let crc = bytes[24..28].try_into().map(u32::from_le_bytes).ok();
    match (word(8), word(16), crc) {
        (Some(last), Some(term), Some(crc)) if crc32fast::hash(&bytes[8..24]) == crc => {
            Ok(Some((last, term)))
        }
        _ => Ok(None),
    }
}

fn write_snapshot(path: &Path, snapshot: &Snapshot) -> Result<(), LogStoreError> {
    let io = |source| LogStoreError::Io {
        path: path.to_owned(),
        source,
    };
    let body = snapshot
        .write_to_bytes()
        .map_err(|e| LogStoreError::Snapshot {
            path: path.to_owned(),
            reason: format!("cannot encode: {e}"),
        })?;
    let tmp = path.with_extension("tmp");
    {
        let mut f = std::fs::File::create(&tmp).map_err(io)?;
        f.write_all(SNAPSHOT_MAGIC).map_err(io)?;
        f.write_all(&crc32fast::hash(&body).to_le_bytes())
            .map_err(io)?;
        f.write_all(&(body.len() as u64).to_le_bytes())
            .map_err(io)?;
        f.write_all(&body).map_err(io)?;
        f.sync_all().map_err(io)?;
    }
    std::fs::rename(&tmp, path).map_err(io)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use raft::Storage as _;

    /// The (first) raft-engine file of the log in data directory `dir`.
    fn log_file(dir: &Path) -> PathBuf {
        std::fs::read_dir(dir.join("raft-log"))
            .expect("log dir")
            .filter_map(Result::ok)
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|x| x == "raftlog"))
            .expect("a log file")
    }

    fn entry(index: u64, term: u64) -> Entry {
        Entry {
            index,
            term,
            data: format!("entry {index}").into_bytes().into(),
            ..Default::default()
        }
    }

    fn snapshot_at(index: u64, term: u64) -> Snapshot {
        let mut s = Snapshot::default();
        s.set_data(crate::model::State::default().encode_snapshot().into());
        s.mut_metadata().index = index;
        s.mut_metadata().term = term;
        s.mut_metadata().mut_conf_state().voters = vec![1, 2, 3];
        s
    }

    #[test]
    fn entries_and_hard_state_survive_a_reopen() {
        let dir = tempfile::tempdir().expect("tmp");
        let hs = HardState {
            term: 3,
            vote: 2,
            commit: 4,
            ..Default::default()
        };
        {
            let mut store = LogStore::open(dir.path()).expect("open");
            assert!(store.is_empty());
            store
                .set_conf_state(ConfState {
                    voters: vec![1, 2, 3],
                    ..Default::default()
                })
                .expect("bootstrap");
            store
                .append(&(1..=5).map(|i| entry(i, 3)).collect::<Vec<_>>(), Some(&hs))
                .expect("append");
        }
        let store = LogStore::open(dir.path()).expect("reopen");
        assert!(!store.is_empty());
        let state = store.initial_state().expect("state");
        assert_eq!(state.hard_state, hs);
        assert_eq!(state.conf_state.voters, vec![1, 2, 3]);
        assert_eq!(
            (
                store.first_index().expect("first"),
                store.last_index().expect("last")
            ),
            (1, 5)
        );
        let got = store
            .entries(2, 5, None, GetEntriesContext::empty(false))
            .expect("entries");
        assert_eq!(got, (2..5).map(|i| entry(i, 3)).collect::<Vec<_>>());
    }

    #[test]
    fn compaction_and_snapshot_install_move_the_log_start() {
        let dir = tempfile::tempdir().expect("tmp");
        let mut store = LogStore::open(dir.path()).expect("open");
        store
            .append(&(1..=10).map(|i| entry(i, 1)).collect::<Vec<_>>(), None)
            .expect("append");
        store.compact(snapshot_at(6, 1)).expect("compact");
        assert_eq!(store.first_index().expect("first"), 7);
        assert_eq!(store.term(6).expect("term at snapshot"), 1);
        assert!(matches!(
            store.entries(5, 8, None, GetEntriesContext::empty(false)),
            Err(raft::Error::Store(StorageError::Compacted))
        ));
        // A snapshot from a leader far ahead replaces the whole log.
        store.apply_snapshot(snapshot_at(50, 4)).expect("install");
        drop(store);
        let store = LogStore::open(dir.path()).expect("reopen");
        assert_eq!(
            (
                store.first_index().expect("first"),
                store.last_index().expect("last")
            ),
            (51, 50)
        );
        assert_eq!(store.hard_state().commit, 50);
        assert_eq!(store.latest_snapshot().get_metadata().index, 50);
    }

    #[test]
    fn a_corrupted_snapshot_file_is_refused_by_name() {
        let dir = tempfile::tempdir().expect("tmp");
        {
            let mut store = LogStore::open(dir.path()).expect("open");
            store
                .append(&(1..=3).map(|i| entry(i, 1)).collect::<Vec<_>>(), None)
                .expect("append");
            store.compact(snapshot_at(2, 1)).expect("compact");
        }
        let path = dir.path().join(SNAPSHOT_FILE);
        let mut bytes = std::fs::read(&path).expect("read");
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        std::fs::write(&path, &bytes).expect("write");
        let err = LogStore::open(dir.path()).expect_err("corrupted snapshot");
        let text = err.to_string();
        assert!(
            text.contains("snapshot.bin") && text.contains("checksum mismatch"),
            "{text}"
        );
        std::fs::write(&path, &bytes[..10]).expect("truncate");
        let text = LogStore::open(dir.path())
            .expect_err("truncated")
            .to_string();
        assert!(text.contains("snapshot.bin"), "{text}");
    }

    #[test]
    fn a_torn_tail_is_reported_as_an_unclean_stop_not_as_corruption() {
        use tracing_subscriber::layer::SubscriberExt as _;
        use tracing_subscriber::util::SubscriberInitExt as _;
        /// Every event's level and text, as the member's log would have it.
        #[derive(Clone, Default)]
        struct Capture(Arc<std::sync::Mutex<Vec<String>>>);
        impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Capture {
            fn on_event(
                &self,
                e: &tracing::Event<'_>,
                _: tracing_subscriber::layer::Context<'_, S>,
            ) {
                if is_open_warning(e) {
                    return; // the filter main.rs puts on its output
                }
                struct Text(String);
                impl tracing::field::Visit for Text {
                    fn record_debug(&mut self, f: &tracing::field::Field, v: &dyn std::fmt::Debug) {
                        self.0.push_str(&format!(" {}={v:?}", f.name()));
                    }
                }
                let mut t = Text(e.metadata().level().to_string());
                e.record(&mut t);
                self.0.lock().expect("lock").push(t.0);
            }
        }
        let capture = Capture::default();
        tracing_subscriber::registry()
            .with(OpenWarnings)
            .with(capture.clone())
            .try_init()
            .expect("the test's subscriber, with the log bridge");
        let dir = tempfile::tempdir().expect("tmp");
        {
            let mut store = LogStore::open(dir.path()).expect("open");
            for i in 1..=20 {
                store.append(&[entry(i, 1)], None).expect("append");
            }
        }
        // A write cut short by a crash: half a record after the last one.
        let file = log_file(dir.path());
        let mut bytes = std::fs::read(&file).expect("read");
        let end = bytes.iter().rposition(|b| *b != 0).expect("records") + 1;
        bytes.truncate(end);
        bytes.extend_from_slice(&[0x5a; 24]);
        std::fs::write(&file, &bytes).expect("write");
        let store = LogStore::open(dir.path()).expect("a torn tail opens");
        assert_eq!(store.last(), 20, "nothing acknowledged lost");
        let lines = capture.0.lock().expect("lock").clone();
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with("INFO") && l.contains("torn write from an unclean stop")),
            "{lines:?}"
        );
        assert!(
            !lines
                .iter()
                .any(|l| l.starts_with("WARN") || l.starts_with("ERROR")),
            "{lines:?}"
        );
    }

    #[test]
    fn a_data_directory_deleted_under_the_member_stops_its_writes() {
        let parent = tempfile::tempdir().expect("tmp");
        let dir = parent.path().join("data");
        let mut store = LogStore::open(&dir).expect("open");
        store.append(&[entry(1, 1)], None).expect("append");
        std::fs::remove_dir_all(&dir).expect("rm -rf");
        let text = store
            .append(&[entry(2, 1)], None)
            .expect_err("a write after the directory went")
            .to_string();
        assert!(
            text.contains("was gone") && text.contains("it stops"),
            "{text}"
        );
        // Replaced by an empty one (rm -rf; mkdir): the same.
        std::fs::create_dir_all(&dir).expect("mkdir");
        let text = store.set_commit(1).expect_err("replaced").to_string();
        assert!(text.contains("replaced by another directory"), "{text}");
    }

    #[test]
    fn one_flipped_byte_in_an_entry_is_refused_at_open_with_the_way_out() {
        let dir = tempfile::tempdir().expect("tmp");
        {
            let mut store = LogStore::open(dir.path()).expect("open");
            for i in 1..=200 {
                store.append(&[entry(i, 1)], None).expect("append");
            }
        }
        let file = log_file(dir.path());
        let mut bytes = std::fs::read(&file).expect("read");
        // One bit of one entry's data, in the middle of the log.
        let needle = b"entry 100";
        let at = bytes
            .windows(needle.len())
            .position(|w| w == needle)
            .expect("entry 100 in the file");
        bytes[at + 6] ^= 0x01;
        std::fs::write(&file, &bytes).expect("write");
        let text = LogStore::open(dir.path())
            .expect_err("a damaged entry")
            .to_string();
        assert!(
            text.contains("raft-log") && text.contains("move its data directory aside"),
            "{text}"
        );
    }

    #[test]
    fn a_corrupted_log_file_is_refused_by_name() {
        let dir = tempfile::tempdir().expect("tmp");
        {
            let mut store = LogStore::open(dir.path()).expect("open");
            for i in 1..=20 {
                store.append(&[entry(i, 1)], None).expect("append");
            }
        }
        let file = log_file(dir.path());
        let mut bytes = std::fs::read(&file).expect("read");
        // Damage a record in the middle of the file.
        let middle = bytes.len() / 2;
        for b in &mut bytes[middle..middle + 8] {
            *b ^= 0x5a;
        }
        std::fs::write(&file, &bytes).expect("write");
        let text = LogStore::open(dir.path())
            .expect_err("corrupted log")
            .to_string();
        assert!(text.contains("raft-log"), "{text}");
    }
}
