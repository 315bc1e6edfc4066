//! Hardening (issue 12): the daemon and the CLI against bad peers, bad files, bad numbers and
//! a hostile run directory, each with real parts (child processes, SQLite files, the binary).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use autodidact::daemon::{Daemon, DaemonConfig, DaemonOptions, Status};
use autodidact_replay::ReplayStore;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_autodidact"))
}

/// Runs the binary with a deadline: a hang is a failure of the test, not of CI's patience.
fn run_with_deadline(cmd: &mut Command, limit: Duration) -> Output {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        if t0.elapsed() > limit {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "{cmd:?} did not finish within {limit:?} (hung?): {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// An exec: env ID for the fault-injecting peer.
fn peer(args: &str) -> String {
    format!("exec:python3 {} {args}", common::faulty_peer())
}

/// Small, fast settings for an in-process daemon over `env`.
fn small_daemon(env: &str) -> DaemonConfig {
    let mut c = DaemonConfig::default();
    c.daemon.envs = vec![env.to_string()];
    c.http.enabled = false;
    c.dqn.learning_starts = 200;
    c.dqn.batch_size = 32;
    c.daemon.candidate_every = 200;
    c.daemon.exploration_steps = 2_000;
    c.gate.episodes = 2;
    c.reflection.every_s = 0.0;
    c.daemon.fault_backoff_max_s = 0.2;
    c.network.d_model = 16;
    c.network.blocks = vec![autodidact_core::BlockConfig::Dense { d_hidden: 16 }];
    c
}

fn start(cfg: DaemonConfig, run_dir: &Path) -> Daemon {
    Daemon::start(DaemonOptions {
        config: cfg,
        run_dir: run_dir.to_path_buf(),
        env_factory: None,
    })
    .unwrap()
}

/// Polls the daemon until `pred` holds; the daemon must stay alive all along.
fn wait(daemon: &Daemon, what: &str, pred: impl Fn(&Status) -> bool) -> Status {
    let t0 = Instant::now();
    loop {
        assert!(
            daemon.failure().is_none(),
            "the daemon stopped: {:?}",
            daemon.failure()
        );
        let s = daemon.status().unwrap();
        if pred(&s) {
            return s;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(180),
            "timed out waiting for {what}: {s:#?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Every committed episode is whole: its transitions are steps 0..length-1, exactly one end
/// flag is set, the file passes SQLite's integrity check. Returns (episodes, lengths).
fn assert_episodes_whole(db: &Path) -> Vec<(i64, bool)> {
    let store = ReplayStore::open_read_only(db).unwrap();
    assert!(store.integrity_check().unwrap().is_empty());
    drop(store);
    let conn =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap();
    let mut stmt = conn
        .prepare(
            "SELECT e.id, e.length, e.terminated, e.truncated, e.final_obs IS NOT NULL, \
             (SELECT count(*) FROM transitions t WHERE t.episode_id = e.id), \
             (SELECT coalesce(max(step), -1) FROM transitions t WHERE t.episode_id = e.id) \
             FROM episodes e ORDER BY e.id",
        )
        .unwrap();
    let rows: Vec<(i64, i64, bool, bool, bool, i64, i64)> = stmt
        .query_map([], |r| {
            Ok((
                r.get(0)?,
                r.get(1)?,
                r.get(2)?,
                r.get(3)?,
                r.get(4)?,
                r.get(5)?,
                r.get(6)?,
            ))
        })
        .unwrap()
        .map(Result::unwrap)
        .collect();
    for (id, len, term, trunc, has_final, count, max_step) in &rows {
        assert!(*len >= 1, "episode {id} is empty");
        assert_eq!(
            count, len,
            "episode {id}: {count} transitions for length {len}"
        );
        assert_eq!(*max_step, len - 1, "episode {id}: steps are not 0..{len}");
        assert!(
            term ^ trunc,
            "episode {id}: terminated {term}, truncated {trunc}"
        );
        assert!(has_final, "episode {id} has no final observation");
    }
    rows.iter().map(|r| (r.1, r.3)).collect()
}

// Item 2: one bad answer from an environment must not end the daemon.
#[test]
fn faulty_answers_cut_the_episode_and_the_daemon_lives_on() {
    if !common::python_with(
        "faulty_answers_cut_the_episode_and_the_daemon_lives_on",
        "json",
    ) {
        return;
    }
    // The peer's world never ends; at step 50 of every episode it answers badly: an `error`
    // message, a malformed line, NaN, and a reward of 1e300 (finite in f64, infinite in f32).
    for (fault, kind) in [
        ("error", "env_error"),
        ("garbage", "protocol"),
        ("nan", "protocol"),
        ("hugereward", "protocol"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path().join("run");
        let daemon = start(
            small_daemon(&peer(&format!("--fault {fault} --after 50"))),
            &run,
        );
        let s = wait(&daemon, "faults and learning", |s| {
            s.steps >= 800 && s.faults.total >= 5 && s.updates > 0
        });
        assert!(
            s.faults.by_kind[kind] >= 5,
            "{fault}: counted as {:?}",
            s.faults.by_kind
        );
        assert!(s.unhealthy.is_none(), "{fault}: {:?}", s.unhealthy);
        assert!(s.faults.last.is_some());
        daemon.shutdown().unwrap();
        // Each episode was cut as truncated at the fault, with its 49 good steps stored.
        let episodes = assert_episodes_whole(&run.join("replay.sqlite"));
        assert!(episodes.len() >= 5, "{fault}: {episodes:?}");
        assert!(
            episodes.iter().all(|&(len, trunc)| trunc && len <= 49),
            "{fault}: {episodes:?}"
        );
        assert!(
            episodes.iter().filter(|e| e.0 == 49).count() >= 4,
            "{fault}: {episodes:?}"
        );
        let store = ReplayStore::open_read_only(run.join("replay.sqlite")).unwrap();
        let faults = store.reflections(Some("fault"), 100).unwrap();
        assert!(!faults.is_empty(), "{fault}: no fault reflection");
        assert!(
            faults[0].sentence.contains("cut as truncated"),
            "{}",
            faults[0].sentence
        );
    }
}

// Item 2: faults in a row make /healthz unhealthy, and the daemon still does not exit.
#[test]
fn faults_in_a_row_report_unhealthy_without_stopping() {
    if !common::python_with("faults_in_a_row_report_unhealthy_without_stopping", "json") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = small_daemon(&peer("--fault error --after 1"));
    cfg.daemon.unhealthy_after_faults = 3;
    cfg.http.enabled = true;
    cfg.http.bind = "127.0.0.1:0".into();
    let daemon = start(cfg, &dir.path().join("run"));
    let addr = daemon.http_addr().unwrap().to_string();
    let s = wait(&daemon, "unhealthy", |s| s.unhealthy.is_some());
    assert!(s.faults.in_row_max >= 3, "{:?}", s.faults);
    let (code, body) = common::http_get(&addr, "/healthz", None).unwrap();
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("in a row"), "{body}");
    let m = common::http_get(&addr, "/metrics", None).unwrap().1;
    assert!(m.contains("autodidact_healthy 0"), "{m}");
    assert!(
        m.contains("autodidact_env_faults_total{kind=\"env_error\"}"),
        "{m}"
    );
    // Still alive and still retrying.
    let before = daemon.status().unwrap().faults.total;
    wait(&daemon, "more retries", |s| s.faults.total > before);
    daemon.shutdown().unwrap();
}

// Item 3: an episode that never ends is cut at the step cap, committed, and learned from.
#[test]
fn never_ending_episodes_are_cut_committed_and_learned_from() {
    if !common::python_with(
        "never_ending_episodes_are_cut_committed_and_learned_from",
        "json",
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let out = run_with_deadline(
        bin()
            .args([
                "train",
                "--env",
                &peer("--fault none"),
                "--steps",
                "1200",
                "--json",
            ])
            .arg("--run-dir")
            .arg(&run)
            .args([
                "--set",
                "replay.max_episode_steps=100",
                "--set",
                "dqn.learning_starts=200",
                "--set",
                "run.eval_episodes=1",
            ]),
        Duration::from_secs(300),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(r["updates"].as_u64().unwrap() > 0, "{r}");
    let episodes = assert_episodes_whole(&run.join("replay.sqlite"));
    assert_eq!(episodes.len(), 12, "{episodes:?}");
    assert!(
        episodes.iter().all(|&(len, trunc)| len == 100 && trunc),
        "{episodes:?}"
    );
}

// Item 6: absurd numbers are refused, quickly, before the run directory is written.
#[test]
fn absurd_numbers_are_refused_before_anything_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let cases: &[(&[&str], &str)] = &[
        (
            &[
                "train",
                "--env",
                "cartpole",
                "--set",
                "replay.capacity=2000000000000000000",
            ],
            "replay.capacity",
        ),
        (
            &[
                "train",
                "--env",
                "cartpole",
                "--set",
                "replay.capacity=1000000000000",
            ],
            "replay.capacity",
        ),
        (
            &[
                "train",
                "--env",
                "cartpole",
                "--set",
                "network.d_model=4000000000",
            ],
            "network.d_model",
        ),
        (
            &[
                "train",
                "--env",
                "cartpole",
                "--set",
                "network.blocks=[{kind=\"moe\", d_hidden=64, n_experts=1000000, top_k=2}]",
            ],
            "n_experts",
        ),
        (
            &[
                "train",
                "--env",
                "cartpole",
                "--set",
                "network.blocks=[{kind=\"dense\", d_hidden=60000}, {kind=\"dense\", d_hidden=60000}]",
                "--set",
                "network.d_model=60000",
            ],
            "network",
        ),
        (&["train", "--env", "cartpole", "--steps", "0"], "run.steps"),
        (
            &[
                "train",
                "--env",
                "cartpole",
                "--set",
                "run.eval_episodes=1000000000000",
            ],
            "run.eval_episodes",
        ),
        (
            &[
                "train",
                "--env",
                "cartpole",
                "--set",
                "dqn.batch_size=100000000",
            ],
            "dqn.batch_size",
        ),
        (
            &[
                "train",
                "--env",
                "cartpole",
                "--set",
                "replay.max_episode_steps=0",
            ],
            "replay.max_episode_steps",
        ),
        (
            &[
                "train",
                "--env",
                "cartpole",
                "--set",
                "replay.max_episode_steps=100000000000",
            ],
            "replay.max_episode_steps",
        ),
        (
            &[
                "daemon",
                "--env",
                "cartpole",
                "--set",
                "gate.episodes=1000000000",
            ],
            "gate.episodes",
        ),
        (
            &[
                "daemon",
                "--env",
                "cartpole",
                "--set",
                "reflection.lessons_sample=1000000000000",
            ],
            "reflection.lessons_sample",
        ),
        (
            &[
                "daemon",
                "--env",
                "cartpole",
                "--set",
                "drift.returns.reference=100000000000",
            ],
            "drift.returns.reference",
        ),
        (
            &[
                "daemon",
                "--env",
                "cartpole",
                "--set",
                "daemon.shutdown_timeout_s=nan",
            ],
            "daemon.shutdown_timeout_s",
        ),
    ];
    for (i, (args, key)) in cases.iter().enumerate() {
        let run = dir.path().join(format!("run{i}"));
        let out = run_with_deadline(
            bin().args(*args).arg("--run-dir").arg(&run),
            Duration::from_secs(60),
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(
            err.contains(key),
            "{args:?}: the error does not name {key}: {err}"
        );
        assert!(!run.exists(), "{args:?}: the run directory was created");
    }
    // Command-line numbers have ranges too (clap refuses them with exit code 2).
    for args in [
        &["eval", "--checkpoint", "x", "--episodes", "0"][..],
        &["eval", "--checkpoint", "x", "--episodes", "1000000000000"],
        &["rollout", "--episodes", "1000000000000"],
        &["replay", "x.sqlite", "curve", "--smooth", "1000000000000"],
    ] {
        let out = run_with_deadline(bin().args(args), Duration::from_secs(60));
        assert_eq!(
            out.status.code(),
            Some(2),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

// Item 9: a crafted registry cannot make pruning delete files outside the run directory.
#[test]
fn pruning_never_deletes_outside_the_run_directory() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let mut cfg = small_daemon("cartpole");
    cfg.daemon.keep_checkpoints = 1;
    cfg.daemon.candidate_every = 100;
    let daemon = start(cfg.clone(), &run);
    wait(&daemon, "three gate decisions", |s| {
        s.promoted + s.rejected >= 3
    });
    daemon.shutdown().unwrap();

    // Victims outside the run directory, named by every older version's row.
    let outside = dir.path().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    let victim_abs = outside.join("victim-abs.safetensors");
    let victim_rel = outside.join("victim-rel.safetensors");
    let victim_link = outside.join("victim-link.safetensors");
    std::fs::write(&victim_abs, b"keep me").unwrap();
    std::fs::write(&victim_rel, b"keep me").unwrap();
    std::fs::write(&victim_link, b"keep me").unwrap();
    // A plain relative path, through a symbolic link that leads outside.
    std::os::unix::fs::symlink(&outside, run.join("elsewhere")).unwrap();
    {
        let conn = rusqlite::Connection::open(run.join("replay.sqlite")).unwrap();
        // Three versions that are not the champion (a crafted champion's path is refused at
        // start, which is another matter): three decisions made four models.
        let old: Vec<i64> = conn
            .prepare("SELECT version FROM models WHERE status != 'champion' ORDER BY version")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert!(old.len() >= 3, "{old:?}");
        for (version, path) in [
            (old[0], victim_abs.to_str().unwrap()),
            (old[1], "../outside/victim-rel.safetensors"),
            (old[2], "elsewhere/victim-link.safetensors"),
        ] {
            conn.execute(
                "UPDATE models SET checkpoint_path = ?1 WHERE version = ?2",
                rusqlite::params![path, version],
            )
            .unwrap();
        }
    }
    // A restart prunes again from the oldest version up.
    let daemon = start(cfg, &run);
    wait(&daemon, "more gate decisions", |s| {
        s.promoted + s.rejected >= 2
    });
    daemon.shutdown().unwrap();
    assert!(
        victim_abs.exists(),
        "pruning deleted a file named by an absolute path"
    );
    assert!(
        victim_rel.exists(),
        "pruning deleted a file named by a `..` path"
    );
    assert!(
        victim_link.exists(),
        "pruning deleted a file through a symbolic link"
    );
}

// Item 10: after a power loss took the champion's files with it, the run still resumes, from
// the newest model whose checkpoint matches the registry.
#[test]
fn a_run_resumes_when_the_champions_files_are_lost() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let mut cfg = small_daemon("cartpole");
    cfg.daemon.candidate_every = 100;
    let daemon = start(cfg.clone(), &run);
    let s = wait(&daemon, "a promotion", |s| s.promoted >= 1);
    daemon.shutdown().unwrap();
    let lost = s.champion.version;
    let champion_file = run.join(&s.champion.checkpoint);
    std::fs::remove_file(&champion_file).unwrap();
    let daemon = start(cfg, &run);
    let s = wait(&daemon, "acting again", |s| s.acting && s.steps > 0);
    assert_ne!(
        s.champion.version, lost,
        "resumed from a champion without files"
    );
    daemon.shutdown().unwrap();
    let store = ReplayStore::open_read_only(run.join("replay.sqlite")).unwrap();
    let notes = store.reflections(Some("recovery"), 10).unwrap();
    assert!(
        notes
            .iter()
            .any(|r| r.sentence.contains(&format!("v{lost}"))),
        "{notes:?}"
    );
}

/// Lines in a file (0 if it does not exist).
fn lines(p: &Path) -> usize {
    std::fs::read_to_string(p).map_or(0, |t| t.lines().count())
}

// Item 11: a run directory from someone else runs no command without consent.
#[test]
fn stored_commands_run_only_with_consent() {
    if !common::python_with("stored_commands_run_only_with_consent", "json") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("ran");
    let run = dir.path().join("run");
    // Every start of this world appends a line to `marker`.
    let env = format!(
        "exec:sh -c 'echo ran >> {}; exec python3 {}'",
        marker.display(),
        common::walker_example()
    );
    let out = run_with_deadline(
        bin()
            .args(["train", "--env", &env, "--steps", "300", "--json"])
            .arg("--run-dir")
            .arg(&run)
            .args([
                "--set",
                "run.eval_episodes=1",
                "--set",
                "dqn.learning_starts=100",
            ]),
        Duration::from_secs(120),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let starts = lines(&marker);
    assert!(starts >= 1);
    let refused = |args: &[&str]| {
        let out = run_with_deadline(bin().args(args), Duration::from_secs(60));
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(
            err.contains("--allow-exec") && err.contains("echo ran"),
            "{args:?}: {err}"
        );
        assert_eq!(lines(&marker), starts, "{args:?} ran the stored command");
    };
    let r = run.to_str().unwrap();
    refused(&["train", "--resume", r, "--steps", "600"]);
    refused(&["eval", "--checkpoint", r, "--episodes", "1"]);
    // Consent: the flag, or naming the command again.
    let ok = |args: &[&str]| {
        let out = run_with_deadline(bin().args(args), Duration::from_secs(120));
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    ok(&["eval", "--checkpoint", r, "--episodes", "1", "--allow-exec"]);
    ok(&[
        "train", "--resume", r, "--steps", "600", "--env", &env, "--json",
    ]);
    assert!(lines(&marker) > starts);

    // The daemon: a saved daemon.toml with an exec: world.
    let drun = dir.path().join("daemon");
    let cfg = small_daemon(&env);
    start(cfg, &drun).shutdown().unwrap();
    let starts = lines(&marker);
    let out = run_with_deadline(
        bin().args(["daemon", "--no-http", "--run-dir"]).arg(&drun),
        Duration::from_secs(60),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("--allow-exec"), "{err}");
    assert_eq!(lines(&marker), starts, "the daemon ran the stored command");
    let out = run_with_deadline(
        bin()
            .args([
                "daemon",
                "--no-http",
                "--allow-exec",
                "--max-steps",
                "50",
                "--run-dir",
            ])
            .arg(&drun),
        Duration::from_secs(120),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(lines(&marker) > starts);
}

/// Resident memory of a process in MiB, from /proc.
fn rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

// The soak test: the real binary against a peer that injects every fault of envs/tests at
// random, for a bounded time. It must be alive at the end, its memory bounded, and every
// committed episode whole.
#[test]
fn soak_the_daemon_against_every_fault_at_random() {
    if !common::python_with("soak_the_daemon_against_every_fault_at_random", "json") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let run: PathBuf = dir.path().join("run");
    let env = peer("--fault random --seed 7 --prob 0.005 --hang-s 12");
    let mut child = bin()
        .args([
            "daemon",
            "--env",
            &env,
            "--http",
            "127.0.0.1:0",
            "--run-dir",
        ])
        .arg(&run)
        .args([
            "--set",
            "dqn.learning_starts=200",
            "--set",
            "daemon.candidate_every=300",
            "--set",
            "gate.episodes=2",
            "--set",
            "daemon.fault_backoff_max_s=0.2",
            "--set",
            "reflection.every_s=2",
            "--set",
            "replay.max_episode_steps=300",
        ])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("daemon.log")).unwrap())
        .spawn()
        .unwrap();
    let log = || {
        let text = std::fs::read_to_string(dir.path().join("daemon.log")).unwrap_or_default();
        let lines: Vec<&str> = text
            .lines()
            .filter(|l| !l.contains("http request"))
            .collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    };
    let soak = Duration::from_secs(45);
    let t0 = Instant::now();
    let mut peak = 0f64;
    while t0.elapsed() < soak {
        assert!(
            child.try_wait().unwrap().is_none(),
            "the daemon exited during the soak:\n{}",
            log()
        );
        peak = peak.max(rss_mib(child.id()));
        std::thread::sleep(Duration::from_millis(200));
    }
    let addr = std::fs::read_to_string(run.join("http.addr")).unwrap();
    let (code, body) = common::http_get(addr.trim(), "/status", None).unwrap();
    assert_eq!(code, 200, "{body}");
    let status: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(
        status["faults"]["total"].as_u64().unwrap() > 0,
        "{status:#}"
    );
    assert!(status["steps"].as_u64().unwrap() > 500, "{status:#}");
    // SIGTERM: a clean stop.
    // SAFETY: kill(2) on our own child's pid; it touches no memory of ours.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let st = child.wait().unwrap();
    assert!(st.success(), "{st}:\n{}", log());
    assert!(peak < 400.0, "peak RSS {peak:.0} MiB");
    let episodes = assert_episodes_whole(&run.join("replay.sqlite"));
    assert!(episodes.len() > 10);
}

// Item 5: an outside process holding the replay file's lock past the busy timeout stalls the
// writer; the daemon reports it, keeps everything it acknowledged, and goes on when the lock
// is released.
#[test]
fn a_locked_replay_file_stalls_the_writer_and_the_daemon_rides_it_out() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let daemon = start(small_daemon("cartpole"), &run);
    wait(&daemon, "some steps", |s| s.replay.episodes > 5);
    // Like `sqlite3 replay.sqlite` running `BEGIN EXCLUSIVE;` and walking away for a while.
    let conn = rusqlite::Connection::open(run.join("replay.sqlite")).unwrap();
    conn.execute_batch("BEGIN EXCLUSIVE").unwrap();
    let s = wait(&daemon, "a stalled writer", |s| {
        s.replay.writer.stalled.is_some()
    });
    assert_eq!(s.replay.writer.stalled.as_deref(), Some("busy"), "{s:#?}");
    assert!(
        s.unhealthy
            .as_deref()
            .unwrap_or("")
            .contains("replay writer"),
        "{s:#?}"
    );
    let stalled_at = s.steps;
    conn.execute_batch("COMMIT").unwrap();
    drop(conn);
    let s = wait(&daemon, "commits again", |s| {
        s.replay.writer.stalled.is_none() && s.steps > stalled_at + 500 && s.unhealthy.is_none()
    });
    assert!(s.replay.writer.retries > 0);
    assert_eq!(s.replay.writer.lost_episodes, 0);
    let report = daemon.shutdown().unwrap();
    let steps = report.status.steps;
    // Every step acknowledged before, during and after the stall is in the file.
    let store = ReplayStore::open_read_only(run.join("replay.sqlite")).unwrap();
    let stored = store.summary().unwrap().runs[0].transitions_total as u64;
    assert_eq!(stored, steps, "steps taken {steps}, stored {stored}");
    drop(store);
    assert_episodes_whole(&run.join("replay.sqlite"));
}

/// A protocol peer in plain Python declaring `obs_space` and `act_space` (JSON), whose
/// episodes end after 5 steps.
fn declaring_peer(dir: &Path, name: &str, obs_space: &str, act_space: &str) -> String {
    let script = dir.join(format!("{name}.py"));
    std::fs::write(
        &script,
        format!(
            r#"import json, sys
t = 0
for line in sys.stdin:
    m = json.loads(line)
    if m["op"] == "hello":
        out = {{"type": "hello", "protocol": 1, "observation_space": {obs_space},
               "action_space": {act_space}}}
    elif m["op"] == "reset":
        t = 0
        out = {{"type": "reset", "obs": [0.0, 0.0], "info": {{}}}}
    elif m["op"] == "step":
        t += 1
        out = {{"type": "step", "obs": [0.0, 0.0], "reward": 1.0, "terminated": t >= 5,
               "truncated": False, "info": {{}}}}
    else:
        out = {{"type": "closed"}}
    sys.stdout.write(json.dumps(out) + "\n")
    sys.stdout.flush()
    if out["type"] == "closed":
        break
"#
        ),
    )
    .unwrap();
    format!("exec:python3 {}", script.display())
}

// Item 7: sizes a peer declares are bounded, and bounded actions are sampled without overflow.
#[test]
fn sizes_declared_by_a_peer_are_bounded() {
    if !common::python_with("sizes_declared_by_a_peer_are_bounded", "json") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let obs = r#"{"type": "Box", "low": [-1, -1], "high": [1, 1], "shape": [2]}"#;
    // 2^40 actions once aborted `train` (exit 134) sizing the Q-head; a Box of 10^7 values
    // would size every buffer from it.
    for (name, obs_space, act_space) in [
        (
            "huge_discrete",
            obs,
            r#"{"type": "Discrete", "n": 1099511627776}"#,
        ),
        (
            "huge_box",
            r#"{"type": "Box", "low": -1, "high": 1, "shape": [10000000]}"#,
            r#"{"type": "Discrete", "n": 2}"#,
        ),
    ] {
        let env = declaring_peer(dir.path(), name, obs_space, act_space);
        let run = dir.path().join(name);
        let out = run_with_deadline(
            bin()
                .args(["train", "--env", &env, "--steps", "100", "--run-dir"])
                .arg(&run),
            Duration::from_secs(60),
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{name}: {err}");
        assert!(err.contains("limit"), "{name}: {err}");
        assert!(!run.join("replay.sqlite").exists(), "{name}");
    }
    // Bounds of ±3e38: `rollout` once panicked (exit 101) sampling them.
    let env = declaring_peer(
        dir.path(),
        "wide_bounds",
        obs,
        r#"{"type": "Box", "low": [-3e38, -3e38], "high": [3e38, 3e38], "shape": [2]}"#,
    );
    let out = run_with_deadline(
        bin().args(["rollout", "--env", &env, "--episodes", "3", "--json"]),
        Duration::from_secs(60),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["returns"].as_array().unwrap().len(), 3, "{r}");
}
