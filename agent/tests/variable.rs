//! The acting weights are swapped whole: under a publisher that never pauses, every forward
//! pass an actor makes matches exactly one published model.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use autodidact::variable::VariableSource;
use autodidact_core::{
    BlockConfig, HeadConfig, Network, NetworkConfig, Precision, Snapshot, Tensor,
};

fn nets(n: usize) -> Vec<Network> {
    let cfg = NetworkConfig {
        obs_dim: 4,
        d_model: 16,
        blocks: vec![BlockConfig::Moe {
            d_hidden: 16,
            n_experts: 4,
            top_k: 2,
            capacity_factor: None,
            router_noise_std: 0.0,
            normalize_gates: true,
            aux_loss_coef: 0.01,
            z_loss_coef: 1e-3,
        }],
        head: HeadConfig::DuelingQ { n_actions: 3 },
        normalize_obs: false,
        obs_clip: 5.0,
    };
    (0..n)
        .map(|s| Network::new(cfg.clone(), s as u64).unwrap())
        .collect()
}

#[test]
fn actors_never_read_a_torn_model_under_fast_publishing() {
    const MODELS: usize = 32;
    const PUBLISHES: u64 = 20_000;
    let nets = Arc::new(nets(MODELS));
    let probe = Tensor::from_vec(vec![0.1, -0.4, 0.03, 0.7], &[1, 4]).unwrap();
    // The output every model gives on the probe, computed before any publishing.
    let expected: Arc<Vec<Vec<f32>>> = Arc::new(
        nets.iter()
            .map(|n| {
                let s = Snapshot::from_network(n, Precision::Bf16).unwrap();
                let mut out = Tensor::default();
                s.forward(&probe, &mut out, &mut s.scratch()).unwrap();
                out.data().to_vec()
            })
            .collect(),
    );
    for w in expected.windows(2) {
        assert_ne!(w[0], w[1], "models must be distinguishable by their output");
    }
    let source = Arc::new(VariableSource::new(
        Snapshot::from_network(&nets[0], Precision::Bf16).unwrap(),
    ));
    let done = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = (0..2)
        .map(|_| {
            let (source, expected, done, probe) = (
                source.clone(),
                expected.clone(),
                done.clone(),
                probe.clone(),
            );
            std::thread::spawn(move || {
                let (mut out, mut reads, mut seen) = (Tensor::default(), 0u64, 0u64);
                let mut last_gen = 0;
                while !done.load(Ordering::Acquire) {
                    let w = source.latest();
                    let mut scratch = w.snapshot.scratch();
                    w.snapshot.forward(&probe, &mut out, &mut scratch).unwrap();
                    let want = &expected[(w.generation % MODELS as u64) as usize];
                    assert_eq!(
                        out.data(),
                        &want[..],
                        "generation {} read a torn or wrong model",
                        w.generation
                    );
                    assert!(w.generation >= last_gen, "generations go forward");
                    if w.generation != last_gen {
                        seen += 1;
                    }
                    last_gen = w.generation;
                    reads += 1;
                }
                (reads, seen)
            })
        })
        .collect();
    for i in 1..=PUBLISHES {
        let k = (i % MODELS as u64) as usize;
        let g = source.publish(Snapshot::from_network(&nets[k], Precision::Bf16).unwrap());
        assert_eq!(g, i);
    }
    done.store(true, Ordering::Release);
    for r in readers {
        let (reads, seen) = r.join().unwrap();
        assert!(reads > 100, "reader made {reads} reads");
        assert!(seen > 10, "reader saw only {seen} new models");
    }
}
