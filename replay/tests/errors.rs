//! Disk full, read-only and locked databases. A lock held elsewhere or a full disk stalls the
//! writer, which keeps what it accepted and resumes by itself; a read-only file stops it with
//! a typed error. Never a partial episode, never an episode twice.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use autodidact_replay::*;
use common::*;
use rusqlite::Connection;

fn big_spec() -> RunSpec {
    RunSpec {
        obs_dims: vec![256],
        ..cartpole_spec()
    }
}

/// Waits (at most 60 s, against a hang) until `cond` holds for the writer's health.
fn wait_for_health(h: &WriterHandle, what: &str, cond: impl Fn(&WriterHealth) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let health = h.health();
        if cond(&health) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {health:?}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// An episode of `len` big steps whose observations and rewards all carry `tag`, so that the
/// file can be checked for each episode exactly once.
fn write_tagged(w: &Writer, run: &Run, tag: i64, len: usize) -> Result<()> {
    let o = vec![tag as f32; 256];
    let mut ep = w.begin_episode(run, None);
    for _ in 0..len {
        ep.push(&o, ActionRef::Discrete(1), tag as f32, None)?;
    }
    ep.finish(&o, EpisodeEnd::Terminated)
}

/// The tags of the episodes in the file, sorted.
fn tags_in_file(store: &ReplayStore) -> Vec<i64> {
    let mut tags: Vec<i64> = store
        .snapshot()
        .unwrap()
        .episodes(None)
        .unwrap()
        .iter()
        .map(|e| e.final_obs[0] as i64)
        .collect();
    tags.sort_unstable();
    tags
}

#[test]
fn a_full_disk_stalls_the_writer_which_resumes_when_space_returns() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r.sqlite");
    // 60 pages of 4 KiB: room for the schema and a few dozen 1 KiB observations.
    let opts = StoreOptions {
        max_file_bytes: Some(60 * 4096),
        ..StoreOptions::default()
    };
    let store = ReplayStore::open(&path, opts).unwrap();
    assert_eq!(store.max_file_bytes(), Some(60 * 4096));
    let run = store.create_run(&big_spec()).unwrap();
    let capacity = 4;
    let h = store
        .start_writer(WriterOptions {
            channel_capacity: capacity,
            max_batch_transitions: 40,
            max_retry_backoff: Duration::from_millis(20),
            ..WriterOptions::default()
        })
        .unwrap();
    // An actor sends 40 episodes of 20 steps (about 800 KiB of observations, far more than
    // the cap) and must simply be held back, never fail.
    const EPISODES: i64 = 40;
    let sent = Arc::new(AtomicU64::new(0));
    let actor = {
        let (w, run, sent) = (h.writer(), run.clone(), sent.clone());
        std::thread::spawn(move || {
            for tag in 0..EPISODES {
                write_tagged(&w, &run, tag, 20).unwrap();
                sent.fetch_add(1, Ordering::SeqCst);
            }
        })
    };
    wait_for_health(&h, "a disk-full stall", |h| {
        h.stall
            .is_some_and(|s| s.reason == StallReason::DiskFull && s.attempts >= 3)
    });
    // Stalled: what is accepted but not committed stays within the channel plus one batch (two
    // episodes of 20 steps), and the sampler sees committed episodes only.
    let accepted = sent.load(Ordering::SeqCst);
    let committed = h.stats().episodes;
    assert!(committed < EPISODES as u64, "the cap was never reached");
    assert!(
        accepted <= committed + capacity as u64 + 2,
        "{accepted} accepted, {committed} committed"
    );
    let health = h.health();
    assert!(health.queued_episodes <= capacity as u64 + 2, "{health:?}");
    assert!(
        health.last_error.as_deref().unwrap().contains("full"),
        "{health:?}"
    );
    assert!(!health.stopped && health.lost_episodes == 0, "{health:?}");
    assert!(h.writer().failure().is_none());
    assert_eq!(store.sampler().len() as u64, h.stats().transitions);
    // Registry writes on the store's own connection get the typed error.
    let e = store.set_metadata("k", &"x".repeat(200_000)).unwrap_err();
    assert!(matches!(e, ReplayError::DiskFull(_)), "{e}");

    // Space returns: the writer resumes by itself and commits everything, once each.
    store.set_max_file_bytes(None).unwrap();
    assert_eq!(store.max_file_bytes(), None);
    actor.join().unwrap();
    h.flush().unwrap();
    let health = h.health();
    assert!(health.stall.is_none() && health.retries >= 3, "{health:?}");
    assert_eq!(health.queued_episodes, 0);
    assert!(health.last_commit_at.is_some());
    // And keeps working.
    write_tagged(&h.writer(), &run, EPISODES, 1).unwrap();
    let stats = h.close().unwrap();
    assert_eq!(stats.episodes, EPISODES as u64 + 1);
    assert_eq!(tags_in_file(&store), (0..=EPISODES).collect::<Vec<_>>());
    assert_eq!(store.sampler().len() as u64, stats.transitions);
    store.set_metadata("k", &"x".repeat(200_000)).unwrap();
    drop(store);
    assert_eq!(check_whole_episodes(&path), EPISODES + 1);
}

#[test]
fn the_cap_can_be_lifted_through_the_writer_handle_too() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r.sqlite");
    let store = ReplayStore::open(&path, StoreOptions::default()).unwrap();
    let run = store.create_run(&big_spec()).unwrap();
    let h = store
        .start_writer(WriterOptions {
            max_retry_backoff: Duration::from_millis(20),
            ..WriterOptions::default()
        })
        .unwrap();
    // Set at run time: the cap freezes the file at (about) its current size.
    h.set_max_file_bytes(Some(4096));
    assert_eq!(store.max_file_bytes(), Some(4096));
    write_tagged(&h.writer(), &run, 0, 30).unwrap();
    wait_for_health(&h, "a disk-full stall", |h| {
        h.stall.is_some_and(|s| s.reason == StallReason::DiskFull)
    });
    // The store's connection follows a cap set through the handle.
    let e = store.set_metadata("k", &"x".repeat(100_000)).unwrap_err();
    assert!(matches!(e, ReplayError::DiskFull(_)), "{e}");
    h.set_max_file_bytes(None);
    h.flush().unwrap();
    assert_eq!(h.close().unwrap().episodes, 1);
    store.set_metadata("k", &"x".repeat(100_000)).unwrap();
    assert_eq!(tags_in_file(&store), vec![0]);
}

#[test]
fn failed_attempts_leave_retention_counts_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r.sqlite");
    let store = ReplayStore::open(
        &path,
        StoreOptions {
            retention: Retention {
                max_transitions: Some(200),
                ..Retention::default()
            },
            ..StoreOptions::default()
        },
    )
    .unwrap();
    let run = store.create_run(&big_spec()).unwrap();
    let h = store
        .start_writer(WriterOptions {
            max_batch_transitions: 1000,
            max_retry_backoff: Duration::from_millis(20),
            ..WriterOptions::default()
        })
        .unwrap();
    for tag in 0..5 {
        write_tagged(&h.writer(), &run, tag, 20).unwrap();
    }
    h.flush().unwrap();
    // Room for about two more episodes: attempts fail halfway through their batch of ten,
    // many times.
    let pages: u64 = Connection::open(&path)
        .unwrap()
        .query_row("PRAGMA page_count", [], |r| r.get(0))
        .unwrap();
    store.set_max_file_bytes(Some((pages + 12) * 4096)).unwrap();
    for tag in 5..15 {
        write_tagged(&h.writer(), &run, tag, 20).unwrap();
    }
    wait_for_health(&h, "a disk-full stall of several attempts", |h| {
        h.stall
            .is_some_and(|s| s.reason == StallReason::DiskFull && s.attempts >= 3)
    });
    store.set_max_file_bytes(None).unwrap();
    h.flush().unwrap();
    assert_eq!(h.close().unwrap().episodes, 15);
    // Oldest first, exactly down to the limit: failed attempts counted nothing.
    let s = store.summary().unwrap();
    assert_eq!((s.transitions_kept(), s.episodes_kept()), (200, 10));
    assert_eq!(tags_in_file(&store), (5..15).collect::<Vec<_>>());
    assert_eq!(store.sampler().len(), 200);
    drop(store);
    assert_eq!(check_whole_episodes(&path), 10);
}

#[test]
fn closing_on_a_disk_that_stays_full_reports_what_was_not_written() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r.sqlite");
    let store = ReplayStore::open(
        &path,
        StoreOptions {
            max_file_bytes: Some(60 * 4096),
            ..StoreOptions::default()
        },
    )
    .unwrap();
    let run = store.create_run(&big_spec()).unwrap();
    let h = store
        .start_writer(WriterOptions {
            channel_capacity: 64,
            max_batch_transitions: 40,
            max_retry_backoff: Duration::from_millis(20),
            close_timeout: Duration::from_millis(200),
            ..WriterOptions::default()
        })
        .unwrap();
    let w = h.writer();
    // 600 KiB of observations against a 240 KiB cap, all fitting in the channel.
    let tag = 30;
    for t in 0..tag {
        write_tagged(&w, &run, t, 20).unwrap();
    }
    wait_for_health(&h, "a disk-full stall", |h| {
        h.stall.is_some_and(|s| s.reason == StallReason::DiskFull)
    });
    let committed = h.stats().episodes;
    let queued = h.health().queued_episodes;
    assert!(queued > 0);
    // Shutdown does not hang on a full disk: it gives up after close_timeout and says how
    // many accepted episodes it drops.
    let e = h.close().unwrap_err();
    match &e {
        ReplayError::Unwritten { episodes, cause } => {
            assert_eq!(*episodes, tag as u64 - committed, "{e}");
            assert!(matches!(**cause, ReplayError::DiskFull(_)), "{e}");
        }
        other => panic!("expected Unwritten, got {other}"),
    }
    assert!(matches!(e.root(), ReplayError::DiskFull(_)));
    let h = w.health();
    assert!(
        h.stopped && h.lost_episodes == tag as u64 - committed,
        "{h:?}"
    );
    assert_eq!(h.queued_episodes, 0);
    // A sender after the end is refused, not silently accepted.
    assert!(matches!(
        write_tagged(&w, &run, tag, 1),
        Err(ReplayError::WriterStopped { .. })
    ));
    assert_eq!(store.sampler().len() as u64, committed * 20);
    drop(store);
    assert_eq!(check_whole_episodes(&path), committed as i64);
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
fn a_lock_held_past_the_busy_timeout_stalls_the_writer_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r.sqlite");
    let opts = StoreOptions {
        busy_timeout: Duration::from_millis(20),
        ..StoreOptions::default()
    };
    let store = ReplayStore::open(&path, opts).unwrap();
    let run = store.create_run(&big_spec()).unwrap();
    let h = store
        .start_writer(WriterOptions {
            max_retry_backoff: Duration::from_millis(20),
            ..WriterOptions::default()
        })
        .unwrap();
    let w = h.writer();
    write_tagged(&w, &run, 0, 5).unwrap();
    w.flush().unwrap();
    let first_ids: Vec<i64> = store
        .snapshot()
        .unwrap()
        .transitions(1)
        .unwrap()
        .iter()
        .map(|t| t.id)
        .collect();

    // Another connection (as an outside `sqlite3` would) takes the write lock and keeps it
    // for many busy timeouts.
    let other = Connection::open(&path).unwrap();
    other
        .execute_batch("BEGIN EXCLUSIVE; INSERT INTO metadata VALUES ('held', 'lock');")
        .unwrap();
    // The store's own connection answers with the typed error (a registry write is the
    // caller's to retry).
    assert!(matches!(
        store.set_metadata("k", "v"),
        Err(ReplayError::Busy(_))
    ));
    for tag in 1..=10 {
        write_tagged(&w, &run, tag, 5).unwrap();
    }
    wait_for_health(&h, "a busy stall of several attempts", |h| {
        h.stall
            .is_some_and(|s| s.reason == StallReason::Busy && s.attempts >= 3)
    });
    // Priorities changed during the stall are taken by failing attempts; they must still
    // reach the file.
    let sampler = store.sampler();
    assert_eq!(
        sampler
            .update_priorities(&first_ids, &vec![7.0; first_ids.len()])
            .unwrap(),
        first_ids.len()
    );
    // Let at least one whole attempt take them and fail.
    let seen = h.health().stall.unwrap().attempts;
    wait_for_health(&h, "two more failed attempts", |h| {
        h.stall.is_some_and(|s| s.attempts >= seen + 2)
    });
    // Nothing uncommitted is visible.
    assert_eq!(h.stats().episodes, 1);
    assert_eq!(sampler.len(), 5);
    let health = h.health();
    assert_eq!(health.queued_episodes, 10, "{health:?}");
    assert!(
        health.last_error.as_deref().unwrap().contains("locked"),
        "{health:?}"
    );
    assert!(h.writer().failure().is_none());

    other.execute_batch("COMMIT").unwrap();
    drop(other);
    w.flush().unwrap();
    let health = h.health();
    assert!(health.stall.is_none() && health.retries >= 3, "{health:?}");
    assert_eq!(health.queued_episodes, 0);
    // The writer keeps working after the stall.
    write_tagged(&w, &run, 11, 5).unwrap();
    assert_eq!(h.close().unwrap().episodes, 12);
    assert_eq!(tags_in_file(&store), (0..=11).collect::<Vec<_>>());
    assert_eq!(store.sampler().len(), 12 * 5);
    assert_eq!(store.metadata("held").unwrap().as_deref(), Some("lock"));
    let priorities: Vec<Option<f32>> = store
        .snapshot()
        .unwrap()
        .transitions(1)
        .unwrap()
        .iter()
        .map(|t| t.priority)
        .collect();
    assert_eq!(priorities, vec![Some(7.0); 5]);
    drop(store);
    assert_eq!(check_whole_episodes(&path), 12);
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
            ..WriterOptions::default()
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
