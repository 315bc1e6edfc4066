//! Training configuration: one TOML file whose every key has a documented default
//! (`agent/train.toml` documents them; `autodidact train --print-config` prints them), so a run
//! is fully described by the resolved file written into its run directory.
//!
//! Values are layered: built-in defaults, then `--config FILE`, then `--set key=value`
//! overrides, then the explicit flags (`--steps`, `--seed`).

use std::path::Path;

use autodidact_core::precision::Precision;
use autodidact_core::{BlockConfig, HeadConfig, NetworkConfig};
use autodidact_replay::Durability;
use serde::{Deserialize, Serialize};

use crate::bounds::{
    self, MAX_BLOCKS, MAX_EPISODE_STEPS, MAX_EPISODES, MAX_EXPERTS, MAX_LEAD_STEPS,
    MAX_REPLAY_CAPACITY, MAX_STEPS, MAX_THREADS, MAX_WIDTH,
};
use crate::dqn::DqnConfig;
use crate::drift::{DriftConfig, ReturnDropConfig};
use crate::error::{AgentError, Result};
use crate::learners::{LearnerConfigs, LearnerSection};
use crate::sac::SacConfig;

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
    /// Which learner learns.
    pub learner: LearnerSection,
    /// Noticing that the world changed (train records it; see `crate::runtime::changes`).
    pub drift: DriftSection,
    /// The value-based learner's hyper-parameters (discrete actions).
    pub dqn: DqnConfig,
    /// Soft Actor-Critic's hyper-parameters (continuous actions).
    pub sac: SacConfig,
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
    /// Threads of the learner's own rayon pool (0 = one per core); unset, the learner's kind
    /// chooses ([`crate::learners::LearnerPlan::threads`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub learner_threads: Option<usize>,
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
            learner_threads: None,
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
    /// An episode that reaches this many steps without ending is cut as truncated and
    /// committed (the environment is reset): a world that never ends still reaches the
    /// learner, and an actor's memory stays bounded whatever the environment does. Never
    /// more than `capacity` (see [`ReplaySection::episode_cap`]).
    pub max_episode_steps: u64,
    /// What a commit of episodes promises (see [`DurabilityName`]).
    pub durability: DurabilityName,
}

/// Serde name of the replay store's [`Durability`]: what survives what.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DurabilityName {
    /// Committed episodes survive a crash of the process (`kill -9`); the last second or so
    /// of them may be lost on a power loss or an OS crash (SQLite `synchronous=NORMAL` in WAL
    /// mode). Model versions and promotions are synced on every commit either way.
    #[default]
    Normal,
    /// Every commit is synced to the disk before it is acknowledged: committed episodes
    /// survive a power loss too, at the cost of one sync per batch (`synchronous=FULL`).
    Full,
}

impl From<DurabilityName> for Durability {
    fn from(d: DurabilityName) -> Durability {
        match d {
            DurabilityName::Normal => Durability::Normal,
            DurabilityName::Full => Durability::Full,
        }
    }
}

impl Default for ReplaySection {
    fn default() -> Self {
        ReplaySection {
            capacity: 100_000,
            max_stored_transitions: 0,
            max_episode_steps: 10_000,
            durability: DurabilityName::Normal,
        }
    }
}

impl TrainConfig {
    /// Reads a TOML file over the defaults, then applies `key=value` overrides (`dqn.lr=3e-4`,
    /// `run.mode="lockstep"`; a value that is not valid TOML is taken as a string).
    pub fn load(file: Option<&Path>, overrides: &[String]) -> Result<TrainConfig> {
        let cfg: TrainConfig = load_layered(file, overrides)?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// The config as TOML, every key present.
    pub fn to_toml(&self) -> Result<String> {
        toml::to_string_pretty(self).map_err(|e| AgentError::Config(e.to_string()))
    }

    /// Checks every value against its documented range (see [`crate::bounds`]), naming the
    /// key, so nothing absurd reaches an allocation or a run directory.
    pub fn validate(&self) -> Result<()> {
        self.run.validate()?;
        self.network.validate()?;
        self.replay
            .validate(self.learner.batch_size(self.learners()))?;
        self.learner.validate()?;
        self.drift.validate()?;
        self.dqn.validate()?;
        self.sac.validate()
    }
}

impl TrainConfig {
    /// Every learner's config section.
    pub fn learners(&self) -> LearnerConfigs<'_> {
        LearnerConfigs {
            dqn: &self.dqn,
            sac: &self.sac,
        }
    }
}

impl RunConfig {
    /// Checks the `[run]` keys against their ranges.
    pub fn validate(&self) -> Result<()> {
        bounds::int("run.steps", self.steps, 1, MAX_STEPS)?;
        bounds::int("run.checkpoint_every", self.checkpoint_every, 1, MAX_STEPS)?;
        bounds::int("run.eval_every", self.eval_every, 0, MAX_STEPS)?;
        bounds::size("run.eval_episodes", self.eval_episodes, 1, MAX_EPISODES)?;
        bounds::int("run.max_lead_steps", self.max_lead_steps, 0, MAX_LEAD_STEPS)?;
        match self.learner_threads {
            Some(t) => bounds::size("run.learner_threads", t, 0, MAX_THREADS),
            None => Ok(()),
        }
    }
}

impl NetworkSection {
    /// Checks the `[network]` keys against their ranges, then lets the core check the network
    /// they describe as a whole (its parameter count, with checked arithmetic) for the smallest
    /// world: an environment's widths are checked again when it is known.
    pub fn validate(&self) -> Result<()> {
        bounds::size("network.d_model", self.d_model, 1, MAX_WIDTH)?;
        bounds::size("network.blocks", self.blocks.len(), 0, MAX_BLOCKS)?;
        for (i, b) in self.blocks.iter().enumerate() {
            let key = |k: &str| format!("network.blocks[{i}].{k}");
            match *b {
                BlockConfig::Dense { d_hidden } => {
                    bounds::size(&key("d_hidden"), d_hidden, 1, MAX_WIDTH)?;
                }
                BlockConfig::Moe {
                    d_hidden,
                    n_experts,
                    top_k,
                    capacity_factor,
                    router_noise_std,
                    aux_loss_coef,
                    z_loss_coef,
                    ..
                } => {
                    bounds::size(&key("d_hidden"), d_hidden, 1, MAX_WIDTH)?;
                    bounds::size(&key("n_experts"), n_experts, 1, MAX_EXPERTS)?;
                    bounds::size(&key("top_k"), top_k, 1, n_experts as u64)?;
                    if let Some(c) = capacity_factor {
                        bounds::real(&key("capacity_factor"), c.into(), 0.01, 1_000.0)?;
                    }
                    bounds::real(
                        &key("router_noise_std"),
                        router_noise_std.into(),
                        0.0,
                        100.0,
                    )?;
                    bounds::real(&key("aux_loss_coef"), aux_loss_coef.into(), 0.0, 1_000.0)?;
                    bounds::real(&key("z_loss_coef"), z_loss_coef.into(), 0.0, 1_000.0)?;
                }
            }
        }
        bounds::real("network.obs_clip", self.obs_clip.into(), 1e-3, 1e6)?;
        self.build(1, HeadConfig::DuelingQ { n_actions: 1 })
            .validate()
            .map_err(|e| AgentError::Config(format!("network: {e}")))
    }

    /// The core network config for an environment's input width and a head.
    pub fn build(&self, obs_dim: usize, head: HeadConfig) -> NetworkConfig {
        NetworkConfig {
            obs_dim,
            d_model: self.d_model,
            blocks: self.blocks.clone(),
            head,
            normalize_obs: self.normalize_obs,
            obs_clip: self.obs_clip,
        }
    }
}

impl ReplaySection {
    /// Checks the `[replay]` keys against their ranges; the window must hold a batch.
    pub fn validate(&self, batch_size: usize) -> Result<()> {
        bounds::size(
            "replay.capacity",
            self.capacity,
            batch_size.max(1) as u64,
            MAX_REPLAY_CAPACITY,
        )
        .map_err(|e| AgentError::Config(format!("{e} (the window must hold a batch)")))?;
        bounds::int(
            "replay.max_stored_transitions",
            self.max_stored_transitions,
            0,
            MAX_STEPS,
        )?;
        bounds::int(
            "replay.max_episode_steps",
            self.max_episode_steps,
            1,
            MAX_EPISODE_STEPS,
        )
    }

    /// Steps after which an episode is cut: `max_episode_steps`, and never more than the
    /// window holds, since a longer episode could never be sampled (the window is rebuilt
    /// from whole episodes).
    pub fn episode_cap(&self) -> u64 {
        self.max_episode_steps.min(self.capacity as u64)
    }
}

/// Loads a configuration the one way every command does: the built-in defaults of `T`, then
/// `file`, then `key=value` overrides, each layer merged key by key over the one before. A
/// section that a layer names keeps the defaults of `T` for the keys it leaves out (the
/// daemon's bounded `replay.max_stored_transitions`, say, not the section type's own
/// default); arrays such as `network.blocks` are replaced whole.
pub(crate) fn load_layered<T>(file: Option<&Path>, overrides: &[String]) -> Result<T>
where
    T: Default + Serialize + serde::de::DeserializeOwned,
{
    let mut value = toml::Table::try_from(T::default())
        .map_err(|e| AgentError::Config(format!("the built-in defaults: {e}")))?;
    if let Some(path) = file {
        let text = std::fs::read_to_string(path).map_err(AgentError::io(path))?;
        let layer = toml::from_str::<toml::Table>(&text).map_err(|e| AgentError::RunDir {
            path: path.to_path_buf(),
            reason: format!("not a valid config: {e}"),
        })?;
        merge(&mut value, layer);
    }
    for kv in overrides {
        apply_override(&mut value, kv)?;
    }
    toml::Table::try_into(value).map_err(|e| AgentError::Config(format!("{e}")))
}

/// Merges `layer` into `base`: tables key by key, anything else replaced.
fn merge(base: &mut toml::Table, layer: toml::Table) {
    for (k, v) in layer {
        match (base.get_mut(&k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(l)) => merge(b, l),
            (_, v) => {
                base.insert(k, v);
            }
        }
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

/// Drift detection and the plasticity raised on drift.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DriftSection {
    /// A fall in episode returns: the recent window against the reference window before it.
    pub returns: ReturnDropConfig,
    /// Page-Hinkley on each observation feature's magnitude |x| in each episode's first
    /// observation: where the world starts an episode, which no policy moves, so learning
    /// raises no alarm while a world that starts elsewhere (a sensor offset, a moved goal in
    /// view) is seen.
    pub observations: DriftConfig,
    /// Watch observation statistics too (a fall in return is watched always).
    pub watch_observations: bool,
    /// On a fall in return, ε jumps to this value (1: explore like a fresh agent, as the
    /// world the policy knew is gone) …
    pub boost_epsilon: f32,
    /// … and decays linearly back to the normal schedule over this many steps.
    pub boost_steps: u64,
    /// Also boost exploration when only the observation statistics moved (off by default:
    /// a policy that improves moves them too).
    pub boost_on_observations: bool,
    /// On a fall in return, the learners' replay window keeps only the episodes the alarm
    /// judged (the last `returns.recent`, all from the changed world) and grows again from
    /// there; the replay file keeps everything. Older episodes describe a world that is gone:
    /// a learner that keeps sampling them keeps learning it (recency-weighted replay taken to
    /// its limit, as the change is known).
    pub restart_replay: bool,
    /// On a fall in return, the learner resets its value head to fresh weights, keeping the
    /// body, and starts its optimizer and learning-rate schedule again (Nikishin et al. 2022;
    /// `Learner::reset_head`): a head that predicts the old world's returns keeps the greedy
    /// policy walking to where the reward used to be, and bootstrapping keeps those
    /// predictions alive.
    pub reset_head: bool,
    /// On a fall in return, keep the learner that mastered the world just gone, and try the
    /// ones kept before in the new world (see `crate::runtime::memory`): a world that comes
    /// back is recalled rather than learned again. The daemon keeps champions and its gate
    /// plays the trials (`daemon::recall`).
    pub recall: bool,
    /// Greedy episodes each remembered learner plays in the new world before it is judged.
    pub recall_episodes: usize,
    /// Worlds remembered at most (the one written longest ago is replaced).
    pub memory_slots: usize,
}

impl Default for DriftSection {
    fn default() -> Self {
        DriftSection {
            returns: ReturnDropConfig::default(),
            observations: DriftConfig {
                lambda: 100.0,
                ..DriftConfig::default()
            },
            watch_observations: true,
            boost_epsilon: 1.0,
            boost_steps: 5_000,
            boost_on_observations: false,
            restart_replay: true,
            reset_head: true,
            recall: true,
            recall_episodes: 3,
            memory_slots: 8,
        }
    }
}

impl DriftSection {
    /// Checks the `[drift]` keys against their ranges.
    pub fn validate(&self) -> Result<()> {
        bounds::real("drift.boost_epsilon", self.boost_epsilon.into(), 0.0, 1.0)?;
        bounds::int("drift.boost_steps", self.boost_steps, 0, MAX_STEPS)?;
        bounds::size("drift.recall_episodes", self.recall_episodes, 1, 1_000)?;
        bounds::size("drift.memory_slots", self.memory_slots, 1, 64)?;
        let r = &self.returns;
        bounds::size("drift.returns.recent", r.recent, 1, MAX_EPISODES)?;
        bounds::size("drift.returns.reference", r.reference, 2, MAX_EPISODES)?;
        bounds::real("drift.returns.min_drop", r.min_drop, 0.0, 1e6)?;
        bounds::real("drift.returns.z", r.z, 0.0, 1e6)?;
        let c = &self.observations;
        bounds::real("drift.observations.delta", c.delta, 0.0, 1e6)?;
        bounds::real("drift.observations.lambda", c.lambda, 1e-9, 1e12)?;
        bounds::size("drift.observations.warmup", c.warmup, 2, MAX_EPISODES)
    }
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
