//! AdamW with bias correction, decoupled weight decay and a learning-rate schedule; global-norm
//! gradient clipping; and the guard that skips a step whose loss or gradient is not finite.

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::error::{CoreError, Result};
use crate::kernels::{self, AdamWStep};
use crate::param::Module;
use crate::tensor::Tensor;

/// Elements per unit of parallel AdamW work.
const PAR_CHUNK: usize = 1 << 14;

/// Learning-rate schedule, evaluated at the optimizer step about to be taken.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum LrSchedule {
    /// The base learning rate throughout.
    Constant,
    /// Linear warm-up from 0, then linear decay to `final_ratio · lr` at `total_steps`.
    WarmupLinear {
        /// Steps of warm-up.
        warmup_steps: u64,
        /// Step at which decay ends.
        total_steps: u64,
        /// Final learning rate as a fraction of the base.
        final_ratio: f32,
    },
    /// Linear warm-up, then cosine decay to `final_ratio · lr` at `total_steps`.
    WarmupCosine {
        /// Steps of warm-up.
        warmup_steps: u64,
        /// Step at which decay ends.
        total_steps: u64,
        /// Final learning rate as a fraction of the base.
        final_ratio: f32,
    },
}

/// AdamW hyper-parameters, named as in Loshchilov & Hutter (2019).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdamWConfig {
    /// Base learning rate.
    pub lr: f32,
    /// β₁.
    #[serde(default = "d_beta1")]
    pub beta1: f32,
    /// β₂.
    #[serde(default = "d_beta2")]
    pub beta2: f32,
    /// ε.
    #[serde(default = "d_eps")]
    pub eps: f32,
    /// Decoupled weight decay λ, applied to parameters marked for decay.
    #[serde(default)]
    pub weight_decay: f32,
    /// Global gradient-norm clip; `None` disables clipping.
    #[serde(default)]
    pub max_grad_norm: Option<f32>,
    /// Learning-rate schedule.
    #[serde(default = "d_schedule")]
    pub schedule: LrSchedule,
}

fn d_beta1() -> f32 {
    0.9
}
fn d_beta2() -> f32 {
    0.999
}
fn d_eps() -> f32 {
    1e-8
}
fn d_schedule() -> LrSchedule {
    LrSchedule::Constant
}

impl AdamWConfig {
    /// Defaults of PyTorch's `AdamW` with the given learning rate and no decay or clipping.
    pub fn new(lr: f32) -> Self {
        AdamWConfig {
            lr,
            beta1: d_beta1(),
            beta2: d_beta2(),
            eps: d_eps(),
            weight_decay: 0.0,
            max_grad_norm: None,
            schedule: LrSchedule::Constant,
        }
    }

    /// Checks ranges.
    pub fn validate(&self) -> Result<()> {
        let ok = self.lr.is_finite()
            && self.lr >= 0.0
            && (0.0..1.0).contains(&self.beta1)
            && (0.0..1.0).contains(&self.beta2)
            && self.eps.is_finite()
            && self.eps > 0.0
            && self.weight_decay.is_finite()
            && self.weight_decay >= 0.0
            && self.max_grad_norm.is_none_or(|c| c.is_finite() && c > 0.0);
        if !ok {
            return Err(CoreError::Config(format!(
                "adamw: need lr ≥ 0, β₁ and β₂ in [0, 1), ε > 0, weight_decay ≥ 0 and a positive max_grad_norm (got {self:?})"
            )));
        }
        Ok(())
    }

    /// Learning rate for (1-based) step `t`.
    pub fn lr_at(&self, t: u64) -> f32 {
        let warm = |w: u64| {
            if w > 0 && t <= w {
                t as f32 / w as f32
            } else {
                1.0
            }
        };
        let progress = |w: u64, total: u64| {
            if total <= w {
                1.0
            } else {
                ((t.saturating_sub(w)) as f32 / (total - w) as f32).min(1.0)
            }
        };
        match self.schedule {
            LrSchedule::Constant => self.lr,
            LrSchedule::WarmupLinear {
                warmup_steps,
                total_steps,
                final_ratio,
            } => {
                if t <= warmup_steps {
                    return self.lr * warm(warmup_steps);
                }
                let p = progress(warmup_steps, total_steps);
                self.lr * (1.0 + (final_ratio - 1.0) * p)
            }
            LrSchedule::WarmupCosine {
                warmup_steps,
                total_steps,
                final_ratio,
            } => {
                if t <= warmup_steps {
                    return self.lr * warm(warmup_steps);
                }
                let p = progress(warmup_steps, total_steps);
                let c = 0.5 * (1.0 + (std::f32::consts::PI * p).cos());
                self.lr * (final_ratio + (1.0 - final_ratio) * c)
            }
        }
    }
}

/// What [`AdamW::step`] did.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum StepOutcome {
    /// The update was applied.
    Applied {
        /// Global gradient norm before clipping.
        grad_norm: f32,
        /// Learning rate used.
        lr: f32,
    },
    /// The update was skipped and the gradients cleared, because the loss or a gradient was
    /// NaN or infinite. Parameters and optimizer state are untouched.
    Skipped {
        /// The offending loss value.
        loss: f32,
        /// The offending gradient norm.
        grad_norm: f32,
    },
}

/// AdamW optimizer state: one first and second moment per parameter, in visiting order.
#[derive(Clone, Debug)]
pub struct AdamW {
    /// Hyper-parameters.
    pub config: AdamWConfig,
    step: u64,
    skipped: u64,
    m: Vec<Vec<f32>>,
    v: Vec<Vec<f32>>,
}

impl AdamW {
    /// A fresh optimizer.
    pub fn new(config: AdamWConfig) -> Result<Self> {
        config.validate()?;
        Ok(AdamW {
            config,
            step: 0,
            skipped: 0,
            m: Vec::new(),
            v: Vec::new(),
        })
    }

    /// Steps applied so far.
    pub fn steps(&self) -> u64 {
        self.step
    }

    /// Steps skipped for a non-finite loss or gradient.
    pub fn skipped(&self) -> u64 {
        self.skipped
    }

    /// First and second moments in visiting order (empty before the first step).
    pub fn moments(&self) -> (&[Vec<f32>], &[Vec<f32>]) {
        (&self.m, &self.v)
    }

    /// Restores state saved with a checkpoint; lengths are checked against `model`.
    pub fn restore(
        &mut self,
        model: &dyn Module,
        step: u64,
        skipped: u64,
        m: Vec<Vec<f32>>,
        v: Vec<Vec<f32>>,
    ) -> Result<()> {
        let mut lens = Vec::new();
        model.visit_params(&mut |p| lens.push(p.value.len()));
        let fits = |x: &[Vec<f32>]| {
            x.is_empty()
                || (x.len() == lens.len() && x.iter().zip(&lens).all(|(a, &n)| a.len() == n))
        };
        if !fits(&m) || !fits(&v) || m.len() != v.len() {
            return Err(CoreError::Config(
                "adamw: saved optimizer state does not match the model's parameters".into(),
            ));
        }
        self.step = step;
        self.skipped = skipped;
        self.m = m;
        self.v = v;
        Ok(())
    }

    /// Takes one step from the gradients in `model`, given the step's `loss`: checks that the
    /// loss and gradients are finite (else skips, clears gradients, counts), clips the global
    /// norm if configured, applies the fused AdamW update, and clears the gradients.
    pub fn step(&mut self, model: &mut dyn Module, loss: f32) -> StepOutcome {
        let norm = grad_norm(model) as f32;
        if !loss.is_finite() || !norm.is_finite() {
            self.skipped += 1;
            model.zero_grad();
            return StepOutcome::Skipped {
                loss,
                grad_norm: norm,
            };
        }
        if self.m.is_empty() {
            model.visit_params(&mut |p| {
                self.m.push(vec![0.0; p.value.len()]);
                self.v.push(vec![0.0; p.value.len()]);
            });
        }
        let clip = match self.config.max_grad_norm {
            Some(c) if norm > c => c / (norm + 1e-6),
            _ => 1.0,
        };
        self.step += 1;
        let t = self.step as i32;
        let c = &self.config;
        let lr = c.lr_at(self.step);
        let base = AdamWStep {
            lr,
            beta1: c.beta1,
            beta2: c.beta2,
            eps: c.eps,
            weight_decay: 0.0,
            inv_bc1: 1.0 / (1.0 - c.beta1.powi(t)),
            inv_sqrt_bc2: 1.0 / (1.0 - c.beta2.powi(t)).sqrt(),
        };
        let wd = c.weight_decay;
        let chunks: usize = self.m.iter().map(|m| m.len().div_ceil(PAR_CHUNK)).sum();
        if chunks <= 2 || rayon::current_num_threads() == 1 {
            // One pass on the calling thread, allocating nothing: the pool would only add
            // its overhead (element-wise, so the result is the same either way).
            let (mut ms, mut vs) = (self.m.iter_mut(), self.v.iter_mut());
            model.visit_params_mut(&mut |p| {
                if let (Some(m), Some(v)) = (ms.next(), vs.next()) {
                    let s = AdamWStep {
                        weight_decay: if p.decay { wd } else { 0.0 },
                        ..base
                    };
                    kernels::adamw_update(p.value.data_mut(), p.grad.data_mut(), m, v, s, clip);
                }
            });
            return StepOutcome::Applied {
                grad_norm: norm,
                lr,
            };
        }
        // Every (parameter, moments) chunk is independent: update them all in parallel, in
        // chunks small enough to balance the pool. Element-wise, so the result does not depend
        // on how the pool schedules them.
        type Work<'a> = (
            &'a mut [f32],
            &'a mut [f32],
            &'a mut [f32],
            &'a mut [f32],
            AdamWStep,
        );
        let mut work: Vec<Work<'_>> = Vec::new();
        let mut params = Vec::new();
        model.visit_params_mut(&mut |p| params.push(p));
        for ((p, m), v) in params
            .into_iter()
            .zip(self.m.iter_mut())
            .zip(self.v.iter_mut())
        {
            let s = AdamWStep {
                weight_decay: if p.decay { wd } else { 0.0 },
                ..base
            };
            let (pv, g) = (p.value.data_mut(), p.grad.data_mut());
            let chunks = pv.chunks_mut(PAR_CHUNK).zip(g.chunks_mut(PAR_CHUNK));
            for ((pc, gc), (mc, vc)) in
                chunks.zip(m.chunks_mut(PAR_CHUNK).zip(v.chunks_mut(PAR_CHUNK)))
            {
                work.push((pc, gc, mc, vc, s));
            }
        }
        work.into_par_iter()
            .for_each(|(p, g, m, v, s)| kernels::adamw_update(p, g, m, v, s, clip));
        StepOutcome::Applied {
            grad_norm: norm,
            lr,
        }
    }
}

/// Global L2 norm of all gradients, summed in visiting order in f64.
pub fn grad_norm(model: &dyn Module) -> f64 {
    let mut s = 0.0f64;
    model.visit_params(&mut |p| s += kernels::sum_sq(p.grad.data()));
    s.sqrt()
}

/// Scales all gradients so their global norm is at most `max_norm`; returns the norm before.
pub fn clip_grad_norm(model: &mut dyn Module, max_norm: f32) -> f32 {
    let norm = grad_norm(model) as f32;
    if norm.is_finite() && norm > max_norm {
        let c = max_norm / (norm + 1e-6);
        model.visit_params_mut(&mut |p| {
            for g in p.grad.data_mut() {
                *g *= c;
            }
        });
    }
    norm
}

/// Copies `src`'s parameter values into `dst` (same architecture), e.g. a target network.
pub fn copy_params(dst: &mut dyn Module, src: &dyn Module) -> Result<()> {
    polyak_update(dst, src, 1.0)
}

/// `dst ← (1 − τ)·dst + τ·src`, the soft target update of Lillicrap et al. (2016).
pub fn polyak_update(dst: &mut dyn Module, src: &dyn Module, tau: f32) -> Result<()> {
    let mut values: Vec<&Tensor> = Vec::new();
    src.visit_params(&mut |p| values.push(&p.value));
    let mut i = 0;
    let mut err = None;
    dst.visit_params_mut(&mut |p| {
        match values.get(i) {
            Some(s) if s.shape() == p.value.shape() => {
                for (d, &v) in p.value.data_mut().iter_mut().zip(s.data()) {
                    *d = if tau == 1.0 {
                        v
                    } else {
                        (1.0 - tau) * *d + tau * v
                    };
                }
            }
            _ => {
                err = Some(CoreError::Config(format!(
                    "parameter {} has no counterpart of the same shape",
                    p.name
                )))
            }
        }
        i += 1;
    });
    match err {
        Some(e) => Err(e),
        None if i != values.len() => Err(CoreError::Config(
            "models have different parameter counts".into(),
        )),
        None => Ok(()),
    }
}
