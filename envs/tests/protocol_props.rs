//! Property tests of the protocol decoders on arbitrary input, and of the full reader over a
//! real socket fed with arbitrary bytes.

use std::io::Write;
use std::net::TcpListener;
use std::time::Duration;

use autodidact_envs::protocol::{
    Request, Response, decode_request, decode_response, encode_request, encode_response,
};
use autodidact_envs::{
    Action, Env, EnvError, Info, RemoteConfig, RemoteEnv, Space, Step, Transport,
};
use proptest::prelude::*;

fn spaces() -> Vec<Space> {
    vec![
        Space::Discrete { n: 3 },
        Space::uniform_box(-1.0, 1.0, vec![2]),
        Space::MultiDiscrete { nvec: vec![2, 5] },
    ]
}

// Fragments that steer random lines towards almost-valid messages, where decoders break.
const PIECES: &[&str] = &[
    "{",
    "}",
    "[",
    "]",
    ",",
    ":",
    "\"type\"",
    "\"op\"",
    "\"step\"",
    "\"reset\"",
    "\"hello\"",
    "\"obs\"",
    "\"reward\"",
    "\"terminated\"",
    "\"truncated\"",
    "\"info\"",
    "\"action\"",
    "\"seed\"",
    "true",
    "false",
    "null",
    "NaN",
    "-Infinity",
    "1e999",
    "-0.0",
    "3",
    "18446744073709551616",
    "\"observation_space\"",
    "{\"type\":\"Box\",\"low\":[0],\"high\":[1],\"shape\":[4294967296,4294967296]}",
    "\"protocol\"",
    "\u{0}",
    "\\u0000",
];

fn almost_json() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(prop::sample::select(PIECES), 0..40).prop_map(|p| p.concat().into_bytes())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn decoders_never_panic_on_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = decode_response(&bytes);
        for s in spaces() {
            let _ = decode_request(&bytes, &s);
        }
    }

    #[test]
    fn decoders_never_panic_on_almost_json(bytes in almost_json()) {
        if let Ok(Response::Step(s)) = decode_response(&bytes) {
            // Anything accepted is finite: NaN never passes silently.
            prop_assert!(s.reward.is_finite() && s.obs.iter().all(|x| x.is_finite()));
        }
        if let Ok(Response::Reset { obs, .. }) = decode_response(&bytes) {
            prop_assert!(obs.iter().all(|x| x.is_finite()));
        }
        for s in spaces() {
            let _ = decode_request(&bytes, &s);
        }
    }

    #[test]
    fn step_responses_round_trip(
        obs in prop::collection::vec(-1e30f32..1e30, 0..16),
        reward in -1e300f64..1e300,
        terminated in any::<bool>(),
        truncated in any::<bool>(),
        key in "[a-z]{0,8}",
        val in any::<i64>(),
    ) {
        let mut info = Info::new();
        if !key.is_empty() {
            info.insert(key, val.into());
        }
        let resp = Response::Step(Step { obs, reward, terminated, truncated, info });
        let mut buf = Vec::new();
        encode_response(&resp, &mut buf);
        prop_assert_eq!(buf.iter().filter(|&&b| b == b'\n').count(), 1, "exactly one line");
        prop_assert_eq!(decode_response(&buf).unwrap(), resp);
    }

    #[test]
    fn requests_round_trip(a in 0i64..3, xs in prop::collection::vec(-1.0f32..=1.0, 2), seed in any::<Option<u64>>()) {
        for (req, space) in [
            (Request::Step { action: Action::Discrete(a) }, Space::Discrete { n: 3 }),
            (Request::Step { action: Action::Continuous(xs.clone()) }, Space::uniform_box(-1.0, 1.0, vec![2])),
            (Request::Reset { seed }, Space::Discrete { n: 3 }),
        ] {
            let mut buf = Vec::new();
            encode_request(&req, &mut buf);
            prop_assert_eq!(decode_request(&buf, &space).unwrap(), req);
        }
    }
}

proptest! {
    // Each case opens a real socket, so fewer cases.
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn remote_env_survives_arbitrary_peer_bytes(
        junk in prop::collection::vec(any::<u8>(), 0..2048),
        chunk in 1usize..64,
    ) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let junk2 = junk.clone();
        let server = std::thread::spawn(move || {
            let (mut sock, _) = listener.accept().unwrap();
            // A valid hello, then arbitrary bytes in small writes as the answer to `reset`.
            sock.write_all(b"{\"type\":\"hello\",\"protocol\":1,\"observation_space\":{\"type\":\"Box\",\"low\":null,\"high\":null,\"shape\":[2]},\"action_space\":{\"type\":\"Discrete\",\"n\":2}}\n").unwrap();
            for c in junk2.chunks(chunk) {
                if sock.write_all(c).is_err() {
                    break;
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        });
        let cfg = RemoteConfig {
            call_timeout: Duration::from_millis(300),
            max_restarts: 0,
            max_line: 1024,
            ..RemoteConfig::default()
        };
        let mut env = RemoteEnv::connect(Transport::Tcp { addr: addr.to_string() }, cfg).unwrap();
        match env.reset(None) {
            Ok((obs, _)) => prop_assert!(obs.len() == 2 && obs.iter().all(|x| x.is_finite())),
            Err(EnvError::Protocol(_) | EnvError::Peer(_) | EnvError::RestartsExhausted { .. }) => {}
            Err(e) => prop_assert!(false, "unexpected error kind {e:?}"),
        }
        server.join().unwrap();
    }
}
