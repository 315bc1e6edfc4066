//! `autodidact serve-env`: a native world served by the binary over `exec:` is the same world
//! as the native one (same seed, same actions, same observations and rewards).

use std::process::Command;

use autodidact_envs::{Action, Env};

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_autodidact")
}

/// Plays one episode with a fixed action pattern; returns every observation, reward and
/// end flag, and the info of the reset.
type Trace = Vec<(Vec<f32>, f64, bool, bool)>;

fn episode(
    env: &mut dyn Env,
    seed: u64,
    policy: fn(&[f32], u64) -> i64,
) -> (Trace, serde_json::Value) {
    let (obs, info) = env.reset(Some(seed)).unwrap();
    let mut out = vec![(obs, 0.0, false, false)];
    for t in 0..600u64 {
        let a = policy(&out.last().unwrap().0, t);
        let s = env.step(&Action::Discrete(a)).unwrap();
        let end = s.terminated || s.truncated;
        out.push((s.obs, s.reward, s.terminated, s.truncated));
        if end {
            break;
        }
    }
    (out, serde_json::Value::Object(info))
}

#[test]
fn cartpole_over_exec_matches_the_native_world() {
    let mut native = autodidact_envs::make("cartpole").unwrap();
    let mut served = autodidact_envs::make(&format!("exec:{} serve-env cartpole", bin())).unwrap();
    assert_eq!(native.observation_space(), served.observation_space());
    assert_eq!(native.action_space(), served.action_space());
    // Deterministic, not constant: keeps the pole up for a while, so the episode is long.
    let balance: fn(&[f32], u64) -> i64 = |o, t| {
        let a = i64::from(o[2] + 0.1 * o[3] > 0.0);
        if t % 7 == 0 { 1 - a } else { a }
    };
    for seed in [0, 42] {
        let (a, _) = episode(native.as_mut(), seed, balance);
        let (b, _) = episode(served.as_mut(), seed, balance);
        assert!(a.len() > 20, "a long enough episode ({} steps)", a.len());
        assert_eq!(a, b, "seed {seed}");
    }
    served.close().unwrap();
}

#[test]
fn a_regime_world_over_exec_reports_its_hidden_regime() {
    let mut served =
        autodidact_envs::make(&format!("exec:{} serve-env goal-regions:cycle:50", bin())).unwrap();
    let mut seen = Vec::new();
    for seed in 0..4 {
        // Up and down in place: never reaches a corner, so every episode is a 100-step timeout.
        let (_, info) = episode(served.as_mut(), seed, |_, t| (t % 2) as i64);
        seen.push(info["regime"].as_str().unwrap().to_string());
    }
    // Episodes start at steps 0, 100, 200, 300 of the instance: phases 0, 2, 4, 6 of the
    // 50-step cycle A B A B C A, i.e. regimes A, A, C, A.
    assert_eq!(seen, ["A", "A", "C", "A"]);
    served.close().unwrap();
}

#[test]
fn serving_an_unknown_world_fails_with_a_message() {
    let out = Command::new(bin())
        .args(["serve-env", "no-such-world"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no-such-world"), "{err}");
    assert!(out.stdout.is_empty(), "stdout carries only the protocol");
}
