//! The daemon over time: steady-state throughput with learning and reflection running, peak
//! memory over a long run, time from SIGKILL to acting again, and steps to recover after the
//! world changes. Writes `target/autodidact-bench/daemon.json`.
//!
//! `cargo bench -p autodidact --bench daemon` (about 15 minutes: the long run is
//! `AUTODIDACT_BENCH_DAEMON_SECS`, default 600 s). There is no peer to measure in the same run:
//! neither Stable-Baselines3 nor Gymnasium has a daemon that gates its own updates.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use autodidact::daemon::{Daemon, DaemonConfig, DaemonOptions, EnvFactory};
use autodidact_envs::wrappers::TimeLimit;
use autodidact_envs::{
    CartPoleControl, CartPoleParams, CartPoleSchedule, Env, NonStationaryCartPole,
};

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

/// Steps from a change of the pole to a return back at 90 % of its level before.
fn drift_recovery(run_dir: &Path, seed: u64) -> Option<(u64, u64, f64)> {
    let control = CartPoleControl::default();
    let c2 = control.clone();
    let factory: EnvFactory = Arc::new(move |_id: &str| {
        let env =
            NonStationaryCartPole::new(CartPoleSchedule::Constant)?.with_control(c2.clone())?;
        Ok(Box::new(TimeLimit::new(env, 500)?) as Box<dyn Env>)
    });
    let mut cfg = DaemonConfig::default();
    cfg.daemon.envs = vec!["cartpole-drift".into()];
    cfg.daemon.seed = seed;
    cfg.http.enabled = false;
    let daemon = Daemon::start(DaemonOptions {
        config: cfg,
        run_dir: run_dir.to_path_buf(),
        env_factory: Some(factory),
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
    let before = wait(
        &|s| s.recent_return.is_some_and(|r| r >= 450.0) && s.returns.len() >= 20,
        300_000,
    )?;
    // Hold it for the return detector's warm-up.
    let held = wait(&|s| s.episodes >= before.episodes + 40, 400_000)?;
    let level = held.recent_return?;
    let changed_at = held.steps;
    // The motor wired backwards: the champion fails at once (pole length and gravity changes
    // in the learnable range leave a greedy champion balancing; see BENCHMARKS.md).
    control.set(CartPoleParams {
        force_mag: -10.0,
        ..CartPoleParams::default()
    });
    let detected = wait(
        &|s| {
            s.last_reflections.iter().any(|r| {
                r.kind == "drift" && r.steps > changed_at && r.sentence.contains("return fell")
            })
        },
        changed_at + 100_000,
    )
    .and_then(|s| {
        s.last_reflections
            .iter()
            .find(|r| r.kind == "drift" && r.steps > changed_at)
            .map(|r| r.steps - changed_at)
    });
    let rec = wait(
        &|s| {
            s.steps > changed_at + 2_000
                && s.returns.len() >= 20
                && s.returns.iter().rev().take(20).sum::<f64>() / 20.0 >= 0.9 * level
        },
        changed_at + 400_000,
    );
    let _ = daemon.shutdown();
    Some((detected?, rec?.steps - changed_at, level))
}

fn main() {
    let secs: u64 = std::env::var("AUTODIDACT_BENCH_DAEMON_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(600);
    let tmp = tempfile::tempdir().expect("tempdir");
    println!("daemon: {secs} s run on cartpole (learning, gate, reflection every 30 s)…");
    let (steps_per_s, peak, growth, stop_s) = long_run(&tmp.path().join("long"), secs);
    println!("daemon: SIGKILL → acting again, 5 rounds…");
    let kill = sigkill_to_acting(&tmp.path().join("long"), 5);
    println!("daemon: drift recovery on CartPole (the push of each action reverses), 3 seeds…");
    let mut rec = Vec::new();
    let mut det = Vec::new();
    for seed in 0..3 {
        match drift_recovery(&tmp.path().join(format!("drift-{seed}")), seed) {
            Some((d, r, level)) => {
                println!(
                    "  seed {seed}: level {level:.1}, detected after {d} steps, recovered after {r}"
                );
                det.push(d as f64);
                rec.push(r as f64);
            }
            None => println!("  seed {seed}: did not recover within 400,000 steps"),
        }
    }
    let stat = |v: &[f64]| {
        (
            common::median(v),
            v.iter().copied().fold(f64::INFINITY, f64::min),
            v.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        )
    };
    let row = |name: &str, unit: &str, lower: bool, v: &[f64]| {
        let (m, lo, hi) = stat(v);
        serde_json::json!({"name": name, "unit": unit, "lower_is_better": lower,
            "median": m, "min": lo, "max": hi, "runs": v.len()})
    };
    let results = vec![
        row("daemon/steps_per_s", "steps/s", false, &[steps_per_s]),
        row("daemon/peak_rss_mib", "MiB", true, &[peak]),
        row("daemon/rss_growth_after_warmup_mib", "MiB", true, &[growth]),
        row("daemon/sigterm_stop_s", "s", true, &[stop_s]),
        row("daemon/sigkill_to_acting_s", "s", true, &kill),
        row("daemon/drift_recovery_steps", "steps", true, &rec),
        row("daemon/drift_detection_steps", "steps", true, &det),
    ];
    println!();
    println!(
        "{:<40} {:>12} {:>12} {:>12} {:>5}",
        "name", "median", "min", "max", "runs"
    );
    for r in &results {
        println!(
            "{:<40} {:>12.2} {:>12.2} {:>12.2} {:>5}  {}",
            r["name"].as_str().unwrap_or(""),
            r["median"].as_f64().unwrap_or(f64::NAN),
            r["min"].as_f64().unwrap_or(f64::NAN),
            r["max"].as_f64().unwrap_or(f64::NAN),
            r["runs"],
            r["unit"].as_str().unwrap_or("")
        );
    }
    let out = serde_json::json!({
        "area": "daemon",
        "command": "cargo bench -p autodidact --bench daemon",
        "machine": {"cpu": common::cpu_name(), "threads": std::thread::available_parallelism().map_or(0, |n| n.get())},
        "duration_s": secs,
        "results": results,
    });
    let dir = common::target_dir().join("autodidact-bench");
    std::fs::create_dir_all(&dir).expect("bench dir");
    let path = dir.join("daemon.json");
    std::fs::write(&path, serde_json::to_string_pretty(&out).expect("json")).expect("write");
    println!("wrote {}", path.display());
}
