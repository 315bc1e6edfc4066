//! Training-level behaviour of the core: checkpoints, snapshots, determinism, the non-finite
//! step guard, and a supervised problem on which experts specialise.

use std::collections::BTreeMap;

use autodidact_core::loss::mse;
use autodidact_core::optim::StepOutcome;
use autodidact_core::precision::Precision;
use autodidact_core::{
    AdamW, AdamWConfig, BlockConfig, CoreError, HeadConfig, Module, MoeConfig, Network,
    NetworkConfig, Snapshot, Tensor, load_checkpoint, save_checkpoint,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn moe_net(obs_dim: usize, head: HeadConfig, seed: u64) -> Network {
    let mut cfg = NetworkConfig::moe(obs_dim, 16, 2, &MoeConfig::new(16, 32, 4, 2), head);
    cfg.blocks[1] = BlockConfig::Dense { d_hidden: 24 };
    cfg.normalize_obs = true;
    Network::new(cfg, seed).unwrap()
}

fn random_batch(rng: &mut ChaCha8Rng, rows: usize, cols: usize) -> Tensor {
    Tensor::from_vec(
        (0..rows * cols)
            .map(|_| rng.random_range(-1.0..1.0))
            .collect(),
        &[rows, cols],
    )
    .unwrap()
}

/// One supervised step: forward, MSE against `target`, backward, AdamW.
fn train_step(
    net: &mut Network,
    opt: &mut AdamW,
    x: &Tensor,
    target: &Tensor,
    grad: &mut Tensor,
) -> f32 {
    let y = net.forward(x, true).unwrap();
    let loss = mse(y, target, grad).unwrap();
    net.backward(grad).unwrap();
    let total = loss + net.aux_loss();
    opt.step(net, total);
    loss
}

fn params_of(net: &Network) -> Vec<(String, Vec<f32>)> {
    let mut v = Vec::new();
    net.visit_params(&mut |p| v.push((p.name.clone(), p.value.data().to_vec())));
    v
}

#[test]
fn checkpoint_round_trip_resumes_training_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.safetensors");
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let mut net = moe_net(5, HeadConfig::DuelingQ { n_actions: 3 }, 7);
    let mut opt = AdamW::new(AdamWConfig {
        weight_decay: 0.01,
        max_grad_norm: Some(1.0),
        ..AdamWConfig::new(1e-3)
    })
    .unwrap();
    let mut grad = Tensor::default();
    let x = random_batch(&mut rng, 32, 5);
    let t = random_batch(&mut rng, 32, 3);
    net.normalizer.update(&x).unwrap();
    for _ in 0..5 {
        train_step(&mut net, &mut opt, &x, &t, &mut grad);
    }
    let extra = BTreeMap::from([("model_version".to_string(), "4".to_string())]);
    save_checkpoint(&path, &net, Some(&opt), &extra).unwrap();
    let loaded = load_checkpoint(&path).unwrap();
    assert_eq!(loaded.extra, extra);
    assert_eq!(params_of(&loaded.network), params_of(&net));
    assert_eq!(loaded.network.normalizer, net.normalizer);
    let mut net2 = loaded.network;
    let mut opt2 = loaded.optimizer.expect("optimizer state saved");
    assert_eq!(opt2.steps(), 5);
    // Continuing from the checkpoint gives bit-identical parameters to never stopping.
    for _ in 0..3 {
        train_step(&mut net, &mut opt, &x, &t, &mut grad);
        train_step(&mut net2, &mut opt2, &x, &t, &mut grad);
    }
    assert_eq!(params_of(&net2), params_of(&net));
}

#[test]
fn damaged_or_foreign_checkpoints_are_typed_errors() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.safetensors");
    let net = moe_net(4, HeadConfig::Linear { out_dim: 2 }, 3);
    save_checkpoint(&path, &net, None, &BTreeMap::new()).unwrap();
    let bytes = std::fs::read(&path).unwrap();

    let is_ck_err = |r: autodidact_core::Result<autodidact_core::LoadedCheckpoint>,
                     needle: &str| match r {
        Err(CoreError::Checkpoint { reason, .. }) => assert!(
            reason.contains(needle),
            "reason `{reason}` lacks `{needle}`"
        ),
        Err(other) => panic!("expected a checkpoint error mentioning `{needle}`, got {other}"),
        Ok(_) => panic!("a damaged checkpoint loaded"),
    };

    // Truncated at several points, including inside the header and inside the data.
    for cut in [4, 20, bytes.len() / 2, bytes.len() - 1] {
        std::fs::write(&path, &bytes[..cut]).unwrap();
        is_ck_err(load_checkpoint(&path), "");
    }
    // One flipped bit in the tensor data: caught by the checksum.
    let mut flipped = bytes.clone();
    let last = flipped.len() - 3;
    flipped[last] ^= 0x10;
    std::fs::write(&path, &flipped).unwrap();
    is_ck_err(load_checkpoint(&path), "checksum");
    // Not a safetensors file at all.
    std::fs::write(&path, b"{\"hello\": 1}").unwrap();
    is_ck_err(load_checkpoint(&path), "");
    // A snapshot is not a checkpoint.
    Snapshot::from_network(&net, Precision::Bf16)
        .unwrap()
        .save(&path)
        .unwrap();
    is_ck_err(load_checkpoint(&path), "autodidact-snapshot");
    // Missing file: an IO error naming the path.
    match load_checkpoint(&dir.path().join("absent.safetensors")) {
        Err(CoreError::Io { path, .. }) => assert!(path.ends_with("absent.safetensors")),
        other => panic!("expected an IO error, got {other:?}"),
    }
}

#[test]
fn mismatched_checkpoint_is_rejected() {
    // A file whose tensors belong to one network but whose config describes another.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.safetensors");
    let net = moe_net(4, HeadConfig::Linear { out_dim: 2 }, 3);
    save_checkpoint(&path, &net, None, &BTreeMap::new()).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header = std::str::from_utf8(&bytes[8..8 + header_len]).unwrap();
    // Rewrite obs_dim 4 → 6 in the stored config only, keeping the header length.
    let forged = header.replacen("\\\"obs_dim\\\":4", "\\\"obs_dim\\\":6", 1);
    assert_ne!(forged, header, "test must actually change the config");
    assert_eq!(forged.len(), header.len());
    let mut out = bytes[..8].to_vec();
    out.extend_from_slice(forged.as_bytes());
    out.extend_from_slice(&bytes[8 + header_len..]);
    std::fs::write(&path, &out).unwrap();
    match load_checkpoint(&path) {
        Err(CoreError::Checkpoint { reason, .. }) => assert!(reason.contains("shape"), "{reason}"),
        other => panic!("expected a shape mismatch, got {other:?}"),
    }
}

#[test]
fn snapshots_track_f32_and_report_their_error() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    let mut net = moe_net(6, HeadConfig::PolicyValue { n_actions: 4 }, 11);
    let x = random_batch(&mut rng, 64, 6);
    net.normalizer.update(&x).unwrap();
    let want = net.forward(&x, false).unwrap().clone();
    let scale = want.data().iter().fold(0.0f32, |m, v| m.max(v.abs()));
    // Bounds on the mean error relative to the output scale: bf16 keeps 8 mantissa bits
    // (≈0.4 % per weight), f16 11 bits; errors compound over ~6 layers. The maximum is
    // reported too: a token whose top-k choice flips under rounding can differ more.
    for (precision, bound) in [
        (Precision::F32, 1e-6),
        (Precision::Bf16, 2e-2),
        (Precision::F16, 3e-3),
    ] {
        let snap = Snapshot::from_network(&net, precision).unwrap();
        let path = dir.path().join(format!("{precision:?}.safetensors"));
        snap.save(&path).unwrap();
        let snap = Snapshot::load(&path).unwrap();
        let mut out = Tensor::default();
        let mut s = snap.scratch();
        snap.forward(&x, &mut out, &mut s).unwrap();
        let diffs: Vec<f32> = out
            .data()
            .iter()
            .zip(want.data())
            .map(|(a, b)| (a - b).abs() / scale)
            .collect();
        let max = diffs.iter().copied().fold(0.0f32, f32::max);
        let mean = diffs.iter().sum::<f32>() / diffs.len() as f32;
        println!(
            "snapshot {precision:?}: output error relative to max |output|: mean {mean:.2e}, max {max:.2e} (mean bound {bound:.0e})"
        );
        assert!(
            mean <= bound,
            "{precision:?} snapshot mean error {mean} above {bound}"
        );
    }
}

#[test]
fn same_seed_same_threads_is_bit_identical() {
    let run = || {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap();
        pool.install(|| {
            // Large enough that experts, combine and AdamW all take their parallel paths.
            let cfg = NetworkConfig::moe(
                8,
                64,
                1,
                &MoeConfig {
                    capacity_factor: Some(1.25),
                    ..MoeConfig::new(64, 128, 8, 2)
                },
                HeadConfig::Linear { out_dim: 4 },
            );
            let mut net = Network::new(cfg, 42).unwrap();
            let mut opt = AdamW::new(AdamWConfig::new(1e-3)).unwrap();
            let mut rng = ChaCha8Rng::seed_from_u64(5);
            let mut grad = Tensor::default();
            for _ in 0..6 {
                let x = random_batch(&mut rng, 512, 8);
                let t = random_batch(&mut rng, 512, 4);
                train_step(&mut net, &mut opt, &x, &t, &mut grad);
            }
            params_of(&net)
        })
    };
    let (a, b) = (run(), run());
    for ((na, va), (_, vb)) in a.iter().zip(&b) {
        let same = va.iter().zip(vb).all(|(x, y)| x.to_bits() == y.to_bits());
        assert!(same, "parameter {na} differs between two identical runs");
    }
}

#[test]
fn non_finite_loss_or_gradient_skips_the_step() {
    let mut net = moe_net(3, HeadConfig::Linear { out_dim: 1 }, 1);
    let mut opt = AdamW::new(AdamWConfig::new(1e-2)).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    let x = random_batch(&mut rng, 8, 3);
    let mut target = random_batch(&mut rng, 8, 1);
    target.data_mut()[3] = f32::NAN;
    let before = params_of(&net);
    let mut grad = Tensor::default();
    let y = net.forward(&x, true).unwrap();
    let loss = mse(y, &target, &mut grad).unwrap();
    assert!(loss.is_nan());
    net.backward(&grad).unwrap();
    assert!(matches!(
        opt.step(&mut net, loss),
        StepOutcome::Skipped { .. }
    ));
    // A finite loss with an infinite gradient is caught too.
    net.forward(&x, true).unwrap();
    let mut g = Tensor::zeros(&[8, 1]);
    g.data_mut()[0] = f32::INFINITY;
    net.backward(&g).unwrap();
    assert!(matches!(
        opt.step(&mut net, 0.5),
        StepOutcome::Skipped { .. }
    ));
    assert_eq!(opt.skipped(), 2);
    assert_eq!(opt.steps(), 0);
    assert_eq!(
        params_of(&net),
        before,
        "a skipped step must not touch the parameters"
    );
    // Gradients were cleared, so the next good step is unaffected by the bad ones.
    let mut ok = Tensor::default();
    let target = random_batch(&mut rng, 8, 1);
    let y = net.forward(&x, true).unwrap();
    let loss = mse(y, &target, &mut ok).unwrap();
    net.backward(&ok).unwrap();
    assert!(matches!(
        opt.step(&mut net, loss),
        StepOutcome::Applied { .. }
    ));
    // NaN observations are rejected at the boundary.
    let mut bad = x.clone();
    bad.data_mut()[0] = f32::NAN;
    assert!(matches!(net.forward(&bad, false), Err(CoreError::Input(_))));
}

/// A function of one input with four regions of different character.
fn piecewise(x: f32) -> f32 {
    if x < -1.0 {
        4.0 * (x + 1.5) * (x + 1.5) - 0.5
    } else if x < 0.0 {
        (3.0 * std::f32::consts::PI * x).sin()
    } else if x < 1.0 {
        2.0 * (x - 0.5).abs() - 0.5
    } else {
        1.5 - 2.0 * (x - 1.0)
    }
}

fn region(x: f32) -> usize {
    ((x + 2.0).floor() as usize).min(3)
}

/// Mutual information I(region; first-choice expert) in nats — ln 4 if every region has an
/// expert of its own, 0 if routing ignores the region — and the mean router entropy per region.
fn routing_entropy(net: &mut Network, xs: &Tensor) -> (f64, [f64; 4]) {
    net.forward(xs, false).unwrap();
    let moe = net.moe_layers().next().unwrap();
    let (k, e_n) = (moe.config().top_k, moe.config().n_experts);
    let assign = moe.last_assignments();
    let probs = moe.last_router_probs();
    let mut counts = [[0usize; 8]; 4];
    let mut ent = [0.0f64; 4];
    let mut n_r = [0usize; 4];
    for t in 0..xs.rows() {
        let r = region(xs.row(t)[0]);
        counts[r][assign[t * k] as usize] += 1;
        n_r[r] += 1;
        ent[r] -= probs[t * e_n..(t + 1) * e_n]
            .iter()
            .filter(|&&p| p > 0.0)
            .map(|&p| f64::from(p) * f64::from(p).ln())
            .sum::<f64>();
    }
    let total = xs.rows() as f64;
    let mut mi = 0.0;
    for (r, row) in counts.iter().enumerate() {
        for (e, &c) in row.iter().enumerate().take(e_n) {
            let joint = c as f64 / total;
            let pe = (0..4).map(|q| counts[q][e]).sum::<usize>() as f64 / total;
            if joint > 0.0 {
                mi += joint * (joint / (pe * n_r[r] as f64 / total)).ln();
            }
        }
        ent[r] /= n_r[r].max(1) as f64;
    }
    (mi, ent)
}

#[test]
fn experts_specialise_on_a_piecewise_function() {
    let moe_cfg = NetworkConfig {
        obs_dim: 1,
        d_model: 16,
        blocks: vec![BlockConfig::Moe {
            d_hidden: 32,
            n_experts: 4,
            top_k: 2,
            capacity_factor: None,
            router_noise_std: 0.0,
            normalize_gates: true,
            aux_loss_coef: 0.01,
            z_loss_coef: 1e-3,
        }],
        head: HeadConfig::Linear { out_dim: 1 },
        normalize_obs: false,
        obs_clip: 5.0,
    };
    // Dense baseline with the same active parameters per token (k = 2 experts of width 32).
    let dense_cfg = NetworkConfig {
        blocks: vec![BlockConfig::Dense { d_hidden: 64 }],
        ..moe_cfg.clone()
    };
    let grid = Tensor::from_vec(
        (0..400)
            .map(|i| -2.0 + 4.0 * (i as f32 + 0.5) / 400.0)
            .collect(),
        &[400, 1],
    )
    .unwrap();
    let grid_t = Tensor::from_vec(
        grid.data().iter().map(|&x| piecewise(x)).collect(),
        &[400, 1],
    )
    .unwrap();

    let mut results = Vec::new();
    for (name, cfg) in [("moe", moe_cfg), ("dense", dense_cfg)] {
        let mut net = Network::new(cfg, 3).unwrap();
        let before = if name == "moe" {
            Some(routing_entropy(&mut net, &grid))
        } else {
            None
        };
        let mut opt = AdamW::new(AdamWConfig {
            schedule: autodidact_core::LrSchedule::WarmupCosine {
                warmup_steps: 100,
                total_steps: 3000,
                final_ratio: 0.05,
            },
            ..AdamWConfig::new(3e-3)
        })
        .unwrap();
        let mut rng = ChaCha8Rng::seed_from_u64(17);
        let mut grad = Tensor::default();
        for _ in 0..3000 {
            let x = Tensor::from_vec(
                (0..128).map(|_| rng.random_range(-2.0f32..2.0)).collect(),
                &[128, 1],
            )
            .unwrap();
            let t = Tensor::from_vec(x.data().iter().map(|&v| piecewise(v)).collect(), &[128, 1])
                .unwrap();
            train_step(&mut net, &mut opt, &x, &t, &mut grad);
        }
        let y = net.forward(&grid, false).unwrap().clone();
        let loss = mse(&y, &grid_t, &mut grad).unwrap();
        let after = if name == "moe" {
            Some(routing_entropy(&mut net, &grid))
        } else {
            None
        };
        println!(
            "{name}: final grid MSE {loss:.4}, params {} (active {})",
            net.num_params(),
            net.active_params()
        );
        if let (Some(b), Some(a)) = (before, after) {
            println!(
                "moe: I(region; expert) {:.3} → {:.3} nats (ln 4 = 1.386); router entropy per region {:?} → {:?}",
                b.0, a.0, b.1, a.1
            );
            assert!(
                a.0 > 0.6 && a.0 > b.0 + 0.3,
                "experts did not specialise by region: I(region; expert) {:.3} → {:.3}",
                b.0,
                a.0
            );
            for r in 0..4 {
                assert!(
                    a.1[r] < b.1[r],
                    "router entropy in region {r} did not fall: {:.3} → {:.3}",
                    b.1[r],
                    a.1[r]
                );
            }
        }
        results.push((name, loss));
    }
    let moe_loss = results[0].1;
    assert!(
        moe_loss < 0.01,
        "MoE did not fit the piecewise function: MSE {moe_loss}"
    );
}

#[test]
fn gemm_parallel_mode_matches_single_thread() {
    // One expert and two threads: the layer splits each GEMM across the pool instead of
    // running one task per expert. Its results must match a one-thread run.
    use autodidact_core::MoeLayer;
    let run = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| {
            let mut rng = ChaCha8Rng::seed_from_u64(8);
            let mut layer = MoeLayer::new("moe", MoeConfig::new(128, 256, 1, 1), &mut rng).unwrap();
            let x = random_batch(&mut rng, 1024, 128);
            let dy = random_batch(&mut rng, 1024, 128);
            let (mut y, mut dx) = (Tensor::default(), Tensor::default());
            layer.forward(&x, &mut y, true).unwrap();
            layer.backward(&x, &dy, &mut dx).unwrap();
            let mut grads = Vec::new();
            layer.visit_params(&mut |p| grads.extend_from_slice(p.grad.data()));
            (y.into_vec(), dx.into_vec(), grads)
        })
    };
    let (a, b) = (run(2), run(1));
    for (name, x, y) in [
        ("output", &a.0, &b.0),
        ("input grad", &a.1, &b.1),
        ("param grads", &a.2, &b.2),
    ] {
        let scale = y.iter().fold(0.0f32, |m, v| m.max(v.abs())).max(1e-6);
        let worst = x
            .iter()
            .zip(y)
            .map(|(p, q)| (p - q).abs())
            .fold(0.0f32, f32::max)
            / scale;
        assert!(
            worst < 1e-5,
            "{name}: 2-thread split GEMMs differ from 1 thread by {worst:e} of scale"
        );
    }
}
