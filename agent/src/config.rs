//! Training configuration: one TOML file whose every key has a documented default
//! (`agent/train.toml` documents them; `autodidact train --print-config` prints them), so a run
//! is fully described by the resolved file written into its run directory.
//!
//! Values are layered: built-in defaults, then `--config FILE`, then `--set key=value`
//! overrides, then the explicit flags (`--steps`, `--seed`).

use std::path::Path;

use autodidact_core::BlockConfig;
use autodidact_core::precision::Precision;
use serde::{Deserialize, Serialize};

use crate::dqn::DqnConfig;
use crate::error::{AgentError, Result};

/// Everything a training run needs besides the environment ID.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    /// Budget, seeding, concurrency, checkpoints and evaluation.
    pub run: RunConfig,
    /// The Q-network (its input and output widths come from the environment).
    pub network: NetworkSection,
    /// The replay window and retention.
    pub replay: ReplaySection,
    /// The value-based learner's hyper-parameters.
    pub dqn: DqnConfig,
}

/// How actor and learner are scheduled.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// The actor and the learner run on their own threads; the replay ratio is enforced by a
    /// rate limiter that blocks whichever side runs ahead. The default: uses two cores.
    Concurrent,
    /// One thread alternates acting and learning in a fixed order and commits every episode
    /// before learning from it: bit-for-bit reproducible for a seed (and thread count).
    Lockstep,
}

/// Budget, seeding, concurrency, checkpoints and evaluation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RunConfig {
    /// Environment steps of the whole run (a resumed run continues up to this total).
    pub steps: u64,
    /// Seed of the network, the actor, the sampler and the environment's resets.
    pub seed: u64,
    /// Scheduling of actor and learner.
    pub mode: Mode,
    /// Environment steps the actor may run ahead of the replay ratio before it waits for
    /// the learner (concurrent mode).
    pub max_lead_steps: u64,
    /// Save a checkpoint (a new model version) every this many environment steps; the run
    /// also checkpoints when it stops.
    pub checkpoint_every: u64,
    /// Greedy evaluation every this many environment steps during training (0 = only at the
    /// end). Evaluation time is excluded from the reported training time.
    pub eval_every: u64,
    /// Episodes of each evaluation.
    pub eval_episodes: usize,
    /// Precision of the acting snapshot: `f32`, `bf16` or `f16`.
    pub acting_precision: PrecisionName,
    /// Threads of the learner's own rayon pool (0 = one per core). The actor has a thread of
    /// its own, so on small networks one learner thread avoids contending with it.
    pub learner_threads: usize,
}

impl Default for RunConfig {
    fn default() -> Self {
        RunConfig {
            steps: 50_000,
            seed: 0,
            mode: Mode::Concurrent,
            max_lead_steps: 200,
            checkpoint_every: 10_000,
            eval_every: 0,
            eval_episodes: 20,
            acting_precision: PrecisionName::F32,
            learner_threads: 1,
        }
    }
}

/// Serde name of a [`Precision`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PrecisionName {
    /// Full precision.
    F32,
    /// bfloat16 weights.
    Bf16,
    /// IEEE half weights.
    F16,
}

impl From<PrecisionName> for Precision {
    fn from(p: PrecisionName) -> Precision {
        match p {
            PrecisionName::F32 => Precision::F32,
            PrecisionName::Bf16 => Precision::Bf16,
            PrecisionName::F16 => Precision::F16,
        }
    }
}

/// The network body; the input width and the dueling head's action count come from the
/// environment's spaces.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NetworkSection {
    /// Width of the residual stream.
    pub d_model: usize,
    /// Residual blocks, in order (`kind = "moe"` or `kind = "dense"`).
    pub blocks: Vec<BlockConfig>,
    /// Normalise observations with running statistics gathered by the actor.
    pub normalize_obs: bool,
    /// Clip bound of normalised observations.
    pub obs_clip: f32,
}

impl Default for NetworkSection {
    fn default() -> Self {
        NetworkSection {
            d_model: 64,
            blocks: vec![BlockConfig::Moe {
                d_hidden: 64,
                n_experts: 4,
                top_k: 2,
                capacity_factor: None,
                router_noise_std: 0.0,
                normalize_gates: true,
                aux_loss_coef: 0.01,
                z_loss_coef: 1e-3,
            }],
            normalize_obs: false,
            obs_clip: 10.0,
        }
    }
}

/// The replay window and retention.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReplaySection {
    /// Transitions in the sampling window (the replay buffer size).
    pub capacity: usize,
    /// Keep at most this many transitions in the file (0 = keep everything).
    pub max_stored_transitions: u64,
}

impl Default for ReplaySection {
    fn default() -> Self {
        ReplaySection {
            capacity: 100_000,
            max_stored_transitions: 0,
        }
    }
}

impl TrainConfig {
    /// Reads a TOML file over the defaults, then applies `key=value` overrides (`dqn.lr=3e-4`,
    /// `run.mode="lockstep"`; a value that is not valid TOML is taken as a string).
    pub fn load(file: Option<&Path>, overrides: &[String]) -> Result<TrainConfig> {
        let mut value = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(AgentError::io(path))?;
                toml::from_str::<toml::Table>(&text).map_err(|e| AgentError::RunDir {
                    path: path.to_path_buf(),
                    reason: format!("not a valid config: {e}"),
                })?
            }
            None => toml::Table::new(),
        };
        for kv in overrides {
            apply_override(&mut value, kv)?;
        }
        let cfg: TrainConfig =
            toml::Table::try_into(value).map_err(|e| AgentError::Config(format!("{e}")))?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// The config as TOML, every key present.
    pub fn to_toml(&self) -> Result<String> {
        toml::to_string_pretty(self).map_err(|e| AgentError::Config(e.to_string()))
    }

    /// Checks ranges that serde cannot, naming the key.
    pub fn validate(&self) -> Result<()> {
        let bad = |key: &str, why: &str| Err(AgentError::Config(format!("{key}: {why}")));
        if self.run.steps == 0 {
            return bad("run.steps", "must be at least 1");
        }
        if self.run.checkpoint_every == 0 {
            return bad("run.checkpoint_every", "must be at least 1");
        }
        if self.run.eval_episodes == 0 {
            return bad("run.eval_episodes", "must be at least 1");
        }
        if self.network.d_model == 0 {
            return bad("network.d_model", "must be at least 1");
        }
        if self.replay.capacity < self.dqn.batch_size {
            return bad(
                "replay.capacity",
                "must be at least dqn.batch_size (the window must hold a batch)",
            );
        }
        self.dqn.validate()
    }
}

/// Sets `a.b.c = value` in a TOML table, creating sub-tables as needed.
pub(crate) fn apply_override(root: &mut toml::Table, kv: &str) -> Result<()> {
    let Some((key, raw)) = kv.split_once('=') else {
        return Err(AgentError::Config(format!(
            "override `{kv}` must look like key=value, e.g. dqn.lr=3e-4"
        )));
    };
    let (key, raw) = (key.trim(), raw.trim());
    // Parse the value as TOML (numbers, booleans, arrays, quoted strings); fall back to a bare
    // string so `run.mode=lockstep` works without shell-escaped quotes.
    let value = toml::from_str::<toml::Table>(&format!("v = {raw}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_string()));
    let parts: Vec<&str> = key.split('.').collect();
    if parts.iter().any(|p| p.is_empty()) {
        return Err(AgentError::Config(format!("override key `{key}` is empty")));
    }
    let mut table = root;
    for part in &parts[..parts.len() - 1] {
        let entry = table
            .entry(part.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        table = entry.as_table_mut().ok_or_else(|| {
            AgentError::Config(format!("override `{key}`: `{part}` is not a table"))
        })?;
    }
    table.insert(parts[parts.len() - 1].to_string(), value);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_round_trip_through_toml() {
        let cfg = TrainConfig::default();
        let text = cfg.to_toml().unwrap();
        let back: TrainConfig = toml::from_str(&text).unwrap();
        assert_eq!(back, cfg);
    }

    #[test]
    fn the_documented_config_file_is_the_defaults() {
        let documented = concat!(env!("CARGO_MANIFEST_DIR"), "/train.toml");
        let cfg = TrainConfig::load(Some(Path::new(documented)), &[]).unwrap();
        assert_eq!(
            cfg,
            TrainConfig::default(),
            "agent/train.toml drifted from the code"
        );
    }

    #[test]
    fn overrides_apply_and_unknown_keys_are_refused() {
        let cfg = TrainConfig::load(
            None,
            &[
                "dqn.lr=0.005".into(),
                "run.mode=lockstep".into(),
                "run.steps=7".into(),
            ],
        )
        .unwrap();
        assert_eq!(cfg.dqn.lr, 0.005);
        assert_eq!(cfg.run.mode, Mode::Lockstep);
        assert_eq!(cfg.run.steps, 7);
        let err = TrainConfig::load(None, &["dqn.learning_rate=1".into()]).unwrap_err();
        assert!(err.to_string().contains("learning_rate"), "{err}");
        let err = TrainConfig::load(None, &["run.steps=0".into()]).unwrap_err();
        assert!(err.to_string().contains("run.steps"), "{err}");
        assert!(TrainConfig::load(None, &["novalue".into()]).is_err());
        let err = TrainConfig::load(None, &["replay.capacity=32".into()]).unwrap_err();
        assert!(err.to_string().contains("replay.capacity"), "{err}");
        let err = TrainConfig::load(None, &["dqn.weight_decay=-0.1".into()]).unwrap_err();
        assert!(err.to_string().contains("weight_decay"), "{err}");
    }
}
