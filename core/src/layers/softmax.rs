use crate::tensor::Tensor;

/// Row-wise softmax, shifted by the row maximum so large logits do not overflow.
pub fn softmax_rows(x: &Tensor, y: &mut Tensor) {
    y.resize(x.shape());
    let c = x.cols();
    for (xr, yr) in x
        .data()
        .chunks_exact(c)
        .zip(y.data_mut().chunks_exact_mut(c))
    {
        let mx = xr.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut s = 0.0;
        for (yv, &xv) in yr.iter_mut().zip(xr) {
            *yv = (xv - mx).exp();
            s += *yv;
        }
        for yv in yr.iter_mut() {
            *yv /= s;
        }
    }
}

/// Softmax backward from its output: `dx = y ⊙ (dy − Σ y⊙dy)`.
pub fn softmax_backward(y: &Tensor, dy: &Tensor, dx: &mut Tensor) {
    dx.resize(y.shape());
    let c = y.cols();
    for ((yr, gr), dr) in y
        .data()
        .chunks_exact(c)
        .zip(dy.data().chunks_exact(c))
        .zip(dx.data_mut().chunks_exact_mut(c))
    {
        let s: f32 = yr.iter().zip(gr).map(|(a, b)| a * b).sum();
        for ((d, &yv), &gv) in dr.iter_mut().zip(yr).zip(gr) {
            *d = yv * (gv - s);
        }
    }
}

/// Row-wise log-softmax: `y = x − logsumexp(x)`.
pub fn log_softmax_rows(x: &Tensor, y: &mut Tensor) {
    y.resize(x.shape());
    let c = x.cols();
    for (xr, yr) in x
        .data()
        .chunks_exact(c)
        .zip(y.data_mut().chunks_exact_mut(c))
    {
        let mx = xr.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let lse = mx + xr.iter().map(|v| (v - mx).exp()).sum::<f32>().ln();
        for (yv, &xv) in yr.iter_mut().zip(xr) {
            *yv = xv - lse;
        }
    }
}

/// Log-softmax backward from its output: `dx = dy − softmax(x)·Σ dy`.
pub fn log_softmax_backward(y: &Tensor, dy: &Tensor, dx: &mut Tensor) {
    dx.resize(y.shape());
    let c = y.cols();
    for ((yr, gr), dr) in y
        .data()
        .chunks_exact(c)
        .zip(dy.data().chunks_exact(c))
        .zip(dx.data_mut().chunks_exact_mut(c))
    {
        let s: f32 = gr.iter().sum();
        for ((d, &yv), &gv) in dr.iter_mut().zip(yr).zip(gr) {
            *d = gv - yv.exp() * s;
        }
    }
}
