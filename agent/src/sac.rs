//! Soft Actor-Critic for continuous (`Box`) action spaces: twin Q critics with Polyak targets,
//! a tanh-squashed Gaussian actor, and a learned entropy temperature.
//!
//! Haarnoja et al. 2018, "Soft Actor-Critic: Off-Policy Maximum Entropy Deep Reinforcement
//! Learning with a Stochastic Actor" (the squashed Gaussian and its log-probability correction,
//! appendix C), with the automatic temperature and twin critics of Haarnoja et al. 2018b,
//! "Soft Actor-Critic Algorithms and Applications" (arXiv 1812.05905). The twin-critic minimum
//! is Fujimoto et al. 2018 (TD3). Defaults follow Stable-Baselines3's SAC and the
//! rl-baselines3-zoo settings for Pendulum-v1.
//!
//! One update, top to bottom, as in [`SacLearner::update`] (α is the temperature before this
//! update's temperature step, as in SB3):
//! 1. draw a batch (uniformly, or ∝ priority^α with importance weights when `prioritized`),
//!    with n-step sums; stored environment actions are scaled back to [−1, 1];
//! 2. targets `y = Σ_{k<n} γ^k r_{t+k} + γ^n (min_j Q'_j(s_{t+n}, ã') − α log π(ã'|s_{t+n}))`
//!    with `ã' ~ π(·|s_{t+n})`; no bootstrap after a terminal state;
//! 3. each critic descends `½·mean(w (Q_j(s, a) − y)²)` plus its MoE auxiliary losses;
//! 4. the actor descends `mean(α log π(ã|s) − min_j Q_j(s, ã))`, `ã = tanh(μ + σε)`: ∂Q/∂ã
//!    comes from the critics' [`Network::input_gradient`] (the last `A` input columns), then
//!    [`SquashedGaussian::backward`] carries it and ∂/∂log π to the actor's raw output;
//! 5. the temperature descends `−log α · mean(log π + H̄)` with target entropy `H̄ = −A`
//!    ([`autodidact_core::loss::entropy_temperature`]);
//! 6. the target critics follow by Polyak averaging `θ' ← τθ + (1 − τ)θ'`.
//!
//! Actions: the actor's `tanh` output `u ∈ [−1, 1]` is mapped onto the `Box` bounds,
//! `low + (u + 1)/2 · (high − low)`, and clamped to them, so no out-of-bounds action reaches an
//! environment; replay stores the environment's action.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use autodidact_core::dist::{default_target_entropy, deterministic_row, sample_row};
use autodidact_core::loss::entropy_temperature;
use autodidact_core::optim::polyak_update;
use autodidact_core::precision::{Precision, Scratch};
use autodidact_core::{
    AdamW, AdamWConfig, HeadConfig, LrSchedule, Module, Network, NetworkConfig, ObsNormalizer,
    Param, Snapshot, SquashedGaussian, StepOutcome, Tensor,
};
use autodidact_envs::{Action, Space};
use autodidact_replay::{ActionSpace, NStep, ReplayError, SampleBatch, Sampler};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::config::NetworkSection;
use crate::error::{AgentError, Result};
use crate::learner::{
    Learner, LearnerMetrics, PlasticitySummary, UpdateReport, measure_plasticity_of,
};
use crate::learners::{Horizon, LearnerConfigs, LearnerContext, LearnerKind, LearnerPlan};
use crate::policy::{ActMode, Acted, Policy};
use crate::runtime::with_suffix;

/// Hyper-parameters of [`SacLearner`], named as in the papers and as Stable-Baselines3 names
/// them (its `train_freq = 1, gradient_steps = 1` is `replay_ratio = 1`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SacConfig {
    /// Discount γ.
    pub gamma: f32,
    /// Rewards summed per target (n of n-step returns; 1 is the papers' SAC).
    pub n_step: usize,
    /// Transitions per gradient update.
    pub batch_size: usize,
    /// Adam learning rate of the actor, the critics and the temperature.
    pub lr: f32,
    /// The learning rate decays linearly to `lr · lr_final_ratio` over the run's planned
    /// updates (1 = constant, as in SB3).
    pub lr_final_ratio: f32,
    /// Adam ε.
    pub adam_eps: f32,
    /// Decoupled weight decay of the actor and critics.
    pub weight_decay: f32,
    /// Global gradient-norm clip of each network (0 = none, as in SB3).
    pub max_grad_norm: f32,
    /// Environment steps of uniformly random actions before learning.
    pub learning_starts: u64,
    /// Gradient updates per environment step after `learning_starts`.
    pub replay_ratio: f64,
    /// Polyak factor τ of the target critics per update.
    pub tau: f32,
    /// Learn the temperature α (the v2 paper's automatic entropy adjustment); else it stays
    /// at `init_alpha`.
    pub auto_alpha: bool,
    /// Temperature α at the start.
    pub init_alpha: f32,
    /// Target entropy H̄ of the automatic temperature; unset = −(action dimensions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_entropy: Option<f32>,
    /// Sample ∝ priority^α instead of uniformly (off by default, as in SB3).
    pub prioritized: bool,
    /// Priority exponent α of prioritized replay.
    pub per_alpha: f64,
    /// Initial importance-sampling exponent β₀, annealed linearly to 1 over the run.
    pub per_beta0: f64,
    /// Added to |δ| so that no transition's priority reaches zero.
    pub per_eps: f32,
    /// Publish acting weights every this many updates.
    pub publish_every: u64,
    /// Temporal correlation ρ of the actors' exploration noise (0 = independent, as in the
    /// papers). See [`ExplorationNoise`].
    pub noise_rho: f32,
}

impl Default for SacConfig {
    fn default() -> Self {
        SacConfig {
            gamma: 0.99,
            n_step: 1,
            batch_size: 256,
            lr: 1e-3,
            lr_final_ratio: 1.0,
            adam_eps: 1e-8,
            weight_decay: 0.0,
            max_grad_norm: 0.0,
            learning_starts: 100,
            replay_ratio: 1.0,
            tau: 0.005,
            auto_alpha: true,
            init_alpha: 1.0,
            target_entropy: None,
            prioritized: false,
            per_alpha: 0.6,
            per_beta0: 0.4,
            per_eps: 1e-3,
            publish_every: 10,
            noise_rho: 0.0,
        }
    }
}

impl SacConfig {
    /// Checks every key against its documented range (see `agent/train.toml`), naming it.
    pub fn validate(&self) -> Result<()> {
        use crate::bounds::{self, MAX_BATCH, MAX_STEPS};
        bounds::real("sac.gamma", self.gamma.into(), 0.0, 1.0)?;
        bounds::size("sac.n_step", self.n_step, 1, 1_000)?;
        bounds::size("sac.batch_size", self.batch_size, 1, MAX_BATCH)?;
        bounds::real("sac.lr", self.lr.into(), 1e-12, 10.0)?;
        bounds::real("sac.lr_final_ratio", self.lr_final_ratio.into(), 0.0, 1.0)?;
        bounds::real("sac.adam_eps", self.adam_eps.into(), 1e-30, 1.0)?;
        bounds::real("sac.weight_decay", self.weight_decay.into(), 0.0, 100.0)?;
        bounds::real("sac.max_grad_norm", self.max_grad_norm.into(), 0.0, 1e12)?;
        bounds::int("sac.learning_starts", self.learning_starts, 0, MAX_STEPS)?;
        bounds::real("sac.replay_ratio", self.replay_ratio, 1e-6, 1_000.0)?;
        bounds::real("sac.tau", self.tau.into(), 1e-6, 1.0)?;
        bounds::real("sac.init_alpha", self.init_alpha.into(), 1e-8, 1e6)?;
        if let Some(h) = self.target_entropy {
            bounds::real("sac.target_entropy", h.into(), -1e6, 1e6)?;
        }
        bounds::real("sac.per_alpha", self.per_alpha, 0.0, 10.0)?;
        bounds::real("sac.per_beta0", self.per_beta0, 0.0, 1.0)?;
        bounds::real("sac.per_eps", self.per_eps.into(), 1e-12, 1e6)?;
        bounds::int("sac.publish_every", self.publish_every, 1, MAX_STEPS)?;
        bounds::real("sac.noise_rho", self.noise_rho.into(), 0.0, 0.999)
    }

    /// Gradient updates a run of `total_steps` environment steps plans for.
    pub fn planned_updates(&self, total_steps: u64) -> u64 {
        ((total_steps.saturating_sub(self.learning_starts)) as f64 * self.replay_ratio) as u64
    }

    fn adamw(&self, planned_updates: u64) -> AdamWConfig {
        AdamWConfig {
            eps: self.adam_eps,
            weight_decay: self.weight_decay,
            max_grad_norm: (self.max_grad_norm > 0.0).then_some(self.max_grad_norm),
            schedule: if self.lr_final_ratio < 1.0 {
                LrSchedule::WarmupLinear {
                    warmup_steps: 0,
                    total_steps: planned_updates.max(1),
                    final_ratio: self.lr_final_ratio,
                }
            } else {
                LrSchedule::Constant
            },
            ..AdamWConfig::new(self.lr)
        }
    }

    /// The temperature's optimiser: plain Adam on one scalar, never clipped or decayed.
    fn alpha_adam(&self, planned_updates: u64) -> AdamWConfig {
        AdamWConfig {
            weight_decay: 0.0,
            max_grad_norm: None,
            ..self.adamw(planned_updates)
        }
    }
}

/// The learned temperature, as a one-parameter module so core's Adam (with its NaN guard)
/// optimises it like any network.
#[derive(Clone, Debug)]
struct LogAlpha(Param);

impl LogAlpha {
    fn new(value: f32) -> Self {
        let mut p = Param::new("log_alpha", Tensor::zeros(&[1]), false);
        p.value.data_mut()[0] = value;
        LogAlpha(p)
    }

    fn get(&self) -> f32 {
        self.0.value.data()[0]
    }
}

impl Module for LogAlpha {
    fn visit_params<'a>(&'a self, f: &mut dyn FnMut(&'a Param)) {
        f(&self.0);
    }

    fn visit_params_mut<'a>(&'a mut self, f: &mut dyn FnMut(&'a mut Param)) {
        f(&mut self.0);
    }
}

/// Maps a `Box` action space's bounds to and from the actor's [−1, 1].
#[derive(Clone, Debug, PartialEq)]
pub struct ActionScale {
    mid: Vec<f32>,
    half: Vec<f32>,
    low: Vec<f32>,
    high: Vec<f32>,
}

impl ActionScale {
    /// The scale of `space`, a one-dimensional `Box` with finite bounds (else an error saying
    /// what SAC needs).
    pub fn new(space: &Space) -> Result<Self> {
        match space {
            Space::Box { low, high, shape }
                if shape.len() == 1
                    && !low.is_empty()
                    && low.len() == high.len()
                    && low.iter().chain(high).all(|v| v.is_finite())
                    && low.iter().zip(high).all(|(l, h)| l <= h) =>
            {
                Ok(ActionScale {
                    // Halves first: `high − low` overflows for bounds near ±f32::MAX.
                    mid: low
                        .iter()
                        .zip(high)
                        .map(|(l, h)| 0.5 * l + 0.5 * h)
                        .collect(),
                    half: low
                        .iter()
                        .zip(high)
                        .map(|(l, h)| 0.5 * h - 0.5 * l)
                        .collect(),
                    low: low.clone(),
                    high: high.clone(),
                })
            }
            other => Err(AgentError::Config(format!(
                "the SAC learner needs {}; the environment has {other:?}",
                Sac.needs()
            ))),
        }
    }

    /// Action dimensions.
    pub fn dim(&self) -> usize {
        self.mid.len()
    }

    /// The environment action for actor output `unit` (each in [−1, 1]), clamped to the
    /// bounds so that rounding never leaves them.
    pub fn to_env(&self, unit: &[f32], out: &mut Vec<f32>) {
        out.clear();
        for (i, &u) in unit.iter().enumerate() {
            let x = self.mid[i] + u.clamp(-1.0, 1.0) * self.half[i];
            out.push(x.clamp(self.low[i], self.high[i]));
        }
    }

    /// The actor's [−1, 1] for stored environment actions `env` (clamped; 0 for a
    /// zero-width bound or a non-finite value).
    pub fn to_unit(&self, env: &[f32], out: &mut [f32]) {
        for (i, (o, &x)) in out.iter_mut().zip(env).enumerate() {
            let u = (x - self.mid[i]) / self.half[i];
            *o = if u.is_finite() {
                u.clamp(-1.0, 1.0)
            } else {
                0.0
            };
        }
    }

    /// A uniformly random environment action from `unit` uniforms in [0, 1).
    fn uniform(&self, u01: &[f32], out: &mut Vec<f32>) {
        out.clear();
        for (i, &u) in u01.iter().enumerate() {
            let x = self.low[i] + u * (self.half[i] + self.half[i]);
            out.push(x.clamp(self.low[i], self.high[i]));
        }
    }
}

/// A standard normal draw (Box–Muller on two uniforms; the second value is not kept, so the
/// stream's position alone says where it is, which makes resumes exact).
fn normal(rng: &mut ChaCha8Rng) -> f32 {
    let u1: f64 = 1.0 - rng.random::<f64>(); // in (0, 1]: ln(u1) is finite
    let u2: f64 = rng.random::<f64>();
    ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
}

fn fill_normal(rng: &mut ChaCha8Rng, t: &mut Tensor, rows: usize, cols: usize) {
    t.resize(&[rows, cols]);
    for v in t.data_mut() {
        *v = normal(rng);
    }
}

/// `[left | right]` row by row into `out`.
fn concat(left: &Tensor, right: &Tensor, out: &mut Tensor) {
    let (rows, l, r) = (left.rows(), left.cols(), right.cols());
    out.resize(&[rows, l + r]);
    for i in 0..rows {
        let row = out.row_mut(i);
        row[..l].copy_from_slice(left.row(i));
        row[l..].copy_from_slice(right.row(i));
    }
}

/// Buffers of the actor loss, reused from update to update.
#[derive(Clone, Debug, Default)]
struct ActorScratch {
    x: Tensor,
    d_q1: Tensor,
    d_q2: Tensor,
    d_action: Tensor,
    d_log_prob: Vec<f32>,
    d_raw: Tensor,
}

/// SAC's actor loss `mean(α log π(ã|s) − min(Q1, Q2)(s, ã))` for the actor's raw output `raw`
/// on `obs` and the noise `eps`, and its gradient with respect to `raw` (left in
/// `s.d_raw`). ∂Q/∂ã comes through each critic's [`Network::input_gradient`]; the minimum
/// passes the gradient to the critic that was smaller on each row. The critics' parameter
/// gradients are left untouched.
fn actor_loss(
    critics: [&mut Network; 2],
    obs: &Tensor,
    raw: &Tensor,
    eps: &Tensor,
    alpha: f32,
    pi: &mut SquashedGaussian,
    s: &mut ActorScratch,
) -> Result<f32> {
    let (rows, obs_dim, a_dim) = (obs.rows(), obs.cols(), pi.action_dim());
    let (action, log_prob) = pi.forward(raw, eps)?;
    concat(obs, action, &mut s.x);
    let [q1_net, q2_net] = critics;
    let x = &s.x;
    let (q1, q2) = rayon::join(|| q1_net.forward(x, true), || q2_net.forward(x, true));
    let (q1, q2) = (q1?.data(), q2?.data());
    let inv = 1.0 / rows as f32;
    s.d_q1.resize(&[rows, 1]);
    s.d_q2.resize(&[rows, 1]);
    s.d_log_prob.clear();
    let mut loss = 0.0f64;
    for (i, &lp) in log_prob.iter().enumerate() {
        let (a, b) = (q1[i], q2[i]);
        let first = a <= b;
        loss += f64::from(alpha * lp - if first { a } else { b });
        s.d_q1.data_mut()[i] = if first { -inv } else { 0.0 };
        s.d_q2.data_mut()[i] = if first { 0.0 } else { -inv };
        s.d_log_prob.push(alpha * inv);
    }
    let (d_q1, d_q2) = (&s.d_q1, &s.d_q2);
    let (d_x1, d_x2) = rayon::join(
        || q1_net.input_gradient(d_q1),
        || q2_net.input_gradient(d_q2),
    );
    s.d_action.resize(&[rows, a_dim]);
    s.d_action.fill(0.0);
    for d_x in [d_x1?, d_x2?] {
        for i in 0..rows {
            for (d, &g) in s.d_action.row_mut(i).iter_mut().zip(&d_x.row(i)[obs_dim..]) {
                *d += g;
            }
        }
    }
    let d_raw = pi.backward(&s.d_action, &s.d_log_prob)?;
    s.d_raw.resize(d_raw.shape());
    s.d_raw.data_mut().copy_from_slice(d_raw.data());
    Ok((loss / rows as f64) as f32)
}

/// The networks of a SAC learner besides the actor, in the order of their files.
const CRITIC_FILES: [&str; 4] = [
    ".q1.safetensors",
    ".q2.safetensors",
    ".q1_target.safetensors",
    ".q2_target.safetensors",
];

/// The SAC learner. See the module documentation for the algorithm.
#[derive(Debug)]
pub struct SacLearner {
    cfg: SacConfig,
    scale: ActionScale,
    target_entropy: f32,
    actor: Network,
    q1: Network,
    q2: Network,
    q1_target: Network,
    q2_target: Network,
    actor_opt: AdamW,
    q1_opt: AdamW,
    q2_opt: AdamW,
    log_alpha: LogAlpha,
    alpha_opt: AdamW,
    pi: SquashedGaussian,
    sampler: Sampler,
    rng: ChaCha8Rng,
    /// The run's seed, which the actor was initialised with: θ₀ is rebuilt from it when
    /// plasticity is measured.
    init_seed: u64,
    precision: Precision,
    planned_updates: u64,
    updates: u64,
    metrics: LearnerMetrics,
    metrics_fresh: bool,
    batch: SampleBatch,
    obs: Tensor,
    next: Tensor,
    act: Tensor,
    eps: Tensor,
    x: Tensor,
    y: Vec<f32>,
    /// Each critic's loss gradient, and half its |δ| (their sum is the priority).
    grad: [Tensor; 2],
    td: [Vec<f32>; 2],
    prios: Vec<f32>,
    scratch: ActorScratch,
}

/// Seed tag of the learner's sampling and noise stream.
const RNG_STREAM: u64 = 0x0053_4143_4c52; // "SACLR"

/// The critic over `[obs | action]` that goes with `actor` (same body, one output).
fn critic_config(section: &NetworkSection, obs_dim: usize, a_dim: usize) -> NetworkConfig {
    section.build(obs_dim + a_dim, HeadConfig::Linear { out_dim: 1 })
}

/// The action dimensions of a SAC actor (a linear head of `2A` outputs: means, log-stds).
fn actor_action_dim(cfg: &NetworkConfig) -> Result<usize> {
    match cfg.head {
        HeadConfig::Linear { out_dim } if out_dim >= 2 && out_dim % 2 == 0 => Ok(out_dim / 2),
        ref h => Err(AgentError::Config(format!(
            "the SAC learner's actor needs a linear head of 2·(action dimensions) outputs \
             (means and log-stds), not {h:?}"
        ))),
    }
}

impl SacLearner {
    /// A fresh learner: the actor from `ctx.network`, the critics from `ctx.network_section`.
    pub fn new(ctx: LearnerContext<'_>) -> Result<Self> {
        let cfg = ctx.configs.sac.clone();
        cfg.validate()?;
        let scale = ActionScale::new(&ctx.action_space)?;
        check_actor(&ctx.network, ctx.obs_dim, scale.dim())?;
        let critic = critic_config(&ctx.network_section, ctx.obs_dim, scale.dim());
        let actor = Network::new(ctx.network.clone(), ctx.seed)?;
        // Distinct seeds, so the twin critics start from different points.
        let q1 = Network::new(critic.clone(), ctx.seed ^ 0x5131)?;
        let q2 = Network::new(critic, ctx.seed ^ 0x5132)?;
        let mut rng = ChaCha8Rng::seed_from_u64(ctx.seed);
        rng.set_stream(RNG_STREAM);
        let plan = ctx.planned_updates;
        let nets = [q1.clone(), q2.clone()];
        let [q1_target, q2_target] = nets;
        Self::assemble(
            ctx,
            cfg.clone(),
            scale,
            [actor, q1, q2, q1_target, q2_target],
            [
                AdamW::new(cfg.adamw(plan))?,
                AdamW::new(cfg.adamw(plan))?,
                AdamW::new(cfg.adamw(plan))?,
            ],
            (
                LogAlpha::new(cfg.init_alpha.ln()),
                AdamW::new(cfg.alpha_adam(plan))?,
            ),
            rng,
            0,
        )
    }

    /// A learner restored from the files [`Learner::save`] wrote under `stem`; the schedules
    /// are re-planned for `ctx.planned_updates` and every hyper-parameter is this session's.
    pub fn load(ctx: LearnerContext<'_>, stem: &Path) -> Result<Self> {
        let cfg = ctx.configs.sac.clone();
        cfg.validate()?;
        let scale = ActionScale::new(&ctx.action_space)?;
        let plan = ctx.planned_updates;
        let main_file = with_suffix(stem, ".safetensors");
        let main = autodidact_core::load_checkpoint(&main_file)?;
        crate::learners::check_checkpoint_kind(&Sac, &main.extra, &main_file)?;
        let bad = |path: &Path, reason: String| AgentError::RunDir {
            path: path.to_path_buf(),
            reason,
        };
        if main.network.config() != &ctx.network {
            return Err(bad(
                &main_file,
                "the checkpoint's actor differs from the configured network".into(),
            ));
        }
        let critic = critic_config(&ctx.network_section, ctx.obs_dim, scale.dim());
        let mut nets = Vec::with_capacity(4);
        let mut opts = Vec::with_capacity(2);
        for sfx in CRITIC_FILES {
            let file = with_suffix(stem, sfx);
            let loaded = autodidact_core::load_checkpoint(&file)?;
            if loaded.network.config() != &critic {
                return Err(bad(
                    &file,
                    "the critic's shape differs from the configured network's".into(),
                ));
            }
            if nets.len() < 2 {
                opts.push(loaded.optimizer);
            }
            nets.push(loaded.network);
        }
        let with_config = |o: Option<AdamW>| -> Result<AdamW> {
            let mut o = match o {
                Some(o) => o,
                None => AdamW::new(cfg.adamw(plan))?,
            };
            o.config = cfg.adamw(plan);
            Ok(o)
        };
        let field = |k: &str| -> Result<u128> {
            main.extra
                .get(k)
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| bad(&main_file, format!("checkpoint metadata lacks `{k}`")))
        };
        let bits = |k: &str| -> Result<Vec<f32>> {
            let v = main
                .extra
                .get(k)
                .ok_or_else(|| bad(&main_file, format!("checkpoint metadata lacks `{k}`")))?;
            v.split(',')
                .filter(|s| !s.is_empty())
                .map(|s| s.parse::<u32>().map(f32::from_bits))
                .collect::<std::result::Result<_, _>>()
                .map_err(|e| bad(&main_file, format!("`{k}`: {e}")))
        };
        let log_alpha = LogAlpha::new(
            *bits("sac_log_alpha")?
                .first()
                .ok_or_else(|| bad(&main_file, "`sac_log_alpha` is empty".into()))?,
        );
        let mut alpha_opt = AdamW::new(cfg.alpha_adam(plan))?;
        let (m, v) = (bits("sac_alpha_m")?, bits("sac_alpha_v")?);
        let moments = |x: Vec<f32>| if x.is_empty() { vec![] } else { vec![x] };
        alpha_opt.restore(
            &log_alpha,
            field("sac_alpha_steps")? as u64,
            field("sac_alpha_skipped")? as u64,
            moments(m),
            moments(v),
        )?;
        let updates = field("sac_updates")? as u64;
        let mut rng = ChaCha8Rng::seed_from_u64(ctx.seed);
        rng.set_stream(RNG_STREAM);
        rng.set_word_pos(field("sac_rng_word_pos")?);
        let mut nets = nets.into_iter();
        let mut opts = opts.into_iter();
        let mut next = || {
            nets.next()
                .ok_or_else(|| bad(stem, "a critic file is missing".into()))
        };
        let networks = [main.network, next()?, next()?, next()?, next()?];
        let optimizers = [
            with_config(main.optimizer)?,
            with_config(opts.next().flatten())?,
            with_config(opts.next().flatten())?,
        ];
        Self::assemble(
            ctx,
            cfg,
            scale,
            networks,
            optimizers,
            (log_alpha, alpha_opt),
            rng,
            updates,
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn assemble(
        ctx: LearnerContext<'_>,
        cfg: SacConfig,
        scale: ActionScale,
        networks: [Network; 5],
        optimizers: [AdamW; 3],
        (log_alpha, alpha_opt): (LogAlpha, AdamW),
        rng: ChaCha8Rng,
        updates: u64,
    ) -> Result<Self> {
        let [actor, q1, q2, q1_target, q2_target] = networks;
        let [actor_opt, q1_opt, q2_opt] = optimizers;
        let a_dim = scale.dim();
        let batch = SampleBatch::with_capacity(cfg.batch_size);
        Ok(SacLearner {
            target_entropy: cfg
                .target_entropy
                .unwrap_or_else(|| default_target_entropy(a_dim)),
            metrics_fresh: true,
            metrics: LearnerMetrics {
                updates,
                lr: actor_opt.config.lr_at(actor_opt.steps() + 1),
                ..LearnerMetrics::default()
            },
            pi: SquashedGaussian::new(a_dim)?,
            cfg,
            scale,
            actor,
            q1,
            q2,
            q1_target,
            q2_target,
            actor_opt,
            q1_opt,
            q2_opt,
            log_alpha,
            alpha_opt,
            sampler: ctx.sampler,
            init_seed: ctx.seed,
            rng,
            precision: ctx.precision,
            planned_updates: ctx.planned_updates,
            updates,
            batch,
            obs: Tensor::default(),
            next: Tensor::default(),
            act: Tensor::default(),
            eps: Tensor::default(),
            x: Tensor::default(),
            y: Vec::new(),
            grad: Default::default(),
            td: Default::default(),
            prios: Vec::new(),
            scratch: ActorScratch::default(),
        })
    }

    /// The actor network.
    pub fn network(&self) -> &Network {
        &self.actor
    }

    /// The temperature α now.
    pub fn alpha(&self) -> f32 {
        self.log_alpha.get().exp()
    }

    fn record(&mut self, loss: f32, outcome: StepOutcome) {
        let skipped = self.q1_opt.skipped() + self.q2_opt.skipped() + self.actor_opt.skipped();
        self.metrics.record_update(
            &mut self.metrics_fresh,
            (self.updates, skipped),
            loss,
            outcome,
            &self.actor,
        );
    }

    /// Step 1: a batch, its observations, and its stored actions scaled back to [−1, 1].
    fn sample(&mut self) -> Result<()> {
        let c = &self.cfg;
        let rows = c.batch_size;
        let nstep = NStep {
            n: c.n_step,
            gamma: c.gamma,
        };
        let sampled = if c.prioritized {
            let progress = (self.updates as f64 / self.planned_updates.max(1) as f64).min(1.0);
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
        let b = &self.batch;
        let a_dim = self.scale.dim();
        if b.act_len != a_dim || b.actions_continuous.len() < rows * a_dim {
            return Err(AgentError::Config(format!(
                "replay holds actions of {} values but the SAC learner acts in {a_dim}",
                b.act_len
            )));
        }
        let obs_len = b.obs_len;
        self.obs.resize(&[rows, obs_len]);
        self.obs
            .data_mut()
            .copy_from_slice(&b.obs[..rows * obs_len]);
        self.next.resize(&[rows, obs_len]);
        self.next
            .data_mut()
            .copy_from_slice(&b.next_obs[..rows * obs_len]);
        self.act.resize(&[rows, a_dim]);
        for i in 0..rows {
            let stored = &b.actions_continuous[i * a_dim..(i + 1) * a_dim];
            self.scale.to_unit(stored, self.act.row_mut(i));
        }
        Ok(())
    }

    /// Step 3: one critic's importance-weighted squared error on `self.y`, and its step.
    fn critic_step(
        net: &mut Network,
        opt: &mut AdamW,
        x: &Tensor,
        y: &[f32],
        weights: &[f32],
        grad: &mut Tensor,
        half_abs_td: &mut Vec<f32>,
    ) -> Result<(f32, f32, StepOutcome)> {
        let rows = y.len();
        let q = net.forward(x, true)?;
        grad.resize(&[rows, 1]);
        half_abs_td.clear();
        let mut loss = 0.0f64;
        for i in 0..rows {
            let d = q.data()[i] - y[i];
            loss += f64::from(0.5 * weights[i] * d * d);
            grad.data_mut()[i] = weights[i] * d / rows as f32;
            half_abs_td.push(0.5 * d.abs());
        }
        let loss = (loss / rows as f64) as f32;
        net.backward(grad)?;
        let aux = net.aux_loss();
        let outcome = opt.step(net, loss + aux);
        Ok((loss, aux, outcome))
    }
}

fn check_actor(cfg: &NetworkConfig, obs_dim: usize, a_dim: usize) -> Result<()> {
    if actor_action_dim(cfg)? != a_dim || cfg.obs_dim != obs_dim {
        return Err(AgentError::Config(format!(
            "the SAC actor reads {} observation values and acts in {} dimensions; the \
             environment has {obs_dim} and {a_dim}",
            cfg.obs_dim,
            cfg.head.out_dim() / 2
        )));
    }
    Ok(())
}

impl Learner for SacLearner {
    fn plasticity(&mut self, samples: usize) -> Result<Option<PlasticitySummary>> {
        if !self.ready() || samples == 0 {
            return Ok(None);
        }
        let summary = measure_plasticity_of(
            &mut self.actor,
            &self.sampler,
            (self.init_seed, self.updates),
            samples,
        )?;
        self.metrics.plasticity = Some(summary);
        Ok(Some(summary))
    }

    fn ready(&self) -> bool {
        self.sampler.len() >= self.cfg.batch_size
    }

    fn update(&mut self) -> Result<UpdateReport> {
        // 1. A batch; α before this update's temperature step.
        self.sample()?;
        let (rows, a_dim) = (self.cfg.batch_size, self.scale.dim());
        let alpha = self.alpha();

        // 2. Soft targets from the target critics at an action the actor samples now.
        let raw_next = self.actor.forward(&self.next, false)?;
        fill_normal(&mut self.rng, &mut self.eps, rows, a_dim);
        let (a_next, logp_next) = self.pi.forward(raw_next, &self.eps)?;
        concat(&self.next, a_next, &mut self.x);
        let x = &self.x;
        let (q1_next, q2_next) = rayon::join(
            || self.q1_target.forward(x, false),
            || self.q2_target.forward(x, false),
        );
        let (q1_next, q2_next) = (q1_next?.data(), q2_next?.data());
        let b = &self.batch;
        self.y.clear();
        for (i, &lp) in logp_next.iter().enumerate() {
            let soft = q1_next[i].min(q2_next[i]) - alpha * lp;
            self.y.push(b.rewards[i] + b.discounts[i] * soft);
        }

        // 3. Both critics on the stored actions. The twins are independent until the actor
        // step, so they learn side by side when the learner's pool has a second thread.
        concat(&self.obs, &self.act, &mut self.x);
        let (x, y, w) = (&self.x, &self.y[..], &self.batch.weights[..rows]);
        let ([g1, g2], [td1, td2]) = (&mut self.grad, &mut self.td);
        let (r1, r2) = rayon::join(
            || Self::critic_step(&mut self.q1, &mut self.q1_opt, x, y, w, g1, td1),
            || Self::critic_step(&mut self.q2, &mut self.q2_opt, x, y, w, g2, td2),
        );
        let ((l1, aux1, _), (l2, aux2, outcome)) = (r1?, r2?);
        self.prios.clear();
        self.prios.extend(
            self.td[0]
                .iter()
                .zip(&self.td[1])
                .map(|(&a, &b)| self.cfg.per_eps + a + b),
        );
        let applied = matches!(outcome, StepOutcome::Applied { .. });
        if self.cfg.prioritized && applied && self.prios.iter().all(|p| p.is_finite()) {
            self.sampler
                .update_priorities(&self.batch.ids[..rows], &self.prios)?;
        }

        // 4. The actor through the (just updated) critics, frozen: their parameter gradients
        // are not taken.
        let raw = self.actor.forward(&self.obs, true)?;
        fill_normal(&mut self.rng, &mut self.eps, rows, a_dim);
        let actor_loss = actor_loss(
            [&mut self.q1, &mut self.q2],
            &self.obs,
            raw,
            &self.eps,
            alpha,
            &mut self.pi,
            &mut self.scratch,
        )?;
        self.actor.backward(&self.scratch.d_raw)?;
        let actor_aux = self.actor.aux_loss();
        self.actor_opt.step(&mut self.actor, actor_loss + actor_aux);

        // 5. The temperature, from the same log-probabilities.
        if self.cfg.auto_alpha {
            let (loss, grad) = entropy_temperature(
                self.log_alpha.get(),
                self.pi.log_prob(),
                self.target_entropy,
            )?;
            self.log_alpha.0.grad.data_mut()[0] = grad;
            self.alpha_opt.step(&mut self.log_alpha, loss);
        }

        // 6. The target critics follow.
        let tau = self.cfg.tau;
        let (p1, p2) = rayon::join(
            || polyak_update(&mut self.q1_target, &self.q1, tau),
            || polyak_update(&mut self.q2_target, &self.q2, tau),
        );
        p1?;
        p2?;
        self.updates += 1;
        let loss = 0.5 * (l1 + l2);
        self.record(loss, outcome);
        Ok(UpdateReport {
            loss,
            aux_loss: aux1 + aux2,
            applied,
        })
    }

    fn acting_snapshot(&self) -> Result<Snapshot> {
        Ok(Snapshot::from_network(&self.actor, self.precision)?)
    }

    fn set_obs_stats(&mut self, stats: &ObsNormalizer) {
        let net = &mut self.actor;
        if net.normalizer.enabled && net.normalizer.mean.len() == stats.mean.len() {
            net.normalizer.count = stats.count;
            net.normalizer.mean.clone_from(&stats.mean);
            net.normalizer.var.clone_from(&stats.var);
        }
        // The critics read `[obs | action]`: the actions are already in [−1, 1], so their
        // columns pass through (mean 0, variance 1).
        let a_dim = self.scale.dim();
        for net in [
            &mut self.q1,
            &mut self.q2,
            &mut self.q1_target,
            &mut self.q2_target,
        ] {
            let n = &mut net.normalizer;
            if n.enabled && n.mean.len() == stats.mean.len() + a_dim {
                n.count = stats.count;
                n.mean.clear();
                n.mean.extend_from_slice(&stats.mean);
                n.mean.resize(stats.mean.len() + a_dim, 0.0);
                n.var.clear();
                n.var.extend_from_slice(&stats.var);
                n.var.resize(stats.var.len() + a_dim, 1.0);
            }
        }
    }

    fn obs_stats(&self) -> Option<ObsNormalizer> {
        self.actor
            .normalizer
            .enabled
            .then(|| self.actor.normalizer.clone())
    }

    fn save(&self, stem: &Path) -> Result<PathBuf> {
        // The critics first: a crash before the actor's file leaves no newer main file.
        let critics = [
            (&self.q1, Some(&self.q1_opt)),
            (&self.q2, Some(&self.q2_opt)),
            (&self.q1_target, None),
            (&self.q2_target, None),
        ];
        for ((net, opt), sfx) in critics.into_iter().zip(CRITIC_FILES) {
            autodidact_core::save_checkpoint(&with_suffix(stem, sfx), net, opt, &BTreeMap::new())?;
        }
        let (m, v) = self.alpha_opt.moments();
        let join = |x: &[Vec<f32>]| {
            x.iter()
                .flatten()
                .map(|f| f.to_bits().to_string())
                .collect::<Vec<_>>()
                .join(",")
        };
        let extra = BTreeMap::from([
            ("learner".to_string(), "sac".to_string()),
            ("sac_updates".to_string(), self.updates.to_string()),
            (
                "sac_rng_word_pos".to_string(),
                self.rng.get_word_pos().to_string(),
            ),
            (
                "sac_log_alpha".to_string(),
                self.log_alpha.get().to_bits().to_string(),
            ),
            (
                "sac_alpha_steps".to_string(),
                self.alpha_opt.steps().to_string(),
            ),
            (
                "sac_alpha_skipped".to_string(),
                self.alpha_opt.skipped().to_string(),
            ),
            ("sac_alpha_m".to_string(), join(m)),
            ("sac_alpha_v".to_string(), join(v)),
        ]);
        let main = with_suffix(stem, ".safetensors");
        autodidact_core::save_checkpoint(&main, &self.actor, Some(&self.actor_opt), &extra)?;
        Ok(main)
    }

    fn metrics(&self) -> LearnerMetrics {
        self.metrics.clone()
    }

    fn set_lr_scale(&mut self, scale: f32) {
        if scale.is_finite() && scale >= 0.0 {
            for opt in [
                &mut self.actor_opt,
                &mut self.q1_opt,
                &mut self.q2_opt,
                &mut self.alpha_opt,
            ] {
                opt.config.lr = self.cfg.lr * scale;
            }
        }
    }
}

/// Acts with a SAC actor in a `Box` action space: greedy is `tanh(mean)`, exploring is a
/// sample of the squashed Gaussian (or, with probability `level`, a uniformly random action),
/// both mapped onto the bounds.
pub struct SacPolicy {
    noise: ExplorationNoise,
    scale: ActionScale,
    obs: Tensor,
    raw: Tensor,
    unit: Vec<f32>,
    u01: Vec<f32>,
    eps: Vec<f32>,
    action: Vec<f32>,
    /// Made from the first snapshot acted with: every version of one run shares its shapes.
    scratch: Option<Scratch>,
}

impl SacPolicy {
    /// A policy exploring with noise correlated by `rho` over time ([`ExplorationNoise`]).
    pub fn with_noise_rho(mut self, rho: f32) -> Self {
        self.noise = ExplorationNoise::new(rho, self.scale.dim());
        self
    }

    /// A policy acting in `space` (a one-dimensional `Box` with finite bounds).
    pub fn new(space: &Space) -> Result<Self> {
        let scale = ActionScale::new(space)?;
        let a = scale.dim();
        Ok(SacPolicy {
            noise: ExplorationNoise::new(0.0, a),
            scale,
            obs: Tensor::default(),
            raw: Tensor::default(),
            unit: vec![0.0; a],
            u01: vec![0.0; a],
            eps: vec![0.0; a],
            action: Vec::with_capacity(a),
            scratch: None,
        })
    }
}

impl Policy for SacPolicy {
    fn act(
        &mut self,
        weights: &Snapshot,
        obs: &[f32],
        mode: ActMode,
        rng: &mut ChaCha8Rng,
    ) -> Result<Acted> {
        let a = self.scale.dim();
        let cfg = weights.config();
        if actor_action_dim(cfg)? != a {
            return Err(AgentError::Config(format!(
                "the model has {} outputs but a SAC actor in this environment needs {}",
                cfg.head.out_dim(),
                2 * a
            )));
        }
        if cfg.obs_dim != obs.len() {
            return Err(AgentError::Config(format!(
                "the model reads {} observation values but the environment gives {}",
                cfg.obs_dim,
                obs.len()
            )));
        }
        // Every draw first, the same count whatever is chosen, so the stream's position does
        // not depend on the network.
        let random = match mode {
            ActMode::Greedy => false,
            ActMode::Explore { level } => {
                let coin = rng.random::<f32>() < level;
                for u in &mut self.u01 {
                    *u = rng.random::<f32>();
                }
                for e in &mut self.eps {
                    *e = normal(rng);
                }
                self.noise.correlate(&mut self.eps);
                coin
            }
        };
        if random {
            if self.noise.is_white() {
                self.scale.uniform(&self.u01, &mut self.action);
            } else {
                // The warm-up's random actions follow the correlated noise too: independent
                // uniform pushes cancel out, and a car that must rock never leaves the valley.
                for (u, &e) in self.unit.iter_mut().zip(&self.eps) {
                    *u = e.clamp(-1.0, 1.0);
                }
                self.scale.to_env(&self.unit, &mut self.action);
            }
            return Ok(Acted {
                action: Action::Continuous(self.action.clone()),
                value: f32::NAN,
            });
        }
        self.obs.resize(&[1, obs.len()]);
        self.obs.data_mut().copy_from_slice(obs);
        let scratch = self.scratch.get_or_insert_with(|| weights.scratch());
        weights.forward(&self.obs, &mut self.raw, scratch)?;
        let value = match mode {
            ActMode::Greedy => {
                deterministic_row(self.raw.data(), &mut self.unit)?;
                f32::NAN
            }
            ActMode::Explore { .. } => sample_row(self.raw.data(), &self.eps, &mut self.unit)?,
        };
        self.scale.to_env(&self.unit, &mut self.action);
        Ok(Acted {
            action: Action::Continuous(self.action.clone()),
            value,
        })
    }
}

/// Exploration noise correlated over time: each step's standard-normal draw `n` becomes
/// `ε ← ρ ε + √(1 − ρ²) n`, an AR(1) process (the Ornstein–Uhlenbeck noise of DDPG,
/// Lillicrap et al. 2016, in discrete time) whose every step is still standard normal, so the
/// actor's σ keeps its meaning, but whose pushes keep one direction for about 1/(1 − ρ) steps.
/// Temporally correlated noise in place of SAC's white noise is Eberhard et al. 2023, "Pink
/// Noise Is All You Need: Colored Noise Exploration in Deep Reinforcement Learning" (ICLR),
/// who found it decisive on MountainCarContinuous. ρ = 0 is the paper's independent noise.
/// The state lives in the actor's policy: a resumed run starts it afresh, so only ρ = 0
/// resumes bit-exactly.
#[derive(Clone, Debug)]
pub struct ExplorationNoise {
    rho: f32,
    state: Vec<f32>,
}

impl ExplorationNoise {
    /// Noise of `dims` dimensions with correlation `rho` ∈ [0, 1).
    pub fn new(rho: f32, dims: usize) -> Self {
        ExplorationNoise {
            rho,
            state: vec![0.0; dims],
        }
    }

    /// Independent draws: [`Self::correlate`] leaves them as they are.
    pub fn is_white(&self) -> bool {
        self.rho == 0.0
    }

    /// Turns independent standard-normal draws `eps` into this step's correlated ones.
    pub fn correlate(&mut self, eps: &mut [f32]) {
        if self.is_white() {
            return;
        }
        let fresh = (1.0 - self.rho * self.rho).sqrt();
        for (s, e) in self.state.iter_mut().zip(eps.iter_mut()) {
            *s = self.rho * *s + fresh * *e;
            *e = *s;
        }
    }
}

/// The SAC entry of the learner registry: a bounded `Box` action space, a squashed-Gaussian
/// actor with twin critics.
pub struct Sac;

impl LearnerKind for Sac {
    fn name(&self) -> &'static str {
        "sac"
    }

    fn supports(&self, space: &Space) -> bool {
        ActionScale::new(space).is_ok()
    }

    fn needs(&self) -> &'static str {
        "a one-dimensional Box action space with finite bounds"
    }

    fn network(
        &self,
        net: &NetworkSection,
        obs_dim: usize,
        space: &Space,
    ) -> Result<NetworkConfig> {
        let a = ActionScale::new(space)?.dim();
        Ok(net.build(obs_dim, HeadConfig::Linear { out_dim: 2 * a }))
    }

    fn action_space(&self, space: &Space) -> Result<ActionSpace> {
        Ok(ActionSpace::Continuous {
            dim: ActionScale::new(space)?.dim(),
        })
    }

    fn policy(&self, space: &Space) -> Result<Box<dyn Policy>> {
        Ok(Box::new(SacPolicy::new(space)?))
    }

    fn exploring_policy(
        &self,
        configs: LearnerConfigs<'_>,
        space: &Space,
    ) -> Result<Box<dyn Policy>> {
        Ok(Box::new(
            SacPolicy::new(space)?.with_noise_rho(configs.sac.noise_rho),
        ))
    }

    fn plan(&self, configs: LearnerConfigs<'_>) -> LearnerPlan {
        let c = configs.sac;
        LearnerPlan {
            batch_size: c.batch_size,
            learning_starts: c.learning_starts,
            replay_ratio: c.replay_ratio,
            publish_every: c.publish_every,
            priority_alpha: if c.prioritized { c.per_alpha } else { 0.0 },
            gamma: c.gamma,
            lr: c.lr,
            lr_final_ratio: c.lr_final_ratio,
            // The twin critics learn side by side (`rayon::join` in `update`): on Pendulum,
            // 4 000 steps took 8.4 – 9.1 s instead of 12.8 – 15.4 s.
            threads: 2,
        }
    }

    fn planned_updates(&self, configs: LearnerConfigs<'_>, total_steps: u64) -> u64 {
        configs.sac.planned_updates(total_steps)
    }

    /// Uniformly random actions before `learning_starts` (SB3's warm-up), then none: the
    /// Gaussian explores by itself, at the entropy the temperature holds it to. (The daemon
    /// raises the level after a drift alarm.)
    fn exploration(&self, configs: LearnerConfigs<'_>, steps: u64, _horizon: Horizon) -> f32 {
        if steps < configs.sac.learning_starts {
            1.0
        } else {
            0.0
        }
    }

    fn validate(&self, configs: LearnerConfigs<'_>) -> Result<()> {
        configs.sac.validate()
    }

    fn create(&self, ctx: LearnerContext<'_>) -> Result<Box<dyn Learner>> {
        Ok(Box::new(SacLearner::new(ctx)?))
    }

    fn load(&self, ctx: LearnerContext<'_>, stem: &Path) -> Result<Box<dyn Learner>> {
        Ok(Box::new(SacLearner::load(ctx, stem)?))
    }

    fn file_suffixes(&self) -> &'static [&'static str] {
        &[
            ".safetensors",
            ".q1.safetensors",
            ".q2.safetensors",
            ".q1_target.safetensors",
            ".q2_target.safetensors",
        ]
    }

    /// Saves an actor trained elsewhere with fresh critics (of the actor's own body, with
    /// fixed seeds, their targets copies of them), a fresh temperature (α = 1) and fresh optimiser
    /// state: the critics learn their values from replay before the actor can follow them, so
    /// the adopted actor acts unchanged at first. Refuses a network that is not a SAC actor (a
    /// linear head of an even width ≥ 2).
    fn adopt(&self, network: &Network, stem: &Path) -> Result<()> {
        let cfg = network.config();
        let a_dim = actor_action_dim(cfg)?;
        let critic_cfg = NetworkConfig {
            obs_dim: cfg.obs_dim + a_dim,
            head: HeadConfig::Linear { out_dim: 1 },
            ..cfg.clone()
        };
        let q1 = Network::new(critic_cfg.clone(), 0x5131)?;
        let q2 = Network::new(critic_cfg, 0x5132)?;
        for (net, sfx) in [&q1, &q2, &q1, &q2].into_iter().zip(CRITIC_FILES) {
            autodidact_core::save_checkpoint(&with_suffix(stem, sfx), net, None, &BTreeMap::new())?;
        }
        let extra = BTreeMap::from([
            ("learner".to_string(), "sac".to_string()),
            ("sac_updates".to_string(), "0".to_string()),
            ("sac_rng_word_pos".to_string(), "0".to_string()),
            ("sac_log_alpha".to_string(), 0f32.to_bits().to_string()),
            ("sac_alpha_steps".to_string(), "0".to_string()),
            ("sac_alpha_skipped".to_string(), "0".to_string()),
            ("sac_alpha_m".to_string(), String::new()),
            ("sac_alpha_v".to_string(), String::new()),
        ]);
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
    use autodidact_core::BlockConfig;

    fn dense(obs_dim: usize, out_dim: usize, seed: u64) -> Network {
        let cfg = NetworkConfig {
            obs_dim,
            d_model: 8,
            blocks: vec![BlockConfig::Dense { d_hidden: 8 }],
            head: HeadConfig::Linear { out_dim },
            normalize_obs: false,
            obs_clip: 5.0,
        };
        Network::new(cfg, seed).unwrap()
    }

    /// The actor loss's gradient with respect to the actor's raw output — through the
    /// squashed Gaussian, the critics' input gradient and the twin minimum — matches central
    /// finite differences of the loss itself.
    #[test]
    fn actor_loss_gradient_matches_finite_differences() {
        let (rows, obs_dim, a_dim) = (5, 3, 2);
        let mut q1 = dense(obs_dim + a_dim, 1, 1);
        let mut q2 = dense(obs_dim + a_dim, 1, 2);
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let mut obs = Tensor::default();
        fill_normal(&mut rng, &mut obs, rows, obs_dim);
        let mut eps = Tensor::default();
        fill_normal(&mut rng, &mut eps, rows, a_dim);
        let mut raw = Tensor::default();
        fill_normal(&mut rng, &mut raw, rows, 2 * a_dim);
        // Log-stds well inside the clamp, where the loss is smooth.
        for r in 0..rows {
            for v in &mut raw.row_mut(r)[a_dim..] {
                *v = 0.5 * *v - 0.5;
            }
        }
        let alpha = 0.3;
        let mut pi = SquashedGaussian::new(a_dim).unwrap();
        let mut s = ActorScratch::default();
        let mut loss_at = |raw: &Tensor, s: &mut ActorScratch| {
            let l = actor_loss([&mut q1, &mut q2], &obs, raw, &eps, alpha, &mut pi, s).unwrap();
            (l, s.d_raw.clone())
        };
        let (_, grad) = loss_at(&raw, &mut s);
        let h = 1e-2f32;
        let mut worst = 0.0f32;
        for j in 0..raw.len() {
            let mut plus = raw.clone();
            plus.data_mut()[j] += h;
            let mut minus = raw.clone();
            minus.data_mut()[j] -= h;
            let fd = (loss_at(&plus, &mut s).0 - loss_at(&minus, &mut s).0) / (2.0 * h);
            let an = grad.data()[j];
            let err = (fd - an).abs() / (1e-3 + fd.abs().max(an.abs()));
            worst = worst.max(err);
            assert!(
                err < 2e-2,
                "element {j}: finite difference {fd} vs backward {an}"
            );
        }
        assert!(
            grad.data().iter().any(|g| g.abs() > 1e-4),
            "a zero gradient proves nothing"
        );
        eprintln!("worst relative error {worst}");
    }

    /// Both directions of the action mapping stay inside the bounds, whatever the input.
    #[test]
    fn action_scaling_stays_in_bounds_and_inverts() {
        let space = Space::Box {
            low: vec![-2.0, 0.5, -f32::MAX],
            high: vec![3.0, 0.75, f32::MAX],
            shape: vec![3],
        };
        let s = ActionScale::new(&space).unwrap();
        let mut env = Vec::new();
        for u in [-1.0f32, -0.999, 0.0, 0.3, 0.999_999, 1.0, 7.0, -7.0] {
            s.to_env(&[u, u, u], &mut env);
            assert!(
                space.validate(&Action::Continuous(env.clone())).is_ok(),
                "{u}: {env:?}"
            );
            let mut back = [0.0; 3];
            s.to_unit(&env, &mut back);
            assert!(
                (back[0] - u.clamp(-1.0, 1.0)).abs() < 1e-5,
                "{u} -> {back:?}"
            );
        }
        assert!(
            ActionScale::new(&Space::Box {
                low: vec![f32::NEG_INFINITY],
                high: vec![1.0],
                shape: vec![1]
            })
            .is_err()
        );
        assert!(ActionScale::new(&Space::Discrete { n: 2 }).is_err());
    }

    /// Lag-1 correlation of a series.
    fn lag1(xs: &[f32]) -> f32 {
        let m = xs.iter().sum::<f32>() / xs.len() as f32;
        let var: f32 = xs.iter().map(|x| (x - m).powi(2)).sum();
        let cov: f32 = xs.windows(2).map(|w| (w[0] - m) * (w[1] - m)).sum();
        cov / var
    }

    /// Correlated noise keeps a standard normal's spread but pushes one way for many steps,
    /// and the warm-up's random actions it drives stay inside the bounds; ρ = 0 is white.
    #[test]
    fn correlated_noise_is_unit_normal_and_persistent_and_actions_stay_in_bounds() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let mut noise = ExplorationNoise::new(0.98, 1);
        let xs: Vec<f32> = (0..20_000)
            .map(|_| {
                let mut e = [normal(&mut rng)];
                noise.correlate(&mut e);
                e[0]
            })
            .collect();
        let var = xs.iter().map(|x| x * x).sum::<f32>() / xs.len() as f32;
        assert!((0.8..1.2).contains(&var), "variance {var}");
        assert!((0.95..0.995).contains(&lag1(&xs)), "lag-1 {}", lag1(&xs));

        let space = Space::Box {
            low: vec![-2.0],
            high: vec![2.0],
            shape: vec![1],
        };
        let actor = Snapshot::from_network(&dense(3, 2, 1), Precision::F32).unwrap();
        let explore = ActMode::Explore { level: 1.0 };
        let mut warm_up = |rho: f32| {
            let mut policy = SacPolicy::new(&space).unwrap().with_noise_rho(rho);
            (0..2_000)
                .map(|_| {
                    let acted = policy.act(&actor, &[0.1, 0.2, 0.3], explore, &mut rng);
                    let action = acted.unwrap().action;
                    assert!(space.validate(&action).is_ok(), "{action:?}");
                    match action {
                        Action::Continuous(a) => a[0],
                        other => panic!("a Box policy acted with {other:?}"),
                    }
                })
                .collect::<Vec<f32>>()
        };
        let (white, red) = (warm_up(0.0), warm_up(0.98));
        assert!(lag1(&white).abs() < 0.1, "white lag-1 {}", lag1(&white));
        assert!(lag1(&red) > 0.9, "correlated lag-1 {}", lag1(&red));
    }
}
