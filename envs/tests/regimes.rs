//! The lettered regime worlds of the continual benchmark (`cartpole-regimes:…`,
//! `bandit-regimes:…`): the regime follows the returning cycle, changes only at a reset, B's
//! motor is reversed, the bandit's means are fixed by the letter, and bad IDs are typed errors.

use autodidact_envs::nonstationary::{
    BANDIT_REGIME_ARMS, RegimeBandit, RegimeSchedule, bandit_regime_means,
};
use autodidact_envs::{Action, Env, EnvError, Registry};

fn regime_of(info: &autodidact_envs::Info) -> String {
    info["regime"].as_str().unwrap_or_default().to_string()
}

/// Plays `env` to the end of its episodes, `episodes` times, recording each episode's regime
/// and the step it started at.
fn regimes_by_episode(env: &mut dyn Env, episodes: usize, action: i64) -> Vec<(u64, String)> {
    let mut out = Vec::new();
    let mut step = 0u64;
    for e in 0..episodes {
        let (_, info) = env.reset(Some(e as u64)).unwrap();
        out.push((step, regime_of(&info)));
        loop {
            let s = env.step(&Action::Discrete(action)).unwrap();
            step += 1;
            // The regime never changes inside an episode.
            assert_eq!(regime_of(&s.info), out.last().unwrap().1, "step {step}");
            if s.terminated || s.truncated {
                break;
            }
        }
    }
    out
}

#[test]
fn bandit_cycle_follows_a_b_a_b_c_a_and_repeats_across_seeded_resets() {
    let reg = Registry::with_builtins();
    let mut env = reg.make("bandit-regimes:cycle:200").unwrap();
    // 100-pull episodes, 200-step phases: two episodes per phase.
    let got = regimes_by_episode(env.as_mut(), 14, 0);
    let want = ["A", "B", "A", "B", "C", "A", "A"];
    for (k, (start, regime)) in got.iter().enumerate() {
        assert_eq!(*start, k as u64 * 100);
        assert_eq!(regime, want[k / 2], "episode {k}");
    }
}

#[test]
fn bandit_means_are_fixed_by_the_letter_with_a_different_best_arm() {
    let best = |r: usize| {
        let m = bandit_regime_means(r).unwrap();
        assert_eq!(m.len(), BANDIT_REGIME_ARMS);
        m.iter()
            .enumerate()
            .fold((0, f64::MIN), |b, (i, &v)| if v > b.1 { (i, v) } else { b })
            .0
    };
    let arms: Vec<usize> = (0..3).map(best).collect();
    assert_eq!(arms, vec![0, 5, 3]);
    assert!(bandit_regime_means(3).is_none());
    // Two instances with different seeds see the same means; rewards differ only by noise.
    let reg = Registry::with_builtins();
    let mean_reward = |seed: u64, arm: i64| {
        let mut env = reg.make("bandit-regimes:B").unwrap();
        let mut sum = 0.0;
        for e in 0..20u64 {
            let (_, info) = env.reset(Some(seed * 1000 + e)).unwrap();
            assert_eq!(info["best_arm"], 5);
            for _ in 0..100 {
                sum += env.step(&Action::Discrete(arm)).unwrap().reward;
            }
        }
        sum / 2000.0
    };
    // 2000 pulls of unit noise: the mean is within 0.1 of the arm's mean (4.5 sigma).
    for seed in [1, 2] {
        assert!((mean_reward(seed, 5) - 1.0).abs() < 0.1);
        assert!((mean_reward(seed, 0) - 0.0).abs() < 0.1);
    }
    // A noiseless bandit pays exactly the means, and the regret of the best arm is 0.
    let mut quiet = RegimeBandit::new(RegimeSchedule::Fixed(2), 0.0).unwrap();
    quiet.reset(Some(0)).unwrap();
    let s = quiet.step(&Action::Discrete(3)).unwrap();
    assert_eq!((s.reward, s.info["regret"].as_f64()), (1.0, Some(0.0)));
    let s = quiet.step(&Action::Discrete(0)).unwrap();
    assert!((s.reward - -0.2).abs() < 1e-12, "{}", s.reward);
}

#[test]
fn cartpole_cycle_switches_at_resets_on_schedule() {
    let reg = Registry::with_builtins();
    let mut env = reg.make("cartpole-regimes:cycle:50").unwrap();
    let mut step = 0u64;
    let order = ["A", "B", "A", "B", "C", "A"];
    for e in 0..40u64 {
        let (_, info) = env.reset(Some(e)).unwrap();
        // The regime of an episode is the one scheduled at the step it starts.
        let want = order[((step / 50) % 6) as usize];
        assert_eq!(
            regime_of(&info),
            want,
            "episode {e} starting at step {step}"
        );
        let force = info["force_mag"].as_f64().unwrap();
        assert_eq!(force, if want == "B" { -10.0 } else { 10.0 });
        let length = info["pole_length"].as_f64().unwrap();
        assert_eq!(length, if want == "C" { 1.0 } else { 0.5 });
        loop {
            let s = env.step(&Action::Discrete((step % 2) as i64)).unwrap();
            step += 1;
            assert_eq!(regime_of(&s.info), want);
            if s.terminated || s.truncated {
                break;
            }
        }
    }
    assert!(
        step > 300,
        "40 episodes cover the whole cycle ({step} steps)"
    );
}

/// Pushing right from rest: in A the cart moves right, in B (motor reversed) left.
#[test]
fn regime_b_reverses_the_motor() {
    let reg = Registry::with_builtins();
    let cart_velocity_after_pushes = |id: &str| {
        let mut env = reg.make(id).unwrap();
        let (o, _) = env.reset(Some(7)).unwrap();
        let mut v = o[1];
        for _ in 0..5 {
            v = env.step(&Action::Discrete(1)).unwrap().obs[1];
        }
        v - o[1]
    };
    let a = cart_velocity_after_pushes("cartpole-regimes:A");
    let b = cart_velocity_after_pushes("cartpole-regimes:B");
    assert!(a > 0.5, "A: {a}");
    assert!(b < -0.5, "B: {b}");
    // Same seed, same start: only the motor's sign differs.
    assert!((a + b).abs() < 0.05, "A {a}, B {b}");
}

#[test]
fn unknown_letters_and_bad_phases_are_config_errors() {
    let reg = Registry::with_builtins();
    for id in [
        "cartpole-regimes:D",
        "cartpole-regimes:a",
        "cartpole-regimes:",
        "cartpole-regimes:AB",
        "cartpole-regimes:cycle:0",
        "cartpole-regimes:cycle:-5",
        "cartpole-regimes:cycle:x",
        "bandit-regimes:Z",
        "bandit-regimes:cycle:0",
        "bandit-regimes:cycle:99999999999999999999999",
    ] {
        match reg.make(id) {
            Err(EnvError::Config(msg)) => assert!(msg.contains("regimes"), "{id}: {msg}"),
            Err(other) => panic!("{id}: {other:?}"),
            Ok(_) => panic!("{id} was accepted"),
        }
    }
    assert!(matches!(
        RegimeBandit::new(RegimeSchedule::Fixed(0), f64::NAN),
        Err(EnvError::Config(_))
    ));
    assert!(matches!(
        RegimeBandit::new(
            RegimeSchedule::Cycle {
                regimes: vec![],
                every: 10
            },
            1.0
        ),
        Err(EnvError::Config(_))
    ));
}
