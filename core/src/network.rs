//! The network builder: a serde config → observation normaliser → input Linear → residual
//! blocks (MoE or dense) → final LayerNorm → head.
//!
//! Blocks are pre-norm residual blocks, `x + f(LayerNorm(x))`, with `f` an MoE layer or a dense
//! GELU MLP, so an MoE network can be compared with a dense one of equal active parameters by
//! changing one line of config.

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::error::{CoreError, Result, mul, too_large};
use crate::layers::{LayerNorm, Linear, gelu_backward, gelu_forward};
use crate::limits::{MAX_BLOCKS, MAX_DIM, MAX_PARAMS};
use crate::moe::{MoeConfig, MoeLayer, MoeStats};
use crate::normalizer::ObsNormalizer;
use crate::param::{Grads, Module, Param};
use crate::tensor::Tensor;

/// One residual block.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum BlockConfig {
    /// A Mixture-of-Experts feed-forward block.
    Moe {
        /// Expert hidden width.
        d_hidden: usize,
        /// Number of experts.
        n_experts: usize,
        /// Experts per token.
        top_k: usize,
        /// Capacity factor (none = unlimited).
        #[serde(default)]
        capacity_factor: Option<f32>,
        /// Router logit noise while training.
        #[serde(default)]
        router_noise_std: f32,
        /// Renormalise gates over the chosen k (see [`MoeConfig::normalize_gates`]).
        #[serde(default = "d_true")]
        normalize_gates: bool,
        /// Load-balancing loss weight.
        #[serde(default = "d_aux")]
        aux_loss_coef: f32,
        /// Router z-loss weight.
        #[serde(default = "d_z")]
        z_loss_coef: f32,
    },
    /// A dense GELU MLP block `d → d_hidden → d`.
    Dense {
        /// Hidden width.
        d_hidden: usize,
    },
}

fn d_true() -> bool {
    true
}
fn d_aux() -> f32 {
    0.01
}
fn d_z() -> f32 {
    1e-3
}

/// The output head.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum HeadConfig {
    /// A plain linear output of `out_dim` values (regression, Q-values without dueling).
    Linear {
        /// Output width.
        out_dim: usize,
    },
    /// Dueling Q-values (Wang et al. 2016): `Q = V + A − mean(A)`.
    DuelingQ {
        /// Number of discrete actions.
        n_actions: usize,
    },
    /// Policy logits and a state value, output as `[logits…, value]`.
    PolicyValue {
        /// Number of discrete actions.
        n_actions: usize,
    },
}

impl HeadConfig {
    /// Output width of the head (saturating: a validated config never comes near `usize::MAX`).
    pub fn out_dim(&self) -> usize {
        match *self {
            HeadConfig::Linear { out_dim } => out_dim,
            HeadConfig::DuelingQ { n_actions } => n_actions,
            HeadConfig::PolicyValue { n_actions } => n_actions.saturating_add(1),
        }
    }

    /// The width the config declares: `out_dim` or `n_actions`.
    fn declared(&self) -> usize {
        match *self {
            HeadConfig::Linear { out_dim } => out_dim,
            HeadConfig::DuelingQ { n_actions } | HeadConfig::PolicyValue { n_actions } => n_actions,
        }
    }
}

/// The whole network, as stored in checkpoint metadata and config files.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkConfig {
    /// Observation width.
    pub obs_dim: usize,
    /// Model width of the residual stream.
    pub d_model: usize,
    /// Residual blocks, in order.
    pub blocks: Vec<BlockConfig>,
    /// Output head.
    pub head: HeadConfig,
    /// Normalise observations with running statistics.
    #[serde(default)]
    pub normalize_obs: bool,
    /// Clip bound for normalised observations.
    #[serde(default = "d_clip")]
    pub obs_clip: f32,
}

fn d_clip() -> f32 {
    5.0
}

impl NetworkConfig {
    /// `n_blocks` MoE blocks of the given shape with a linear head; convenient for tests.
    pub fn moe(
        obs_dim: usize,
        d_model: usize,
        n_blocks: usize,
        moe: &MoeConfig,
        head: HeadConfig,
    ) -> Self {
        let block = BlockConfig::Moe {
            d_hidden: moe.d_hidden,
            n_experts: moe.n_experts,
            top_k: moe.top_k,
            capacity_factor: moe.capacity_factor,
            router_noise_std: moe.router_noise_std,
            normalize_gates: moe.normalize_gates,
            aux_loss_coef: moe.aux_loss_coef,
            z_loss_coef: moe.z_loss_coef,
        };
        NetworkConfig {
            obs_dim,
            d_model,
            blocks: vec![block; n_blocks],
            head,
            normalize_obs: false,
            obs_clip: d_clip(),
        }
    }

    /// Checks every size and coefficient, naming the bad one, without allocating anything of
    /// the sizes it checks. Every path that builds a network from a config calls it first
    /// ([`Network::new`], checkpoint and snapshot loading), so a config from a file or a user
    /// cannot make the process abort on allocation.
    ///
    /// Limits (see [`crate::limits`]): `obs_dim`, `d_model`, every `d_hidden` and the head's
    /// `out_dim`/`n_actions` in 1..=[`MAX_DIM`] (2^20); at most [`MAX_BLOCKS`] (256) blocks;
    /// MoE blocks as in [`MoeConfig::validate`] (at most 1,024 experts, `top_k` ≤ min(experts,
    /// 64)); and at most [`MAX_PARAMS`] (2^31) parameters in total ([`NetworkConfig::num_params`],
    /// checked arithmetic). A size beyond a limit is [`CoreError::TooLarge`]; a zero or an
    /// inconsistent value is [`CoreError::Config`].
    pub fn validate(&self) -> Result<()> {
        if self.obs_dim == 0 || self.d_model == 0 {
            return Err(CoreError::Config(format!(
                "network: obs_dim and d_model must be > 0 (got {} and {})",
                self.obs_dim, self.d_model
            )));
        }
        let head_name = match self.head {
            HeadConfig::Linear { .. } => "head out_dim",
            _ => "head n_actions",
        };
        for (name, v) in [
            ("obs_dim", self.obs_dim),
            ("d_model", self.d_model),
            (head_name, self.head.declared()),
        ] {
            if v > MAX_DIM {
                return Err(too_large(
                    format!("network {name}"),
                    format!("{v} exceeds the limit of {MAX_DIM}"),
                ));
            }
        }
        if self.blocks.len() > MAX_BLOCKS {
            return Err(too_large(
                "network blocks",
                format!(
                    "{} blocks exceed the limit of {MAX_BLOCKS}",
                    self.blocks.len()
                ),
            ));
        }
        if self.head.declared() == 0 {
            return Err(CoreError::Config(
                "network: the head needs at least one output".into(),
            ));
        }
        if !(self.obs_clip.is_finite() && self.obs_clip > 0.0) {
            return Err(CoreError::Config(format!(
                "network: obs_clip must be positive (got {})",
                self.obs_clip
            )));
        }
        for (i, b) in self.blocks.iter().enumerate() {
            match b {
                BlockConfig::Moe { .. } => self
                    .moe_config(b)
                    .map(|m| m.validate())
                    .transpose()
                    .map(|_| ())?,
                BlockConfig::Dense { d_hidden } if *d_hidden == 0 => {
                    return Err(CoreError::Config(format!(
                        "network: blocks[{i}].d_hidden must be > 0"
                    )));
                }
                BlockConfig::Dense { d_hidden } if *d_hidden > MAX_DIM => {
                    return Err(too_large(
                        format!("network blocks[{i}].d_hidden"),
                        format!("{d_hidden} exceeds the limit of {MAX_DIM}"),
                    ));
                }
                BlockConfig::Dense { .. } => {}
            }
        }
        let params = self.num_params()?;
        if params > MAX_PARAMS {
            return Err(too_large(
                "network",
                format!("{params} parameters exceed the limit of {MAX_PARAMS}"),
            ));
        }
        Ok(())
    }

    /// Total scalar parameters of the network this config builds, with checked arithmetic
    /// ([`CoreError::TooLarge`] on overflow). Allocates nothing.
    pub fn num_params(&self) -> Result<usize> {
        const WHAT: &str = "network parameter count";
        let add = |a: usize, b: usize| {
            a.checked_add(b)
                .ok_or_else(|| too_large(WHAT, format!("{a} + {b} overflows usize")))
        };
        // A Linear d_in → d_out holds d_in·d_out + d_out; a LayerNorm over d holds 2·d.
        let lin = |d_in: usize, d_out: usize| add(mul(WHAT, d_in, d_out)?, d_out);
        let d = self.d_model;
        let norm = mul(WHAT, 2, d)?;
        let mut n = add(lin(self.obs_dim, d)?, norm)?; // input and final norm
        for b in &self.blocks {
            let ffn = match (b, self.moe_config(b)) {
                (_, Some(mc)) => mc.num_params()?,
                (BlockConfig::Dense { d_hidden }, None) => {
                    add(lin(d, *d_hidden)?, lin(*d_hidden, d)?)?
                }
                (BlockConfig::Moe { .. }, None) => 0,
            };
            n = add(add(n, norm)?, ffn)?;
        }
        let head = match self.head {
            HeadConfig::Linear { out_dim } => lin(d, out_dim)?,
            HeadConfig::DuelingQ { n_actions } | HeadConfig::PolicyValue { n_actions } => {
                add(lin(d, 1)?, lin(d, n_actions)?)?
            }
        };
        add(n, head)
    }

    /// Calls `f` with the name and shape of every parameter the network would hold, in the
    /// order of [`Module::visit_params`], without building it: checkpoint loading checks a
    /// file's tensors against these before allocating anything. Stops at the first error.
    pub(crate) fn visit_param_shapes(
        &self,
        f: &mut dyn FnMut(&str, &[usize]) -> Result<()>,
    ) -> Result<()> {
        type Visit<'a> = dyn FnMut(&str, &[usize]) -> Result<()> + 'a;
        fn lin(f: &mut Visit<'_>, name: &str, d_in: usize, d_out: usize) -> Result<()> {
            f(&format!("{name}.w"), &[d_in, d_out])?;
            f(&format!("{name}.b"), &[d_out])
        }
        fn norm(f: &mut Visit<'_>, name: &str, d: usize) -> Result<()> {
            f(&format!("{name}.gamma"), &[d])?;
            f(&format!("{name}.beta"), &[d])
        }
        let d = self.d_model;
        lin(f, "input", self.obs_dim, d)?;
        for (i, b) in self.blocks.iter().enumerate() {
            let name = format!("blocks.{i}");
            norm(f, &format!("{name}.norm"), d)?;
            match *b {
                BlockConfig::Moe {
                    d_hidden,
                    n_experts,
                    ..
                } => {
                    lin(f, &format!("{name}.moe.router"), d, n_experts)?;
                    for e in 0..n_experts {
                        lin(f, &format!("{name}.moe.experts.{e}.fc1"), d, d_hidden)?;
                        lin(f, &format!("{name}.moe.experts.{e}.fc2"), d_hidden, d)?;
                    }
                }
                BlockConfig::Dense { d_hidden } => {
                    lin(f, &format!("{name}.fc1"), d, d_hidden)?;
                    lin(f, &format!("{name}.fc2"), d_hidden, d)?;
                }
            }
        }
        norm(f, "final_norm", d)?;
        match self.head {
            HeadConfig::Linear { out_dim } => lin(f, "head.out", d, out_dim),
            HeadConfig::DuelingQ { n_actions } => {
                lin(f, "head.value", d, 1)?;
                lin(f, "head.advantage", d, n_actions)
            }
            HeadConfig::PolicyValue { n_actions } => {
                lin(f, "head.logits", d, n_actions)?;
                lin(f, "head.value", d, 1)
            }
        }
    }

    fn moe_config(&self, b: &BlockConfig) -> Option<MoeConfig> {
        match *b {
            BlockConfig::Moe {
                d_hidden,
                n_experts,
                top_k,
                capacity_factor,
                router_noise_std,
                normalize_gates,
                aux_loss_coef,
                z_loss_coef,
            } => Some(MoeConfig {
                d_model: self.d_model,
                d_hidden,
                n_experts,
                top_k,
                capacity_factor,
                router_noise_std,
                normalize_gates,
                aux_loss_coef,
                z_loss_coef,
            }),
            BlockConfig::Dense { .. } => None,
        }
    }
}

/// Where a block keeps its hidden post-activations after a forward pass.
pub(crate) enum BlockHidden<'a> {
    /// A dense block's GELU output, `[batch, d_hidden]`.
    Dense(&'a Tensor),
    /// An MoE block: each expert's rows are read with [`MoeLayer::expert_hidden`].
    Moe(&'a MoeLayer),
}

/// The function a residual block applies. A network holds a handful of these, so the size
/// difference between variants costs nothing worth a second indirection.
#[derive(Clone, Debug)]
#[allow(clippy::large_enum_variant)]
enum Ffn {
    Moe(Box<MoeLayer>),
    Dense {
        fc1: Linear,
        fc2: Linear,
        h: Tensor,
        a: Tensor,
        g: Tensor,
    },
}

#[derive(Clone, Debug)]
struct Block {
    norm: LayerNorm,
    ffn: Ffn,
    normed: Tensor,
    f_out: Tensor,
    g_normed: Tensor,
}

impl Block {
    fn forward(&mut self, x: &Tensor, y: &mut Tensor, train: bool) -> Result<()> {
        self.norm.forward(x, &mut self.normed)?;
        match &mut self.ffn {
            Ffn::Moe(m) => m.forward(&self.normed, &mut self.f_out, train)?,
            Ffn::Dense { fc1, fc2, h, a, .. } => {
                fc1.forward(&self.normed, h)?;
                gelu_forward(h, a);
                fc2.forward(a, &mut self.f_out)?;
            }
        }
        y.resize(x.shape());
        for ((o, &xv), &fv) in y.data_mut().iter_mut().zip(x.data()).zip(self.f_out.data()) {
            *o = xv + fv;
        }
        Ok(())
    }

    fn backward(&mut self, x: &Tensor, dy: &Tensor, dx: &mut Tensor, grads: Grads) -> Result<()> {
        match &mut self.ffn {
            Ffn::Moe(m) => m.backward_impl(&self.normed, dy, &mut self.g_normed, grads)?,
            Ffn::Dense { fc1, fc2, h, a, g } => {
                if grads.params() {
                    fc2.backward(a, dy, Some(g))?;
                } else {
                    fc2.input_grad(dy, g)?;
                }
                let ga = std::mem::take(g);
                gelu_backward(h, &ga, g);
                *a = ga; // keep the buffer for the next step
                if grads.params() {
                    fc1.backward(&self.normed, g, Some(&mut self.g_normed))?;
                } else {
                    fc1.input_grad(g, &mut self.g_normed)?;
                }
            }
        }
        self.norm
            .backward_impl(x, &self.g_normed, dx, grads.params())?;
        for (d, &g) in dx.data_mut().iter_mut().zip(dy.data()) {
            *d += g;
        }
        Ok(())
    }
}

impl Module for Block {
    fn visit_params<'a>(&'a self, f: &mut dyn FnMut(&'a Param)) {
        self.norm.visit_params(f);
        match &self.ffn {
            Ffn::Moe(m) => m.visit_params(f),
            Ffn::Dense { fc1, fc2, .. } => {
                fc1.visit_params(f);
                fc2.visit_params(f);
            }
        }
    }
    fn visit_params_mut<'a>(&'a mut self, f: &mut dyn FnMut(&'a mut Param)) {
        self.norm.visit_params_mut(f);
        match &mut self.ffn {
            Ffn::Moe(m) => m.visit_params_mut(f),
            Ffn::Dense { fc1, fc2, .. } => {
                fc1.visit_params_mut(f);
                fc2.visit_params_mut(f);
            }
        }
    }
}

#[derive(Clone, Debug)]
enum Head {
    Linear(Linear),
    DuelingQ {
        value: Linear,
        adv: Linear,
        v: Tensor,
        a: Tensor,
        gv: Tensor,
        ga: Tensor,
        gx: Tensor,
    },
    PolicyValue {
        logits: Linear,
        value: Linear,
        l: Tensor,
        v: Tensor,
        gl: Tensor,
        gv: Tensor,
        gx: Tensor,
    },
}

impl Head {
    fn forward(&mut self, x: &Tensor, y: &mut Tensor) -> Result<()> {
        match self {
            Head::Linear(l) => l.forward(x, y),
            Head::DuelingQ {
                value, adv, v, a, ..
            } => {
                value.forward(x, v)?;
                adv.forward(x, a)?;
                let n = a.cols();
                y.try_resize(&[x.rows(), n])?;
                for r in 0..x.rows() {
                    let ar = a.row(r);
                    let mean = ar.iter().sum::<f32>() / n as f32;
                    let vr = v.row(r)[0];
                    for (q, &av) in y.row_mut(r).iter_mut().zip(ar) {
                        *q = vr + av - mean;
                    }
                }
                Ok(())
            }
            Head::PolicyValue {
                logits,
                value,
                l,
                v,
                ..
            } => {
                logits.forward(x, l)?;
                value.forward(x, v)?;
                let n = l.cols();
                y.try_resize(&[x.rows(), n.saturating_add(1)])?;
                for r in 0..x.rows() {
                    let yr = y.row_mut(r);
                    yr[..n].copy_from_slice(l.row(r));
                    yr[n] = v.row(r)[0];
                }
                Ok(())
            }
        }
    }

    fn backward(&mut self, x: &Tensor, dy: &Tensor, dx: &mut Tensor, params: bool) -> Result<()> {
        // `lin(layer, input, dy, dx)`: the layer's backward, or its input gradient alone.
        let lin = |l: &mut Linear, x: &Tensor, dy: &Tensor, dx: &mut Tensor| {
            if params {
                l.backward(x, dy, Some(dx))
            } else {
                l.input_grad(dy, dx)
            }
        };
        match self {
            Head::Linear(l) => lin(l, x, dy, dx),
            Head::DuelingQ {
                value,
                adv,
                gv,
                ga,
                gx,
                ..
            } => {
                let (m, n) = (dy.rows(), dy.cols());
                gv.resize(&[m, 1]);
                ga.resize(&[m, n]);
                for r in 0..m {
                    let dr = dy.row(r);
                    let s: f32 = dr.iter().sum();
                    gv.row_mut(r)[0] = s;
                    for (g, &d) in ga.row_mut(r).iter_mut().zip(dr) {
                        *g = d - s / n as f32;
                    }
                }
                lin(value, x, gv, dx)?;
                lin(adv, x, ga, gx)?;
                for (d, &g) in dx.data_mut().iter_mut().zip(gx.data()) {
                    *d += g;
                }
                Ok(())
            }
            Head::PolicyValue {
                logits,
                value,
                gl,
                gv,
                gx,
                ..
            } => {
                let (m, n) = (dy.rows(), dy.cols() - 1);
                gl.resize(&[m, n]);
                gv.resize(&[m, 1]);
                for r in 0..m {
                    gl.row_mut(r).copy_from_slice(&dy.row(r)[..n]);
                    gv.row_mut(r)[0] = dy.row(r)[n];
                }
                lin(logits, x, gl, dx)?;
                lin(value, x, gv, gx)?;
                for (d, &g) in dx.data_mut().iter_mut().zip(gx.data()) {
                    *d += g;
                }
                Ok(())
            }
        }
    }
}

impl Module for Head {
    fn visit_params<'a>(&'a self, f: &mut dyn FnMut(&'a Param)) {
        match self {
            Head::Linear(l) => l.visit_params(f),
            Head::DuelingQ { value, adv, .. } => {
                value.visit_params(f);
                adv.visit_params(f);
            }
            Head::PolicyValue { logits, value, .. } => {
                logits.visit_params(f);
                value.visit_params(f);
            }
        }
    }
    fn visit_params_mut<'a>(&'a mut self, f: &mut dyn FnMut(&'a mut Param)) {
        match self {
            Head::Linear(l) => l.visit_params_mut(f),
            Head::DuelingQ { value, adv, .. } => {
                value.visit_params_mut(f);
                adv.visit_params_mut(f);
            }
            Head::PolicyValue { logits, value, .. } => {
                logits.visit_params_mut(f);
                value.visit_params_mut(f);
            }
        }
    }
}

/// A network built from a [`NetworkConfig`], with f32 master weights and every buffer its
/// forward and backward passes need, reused from step to step.
#[derive(Clone, Debug)]
pub struct Network {
    config: NetworkConfig,
    /// Observation statistics (updated explicitly by the actor, saved with checkpoints).
    pub normalizer: ObsNormalizer,
    input: Linear,
    blocks: Vec<Block>,
    final_norm: LayerNorm,
    head: Head,
    x_in: Tensor,
    acts: Vec<Tensor>,
    fin: Tensor,
    out: Tensor,
    g_a: Tensor,
    g_b: Tensor,
    /// Gradient with respect to the raw observation, filled by [`Network::backward_input`]
    /// only, so plain [`Network::backward`] pays nothing for it.
    d_obs: Tensor,
}

impl Network {
    /// Builds the network, drawing initial weights from `seed`.
    ///
    /// Deterministic: every weight is drawn in a fixed order from one `ChaCha8Rng` seeded with
    /// `seed` (no thread pool, clock or address is involved), so the same config and seed give
    /// bit-identical weights on every run and platform for the pinned `rand`/`rand_chacha`
    /// versions. That is what lets a caller rebuild the initial weights θ₀ for
    /// [`crate::plasticity::weight_distance`] instead of keeping a copy (a test checks it).
    pub fn new(config: NetworkConfig, seed: u64) -> Result<Self> {
        config.validate()?;
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let d = config.d_model;
        let input = Linear::new("input", config.obs_dim, d, &mut rng)?;
        let mut blocks = Vec::with_capacity(config.blocks.len());
        for (i, b) in config.blocks.iter().enumerate() {
            let name = format!("blocks.{i}");
            let ffn = match (b, config.moe_config(b)) {
                (_, Some(mc)) => Ffn::Moe(Box::new(MoeLayer::new(
                    &format!("{name}.moe"),
                    mc,
                    &mut rng,
                )?)),
                (BlockConfig::Dense { d_hidden }, None) => Ffn::Dense {
                    fc1: Linear::new(&format!("{name}.fc1"), d, *d_hidden, &mut rng)?,
                    fc2: Linear::new(&format!("{name}.fc2"), *d_hidden, d, &mut rng)?,
                    h: Tensor::default(),
                    a: Tensor::default(),
                    g: Tensor::default(),
                },
                (BlockConfig::Moe { .. }, None) => {
                    unreachable!("moe_config is Some for every MoE block")
                }
            };
            blocks.push(Block {
                norm: LayerNorm::new(&format!("{name}.norm"), d),
                ffn,
                normed: Tensor::default(),
                f_out: Tensor::default(),
                g_normed: Tensor::default(),
            });
        }
        let head = match config.head {
            HeadConfig::Linear { out_dim } => {
                Head::Linear(Linear::new("head.out", d, out_dim, &mut rng)?)
            }
            HeadConfig::DuelingQ { n_actions } => Head::DuelingQ {
                value: Linear::new("head.value", d, 1, &mut rng)?,
                adv: Linear::new("head.advantage", d, n_actions, &mut rng)?,
                v: Tensor::default(),
                a: Tensor::default(),
                gv: Tensor::default(),
                ga: Tensor::default(),
                gx: Tensor::default(),
            },
            HeadConfig::PolicyValue { n_actions } => Head::PolicyValue {
                logits: Linear::new("head.logits", d, n_actions, &mut rng)?,
                value: Linear::new("head.value", d, 1, &mut rng)?,
                l: Tensor::default(),
                v: Tensor::default(),
                gl: Tensor::default(),
                gv: Tensor::default(),
                gx: Tensor::default(),
            },
        };
        let n_blocks = blocks.len();
        Ok(Network {
            normalizer: ObsNormalizer::new(config.obs_dim, config.normalize_obs, config.obs_clip),
            config,
            input,
            blocks,
            final_norm: LayerNorm::new("final_norm", d),
            head,
            x_in: Tensor::default(),
            acts: vec![Tensor::default(); n_blocks + 1],
            fin: Tensor::default(),
            out: Tensor::default(),
            g_a: Tensor::default(),
            g_b: Tensor::default(),
            d_obs: Tensor::default(),
        })
    }

    /// The configuration the network was built from.
    pub fn config(&self) -> &NetworkConfig {
        &self.config
    }

    /// Runs `obs: [batch, obs_dim]` through the network and returns the head's output.
    /// With `train`, router noise applies and caches are kept for [`Network::backward`].
    /// Non-finite observations are rejected.
    pub fn forward(&mut self, obs: &Tensor, train: bool) -> Result<&Tensor> {
        obs.expect_cols("Network::forward", self.config.obs_dim)?;
        if !obs.all_finite() {
            return Err(CoreError::Input(
                "observation contains NaN or infinity".into(),
            ));
        }
        self.normalizer.apply(obs, &mut self.x_in);
        self.input.forward(&self.x_in, &mut self.acts[0])?;
        for (i, block) in self.blocks.iter_mut().enumerate() {
            let (done, rest) = self.acts.split_at_mut(i + 1);
            block.forward(&done[i], &mut rest[0], train)?;
        }
        let last = &self.acts[self.blocks.len()];
        self.final_norm.forward(last, &mut self.fin)?;
        self.head.forward(&self.fin, &mut self.out)?;
        Ok(&self.out)
    }

    /// Back-propagates `d_out` (the loss gradient with respect to the last output) and the
    /// MoE auxiliary losses, accumulating into every parameter's gradient.
    pub fn backward(&mut self, d_out: &Tensor) -> Result<()> {
        self.backward_blocks(d_out, Grads::All)?;
        self.input.backward(&self.x_in, &self.g_b, None)
    }

    /// Back-propagates `d_out` to the raw observation passed to the last
    /// [`Network::forward`] and returns that gradient, `[batch, obs_dim]`: the gradient of
    /// `Σ d_out ⊙ out` with respect to `obs`, through the observation normaliser when it is
    /// active (`x' = clip((x − μ)/σ)`: `g/σ` where `x'` is inside the clip, 0 where clipped).
    ///
    /// This is what SAC's actor loss needs from a critic whose input is `[obs | action]`:
    /// `∂Q/∂action` is the last columns of the result. The MoE auxiliary losses are left out
    /// (unlike [`Network::backward`]): the actor must not be steered by the critic's routing
    /// balance. Parameter gradients are still accumulated as a side effect (they come at the
    /// cost of the same pass); a caller that treats the network as frozen clears them with
    /// [`Module::zero_grad`] before the network's own next update.
    ///
    /// It costs one GEMM more than [`Network::backward`] (the input layer's `dx`), which is
    /// why that gradient is a separate call rather than part of every backward pass.
    pub fn backward_input(&mut self, d_out: &Tensor) -> Result<&Tensor> {
        self.backward_blocks(d_out, Grads::Task)?;
        self.input
            .backward(&self.x_in, &self.g_b, Some(&mut self.g_a))?;
        self.normalizer
            .backward(&self.x_in, &self.g_a, &mut self.d_obs)?;
        Ok(&self.d_obs)
    }

    /// The gradient of `Σ d_out ⊙ out` with respect to the raw observation passed to the last
    /// [`Network::forward`], as [`Network::backward_input`] computes it (the same numbers, bit
    /// for bit), but with every parameter gradient left untouched: for a network treated as
    /// frozen, such as SAC's critics under the actor's loss. It skips every weight-gradient
    /// product, which is about a third of a backward pass, and the caller has nothing to
    /// clear afterwards.
    pub fn input_gradient(&mut self, d_out: &Tensor) -> Result<&Tensor> {
        self.backward_blocks(d_out, Grads::Input)?;
        self.input.input_grad(&self.g_b, &mut self.g_a)?;
        self.normalizer
            .backward(&self.x_in, &self.g_a, &mut self.d_obs)?;
        Ok(&self.d_obs)
    }

    /// The head, final norm and blocks in reverse, leaving the gradient with respect to the
    /// input layer's output in `g_b`.
    fn backward_blocks(&mut self, d_out: &Tensor, grads: Grads) -> Result<()> {
        if d_out.shape() != self.out.shape() {
            return Err(crate::error::shape_err(
                "Network::backward",
                format!("{:?}", self.out.shape()),
                d_out.shape(),
            ));
        }
        let params = grads.params();
        self.head
            .backward(&self.fin, d_out, &mut self.g_a, params)?;
        let n = self.blocks.len();
        self.final_norm
            .backward_impl(&self.acts[n], &self.g_a, &mut self.g_b, params)?;
        for i in (0..n).rev() {
            self.blocks[i].backward(&self.acts[i], &self.g_b, &mut self.g_a, grads)?;
            std::mem::swap(&mut self.g_a, &mut self.g_b);
        }
        Ok(())
    }

    /// Sum of the weighted MoE auxiliary losses of the last forward pass; add it to the task
    /// loss when reporting or checking the total (its gradient is already in `backward`).
    pub fn aux_loss(&self) -> f32 {
        self.moe_layers().map(MoeLayer::weighted_aux_loss).sum()
    }

    /// The MoE layers, in block order.
    pub fn moe_layers(&self) -> impl Iterator<Item = &MoeLayer> {
        self.blocks.iter().filter_map(|b| match &b.ffn {
            Ffn::Moe(m) => Some(m.as_ref()),
            Ffn::Dense { .. } => None,
        })
    }

    /// The hidden post-activations of every block from the last forward pass, in block
    /// order, for [`crate::plasticity`]. Valid only right after a forward pass: a backward
    /// pass reuses the dense blocks' activation buffers for gradients.
    pub(crate) fn block_hidden(&self) -> impl Iterator<Item = BlockHidden<'_>> {
        self.blocks.iter().map(|b| match &b.ffn {
            Ffn::Moe(m) => BlockHidden::Moe(m.as_ref()),
            Ffn::Dense { a, .. } => BlockHidden::Dense(a),
        })
    }

    /// The features the head read in the last forward pass (the final LayerNorm's output,
    /// `[batch, d_model]`), for [`crate::plasticity`].
    pub(crate) fn head_features(&self) -> &Tensor {
        &self.fin
    }

    /// Router statistics of every MoE layer from the last forward pass.
    pub fn moe_stats(&self) -> Vec<MoeStats> {
        self.moe_layers().map(|m| m.stats().clone()).collect()
    }

    /// Parameters used for one token: all dense parameters plus `k` experts per MoE layer.
    pub fn active_params(&self) -> usize {
        let moe_total: usize = self.moe_layers().map(|m| m.num_params()).sum();
        let moe_active: usize = self.moe_layers().map(MoeLayer::active_params).sum();
        self.num_params() - moe_total + moe_active
    }
}

impl Module for Network {
    fn visit_params<'a>(&'a self, f: &mut dyn FnMut(&'a Param)) {
        self.input.visit_params(f);
        for b in &self.blocks {
            b.visit_params(f);
        }
        self.final_norm.visit_params(f);
        self.head.visit_params(f);
    }
    fn visit_params_mut<'a>(&'a mut self, f: &mut dyn FnMut(&'a mut Param)) {
        self.input.visit_params_mut(f);
        for b in &mut self.blocks {
            b.visit_params_mut(f);
        }
        self.final_norm.visit_params_mut(f);
        self.head.visit_params_mut(f);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Checkpoint loading checks files against `visit_param_shapes` before building the
    /// network, so it must list exactly what the network holds, in order.
    #[test]
    fn param_shapes_match_the_built_network() {
        let moe = MoeConfig {
            capacity_factor: Some(1.5),
            ..MoeConfig::new(6, 10, 3, 2)
        };
        let mut cfg = NetworkConfig::moe(5, 6, 2, &moe, HeadConfig::Linear { out_dim: 2 });
        cfg.blocks.insert(1, BlockConfig::Dense { d_hidden: 7 });
        for head in [
            HeadConfig::Linear { out_dim: 2 },
            HeadConfig::DuelingQ { n_actions: 4 },
            HeadConfig::PolicyValue { n_actions: 3 },
        ] {
            let cfg = NetworkConfig {
                head,
                ..cfg.clone()
            };
            let mut listed = Vec::new();
            cfg.visit_param_shapes(&mut |n, s| {
                listed.push((n.to_string(), s.to_vec()));
                Ok(())
            })
            .unwrap();
            let net = Network::new(cfg.clone(), 1).unwrap();
            let mut built = Vec::new();
            net.visit_params(&mut |p| built.push((p.name.clone(), p.value.shape().to_vec())));
            assert_eq!(listed, built);
            assert_eq!(cfg.num_params().unwrap(), net.num_params());
        }
    }
}
