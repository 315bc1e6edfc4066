//! A read-only reader in another process (as the analysis tool would be) sees consistent
//! snapshots while the writer commits: within one snapshot the kept counters, the episode
//! rows and the transition rows always agree, and no episode is ever seen half-written.
//!
//! The reader child is this test binary re-executed with `READER_CHILD_ENV` set (see
//! `crash.rs` for the pattern).

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use autodidact_replay::*;
use common::*;

const READER_CHILD_ENV: &str = "AUTODIDACT_REPLAY_READER_CHILD_DB";

#[test]
fn reader_child() {
    let Ok(path) = std::env::var(READER_CHILD_ENV) else {
        return;
    };
    let stop = format!("{path}.stop");
    let reader = ReplayStore::open_read_only(&path).unwrap();
    let mut states = std::collections::BTreeSet::new();
    let mut snapshots = 0;
    let deadline = Instant::now() + Duration::from_secs(20);
    while !std::path::Path::new(&stop).exists() && Instant::now() < deadline {
        let snap = reader.snapshot().unwrap();
        let summary = snap.summary().unwrap();
        let episodes = snap.episodes(None).unwrap();
        assert_eq!(summary.episodes_kept(), episodes.len() as i64);
        let lengths: i64 = episodes.iter().map(|e| e.length).sum();
        assert_eq!(summary.transitions_kept(), lengths);
        // The newest episode is the one a torn write would show.
        if let Some(last) = episodes.last() {
            let rows = snap.transitions(last.id).unwrap();
            assert_eq!(rows.len() as i64, last.length);
            assert_eq!(rows.last().map(|r| r.terminated || r.truncated), Some(true));
        }
        states.insert(summary.runs.iter().map(|r| r.episodes_total).sum::<i64>());
        snapshots += 1;
    }
    println!("snapshots {snapshots} states {}", states.len());
}

#[test]
fn read_only_process_sees_consistent_snapshots_while_writer_runs() {
    if std::env::var(READER_CHILD_ENV).is_ok() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shared.sqlite");
    let opts = StoreOptions {
        retention: Retention {
            max_transitions: Some(2000),
            ..Retention::default()
        },
        ..StoreOptions::default()
    };
    let store = ReplayStore::open(&path, opts).unwrap();
    let run = store.create_run(&cartpole_spec()).unwrap();
    let h = store
        .start_writer(WriterOptions {
            channel_capacity: 4,
            max_batch_transitions: 50,
            max_batch_latency: Duration::from_millis(1),
            persist_priorities: true,
            ..WriterOptions::default()
        })
        .unwrap();
    let w = h.writer();
    write_episode(&w, &run, 0, 10, EpisodeEnd::Terminated);
    w.flush().unwrap();

    let child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "reader_child", "--nocapture", "--test-threads=1"])
        .env(READER_CHILD_ENV, &path)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Keep committing small batches (evicting old episodes too) while the reader reads.
    let mut tag = 1;
    let until = Instant::now() + Duration::from_millis(1500);
    while Instant::now() < until {
        write_episode(
            &w,
            &run,
            tag,
            1 + (tag as usize * 7) % 40,
            EpisodeEnd::Truncated,
        );
        tag += 1;
        if tag % 5 == 0 {
            w.flush().unwrap();
        }
    }
    std::fs::write(format!("{}.stop", path.display()), b"").unwrap();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "reader failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = BufReader::new(stdout.as_bytes())
        .lines()
        .map_while(Result::ok)
        .find_map(|l| l.find("snapshots ").map(|i| l[i..].to_string()))
        .unwrap_or_else(|| panic!("no reader summary line in:\n{stdout}"));
    let nums: Vec<usize> = line
        .split_whitespace()
        .filter_map(|t| t.parse().ok())
        .collect();
    println!("{line}; writer wrote {tag} episodes");
    assert!(nums[0] >= 10, "too few snapshots: {line}");
    // The reader really ran concurrently with the writer: it saw the file change.
    assert!(nums[1] >= 2, "the reader saw only one state: {line}");
    h.close().unwrap();
    drop(store);
    check_whole_episodes(&path);
}
