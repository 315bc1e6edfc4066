//! Crash safety: a child process writes episodes continuously and is killed with SIGKILL at
//! random moments, over many rounds. After every kill the file must pass integrity_check,
//! hold whole episodes only, keep every episode the child saw committed, and reopen (with the
//! mirror rebuilt) for the next round.
//!
//! The child is this very test binary, re-executed with `CRASH_CHILD_ENV` set and
//! `--exact crash_child_writer`, which selects the helper test below; without the variable
//! that helper returns at once, so a normal `cargo test` just counts it as passed.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use autodidact_replay::*;
use common::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const CRASH_CHILD_ENV: &str = "AUTODIDACT_REPLAY_CRASH_CHILD_DB";
const MAX_KEPT: u64 = 3000;

fn store_options() -> StoreOptions {
    StoreOptions {
        mirror: MirrorOptions {
            capacity: 2000,
            alpha: 0.6,
        },
        // Retention keeps eviction and incremental vacuum in the crash window too.
        retention: Retention {
            max_transitions: Some(MAX_KEPT),
            max_bytes: None,
            policy: EvictionPolicy::Fifo,
        },
        ..StoreOptions::default()
    }
}

/// The child: writes random episodes forever, printing the committed total after each flush.
#[test]
fn crash_child_writer() {
    let Ok(path) = std::env::var(CRASH_CHILD_ENV) else {
        return;
    };
    let store = ReplayStore::open(&path, store_options()).unwrap();
    let runs = store.snapshot().unwrap().runs().unwrap();
    let run = match runs.into_iter().next() {
        Some(run) => run,
        None => store.create_run(&cartpole_spec()).unwrap(),
    };
    let h = store
        .start_writer(WriterOptions {
            channel_capacity: 16,
            max_batch_transitions: 256,
            max_batch_latency: Duration::from_millis(5),
            persist_priorities: true,
            ..WriterOptions::default()
        })
        .unwrap();
    let w = h.writer();
    let sampler = store.sampler();
    let mut rng = StdRng::seed_from_u64(std::process::id() as u64);
    let mut batch = SampleBatch::with_capacity(32);
    for round in 0u64.. {
        for _ in 0..rng.random_range(1..20) {
            let len = rng.random_range(1..60);
            let end = if rng.random_bool(0.5) {
                EpisodeEnd::Terminated
            } else {
                EpisodeEnd::Truncated
            };
            write_episode(&w, &run, round as i64, len, end);
        }
        w.flush().unwrap();
        let total: i64 = store
            .summary()
            .unwrap()
            .runs
            .iter()
            .map(|r| r.episodes_total)
            .sum();
        println!("committed {total}");
        // Priority updates ride along with the next batches, so they are in the crash window.
        if sampler
            .sample_prioritized(&mut rng, 32, NStep::one(0.99), 0.4, &mut batch)
            .is_ok()
        {
            let p: Vec<f32> = (0..32).map(|_| rng.random_range(0.01..10.0)).collect();
            sampler.update_priorities(&batch.ids, &p).unwrap();
        }
        if round % 7 == 3 {
            let m = store
                .register_model(&NewModel {
                    parent: None,
                    checkpoint_path: format!("m{round}"),
                    checksum: "c".into(),
                    metrics: serde_json::json!({}),
                })
                .unwrap();
            store.promote(m.version).unwrap();
        }
    }
}

#[test]
fn sigkill_at_random_moments_leaves_whole_episodes() {
    if std::env::var(CRASH_CHILD_ENV).is_ok() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("crash.sqlite");
    let exe = std::env::current_exe().unwrap();
    let seed: u64 = rand::rng().random();
    println!("crash test seed {seed}");
    let mut rng = StdRng::seed_from_u64(seed);
    let mut committed_ever = 0i64;
    let started = Instant::now();
    let rounds = 30;
    for round in 0..rounds {
        let mut child = Command::new(&exe)
            .args([
                "--exact",
                "crash_child_writer",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CRASH_CHILD_ENV, &path)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(n) = line.strip_prefix("committed ") {
                    let _ = tx.send(n.trim().parse::<i64>().unwrap());
                }
            }
        });
        // Every fifth round kills during start-up (open, migration, rebuild); the others
        // once writing is under way.
        if round % 5 != 0 {
            rx.recv_timeout(Duration::from_secs(30))
                .expect("the child should commit within 30 s");
        }
        std::thread::sleep(Duration::from_millis(rng.random_range(0..150)));
        child.kill().unwrap(); // SIGKILL on Unix
        let status = child.wait().unwrap();
        assert!(
            !status.success(),
            "the child must have been killed, not finished"
        );
        reader.join().unwrap();
        let reported = rx.try_iter().max().unwrap_or(0);
        committed_ever = committed_ever.max(reported);

        if !path.exists() {
            continue; // killed before the file was created
        }
        check_whole_episodes(&path);
        let store = ReplayStore::open(&path, store_options()).unwrap();
        assert!(store.integrity_check().unwrap().is_empty());
        let summary = store.summary().unwrap();
        let total: i64 = summary.runs.iter().map(|r| r.episodes_total).sum();
        assert!(
            total >= committed_ever,
            "round {round}: {total} episodes in the file, but {committed_ever} were reported committed"
        );
        assert!(summary.transitions_kept() as u64 <= MAX_KEPT);
        assert!(store.sampler().len() <= 2000);
        assert!(
            store
                .models()
                .unwrap()
                .iter()
                .filter(|m| m.status == ModelStatus::Champion)
                .count()
                <= 1
        );
    }
    assert!(committed_ever > 0, "the child never committed anything");
    println!(
        "{rounds} kill rounds in {:.1} s, {committed_ever} episodes committed",
        started.elapsed().as_secs_f64()
    );
}
