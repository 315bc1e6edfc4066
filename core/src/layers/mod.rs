//! Dense layers, each with its forward and hand-written backward pass side by side.
//!
//! Convention: `forward(x, y)` writes the output into a caller-owned buffer; `backward(x, dy,
//! dx)` receives the same input again (the caller keeps activations, so layers do not copy
//! them), accumulates parameter gradients (`+=`) and writes the input gradient.

mod activation;
mod linear;
mod norm;
mod softmax;

pub use activation::{gelu_backward, gelu_forward, relu_backward, relu_forward};
pub use linear::Linear;
pub use norm::LayerNorm;
pub(crate) use norm::row_stats as layer_norm_row_stats;
pub use softmax::{log_softmax_backward, log_softmax_rows, softmax_backward, softmax_rows};

use crate::kernels::Par;

/// Work size (multiply-adds) above which a GEMM is split across the rayon pool.
pub(crate) const PAR_THRESHOLD: usize = 1 << 20;

/// Picks sequential or pooled execution for an `m×k·k×n` product.
pub(crate) fn par_for(m: usize, n: usize, k: usize) -> Par {
    if m.saturating_mul(n).saturating_mul(k) >= PAR_THRESHOLD {
        Par::Rayon
    } else {
        Par::Seq
    }
}
