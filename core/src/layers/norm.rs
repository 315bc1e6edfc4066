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
        if d == 0 {
            return Ok(());
        }
        forward_rows(
            x.data(),
            y.data_mut(),
            self.gamma.value.data(),
            self.beta.value.data(),
            &mut self.mean,
            &mut self.rstd,
            self.eps,
        );
        Ok(())
    }

    /// `dx = (1/σ)·(ĝ − mean(ĝ) − x̂·mean(ĝ⊙x̂))` with `ĝ = dy⊙γ`; accumulates dγ, dβ.
    pub fn backward(&mut self, x: &Tensor, dy: &Tensor, dx: &mut Tensor) -> Result<()> {
        self.backward_impl(x, dy, dx, true)
    }

    /// [`LayerNorm::backward`]; with `params` false, `dx` alone (dγ and dβ untouched).
    pub(crate) fn backward_impl(
        &mut self,
        x: &Tensor,
        dy: &Tensor,
        dx: &mut Tensor,
        params: bool,
    ) -> Result<()> {
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
        if d == 0 {
            return Ok(());
        }
        backward_rows(
            x.data(),
            dy.data(),
            dx.data_mut(),
            self.gamma.value.data(),
            self.gamma.grad.data_mut(),
            self.beta.grad.data_mut(),
            &self.mean[..m],
            &self.rstd[..m],
            params,
        );
        Ok(())
    }
}

/// `Σ f(a_i, b_i, c_i)` in 8 lanes, combined in a fixed tree order, then the tail: a fixed
/// order (so results repeat bit for bit) that the compiler keeps in one vector register, which
/// a strictly sequential float sum forbids it.
#[inline(always)]
fn lane_sum(a: &[f32], b: &[f32], c: &[f32], f: impl Fn(f32, f32, f32) -> f32) -> f32 {
    let mut lanes = [0.0f32; 8];
    let (ca, cb, cc) = (a.chunks_exact(8), b.chunks_exact(8), c.chunks_exact(8));
    let (ta, tb, tc) = (ca.remainder(), cb.remainder(), cc.remainder());
    for ((xa, xb), xc) in ca.zip(cb).zip(cc) {
        for l in 0..8 {
            lanes[l] += f(xa[l], xb[l], xc[l]);
        }
    }
    let mut s = ((lanes[0] + lanes[4]) + (lanes[1] + lanes[5]))
        + ((lanes[2] + lanes[6]) + (lanes[3] + lanes[7]));
    for ((&x, &y), &z) in ta.iter().zip(tb).zip(tc) {
        s += f(x, y, z);
    }
    s
}

/// Mean and reciprocal standard deviation of one row (biased variance, as PyTorch's).
#[inline(always)]
pub(crate) fn row_stats(xr: &[f32], eps: f32) -> (f32, f32) {
    let d = xr.len() as f32;
    let mu = lane_sum(xr, xr, xr, |x, _, _| x) / d;
    let var = lane_sum(xr, xr, xr, |x, _, _| (x - mu) * (x - mu)) / d;
    (mu, 1.0 / (var + eps).sqrt())
}

crate::kernels::multiversion! {
    /// The forward pass over every row of `x` (`γ.len()` wide), keeping each row's statistics.
    fn forward_rows(x: &[f32], y: &mut [f32], g: &[f32], b: &[f32], mean: &mut [f32], rstd: &mut [f32], eps: f32) {
        let d = g.len();
        let rows = x.chunks_exact(d).zip(y.chunks_exact_mut(d));
        for ((xr, yr), (mu_r, rs_r)) in rows.zip(mean.iter_mut().zip(rstd.iter_mut())) {
            let (mu, rs) = row_stats(xr, eps);
            *mu_r = mu;
            *rs_r = rs;
            for (((yv, &xv), &gv), &bv) in yr.iter_mut().zip(xr).zip(g).zip(b) {
                *yv = (xv - mu) * rs * gv + bv;
            }
        }
    }
}

crate::kernels::multiversion! {
    /// The backward pass over every row: `dx`, and (with `params`) `dγ`, `dβ` accumulated in
    /// row order.
    fn backward_rows(x: &[f32], dy: &[f32], dx: &mut [f32], g: &[f32], gg: &mut [f32], bg: &mut [f32], mean: &[f32], rstd: &[f32], params: bool) {
        let d = g.len();
        let rows = x.chunks_exact(d).zip(dy.chunks_exact(d)).zip(dx.chunks_exact_mut(d));
        for (((xr, dyr), dxr), (&mu, &rs)) in rows.zip(mean.iter().zip(rstd)) {
            let sum_g = lane_sum(dyr, g, g, |dv, gv, _| dv * gv);
            let sum_gx = lane_sum(dyr, g, xr, |dv, gv, xv| dv * gv * ((xv - mu) * rs));
            if params {
                for (((ggv, bgv), &xv), &dv) in gg.iter_mut().zip(bg.iter_mut()).zip(xr).zip(dyr) {
                    *ggv += dv * ((xv - mu) * rs);
                    *bgv += dv;
                }
            }
            let (mg, mgx) = (sum_g / d as f32, sum_gx / d as f32);
            for (((dxv, &xv), &dv), &gv) in dxr.iter_mut().zip(xr).zip(dyr).zip(g) {
                *dxv = rs * (dv * gv - mg - ((xv - mu) * rs) * mgx);
            }
        }
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
