//! The learner seam (Acme's `Learner`): samples from replay, takes gradient steps on the
//! training core, and produces acting weights and checkpoints.
//!
//! The training loop only sees this trait, so a second learner (for continuous actions, or a
//! policy-gradient one) is an addition next to [`crate::dqn::DqnLearner`]: the actor, the adder
//! and the store do not change.

use std::path::{Path, PathBuf};

use autodidact_core::{ObsNormalizer, Snapshot};
use serde::Serialize;

use crate::error::Result;

/// What one gradient update reported.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct UpdateReport {
    /// The learner's main loss (before auxiliary terms).
    pub loss: f32,
    /// The MoE auxiliary losses as added to the objective.
    pub aux_loss: f32,
    /// Whether the optimizer applied the update (false: a NaN/Inf was caught and skipped).
    pub applied: bool,
}

/// Running metrics of a learner, for progress display and the model registry.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct LearnerMetrics {
    /// Gradient updates taken (over the whole run, including before a resume).
    pub updates: u64,
    /// Updates skipped because of a non-finite loss or gradient.
    pub skipped: u64,
    /// Exponential moving average of the main loss.
    pub loss: f32,
    /// Exponential moving average of the global gradient norm.
    pub grad_norm: f32,
    /// Current learning rate.
    pub lr: f32,
    /// Share of routed token assignments per expert of the first MoE layer (moving average);
    /// empty for a network without MoE blocks.
    pub expert_usage: Vec<f64>,
    /// Mean router entropy of the first MoE layer, in nats (moving average).
    pub router_entropy: f32,
}

/// What a reanalyse pass found: the stored transitions' TD errors under the newest weights.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct ReanalyseReport {
    /// Transitions revisited.
    pub transitions: usize,
    /// Mean |TD error| under the newest online and target networks.
    pub mean_abs_td: f64,
    /// Mean priority those transitions had before (prioritized replay only).
    pub mean_priority_before: Option<f64>,
    /// Mean recomputed n-step value target.
    pub mean_target: f64,
    /// Mean Q-value of the stored action under the newest online network.
    pub mean_q: f64,
}

/// A learner: owns the trainable network, its optimizer and its view of replay.
pub trait Learner: Send {
    /// Whether replay holds enough data for a batch.
    fn ready(&self) -> bool;
    /// One gradient update.
    fn update(&mut self) -> Result<UpdateReport>;
    /// The weights actors should act with now.
    fn acting_snapshot(&self) -> Result<Snapshot>;
    /// Folds observation statistics gathered by actors into the network's normaliser.
    fn set_obs_stats(&mut self, stats: &ObsNormalizer);
    /// The network's observation statistics (to seed the actors' after a resume), if it
    /// normalises observations.
    fn obs_stats(&self) -> Option<ObsNormalizer>;
    /// Writes the whole learner state to files starting with `stem`; returns the file that
    /// holds the acting network (a core checkpoint).
    fn save(&self, stem: &Path) -> Result<PathBuf>;
    /// Running metrics.
    fn metrics(&self) -> LearnerMetrics;
    /// Revisits `batches` uniformly drawn batches of stored experience with the newest
    /// weights (in the spirit of MuZero Reanalyse): recomputes their value targets (reported;
    /// every update recomputes targets anyway) and, with prioritized replay, stores their new
    /// priorities, so old experience is sampled by what the model knows now. `None` for a
    /// learner with nothing to reanalyse.
    fn reanalyse(&mut self, batches: usize) -> Result<Option<ReanalyseReport>> {
        let _ = batches;
        Ok(None)
    }
    /// Scales the learning rate relative to the configured one (the daemon lowers it as a
    /// world stays the same and raises it back when the world changes). No-op by default.
    fn set_lr_scale(&mut self, scale: f32) {
        let _ = scale;
    }
}
