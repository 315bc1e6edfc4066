//! Each fault of a peer, produced by a real child process misbehaving on purpose
//! (`tests/peers/faulty_peer.py`), gives a typed error or a counted recovery.

mod common;

use std::time::Duration;

use autodidact_envs::{Action, Env, EnvError, ProtocolError, RemoteConfig, RemoteEnv, Transport};
use common::{crate_path, fast_config, have_python};

fn peer(fault: &str, extra: &[&str]) -> Transport {
    let mut args = vec![
        crate_path("tests/peers/faulty_peer.py"),
        "--fault".into(),
        fault.into(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    Transport::Exec {
        program: "python3".into(),
        args,
    }
}

fn connect(fault: &str) -> RemoteEnv {
    RemoteEnv::connect(peer(fault, &[]), fast_config()).unwrap()
}

const A: Action = Action::Discrete(1);

fn pid_alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| s.contains(") Z "))
}

#[test]
fn healthy_peer_round_trip_and_clean_close() {
    if !have_python("healthy_peer_round_trip_and_clean_close") {
        return;
    }
    let mut env = connect("none");
    assert_eq!(env.name(), Some("faulty"));
    let (obs, _) = env.reset(Some(1)).unwrap();
    assert_eq!(obs, vec![0.0, 0.5]);
    for t in 1..=5 {
        let s = env.step(&A).unwrap();
        assert_eq!(s.obs, vec![t as f32, 0.5]);
        assert!(!s.done());
    }
    let pid = env.child_pid().unwrap();
    env.close().unwrap();
    assert!(!pid_alive(pid), "peer process still alive after close");
    assert_eq!(*env.stats(), Default::default());
}

#[test]
fn crash_truncates_episode_then_restarts() {
    if !have_python("crash_truncates_episode_then_restarts") {
        return;
    }
    let mut env = connect("crash");
    env.reset(None).unwrap();
    let first_pid = env.child_pid().unwrap();
    env.step(&A).unwrap();
    let last = env.step(&A).unwrap();
    let s = env.step(&A).unwrap(); // the peer exits here
    assert!(
        s.truncated && !s.terminated,
        "crash must end the episode as truncated"
    );
    assert_eq!(
        s.obs, last.obs,
        "a crashed step reports the last good observation"
    );
    assert_eq!(s.info["peer_fault"], "disconnected");
    assert!(matches!(env.step(&A), Err(EnvError::NeedsReset)));
    let (obs, _) = env.reset(None).unwrap();
    assert_eq!(obs, vec![0.0, 0.5]);
    assert_ne!(
        env.child_pid().unwrap(),
        first_pid,
        "a new process serves after the restart"
    );
    assert_eq!(env.stats().restarts, 1);
    assert_eq!(env.stats().disconnects, 1);
    assert_eq!(env.stats().truncated_by_fault, 1);
    assert_eq!(env.step(&A).unwrap().obs, vec![1.0, 0.5]);
}

#[test]
fn restarts_are_bounded_with_backoff() {
    if !have_python("restarts_are_bounded_with_backoff") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let launches = dir.path().join("launches");
    let l = launches.to_string_lossy().into_owned();
    let mut env =
        RemoteEnv::connect(peer("dead-after-first", &["--launches", &l]), fast_config()).unwrap();
    env.reset(None).unwrap();
    env.step(&A).unwrap();
    env.step(&A).unwrap();
    assert!(env.step(&A).unwrap().truncated);
    match env.reset(None) {
        Err(EnvError::RestartsExhausted { attempts, .. }) => assert_eq!(attempts, 3),
        other => panic!("expected RestartsExhausted, got {other:?}"),
    }
    let starts = std::fs::read_to_string(&launches).unwrap().lines().count();
    assert_eq!(
        starts,
        1 + 3,
        "one original launch plus max_restarts attempts"
    );
    assert_eq!(env.stats().restarts, 0);
}

#[test]
fn hang_times_out_and_recovers() {
    if !have_python("hang_times_out_and_recovers") {
        return;
    }
    let mut env = connect("hang");
    env.reset(None).unwrap();
    let pid = env.child_pid().unwrap();
    env.step(&A).unwrap();
    env.step(&A).unwrap();
    let s = env.step(&A).unwrap();
    assert!(s.truncated);
    assert_eq!(s.info["peer_fault"], "timeout");
    assert_eq!(env.stats().timeouts, 1);
    assert!(!pid_alive(pid), "hung peer must be killed");
    env.reset(None).unwrap();
    assert_eq!(env.stats().restarts, 1);
}

#[test]
fn hang_at_handshake_is_a_timeout_error() {
    if !have_python("hang_at_handshake_is_a_timeout_error") {
        return;
    }
    let cfg = RemoteConfig {
        connect_timeout: Duration::from_millis(700),
        ..fast_config()
    };
    match RemoteEnv::connect(peer("hang-hello", &[]), cfg) {
        Err(EnvError::Timeout { op, .. }) => assert_eq!(op, "hello"),
        other => panic!("expected a hello timeout, got {other:?}"),
    }
}

fn protocol_fault(fault: &str) -> ProtocolError {
    let mut env = connect(fault);
    env.reset(None).unwrap();
    env.step(&A).unwrap();
    env.step(&A).unwrap();
    let e = match env.step(&A) {
        Err(EnvError::Protocol(p)) => p,
        other => panic!("{fault}: expected a protocol error, got {other:?}"),
    };
    assert_eq!(env.stats().protocol_errors, 1, "{fault}: counted");
    // The stream is distrusted: stepping needs a reset, which restarts a fresh peer.
    assert!(matches!(env.step(&A), Err(EnvError::NeedsReset)));
    env.reset(None).unwrap();
    assert_eq!(env.stats().restarts, 1, "{fault}: restarted");
    assert_eq!(env.step(&A).unwrap().obs, vec![1.0, 0.5]);
    e
}

#[test]
fn malformed_json_is_a_protocol_error() {
    if have_python("malformed_json_is_a_protocol_error") {
        assert!(matches!(
            protocol_fault("garbage"),
            ProtocolError::Malformed(_)
        ));
    }
}

#[test]
fn nan_is_a_protocol_error() {
    if have_python("nan_is_a_protocol_error") {
        assert!(matches!(
            protocol_fault("nan"),
            ProtocolError::NonFinite { .. }
        ));
    }
}

#[test]
fn wrong_shape_is_a_protocol_error() {
    if have_python("wrong_shape_is_a_protocol_error") {
        assert_eq!(
            protocol_fault("shape"),
            ProtocolError::WrongShape {
                field: "obs".into(),
                expected: 2,
                got: 3
            }
        );
    }
}

#[test]
fn unknown_message_is_a_protocol_error() {
    if have_python("unknown_message_is_a_protocol_error") {
        assert_eq!(
            protocol_fault("unknown"),
            ProtocolError::UnknownMessage("teleport".into())
        );
    }
}

#[test]
fn endless_line_is_cut_at_the_limit() {
    if !have_python("endless_line_is_cut_at_the_limit") {
        return;
    }
    let cfg = RemoteConfig {
        max_line: 100_000,
        call_timeout: Duration::from_secs(5),
        ..fast_config()
    };
    let mut env = RemoteEnv::connect(peer("longline", &[]), cfg).unwrap();
    env.reset(None).unwrap();
    env.step(&A).unwrap();
    env.step(&A).unwrap();
    assert!(matches!(
        env.step(&A),
        Err(EnvError::Protocol(ProtocolError::TooLong {
            limit: 100_000
        }))
    ));
}

#[test]
fn version_mismatch_fails_the_handshake() {
    if !have_python("version_mismatch_fails_the_handshake") {
        return;
    }
    match RemoteEnv::connect(peer("version", &[]), fast_config()) {
        Err(EnvError::Protocol(ProtocolError::Version {
            ours: 1,
            theirs: 99,
        })) => {}
        other => panic!("expected a version error, got {other:?}"),
    }
}

#[test]
fn peer_error_answer_keeps_the_session() {
    if !have_python("peer_error_answer_keeps_the_session") {
        return;
    }
    let mut env = connect("error");
    env.reset(None).unwrap();
    env.step(&A).unwrap();
    env.step(&A).unwrap();
    match env.step(&A) {
        Err(EnvError::Peer(m)) => assert!(m.contains("refused")),
        other => panic!("expected a peer error, got {other:?}"),
    }
    assert_eq!(
        env.step(&A).unwrap().obs,
        vec![4.0, 0.5],
        "session continues after `error`"
    );
    assert_eq!(env.stats().peer_errors, 1);
    assert_eq!(env.stats().restarts, 0);
}

#[test]
fn out_of_space_action_is_rejected_before_sending() {
    if !have_python("out_of_space_action_is_rejected_before_sending") {
        return;
    }
    let mut env = connect("none");
    env.reset(None).unwrap();
    assert!(matches!(
        env.step(&Action::Discrete(2)),
        Err(EnvError::InvalidAction(_))
    ));
    assert!(matches!(
        env.step(&Action::Continuous(vec![1.0])),
        Err(EnvError::InvalidAction(_))
    ));
    // Nothing reached the peer: its step counter is still at 0.
    assert_eq!(env.step(&A).unwrap().obs, vec![1.0, 0.5]);
}

#[test]
fn missing_program_is_an_io_error() {
    let t = Transport::Exec {
        program: "/nonexistent/autodidact-peer".into(),
        args: vec![],
    };
    assert!(matches!(
        RemoteEnv::connect(t, fast_config()),
        Err(EnvError::Io { .. })
    ));
}

#[test]
fn refused_tcp_connection_is_an_io_error() {
    // Bind then drop to get a port that is (almost certainly) closed.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let t = Transport::Tcp {
        addr: format!("127.0.0.1:{port}"),
    };
    assert!(matches!(
        RemoteEnv::connect(t, fast_config()),
        Err(EnvError::Io { .. })
    ));
}

/// Kills the grandchild if a test fails before the peer's group did, so no `sleep` leaks.
struct Reap(u32);

impl Drop for Reap {
    fn drop(&mut self) {
        if pid_alive(self.0) {
            // SAFETY: kill only sends a signal, to a pid this test started (through its peer).
            unsafe { libc::kill(self.0 as libc::pid_t, libc::SIGKILL) };
        }
    }
}

/// Starts a peer with a long-lived helper process; returns the env and the helper's pid.
fn with_grandchild(fault: &str, dir: &tempfile::TempDir) -> (RemoteEnv, Reap) {
    let file = dir.path().join("grandchild");
    let f = file.to_string_lossy().into_owned();
    let mut env = RemoteEnv::connect(peer(fault, &["--grandchild", &f]), fast_config()).unwrap();
    env.reset(None).unwrap();
    // The peer wrote it before answering hello.
    let pid: u32 = std::fs::read_to_string(&file).unwrap().parse().unwrap();
    assert!(pid_alive(pid), "the helper runs");
    (env, Reap(pid))
}

/// Waits (with a hang-detecting limit) for `pid` to die.
fn dies(pid: u32) -> bool {
    let until = std::time::Instant::now() + Duration::from_secs(20);
    while std::time::Instant::now() < until {
        if !pid_alive(pid) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    false
}

#[test]
fn dropped_peer_takes_its_process_group_with_it() {
    if !have_python("dropped_peer_takes_its_process_group_with_it") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (env, helper) = with_grandchild("none", &dir);
    drop(env);
    assert!(
        dies(helper.0),
        "the peer's helper outlived the dropped peer"
    );
}

#[test]
fn closed_peer_takes_its_process_group_with_it() {
    if !have_python("closed_peer_takes_its_process_group_with_it") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (mut env, helper) = with_grandchild("none", &dir);
    env.close().unwrap();
    assert!(dies(helper.0), "the peer's helper outlived the closed peer");
}

#[test]
fn timed_out_peer_takes_its_process_group_with_it() {
    if !have_python("timed_out_peer_takes_its_process_group_with_it") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (mut env, helper) = with_grandchild("hang", &dir);
    env.step(&A).unwrap();
    env.step(&A).unwrap();
    assert_eq!(env.step(&A).unwrap().info["peer_fault"], "timeout");
    assert!(dies(helper.0), "the hung peer's helper outlived it");
    // The env is still usable: a fresh peer (and helper) serves the next episode.
    env.reset(None).unwrap();
    env.step(&A).unwrap();
}

/// Drives a peer with `fault` into its fault the way an agent would (stepping until a step
/// fails or is cut), then checks that `reset` + `step` serve a fresh episode. Returns the
/// failed step's outcome.
fn recovers_after(fault: &str) -> Result<autodidact_envs::Step, EnvError> {
    let mut env = connect(fault);
    env.reset(None).unwrap();
    let mut outcome = None;
    for _ in 0..3 {
        match env.step(&A) {
            Ok(s) if !s.truncated => {}
            other => {
                outcome = Some(other);
                break;
            }
        }
    }
    let outcome = outcome.unwrap_or_else(|| panic!("{fault}: no fault within 3 steps"));
    let (obs, _) = env
        .reset(None)
        .unwrap_or_else(|e| panic!("{fault}: reset after the fault failed: {e}"));
    assert_eq!(obs, vec![0.0, 0.5], "{fault}: a fresh episode");
    assert_eq!(
        env.step(&A).unwrap().obs,
        vec![1.0, 0.5],
        "{fault}: stepping works again"
    );
    let s = env.stats();
    assert!(
        s.timeouts + s.disconnects + s.protocol_errors + s.peer_errors >= 1,
        "{fault}: the fault is counted: {s:?}"
    );
    outcome
}

#[test]
fn crash_then_reset_and_step_work() {
    if have_python("crash_then_reset_and_step_work") {
        assert_eq!(
            recovers_after("crash").unwrap().info["peer_fault"],
            "disconnected"
        );
    }
}

#[test]
fn hang_then_reset_and_step_work() {
    if have_python("hang_then_reset_and_step_work") {
        assert_eq!(
            recovers_after("hang").unwrap().info["peer_fault"],
            "timeout"
        );
    }
}

#[test]
fn garbage_then_reset_and_step_work() {
    if have_python("garbage_then_reset_and_step_work") {
        assert!(matches!(
            recovers_after("garbage"),
            Err(EnvError::Protocol(ProtocolError::Malformed(_)))
        ));
    }
}

#[test]
fn nan_then_reset_and_step_work() {
    if have_python("nan_then_reset_and_step_work") {
        assert!(matches!(
            recovers_after("nan"),
            Err(EnvError::Protocol(ProtocolError::NonFinite { .. }))
        ));
    }
}

#[test]
fn shape_then_reset_and_step_work() {
    if have_python("shape_then_reset_and_step_work") {
        assert!(matches!(
            recovers_after("shape"),
            Err(EnvError::Protocol(ProtocolError::WrongShape { .. }))
        ));
    }
}

#[test]
fn unknown_then_reset_and_step_work() {
    if have_python("unknown_then_reset_and_step_work") {
        assert!(matches!(
            recovers_after("unknown"),
            Err(EnvError::Protocol(ProtocolError::UnknownMessage(_)))
        ));
    }
}

#[test]
fn error_then_reset_and_step_work() {
    if have_python("error_then_reset_and_step_work") {
        assert!(matches!(recovers_after("error"), Err(EnvError::Peer(_))));
    }
}

#[test]
fn longline_then_reset_and_step_work() {
    if have_python("longline_then_reset_and_step_work") {
        // With the default line limit the endless line is cut by the call's deadline.
        assert_eq!(
            recovers_after("longline").unwrap().info["peer_fault"],
            "timeout"
        );
    }
}

#[test]
fn huge_reward_is_a_fault_then_reset_and_step_work() {
    if have_python("huge_reward_is_a_fault_then_reset_and_step_work") {
        // 1e300 is finite JSON but no f32: passing it on would overflow the agent's reward.
        match recovers_after("hugereward") {
            Err(EnvError::Protocol(ProtocolError::NonFinite { field })) => {
                assert_eq!(field, "reward")
            }
            other => panic!("expected a non-finite reward error, got {other:?}"),
        }
    }
}

#[test]
fn failed_reset_ends_the_episode() {
    if !have_python("failed_reset_ends_the_episode") {
        return;
    }
    let mut env =
        RemoteEnv::connect(peer("reset-error", &["--after", "2"]), fast_config()).unwrap();
    env.reset(None).unwrap();
    env.step(&A).unwrap();
    assert!(matches!(env.reset(None), Err(EnvError::Peer(_))));
    assert_eq!(env.stats().peer_errors, 1);
    // The old episode is over (a reset was asked for), and no new one started.
    assert!(matches!(env.step(&A), Err(EnvError::NeedsReset)));
    env.reset(None).unwrap();
    assert_eq!(env.step(&A).unwrap().obs, vec![1.0, 0.5]);
}

#[test]
fn exhausted_restarts_are_retried_by_a_later_reset() {
    if !have_python("exhausted_restarts_are_retried_by_a_later_reset") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let launches = dir.path().join("launches");
    let dead = dir.path().join("dead");
    std::fs::write(&dead, "").unwrap();
    let (l, d) = (
        launches.to_string_lossy().into_owned(),
        dead.to_string_lossy().into_owned(),
    );
    let mut env = RemoteEnv::connect(
        peer("dead-after-first", &["--launches", &l, "--dead-file", &d]),
        fast_config(),
    )
    .unwrap();
    env.reset(None).unwrap();
    env.step(&A).unwrap();
    env.step(&A).unwrap();
    assert!(env.step(&A).unwrap().truncated);
    for round in 1..=2 {
        assert!(
            matches!(env.reset(None), Err(EnvError::RestartsExhausted { .. })),
            "round {round}"
        );
        assert_eq!(env.stats().restarts_exhausted, round);
        assert_eq!(env.stats().failed_restarts, 3 * round);
    }
    // The peer can be started again: the next reset picks it up.
    std::fs::remove_file(&dead).unwrap();
    let (obs, _) = env.reset(None).unwrap();
    assert_eq!(obs, vec![0.0, 0.5]);
    env.step(&A).unwrap();
    assert_eq!(env.stats().restarts, 1);
    let starts = std::fs::read_to_string(&launches).unwrap().lines().count();
    assert_eq!(starts, 1 + 3 + 3 + 1);
}

#[test]
fn random_faults_never_stop_an_agent_like_loop() {
    if !have_python("random_faults_never_stop_an_agent_like_loop") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let l = dir.path().join("launches").to_string_lossy().into_owned();
    let cfg = RemoteConfig {
        call_timeout: Duration::from_millis(200),
        ..fast_config()
    };
    let t = peer(
        "random",
        &[
            "--seed",
            "7",
            "--prob",
            "0.1",
            "--hang-s",
            "1",
            "--launches",
            &l,
        ],
    );
    let mut env = RemoteEnv::connect(t, cfg).unwrap();
    let (mut good, mut faults, mut need_reset) = (0u32, 0u32, true);
    for _ in 0..120 {
        if need_reset {
            match env.reset(None) {
                Ok(_) => need_reset = false,
                Err(EnvError::RestartsExhausted { .. } | EnvError::Peer(_)) => continue,
                Err(e) => panic!("reset failed with {e:?}"),
            }
        }
        match env.step(&A) {
            Ok(s) if !s.truncated => good += 1,
            Ok(_) | Err(EnvError::Protocol(_) | EnvError::Peer(_)) => {
                faults += 1;
                need_reset = true;
            }
            Err(e) => panic!("step failed with {e:?}"),
        }
    }
    assert!(faults >= 3, "the peer injected faults: {faults}");
    assert!(good >= 50, "and served between them: {good}");
    assert!(env.stats().restarts >= 1, "{:?}", env.stats());
}
