//! Running observation normaliser (mean and variance by Chan et al.'s parallel update).

use crate::error::{CoreError, Result};
use crate::tensor::Tensor;

/// Normalises observations to zero mean and unit variance from statistics gathered while
/// acting, then clips to ±`clip`. Updates are explicit (`update`), never a side effect of a
/// forward pass, so replaying old batches through the learner does not skew the statistics.
#[derive(Clone, Debug, PartialEq)]
pub struct ObsNormalizer {
    /// Whether normalisation is applied; when off, observations pass through unchanged.
    pub enabled: bool,
    /// Clip bound after normalisation.
    pub clip: f32,
    /// Observations seen.
    pub count: f64,
    /// Running mean per feature.
    pub mean: Vec<f64>,
    /// Running variance per feature (population).
    pub var: Vec<f64>,
}

impl ObsNormalizer {
    /// A normaliser over `dim` features, starting at mean 0 and variance 1.
    ///
    /// Allocates `2·dim` f64 infallibly: `dim` must already be bounded, as
    /// [`crate::NetworkConfig::validate`] bounds `obs_dim` by [`crate::limits::MAX_DIM`].
    pub fn new(dim: usize, enabled: bool, clip: f32) -> Self {
        ObsNormalizer {
            enabled,
            clip,
            count: 0.0,
            mean: vec![0.0; dim],
            var: vec![1.0; dim],
        }
    }

    /// Folds a batch of observations `[n, dim]` into the statistics.
    pub fn update(&mut self, obs: &Tensor) -> Result<()> {
        obs.expect_cols("ObsNormalizer::update", self.mean.len())?;
        if !obs.all_finite() {
            return Err(CoreError::Input(
                "observation contains NaN or infinity".into(),
            ));
        }
        let n = obs.rows() as f64;
        if n == 0.0 {
            return Ok(());
        }
        let dim = self.mean.len();
        for j in 0..dim {
            let bm = (0..obs.rows())
                .map(|r| f64::from(obs.row(r)[j]))
                .sum::<f64>()
                / n;
            let bv = (0..obs.rows())
                .map(|r| (f64::from(obs.row(r)[j]) - bm).powi(2))
                .sum::<f64>()
                / n;
            let total = self.count + n;
            let delta = bm - self.mean[j];
            let m2 = self.var[j] * self.count + bv * n + delta * delta * self.count * n / total;
            self.mean[j] += delta * n / total;
            self.var[j] = m2 / total;
        }
        self.count += n;
        Ok(())
    }

    /// Normalises one observation in place (a no-op while disabled or before any update).
    pub fn apply_row(&self, row: &mut [f32]) {
        if !self.enabled || self.count == 0.0 {
            return;
        }
        for ((v, &m), &var) in row.iter_mut().zip(&self.mean).zip(&self.var) {
            let z = ((f64::from(*v) - m) / (var + 1e-8).sqrt()) as f32;
            *v = z.clamp(-self.clip, self.clip);
        }
    }

    /// Back-propagates `d_norm`, the gradient with respect to the normalised observations
    /// `normed` that [`ObsNormalizer::apply`] wrote, to the raw observations, into `d_obs`:
    /// `g/σ` per feature, and 0 where the value was clipped (the clip is flat there). A
    /// clipped value is exactly `±clip` after `apply`, so `normed` alone tells which were
    /// clipped and the raw observations need not be kept. While normalisation is off (or
    /// before any update) the map is the identity and so is its gradient.
    ///
    /// # Errors
    /// [`CoreError::Shape`] unless both are `[n, dim]` of the same shape.
    pub fn backward(&self, normed: &Tensor, d_norm: &Tensor, d_obs: &mut Tensor) -> Result<()> {
        normed.expect_cols("ObsNormalizer::backward", self.mean.len())?;
        if d_norm.shape() != normed.shape() {
            return Err(crate::error::shape_err(
                "ObsNormalizer::backward",
                format!("{:?}", normed.shape()),
                d_norm.shape(),
            ));
        }
        d_obs.try_resize(normed.shape())?;
        d_obs.data_mut().copy_from_slice(d_norm.data());
        let dim = self.mean.len();
        if !self.enabled || self.count == 0.0 || dim == 0 {
            return Ok(());
        }
        for (dr, xr) in d_obs
            .data_mut()
            .chunks_exact_mut(dim)
            .zip(normed.data().chunks_exact(dim))
        {
            for ((g, &x), &var) in dr.iter_mut().zip(xr).zip(&self.var) {
                *g = if x.abs() >= self.clip {
                    0.0
                } else {
                    (f64::from(*g) / (var + 1e-8).sqrt()) as f32
                };
            }
        }
        Ok(())
    }

    /// Writes the normalised `obs` into `out`.
    pub fn apply(&self, obs: &Tensor, out: &mut Tensor) {
        out.resize(obs.shape());
        out.data_mut().copy_from_slice(obs.data());
        if !self.enabled || self.count == 0.0 {
            return;
        }
        for row in out.data_mut().chunks_exact_mut(self.mean.len()) {
            self.apply_row(row);
        }
    }
}
