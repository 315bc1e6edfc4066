//! The learner registry: `[learner] kind` names a [`LearnerKind`], and everything the runtime
//! needs from an algorithm comes through it (Acme's builder): whether it can act in a world's
//! action space, the network it trains, a fresh or loaded [`Learner`], the [`Policy`] that acts
//! with its weights, its exploration schedule and its replay needs.
//!
//! The runtime (`train`, the daemon), `eval` and the gate call only this module, never an
//! algorithm by name. To add a learner: write its module (its config, its `Learner`, its
//! `Policy`, a unit struct implementing [`LearnerKind`]), then add it to [`KINDS`].

use std::path::Path;

use autodidact_core::{Network, NetworkConfig, Precision};
use autodidact_envs::Space;
use autodidact_replay::{ActionSpace, Sampler};
use serde::{Deserialize, Serialize};

use crate::config::NetworkSection;
use crate::dqn::DqnConfig;
use crate::error::{AgentError, Result};
use crate::learner::Learner;
use crate::policy::Policy;
use crate::sac::SacConfig;

/// Every learner autodidact has. The first whose [`LearnerKind::supports`] accepts a world's
/// action space is the one `kind = "auto"` picks.
pub static KINDS: &[&dyn LearnerKind] = &[&crate::dqn::Dqn, &crate::sac::Sac];

/// The hyper-parameters of every learner, one section each, as a config file holds them.
#[derive(Clone, Copy, Debug)]
pub struct LearnerConfigs<'a> {
    /// `[dqn]`.
    pub dqn: &'a DqnConfig,
    /// `[sac]`.
    pub sac: &'a SacConfig,
}

/// How long the run the exploration schedule plans for is.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Horizon {
    /// A bounded run of `total` environment steps (`train`).
    Run {
        /// The step budget.
        total: u64,
    },
    /// A run without end (the daemon): exploration decays over `span` steps after learning
    /// starts.
    Endless {
        /// Steps of the decay.
        span: u64,
    },
}

/// The figures of a learner the runtime schedules by: how it consumes experience (what the rate
/// limiter and the store are set up with), and what the daemon's learning-rate schedule and
/// reflection passes start from.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LearnerPlan {
    /// Transitions per update (the replay window must hold one batch).
    pub batch_size: usize,
    /// Steps collected before the first update.
    pub learning_starts: u64,
    /// Gradient updates per environment step after that.
    pub replay_ratio: f64,
    /// Updates between two publications of acting weights.
    pub publish_every: u64,
    /// Priority exponent α of prioritized sampling; 0 samples uniformly.
    pub priority_alpha: f64,
    /// Discount γ.
    pub gamma: f32,
    /// The configured learning rate.
    pub lr: f32,
    /// The learning rate decays to `lr · lr_final_ratio`.
    pub lr_final_ratio: f32,
    /// Threads of the learner's pool when the config leaves them unset: the ones its update
    /// can keep busy beside the actor's thread.
    pub threads: usize,
}

/// Everything a learner is made from, besides its own config section.
pub struct LearnerContext<'a> {
    /// Every learner's config section.
    pub configs: LearnerConfigs<'a>,
    /// The network it acts with (from [`LearnerKind::network`]).
    pub network: NetworkConfig,
    /// The `[network]` section, for any further networks it trains (critics, say).
    pub network_section: NetworkSection,
    /// Observation width.
    pub obs_dim: usize,
    /// The world's action space.
    pub action_space: Space,
    /// Its view of replay.
    pub sampler: Sampler,
    /// The run's seed.
    pub seed: u64,
    /// Updates its schedules plan for.
    pub planned_updates: u64,
    /// Precision of the acting weights it publishes.
    pub precision: Precision,
}

/// One algorithm, as the runtime sees it.
pub trait LearnerKind: Sync {
    /// Its name in `[learner] kind` and in its checkpoints.
    fn name(&self) -> &'static str;
    /// Whether it can act in `space`.
    fn supports(&self, space: &Space) -> bool;
    /// What it needs of a world, for an error when [`LearnerKind::supports`] says no ("a
    /// discrete action space").
    fn needs(&self) -> &'static str;
    /// The network it trains for observations of `obs_dim` values and actions in `space`.
    fn network(&self, net: &NetworkSection, obs_dim: usize, space: &Space)
    -> Result<NetworkConfig>;
    /// How the replay store records its actions.
    fn action_space(&self, space: &Space) -> Result<ActionSpace>;
    /// The policy that acts with its published weights in `space`.
    fn policy(&self, space: &Space) -> Result<Box<dyn Policy>>;
    /// The policy the actors explore with: [`Self::policy`] shaped by the learner's config
    /// (SAC's correlated noise, say). Evaluation and the gate act greedily with `policy`.
    fn exploring_policy(
        &self,
        configs: LearnerConfigs<'_>,
        space: &Space,
    ) -> Result<Box<dyn Policy>> {
        let _ = configs;
        self.policy(space)
    }
    /// The figures the runtime schedules it by.
    fn plan(&self, configs: LearnerConfigs<'_>) -> LearnerPlan;
    /// Updates a run of `total_steps` steps plans for (its learning-rate schedule's length).
    fn planned_updates(&self, configs: LearnerConfigs<'_>, total_steps: u64) -> u64;
    /// The exploration level (see [`crate::policy::ActMode::Explore`]) after `steps`.
    fn exploration(&self, configs: LearnerConfigs<'_>, steps: u64, horizon: Horizon) -> f32;
    /// Checks its config section, naming the key that is wrong.
    fn validate(&self, configs: LearnerConfigs<'_>) -> Result<()>;
    /// A fresh learner.
    fn create(&self, ctx: LearnerContext<'_>) -> Result<Box<dyn Learner>>;
    /// The learner saved under `stem` (checked to be this kind's and `ctx.network`).
    fn load(&self, ctx: LearnerContext<'_>, stem: &Path) -> Result<Box<dyn Learner>>;
    /// The suffixes of the files a saved learner consists of, each appended to its stem (the
    /// first, `.safetensors`, holds the acting network): what pruning deletes.
    fn file_suffixes(&self) -> &'static [&'static str];
    /// Saves a network trained elsewhere under `stem` in this learner's layout, with fresh
    /// optimiser state and counters, so a run can go on learning from it.
    fn adopt(&self, network: &Network, stem: &Path) -> Result<()>;
}

/// `[learner]`: which algorithm learns.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LearnerSection {
    /// A learner's name, or `auto`: the first learner that supports the world's action space
    /// (DQN for a discrete one, SAC for a bounded `Box`).
    pub kind: String,
}

impl Default for LearnerSection {
    fn default() -> Self {
        LearnerSection {
            kind: "auto".into(),
        }
    }
}

impl LearnerSection {
    /// Checks that `kind` names a learner (or `auto`).
    pub fn validate(&self) -> Result<()> {
        if self.kind == "auto" {
            return Ok(());
        }
        by_name(&self.kind).map(|_| ())
    }

    /// The batch size the replay window must hold: the named learner's, or for `auto` the
    /// smallest (the world, and so the learner, is not known yet; the learner waits for a
    /// full batch either way).
    pub fn batch_size(&self, configs: LearnerConfigs<'_>) -> usize {
        match by_name(&self.kind) {
            Ok(kind) => kind.plan(configs).batch_size,
            Err(_) => KINDS
                .iter()
                .map(|k| k.plan(configs).batch_size)
                .min()
                .unwrap_or(1),
        }
    }

    /// The learner for a world whose actions are in `space`.
    pub fn resolve(&self, space: &Space) -> Result<&'static dyn LearnerKind> {
        if self.kind == "auto" {
            return KINDS
                .iter()
                .copied()
                .find(|k| k.supports(space))
                .ok_or_else(|| {
                    let needs: Vec<String> = KINDS
                        .iter()
                        .map(|k| format!("{} needs {}", k.name(), k.needs()))
                        .collect();
                    AgentError::Config(format!(
                        "no learner can act in the action space {space:?}: {}",
                        needs.join("; ")
                    ))
                });
        }
        let kind = by_name(&self.kind)?;
        if !kind.supports(space) {
            return Err(AgentError::Config(format!(
                "learner.kind = \"{}\" cannot act in the action space {space:?} (it needs {}); \
                 set learner.kind = \"auto\" to pick one that can",
                self.kind,
                kind.needs()
            )));
        }
        Ok(kind)
    }
}

fn names() -> String {
    KINDS
        .iter()
        .map(|k| k.name())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The learner called `name`.
pub fn by_name(name: &str) -> Result<&'static dyn LearnerKind> {
    KINDS
        .iter()
        .copied()
        .find(|k| k.name() == name)
        .ok_or_else(|| {
            AgentError::Config(format!(
                "learner.kind: no learner is called `{name}` (there are: auto, {})",
                names()
            ))
        })
}

/// The learner that wrote a checkpoint (its `learner` metadata). A checkpoint without one was
/// written before learners were plug-ins, by DQN.
pub fn of_checkpoint(
    extra: &std::collections::BTreeMap<String, String>,
) -> Result<&'static dyn LearnerKind> {
    by_name(extra.get("learner").map_or("dqn", String::as_str))
}

/// Refuses a checkpoint another learner wrote, saying which.
pub fn check_checkpoint_kind(
    kind: &dyn LearnerKind,
    extra: &std::collections::BTreeMap<String, String>,
    file: &Path,
) -> Result<()> {
    let written_by = extra.get("learner").map_or("dqn", String::as_str);
    if written_by != kind.name() {
        return Err(AgentError::RunDir {
            path: file.to_path_buf(),
            reason: format!(
                "this checkpoint was written by the {written_by} learner and cannot be loaded \
                 as {}: set learner.kind = \"{written_by}\" (or \"auto\"), or start a new run",
                kind.name()
            ),
        });
    }
    Ok(())
}
