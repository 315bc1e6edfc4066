//! The binary as a user runs it: real processes, real exit codes.

use std::process::Command;

use autodidact::rollout::{Policy, RolloutError, rollout};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_autodidact"))
}

#[test]
fn rollout_is_reproducible_and_reports_json() {
    let out = bin()
        .args([
            "rollout",
            "--env",
            "cartpole",
            "--episodes",
            "5",
            "--seed",
            "3",
            "--json",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["returns"].as_array().unwrap().len(), 5);
    let again = bin()
        .args([
            "rollout",
            "--env",
            "cartpole",
            "--episodes",
            "5",
            "--seed",
            "3",
            "--json",
        ])
        .output()
        .unwrap();
    let w: serde_json::Value = serde_json::from_slice(&again.stdout).unwrap();
    assert_eq!(v["returns"], w["returns"], "same seed, same episodes");
}

#[test]
fn unknown_env_is_a_clear_error_with_nonzero_exit() {
    let out = bin()
        .args(["rollout", "--env", "no-such-world"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("unknown environment id") && err.contains("cartpole"),
        "{err}"
    );
}

#[test]
fn network_policy_acts_through_a_snapshot_and_refuses_continuous_actions() {
    let mut env = autodidact_envs::make("cartpole").unwrap();
    let r = rollout(
        "cartpole",
        env.as_mut(),
        Policy::UntrainedMoe,
        3,
        0,
        |_, _| {},
    )
    .unwrap();
    assert_eq!(r.returns.len(), 3);
    assert!(r.returns.iter().all(|&x| x >= 1.0));
    let mut env = autodidact_envs::make("pendulum").unwrap();
    assert!(matches!(
        rollout(
            "pendulum",
            env.as_mut(),
            Policy::UntrainedMoe,
            1,
            0,
            |_, _| {}
        ),
        Err(RolloutError::Unsupported(_))
    ));
}
