//! Hot loops of the training core: GEMM (through the `gemm` and `matrixmultiply` crates), a calling-thread GEMV for
//! small batches, GELU, bias and reduction helpers, and the fused AdamW update.
//!
//! Element-wise kernels are written as plain loops that LLVM vectorises, and compiled twice by
//! [`multiversion!`]: once for AVX2+FMA and once for the baseline target, picked at run time.
//! That keeps the binary portable while the machines we train on run 8-wide.
//!
//! Every reduction here runs in a fixed order, so a training step is bit-for-bit repeatable
//! for a given thread count.

use rayon::prelude::*;

use crate::error::{CoreError, Result};

/// Defines a function twice (AVX2+FMA and baseline) and dispatches on the running CPU.
#[macro_export]
#[doc(hidden)]
macro_rules! multiversion {
    ($(#[$m:meta])* $vis:vis fn $name:ident($($arg:ident : $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block) => {
        $(#[$m])*
        #[allow(clippy::too_many_arguments)]
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            #[allow(clippy::too_many_arguments)]
            fn imp($($arg: $ty),*) $(-> $ret)? $body
            #[cfg(target_arch = "x86_64")]
            {
                // A safe fn with #[target_feature] needs Rust 1.86: it sets the workspace's
                // rust-version.
                #[target_feature(enable = "avx2,fma")]
                #[allow(clippy::too_many_arguments)]
                fn avx2($($arg: $ty),*) $(-> $ret)? { imp($($arg),*) }
                if $crate::kernels::has_avx2() {
                    // SAFETY: the CPU supports AVX2 and FMA, checked just above.
                    return unsafe { avx2($($arg),*) };
                }
            }
            imp($($arg),*)
        }
    };
}
pub(crate) use multiversion;

/// True when the CPU runs AVX2 and FMA (the check is cached by the standard library).
#[inline]
pub fn has_avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Whether a GEMM may use the rayon pool. Small products stay on the calling thread: waking
/// a pool costs more than the work.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Par {
    /// Run on the calling thread.
    Seq,
    /// Split across the current rayon pool.
    Rayon,
}

/// Products of at least this many multiply-adds go to `matrixmultiply`, smaller ones to `gemm`.
///
/// Measured 2026-12-03 on the shared 2-vCPU EPYC, three runs of
/// `cargo bench -p autodidact-core --bench core -- --only gemm` (rows of one shape timed
/// interleaved; median of the run medians, range across runs): on one thread the two crates
/// are within run-to-run noise of each other on every expert shape of the MoE benchmark,
/// 2^20 to 2^31 multiply-adds (e.g. 95 vs 100 GFLOP/s at 256×128·128×512, 94 vs 91 at
/// 2048×512·512×2048, `gemm` first), and at 2048³ `matrixmultiply` is level or ahead
/// (94 vs 93 GFLOP/s on 1 thread; 174 vs 174 on 2 threads, our row split vs `gemm`'s own, with
/// ours ahead 164 vs 135 in one run). So this split is not a measured crossover; it stays
/// because neither side of it measured slower than the alternative.
pub const LARGE_GEMM_WORK: usize = 1 << 24;

/// `C[m×n] (+)= op(A)[m×k] · op(B)[k×n]`, all row-major.
///
/// `a_t` means `A` is stored as its transpose (`k×m`), `b_t` likewise (`n×k`), so the
/// transposed products of a backward pass need no copies. With `acc`, the product is added to
/// `C` (used to accumulate weight gradients); otherwise `C` is overwritten.
///
/// With [`Par::Rayon`], rows of `C` are split into blocks, one task each; the inner dimension
/// is never split, so every element is summed in the same order whatever the split.
///
/// # Errors
/// [`CoreError::Shape`] if a slice is shorter than its dimensions say, including when a
/// product of dimensions overflows `usize` (no slice can be that long). The check is made with
/// checked arithmetic because it guards the raw pointers handed to the GEMM crates: a wrapped
/// product would let a short slice through.
#[allow(clippy::too_many_arguments)]
pub fn matmul(
    m: usize,
    n: usize,
    k: usize,
    a: &[f32],
    a_t: bool,
    b: &[f32],
    b_t: bool,
    c: &mut [f32],
    acc: bool,
    par: Par,
) -> Result<()> {
    let mn = check_operands("matmul", m, n, k, a.len(), b.len(), c.len())?;
    if m == 0 || n == 0 {
        return Ok(());
    }
    if k == 0 {
        if !acc {
            c[..mn].fill(0.0);
        }
        return Ok(());
    }
    // (row stride, column stride) of each operand as stored.
    let (a_rs, a_cs) = if a_t {
        (1, m as isize)
    } else {
        (k as isize, 1)
    };
    let (b_rs, b_cs) = if b_t {
        (1, k as isize)
    } else {
        (n as isize, 1)
    };
    let threads = rayon::current_num_threads();
    if par == Par::Rayon && threads > 1 && m >= 32 {
        // About two blocks per thread (balance), rows a multiple of 8 (kernel tiles).
        let rows = m.div_ceil(2 * threads).next_multiple_of(8);
        let a_ptr = SendPtr(a.as_ptr());
        // rows ≤ m rounded up to 8, and m·n fits (checked above), so this cannot overflow
        // unless m·n is within 8·n of usize::MAX, which no slice reaches.
        c[..mn]
            .par_chunks_mut(rows.saturating_mul(n))
            .enumerate()
            .for_each(|(i, cc)| {
                let r0 = (i * rows) as isize;
                let mr = cc.len() / n;
                // SAFETY: rows r0..r0+mr of A lie inside `a` (checked above); `a_ptr` is only read.
                let ap = unsafe { a_ptr.get().offset(r0 * a_rs) };
                unsafe {
                    gemm_block(
                        mr,
                        n,
                        k,
                        ap,
                        a_rs,
                        a_cs,
                        b.as_ptr(),
                        b_rs,
                        b_cs,
                        cc.as_mut_ptr(),
                        acc,
                    )
                };
            });
        Ok(())
    } else {
        // SAFETY: the assert above bounds every access; strides describe the dense storage.
        unsafe {
            gemm_block(
                m,
                n,
                k,
                a.as_ptr(),
                a_rs,
                a_cs,
                b.as_ptr(),
                b_rs,
                b_cs,
                c.as_mut_ptr(),
                acc,
            )
        };
        Ok(())
    }
}

/// Checks that `A[m×k]`, `B[k×n]` and `C[m×n]` fit in slices of the given lengths, with checked
/// products; returns `m·n`.
fn check_operands(
    op: &'static str,
    m: usize,
    n: usize,
    k: usize,
    a_len: usize,
    b_len: usize,
    c_len: usize,
) -> Result<usize> {
    let fits = |r: usize, c: usize, len: usize| r.checked_mul(c).filter(|&p| p <= len);
    match (fits(m, k, a_len), fits(k, n, b_len), fits(m, n, c_len)) {
        (Some(_), Some(_), Some(mn)) => Ok(mn),
        _ => Err(CoreError::Shape {
            op,
            expected: format!("A ≥ {m}×{k}, B ≥ {k}×{n}, C ≥ {m}×{n} elements"),
            got: format!("A {a_len}, B {b_len}, C {c_len} elements"),
        }),
    }
}

#[derive(Clone, Copy)]
struct SendPtr(*const f32);
// SAFETY: only used to read `A`, which outlives the parallel loop and is not written.
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}
impl SendPtr {
    fn get(self) -> *const f32 {
        self.0
    }
}

/// One single-threaded product into a dense row-major `C` block (row stride `n`).
///
/// # Safety
/// The pointers and strides must describe valid `m×k`, `k×n` and `m×n` matrices.
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_block(
    m: usize,
    n: usize,
    k: usize,
    a: *const f32,
    a_rs: isize,
    a_cs: isize,
    b: *const f32,
    b_rs: isize,
    b_cs: isize,
    c: *mut f32,
    acc: bool,
) {
    unsafe {
        if m.saturating_mul(n).saturating_mul(k) >= LARGE_GEMM_WORK {
            matrixmultiply::sgemm(
                m,
                k,
                n,
                1.0,
                a,
                a_rs,
                a_cs,
                b,
                b_rs,
                b_cs,
                if acc { 1.0 } else { 0.0 },
                c,
                n as isize,
                1,
            );
        } else {
            gemm::gemm(
                m,
                n,
                k,
                c,
                1,
                n as isize,
                acc,
                a,
                a_cs,
                a_rs,
                b,
                b_cs,
                b_rs,
                1.0f32,
                1.0f32,
                false,
                false,
                false,
                gemm::Parallelism::None,
            );
        }
    }
}

/// `y[m×n] = x[m×k] · w[k×n] (+ bias)` row by row on the calling thread: for batch 1 and
/// small batches this beats a blocked GEMM, whose packing costs more than the product.
///
/// # Errors
/// [`CoreError::Shape`] if a slice is shorter than its dimensions say (products checked).
#[allow(clippy::too_many_arguments)]
pub fn gemv_rows(
    m: usize,
    n: usize,
    k: usize,
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    y: &mut [f32],
) -> Result<()> {
    check_operands("gemv_rows", m, n, k, x.len(), w.len(), y.len())?;
    if bias.is_some_and(|b| b.len() < n) {
        return Err(CoreError::Shape {
            op: "gemv_rows",
            expected: format!("bias of {n}"),
            got: format!("{}", bias.map_or(0, <[f32]>::len)),
        });
    }
    gemv_rows_unchecked(m, n, k, x, w, bias, y);
    Ok(())
}

multiversion! {
    /// [`gemv_rows`] after its checks. Four rows of `w` are folded into each sweep over `y`,
    /// so `y` is loaded and stored a quarter as often.
    fn gemv_rows_unchecked(m: usize, n: usize, k: usize, x: &[f32], w: &[f32], bias: Option<&[f32]>, y: &mut [f32]) {
        let k4 = k / 4 * 4;
        for r in 0..m {
            let yr = &mut y[r * n..(r + 1) * n];
            match bias {
                Some(b) => yr.copy_from_slice(&b[..n]),
                None => yr.fill(0.0),
            }
            let xr = &x[r * k..(r + 1) * k];
            for i in (0..k4).step_by(4) {
                let (x0, x1, x2, x3) = (xr[i], xr[i + 1], xr[i + 2], xr[i + 3]);
                let w0 = &w[i * n..(i + 1) * n];
                let w1 = &w[(i + 1) * n..(i + 2) * n];
                let w2 = &w[(i + 2) * n..(i + 3) * n];
                let w3 = &w[(i + 3) * n..(i + 4) * n];
                for j in 0..n {
                    yr[j] += (x0 * w0[j] + x1 * w1[j]) + (x2 * w2[j] + x3 * w3[j]);
                }
            }
            for (i, &xi) in xr.iter().enumerate().skip(k4) {
                let wr = &w[i * n..(i + 1) * n];
                for (yj, &wj) in yr.iter_mut().zip(wr) {
                    *yj += xi * wj;
                }
            }
        }
    }
}

multiversion! {
    /// Adds `bias[n]` to every row of `y[m×n]`.
    pub fn add_bias(y: &mut [f32], bias: &[f32]) {
        let n = bias.len();
        if n == 0 {
            return;
        }
        for row in y.chunks_exact_mut(n) {
            for (v, &b) in row.iter_mut().zip(bias) {
                *v += b;
            }
        }
    }
}

multiversion! {
    /// `acc[n] += Σ_rows x[m×n]`, rows summed in order (bias gradients).
    pub fn col_sum_acc(acc: &mut [f32], x: &[f32]) {
        let n = acc.len();
        if n == 0 {
            return;
        }
        for row in x.chunks_exact(n) {
            for (a, &v) in acc.iter_mut().zip(row) {
                *a += v;
            }
        }
    }
}

multiversion! {
    /// `y += a · x`.
    pub fn axpy(a: f32, x: &[f32], y: &mut [f32]) {
        for (yi, &xi) in y.iter_mut().zip(x) {
            *yi += a * xi;
        }
    }
}

multiversion! {
    /// `y = a · x`.
    pub fn scale_into(a: f32, x: &[f32], y: &mut [f32]) {
        for (yi, &xi) in y.iter_mut().zip(x) {
            *yi = a * xi;
        }
    }
}

multiversion! {
    /// Dot product, accumulated in 8 lanes then summed in a fixed order.
    pub fn dot(x: &[f32], y: &[f32]) -> f32 {
        let mut lanes = [0.0f32; 8];
        let n8 = x.len().min(y.len()) / 8 * 8;
        for (xc, yc) in x[..n8].chunks_exact(8).zip(y[..n8].chunks_exact(8)) {
            for l in 0..8 {
                lanes[l] += xc[l] * yc[l];
            }
        }
        let mut s = ((lanes[0] + lanes[4]) + (lanes[1] + lanes[5])) + ((lanes[2] + lanes[6]) + (lanes[3] + lanes[7]));
        for i in n8..x.len().min(y.len()) {
            s += x[i] * y[i];
        }
        s
    }
}

const LOG2E: f32 = std::f32::consts::LOG2_E;
const LN2_HI: f32 = 0.693_145_75;
const LN2_LO: f32 = 1.428_606_8e-6;
/// 1.5·2^23: adding it rounds an f32 of magnitude below 2^22 to an integer.
const MAGIC: f32 = 12_582_912.0;
/// The bits of [`MAGIC`]: subtracted from the bits of `v + MAGIC` they give the rounded `v`.
const MAGIC_BITS: i32 = 0x4B40_0000;

/// `e^x` to about 2e-7 relative error, written so that a loop over it vectorises (no libm
/// call): range reduction by `ln 2`, a degree-6 polynomial, and the exponent set by bits.
#[inline(always)]
pub fn exp_fast(x: f32) -> f32 {
    let x = x.clamp(-87.0, 88.0);
    // Round to nearest with the 1.5·2^23 trick: no rounding intrinsic, so it vectorises.
    let shifted = x * LOG2E + MAGIC;
    let n = shifted - MAGIC;
    let r = x - n * LN2_HI - n * LN2_LO;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    // `n` as an integer from the bits of `shifted` (the same value as `n as i32` for every
    // clamped input), because a float-to-int cast saturates and checks for NaN lane by lane,
    // which kept the loops over this function scalar. Wrapping: a NaN input gives garbage
    // bits here, but `p` is NaN then, and so is the result.
    let ni = (shifted.to_bits() as i32).wrapping_sub(MAGIC_BITS);
    let bits = (ni.wrapping_add(127) as u32) << 23;
    p * f32::from_bits(bits)
}

const FRAC_1_SQRT_2: f32 = std::f32::consts::FRAC_1_SQRT_2;
/// 1/√(2π)
const INV_SQRT_2PI: f32 = 0.398_942_3;

/// Standard normal CDF Φ(x) and density φ(x), via Abramowitz & Stegun 7.1.26 for erf
/// (absolute error ≤ 1.5e-7), sharing one exponential.
#[inline(always)]
fn phi_and_pdf(x: f32) -> (f32, f32) {
    let z = x.abs() * FRAC_1_SQRT_2;
    let e = exp_fast(-z * z); // = exp(-x²/2)
    let t = 1.0 / (1.0 + 0.327_591_1 * z);
    let poly = t
        * (0.254_829_6
            + t * (-0.284_496_74 + t * (1.421_413_7 + t * (-1.453_152 + t * 1.061_405_4))));
    let erf_abs = 1.0 - poly * e;
    let erf = erf_abs.copysign(x);
    (0.5 * (1.0 + erf), e * INV_SQRT_2PI)
}

/// GELU(x) = x·Φ(x) for one value (exact-erf form, as in PyTorch's default `nn.GELU`).
#[inline(always)]
pub fn gelu_scalar(x: f32) -> f32 {
    x * phi_and_pdf(x).0
}

multiversion! {
    /// `a = GELU(h)` element-wise.
    pub fn gelu_forward(h: &[f32], a: &mut [f32]) {
        for (ai, &hi) in a.iter_mut().zip(h) {
            *ai = hi * phi_and_pdf(hi).0;
        }
    }
}

multiversion! {
    /// `a = GELU(h)` element-wise, and `h` replaced by `GELU'(h)` on the way, from the same
    /// exponential: for a training pass whose backward needs `h` only through `GELU'(h)`.
    /// Both are computed exactly as [`gelu_forward`] and [`gelu_backward_inplace`] compute
    /// them.
    pub fn gelu_forward_keep_grad(h: &mut [f32], a: &mut [f32]) {
        for (ai, hi) in a.iter_mut().zip(h.iter_mut()) {
            let x = *hi;
            let (cdf, pdf) = phi_and_pdf(x);
            *ai = x * cdf;
            *hi = cdf + x * pdf;
        }
    }
}

multiversion! {
    /// `y *= x` element-wise.
    pub fn mul_inplace(x: &[f32], y: &mut [f32]) {
        for (yi, &xi) in y.iter_mut().zip(x) {
            *yi *= xi;
        }
    }
}

multiversion! {
    /// `dh = da · GELU'(h)` element-wise, where `GELU'(x) = Φ(x) + x·φ(x)`. In place on `da`.
    pub fn gelu_backward_inplace(h: &[f32], da: &mut [f32]) {
        for (di, &hi) in da.iter_mut().zip(h) {
            let (cdf, pdf) = phi_and_pdf(hi);
            *di *= cdf + hi * pdf;
        }
    }
}

/// Hyper-parameters of one fused AdamW update, with the bias corrections already computed.
#[derive(Clone, Copy, Debug)]
pub struct AdamWStep {
    /// Learning rate.
    pub lr: f32,
    /// First-moment decay β₁.
    pub beta1: f32,
    /// Second-moment decay β₂.
    pub beta2: f32,
    /// Denominator epsilon.
    pub eps: f32,
    /// Decoupled weight decay λ (0 for parameters that are not decayed).
    pub weight_decay: f32,
    /// 1 / (1 − β₁ᵗ).
    pub inv_bc1: f32,
    /// 1 / √(1 − β₂ᵗ).
    pub inv_sqrt_bc2: f32,
}

multiversion! {
    /// One AdamW update (Loshchilov & Hutter 2019) over a parameter slice in a single pass:
    /// gradient scaling (clipping), moments, bias correction, decoupled weight decay and the
    /// step, reading each array once and clearing the gradient on the way out.
    pub fn adamw_update(p: &mut [f32], g: &mut [f32], m: &mut [f32], v: &mut [f32], s: AdamWStep, grad_scale: f32) {
        let (b1, b2) = (s.beta1, s.beta2);
        let (c1, c2) = (1.0 - b1, 1.0 - b2);
        let decay = 1.0 - s.lr * s.weight_decay;
        let n = p.len().min(g.len()).min(m.len()).min(v.len());
        for i in 0..n {
            let gi = g[i] * grad_scale;
            g[i] = 0.0;
            let mi = b1 * m[i] + c1 * gi;
            let vi = b2 * v[i] + c2 * gi * gi;
            m[i] = mi;
            v[i] = vi;
            let denom = vi.sqrt() * s.inv_sqrt_bc2 + s.eps;
            p[i] = p[i] * decay - s.lr * (mi * s.inv_bc1) / denom;
        }
    }
}

multiversion! {
    /// Σ x² accumulated in f64 per block of 8 lanes, in a fixed order (gradient norms).
    pub fn sum_sq(x: &[f32]) -> f64 {
        let mut lanes = [0.0f32; 8];
        let mut total = 0.0f64;
        // Flush lanes into f64 every 4096 elements so long tensors do not lose precision.
        for block in x.chunks(4096) {
            let n8 = block.len() / 8 * 8;
            for c in block[..n8].chunks_exact(8) {
                for l in 0..8 {
                    lanes[l] += c[l] * c[l];
                }
            }
            for &v in &block[n8..] {
                lanes[0] += v * v;
            }
            for lane in lanes.iter_mut() {
                total += f64::from(*lane);
                *lane = 0.0;
            }
        }
        total
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(m: usize, n: usize, k: usize, a: &[f32], b: &[f32]) -> Vec<f32> {
        let mut c = vec![0.0; m * n];
        for i in 0..m {
            for j in 0..n {
                let mut s = 0.0f64;
                for p in 0..k {
                    s += f64::from(a[i * k + p]) * f64::from(b[p * n + j]);
                }
                c[i * n + j] = s as f32;
            }
        }
        c
    }

    fn transpose(r: usize, c: usize, x: &[f32]) -> Vec<f32> {
        let mut t = vec![0.0; r * c];
        for i in 0..r {
            for j in 0..c {
                t[j * r + i] = x[i * c + j];
            }
        }
        t
    }

    #[test]
    fn matmul_matches_naive_in_every_transpose_mode() {
        let (m, n, k) = (37, 29, 53);
        let a: Vec<f32> = (0..m * k)
            .map(|i| ((i * 7919) % 97) as f32 / 97.0 - 0.5)
            .collect();
        let b: Vec<f32> = (0..k * n)
            .map(|i| ((i * 104_729) % 89) as f32 / 89.0 - 0.5)
            .collect();
        let want = naive(m, n, k, &a, &b);
        let at = transpose(m, k, &a);
        let bt = transpose(k, n, &b);
        for (aa, a_t) in [(&a, false), (&at, true)] {
            for (bb, b_t) in [(&b, false), (&bt, true)] {
                for par in [Par::Seq, Par::Rayon] {
                    let mut c = vec![1.0; m * n];
                    matmul(m, n, k, aa, a_t, bb, b_t, &mut c, true, par).unwrap();
                    for (got, w) in c.iter().zip(&want) {
                        assert!((got - (w + 1.0)).abs() < 1e-4, "acc a_t={a_t} b_t={b_t}");
                    }
                    matmul(m, n, k, aa, a_t, bb, b_t, &mut c, false, par).unwrap();
                    for (got, w) in c.iter().zip(&want) {
                        assert!((got - w).abs() < 1e-4, "overwrite a_t={a_t} b_t={b_t}");
                    }
                }
            }
        }
        let mut y = vec![0.0; m * n];
        gemv_rows(m, n, k, &a, &b, None, &mut y).unwrap();
        for (got, w) in y.iter().zip(&want) {
            assert!((got - w).abs() < 1e-4);
        }
    }

    /// Dimensions whose products overflow must not slip past the length guard (in release
    /// arithmetic `2^32 · 2^32` wraps to 0, which every slice is long enough for).
    #[test]
    fn overflowing_dimensions_are_shape_errors() {
        let big = 1usize << 32;
        let (a, b) = (vec![0.0f32; 4], vec![0.0f32; 4]);
        let mut c = vec![0.0f32; 4];
        for (m, n, k) in [
            (big, big, 1),
            (1, big, big),
            (big, 1, big),
            (usize::MAX, 2, 2),
        ] {
            for par in [Par::Seq, Par::Rayon] {
                let r = matmul(m, n, k, &a, false, &b, false, &mut c, false, par);
                assert!(
                    matches!(r, Err(CoreError::Shape { .. })),
                    "{m}×{n}×{k}: {r:?}"
                );
            }
            let r = gemv_rows(m, n, k, &a, &b, None, &mut c);
            assert!(
                matches!(r, Err(CoreError::Shape { .. })),
                "gemv {m}×{n}×{k}: {r:?}"
            );
        }
        // Short slices with small dimensions are refused the same way.
        let r = matmul(2, 2, 3, &a, false, &b, false, &mut c, false, Par::Seq);
        assert!(matches!(r, Err(CoreError::Shape { .. })));
        let r = gemv_rows(1, 4, 1, &a, &b, Some(&a[..2]), &mut c);
        assert!(matches!(r, Err(CoreError::Shape { .. })));
    }

    /// The exponent taken from the bits of the rounded sum is the cast it replaced, for every
    /// input: the function's results are bit-for-bit those of the cast form.
    #[test]
    fn exp_fast_matches_the_cast_form_bit_for_bit() {
        let cast_form = |x: f32| {
            let x = x.clamp(-87.0, 88.0);
            let n = (x * LOG2E + MAGIC) - MAGIC;
            let r = x - n * LN2_HI - n * LN2_LO;
            let p = 1.0
                + r * (1.0
                    + r * (0.5
                        + r * (1.0 / 6.0
                            + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
            p * f32::from_bits(((n as i32 + 127) as u32) << 23)
        };
        let mut xs: Vec<f32> = (-200_000..200_000).map(|i| i as f32 * 1e-3).collect();
        xs.extend([
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::MAX,
            f32::MIN,
            f32::MIN_POSITIVE,
            -0.0,
            87.0,
            -87.0,
            88.0,
        ]);
        for x in xs {
            assert_eq!(exp_fast(x).to_bits(), cast_form(x).to_bits(), "x = {x}");
        }
        assert!(exp_fast(f32::NAN).is_nan());
        assert!(exp_fast(-f32::NAN).is_nan());
    }

    /// The fused forward gives the same activations and, in place of `h`, the factor the
    /// backward pass would have computed from it, bit for bit.
    #[test]
    fn gelu_forward_keep_grad_matches_forward_then_backward() {
        let h: Vec<f32> = (-1000..1000).map(|i| i as f32 * 0.0123).collect();
        let mut a = vec![0.0; h.len()];
        gelu_forward(&h, &mut a);
        let mut da: Vec<f32> = (0..h.len()).map(|i| (i as f32 * 0.37).sin()).collect();
        let mut want_dh = da.clone();
        gelu_backward_inplace(&h, &mut want_dh);
        let (mut g, mut a2) = (h.clone(), vec![0.0; h.len()]);
        gelu_forward_keep_grad(&mut g, &mut a2);
        mul_inplace(&g, &mut da);
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&a2), bits(&a));
        assert_eq!(bits(&da), bits(&want_dh));
    }

    #[test]
    fn exp_and_gelu_match_libm() {
        let mut worst = 0.0f64;
        for i in -8000..8000 {
            let x = i as f32 * 0.01;
            let rel = (f64::from(exp_fast(x)) - f64::from(x).exp()).abs() / f64::from(x).exp();
            worst = worst.max(rel);
        }
        assert!(worst < 5e-7, "exp_fast worst relative error {worst}");
        let erf = |x: f64| {
            // erf by its Taylor series is exact enough on [-4, 4] in f64 for this check.
            let mut sum = 0.0;
            let mut term = x;
            for n in 0..200 {
                sum += term / (2 * n + 1) as f64;
                term *= -x * x / (n + 1) as f64;
            }
            sum * 2.0 / std::f64::consts::PI.sqrt()
        };
        for i in -400..400 {
            let x = i as f32 * 0.01;
            let want = 0.5 * f64::from(x) * (1.0 + erf(f64::from(x) / 2f64.sqrt()));
            assert!((f64::from(gelu_scalar(x)) - want).abs() < 1e-6, "gelu({x})");
        }
    }
}
