//! Shared by the gradient-check tests: a naive f64 reference of every forward pass of the
//! training core, and a central-difference checker that compares the crate's f32 analytic
//! gradients against finite differences of that reference.
//!
//! The reference is written as plain index loops that follow the documented maths line by
//! line; it shares no code with the crate (no kernels, no buffers, no GELU approximation).

// Not every test binary that includes this module uses every helper.
#![allow(dead_code)]
// The reference is deliberately written as explicit index loops mirroring the formulas.
#![allow(clippy::needless_range_loop)]

use std::collections::BTreeMap;

use autodidact_core::{BlockConfig, HeadConfig, Module, NetworkConfig, Tensor};
use rand::Rng;
use rand_chacha::ChaCha8Rng;

/// f64 copies of parameters, keyed by the crate's parameter names (`blocks.0.moe.router.w`).
pub type Store = BTreeMap<String, Vec<f64>>;

/// f32 gradients, keyed like [`Store`].
pub type Grads = BTreeMap<String, Vec<f32>>;

/// The f32 values of every parameter of `m`, widened to f64.
pub fn store_of<M: Module + ?Sized>(m: &M) -> Store {
    let mut s = Store::new();
    m.visit_params(&mut |p| {
        let old = s.insert(p.name.clone(), to_f64(p.value.data()));
        assert!(old.is_none(), "duplicate parameter name {}", p.name);
    });
    s
}

/// The accumulated gradient of every parameter of `m`.
pub fn grads_of<M: Module + ?Sized>(m: &M) -> Grads {
    let mut g = Grads::new();
    m.visit_params(&mut |p| {
        g.insert(p.name.clone(), p.grad.data().to_vec());
    });
    g
}

/// Widens f32 values to f64.
pub fn to_f64(x: &[f32]) -> Vec<f64> {
    x.iter().map(|&v| f64::from(v)).collect()
}

/// `n` values uniform in `[lo, hi)`.
pub fn uniform(rng: &mut ChaCha8Rng, n: usize, lo: f32, hi: f32) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(lo..hi)).collect()
}

/// A `[rows, cols]` tensor of values uniform in `[lo, hi)`.
pub fn rand_tensor(rng: &mut ChaCha8Rng, rows: usize, cols: usize, lo: f32, hi: f32) -> Tensor {
    Tensor::from_vec(uniform(rng, rows * cols, lo, hi), &[rows, cols]).unwrap()
}

/// Σ y ⊙ r.
pub fn dot(y: &[f64], r: &[f64]) -> f64 {
    assert_eq!(y.len(), r.len());
    let mut s = 0.0;
    for i in 0..y.len() {
        s += y[i] * r[i];
    }
    s
}

// ---------------------------------------------------------------------------------------------
// Scalar functions
// ---------------------------------------------------------------------------------------------

/// erf in f64 to about 1e-15: its Maclaurin series below 2 (terms stay below ~25 in size,
/// so cancellation costs about one digit), Laplace's continued fraction for erfc above.
pub fn erf(x: f64) -> f64 {
    let a = x.abs();
    let r = if a < 2.0 {
        // erf(a) = 2/√π · Σ_n (−1)ⁿ a^(2n+1) / (n! (2n+1))
        let mut sum = 0.0;
        let mut term = a; // (−1)ⁿ a^(2n+1) / n!
        let mut n = 0u32;
        loop {
            let c = term / f64::from(2 * n + 1);
            sum += c;
            if c.abs() <= 1e-18 {
                break;
            }
            n += 1;
            term *= -a * a / f64::from(n);
        }
        sum * 2.0 / std::f64::consts::PI.sqrt()
    } else {
        // erfc(a) = e^(−a²)/√π · 1/(a + (1/2)/(a + (2/2)/(a + (3/2)/(a + …)))), bottom-up.
        let mut cf = 0.0;
        for n in (1..=400).rev() {
            cf = (f64::from(n) / 2.0) / (a + cf);
        }
        1.0 - (-a * a).exp() / std::f64::consts::PI.sqrt() / (a + cf)
    };
    if x < 0.0 { -r } else { r }
}

/// GELU(x) = x·Φ(x) = x·(1 + erf(x/√2))/2, exact-erf form.
pub fn gelu(x: f64) -> f64 {
    0.5 * x * (1.0 + erf(x / std::f64::consts::SQRT_2))
}

/// max(x, 0).
pub fn relu(x: f64) -> f64 {
    if x > 0.0 { x } else { 0.0 }
}

/// log Σ exp(z), shifted by the maximum.
pub fn logsumexp(z: &[f64]) -> f64 {
    let mut mx = f64::NEG_INFINITY;
    for &v in z {
        if v > mx {
            mx = v;
        }
    }
    let mut s = 0.0;
    for &v in z {
        s += (v - mx).exp();
    }
    mx + s.ln()
}

/// Softmax of one row.
pub fn softmax(z: &[f64]) -> Vec<f64> {
    let l = logsumexp(z);
    z.iter().map(|&v| (v - l).exp()).collect()
}

/// Log-softmax of one row.
pub fn log_softmax(z: &[f64]) -> Vec<f64> {
    let l = logsumexp(z);
    z.iter().map(|&v| v - l).collect()
}

/// Row-wise softmax of a `[rows, c]` matrix.
pub fn softmax_rows(x: &[f64], c: usize) -> Vec<f64> {
    x.chunks(c).flat_map(softmax).collect()
}

/// Row-wise log-softmax of a `[rows, c]` matrix.
pub fn log_softmax_rows(x: &[f64], c: usize) -> Vec<f64> {
    x.chunks(c).flat_map(log_softmax).collect()
}

// ---------------------------------------------------------------------------------------------
// Losses (means over elements or rows, as documented in loss.rs)
// ---------------------------------------------------------------------------------------------

/// mean((p − t)²).
pub fn mse(pred: &[f64], target: &[f64]) -> f64 {
    let mut s = 0.0;
    for i in 0..pred.len() {
        s += (pred[i] - target[i]) * (pred[i] - target[i]);
    }
    s / pred.len() as f64
}

/// mean_i w_row(i) · huber_δ(p_i − t_i) over all elements of a `[rows, cols]` matrix.
pub fn huber(pred: &[f64], target: &[f64], delta: f64, w: Option<&[f64]>, cols: usize) -> f64 {
    let mut s = 0.0;
    for i in 0..pred.len() {
        let r = pred[i] - target[i];
        let l = if r.abs() <= delta {
            0.5 * r * r
        } else {
            delta * (r.abs() - 0.5 * delta)
        };
        let wi = match w {
            Some(w) => w[i / cols],
            None => 1.0,
        };
        s += wi * l;
    }
    s / pred.len() as f64
}

/// mean over rows of −log softmax(z)[label].
pub fn cross_entropy(logits: &[f64], labels: &[usize], c: usize) -> f64 {
    let mut s = 0.0;
    for (r, &label) in labels.iter().enumerate() {
        let row = &logits[r * c..(r + 1) * c];
        s += logsumexp(row) - row[label];
    }
    s / labels.len() as f64
}

// ---------------------------------------------------------------------------------------------
// Layers
// ---------------------------------------------------------------------------------------------

fn get<'a>(s: &'a Store, name: &str) -> &'a [f64] {
    s.get(name)
        .unwrap_or_else(|| panic!("reference: no parameter {name}"))
}

/// `y = x·W + b` with `W = s["{name}.w"]` stored `[in, out]` and `b = s["{name}.b"]`.
pub fn linear(s: &Store, name: &str, x: &[f64], rows: usize) -> Vec<f64> {
    let w = get(s, &format!("{name}.w"));
    let b = get(s, &format!("{name}.b"));
    let n_out = b.len();
    let n_in = x.len() / rows;
    assert_eq!(w.len(), n_in * n_out, "reference linear {name}: shape");
    let mut y = vec![0.0; rows * n_out];
    for r in 0..rows {
        for j in 0..n_out {
            let mut acc = b[j];
            for i in 0..n_in {
                acc += x[r * n_in + i] * w[i * n_out + j];
            }
            y[r * n_out + j] = acc;
        }
    }
    y
}

/// LayerNorm over rows: `γ ⊙ (x − μ)/√(σ² + 1e-5) + β`, σ² the biased variance.
pub fn layer_norm(s: &Store, name: &str, x: &[f64], rows: usize) -> Vec<f64> {
    let g = get(s, &format!("{name}.gamma"));
    let b = get(s, &format!("{name}.beta"));
    let d = g.len();
    let mut y = vec![0.0; rows * d];
    for r in 0..rows {
        let xr = &x[r * d..(r + 1) * d];
        let mut mu = 0.0;
        for i in 0..d {
            mu += xr[i];
        }
        mu /= d as f64;
        let mut var = 0.0;
        for i in 0..d {
            var += (xr[i] - mu) * (xr[i] - mu);
        }
        var /= d as f64;
        let sd = (var + 1e-5).sqrt();
        for i in 0..d {
            y[r * d + i] = g[i] * (xr[i] - mu) / sd + b[i];
        }
    }
    y
}

/// `fc2(GELU(fc1(x)))`.
pub fn mlp(s: &Store, fc1: &str, fc2: &str, x: &[f64], rows: usize) -> Vec<f64> {
    let h: Vec<f64> = linear(s, fc1, x, rows).into_iter().map(gelu).collect();
    linear(s, fc2, &h, rows)
}

// ---------------------------------------------------------------------------------------------
// Mixture of Experts
// ---------------------------------------------------------------------------------------------

/// The routing hyper-parameters the reference MoE needs.
#[derive(Clone, Debug)]
pub struct MoeSpec {
    /// E.
    pub n_experts: usize,
    /// k.
    pub top_k: usize,
    /// c (None: unlimited).
    pub capacity_factor: Option<f32>,
    /// Renormalise the gates over the chosen k (otherwise a gate is the raw probability).
    pub normalize_gates: bool,
    /// α.
    pub aux_coef: f64,
    /// β.
    pub z_coef: f64,
}

/// Everything the reference MoE computes.
#[derive(Clone, Debug)]
pub struct MoeOut {
    /// Output `[T, d]`.
    pub y: Vec<f64>,
    /// Load-balancing loss E·Σ f_e·P_e (unweighted).
    pub aux: f64,
    /// z-loss mean_t lse_t² (unweighted).
    pub z: f64,
    /// α·aux + β·z.
    pub weighted_aux: f64,
    /// Chosen experts `[T, k]`, best first.
    pub top: Vec<usize>,
    /// Whether each assignment `[T, k]` was admitted under capacity.
    pub admitted: Vec<bool>,
    /// Assignments routed to each expert before capacity.
    pub routed: Vec<usize>,
    /// Assignments each expert processed.
    pub kept: Vec<usize>,
    /// Assignments dropped by capacity.
    pub dropped: usize,
}

impl MoeOut {
    /// What makes the layer a smooth function locally: per token, the set of chosen experts
    /// and the set of admitted ones (bit masks). If a perturbation changes this, the point is
    /// at a routing discontinuity and a finite difference there is meaningless.
    pub fn signature(&self, k: usize) -> Vec<u64> {
        let t_n = self.top.len() / k;
        let mut sig = Vec::with_capacity(2 * t_n);
        for t in 0..t_n {
            let mut chosen = 0u64;
            let mut kept = 0u64;
            for j in 0..k {
                chosen |= 1 << self.top[t * k + j];
                if self.admitted[t * k + j] {
                    kept |= 1 << self.top[t * k + j];
                }
            }
            sig.push(chosen);
            sig.push(kept);
        }
        sig
    }
}

/// The per-expert capacity ⌈c·T·k/E⌉ (at least 1), or T without a capacity factor.
pub fn capacity(spec: &MoeSpec, tokens: usize) -> usize {
    match spec.capacity_factor {
        Some(c) => {
            let cap = (f64::from(c) * (tokens * spec.top_k) as f64 / spec.n_experts as f64).ceil();
            (cap as usize).max(1)
        }
        None => tokens,
    }
}

/// The MoE layer `name` (router `{name}.router`, experts `{name}.experts.{e}.fc1/fc2`) on
/// `x: [rows, d]`, exactly as documented in `core/src/moe.rs`.
pub fn moe(s: &Store, name: &str, spec: &MoeSpec, x: &[f64], rows: usize) -> MoeOut {
    let (e_n, k, t_n) = (spec.n_experts, spec.top_k, rows);
    let d = x.len() / rows;
    // Router: linear → softmax.
    let logits = linear(s, &format!("{name}.router"), x, rows);
    let mut probs = vec![0.0; t_n * e_n];
    let mut lse = vec![0.0; t_n];
    for t in 0..t_n {
        let z = &logits[t * e_n..(t + 1) * e_n];
        lse[t] = logsumexp(z);
        for e in 0..e_n {
            probs[t * e_n + e] = (z[e] - lse[t]).exp();
        }
    }
    // Top-k by probability, ties to the lower index; gates renormalised over the chosen k
    // (with `normalize_gates`; otherwise the gate is the raw probability).
    let mut top = vec![0usize; t_n * k];
    let mut gates = vec![0.0; t_n * k];
    let mut routed = vec![0usize; e_n];
    for t in 0..t_n {
        let p = &probs[t * e_n..(t + 1) * e_n];
        let mut taken = vec![false; e_n];
        for j in 0..k {
            let mut best = usize::MAX;
            for e in 0..e_n {
                if !taken[e] && (best == usize::MAX || p[e] > p[best]) {
                    best = e;
                }
            }
            taken[best] = true;
            top[t * k + j] = best;
            routed[best] += 1;
        }
        let mut sum = 0.0;
        for j in 0..k {
            sum += p[top[t * k + j]];
        }
        if !spec.normalize_gates {
            sum = 1.0;
        }
        for j in 0..k {
            gates[t * k + j] = p[top[t * k + j]] / sum;
        }
    }
    // Capacity, admitted rank-major: all first choices in token order, then second choices, …
    let cap = capacity(spec, t_n);
    let mut kept = vec![0usize; e_n];
    let mut admitted = vec![false; t_n * k];
    let mut dropped = 0;
    for j in 0..k {
        for t in 0..t_n {
            let e = top[t * k + j];
            if kept[e] < cap {
                kept[e] += 1;
                admitted[t * k + j] = true;
            } else {
                dropped += 1;
            }
        }
    }
    // Experts and the gate-weighted sum; dropped assignments contribute nothing.
    let mut y = vec![0.0; t_n * d];
    for t in 0..t_n {
        let xt = &x[t * d..(t + 1) * d];
        for j in 0..k {
            if !admitted[t * k + j] {
                continue;
            }
            let e = top[t * k + j];
            let out = mlp(
                s,
                &format!("{name}.experts.{e}.fc1"),
                &format!("{name}.experts.{e}.fc2"),
                xt,
                1,
            );
            for i in 0..d {
                y[t * d + i] += gates[t * k + j] * out[i];
            }
        }
    }
    // Load-balancing loss E·Σ_e f_e·P_e, f_e from routing before capacity (a constant).
    let mut aux = 0.0;
    for e in 0..e_n {
        let f_e = routed[e] as f64 / (t_n * k) as f64;
        let mut p_e = 0.0;
        for t in 0..t_n {
            p_e += probs[t * e_n + e];
        }
        p_e /= t_n as f64;
        aux += f_e * p_e;
    }
    aux *= e_n as f64;
    // z-loss mean_t lse_t².
    let mut z = 0.0;
    for t in 0..t_n {
        z += lse[t] * lse[t];
    }
    z /= t_n as f64;
    MoeOut {
        y,
        aux,
        z,
        weighted_aux: spec.aux_coef * aux + spec.z_coef * z,
        top,
        admitted,
        routed,
        kept,
        dropped,
    }
}

// ---------------------------------------------------------------------------------------------
// Network
// ---------------------------------------------------------------------------------------------

/// The reference routing spec of an MoE block config.
pub fn moe_spec_of(b: &BlockConfig) -> Option<MoeSpec> {
    match *b {
        BlockConfig::Moe {
            n_experts,
            top_k,
            capacity_factor,
            normalize_gates,
            aux_loss_coef,
            z_loss_coef,
            ..
        } => Some(MoeSpec {
            n_experts,
            top_k,
            capacity_factor,
            normalize_gates,
            aux_coef: f64::from(aux_loss_coef),
            z_coef: f64::from(z_loss_coef),
        }),
        BlockConfig::Dense { .. } => None,
    }
}

/// Output of the reference network.
pub struct NetOut {
    /// Head output `[rows, out_dim]`.
    pub out: Vec<f64>,
    /// Σ over MoE blocks of α·aux + β·z.
    pub weighted_aux: f64,
    /// Each MoE block's output, in block order.
    pub moes: Vec<MoeOut>,
}

/// The whole network with the observation normaliser disabled: input Linear → pre-norm
/// residual blocks `x + f(LayerNorm(x))` → final LayerNorm → head.
pub fn network(s: &Store, cfg: &NetworkConfig, obs: &[f64], rows: usize) -> NetOut {
    assert!(!cfg.normalize_obs, "the reference has no normaliser");
    let d = cfg.d_model;
    let mut x = linear(s, "input", obs, rows);
    let mut moes = Vec::new();
    let mut weighted_aux = 0.0;
    for (i, b) in cfg.blocks.iter().enumerate() {
        let normed = layer_norm(s, &format!("blocks.{i}.norm"), &x, rows);
        let f = match moe_spec_of(b) {
            Some(spec) => {
                let m = moe(s, &format!("blocks.{i}.moe"), &spec, &normed, rows);
                weighted_aux += m.weighted_aux;
                let y = m.y.clone();
                moes.push(m);
                y
            }
            None => mlp(
                s,
                &format!("blocks.{i}.fc1"),
                &format!("blocks.{i}.fc2"),
                &normed,
                rows,
            ),
        };
        for j in 0..rows * d {
            x[j] += f[j];
        }
    }
    let fin = layer_norm(s, "final_norm", &x, rows);
    let out = match cfg.head {
        HeadConfig::Linear { .. } => linear(s, "head.out", &fin, rows),
        HeadConfig::DuelingQ { n_actions } => {
            let v = linear(s, "head.value", &fin, rows);
            let a = linear(s, "head.advantage", &fin, rows);
            let mut q = vec![0.0; rows * n_actions];
            for r in 0..rows {
                let mut mean = 0.0;
                for j in 0..n_actions {
                    mean += a[r * n_actions + j];
                }
                mean /= n_actions as f64;
                for j in 0..n_actions {
                    q[r * n_actions + j] = v[r] + a[r * n_actions + j] - mean;
                }
            }
            q
        }
        HeadConfig::PolicyValue { n_actions } => {
            let l = linear(s, "head.logits", &fin, rows);
            let v = linear(s, "head.value", &fin, rows);
            let mut o = vec![0.0; rows * (n_actions + 1)];
            for r in 0..rows {
                for j in 0..n_actions {
                    o[r * (n_actions + 1) + j] = l[r * n_actions + j];
                }
                o[r * (n_actions + 1) + n_actions] = v[r];
            }
            o
        }
    };
    NetOut {
        out,
        weighted_aux,
        moes,
    }
}

// ---------------------------------------------------------------------------------------------
// Comparisons
// ---------------------------------------------------------------------------------------------

/// Asserts that the crate's f32 forward output matches the f64 reference:
/// `|got − want| ≤ 1e-4 · max(1, |want|)`. The f32 forward rounds each of a few dozen
/// multiply-adds per output at 6e-8 and approximates erf to 1.5e-7, so its error is ~1e-6 on
/// values of order one; 1e-4 leaves two orders of margin while still catching any real
/// formula difference.
pub fn assert_forward_close(what: &str, got: &[f32], want: &[f64]) {
    assert_eq!(got.len(), want.len(), "{what}: forward length");
    let mut worst = 0.0f64;
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let err = (f64::from(g) - w).abs();
        let tol = 1e-4 * w.abs().max(1.0);
        assert!(
            err <= tol,
            "{what}: forward [{i}] crate {g} vs reference {w} (err {err:.3e} > tol {tol:.3e})"
        );
        worst = worst.max(err / tol);
    }
    eprintln!("{what}: forward matches the f64 reference (worst err/tol {worst:.3})");
}

// ---------------------------------------------------------------------------------------------
// The finite-difference checker
// ---------------------------------------------------------------------------------------------

/// Central-difference step in f64. The reference objective is smooth at the checked points
/// and of order 1–10, so truncation error is O(eps²) ≈ 1e-12 and round-off ≈ 1e-16·|L|/eps
/// ≈ 1e-9: the numeric gradient is exact to far below the f32 analytic gradient's own error.
pub const EPS: f64 = 1e-6;

/// Relative part of the tolerance on each gradient coordinate.
pub const RTOL: f64 = 1e-3;
/// Absolute part, as a fraction of the largest |numeric gradient| checked in the same tensor.
pub const ATOL_TENSOR: f64 = 1e-4;
/// Absolute floor, as a fraction of the largest |numeric gradient| of the whole case.
pub const ATOL_CASE: f64 = 1e-5;

/// One checked coordinate.
#[derive(Clone, Debug)]
pub struct Point {
    /// Parameter name, or `input`.
    pub tensor: String,
    /// Flat index in the tensor.
    pub index: usize,
    /// The crate's f32 gradient.
    pub analytic: f64,
    /// The f64 central difference.
    pub numeric: f64,
}

/// Outcome of a gradient check.
#[derive(Clone, Debug)]
pub struct CheckReport {
    /// Case name.
    pub name: String,
    /// Points compared.
    pub points: Vec<Point>,
    /// Points skipped because ±eps changed the routing signature.
    pub skipped: usize,
}

/// Objective: (value, routing signature). The signature is empty for smooth functions.
pub type Objective<'a> = dyn Fn(&Store, &[f64]) -> (f64, Vec<u64>) + 'a;

/// What to check: the f64 parameter copies and input, and the crate's analytic gradients.
pub struct CheckSpec<'a> {
    /// Case name, for messages.
    pub name: &'a str,
    /// f64 copies of the parameters (perturbed in place and restored).
    pub store: Store,
    /// f64 copy of the input (perturbed in place and restored); may be empty.
    pub input: Vec<f64>,
    /// The crate's gradients of the parameters, keyed like `store` (every key is checked).
    pub grads: Grads,
    /// The crate's gradient of the input, if it computes one.
    pub input_grad: Option<Vec<f32>>,
    /// Coordinates sampled per tensor (all of a smaller tensor).
    pub per_tensor: usize,
}

/// Runs the central-difference check of `spec` with the objective `f`. Coordinates are
/// sampled with `rng`. Panics on the first failed coordinate list (after checking them all).
pub fn gradcheck(mut spec: CheckSpec<'_>, f: &Objective<'_>, rng: &mut ChaCha8Rng) -> CheckReport {
    let (_, base_sig) = f(&spec.store, &spec.input);
    let mut points = Vec::new();
    let mut skipped = 0;

    let names: Vec<String> = spec.grads.keys().cloned().collect();
    let store_names: Vec<String> = spec.store.keys().cloned().collect();
    assert_eq!(
        names, store_names,
        "{}: gradients and parameters differ",
        spec.name
    );

    let pick = |rng: &mut ChaCha8Rng, n: usize| -> Vec<usize> {
        if n <= spec.per_tensor {
            (0..n).collect()
        } else {
            let mut v = rand::seq::index::sample(rng, n, spec.per_tensor).into_vec();
            v.sort_unstable();
            v
        }
    };

    for name in &names {
        let n = spec.store[name].len();
        assert_eq!(
            n,
            spec.grads[name].len(),
            "{}: {name} grad length",
            spec.name
        );
        for i in pick(rng, n) {
            let orig = spec.store[name][i];
            spec.store.get_mut(name).unwrap()[i] = orig + EPS;
            let (fp, sp) = f(&spec.store, &spec.input);
            spec.store.get_mut(name).unwrap()[i] = orig - EPS;
            let (fm, sm) = f(&spec.store, &spec.input);
            spec.store.get_mut(name).unwrap()[i] = orig;
            if sp != base_sig || sm != base_sig {
                skipped += 1;
                continue;
            }
            points.push(Point {
                tensor: name.clone(),
                index: i,
                analytic: f64::from(spec.grads[name][i]),
                numeric: (fp - fm) / (2.0 * EPS),
            });
        }
    }
    if let Some(ig) = &spec.input_grad {
        assert_eq!(
            ig.len(),
            spec.input.len(),
            "{}: input grad length",
            spec.name
        );
        // Inputs are small in these tests: check every coordinate.
        for i in 0..spec.input.len() {
            let orig = spec.input[i];
            spec.input[i] = orig + EPS;
            let (fp, sp) = f(&spec.store, &spec.input);
            spec.input[i] = orig - EPS;
            let (fm, sm) = f(&spec.store, &spec.input);
            spec.input[i] = orig;
            if sp != base_sig || sm != base_sig {
                skipped += 1;
                continue;
            }
            points.push(Point {
                tensor: "input".into(),
                index: i,
                analytic: f64::from(ig[i]),
                numeric: (fp - fm) / (2.0 * EPS),
            });
        }
    }
    CheckReport {
        name: spec.name.to_string(),
        points,
        skipped,
    }
}

impl CheckReport {
    /// Total points attempted (compared + skipped).
    pub fn attempted(&self) -> usize {
        self.points.len() + self.skipped
    }

    /// Asserts every compared coordinate is within tolerance, that some gradient is non-zero
    /// (the check is not vacuous), and that at most 10 % of the points were skipped.
    ///
    /// Tolerance: `|a − n| ≤ RTOL·|n| + ATOL_TENSOR·S_tensor + ATOL_CASE·S_case`, where
    /// `S_tensor` / `S_case` are the largest |numeric| gradient among the checked points of
    /// the same tensor / of the whole case (computed from the f64 reference only, so a wrong
    /// analytic gradient cannot widen its own tolerance).
    ///
    /// Why these numbers: the analytic gradient is computed in f32 (unit round-off 6e-8) by
    /// sums of at most a few hundred products whose terms are bounded by the tensor's
    /// gradient scale, with the crate's erf / exp approximations adding ~2e-7 relative; so a
    /// correct backward is off by ≲1e-5·S_tensor, and by much less relative to large entries.
    /// The numeric gradient is exact to ~1e-9 (see [`EPS`]). Coordinates whose true gradient
    /// cancels to ~0 keep only the f32 noise of the terms that cancelled, hence the absolute
    /// parts. Any real error (a missing term, wrong sign or factor) is O(|n|) and fails.
    pub fn assert_ok(&self) {
        let mut scale_t: BTreeMap<&str, f64> = BTreeMap::new();
        let mut scale_c = 0.0f64;
        for p in &self.points {
            let e = scale_t.entry(&p.tensor).or_insert(0.0);
            *e = e.max(p.numeric.abs());
            scale_c = scale_c.max(p.numeric.abs());
        }
        let mut failures = Vec::new();
        let mut worst = 0.0f64;
        let mut worst_rel = 0.0f64;
        for p in &self.points {
            let err = (p.analytic - p.numeric).abs();
            let tol = RTOL * p.numeric.abs()
                + ATOL_TENSOR * scale_t[p.tensor.as_str()]
                + ATOL_CASE * scale_c;
            let ratio = if tol > 0.0 {
                err / tol
            } else if err == 0.0 {
                0.0
            } else {
                f64::INFINITY
            };
            worst = worst.max(ratio);
            if p.numeric.abs() > 1e-3 * scale_c {
                worst_rel = worst_rel.max(err / p.numeric.abs());
            }
            let within = err <= tol; // false for NaN as well
            if !within {
                failures.push(format!(
                    "  {}[{}]: analytic {:.9e} numeric {:.9e} err {:.3e} tol {:.3e}",
                    p.tensor, p.index, p.analytic, p.numeric, err, tol
                ));
            }
        }
        eprintln!(
            "{}: {} points compared, {} skipped (routing flips), {} tensors, \
             gradient scale {:.3e}, worst err/tol {:.4}, \
             worst relative err (|n| > 1e-3·scale) {:.2e}",
            self.name,
            self.points.len(),
            self.skipped,
            scale_t.len(),
            scale_c,
            worst,
            worst_rel
        );
        assert!(
            failures.is_empty(),
            "{}: {} of {} gradient coordinates out of tolerance:\n{}",
            self.name,
            failures.len(),
            self.points.len(),
            failures
                .iter()
                .take(25)
                .cloned()
                .collect::<Vec<_>>()
                .join("\n")
        );
        assert!(
            scale_c > 0.0,
            "{}: every gradient is zero; the check is vacuous",
            self.name
        );
        assert!(
            self.skipped * 10 < self.attempted().max(1),
            "{}: {} of {} points skipped for routing flips (≥ 10 %)",
            self.name,
            self.skipped,
            self.attempted()
        );
    }
}
