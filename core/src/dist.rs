//! The tanh-squashed diagonal Gaussian policy head of SAC (Haarnoja et al. 2018, appendix C),
//! with its backward pass, and the default target entropy of the automatic temperature
//! (Haarnoja et al. 2018b, arXiv 1812.05905).
//!
//! The policy network's raw output is read as `[mean(A) | log_std(A)]` per row. The noise `ε`
//! comes from the caller, so the caller owns the RNG: a resumed run draws the same noise in
//! the same order and stays bit-exact. With `l = clamp(log_std, LOG_STD_MIN, LOG_STD_MAX)`:
//!
//! ```text
//! u = mean + exp(l)·ε            a = tanh(u) ∈ [−1, 1]
//! log π(a) = Σ_i [ −ε_i²/2 − l_i − ln(2π)/2 − ln(1 − tanh²(u_i)) ]
//! ```
//!
//! `ln(1 − tanh²(u))` is computed as `2·(ln 2 − |u| − softplus(−2|u|))`, which is exact
//! algebra (the function is even in `u`) and stays finite where `tanh(u)` rounds to ±1 in f32
//! (|u| > 9): the naive `ln(1 − a²)` would give −∞ there and a log-probability of +∞.

use crate::error::{CoreError, Result, shape_err};
use crate::limits::MAX_DIM;
use crate::tensor::Tensor;

/// Lower bound of the clamped log standard deviation: σ ≥ e^−20 ≈ 2e-9. Same bound as
/// Stable-Baselines3's SAC actor (`LOG_STD_MIN = -20` in `stable_baselines3/sac/policies.py`).
pub const LOG_STD_MIN: f32 = -20.0;

/// Upper bound of the clamped log standard deviation: σ ≤ e² ≈ 7.4, already far wider than
/// the squashing range, so larger values would only saturate `tanh`. Same bound as
/// Stable-Baselines3's SAC actor (`LOG_STD_MAX = 2`).
pub const LOG_STD_MAX: f32 = 2.0;

/// `ln(2π)/2`, the Gaussian normalising constant per dimension.
const HALF_LN_2PI: f32 = 0.918_938_5;

/// The default target entropy of SAC's automatic temperature: `−A` for an `A`-dimensional
/// action space, the heuristic of the v2 paper (arXiv 1812.05905, section 5) that
/// Stable-Baselines3 also uses (`target_entropy = "auto"`).
pub fn default_target_entropy(action_dim: usize) -> f32 {
    -(action_dim as f32)
}

/// `softplus(x) = ln(1 + eˣ)`, without overflow for large `x`.
fn softplus(x: f32) -> f32 {
    x.max(0.0) + (-x.abs()).exp().ln_1p()
}

/// `ln(1 − tanh²(u))` in the stable form (see the module docs); −∞ only for infinite `u`.
fn log_sech2(u: f32) -> f32 {
    let u = u.abs();
    2.0 * (std::f32::consts::LN_2 - u - softplus(-2.0 * u))
}

/// One dimension's forward: `(u, action, log-prob term)` for mean `m`, clamped log-std `l`
/// and noise `e`. Shared by the batch layer and the per-row acting functions so that acting
/// and learning compute exactly the same numbers.
fn element(m: f32, l: f32, e: f32) -> (f32, f32, f32) {
    let u = m + l.exp() * e;
    let a = u.tanh();
    (u, a, -0.5 * e * e - l - HALF_LN_2PI - log_sech2(u))
}

fn check_row(op: &'static str, raw: &[f32], eps: Option<&[f32]>, out: &[f32]) -> Result<usize> {
    let a = out.len();
    if raw.len() != 2 * a || eps.is_some_and(|e| e.len() != a) {
        return Err(shape_err(
            op,
            format!("raw of {} and eps of {a} for {a} actions", 2 * a),
            &[raw.len(), eps.map_or(0, <[f32]>::len)],
        ));
    }
    if !raw.iter().chain(eps.unwrap_or(&[])).all(|v| v.is_finite()) {
        return Err(CoreError::Input(format!(
            "{op}: policy output or noise contains NaN or infinity"
        )));
    }
    Ok(a)
}

/// Samples one action row for acting: writes `tanh(mean + σ·ε)` into `action` (its length is
/// the action dimension `A`; `raw` holds `2A` values, `eps` `A`) and returns the row's
/// log-probability. Computes exactly what [`SquashedGaussian::forward`] computes for that row.
///
/// # Errors
/// [`CoreError::Shape`] on mismatched lengths, [`CoreError::Input`] on a non-finite value.
pub fn sample_row(raw: &[f32], eps: &[f32], action: &mut [f32]) -> Result<f32> {
    let a = check_row("squashed_gaussian::sample_row", raw, Some(eps), action)?;
    let (mean, log_std) = raw.split_at(a);
    let mut lp = 0.0f32;
    for i in 0..a {
        let l = log_std[i].clamp(LOG_STD_MIN, LOG_STD_MAX);
        let (_, act, t) = element(mean[i], l, eps[i]);
        action[i] = act;
        lp += t;
    }
    Ok(lp)
}

/// The deterministic action of one row for evaluation: `tanh(mean)` into `action` (length
/// `A`; `raw` holds `2A` values, the log-std half is ignored).
///
/// # Errors
/// [`CoreError::Shape`] on mismatched lengths, [`CoreError::Input`] on a non-finite value.
pub fn deterministic_row(raw: &[f32], action: &mut [f32]) -> Result<()> {
    let a = check_row("squashed_gaussian::deterministic_row", raw, None, action)?;
    for (o, &m) in action.iter_mut().zip(&raw[..a]) {
        *o = m.tanh();
    }
    Ok(())
}

/// The tanh-squashed diagonal Gaussian over a batch, with its backward pass through the
/// reparameterisation. Owns its output and cache buffers, reused from call to call: after
/// the first batch of the largest size, no call allocates.
#[derive(Clone, Debug)]
pub struct SquashedGaussian {
    action_dim: usize,
    action: Tensor,
    log_prob: Vec<f32>,
    /// `σ·ε` per element: `∂u/∂l`.
    sigma_eps: Vec<f32>,
    /// `1 − tanh²(u)` per element, from the stable log form so it does not round to 0 early.
    sech2: Vec<f32>,
    /// Whether the raw log-std was inside the clamp bounds (else its gradient is 0).
    in_range: Vec<bool>,
    det: Tensor,
    d_raw: Tensor,
}

impl SquashedGaussian {
    /// A head for `action_dim` action dimensions (the network's output is `2·action_dim` wide).
    ///
    /// # Errors
    /// [`CoreError::Config`] for 0, [`CoreError::TooLarge`] above [`MAX_DIM`] (2^20).
    pub fn new(action_dim: usize) -> Result<Self> {
        if action_dim == 0 {
            return Err(CoreError::Config(
                "squashed Gaussian: action_dim must be > 0".into(),
            ));
        }
        if action_dim > MAX_DIM {
            return Err(crate::error::too_large(
                "squashed Gaussian action_dim",
                format!("{action_dim} exceeds the limit of {MAX_DIM}"),
            ));
        }
        // No Default impl: a head of 0 dimensions would accept any batch and do nothing.
        Ok(SquashedGaussian {
            action_dim,
            action: Tensor::default(),
            log_prob: Vec::new(),
            sigma_eps: Vec::new(),
            sech2: Vec::new(),
            in_range: Vec::new(),
            det: Tensor::default(),
            d_raw: Tensor::default(),
        })
    }

    /// Action dimension `A`.
    pub fn action_dim(&self) -> usize {
        self.action_dim
    }

    fn check_raw(&self, op: &'static str, raw: &Tensor) -> Result<()> {
        raw.expect_cols(op, 2 * self.action_dim)?;
        if !raw.all_finite() {
            return Err(CoreError::Input(format!(
                "{op}: policy output contains NaN or infinity"
            )));
        }
        Ok(())
    }

    /// Samples actions for `raw: [B, 2A]` with the caller's standard-normal noise
    /// `eps: [B, A]`; returns the actions `[B, A]` (each in [−1, 1]) and the log-probability
    /// of each row `[B]`, and keeps what [`SquashedGaussian::backward`] needs.
    ///
    /// # Errors
    /// [`CoreError::Shape`] on mismatched shapes, [`CoreError::Input`] on a non-finite value
    /// in `raw` or `eps` (finite values of any size give finite actions).
    pub fn forward(&mut self, raw: &Tensor, eps: &Tensor) -> Result<(&Tensor, &[f32])> {
        let a = self.action_dim;
        self.check_raw("SquashedGaussian::forward raw", raw)?;
        eps.expect_cols("SquashedGaussian::forward eps", a)?;
        let b = raw.rows();
        if eps.rows() != b {
            return Err(shape_err(
                "SquashedGaussian::forward eps",
                format!("[{b}, {a}]"),
                eps.shape(),
            ));
        }
        if !eps.all_finite() {
            return Err(CoreError::Input(
                "SquashedGaussian::forward: noise contains NaN or infinity".into(),
            ));
        }
        self.action.try_resize(&[b, a])?;
        let n = self.action.len();
        // Grow-only vectors: same sizes as `action`, which try_resize just proved allocatable.
        self.log_prob.resize(b, 0.0);
        self.sigma_eps.resize(n, 0.0);
        self.sech2.resize(n, 0.0);
        self.in_range.resize(n, false);
        for r in 0..b {
            let (mean, log_std) = raw.row(r).split_at(a);
            let er = eps.row(r);
            let mut lp = 0.0f32;
            for i in 0..a {
                let j = r * a + i;
                let s = log_std[i];
                let l = s.clamp(LOG_STD_MIN, LOG_STD_MAX);
                let (u, act, t) = element(mean[i], l, er[i]);
                self.action.data_mut()[j] = act;
                self.sigma_eps[j] = l.exp() * er[i];
                self.sech2[j] = log_sech2(u).exp();
                self.in_range[j] = (LOG_STD_MIN..=LOG_STD_MAX).contains(&s);
                lp += t;
            }
            self.log_prob[r] = lp;
        }
        Ok((&self.action, &self.log_prob[..b]))
    }

    /// The actions of the last [`SquashedGaussian::forward`].
    pub fn action(&self) -> &Tensor {
        &self.action
    }

    /// The per-row log-probabilities of the last [`SquashedGaussian::forward`].
    pub fn log_prob(&self) -> &[f32] {
        &self.log_prob
    }

    /// Back-propagates the loss gradients with respect to the last forward's actions
    /// (`d_action: [B, A]`) and log-probabilities (`d_log_prob: [B]`) to the raw network
    /// output, `[B, 2A]` laid out like `raw`. Both paths reach both halves: with `ε` fixed,
    ///
    /// ```text
    /// ∂u/∂mean = 1,  ∂u/∂l = σε,  ∂a/∂u = 1 − a²,  ∂log π/∂u = 2a,  ∂log π/∂l = −1 (direct)
    /// ```
    ///
    /// (the `−ε²/2` term is constant under the reparameterisation). The log-std gradient is
    /// zero where the clamp was active, as for `torch.clamp`.
    ///
    /// # Errors
    /// [`CoreError::Shape`] if the shapes differ from the last forward's batch.
    pub fn backward(&mut self, d_action: &Tensor, d_log_prob: &[f32]) -> Result<&Tensor> {
        let a = self.action_dim;
        let b = self.action.rows();
        if d_action.shape() != self.action.shape() || d_log_prob.len() != b {
            return Err(shape_err(
                "SquashedGaussian::backward",
                format!("d_action {:?} and d_log_prob [{b}]", self.action.shape()),
                d_action.shape(),
            ));
        }
        self.d_raw.try_resize(&[b, 2 * a])?;
        let act = self.action.data();
        for (r, &dl) in d_log_prob.iter().enumerate() {
            let (dm, ds) = self.d_raw.row_mut(r).split_at_mut(a);
            for i in 0..a {
                let j = r * a + i;
                let du = d_action.data()[j] * self.sech2[j] + dl * 2.0 * act[j];
                dm[i] = du;
                ds[i] = if self.in_range[j] {
                    du * self.sigma_eps[j] - dl
                } else {
                    0.0
                };
            }
        }
        Ok(&self.d_raw)
    }

    /// The deterministic actions `tanh(mean)` for `raw: [B, 2A]`, for evaluation and the
    /// gate. Uses its own buffer, so it does not disturb the cache of the last forward.
    ///
    /// # Errors
    /// [`CoreError::Shape`] on a wrong width, [`CoreError::Input`] on a non-finite value.
    pub fn deterministic(&mut self, raw: &Tensor) -> Result<&Tensor> {
        let a = self.action_dim;
        self.check_raw("SquashedGaussian::deterministic", raw)?;
        let b = raw.rows();
        self.det.try_resize(&[b, a])?;
        for r in 0..b {
            for (o, &m) in self.det.row_mut(r).iter_mut().zip(&raw.row(r)[..a]) {
                *o = m.tanh();
            }
        }
        Ok(&self.det)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The stable form equals the naive one where the naive one is accurate, and stays finite
    /// (and close to its asymptote 2·ln 2 − 2|u|) where tanh rounds to ±1.
    #[test]
    fn log_sech2_is_stable() {
        for u in [-3.0f64, -0.7, 0.0, 0.2, 1.5, 4.0] {
            let naive = (1.0 - u.tanh().powi(2)).ln();
            assert!(
                (f64::from(log_sech2(u as f32)) - naive).abs() < 1e-5,
                "u={u}"
            );
        }
        for u in [20.0f32, -50.0, 1e4, -1e30] {
            let v = log_sech2(u);
            assert!(v.is_finite(), "u={u}: {v}");
            let asym = 2.0 * std::f32::consts::LN_2 - 2.0 * u.abs();
            assert!(
                (v - asym).abs() <= 1e-6 * asym.abs(),
                "u={u}: {v} vs {asym}"
            );
        }
        assert_eq!(log_sech2(f32::INFINITY), f32::NEG_INFINITY);
        assert_eq!(log_sech2(f32::NEG_INFINITY), f32::NEG_INFINITY);
    }
}
