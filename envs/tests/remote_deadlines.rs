//! Every call that can block honours its deadline, against real peers that misbehave: a child
//! process and a TCP peer on 127.0.0.1 that answer but never read, so our writes fill the pipe
//! or socket.

mod common;

use std::io::Write;
use std::net::TcpListener;
use std::sync::mpsc;
use std::time::Duration;

use autodidact_envs::{Action, Env, EnvError, RemoteConfig, RemoteEnv, Transport};
use common::{fast_config, have_python};

/// Far above any legitimate run time of these tests; only a hang reaches it.
const HANG: Duration = Duration::from_secs(60);

/// Box action space large enough that one step request (~6 bytes per element) is bigger than
/// a pipe's buffer (64 KiB on Linux).
const ACTION_LEN: usize = 20_000;

fn hello_line() -> String {
    format!(
        "{{\"type\":\"hello\",\"protocol\":1,\"name\":\"deaf\",\
         \"observation_space\":{{\"type\":\"Box\",\"low\":null,\"high\":null,\"shape\":[1]}},\
         \"action_space\":{{\"type\":\"Box\",\"low\":-1,\"high\":1,\"shape\":[{ACTION_LEN}]}}}}"
    )
}

const RESET_LINE: &str = r#"{"type":"reset","obs":[0.0],"info":{}}"#;
const STEP_LINE: &str =
    r#"{"type":"step","obs":[1.0],"reward":0.0,"terminated":false,"truncated":false}"#;

/// Steps with large actions until a step reports a fault; returns what that step said. Runs
/// on a helper thread so a hang fails the test instead of blocking it.
fn step_until_fault(transport: Transport) -> (String, u64) {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let cfg = RemoteConfig {
            call_timeout: Duration::from_millis(300),
            max_restarts: 0,
            ..fast_config()
        };
        let mut env = RemoteEnv::connect(transport, cfg).unwrap();
        env.reset(None).unwrap();
        let action = Action::Continuous(vec![0.123; ACTION_LEN]);
        for _ in 0..100_000 {
            match env.step(&action) {
                Ok(s) if s.truncated => {
                    let fault = s.info["peer_fault"].as_str().unwrap_or("").to_string();
                    let _ = tx.send((fault, env.stats().timeouts));
                    return;
                }
                Ok(_) => {}
                Err(e) => panic!("unexpected error {e}"),
            }
        }
        panic!("the peer never stopped reading");
    });
    rx.recv_timeout(HANG)
        .expect("a write to a peer that never reads blocked past every deadline")
}

#[test]
fn write_to_a_child_that_never_reads_times_out() {
    if !have_python("write_to_a_child_that_never_reads_times_out") {
        return;
    }
    // Answers everything in advance and never reads its stdin.
    let script = format!(
        "import sys, time\n\
         w = sys.stdout\n\
         try:\n\
         \x20   w.write({hello:?} + '\\n'); w.write({reset:?} + '\\n'); w.flush()\n\
         \x20   for _ in range(100000):\n        w.write({step:?} + '\\n'); w.flush()\n\
         except BrokenPipeError:\n\
         \x20   sys.exit(0)\n\
         time.sleep(3600)\n",
        hello = hello_line(),
        reset = RESET_LINE,
        step = STEP_LINE,
    );
    let t = Transport::Exec {
        program: "python3".into(),
        args: vec!["-c".into(), script],
    };
    let (fault, timeouts) = step_until_fault(t);
    assert_eq!(fault, "timeout");
    assert_eq!(timeouts, 1);
}

#[test]
fn write_to_a_tcp_peer_that_never_reads_times_out() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        let (mut sock, _) = listener.accept().unwrap();
        let mut lines = format!("{}\n{RESET_LINE}\n", hello_line()).into_bytes();
        for _ in 0..100_000 {
            lines.extend_from_slice(STEP_LINE.as_bytes());
            lines.push(b'\n');
        }
        // Blocks while the runtime is not reading; ends when the runtime drops the socket.
        let _ = sock.write_all(&lines);
        std::thread::sleep(HANG);
    });
    let (fault, timeouts) = step_until_fault(Transport::Tcp {
        addr: addr.to_string(),
    });
    assert_eq!(fault, "timeout");
    assert_eq!(timeouts, 1);
}

#[test]
fn hello_to_a_tcp_peer_that_never_reads_times_out() {
    // The peer accepts and says nothing: connect + hello together are bounded by
    // connect_timeout.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        let keep = listener.accept();
        std::thread::sleep(HANG);
        drop(keep);
    });
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let cfg = RemoteConfig {
            connect_timeout: Duration::from_millis(300),
            ..fast_config()
        };
        let r = RemoteEnv::connect(
            Transport::Tcp {
                addr: addr.to_string(),
            },
            cfg,
        );
        let _ = tx.send(matches!(r, Err(EnvError::Timeout { .. })));
    });
    assert!(
        rx.recv_timeout(HANG).expect("connect hung"),
        "a Timeout error"
    );
}
