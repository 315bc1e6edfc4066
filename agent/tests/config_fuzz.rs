//! The config parser against random input (issue 12): random `--set key=value` overrides and
//! random files, through `TrainConfig::load` and `DaemonConfig::load`. No panic, no abort, no
//! hang; whatever loads is inside every documented range.

use std::time::{Duration, Instant};

use autodidact::bounds::{MAX_REPLAY_CAPACITY, MAX_STEPS, MAX_WIDTH};
use autodidact::config::TrainConfig;
use autodidact::daemon::DaemonConfig;
use proptest::prelude::*;

/// Keys of both configs, valid and near-valid.
const KEYS: &[&str] = &[
    "run.steps",
    "run.seed",
    "run.checkpoint_every",
    "run.eval_every",
    "run.eval_episodes",
    "run.max_lead_steps",
    "run.learner_threads",
    "run.mode",
    "network.d_model",
    "network.obs_clip",
    "network.blocks",
    "replay.capacity",
    "replay.max_stored_transitions",
    "replay.max_episode_steps",
    "replay.durability",
    "dqn.lr",
    "dqn.gamma",
    "dqn.n_step",
    "dqn.batch_size",
    "dqn.replay_ratio",
    "dqn.per_alpha",
    "dqn.tau",
    "daemon.actors",
    "daemon.candidate_every",
    "daemon.keep_checkpoints",
    "daemon.shutdown_timeout_s",
    "gate.episodes",
    "gate.margin_abs",
    "drift.returns.reference",
    "drift.observations.lambda",
    "reflection.every_s",
    "reflection.lessons_sample",
    "reflection.keep_reflections",
    "http.bind",
    "nonsense",
    "",
    "run",
    "dqn..lr",
];

fn value() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<i64>().prop_map(|v| v.to_string()),
        any::<u64>().prop_map(|v| v.to_string()),
        any::<f64>().prop_map(|v| format!("{v:e}")),
        Just("nan".to_string()),
        Just("inf".to_string()),
        Just("-inf".to_string()),
        Just("2e18".to_string()),
        Just("18446744073709551615".to_string()),
        Just("[{kind=\"moe\", d_hidden=65536, n_experts=1024, top_k=1024}]".to_string()),
        Just("[{kind=\"dense\", d_hidden=0}]".to_string()),
        Just("{}".to_string()),
        Just("\"lockstep\"".to_string()),
        ".{0,40}",
    ]
}

fn overrides() -> impl Strategy<Value = Vec<String>> {
    prop::collection::vec(
        (prop::sample::select(KEYS), value()).prop_map(|(k, v)| format!("{k}={v}")),
        0..6,
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn train_config_never_panics_and_loads_only_sane_values(set in overrides()) {
        let t0 = Instant::now();
        if let Ok(c) = TrainConfig::load(None, &set) {
            prop_assert!(c.validate().is_ok());
            prop_assert!((1..=MAX_STEPS).contains(&c.run.steps));
            prop_assert!(c.replay.capacity as u64 <= MAX_REPLAY_CAPACITY);
            prop_assert!(c.network.d_model as u64 <= MAX_WIDTH);
            prop_assert!(c.replay.episode_cap() <= c.replay.capacity as u64);
            prop_assert!(c.dqn.lr.is_finite());
        }
        prop_assert!(t0.elapsed() < Duration::from_secs(10), "loading took {:?}", t0.elapsed());
    }

    #[test]
    fn daemon_config_never_panics_and_loads_only_sane_values(set in overrides()) {
        if let Ok(c) = DaemonConfig::load(None, &set) {
            prop_assert!(c.validate().is_ok());
            prop_assert!(c.gate.episodes <= 10_000);
            prop_assert!(c.daemon.shutdown_timeout_s.is_finite());
            prop_assert!(c.reflection.lessons_sample <= 1_000_000);
        }
    }

}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn random_config_files_never_panic(text in ".{0,400}", set in overrides()) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        // Free text, then the same overrides written as a file of dotted keys.
        for body in [text, set.join("\n")] {
            std::fs::write(&path, &body).unwrap();
            if let Ok(c) = TrainConfig::load(Some(&path), &[]) {
                prop_assert!(c.validate().is_ok());
            }
            if let Ok(c) = DaemonConfig::load(Some(&path), &[]) {
                prop_assert!(c.validate().is_ok());
            }
        }
    }
}
