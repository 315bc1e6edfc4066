//! Sizes and bounds declared by a peer (or by anyone building a `Space`) are checked against
//! documented limits, and sampling a valid space never panics and stays inside it.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;

use autodidact_envs::{
    Action, EnvError, MAX_DISCRETE_N, MAX_SHAPE_DIMS, MAX_SPACE_ELEMENTS, ProtocolError,
    RemoteConfig, RemoteEnv, Space, Transport,
};
use proptest::prelude::*;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde_json::json;

/// Connects to a one-shot TCP peer that declares `action_space` in its hello.
fn handshake_with(action_space: serde_json::Value) -> Result<RemoteEnv, EnvError> {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let hello = json!({"type": "hello", "protocol": 1,
        "observation_space": {"type": "Box", "low": null, "high": null, "shape": [1]},
        "action_space": action_space});
    let server = std::thread::spawn(move || {
        let (sock, _) = listener.accept().unwrap();
        let mut line = String::new();
        let _ = BufReader::new(&sock).read_line(&mut line);
        let _ = (&sock).write_all(format!("{hello}\n").as_bytes());
    });
    let r = RemoteEnv::connect(
        Transport::Tcp {
            addr: addr.to_string(),
        },
        RemoteConfig::default(),
    );
    server.join().unwrap();
    r
}

fn bad_space(r: Result<RemoteEnv, EnvError>) -> String {
    match r {
        Err(EnvError::Protocol(ProtocolError::BadSpace(m))) => m,
        Err(e) => panic!("expected a bad-space error, got {e:?}"),
        Ok(_) => panic!("expected a bad-space error, got a session"),
    }
}

#[test]
fn handshake_rejects_huge_discrete_spaces() {
    let m = bad_space(handshake_with(
        json!({"type": "Discrete", "n": 1_099_511_627_776u64}),
    ));
    assert!(m.contains("65536"), "the limit is named: {m}");
    assert!(handshake_with(json!({"type": "Discrete", "n": MAX_DISCRETE_N})).is_ok());
    bad_space(handshake_with(
        json!({"type": "MultiDiscrete", "nvec": [2, MAX_DISCRETE_N + 1]}),
    ));
}

#[test]
fn handshake_rejects_huge_boxes_before_allocating_them() {
    // Scalar bounds would be expanded to one per element: the size is checked first.
    bad_space(handshake_with(
        json!({"type": "Box", "low": -1, "high": 1, "shape": [1 << 20, 2]}),
    ));
    bad_space(handshake_with(
        json!({"type": "Box", "low": -1, "high": 1, "shape": [65536, 65536, 65536, 65536]}),
    ));
    assert!(
        handshake_with(json!({"type": "Box", "low": -1, "high": 1, "shape": [1024, 1024]})).is_ok()
    );
}

#[test]
fn handshake_rejects_empty_or_nan_bounds() {
    // low > high, low = +inf (1e39 overflows f32), high = -inf: no action could be valid.
    bad_space(handshake_with(
        json!({"type": "Box", "low": [1.0], "high": [-1.0], "shape": [1]}),
    ));
    bad_space(handshake_with(
        json!({"type": "Box", "low": [1e39], "high": [null], "shape": [1]}),
    ));
    bad_space(handshake_with(
        json!({"type": "Box", "low": [null], "high": [-1e39], "shape": [1]}),
    ));
}

#[test]
fn extreme_finite_bounds_sample_inside_the_box() {
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    for (l, h) in [
        (-3.4e38f32, 3.4e38f32),
        (f32::MIN, f32::MAX),
        (f32::MAX, f32::MAX),
        (f32::MIN, f32::INFINITY),
        (f32::NEG_INFINITY, f32::MIN),
        (f32::MAX, f32::INFINITY),
        (f32::NEG_INFINITY, -5.0),
        (5.0, f32::INFINITY),
    ] {
        let s = Space::flat_box(vec![l], vec![h]).unwrap();
        for _ in 0..100 {
            let a = s.sample(&mut rng);
            assert!(s.validate(&a).is_ok(), "[{l}, {h}]: sampled {a:?}");
        }
    }
}

#[test]
fn constructors_refuse_oversized_spaces() {
    // The product overflows usize: no panic, no allocation, an error.
    assert!(Space::try_uniform_box(0.0, 1.0, vec![usize::MAX, 2]).is_err());
    assert!(Space::try_uniform_box(0.0, 1.0, vec![MAX_SPACE_ELEMENTS + 1]).is_err());
    assert!(Space::try_uniform_box(0.0, 1.0, vec![MAX_SPACE_ELEMENTS]).is_ok());
    assert!(Space::try_uniform_box(0.0, 1.0, vec![1; MAX_SHAPE_DIMS + 1]).is_err());
    // The infallible form yields a space that `check` rejects instead of allocating.
    let s = Space::uniform_box(0.0, 1.0, vec![usize::MAX, 2]);
    assert!(s.check().is_err());
    assert_eq!(s.flat_dim(), usize::MAX, "flat_dim saturates");
    assert!(Space::flat_box(vec![f32::NAN], vec![1.0]).is_err());
    assert!(
        Space::Discrete {
            n: MAX_DISCRETE_N + 1
        }
        .check()
        .is_err()
    );
}

/// Bounds that break naive arithmetic, mixed with ordinary ones.
fn bound() -> impl Strategy<Value = f32> {
    prop_oneof![
        Just(f32::MAX),
        Just(f32::MIN),
        Just(3.4e38f32),
        Just(-3.4e38f32),
        Just(f32::INFINITY),
        Just(f32::NEG_INFINITY),
        Just(f32::NAN),
        Just(0.0f32),
        Just(-0.0f32),
        Just(f32::MIN_POSITIVE),
        Just(1e-45f32),
        -10.0f32..10.0,
        any::<f32>(),
    ]
}

fn space() -> impl Strategy<Value = Space> {
    let count = prop_oneof![
        Just(0u64),
        1u64..10,
        Just(MAX_DISCRETE_N),
        Just(MAX_DISCRETE_N + 1),
        Just(1 << 40),
        Just(u64::MAX),
        any::<u64>(),
    ];
    let dim = prop_oneof![
        0usize..5,
        Just(1024usize),
        Just(1 << 20),
        Just(usize::MAX),
        any::<usize>()
    ];
    prop_oneof![
        count.clone().prop_map(|n| Space::Discrete { n }),
        prop::collection::vec(count, 0..4).prop_map(|nvec| Space::MultiDiscrete { nvec }),
        (
            prop::collection::vec(dim, 0..4),
            prop::collection::vec((bound(), bound()), 0..6)
        )
            .prop_map(|(shape, bounds)| {
                // Bounds for every element when the shape is small; a wrong count otherwise
                // (a huge shape must be rejected without anyone allocating its bounds).
                let n = shape
                    .iter()
                    .try_fold(1usize, |a, &d| a.checked_mul(d))
                    .unwrap_or(usize::MAX);
                let bounds: Vec<(f32, f32)> = if n <= 64 {
                    bounds.iter().copied().cycle().take(n).collect()
                } else {
                    bounds
                };
                let (low, high) = bounds.into_iter().unzip();
                Space::Box { low, high, shape }
            }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn spaces_are_rejected_or_sample_valid_actions(s in space(), seed in any::<u64>()) {
        // Whatever the space, nothing panics.
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let _ = s.flat_dim();
        if s.check().is_err() {
            let _ = s.sample(&mut rng);
            return Ok(());
        }
        for _ in 0..8 {
            let a = s.sample(&mut rng);
            prop_assert!(s.validate(&a).is_ok(), "{:?} sampled {:?}", s, a);
        }
        // The protocol form round-trips and passes the same checks.
        let back = Space::from_json(&s.to_json());
        prop_assert!(back.is_ok(), "{:?}: {:?}", s, back);
    }

    #[test]
    fn discrete_samples_stay_below_n(n in 1u64..=MAX_DISCRETE_N, seed in any::<u64>()) {
        let s = Space::Discrete { n };
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        match s.sample(&mut rng) {
            Action::Discrete(a) => prop_assert!(a >= 0 && (a as u64) < n),
            other => prop_assert!(false, "{:?}", other),
        }
    }
}

#[test]
fn native_worlds_refuse_sizes_over_the_limits() {
    use autodidact_envs::{Drift, DriftingBandit, GridWorld};
    let arms = MAX_DISCRETE_N as usize;
    assert!(DriftingBandit::new(arms, Drift::None, 1.0).is_ok());
    assert!(DriftingBandit::new(arms + 1, Drift::None, 1.0).is_err());
    // 1025 × 1024 cells: one observation element per cell is over the limit.
    let row = ".".repeat(1025);
    let mut map = format!("S{}\n", &row[1..]);
    for _ in 0..1022 {
        map.push_str(&row);
        map.push('\n');
    }
    map.push_str(&format!("{}G\n", &row[1..]));
    assert!(GridWorld::from_ascii(&map).is_err());
}

/// A world whose action space was built by hand with inverted bounds (never checked).
struct Inverted(Space, Space);

impl autodidact_envs::Env for Inverted {
    fn observation_space(&self) -> &Space {
        &self.0
    }
    fn action_space(&self) -> &Space {
        &self.1
    }
    fn reset(
        &mut self,
        _seed: Option<u64>,
    ) -> autodidact_envs::Result<(autodidact_envs::Observation, autodidact_envs::Info)> {
        Ok((vec![0.0], Default::default()))
    }
    fn step(&mut self, action: &Action) -> autodidact_envs::Result<autodidact_envs::Step> {
        self.1.validate(action)?;
        Ok(autodidact_envs::Step {
            obs: vec![0.0],
            reward: 0.0,
            terminated: false,
            truncated: false,
            info: Default::default(),
        })
    }
}

#[test]
fn clip_action_on_an_unchecked_space_is_an_error_not_a_panic() {
    use autodidact_envs::Env;
    let bad = Space::Box {
        low: vec![1.0],
        high: vec![-1.0],
        shape: vec![1],
    };
    assert!(bad.check().is_err());
    let mut env = autodidact_envs::wrappers::ClipAction::new(Inverted(
        Space::uniform_box(-1.0, 1.0, vec![1]),
        bad,
    ));
    env.reset(None).unwrap();
    assert!(matches!(
        env.step(&Action::Continuous(vec![0.0])),
        Err(EnvError::InvalidAction(_))
    ));
}
