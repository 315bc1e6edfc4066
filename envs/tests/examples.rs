//! The "plug in your own world" examples, run for real: the Rust env from
//! `examples/custom_env.rs` and the plain-Python env from `examples/python_env.py` (over a
//! child's stdin/stdout and over TCP).

mod common;

#[allow(dead_code)]
#[path = "../examples/custom_env.rs"]
mod custom_env;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use autodidact_envs::wrappers::EpisodeStatistics;
use autodidact_envs::{Action, Env, EnvError, make};
use common::{crate_path, have_python};

#[test]
fn rust_custom_env_registers_and_runs() {
    custom_env::register_thermostat().unwrap();
    assert!(matches!(
        custom_env::register_thermostat(),
        Err(EnvError::DuplicateId(_))
    ));
    assert!(autodidact_envs::known_ids().contains(&"thermostat-v0".to_string()));
    let mut env = EpisodeStatistics::new(make("thermostat-v0").unwrap());
    let (first, _) = env.reset(Some(3)).unwrap();
    let mut len = 0;
    loop {
        let s = env.step(&Action::Discrete(1)).unwrap();
        len += 1;
        if s.done() {
            assert!(s.truncated, "the registered time limit ends the episode");
            assert_eq!(s.info["episode"]["l"], 200);
            break;
        }
    }
    assert_eq!(len, 200);
    // Same seed, same start.
    assert_eq!(env.reset(Some(3)).unwrap().0, first);
    assert!(matches!(
        env.step(&Action::Discrete(5)),
        Err(EnvError::InvalidAction(_))
    ));
}

fn walk_to_goal(env: &mut dyn Env) {
    let (obs, _) = env.reset(Some(1)).unwrap();
    assert_eq!(obs.len(), 2);
    let start = (obs[0] * 10.0).round() as i32;
    let mut steps = 0;
    loop {
        let s = env.step(&Action::Discrete(1)).unwrap();
        steps += 1;
        if s.done() {
            assert!(s.terminated);
            assert_eq!(s.reward, 1.0);
            assert_eq!(s.info["pos"], 10);
            break;
        }
        assert_eq!(s.reward, -0.01);
    }
    assert_eq!(
        steps,
        10 - start,
        "walking right reaches cell 10 in 10 - start steps"
    );
}

#[test]
fn python_example_over_stdio() {
    if !have_python("python_example_over_stdio") {
        return;
    }
    let mut env = make(&format!(
        "exec:python3 {}",
        crate_path("examples/python_env.py")
    ))
    .unwrap();
    walk_to_goal(env.as_mut());
    // The example's own validation answers `error`, which surfaces as a peer error... but the
    // runtime rejects the bad action first, locally.
    env.reset(None).unwrap();
    assert!(matches!(
        env.step(&Action::Discrete(2)),
        Err(EnvError::InvalidAction(_))
    ));
    env.close().unwrap();
}

#[test]
fn python_example_over_tcp() {
    if !have_python("python_example_over_tcp") {
        return;
    }
    let mut child = Command::new("python3")
        .args([&crate_path("examples/python_env.py"), "--tcp", "0"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line.trim().strip_prefix("LISTENING ").unwrap().to_string();
    let mut env = make(&format!("tcp:{addr}")).unwrap();
    walk_to_goal(env.as_mut());
    env.close().unwrap();
    // A second connection gets a fresh session from the same server.
    let mut again = make(&format!("tcp:{addr}")).unwrap();
    walk_to_goal(again.as_mut());
    again.close().unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
}
