//! `LogStore`: the durable Raft log of a member, on raft-engine (TiKV's log
//! engine). The files it keeps and what it refuses are in the module
//! docs of `storage`.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use protobuf::Message as _;
use raft::eraftpb::{ConfState, Entry, HardState, Snapshot};
use raft::{GetEntriesContext, RaftState, StorageError};
use raft_engine::{Command as EngineCommand, Engine, LogBatch, MessageExt};

use super::store::{LogStoreError, RaftStore, check_range};
use super::warnings::{OPEN_WARNINGS, report_open_warnings};

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

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn hard_state(&self) -> &HardState {
        &self.hard_state
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

impl RaftStore for LogStore {
    /// Whether nothing was ever written: a new member.
    fn is_empty(&self) -> bool {
        self.hard_state == HardState::default()
            && self.conf_state == ConfState::default()
            && self.engine.last_index(GROUP).is_none()
            && self.snapshot.get_metadata().index == 0
    }

    fn set_conf_state(&mut self, cs: ConfState) -> Result<(), LogStoreError> {
        let mut batch = LogBatch::default();
        batch
            .put_message(GROUP, CONF_STATE_KEY.to_vec(), &cs)
            .map_err(|source| self.engine_error(source))?;
        self.write(&mut batch, true)?;
        self.conf_state = cs;
        Ok(())
    }

    /// Persists new entries and, if given, the hard state, with one sync.
    fn append(
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
    fn set_commit(&mut self, commit: u64) -> Result<(), LogStoreError> {
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
    fn apply_snapshot(&mut self, snapshot: Snapshot) -> Result<(), LogStoreError> {
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
    fn compact(&mut self, snapshot: Snapshot) -> Result<(), LogStoreError> {
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

    fn snapshot_index(&self) -> u64 {
        self.snapshot.get_metadata().index
    }

    fn conf_state(&self) -> ConfState {
        self.conf_state.clone()
    }

    /// The latest snapshot (data included).
    fn latest_snapshot(&self) -> Snapshot {
        self.snapshot.clone()
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
        check_range(low, high, self.first(), self.last())?;
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
mod tests;
