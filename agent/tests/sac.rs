//! Soft Actor-Critic with real parts: the native Pendulum (which refuses an action outside its
//! bounds), real SQLite replay files in temporary run directories, the real binary for `eval`
//! and `replay`, and the daemon with its gate.

mod common;

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use autodidact::config::TrainConfig;
use autodidact::daemon::{Daemon, DaemonConfig, DaemonOptions};
use autodidact::learners::{LearnerContext, LearnerKind};
use autodidact::policy::{ActMode, Policy};
use autodidact::sac::{Sac, SacPolicy};
use autodidact::train::{Hooks, RunSetup, TrainReport, train};
use autodidact_core::{HeadConfig, Module, Network, Precision, Snapshot, Tensor};
use autodidact_envs::{Action, Env, Space};
use autodidact_replay::{ReplayStore, StoreOptions};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_autodidact"))
}

/// A small, fast SAC run on Pendulum in lockstep (deterministic for a seed).
fn pendulum_overrides(steps: u64, seed: u64) -> Vec<String> {
    [
        format!("run.steps={steps}"),
        format!("run.seed={seed}"),
        "run.mode=lockstep".into(),
        "run.checkpoint_every=100000".into(),
        "run.eval_episodes=10".into(),
        "network.d_model=32".into(),
        "network.blocks=[{kind=\"moe\", d_hidden=32, n_experts=4, top_k=2}]".into(),
        "sac.batch_size=64".into(),
    ]
    .into_iter()
    .collect()
}

fn run_train(setup: RunSetup, stop: Arc<AtomicBool>, stop_at_first_eval: bool) -> TrainReport {
    let flag = stop.clone();
    let mut on_eval = move |_: &autodidact::train::EvalPoint| {
        if stop_at_first_eval {
            flag.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    };
    train(
        setup,
        Hooks {
            stop,
            on_progress: &mut |_| {},
            on_eval: &mut on_eval,
        },
    )
    .unwrap()
}

fn pendulum_run(dir: &Path, overrides: &[String]) -> TrainReport {
    let cfg = TrainConfig::load(None, overrides).unwrap();
    run_train(
        RunSetup::fresh("pendulum", cfg, dir).unwrap(),
        Arc::new(AtomicBool::new(false)),
        false,
    )
}

/// An untrained actor acts at about −1200 on Pendulum (greedy, 10 episodes); a few thousand
/// steps of SAC swing it up and hold it (measured: −150 to −250 after 3000 steps).
#[test]
fn sac_learns_pendulum_in_a_short_run() {
    let dir = tempfile::tempdir().unwrap();
    let r = pendulum_run(dir.path(), &pendulum_overrides(3_000, 0));
    let eval = r.final_eval.expect("a final evaluation");
    assert_eq!(
        r.learner.updates, 2_900,
        "replay ratio 1 after 100 warm-up steps"
    );
    assert!(
        eval.mean > -500.0,
        "greedy return {} after {} steps: SAC did not learn Pendulum",
        eval.mean,
        r.steps
    );

    // `autodidact replay` shows the run, and `eval` plays its champion greedily.
    let db = dir.path().join("replay.sqlite");
    let out = bin()
        .arg("replay")
        .arg(&db)
        .arg("summary")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("pendulum"), "{text}");
    // The actor's plasticity is recorded with every checkpoint, as DQN's is.
    let out = bin()
        .arg("replay")
        .arg(&db)
        .arg("plasticity")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("plasticity by model version"),
        "{text}"
    );
    let out = bin()
        .arg("replay")
        .arg(&db)
        .arg("episodes")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = bin()
        .args(["eval", "--episodes", "3", "--json", "--checkpoint"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(report["mean"].as_f64().unwrap() > -500.0, "{report}");

    // A SAC model in a discrete world is a clear error, not a crash.
    let (file, _) = autodidact::train::acting_checkpoint(dir.path()).unwrap();
    let out = bin()
        .args(["eval", "--env", "cartpole", "--checkpoint"])
        .arg(&file)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("sac") && err.contains("Box"), "{err}");
}

/// An actor whose outputs are enormous (tanh saturated at ±1, where rounding could step past a
/// bound) acts in a real Pendulum, which refuses any action outside [−2, 2], greedily and
/// exploring, without a single refusal; and in an asymmetric box, every action is inside.
#[test]
fn actions_never_leave_the_box() {
    let mut env = autodidact_envs::make("pendulum").unwrap();
    let space = env.action_space().clone();
    let net =
        autodidact::config::NetworkSection::default().build(3, HeadConfig::Linear { out_dim: 2 });
    let mut net = Network::new(net, 3).unwrap();
    net.visit_params_mut(&mut |p| {
        for v in p.value.data_mut() {
            *v *= 1e3;
        }
    });
    let snap = Snapshot::from_network(&net, Precision::F32).unwrap();
    let mut policy = SacPolicy::new(&space).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let mut saturated = 0;
    for (ep, mode) in [
        ActMode::Greedy,
        ActMode::Explore { level: 0.0 },
        ActMode::Explore { level: 0.5 },
        ActMode::Explore { level: 1.0 },
    ]
    .into_iter()
    .enumerate()
    {
        let (mut obs, _) = env.reset(Some(ep as u64)).unwrap();
        for _ in 0..200 {
            let acted = policy.act(&snap, &obs, mode, &mut rng).unwrap();
            let Action::Continuous(a) = &acted.action else {
                panic!("{:?}", acted.action)
            };
            saturated += usize::from(a[0].abs() == 2.0);
            let step = env
                .step(&acted.action)
                .expect("an action inside the bounds");
            if step.done() {
                break;
            }
            obs = step.obs;
        }
    }
    assert!(
        saturated > 100,
        "the test needs actions at the bounds ({saturated})"
    );

    let odd = Space::Box {
        low: vec![-0.1, 5.0],
        high: vec![0.3, 5.000_1],
        shape: vec![2],
    };
    let net =
        autodidact::config::NetworkSection::default().build(3, HeadConfig::Linear { out_dim: 4 });
    let mut net = Network::new(net, 4).unwrap();
    net.visit_params_mut(&mut |p| {
        for v in p.value.data_mut() {
            *v *= 1e3;
        }
    });
    let snap = Snapshot::from_network(&net, Precision::F32).unwrap();
    let mut policy = SacPolicy::new(&odd).unwrap();
    for i in 0..2_000 {
        let obs = [i as f32 * 0.37 - 300.0, (i as f32).sin() * 50.0, 1.0];
        let mode = match i % 3 {
            0 => ActMode::Greedy,
            1 => ActMode::Explore { level: 0.0 },
            _ => ActMode::Explore { level: 1.0 },
        };
        let acted = policy.act(&snap, &obs, mode, &mut rng).unwrap();
        assert!(odd.validate(&acted.action).is_ok(), "{:?}", acted.action);
    }

    // An unbounded Box is refused with a message saying what SAC needs.
    let unbounded = Space::Box {
        low: vec![f32::NEG_INFINITY],
        high: vec![f32::INFINITY],
        shape: vec![1],
    };
    assert!(!Sac.supports(&unbounded));
    let err = autodidact::learners::LearnerSection { kind: "sac".into() }
        .resolve(&unbounded)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("finite bounds"), "{err}");
}

fn context<'a>(
    cfg: &'a TrainConfig,
    kind: &dyn LearnerKind,
    obs_dim: usize,
    space: Space,
    store: &ReplayStore,
) -> LearnerContext<'a> {
    LearnerContext {
        configs: cfg.learners(),
        network: kind.network(&cfg.network, obs_dim, &space).unwrap(),
        network_section: cfg.network.clone(),
        obs_dim,
        action_space: space,
        sampler: store.sampler(),
        seed: 0,
        planned_updates: 10,
        precision: Precision::F32,
    }
}

/// A SAC checkpoint loaded as DQN, and a DQN checkpoint loaded as SAC, is refused, naming the
/// learner that wrote it.
#[test]
fn dqn_and_sac_checkpoints_are_not_mistaken_for_each_other() {
    let sac_run = tempfile::tempdir().unwrap();
    let mut o = pendulum_overrides(300, 0);
    o.push("sac.batch_size=16".into());
    pendulum_run(sac_run.path(), &o);
    let dqn_run = tempfile::tempdir().unwrap();
    let cfg = TrainConfig::load(
        None,
        &[
            "run.steps=300".into(),
            "run.mode=lockstep".into(),
            "run.eval_episodes=1".into(),
            "dqn.learning_starts=100".into(),
            "dqn.batch_size=16".into(),
        ],
    )
    .unwrap();
    run_train(
        RunSetup::fresh("cartpole", cfg.clone(), dqn_run.path()).unwrap(),
        Arc::new(AtomicBool::new(false)),
        false,
    );
    let stem = |dir: &Path| {
        let (file, _) = autodidact::train::acting_checkpoint(dir).unwrap();
        let s = file.to_string_lossy().to_string();
        std::path::PathBuf::from(s.strip_suffix(".safetensors").unwrap())
    };
    let scratch = tempfile::tempdir().unwrap();
    let store =
        ReplayStore::open(scratch.path().join("r.sqlite"), StoreOptions::default()).unwrap();
    let dqn = autodidact::learners::by_name("dqn").unwrap();

    // The SAC checkpoint as DQN (in a discrete world of Pendulum's observation width).
    let ctx = context(&cfg, dqn, 3, Space::Discrete { n: 2 }, &store);
    let err = dqn
        .load(ctx, &stem(sac_run.path()))
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("written by the sac learner"), "{err}");

    // The DQN checkpoint as SAC (in a Box world of CartPole's observation width).
    let boxed = Space::Box {
        low: vec![-1.0],
        high: vec![1.0],
        shape: vec![1],
    };
    let ctx = context(&cfg, &Sac, 4, boxed, &store);
    let err = Sac
        .load(ctx, &stem(dqn_run.path()))
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("written by the dqn learner"), "{err}");

    // An actor trained elsewhere is adopted with fresh critics and loads as a SAC learner;
    // a DQN network is refused by SAC's adopt.
    let pendulum = autodidact_envs::make("pendulum")
        .unwrap()
        .action_space()
        .clone();
    let sac_cfg = TrainConfig::load(None, &o).unwrap();
    let actor = autodidact_core::load_checkpoint(
        &autodidact::train::acting_checkpoint(sac_run.path())
            .unwrap()
            .0,
    )
    .unwrap()
    .network;
    let adopted = scratch.path().join("adopted");
    Sac.adopt(&actor, &adopted).unwrap();
    let ctx = context(&sac_cfg, &Sac, 3, pendulum, &store);
    let learner = Sac.load(ctx, &adopted).unwrap();
    assert_eq!(learner.metrics().updates, 0);
    let dqn_net = autodidact_core::load_checkpoint(
        &autodidact::train::acting_checkpoint(dqn_run.path())
            .unwrap()
            .0,
    )
    .unwrap()
    .network;
    let err = Sac
        .adopt(&dqn_net, &scratch.path().join("no"))
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("linear head"), "{err}");

    // And `eval` of the SAC run plays it with SAC's policy, the DQN run with DQN's.
    for dir in [sac_run.path(), dqn_run.path()] {
        let out = bin()
            .args(["eval", "--episodes", "1", "--checkpoint"])
            .arg(dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// Lockstep SAC is deterministic: a run stopped at its first evaluation and resumed stores the
/// same transitions and ends with the same actor, bit for bit, as an unbroken one (the
/// learner's noise stream, the temperature and its Adam moments are in the checkpoint).
#[test]
fn a_stopped_and_resumed_sac_run_reaches_the_same_place_as_an_unbroken_one() {
    let mut o = pendulum_overrides(1_000, 3);
    o.extend([
        "run.eval_every=500".to_string(),
        "run.eval_episodes=1".to_string(),
    ]);
    o.push("sac.batch_size=32".into());
    let cfg = TrainConfig::load(None, &o).unwrap();
    let unbroken = tempfile::tempdir().unwrap();
    let a = run_train(
        RunSetup::fresh("pendulum", cfg.clone(), unbroken.path()).unwrap(),
        Arc::new(AtomicBool::new(false)),
        false,
    );
    let broken = tempfile::tempdir().unwrap();
    let b1 = run_train(
        RunSetup::fresh("pendulum", cfg, broken.path()).unwrap(),
        Arc::new(AtomicBool::new(false)),
        true,
    );
    assert!(
        b1.interrupted && b1.steps >= 500 && b1.steps < 1_000,
        "{}",
        b1.steps
    );
    let b2 = run_train(
        RunSetup::resume(broken.path(), None, &[], false).unwrap(),
        Arc::new(AtomicBool::new(false)),
        false,
    );
    assert_eq!(
        (b2.steps, b2.episodes, b2.updates),
        (a.steps, a.episodes, a.updates)
    );

    let rows = |dir: &Path| {
        let store = ReplayStore::open_read_only(dir.join("replay.sqlite")).unwrap();
        let snap = store.snapshot().unwrap();
        let mut rows = Vec::new();
        for ep in snap.episodes(None).unwrap() {
            for t in snap.transitions(ep.id).unwrap() {
                rows.push(format!("{:?} {:?} {}", t.obs, t.action, t.reward.to_bits()));
            }
        }
        rows
    };
    let rows_a = rows(unbroken.path());
    assert_eq!(rows_a.len(), 1_000);
    assert!(
        rows_a == rows(broken.path()),
        "the resumed run stored different transitions"
    );
    assert!(rows_a[0].contains("Continuous"), "{}", rows_a[0]);

    let outputs = |dir: &Path| {
        let (file, _) = autodidact::train::acting_checkpoint(dir).unwrap();
        let net = autodidact_core::load_checkpoint(&file).unwrap().network;
        let snap = Snapshot::from_network(&net, Precision::F32).unwrap();
        let probe = Tensor::from_vec(vec![1.0, 0.0, 0.5, -0.3, 0.9, -4.0], &[2, 3]).unwrap();
        let mut out = Tensor::default();
        snap.forward(&probe, &mut out, &mut snap.scratch()).unwrap();
        out.data().iter().map(|v| v.to_bits()).collect::<Vec<_>>()
    };
    assert_eq!(outputs(unbroken.path()), outputs(broken.path()));
}

/// The daemon learns Pendulum with SAC (chosen by `auto`) and its gate judges candidates by
/// playing their deterministic actions.
#[test]
fn the_daemon_runs_sac_and_its_gate_judges_candidates() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = DaemonConfig::default();
    c.daemon.envs = vec!["pendulum".into()];
    c.http.enabled = false;
    c.network = TrainConfig::load(None, &pendulum_overrides(1, 0))
        .unwrap()
        .network;
    c.sac.batch_size = 32;
    c.gate.episodes = 4;
    c.daemon.candidate_every = 300;
    c.reflection.every_s = 0.0;
    let daemon = Daemon::start(DaemonOptions {
        config: c,
        run_dir: dir.path().join("run"),
        env_factory: None,
    })
    .unwrap();
    let t0 = Instant::now();
    let s = loop {
        let s = daemon.status().unwrap();
        assert!(daemon.failure().is_none(), "{:?}", daemon.failure());
        if s.promoted + s.rejected >= 1 {
            break s;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(90),
            "no gate decision: {s:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(s.updates >= 300, "{}", s.updates);
    daemon.shutdown().unwrap();
    let store = ReplayStore::open_read_only(dir.path().join("run/replay.sqlite")).unwrap();
    let gate = store.reflections(Some("gate"), 10).unwrap();
    assert!(!gate.is_empty(), "no gate reflection");
}
