//! The learner seam (Acme's `Learner`): samples from replay, takes gradient steps on the
//! training core, and produces acting weights and checkpoints.
//!
//! The training loop only sees this trait, so a second learner (for continuous actions, or a
//! policy-gradient one) is an addition next to [`crate::dqn::DqnLearner`]: the actor, the adder
//! and the store do not change.

use std::path::{Path, PathBuf};

use autodidact_core::{
    Network, ObsNormalizer, PlasticityConfig, PlasticityReport, Snapshot, StepOutcome, Tensor,
};
use autodidact_replay::{NStep, SampleBatch, Sampler};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
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
    /// The last plasticity measurement ([`Learner::plasticity`]), if one was taken.
    pub plasticity: Option<PlasticitySummary>,
}

impl LearnerMetrics {
    /// Folds one update into the running figures: `updates` and `skipped` as counted, the
    /// loss, gradient norm and router entropy as moving averages (from this update on when
    /// `fresh`, which is then cleared), the learning rate applied, and the expert usage of
    /// `net`'s first MoE layer in the step just taken.
    pub fn record_update(
        &mut self,
        fresh: &mut bool,
        (updates, skipped): (u64, u64),
        loss: f32,
        outcome: StepOutcome,
        net: &Network,
    ) {
        const EMA: f32 = 0.02;
        self.updates = updates;
        self.skipped = skipped;
        let first = std::mem::take(fresh);
        let ema = |old: f32, new: f32| if first { new } else { old + EMA * (new - old) };
        if loss.is_finite() {
            self.loss = ema(self.loss, loss);
        }
        if let StepOutcome::Applied { grad_norm, lr } = outcome {
            self.grad_norm = ema(self.grad_norm, grad_norm);
            self.lr = lr;
        }
        if let Some(stats) = net.moe_layers().next().map(|l| l.stats()) {
            let routed: usize = stats.routed.iter().sum();
            if routed > 0 {
                if self.expert_usage.len() != stats.routed.len() {
                    self.expert_usage = vec![1.0 / stats.routed.len() as f64; stats.routed.len()];
                }
                for (u, &r) in self.expert_usage.iter_mut().zip(&stats.routed) {
                    *u += EMA as f64 * (r as f64 / routed as f64 - *u);
                }
            }
            self.router_entropy = ema(self.router_entropy, stats.router_entropy);
        }
    }
}

/// Seed tag of the stream plasticity measurements sample with.
const PLASTICITY_STREAM: u64 = 0x0050_4c41_5354_4943; // "PLASTIC"

/// Measures `net`'s plasticity on `samples` stored observations drawn uniformly from
/// `sampler`, against θ₀ rebuilt from `init_seed` (the seed `net` was created with): every
/// learner's [`Learner::plasticity`]. The draw has its own stream, seeded by `updates`, so
/// measuring never shifts a learner's sampling and a lockstep run stays bit-exact.
pub fn measure_plasticity_of(
    net: &mut Network,
    sampler: &Sampler,
    (init_seed, updates): (u64, u64),
    samples: usize,
) -> Result<PlasticitySummary> {
    let mut rng = ChaCha8Rng::seed_from_u64(init_seed ^ updates);
    rng.set_stream(PLASTICITY_STREAM);
    let mut batch = SampleBatch::with_capacity(samples);
    sampler.sample_uniform(&mut rng, samples, NStep::one(1.0), &mut batch)?;
    let mut obs = Tensor::try_zeros(&[batch.len, batch.obs_len])?;
    obs.data_mut()
        .copy_from_slice(&batch.obs[..batch.len * batch.obs_len]);
    let init = Network::new(net.config().clone(), init_seed)?;
    let report = net.measure_plasticity(&obs, Some(&init), &PlasticityConfig::default())?;
    Ok(PlasticitySummary::of(&report, updates))
}

/// The figures of a plasticity measurement a person watches over a long life: dead units, a
/// collapsing representation, weights that wander (or freeze).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct PlasticitySummary {
    /// Updates when it was taken.
    pub updates: u64,
    /// Share of hidden units that are τ-dormant (Sokar et al. 2023).
    pub dormant_ratio: f64,
    /// srank_δ of the features the head reads (Kumar et al. 2021).
    pub effective_rank: usize,
    /// Their width.
    pub feature_dim: usize,
    /// ‖θ − θ₀‖ / ‖θ₀‖ of the acting network (`None` if the initial weights are unknown).
    pub weight_distance: Option<f64>,
}

impl PlasticitySummary {
    /// The summary of a core report taken after `updates` updates.
    pub fn of(report: &PlasticityReport, updates: u64) -> Self {
        PlasticitySummary {
            updates,
            dormant_ratio: report.dormant_ratio,
            effective_rank: report.effective_rank,
            feature_dim: report.feature_dim,
            weight_distance: report.distance.as_ref().map(|d| d.relative),
        }
    }

    /// One sentence, e.g. "2.0 % of hidden units dormant, effective rank 41 of 64 features,
    /// weights 0.31 of their initial norm from it".
    pub fn sentence(&self) -> String {
        let distance = self.weight_distance.map_or(String::new(), |d| {
            format!(", weights {d:.2} of their initial norm from it")
        });
        format!(
            "{:.1} % of hidden units dormant, effective rank {} of {} features{distance}",
            100.0 * self.dormant_ratio,
            self.effective_rank,
            self.feature_dim
        )
    }
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
    /// Measures the acting network's plasticity on `samples` stored observations drawn
    /// uniformly (dormant units, effective rank, distance from its initial weights; see
    /// `autodidact_core::plasticity`), records it in [`Learner::metrics`] and returns it. Call
    /// it between updates; it changes no weight and draws nothing from the learner's own random
    /// stream. `None` for a learner that does not measure it, or while replay is empty.
    fn plasticity(&mut self, samples: usize) -> Result<Option<PlasticitySummary>> {
        let _ = samples;
        Ok(None)
    }
    /// Scales the learning rate relative to the configured one (the daemon lowers it as a
    /// world stays the same and raises it back when the world changes). No-op by default.
    fn set_lr_scale(&mut self, scale: f32) {
        let _ = scale;
    }
    /// After a change of world: resets the value head to fresh weights, keeping the body
    /// (Nikishin et al. 2022; see `autodidact_core::reset`), and starts the optimizer and its
    /// learning-rate schedule again. Returns whether the learner did (`false`: it has no such
    /// response; the default).
    fn reset_head(&mut self) -> Result<bool> {
        Ok(false)
    }
}
