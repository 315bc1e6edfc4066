//! The daemon with real parts: the real binary as a child process, signals (SIGTERM, SIGINT,
//! SIGKILL), HTTP on 127.0.0.1, a real SQLite replay file, and a CartPole whose physics change
//! mid-run on command.

mod common;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use autodidact::daemon::{Daemon, DaemonConfig, DaemonOptions, Status};
use autodidact_core::{Module, Network, load_checkpoint, save_checkpoint};
use autodidact_envs::CartPoleControl;
use autodidact_replay::{ModelStatus, ReplayStore};

// The drift-recovery scenario, shared with the daemon bench that measures it.
#[path = "../benches/common/drift.rs"]
mod drift;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_autodidact"))
}

/// A daemon child process over a run directory.
struct DaemonProc {
    child: Child,
    run_dir: PathBuf,
    addr: Option<String>,
}

impl DaemonProc {
    fn start(run_dir: &Path, args: &[&str]) -> DaemonProc {
        // A killed daemon leaves its address file behind: wait for this one's.
        let _ = std::fs::remove_file(run_dir.join("http.addr"));
        let child = bin()
            .args(["daemon", "--run-dir"])
            .arg(run_dir)
            .args(["--http", "127.0.0.1:0"])
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        DaemonProc {
            child,
            run_dir: run_dir.to_path_buf(),
            addr: None,
        }
    }

    /// The HTTP address once the daemon is up.
    fn addr(&mut self) -> String {
        if let Some(a) = &self.addr {
            return a.clone();
        }
        let t0 = Instant::now();
        loop {
            if let Ok(a) = std::fs::read_to_string(self.run_dir.join("http.addr")) {
                if a.ends_with('\n') {
                    self.addr = Some(a.trim().to_string());
                    return a.trim().to_string();
                }
            }
            if let Ok(Some(st)) = self.child.try_wait() {
                panic!("the daemon exited early ({st}): {}", self.stderr());
            }
            assert!(t0.elapsed() < Duration::from_secs(120), "no http.addr");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn status(&mut self) -> serde_json::Value {
        let addr = self.addr();
        let (code, body) = http_get(&addr, "/status", None).unwrap();
        assert_eq!(code, 200, "{body}");
        serde_json::from_str(&body).unwrap()
    }

    /// Polls `/status` until `pred` holds.
    fn wait_for(
        &mut self,
        what: &str,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let t0 = Instant::now();
        loop {
            let s = self.status();
            if pred(&s) {
                return s;
            }
            if t0.elapsed() > Duration::from_secs(240) {
                let _ = self.child.kill();
                panic!(
                    "timed out waiting for {what}; last status: {s:#}\n{}",
                    self.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child's pid; no memory is touched.
        let rc = unsafe { libc::kill(self.child.id() as i32, sig) };
        assert_eq!(rc, 0);
    }

    fn stderr(&mut self) -> String {
        let mut s = String::new();
        if let Some(mut e) = self.child.stderr.take() {
            let _ = e.read_to_string(&mut s);
        }
        s
    }

    /// Waits for the exit; returns the code and the seconds it took.
    fn wait_exit(&mut self, limit: Duration) -> (Option<i32>, f64) {
        let t0 = Instant::now();
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return (st.code(), t0.elapsed().as_secs_f64());
            }
            if t0.elapsed() > limit {
                let _ = self.child.kill();
                panic!(
                    "the daemon did not exit within {limit:?}: {}",
                    self.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for DaemonProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Settings that make every part of the daemon show up within seconds.
const FAST: &[&str] = &[
    "--env",
    "cartpole",
    "--set",
    "reflection.every_s=1",
    "--set",
    "daemon.candidate_every=150",
    "--set",
    "gate.episodes=5",
    "--set",
    "dqn.learning_starts=500",
    "--set",
    "daemon.exploration_steps=3000",
];

fn kinds(s: &serde_json::Value) -> Vec<String> {
    s["reflections_by_kind"]
        .as_object()
        .map(|o| o.keys().cloned().collect())
        .unwrap_or_default()
}

#[test]
fn sigterm_stops_within_the_bound_and_a_restart_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let mut d = DaemonProc::start(&run, FAST);
    let addr = d.addr();
    let (code, body) = http_get(&addr, "/healthz", None).unwrap();
    assert_eq!((code, body.as_str()), (200, "ok\n"));
    let s = d.wait_for(
        "a gate decision, a reanalyse, a plasticity and a lessons pass",
        |s| {
            let k = kinds(s);
            ["gate", "reanalyse", "plasticity", "lessons"]
                .iter()
                .all(|w| k.iter().any(|x| x == w))
        },
    );
    // Plasticity (issue 14): measured with every candidate, shown in /status and /metrics.
    let p = &s["learner"]["plasticity"];
    let dormant = p["dormant_ratio"].as_f64().unwrap_or(f64::NAN);
    assert!((0.0..=1.0).contains(&dormant), "{s:#}");
    assert!(p["effective_rank"].as_u64().unwrap() >= 1, "{s:#}");
    assert!(p["weight_distance"].as_f64().unwrap() > 0.0, "{s:#}");
    assert_eq!(s["acting"], true);
    assert!(s["replay"]["transitions"].as_i64().unwrap() > 0, "{s:#}");
    let (code, metrics) = http_get(&addr, "/metrics", None).unwrap();
    assert_eq!(code, 200);
    for name in [
        "autodidact_env_steps_total ",
        "autodidact_champion_version ",
        "autodidact_gate_decisions_total{verdict=\"promoted\"} ",
        "autodidact_reflections_total{kind=\"lessons\"} ",
        "autodidact_dormant_unit_ratio ",
        "autodidact_effective_rank ",
        "autodidact_weight_distance_from_init ",
        "# TYPE autodidact_env_steps_total counter",
    ] {
        assert!(metrics.contains(name), "{name} missing from:\n{metrics}");
    }
    let (code, _) = http_get(&addr, "/nope", None).unwrap();
    assert_eq!(code, 404);

    d.signal(libc::SIGTERM);
    // The configured bound (daemon.shutdown_timeout_s = 15 s) plus process exit.
    let (code, secs) = d.wait_exit(Duration::from_secs(60));
    let err = d.stderr();
    assert_eq!(code, Some(0), "{err}");
    assert!(secs < 20.0, "SIGTERM took {secs:.1} s: {err}");
    assert!(err.contains("stopped after"), "{err}");
    assert!(!run.join("http.addr").exists());

    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("state.json")).unwrap()).unwrap();
    let steps_before = state["steps"].as_u64().unwrap();
    assert_eq!(state["learner_checkpoint"], "checkpoints/learner");
    {
        let store = ReplayStore::open_read_only(run.join("replay.sqlite")).unwrap();
        assert!(store.integrity_check().unwrap().is_empty());
        let summary = store.summary().unwrap();
        assert_eq!(summary.runs[0].transitions_total as u64, steps_before);
        for kind in ["gate", "reanalyse", "plasticity", "lessons"] {
            let r = store.reflections(Some(kind), 1).unwrap();
            assert!(!r.is_empty(), "no {kind} reflection");
            assert!(r[0].sentence.len() > 20, "{:?}", r[0]);
        }
        let gate = &store.reflections(Some("gate"), 1).unwrap()[0];
        assert!(
            gate.sentence.contains("promoted") || gate.sentence.contains("rejected"),
            "{}",
            gate.sentence
        );
        let lessons = &store.reflections(Some("lessons"), 1).unwrap()[0];
        let regions = &lessons.data["experts_by_region"];
        assert_eq!(
            regions["regions"].as_array().unwrap().len(),
            regions["usage"].as_array().unwrap().len()
        );
    }

    // The same run directory resumes (no --env needed), and SIGINT stops it too.
    let mut d = DaemonProc::start(&run, &[]);
    let s = d.wait_for("steps beyond the first session", |s| {
        s["steps"].as_u64().unwrap() > steps_before + 500
    });
    assert_eq!(s["envs"][0], "cartpole");
    d.signal(libc::SIGINT);
    let (code, _) = d.wait_exit(Duration::from_secs(60));
    assert_eq!(code, Some(0), "{}", d.stderr());
}

#[test]
fn kill_9_at_random_moments_loses_no_committed_episode() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let mut rng_state = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = || {
        rng_state ^= rng_state << 13;
        rng_state ^= rng_state >> 7;
        rng_state ^= rng_state << 17;
        rng_state
    };
    let mut committed = 0u64;
    let mut killed = 0;
    for round in 0..10 {
        let mut d = DaemonProc::start(&run, if round == 0 { FAST } else { &[] });
        if round % 3 == 2 {
            // Sometimes before the HTTP endpoint is even up.
            std::thread::sleep(Duration::from_millis(next() % 400));
        } else {
            let s = d.status();
            // A restart counts on from every committed step.
            assert!(s["steps"].as_u64().unwrap() >= committed, "{s:#}");
            std::thread::sleep(Duration::from_millis(200 + next() % 2_500));
        }
        d.signal(libc::SIGKILL);
        let _ = d.wait_exit(Duration::from_secs(10));
        killed += 1;
        // Whatever the moment, the file is whole, and nothing committed is ever lost.
        if run.join("replay.sqlite").exists() {
            let store = ReplayStore::open_read_only(run.join("replay.sqlite")).unwrap();
            assert!(store.integrity_check().unwrap().is_empty(), "round {round}");
            let now = store
                .summary()
                .unwrap()
                .runs
                .first()
                .map_or(0, |r| r.transitions_total as u64);
            assert!(now >= committed, "round {round}: {now} < {committed}");
            committed = now;
        }
    }
    assert_eq!(killed, 10);

    // A last, graceful session: learning goes on after all that.
    let mut d = DaemonProc::start(&run, &[]);
    let s0 = d.status();
    let s = d.wait_for("more steps and updates", |s| {
        s["steps"].as_u64().unwrap() > s0["steps"].as_u64().unwrap() + 2_000
            && s["updates"].as_u64().unwrap() > s0["updates"].as_u64().unwrap()
    });
    d.signal(libc::SIGTERM);
    let (code, _) = d.wait_exit(Duration::from_secs(60));
    assert_eq!(code, Some(0), "{}", d.stderr());

    let store = ReplayStore::open_read_only(run.join("replay.sqlite")).unwrap();
    assert!(store.integrity_check().unwrap().is_empty());
    // Every episode whole: its row count equals its length, steps 0..len, one end marker.
    let db = rusqlite::Connection::open_with_flags(
        run.join("replay.sqlite"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    let broken: i64 = db
        .query_row(
            "SELECT count(*) FROM episodes e WHERE e.length != (SELECT count(*) FROM transitions \
             t WHERE t.episode_id = e.id) OR e.length != (SELECT coalesce(max(step), -1) + 1 \
             FROM transitions t WHERE t.episode_id = e.id) OR (e.terminated + e.truncated) != 1",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(broken, 0, "episodes that are not whole");
    let summary = store.summary().unwrap();
    assert_eq!(summary.runs.len(), 1);
    assert!(summary.runs[0].transitions_total as u64 >= s["steps"].as_u64().unwrap());
    // The registry: one champion, every checkpoint present with its checksum, parents
    // registered before their children, nothing left undecided (a candidate newer than the
    // champion; older ones are demoted champions).
    let models = store.models().unwrap();
    assert!(models.len() >= 2, "no candidate was ever cut: {models:?}");
    let champions: Vec<_> = models
        .iter()
        .filter(|m| m.status == ModelStatus::Champion)
        .collect();
    assert_eq!(champions.len(), 1);
    assert_eq!(summary.champion, Some(champions[0].version));
    // Files are kept for the champion and the newest `daemon.keep_checkpoints` (20) versions;
    // older ones may be pruned, and any file still there matches its checksum.
    let newest = models.iter().map(|m| m.version).max().unwrap();
    for m in &models {
        if m.status == ModelStatus::Candidate {
            assert!(m.version < champions[0].version, "v{} undecided", m.version);
        }
        let must_exist = m.status == ModelStatus::Champion || m.version > newest - 20;
        match std::fs::read(run.join(&m.checkpoint_path)) {
            Ok(bytes) => assert_eq!(
                m.checksum,
                format!("crc32:{:08x}", crc32fast::hash(&bytes)),
                "v{}",
                m.version
            ),
            Err(e) => assert!(!must_exist, "v{} {}: {e}", m.version, m.checkpoint_path),
        }
        if let Some(p) = m.parent {
            assert!(p < m.version && models.iter().any(|x| x.version == p));
        }
    }
    // The state file names the champion.
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("state.json")).unwrap()).unwrap();
    assert_eq!(state["model_version"], champions[0].version);
}

#[test]
fn bad_config_and_unreachable_adapters_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let check = |args: &[&str], needle: &str| {
        let out = bin().arg("daemon").args(args).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(
            err.contains(needle),
            "{args:?}: expected `{needle}` in:\n{err}"
        );
        assert!(!err.contains("panicked"), "{args:?} panicked:\n{err}");
    };
    let rd = |n: &str| dir.path().join(n).display().to_string();
    check(&["--run-dir", &rd("a")], "--env");
    check(
        &["--env", "tcp:127.0.0.1:1", "--run-dir", &rd("b")],
        "cannot start environment `tcp:127.0.0.1:1`",
    );
    check(
        &["--env", "exec:/no/such/program", "--run-dir", &rd("c")],
        "cannot start environment",
    );
    check(
        &["--env", "nosuchworld", "--run-dir", &rd("d")],
        "nosuchworld",
    );
    check(
        &[
            "--env",
            "cartpole",
            "--run-dir",
            &rd("e"),
            "--set",
            "daemon.actors=0",
        ],
        "daemon.actors",
    );
    check(
        &[
            "--env",
            "cartpole",
            "--run-dir",
            &rd("f"),
            "--set",
            "gate.episods=3",
        ],
        "episods",
    );
    check(
        &[
            "--env",
            "cartpole",
            "--run-dir",
            &rd("g"),
            "--http",
            "0.0.0.0:0",
        ],
        "http.bind",
    );
    // Pendulum's Box is SAC's; DQN, asked for by name, refuses it saying what it needs.
    check(
        &[
            "--env",
            "pendulum",
            "--run-dir",
            &rd("h"),
            "--set",
            "learner.kind=dqn",
        ],
        "discrete action space",
    );
    let cfg = dir.path().join("bad.toml");
    std::fs::write(&cfg, "[daemon]\nactors = \"two\"\n").unwrap();
    check(
        &[
            "--env",
            "cartpole",
            "--run-dir",
            &rd("i"),
            "--config",
            cfg.to_str().unwrap(),
        ],
        "actors",
    );
    // An address in use.
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy_addr = busy.local_addr().unwrap().to_string();
    check(
        &[
            "--env",
            "cartpole",
            "--run-dir",
            &rd("j"),
            "--http",
            &busy_addr,
        ],
        "http.bind",
    );
    // Nothing was left behind that would stop a correct start.
    assert!(!dir.path().join("b").join("replay.sqlite").exists());
}

/// Small, fast settings for in-process daemons: the drift scenario's.
fn fast_config() -> DaemonConfig {
    drift::config(0)
}

fn wait(daemon: &Daemon, what: &str, limit: Duration, pred: impl Fn(&Status) -> bool) -> Status {
    let t0 = Instant::now();
    let mut last_print = Instant::now();
    loop {
        let s = daemon.status().unwrap();
        if std::env::var("DAEMON_TEST_TRACE").is_ok()
            && last_print.elapsed() > Duration::from_secs(1)
        {
            last_print = Instant::now();
            eprintln!(
                "[{what}] steps {} ret {:?} eps {:.2} champ v{} prom {} rej {} drifts {} last {:?}",
                s.steps,
                s.recent_return,
                s.epsilon,
                s.champion.version,
                s.promoted,
                s.rejected,
                s.drifts,
                s.last_reflections
                    .last()
                    .map(|r| r.sentence.chars().take(90).collect::<String>())
            );
        }
        assert!(daemon.failure().is_none(), "{:?}", daemon.failure());
        if pred(&s) {
            return s;
        }
        assert!(t0.elapsed() < limit, "timed out waiting for {what}: {s:#?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The stated recovery budget, in environment steps after the change, for the scenario of
/// `benches/common/drift.rs`, which `cargo bench -p autodidact --bench daemon` measures with the
/// same config, world, change and judgement (BENCHMARKS.md, "daemon"). Measured 2026-12-03: 15
/// bench seeds recovered after 46 k–123 k steps (median 80 k), and four runs of this test after
/// 109 k–119 k. The budget is twice the slowest of them, so a healthy daemon passes with room
/// for this machine's scatter, while one that does not relearn never gets its judged episodes
/// back to 90 % of the level and fails here (checked with a world it cannot learn: the motor's
/// force cut to 1 % after the change). At 3–6 k steps/s a failing run ends within a minute or two.
const RECOVERY_STEPS: u64 = 250_000;

/// Recovery is judged on episodes begun after the change only (by the start step `/status`
/// gives each return): an episode in progress at the change still carries the old world's
/// return, however high the others are.
#[test]
fn recovery_is_judged_on_episodes_begun_after_the_change_only() {
    let change = drift::Change {
        steps: 50_000,
        level: 500.0,
    };
    let n = drift::JUDGED_EPISODES;
    let high = vec![500.0; n];
    // Episodes begun one step before the change (they span it) are never judged.
    let before: Vec<u64> = (0..n as u64).map(|i| 49_999 - i).collect();
    assert_eq!(change.judged_mean_of(&before, &high), None);
    let after: Vec<u64> = (0..n as u64).map(|i| 50_000 + 500 * i).collect();
    assert_eq!(change.judged_mean_of(&after, &high), Some(500.0));
    // One spanning episode among the last n leaves too few to judge.
    let mut mixed_starts = after.clone();
    mixed_starts[0] = 49_990;
    assert_eq!(change.judged_mean_of(&mixed_starts, &high), None);
    // More returns than n: the last n begun after the change count, the older ones not.
    let mut starts = vec![40_000; 5];
    starts.extend(&after);
    let mut returns = vec![0.0; 5];
    returns.extend(&high);
    assert_eq!(change.judged_mean_of(&starts, &returns), Some(500.0));
    // A mean below 90 % of the level is not a recovery.
    let mut low = high.clone();
    low[..3].fill(0.0);
    let m = change.judged_mean_of(&after, &low).unwrap();
    assert!(m < drift::RECOVERED_FRACTION * change.level, "{m}");
}

#[test]
fn drift_is_detected_the_return_recovers_the_gate_rejects_broken_candidates_and_the_old_world_is_recalled()
 {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let control = CartPoleControl::default();
    let daemon = Daemon::start(DaemonOptions {
        config: drift::config(0),
        run_dir: run.clone(),
        env_factory: Some(drift::world(control.clone())),
    })
    .unwrap();

    // 1. Learn the first world well and hold it (the return detector needs its warm-up).
    let limit = Duration::from_secs(400);
    let before = wait(&daemon, "a good champion", limit, drift::learned);
    // Held long enough for the return detector's windows to fill at this level.
    let before = wait(&daemon, "the level held", limit, |s| {
        drift::held(s, &before)
    });
    let level = before.recent_return.unwrap();
    // A stationary world raises at most one drift alarm per 100 k steps (issue 14): learning
    // it, the agent's returns rise and the states it visits change, neither of which is a
    // change of the world.
    assert!(
        before.drifts as f64 <= before.steps as f64 / 100_000.0,
        "{} drift alarms in {} steps of an unchanged world: {:#?}",
        before.drifts,
        before.steps,
        before.last_reflections
    );

    // 2. The gate rejects a broken candidate outright, and a poor one on the evidence.
    let champion_file = run.join(&before.champion.checkpoint);
    let mut broken = load_checkpoint(&champion_file).unwrap().network;
    let mut poisoned = false;
    broken.visit_params_mut(&mut |p| {
        if !poisoned {
            p.value.data_mut()[0] = f32::NAN;
            poisoned = true;
        }
    });
    let broken_file = dir.path().join("broken.safetensors");
    save_checkpoint(&broken_file, &broken, None, &Default::default()).unwrap();
    let v_broken = daemon.submit_candidate(&broken_file, 0.1).unwrap();
    let untrained = Network::new(broken.config().clone(), 7).unwrap();
    let untrained_file = dir.path().join("untrained.safetensors");
    save_checkpoint(&untrained_file, &untrained, None, &Default::default()).unwrap();
    let v_poor = daemon.submit_candidate(&untrained_file, 0.1).unwrap();
    let s = wait(&daemon, "both verdicts", limit, |s| {
        s.last_reflections
            .iter()
            .any(|r| r.model_version == Some(v_poor))
    });
    let verdict = |v: i64| {
        s.last_reflections
            .iter()
            .find(|r| r.kind == "gate" && r.model_version == Some(v))
            .map(|r| r.sentence.clone())
            .unwrap_or_default()
    };
    assert!(
        verdict(v_broken).contains("rejected"),
        "{}",
        verdict(v_broken)
    );
    assert!(verdict(v_broken).contains("NaN"), "{}", verdict(v_broken));
    assert!(verdict(v_poor).contains("rejected"), "{}", verdict(v_poor));
    assert!(
        verdict(v_poor).contains("over 10 episodes"),
        "{}",
        verdict(v_poor)
    );
    assert_ne!(s.champion.version, v_broken);
    assert_ne!(s.champion.version, v_poor);

    // 3. The world changes.
    let change = drift::Change::apply(&daemon, &control, level);
    let changed_at = change.steps;
    let drift = wait(&daemon, "a drift alarm", limit, |s| {
        drift::alarm_after(s, changed_at).is_some()
    });
    let detected_after = drift::alarm_after(&drift, changed_at).unwrap() - changed_at;
    assert!(
        drift.epsilon > 0.1,
        "exploration was not raised: {}",
        drift.epsilon
    );

    // 4. It recovers to 90 % of the level before the change within the stated budget, judged
    //    on episodes begun after the change only.
    let recovered = wait(&daemon, "recovery", Duration::from_secs(600), |s| {
        assert!(
            change.steps_since(s) < RECOVERY_STEPS,
            "no recovery within {RECOVERY_STEPS} steps of the change (mean of the judged \
             episodes {:?} against {:.1}): {s:#?}",
            change.judged_mean(s),
            drift::RECOVERED_FRACTION * level
        );
        change.recovered(s)
    });
    println!(
        "level before {level:.1}; drift detected {detected_after} steps after the change; \
         recovered to {:.1} after {} steps",
        change.judged_mean(&recovered).unwrap_or(f64::NAN),
        change.steps_since(&recovered)
    );

    // 5. The first world comes back. Its champion was kept at the change, and the gate
    //    recalls it: it plays at its old level at once, where the champion of the reversed
    //    world fails, so the daemon does not learn that world again.
    let held = wait(&daemon, "the new level held", limit, |s| {
        drift::held(s, &recovered)
    });
    let back_at = held.steps;
    control.clear();
    let recall = |s: &Status| {
        s.last_reflections
            .iter()
            .find(|r| r.kind == "recall" && r.steps > back_at)
            .cloned()
    };
    let s = wait(&daemon, "a recall", limit, |s| recall(s).is_some());
    let r = recall(&s).unwrap();
    assert!(
        r.sentence.contains("recalled world-0"),
        "the first world's champion was not recalled: {}",
        r.sentence
    );
    // Noticing the change takes a few short episodes and the trial three greedy ones; learning
    // the world anew took tens of thousands of steps.
    assert!(
        r.steps - back_at < 5_000,
        "recalled only {} steps after the world came back",
        r.steps - back_at
    );
    assert_eq!(s.champion.version, r.model_version.unwrap());
    let back = drift::Change {
        steps: back_at,
        level,
    };
    let recovered_again = wait(&daemon, "recovery by recall", limit, |s| back.recovered(s));
    println!(
        "the first world came back: recalled {} steps later, recovered after {} steps",
        r.steps - back_at,
        back.steps_since(&recovered_again)
    );

    let report = daemon.shutdown().unwrap();
    assert!(report.status.drifts >= 2);

    let store = ReplayStore::open_read_only(run.join("replay.sqlite")).unwrap();
    let drifts = store.reflections(Some("drift"), 100).unwrap();
    assert!(drifts.iter().any(|r| r.data["signal"] == "returns"));
    let recalls = store.reflections(Some("recall"), 100).unwrap();
    assert!(recalls.iter().any(|r| r.data["outcome"] == "recalled"));
    // The recalled champion is a model version of its own, promoted (a later candidate may
    // have replaced it since), and its parent a champion of the reversed world.
    let v = r.model_version.unwrap();
    let gate = store.reflections(Some("gate"), 1_000).unwrap();
    assert!(
        gate.iter()
            .any(|g| g.model_version == Some(v) && g.sentence.contains("promoted")),
        "no promotion of the recalled v{v}"
    );
    let model = store.model(v).unwrap();
    assert!(
        model
            .parent
            .is_some_and(|p| p >= held.champion.version && p < v),
        "{:?}",
        model.parent
    );
    assert_eq!(model.metrics["recalled_from"], "world-0");
}

/// With `daemon.act_with = "learner"` the actors act with the learner's newest weights: their
/// steps are attributed to the version last cut from the learner, ahead of the champion while
/// the gate has not judged it yet.
#[test]
fn actors_can_act_with_the_learner() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = fast_config();
    cfg.daemon.envs = vec!["cartpole".into()];
    cfg.daemon.act_with = autodidact::daemon::config::ActWith::Learner;
    let daemon = Daemon::start(DaemonOptions {
        config: cfg,
        run_dir: dir.path().join("run"),
        env_factory: None,
    })
    .unwrap();
    let s = wait(
        &daemon,
        "a candidate acting",
        Duration::from_secs(300),
        |s| s.acting_with == "learner" && s.acting_version > s.champion.version,
    );
    assert!(s.acting_version <= s.latest_version, "{s:#?}");
    daemon.shutdown().unwrap();
}

#[test]
fn a_token_guards_status_and_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = fast_config();
    cfg.daemon.envs = vec!["cartpole".into()];
    cfg.http.enabled = true;
    cfg.http.bind = "127.0.0.1:0".into();
    cfg.http.token = "open-sesame".into();
    let daemon = Daemon::start(DaemonOptions {
        config: cfg,
        run_dir: dir.path().join("run"),
        env_factory: None,
    })
    .unwrap();
    let addr = daemon.http_addr().unwrap().to_string();
    assert_eq!(http_get(&addr, "/healthz", None).unwrap().0, 200);
    assert_eq!(http_get(&addr, "/status", None).unwrap().0, 401);
    assert_eq!(http_get(&addr, "/metrics", Some("wrong")).unwrap().0, 401);
    let (code, body) = http_get(&addr, "/status", Some("open-sesame")).unwrap();
    assert_eq!(code, 200, "{body}");
    let s: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(s["envs"][0], "cartpole");
    assert_eq!(
        http_get(&addr, "/metrics", Some("open-sesame")).unwrap().0,
        200
    );
    daemon.shutdown().unwrap();
    // The token is a secret: it is not written to the run directory.
    let saved = std::fs::read_to_string(dir.path().join("run/daemon.toml")).unwrap();
    assert!(!saved.contains("open-sesame"), "{saved}");
}

#[test]
fn learning_goes_on_without_reflection_passes() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = fast_config();
    cfg.daemon.envs = vec!["cartpole".into()];
    cfg.reflection.every_s = 0.0;
    let daemon = Daemon::start(DaemonOptions {
        config: cfg,
        run_dir: dir.path().join("run"),
        env_factory: None,
    })
    .unwrap();
    let s = wait(
        &daemon,
        "updates and a gate decision",
        Duration::from_secs(240),
        |s| s.updates > 500 && s.promoted + s.rejected >= 1,
    );
    assert!(!s.reflections_by_kind.contains_key("lessons"));
    daemon.shutdown().unwrap();
}

use common::{http_get, walker_example};

#[test]
fn actors_act_over_exec_and_tcp_adapters_at_once() {
    if !common::python_with("actors_act_over_exec_and_tcp_adapters_at_once", "json") {
        return;
    }
    struct Server(Child);
    impl Drop for Server {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut server = Server(
        Command::new("python3")
            .args([walker_example().as_str(), "--tcp", "0"])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(server.0.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    let addr = line.trim().strip_prefix("LISTENING ").unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = fast_config();
    cfg.daemon.envs = vec![
        format!("exec:python3 {}", walker_example()),
        format!("tcp:{addr}"),
    ];
    cfg.daemon.actors = 2;
    cfg.dqn.learning_starts = 200;
    cfg.daemon.candidate_every = 100;
    cfg.gate.episodes = 3;
    let daemon = Daemon::start(DaemonOptions {
        config: cfg,
        run_dir: dir.path().join("run"),
        env_factory: None,
    })
    .unwrap();
    let s = wait(
        &daemon,
        "steps from both adapters and a gate decision",
        Duration::from_secs(240),
        |s| s.steps >= 1_500 && s.reflections_by_kind.contains_key("gate"),
    );
    assert_eq!(s.actors, 2);
    daemon.shutdown().unwrap();
    let store = ReplayStore::open_read_only(dir.path().join("run/replay.sqlite")).unwrap();
    assert!(store.integrity_check().unwrap().is_empty());
    assert!(store.summary().unwrap().runs[0].episodes_total > 10);
}

#[test]
fn the_daemon_acts_in_gymnasium_through_the_bridge() {
    if !common::python_with(
        "the_daemon_acts_in_gymnasium_through_the_bridge",
        "gymnasium",
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = fast_config();
    cfg.daemon.envs = vec!["gym:CartPole-v1".into()];
    cfg.dqn.learning_starts = 300;
    cfg.daemon.candidate_every = 100;
    cfg.gate.episodes = 3;
    let daemon = Daemon::start(DaemonOptions {
        config: cfg,
        run_dir: dir.path().join("run"),
        env_factory: None,
    })
    .unwrap();
    wait(
        &daemon,
        "steps and a gate decision",
        Duration::from_secs(240),
        |s| s.steps >= 1_500 && s.reflections_by_kind.contains_key("gate"),
    );
    daemon.shutdown().unwrap();
}
