//! The Mixture-of-Experts feed-forward layer, forward and backward.
//!
//! Routing follows Switch Transformer (Fedus et al. 2021) generalised to top-k (Shazeer et al.
//! 2017): a linear router `d → E`, softmax, the `k` most probable experts per token with their
//! probabilities renormalised over the chosen `k`. Each expert is a two-layer GELU MLP
//! `d → h → d`. (Renormalisation can be turned off, which `k = 1` needs: see
//! [`MoeConfig::normalize_gates`].) Tokens are dispatched by index into per-expert buffers allocated once and
//! reused, experts run in parallel on the rayon pool, and outputs are combined by a weighted
//! scatter-add in token order, so results do not depend on thread timing.
//!
//! Capacity: with a capacity factor `c`, each expert takes at most `⌈c·T·k/E⌉` assignments.
//! Assignments are admitted rank-major (every token's first choice before any second choice,
//! tokens in order within a rank), so a token loses its first choice only when an expert is
//! full of other first choices. An overflowed assignment contributes nothing; the block's
//! residual connection carries the token through. Overflows are counted in [`MoeStats`].
//!
//! Auxiliary losses, both with gradients: the Switch load-balancing loss `E · Σ_e f_e·P_e`
//! (`f_e` = share of the `T·k` assignments routed to `e` before capacity, `P_e` = mean router
//! probability of `e`) and the router z-loss of ST-MoE (Zoph et al. 2022), `mean_t (log Σ_e
//! exp z_te)²`, which keeps router logits small.

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::error::{CoreError, Result, mul, shape_err, too_large};
use crate::kernels::{self, Par, col_sum_acc, gemv_rows, matmul};
use crate::layers::{Linear, par_for};
use crate::limits::{MAX_DIM, MAX_EXPERTS, MAX_PARAMS, MAX_TOP_K};
use crate::param::{Grads, Module, Param};
use crate::tensor::Tensor;

const DROPPED: u32 = u32::MAX;
/// Expert work (multiply-adds per step) under which experts run one after another on the
/// calling thread: waking the pool would cost more than it saves.
const SEQ_EXPERT_WORK: usize = 1 << 18;
/// Mean work per expert (rows·d·h) above which, when there are fewer experts than pool
/// threads, each expert's GEMMs are split across the pool instead.
const GEMM_PAR_EXPERT_WORK: usize = 1 << 24;

/// How the experts of one step are spread over the pool.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Exec {
    /// All on the calling thread.
    Seq,
    /// One task per expert.
    ExpertParallel,
    /// Experts in turn, each GEMM split across the pool.
    GemmParallel,
}

/// Picks the execution mode. Measured on 2 threads: with at least as many experts as threads,
/// one task per expert beats splitting every GEMM (2113 vs 2346 ms per step at
/// 8192×512×2048×8, 288 vs 336 ms at 4096×256×1024×16), because each task streams its own
/// packed weights and nothing waits at a join per GEMM; with fewer experts than threads, expert
/// tasks cannot fill the pool and the GEMMs are split instead.
fn exec_for(t_n: usize, k: usize, e_n: usize, d: usize, h: usize) -> Exec {
    let work = expert_work(t_n, k, d, h);
    // A pool of one thread (the learner's default) runs everything on it anyway: rayon's
    // splitting and joins would be pure overhead.
    if work < SEQ_EXPERT_WORK || rayon::current_num_threads() == 1 {
        Exec::Seq
    } else if e_n < rayon::current_num_threads() && work / e_n >= GEMM_PAR_EXPERT_WORK {
        Exec::GemmParallel
    } else {
        Exec::ExpertParallel
    }
}

/// Multiply-adds of one expert pass, `T·k·d·h`, saturating: it only picks an execution mode.
fn expert_work(t_n: usize, k: usize, d: usize, h: usize) -> usize {
    t_n.saturating_mul(k).saturating_mul(d).saturating_mul(h)
}

/// Configuration of one MoE feed-forward layer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MoeConfig {
    /// Model width `d`.
    pub d_model: usize,
    /// Expert hidden width `h`.
    pub d_hidden: usize,
    /// Number of experts `E`.
    pub n_experts: usize,
    /// Experts per token `k`, from 1 to `E`.
    pub top_k: usize,
    /// Capacity factor `c`; `None` admits every assignment.
    #[serde(default)]
    pub capacity_factor: Option<f32>,
    /// Standard deviation of Gaussian noise added to router logits while training (noisy
    /// top-k gating, Shazeer et al. 2017); 0 disables it.
    #[serde(default)]
    pub router_noise_std: f32,
    /// Renormalise the chosen experts' gate weights to sum to 1 (Mixtral-style). With `k = 1`
    /// this makes every gate exactly 1, so the task loss sends no gradient to the router; use
    /// `false` there to gate by the raw probability, as Switch Transformer does.
    #[serde(default = "default_true")]
    pub normalize_gates: bool,
    /// Weight α of the load-balancing loss.
    #[serde(default = "default_aux")]
    pub aux_loss_coef: f32,
    /// Weight β of the router z-loss.
    #[serde(default = "default_z")]
    pub z_loss_coef: f32,
}

fn default_true() -> bool {
    true
}
fn default_aux() -> f32 {
    0.01
}
fn default_z() -> f32 {
    1e-3
}

impl MoeConfig {
    /// A config with default capacity (none), no noise, α = 0.01 and β = 0.001.
    pub fn new(d_model: usize, d_hidden: usize, n_experts: usize, top_k: usize) -> Self {
        MoeConfig {
            d_model,
            d_hidden,
            n_experts,
            top_k,
            capacity_factor: None,
            router_noise_std: 0.0,
            normalize_gates: true,
            aux_loss_coef: default_aux(),
            z_loss_coef: default_z(),
        }
    }

    /// Checks ranges and consistency, before anything is allocated: `d_model` and `d_hidden`
    /// in 1..=[`MAX_DIM`], `n_experts` in 1..=[`MAX_EXPERTS`], `top_k` in
    /// 1..=min(`n_experts`, [`MAX_TOP_K`]), and at most [`MAX_PARAMS`] parameters in the layer
    /// (see [`MoeConfig::num_params`]). Sizes beyond a limit are [`CoreError::TooLarge`].
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(CoreError::Config(m));
        if self.d_model == 0 || self.d_hidden == 0 {
            return bad(format!(
                "moe: d_model and d_hidden must be > 0 (got {} and {})",
                self.d_model, self.d_hidden
            ));
        }
        for (name, v) in [("d_model", self.d_model), ("d_hidden", self.d_hidden)] {
            if v > MAX_DIM {
                return Err(too_large(
                    format!("moe {name}"),
                    format!("{v} exceeds the limit of {MAX_DIM}"),
                ));
            }
        }
        if self.n_experts == 0 {
            return bad("moe: n_experts must be > 0".into());
        }
        if self.n_experts > MAX_EXPERTS {
            return Err(too_large(
                "moe n_experts",
                format!("{} exceeds the limit of {MAX_EXPERTS}", self.n_experts),
            ));
        }
        let k_max = self.n_experts.min(MAX_TOP_K);
        if self.top_k == 0 || self.top_k > k_max {
            return bad(format!(
                "moe: top_k must be in 1..={k_max} (got {}; at most n_experts and {MAX_TOP_K})",
                self.top_k
            ));
        }
        let params = self.num_params()?;
        if params > MAX_PARAMS {
            return Err(too_large(
                "moe layer",
                format!("{params} parameters exceed the limit of {MAX_PARAMS}"),
            ));
        }
        if let Some(c) = self.capacity_factor {
            if !(c.is_finite() && c > 0.0) {
                return bad(format!(
                    "moe: capacity_factor must be a positive number (got {c})"
                ));
            }
        }
        for (name, v) in [
            ("router_noise_std", self.router_noise_std),
            ("aux_loss_coef", self.aux_loss_coef),
            ("z_loss_coef", self.z_loss_coef),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return bad(format!("moe: {name} must be finite and ≥ 0 (got {v})"));
            }
        }
        Ok(())
    }

    /// Scalar parameters of the layer: the router `d·E + E` and `E` experts of
    /// `d·h + h + h·d + d`, with checked arithmetic ([`CoreError::TooLarge`] on overflow).
    pub fn num_params(&self) -> Result<usize> {
        let (d, h, e) = (self.d_model, self.d_hidden, self.n_experts);
        let what = "moe parameter count";
        let router = mul(what, d, e)?
            .checked_add(e)
            .ok_or_else(|| too_large(what, "router size overflows"))?;
        let expert = mul(what, mul(what, d, h)?, 2)?
            .checked_add(h)
            .and_then(|n| n.checked_add(d))
            .ok_or_else(|| too_large(what, "expert size overflows"))?;
        mul(what, expert, e)?
            .checked_add(router)
            .ok_or_else(|| too_large(what, "layer size overflows"))
    }

    /// The per-expert capacity for a batch of `tokens`: `⌈c·T·k/E⌉`, at least 1 and at most
    /// `T` (each token sends an expert at most one assignment, so more room is never used).
    /// Computed in f64, so no `T·k` product can overflow.
    pub fn capacity(&self, tokens: usize) -> usize {
        match self.capacity_factor {
            Some(c) => {
                let cap = (f64::from(c) * (tokens as f64 * self.top_k as f64)
                    / self.n_experts.max(1) as f64)
                    .ceil();
                // `as` saturates (and maps NaN to 0), then the bounds apply.
                (cap as usize).min(tokens).max(1)
            }
            None => tokens,
        }
    }
}

/// One expert: `d → h → d` with GELU.
#[derive(Clone, Debug)]
pub struct Expert {
    /// First layer, `[d, h]` and `[h]`.
    pub fc1: Linear,
    /// Second layer, `[h, d]` and `[d]`.
    pub fc2: Linear,
}

impl Module for Expert {
    fn visit_params<'a>(&'a self, f: &mut dyn FnMut(&'a Param)) {
        self.fc1.visit_params(f);
        self.fc2.visit_params(f);
    }
    fn visit_params_mut<'a>(&'a mut self, f: &mut dyn FnMut(&'a mut Param)) {
        self.fc1.visit_params_mut(f);
        self.fc2.visit_params_mut(f);
    }
}

/// Buffers of one expert, sized for the largest batch seen and then reused.
#[derive(Clone, Debug, Default)]
struct ExpertWs {
    /// Rows admitted this step.
    n: usize,
    /// Token of each row.
    tok: Vec<u32>,
    /// Gate weight of each row.
    gate: Vec<f32>,
    /// Gathered inputs `[n, d]`; reused for `dXe` in backward.
    xe: Vec<f32>,
    /// Pre-activations `[n, h]`, or after a training forward pass their `GELU'`
    /// (see [`MoeLayer`]'s `h_is_grad`).
    h: Vec<f32>,
    /// Activations `[n, h]`; reused for `dA`/`dH` in backward.
    a: Vec<f32>,
    /// Outputs `[n, d]`.
    ye: Vec<f32>,
    /// Output gradients `[n, d]`.
    dye: Vec<f32>,
}

/// What the router did in the last forward pass, for reflection and analysis.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct MoeStats {
    /// Tokens in the batch.
    pub tokens: usize,
    /// Assignments routed to each expert (before capacity).
    pub routed: Vec<usize>,
    /// Assignments each expert actually processed (after capacity).
    pub kept: Vec<usize>,
    /// Assignments dropped by capacity (the residual carries those tokens).
    pub dropped: usize,
    /// Mean renormalised gate weight of the assignments routed to each expert.
    pub mean_gate: Vec<f32>,
    /// Mean over tokens of the router distribution's entropy, in nats.
    pub router_entropy: f32,
    /// Load-balancing loss value (unweighted).
    pub aux_loss: f32,
    /// Router z-loss value (unweighted).
    pub z_loss: f32,
}

/// A Mixture-of-Experts feed-forward layer. See the module documentation.
#[derive(Clone, Debug)]
pub struct MoeLayer {
    cfg: MoeConfig,
    /// Router `d → E`.
    pub router: Linear,
    /// The experts.
    pub experts: Vec<Expert>,
    ws: Vec<ExpertWs>,
    tokens: usize,
    logits: Vec<f32>,
    probs: Vec<f32>,
    lse: Vec<f32>,
    top_e: Vec<u32>,
    gates: Vec<f32>,
    top_sum: Vec<f32>,
    slot: Vec<u32>,
    dgate: Vec<f32>,
    dlogits: Vec<f32>,
    noise_rng: ChaCha8Rng,
    stats: MoeStats,
    /// Whether the last forward pass was a training pass, which leaves each expert's `h`
    /// holding `GELU'(h)` (computed with the activation, from the same exponential) instead
    /// of `h`: backward then multiplies instead of evaluating the derivative again.
    h_is_grad: bool,
}

impl MoeLayer {
    /// A layer with weights drawn from `rng` (PyTorch-style uniform initialisation).
    pub fn new(name: &str, cfg: MoeConfig, rng: &mut ChaCha8Rng) -> Result<Self> {
        cfg.validate()?;
        let (d, h, e) = (cfg.d_model, cfg.d_hidden, cfg.n_experts);
        let router = Linear::new(&format!("{name}.router"), d, e, rng)?;
        let experts = (0..e)
            .map(|i| {
                Ok(Expert {
                    fc1: Linear::new(&format!("{name}.experts.{i}.fc1"), d, h, rng)?,
                    fc2: Linear::new(&format!("{name}.experts.{i}.fc2"), h, d, rng)?,
                })
            })
            .collect::<Result<_>>()?;
        let noise_rng = ChaCha8Rng::seed_from_u64(rand::Rng::random(rng));
        Ok(MoeLayer {
            ws: vec![ExpertWs::default(); e],
            cfg,
            router,
            experts,
            tokens: 0,
            logits: Vec::new(),
            probs: Vec::new(),
            lse: Vec::new(),
            top_e: Vec::new(),
            gates: Vec::new(),
            top_sum: Vec::new(),
            slot: Vec::new(),
            dgate: Vec::new(),
            dlogits: Vec::new(),
            noise_rng,
            stats: MoeStats::default(),
            h_is_grad: false,
        })
    }

    /// The layer's configuration.
    pub fn config(&self) -> &MoeConfig {
        &self.cfg
    }

    /// Router statistics of the last forward pass.
    pub fn stats(&self) -> &MoeStats {
        &self.stats
    }

    /// Expert chosen for each token in the last forward pass, `[T, k]` flattened, best first.
    pub fn last_assignments(&self) -> &[u32] {
        &self.top_e[..self.tokens * self.cfg.top_k]
    }

    /// Hidden post-activations (GELU outputs) of expert `e` in the last forward pass:
    /// `[n, d_hidden]` flattened, one row per assignment the expert processed (after
    /// capacity), and `n`. `None` if `e` is out of range. Valid only right after a forward
    /// pass: backward reuses the buffer for gradients.
    pub(crate) fn expert_hidden(&self, e: usize) -> Option<(&[f32], usize)> {
        let ws = self.ws.get(e)?;
        let len = ws.n.checked_mul(self.cfg.d_hidden)?;
        Some((ws.a.get(..len)?, ws.n))
    }

    /// Router probabilities of the last forward pass, `[T, E]` flattened.
    pub fn last_router_probs(&self) -> &[f32] {
        &self.probs[..self.tokens * self.cfg.n_experts]
    }

    /// Weighted auxiliary loss of the last forward pass: `α·aux + β·z`.
    pub fn weighted_aux_loss(&self) -> f32 {
        self.cfg.aux_loss_coef * self.stats.aux_loss + self.cfg.z_loss_coef * self.stats.z_loss
    }

    /// Parameters active per token: router plus `k` experts.
    pub fn active_params(&self) -> usize {
        self.router.num_params()
            + self.cfg.top_k * self.experts.first().map_or(0, |e| e.num_params())
    }

    /// `y = Σ_j g_j · expert_{e_j}(x)` for `x: [T, d]`; `y` is resized to `[T, d]`.
    /// With `train`, router noise (if configured) is added.
    ///
    /// # Errors
    /// A shape error, or [`CoreError::TooLarge`] if the batch's routing or expert buffers
    /// cannot be sized; the layer then holds no pass to back-propagate (its token count is 0).
    pub fn forward(&mut self, x: &Tensor, y: &mut Tensor, train: bool) -> Result<()> {
        let r = self.forward_impl(x, y, train);
        if r.is_err() {
            // Buffers may be sized for an earlier batch: make sure nothing reads them as this one's.
            self.tokens = 0;
        }
        r
    }

    fn forward_impl(&mut self, x: &Tensor, y: &mut Tensor, train: bool) -> Result<()> {
        let (d, e_n, k) = (self.cfg.d_model, self.cfg.n_experts, self.cfg.top_k);
        x.expect_cols("MoeLayer::forward", d)?;
        let t_n = x.rows();
        // Routing buffers are T·E and T·k: checked here, so later products of them cannot wrap.
        mul("MoeLayer::forward router", t_n, e_n)?;
        mul("MoeLayer::forward assignments", t_n, k)?;
        self.tokens = t_n;
        self.h_is_grad = train;
        self.route(x, train)?;
        self.dispatch()?;

        // Experts: gather → fc1 → GELU → fc2, each on its own buffers.
        let h = self.cfg.d_hidden;
        let xd = x.data();
        let exec = exec_for(t_n, k, e_n, d, h);
        match exec {
            Exec::Seq => self
                .experts
                .iter()
                .zip(self.ws.iter_mut())
                .try_for_each(|(ex, ws)| expert_forward(ex, ws, xd, d, h, Par::Seq, train))?,
            Exec::ExpertParallel => self
                .experts
                .par_iter()
                .zip(self.ws.par_iter_mut())
                .try_for_each(|(ex, ws)| expert_forward(ex, ws, xd, d, h, Par::Seq, train))?,
            Exec::GemmParallel => self
                .experts
                .iter()
                .zip(self.ws.iter_mut())
                .try_for_each(|(ex, ws)| expert_forward(ex, ws, xd, d, h, Par::Rayon, train))?,
        }

        // Combine by weighted scatter-add, token by token in rank order (deterministic).
        y.try_resize(&[t_n, d])?;
        let (ws, top_e, slot, gates) = (&self.ws, &self.top_e, &self.slot, &self.gates);
        let combine = |(t, yr): (usize, &mut [f32])| {
            yr.fill(0.0);
            for j in 0..k {
                let a = t * k + j;
                let s = slot[a];
                if s != DROPPED {
                    let w = &ws[top_e[a] as usize];
                    kernels::axpy(gates[a], &w.ye[s as usize * d..(s as usize + 1) * d], yr);
                }
            }
        };
        if exec == Exec::Seq {
            y.data_mut()
                .chunks_exact_mut(d)
                .enumerate()
                .for_each(combine);
        } else {
            y.data_mut()
                .par_chunks_exact_mut(d)
                .enumerate()
                .with_min_len(64)
                .for_each(combine);
        }
        Ok(())
    }

    /// Router logits, softmax, top-k, renormalised gates, aux losses and statistics.
    /// The caller has checked that `T·E` and `T·k` fit.
    fn route(&mut self, x: &Tensor, train: bool) -> Result<()> {
        let (d, e_n, k) = (self.cfg.d_model, self.cfg.n_experts, self.cfg.top_k);
        let t_n = x.rows();
        let (te, tk) = (t_n.saturating_mul(e_n), t_n.saturating_mul(k));
        grow(&mut self.logits, te, 0.0)?;
        grow(&mut self.probs, te, 0.0)?;
        grow(&mut self.lse, t_n, 0.0)?;
        grow(&mut self.top_e, tk, 0)?;
        grow(&mut self.gates, tk, 0.0)?;
        grow(&mut self.top_sum, t_n, 0.0)?;
        let (wr, br) = (self.router.w.value.data(), self.router.b.value.data());
        if t_n <= 4 {
            gemv_rows(t_n, e_n, d, x.data(), wr, Some(br), &mut self.logits)?;
        } else {
            matmul(
                t_n,
                e_n,
                d,
                x.data(),
                false,
                wr,
                false,
                &mut self.logits,
                false,
                par_for(t_n, e_n, d),
            )?;
            kernels::add_bias(&mut self.logits, br);
        }
        if train && self.cfg.router_noise_std > 0.0 {
            if let Ok(normal) = Normal::new(0.0f32, self.cfg.router_noise_std) {
                for z in self.logits.iter_mut() {
                    *z += normal.sample(&mut self.noise_rng);
                }
            }
        }
        let st = &mut self.stats;
        st.tokens = t_n;
        st.routed.clear();
        st.routed.resize(e_n, 0);
        st.mean_gate.clear();
        st.mean_gate.resize(e_n, 0.0);
        let mut entropy = 0.0f64;
        let mut z_loss = 0.0f64;
        for t in 0..t_n {
            let zr = &self.logits[t * e_n..(t + 1) * e_n];
            let pr = &mut self.probs[t * e_n..(t + 1) * e_n];
            let mx = zr.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let mut s = 0.0f32;
            for (p, &z) in pr.iter_mut().zip(zr) {
                *p = (z - mx).exp();
                s += *p;
            }
            let inv = 1.0 / s;
            let mut h = 0.0f32;
            for p in pr.iter_mut() {
                *p *= inv;
                if *p > 0.0 {
                    h -= *p * p.ln();
                }
            }
            entropy += f64::from(h);
            let lse = mx + s.ln();
            self.lse[t] = lse;
            z_loss += f64::from(lse * lse);
            // Top-k by repeated arg-max: k and E are small, and ties go to the lower index.
            let te = &mut self.top_e[t * k..(t + 1) * k];
            let mut sum = 0.0f32;
            for j in 0..k {
                let mut best = usize::MAX;
                let mut bp = f32::NEG_INFINITY;
                for (i, &p) in pr.iter().enumerate() {
                    if p > bp && !te[..j].contains(&(i as u32)) {
                        best = i;
                        bp = p;
                    }
                }
                // NaN probabilities never compare greater; fall back to the lowest free index
                // so routing stays well-defined and the NaN surfaces in the loss instead.
                if best == usize::MAX {
                    best = (0..e_n)
                        .find(|i| !te[..j].contains(&(*i as u32)))
                        .unwrap_or(0);
                    bp = pr[best];
                }
                te[j] = best as u32;
                sum += bp;
            }
            if !self.cfg.normalize_gates {
                sum = 1.0;
            }
            self.top_sum[t] = sum;
            for j in 0..k {
                let g = pr[te[j] as usize] / sum;
                self.gates[t * k + j] = g;
                st.routed[te[j] as usize] += 1;
                st.mean_gate[te[j] as usize] += g;
            }
        }
        let assignments = (t_n * k).max(1) as f32;
        let mut aux = 0.0f32;
        for e in 0..e_n {
            let p_mean: f32 =
                (0..t_n).map(|t| self.probs[t * e_n + e]).sum::<f32>() / t_n.max(1) as f32;
            aux += st.routed[e] as f32 / assignments * p_mean;
            if st.routed[e] > 0 {
                st.mean_gate[e] /= st.routed[e] as f32;
            }
        }
        st.aux_loss = e_n as f32 * aux;
        st.z_loss = (z_loss / t_n.max(1) as f64) as f32;
        st.router_entropy = (entropy / t_n.max(1) as f64) as f32;
        Ok(())
    }

    /// Admits assignments up to capacity, rank-major, and fills each expert's row lists.
    fn dispatch(&mut self) -> Result<()> {
        let (d, h, k) = (self.cfg.d_model, self.cfg.d_hidden, self.cfg.top_k);
        let t_n = self.tokens;
        let cap = self.cfg.capacity(t_n);
        grow(&mut self.slot, t_n.saturating_mul(k), DROPPED)?;
        for ws in self.ws.iter_mut() {
            ws.n = 0;
        }
        let mut dropped = 0;
        for j in 0..k {
            for t in 0..t_n {
                let a = t * k + j;
                let ws = &mut self.ws[self.top_e[a] as usize];
                if ws.n < cap {
                    if ws.tok.len() <= ws.n {
                        ws.tok.push(0);
                        ws.gate.push(0.0);
                    }
                    ws.tok[ws.n] = t as u32;
                    ws.gate[ws.n] = self.gates[a];
                    self.slot[a] = ws.n as u32;
                    ws.n += 1;
                } else {
                    self.slot[a] = DROPPED;
                    dropped += 1;
                }
            }
        }
        self.stats.dropped = dropped;
        self.stats.kept.clear();
        for ws in self.ws.iter_mut() {
            self.stats.kept.push(ws.n);
            // Grow-only: after the largest batch has been seen, no step allocates.
            let n = ws.n;
            for (buf, w) in [
                (&mut ws.xe, d),
                (&mut ws.h, h),
                (&mut ws.a, h),
                (&mut ws.ye, d),
                (&mut ws.dye, d),
            ] {
                let need = mul("MoeLayer expert buffer", n, w)?;
                if buf.len() < need {
                    grow(buf, need, 0.0)?;
                }
            }
        }
        Ok(())
    }

    /// Backward pass for the `x` and upstream gradient `dy` of the last forward. Accumulates
    /// parameter gradients (experts, router, including both auxiliary losses) and writes `dx`.
    pub fn backward(&mut self, x: &Tensor, dy: &Tensor, dx: &mut Tensor) -> Result<()> {
        self.backward_impl(x, dy, dx, Grads::All)
    }

    /// [`MoeLayer::backward`] producing the gradients `grads` names: without the auxiliary
    /// losses' gradients unless [`Grads::All`] (an input gradient taken through a frozen
    /// network, SAC's actor loss through its critic, must not carry the critic's
    /// load-balancing objective), and without any parameter gradient for [`Grads::Input`].
    pub(crate) fn backward_impl(
        &mut self,
        x: &Tensor,
        dy: &Tensor,
        dx: &mut Tensor,
        grads: Grads,
    ) -> Result<()> {
        let (d, h, e_n, k) = (
            self.cfg.d_model,
            self.cfg.d_hidden,
            self.cfg.n_experts,
            self.cfg.top_k,
        );
        let t_n = self.tokens;
        x.expect_cols("MoeLayer::backward x", d)?;
        dy.expect_cols("MoeLayer::backward dy", d)?;
        if x.rows() != t_n || dy.rows() != t_n {
            return Err(shape_err(
                "MoeLayer::backward",
                format!("[{t_n}, {d}] as in the last forward"),
                dy.shape(),
            ));
        }
        let exec = exec_for(t_n, k, e_n, d, h);
        let seq = exec == Exec::Seq;

        // Gate gradients: dL/dg = dy_t · ye. T·k and T·E fit: the forward pass checked them.
        grow(&mut self.dgate, t_n * k, 0.0)?;
        {
            let (ws, top_e, slot) = (&self.ws, &self.top_e, &self.slot);
            let dyd = dy.data();
            let f = |(t, dg): (usize, &mut [f32])| {
                for (j, g) in dg.iter_mut().enumerate() {
                    let a = t * k + j;
                    let s = slot[a];
                    *g = if s == DROPPED {
                        0.0
                    } else {
                        let w = &ws[top_e[a] as usize];
                        kernels::dot(
                            &dyd[t * d..(t + 1) * d],
                            &w.ye[s as usize * d..(s as usize + 1) * d],
                        )
                    };
                }
            };
            if seq {
                self.dgate.chunks_exact_mut(k).enumerate().for_each(f);
            } else {
                self.dgate
                    .par_chunks_exact_mut(k)
                    .enumerate()
                    .with_min_len(64)
                    .for_each(f);
            }
        }

        // Experts backward, each on its own buffers and gradients.
        let dyd = dy.data();
        let params = grads.params();
        let h_is_grad = self.h_is_grad;
        match exec {
            Exec::Seq => self
                .experts
                .iter_mut()
                .zip(self.ws.iter_mut())
                .try_for_each(|(ex, ws)| {
                    expert_backward(ex, ws, dyd, d, h, Par::Seq, params, h_is_grad)
                })?,
            Exec::ExpertParallel => self
                .experts
                .par_iter_mut()
                .zip(self.ws.par_iter_mut())
                .try_for_each(|(ex, ws)| {
                    expert_backward(ex, ws, dyd, d, h, Par::Seq, params, h_is_grad)
                })?,
            Exec::GemmParallel => self
                .experts
                .iter_mut()
                .zip(self.ws.iter_mut())
                .try_for_each(|(ex, ws)| {
                    expert_backward(ex, ws, dyd, d, h, Par::Rayon, params, h_is_grad)
                })?,
        }

        // dx from the experts, token by token in rank order.
        dx.try_resize(&[t_n, d])?;
        {
            let (ws, top_e, slot) = (&self.ws, &self.top_e, &self.slot);
            let f = |(t, dxr): (usize, &mut [f32])| {
                dxr.fill(0.0);
                for j in 0..k {
                    let a = t * k + j;
                    let s = slot[a];
                    if s != DROPPED {
                        let w = &ws[top_e[a] as usize];
                        for (o, &v) in dxr
                            .iter_mut()
                            .zip(&w.xe[s as usize * d..(s as usize + 1) * d])
                        {
                            *o += v;
                        }
                    }
                }
            };
            if seq {
                dx.data_mut().chunks_exact_mut(d).enumerate().for_each(f);
            } else {
                dx.data_mut()
                    .par_chunks_exact_mut(d)
                    .enumerate()
                    .with_min_len(64)
                    .for_each(f);
            }
        }

        // Router: gates → probabilities → logits, plus both auxiliary losses.
        grow(&mut self.dlogits, t_n * e_n, 0.0)?;
        let assignments = (t_n * k) as f32;
        let aux_on = if grads.aux() { 1.0 } else { 0.0 };
        let aux_scale = aux_on * self.cfg.aux_loss_coef * e_n as f32 / t_n as f32;
        let z_scale = aux_on * self.cfg.z_loss_coef * 2.0 / t_n as f32;
        for t in 0..t_n {
            let pr = &self.probs[t * e_n..(t + 1) * e_n];
            let dl = &mut self.dlogits[t * e_n..(t + 1) * e_n];
            // dp from the load-balancing loss: ∂(α·E·Σ f_e·P_e)/∂p_te = α·E·f_e/T.
            for (e, v) in dl.iter_mut().enumerate() {
                *v = aux_scale * self.stats.routed[e] as f32 / assignments;
            }
            // dp from the renormalised gates g_j = p_j / S. Without renormalisation g_j = p_j
            // (S is fixed at 1), so there is no −Σ g·dg term.
            let s = self.top_sum[t];
            let gd: f32 = if self.cfg.normalize_gates {
                (0..k)
                    .map(|j| self.gates[t * k + j] * self.dgate[t * k + j])
                    .sum()
            } else {
                0.0
            };
            for j in 0..k {
                dl[self.top_e[t * k + j] as usize] += (self.dgate[t * k + j] - gd) / s;
            }
            // Softmax backward, then the z-loss term 2β·lse·p/T.
            let pdp: f32 = pr.iter().zip(dl.iter()).map(|(p, g)| p * g).sum();
            let zl = z_scale * self.lse[t];
            for (v, &p) in dl.iter_mut().zip(pr) {
                *v = p * (*v - pdp) + zl * p;
            }
        }
        let (wr, wg) = (&self.router.w.value, &mut self.router.w.grad);
        if params {
            matmul(
                d,
                e_n,
                t_n,
                x.data(),
                true,
                &self.dlogits,
                false,
                wg.data_mut(),
                true,
                par_for(d, e_n, t_n),
            )?;
            col_sum_acc(self.router.b.grad.data_mut(), &self.dlogits);
        }
        matmul(
            t_n,
            d,
            e_n,
            &self.dlogits,
            false,
            wr.data(),
            true,
            dx.data_mut(),
            true,
            par_for(t_n, d, e_n),
        )?;
        Ok(())
    }
}

/// Resizes `v` to `n` (keeping, not clearing, what is there), or [`CoreError::TooLarge`] if the
/// allocator refuses, instead of aborting.
fn grow<T: Clone>(v: &mut Vec<T>, n: usize, fill: T) -> Result<()> {
    if n > v.len() {
        v.try_reserve(n - v.len()).map_err(|e| {
            too_large(
                "MoeLayer buffer",
                format!("{n} elements of {} bytes: {e}", std::mem::size_of::<T>()),
            )
        })?;
    }
    v.resize(n, fill);
    Ok(())
}

/// Element-wise work split into pool-sized pieces when the GEMMs are split too. With
/// `keep_grad`, `h` is replaced by `GELU'(h)` (see [`kernels::gelu_forward_keep_grad`]).
fn gelu_fwd(h: &mut [f32], a: &mut [f32], par: Par, keep_grad: bool) {
    let f = |hc: &mut [f32], ac: &mut [f32]| {
        if keep_grad {
            kernels::gelu_forward_keep_grad(hc, ac);
        } else {
            kernels::gelu_forward(hc, ac);
        }
    };
    match par {
        Par::Seq => f(h, a),
        Par::Rayon => a
            .par_chunks_mut(1 << 14)
            .zip(h.par_chunks_mut(1 << 14))
            .for_each(|(ac, hc)| f(hc, ac)),
    }
}

/// `da *= GELU'(h)`; `h` holds `GELU'(h)` already when `h_is_grad`.
fn gelu_bwd(h: &[f32], da: &mut [f32], par: Par, h_is_grad: bool) {
    let f = |hc: &[f32], dc: &mut [f32]| {
        if h_is_grad {
            kernels::mul_inplace(hc, dc);
        } else {
            kernels::gelu_backward_inplace(hc, dc);
        }
    };
    match par {
        Par::Seq => f(h, da),
        Par::Rayon => da
            .par_chunks_mut(1 << 14)
            .zip(h.par_chunks(1 << 14))
            .for_each(|(dc, hc)| f(hc, dc)),
    }
}

/// One expert's forward pass; with `train`, `ws.h` is left holding `GELU'` of the
/// pre-activations, which is all the backward pass needs of them.
fn expert_forward(
    ex: &Expert,
    ws: &mut ExpertWs,
    x: &[f32],
    d: usize,
    h: usize,
    par: Par,
    train: bool,
) -> Result<()> {
    let n = ws.n;
    if n == 0 {
        return Ok(());
    }
    for (r, &t) in ws.tok[..n].iter().enumerate() {
        ws.xe[r * d..(r + 1) * d].copy_from_slice(&x[t as usize * d..(t as usize + 1) * d]);
    }
    let (w1, b1) = (ex.fc1.w.value.data(), ex.fc1.b.value.data());
    let (w2, b2) = (ex.fc2.w.value.data(), ex.fc2.b.value.data());
    if n <= 4 {
        gemv_rows(n, h, d, &ws.xe, w1, Some(b1), &mut ws.h)?;
    } else {
        matmul(n, h, d, &ws.xe, false, w1, false, &mut ws.h, false, par)?;
        kernels::add_bias(&mut ws.h[..n * h], b1);
    }
    gelu_fwd(&mut ws.h[..n * h], &mut ws.a[..n * h], par, train);
    if n <= 4 {
        gemv_rows(n, d, h, &ws.a, w2, Some(b2), &mut ws.ye)?;
    } else {
        matmul(n, d, h, &ws.a, false, w2, false, &mut ws.ye, false, par)?;
        kernels::add_bias(&mut ws.ye[..n * d], b2);
    }
    Ok(())
}

/// One expert's backward pass: `dXe` into `ws.xe` and, with `params`, its weight and bias
/// gradients.
#[allow(clippy::too_many_arguments)]
fn expert_backward(
    ex: &mut Expert,
    ws: &mut ExpertWs,
    dy: &[f32],
    d: usize,
    h: usize,
    par: Par,
    params: bool,
    h_is_grad: bool,
) -> Result<()> {
    let n = ws.n;
    if n == 0 {
        return Ok(());
    }
    for r in 0..n {
        let t = ws.tok[r] as usize;
        kernels::scale_into(
            ws.gate[r],
            &dy[t * d..(t + 1) * d],
            &mut ws.dye[r * d..(r + 1) * d],
        );
    }
    // fc2: dW2 += Aᵀ·dYe, db2 += Σ dYe, dA = dYe·W2ᵀ (into `a`, whose values are no longer needed).
    if params {
        matmul(
            h,
            d,
            n,
            &ws.a,
            true,
            &ws.dye,
            false,
            ex.fc2.w.grad.data_mut(),
            true,
            par,
        )?;
        col_sum_acc(ex.fc2.b.grad.data_mut(), &ws.dye[..n * d]);
    }
    matmul(
        n,
        h,
        d,
        &ws.dye,
        false,
        ex.fc2.w.value.data(),
        true,
        &mut ws.a,
        false,
        par,
    )?;
    gelu_bwd(&ws.h[..n * h], &mut ws.a[..n * h], par, h_is_grad);
    // fc1: dW1 += Xeᵀ·dH, db1 += Σ dH, dXe = dH·W1ᵀ (into `xe`, after dW1 has used it).
    if params {
        matmul(
            d,
            h,
            n,
            &ws.xe,
            true,
            &ws.a,
            false,
            ex.fc1.w.grad.data_mut(),
            true,
            par,
        )?;
        col_sum_acc(ex.fc1.b.grad.data_mut(), &ws.a[..n * h]);
    }
    matmul(
        n,
        d,
        h,
        &ws.a,
        false,
        ex.fc1.w.value.data(),
        true,
        &mut ws.xe,
        false,
        par,
    )?;
    Ok(())
}

impl Module for MoeLayer {
    fn visit_params<'a>(&'a self, f: &mut dyn FnMut(&'a Param)) {
        self.router.visit_params(f);
        for e in &self.experts {
            e.visit_params(f);
        }
    }
    fn visit_params_mut<'a>(&'a mut self, f: &mut dyn FnMut(&'a mut Param)) {
        self.router.visit_params_mut(f);
        for e in &mut self.experts {
            e.visit_params_mut(f);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer(cfg: MoeConfig) -> Result<MoeLayer> {
        MoeLayer::new("moe", cfg, &mut ChaCha8Rng::seed_from_u64(0))
    }

    /// `T·k` for a huge `T` overflowed in `capacity`; the capacity is now bounded by `T`.
    #[test]
    fn capacity_of_a_huge_batch_does_not_overflow() {
        let cfg = MoeConfig {
            capacity_factor: Some(1.25),
            ..MoeConfig::new(4, 4, 8, 2)
        };
        for t in [usize::MAX, usize::MAX / 2 + 1, 1 << 62] {
            let cap = cfg.capacity(t);
            assert!((1..=t).contains(&cap), "capacity({t}) = {cap}");
        }
        assert_eq!(cfg.capacity(16), 5, "⌈1.25·16·2/8⌉");
        assert_eq!(cfg.capacity(0), 1);
        let roomy = MoeConfig {
            capacity_factor: Some(1e30),
            ..MoeConfig::new(4, 4, 8, 2)
        };
        assert_eq!(roomy.capacity(10), 10, "never more room than tokens");
    }

    /// Sizes beyond the documented limits are typed errors before any allocation (each of
    /// these would otherwise ask for terabytes, or overflow the parameter count).
    #[test]
    fn sizes_beyond_the_limits_are_refused_before_allocating() {
        let too_large = |cfg: MoeConfig| {
            let v = cfg.validate();
            assert!(
                matches!(v, Err(CoreError::TooLarge { .. })),
                "{cfg:?}: {v:?}"
            );
            assert!(matches!(layer(cfg), Err(CoreError::TooLarge { .. })));
        };
        too_large(MoeConfig::new(MAX_DIM + 1, 4, 2, 1));
        too_large(MoeConfig::new(4, 1 << 40, 2, 1));
        too_large(MoeConfig::new(4, 4, MAX_EXPERTS + 1, 1));
        // Each dimension within bounds, the layer not: 2 · 2^20 · 2^20 parameters.
        too_large(MoeConfig::new(MAX_DIM, MAX_DIM, 1, 1));
        let k = MoeConfig::new(4, 4, 128, MAX_TOP_K + 1);
        assert!(matches!(k.validate(), Err(CoreError::Config(_))));
        // The parameter count itself is checked arithmetic.
        assert!(matches!(
            MoeConfig::new(usize::MAX, usize::MAX, usize::MAX, 1).num_params(),
            Err(CoreError::TooLarge { .. })
        ));
        let small = MoeConfig::new(4, 8, 3, 2);
        let l = layer(small.clone()).unwrap();
        assert_eq!(small.num_params().unwrap(), l.num_params());
    }
}
