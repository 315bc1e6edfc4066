//! Plasticity measurements: how much of a network is still alive, how many directions its
//! features span, and how far training has carried it from its initialisation.
//!
//! A network trained for hundreds of thousands of updates on a changing target can lose the
//! ability to learn anything new. These three numbers are the usual symptoms, each from the
//! literature:
//!
//! - **Dormant units** (Sokar, Agarwal, Castro & Evci 2023, "The Dormant Neuron Phenomenon in
//!   Deep Reinforcement Learning", ICML; the measure behind ReDo). For the post-activation
//!   `h_i` of hidden unit `i` of a layer with `H` units, the score is
//!   `s_i = E_x|h_i(x)| / ((1/H) Σ_j E_x|h_j(x)|)`, the expectation taken over a batch of
//!   inputs; the unit is τ-dormant when `s_i ≤ τ`. The default τ = 0.025
//!   ([`DEFAULT_DORMANT_TAU`]) is ReDo's reference threshold; τ = 0 counts only units that
//!   are exactly silent on every input.
//! - **Effective rank** (Kumar, Agarwal, Ghosh & Levine 2021, "Implicit Under-Parameterization
//!   Inhibits Data-Efficient Deep Reinforcement Learning", ICLR): `srank_δ(Φ)`, the smallest
//!   `k` whose `k` largest singular values of the feature matrix `Φ` (one row per input) hold a
//!   share `1 − δ` of their sum, δ = 0.01 as in the paper ([`DEFAULT_SRANK_DELTA`]). Here `Φ`
//!   is what the head reads: the final LayerNorm's output.
//! - **Distance from initialisation**, `‖θ − θ₀‖₂ / ‖θ₀‖₂` over every parameter: a network that
//!   has stopped moving (or one that drifts without bound) shows up here first.
//!
//! Which units are "hidden units" in this network: the GELU outputs of every dense block
//! (`d_hidden` per block) and of every expert of every MoE block (`n_experts · d_hidden` per
//! block). The residual stream, LayerNorms and the head have no activation and are not
//! counted. In an MoE block an expert's expectation is taken over the tokens routed to it (and
//! kept under capacity), and the layer mean of the score's denominator is over the units of
//! the experts that received at least one token. An expert that received no token produced
//! nothing for any input of the batch, so it has no activation to score: its units count as
//! dormant, and [`LayerDormancy::idle_experts`] says how many experts that was, so a caller
//! can tell a collapsed router from dying units.
//!
//! GELU is not ReLU: its output is exactly 0 only for a pre-activation below about −5.5 (in
//! this crate's f32 GELU), and slightly negative above; the score uses `|h|`, so a unit stuck
//! in GELU's negative tail is dormant just as a dead ReLU is.
//!
//! Everything here runs on demand, on its own forward pass ([`Network::measure_plasticity`]):
//! the training forward pass computes nothing for it.
//!
//! Limit: the effective rank eigen-decomposes a Gram matrix of side `min(batch, d_model)` in
//! f64 (`O(side³)`), so that side may be at most [`MAX_RANK_SIDE`] (1,024); beyond it,
//! measure on a batch of at most 1,024 rows.

use serde::{Deserialize, Serialize};

use crate::error::{CoreError, Result, shape_err, too_large};
use crate::network::{BlockHidden, Network};
use crate::param::{Module, Param};
use crate::tensor::Tensor;

/// The dormancy threshold τ used by default: ReDo's reference threshold (Sokar et al. 2023).
/// Larger values (0.1) flag more weakly firing units; 0 only exactly silent ones.
pub const DEFAULT_DORMANT_TAU: f64 = 0.025;

/// The δ of `srank_δ` used by default, as in Kumar et al. 2021.
pub const DEFAULT_SRANK_DELTA: f64 = 0.01;

/// The largest side of the Gram matrix the effective rank eigen-decomposes, i.e. the largest
/// `min(rows, cols)` of a feature matrix [`singular_values`] accepts. Forming the Gram matrix
/// and reducing it to tridiagonal form cost about `side³` multiply-adds each at most: ~10⁹
/// at this size, around a second on one core.
pub const MAX_RANK_SIDE: usize = 1024;

/// Bisection steps per eigenvalue: each halves an interval that starts at about twice the
/// matrix's norm, so 128 steps reach the stopping width (a few ulps of the norm) with room
/// to spare.
const MAX_BISECTION_STEPS: usize = 128;

/// How plasticity is measured.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PlasticityConfig {
    /// Dormancy threshold τ ≥ 0 on the normalised activation score.
    pub tau: f64,
    /// δ of the effective rank `srank_δ`, in `[0, 1)`.
    pub srank_delta: f64,
}

impl Default for PlasticityConfig {
    fn default() -> Self {
        PlasticityConfig {
            tau: DEFAULT_DORMANT_TAU,
            srank_delta: DEFAULT_SRANK_DELTA,
        }
    }
}

impl PlasticityConfig {
    /// Checks τ (finite, ≥ 0) and δ (finite, in `[0, 1)`); [`CoreError::Config`] otherwise.
    pub fn validate(&self) -> Result<()> {
        if !(self.tau.is_finite() && self.tau >= 0.0) {
            return Err(CoreError::Config(format!(
                "plasticity: tau must be finite and ≥ 0 (got {})",
                self.tau
            )));
        }
        check_delta(self.srank_delta)
    }
}

fn check_delta(delta: f64) -> Result<()> {
    if !(delta.is_finite() && (0.0..1.0).contains(&delta)) {
        return Err(CoreError::Config(format!(
            "plasticity: srank delta must be in [0, 1) (got {delta})"
        )));
    }
    Ok(())
}

/// What kind of block a [`LayerDormancy`] describes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LayerKind {
    /// A dense GELU MLP block.
    Dense,
    /// A Mixture-of-Experts block (all its experts' hidden units together).
    Moe,
}

/// Dormant units of one block's hidden layer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LayerDormancy {
    /// Index of the block in the network's config.
    pub block: usize,
    /// Dense or MoE.
    pub kind: LayerKind,
    /// Hidden units of the block: `d_hidden`, or `n_experts · d_hidden` for an MoE block.
    pub units: usize,
    /// Units that are τ-dormant (including every unit of an idle expert).
    pub dormant: usize,
    /// `dormant / units`.
    pub ratio: f64,
    /// Experts of an MoE block that received no token of the batch (0 for a dense block);
    /// their `idle_experts · d_hidden` units are counted in `dormant`.
    pub idle_experts: usize,
}

/// Distance of the parameters from their initial values.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WeightDistance {
    /// `‖θ − θ₀‖₂` over every parameter.
    pub absolute: f64,
    /// `‖θ − θ₀‖₂ / ‖θ₀‖₂`: 0 for an untrained network.
    pub relative: f64,
    /// `‖θ₀‖₂`.
    pub init_norm: f64,
}

/// The plasticity of a network on one batch of observations. See the module documentation
/// for the definitions.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PlasticityReport {
    /// Observations (rows) the measurement used.
    pub samples: usize,
    /// The dormancy threshold τ used.
    pub tau: f64,
    /// τ-dormant hidden units over all blocks.
    pub dormant_units: usize,
    /// Hidden units over all blocks (see the module documentation for which).
    pub total_units: usize,
    /// `dormant_units / total_units`; 0 for a network without blocks.
    pub dormant_ratio: f64,
    /// The same per block, in block order.
    pub layers: Vec<LayerDormancy>,
    /// The δ of `srank_δ` used.
    pub srank_delta: f64,
    /// `srank_δ` of the features the head reads (`[samples, feature_dim]`). At most
    /// `min(samples, feature_dim)`.
    pub effective_rank: usize,
    /// Width of those features (`d_model`).
    pub feature_dim: usize,
    /// `effective_rank / feature_dim`: the share of the feature width in use. With fewer
    /// samples than `feature_dim` it cannot reach 1.
    pub rank_share: f64,
    /// `‖θ‖₂` over every parameter now.
    pub weight_norm: f64,
    /// Distance from the initial parameters, when they were given.
    pub distance: Option<WeightDistance>,
}

impl Network {
    /// Measures dormant units, effective rank and (given the initial network `init`) distance
    /// from initialisation on the observations `obs: [batch, obs_dim]`.
    ///
    /// It runs its own forward pass in evaluation mode (no router noise; the observation
    /// normaliser is applied but not updated), so the training forward pass pays nothing for
    /// it. That pass replaces the caches of the last one: call it between training steps, not
    /// between a forward and its backward, and read [`Network::moe_stats`] of a training step
    /// before it. `init` is typically rebuilt with [`Network::new`] from the run's config and
    /// seed (deterministic; see there).
    ///
    /// # Errors
    /// [`CoreError::Config`] for a bad τ or δ, or an `init` with other parameters than this
    /// network; [`CoreError::Shape`] for `obs` of the wrong width, or an `init` parameter of
    /// another shape; [`CoreError::Input`] for an empty batch, non-finite observations, or
    /// non-finite weights or activations (a diverged network); [`CoreError::TooLarge`] if
    /// `min(batch, d_model)` exceeds [`MAX_RANK_SIDE`].
    pub fn measure_plasticity(
        &mut self,
        obs: &Tensor,
        init: Option<&Network>,
        cfg: &PlasticityConfig,
    ) -> Result<PlasticityReport> {
        cfg.validate()?;
        obs.expect_cols("Network::measure_plasticity", self.config().obs_dim)?;
        let samples = obs.rows();
        if samples == 0 {
            return Err(CoreError::Input(
                "plasticity: the observation batch is empty".into(),
            ));
        }
        let feature_dim = self.config().d_model;
        let side = samples.min(feature_dim);
        if side > MAX_RANK_SIDE {
            return Err(rank_too_large(samples, feature_dim));
        }
        // Checked before the forward pass, so a bad `init` leaves the caches untouched.
        let distance = init.map(|i| weight_distance(&*self, i)).transpose()?;
        let weight_norm = param_norm(&*self)?;

        self.forward(obs, false)?;

        let mut layers = Vec::new();
        for (block, hidden) in self.block_hidden().enumerate() {
            layers.push(match hidden {
                BlockHidden::Dense(a) => dense_dormancy(block, a, cfg.tau)?,
                BlockHidden::Moe(m) => {
                    let cfgm = m.config();
                    let mut mean_abs = Vec::new();
                    let mut idle_experts = 0usize;
                    for e in 0..cfgm.n_experts {
                        match m.expert_hidden(e) {
                            Some((a, n)) if n > 0 => {
                                mean_abs.extend(column_mean_abs(a, n, cfgm.d_hidden));
                            }
                            _ => idle_experts += 1,
                        }
                    }
                    let units = cfgm.n_experts.saturating_mul(cfgm.d_hidden);
                    let idle_units = idle_experts.saturating_mul(cfgm.d_hidden);
                    let dormant = count_dormant(block, &mean_abs, cfg.tau)? + idle_units;
                    LayerDormancy {
                        block,
                        kind: LayerKind::Moe,
                        units,
                        dormant,
                        ratio: ratio(dormant, units),
                        idle_experts,
                    }
                }
            });
        }
        let dormant_units = layers.iter().map(|l| l.dormant).sum();
        let total_units = layers.iter().map(|l| l.units).sum();

        let features = self.head_features();
        if !features.all_finite() {
            return Err(diverged("the head's input features"));
        }
        let sv = singular_values(features)?;
        let effective_rank = srank(&sv, cfg.srank_delta)?;

        Ok(PlasticityReport {
            samples,
            tau: cfg.tau,
            dormant_units,
            total_units,
            dormant_ratio: ratio(dormant_units, total_units),
            layers,
            srank_delta: cfg.srank_delta,
            effective_rank,
            feature_dim,
            rank_share: ratio(effective_rank, feature_dim),
            weight_norm,
            distance,
        })
    }
}

fn ratio(part: usize, whole: usize) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 / whole as f64
    }
}

fn diverged(what: &str) -> CoreError {
    CoreError::Input(format!(
        "plasticity: {what} contain NaN or infinity (the weights have diverged)"
    ))
}

fn rank_too_large(rows: usize, cols: usize) -> CoreError {
    too_large(
        "plasticity effective rank",
        format!(
            "a [{rows}, {cols}] feature matrix needs a Gram matrix of side {} (limit \
             {MAX_RANK_SIDE}); measure on at most {MAX_RANK_SIDE} rows",
            rows.min(cols)
        ),
    )
}

/// `E|h_i|` of each column of the row-major `[n, h]` matrix `a`, in f64 (`n > 0`).
fn column_mean_abs(a: &[f32], n: usize, h: usize) -> Vec<f64> {
    let mut sum = vec![0.0f64; h];
    for row in a.chunks_exact(h.max(1)).take(n) {
        for (s, &v) in sum.iter_mut().zip(row) {
            *s += f64::from(v.abs());
        }
    }
    let inv = 1.0 / n as f64;
    sum.iter_mut().for_each(|s| *s *= inv);
    sum
}

fn dense_dormancy(block: usize, a: &Tensor, tau: f64) -> Result<LayerDormancy> {
    let (n, h) = (a.rows(), a.cols());
    let mean_abs = column_mean_abs(a.data(), n, h);
    let dormant = count_dormant(block, &mean_abs, tau)?;
    Ok(LayerDormancy {
        block,
        kind: LayerKind::Dense,
        units: h,
        dormant,
        ratio: ratio(dormant, h),
        idle_experts: 0,
    })
}

/// Units with `s_i = m_i / mean(m) ≤ τ`. A layer whose units are all silent (mean 0) is all
/// dormant, rather than 0/0.
fn count_dormant(block: usize, mean_abs: &[f64], tau: f64) -> Result<usize> {
    if mean_abs.is_empty() {
        return Ok(0);
    }
    let mean = mean_abs.iter().sum::<f64>() / mean_abs.len() as f64;
    if !mean.is_finite() {
        return Err(diverged(&format!(
            "the hidden activations of block {block}"
        )));
    }
    if mean == 0.0 {
        return Ok(mean_abs.len());
    }
    Ok(mean_abs.iter().filter(|&&m| m / mean <= tau).count())
}

/// `‖θ‖₂` over every parameter, in f64.
fn param_norm(m: &impl Module) -> Result<f64> {
    let mut sq = 0.0f64;
    m.visit_params(&mut |p| {
        sq += p
            .value
            .data()
            .iter()
            .map(|&v| f64::from(v) * f64::from(v))
            .sum::<f64>();
    });
    if !sq.is_finite() {
        return Err(diverged("the parameters"));
    }
    Ok(sq.sqrt())
}

/// `‖θ − θ₀‖₂` and `‖θ − θ₀‖₂ / ‖θ₀‖₂` over every parameter of `current` and `init`, in f64.
///
/// # Errors
/// [`CoreError::Config`] if the two do not hold the same parameters (names, in order),
/// [`CoreError::Shape`] if one has another shape, [`CoreError::Input`] if a value is not
/// finite or `θ₀` is all zeros (the relative distance would be undefined).
pub fn weight_distance(current: &impl Module, init: &impl Module) -> Result<WeightDistance> {
    let mut cur: Vec<&Param> = Vec::new();
    current.visit_params(&mut |p| cur.push(p));
    let mut ini: Vec<&Param> = Vec::new();
    init.visit_params(&mut |p| ini.push(p));
    if cur.len() != ini.len() {
        return Err(CoreError::Config(format!(
            "plasticity: the initial network has {} parameter tensors, this one {}",
            ini.len(),
            cur.len()
        )));
    }
    let (mut diff_sq, mut init_sq) = (0.0f64, 0.0f64);
    for (c, i) in cur.iter().zip(&ini) {
        if c.name != i.name {
            return Err(CoreError::Config(format!(
                "plasticity: the initial network has parameter {} where this one has {}",
                i.name, c.name
            )));
        }
        if c.value.shape() != i.value.shape() {
            return Err(shape_err(
                "plasticity::weight_distance",
                format!("{} of shape {:?}", c.name, c.value.shape()),
                i.value.shape(),
            ));
        }
        for (&a, &b) in c.value.data().iter().zip(i.value.data()) {
            let (a, b) = (f64::from(a), f64::from(b));
            diff_sq += (a - b) * (a - b);
            init_sq += b * b;
        }
    }
    if !(diff_sq.is_finite() && init_sq.is_finite()) {
        return Err(diverged("the parameters"));
    }
    if init_sq == 0.0 {
        return Err(CoreError::Input(
            "plasticity: the initial parameters are all zero; the relative distance is undefined"
                .into(),
        ));
    }
    let (absolute, init_norm) = (diff_sq.sqrt(), init_sq.sqrt());
    Ok(WeightDistance {
        absolute,
        relative: absolute / init_norm,
        init_norm,
    })
}

/// The singular values of the matrix `features: [rows, cols]`, largest first, `min(rows,
/// cols)` of them.
///
/// They are the square roots of the eigenvalues of the smaller Gram matrix (`FᵀF` or `FFᵀ`),
/// formed and eigen-decomposed in f64 (Householder tridiagonalisation, then bisection on
/// Sturm sequences; no eigenvectors are formed). Squaring loses singular
/// values below about 10⁻⁸ of the largest to rounding; for `srank_δ` with δ ≥ 10⁻⁶ that is
/// far below what can change the result.
///
/// # Errors
/// [`CoreError::Shape`] unless `features` is a matrix with at least one column,
/// [`CoreError::Input`] if it has no rows or holds NaN or infinity, [`CoreError::TooLarge`]
/// if `min(rows, cols)` exceeds [`MAX_RANK_SIDE`].
pub fn singular_values(features: &Tensor) -> Result<Vec<f64>> {
    let shape = features.shape();
    if shape.len() != 2 || shape[1] == 0 {
        return Err(shape_err(
            "plasticity::singular_values",
            "[rows, cols ≥ 1]",
            shape,
        ));
    }
    let (n, d) = (shape[0], shape[1]);
    if n == 0 {
        return Err(CoreError::Input(
            "plasticity: the feature matrix has no rows".into(),
        ));
    }
    if !features.all_finite() {
        return Err(CoreError::Input(
            "plasticity: the feature matrix contains NaN or infinity".into(),
        ));
    }
    let side = n.min(d);
    if side > MAX_RANK_SIDE {
        return Err(rank_too_large(n, d));
    }
    let f = features.data();
    let mut g = vec![0.0f64; side * side];
    if d <= n {
        // FᵀF: accumulate the outer product of each row (upper triangle, then mirror).
        for row in f.chunks_exact(d) {
            for i in 0..d {
                let ri = f64::from(row[i]);
                if ri == 0.0 {
                    continue;
                }
                let gi = &mut g[i * d..(i + 1) * d];
                for j in i..d {
                    gi[j] += ri * f64::from(row[j]);
                }
            }
        }
    } else {
        // FFᵀ: row dot products.
        for r in 0..n {
            let fr = &f[r * d..(r + 1) * d];
            for s in r..n {
                let fs = &f[s * d..(s + 1) * d];
                g[r * n + s] = fr
                    .iter()
                    .zip(fs)
                    .map(|(&a, &b)| f64::from(a) * f64::from(b))
                    .sum();
            }
        }
    }
    for i in 0..side {
        for j in 0..i {
            g[i * side + j] = g[j * side + i];
        }
    }
    let mut sv: Vec<f64> = symmetric_eigenvalues(&mut g, side)
        .into_iter()
        .map(|l| l.max(0.0).sqrt())
        .collect();
    sv.sort_by(|a, b| b.total_cmp(a));
    Ok(sv)
}

/// Eigenvalues of the symmetric `n × n` row-major matrix `a` (destroyed): Householder
/// reduction to tridiagonal form (about `n³` multiply-adds), then each eigenvalue of the
/// tridiagonal matrix by bisection on its Sturm sequence (`O(n)` per step, `O(n²)` in all).
/// Bisection cannot fail to converge, and finds every eigenvalue to an absolute accuracy of
/// a few ulps of the matrix's norm, which is all `srank` needs.
fn symmetric_eigenvalues(a: &mut [f64], n: usize) -> Vec<f64> {
    let (d, e) = tridiagonalize(a, n);
    tridiagonal_eigenvalues(&d, &e)
}

/// Reduces `a` to a symmetric tridiagonal matrix with the same eigenvalues by `n − 2`
/// Householder reflections `H = I − β·v·vᵀ`, each applied to the trailing block as the
/// rank-2 update `A ← A − v·qᵀ − q·vᵀ` with `p = β·A·v`, `q = p − (β·vᵀp/2)·v`. Returns the
/// diagonal and the sub-diagonal.
fn tridiagonalize(a: &mut [f64], n: usize) -> (Vec<f64>, Vec<f64>) {
    let mut d = vec![0.0f64; n];
    let mut e = vec![0.0f64; n.saturating_sub(1)];
    let mut v = vec![0.0f64; n];
    let mut p = vec![0.0f64; n];
    for k in 0..n.saturating_sub(2) {
        d[k] = a[k * n + k];
        // Column k below the diagonal, read as row k (the matrix is symmetric).
        let m = n - k - 1;
        let x = &a[k * n + k + 1..(k + 1) * n];
        let norm = x.iter().map(|v| v * v).sum::<f64>().sqrt();
        if norm == 0.0 {
            e[k] = 0.0;
            continue;
        }
        // Reflect x onto alpha·e₁, alpha signed against x₀ so v₀ = x₀ − alpha does not cancel.
        let alpha = if x[0] > 0.0 { -norm } else { norm };
        v[..m].copy_from_slice(x);
        v[0] -= alpha;
        let vtv: f64 = v[..m].iter().map(|x| x * x).sum();
        let beta = 2.0 / vtv;
        let off = k + 1;
        for i in 0..m {
            let row = &a[(off + i) * n + off..(off + i + 1) * n];
            p[i] = beta * row.iter().zip(&v[..m]).map(|(a, v)| a * v).sum::<f64>();
        }
        let half = 0.5 * beta * v[..m].iter().zip(&p[..m]).map(|(v, p)| v * p).sum::<f64>();
        for i in 0..m {
            p[i] -= half * v[i];
        }
        for i in 0..m {
            let (vi, qi) = (v[i], p[i]);
            let row = &mut a[(off + i) * n + off..(off + i + 1) * n];
            for ((r, &vj), &qj) in row.iter_mut().zip(&v[..m]).zip(&p[..m]) {
                *r -= vi * qj + qi * vj;
            }
        }
        e[k] = alpha;
    }
    if n >= 2 {
        d[n - 2] = a[(n - 2) * n + n - 2];
        e[n - 2] = a[(n - 2) * n + n - 1];
    }
    if n >= 1 {
        d[n - 1] = a[(n - 1) * n + n - 1];
    }
    (d, e)
}

/// All eigenvalues of the symmetric tridiagonal matrix with diagonal `d` and sub-diagonal
/// `e`, each found by bisection inside the Gershgorin interval: the number of eigenvalues
/// below `x` is the number of negative pivots of the LDLᵀ factorisation of `T − x·I`
/// (Sylvester's law of inertia).
fn tridiagonal_eigenvalues(d: &[f64], e: &[f64]) -> Vec<f64> {
    let n = d.len();
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    for (i, &di) in d.iter().enumerate() {
        let r = e.get(i).map_or(0.0, |v| v.abs())
            + i.checked_sub(1)
                .and_then(|j| e.get(j))
                .map_or(0.0, |v| v.abs());
        lo = lo.min(di - r);
        hi = hi.max(di + r);
    }
    if n == 0 {
        return Vec::new();
    }
    let scale = lo.abs().max(hi.abs());
    let tol = 4.0 * f64::EPSILON * scale;
    let (lo, hi) = (lo - tol, hi + tol);
    // The smallest pivot allowed: a zero pivot is replaced by −pivmin, as LAPACK's dstebz does.
    let pivmin = f64::MIN_POSITIVE * e.iter().map(|v| v * v).fold(1.0, f64::max);
    let below = |x: f64| -> usize {
        let mut count = 0;
        let mut q = 1.0f64;
        for i in 0..n {
            let coupling = if i == 0 { 0.0 } else { e[i - 1] * e[i - 1] / q };
            q = d[i] - x - coupling;
            if q.abs() < pivmin {
                q = -pivmin;
            }
            if q < 0.0 {
                count += 1;
            }
        }
        count
    };
    (0..n)
        .map(|k| {
            // The (k+1)-th smallest eigenvalue λ satisfies below(λ⁻) ≤ k < below(λ⁺).
            let (mut a, mut b) = (lo, hi);
            for _ in 0..MAX_BISECTION_STEPS {
                let mid = 0.5 * (a + b);
                if b - a <= tol || mid <= a || mid >= b {
                    break;
                }
                if below(mid) > k {
                    b = mid;
                } else {
                    a = mid;
                }
            }
            0.5 * (a + b)
        })
        .collect()
}

/// `srank_δ` (Kumar et al. 2021): the smallest `k` such that the `k` largest of
/// `singular_values` sum to at least `(1 − δ)` of their total; 0 if they are all zero (or
/// there are none). The values may come in any order.
///
/// # Errors
/// [`CoreError::Config`] unless δ is in `[0, 1)`; [`CoreError::Input`] if a value is
/// negative, NaN or infinite.
pub fn srank(singular_values: &[f64], delta: f64) -> Result<usize> {
    check_delta(delta)?;
    if let Some(bad) = singular_values
        .iter()
        .find(|v| !(v.is_finite() && **v >= 0.0))
    {
        return Err(CoreError::Input(format!(
            "plasticity: a singular value must be finite and ≥ 0 (got {bad})"
        )));
    }
    let mut sv = singular_values.to_vec();
    sv.sort_by(|a, b| b.total_cmp(a));
    // Summed in the same order as the running sum below, so with δ = 0 the last prefix
    // equals the total exactly.
    let total: f64 = sv.iter().sum();
    if total == 0.0 {
        return Ok(0);
    }
    let target = (1.0 - delta) * total;
    let mut cum = 0.0f64;
    for (k, v) in sv.iter().enumerate() {
        cum += v;
        if cum >= target {
            return Ok(k + 1);
        }
    }
    Ok(sv.len())
}
