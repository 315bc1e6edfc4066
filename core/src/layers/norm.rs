use crate::error::Result;
use crate::param::{Module, Param};
use crate::tensor::Tensor;

/// Layer normalisation over the last dimension (Ba et al. 2016), with learned gain and bias.
///
/// The forward pass keeps each row's mean and reciprocal standard deviation; the backward pass
/// recomputes the normalised input from `x`, which is cheaper than storing it.
#[derive(Clone, Debug)]
pub struct LayerNorm {
    /// Gain γ, `[d]`, initialised to 1.
    pub gamma: Param,
    /// Bias β, `[d]`, initialised to 0.
    pub beta: Param,
    eps: f32,
    mean: Vec<f32>,
    rstd: Vec<f32>,
}

impl LayerNorm {
    /// A layer over `d` features. Allocates `4·d` f32 infallibly: configs bound `d` by
    /// [`crate::limits::MAX_DIM`] before a network is built.
    pub fn new(name: &str, d: usize) -> Self {
        let mut gamma = Tensor::zeros(&[d]);
        gamma.fill(1.0);
        LayerNorm {
            gamma: Param::new(format!("{name}.gamma"), gamma, false),
            beta: Param::new(format!("{name}.beta"), Tensor::zeros(&[d]), false),
            eps: 1e-5,
            mean: Vec::new(),
            rstd: Vec::new(),
        }
    }

    /// Feature width.
    pub fn dim(&self) -> usize {
        self.gamma.value.len()
    }

    /// `y = γ ⊙ (x − μ)/σ + β` row by row.
    pub fn forward(&mut self, x: &Tensor, y: &mut Tensor) -> Result<()> {
        let d = self.dim();
        x.expect_cols("LayerNorm::forward", d)?;
        let m = x.rows();
        y.resize(&[m, d]);
        self.mean.resize(m, 0.0);
        self.rstd.resize(m, 0.0);
        let (g, b) = (self.gamma.value.data(), self.beta.value.data());
        for r in 0..m {
            let xr = x.row(r);
            let mu = xr.iter().sum::<f32>() / d as f32;
            let var = xr.iter().map(|v| (v - mu) * (v - mu)).sum::<f32>() / d as f32;
            let rs = 1.0 / (var + self.eps).sqrt();
            self.mean[r] = mu;
            self.rstd[r] = rs;
            for (((yv, &xv), &gv), &bv) in y.row_mut(r).iter_mut().zip(xr).zip(g).zip(b) {
                *yv = (xv - mu) * rs * gv + bv;
            }
        }
        Ok(())
    }

    /// `dx = (1/σ)·(ĝ − mean(ĝ) − x̂·mean(ĝ⊙x̂))` with `ĝ = dy⊙γ`; accumulates dγ, dβ.
    pub fn backward(&mut self, x: &Tensor, dy: &Tensor, dx: &mut Tensor) -> Result<()> {
        let d = self.dim();
        x.expect_cols("LayerNorm::backward x", d)?;
        dy.expect_cols("LayerNorm::backward dy", d)?;
        let m = x.rows();
        if self.mean.len() < m || dy.rows() != m {
            return Err(crate::error::shape_err(
                "LayerNorm::backward",
                "the batch of the last forward",
                x.shape(),
            ));
        }
        dx.resize(&[m, d]);
        let g = self.gamma.value.data();
        for r in 0..m {
            let (mu, rs) = (self.mean[r], self.rstd[r]);
            let (xr, dyr) = (x.row(r), dy.row(r));
            let mut sum_g = 0.0f32;
            let mut sum_gx = 0.0f32;
            let gg = self.gamma.grad.data_mut();
            for i in 0..d {
                let xh = (xr[i] - mu) * rs;
                let gh = dyr[i] * g[i];
                sum_g += gh;
                sum_gx += gh * xh;
                gg[i] += dyr[i] * xh;
            }
            for (bg, &dv) in self.beta.grad.data_mut().iter_mut().zip(dyr) {
                *bg += dv;
            }
            let (mg, mgx) = (sum_g / d as f32, sum_gx / d as f32);
            for (i, dxv) in dx.row_mut(r).iter_mut().enumerate() {
                let xh = (xr[i] - mu) * rs;
                *dxv = rs * (dyr[i] * g[i] - mg - xh * mgx);
            }
        }
        Ok(())
    }
}

impl Module for LayerNorm {
    fn visit_params<'a>(&'a self, f: &mut dyn FnMut(&'a Param)) {
        f(&self.gamma);
        f(&self.beta);
    }
    fn visit_params_mut<'a>(&'a mut self, f: &mut dyn FnMut(&'a mut Param)) {
        f(&mut self.gamma);
        f(&mut self.beta);
    }
}
