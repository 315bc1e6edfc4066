//! The continual benchmark (issue 14): how fast `train` re-adapts when its world changes, and
//! how fast it recalls a world it mastered before, against a fresh agent started at each switch.
//!
//! World: `goal-regions:cycle:<P>`, a point looking for a goal region that moves on the schedule
//! A → B → A → B → C → A, `P` steps per phase, the regime hidden from the agent. Phases 1 and 4
//! bring a regime for the first time (adaptation); phases 2, 3 and 5 bring one back (recall).
//!
//! Latency of a phase: steps from the switch until the mean return of the last 20 training
//! episodes begun in the phase reaches 90 % of the way from the world's floor (−1, every
//! episode timing out) to the regime's fresh-start level (the mean of the last 20 episodes of a
//! fresh agent trained for `P` steps on that regime alone, median over seeds). Put that way the threshold is scale
//! free: it does not depend on where the world's returns sit. A phase that never gets there
//! counts as its whole length and is reported as not recovered. The fresh-start latency is the
//! same measurement on the fresh agent.
//!
//! Variants, all in one run: the defaults (every response to a change on), plain continued
//! training (no response at all), one ablation per response (exploration boost, replay restart,
//! head reset, recall), and dense networks of matched active and matched total parameters.
//!
//! Not measured yet (see BENCHMARKS.md): the daemon, other worlds of the issue (CartPole
//! reversal cycle, the drifting bandit, a world over `exec:`), and forgetting on earlier
//! regimes.
//!
//! `cargo bench -p autodidact --bench continual [-- --quick] [--seeds N] [--phase STEPS]`
//! writes `target/autodidact-bench/continual.json`.

mod common;

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use autodidact::config::TrainConfig;
use autodidact::train::{Hooks, RunSetup, train};
use autodidact_core::BlockConfig;
use common::{cpu_name, median, write_results};

/// The regimes of the returning cycle, phase by phase (as `GoalSchedule::returning_cycle`).
const CYCLE: [usize; 6] = [0, 1, 0, 1, 2, 0];
/// Episodes whose mean return judges a phase.
const JUDGED: usize = 20;
/// Share of the way from the floor to the fresh-start level that counts as adapted.
const FRACTION: f64 = 0.9;
/// The world's worst return: every episode times out.
const FLOOR: f64 = -1.0;
/// Name of the world in result names.
const WORLD: &str = "goal_regions";

/// A fresh agent per regime: `(level, latency or the phase length, learned within it)`.
type FreshRun = Vec<(f64, u64, bool)>;

struct Variant {
    name: &'static str,
    overrides: Vec<String>,
}

/// Episode lengths and returns of a finished run, from its replay file.
fn episodes(run_dir: &std::path::Path) -> Vec<(u64, f64)> {
    let db = rusqlite::Connection::open_with_flags(
        run_dir.join("replay.sqlite"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .expect("replay file");
    let mut st = db
        .prepare("SELECT length, episode_return FROM episodes ORDER BY id")
        .expect("query");
    st.query_map([], |r| {
        Ok((r.get::<_, i64>(0)? as u64, r.get::<_, f64>(1)?))
    })
    .expect("episodes")
    .map(|r| r.expect("episode row"))
    .collect()
}

/// Runs `train` on `env` for `steps` with `overrides`; returns its episodes.
fn run(env: &str, steps: u64, seed: u64, overrides: &[String]) -> Vec<(u64, f64)> {
    let dir = tempfile::tempdir().expect("temporary run directory");
    let mut o = overrides.to_vec();
    o.extend([
        format!("run.steps={steps}"),
        format!("run.seed={seed}"),
        "run.mode=\"lockstep\"".into(),
        "run.eval_every=0".into(),
    ]);
    let cfg = TrainConfig::load(None, &o).expect("bench config");
    train(
        RunSetup::fresh(env, cfg, dir.path()).expect("run setup"),
        Hooks {
            stop: Arc::new(AtomicBool::new(false)),
            on_progress: &mut |_| {},
            on_eval: &mut |_| {},
        },
    )
    .expect("training run");
    episodes(dir.path())
}

/// Episodes `(first step, last step, return)` in env-step coordinates.
fn timeline(eps: &[(u64, f64)]) -> Vec<(u64, u64, f64)> {
    let mut step = 0;
    eps.iter()
        .map(|&(len, ret)| {
            let e = (step, step + len, ret);
            step += len;
            e
        })
        .collect()
}

/// Steps from `start` until the mean of the last [`JUDGED`] episodes begun in
/// `[start, end)` reaches `threshold` (`None`: not within the phase).
fn latency(t: &[(u64, u64, f64)], start: u64, end: u64, threshold: f64) -> Option<u64> {
    let mut window = std::collections::VecDeque::with_capacity(JUDGED);
    for &(_, s1, r) in t.iter().filter(|e| e.0 >= start && e.1 <= end) {
        if window.len() == JUDGED {
            window.pop_front();
        }
        window.push_back(r);
        if window.len() == JUDGED && window.iter().sum::<f64>() / JUDGED as f64 >= threshold {
            return Some(s1 - start);
        }
    }
    None
}

/// A fresh agent on each regime: its level (the mean of its last [`JUDGED`] returns) and its
/// episodes' timeline.
type FreshTimelines = Vec<(f64, Vec<(u64, u64, f64)>)>;

/// Trains a fresh agent for `phase` steps on each regime alone.
fn fresh(phase: u64, seed: u64, overrides: &[String]) -> FreshTimelines {
    (0..3)
        .map(|regime| {
            let letter = char::from(b'A' + regime as u8);
            let eps = run(&format!("goal-regions:{letter}"), phase, seed, overrides);
            let tail: Vec<f64> = eps.iter().rev().take(JUDGED).map(|e| e.1).collect();
            let level = tail.iter().sum::<f64>() / tail.len().max(1) as f64;
            (level, timeline(&eps))
        })
        .collect()
}

/// Each regime's fresh-start level is the median over seeds (a seed whose fresh agent never
/// learned the regime would otherwise set a threshold at the floor, met at once); each seed's
/// fresh latency is then measured against that level's threshold, the phase length if never.
fn settle(runs: &[FreshTimelines], phase: u64) -> Vec<FreshRun> {
    let levels: Vec<f64> = (0..3)
        .map(|r| median(&runs.iter().map(|f| f[r].0).collect::<Vec<_>>()))
        .collect();
    runs.iter()
        .map(|f| {
            (0..3)
                .map(|r| {
                    let thr = FLOOR + FRACTION * (levels[r] - FLOOR);
                    let lat = latency(&f[r].1, 0, phase, thr);
                    (levels[r], lat.unwrap_or(phase), lat.is_some())
                })
                .collect()
        })
        .collect()
}

/// One continual run's latency per phase, each against the fresh level of its regime:
/// `(latency or the phase length, recovered)`.
fn continual(
    phase: u64,
    seed: u64,
    overrides: &[String],
    fresh: &[(f64, u64, bool)],
) -> Vec<(u64, bool)> {
    let eps = run(
        &format!("goal-regions:cycle:{phase}"),
        phase * CYCLE.len() as u64,
        seed,
        overrides,
    );
    let t = timeline(&eps);
    CYCLE
        .iter()
        .enumerate()
        .map(|(k, &regime)| {
            let thr = FLOOR + FRACTION * (fresh[regime].0 - FLOOR);
            let start = k as u64 * phase;
            let lat = latency(&t, start, start + phase, thr);
            (lat.unwrap_or(phase), lat.is_some())
        })
        .collect()
}

/// The variants the run compares: the defaults and plain training; without `--quick` also one
/// ablation per response and dense networks of matched active and total parameters.
fn variants(quick: bool) -> Vec<Variant> {
    let no_response = [
        "drift.boost_epsilon=0.0",
        "drift.restart_replay=false",
        "drift.reset_head=false",
    ];
    let mut variants = vec![
        Variant {
            name: "train",
            overrides: vec![],
        },
        Variant {
            name: "train_plain",
            overrides: no_response.iter().map(|s| s.to_string()).collect(),
        },
    ];
    if !quick {
        for (name, o) in [
            ("train_no_boost", "drift.boost_epsilon=0.0"),
            ("train_no_replay_restart", "drift.restart_replay=false"),
            ("train_no_head_reset", "drift.reset_head=false"),
            ("train_no_recall", "drift.recall=false"),
        ] {
            variants.push(Variant {
                name,
                overrides: vec![o.into()],
            });
        }
        let BlockConfig::Moe {
            d_hidden,
            n_experts,
            top_k,
            ..
        } = TrainConfig::default().network.blocks[0].clone()
        else {
            panic!("the default network is expected to be MoE");
        };
        let dense = |h: usize| format!("network.blocks=[{{kind=\"dense\", d_hidden={h}}}]");
        variants.push(Variant {
            name: "train_dense_equal_active",
            overrides: vec![dense(d_hidden * top_k)],
        });
        variants.push(Variant {
            name: "train_dense_equal_total",
            overrides: vec![dense(d_hidden * n_experts)],
        });
    }

    variants
}

/// Prints the summary table and writes `continual.json`.
fn report(results: &[serde_json::Value], phase: u64, seeds: u64, quick: bool) {
    println!(
        "\n{:<40} {:>8} {:>8} {:>8} {:>12}",
        "result", "median", "min", "max", "unrecovered"
    );
    for r in results {
        println!(
            "{:<40} {:>8.2} {:>8.2} {:>8.2} {:>12}",
            r["name"].as_str().unwrap_or(""),
            r["median"].as_f64().unwrap_or(f64::NAN),
            r["min"].as_f64().unwrap_or(f64::NAN),
            r["max"].as_f64().unwrap_or(f64::NAN),
            r["unrecovered_phases"]
        );
    }
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let doc = serde_json::json!({
        "area": "continual",
        "command": "cargo bench -p autodidact --bench continual",
        "machine": {"cpu": cpu_name(), "threads": threads},
        "world": "goal-regions, returning cycle A B A B C A",
        "phase_steps": phase,
        "seeds": seeds,
        "quick": quick,
        "results": results,
    });
    write_results("continual.json", &doc);
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
    // 10 k-step phases: a fresh agent learns a region in 2 k – 5 k steps, and the full run
    // (5 seeds, 8 variants) stays within the 20-minute budget.
    let phase = value("--phase").unwrap_or(10_000);

    let variants = variants(quick);

    println!(
        "goal-regions, cycle A B A B C A, {phase} steps per phase, {seeds} seeds; latency = steps \
         to {:.0} % of the way from {FLOOR} to the regime's fresh-start level (20-episode mean)",
        FRACTION * 100.0
    );
    println!(
        "\n{:<26} {:>4}  {:>7} {:>7} {:>7} {:>7} {:>7} {:>7}   (* = not recovered within the phase)",
        "variant", "seed", "A", "B", "A'", "B'", "C", "A''"
    );
    let mut results = Vec::new();
    // Fresh-start baselines per seed, shared by all variants of the same network.
    let mut fresh_by_net: std::collections::HashMap<String, Vec<FreshRun>> = Default::default();
    for v in &variants {
        let net: Vec<String> = v
            .overrides
            .iter()
            .filter(|o| o.starts_with("network."))
            .cloned()
            .collect();
        let key = net.join(" ");
        if !fresh_by_net.contains_key(&key) {
            let raw: Vec<_> = (0..seeds).map(|s| fresh(phase, s, &net)).collect();
            let per_seed = settle(&raw, phase);
            for (s, f) in per_seed.iter().enumerate() {
                let cell = |x: &(f64, u64, bool)| format!("{}{}", x.1, if x.2 { "" } else { "*" });
                println!(
                    "{:<26} {:>4}  {:>7} {:>7} {:>7}   (own levels {:.2} {:.2} {:.2})",
                    format!("fresh {}", if key.is_empty() { "moe" } else { "dense" }),
                    s,
                    cell(&f[0]),
                    cell(&f[1]),
                    cell(&f[2]),
                    raw[s][0].0,
                    raw[s][1].0,
                    raw[s][2].0
                );
            }
            fresh_by_net.insert(key.clone(), per_seed);
        }
        let fresh_runs = &fresh_by_net[&key];
        let (mut adapt, mut recall, mut unrecovered) = (Vec::new(), Vec::new(), 0usize);
        for seed in 0..seeds {
            let f = &fresh_runs[seed as usize];
            let lat = continual(phase, seed, &v.overrides, f);
            let cells: Vec<String> = lat
                .iter()
                .map(|(l, ok)| format!("{l}{}", if *ok { "" } else { "*" }))
                .collect();
            println!(
                "{:<26} {:>4}  {}",
                v.name,
                seed,
                cells
                    .iter()
                    .map(|c| format!("{c:>7}"))
                    .collect::<Vec<_>>()
                    .join(" ")
            );
            unrecovered += lat.iter().filter(|l| !l.1).count();
            // Ratios against the fresh agent of the same seed and regime, per run the median
            // over its phases of each kind.
            let ratio = |k: usize| lat[k].0 as f64 / f[CYCLE[k]].1.max(1) as f64;
            adapt.push(median(&[ratio(1), ratio(4)]));
            recall.push(median(&[ratio(2), ratio(3), ratio(5)]));
        }
        for (metric, samples) in [("adapt_ratio", &adapt), ("recall_ratio", &recall)] {
            results.push(serde_json::json!({
                "name": format!("{WORLD}/{}/{metric}", v.name),
                "unit": "ratio",
                "lower_is_better": true,
                "median": median(samples),
                "min": samples.iter().copied().fold(f64::INFINITY, f64::min),
                "max": samples.iter().copied().fold(f64::NEG_INFINITY, f64::max),
                "runs": samples.len(),
                "unrecovered_phases": unrecovered,
            }));
        }
    }

    report(&results, phase, seeds, quick);
}
