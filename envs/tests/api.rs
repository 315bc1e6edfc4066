//! Registry, wrappers, vectorised stepping, non-stationary worlds, grid world, and the Rust
//! `serve` side of the protocol over a real TCP socket.

use std::net::TcpListener;

use autodidact_envs::nonstationary::CartPoleSchedule;
use autodidact_envs::wrappers::{
    ClipObservation, EpisodeStatistics, NormalizeObservation, TimeLimit, TransformReward,
};
use autodidact_envs::{
    Action, CartPole, CartPoleParams, Drift, DriftingBandit, Env, EnvError, NonStationaryCartPole,
    Registry, Space, VecEnv, make,
};

#[test]
fn unknown_id_lists_the_known_ones() {
    let e = make("cartpol").err().unwrap();
    let msg = e.to_string();
    for id in [
        "cartpole",
        "CartPole-v1",
        "MountainCar-v0",
        "Pendulum-v1",
        "bandit",
        "gridworld",
        "gym:<GymnasiumId>",
        "exec:<command line>",
        "tcp:<host:port>",
    ] {
        assert!(msg.contains(id), "`{id}` missing from: {msg}");
    }
}

#[test]
fn every_builtin_id_builds_and_steps() {
    let reg = Registry::with_builtins();
    for id in reg.ids().into_iter().filter(|i| !i.contains(':')) {
        let mut env = reg.make(&id).unwrap();
        let (obs, _) = env.reset(Some(0)).unwrap();
        assert_eq!(obs.len(), env.observation_space().flat_dim(), "{id}");
        let mut rng = rand::rng();
        let a = env.action_space().sample(&mut rng);
        let s = env.step(&a).unwrap();
        assert_eq!(s.obs.len(), obs.len(), "{id}");
        assert!(s.reward.is_finite(), "{id}");
    }
}

#[test]
fn native_time_limits_match_gym_make() {
    for (id, limit, action) in [
        ("cartpole", 500, None),
        ("mountaincar", 200, Some(Action::Discrete(1))),
        ("pendulum", 200, Some(Action::Continuous(vec![0.0]))),
    ] {
        let mut env = make(id).unwrap();
        env.reset(Some(1)).unwrap();
        let mut n = 0;
        let mut obs = vec![0.0f32; 4];
        loop {
            // CartPole needs a balancing policy to survive to the limit.
            let a = action.clone().unwrap_or(Action::Discrete(
                (obs[2] + 0.5 * obs[3] + 0.01 * obs[0] + 0.1 * obs[1] > 0.0) as i64,
            ));
            let s = env.step(&a).unwrap();
            n += 1;
            obs = s.obs.clone();
            obs.resize(4, 0.0);
            if s.done() {
                assert!(s.truncated && !s.terminated, "{id} ended by time limit");
                break;
            }
        }
        assert_eq!(n, limit, "{id}");
    }
}

#[test]
fn step_before_reset_and_bad_actions_are_typed_errors() {
    let mut env = make("cartpole").unwrap();
    assert!(matches!(
        env.step(&Action::Discrete(0)),
        Err(EnvError::NeedsReset)
    ));
    env.reset(None).unwrap();
    assert!(matches!(
        env.step(&Action::Discrete(2)),
        Err(EnvError::InvalidAction(_))
    ));
    let mut p = make("pendulum").unwrap();
    p.reset(None).unwrap();
    assert!(matches!(
        p.step(&Action::Continuous(vec![2.5])),
        Err(EnvError::InvalidAction(_))
    ));
    let mut clipped = make("pendulum-clip").unwrap();
    clipped.reset(Some(0)).unwrap();
    let a = clipped.step(&Action::Continuous(vec![50.0])).unwrap();
    let mut reference = make("pendulum").unwrap();
    reference.reset(Some(0)).unwrap();
    assert_eq!(
        a.obs,
        reference.step(&Action::Continuous(vec![2.0])).unwrap().obs
    );
}

#[test]
fn same_seed_same_episode_different_seed_different_start() {
    let mut a = make("cartpole").unwrap();
    let mut b = make("cartpole").unwrap();
    let (oa, _) = a.reset(Some(9)).unwrap();
    let (ob, _) = b.reset(Some(9)).unwrap();
    assert_eq!(oa, ob);
    for t in 0..20 {
        let act = Action::Discrete(t % 2);
        assert_eq!(a.step(&act).unwrap(), b.step(&act).unwrap());
    }
    assert_ne!(a.reset(Some(10)).unwrap().0, oa);
}

#[test]
fn registry_rejects_duplicates_and_builds_custom_ids() {
    let mut reg = Registry::with_builtins();
    assert!(matches!(
        reg.register("cartpole", || Ok(Box::new(CartPole::new()))),
        Err(EnvError::DuplicateId(_))
    ));
    assert!(matches!(
        reg.register("gym:Foo", || Ok(Box::new(CartPole::new()))),
        Err(EnvError::DuplicateId(_))
    ));
    reg.register("heavy-cartpole", || {
        let p = CartPoleParams {
            masspole: 0.5,
            ..CartPoleParams::default()
        };
        Ok(Box::new(CartPole::with_params(p)?))
    })
    .unwrap();
    reg.register_prefix("len:", |arg| {
        let length: f64 = arg
            .parse()
            .map_err(|_| EnvError::Config(format!("bad length `{arg}`")))?;
        Ok(Box::new(CartPole::with_params(CartPoleParams {
            length,
            ..CartPoleParams::default()
        })?))
    })
    .unwrap();
    assert!(reg.make("heavy-cartpole").is_ok());
    assert!(reg.make("len:0.8").is_ok());
    assert!(matches!(reg.make("len:abc"), Err(EnvError::Config(_))));
    assert!(matches!(reg.make("len:-1"), Err(EnvError::Config(_))));
}

#[test]
fn vec_env_auto_resets_in_the_same_step() {
    let mut v = VecEnv::make("cartpole", 3).unwrap();
    let (obs, _) = v.reset(Some(100)).unwrap();
    assert_eq!(obs.len(), 3 * 4);
    // Instance i got seed 100 + i.
    let mut single = make("cartpole").unwrap();
    assert_eq!(single.reset(Some(101)).unwrap().0, obs[4..8].to_vec());
    // Always push right: every instance terminates within a few dozen steps.
    let actions = vec![Action::Discrete(1); 3];
    let mut shadow = make("cartpole").unwrap();
    shadow.reset(Some(100)).unwrap();
    let mut ended = [false; 3];
    for _ in 0..100 {
        let s = v.step(&actions).unwrap();
        let sh = shadow.step(&Action::Discrete(1)).unwrap();
        for i in 0..3 {
            if s.terminated[i] || s.truncated[i] {
                let fin = s.final_obs[i].as_ref().expect("final_obs on episode end");
                assert!(
                    fin[2].abs() > 0.2 || fin[0].abs() > 2.4,
                    "final obs is past the threshold"
                );
                let next = &s.obs[i * 4..i * 4 + 4];
                assert!(
                    next.iter().all(|x| x.abs() <= 0.05),
                    "obs is the new episode's first: {next:?}"
                );
                assert!(s.reset_infos[i].is_some());
                if i == 0 && !ended[0] {
                    assert!(
                        sh.terminated,
                        "instance 0 ends exactly when its shadow does"
                    );
                    assert_eq!(fin, &sh.obs);
                }
                ended[i] = true;
            } else {
                assert!(s.final_obs[i].is_none() && s.reset_infos[i].is_none());
                if i == 0 && !ended[0] {
                    assert_eq!(&s.obs[0..4], &sh.obs[..]);
                }
            }
        }
        if ended.iter().all(|&e| e) {
            break;
        }
    }
    assert!(ended.iter().all(|&e| e));
    assert!(matches!(
        v.step(&actions[..2]),
        Err(EnvError::InvalidAction(_))
    ));
}

#[cfg(feature = "rayon")]
#[test]
fn vec_env_parallel_equals_sequential() {
    let mut a = VecEnv::make("cartpole", 4).unwrap();
    let mut b = VecEnv::make("cartpole", 4).unwrap();
    b.set_parallel(true).unwrap();
    assert_eq!(a.reset(Some(1)).unwrap(), b.reset(Some(1)).unwrap());
    for t in 0..300 {
        let acts: Vec<_> = (0..4)
            .map(|i| Action::Discrete(((t + i) % 2) as i64))
            .collect();
        assert_eq!(a.step(&acts).unwrap(), b.step(&acts).unwrap());
    }
}

#[test]
fn vec_env_rejects_mixed_spaces() {
    let envs = vec![make("cartpole").unwrap(), make("mountaincar").unwrap()];
    assert!(matches!(VecEnv::new(envs), Err(EnvError::Config(_))));
    assert!(VecEnv::new(vec![]).is_err());
}

#[test]
fn wrappers_compose() {
    let env = TimeLimit::new(CartPole::new(), 5).unwrap();
    let env = TransformReward::new(env, 2.0, -1.5, 1.5).unwrap();
    let env = ClipObservation::new(env, -0.01, 0.01).unwrap();
    let mut env = EpisodeStatistics::new(env);
    env.reset(Some(0)).unwrap();
    for t in 1..=5 {
        let s = env.step(&Action::Discrete(0)).unwrap();
        assert_eq!(s.reward, 1.5, "1.0 * 2 clipped to 1.5");
        assert!(s.obs.iter().all(|x| x.abs() <= 0.01));
        assert_eq!(s.truncated, t == 5);
        if t == 5 {
            assert_eq!(s.info["episode"]["r"], 7.5);
            assert_eq!(s.info["episode"]["l"], 5);
        } else {
            assert!(!s.info.contains_key("episode"));
        }
    }
    assert_eq!(env.finished().collect::<Vec<_>>(), vec![&(7.5, 5)]);
    assert!(TimeLimit::new(CartPole::new(), 0).is_err());
    assert!(ClipObservation::new(CartPole::new(), 1.0, -1.0).is_err());
}

#[test]
fn normalize_observation_standardises() {
    let mut env = NormalizeObservation::new(make("mountaincar").unwrap());
    env.reset(Some(0)).unwrap();
    let mut xs = Vec::new();
    for t in 0..2000 {
        let s = env
            .step(&Action::Discrete(if t % 40 < 20 { 0 } else { 2 }))
            .unwrap();
        xs.push(s.obs[0] as f64);
        if s.done() {
            env.reset(None).unwrap();
        }
    }
    let tail = &xs[1000..];
    let mean = tail.iter().sum::<f64>() / tail.len() as f64;
    let var = tail.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / tail.len() as f64;
    assert!(
        mean.abs() < 0.5 && (0.3..3.0).contains(&var),
        "mean {mean} var {var}"
    );
}

#[test]
fn nonstationary_cartpole_changes_physics_on_schedule_and_command() {
    let every = 30;
    let mut env = NonStationaryCartPole::pole_length_cycle(every).unwrap();
    let control = env.control();
    let (obs, info) = env.reset(Some(0)).unwrap();
    assert_eq!(obs.len(), 4, "the change is never in the observation");
    assert_eq!(info["pole_length"], 0.5);
    let mut lengths = Vec::new();
    for _ in 0..70 {
        let s = env.step(&Action::Discrete(0)).unwrap();
        lengths.push(s.info["pole_length"].as_f64().unwrap());
        if s.done() {
            env.reset(None).unwrap();
        }
    }
    assert_eq!(lengths[0], 0.5);
    assert_eq!(
        lengths[every as usize], 1.0,
        "switches after `every` total steps, across episodes"
    );
    assert_eq!(lengths[2 * every as usize], 0.5);
    // On command, and the physics really change: same state, same action, different result.
    let mut plain = CartPole::new();
    plain.set_state([0.0, 0.0, 0.1, 0.0]);
    let base = plain.step(&Action::Discrete(1)).unwrap().obs;
    control.set(CartPoleParams {
        gravity: 20.0,
        ..CartPoleParams::default()
    });
    env.reset(None).unwrap();
    let s = env.step(&Action::Discrete(1)).unwrap();
    assert_eq!(s.info["gravity"], 20.0);
    assert_eq!(s.info["phase"], "commanded");
    let mut heavy = CartPole::with_params(CartPoleParams {
        gravity: 20.0,
        ..CartPoleParams::default()
    })
    .unwrap();
    heavy.set_state([0.0, 0.0, 0.1, 0.0]);
    assert_ne!(heavy.step(&Action::Discrete(1)).unwrap().obs, base);
    control.clear();
    assert!(
        NonStationaryCartPole::new(CartPoleSchedule::Cycle {
            every: 0,
            phases: vec![]
        })
        .is_err()
    );
}

#[test]
fn bandit_means_drift_and_regret_is_reported() {
    let mut b = DriftingBandit::new(5, Drift::RandomWalk { sigma: 0.05 }, 0.1).unwrap();
    let (obs, info) = b.reset(Some(4)).unwrap();
    assert_eq!(obs, vec![1.0]);
    let m0: Vec<f64> = serde_json::from_value(info["arm_means"].clone()).unwrap();
    let best = info["best_arm"].as_u64().unwrap() as i64;
    let s = b.step(&Action::Discrete(best)).unwrap();
    assert_eq!(s.info["regret"], 0.0);
    for _ in 0..500 {
        b.step(&Action::Discrete(0)).unwrap();
    }
    let drift: f64 = m0.iter().zip(b.means()).map(|(a, c)| (a - c).abs()).sum();
    assert!(drift > 0.1, "means moved by {drift}");
    // Drift continues across unseeded resets; a seed restarts the world.
    let before = b.means().to_vec();
    b.reset(None).unwrap();
    assert_eq!(b.means(), &before[..]);
    b.reset(Some(4)).unwrap();
    assert_eq!(b.means(), &m0[..]);
    let mut still = DriftingBandit::new(3, Drift::None, 0.0).unwrap();
    still.reset(Some(1)).unwrap();
    let m = still.means().to_vec();
    let r = still.step(&Action::Discrete(2)).unwrap().reward;
    assert_eq!(r, m[2], "noise 0 pays the mean");
    assert_eq!(still.means(), &m[..]);
}

#[test]
fn gridworld_key_is_learnable_by_tabular_q() {
    // The key/door world should be learnable quickly; Q-learning over (cell, key) must find
    // the optimal 10-step path (2 down to the key, then 8 through the door to the goal).
    let mut env = make("gridworld-key").unwrap();
    let n_obs = env.observation_space().flat_dim();
    let cells = n_obs - 1;
    let key_of = |o: &[f32]| -> usize {
        let cell = o[..cells].iter().position(|&x| x == 1.0).unwrap();
        cell * 2 + o[cells] as usize
    };
    // Optimistic start values make the greedy policy explore systematically.
    let mut q = vec![[1.0f64; 4]; cells * 2];
    let mut rng = rand::rngs::StdRng::seed_from_u64(0);
    use rand::{Rng, SeedableRng};
    for _ in 0..400 {
        let (o, _) = env.reset(None).unwrap();
        let mut s = key_of(&o);
        loop {
            let a = if rng.random::<f64>() < 0.1 {
                rng.random_range(0..4)
            } else {
                (0..4).max_by(|&x, &y| q[s][x].total_cmp(&q[s][y])).unwrap()
            };
            let st = env.step(&Action::Discrete(a as i64)).unwrap();
            let s2 = key_of(&st.obs);
            let target = st.reward
                + if st.terminated {
                    0.0
                } else {
                    0.95 * q[s2].iter().cloned().fold(f64::MIN, f64::max)
                };
            q[s][a] += 0.5 * (target - q[s][a]);
            s = s2;
            if st.done() {
                break;
            }
        }
    }
    let (o, _) = env.reset(None).unwrap();
    let mut s = key_of(&o);
    for t in 1..=50 {
        let a = (0..4).max_by(|&x, &y| q[s][x].total_cmp(&q[s][y])).unwrap();
        let st = env.step(&Action::Discrete(a as i64)).unwrap();
        if st.terminated {
            assert_eq!(t, 10, "greedy path length");
            return;
        }
        s = key_of(&st.obs);
    }
    panic!("greedy policy did not reach the goal");
}

#[test]
fn rust_env_served_over_a_real_socket() {
    use autodidact_envs::protocol::serve;
    use autodidact_envs::{RemoteConfig, RemoteEnv, Transport};
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let server = std::thread::spawn(move || {
        let (sock, _) = listener.accept().unwrap();
        sock.set_nodelay(true).unwrap();
        let mut env = make("Pendulum-v1").unwrap();
        serve(
            env.as_mut(),
            "rust-pendulum",
            std::io::BufReader::new(sock.try_clone().unwrap()),
            sock,
        )
    });
    // Busy-polling on: exercises the spin-then-block read path (off by default).
    let cfg = RemoteConfig {
        spin: std::time::Duration::from_micros(200),
        ..RemoteConfig::default()
    };
    let mut remote = RemoteEnv::connect(
        Transport::Tcp {
            addr: addr.to_string(),
        },
        cfg,
    )
    .unwrap();
    assert_eq!(remote.name(), Some("rust-pendulum"));
    assert_eq!(
        *remote.action_space(),
        Space::uniform_box(-2.0, 2.0, vec![1])
    );
    let mut local = make("Pendulum-v1").unwrap();
    assert_eq!(
        remote.reset(Some(5)).unwrap().0,
        local.reset(Some(5)).unwrap().0
    );
    for t in 0..200 {
        let a = Action::Continuous(vec![(t as f32 * 0.1).cos()]);
        let (x, y) = (remote.step(&a).unwrap(), local.step(&a).unwrap());
        assert_eq!(x.obs, y.obs, "f32 survives the JSON round trip exactly");
        assert_eq!((x.reward, x.truncated), (y.reward, y.truncated));
    }
    remote.close().unwrap();
    server.join().unwrap().unwrap();
}
