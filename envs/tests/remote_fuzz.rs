//! Fuzz-style property test of `RemoteEnv` against a scripted peer on a real TCP socket
//! (127.0.0.1): random handshakes (valid, huge or absurd spaces, junk) and random answers
//! (valid, malformed, NaN, huge numbers, wrong shapes, long lines, a partial line then a
//! close, silence). Whatever the peer does: no panic, no abort, no hang, and whatever the env
//! hands on is sound.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use autodidact_envs::{Env, RemoteConfig, RemoteEnv, Transport};
use proptest::prelude::*;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// What the scripted peer does in answer to one request.
#[derive(Clone, Debug)]
enum Answer {
    /// The answer of the request's own type (`reset`, `step`, `closed`), with an observation
    /// of `len` numbers (the declared size when `None`) drawn from `numbers`, and this reward.
    Fitting {
        len: Option<usize>,
        numbers: Vec<String>,
        reward: String,
        terminated: bool,
        truncated: bool,
    },
    /// Writes this line (a newline is appended).
    Line(String),
    /// Writes these bytes without a newline, then closes the connection.
    PartialThenClose(String),
    /// Closes the connection.
    Close,
    /// Stops answering on this connection (but keeps it open).
    Silence,
}

/// Numbers, mostly ordinary, sometimes breaking naive code: overflow f32, underflow,
/// NaN/Infinity as Python writes them, negative zero, an integer beyond u64.
fn number() -> impl Strategy<Value = String> {
    prop_oneof![
        30 => (-10.0f64..10.0).prop_map(|x| format!("{x}")),
        1 => Just("-0.0".to_string()),
        1 => Just("3.4e38".to_string()),
        1 => Just("1e39".to_string()),
        1 => Just("-1e300".to_string()),
        1 => Just("1e300".to_string()),
        1 => Just("1e-320".to_string()),
        1 => Just("NaN".to_string()),
        1 => Just("-Infinity".to_string()),
        1 => Just("18446744073709551616".to_string()),
    ]
}

fn numbers(len: impl Strategy<Value = usize>) -> impl Strategy<Value = String> {
    len.prop_flat_map(|n| prop::collection::vec(number(), n))
        .prop_map(|v| format!("[{}]", v.join(",")))
}

/// A space description, from ordinary (most of the time) to absurd.
fn space_json() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => Just(r#"{"type":"Discrete","n":2}"#.to_string()),
        4 => Just(r#"{"type":"Box","low":null,"high":null,"shape":[2]}"#.to_string()),
        4 => Just(r#"{"type":"Box","low":-3.4e38,"high":3.4e38,"shape":[3]}"#.to_string()),
        4 => Just(r#"{"type":"MultiDiscrete","nvec":[2,3]}"#.to_string()),
        4 => (numbers(Just(2usize)), numbers(Just(2usize))).prop_map(|(l, h)| format!(
            r#"{{"type":"Box","low":{l},"high":{h},"shape":[2]}}"#
        )),
        1 => Just(r#"{"type":"Discrete","n":1099511627776}"#.to_string()),
        1 => Just(r#"{"type":"Discrete","n":0}"#.to_string()),
        1 => Just(r#"{"type":"Box","low":1,"high":-1,"shape":[1]}"#.to_string()),
        1 => Just(r#"{"type":"Box","low":-1,"high":1,"shape":[1048576,1048576]}"#.to_string()),
        1 => Just(r#"{"type":"Box","low":-1,"high":1,"shape":[4294967296,4294967296]}"#.to_string()),
        1 => Just(r#"{"type":"MultiDiscrete","nvec":[1099511627776]}"#.to_string()),
        1 => Just(r#"{"type":"Tuple"}"#.to_string()),
    ]
}

fn junk() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..64)
            .prop_map(|b| String::from_utf8_lossy(&b).replace('\n', " ")),
        "[{}\\[\\]\",:a-z0-9 ]{0,40}",
        Just("{}".to_string()),
        Just("null".to_string()),
    ]
}

fn hello() -> impl Strategy<Value = Answer> {
    prop_oneof![
        12 => (space_json(), space_json(), prop_oneof![8 => Just(1u64), 1 => Just(2), 1 => Just(u64::MAX)])
            .prop_map(|(o, a, p)| Answer::Line(format!(
                r#"{{"type":"hello","protocol":{p},"observation_space":{o},"action_space":{a}}}"#
            ))),
        1 => junk().prop_map(Answer::Line),
        1 => Just(Answer::Line(r#"{"type":"error","message":"no"}"#.to_string())),
        1 => Just(Answer::PartialThenClose(r#"{"type":"hel"#.to_string())),
        1 => Just(Answer::Close),
        1 => Just(Answer::Silence),
    ]
}

fn answer() -> impl Strategy<Value = Answer> {
    prop_oneof![
        24 => (
            prop_oneof![8 => Just(None), 1 => (0usize..6).prop_map(Some)],
            prop::collection::vec(number(), 6),
            number(),
            prop::bool::weighted(0.1),
            prop::bool::weighted(0.1),
        )
            .prop_map(|(len, numbers, reward, terminated, truncated)| Answer::Fitting {
                len,
                numbers,
                reward,
                terminated,
                truncated,
            }),
        1 => Just(Answer::Line(r#"{"type":"error","message":"refused"}"#.to_string())),
        1 => Just(Answer::Line(r#"{"type":"teleport"}"#.to_string())),
        1 => Just(Answer::Line(r#"{"type":"closed"}"#.to_string())),
        1 => Just(Answer::Line(r#"{"type":"step","obs":[1],"reward":1,"info":7}"#.to_string())),
        1 => Just(Answer::Line(r#"{"type":"reset","obs":[1,2,3]}"#.to_string())),
        2 => junk().prop_map(Answer::Line),
        1 => (1usize..3).prop_map(|k| Answer::Line("x".repeat(k * 40_000))),
        1 => Just(Answer::PartialThenClose(r#"{"type":"step","obs":[1"#.to_string())),
        1 => Just(Answer::Close),
        1 => Just(Answer::Silence),
    ]
}

/// The observation size a hello line declares, if it is readable (else 1).
fn declared_dim(hello: &Answer) -> usize {
    let Answer::Line(l) = hello else { return 1 };
    let Ok(v) = serde_json::from_str::<serde_json::Value>(l) else {
        return 1;
    };
    let o = &v["observation_space"];
    match o["type"].as_str() {
        Some("Box") => o["shape"]
            .as_array()
            .and_then(|s| {
                s.iter()
                    .try_fold(1u64, |a, d| d.as_u64().and_then(|d| a.checked_mul(d)))
            })
            .map_or(1, |n| n.min(16) as usize),
        Some("MultiDiscrete") => o["nvec"].as_array().map_or(1, Vec::len),
        _ => 1,
    }
}

/// The line `a` stands for, as the answer to `request`.
fn render(a: &Answer, request: &str, dim: usize) -> Option<String> {
    let Answer::Fitting {
        len,
        numbers,
        reward,
        terminated,
        truncated,
    } = a
    else {
        return None;
    };
    let obs: Vec<&str> = numbers
        .iter()
        .cycle()
        .take(len.unwrap_or(dim))
        .map(String::as_str)
        .collect();
    let obs = format!("[{}]", obs.join(","));
    Some(if request.contains("\"reset\"") {
        format!(r#"{{"type":"reset","obs":{obs},"info":{{"k":[1,2]}}}}"#)
    } else if request.contains("\"close\"") {
        r#"{"type":"closed"}"#.to_string()
    } else {
        format!(
            r#"{{"type":"step","obs":{obs},"reward":{reward},"terminated":{terminated},"truncated":{truncated},"info":{{}}}}"#
        )
    })
}

/// Serves connection after connection (a restart reaches the same peer, which goes on with
/// its script), until `stop` is set. Once the script is used up, connections are closed.
fn serve(listener: TcpListener, hello: Answer, answers: Vec<Answer>, stop: Arc<AtomicBool>) {
    let dim = declared_dim(&hello);
    let mut next = answers.iter();
    for sock in listener.incoming() {
        if stop.load(Ordering::SeqCst) {
            return;
        }
        let Ok(sock) = sock else { continue };
        let _ = sock.set_read_timeout(Some(Duration::from_secs(5)));
        let _ = sock.set_write_timeout(Some(Duration::from_secs(5)));
        let mut reader = BufReader::new(&sock);
        let mut silent = false;
        loop {
            let mut request = String::new();
            match reader.read_line(&mut request) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            if silent {
                continue;
            }
            let a = if request.contains("\"hello\"") {
                &hello
            } else {
                match next.next() {
                    Some(a) => a,
                    None => break,
                }
            };
            let line = render(a, &request, dim).or_else(|| match a {
                Answer::Line(l) => Some(l.clone()),
                _ => None,
            });
            let ok = match (a, line) {
                (_, Some(l)) => (&sock).write_all(format!("{l}\n").as_bytes()).is_ok(),
                (Answer::PartialThenClose(p), None) => {
                    let _ = (&sock).write_all(p.as_bytes());
                    false
                }
                (Answer::Silence, None) => {
                    silent = true;
                    true
                }
                (_, None) => false,
            };
            if !ok {
                break;
            }
        }
    }
}

/// Drives the env like an agent would; panics (fails the case) on anything unsound.
fn drive(addr: String, seed: u64, steps: usize) {
    let cfg = RemoteConfig {
        call_timeout: Duration::from_millis(60),
        connect_timeout: Duration::from_millis(200),
        max_restarts: 1,
        backoff_initial: Duration::from_millis(1),
        backoff_max: Duration::from_millis(2),
        max_line: 64 * 1024,
        ..RemoteConfig::default()
    };
    let Ok(mut env) = RemoteEnv::connect(Transport::Tcp { addr }, cfg) else {
        return; // any typed error is an acceptable answer to a broken handshake
    };
    let (obs_space, act_space) = (env.observation_space().clone(), env.action_space().clone());
    assert!(obs_space.check().is_ok(), "accepted {obs_space:?}");
    assert!(act_space.check().is_ok(), "accepted {act_space:?}");
    let dim = obs_space.flat_dim();
    let sound = |obs: &[f32]| obs.len() == dim && obs.iter().all(|x| x.is_finite());
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut running = false;
    for _ in 0..steps {
        if !running {
            match env.reset(None) {
                Ok((obs, _)) => assert!(sound(&obs), "reset gave {obs:?} for {obs_space:?}"),
                Err(e) => {
                    assert!(e.fault_kind().is_some(), "reset: {e:?} is not a peer fault");
                    continue;
                }
            }
        }
        let action = act_space.sample(&mut rng);
        assert!(act_space.validate(&action).is_ok(), "sampled {action:?}");
        match env.step(&action) {
            Ok(s) => {
                assert!(sound(&s.obs), "step gave {:?} for {obs_space:?}", s.obs);
                assert!((s.reward as f32).is_finite(), "reward {}", s.reward);
                running = !s.done();
            }
            Err(e) => {
                assert!(e.fault_kind().is_some(), "step: {e:?} is not a peer fault");
                running = false;
            }
        }
    }
    let _ = env.close();
}

proptest! {
    // Each case runs a real socket and a few deadlines; 128 cases take a few seconds.
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn remote_env_survives_any_peer(
        hello in hello(),
        answers in prop::collection::vec(answer(), 0..16),
        seed in any::<u64>(),
        steps in 1usize..12,
    ) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let peer = {
            let stop = stop.clone();
            std::thread::spawn(move || serve(listener, hello, answers, stop))
        };
        let (tx, rx) = mpsc::channel();
        let driver = std::thread::spawn(move || {
            drive(addr.to_string(), seed, steps);
            let _ = tx.send(());
        });
        // Far beyond the worst case (a few deadlines of at most 200 ms): only a hang gets here.
        let finished = rx.recv_timeout(Duration::from_secs(30));
        stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(addr); // wakes the accept loop so it sees `stop`
        prop_assert!(finished.is_ok() || driver.is_finished(), "RemoteEnv hung");
        // A panic inside the driver (an unsound result) fails the case here.
        prop_assert!(driver.join().is_ok(), "RemoteEnv panicked or returned unsound data");
        peer.join().unwrap();
    }
}
