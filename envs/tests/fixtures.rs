//! Native envs against episodes recorded from real Gymnasium 1.4 (`fixtures/make_fixtures.py`).
//!
//! Resets are compared too: the native envs reproduce numpy's SeedSequence + PCG64 stream, so
//! the same seed gives the same start state, and unseeded resets continue the same stream.

use autodidact_envs::{Action, Env, make};
use serde_json::Value;

const TOL: f64 = 1e-5;

fn load(name: &str) -> Value {
    let path = format!("{}/fixtures/{name}.json", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn floats(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

fn close(ctx: &str, got: &[f32], want: &[f64]) {
    assert_eq!(got.len(), want.len(), "{ctx}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (f64::from(*g) - w).abs() <= TOL,
            "{ctx}[{i}]: native {g} vs gymnasium {w}"
        );
    }
}

fn replay(name: &str, id: &str) -> usize {
    let fx = load(name);
    let mut env = make(id).unwrap();
    let mut steps = 0;
    for (k, ep) in fx["episodes"].as_array().unwrap().iter().enumerate() {
        let seed = ep["seed"].as_u64();
        let (obs, _) = env.reset(seed).unwrap();
        close(
            &format!("{name} ep{k} reset"),
            &obs,
            &floats(&ep["reset_obs"]),
        );
        let actions = ep["actions"].as_array().unwrap();
        for (t, a) in actions.iter().enumerate() {
            let action = match a {
                Value::Array(v) => {
                    Action::Continuous(v.iter().map(|x| x.as_f64().unwrap() as f32).collect())
                }
                v => Action::Discrete(v.as_i64().unwrap()),
            };
            let s = env.step(&action).unwrap();
            let ctx = format!("{name} ep{k} t{t}");
            close(&ctx, &s.obs, &floats(&ep["obs"][t]));
            let want_r = ep["rewards"][t].as_f64().unwrap();
            assert!(
                (s.reward - want_r).abs() <= TOL,
                "{ctx}: reward {} vs {want_r}",
                s.reward
            );
            assert_eq!(
                s.terminated,
                ep["terminated"][t].as_bool().unwrap(),
                "{ctx}: terminated"
            );
            assert_eq!(
                s.truncated,
                ep["truncated"][t].as_bool().unwrap(),
                "{ctx}: truncated"
            );
            steps += 1;
        }
    }
    steps
}

#[test]
fn cartpole_matches_gymnasium() {
    let n = replay("cartpole", "CartPole-v1");
    assert!(n > 600, "fixture too small: {n} steps");
}

#[test]
fn mountaincar_matches_gymnasium() {
    let n = replay("mountaincar", "MountainCar-v0");
    assert!(n > 600);
}

#[test]
fn pendulum_matches_gymnasium() {
    let n = replay("pendulum", "Pendulum-v1");
    assert_eq!(n, 600);
}

#[test]
fn fixtures_cover_both_end_flags() {
    // Guards the fixtures themselves: equivalence is only proven for flags that occur.
    let cp = load("cartpole");
    let flags = |fx: &Value, key: &str| {
        fx["episodes"].as_array().unwrap().iter().any(|e| {
            e[key]
                .as_array()
                .unwrap()
                .iter()
                .any(|b| b.as_bool().unwrap())
        })
    };
    assert!(flags(&cp, "terminated") && flags(&cp, "truncated"));
    let mc = load("mountaincar");
    assert!(flags(&mc, "terminated") && flags(&mc, "truncated"));
    assert!(flags(&load("pendulum"), "truncated"));
}
