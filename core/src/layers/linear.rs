use rand::Rng;

use crate::error::{Result, mul, too_large};
use crate::kernels::{col_sum_acc, gemv_rows, matmul};
use crate::layers::par_for;
use crate::param::{Module, Param};
use crate::tensor::Tensor;

/// Batches at or below this size take the GEMV path on the calling thread.
const GEMV_MAX_ROWS: usize = 4;

/// Fully connected layer `y = x·W + b`, with `W` stored `[in, out]` so the forward pass is a
/// plain row-major GEMM and batch-1 inference an axpy sweep over rows of `W`.
#[derive(Clone, Debug)]
pub struct Linear {
    /// Weight, `[in, out]`.
    pub w: Param,
    /// Bias, `[out]`.
    pub b: Param,
}

impl Linear {
    /// A layer initialised like PyTorch's `nn.Linear`: uniform in ±1/√in.
    ///
    /// # Errors
    /// [`crate::CoreError::TooLarge`] if `d_in · d_out` overflows or cannot be allocated (the
    /// network and MoE configs bound both by [`crate::limits::MAX_DIM`] before calling this).
    pub fn new(name: &str, d_in: usize, d_out: usize, rng: &mut impl Rng) -> Result<Self> {
        let bound = 1.0 / (d_in.max(1) as f32).sqrt();
        let mut uniform = |n: usize| -> Result<Vec<f32>> {
            let mut v = Vec::new();
            v.try_reserve_exact(n)
                .map_err(|e| too_large(format!("Linear::new {name}"), format!("{n} f32: {e}")))?;
            v.extend((0..n).map(|_| rng.random_range(-bound..=bound)));
            Ok(v)
        };
        let w = uniform(mul("Linear::new", d_in, d_out)?)?;
        let b = uniform(d_out)?;
        // Param::new allocates the gradient of the same size.
        Ok(Linear {
            w: Param::new(
                format!("{name}.w"),
                Tensor::from_vec(w, &[d_in, d_out])?,
                true,
            ),
            b: Param::new(format!("{name}.b"), Tensor::from_vec(b, &[d_out])?, false),
        })
    }

    /// Input width.
    pub fn d_in(&self) -> usize {
        self.w.value.shape()[0]
    }

    /// Output width.
    pub fn d_out(&self) -> usize {
        self.w.value.shape()[1]
    }

    /// `y = x·W + b` for `x: [m, in]`; `y` is resized to `[m, out]`.
    pub fn forward(&self, x: &Tensor, y: &mut Tensor) -> Result<()> {
        x.expect_cols("Linear::forward", self.d_in())?;
        let (m, k, n) = (x.rows(), self.d_in(), self.d_out());
        y.try_resize(&[m, n])?;
        if m <= GEMV_MAX_ROWS {
            gemv_rows(
                m,
                n,
                k,
                x.data(),
                self.w.value.data(),
                Some(self.b.value.data()),
                y.data_mut(),
            )?;
        } else {
            matmul(
                m,
                n,
                k,
                x.data(),
                false,
                self.w.value.data(),
                false,
                y.data_mut(),
                false,
                par_for(m, n, k),
            )?;
            crate::kernels::add_bias(y.data_mut(), self.b.value.data());
        }
        Ok(())
    }

    /// Writes `dx = dy·Wᵀ` alone, leaving the parameter gradients untouched (an input
    /// gradient through a layer treated as frozen).
    pub fn input_grad(&self, dy: &Tensor, dx: &mut Tensor) -> Result<()> {
        dy.expect_cols("Linear::input_grad dy", self.d_out())?;
        let (m, k, n) = (dy.rows(), self.d_in(), self.d_out());
        dx.try_resize(&[m, k])?;
        matmul(
            m,
            k,
            n,
            dy.data(),
            false,
            self.w.value.data(),
            true,
            dx.data_mut(),
            false,
            par_for(m, k, n),
        )
    }

    /// Accumulates `dW += xᵀ·dy`, `db += Σ dy`, and writes `dx = dy·Wᵀ` when asked for.
    pub fn backward(&mut self, x: &Tensor, dy: &Tensor, dx: Option<&mut Tensor>) -> Result<()> {
        x.expect_cols("Linear::backward x", self.d_in())?;
        dy.expect_cols("Linear::backward dy", self.d_out())?;
        let (m, k, n) = (x.rows(), self.d_in(), self.d_out());
        if dy.rows() != m {
            return Err(crate::error::shape_err(
                "Linear::backward dy",
                format!("[{m}, {n}]"),
                dy.shape(),
            ));
        }
        matmul(
            k,
            n,
            m,
            x.data(),
            true,
            dy.data(),
            false,
            self.w.grad.data_mut(),
            true,
            par_for(k, n, m),
        )?;
        col_sum_acc(self.b.grad.data_mut(), dy.data());
        if let Some(dx) = dx {
            dx.try_resize(&[m, k])?;
            matmul(
                m,
                k,
                n,
                dy.data(),
                false,
                self.w.value.data(),
                true,
                dx.data_mut(),
                false,
                par_for(m, k, n),
            )?;
        }
        Ok(())
    }
}

impl Module for Linear {
    fn visit_params<'a>(&'a self, f: &mut dyn FnMut(&'a Param)) {
        f(&self.w);
        f(&self.b);
    }
    fn visit_params_mut<'a>(&'a mut self, f: &mut dyn FnMut(&'a mut Param)) {
        f(&mut self.w);
        f(&mut self.b);
    }
}
