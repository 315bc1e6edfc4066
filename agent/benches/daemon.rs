//! The daemon over time: steady-state throughput with learning and reflection running, peak
//! memory over a long run, time from SIGKILL to acting again, and steps to recover after the
//! world changes. Writes `target/autodidact-bench/daemon.json`.
//!
//! `cargo bench -p autodidact --bench daemon [-- --seeds 5 --drift-only]` (about 20 minutes: the
//! long run is `AUTODIDACT_BENCH_DAEMON_SECS`, default 600 s). `--drift-only` runs only the drift
//! recovery and writes `daemon-drift.json`. There is no peer to measure in the same run: neither
//! Stable-Baselines3 nor Gymnasium has a daemon that gates its own updates.
//!
//! Drift recovery runs the scenario of the daemon's recovery test (`common/drift.rs`, included
//! by `tests/daemon.rs` too), so the test's step budget rests on these figures. A seed that does
//! not recover within [`RECOVERY_BUDGET`] steps counts as the budget and in `failed`.

mod common;
#[path = "common/drift.rs"]
mod drift;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use autodidact::daemon::config::ActWith;
use autodidact::daemon::{Daemon, DaemonOptions};
use autodidact_envs::CartPoleControl;

fn get(addr: &str, path: &str) -> Option<String> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(30))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut raw = String::new();
    s.read_to_string(&mut raw).ok()?;
    raw.split_once("\r\n\r\n").map(|x| x.1.to_string())
}

fn status(addr: &str) -> Option<serde_json::Value> {
    serde_json::from_str(&get(addr, "/status")?).ok()
}

fn spawn(run_dir: &Path, args: &[&str]) -> Child {
    let _ = std::fs::remove_file(run_dir.join("http.addr"));
    Command::new(env!("CARGO_BIN_EXE_autodidact"))
        .args(["daemon", "--run-dir"])
        .arg(run_dir)
        .args(["--http", "127.0.0.1:0"])
        .args(args)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("cannot start the daemon binary")
}

fn addr_of(run_dir: &Path) -> String {
    let t0 = Instant::now();
    loop {
        if let Ok(a) = std::fs::read_to_string(run_dir.join("http.addr")) {
            if a.ends_with('\n') {
                return a.trim().to_string();
            }
        }
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "the daemon did not come up"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn signal(child: &Child, sig: i32) {
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(child.id() as i32, sig) };
}

/// Steady state: steps/s after the first minute, and peak RSS over the whole run.
fn long_run(run_dir: &Path, secs: u64) -> (f64, f64, f64, f64) {
    let mut child = spawn(
        run_dir,
        &["--env", "cartpole", "--set", "reflection.every_s=30"],
    );
    let addr = addr_of(run_dir);
    let t0 = Instant::now();
    let warm = Duration::from_secs(secs.min(600) / 10);
    let mut mark: Option<(Instant, u64)> = None;
    let mut last = (Instant::now(), 0u64);
    let mut rss_after_warmup = 0.0;
    let mut peak = 0.0f64;
    let bar = indicatif::ProgressBar::new(secs);
    while t0.elapsed() < Duration::from_secs(secs) {
        std::thread::sleep(Duration::from_secs(5));
        let Some(s) = status(&addr) else { continue };
        let steps = s["steps"].as_u64().unwrap_or(0);
        peak = peak.max(s["peak_rss_mib"].as_f64().unwrap_or(0.0));
        if mark.is_none() && t0.elapsed() >= warm {
            mark = Some((Instant::now(), steps));
            rss_after_warmup = s["rss_mib"].as_f64().unwrap_or(0.0);
        }
        last = (Instant::now(), steps);
        bar.set_position(t0.elapsed().as_secs());
        bar.set_message(format!(
            "{steps} steps, return {:.0}, champion v{}, rss {:.0} MiB",
            s["recent_return"].as_f64().unwrap_or(f64::NAN),
            s["champion"]["version"],
            s["rss_mib"].as_f64().unwrap_or(0.0)
        ));
    }
    bar.finish_and_clear();
    let final_rss = status(&addr)
        .and_then(|s| s["rss_mib"].as_f64())
        .unwrap_or(0.0);
    let (m_t, m_steps) = mark.expect("the run was shorter than its warm-up");
    let steps_per_s = (last.1 - m_steps) as f64 / last.0.duration_since(m_t).as_secs_f64();
    let t_stop = Instant::now();
    signal(&child, libc::SIGTERM);
    let code = child.wait().expect("wait");
    let stop_s = t_stop.elapsed().as_secs_f64();
    assert!(code.success(), "the daemon failed to stop cleanly: {code}");
    println!(
        "  rss after warm-up {rss_after_warmup:.1} MiB, at the end {final_rss:.1} MiB, stop took \
         {stop_s:.2} s"
    );
    (steps_per_s, peak, final_rss - rss_after_warmup, stop_s)
}

/// Seconds from SIGKILL to the restarted daemon's first new step, `rounds` times.
fn sigkill_to_acting(run_dir: &Path, rounds: usize) -> Vec<f64> {
    let mut out = Vec::new();
    let mut child = spawn(run_dir, &[]);
    for _ in 0..rounds {
        let addr = addr_of(run_dir);
        // Acting, with learning going on.
        let s0 = loop {
            if let Some(s) = status(&addr) {
                if s["acting"] == true {
                    break s;
                }
            }
        };
        let start = s0["steps"].as_u64().unwrap_or(0);
        while status(&addr).and_then(|s| s["steps"].as_u64()).unwrap_or(0) < start + 1_000 {
            std::thread::sleep(Duration::from_millis(50));
        }
        std::thread::sleep(Duration::from_millis(500));
        let _ = std::fs::remove_file(run_dir.join("http.addr"));
        let t = Instant::now();
        signal(&child, libc::SIGKILL);
        let _ = child.wait();
        child = spawn(run_dir, &[]);
        let addr = addr_of(run_dir);
        let base = loop {
            if let Some(s) = status(&addr) {
                break s["steps"].as_u64().unwrap_or(0);
            }
        };
        loop {
            if let Some(s) = status(&addr) {
                if s["acting"] == true && s["steps"].as_u64().unwrap_or(0) > base {
                    break;
                }
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        out.push(t.elapsed().as_secs_f64());
    }
    signal(&child, libc::SIGTERM);
    let _ = child.wait();
    out
}

/// Recovery budget of the bench, in steps after the change: a seed not back within it counts as
/// this many steps and as failed.
const RECOVERY_BUDGET: u64 = 400_000;

/// One seed of the drift scenario (`common/drift.rs`, the recovery test's): learn, hold, change
/// the world, then steps to the drift alarm and to a return back at 90 % of the level before,
/// judged on episodes begun after the change. `None` when the first world was not learned
/// within 300,000 steps (no change happened, so the seed says nothing about recovery);
/// `Some((steps to learn the first world, level, detected, recovered))` otherwise, `recovered` being `None` past the budget.
fn drift_recovery(
    run_dir: &Path,
    seed: u64,
    act_with: ActWith,
) -> Option<(u64, f64, Option<u64>, Option<u64>)> {
    let control = CartPoleControl::default();
    let mut config = drift::config(seed);
    config.daemon.act_with = act_with;
    let daemon = Daemon::start(DaemonOptions {
        config,
        run_dir: run_dir.to_path_buf(),
        env_factory: Some(drift::world(control.clone())),
    })
    .expect("daemon");
    let wait = |pred: &dyn Fn(&autodidact::daemon::Status) -> bool, budget: u64| loop {
        let s = daemon.status().expect("status");
        if pred(&s) {
            return Some(s);
        }
        if s.steps > budget || daemon.failure().is_some() {
            return None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let before = wait(&|s| drift::learned(s), 300_000)?;
    let held = wait(&|s| drift::held(s, &before), 400_000)?;
    let level = held.recent_return?;
    let change = drift::Change::apply(&daemon, &control, level);
    let detected = wait(
        &|s| drift::alarm_after(s, change.steps).is_some(),
        change.steps + RECOVERY_BUDGET,
    )
    .and_then(|s| drift::alarm_after(&s, change.steps))
    .map(|at| at - change.steps);
    let rec = wait(&|s| change.recovered(s), change.steps + RECOVERY_BUDGET)
        .map(|s| change.steps_since(&s));
    let _ = daemon.shutdown();
    Some((before.steps, level, detected, rec))
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let drift_only = args.iter().any(|a| a == "--drift-only");
    // `--act-with champion`: the actors act with promoted models only (the default, `learner`:
    // with the learner's newest weights).
    let act_with = match args
        .iter()
        .position(|a| a == "--act-with")
        .and_then(|i| args.get(i + 1))
        .map(String::as_str)
    {
        Some("champion") => ActWith::Champion,
        _ => ActWith::Learner,
    };
    let seeds: u64 = args
        .iter()
        .position(|a| a == "--seeds")
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let secs: u64 = std::env::var("AUTODIDACT_BENCH_DAEMON_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(600);
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut results = Vec::new();
    let row = |name: &str, unit: &str, lower: bool, v: &[f64]| {
        serde_json::json!({"name": name, "unit": unit, "lower_is_better": lower,
            "median": common::median(v),
            "min": v.iter().copied().fold(f64::INFINITY, f64::min),
            "max": v.iter().copied().fold(f64::NEG_INFINITY, f64::max),
            "runs": v.len()})
    };
    if !drift_only {
        println!("daemon: {secs} s run on cartpole (learning, gate, reflection every 30 s)…");
        let (steps_per_s, peak, growth, stop_s) = long_run(&tmp.path().join("long"), secs);
        println!("daemon: SIGKILL → acting again, 5 rounds…");
        let kill = sigkill_to_acting(&tmp.path().join("long"), 5);
        results.extend([
            row("daemon/steps_per_s", "steps/s", false, &[steps_per_s]),
            row("daemon/peak_rss_mib", "MiB", true, &[peak]),
            row("daemon/rss_growth_after_warmup_mib", "MiB", true, &[growth]),
            row("daemon/sigterm_stop_s", "s", true, &[stop_s]),
            row("daemon/sigkill_to_acting_s", "s", true, &kill),
        ]);
    }
    println!(
        "daemon: drift recovery on CartPole (the push of each action reverses; the recovery \
         test's scenario), {seeds} seeds…"
    );
    // A seed that does not recover (or whose alarm never comes) within the budget counts as the
    // budget and as failed, as in the learn bench.
    let (mut rec, mut det, mut first) = (Vec::new(), Vec::new(), Vec::new());
    let (mut rec_failed, mut det_failed, mut not_learned) = (0usize, 0usize, 0usize);
    let budget = RECOVERY_BUDGET as f64;
    for seed in 0..seeds {
        match drift_recovery(&tmp.path().join(format!("drift-{seed}")), seed, act_with) {
            Some((learned, level, d, r)) => {
                first.push(learned as f64);
                println!(
                    "  seed {seed}: first world learned after {learned} steps, level {level:.1}, \
                     detected after {}, recovered after {}",
                    d.map_or("never".into(), |d| format!("{d} steps")),
                    r.map_or(format!("never (budget {RECOVERY_BUDGET})"), |r| format!(
                        "{r} steps"
                    )),
                );
                det_failed += usize::from(d.is_none());
                rec_failed += usize::from(r.is_none());
                det.push(d.map_or(budget, |d| d as f64));
                rec.push(r.map_or(budget, |r| r as f64));
            }
            None => {
                not_learned += 1;
                println!("  seed {seed}: the first world was not learned within 300,000 steps");
            }
        }
    }
    let mut r = row("daemon/drift_recovery_steps", "steps", true, &rec);
    r["failed"] = rec_failed.into();
    r["not_learned"] = not_learned.into();
    r["budget"] = RECOVERY_BUDGET.into();
    results.push(r);
    results.push(row("daemon/first_world_steps", "steps", true, &first));
    let mut d = row("daemon/drift_detection_steps", "steps", true, &det);
    d["failed"] = det_failed.into();
    results.push(d);
    println!();
    println!(
        "{:<40} {:>12} {:>12} {:>12} {:>5} {:>7}",
        "name", "median", "min", "max", "runs", "failed"
    );
    for r in &results {
        println!(
            "{:<40} {:>12.2} {:>12.2} {:>12.2} {:>5} {:>7}  {}",
            r["name"].as_str().unwrap_or(""),
            r["median"].as_f64().unwrap_or(f64::NAN),
            r["min"].as_f64().unwrap_or(f64::NAN),
            r["max"].as_f64().unwrap_or(f64::NAN),
            r["runs"],
            r.get("failed").map_or(String::new(), |f| f.to_string()),
            r["unit"].as_str().unwrap_or("")
        );
    }
    let mut command = "cargo bench -p autodidact --bench daemon".to_string();
    if drift_only {
        command.push_str(" -- --drift-only");
    }
    if act_with == ActWith::Champion {
        command.push_str(" --act-with champion");
    }
    let mut out = serde_json::json!({
        "area": "daemon",
        "command": command,
        "machine": {"cpu": common::cpu_name(), "threads": std::thread::available_parallelism().map_or(0, |n| n.get())},
        "drift_seeds": seeds,
        "act_with": if act_with == ActWith::Champion { "champion" } else { "learner" },
        "results": results,
    });
    if !drift_only {
        out["duration_s"] = secs.into();
    }
    // A partial run does not overwrite the whole run's figures.
    let file = match (drift_only, act_with) {
        (true, ActWith::Champion) => "daemon-drift-champion.json",
        (true, ActWith::Learner) => "daemon-drift.json",
        (false, _) => "daemon.json",
    };
    common::write_results(file, &out);
}
