//! Losses, each returning its value and writing the gradient with respect to its input.
//!
//! Every loss is a mean over its elements (or rows), so gradients do not scale with the batch.

use crate::error::{CoreError, Result, shape_err};
use crate::tensor::Tensor;

fn same_shape(op: &'static str, a: &Tensor, b: &Tensor) -> Result<()> {
    if a.shape() != b.shape() {
        return Err(shape_err(op, format!("{:?}", a.shape()), b.shape()));
    }
    Ok(())
}

/// Mean squared error `mean((p − t)²)`; `grad = 2(p − t)/N`.
pub fn mse(pred: &Tensor, target: &Tensor, grad: &mut Tensor) -> Result<f32> {
    same_shape("mse", pred, target)?;
    let n = pred.len().max(1) as f32;
    grad.resize(pred.shape());
    let mut s = 0.0f64;
    for ((g, &p), &t) in grad
        .data_mut()
        .iter_mut()
        .zip(pred.data())
        .zip(target.data())
    {
        let r = p - t;
        s += f64::from(r * r);
        *g = 2.0 * r / n;
    }
    Ok((s / f64::from(n)) as f32)
}

/// Huber loss with threshold `delta` (quadratic inside, linear outside), optionally weighted
/// per row (importance weights of prioritized replay): `mean_i w_i · huber(p_i − t_i)`.
pub fn huber(
    pred: &Tensor,
    target: &Tensor,
    delta: f32,
    row_weights: Option<&[f32]>,
    grad: &mut Tensor,
) -> Result<f32> {
    same_shape("huber", pred, target)?;
    if !(delta.is_finite() && delta > 0.0) {
        return Err(CoreError::Config(format!(
            "huber: delta must be a positive number (got {delta})"
        )));
    }
    let (rows, cols) = (pred.rows(), pred.cols().max(1));
    if let Some(w) = row_weights {
        if w.len() != rows {
            return Err(shape_err("huber weights", format!("[{rows}]"), &[w.len()]));
        }
    }
    let n = pred.len().max(1) as f32;
    grad.resize(pred.shape());
    let mut s = 0.0f64;
    for (i, ((g, &p), &t)) in grad
        .data_mut()
        .iter_mut()
        .zip(pred.data())
        .zip(target.data())
        .enumerate()
    {
        let w = row_weights.map_or(1.0, |w| w[i / cols]);
        let r = p - t;
        let (l, d) = if r.abs() <= delta {
            (0.5 * r * r, r)
        } else {
            (delta * (r.abs() - 0.5 * delta), delta * r.signum())
        };
        s += f64::from(w * l);
        *g = w * d / n;
    }
    Ok((s / f64::from(n)) as f32)
}

/// Cross-entropy of row-wise softmax(`logits`) against class `labels`, mean over rows;
/// `grad = (softmax − onehot)/rows`.
pub fn cross_entropy(logits: &Tensor, labels: &[usize], grad: &mut Tensor) -> Result<f32> {
    let (rows, c) = (logits.rows(), logits.cols());
    if labels.len() != rows {
        return Err(shape_err(
            "cross_entropy labels",
            format!("[{rows}]"),
            &[labels.len()],
        ));
    }
    if let Some(&bad) = labels.iter().find(|&&l| l >= c) {
        return Err(CoreError::Input(format!(
            "cross_entropy: label {bad} out of range for {c} classes"
        )));
    }
    grad.resize(logits.shape());
    let mut s = 0.0f64;
    let inv = 1.0 / rows.max(1) as f32;
    for (r, &label) in labels.iter().enumerate() {
        let zr = logits.row(r);
        let mx = zr.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let sum: f32 = zr.iter().map(|z| (z - mx).exp()).sum();
        let lse = mx + sum.ln();
        s += f64::from(lse - zr[label]);
        for (j, g) in grad.row_mut(r).iter_mut().enumerate() {
            let p = (zr[j] - lse).exp();
            *g = (p - if j == label { 1.0 } else { 0.0 }) * inv;
        }
    }
    Ok((s * f64::from(inv)) as f32)
}

/// The automatic entropy-temperature loss of SAC v2 (Haarnoja et al. 2018b, arXiv 1812.05905,
/// eq. 18), in the log parameterisation Stable-Baselines3 also uses:
/// `L(log α) = −mean_b( log α · (log π_b + H̄) )`, with the log-probabilities `log_prob` of
/// freshly sampled actions treated as constants. Returns `(L, ∂L/∂log α)`; the gradient is
/// `−mean_b(log π_b + H̄)`, so α grows while the policy's entropy `−log π` is below the target
/// `H̄` and shrinks above it. Learning `log α` rather than α keeps α positive without a
/// constraint. The usual target is [`crate::dist::default_target_entropy`] (`−A`).
///
/// # Errors
/// [`CoreError::Input`] for an empty batch or a non-finite `log_alpha`, `target_entropy` or
/// log-probability (a non-finite temperature step would poison every later update).
pub fn entropy_temperature(
    log_alpha: f32,
    log_prob: &[f32],
    target_entropy: f32,
) -> Result<(f32, f32)> {
    if log_prob.is_empty() {
        return Err(CoreError::Input(
            "entropy_temperature: empty batch of log-probabilities".into(),
        ));
    }
    let all_finite = log_alpha.is_finite()
        && target_entropy.is_finite()
        && log_prob.iter().all(|v| v.is_finite());
    if !all_finite {
        return Err(CoreError::Input(
            "entropy_temperature: log_alpha, target entropy or a log-probability is NaN or \
             infinite"
                .into(),
        ));
    }
    // Summed in f64 in a fixed order: the mean feeds an optimizer step every update, and a
    // large batch of f32 terms of mixed sign would lose digits.
    let s: f64 = log_prob
        .iter()
        .map(|&lp| f64::from(lp) + f64::from(target_entropy))
        .sum();
    let mean = s / log_prob.len() as f64;
    let grad = -mean;
    Ok(((f64::from(log_alpha) * grad) as f32, grad as f32))
}
