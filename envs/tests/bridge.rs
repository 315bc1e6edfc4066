//! Real Gymnasium through `python/gym_bridge.py`, end to end, compared with the native envs.
//! Skips (with a printed reason) when python3 or gymnasium is missing; CI installs gymnasium.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use autodidact_envs::bridge::{GYM_BRIDGE_SOURCE, write_embedded};
use autodidact_envs::{Action, Env, EnvError, RemoteEnv, Space, Transport, make};
use common::{crate_path, fast_config, have_gymnasium};

fn same_episode(
    native: &mut dyn Env,
    bridged: &mut dyn Env,
    seed: u64,
    actions: impl Fn(usize) -> Action,
) -> usize {
    let (a, _) = native.reset(Some(seed)).unwrap();
    let (b, _) = bridged.reset(Some(seed)).unwrap();
    assert_eq!(a, b, "reset with seed {seed}");
    for t in 0.. {
        let act = actions(t);
        let x = native.step(&act).unwrap();
        let y = bridged.step(&act).unwrap();
        for (p, q) in x.obs.iter().zip(&y.obs) {
            assert!((p - q).abs() <= 1e-5, "t{t}: native {p} vs gymnasium {q}");
        }
        assert!((x.reward - y.reward).abs() <= 1e-5, "t{t}: reward");
        assert_eq!(
            (x.terminated, x.truncated),
            (y.terminated, y.truncated),
            "t{t}: flags"
        );
        if x.done() {
            return t + 1;
        }
    }
    unreachable!()
}

#[test]
fn gymnasium_cartpole_through_the_bridge_matches_native() {
    if !have_gymnasium("gymnasium_cartpole_through_the_bridge_matches_native") {
        return;
    }
    let mut bridged = make("gym:CartPole-v1").unwrap();
    let mut native = make("CartPole-v1").unwrap();
    assert_eq!(bridged.observation_space(), native.observation_space());
    assert_eq!(*bridged.action_space(), Space::Discrete { n: 2 });
    // Random-ish actions end by termination; a balancing policy hits the 500-step limit.
    let n = same_episode(native.as_mut(), bridged.as_mut(), 3, |t| {
        Action::Discrete((t * 7 % 3 == 0) as i64)
    });
    assert!(n < 500);
    let mut state = [0.0f32; 4];
    let mut last = Vec::new();
    let (o, _) = native.reset(Some(42)).unwrap();
    state.copy_from_slice(&o);
    let (ob, _) = bridged.reset(Some(42)).unwrap();
    assert_eq!(o, ob);
    // Drive both with a feedback policy on the native state.
    for t in 0..500 {
        let a = Action::Discrete(
            (state[2] + 0.5 * state[3] + 0.01 * state[0] + 0.1 * state[1] > 0.0) as i64,
        );
        let x = native.step(&a).unwrap();
        let y = bridged.step(&a).unwrap();
        assert_eq!(
            (x.terminated, x.truncated),
            (y.terminated, y.truncated),
            "t{t}"
        );
        state.copy_from_slice(&x.obs);
        last = vec![x.truncated, y.truncated];
        if x.done() {
            break;
        }
    }
    assert_eq!(
        last,
        vec![true, true],
        "Gymnasium's TimeLimit(500) truncates through the bridge"
    );
    bridged.close().unwrap();
}

#[test]
fn gymnasium_pendulum_box_actions_through_the_bridge() {
    if !have_gymnasium("gymnasium_pendulum_box_actions_through_the_bridge") {
        return;
    }
    let mut bridged = make("gym:Pendulum-v1").unwrap();
    let mut native = make("Pendulum-v1").unwrap();
    assert_eq!(bridged.action_space(), native.action_space());
    let n = same_episode(native.as_mut(), bridged.as_mut(), 11, |t| {
        Action::Continuous(vec![((t as f32) * 0.37).sin() * 2.0])
    });
    assert_eq!(n, 200);
    assert!(matches!(
        bridged.step(&Action::Continuous(vec![3.0])),
        Err(EnvError::InvalidAction(_))
    ));
}

#[test]
fn unknown_gym_id_is_a_peer_error() {
    if !have_gymnasium("unknown_gym_id_is_a_peer_error") {
        return;
    }
    match make("gym:NoSuchEnv-v9") {
        Err(EnvError::Peer(m)) => assert!(m.contains("NoSuchEnv"), "{m}"),
        Err(e) => panic!("expected a peer error, got {e:?}"),
        Ok(_) => panic!("expected a peer error, got an env"),
    }
}

#[test]
fn bridge_serves_over_tcp() {
    if !have_gymnasium("bridge_serves_over_tcp") {
        return;
    }
    let mut child = Command::new("python3")
        .args([
            &crate_path("python/gym_bridge.py"),
            "--env",
            "CartPole-v1",
            "--tcp",
            "0",
            "--once",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line.trim().strip_prefix("LISTENING ").unwrap().to_string();
    let mut bridged = make(&format!("tcp:{addr}")).unwrap();
    let mut native = make("cartpole").unwrap();
    same_episode(native.as_mut(), bridged.as_mut(), 5, |t| {
        Action::Discrete((t % 2) as i64)
    });
    bridged.close().unwrap();
    assert!(child.wait().unwrap().success());
}

#[test]
fn embedded_bridge_copy_works_without_the_source_tree() {
    if !have_gymnasium("embedded_bridge_copy_works_without_the_source_tree") {
        return;
    }
    let path = write_embedded().unwrap();
    assert_eq!(std::fs::read_to_string(&path).unwrap(), GYM_BRIDGE_SOURCE);
    let t = Transport::Exec {
        program: "python3".into(),
        // --spin-us exercises the bridge's busy-poll reader (off by default).
        args: vec![
            path.to_string_lossy().into_owned(),
            "--env".into(),
            "MountainCar-v0".into(),
            "--spin-us".into(),
            "200".into(),
        ],
    };
    let mut env = RemoteEnv::connect(t, fast_config()).unwrap();
    let mut native = make("MountainCar-v0").unwrap();
    let n = same_episode(native.as_mut(), &mut env, 9, |_| Action::Discrete(2));
    assert_eq!(n, 200);
    // The copy's private directory belongs to the caller.
    std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
}
