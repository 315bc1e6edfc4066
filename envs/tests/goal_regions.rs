//! The goal-regions world: moves, rewards, hidden regime, schedule and control, seeding,
//! configuration errors, and that it is learnable and that a change of regime breaks a learned
//! policy (what the continual benchmark of issue 14 needs from it).

use autodidact_envs::wrappers::TimeLimit;
use autodidact_envs::{
    Action, Env, EnvError, GoalControl, GoalRegion, GoalRegions, GoalRegionsError,
    GoalRegionsParams, GoalSchedule, MAX_REGIMES, Registry,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const UP: i64 = 0;
const DOWN: i64 = 1;
const LEFT: i64 = 2;
const RIGHT: i64 = 3;

/// The default world, but every episode starts exactly at the centre.
fn centred(schedule: GoalSchedule) -> GoalRegions {
    GoalRegions::with_params(
        GoalRegionsParams {
            start_spread: 0.0,
            ..GoalRegionsParams::default()
        },
        schedule,
    )
    .unwrap()
}

fn step(env: &mut impl Env, a: i64) -> autodidact_envs::Step {
    env.step(&Action::Discrete(a)).unwrap()
}

fn close(o: &[f32], want: [f32; 2]) -> bool {
    o.len() == 2 && (o[0] - want[0]).abs() < 1e-5 && (o[1] - want[1]).abs() < 1e-5
}

#[test]
fn moves_go_one_step_and_clip_to_the_square() {
    let mut env = centred(GoalSchedule::Constant(0));
    let (o, _) = env.reset(Some(0)).unwrap();
    assert!(close(&o, [0.0, 0.0]), "{o:?}");
    assert!(close(&step(&mut env, UP).obs, [0.0, 0.1]));
    assert!(close(&step(&mut env, DOWN).obs, [0.0, 0.0]));
    assert!(close(&step(&mut env, RIGHT).obs, [0.1, 0.0]));
    assert!(close(&step(&mut env, LEFT).obs, [0.0, 0.0]));
    // Far past the left edge, then the top edge: clipped to the corner (-1, 1).
    for _ in 0..15 {
        step(&mut env, LEFT);
    }
    assert!(close(
        &env.position().unwrap().map(|v| v as f32),
        [-1.0, 0.0]
    ));
    let mut last = None;
    for _ in 0..15 {
        last = Some(step(&mut env, UP));
    }
    let last = last.unwrap();
    assert_eq!(last.obs, vec![-1.0, 1.0]);
    assert!(!last.terminated && !last.truncated);
    assert_eq!(
        env.observation_space(),
        &autodidact_envs::Space::uniform_box(-1.0, 1.0, vec![2])
    );
    // Not an action of the world.
    assert!(matches!(
        env.step(&Action::Discrete(4)),
        Err(EnvError::InvalidAction(_))
    ));
}

#[test]
fn reaching_the_goal_pays_one_and_terminates_other_steps_cost() {
    let mut env = centred(GoalSchedule::Constant(0));
    assert!(matches!(
        env.step(&Action::Discrete(UP)),
        Err(EnvError::NeedsReset)
    ));
    env.reset(None).unwrap();
    // A is the disc of radius 0.2 around (0.7, 0.7): (0.6, 0.5) is outside, (0.6, 0.6) in.
    let mut rewards = vec![];
    let mut last = None;
    for a in [RIGHT; 6].into_iter().chain([UP; 6]) {
        let s = step(&mut env, a);
        rewards.push(s.reward);
        last = Some(s);
    }
    let last = last.unwrap();
    assert!(last.terminated && !last.truncated);
    assert_eq!(rewards[..11], [-0.01; 11]);
    assert_eq!(rewards[11], 1.0);
    assert!(close(&last.obs, [0.6, 0.6]), "{:?}", last.obs);
    // The episode is over: the world wants a reset (where a regime change would happen).
    assert!(matches!(
        env.step(&Action::Discrete(UP)),
        Err(EnvError::NeedsReset)
    ));
    // Under regime B the same walk does not end the episode.
    let mut env = centred(GoalSchedule::Constant(1));
    env.reset(None).unwrap();
    for a in [RIGHT; 6].into_iter().chain([UP; 6]) {
        let s = step(&mut env, a);
        assert!(!s.terminated);
        assert_eq!(s.reward, -0.01);
    }
}

#[test]
fn the_regime_is_in_info_never_in_the_observation() {
    let control = GoalControl::new(4).unwrap();
    let mut traces = vec![];
    for (r, name, goal) in [
        (0, "A", [0.7, 0.7]),
        (1, "B", [-0.7, -0.7]),
        (2, "C", [-0.7, 0.7]),
        (3, "D", [0.7, -0.7]),
    ] {
        control.set(r).unwrap();
        let mut env = GoalRegions::new(GoalSchedule::Constant(0))
            .unwrap()
            .with_control(control.clone())
            .unwrap();
        assert_eq!(env.observation_space().flat_dim(), 2);
        let (o, info) = env.reset(Some(7)).unwrap();
        assert_eq!(info["regime"], name);
        assert_eq!(info["regime_index"], r);
        assert_eq!(info["goal"], serde_json::json!(goal));
        assert_eq!(info["phase"], "commanded");
        let mut trace = vec![o];
        // Walking along the x axis reaches no goal, so every regime sees the same steps.
        for a in [LEFT, LEFT, RIGHT, DOWN, UP] {
            let s = step(&mut env, a);
            assert_eq!(s.info["regime"], name);
            trace.push(s.obs);
        }
        traces.push(trace);
    }
    assert!(traces.windows(2).all(|w| w[0] == w[1]), "{traces:?}");
}

#[test]
fn a_schedule_switches_at_its_step_count_and_only_at_a_reset() {
    let sched = GoalSchedule::Cycle {
        regimes: vec![0, 1, 2],
        every: 10,
    };
    let mut env = centred(sched.clone());
    let (_, info) = env.reset(Some(1)).unwrap();
    assert_eq!(
        (info["regime"].as_str(), info["phase"].as_u64()),
        (Some("A"), Some(0))
    );
    // 15 steps in one episode: past the switch point, but the episode keeps its goal.
    for i in 0..15 {
        let s = step(&mut env, if i % 2 == 0 { LEFT } else { RIGHT });
        assert_eq!(s.info["regime"], "A", "step {i}");
        assert_eq!(s.info["total_steps"], i + 1);
    }
    let (_, info) = env.reset(None).unwrap();
    assert_eq!(
        (info["regime"].as_str(), info["phase"].as_u64()),
        (Some("B"), Some(1))
    );

    // The boundary itself: after 9 steps still A, after 10 steps B.
    let mut env = centred(sched.clone());
    env.reset(None).unwrap();
    for _ in 0..9 {
        step(&mut env, UP);
    }
    assert_eq!(env.reset(None).unwrap().1["regime"], "A");
    step(&mut env, UP);
    assert_eq!(env.total_steps(), 10);
    assert_eq!(env.reset(None).unwrap().1["regime"], "B");
    for _ in 0..10 {
        step(&mut env, DOWN);
    }
    assert_eq!(env.reset(None).unwrap().1["regime"], "C");
    // Then it wraps around to A, and a seed does not restart the schedule.
    for _ in 0..10 {
        step(&mut env, DOWN);
    }
    let (_, info) = env.reset(Some(3)).unwrap();
    assert_eq!(
        (info["regime"].as_str(), info["phase"].as_u64()),
        (Some("A"), Some(3))
    );
    assert_eq!(env.regime(), 0);

    // The benchmark's schedule: A B A B C A, repeating.
    let mut env = centred(GoalSchedule::returning_cycle(2));
    let mut seen = String::new();
    for _ in 0..7 {
        seen.push_str(env.reset(None).unwrap().1["regime"].as_str().unwrap());
        step(&mut env, LEFT);
        step(&mut env, RIGHT);
    }
    assert_eq!(seen, "ABABCAA");
}

#[test]
fn one_control_switches_every_world_sharing_it_at_their_next_reset() {
    let control = GoalControl::new(4).unwrap();
    let sched = GoalSchedule::returning_cycle(1_000);
    let mut a = GoalRegions::new(sched.clone())
        .unwrap()
        .with_control(control.clone())
        .unwrap();
    let b = GoalRegions::new(GoalSchedule::Constant(3))
        .unwrap()
        .with_control(a.control())
        .unwrap();
    // The second world lives boxed in another thread, as an actor's would.
    let (go, wait) = std::sync::mpsc::channel::<()>();
    let (tell, hear) = std::sync::mpsc::channel();
    let actor = std::thread::spawn(move || {
        let mut env: Box<dyn Env> = Box::new(TimeLimit::new(b, 100).unwrap());
        while wait.recv().is_ok() {
            let (_, info) = env.reset(None).unwrap();
            let mid = env.step(&Action::Discrete(LEFT)).unwrap().info;
            tell.send((info["regime"].clone(), mid["regime"].clone()))
                .unwrap();
        }
    });
    assert_eq!(a.reset(None).unwrap().1["regime"], "A");
    go.send(()).unwrap();
    assert_eq!(hear.recv().unwrap().0, "D");

    step(&mut a, LEFT);
    control.set(2).unwrap();
    // Mid-episode nothing changes; at the next reset both are C.
    assert_eq!(step(&mut a, RIGHT).info["regime"], "A");
    assert_eq!(a.reset(None).unwrap().1["regime"], "C");
    go.send(()).unwrap();
    assert_eq!(hear.recv().unwrap(), ("C".into(), "C".into()));
    // Cleared: back to each world's own schedule.
    control.clear();
    assert_eq!(control.get(), None);
    assert_eq!(a.reset(None).unwrap().1["regime"], "A");
    go.send(()).unwrap();
    assert_eq!(hear.recv().unwrap().0, "D");
    drop(go);
    actor.join().unwrap();

    // A bad command fails where it is given, and a handle must fit its world.
    assert!(matches!(
        control.set(4),
        Err(EnvError::GoalRegions(GoalRegionsError::UnknownRegime {
            index: 4,
            regimes: 4
        }))
    ));
    assert_eq!(control.get(), None);
    assert!(matches!(
        GoalRegions::new(GoalSchedule::Constant(0))
            .unwrap()
            .with_control(GoalControl::new(3).unwrap()),
        Err(EnvError::GoalRegions(GoalRegionsError::ControlMismatch {
            control: 3,
            world: 4
        }))
    ));
}

#[test]
fn seeded_resets_are_reproducible() {
    let run = |seeds: &[Option<u64>]| {
        let mut env = GoalRegions::new(GoalSchedule::Constant(0)).unwrap();
        let mut out = vec![];
        for s in seeds {
            let (o, _) = env.reset(*s).unwrap();
            out.push(o.clone());
            out.push(step(&mut env, UP).obs);
        }
        out
    };
    let a = run(&[Some(5), None, None]);
    assert_eq!(a, run(&[Some(5), None, None]));
    assert_ne!(a[0], run(&[Some(6)])[0]);
    // An unseeded reset continues the stream: a new start.
    assert_ne!(a[0], a[2]);
    // Starts stay in the start square and are not all the centre.
    for o in [&a[0], &a[2], &a[4]] {
        assert!(o.iter().all(|v| v.abs() <= 0.1 && *v != 0.0), "{o:?}");
    }
}

#[test]
fn bad_configurations_are_typed_errors() {
    let err = |p: GoalRegionsParams, s: GoalSchedule| match GoalRegions::with_params(p, s) {
        Err(EnvError::GoalRegions(e)) => e,
        other => panic!("expected a goal-regions error, got {other:?}"),
    };
    let d = GoalRegionsParams::default;
    let c0 = || GoalSchedule::Constant(0);
    assert_eq!(
        err(
            d(),
            GoalSchedule::Cycle {
                regimes: vec![],
                every: 5
            }
        ),
        GoalRegionsError::EmptySchedule
    );
    assert_eq!(
        err(
            d(),
            GoalSchedule::Cycle {
                regimes: vec![0, 1],
                every: 0
            }
        ),
        GoalRegionsError::ZeroEvery
    );
    assert_eq!(
        err(
            d(),
            GoalSchedule::Cycle {
                regimes: vec![0, 4],
                every: 5
            }
        ),
        GoalRegionsError::UnknownRegime {
            index: 4,
            regimes: 4
        }
    );
    assert_eq!(
        err(d(), GoalSchedule::Constant(9)),
        GoalRegionsError::UnknownRegime {
            index: 9,
            regimes: 4
        }
    );
    let regions = |regions| GoalRegionsParams { regions, ..d() };
    assert_eq!(err(regions(vec![]), c0()), GoalRegionsError::NoRegions);
    let disc = GoalRegion {
        centre: [0.7, 0.7],
        radius: 0.2,
    };
    assert_eq!(
        err(regions(vec![disc; MAX_REGIMES + 1]), c0()),
        GoalRegionsError::TooManyRegions { count: 27, max: 26 }
    );
    assert!(GoalRegions::with_params(regions(vec![disc; MAX_REGIMES]), c0()).is_ok());
    for bad in [
        GoalRegion {
            centre: [1.5, 0.7],
            ..disc
        },
        GoalRegion {
            centre: [f64::NAN, 0.7],
            ..disc
        },
        GoalRegion {
            radius: 0.0,
            ..disc
        },
        GoalRegion {
            radius: f64::INFINITY,
            ..disc
        },
    ] {
        assert!(matches!(
            err(regions(vec![disc, bad]), c0()),
            GoalRegionsError::BadRegion { index: 1, .. }
        ));
    }
    // A disc reaching into the start square [-0.1, 0.1]².
    assert!(matches!(
        err(
            regions(vec![GoalRegion {
                centre: [0.25, 0.0],
                radius: 0.2
            }]),
            c0()
        ),
        GoalRegionsError::StartInsideGoal { index: 0, .. }
    ));
    for (p, name) in [
        (
            GoalRegionsParams {
                step_size: 0.0,
                ..d()
            },
            "step_size",
        ),
        (
            GoalRegionsParams {
                step_size: f64::NAN,
                ..d()
            },
            "step_size",
        ),
        (
            GoalRegionsParams {
                start_spread: -0.1,
                ..d()
            },
            "start_spread",
        ),
        (
            GoalRegionsParams {
                start_spread: 1.0,
                ..d()
            },
            "start_spread",
        ),
        (
            GoalRegionsParams {
                goal_reward: f64::INFINITY,
                ..d()
            },
            "goal_reward",
        ),
        (
            GoalRegionsParams {
                step_reward: f64::NAN,
                ..d()
            },
            "step_reward",
        ),
    ] {
        match err(p, c0()) {
            GoalRegionsError::BadParam { name: n, .. } => assert_eq!(n, name),
            other => panic!("{name}: {other:?}"),
        }
    }
    assert!(matches!(
        GoalControl::new(0),
        Err(EnvError::GoalRegions(GoalRegionsError::NoRegions))
    ));
    assert!(matches!(
        GoalControl::new(27),
        Err(EnvError::GoalRegions(
            GoalRegionsError::TooManyRegions { .. }
        ))
    ));
    assert_eq!(
        EnvError::from(GoalRegionsError::ZeroEvery).fault_kind(),
        None
    );
}

#[test]
fn registered_ids_have_a_time_limit_and_the_benchmark_schedule() {
    let reg = Registry::with_builtins();
    for id in ["goal-regions", "GoalRegions-v0"] {
        let mut env = reg.make(id).unwrap();
        let (_, info) = env.reset(Some(0)).unwrap();
        assert_eq!(info["regime"], "A");
        // Bounce between two cells: no goal, cut at 100 steps with a return of -1.
        let mut ret = 0.0;
        for i in 1..=100 {
            let s = env
                .step(&Action::Discrete(if i % 2 == 0 { LEFT } else { RIGHT }))
                .unwrap();
            ret += s.reward;
            assert!(!s.terminated);
            assert_eq!(s.truncated, i == 100, "{id} step {i}");
        }
        assert!((ret + 1.0).abs() < 1e-9, "{ret}");
    }
    let mut env = reg.make("goal-regions-cycle").unwrap();
    let mut seen = vec![];
    // 20 000-step phases: 201 episodes of 100 steps reach the second phase.
    for _ in 0..202 {
        let (_, info) = env.reset(None).unwrap();
        let r = info["regime"].as_str().unwrap().to_string();
        if seen.last() != Some(&r) {
            seen.push(r);
        }
        loop {
            let s = env.step(&Action::Discrete(LEFT)).unwrap();
            assert!(!s.terminated);
            if s.truncated {
                break;
            }
        }
    }
    assert_eq!(seen, ["A", "B"]);
    assert!(reg.make("GoalRegionsCycle-v0").is_ok());
}

#[test]
fn parameterised_ids_hold_a_region_or_cycle_at_a_given_pace() {
    let reg = Registry::with_builtins();
    for (id, want) in [("goal-regions:A", "A"), ("goal-regions:C", "C")] {
        let mut env = reg.make(id).unwrap();
        for _ in 0..3 {
            let (_, info) = env.reset(None).unwrap();
            assert_eq!(info["regime"], want, "{id}");
            while !env.step(&Action::Discrete(LEFT)).unwrap().truncated {}
        }
    }
    // Phases of 200 steps: two 100-step episodes each.
    let mut env = reg.make("goal-regions:cycle:200").unwrap();
    let mut seen = vec![];
    for _ in 0..12 {
        let (_, info) = env.reset(None).unwrap();
        seen.push(info["regime"].as_str().unwrap().to_string());
        while !env.step(&Action::Discrete(LEFT)).unwrap().truncated {}
    }
    let want: Vec<&str> = ["A", "B", "A", "B", "C", "A"]
        .iter()
        .flat_map(|r| [*r, *r])
        .collect();
    assert_eq!(seen, want);
    for bad in [
        "goal-regions:",
        "goal-regions:a",
        "goal-regions:AB",
        "goal-regions:cycle:x",
    ] {
        match reg.make(bad) {
            Err(EnvError::Config(msg)) => assert!(msg.contains("goal-regions:"), "{msg}"),
            Err(e) => panic!("{bad}: {e}"),
            Ok(_) => panic!("{bad} was accepted"),
        }
    }
    // A region the world does not have, and a cycle of 0-step phases, are the world's errors.
    assert!(reg.make("goal-regions:Z").is_err());
    assert!(reg.make("goal-regions:cycle:0").is_err());
}

/// A scripted policy that walks towards `goal`, the larger gap first.
fn towards(goal: [f64; 2], obs: &[f32]) -> i64 {
    let (dx, dy) = (goal[0] - f64::from(obs[0]), goal[1] - f64::from(obs[1]));
    if dx.abs() > dy.abs() {
        if dx > 0.0 { RIGHT } else { LEFT }
    } else if dy > 0.0 {
        UP
    } else {
        DOWN
    }
}

/// Fraction of `episodes` that reach the goal, and the mean return, under `policy`.
fn evaluate(env: &mut impl Env, episodes: u64, policy: impl Fn(&[f32]) -> i64) -> (f64, f64) {
    let (mut wins, mut total) = (0u64, 0.0);
    for e in 0..episodes {
        let (mut o, _) = env.reset(Some(1_000 + e)).unwrap();
        loop {
            let s = env.step(&Action::Discrete(policy(&o))).unwrap();
            total += s.reward;
            if s.terminated {
                wins += 1;
            }
            if s.done() {
                break;
            }
            o = s.obs;
        }
    }
    (wins as f64 / episodes as f64, total / episodes as f64)
}

fn world(regime: usize) -> TimeLimit<GoalRegions> {
    TimeLimit::new(
        GoalRegions::new(GoalSchedule::Constant(regime)).unwrap(),
        100,
    )
    .unwrap()
}

#[test]
fn heading_for_the_goal_works_and_heading_for_a_moved_goal_fails() {
    let goals = GoalRegionsParams::default().regions;
    for (r, g) in goals.iter().enumerate() {
        let (wins, ret) = evaluate(&mut world(r), 50, |o| towards(g.centre, o));
        assert_eq!(wins, 1.0, "regime {r}");
        assert!(ret > 0.85, "regime {r}: mean return {ret}");
    }
    // Regime A's policy under B: every episode times out, return -1.
    let (wins, ret) = evaluate(&mut world(1), 50, |o| towards(goals[0].centre, o));
    assert_eq!(wins, 0.0);
    assert!((ret + 1.0).abs() < 1e-9, "{ret}");
}

/// Tabular Q-learning over 20×20 cells of the square.
struct QTable(Vec<[f64; 4]>);

impl QTable {
    fn cell(o: &[f32]) -> usize {
        let bin = |v: f32| (((v + 1.0) / 0.1).floor() as usize).min(19);
        bin(o[0]) * 20 + bin(o[1])
    }
    fn greedy(&self, o: &[f32]) -> i64 {
        let q = &self.0[Self::cell(o)];
        (0..4).fold(0, |b, a| if q[a] > q[b] { a } else { b }) as i64
    }
}

/// Trains a fresh table with ε-greedy Q-learning, checking the greedy policy every 500 steps;
/// returns the table and the steps taken until it first reached the goal in at least 90 % of
/// the evaluation episodes (None if never within `budget`).
fn q_learn(regime: usize, budget: u64, seed: u64) -> (QTable, Option<u64>) {
    let mut env = world(regime);
    let mut eval_env = world(regime);
    let mut q = QTable(vec![[0.0; 4]; 400]);
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let (alpha, gamma, eps) = (0.5, 0.99, 0.1);
    let mut steps = 0u64;
    let (mut o, _) = env.reset(Some(seed)).unwrap();
    while steps < budget {
        let a = if rng.random::<f64>() < eps {
            rng.random_range(0..4)
        } else {
            q.greedy(&o)
        };
        let s = env.step(&Action::Discrete(a)).unwrap();
        steps += 1;
        let (c, n) = (QTable::cell(&o), QTable::cell(&s.obs));
        let next = if s.terminated {
            0.0
        } else {
            q.0[n].iter().copied().fold(f64::NEG_INFINITY, f64::max)
        };
        let qa = &mut q.0[c][a as usize];
        *qa += alpha * (s.reward + gamma * next - *qa);
        o = if s.done() {
            env.reset(None).unwrap().0
        } else {
            s.obs
        };
        if steps % 500 == 0 && evaluate(&mut eval_env, 20, |o| q.greedy(o)).0 >= 0.9 {
            return (q, Some(steps));
        }
    }
    (q, None)
}

#[test]
fn q_learning_learns_each_regime_and_a_change_breaks_what_it_learned() {
    let mut learned = vec![];
    for regime in 0..3 {
        let (q, steps) = q_learn(regime, 30_000, 11 + regime as u64);
        let steps = steps.unwrap_or_else(|| panic!("regime {regime} not learned in 30 k steps"));
        eprintln!("regime {regime}: greedy policy reaches the goal in 90 % after {steps} steps");
        learned.push(q);
    }
    // The table learned for A, run under B and C: the goal moved, the policy fails.
    for regime in [1, 2] {
        let (wins, ret) = evaluate(&mut world(regime), 50, |o| learned[0].greedy(o));
        assert!(wins <= 0.1, "A's policy under regime {regime}: {wins}");
        assert!(
            ret < -0.5,
            "A's policy under regime {regime}: mean return {ret}"
        );
    }
}
