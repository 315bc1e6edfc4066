//! How fast the agent learns CartPole-v1, against Stable-Baselines3 measured in the same run.
//!
//! For each seed: `autodidact train` on native CartPole (concurrent actor and learner, the
//! default config, 50,000 steps) with a greedy evaluation of 20 episodes every 2,500 steps.
//! Reported: environment steps and training seconds (evaluations excluded) until the mean
//! first reaches 475, and the final evaluation's mean at the end of the budget. The same with
//! dense networks of equal active and of equal total parameters. The peer is
//! `../shared/anchors/sb3_cartpole.py` (SB3 DQN and PPO with rl-baselines3-zoo settings; it
//! evaluates every 5,000 steps over 10 episodes), run by this bench after ours.
//!
//! One convention for every figure, ours and the peer's: a seed that never reaches 475 counts as
//! its whole budget (its environment steps and its training seconds), and every result carries
//! `failed`, the number of such seeds (`peer_failed` for the peer's; `peer_disturbed` counts
//! the peer's runs that other processes disturbed or its time limit cut). The peer's figures,
//! `final_return_min` included, are computed here from the runs in its own output file, which
//! is deleted before it runs. `--quick`: two seeds, the MoE only, one peer seed per algorithm.
//!
//! Then SAC on Pendulum-v1 (20,000 steps, greedy evaluation of 10 episodes every 2,000 steps,
//! solved at −200) against SB3's SAC with rl-baselines3-zoo's settings
//! (`../shared/anchors/sb3_pendulum.py`), on the same conventions. `--only cartpole` or
//! `--only pendulum` runs one section (each full section fits the 20-minute budget; both
//! together take about half an hour); `--no-pendulum` is `--only cartpole`.
//!
//! ```text
//! cargo bench -p autodidact --bench learn [-- --seeds 5 --no-peer --quick]
//! ```
//! Writes `<target>/autodidact-bench/learn.json` (format: `shared/BENCH_FORMAT.md`).

mod common;
use common::{cpu_name, median, target_dir, write_results};
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

/// Seeds of one learner (ours or a peer) on the common convention: a seed that never reaches
/// 475 counts as its whole budget, in steps and in training seconds, and is counted in `failed`.
/// Leaving such seeds out (or counting them as infinite) would make a learner that fails more
/// often look faster, or make the median undefined.
#[derive(Default)]
struct Figures {
    steps: Vec<f64>,
    secs: Vec<f64>,
    finals: Vec<f64>,
    failed: usize,
    /// Peer runs kept although other processes disturbed them (the anchor keeps its last try
    /// either way) or cut short by its time limit: their seconds are not a quiet machine's.
    disturbed: usize,
}

impl Figures {
    /// Adds one seed: when it first reached 475 (steps, training seconds), or `None` with the
    /// budget it spent without reaching it.
    fn push(&mut self, first: Option<(f64, f64)>, budget: (f64, f64), final_mean: f64) {
        let (steps, secs) = first.unwrap_or(budget);
        self.failed += usize::from(first.is_none());
        self.steps.push(steps);
        self.secs.push(secs);
        self.finals.push(final_mean);
    }

    fn min_final(&self) -> f64 {
        self.finals.iter().copied().fold(f64::INFINITY, f64::min)
    }

    /// "failed/seeds", as the tables print it.
    fn failed_of(&self) -> String {
        format!("{}/{}", self.failed, self.steps.len())
    }

    /// A peer's seeds from the JSON `sb3_cartpole.py` writes: its `runs` of one algorithm, the
    /// budget being the algorithm's `n_timesteps` and the run's own training seconds.
    fn from_sb3(doc: &serde_json::Value, algo: &str) -> Option<Figures> {
        Figures::from_sb3_runs(doc, algo, doc["hyperparams"][algo]["n_timesteps"].as_f64())
    }
}

impl Figures {
    /// A peer's seeds from an anchor's `runs` of one algorithm: the budget is `budget_steps`
    /// (or, if unknown, each run's own steps) and each run's own training seconds.
    fn from_sb3_runs(
        doc: &serde_json::Value,
        algo: &str,
        budget_steps: Option<f64>,
    ) -> Option<Figures> {
        let mut f = Figures::default();
        for r in doc["runs"].as_array()?.iter().filter(|r| r["algo"] == algo) {
            let first = match &r["first_solved"] {
                serde_json::Value::Null => None,
                s => Some((s["env_steps"].as_f64()?, s["train_secs"].as_f64()?)),
            };
            let budget = (
                budget_steps.or_else(|| r["env_steps"].as_f64())?,
                r["train_secs"].as_f64()?,
            );
            f.push(first, budget, r["final_eval_mean"].as_f64()?);
            f.disturbed += usize::from(r["noisy"] == true || !r["aborted"].is_null());
        }
        (!f.steps.is_empty()).then_some(f)
    }
}

/// Per network: name, its seeds' figures, active and total parameters.
type Summary = (String, Figures, usize, usize);

struct Outcome {
    first: Option<(u64, f64)>,
    final_mean: f64,
    steps_per_s: f64,
    /// The whole run: environment steps and training seconds (evaluations excluded).
    budget: (f64, f64),
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

/// A world the bench learns: where it is solved and how often it is evaluated.
struct Task {
    env: &'static str,
    solved: f64,
    eval_every: u64,
    eval_episodes: u64,
}

const CARTPOLE: Task = Task {
    env: "cartpole",
    solved: SOLVED,
    eval_every: 2500,
    eval_episodes: 20,
};

/// Pendulum-v1 as the SB3 anchor evaluates it: every 2,000 steps, 10 greedy episodes, solved
/// at a mean of −200.
const PENDULUM: Task = Task {
    env: "pendulum",
    solved: -200.0,
    eval_every: 2000,
    eval_episodes: 10,
};

fn run_one(variant: &Variant, seed: u64, steps: u64) -> (Outcome, TrainReport) {
    run_task(&CARTPOLE, variant, seed, steps)
}

fn run_task(task: &Task, variant: &Variant, seed: u64, steps: u64) -> (Outcome, TrainReport) {
    wait_quiet();
    let dir = tempfile::tempdir().expect("temporary run directory");
    let mut o = variant.overrides.clone();
    o.extend([
        format!("run.steps={steps}"),
        format!("run.seed={seed}"),
        format!("run.eval_every={}", task.eval_every),
        format!("run.eval_episodes={}", task.eval_episodes),
    ]);
    let cfg = TrainConfig::load(None, &o).expect("bench config");
    let report = train(
        RunSetup::fresh(task.env, cfg, dir.path()).expect("run setup"),
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
        .find(|e| e.mean >= task.solved)
        .map(|e| (e.steps, e.train_secs));
    let final_mean = report.final_eval.as_ref().map_or(f64::NAN, |e| e.mean);
    (
        Outcome {
            first,
            final_mean,
            steps_per_s: report.steps_per_s,
            budget: (report.steps as f64, report.train_secs),
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
    // `--only cartpole` or `--only pendulum`: one section (each full section stays under the
    // 20-minute budget; both together do not).
    let only = args
        .iter()
        .position(|a| a == "--only")
        .and_then(|i| args.get(i + 1))
        .cloned();
    let cartpole_on = only.as_deref().is_none_or(|o| o == "cartpole");
    let pendulum_on = only.as_deref().is_none_or(|o| o == "pendulum") && !flag("--no-pendulum");
    let seeds = value("--seeds").unwrap_or(if quick { 2 } else { 5 });
    let steps = value("--steps").unwrap_or(50_000);

    let mut results = Vec::new();
    if cartpole_on {
        results.extend(cartpole(seeds, steps, quick, flag("--no-peer")));
    }
    if autodidact::learners::by_name("sac").is_ok() && pendulum_on {
        results.extend(pendulum(seeds, quick, flag("--no-peer")));
    }

    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let doc = serde_json::json!({
        "area": "learn",
        "command": "cargo bench -p autodidact --bench learn",
        "machine": {"cpu": cpu_name(), "threads": threads},
        "steps_budget": steps,
        "seeds": seeds,
        "quick": quick,
        "results": results,
    });
    write_results("learn.json", &doc);
}

/// One result in the shared format, with `failed` (seeds that never reached 475 and count as
/// their whole budget) and, where a peer ran, its median and its own `peer_failed`.
fn row(
    name: &str,
    unit: &str,
    lower_is_better: bool,
    samples: &[f64],
    failed: usize,
    peer: Option<(&str, f64, usize)>,
) -> serde_json::Value {
    let mut v = serde_json::json!({
        "name": name, "unit": unit, "lower_is_better": lower_is_better,
        "median": median(samples),
        "min": samples.iter().copied().fold(f64::INFINITY, f64::min),
        "max": samples.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        "runs": samples.len(),
        "failed": failed,
    });
    if let Some((p, m, f)) = peer {
        v["peer"] = p.into();
        v["peer_median"] = m.into();
        v["peer_failed"] = f.into();
    }
    v
}

/// Adds the peer's count of disturbed runs to the results it appears in.
fn mark_disturbed(results: &mut [serde_json::Value], peer: &str, disturbed: usize) {
    for r in results.iter_mut().filter(|r| r["peer"] == peer) {
        r["peer_disturbed"] = disturbed.into();
    }
}

/// Runs `../shared/anchors/sb3_cartpole.py` (one seed per algorithm with `--quick`, its three
/// otherwise) and returns what it wrote. Its output file is deleted first, so a file left by an
/// earlier run is never read as this run's figures.
fn run_peer(quick: bool) -> Option<serde_json::Value> {
    run_anchor(
        "sb3_cartpole.py",
        "peer-sb3_cartpole.json",
        quick.then_some("0"),
    )
}

/// Runs the anchor script `name` from `../shared/anchors/` with `--out` into the bench
/// directory (with `--seeds` `seeds`, space-separated, if given; its own default otherwise),
/// deleting its old output first.
fn run_anchor(name: &str, out_name: &str, seeds: Option<&str>) -> Option<serde_json::Value> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/anchors")
        .join(name);
    let Some(py) = peer_python().filter(|_| script.exists()) else {
        println!(
            "\nSB3 peer skipped: set AUTODIDACT_PEER_PYTHON or create ~/.venvs/anchors \
             (see shared/anchors/README.md)"
        );
        return None;
    };
    let out = target_dir().join("autodidact-bench").join(out_name);
    std::fs::create_dir_all(out.parent().expect("parent")).expect("bench dir");
    match std::fs::remove_file(&out) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            println!(
                "SB3 peer not run: cannot delete its old output {}: {e}",
                out.display()
            );
            return None;
        }
    }
    println!(
        "\nrunning the SB3 peer ({}): several minutes",
        script.display()
    );
    let mut cmd = Command::new(&py);
    cmd.arg(&script).arg("--out").arg(&out);
    if let Some(seeds) = seeds {
        cmd.arg("--seeds").args(seeds.split_whitespace());
    }
    match cmd
        .current_dir(script.parent().expect("anchors dir"))
        .status()
    {
        Ok(s) if s.success() => {}
        other => {
            println!("SB3 peer failed: {other:?}");
            return None;
        }
    }
    let doc = std::fs::read_to_string(&out)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok());
    if doc.is_none() {
        println!("SB3 peer wrote no readable {}", out.display());
    }
    doc
}

/// CartPole-v1 with DQN (the default MoE network and, without `--quick`, dense networks of
/// equal active and equal total parameters), against SB3's DQN and PPO.
fn cartpole(seeds: u64, steps: u64, quick: bool, no_peer: bool) -> Vec<serde_json::Value> {
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

    println!(
        "\n{:<20} {:>5} {:>12} {:>12} {:>12} {:>10}",
        "network", "seed", "steps→475", "secs→475", "final mean", "steps/s"
    );
    let mut summary: Vec<Summary> = Vec::new();
    for v in &variants {
        let (active, total) = params(&v.overrides);
        let mut figs = Figures::default();
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
            figs.push(o.first.map(|(s, t)| (s as f64, t)), o.budget, o.final_mean);
        }
        summary.push((v.name.to_string(), figs, active, total));
    }

    // The peer, in the same run.
    let peer = if no_peer { None } else { run_peer(quick) };
    let dqn = peer.as_ref().and_then(|d| Figures::from_sb3(d, "dqn"));
    let ppo = peer.as_ref().and_then(|d| Figures::from_sb3(d, "ppo"));
    cartpole_results(&summary, dqn.as_ref(), ppo.as_ref())
}

/// The CartPole section's summary table and result rows, ours against the peer's.
fn cartpole_results(
    summary: &[Summary],
    dqn: Option<&Figures>,
    ppo: Option<&Figures>,
) -> Vec<serde_json::Value> {
    println!(
        "\n(a seed that never reaches 475 counts as its whole budget in steps and seconds)\n\
         {:<20} {:>9} {:>9} {:>14} {:>14} {:>12} {:>8}",
        "network", "active", "total", "median steps", "median secs", "min final", "failed"
    );
    let mut results = Vec::new();
    for (name, figs, active, total) in summary {
        println!(
            "{:<20} {:>9} {:>9} {:>14.0} {:>14.2} {:>12.1} {:>8}",
            name,
            active,
            total,
            median(&figs.steps),
            median(&figs.secs),
            figs.min_final(),
            figs.failed_of()
        );
        let is_moe = name == "moe";
        let suffix = if is_moe {
            String::new()
        } else {
            format!("/{name}")
        };
        // The peers are compared with the default network only.
        let (dqn_m, ppo_m) = (
            dqn.as_ref().filter(|_| is_moe),
            ppo.as_ref().filter(|_| is_moe),
        );
        results.push(row(
            &format!("cartpole/steps_to_475{suffix}"),
            "steps",
            true,
            &figs.steps,
            figs.failed,
            dqn_m.map(|p| ("sb3-dqn", median(&p.steps), p.failed)),
        ));
        results.push(row(
            &format!("cartpole/seconds_to_475{suffix}"),
            "s",
            true,
            &figs.secs,
            figs.failed,
            dqn_m.map(|p| ("sb3-dqn", median(&p.secs), p.failed)),
        ));
        if let Some(p) = ppo_m {
            results.push(row(
                "cartpole/steps_to_475/vs_ppo",
                "steps",
                true,
                &figs.steps,
                figs.failed,
                Some(("sb3-ppo", median(&p.steps), p.failed)),
            ));
            results.push(row(
                "cartpole/seconds_to_475/vs_ppo",
                "s",
                true,
                &figs.secs,
                figs.failed,
                Some(("sb3-ppo", median(&p.secs), p.failed)),
            ));
        }
        // The lowest final mean over seeds; the peer's is its own lowest, from its output.
        results.push(row(
            &format!("cartpole/final_return_min{suffix}"),
            "return",
            false,
            &[figs.min_final()],
            figs.failed,
            dqn_m.map(|p| ("sb3-dqn", p.min_final(), p.failed)),
        ));
        if let Some(p) = ppo_m {
            results.push(row(
                "cartpole/final_return_min/vs_ppo",
                "return",
                false,
                &[figs.min_final()],
                figs.failed,
                Some(("sb3-ppo", p.min_final(), p.failed)),
            ));
        }
    }
    for (algo, p) in [("sb3-dqn", &dqn), ("sb3-ppo", &ppo)] {
        if let Some(p) = p {
            if p.disturbed > 0 {
                println!(
                    "({algo}: {} of {} runs disturbed by other processes or cut at the anchor's \
                     time limit; its seconds are not a quiet machine's)",
                    p.disturbed,
                    p.steps.len()
                );
            }
            println!(
                "{:<20} {:>9} {:>9} {:>14.0} {:>14.2} {:>12.1} {:>8}",
                algo,
                "",
                "",
                median(&p.steps),
                median(&p.secs),
                p.min_final(),
                p.failed_of()
            );
        }
    }
    if let (Some(d), Some(p)) = (&dqn, &ppo) {
        let ours = median(&summary[0].1.secs);
        let (d, p) = (median(&d.secs), median(&p.secs));
        println!(
            "\nsecs to 475: ours {ours:.2}, SB3 DQN {d:.2} ({:.1}× ours), SB3 PPO {p:.2} ({:.1}× ours)",
            d / ours,
            p / ours
        );
    }

    for (name, p) in [("sb3-dqn", &dqn), ("sb3-ppo", &ppo)] {
        if let Some(p) = p {
            mark_disturbed(&mut results, name, p.disturbed);
        }
    }

    results
}

/// SAC on Pendulum-v1 with the defaults a `Box` action space gets (20,000 steps, as
/// rl-baselines3-zoo trains SB3's SAC), against `../shared/anchors/sb3_pendulum.py` run here.
fn pendulum(seeds: u64, quick: bool, no_peer: bool) -> Vec<serde_json::Value> {
    let budget = 20_000;
    let ours = Variant {
        name: "sac",
        overrides: vec![],
    };
    println!(
        "\n{:<20} {:>5} {:>12} {:>12} {:>12} {:>10}",
        "pendulum (SAC)", "seed", "steps→-200", "secs→-200", "final mean", "steps/s"
    );
    let mut figs = Figures::default();
    for seed in 0..seeds {
        let (o, _) = run_task(&PENDULUM, &ours, seed, budget);
        println!(
            "{:<20} {:>5} {:>12} {:>12} {:>12.1} {:>10.0}",
            "sac",
            seed,
            o.first.map_or("never".into(), |f| f.0.to_string()),
            o.first.map_or("–".into(), |f| format!("{:.2}", f.1)),
            o.final_mean,
            o.steps_per_s
        );
        figs.push(o.first.map(|(s, t)| (s as f64, t)), o.budget, o.final_mean);
    }
    let peer = if no_peer {
        None
    } else {
        // SB3's SAC takes about 7 minutes a seed here: two seeds (one with --quick) keep the
        // whole bench near its 20-minute budget.
        run_anchor(
            "sb3_pendulum.py",
            "peer-sb3_pendulum.json",
            Some(if quick { "0" } else { "0 1" }),
        )
    };
    let sac = peer
        .as_ref()
        .and_then(|d| Figures::from_sb3_runs(d, "sac", Some(budget as f64)));
    println!(
        "{:<20} {:>14} {:>14} {:>12} {:>8}",
        "", "median steps", "median secs", "min final", "failed"
    );
    println!(
        "{:<20} {:>14.0} {:>14.2} {:>12.1} {:>8}",
        "autodidact sac",
        median(&figs.steps),
        median(&figs.secs),
        figs.min_final(),
        figs.failed_of()
    );
    if let Some(p) = &sac {
        println!(
            "{:<20} {:>14.0} {:>14.2} {:>12.1} {:>8}",
            "sb3-sac",
            median(&p.steps),
            median(&p.secs),
            p.min_final(),
            p.failed_of()
        );
        println!(
            "secs to -200: ours {:.2}, SB3 SAC {:.2} ({:.1}× ours)",
            median(&figs.secs),
            median(&p.secs),
            median(&p.secs) / median(&figs.secs)
        );
    }
    let peer_of = |f: fn(&Figures) -> f64| sac.as_ref().map(|p| ("sb3-sac", f(p), p.failed));
    let mut rows = vec![
        row(
            "pendulum/steps_to_-200",
            "steps",
            true,
            &figs.steps,
            figs.failed,
            peer_of(|p| median(&p.steps)),
        ),
        row(
            "pendulum/seconds_to_-200",
            "s",
            true,
            &figs.secs,
            figs.failed,
            peer_of(|p| median(&p.secs)),
        ),
        row(
            "pendulum/final_return_min",
            "return",
            false,
            &[figs.min_final()],
            figs.failed,
            peer_of(Figures::min_final),
        ),
    ];
    if let Some(p) = &sac {
        mark_disturbed(&mut rows, "sb3-sac", p.disturbed);
    }
    rows
}
