//! `MemStore`: the Raft log in memory, `LogStore`'s twin for the
//! simulation. Clones share one log, as a machine's processes share its
//! disk: the simulation keeps a clone while the replica that writes
//! through another crashes and a new one opens it. Same semantics as
//! `LogStore` (a conflicting tail replaced, compaction and snapshot
//! installs moving the log's start, the commit index kept), none of its
//! files; a crash loses nothing, as with `LogStore` unsynced in the
//! simulation (it crashes processes, not machines).

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use raft::eraftpb::{ConfState, Entry, HardState, Snapshot};
use raft::{GetEntriesContext, RaftState, StorageError};

use super::store::{LogStoreError, RaftStore, check_range};

#[derive(Clone, Debug, Default)]
pub struct MemStore {
    log: Arc<Mutex<Log>>,
}

#[derive(Debug, Default)]
struct Log {
    hard_state: HardState,
    conf_state: ConfState,
    /// The latest snapshot (data included), or the empty one.
    snapshot: Snapshot,
    /// Consecutive entries, the first at `entries[0].index`; none at or
    /// below the snapshot's index.
    entries: Vec<Entry>,
}

impl Log {
    fn snapshot_index(&self) -> u64 {
        self.snapshot.get_metadata().index
    }

    fn first(&self) -> u64 {
        self.entries
            .first()
            .map_or(self.snapshot_index() + 1, |e| e.index)
    }

    fn last(&self) -> u64 {
        self.entries
            .last()
            .map_or(self.snapshot_index(), |e| e.index)
    }

    /// Where entry `index` is in `entries`, if it is there.
    fn position(&self, index: u64) -> Option<usize> {
        let first = self.entries.first()?.index;
        let at = usize::try_from(index.checked_sub(first)?).ok()?;
        (at < self.entries.len()).then_some(at)
    }
}

impl MemStore {
    pub fn new() -> MemStore {
        MemStore::default()
    }

    fn log(&self) -> MutexGuard<'_, Log> {
        self.log.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn hard_state(&self) -> HardState {
        self.log().hard_state.clone()
    }
}

impl RaftStore for MemStore {
    fn is_empty(&self) -> bool {
        let log = self.log();
        log.hard_state == HardState::default()
            && log.conf_state == ConfState::default()
            && log.entries.is_empty()
            && log.snapshot_index() == 0
    }

    fn append(
        &mut self,
        entries: &[Entry],
        hard_state: Option<&HardState>,
    ) -> Result<(), LogStoreError> {
        let mut log = self.log();
        // Entries the snapshot covers are not kept; what follows the new
        // entries' start is replaced, as raft-engine replaces it.
        let covered = log.snapshot_index();
        let skip = entries.iter().take_while(|e| e.index <= covered).count();
        let entries = &entries[skip..];
        if let Some(first) = entries.first() {
            if let Some(at) = log.position(first.index) {
                log.entries.truncate(at);
            }
            log.entries.extend_from_slice(entries);
        }
        if let Some(hs) = hard_state {
            log.hard_state = hs.clone();
        }
        Ok(())
    }

    fn set_commit(&mut self, commit: u64) -> Result<(), LogStoreError> {
        self.log().hard_state.commit = commit;
        Ok(())
    }

    fn set_conf_state(&mut self, cs: ConfState) -> Result<(), LogStoreError> {
        self.log().conf_state = cs;
        Ok(())
    }

    fn apply_snapshot(&mut self, snapshot: Snapshot) -> Result<(), LogStoreError> {
        let mut log = self.log();
        let meta = snapshot.get_metadata();
        log.hard_state.term = log.hard_state.term.max(meta.term);
        log.hard_state.commit = log.hard_state.commit.max(meta.index);
        log.conf_state = meta.get_conf_state().clone();
        log.entries.clear();
        log.snapshot = snapshot;
        Ok(())
    }

    fn compact(&mut self, snapshot: Snapshot) -> Result<(), LogStoreError> {
        let mut log = self.log();
        let index = snapshot.get_metadata().index;
        log.entries.retain(|e| e.index > index);
        log.snapshot = snapshot;
        Ok(())
    }

    fn snapshot_index(&self) -> u64 {
        self.log().snapshot_index()
    }

    fn conf_state(&self) -> ConfState {
        self.log().conf_state.clone()
    }

    fn latest_snapshot(&self) -> Snapshot {
        self.log().snapshot.clone()
    }
}

impl raft::Storage for MemStore {
    fn initial_state(&self) -> raft::Result<RaftState> {
        let log = self.log();
        Ok(RaftState {
            hard_state: log.hard_state.clone(),
            conf_state: log.conf_state.clone(),
        })
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        let log = self.log();
        check_range(low, high, log.first(), log.last())?;
        let (Some(from), true) = (log.position(low), low < high) else {
            return Ok(Vec::new());
        };
        let to = from.saturating_add(usize::try_from(high - low).unwrap_or(usize::MAX));
        let mut entries = log.entries[from..to.min(log.entries.len())].to_vec();
        // At least one entry, then as many as fit in max_size, as
        // raft-rs's own stores do.
        raft::util::limit_size(&mut entries, max_size.into());
        Ok(entries)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        let log = self.log();
        let meta = log.snapshot.get_metadata();
        if idx == meta.index {
            return Ok(meta.term);
        }
        if idx < log.first() {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        log.position(idx)
            .map(|at| log.entries[at].term)
            .ok_or(raft::Error::Store(StorageError::Unavailable))
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.log().first())
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.log().last())
    }

    fn snapshot(&self, _request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        // As `LogStore`: the log is compacted only up to the latest
        // snapshot, so it covers what a follower is missing.
        Ok(self.log().snapshot.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use raft::Storage as _;

    fn entry(index: u64, term: u64) -> Entry {
        Entry {
            index,
            term,
            ..Default::default()
        }
    }

    fn snapshot_at(index: u64, term: u64) -> Snapshot {
        let mut s = Snapshot::default();
        s.mut_metadata().index = index;
        s.mut_metadata().term = term;
        s
    }

    fn terms(store: &MemStore, low: u64, high: u64) -> Vec<u64> {
        store
            .entries(low, high, None, GetEntriesContext::empty(false))
            .expect("entries")
            .iter()
            .map(|e| e.term)
            .collect()
    }

    #[test]
    fn clones_share_the_log_as_a_disk_outlives_its_process() {
        let disk = MemStore::new();
        assert!(disk.is_empty());
        let mut process = disk.clone();
        let hs = HardState {
            term: 2,
            vote: 1,
            ..Default::default()
        };
        process
            .append(&[entry(1, 1), entry(2, 2)], Some(&hs))
            .expect("append");
        process.set_commit(2).expect("commit");
        drop(process);
        assert!(!disk.is_empty());
        let state = disk.initial_state().expect("state");
        assert_eq!(
            (
                state.hard_state.term,
                state.hard_state.vote,
                state.hard_state.commit
            ),
            (2, 1, 2)
        );
        assert_eq!(terms(&disk, 1, 3), vec![1, 2]);
    }

    #[test]
    fn a_conflicting_tail_is_replaced() {
        let mut s = MemStore::new();
        s.append(&[entry(1, 1), entry(2, 1), entry(3, 1)], None)
            .expect("append");
        s.append(&[entry(2, 2)], None).expect("append");
        assert_eq!(s.last_index().expect("last"), 2);
        assert_eq!(terms(&s, 1, 3), vec![1, 2]);
        assert_eq!(
            s.entries(1, 4, None, GetEntriesContext::empty(false)),
            Err(raft::Error::Store(StorageError::Unavailable))
        );
    }

    #[test]
    fn compaction_and_snapshot_install_move_the_log_start() {
        let mut s = MemStore::new();
        let batch: Vec<Entry> = (1..=10).map(|i| entry(i, 1)).collect();
        s.append(&batch, None).expect("append");
        s.compact(snapshot_at(6, 1)).expect("compact");
        assert_eq!(s.first_index().expect("first"), 7);
        assert_eq!(s.term(6).expect("snapshot term"), 1);
        assert_eq!(s.term(5), Err(raft::Error::Store(StorageError::Compacted)));
        assert_eq!(terms(&s, 7, 11).len(), 4);
        // A leader's snapshot past the log replaces it.
        s.apply_snapshot(snapshot_at(20, 3)).expect("install");
        assert_eq!(
            (
                s.first_index().expect("first"),
                s.last_index().expect("last")
            ),
            (21, 20)
        );
        assert_eq!(s.hard_state().commit, 20);
        assert_eq!(s.latest_snapshot().get_metadata().index, 20);
        s.append(&[entry(21, 3)], None)
            .expect("append after snapshot");
        assert_eq!(terms(&s, 21, 22), vec![3]);
    }

    #[test]
    fn max_size_still_gives_one_entry() {
        let mut s = MemStore::new();
        s.append(&[entry(1, 1), entry(2, 1)], None).expect("append");
        let got = s
            .entries(1, 3, Some(0), GetEntriesContext::empty(false))
            .expect("entries");
        assert_eq!(got.len(), 1);
    }
}
