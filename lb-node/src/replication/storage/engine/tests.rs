//! The raft-engine log: what survives a reopen, compaction and snapshot
//! installs, and what damage is refused by name.

use super::*;
use raft::Storage as _;

use crate::replication::storage::{OpenWarnings, is_open_warning};

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
        fn on_event(&self, e: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
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
