//! The continual benchmark (issue 14): how fast `train` and the daemon re-adapt when their
//! world changes, how fast they recall a world mastered before, and what they forget, against
//! a fresh agent started at each switch.
//!
//! Worlds ([`worlds`]), each on the returning cycle A → B → A → B → C → A, `P` steps per phase,
//! the regime hidden from the agent and changing only at a reset:
//! - `goal_regions`: `goal-regions:cycle:<P>`, a point looking for a goal region that moves;
//! - `cartpole_reversal`: `cartpole-regimes:cycle:<P>`, CartPole with the motor reversed in B
//!   and a long heavy pole in C;
//! - `bandit`: `bandit-regimes:cycle:<P>`, a 10-armed bandit with another best arm per regime;
//! - `goal_regions_exec`: the goal-regions cycle served by `autodidact serve-env` over `exec:`,
//!   to show nothing depends on a world being native. It is the same world, so its fresh-start
//!   baseline is goal_regions' own (computed once, natively, and shared).
//!
//! Phases 1 and 4 bring a regime for the first time (adaptation); phases 2, 3 and 5 bring one
//! back (recall).
//!
//! Latency of a phase: steps from the switch until the mean return of the last 20 training
//! episodes begun in the phase reaches 90 % of the way from the world's floor to the regime's
//! fresh-start level (the mean of the last 20 episodes of a fresh agent trained for `P` steps
//! on that regime alone, median over seeds). The floor is the world's worst return where it
//! has one (goal regions: −1, every episode timing out); CartPole and the bandit have none, so
//! their floor is scale free: per regime, the mean return of the uniform-random policy over
//! 100 episodes ([`Floor::Random`]). A phase that never gets there counts
//! as its whole length and is reported as not recovered. The fresh-start latency is the same
//! measurement on the fresh agent.
//!
//! Metrics per world and variant (median over seeds):
//! - `adapt_ratio`, `recall_ratio`: latency ÷ the fresh agent's latency (same seed, regime);
//! - `recovery_trend`: latency of the last recall of A (phase 6) ÷ that of the first (phase
//!   3); below 1 means recovery got faster across repeated switches;
//! - `forgetting`: for B and C, the greedy return (20 episodes) of the run's final model on
//!   the regime alone, against the greedy return of the model checkpointed at the end of the
//!   regime's last own phase (the run checkpoints every `P` steps), as a share of
//!   (fresh level − floor); the mean over B and C. A is left out: its last phase is the run's
//!   last, so its two models are the same. Positive = forgotten;
//! - `auc`: the mean normalised return over the whole stream, (return − floor) ÷ (fresh level
//!   − floor) of each episode's regime, each episode weighted by its length (the area under
//!   the return curve over steps ÷ the steps); 1.0 = at the fresh level throughout.
//!
//! Variants, all in one run: on goal_regions the defaults (every response to a change on),
//! plain continued training (no response at all), one ablation per response (exploration
//! boost, replay restart, head reset, recall) and dense networks of matched active and
//! matched total parameters; on the other worlds the defaults and plain training.
//!
//! The daemon ([`Command::Daemon`], one actor, its defaults) runs where the world can be
//! switched on command (`goal_regions`, `cartpole_reversal`): its gate plays in a world of its
//! own, which a per-instance step schedule would leave behind, so the bench switches one
//! control at each phase's step count ([`daemon_stream`]). Its rows: `daemon`, and on
//! goal_regions `daemon_plain`, `daemon_no_recall` and `daemon_reflect_every_1s` (a reflection
//! pass, reanalyse then lessons, every second: at bench speed the default minute is a whole
//! run, so `daemon` is the row without reflection). Its ratios use `train`'s fresh agent as
//! the reference; `first_ratio` (phase A ÷ the fresh agent on A) shows how fast each command
//! learns a world from scratch.
//!
//! `cargo bench -p autodidact --bench continual [-- --quick] [--world NAME] [--seeds N]
//! [--phase STEPS] [--fresh-only]` writes `target/autodidact-bench/continual.json`.

mod common;
#[path = "common/daemon_stream.rs"]
mod daemon_stream;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use autodidact::config::TrainConfig;
use autodidact::daemon::EnvFactory;
use autodidact::train::{Hooks, RunSetup, train};
use autodidact_core::BlockConfig;
use autodidact_envs::wrappers::TimeLimit;
use autodidact_envs::{
    CartPoleControl, CartPoleSchedule, Env, GoalControl, GoalRegions, GoalSchedule,
    NonStationaryCartPole, nonstationary::cartpole_regime,
};
use common::{cpu_name, median, write_results};

/// The regimes of the returning cycle, phase by phase (as `GoalSchedule::returning_cycle`).
const CYCLE: [usize; 6] = [0, 1, 0, 1, 2, 0];
/// Regime letters, by index.
const LETTERS: [char; 3] = ['A', 'B', 'C'];
/// Episodes whose mean return judges a phase (and, at a fresh start, sets a scale-free floor).
const JUDGED: usize = 20;
/// Share of the way from the floor to the fresh-start level that counts as adapted.
const FRACTION: f64 = 0.9;
/// Greedy episodes per forgetting evaluation.
const EVAL_EPISODES: usize = 20;
/// Seed of the first greedy evaluation episode: apart from every training seed.
const EVAL_SEED: u64 = 1_000_000;

/// Episodes of the uniform-random policy that set a [`Floor::Random`] floor.
const FLOOR_EPISODES: usize = 100;

/// Where a world's returns count as "learned nothing".
#[derive(Clone, Copy, Debug)]
enum Floor {
    /// The world's own worst return (goal regions: −1, every episode timing out).
    Fixed(f64),
    /// Per regime, the mean return of the uniform-random policy over [`FLOOR_EPISODES`]
    /// episodes, for worlds without a worst return. Not the fresh agent's first 20 episodes:
    /// on the bandit those already earn about half the fresh level (measured: 47 – 56 against
    /// a random policy's 10 and a learned 95), so they are no floor.
    Random,
}

/// Per regime, the floor of `world`.
fn floors(world: &World) -> [f64; 3] {
    match world.floor {
        Floor::Fixed(f) => [f; 3],
        Floor::Random => [0, 1, 2].map(|r| {
            let id = format!("{}{}", world.fresh_prefix, LETTERS[r]);
            let mut e = autodidact::fault::make_env(&id).expect("floor world");
            let report = autodidact::rollout::rollout(
                &id,
                e.as_mut(),
                autodidact::rollout::Policy::Random,
                FLOOR_EPISODES,
                EVAL_SEED,
                |_, _| {},
            )
            .expect("random rollout");
            let _ = e.close();
            report.mean
        }),
    }
}

/// A world of the benchmark.
struct World {
    /// Name in result names.
    name: &'static str,
    /// ID prefix of the fixed-regime world the fresh baselines and the forgetting evaluations
    /// run on: `<prefix><letter>`.
    fresh_prefix: String,
    /// ID prefix of the continual run: `<prefix>cycle:<P>`.
    cycle_prefix: String,
    /// Phase length `P` without `--phase`.
    phase: u64,
    /// Seeds without `--seeds` (quick / full).
    seeds: (u64, u64),
    floor: Floor,
    /// Every variant (ablations, dense networks) or only `train` and `train_plain`.
    all_variants: bool,
    /// For the daemon: worlds whose regime follows one control, and how to set it (`None`:
    /// the daemon does not run on this world).
    controlled: Option<fn() -> Controlled>,
}

/// Worlds switched on command, for the daemon: the factory and the switch.
type Controlled = (EnvFactory, Box<dyn Fn(usize)>);

/// Goal-regions worlds following one [`GoalControl`].
fn goal_regions_controlled() -> Controlled {
    let regions = GoalRegions::new(GoalSchedule::Constant(0))
        .expect("goal regions")
        .control()
        .regimes();
    let control = GoalControl::new(regions).expect("goal control");
    let c = control.clone();
    let factory: EnvFactory = Arc::new(move |_id: &str| {
        let w = GoalRegions::new(GoalSchedule::Constant(0))?.with_control(c.clone())?;
        Ok(Box::new(TimeLimit::new(w, 100)?) as Box<dyn Env>)
    });
    (
        factory,
        Box::new(move |r| control.set(r).expect("a known regime")),
    )
}

/// CartPoles following one [`CartPoleControl`], the regimes of `cartpole-regimes:`.
fn cartpole_controlled() -> Controlled {
    let control = CartPoleControl::default();
    let c = control.clone();
    let factory: EnvFactory = Arc::new(move |_id: &str| {
        let w = NonStationaryCartPole::new(CartPoleSchedule::Constant)?.with_control(c.clone())?;
        Ok(Box::new(TimeLimit::new(w, 500)?) as Box<dyn Env>)
    });
    (
        factory,
        Box::new(move |r| control.set(cartpole_regime(r).expect("a known regime"))),
    )
}

/// The worlds, in run order.
fn worlds() -> Vec<World> {
    vec![
        World {
            name: "goal_regions",
            fresh_prefix: "goal-regions:".into(),
            cycle_prefix: "goal-regions:".into(),
            // A fresh agent learns a region in 2 k – 7 k steps.
            phase: 10_000,
            seeds: (2, 5),
            floor: Floor::Fixed(-1.0),
            all_variants: true,
            controlled: Some(goal_regions_controlled),
        },
        World {
            name: "cartpole_reversal",
            fresh_prefix: "cartpole-regimes:".into(),
            cycle_prefix: "cartpole-regimes:".into(),
            // Fresh agents need 10 k – 28 k steps per regime (C, the long heavy pole, the
            // slowest), so a phase of 40 k leaves room.
            phase: 40_000,
            // Its runs are the longest (240 k steps): one seed in `--quick` keeps that within
            // about 5 minutes.
            seeds: (1, 3),
            floor: Floor::Random,
            all_variants: false,
            controlled: Some(cartpole_controlled),
        },
        World {
            name: "bandit",
            fresh_prefix: "bandit-regimes:".into(),
            cycle_prefix: "bandit-regimes:".into(),
            // Fresh agents need 2.8 k – 3.1 k pulls per regime.
            phase: 8_000,
            seeds: (2, 5),
            floor: Floor::Random,
            all_variants: false,
            controlled: None,
        },
        World {
            name: "goal_regions_exec",
            fresh_prefix: "goal-regions:".into(),
            cycle_prefix: format!(
                "exec:{} serve-env goal-regions:",
                env!("CARGO_BIN_EXE_autodidact")
            ),
            phase: 10_000,
            seeds: (2, 3),
            floor: Floor::Fixed(-1.0),
            all_variants: false,
            controlled: None,
        },
    ]
}

/// What runs the agent.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Command {
    /// `train` on the world's cycle ID (lockstep).
    Train,
    /// The daemon (one actor) on the world's controlled form, switched by the bench at each
    /// phase's step count ([`daemon_stream`]).
    Daemon,
}

struct Variant {
    name: &'static str,
    command: Command,
    overrides: Vec<String>,
}

/// Episode lengths and returns of a finished run, from its replay file.
fn episodes(run_dir: &Path) -> Vec<(u64, f64)> {
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

/// The run's checkpointed models as `(steps at the checkpoint, file)`, from the model
/// registry of its replay file (every command registers its models there).
fn checkpoints(run_dir: &Path) -> Vec<(u64, std::path::PathBuf)> {
    let db = rusqlite::Connection::open_with_flags(
        run_dir.join("replay.sqlite"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .expect("replay file");
    let mut st = db
        .prepare("SELECT checkpoint_path, metrics FROM models ORDER BY version")
        .expect("query");
    st.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))
        .expect("models")
        .map(|r| {
            let (path, metrics) = r.expect("model row");
            let m: serde_json::Value = serde_json::from_str(&metrics).expect("model metrics");
            let steps = m["env_steps"]
                .as_u64()
                .expect("env_steps in the model metrics");
            let p = Path::new(&path);
            (
                steps,
                if p.is_absolute() {
                    p.to_path_buf()
                } else {
                    run_dir.join(p)
                },
            )
        })
        .collect()
}

/// Runs `train` on `env` for `steps` with `overrides` in `dir`; returns its episodes. The run
/// directory stays for its checkpoints.
fn run_train(
    env: &str,
    steps: u64,
    seed: u64,
    overrides: &[String],
    dir: &Path,
) -> Vec<(u64, f64)> {
    let mut o = overrides.to_vec();
    o.extend([
        format!("run.steps={steps}"),
        format!("run.seed={seed}"),
        "run.mode=\"lockstep\"".into(),
        "run.eval_every=0".into(),
    ]);
    let cfg = TrainConfig::load(None, &o).expect("bench config");
    train(
        RunSetup::fresh(env, cfg, dir).expect("run setup"),
        Hooks {
            stop: Arc::new(AtomicBool::new(false)),
            on_progress: &mut |_| {},
            on_eval: &mut |_| {},
        },
    )
    .expect("training run");
    episodes(dir)
}

/// Runs `command`; see [`run_train`].
fn run(
    command: Command,
    env: &str,
    steps: u64,
    seed: u64,
    o: &[String],
    dir: &Path,
) -> Vec<(u64, f64)> {
    match command {
        Command::Train => run_train(env, steps, seed, o, dir),
        Command::Daemon => panic!("the daemon runs on controlled worlds only (see `continual`)"),
    }
}

/// Mean greedy return of the model in `file` on `env` over [`EVAL_EPISODES`] episodes.
fn greedy(file: &Path, env: &str) -> f64 {
    let loaded = autodidact_core::load_checkpoint(file).expect("checkpoint");
    let snapshot =
        autodidact_core::Snapshot::from_network(&loaded.network, autodidact_core::Precision::F32)
            .expect("snapshot");
    let mut e = autodidact::fault::make_env(env).expect("evaluation world");
    let kind = autodidact::learners::of_checkpoint(&loaded.extra).expect("learner kind");
    let mut policy = kind.policy(e.action_space()).expect("policy");
    let r = autodidact::eval::evaluate(
        e.as_mut(),
        policy.as_mut(),
        &snapshot,
        EVAL_EPISODES,
        EVAL_SEED,
    )
    .expect("greedy evaluation");
    let _ = e.close();
    r.mean
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

/// Mean return of `eps`' first (`head`) or last [`JUDGED`] episodes.
fn mean_of(eps: &[(u64, f64)], head: bool) -> f64 {
    let n = eps.len().min(JUDGED);
    let part = if head {
        &eps[..n]
    } else {
        &eps[eps.len() - n..]
    };
    part.iter().map(|e| e.1).sum::<f64>() / n.max(1) as f64
}

/// A fresh agent on one regime: `(mean of its first episodes, level, timeline)`.
type FreshRaw = (f64, f64, Vec<(u64, u64, f64)>);

/// Trains a fresh agent for `phase` steps on each regime alone.
fn fresh(world: &World, phase: u64, seed: u64, overrides: &[String]) -> Vec<FreshRaw> {
    LETTERS
        .iter()
        .map(|letter| {
            let dir = tempfile::tempdir().expect("temporary run directory");
            let id = format!("{}{letter}", world.fresh_prefix);
            let eps = run(Command::Train, &id, phase, seed, overrides, dir.path());
            (mean_of(&eps, true), mean_of(&eps, false), timeline(&eps))
        })
        .collect()
}

/// The fresh-start reference of a world and network: per regime the level and floor (medians
/// over seeds), and per seed and regime `(latency or the phase length, learned within it)`.
struct Fresh {
    level: [f64; 3],
    floor: [f64; 3],
    runs: Vec<[(u64, bool); 3]>,
}

impl Fresh {
    /// The threshold of regime `r`.
    fn threshold(&self, r: usize) -> f64 {
        self.floor[r] + FRACTION * (self.level[r] - self.floor[r])
    }

    /// `ret` as a share of the way from the floor to the fresh level of regime `r`.
    fn normalised(&self, r: usize, ret: f64) -> f64 {
        (ret - self.floor[r]) / (self.level[r] - self.floor[r])
    }
}

/// Each regime's fresh-start level is the median over seeds (a seed whose fresh agent never
/// learned the regime would otherwise set a threshold at the floor, met at once); each seed's
/// fresh latency is then measured against that level's threshold, the phase length if never.
fn settle(raw: &[Vec<FreshRaw>], phase: u64, floor: [f64; 3]) -> Fresh {
    let per = |f: fn(&FreshRaw) -> f64| -> [f64; 3] {
        [0, 1, 2].map(|r| median(&raw.iter().map(|s| f(&s[r])).collect::<Vec<_>>()))
    };
    let level = per(|x| x.1);
    let mut fresh = Fresh {
        level,
        floor,
        runs: Vec::new(),
    };
    fresh.runs = raw
        .iter()
        .map(|s| {
            [0, 1, 2].map(|r| {
                let lat = latency(&s[r].2, 0, phase, fresh.threshold(r));
                (lat.unwrap_or(phase), lat.is_some())
            })
        })
        .collect();
    fresh
}

/// What one continual run measured.
struct Measured {
    /// Per phase `(latency or the phase length, recovered)`.
    latency: Vec<(u64, bool)>,
    /// Mean over B and C of the normalised greedy return lost from the end of the regime's
    /// last own phase to the end of the run.
    forgetting: f64,
    /// Length-weighted mean normalised return of the whole stream.
    auc: f64,
}

/// One continual run of `v` on `world`, measured against `fresh`.
fn continual(world: &World, phase: u64, seed: u64, v: &Variant, fresh: &Fresh) -> Measured {
    let dir = tempfile::tempdir().expect("temporary run directory");
    let total = phase * CYCLE.len() as u64;
    let mut o = v.overrides.clone();
    let eps = match v.command {
        Command::Train => {
            // A model at each phase's end (the first episode end past it), for forgetting.
            o.push(format!("run.checkpoint_every={phase}"));
            run(
                v.command,
                &format!("{}cycle:{phase}", world.cycle_prefix),
                total,
                seed,
                &o,
                dir.path(),
            )
        }
        Command::Daemon => {
            // Its candidates are its models; keep every file for the forgetting evaluation.
            o.push("daemon.keep_checkpoints=100000".into());
            let (factory, set) = world.controlled.expect("a controlled world")();
            daemon_stream::run_daemon(dir.path(), factory, &*set, &CYCLE, phase, seed, &o).0
        }
    };
    let t = timeline(&eps);
    let latency = CYCLE
        .iter()
        .enumerate()
        .map(|(k, &regime)| {
            let start = k as u64 * phase;
            let lat = latency(&t, start, start + phase, fresh.threshold(regime));
            (lat.unwrap_or(phase), lat.is_some())
        })
        .collect();

    let regime_at = |step: u64| CYCLE[((step / phase) % CYCLE.len() as u64) as usize];
    let steps: u64 = t.iter().map(|e| e.1 - e.0).sum();
    let auc = t
        .iter()
        .map(|&(s0, s1, r)| (s1 - s0) as f64 * fresh.normalised(regime_at(s0), r))
        .sum::<f64>()
        / steps.max(1) as f64;

    let models = checkpoints(dir.path());
    let final_model = &models.last().expect("a final checkpoint").1;
    let lost: Vec<f64> = [1usize, 2]
        .iter()
        .map(|&r| {
            let last_phase = CYCLE
                .iter()
                .rposition(|&x| x == r)
                .expect("regime in the cycle");
            let end = (last_phase as u64 + 1) * phase;
            let at_end = &models
                .iter()
                .find(|m| m.0 >= end)
                .expect("a checkpoint at the phase's end")
                .1;
            let id = format!("{}{}", world.fresh_prefix, LETTERS[r]);
            let (then, now) = (greedy(at_end, &id), greedy(final_model, &id));
            fresh.normalised(r, then) - fresh.normalised(r, now)
        })
        .collect();
    Measured {
        latency,
        forgetting: lost.iter().sum::<f64>() / lost.len() as f64,
        auc,
    }
}

/// The variants the run compares: the defaults and plain training; with `all` and without
/// `--quick` also one ablation per response and dense networks of matched active and total
/// parameters.
fn variants(quick: bool, all: bool, daemon: bool) -> Vec<Variant> {
    let no_response = [
        "drift.boost_epsilon=0.0",
        "drift.restart_replay=false",
        "drift.reset_head=false",
    ];
    let train = |name, overrides| Variant {
        name,
        command: Command::Train,
        overrides,
    };
    let mut variants = vec![
        train("train", vec![]),
        train(
            "train_plain",
            no_response.iter().map(|s| s.to_string()).collect(),
        ),
    ];
    if daemon {
        let d = |name, overrides| Variant {
            name,
            command: Command::Daemon,
            overrides,
        };
        variants.push(d("daemon", vec![]));
        // The daemon's plain and ablation rows on the worlds with every variant only (time).
        if all {
            variants.push(d(
                "daemon_plain",
                no_response.iter().map(|s| s.to_string()).collect(),
            ));
        }
        if !quick && all {
            variants.push(d("daemon_no_recall", vec!["drift.recall=false".into()]));
            // A reflection pass (reanalyse, lessons) every second instead of every minute:
            // at bench speed a minute is tens of thousands of steps, so the default hardly
            // ever runs one.
            // (The defaults are then the row without reflection.)
            variants.push(d(
                "daemon_reflect_every_1s",
                vec!["reflection.every_s=1.0".into()],
            ));
        }
    }
    if !quick && all {
        for (name, o) in [
            ("train_no_boost", "drift.boost_epsilon=0.0"),
            ("train_no_replay_restart", "drift.restart_replay=false"),
            ("train_no_head_reset", "drift.reset_head=false"),
            ("train_no_recall", "drift.recall=false"),
        ] {
            variants.push(train(name, vec![o.into()]));
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
        variants.push(train(
            "train_dense_equal_active",
            vec![dense(d_hidden * top_k)],
        ));
        variants.push(train(
            "train_dense_equal_total",
            vec![dense(d_hidden * n_experts)],
        ));
    }
    variants
}

/// One result row in the shared format, plus the fields given in `extra`.
fn result(
    name: String,
    unit: &str,
    lower_is_better: bool,
    samples: &[f64],
    extra: serde_json::Value,
) -> serde_json::Value {
    let mut v = serde_json::json!({
        "name": name,
        "unit": unit,
        "lower_is_better": lower_is_better,
        "median": median(samples),
        "min": samples.iter().copied().fold(f64::INFINITY, f64::min),
        "max": samples.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        "runs": samples.len(),
    });
    if let (Some(m), serde_json::Value::Object(e)) = (v.as_object_mut(), extra) {
        m.extend(e);
    }
    v
}

/// Prints the summary table and writes `continual.json`.
fn report(results: &[serde_json::Value], worlds: &[serde_json::Value], quick: bool) {
    println!(
        "\n{:<50} {:>8} {:>8} {:>8} {:>12}",
        "result", "median", "min", "max", "unrecovered"
    );
    for r in results {
        println!(
            "{:<50} {:>8.2} {:>8.2} {:>8.2} {:>12}",
            r["name"].as_str().unwrap_or(""),
            r["median"].as_f64().unwrap_or(f64::NAN),
            r["min"].as_f64().unwrap_or(f64::NAN),
            r["max"].as_f64().unwrap_or(f64::NAN),
            r.get("unrecovered_phases")
                .map_or(String::new(), |u| u.to_string())
        );
    }
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let doc = serde_json::json!({
        "area": "continual",
        "command": "cargo bench -p autodidact --bench continual",
        "machine": {"cpu": cpu_name(), "threads": threads},
        "cycle": "A B A B C A",
        "worlds": worlds,
        "quick": quick,
        "results": results,
    });
    write_results("continual.json", &doc);
}

/// Fresh-start references already computed, by fixed-world prefix, phase and network.
type FreshCache = HashMap<(String, u64, String), Fresh>;

/// The fresh-start reference of `world` for the network overrides `net` (`dense`: not the
/// default MoE), `seeds` fresh agents per regime; prints each seed's latencies and levels.
fn fresh_reference(
    world: &World,
    phase: u64,
    seeds: u64,
    net: &[String],
    dense: bool,
    started: std::time::Instant,
) -> Fresh {
    let raw: Vec<_> = (0..seeds).map(|s| fresh(world, phase, s, net)).collect();
    let f = settle(&raw, phase, floors(world));
    for (s, run) in f.runs.iter().enumerate() {
        let cell = |x: &(u64, bool)| format!("{}{}", x.0, if x.1 { "" } else { "*" });
        println!(
            "{:<26} {:>4}  {:>7} {:>7} {:>7}   (own levels {:.2} {:.2} {:.2}; first 20 \
             episodes {:.2} {:.2} {:.2})",
            format!("fresh {}", if dense { "dense" } else { "moe" }),
            s,
            cell(&run[0]),
            cell(&run[1]),
            cell(&run[2]),
            raw[s][0].1,
            raw[s][1].1,
            raw[s][2].1,
            raw[s][0].0,
            raw[s][1].0,
            raw[s][2].0,
        );
    }
    println!(
        "{:<26}       levels {:.2} {:.2} {:.2}, floors {:.2} {:.2} {:.2}  ({:.0} s so far)",
        "fresh (median of seeds)",
        f.level[0],
        f.level[1],
        f.level[2],
        f.floor[0],
        f.floor[1],
        f.floor[2],
        started.elapsed().as_secs_f64()
    );
    f
}

/// Runs every variant of `world`; appends its results.
fn bench_world(
    world: &World,
    quick: bool,
    seeds: u64,
    phase: u64,
    fresh_only: bool,
    cache: &mut FreshCache,
    results: &mut Vec<serde_json::Value>,
) -> serde_json::Value {
    let started = std::time::Instant::now();
    println!(
        "\n== {}: `{}cycle:{phase}`, cycle A B A B C A, {phase} steps per phase, {seeds} seeds; \
         latency = steps to {:.0} % of the way from the floor to the regime's fresh-start level \
         (20-episode mean)",
        world.name,
        world.cycle_prefix,
        FRACTION * 100.0
    );
    println!(
        "\n{:<26} {:>4}  {:>7} {:>7} {:>7} {:>7} {:>7} {:>7}  {:>7} {:>7}   (* = not recovered within the phase)",
        "variant", "seed", "A", "B", "A'", "B'", "C", "A''", "forget", "auc"
    );
    let vs = variants(quick, world.all_variants, world.controlled.is_some());
    let vs = if fresh_only { &vs[..1] } else { &vs[..] };
    let mut levels = serde_json::Map::new();
    for v in vs {
        let net: Vec<String> = v
            .overrides
            .iter()
            .filter(|o| o.starts_with("network."))
            .cloned()
            .collect();
        let key = (world.fresh_prefix.clone(), phase, net.join(" "));
        // A reference with fewer seeds than this world runs is not enough; more is fine.
        if cache
            .get(&key)
            .is_none_or(|f| (f.runs.len() as u64) < seeds)
        {
            let f = fresh_reference(world, phase, seeds, &net, !key.2.is_empty(), started);
            cache.insert(key.clone(), f);
        }
        let fresh = &cache[&key];
        if key.2.is_empty() {
            levels.insert("fresh_level".into(), serde_json::json!(fresh.level));
            levels.insert("floor".into(), serde_json::json!(fresh.floor));
        }
        if fresh_only {
            continue;
        }
        let (mut adapt, mut recall, mut trend, mut forget, mut auc, mut first) = (
            Vec::new(),
            Vec::new(),
            Vec::new(),
            Vec::new(),
            Vec::new(),
            Vec::new(),
        );
        let mut unrecovered = 0usize;
        for seed in 0..seeds {
            let f = &fresh.runs[seed as usize];
            let m = continual(world, phase, seed, v, fresh);
            let lat = &m.latency;
            let cells: Vec<String> = lat
                .iter()
                .map(|(l, ok)| format!("{l:>7}{}", if *ok { "" } else { "*" }))
                .collect();
            println!(
                "{:<26} {:>4}  {}  {:>7.2} {:>7.2}",
                v.name,
                seed,
                cells.join(" "),
                m.forgetting,
                m.auc
            );
            unrecovered += lat.iter().filter(|l| !l.1).count();
            // Ratios against the fresh agent of the same seed and regime, per run the median
            // over its phases of each kind.
            let ratio = |k: usize| lat[k].0 as f64 / f[CYCLE[k]].0.max(1) as f64;
            first.push(ratio(0));
            adapt.push(median(&[ratio(1), ratio(4)]));
            recall.push(median(&[ratio(2), ratio(3), ratio(5)]));
            trend.push(lat[5].0 as f64 / lat[2].0.max(1) as f64);
            forget.push(m.forgetting);
            auc.push(m.auc);
        }
        let name = |metric: &str| format!("{}/{}/{metric}", world.name, v.name);
        let unrec = serde_json::json!({"unrecovered_phases": unrecovered});
        results.push(result(
            name("adapt_ratio"),
            "ratio",
            true,
            &adapt,
            unrec.clone(),
        ));
        results.push(result(name("recall_ratio"), "ratio", true, &recall, unrec));
        results.push(result(
            name("first_ratio"),
            "ratio",
            true,
            &first,
            serde_json::json!({}),
        ));
        results.push(result(
            name("recovery_trend"),
            "ratio",
            true,
            &trend,
            serde_json::json!({}),
        ));
        results.push(result(
            name("forgetting"),
            "share of fresh level",
            true,
            &forget,
            serde_json::json!({"regimes": ["B", "C"]}),
        ));
        results.push(result(
            name("auc"),
            "share of fresh level",
            false,
            &auc,
            serde_json::json!({}),
        ));
    }
    let seconds = started.elapsed().as_secs_f64();
    println!("{}: {seconds:.0} s", world.name);
    let mut w = serde_json::json!({
        "name": world.name,
        "env": format!("{}cycle:{phase}", world.cycle_prefix),
        "phase_steps": phase,
        "seeds": seeds,
        "floor": match world.floor {
            Floor::Fixed(f) => format!("fixed {f}"),
            Floor::Random => format!("uniform-random policy, {FLOOR_EPISODES} episodes"),
        },
        "seconds": seconds,
    });
    if let Some(m) = w.as_object_mut() {
        m.extend(levels);
    }
    w
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let flag = |f: &str| args.iter().any(|a| a == f);
    let text = |f: &str| {
        args.iter()
            .position(|a| a == f)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let value = |f: &str| text(f).and_then(|v| v.parse::<u64>().ok());
    let quick = flag("--quick");
    let fresh_only = flag("--fresh-only");
    let only = text("--world");
    let all = worlds();
    if let Some(w) = &only {
        assert!(
            all.iter().any(|x| x.name == w),
            "--world {w}: not one of {:?}",
            all.iter().map(|x| x.name).collect::<Vec<_>>()
        );
    }

    let mut results = Vec::new();
    let mut described = Vec::new();
    let mut cache = FreshCache::new();
    for world in all
        .iter()
        .filter(|w| only.as_ref().is_none_or(|o| o == w.name))
    {
        let seeds = value("--seeds").unwrap_or(if quick { world.seeds.0 } else { world.seeds.1 });
        let phase = value("--phase").unwrap_or(world.phase);
        described.push(bench_world(
            world,
            quick,
            seeds,
            phase,
            fresh_only,
            &mut cache,
            &mut results,
        ));
    }
    report(&results, &described, quick);
}
