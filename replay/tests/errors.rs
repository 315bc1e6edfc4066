//! Disk full, read-only and locked databases: a typed error, a clean stop, no corruption.

mod common;

use std::time::Duration;

use autodidact_replay::*;
use common::*;
use rusqlite::Connection;

fn big_spec() -> RunSpec {
    RunSpec {
        obs_dims: vec![256],
        ..cartpole_spec()
    }
}

fn write_big(w: &Writer, run: &Run, len: usize) -> Result<()> {
    let o = vec![0.25f32; 256];
    let mut ep = w.begin_episode(run, None);
    for t in 0..len {
        ep.push(&o, ActionRef::Discrete(1), t as f32, None)?;
    }
    ep.finish(&o, EpisodeEnd::Terminated)
}

#[test]
fn disk_full_stops_the_writer_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r.sqlite");
    // 60 pages of 4 KiB: room for the schema and a few dozen 1 KiB observations.
    let opts = StoreOptions {
        max_pages: Some(60),
        ..StoreOptions::default()
    };
    let store = ReplayStore::open(&path, opts).unwrap();
    let run = store.create_run(&big_spec()).unwrap();
    let h = store
        .start_writer(WriterOptions {
            channel_capacity: 4,
            max_batch_transitions: 40,
            ..WriterOptions::default()
        })
        .unwrap();
    let w = h.writer();
    let mut err = None;
    for _ in 0..200 {
        let sent = write_big(&w, &run, 20).and_then(|()| w.flush());
        if let Err(e) = sent {
            err = Some(e);
            break;
        }
    }
    let err = err.expect("the page limit must be hit");
    assert!(matches!(err.root(), ReplayError::DiskFull(_)), "{err}");
    // Every later send reports the same cause; nothing hangs.
    let again = write_big(&w, &run, 1).and_then(|()| w.flush()).unwrap_err();
    assert!(matches!(again.root(), ReplayError::DiskFull(_)), "{again}");
    let committed = h.stats().episodes as i64;
    assert!(committed > 0);
    assert!(matches!(
        h.close(),
        Err(ReplayError::WriterStopped { cause: Some(_) })
    ));
    // The mirror holds exactly what was committed.
    assert_eq!(store.sampler().len() as i64, committed * 20);
    drop(store);
    assert_eq!(check_whole_episodes(&path), committed);
    // Without the limit the same file takes writes again.
    let store = ReplayStore::open(&path, StoreOptions::default()).unwrap();
    let h = store.start_writer(WriterOptions::default()).unwrap();
    write_big(&h.writer(), &run, 20).unwrap();
    h.close().unwrap();
    drop(store);
    assert_eq!(check_whole_episodes(&path), committed + 1);
}

#[test]
fn read_only_store_refuses_writes_with_a_typed_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r.sqlite");
    let store = ReplayStore::open(&path, StoreOptions::default()).unwrap();
    let run = store.create_run(&cartpole_spec()).unwrap();
    let h = store.start_writer(WriterOptions::default()).unwrap();
    write_episode(&h.writer(), &run, 0, 5, EpisodeEnd::Terminated);
    h.close().unwrap();
    drop(store);
    let before = std::fs::read(&path).unwrap();

    let reader = ReplayStore::open_read_only(&path).unwrap();
    assert!(reader.is_read_only());
    // SQLite itself refuses (SQLITE_OPEN_READ_ONLY); we only translate the error.
    let e = reader
        .register_model(&NewModel {
            parent: None,
            checkpoint_path: "x".into(),
            checksum: "y".into(),
            metrics: serde_json::json!({}),
        })
        .unwrap_err();
    assert!(matches!(e, ReplayError::ReadOnly(_)), "{e}");
    assert!(matches!(
        reader.set_metadata("a", "b"),
        Err(ReplayError::ReadOnly(_))
    ));
    // A writer on a read-only store fails its first batch and stops.
    let h = reader.start_writer(WriterOptions::default()).unwrap();
    let w = h.writer();
    write_episode(&w, &run, 1, 5, EpisodeEnd::Terminated);
    let e = w.flush().unwrap_err();
    assert!(matches!(e.root(), ReplayError::ReadOnly(_)), "{e}");
    assert!(h.close().is_err());
    assert_eq!(reader.summary().unwrap().episodes_kept(), 1);
    drop(reader);
    assert_eq!(
        std::fs::read(&path).unwrap(),
        before,
        "read-only open changed the file"
    );
    assert_eq!(check_whole_episodes(&path), 1);
}

#[test]
fn locked_database_gives_busy_and_a_clean_stop() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r.sqlite");
    let opts = StoreOptions {
        busy_timeout: Duration::from_millis(100),
        ..StoreOptions::default()
    };
    let store = ReplayStore::open(&path, opts).unwrap();
    let run = store.create_run(&cartpole_spec()).unwrap();
    let h = store.start_writer(WriterOptions::default()).unwrap();
    let w = h.writer();
    write_episode(&w, &run, 0, 5, EpisodeEnd::Terminated);
    w.flush().unwrap();

    // Another connection (as another process would) takes the write lock and keeps it.
    let other = Connection::open(&path).unwrap();
    other
        .execute_batch("BEGIN IMMEDIATE; INSERT INTO metadata VALUES ('held', 'lock');")
        .unwrap();
    assert!(matches!(
        store.set_metadata("k", "v"),
        Err(ReplayError::Busy(_))
    ));
    write_episode(&w, &run, 1, 5, EpisodeEnd::Terminated);
    let e = w.flush().unwrap_err();
    assert!(matches!(e.root(), ReplayError::Busy(_)), "{e}");
    assert!(h.close().is_err());
    other.execute_batch("COMMIT").unwrap();
    drop(other);

    // Only the first episode is there; the failed batch left no trace.
    assert_eq!(store.summary().unwrap().episodes_kept(), 1);
    assert_eq!(store.sampler().len(), 5);
    assert_eq!(store.metadata("held").unwrap().as_deref(), Some("lock"));
    // The store is usable again once the lock is gone.
    let h = store.start_writer(WriterOptions::default()).unwrap();
    write_episode(&h.writer(), &run, 2, 5, EpisodeEnd::Terminated);
    h.close().unwrap();
    drop(store);
    assert_eq!(check_whole_episodes(&path), 2);
}

#[test]
fn a_stalled_disk_blocks_senders_instead_of_buffering() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r.sqlite");
    let store = ReplayStore::open(&path, StoreOptions::default()).unwrap();
    let run = store.create_run(&cartpole_spec()).unwrap();
    let h = store
        .start_writer(WriterOptions {
            channel_capacity: 2,
            max_batch_transitions: 1,
            max_batch_latency: Duration::ZERO,
            persist_priorities: true,
        })
        .unwrap();
    // Another connection holds the write lock: the writer waits (busy timeout 5 s) as it
    // would on a stalled disk.
    let other = Connection::open(&path).unwrap();
    other.execute_batch("BEGIN IMMEDIATE").unwrap();
    let sent = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let actor = {
        let (w, run, sent) = (h.writer(), run.clone(), sent.clone());
        std::thread::spawn(move || {
            for tag in 0..20 {
                write_episode(&w, &run, tag, 3, EpisodeEnd::Terminated);
                sent.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
        })
    };
    std::thread::sleep(Duration::from_millis(500));
    // One episode in the writer's stalled batch plus two in the channel; the fourth send
    // blocks. However long we waited, an unbounded queue would have taken all 20.
    let queued = sent.load(std::sync::atomic::Ordering::SeqCst);
    assert!(
        queued <= 3,
        "{queued} episodes accepted while the writer was stalled"
    );
    other.execute_batch("COMMIT").unwrap();
    actor.join().unwrap();
    h.flush().unwrap();
    assert_eq!(h.close().unwrap().episodes, 20);
    assert_eq!(store.summary().unwrap().episodes_kept(), 20);
}
