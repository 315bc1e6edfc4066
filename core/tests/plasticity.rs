//! Plasticity measurements on networks whose answer is known: units killed by hand, features
//! forced to a given rank, weights moved by a known amount, and matrices of known singular
//! values.

use autodidact_core::plasticity::{
    LayerKind, MAX_RANK_SIDE, PlasticityConfig, singular_values, srank, weight_distance,
};
use autodidact_core::{
    BlockConfig, CoreError, HeadConfig, Module, MoeConfig, Network, NetworkConfig, Tensor,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const OBS: usize = 6;

fn batch(rows: usize, cols: usize, seed: u64) -> Tensor {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    Tensor::from_vec(
        (0..rows * cols)
            .map(|_| rng.random_range(-2.0..2.0))
            .collect(),
        &[rows, cols],
    )
    .unwrap()
}

fn dense_cfg() -> NetworkConfig {
    NetworkConfig {
        obs_dim: OBS,
        d_model: 16,
        blocks: vec![
            BlockConfig::Dense { d_hidden: 24 },
            BlockConfig::Dense { d_hidden: 20 },
        ],
        head: HeadConfig::DuelingQ { n_actions: 3 },
        normalize_obs: false,
        obs_clip: 5.0,
    }
}

/// One MoE block (4 experts of 12 hidden units, top-2) followed by a dense block of 10.
fn moe_cfg() -> NetworkConfig {
    let mut cfg = NetworkConfig::moe(
        OBS,
        16,
        1,
        &MoeConfig::new(16, 12, 4, 2),
        HeadConfig::Linear { out_dim: 2 },
    );
    cfg.blocks.push(BlockConfig::Dense { d_hidden: 10 });
    cfg
}

/// Runs `f` on the parameter called `name`.
fn with_param(net: &mut Network, name: &str, f: impl FnOnce(&mut [f32], &[usize])) {
    let mut f = Some(f);
    net.visit_params_mut(&mut |p| {
        if p.name == name {
            let shape = p.value.shape().to_vec();
            (f.take().unwrap())(p.value.data_mut(), &shape);
        }
    });
    assert!(f.is_none(), "no parameter {name}");
}

/// Makes hidden units `units` of the layer `prefix` (`blocks.0.fc1`, `blocks.0.moe.experts.2.fc1`)
/// silent for every input: no incoming weight and a bias so negative that GELU gives exactly 0.
fn kill_units(net: &mut Network, prefix: &str, units: &[usize]) {
    with_param(net, &format!("{prefix}.w"), |w, shape| {
        let out = shape[1];
        for row in w.chunks_exact_mut(out) {
            for &u in units {
                row[u] = 0.0;
            }
        }
    });
    with_param(net, &format!("{prefix}.b"), |b, _| {
        for &u in units {
            b[u] = -30.0;
        }
    });
}

fn tau(tau: f64) -> PlasticityConfig {
    PlasticityConfig {
        tau,
        ..PlasticityConfig::default()
    }
}

#[test]
fn killed_dense_units_are_counted_exactly() {
    let obs = batch(256, OBS, 1);
    let mut net = Network::new(dense_cfg(), 7).unwrap();
    let fresh = net
        .measure_plasticity(&obs, None, &PlasticityConfig::default())
        .unwrap();
    assert_eq!(fresh.total_units, 44);
    assert_eq!(
        fresh.dormant_units, 0,
        "a fresh network has no dormant unit"
    );

    kill_units(&mut net, "blocks.0.fc1", &[2, 5, 11]);
    kill_units(&mut net, "blocks.1.fc1", &[0, 19]);
    // τ = 0 counts only exactly silent units: the killed ones are (GELU(−30) is exactly 0).
    for t in [0.0, 0.025] {
        let r = net.measure_plasticity(&obs, None, &tau(t)).unwrap();
        assert_eq!(r.samples, 256);
        assert_eq!(r.tau, t);
        assert_eq!((r.dormant_units, r.total_units), (5, 44), "τ = {t}");
        assert_eq!(r.dormant_ratio, 5.0 / 44.0);
        let per: Vec<_> = r
            .layers
            .iter()
            .map(|l| (l.block, l.kind, l.units, l.dormant, l.idle_experts))
            .collect();
        assert_eq!(
            per,
            vec![
                (0, LayerKind::Dense, 24, 3, 0),
                (1, LayerKind::Dense, 20, 2, 0)
            ]
        );
        assert_eq!(r.layers[0].ratio, 3.0 / 24.0);
        assert_eq!(r.layers[1].ratio, 2.0 / 20.0);
    }
}

/// A unit that is not silent but fires far less than its layer's average is dormant at
/// τ = 0.025 and not at τ = 0: the score is relative, as in Sokar et al.
#[test]
fn a_nearly_silent_unit_is_dormant_at_the_default_tau_only() {
    let obs = batch(256, OBS, 2);
    let mut net = Network::new(dense_cfg(), 8).unwrap();
    with_param(&mut net, "blocks.1.fc1.w", |w, shape| {
        for row in w.chunks_exact_mut(shape[1]) {
            row[4] = 0.0;
        }
    });
    // GELU(−3) ≈ −0.004: not 0, but a tiny fraction of a typical unit's mean |h|.
    with_param(&mut net, "blocks.1.fc1.b", |b, _| b[4] = -3.0);
    let strict = net.measure_plasticity(&obs, None, &tau(0.0)).unwrap();
    assert_eq!(strict.dormant_units, 0);
    let default = net
        .measure_plasticity(&obs, None, &PlasticityConfig::default())
        .unwrap();
    assert_eq!(default.dormant_units, 1);
    assert_eq!(default.layers[1].dormant, 1);
}

/// The score is relative to the layer's mean: a layer whose every unit fires weakly (its
/// incoming weights and biases scaled by 10⁻³) has small activations everywhere, yet no
/// dormant unit, since none is weak against the others.
#[test]
fn a_uniformly_quiet_layer_has_no_dormant_unit() {
    let obs = batch(256, OBS, 10);
    let mut net = Network::new(dense_cfg(), 13).unwrap();
    for name in ["blocks.0.fc1.w", "blocks.0.fc1.b"] {
        with_param(&mut net, name, |v, _| v.iter_mut().for_each(|x| *x *= 1e-3));
    }
    let r = net
        .measure_plasticity(&obs, None, &PlasticityConfig::default())
        .unwrap();
    assert_eq!(r.layers[0].dormant, 0);
    assert_eq!(r.dormant_units, 0);
}

#[test]
fn killed_units_inside_one_expert_are_counted_exactly() {
    let obs = batch(256, OBS, 3);
    let mut net = Network::new(moe_cfg(), 11).unwrap();
    let fresh = net
        .measure_plasticity(&obs, None, &PlasticityConfig::default())
        .unwrap();
    assert_eq!(fresh.total_units, 4 * 12 + 10);
    assert_eq!(fresh.layers[0].idle_experts, 0, "every expert gets tokens");
    assert_eq!(fresh.dormant_units, 0);

    kill_units(&mut net, "blocks.0.moe.experts.2.fc1", &[1, 7, 8]);
    let r = net
        .measure_plasticity(&obs, None, &PlasticityConfig::default())
        .unwrap();
    assert_eq!(r.layers[0].kind, LayerKind::Moe);
    assert_eq!((r.layers[0].dormant, r.layers[0].units), (3, 48));
    assert_eq!(r.layers[0].ratio, 3.0 / 48.0);
    assert_eq!(r.layers[0].idle_experts, 0);
    assert_eq!(r.layers[1].dormant, 0);
    assert_eq!(r.dormant_ratio, 3.0 / 58.0);
}

/// An expert the router never picks has no activation to score: all its units are counted
/// dormant, and the layer says one expert was idle.
#[test]
fn an_expert_that_receives_no_token_counts_as_dormant() {
    let obs = batch(256, OBS, 4);
    let mut net = Network::new(moe_cfg(), 12).unwrap();
    with_param(&mut net, "blocks.0.moe.router.w", |w, shape| {
        for row in w.chunks_exact_mut(shape[1]) {
            row[3] = 0.0;
        }
    });
    with_param(&mut net, "blocks.0.moe.router.b", |b, _| b[3] = -100.0);
    let r = net
        .measure_plasticity(&obs, None, &PlasticityConfig::default())
        .unwrap();
    assert_eq!(net.moe_stats()[0].routed[3], 0);
    assert_eq!(r.layers[0].idle_experts, 1);
    assert_eq!(r.layers[0].dormant, 12);
    assert_eq!(r.dormant_units, 12);
}

#[test]
fn srank_follows_its_definition() {
    // Σσ = 10: 99 % needs all four; 85 % needs the first three (4 + 3 + 2 = 9 ≥ 8.5).
    assert_eq!(srank(&[4.0, 3.0, 2.0, 1.0], 0.01).unwrap(), 4);
    assert_eq!(srank(&[4.0, 3.0, 2.0, 1.0], 0.15).unwrap(), 3);
    assert_eq!(srank(&[1.0, 4.0, 2.0, 3.0], 0.15).unwrap(), 3, "any order");
    assert_eq!(srank(&[4.0, 3.0, 2.0, 1.0], 0.0).unwrap(), 4);
    assert_eq!(srank(&[1.0; 8], 0.01).unwrap(), 8);
    // "At least": a prefix that reaches (1 − δ)·Σσ exactly is enough (0.75·4 = 3, 0.5·4 = 2).
    assert_eq!(srank(&[1.0; 4], 0.25).unwrap(), 3);
    assert_eq!(srank(&[2.0, 1.0, 1.0], 0.5).unwrap(), 1);
    // A heavy tail of small values: 100 + 10·0.01 = 100.1; 99 % of that is 99.099 ≤ 100.
    let mut tail = vec![0.01; 10];
    tail.push(100.0);
    assert_eq!(srank(&tail, 0.01).unwrap(), 1);
    assert_eq!(srank(&[0.0, 0.0], 0.01).unwrap(), 0);
    assert_eq!(srank(&[], 0.01).unwrap(), 0);
}

/// A Householder reflection `I − 2vvᵀ/‖v‖²`: orthogonal and symmetric.
fn householder(n: usize, rng: &mut ChaCha8Rng) -> Vec<f64> {
    let v: Vec<f64> = (0..n).map(|_| rng.random_range(-1.0..1.0)).collect();
    let vv: f64 = v.iter().map(|x| x * x).sum();
    let mut h = vec![0.0; n * n];
    for i in 0..n {
        for j in 0..n {
            h[i * n + j] = f64::from(u8::from(i == j)) - 2.0 * v[i] * v[j] / vv;
        }
    }
    h
}

/// A `[rows, cols]` matrix `U Σ Vᵀ` with the given singular values and random orthonormal
/// `U`, `V` (Householder reflections), stored in f32.
fn with_singular_values(rows: usize, cols: usize, sigma: &[f64], seed: u64) -> Tensor {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let (u, v) = (householder(rows, &mut rng), householder(cols, &mut rng));
    let mut f = vec![0.0f32; rows * cols];
    for r in 0..rows {
        for c in 0..cols {
            let x: f64 = sigma
                .iter()
                .enumerate()
                .map(|(k, s)| u[r * rows + k] * s * v[c * cols + k])
                .sum();
            f[r * cols + c] = x as f32;
        }
    }
    Tensor::from_vec(f, &[rows, cols]).unwrap()
}

#[test]
fn singular_values_of_matrices_built_from_known_ones() {
    let sigma = [5.0, 3.0, 2.0, 1.0, 0.5, 0.0];
    // Tall (FᵀF) and wide (FFᵀ) matrices.
    for (rows, cols, seed) in [(40, 6, 1), (6, 30, 2)] {
        let f = with_singular_values(rows, cols, &sigma, seed);
        let sv = singular_values(&f).unwrap();
        assert_eq!(sv.len(), 6);
        for (got, want) in sv.iter().zip(&sigma) {
            assert!(
                (got - want).abs() < 1e-5 * 5.0 + 1e-3 * f64::from(u8::from(*want == 0.0)),
                "{rows}×{cols}: got {sv:?}, want {sigma:?}"
            );
        }
    }
    // Rank 3 of 8, three equal values: srank_0.01 is exactly 3.
    let f = with_singular_values(50, 8, &[2.0, 2.0, 2.0], 3);
    let sv = singular_values(&f).unwrap();
    assert_eq!(srank(&sv, 0.01).unwrap(), 3, "{sv:?}");
}

/// Larger spectra, repeated values and degenerate shapes exercise the tridiagonal reduction
/// and the bisection over many steps.
#[test]
fn singular_values_of_larger_and_degenerate_matrices() {
    let distinct: Vec<f64> = (0..50).map(|i| 50.0 - i as f64).collect();
    let repeated = [3.0, 3.0, 3.0, 3.0, 1.0, 1.0, 0.0];
    for (rows, cols, sigma, seed) in [
        (120, 50, &distinct[..], 4),
        (50, 120, &distinct[..], 5),
        (30, 7, &repeated[..], 6),
        (7, 9, &repeated[..], 7),
    ] {
        let f = with_singular_values(rows, cols, sigma, seed);
        let sv = singular_values(&f).unwrap();
        assert_eq!(sv.len(), rows.min(cols));
        for (i, (got, want)) in sv.iter().zip(sigma).enumerate() {
            // f32 storage of F limits the agreement to ~1e-6 of the largest value; a zero
            // singular value comes back as the square root of a rounding error.
            let tol = if *want == 0.0 { 2e-3 } else { 1e-5 * sigma[0] };
            assert!(
                (got - want).abs() < tol,
                "{rows}×{cols}: σ_{i} = {got}, want {want}"
            );
        }
    }
    let one = |data: Vec<f32>, shape: &[usize]| {
        singular_values(&Tensor::from_vec(data, shape).unwrap()).unwrap()
    };
    let sv = one(vec![-3.0], &[1, 1]);
    assert!(sv.len() == 1 && (sv[0] - 3.0).abs() < 1e-12, "{sv:?}");
    // A single row or column: its norm, √(1 + 4 + 4 + 16) = 5.
    for shape in [[1, 4], [4, 1]] {
        let sv = one(vec![1.0, 2.0, -2.0, 4.0], &shape);
        assert_eq!(sv.len(), 1);
        assert!((sv[0] - 5.0).abs() < 1e-12, "{sv:?}");
    }
    // [[3, 0], [4, 5]] has singular values √45 and √5.
    let sv = one(vec![3.0, 0.0, 4.0, 5.0], &[2, 2]);
    assert!((sv[0] - 45f64.sqrt()).abs() < 1e-12 && (sv[1] - 5f64.sqrt()).abs() < 1e-12);
    assert_eq!(one(vec![0.0; 6], &[3, 2]), vec![0.0, 0.0]);
}

/// The final LayerNorm's output is forced to rank 3: a zero gain and bias on all but three
/// features leaves those three columns, which vary independently across inputs.
#[test]
fn effective_rank_of_head_features_forced_to_rank_three() {
    let obs = batch(200, OBS, 5);
    let mut net = Network::new(dense_cfg(), 9).unwrap();
    let fresh = net
        .measure_plasticity(&obs, None, &PlasticityConfig::default())
        .unwrap();
    assert_eq!(fresh.feature_dim, 16);
    assert!(
        fresh.effective_rank > 3,
        "fresh features are spread: {}",
        fresh.effective_rank
    );

    with_param(&mut net, "final_norm.gamma", |g, _| {
        for (i, v) in g.iter_mut().enumerate() {
            if ![1, 6, 13].contains(&i) {
                *v = 0.0;
            }
        }
    });
    with_param(&mut net, "final_norm.beta", |b, _| b.fill(0.0));
    let cfg = PlasticityConfig {
        srank_delta: 1e-6,
        ..PlasticityConfig::default()
    };
    let r = net.measure_plasticity(&obs, None, &cfg).unwrap();
    assert_eq!(r.effective_rank, 3);
    assert_eq!(r.rank_share, 3.0 / 16.0);
    let r = net
        .measure_plasticity(&obs, None, &PlasticityConfig::default())
        .unwrap();
    assert!((1..=3).contains(&r.effective_rank), "{}", r.effective_rank);
}

#[test]
fn distance_from_init_is_zero_fresh_and_exact_after_a_known_change() {
    let obs = batch(32, OBS, 6);
    for cfg in [dense_cfg(), moe_cfg()] {
        let init = Network::new(cfg.clone(), 21).unwrap();
        // Rebuilding from config and seed gives bit-identical weights…
        let mut net = Network::new(cfg.clone(), 21).unwrap();
        let r = net
            .measure_plasticity(&obs, Some(&init), &PlasticityConfig::default())
            .unwrap();
        let d = r.distance.unwrap();
        assert_eq!((d.absolute, d.relative), (0.0, 0.0));
        assert!((d.init_norm - r.weight_norm).abs() < 1e-12 * r.weight_norm);
        // …and another seed does not.
        let other = Network::new(cfg.clone(), 22).unwrap();
        assert!(weight_distance(&other, &init).unwrap().relative > 0.1);

        // θ = 1.5·θ₀ ⇒ ‖θ − θ₀‖/‖θ₀‖ = 0.5 (exact up to f32 rounding of the products).
        net.visit_params_mut(&mut |p| p.value.data_mut().iter_mut().for_each(|v| *v *= 1.5));
        let d = net
            .measure_plasticity(&obs, Some(&init), &PlasticityConfig::default())
            .unwrap()
            .distance
            .unwrap();
        assert!((d.relative - 0.5).abs() < 1e-6, "{d:?}");
        assert!((d.absolute - 0.5 * d.init_norm).abs() < 1e-6 * d.init_norm);
    }

    // One tensor moved by +0.25 everywhere: ‖θ − θ₀‖ = 0.25·√len.
    let init = Network::new(dense_cfg(), 3).unwrap();
    let mut net = init.clone();
    with_param(&mut net, "blocks.1.fc2.w", |w, _| {
        w.iter_mut().for_each(|v| *v += 0.25)
    });
    let d = weight_distance(&net, &init).unwrap();
    let want = 0.25 * ((20 * 16) as f64).sqrt();
    assert!((d.absolute - want).abs() < 1e-5, "{} vs {want}", d.absolute);
}

/// Measuring changes no weight, and a forward pass afterwards gives what it gave before.
#[test]
fn measuring_leaves_the_network_as_it_was() {
    let obs = batch(64, OBS, 8);
    let mut net = Network::new(moe_cfg(), 5).unwrap();
    let before = net.forward(&obs, false).unwrap().clone();
    let init = net.clone();
    net.measure_plasticity(
        &batch(300, OBS, 9),
        Some(&init),
        &PlasticityConfig::default(),
    )
    .unwrap();
    assert_eq!(weight_distance(&net, &init).unwrap().absolute, 0.0);
    assert_eq!(net.forward(&obs, false).unwrap().data(), before.data());
}

fn is_input<T>(r: Result<T, CoreError>) -> bool {
    matches!(r, Err(CoreError::Input(_)))
}
fn is_config<T>(r: Result<T, CoreError>) -> bool {
    matches!(r, Err(CoreError::Config(_)))
}
fn is_shape<T>(r: Result<T, CoreError>) -> bool {
    matches!(r, Err(CoreError::Shape { .. }))
}

#[test]
fn bad_inputs_are_typed_errors() {
    let mut net = Network::new(dense_cfg(), 1).unwrap();
    let ok = PlasticityConfig::default();
    let good = batch(8, OBS, 1);

    assert!(is_shape(net.measure_plasticity(
        &batch(8, OBS + 1, 1),
        None,
        &ok
    )));
    assert!(is_shape(net.measure_plasticity(
        &Tensor::from_vec(vec![0.0; OBS], &[OBS]).unwrap(),
        None,
        &ok
    )));
    assert!(is_input(net.measure_plasticity(
        &Tensor::from_vec(vec![], &[0, OBS]).unwrap(),
        None,
        &ok
    )));
    let mut nan = good.clone();
    nan.data_mut()[3] = f32::NAN;
    assert!(is_input(net.measure_plasticity(&nan, None, &ok)));
    for bad in [
        PlasticityConfig {
            tau: -0.1,
            ..ok.clone()
        },
        PlasticityConfig {
            tau: f64::NAN,
            ..ok.clone()
        },
        PlasticityConfig {
            srank_delta: 1.0,
            ..ok.clone()
        },
        PlasticityConfig {
            srank_delta: -0.01,
            ..ok.clone()
        },
    ] {
        assert!(
            is_config(net.measure_plasticity(&good, None, &bad)),
            "{bad:?}"
        );
    }

    // An initial network of another architecture.
    let mut fewer = dense_cfg();
    fewer.blocks.pop();
    let other = Network::new(fewer, 1).unwrap();
    assert!(is_config(net.measure_plasticity(&good, Some(&other), &ok)));
    let mut wider = dense_cfg();
    wider.blocks[1] = BlockConfig::Dense { d_hidden: 21 };
    let other = Network::new(wider, 1).unwrap();
    assert!(is_shape(net.measure_plasticity(&good, Some(&other), &ok)));

    // Diverged weights.
    let init = net.clone();
    with_param(&mut net, "blocks.0.fc1.w", |w, _| w[0] = f32::NAN);
    assert!(is_input(net.measure_plasticity(&good, None, &ok)));
    assert!(is_input(weight_distance(&net, &init)));

    // Direct calls.
    assert!(is_shape(singular_values(
        &Tensor::from_vec(vec![1.0; 4], &[4]).unwrap()
    )));
    assert!(is_input(singular_values(
        &Tensor::from_vec(vec![], &[0, 3]).unwrap()
    )));
    assert!(is_input(singular_values(&nan)));
    assert!(is_input(srank(&[1.0, -1.0], 0.01)));
    assert!(is_input(srank(&[1.0, f64::NAN], 0.01)));
    assert!(is_config(srank(&[1.0], 1.5)));
}

/// The Jacobi eigen-decomposition is bounded: a feature matrix whose smaller side exceeds the
/// limit is refused before anything of that size is built.
#[test]
fn a_rank_beyond_the_limit_is_refused() {
    let side = MAX_RANK_SIDE + 1;
    let big = Tensor::zeros(&[side, side]);
    assert!(matches!(
        singular_values(&big),
        Err(CoreError::TooLarge { .. })
    ));
    let cfg = NetworkConfig {
        d_model: side,
        blocks: vec![BlockConfig::Dense { d_hidden: 4 }],
        ..dense_cfg()
    };
    let mut net = Network::new(cfg, 1).unwrap();
    assert!(matches!(
        net.measure_plasticity(&batch(side, OBS, 1), None, &PlasticityConfig::default()),
        Err(CoreError::TooLarge { .. })
    ));
    // With fewer rows than the limit the same network is measured.
    let r = net
        .measure_plasticity(&batch(64, OBS, 1), None, &PlasticityConfig::default())
        .unwrap();
    assert!(r.effective_rank <= 64);
}
