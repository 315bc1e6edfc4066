//! One transition's whole path, with real parts: a native environment produces it, an
//! untrained MoE network (through a bf16 snapshot) chooses the action, the replay writer
//! commits it to a real SQLite file, the prioritized sampler serves it back with an n-step
//! target, the training core takes a gradient step on it, priorities go back to the store,
//! and the model is checkpointed and read back. This is the skeleton the agent's learning loop
//! fills in.

use std::collections::BTreeMap;

use autodidact_core::loss::huber;
use autodidact_core::optim::StepOutcome;
use autodidact_core::precision::Precision;
use autodidact_core::{
    AdamW, AdamWConfig, BlockConfig, HeadConfig, Network, NetworkConfig, Snapshot, Tensor,
};
use autodidact_envs::{Action, Env};
use autodidact_replay::{
    ActionRef, ActionSpace, Dtype, EpisodeEnd, NStep, ReplayStore, RunSpec, SampleBatch,
    StoreOptions, WriterOptions,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn q_network(obs_dim: usize, n_actions: usize) -> Network {
    let cfg = NetworkConfig {
        obs_dim,
        d_model: 32,
        blocks: vec![BlockConfig::Moe {
            d_hidden: 64,
            n_experts: 4,
            top_k: 2,
            capacity_factor: Some(1.5),
            router_noise_std: 0.0,
            normalize_gates: true,
            aux_loss_coef: 0.01,
            z_loss_coef: 1e-3,
        }],
        head: HeadConfig::DuelingQ { n_actions },
        normalize_obs: true,
        obs_clip: 5.0,
    };
    Network::new(cfg, 1).unwrap()
}

#[test]
fn environment_to_replay_to_gradient_and_back() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("replay.sqlite");
    let store = ReplayStore::open(&db, StoreOptions::default()).unwrap();
    let run = store
        .create_run(&RunSpec {
            env_id: "cartpole".into(),
            obs_dims: vec![4],
            obs_dtype: Dtype::F32,
            action_space: ActionSpace::Discrete { n: 2 },
            config: serde_json::json!({"test": "transition_flow"}),
            code_version: env!("CARGO_PKG_VERSION").into(),
        })
        .unwrap();
    let writer = store.start_writer(WriterOptions::default()).unwrap();

    let mut env = autodidact_envs::make("cartpole").unwrap();
    let mut net = q_network(4, 2);
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let snapshot = Snapshot::from_network(&net, Precision::Bf16).unwrap();
    let mut scratch = snapshot.scratch();
    let (mut q, mut obs_t) = (Tensor::default(), Tensor::zeros(&[1, 4]));

    // Act: ε-greedy over the snapshot's Q-values, every step recorded.
    let (mut written_steps, mut episodes, mut terminated) = (0usize, 0usize, 0usize);
    for ep in 0..20u64 {
        let (mut obs, _) = env.reset(Some(ep)).unwrap();
        let mut ew = writer.writer().begin_episode(&run, Some(0));
        loop {
            obs_t.data_mut().copy_from_slice(&obs);
            net.normalizer.update(&obs_t).unwrap();
            snapshot.forward(&obs_t, &mut q, &mut scratch).unwrap();
            let greedy = if q.data()[1] > q.data()[0] { 1 } else { 0 };
            let a = if rng.random::<f32>() < 0.3 {
                rng.random_range(0..2)
            } else {
                greedy
            };
            let step = env.step(&Action::Discrete(a)).unwrap();
            ew.push(
                &obs,
                ActionRef::Discrete(a),
                step.reward as f32,
                Some(q.data()[a as usize]),
            )
            .unwrap();
            written_steps += 1;
            if step.done() {
                let end = if step.terminated {
                    EpisodeEnd::Terminated
                } else {
                    EpisodeEnd::Truncated
                };
                terminated += usize::from(step.terminated);
                ew.finish(&step.obs, end).unwrap();
                break;
            }
            obs = step.obs;
        }
        episodes += 1;
    }
    writer.flush().unwrap();

    // The store holds exactly what was lived, and says so from its own counters.
    let summary = store.summary().unwrap();
    assert_eq!(summary.episodes_kept(), episodes as i64);
    assert_eq!(summary.transitions_kept(), written_steps as i64);
    assert!(
        terminated > 0,
        "random-ish CartPole episodes end by termination"
    );

    // Learn: a prioritized n-step batch → double-Q TD targets → Huber with importance weights.
    let sampler = store.sampler();
    let mut batch = SampleBatch::default();
    let mut opt = AdamW::new(AdamWConfig {
        max_grad_norm: Some(10.0),
        ..AdamWConfig::new(1e-3)
    })
    .unwrap();
    let mut target_net = net.clone();
    let (mut target, mut grad) = (Tensor::default(), Tensor::default());
    for _ in 0..5 {
        sampler
            .sample_prioritized(&mut rng, 64, NStep { n: 3, gamma: 0.99 }, 0.4, &mut batch)
            .unwrap();
        assert_eq!(batch.len, 64);
        assert!(
            batch
                .discounts
                .iter()
                .all(|&d| d == 0.0 || (d > 0.0 && d <= 0.99)),
            "discount is 0 after termination, γ^k otherwise"
        );
        assert!(batch.weights.iter().all(|&w| w > 0.0 && w <= 1.0 + 1e-6));
        let next = Tensor::from_vec(batch.next_obs[..64 * 4].to_vec(), &[64, 4]).unwrap();
        let next_online = net.forward(&next, false).unwrap().clone();
        let next_target = target_net.forward(&next, false).unwrap().clone();
        let obs = Tensor::from_vec(batch.obs[..64 * 4].to_vec(), &[64, 4]).unwrap();
        let pred = net.forward(&obs, true).unwrap().clone();
        target.resize(&[64, 2]);
        target.data_mut().copy_from_slice(pred.data());
        let mut td = vec![0.0f32; 64];
        for (i, td_i) in td.iter_mut().enumerate() {
            let best = if next_online.row(i)[1] > next_online.row(i)[0] {
                1
            } else {
                0
            };
            let y = batch.rewards[i] + batch.discounts[i] * next_target.row(i)[best];
            let a = batch.actions[i] as usize;
            *td_i = y - pred.row(i)[a];
            target.row_mut(i)[a] = y;
        }
        let loss = huber(&pred, &target, 1.0, Some(&batch.weights[..64]), &mut grad).unwrap();
        net.backward(&grad).unwrap();
        let total = loss + net.aux_loss();
        assert!(
            matches!(opt.step(&mut net, total), StepOutcome::Applied { .. }),
            "finite loss {total} must give an applied step"
        );
        let prios: Vec<f32> = td.iter().map(|t| t.abs() + 1e-3).collect();
        assert_eq!(
            sampler.update_priorities(&batch.ids[..64], &prios).unwrap(),
            64
        );
        autodidact_core::optim::polyak_update(&mut target_net, &net, 0.1).unwrap();
    }
    let stats = net.moe_stats();
    assert_eq!(
        stats[0].routed.iter().sum::<usize>(),
        64 * 2,
        "every token routed to k = 2 experts"
    );
    writer.close().unwrap();

    // Checkpoint the model and read it back: same outputs.
    let ck = dir.path().join("model.safetensors");
    autodidact_core::save_checkpoint(
        &ck,
        &net,
        Some(&opt),
        &BTreeMap::from([("model_version".into(), "1".into())]),
    )
    .unwrap();
    let mut back = autodidact_core::load_checkpoint(&ck).unwrap().network;
    let probe = Tensor::from_vec(batch.obs[..8 * 4].to_vec(), &[8, 4]).unwrap();
    let a = net.forward(&probe, false).unwrap().clone();
    let b = back.forward(&probe, false).unwrap().clone();
    assert_eq!(a.data(), b.data());

    // Another reader opens the file read-only and sees the same experience.
    drop(store);
    let ro = ReplayStore::open_read_only(&db).unwrap();
    assert_eq!(
        ro.summary().unwrap().transitions_kept(),
        written_steps as i64
    );
}
