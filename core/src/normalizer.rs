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
