//! Times the network work of one SAC update at the agent's default shapes (Pendulum: 3
//! observation values, 1 action; d_model 64, one MoE block of 4 experts of 64, top-2; batch
//! 256) on the calling thread: the same calls, in the same order, as `agent/src/sac.rs`.
//!
//! `cargo run --release -p autodidact-core --example sac_update [-- ITERS]`

use std::time::Instant;

use autodidact_core::optim::polyak_update;
use autodidact_core::{
    AdamW, AdamWConfig, BlockConfig, HeadConfig, Network, NetworkConfig, SquashedGaussian, Tensor,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn config(obs_dim: usize, out_dim: usize) -> NetworkConfig {
    NetworkConfig {
        obs_dim,
        d_model: 64,
        blocks: vec![BlockConfig::Moe {
            d_hidden: 64,
            n_experts: 4,
            top_k: 2,
            capacity_factor: None,
            router_noise_std: 0.0,
            normalize_gates: true,
            aux_loss_coef: 0.01,
            z_loss_coef: 1e-3,
        }],
        head: HeadConfig::Linear { out_dim },
        normalize_obs: false,
        obs_clip: 10.0,
    }
}

fn fill(rng: &mut ChaCha8Rng, t: &mut Tensor, rows: usize, cols: usize) {
    t.resize(&[rows, cols]);
    for v in t.data_mut() {
        *v = rng.random::<f32>() * 2.0 - 1.0;
    }
}

fn concat(l: &Tensor, r: &Tensor, out: &mut Tensor) {
    let (rows, a, b) = (l.rows(), l.cols(), r.cols());
    out.resize(&[rows, a + b]);
    for i in 0..rows {
        out.row_mut(i)[..a].copy_from_slice(l.row(i));
        out.row_mut(i)[a..].copy_from_slice(r.row(i));
    }
}

fn main() {
    // On one thread (`run.learner_threads = 1`); the agent's SAC learner, by default, runs
    // the twin critics side by side on two.
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap();
    pool.install(run);
}

fn run() {
    let iters: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(500);
    let (rows, obs_dim, a_dim) = (256, 3, 1);
    let mut actor = Network::new(config(obs_dim, 2 * a_dim), 1).unwrap();
    let mut q1 = Network::new(config(obs_dim + a_dim, 1), 2).unwrap();
    let mut q2 = Network::new(config(obs_dim + a_dim, 1), 3).unwrap();
    let mut q1t = q1.clone();
    let mut q2t = q2.clone();
    let mut opts: Vec<AdamW> = (0..3)
        .map(|_| AdamW::new(AdamWConfig::new(1e-3)).unwrap())
        .collect();
    let mut pi = SquashedGaussian::new(a_dim).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let (mut obs, mut next, mut act, mut eps) = Default::default();
    let (mut x, mut grad, mut d_a) = (Tensor::default(), Tensor::default(), Tensor::default());
    fill(&mut rng, &mut obs, rows, obs_dim);
    fill(&mut rng, &mut next, rows, obs_dim);
    fill(&mut rng, &mut act, rows, a_dim);
    let mut times = Vec::with_capacity(iters);
    for it in 0..iters + 20 {
        let t0 = Instant::now();
        fill(&mut rng, &mut eps, rows, a_dim);
        let raw = actor.forward(&next, false).unwrap();
        let (a_next, _) = pi.forward(raw, &eps).unwrap();
        concat(&next, a_next, &mut x);
        let y: Vec<f32> = q1t.forward(&x, false).unwrap().data().to_vec();
        let _ = q2t.forward(&x, false).unwrap();
        concat(&obs, &act, &mut x);
        let (o1, rest) = opts.split_at_mut(1);
        for (net, opt) in [(&mut q1, &mut o1[0]), (&mut q2, &mut rest[0])] {
            let q = net.forward(&x, true).unwrap();
            grad.resize(&[rows, 1]);
            for ((g, &qv), &yv) in grad.data_mut().iter_mut().zip(q.data()).zip(&y) {
                *g = (qv - yv) / rows as f32;
            }
            net.backward(&grad).unwrap();
            opt.step(net, 0.0);
        }
        let raw = actor.forward(&obs, true).unwrap();
        let (a, _) = pi.forward(raw, &eps).unwrap();
        concat(&obs, a, &mut x);
        d_a.resize(&[rows, a_dim]);
        d_a.fill(0.0);
        for net in [&mut q1, &mut q2] {
            let _ = net.forward(&x, true).unwrap();
            grad.resize(&[rows, 1]);
            grad.fill(-1.0 / rows as f32);
            let d_x = net.input_gradient(&grad).unwrap();
            for i in 0..rows {
                d_a.data_mut()[i] += d_x.row(i)[obs_dim];
            }
        }
        let lp = vec![0.1 / rows as f32; rows];
        let d_raw = pi.backward(&d_a, &lp).unwrap().clone();
        actor.backward(&d_raw).unwrap();
        opts[2].step(&mut actor, 0.0);
        polyak_update(&mut q1t, &q1, 0.005).unwrap();
        polyak_update(&mut q2t, &q2, 0.005).unwrap();
        if it >= 20 {
            times.push(t0.elapsed().as_secs_f64() * 1e3);
        }
    }
    times.sort_by(f64::total_cmp);
    println!(
        "sac update (network work): median {:.3} ms, p10 {:.3}, p90 {:.3} over {iters}",
        times[iters / 2],
        times[iters / 10],
        times[iters * 9 / 10]
    );
}
