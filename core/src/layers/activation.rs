use crate::kernels;
use crate::tensor::Tensor;

/// `y = max(x, 0)`.
pub fn relu_forward(x: &Tensor, y: &mut Tensor) {
    y.resize(x.shape());
    for (yv, &xv) in y.data_mut().iter_mut().zip(x.data()) {
        *yv = xv.max(0.0);
    }
}

/// `dx = dy · [x > 0]`.
pub fn relu_backward(x: &Tensor, dy: &Tensor, dx: &mut Tensor) {
    dx.resize(x.shape());
    for ((d, &g), &xv) in dx.data_mut().iter_mut().zip(dy.data()).zip(x.data()) {
        *d = if xv > 0.0 { g } else { 0.0 };
    }
}

/// `y = GELU(x) = x·Φ(x)` (the exact-erf form of Hendrycks & Gimpel 2016).
pub fn gelu_forward(x: &Tensor, y: &mut Tensor) {
    y.resize(x.shape());
    kernels::gelu_forward(x.data(), y.data_mut());
}

/// `dx = dy · (Φ(x) + x·φ(x))`.
pub fn gelu_backward(x: &Tensor, dy: &Tensor, dx: &mut Tensor) {
    dx.resize(x.shape());
    dx.data_mut().copy_from_slice(dy.data());
    kernels::gelu_backward_inplace(x.data(), dx.data_mut());
}
