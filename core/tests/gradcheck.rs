//! Finite-difference gradient checks of the training core.
//!
//! Every backward pass of the crate (computed in f32) is compared against central differences
//! of a naive f64 reference of the corresponding forward pass (`common/mod.rs`), on random
//! inputs: Linear, LayerNorm, ReLU, GELU, softmax, log-softmax, the three losses, the MoE layer
//! for k = 1, 2 and E with and without capacity overflow, with renormalised and with raw
//! probability gates, both auxiliary losses on their own, and whole two-block networks (an MoE
//! block with k = 2 and a dense block) with each head. The crate's f32 forward outputs are
//! checked against the same reference. Tolerances and their justification are in
//! `common::CheckReport::assert_ok` and `common::assert_forward_close`.
//!
//! For the MoE, a coordinate is skipped (and counted) only when its ±eps perturbation changes
//! the reference's top-k choice or capacity admission, where the function is discontinuous.

mod common;

use autodidact_core::layers::{
    LayerNorm, Linear, gelu_backward, gelu_forward, log_softmax_backward, log_softmax_rows,
    relu_backward, relu_forward, softmax_backward, softmax_rows,
};
use autodidact_core::{
    BlockConfig, HeadConfig, Module, MoeConfig, MoeLayer, MoeStats, Network, NetworkConfig, Tensor,
    loss,
};
use common::{
    CheckReport, CheckSpec, Grads, MoeSpec, Store, assert_forward_close, dot, gradcheck, grads_of,
    rand_tensor, store_of, to_f64, uniform,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Coordinates sampled per parameter tensor.
const PER_TENSOR: usize = 32;

fn rng(seed: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(seed)
}

/// Checks a function of its input only (no parameters).
fn check_input_only(
    name: &str,
    x: &Tensor,
    dx: &Tensor,
    f: &common::Objective<'_>,
    rng: &mut ChaCha8Rng,
) -> CheckReport {
    gradcheck(
        CheckSpec {
            name,
            store: Store::new(),
            input: to_f64(x.data()),
            grads: Grads::new(),
            input_grad: Some(dx.data().to_vec()),
            per_tensor: PER_TENSOR,
        },
        f,
        rng,
    )
}

#[test]
fn reference_erf_is_accurate() {
    // Values from Abramowitz & Stegun table 7.1 / high-precision tables.
    let known = [
        (0.0, 0.0),
        (0.1, 0.112_462_916_018_284_9),
        (0.5, 0.520_499_877_813_046_5),
        (1.0, 0.842_700_792_949_714_9),
        (1.5, 0.966_105_146_475_310_7),
        (2.0, 0.995_322_265_018_952_7),
        (2.5, 0.999_593_047_982_555),
        (3.0, 0.999_977_909_503_001_4),
        (4.0, 0.999_999_984_582_742_1),
    ];
    for (x, want) in known {
        assert!((common::erf(x) - want).abs() < 1e-15, "erf({x})");
        assert!((common::erf(-x) + want).abs() < 1e-15, "erf(-{x})");
    }
    // The series / continued-fraction switch at 2 is seamless: across it, erf rises by its
    // derivative 2/√π·e^(−4) times the step, to round-off.
    let h = 1e-9;
    let slope = 2.0 / std::f64::consts::PI.sqrt() * (-4.0f64).exp();
    let jump = common::erf(2.0 + h) - common::erf(2.0 - h) - 2.0 * h * slope;
    assert!(jump.abs() < 1e-15, "erf jumps by {jump:e} at 2");
    // GELU is x·Φ(x): Φ(1) = 0.841344746068543.
    assert!((common::gelu(1.0) - 0.841_344_746_068_543).abs() < 1e-14);
}

#[test]
fn linear_gradients() {
    let mut r = rng(1);
    // 3 rows take the GEMV path, 7 rows the GEMM path.
    for rows in [3, 7] {
        let mut lin = Linear::new("lin", 5, 4, &mut r).unwrap();
        let x = rand_tensor(&mut r, rows, 5, -2.0, 2.0);
        let dy = rand_tensor(&mut r, rows, 4, -1.0, 1.0);
        let mut y = Tensor::default();
        lin.forward(&x, &mut y).unwrap();
        let store = store_of(&lin);
        let xr = to_f64(x.data());
        assert_forward_close(
            &format!("linear rows={rows}"),
            y.data(),
            &common::linear(&store, "lin", &xr, rows),
        );
        lin.zero_grad();
        let mut dx = Tensor::default();
        lin.backward(&x, &dy, Some(&mut dx)).unwrap();
        let rr = to_f64(dy.data());
        let f = |s: &Store, x: &[f64]| (dot(&common::linear(s, "lin", x, rows), &rr), vec![]);
        gradcheck(
            CheckSpec {
                name: &format!("linear rows={rows}"),
                store,
                input: xr,
                grads: grads_of(&lin),
                input_grad: Some(dx.data().to_vec()),
                per_tensor: PER_TENSOR,
            },
            &f,
            &mut r,
        )
        .assert_ok();
    }
}

#[test]
fn layer_norm_gradients() {
    let mut r = rng(2);
    let (rows, d) = (5, 7);
    let mut ln = LayerNorm::new("ln", d);
    ln.gamma.value = Tensor::from_vec(uniform(&mut r, d, 0.5, 1.5), &[d]).unwrap();
    ln.beta.value = Tensor::from_vec(uniform(&mut r, d, -0.5, 0.5), &[d]).unwrap();
    // Rows with different offsets and spreads, so the mean and variance terms both matter.
    let mut x = rand_tensor(&mut r, rows, d, -1.0, 1.0);
    for row in 0..rows {
        let (off, sc) = (r.random_range(-3.0f32..3.0), r.random_range(0.3f32..3.0));
        for v in x.row_mut(row) {
            *v = off + sc * *v;
        }
    }
    let dy = rand_tensor(&mut r, rows, d, -1.0, 1.0);
    let mut y = Tensor::default();
    ln.forward(&x, &mut y).unwrap();
    let store = store_of(&ln);
    let xr = to_f64(x.data());
    assert_forward_close(
        "layer_norm",
        y.data(),
        &common::layer_norm(&store, "ln", &xr, rows),
    );
    ln.zero_grad();
    let mut dx = Tensor::default();
    ln.backward(&x, &dy, &mut dx).unwrap();
    let rr = to_f64(dy.data());
    let f = |s: &Store, x: &[f64]| (dot(&common::layer_norm(s, "ln", x, rows), &rr), vec![]);
    gradcheck(
        CheckSpec {
            name: "layer_norm",
            store,
            input: xr,
            grads: grads_of(&ln),
            input_grad: Some(dx.data().to_vec()),
            per_tensor: PER_TENSOR,
        },
        &f,
        &mut r,
    )
    .assert_ok();
}

#[test]
fn activation_gradients() {
    let mut r = rng(3);
    let (rows, c) = (4, 9);
    // ReLU: keep inputs at least 0.05 away from the kink at 0 (eps is 1e-6).
    let mut x = rand_tensor(&mut r, rows, c, -2.0, 2.0);
    for v in x.data_mut() {
        if v.abs() < 0.05 {
            *v += 0.1f32.copysign(*v);
        }
    }
    let dy = rand_tensor(&mut r, rows, c, -1.0, 1.0);
    let rr = to_f64(dy.data());
    let (mut y, mut dx) = (Tensor::default(), Tensor::default());
    relu_forward(&x, &mut y);
    let want: Vec<f64> = to_f64(x.data()).into_iter().map(common::relu).collect();
    assert_forward_close("relu", y.data(), &want);
    relu_backward(&x, &dy, &mut dx);
    let f = |_: &Store, x: &[f64]| {
        let y: Vec<f64> = x.iter().map(|&v| common::relu(v)).collect();
        (dot(&y, &rr), vec![])
    };
    check_input_only("relu", &x, &dx, &f, &mut r).assert_ok();

    // GELU over [-5, 5], covering both tails and the curved middle.
    let x = rand_tensor(&mut r, rows, c, -5.0, 5.0);
    gelu_forward(&x, &mut y);
    let want: Vec<f64> = to_f64(x.data()).into_iter().map(common::gelu).collect();
    assert_forward_close("gelu", y.data(), &want);
    gelu_backward(&x, &dy, &mut dx);
    let f = |_: &Store, x: &[f64]| {
        let y: Vec<f64> = x.iter().map(|&v| common::gelu(v)).collect();
        (dot(&y, &rr), vec![])
    };
    check_input_only("gelu", &x, &dx, &f, &mut r).assert_ok();
}

#[test]
fn softmax_gradients() {
    let mut r = rng(4);
    let (rows, c) = (5, 6);
    let mut x = rand_tensor(&mut r, rows, c, -3.0, 3.0);
    // One row of large logits exercises the max shift.
    for v in x.row_mut(2) {
        *v += 40.0;
    }
    let dy = rand_tensor(&mut r, rows, c, -1.0, 1.0);
    let rr = to_f64(dy.data());
    let (mut y, mut dx) = (Tensor::default(), Tensor::default());

    softmax_rows(&x, &mut y);
    assert_forward_close(
        "softmax",
        y.data(),
        &common::softmax_rows(&to_f64(x.data()), c),
    );
    softmax_backward(&y, &dy, &mut dx);
    let f = |_: &Store, x: &[f64]| (dot(&common::softmax_rows(x, c), &rr), vec![]);
    check_input_only("softmax", &x, &dx, &f, &mut r).assert_ok();

    log_softmax_rows(&x, &mut y);
    assert_forward_close(
        "log_softmax",
        y.data(),
        &common::log_softmax_rows(&to_f64(x.data()), c),
    );
    log_softmax_backward(&y, &dy, &mut dx);
    let f = |_: &Store, x: &[f64]| (dot(&common::log_softmax_rows(x, c), &rr), vec![]);
    check_input_only("log_softmax", &x, &dx, &f, &mut r).assert_ok();
}

#[test]
fn loss_gradients() {
    let mut r = rng(5);
    let (rows, c) = (6, 3);
    let mut grad = Tensor::default();

    // MSE.
    let pred = rand_tensor(&mut r, rows, c, -2.0, 2.0);
    let target = rand_tensor(&mut r, rows, c, -2.0, 2.0);
    let tr = to_f64(target.data());
    let v = loss::mse(&pred, &target, &mut grad).unwrap();
    assert_forward_close("mse", &[v], &[common::mse(&to_f64(pred.data()), &tr)]);
    let f = |_: &Store, p: &[f64]| (common::mse(p, &tr), vec![]);
    check_input_only("mse", &pred, &grad, &f, &mut r).assert_ok();

    // Huber with δ = 1, residuals on both sides of δ but at least 0.05 away from the kink.
    let delta = 1.0f32;
    let mut pred = rand_tensor(&mut r, rows, c, -3.0, 3.0);
    for (p, &t) in pred.data_mut().iter_mut().zip(target.data()) {
        let res = *p - t;
        if (res.abs() - delta).abs() < 0.05 {
            *p += 0.2f32.copysign(res);
        }
    }
    let weights = uniform(&mut r, rows, 0.2, 2.0);
    let wr = to_f64(&weights);
    for (label, w) in [("huber", None), ("huber weighted", Some(&weights[..]))] {
        let v = loss::huber(&pred, &target, delta, w, &mut grad).unwrap();
        let wref = w.map(|_| &wr[..]);
        let want = common::huber(&to_f64(pred.data()), &tr, f64::from(delta), wref, c);
        assert_forward_close(label, &[v], &[want]);
        let f = |_: &Store, p: &[f64]| (common::huber(p, &tr, f64::from(delta), wref, c), vec![]);
        check_input_only(label, &pred, &grad, &f, &mut r).assert_ok();
    }

    // Cross-entropy.
    let classes = 5;
    let logits = rand_tensor(&mut r, rows, classes, -3.0, 3.0);
    let labels: Vec<usize> = (0..rows).map(|_| r.random_range(0..classes)).collect();
    let v = loss::cross_entropy(&logits, &labels, &mut grad).unwrap();
    let want = common::cross_entropy(&to_f64(logits.data()), &labels, classes);
    assert_forward_close("cross_entropy", &[v], &[want]);
    let f = |_: &Store, z: &[f64]| (common::cross_entropy(z, &labels, classes), vec![]);
    check_input_only("cross_entropy", &logits, &grad, &f, &mut r).assert_ok();
}

// ---------------------------------------------------------------------------------------------
// Mixture of Experts
// ---------------------------------------------------------------------------------------------

const D: usize = 8;
const H: usize = 12;
const E: usize = 4;

struct MoeCase {
    name: &'static str,
    tokens: usize,
    top_k: usize,
    capacity: Option<f32>,
    normalize_gates: bool,
    aux_coef: f32,
    z_coef: f32,
    /// Include Σ y⊙R in the objective (false: the objective is the weighted aux losses only).
    with_output: bool,
    seed: u64,
}

/// Builds an MoE layer, checks its forward and routing against the reference, then its
/// gradients for inputs and parameters (router always included: it is a checked tensor).
fn run_moe(c: &MoeCase) -> (CheckReport, MoeStats) {
    let mut r = rng(c.seed);
    let t_n = c.tokens;
    let mut cfg = MoeConfig::new(D, H, E, c.top_k);
    cfg.capacity_factor = c.capacity;
    cfg.normalize_gates = c.normalize_gates;
    cfg.aux_loss_coef = c.aux_coef;
    cfg.z_loss_coef = c.z_coef;
    let mut layer = MoeLayer::new("moe", cfg, &mut r).unwrap();
    let x = rand_tensor(&mut r, t_n, D, -1.5, 1.5);
    let dy = if c.with_output {
        rand_tensor(&mut r, t_n, D, -1.0, 1.0)
    } else {
        Tensor::zeros(&[t_n, D])
    };
    let mut y = Tensor::default();
    layer.forward(&x, &mut y, false).unwrap();

    let store = store_of(&layer);
    let spec = MoeSpec {
        n_experts: E,
        top_k: c.top_k,
        capacity_factor: c.capacity,
        normalize_gates: c.normalize_gates,
        aux_coef: f64::from(c.aux_coef),
        z_coef: f64::from(c.z_coef),
    };
    let xr = to_f64(x.data());
    let want = common::moe(&store, "moe", &spec, &xr, t_n);
    assert_forward_close(c.name, y.data(), &want.y);
    let got_top: Vec<usize> = layer
        .last_assignments()
        .iter()
        .map(|&e| e as usize)
        .collect();
    assert_eq!(got_top, want.top, "{}: top-k choice", c.name);
    let st = layer.stats().clone();
    assert_eq!(st.routed, want.routed, "{}: routed", c.name);
    assert_eq!(st.kept, want.kept, "{}: kept", c.name);
    assert_eq!(st.dropped, want.dropped, "{}: dropped", c.name);
    assert_forward_close(
        &format!("{} aux/z losses", c.name),
        &[st.aux_loss, st.z_loss, layer.weighted_aux_loss()],
        &[want.aux, want.z, want.weighted_aux],
    );

    layer.zero_grad();
    let mut dx = Tensor::default();
    layer.backward(&x, &dy, &mut dx).unwrap();
    let rr = to_f64(dy.data());
    let (k, with_output) = (c.top_k, c.with_output);
    let f = |s: &Store, x: &[f64]| {
        let m = common::moe(s, "moe", &spec, x, t_n);
        let task = if with_output { dot(&m.y, &rr) } else { 0.0 };
        (task + m.weighted_aux, m.signature(k))
    };
    let report = gradcheck(
        CheckSpec {
            name: c.name,
            store,
            input: xr,
            grads: grads_of(&layer),
            input_grad: Some(dx.data().to_vec()),
            per_tensor: PER_TENSOR,
        },
        &f,
        &mut r,
    );
    assert!(
        report.points.iter().any(|p| p.tensor == "moe.router.w")
            && report.points.iter().any(|p| p.tensor == "moe.router.b"),
        "{}: router weights must be checked",
        c.name
    );
    eprintln!(
        "{}: routed {:?}, kept {:?}, dropped {}",
        c.name, st.routed, st.kept, st.dropped
    );
    (report, st)
}

fn moe_case(name: &'static str, top_k: usize, capacity: Option<f32>, seed: u64) -> MoeCase {
    MoeCase {
        name,
        tokens: 12,
        top_k,
        capacity,
        normalize_gates: true,
        aux_coef: 0.1,
        z_coef: 0.05,
        with_output: true,
        seed,
    }
}

#[test]
fn moe_gradients_top1() {
    run_moe(&moe_case("moe k=1", 1, None, 10)).0.assert_ok();
}

#[test]
fn moe_gradients_top2() {
    run_moe(&moe_case("moe k=2", 2, None, 11)).0.assert_ok();
}

#[test]
fn moe_gradients_top_e() {
    run_moe(&moe_case("moe k=E", E, None, 12)).0.assert_ok();
}

#[test]
fn moe_gradients_small_batch() {
    // Three tokens: the router and every expert take the GEMV path.
    let mut c = moe_case("moe k=2 T=3", 2, None, 13);
    c.tokens = 3;
    run_moe(&c).0.assert_ok();
}

#[test]
fn moe_gradients_with_capacity_overflow() {
    for (name, k, seed) in [
        ("moe k=1 c=0.5", 1, 20),
        ("moe k=2 c=0.5", 2, 21),
        ("moe k=E c=0.5", E, 22),
    ] {
        let (report, st) = run_moe(&moe_case(name, k, Some(0.5), seed));
        assert!(st.dropped > 0, "{name}: no assignment overflowed capacity");
        report.assert_ok();
    }
}

#[test]
fn moe_gradients_raw_probability_gates() {
    // normalize_gates = false: each gate is the router probability itself (Switch style), so
    // with k = 1 the task loss reaches the router.
    for (name, k, cap, seed) in [
        ("moe raw gates k=1", 1, None, 23),
        ("moe raw gates k=2", 2, None, 24),
        ("moe raw gates k=E", E, None, 25),
        ("moe raw gates k=2 c=0.5", 2, Some(0.5), 26),
    ] {
        let mut c = moe_case(name, k, cap, seed);
        c.normalize_gates = false;
        let (report, st) = run_moe(&c);
        if cap.is_some() {
            assert!(st.dropped > 0, "{name}: no assignment overflowed capacity");
        }
        report.assert_ok();
    }
}

#[test]
fn moe_load_balancing_loss_alone() {
    // Objective = α·aux only (R = 0). For k = E every expert is routed every token, so aux ≡ 1
    // and has no gradient; k = 1 and 2 are the meaningful cases.
    for (name, k, cap, seed) in [
        ("aux only k=1", 1, None, 30),
        ("aux only k=2", 2, None, 31),
        ("aux only k=2 c=0.5", 2, Some(0.5), 32),
    ] {
        let c = MoeCase {
            name,
            tokens: 12,
            top_k: k,
            capacity: cap,
            normalize_gates: true,
            aux_coef: 1.0,
            z_coef: 0.0,
            with_output: false,
            seed,
        };
        run_moe(&c).0.assert_ok();
    }
}

#[test]
fn moe_z_loss_alone() {
    // Objective = β·z only (R = 0).
    for (name, k, seed) in [
        ("z only k=1", 1, 40),
        ("z only k=2", 2, 41),
        ("z only k=E", E, 42),
    ] {
        let c = MoeCase {
            name,
            tokens: 12,
            top_k: k,
            capacity: None,
            normalize_gates: true,
            aux_coef: 0.0,
            z_coef: 1.0,
            with_output: false,
            seed,
        };
        run_moe(&c).0.assert_ok();
    }
}

#[test]
fn routing_flips_are_detected_and_skipped() {
    // The harness itself: put token 0's top two router logits 3e-7 apart, so a 1e-6 nudge of
    // either router bias flips its top-1 choice. Those coordinates must be skipped, not
    // compared. (The crate is not involved beyond supplying parameter values.)
    let mut r = rng(50);
    let layer = MoeLayer::new("moe", MoeConfig::new(D, H, E, 1), &mut r).unwrap();
    let mut store = store_of(&layer);
    let t_n = 6;
    let x = to_f64(&uniform(&mut r, t_n * D, -1.5, 1.5));
    let logits = common::linear(&store, "moe.router", &x, t_n);
    let mut order: Vec<usize> = (0..E).collect();
    order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
    let (first, second) = (order[0], order[1]);
    store.get_mut("moe.router.b").unwrap()[second] += logits[first] - logits[second] - 3e-7;
    let spec = MoeSpec {
        n_experts: E,
        top_k: 1,
        capacity_factor: None,
        normalize_gates: true,
        aux_coef: 0.0,
        z_coef: 0.0,
    };
    let grads: Grads = store
        .iter()
        .map(|(k, v)| (k.clone(), vec![0.0; v.len()]))
        .collect();
    let f = |s: &Store, x: &[f64]| {
        let m = common::moe(s, "moe", &spec, x, t_n);
        (m.y.iter().sum::<f64>(), m.signature(1))
    };
    let report = gradcheck(
        CheckSpec {
            name: "flip detection",
            store,
            input: x,
            grads,
            input_grad: None,
            per_tensor: 1000,
        },
        &f,
        &mut r,
    );
    assert!(report.skipped >= 2, "skipped {}", report.skipped);
    assert!(
        !report
            .points
            .iter()
            .any(|p| p.tensor == "moe.router.b" && (p.index == first || p.index == second)),
        "the flipping router biases were compared"
    );
}

// ---------------------------------------------------------------------------------------------
// Whole network
// ---------------------------------------------------------------------------------------------

fn run_network(name: &str, head: HeadConfig, normalize_gates: bool, seed: u64) {
    let mut r = rng(seed);
    let rows = 12;
    let cfg = NetworkConfig {
        obs_dim: 5,
        d_model: D,
        blocks: vec![
            BlockConfig::Moe {
                d_hidden: H,
                n_experts: E,
                top_k: 2,
                capacity_factor: Some(0.75),
                router_noise_std: 0.0,
                normalize_gates,
                aux_loss_coef: 0.1,
                z_loss_coef: 0.05,
            },
            BlockConfig::Dense { d_hidden: H },
        ],
        head,
        normalize_obs: false,
        obs_clip: 5.0,
    };
    let mut net = Network::new(cfg.clone(), seed).unwrap();
    // Move the norms away from their (1, 0) initialisation so their gradients are generic.
    net.visit_params_mut(&mut |p| {
        if p.name.ends_with(".gamma") {
            for v in p.value.data_mut() {
                *v = r.random_range(0.6..1.4);
            }
        } else if p.name.ends_with(".beta") {
            for v in p.value.data_mut() {
                *v = r.random_range(-0.3..0.3);
            }
        }
    });
    let obs = rand_tensor(&mut r, rows, 5, -2.0, 2.0);
    let out = net.forward(&obs, true).unwrap().clone();
    let dout = rand_tensor(&mut r, rows, out.cols(), -1.0, 1.0);

    let store = store_of(&net);
    let obs_r = to_f64(obs.data());
    let want = common::network(&store, &cfg, &obs_r, rows);
    assert_forward_close(name, out.data(), &want.out);
    assert_forward_close(
        &format!("{name} aux loss"),
        &[net.aux_loss()],
        &[want.weighted_aux],
    );
    let moe = net.moe_layers().next().unwrap();
    let got_top: Vec<usize> = moe.last_assignments().iter().map(|&e| e as usize).collect();
    assert_eq!(got_top, want.moes[0].top, "{name}: top-k choice");
    assert_eq!(moe.stats().dropped, want.moes[0].dropped, "{name}: dropped");
    eprintln!(
        "{name}: MoE block dropped {} assignments",
        moe.stats().dropped
    );

    net.zero_grad();
    net.backward(&dout).unwrap();
    let rr = to_f64(dout.data());
    let f = |s: &Store, x: &[f64]| {
        let n = common::network(s, &cfg, x, rows);
        let sig = n.moes.iter().flat_map(|m| m.signature(2)).collect();
        (dot(&n.out, &rr) + n.weighted_aux, sig)
    };
    let report = gradcheck(
        CheckSpec {
            name,
            store,
            input: obs_r,
            grads: grads_of(&net),
            // Network::backward does not produce an input gradient.
            input_grad: None,
            per_tensor: PER_TENSOR,
        },
        &f,
        &mut r,
    );
    assert!(
        report
            .points
            .iter()
            .any(|p| p.tensor == "blocks.0.moe.router.w"),
        "{name}: router weights must be checked"
    );
    report.assert_ok();
}

#[test]
fn network_gradients_linear_head() {
    run_network(
        "network linear head",
        HeadConfig::Linear { out_dim: 3 },
        true,
        60,
    );
}

#[test]
fn network_gradients_dueling_head() {
    run_network(
        "network dueling head",
        HeadConfig::DuelingQ { n_actions: 4 },
        true,
        61,
    );
}

#[test]
fn network_gradients_policy_value_head() {
    run_network(
        "network policy-value head",
        HeadConfig::PolicyValue { n_actions: 3 },
        true,
        62,
    );
}

#[test]
fn network_gradients_raw_probability_gates() {
    run_network(
        "network raw gates",
        HeadConfig::Linear { out_dim: 3 },
        false,
        63,
    );
}
