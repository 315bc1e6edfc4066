//! The core math of SAC: the tanh-squashed Gaussian head, the entropy-temperature loss and
//! the network's input gradient (∂Q/∂action through a critic), each checked against central
//! differences of an f64 reference written here from the formulas (sharing no code with the
//! crate), plus the behaviour the learner relies on: actions bounded and finite for any
//! finite input, the deterministic action, and buffers reused.
//!
//! Tolerances are those of `common::CheckReport::assert_ok` and
//! `common::assert_forward_close`, justified there.

mod common;

use autodidact_core::dist::{
    self, LOG_STD_MAX, LOG_STD_MIN, SquashedGaussian, default_target_entropy,
};
use autodidact_core::{
    BlockConfig, CoreError, HeadConfig, Module, Network, NetworkConfig, Tensor, loss,
};
use common::{
    CheckSpec, Grads, Store, assert_forward_close, dot, gradcheck, grads_of, rand_tensor, store_of,
    to_f64,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn rng(seed: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(seed)
}

// ---------------------------------------------------------------------------------------------
// Reference
// ---------------------------------------------------------------------------------------------

/// `ln(1 − tanh²u) = −2·ln cosh u`, with `ln cosh u = |u| + ln(1 + e^(−2|u|)) − ln 2`: exact
/// in f64 for any |u| (the naive `ln(1 − tanh²u)` loses all digits past |u| ≈ 18).
fn ref_log_sech2(u: f64) -> f64 {
    let a = u.abs();
    -2.0 * (a + (-2.0 * a).exp().ln_1p() - std::f64::consts::LN_2)
}

/// The squashed Gaussian in f64: `(actions [B·A], log-probabilities [B])`.
fn ref_squashed(raw: &[f64], eps: &[f64], a: usize) -> (Vec<f64>, Vec<f64>) {
    let b = eps.len() / a;
    let half_ln_2pi = 0.5 * (2.0 * std::f64::consts::PI).ln();
    let (lo, hi) = (f64::from(LOG_STD_MIN), f64::from(LOG_STD_MAX));
    let mut act = vec![0.0; b * a];
    let mut lp = vec![0.0; b];
    for r in 0..b {
        for i in 0..a {
            let m = raw[r * 2 * a + i];
            let l = raw[r * 2 * a + a + i].clamp(lo, hi);
            let e = eps[r * a + i];
            let u = m + l.exp() * e;
            act[r * a + i] = u.tanh();
            lp[r] += -0.5 * e * e - l - half_ln_2pi - ref_log_sech2(u);
        }
    }
    (act, lp)
}

// ---------------------------------------------------------------------------------------------
// Squashed Gaussian: gradients
// ---------------------------------------------------------------------------------------------

/// Checks forward and backward of the head on `raw`/`eps` with loss weights `ra` on the
/// actions and `rl` on the log-probabilities.
fn check_squashed(name: &str, raw: &Tensor, eps: &Tensor, ra: &Tensor, rl: &[f32]) {
    let a = eps.cols();
    let mut head = SquashedGaussian::new(a).unwrap();
    let (act, lp) = head.forward(raw, eps).unwrap();
    let (act, lp) = (act.clone(), lp.to_vec());
    let (raw_r, eps_r) = (to_f64(raw.data()), to_f64(eps.data()));
    let (want_a, want_lp) = ref_squashed(&raw_r, &eps_r, a);
    assert_forward_close(&format!("{name} actions"), act.data(), &want_a);
    assert_forward_close(&format!("{name} log-prob"), &lp, &want_lp);
    let d_raw = head.backward(ra, rl).unwrap().clone();
    assert!(d_raw.all_finite(), "{name}: non-finite gradient");
    let (ra_r, rl_r) = (to_f64(ra.data()), to_f64(rl));
    let f = |_: &Store, x: &[f64]| {
        let (act, lp) = ref_squashed(x, &eps_r, a);
        (dot(&act, &ra_r) + dot(&lp, &rl_r), vec![])
    };
    gradcheck(
        CheckSpec {
            name,
            store: Store::new(),
            input: raw_r,
            grads: Grads::new(),
            input_grad: Some(d_raw.data().to_vec()),
            per_tensor: 32,
        },
        &f,
        &mut rng(0),
    )
    .assert_ok();
}

#[test]
fn squashed_gaussian_gradients_both_paths() {
    let mut r = rng(100);
    let (b, a) = (6, 3);
    let mut raw = rand_tensor(&mut r, b, 2 * a, -1.5, 1.5);
    // Rows with the clamp active on both sides (gradient 0 there) and one with a log-std just
    // inside the lower bound, where σ ≈ 3e-9 and only the direct −1 term is left.
    raw.row_mut(1)[a] = 3.5;
    raw.row_mut(1)[a + 2] = -27.0;
    raw.row_mut(2)[a + 1] = LOG_STD_MIN + 0.5;
    raw.row_mut(2)[a + 2] = LOG_STD_MAX + 0.25;
    let eps = rand_tensor(&mut r, b, a, -2.0, 2.0);
    let ra = rand_tensor(&mut r, b, a, -1.0, 1.0);
    let rl: Vec<f32> = (0..b).map(|_| r.random_range(-1.0..1.0)).collect();
    // Each path alone, then both: a missing term on one path cannot hide behind the other.
    let zeros = Tensor::zeros(&[b, a]);
    check_squashed("squashed d_action only", &raw, &eps, &ra, &vec![0.0; b]);
    check_squashed("squashed d_log_prob only", &raw, &eps, &zeros, &rl);
    check_squashed("squashed both paths", &raw, &eps, &ra, &rl);
}

#[test]
fn squashed_gaussian_gradients_saturated_tanh() {
    // |u| from 6 to 40: tanh rounds to ±1 in f32 beyond |u| ≈ 9, where the naive
    // ln(1 − a²) is −∞. The stable form must give the exact log-probability and gradient
    // (∂log π/∂u = 2·tanh u stays ±2; ∂a/∂u = sech²u underflows gracefully).
    let mut r = rng(101);
    let (b, a) = (4, 2);
    let mut raw = rand_tensor(&mut r, b, 2 * a, -0.5, 0.5);
    for (row, (m0, m1)) in [(6.0, -8.0), (12.0, -15.0), (25.0, -40.0), (-9.5, 30.0)]
        .into_iter()
        .enumerate()
    {
        raw.row_mut(row)[0] = m0;
        raw.row_mut(row)[1] = m1;
    }
    let eps = rand_tensor(&mut r, b, a, -1.0, 1.0);
    let ra = rand_tensor(&mut r, b, a, -1.0, 1.0);
    let rl: Vec<f32> = (0..b).map(|_| r.random_range(-1.0..1.0)).collect();
    let mut head = SquashedGaussian::new(a).unwrap();
    let (_, lp) = head.forward(&raw, &eps).unwrap();
    assert!(lp.iter().all(|v| v.is_finite()), "log-prob {lp:?}");
    check_squashed("squashed saturated", &raw, &eps, &ra, &rl);

    // The action path's own gradient sech²u is tiny there but not zero: it is taken from the
    // stable log form, not from 1 − a² (which is exactly 0 once tanh rounds to ±1), so it
    // stays relatively exact — the FD check above cannot see this, its scale is the 2·tanh u
    // of the log-prob path.
    let (act, _) = head.forward(&raw, &eps).unwrap();
    let act = act.clone();
    let d = head.backward(
        &Tensor::from_vec(vec![1.0; b * a], &[b, a]).unwrap(),
        &[0.0; 4],
    );
    let d = d.unwrap();
    let (raw_r, eps_r) = (to_f64(raw.data()), to_f64(eps.data()));
    for row in 0..b {
        for i in 0..a {
            let l = raw_r[row * 2 * a + a + i];
            let u = raw_r[row * 2 * a + i] + l.exp() * eps_r[row * a + i];
            let want = ref_log_sech2(u).exp();
            let got = f64::from(d.row(row)[i]);
            assert!(
                (got - want).abs() <= 1e-4 * want,
                "u={u}: d mean {got:e} vs sech² {want:e} (action {})",
                act.row(row)[i]
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Squashed Gaussian: behaviour
// ---------------------------------------------------------------------------------------------

#[test]
fn squashed_gaussian_is_bounded_and_finite_for_extreme_inputs() {
    let vals = [-1e4f32, -30.0, -1.0, 0.0, 1.0, 30.0, 1e4];
    let noise = [-1e6f32, -1e3, -3.0, 0.0, 3.0, 1e3, 1e6];
    // Every combination of mean, log-std and noise, one per row (A = 1).
    let mut raw = Vec::new();
    let mut eps = Vec::new();
    for &m in &vals {
        for &s in &vals {
            for &e in &noise {
                raw.extend([m, s]);
                eps.push(e);
            }
        }
    }
    let b = eps.len();
    let raw = Tensor::from_vec(raw, &[b, 2]).unwrap();
    let eps = Tensor::from_vec(eps, &[b, 1]).unwrap();
    let mut head = SquashedGaussian::new(1).unwrap();
    let (act, lp) = head.forward(&raw, &eps).unwrap();
    for (i, &v) in act.data().iter().enumerate() {
        assert!(
            v.is_finite() && (-1.0..=1.0).contains(&v),
            "row {i}: action {v}"
        );
    }
    assert!(lp.iter().all(|v| v.is_finite()), "a log-prob is not finite");
    let ones = Tensor::from_vec(vec![1.0; b], &[b, 1]).unwrap();
    let d = head.backward(&ones, &vec![1.0; b]).unwrap();
    assert!(d.all_finite(), "a gradient is not finite");
    let det = head.deterministic(&raw).unwrap();
    assert!(det.data().iter().all(|v| (-1.0..=1.0).contains(v)));
}

#[test]
fn deterministic_is_tanh_of_the_mean_and_rows_match_the_batch() {
    let mut r = rng(102);
    let (b, a) = (5, 3);
    let raw = rand_tensor(&mut r, b, 2 * a, -4.0, 4.0);
    let eps = rand_tensor(&mut r, b, a, -2.0, 2.0);
    let mut head = SquashedGaussian::new(a).unwrap();
    let (act, lp) = head.forward(&raw, &eps).unwrap();
    let (act, lp) = (act.clone(), lp.to_vec());
    let det = head.deterministic(&raw).unwrap().clone();
    // The deterministic pass has its own buffer: the forward cache is intact.
    assert_eq!(head.action(), &act);
    assert_eq!(head.log_prob(), &lp[..]);
    let mut row = vec![0.0; a];
    for (i, &lp_i) in lp.iter().enumerate() {
        for (&d, &m) in det.row(i).iter().zip(&raw.row(i)[..a]) {
            assert_eq!(d, m.tanh());
        }
        dist::deterministic_row(raw.row(i), &mut row).unwrap();
        assert_eq!(row, det.row(i));
        // Acting and learning compute the very same numbers, bit for bit.
        let l = dist::sample_row(raw.row(i), eps.row(i), &mut row).unwrap();
        assert_eq!(row, act.row(i));
        assert_eq!(l.to_bits(), lp_i.to_bits());
    }
}

#[test]
fn squashed_gaussian_reuses_its_buffers() {
    let mut r = rng(103);
    let a = 2;
    let mut head = SquashedGaussian::new(a).unwrap();
    let raw = rand_tensor(&mut r, 8, 2 * a, -1.0, 1.0);
    let eps = rand_tensor(&mut r, 8, a, -1.0, 1.0);
    let p_act = head.forward(&raw, &eps).unwrap().0.data().as_ptr();
    let p_grad = head
        .backward(&Tensor::zeros(&[8, a]), &[0.0; 8])
        .unwrap()
        .data()
        .as_ptr();
    // Same batch again, then a smaller one: no reallocation.
    for rows in [8, 3] {
        let raw = rand_tensor(&mut r, rows, 2 * a, -1.0, 1.0);
        let eps = rand_tensor(&mut r, rows, a, -1.0, 1.0);
        assert_eq!(head.forward(&raw, &eps).unwrap().0.data().as_ptr(), p_act);
        let g = head
            .backward(&Tensor::zeros(&[rows, a]), &vec![0.0; rows])
            .unwrap();
        assert_eq!(g.data().as_ptr(), p_grad);
        assert_eq!(g.shape(), &[rows, 2 * a]);
    }
}

#[test]
fn squashed_gaussian_rejects_bad_input() {
    let mut head = SquashedGaussian::new(2).unwrap();
    let good = Tensor::zeros(&[3, 4]);
    let eps = Tensor::zeros(&[3, 2]);
    let mut nan = good.clone();
    nan.data_mut()[5] = f32::NAN;
    assert!(matches!(head.forward(&nan, &eps), Err(CoreError::Input(_))));
    let mut inf_eps = eps.clone();
    inf_eps.data_mut()[0] = f32::INFINITY;
    assert!(matches!(
        head.forward(&good, &inf_eps),
        Err(CoreError::Input(_))
    ));
    assert!(matches!(
        head.forward(&Tensor::zeros(&[3, 3]), &eps),
        Err(CoreError::Shape { .. })
    ));
    assert!(matches!(
        head.forward(&good, &Tensor::zeros(&[2, 2])),
        Err(CoreError::Shape { .. })
    ));
    head.forward(&good, &eps).unwrap();
    assert!(matches!(
        head.backward(&Tensor::zeros(&[3, 2]), &[0.0; 2]),
        Err(CoreError::Shape { .. })
    ));
    assert!(matches!(head.deterministic(&nan), Err(CoreError::Input(_))));
    assert!(matches!(
        SquashedGaussian::new(0),
        Err(CoreError::Config(_))
    ));
    let mut out = [0.0; 2];
    assert!(matches!(
        dist::sample_row(&[0.0; 3], &[0.0; 2], &mut out),
        Err(CoreError::Shape { .. })
    ));
}

// ---------------------------------------------------------------------------------------------
// Entropy temperature
// ---------------------------------------------------------------------------------------------

#[test]
fn entropy_temperature_gradient_and_direction() {
    let mut r = rng(104);
    let lp: Vec<f32> = (0..7).map(|_| r.random_range(-3.0..2.0)).collect();
    let target = default_target_entropy(3);
    assert_eq!(target, -3.0);
    let lp_r = to_f64(&lp);
    let reference = |log_alpha: f64| {
        -lp_r
            .iter()
            .map(|&l| log_alpha * (l + f64::from(target)))
            .sum::<f64>()
            / lp_r.len() as f64
    };
    for log_alpha in [-2.3f32, 0.0, 0.7] {
        let (l, g) = loss::entropy_temperature(log_alpha, &lp, target).unwrap();
        assert_forward_close("temperature loss", &[l], &[reference(f64::from(log_alpha))]);
        let f = |_: &Store, x: &[f64]| (reference(x[0]), vec![]);
        gradcheck(
            CheckSpec {
                name: "temperature loss",
                store: Store::new(),
                input: vec![f64::from(log_alpha)],
                grads: Grads::new(),
                input_grad: Some(vec![g]),
                per_tensor: 1,
            },
            &f,
            &mut r,
        )
        .assert_ok();
    }
    // Entropy −log π below the target (log π high): a descent step raises α, and the reverse.
    let (_, g) = loss::entropy_temperature(0.0, &[5.0, 4.0], -1.0).unwrap();
    assert!(g < 0.0, "low entropy must raise the temperature (grad {g})");
    let (_, g) = loss::entropy_temperature(0.0, &[-5.0, -4.0], -1.0).unwrap();
    assert!(
        g > 0.0,
        "high entropy must lower the temperature (grad {g})"
    );
    assert!(loss::entropy_temperature(0.0, &[], -1.0).is_err());
    assert!(loss::entropy_temperature(f32::NAN, &[1.0], -1.0).is_err());
    assert!(loss::entropy_temperature(0.0, &[f32::NEG_INFINITY], -1.0).is_err());
}

// ---------------------------------------------------------------------------------------------
// Network input gradient
// ---------------------------------------------------------------------------------------------

const OBS: usize = 5;
const ROWS: usize = 12;

fn moe_block() -> BlockConfig {
    BlockConfig::Moe {
        d_hidden: 12,
        n_experts: 4,
        top_k: 2,
        capacity_factor: Some(0.75),
        router_noise_std: 0.0,
        normalize_gates: true,
        // Large enough that leaving them in the input gradient would fail the check.
        aux_loss_coef: 0.1,
        z_loss_coef: 0.05,
    }
}

/// The normaliser in f64, as `ObsNormalizer::apply` defines it.
fn ref_normalize(net: &Network, obs: &[f64]) -> Vec<f64> {
    let n = &net.normalizer;
    if !n.enabled || n.count == 0.0 {
        return obs.to_vec();
    }
    let c = f64::from(n.clip);
    obs.iter()
        .enumerate()
        .map(|(i, &x)| {
            let j = i % OBS;
            ((x - n.mean[j]) / (n.var[j] + 1e-8).sqrt()).clamp(-c, c)
        })
        .collect()
}

fn run_input_grad(name: &str, blocks: Vec<BlockConfig>, normalize: bool, seed: u64) {
    let mut r = rng(seed);
    let cfg = NetworkConfig {
        obs_dim: OBS,
        d_model: 8,
        blocks,
        head: HeadConfig::Linear { out_dim: 2 },
        normalize_obs: normalize,
        obs_clip: 1.5,
    };
    let mut net = Network::new(cfg.clone(), seed).unwrap();
    net.visit_params_mut(&mut |p| {
        if p.name.ends_with(".gamma") {
            for v in p.value.data_mut() {
                *v = r.random_range(0.6..1.4);
            }
        }
    });
    let mut obs = rand_tensor(&mut r, ROWS, OBS, -3.0, 3.0);
    if normalize {
        // Statistics away from (0, 1) so μ and σ matter, and a clip of 1.5 so some inputs
        // are clipped (gradient 0) and others are not.
        let stats = rand_tensor(&mut r, 64, OBS, -1.0, 3.0);
        net.normalizer.update(&stats).unwrap();
    }
    // Keep every normalised value clear of the clip boundary by far more than the FD step.
    let mut clipped = 0;
    for row in 0..ROWS {
        for j in 0..OBS {
            let x = obs.row(row)[j];
            let mut probe = vec![0.0; OBS];
            probe[j] = f64::from(x);
            let z = ref_normalize(&net, &probe)[j];
            if normalize && (z.abs() - 1.5).abs() < 0.05 {
                obs.row_mut(row)[j] += 0.5;
            }
            let mut probe = vec![0.0; OBS];
            probe[j] = f64::from(obs.row(row)[j]);
            if normalize && ref_normalize(&net, &probe)[j].abs() >= 1.5 {
                clipped += 1;
            }
        }
    }
    if normalize {
        assert!(
            clipped > 0 && clipped < ROWS * OBS,
            "{name}: {clipped} clipped"
        );
    }
    let out = net.forward(&obs, true).unwrap().clone();
    let dout = rand_tensor(&mut r, ROWS, out.cols(), -1.0, 1.0);
    let store = store_of(&net);
    let obs_r = to_f64(obs.data());
    let ref_cfg = NetworkConfig {
        normalize_obs: false,
        ..cfg.clone()
    };
    let want = common::network(&store, &ref_cfg, &ref_normalize(&net, &obs_r), ROWS);
    assert_forward_close(name, out.data(), &want.out);

    net.zero_grad();
    let d_obs = net.backward_input(&dout).unwrap().clone();
    assert_eq!(d_obs.shape(), obs.shape());
    let rr = to_f64(dout.data());
    let k = 2;
    // The objective is the task output alone: backward_input leaves the auxiliary losses out.
    let f = |s: &Store, x: &[f64]| {
        let n = common::network(s, &ref_cfg, &ref_normalize(&net, x), ROWS);
        let sig = n.moes.iter().flat_map(|m| m.signature(k)).collect();
        (dot(&n.out, &rr), sig)
    };
    let report = gradcheck(
        CheckSpec {
            name,
            store,
            input: obs_r,
            grads: grads_of(&net),
            input_grad: Some(d_obs.data().to_vec()),
            per_tensor: 16,
        },
        &f,
        &mut r,
    );
    let inputs = report.points.iter().filter(|p| p.tensor == "input").count();
    assert!(
        inputs > ROWS * OBS * 9 / 10,
        "{name}: {inputs} inputs checked"
    );
    if normalize {
        let zero = report
            .points
            .iter()
            .filter(|p| p.tensor == "input" && p.numeric == 0.0 && p.analytic == 0.0)
            .count();
        assert!(zero > 0, "{name}: no clipped input was compared");
    }
    report.assert_ok();
}

#[test]
fn network_input_gradient_moe() {
    run_input_grad(
        "input grad moe+dense",
        vec![moe_block(), BlockConfig::Dense { d_hidden: 12 }],
        false,
        110,
    );
}

#[test]
fn network_input_gradient_moe_normalized() {
    run_input_grad(
        "input grad moe normalised",
        vec![moe_block(), BlockConfig::Dense { d_hidden: 12 }],
        true,
        111,
    );
}

#[test]
fn network_input_gradient_dense() {
    run_input_grad(
        "input grad dense",
        vec![BlockConfig::Dense { d_hidden: 12 }; 2],
        false,
        112,
    );
}

#[test]
fn network_input_gradient_dense_normalized() {
    run_input_grad(
        "input grad dense normalised",
        vec![BlockConfig::Dense { d_hidden: 12 }; 2],
        true,
        113,
    );
}

/// `backward` is untouched by the new path: same parameter gradients, bit for bit, whether
/// or not `backward_input` ran on another batch before it (its buffers are its own).
#[test]
fn backward_is_unchanged_by_backward_input() {
    let mut r = rng(114);
    let cfg = NetworkConfig {
        obs_dim: OBS,
        d_model: 8,
        blocks: vec![moe_block(), BlockConfig::Dense { d_hidden: 12 }],
        head: HeadConfig::DuelingQ { n_actions: 3 },
        normalize_obs: false,
        obs_clip: 5.0,
    };
    let obs = rand_tensor(&mut r, ROWS, OBS, -2.0, 2.0);
    let other = rand_tensor(&mut r, 7, OBS, -2.0, 2.0);
    let dout = rand_tensor(&mut r, ROWS, 3, -1.0, 1.0);
    let grads = |warm: bool| {
        let mut net = Network::new(cfg.clone(), 5).unwrap();
        if warm {
            net.forward(&other, true).unwrap();
            net.backward_input(&Tensor::zeros(&[7, 3])).unwrap();
            net.zero_grad();
        }
        net.forward(&obs, true).unwrap();
        net.backward(&dout).unwrap();
        grads_of(&net)
    };
    assert_eq!(grads(false), grads(true));
}

/// `input_gradient` gives exactly `backward_input`'s input gradient (which the tests above
/// check against finite differences), for every head, block kind and with the normaliser, and
/// leaves every parameter gradient as it found it.
#[test]
fn input_gradient_is_backward_input_without_parameter_gradients() {
    let mut r = rng(115);
    for head in [
        HeadConfig::Linear { out_dim: 2 },
        HeadConfig::DuelingQ { n_actions: 3 },
        HeadConfig::PolicyValue { n_actions: 2 },
    ] {
        for normalize in [false, true] {
            let cfg = NetworkConfig {
                obs_dim: OBS,
                d_model: 8,
                blocks: vec![moe_block(), BlockConfig::Dense { d_hidden: 12 }],
                head: head.clone(),
                normalize_obs: normalize,
                obs_clip: 1.5,
            };
            let mut net = Network::new(cfg, 9).unwrap();
            if normalize {
                let stats = rand_tensor(&mut r, 64, OBS, -1.0, 3.0);
                net.normalizer.update(&stats).unwrap();
            }
            let obs = rand_tensor(&mut r, ROWS, OBS, -3.0, 3.0);
            let out_cols = net.forward(&obs, true).unwrap().cols();
            let dout = rand_tensor(&mut r, ROWS, out_cols, -1.0, 1.0);
            // Stale gradients, which the frozen path must neither clear nor add to.
            net.visit_params_mut(&mut |p| {
                for g in p.grad.data_mut() {
                    *g = r.random_range(-1.0..1.0);
                }
            });
            let before = grads_of(&net);
            let mut reference = net.clone();
            let want = reference.backward_input(&dout).unwrap().clone();
            assert_ne!(
                grads_of(&reference),
                before,
                "backward_input adds gradients"
            );
            let got = net.input_gradient(&dout).unwrap().clone();
            let bits = |t: &Tensor| t.data().iter().map(|v| v.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&got), bits(&want), "{head:?}, normalised {normalize}");
            assert!(
                got.data().iter().any(|&g| g != 0.0),
                "{head:?}: a zero gradient"
            );
            assert_eq!(
                grads_of(&net),
                before,
                "{head:?}: parameter gradients touched"
            );
        }
    }
}
