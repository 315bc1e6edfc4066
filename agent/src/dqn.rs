//! Double DQN with a dueling head on the MoE network, n-step returns and prioritized replay.
//!
//! One update, top to bottom, as in [`DqnLearner::update`]:
//! 1. draw a batch from replay, ∝ priority^α (Schaul et al. 2016, "Prioritized Experience
//!    Replay"), with importance weights annealed from β₀ to 1;
//! 2. n-step targets `y = Σ_{k<n} γ^k r_{t+k} + γ^n Q_target(s_{t+n}, argmax_a Q(s_{t+n}, a))`
//!    (Sutton 1988; the double estimator of van Hasselt et al. 2016, "Deep Reinforcement
//!    Learning with Double Q-learning"); no bootstrap after a terminal state, bootstrap after
//!    a truncation;
//! 3. the importance-weighted Huber loss on `Q(s_t, a_t) − y` (Mnih et al. 2015), plus the MoE
//!    load-balancing and router z-losses (Fedus et al. 2021, Switch Transformers; Zoph et al.
//!    2022, ST-MoE), one AdamW step (Loshchilov & Hutter 2019) with global-norm clipping;
//! 4. new priorities `|δ| + ε`;
//! 5. the target network follows by Polyak averaging `θ' ← τθ + (1 − τ)θ'` (or a hard copy
//!    every `target_update_interval` updates when `tau = 1`).
//!
//! The network's head is dueling (Wang et al. 2016, "Dueling Network Architectures"); the
//! combination of these pieces follows Rainbow (Hessel et al. 2018).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use autodidact_core::loss::huber;
use autodidact_core::optim::{copy_params, polyak_update};
use autodidact_core::precision::Precision;
use autodidact_core::reset::reset_head;
use autodidact_core::{
    AdamW, AdamWConfig, HeadConfig, LrSchedule, Network, NetworkConfig, ObsNormalizer, Snapshot,
    StepOutcome, Tensor,
};
use autodidact_envs::Space;
use autodidact_replay::{ActionSpace, NStep, ReplayError, SampleBatch, Sampler};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::config::NetworkSection;
use crate::error::{AgentError, Result};
use crate::learner::{
    Learner, LearnerMetrics, PlasticitySummary, ReanalyseReport, UpdateReport,
    measure_plasticity_of,
};
use crate::learners::{Horizon, LearnerConfigs, LearnerContext, LearnerKind, LearnerPlan};
use crate::policy::argmax;
use crate::policy::{Policy, QPolicy, discrete_actions};
use crate::runtime::with_suffix;

/// Hyper-parameters of [`DqnLearner`] and of the ε-greedy actor that goes with it, named as
/// in the papers (and as Stable-Baselines3 names the ones it shares).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DqnConfig {
    /// Discount γ.
    pub gamma: f32,
    /// Rewards summed per target (n of n-step returns).
    pub n_step: usize,
    /// Transitions per gradient update.
    pub batch_size: usize,
    /// AdamW learning rate.
    pub lr: f32,
    /// The learning rate decays linearly to `lr · lr_final_ratio` over the run's planned
    /// updates: late, small steps keep a solved task solved.
    pub lr_final_ratio: f32,
    /// AdamW ε.
    pub adam_eps: f32,
    /// Decoupled weight decay.
    pub weight_decay: f32,
    /// Global gradient-norm clip.
    pub max_grad_norm: f32,
    /// Huber loss threshold δ.
    pub huber_delta: f32,
    /// Environment steps collected (with ε = `exploration_initial_eps`) before learning.
    pub learning_starts: u64,
    /// Gradient updates per environment step after `learning_starts` (the replay ratio).
    pub replay_ratio: f64,
    /// Polyak factor τ of the target network per update; 1 = hard copy every
    /// `target_update_interval` updates.
    pub tau: f32,
    /// Updates between hard target copies (only when `tau = 1`).
    pub target_update_interval: u64,
    /// Use the double estimator (van Hasselt et al. 2016) for the bootstrap action.
    pub double_q: bool,
    /// Sample ∝ priority^α instead of uniformly.
    pub prioritized: bool,
    /// Priority exponent α.
    pub per_alpha: f64,
    /// Initial importance-sampling exponent β₀, annealed linearly to 1 over the run.
    pub per_beta0: f64,
    /// Added to |δ| so that no transition's priority reaches zero.
    pub per_eps: f32,
    /// ε at the start.
    pub exploration_initial_eps: f32,
    /// ε after the decay.
    pub exploration_final_eps: f32,
    /// Fraction of the run's steps over which ε decays linearly.
    pub exploration_fraction: f64,
    /// Publish acting weights every this many updates.
    pub publish_every: u64,
}

impl Default for DqnConfig {
    fn default() -> Self {
        DqnConfig {
            gamma: 0.99,
            n_step: 3,
            batch_size: 64,
            lr: 1e-3,
            lr_final_ratio: 0.1,
            adam_eps: 1e-8,
            weight_decay: 0.0,
            max_grad_norm: 10.0,
            huber_delta: 1.0,
            learning_starts: 1_000,
            replay_ratio: 0.25,
            tau: 0.05,
            target_update_interval: 1_000,
            double_q: true,
            prioritized: true,
            per_alpha: 0.6,
            per_beta0: 0.4,
            per_eps: 1e-3,
            exploration_initial_eps: 1.0,
            exploration_final_eps: 0.02,
            exploration_fraction: 0.1,
            publish_every: 25,
        }
    }
}

impl DqnConfig {
    /// Checks ranges, naming the key.
    pub fn validate(&self) -> Result<()> {
        let checks: [(&str, bool, &str); 13] = [
            ("dqn.gamma", (0.0..=1.0).contains(&self.gamma), "in [0, 1]"),
            ("dqn.n_step", self.n_step >= 1, "at least 1"),
            ("dqn.batch_size", self.batch_size >= 1, "at least 1"),
            ("dqn.lr", self.lr.is_finite() && self.lr > 0.0, "positive"),
            (
                "dqn.lr_final_ratio",
                (0.0..=1.0).contains(&self.lr_final_ratio),
                "in [0, 1]",
            ),
            (
                "dqn.replay_ratio",
                self.replay_ratio.is_finite() && self.replay_ratio > 0.0,
                "positive",
            ),
            ("dqn.tau", self.tau > 0.0 && self.tau <= 1.0, "in (0, 1]"),
            (
                "dqn.target_update_interval",
                self.target_update_interval >= 1,
                "at least 1",
            ),
            (
                "dqn.per_alpha",
                self.per_alpha.is_finite() && self.per_alpha >= 0.0,
                "≥ 0",
            ),
            (
                "dqn.per_beta0",
                (0.0..=1.0).contains(&self.per_beta0),
                "in [0, 1]",
            ),
            (
                "dqn.exploration_*_eps",
                (0.0..=1.0).contains(&self.exploration_initial_eps)
                    && (0.0..=1.0).contains(&self.exploration_final_eps),
                "in [0, 1]",
            ),
            (
                "dqn.exploration_fraction",
                (0.0..=1.0).contains(&self.exploration_fraction),
                "in [0, 1]",
            ),
            ("dqn.publish_every", self.publish_every >= 1, "at least 1"),
        ];
        for (key, ok, want) in checks {
            if !ok {
                return Err(AgentError::Config(format!("{key} must be {want}")));
            }
        }
        if !(self.per_eps > 0.0 && self.huber_delta > 0.0 && self.max_grad_norm > 0.0) {
            return Err(AgentError::Config(
                "dqn.per_eps, dqn.huber_delta and dqn.max_grad_norm must be positive".into(),
            ));
        }
        if !(self.adam_eps > 0.0 && self.weight_decay >= 0.0) {
            return Err(AgentError::Config(
                "dqn.adam_eps must be positive and dqn.weight_decay ≥ 0".into(),
            ));
        }
        // Upper ends: the documented ranges of `crate::bounds`, so no absurd value reaches an
        // allocation (batch buffers, n-step lookups) or an overflowing schedule.
        use crate::bounds::{self, MAX_BATCH, MAX_STEPS};
        bounds::size("dqn.n_step", self.n_step, 1, 1_000)?;
        bounds::size("dqn.batch_size", self.batch_size, 1, MAX_BATCH)?;
        bounds::real("dqn.lr", self.lr.into(), 1e-12, 10.0)?;
        bounds::real("dqn.adam_eps", self.adam_eps.into(), 1e-30, 1.0)?;
        bounds::real("dqn.weight_decay", self.weight_decay.into(), 0.0, 100.0)?;
        bounds::real("dqn.max_grad_norm", self.max_grad_norm.into(), 1e-12, 1e12)?;
        bounds::real("dqn.huber_delta", self.huber_delta.into(), 1e-12, 1e12)?;
        bounds::real("dqn.per_eps", self.per_eps.into(), 1e-12, 1e6)?;
        bounds::real("dqn.per_alpha", self.per_alpha, 0.0, 10.0)?;
        bounds::real("dqn.replay_ratio", self.replay_ratio, 1e-6, 1_000.0)?;
        bounds::int("dqn.learning_starts", self.learning_starts, 0, MAX_STEPS)?;
        bounds::int(
            "dqn.target_update_interval",
            self.target_update_interval,
            1,
            MAX_STEPS,
        )?;
        bounds::int("dqn.publish_every", self.publish_every, 1, MAX_STEPS)
    }

    /// ε after `steps` of a `total`-step run: linear from the initial to the final value over
    /// `exploration_fraction · total` steps.
    pub fn epsilon(&self, steps: u64, total: u64) -> f32 {
        let span = self.exploration_fraction * total as f64;
        let progress = if span <= 0.0 {
            1.0
        } else {
            (steps as f64 / span).min(1.0)
        };
        self.exploration_initial_eps
            + (self.exploration_final_eps - self.exploration_initial_eps) * progress as f32
    }

    /// Gradient updates a run of `total_steps` environment steps plans for.
    pub fn planned_updates(&self, total_steps: u64) -> u64 {
        ((total_steps.saturating_sub(self.learning_starts)) as f64 * self.replay_ratio) as u64
    }

    fn adamw(&self, planned_updates: u64) -> AdamWConfig {
        AdamWConfig {
            lr: self.lr,
            eps: self.adam_eps,
            weight_decay: self.weight_decay,
            max_grad_norm: Some(self.max_grad_norm),
            schedule: self.schedule(planned_updates),
            ..AdamWConfig::new(self.lr)
        }
    }

    fn schedule(&self, planned_updates: u64) -> LrSchedule {
        LrSchedule::WarmupLinear {
            warmup_steps: 0,
            total_steps: planned_updates.max(1),
            final_ratio: self.lr_final_ratio,
        }
    }
}

/// The Double DQN learner. See the module documentation for the algorithm.
#[derive(Debug)]
pub struct DqnLearner {
    cfg: DqnConfig,
    online: Network,
    target: Network,
    opt: AdamW,
    sampler: Sampler,
    rng: ChaCha8Rng,
    /// The seed the online network was initialised with: θ₀ is rebuilt from it (and the
    /// config) when plasticity is measured, rather than kept.
    init_seed: u64,
    precision: Precision,
    planned_updates: u64,
    updates: u64,
    metrics: LearnerMetrics,
    /// No update recorded since construction: the moving averages start from the next one.
    metrics_fresh: bool,
    batch: SampleBatch,
    obs: Tensor,
    next: Tensor,
    q: Tensor,
    y: Tensor,
    grad: Tensor,
    best: Vec<usize>,
    bootstrap: Vec<f32>,
    prios: Vec<f32>,
}

/// Seed tag separating the learner's sampling stream from the other seeded streams.
const RNG_STREAM: u64 = 0x004c_4541_524e_4552; // "LEARNER"
/// Seed tag of the fresh heads drawn by [`Learner::reset_head`].
const RESET_STREAM: u64 = 0x0052_4553_4554; // "RESET"

impl DqnLearner {
    /// A fresh learner over `network` (which must have a dueling or linear Q head).
    pub fn new(
        cfg: DqnConfig,
        network: NetworkConfig,
        sampler: Sampler,
        seed: u64,
        planned_updates: u64,
        precision: Precision,
    ) -> Result<Self> {
        cfg.validate()?;
        check_q_head(&network)?;
        let online = Network::new(network, seed)?;
        let target = online.clone();
        let opt = AdamW::new(cfg.adamw(planned_updates))?;
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        rng.set_stream(RNG_STREAM);
        Ok(Self::assemble(
            cfg,
            online,
            target,
            opt,
            sampler,
            rng,
            seed,
            precision,
            planned_updates,
            0,
        ))
    }

    /// A learner restored from the files [`Learner::save`] wrote under `stem`. The learning-rate
    /// schedule is re-planned for `planned_updates` (a resumed run may have a new budget).
    pub fn load(
        cfg: DqnConfig,
        stem: &Path,
        sampler: Sampler,
        seed: u64,
        planned_updates: u64,
        precision: Precision,
    ) -> Result<Self> {
        cfg.validate()?;
        let main_file = with_suffix(stem, ".safetensors");
        let main = autodidact_core::load_checkpoint(&main_file)?;
        crate::learners::check_checkpoint_kind(&Dqn, &main.extra, &main_file)?;
        let online = main.network;
        check_q_head(online.config())?;
        let target =
            autodidact_core::load_checkpoint(&with_suffix(stem, ".target.safetensors"))?.network;
        if target.config() != online.config() {
            return Err(AgentError::RunDir {
                path: with_suffix(stem, ".target.safetensors"),
                reason: "the target network's shape differs from the online network's".into(),
            });
        }
        let mut opt = match main.optimizer {
            Some(o) => o,
            None => AdamW::new(cfg.adamw(planned_updates))?,
        };
        let field = |k: &str| -> Result<u128> {
            main.extra
                .get(k)
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| AgentError::RunDir {
                    path: with_suffix(stem, ".safetensors"),
                    reason: format!("checkpoint metadata lacks `{k}`"),
                })
        };
        let updates = field("dqn_updates")? as u64;
        // Keep the moments and the step count; take every hyper-parameter from this session's
        // config, so `--resume --set dqn.lr=…` means what it says. The schedule spans from the
        // update the optimizer started at (a head reset starts it again: see `reset_head`) to
        // the plan's end, as it did before the stop.
        let started_at = updates.saturating_sub(opt.steps());
        opt.config = cfg.adamw(planned_updates.saturating_sub(started_at));
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        rng.set_stream(RNG_STREAM);
        rng.set_word_pos(field("dqn_rng_word_pos")?);
        Ok(Self::assemble(
            cfg,
            online,
            target,
            opt,
            sampler,
            rng,
            seed,
            precision,
            planned_updates,
            updates,
        ))
    }

    #[allow(clippy::too_many_arguments)]
    fn assemble(
        cfg: DqnConfig,
        online: Network,
        target: Network,
        opt: AdamW,
        sampler: Sampler,
        rng: ChaCha8Rng,
        init_seed: u64,
        precision: Precision,
        planned_updates: u64,
        updates: u64,
    ) -> Self {
        let batch = SampleBatch::with_capacity(cfg.batch_size);
        DqnLearner {
            metrics_fresh: true,
            metrics: LearnerMetrics {
                updates,
                lr: opt.config.lr_at(opt.steps() + 1),
                ..LearnerMetrics::default()
            },
            cfg,
            online,
            target,
            opt,
            sampler,
            rng,
            init_seed,
            precision,
            planned_updates,
            updates,
            batch,
            obs: Tensor::default(),
            next: Tensor::default(),
            q: Tensor::default(),
            y: Tensor::default(),
            grad: Tensor::default(),
            best: Vec::new(),
            bootstrap: Vec::new(),
            prios: Vec::new(),
        }
    }

    /// The online network.
    pub fn network(&self) -> &Network {
        &self.online
    }

    fn record(&mut self, loss: f32, outcome: StepOutcome) {
        let counts = (self.updates, self.opt.skipped());
        self.metrics
            .record_update(&mut self.metrics_fresh, counts, loss, outcome, &self.online);
    }
}

impl DqnLearner {
    /// Copies the sampled batch's observations into the network inputs and computes its
    /// n-step double-Q targets into `bootstrap`: the online network picks the bootstrap
    /// action, the target network values it (van Hasselt et al. 2016).
    fn targets(&mut self, rows: usize) -> Result<()> {
        let b = &self.batch;
        let obs_len = b.obs_len;
        self.obs.resize(&[rows, obs_len]);
        self.obs
            .data_mut()
            .copy_from_slice(&b.obs[..rows * obs_len]);
        self.next.resize(&[rows, obs_len]);
        self.next
            .data_mut()
            .copy_from_slice(&b.next_obs[..rows * obs_len]);
        self.best.clear();
        if self.cfg.double_q {
            let q_next = self.online.forward(&self.next, false)?;
            self.best.extend((0..rows).map(|i| argmax(q_next.row(i))));
        }
        let q_next_target = self.target.forward(&self.next, false)?;
        if !self.cfg.double_q {
            self.best
                .extend((0..rows).map(|i| argmax(q_next_target.row(i))));
        }
        self.bootstrap.clear();
        self.bootstrap.extend(
            (0..rows).map(|i| b.rewards[i] + b.discounts[i] * q_next_target.row(i)[self.best[i]]),
        );
        Ok(())
    }
}

fn check_q_head(cfg: &NetworkConfig) -> Result<()> {
    match cfg.head {
        HeadConfig::DuelingQ { .. } | HeadConfig::Linear { .. } => Ok(()),
        HeadConfig::PolicyValue { .. } => Err(AgentError::Config(
            "the DQN learner needs a Q head (dueling_q or linear), not policy_value".into(),
        )),
    }
}

impl Learner for DqnLearner {
    fn ready(&self) -> bool {
        self.sampler.len() >= self.cfg.batch_size
    }

    fn update(&mut self) -> Result<UpdateReport> {
        let c = self.cfg.clone();
        let (rows, n_actions) = (c.batch_size, self.online.config().head.out_dim());
        let progress = (self.updates as f64 / self.planned_updates.max(1) as f64).min(1.0);

        // 1. A batch ∝ priority^α with importance weights, β annealed from β₀ to 1.
        let nstep = NStep {
            n: c.n_step,
            gamma: c.gamma,
        };
        let sampled = if c.prioritized {
            let beta = c.per_beta0 + (1.0 - c.per_beta0) * progress;
            self.sampler
                .sample_prioritized(&mut self.rng, rows, nstep, beta, &mut self.batch)
        } else {
            self.sampler
                .sample_uniform(&mut self.rng, rows, nstep, &mut self.batch)
        };
        match sampled {
            Ok(()) => {}
            Err(ReplayError::Empty) => {
                return Err(AgentError::Config(
                    "replay is empty: call `ready()` before `update()`".into(),
                ));
            }
            Err(e) => return Err(e.into()),
        }
        // 2. n-step double-Q targets: the online network picks, the target network values.
        self.targets(rows)?;
        let b = &self.batch;

        // 3. Importance-weighted Huber loss on the taken actions, plus the MoE aux losses.
        let q = self.online.forward(&self.obs, true)?;
        self.q.resize(&[rows, n_actions]);
        self.q.data_mut().copy_from_slice(q.data());
        self.y.resize(&[rows, n_actions]);
        self.y.data_mut().copy_from_slice(self.q.data());
        self.prios.clear();
        for i in 0..rows {
            let a = usize::try_from(b.actions[i])
                .ok()
                .filter(|&a| a < n_actions)
                .ok_or_else(|| {
                    AgentError::Config(format!(
                        "replay holds action {} but the network has {n_actions} actions",
                        b.actions[i]
                    ))
                })?;
            let delta = self.bootstrap[i] - self.q.row(i)[a];
            self.y.row_mut(i)[a] = self.bootstrap[i];
            self.prios.push(delta.abs() + c.per_eps);
        }
        // `huber` averages over every Q-value; only the taken action's differs from its
        // target, so scale back to a per-transition mean.
        let loss = huber(
            &self.q,
            &self.y,
            c.huber_delta,
            Some(&b.weights[..rows]),
            &mut self.grad,
        )? * n_actions as f32;
        for g in self.grad.data_mut() {
            *g *= n_actions as f32;
        }
        self.online.backward(&self.grad)?;
        let aux = self.online.aux_loss();
        let outcome = self.opt.step(&mut self.online, loss + aux);

        // 4. New priorities |δ| + ε (skipped updates leave them as they were).
        let applied = matches!(outcome, StepOutcome::Applied { .. });
        if c.prioritized && applied && self.prios.iter().all(|p| p.is_finite()) {
            self.sampler
                .update_priorities(&self.batch.ids[..rows], &self.prios)?;
        }

        // 5. The target network follows.
        self.updates += 1;
        if c.tau < 1.0 {
            polyak_update(&mut self.target, &self.online, c.tau)?;
        } else if self.updates % c.target_update_interval == 0 {
            copy_params(&mut self.target, &self.online)?;
        }
        self.record(loss, outcome);
        Ok(UpdateReport {
            loss,
            aux_loss: aux,
            applied,
        })
    }

    fn acting_snapshot(&self) -> Result<Snapshot> {
        Ok(Snapshot::from_network(&self.online, self.precision)?)
    }

    fn set_obs_stats(&mut self, stats: &ObsNormalizer) {
        for net in [&mut self.online, &mut self.target] {
            if net.normalizer.enabled && net.normalizer.mean.len() == stats.mean.len() {
                net.normalizer.count = stats.count;
                net.normalizer.mean.clone_from(&stats.mean);
                net.normalizer.var.clone_from(&stats.var);
            }
        }
    }

    fn obs_stats(&self) -> Option<ObsNormalizer> {
        self.online
            .normalizer
            .enabled
            .then(|| self.online.normalizer.clone())
    }

    fn save(&self, stem: &Path) -> Result<PathBuf> {
        let main = with_suffix(stem, ".safetensors");
        let extra = BTreeMap::from([
            ("learner".to_string(), "dqn".to_string()),
            ("dqn_updates".to_string(), self.updates.to_string()),
            (
                "dqn_rng_word_pos".to_string(),
                self.rng.get_word_pos().to_string(),
            ),
        ]);
        // The target first: a crash between the two leaves the previous main file as the
        // newest complete checkpoint.
        autodidact_core::save_checkpoint(
            &with_suffix(stem, ".target.safetensors"),
            &self.target,
            None,
            &BTreeMap::new(),
        )?;
        autodidact_core::save_checkpoint(&main, &self.online, Some(&self.opt), &extra)?;
        Ok(main)
    }

    fn metrics(&self) -> LearnerMetrics {
        self.metrics.clone()
    }

    fn plasticity(&mut self, samples: usize) -> Result<Option<PlasticitySummary>> {
        if !self.ready() || samples == 0 {
            return Ok(None);
        }
        let summary = measure_plasticity_of(
            &mut self.online,
            &self.sampler,
            (self.init_seed, self.updates),
            samples,
        )?;
        self.metrics.plasticity = Some(summary);
        Ok(Some(summary))
    }

    fn set_lr_scale(&mut self, scale: f32) {
        if scale.is_finite() && scale >= 0.0 {
            self.opt.config.lr = self.cfg.lr * scale;
        }
    }

    fn reset_head(&mut self) -> Result<bool> {
        // A seed of its own per reset, from the learner's state only: lockstep runs stay
        // reproducible.
        let seed = self.init_seed ^ RESET_STREAM ^ self.updates;
        reset_head(&mut self.online, seed)?;
        copy_params(&mut self.target, &self.online)?;
        let left = self.planned_updates.saturating_sub(self.updates);
        self.opt = AdamW::new(self.cfg.adamw(left))?;
        Ok(true)
    }

    fn reanalyse(&mut self, batches: usize) -> Result<Option<ReanalyseReport>> {
        let c = self.cfg.clone();
        if !self.ready() || batches == 0 {
            return Ok(None);
        }
        let (rows, n_actions) = (c.batch_size, self.online.config().head.out_dim());
        let nstep = NStep {
            n: c.n_step,
            gamma: c.gamma,
        };
        let mut report = ReanalyseReport::default();
        let (mut td_sum, mut target_sum, mut q_sum, mut prio_sum) = (0.0, 0.0, 0.0, 0.0);
        for _ in 0..batches {
            // Uniform, not prioritized: the point is to revisit what sampling by stale
            // priorities would leave alone.
            self.sampler
                .sample_uniform(&mut self.rng, rows, nstep, &mut self.batch)?;
            self.targets(rows)?;
            let b = &self.batch;
            let q = self.online.forward(&self.obs, false)?;
            self.prios.clear();
            for i in 0..rows {
                let a = usize::try_from(b.actions[i])
                    .ok()
                    .filter(|&a| a < n_actions)
                    .ok_or_else(|| {
                        AgentError::Config(format!(
                            "replay holds action {} but the network has {n_actions} actions",
                            b.actions[i]
                        ))
                    })?;
                let qa = q.row(i)[a];
                let delta = self.bootstrap[i] - qa;
                td_sum += f64::from(delta.abs());
                target_sum += f64::from(self.bootstrap[i]);
                q_sum += f64::from(qa);
                if c.prioritized {
                    prio_sum += f64::from(self.sampler.priority(b.ids[i]).unwrap_or(0.0));
                }
                self.prios.push(delta.abs() + c.per_eps);
            }
            if c.prioritized && self.prios.iter().all(|p| p.is_finite()) {
                self.sampler
                    .update_priorities(&self.batch.ids[..rows], &self.prios)?;
            }
            report.transitions += rows;
        }
        let n = report.transitions as f64;
        report.mean_abs_td = td_sum / n;
        report.mean_target = target_sum / n;
        report.mean_q = q_sum / n;
        report.mean_priority_before = c.prioritized.then_some(prio_sum / n);
        Ok(Some(report))
    }
}
/// The DQN entry of the learner registry: discrete actions, a dueling Q-network, ε-greedy
/// acting.
pub struct Dqn;

impl LearnerKind for Dqn {
    fn name(&self) -> &'static str {
        "dqn"
    }

    fn supports(&self, space: &Space) -> bool {
        matches!(space, Space::Discrete { n } if *n >= 1)
    }

    fn needs(&self) -> &'static str {
        "a discrete action space"
    }

    fn network(
        &self,
        net: &NetworkSection,
        obs_dim: usize,
        space: &Space,
    ) -> Result<NetworkConfig> {
        let n_actions = discrete_actions(space, "the DQN learner")?;
        Ok(net.build(obs_dim, HeadConfig::DuelingQ { n_actions }))
    }

    fn action_space(&self, space: &Space) -> Result<ActionSpace> {
        let n = discrete_actions(space, "the DQN learner")? as i64;
        Ok(ActionSpace::Discrete { n })
    }

    fn policy(&self, space: &Space) -> Result<Box<dyn Policy>> {
        Ok(Box::new(QPolicy::new(discrete_actions(
            space,
            "the DQN learner",
        )?)))
    }

    fn plan(&self, configs: LearnerConfigs<'_>) -> LearnerPlan {
        let c = configs.dqn;
        LearnerPlan {
            batch_size: c.batch_size,
            learning_starts: c.learning_starts,
            replay_ratio: c.replay_ratio,
            publish_every: c.publish_every,
            priority_alpha: if c.prioritized { c.per_alpha } else { 0.0 },
            gamma: c.gamma,
            lr: c.lr,
            lr_final_ratio: c.lr_final_ratio,
            // One matrix chain per update, too small to split across threads: a second
            // thread was no faster and slowed the actor it competed with (BENCHMARKS.md).
            threads: 1,
        }
    }

    fn planned_updates(&self, configs: LearnerConfigs<'_>, total_steps: u64) -> u64 {
        configs.dqn.planned_updates(total_steps)
    }

    fn exploration(&self, configs: LearnerConfigs<'_>, steps: u64, horizon: Horizon) -> f32 {
        let d = configs.dqn;
        let (hi, lo) = (d.exploration_initial_eps, d.exploration_final_eps);
        if steps < d.learning_starts {
            return hi;
        }
        match horizon {
            Horizon::Run { total } => d.epsilon(steps, total),
            Horizon::Endless { span } => {
                let t = (steps - d.learning_starts) as f64 / span.max(1) as f64;
                hi + (lo - hi) * t.min(1.0) as f32
            }
        }
    }

    fn validate(&self, configs: LearnerConfigs<'_>) -> Result<()> {
        configs.dqn.validate()
    }

    fn create(&self, ctx: LearnerContext<'_>) -> Result<Box<dyn Learner>> {
        Ok(Box::new(DqnLearner::new(
            ctx.configs.dqn.clone(),
            ctx.network,
            ctx.sampler,
            ctx.seed,
            ctx.planned_updates,
            ctx.precision,
        )?))
    }

    fn load(&self, ctx: LearnerContext<'_>, stem: &Path) -> Result<Box<dyn Learner>> {
        let learner = DqnLearner::load(
            ctx.configs.dqn.clone(),
            stem,
            ctx.sampler,
            ctx.seed,
            ctx.planned_updates,
            ctx.precision,
        )?;
        if learner.network().config() != &ctx.network {
            return Err(AgentError::RunDir {
                path: stem.to_path_buf(),
                reason: "the checkpoint's network differs from the configured one".into(),
            });
        }
        Ok(Box::new(learner))
    }

    fn file_suffixes(&self) -> &'static [&'static str] {
        &[".safetensors", ".target.safetensors"]
    }

    fn adopt(&self, network: &Network, stem: &Path) -> Result<()> {
        check_q_head(network.config())?;
        let extra = BTreeMap::from([
            ("learner".to_string(), "dqn".to_string()),
            ("dqn_updates".to_string(), "0".to_string()),
            ("dqn_rng_word_pos".to_string(), "0".to_string()),
        ]);
        // The target first, as in `save`: a crash between the two leaves no main file.
        let target = with_suffix(stem, ".target.safetensors");
        autodidact_core::save_checkpoint(&target, network, None, &BTreeMap::new())?;
        autodidact_core::save_checkpoint(
            &with_suffix(stem, ".safetensors"),
            network,
            None,
            &extra,
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use autodidact_core::{BlockConfig, HeadConfig};
    use autodidact_replay::{
        ActionRef, ActionSpace, Dtype, EpisodeEnd, ReplayStore, RunSpec, StoreOptions,
    };

    /// A learner saved after a head reset and loaded again learns on with the learning rate
    /// the unbroken learner has: the reset's schedule (over the updates left at the reset) is
    /// what the loaded optimizer follows, not one over the whole plan.
    #[test]
    fn a_learner_loaded_after_a_head_reset_keeps_the_resets_schedule() {
        let dir = tempfile::tempdir().unwrap();
        let store =
            ReplayStore::open(dir.path().join("replay.sqlite"), StoreOptions::default()).unwrap();
        let run = store
            .create_run(&RunSpec {
                env_id: "test".into(),
                obs_dims: vec![2],
                obs_dtype: Dtype::F32,
                action_space: ActionSpace::Discrete { n: 2 },
                config: serde_json::json!({}),
                code_version: "test".into(),
            })
            .unwrap();
        let handle = store.start_writer(Default::default()).unwrap();
        let w = handle.writer();
        for e in 0..20 {
            let mut ep = w.begin_episode(&run, None);
            for t in 0..10 {
                let o = [e as f32 * 0.1, t as f32 * 0.1];
                ep.push(&o, ActionRef::Discrete(t % 2), 1.0, None).unwrap();
            }
            ep.finish(&[0.0, 1.0], EpisodeEnd::Terminated).unwrap();
        }
        w.flush().unwrap();
        let cfg = DqnConfig {
            batch_size: 8,
            learning_starts: 0,
            ..DqnConfig::default()
        };
        let net = NetworkConfig {
            obs_dim: 2,
            d_model: 8,
            blocks: vec![BlockConfig::Dense { d_hidden: 8 }],
            head: HeadConfig::Linear { out_dim: 2 },
            normalize_obs: false,
            obs_clip: 5.0,
        };
        let planned = 1_000;
        let mut l = DqnLearner::new(
            cfg.clone(),
            net,
            store.sampler(),
            3,
            planned,
            Precision::F32,
        )
        .unwrap();
        for _ in 0..300 {
            l.update().unwrap();
        }
        assert!(l.reset_head().unwrap());
        for _ in 0..100 {
            l.update().unwrap();
        }
        let stem = dir.path().join("learner");
        l.save(&stem).unwrap();
        let back =
            DqnLearner::load(cfg, &stem, store.sampler(), 3, planned, Precision::F32).unwrap();
        let lr = |l: &DqnLearner| l.opt.config.lr_at(l.opt.steps() + 1);
        let (a, b) = (lr(&l), lr(&back));
        assert_eq!(
            a, b,
            "the loaded learner's learning rate {b} differs from {a}"
        );
    }
}
