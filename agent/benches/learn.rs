//! How fast the agent learns CartPole-v1, against Stable-Baselines3 measured in the same run.
//!
//! For each seed: `autodidact train` on native CartPole (concurrent actor and learner, the
//! default config, 50,000 steps) with a greedy evaluation of 20 episodes every 2,500 steps.
//! Reported: environment steps and training seconds (evaluations excluded) until the mean
//! first reaches 475, and the final evaluation's mean at the end of the budget. The same with
//! dense networks of equal active and of equal total parameters. The peer is
//! `../shared/anchors/sb3_cartpole.py` (SB3 DQN and PPO with rl-baselines3-zoo settings; it
//! evaluates every 5,000 steps over 10 episodes).
//!
//! ```text
//! cargo bench -p autodidact --bench learn [-- --seeds 5 --no-peer --quick]
//! ```
//! Writes `<target>/autodidact-bench/learn.json` (format: `shared/BENCH_FORMAT.md`).

mod common;
use common::{cpu_name, median, target_dir};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use autodidact::config::TrainConfig;
use autodidact::train::{Hooks, RunSetup, TrainReport, network_config, train};
use autodidact_core::{BlockConfig, Module, Network};

const SOLVED: f64 = 475.0;

struct Variant {
    name: &'static str,
    overrides: Vec<String>,
}

/// Per network: name, steps to 475 per seed, seconds to 475 per seed, final means, active and
/// total parameters.
type Summary = (String, Vec<f64>, Vec<f64>, Vec<f64>, usize, usize);

struct Outcome {
    first: Option<(u64, f64)>,
    final_mean: f64,
    steps_per_s: f64,
}

/// Busy cores over `secs` seconds, from /proc/stat (machine-wide).
fn busy_cores(secs: f64) -> Option<f64> {
    let read = || -> Option<(f64, f64)> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        let cpu: Vec<f64> = stat
            .lines()
            .next()?
            .split_whitespace()
            .skip(1)
            .filter_map(|v| v.parse().ok())
            .collect();
        let idle = cpu.get(3)? + cpu.get(4).unwrap_or(&0.0);
        Some((cpu.iter().sum(), idle))
    };
    let (t0, i0) = read()?;
    std::thread::sleep(std::time::Duration::from_secs_f64(secs));
    let (t1, i1) = read()?;
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    Some(threads * (1.0 - (i1 - i0) / (t1 - t0).max(1.0)))
}

/// Waits (up to two minutes) until other processes leave the machine alone, as the anchors
/// do, so a training run's wall-clock is not someone else's compile.
fn wait_quiet() {
    let t0 = std::time::Instant::now();
    while let Some(busy) = busy_cores(1.0) {
        if busy < 0.3 || t0.elapsed().as_secs() > 120 {
            if busy >= 0.3 {
                println!("(machine still busy: {busy:.1} cores; measuring anyway)");
            }
            return;
        }
    }
}

fn run_one(variant: &Variant, seed: u64, steps: u64) -> (Outcome, TrainReport) {
    wait_quiet();
    let dir = tempfile::tempdir().expect("temporary run directory");
    let mut o = variant.overrides.clone();
    o.extend([
        format!("run.steps={steps}"),
        format!("run.seed={seed}"),
        "run.eval_every=2500".to_string(),
        "run.eval_episodes=20".to_string(),
    ]);
    let cfg = TrainConfig::load(None, &o).expect("bench config");
    let report = train(
        RunSetup::fresh("cartpole", cfg, dir.path()).expect("run setup"),
        Hooks {
            stop: Arc::new(AtomicBool::new(false)),
            on_progress: &mut |_| {},
            on_eval: &mut |_| {},
        },
    )
    .expect("training run");
    let first = report
        .evals
        .iter()
        .find(|e| e.mean >= SOLVED)
        .map(|e| (e.steps, e.train_secs));
    let final_mean = report.final_eval.as_ref().map_or(f64::NAN, |e| e.mean);
    (
        Outcome {
            first,
            final_mean,
            steps_per_s: report.steps_per_s,
        },
        report,
    )
}

fn params(overrides: &[String]) -> (usize, usize) {
    let cfg = TrainConfig::load(None, overrides).expect("config");
    let net = Network::new(network_config(&cfg, 4, 2), 0).expect("network");
    (net.active_params(), net.num_params())
}

fn peer_python() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("AUTODIDACT_PEER_PYTHON") {
        return Some(PathBuf::from(p));
    }
    let home = std::env::var_os("HOME")?;
    let p = Path::new(&home).join(".venvs/anchors/bin/python");
    p.exists().then_some(p)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let flag = |f: &str| args.iter().any(|a| a == f);
    let value = |f: &str| {
        args.iter()
            .position(|a| a == f)
            .and_then(|i| args.get(i + 1))
            .and_then(|v| v.parse::<u64>().ok())
    };
    let quick = flag("--quick");
    let seeds = value("--seeds").unwrap_or(if quick { 2 } else { 5 });
    let steps = value("--steps").unwrap_or(50_000);

    let dense = |h: usize| vec![format!("network.blocks=[{{kind=\"dense\", d_hidden={h}}}]")];
    let moe = TrainConfig::default();
    let (moe_active, moe_total) = params(&[]);
    let BlockConfig::Moe {
        d_hidden,
        n_experts,
        top_k,
        ..
    } = moe.network.blocks[0].clone()
    else {
        panic!("the default network is expected to be MoE");
    };
    let mut variants = vec![Variant {
        name: "moe",
        overrides: vec![],
    }];
    if !quick {
        variants.push(Variant {
            name: "dense_equal_active",
            overrides: dense(d_hidden * top_k),
        });
        variants.push(Variant {
            name: "dense_equal_total",
            overrides: dense(d_hidden * n_experts),
        });
    }
    println!(
        "default MoE: {n_experts} experts of hidden width {d_hidden}, top-{top_k}: {moe_active} active / {moe_total} total parameters"
    );

    let mut results = Vec::new();
    println!(
        "\n{:<20} {:>5} {:>12} {:>12} {:>12} {:>10}",
        "network", "seed", "steps→475", "secs→475", "final mean", "steps/s"
    );
    let mut summary: Vec<Summary> = Vec::new();
    for v in &variants {
        let (active, total) = params(&v.overrides);
        let (mut s475, mut t475, mut finals) = (Vec::new(), Vec::new(), Vec::new());
        for seed in 0..seeds {
            let (o, _) = run_one(v, seed, steps);
            println!(
                "{:<20} {:>5} {:>12} {:>12} {:>12.1} {:>10.0}",
                v.name,
                seed,
                o.first.map_or("never".into(), |f| f.0.to_string()),
                o.first.map_or("–".into(), |f| format!("{:.2}", f.1)),
                o.final_mean,
                o.steps_per_s
            );
            // A seed that never solves counts as the whole budget, so the median stays honest.
            s475.push(o.first.map_or(steps as f64, |f| f.0 as f64));
            t475.push(o.first.map_or(f64::INFINITY, |f| f.1));
            finals.push(o.final_mean);
        }
        summary.push((v.name.to_string(), s475, t475, finals, active, total));
    }

    // The peer, in the same run.
    let mut peer: Option<serde_json::Value> = None;
    if !flag("--no-peer") {
        let script =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/anchors/sb3_cartpole.py");
        match peer_python() {
            Some(py) if script.exists() => {
                let out = target_dir().join("autodidact-bench/peer-sb3_cartpole.json");
                std::fs::create_dir_all(out.parent().expect("parent")).expect("bench dir");
                println!(
                    "\nrunning the SB3 peer ({}): several minutes",
                    script.display()
                );
                let status = Command::new(&py)
                    .arg(&script)
                    .arg("--out")
                    .arg(&out)
                    .current_dir(script.parent().expect("anchors dir"))
                    .status();
                match status {
                    Ok(s) if s.success() => {
                        peer = std::fs::read_to_string(&out)
                            .ok()
                            .and_then(|t| serde_json::from_str(&t).ok());
                    }
                    other => println!("SB3 peer failed: {other:?}"),
                }
            }
            _ => println!(
                "\nSB3 peer skipped: set AUTODIDACT_PEER_PYTHON or create ~/.venvs/anchors \
                 (see shared/anchors/README.md)"
            ),
        }
    }
    let peer_fig = |algo: &str, key: &str| -> Option<f64> {
        peer.as_ref()?
            .get("summary")?
            .get(algo)?
            .get(key)?
            .get("median")?
            .as_f64()
    };

    println!(
        "\n{:<20} {:>9} {:>9} {:>14} {:>14} {:>12}",
        "network", "active", "total", "median steps", "median secs", "min final"
    );
    for (name, s475, t475, finals, active, total) in &summary {
        let min_final = finals.iter().copied().fold(f64::INFINITY, f64::min);
        println!(
            "{:<20} {:>9} {:>9} {:>14.0} {:>14.2} {:>12.1}",
            name,
            active,
            total,
            median(s475),
            median(t475),
            min_final
        );
        let suffix = if name == "moe" {
            String::new()
        } else {
            format!("/{name}")
        };
        let finite: Vec<f64> = t475.iter().copied().filter(|t| t.is_finite()).collect();
        let mut push =
            |rname: String, unit: &str, lower: bool, samples: &[f64], peer: Option<(&str, f64)>| {
                let mut v = serde_json::json!({
                    "name": rname, "unit": unit, "lower_is_better": lower,
                    "median": median(samples),
                    "min": samples.iter().copied().fold(f64::INFINITY, f64::min),
                    "max": samples.iter().copied().fold(f64::NEG_INFINITY, f64::max),
                    "runs": samples.len(),
                });
                if let Some((p, m)) = peer {
                    v["peer"] = p.into();
                    v["peer_median"] = m.into();
                }
                results.push(v);
            };
        let is_moe = name == "moe";
        let dqn_steps = peer_fig("dqn", "first_solved_env_steps").filter(|_| is_moe);
        let dqn_secs = peer_fig("dqn", "first_solved_train_secs").filter(|_| is_moe);
        push(
            format!("cartpole/steps_to_475{suffix}"),
            "steps",
            true,
            s475,
            dqn_steps.map(|m| ("sb3-dqn", m)),
        );
        push(
            format!("cartpole/seconds_to_475{suffix}"),
            "s",
            true,
            if finite.len() == t475.len() {
                t475
            } else {
                &finite
            },
            dqn_secs.map(|m| ("sb3-dqn", m)),
        );
        if is_moe {
            if let Some(m) = peer_fig("ppo", "first_solved_env_steps") {
                push(
                    "cartpole/steps_to_475/vs_ppo".into(),
                    "steps",
                    true,
                    s475,
                    Some(("sb3-ppo", m)),
                );
            }
            if let Some(m) = peer_fig("ppo", "first_solved_train_secs") {
                push(
                    "cartpole/seconds_to_475/vs_ppo".into(),
                    "s",
                    true,
                    t475,
                    Some(("sb3-ppo", m)),
                );
            }
        }
        push(
            format!("cartpole/final_return_min{suffix}"),
            "return",
            false,
            &[min_final],
            None,
        );
    }
    if let (Some(d), Some(p)) = (
        peer_fig("dqn", "first_solved_train_secs"),
        peer_fig("ppo", "first_solved_train_secs"),
    ) {
        let ours = median(&summary[0].2);
        println!(
            "\nsecs to 475: ours {ours:.2}, SB3 DQN {d:.2} ({:.1}× ours), SB3 PPO {p:.2} ({:.1}× ours)",
            d / ours,
            p / ours
        );
    }

    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let doc = serde_json::json!({
        "area": "learn",
        "command": "cargo bench -p autodidact --bench learn",
        "machine": {"cpu": cpu_name(), "threads": threads},
        "results": results,
    });
    let out = target_dir().join("autodidact-bench");
    std::fs::create_dir_all(&out).expect("bench dir");
    let file = out.join("learn.json");
    std::fs::write(&file, serde_json::to_string_pretty(&doc).expect("json")).expect("write");
    println!("wrote {}", file.display());
}
