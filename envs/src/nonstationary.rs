//! Non-stationary worlds for continual learning: a CartPole whose physics change on a schedule
//! or on command, a multi-armed bandit whose arm means drift, and the lettered "regime" worlds
//! of the continual benchmark (issue 14), whose hidden regime follows a [`RegimeSchedule`] where
//! regimes come back (A → B → A → B → C → A).
//!
//! The hidden parameters are reported in `info`, never in the observation: the agent has to
//! notice the change from its own experience, while the experimenter can see it.

use std::sync::{Arc, Mutex};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::json;

use crate::classic::{CartPole, CartPoleParams};
use crate::env::{Env, Info, Observation, Step};
use crate::error::{EnvError, Result};
use crate::space::{Action, Space};

/// How CartPole's physics evolve over the total number of steps taken (across episodes).
#[derive(Clone, Debug, PartialEq)]
pub enum CartPoleSchedule {
    /// Never changes (only commands do).
    Constant,
    /// Switches to the next phase every `every` steps, wrapping around.
    Cycle {
        /// Steps per phase.
        every: u64,
        /// The parameter sets to cycle through.
        phases: Vec<CartPoleParams>,
    },
    /// Moves linearly from `from` to `to` over `over` steps, then holds `to`.
    Linear {
        /// Parameters at step 0.
        from: CartPoleParams,
        /// Parameters from step `over` on.
        to: CartPoleParams,
        /// Length of the drift in steps.
        over: u64,
    },
    /// The lettered regimes of [`cartpole_regime`] on a [`RegimeSchedule`]. Unlike the other
    /// schedules a change takes effect at the next reset, never inside an episode, so each
    /// episode's return measures one regime.
    Regimes(RegimeSchedule),
}

impl CartPoleSchedule {
    fn at(&self, step: u64, base: CartPoleParams) -> (CartPoleParams, u64) {
        match self {
            CartPoleSchedule::Constant => (base, 0),
            CartPoleSchedule::Regimes(r) => {
                let (phase, regime) = r.at(step);
                // The schedule was checked against the regimes at construction.
                (cartpole_regime(regime).unwrap_or(base), phase)
            }
            CartPoleSchedule::Cycle { every, phases } => {
                let phase = (step / (*every).max(1)) % phases.len().max(1) as u64;
                (phases.get(phase as usize).copied().unwrap_or(base), phase)
            }
            CartPoleSchedule::Linear { from, to, over } => {
                let t = if *over == 0 {
                    1.0
                } else {
                    (step as f64 / *over as f64).min(1.0)
                };
                let l = |a: f64, b: f64| a + (b - a) * t;
                let p = CartPoleParams {
                    gravity: l(from.gravity, to.gravity),
                    masscart: l(from.masscart, to.masscart),
                    masspole: l(from.masspole, to.masspole),
                    length: l(from.length, to.length),
                    force_mag: l(from.force_mag, to.force_mag),
                    tau: l(from.tau, to.tau),
                };
                (p, u64::from(step >= *over))
            }
        }
    }
}

/// A cloneable remote control for a [`NonStationaryCartPole`]: physics set here override the
/// schedule from the next step on, until cleared. Lets an experiment change the world "on
/// command" even after the env has been boxed and moved into an actor thread.
#[derive(Clone, Debug, Default)]
pub struct CartPoleControl(Arc<Mutex<Option<CartPoleParams>>>);

impl CartPoleControl {
    /// Overrides the physics from the next step on.
    pub fn set(&self, params: CartPoleParams) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Some(params);
    }

    /// Returns to the schedule.
    pub fn clear(&self) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    fn get(&self) -> Option<CartPoleParams> {
        *self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// CartPole whose physics follow a [`CartPoleSchedule`] or a [`CartPoleControl`] command.
#[derive(Debug)]
pub struct NonStationaryCartPole {
    inner: CartPole,
    base: CartPoleParams,
    schedule: CartPoleSchedule,
    control: CartPoleControl,
    total_steps: u64,
    phase: u64,
    /// The lettered regime in force, on a [`CartPoleSchedule::Regimes`] schedule.
    regime: Option<usize>,
}

impl NonStationaryCartPole {
    /// A CartPole following `schedule`; an empty `Cycle` or unphysical phase is an error.
    pub fn new(schedule: CartPoleSchedule) -> Result<Self> {
        if let CartPoleSchedule::Cycle { phases, every } = &schedule {
            if phases.is_empty() || *every == 0 {
                return Err(EnvError::Config("Cycle needs phases and every > 0".into()));
            }
            for p in phases {
                CartPole::with_params(*p)?;
            }
        }
        if let CartPoleSchedule::Regimes(r) = &schedule {
            r.check("cartpole-regimes", CARTPOLE_REGIMES)?;
        }
        let mut s = Self {
            inner: CartPole::new(),
            base: CartPoleParams::default(),
            schedule,
            control: CartPoleControl::default(),
            total_steps: 0,
            phase: 0,
            regime: None,
        };
        s.apply()?;
        Ok(s)
    }

    /// The default non-stationary CartPole: the pole's half-length alternates between 0.5 m
    /// and 1.0 m every `every` steps.
    pub fn pole_length_cycle(every: u64) -> Result<Self> {
        let base = CartPoleParams::default();
        let long = CartPoleParams {
            length: 1.0,
            ..base
        };
        Self::new(CartPoleSchedule::Cycle {
            every,
            phases: vec![base, long],
        })
    }

    /// Follows `control` instead of a handle of its own, so several environments (an actor's
    /// and an evaluator's) change together on one command.
    pub fn with_control(mut self, control: CartPoleControl) -> Result<Self> {
        self.control = control;
        self.apply()?;
        Ok(self)
    }

    /// The handle for changing physics on command.
    pub fn control(&self) -> CartPoleControl {
        self.control.clone()
    }

    /// A CartPole in one lettered regime for good (`cartpole-regimes:B`), or on the returning
    /// cycle (`cartpole-regimes:cycle:<steps>`); see [`cartpole_regime`].
    pub fn regimes(schedule: RegimeSchedule) -> Result<Self> {
        Self::new(CartPoleSchedule::Regimes(schedule))
    }

    fn apply(&mut self) -> Result<()> {
        let (p, phase) = match self.control.get() {
            Some(p) => (p, u64::MAX),
            None => self.schedule.at(self.total_steps, self.base),
        };
        self.phase = phase;
        self.regime = match (&self.schedule, phase) {
            (CartPoleSchedule::Regimes(r), p) if p != u64::MAX => Some(r.at(self.total_steps).1),
            _ => None,
        };
        self.inner.set_params(p)
    }

    fn info(&self) -> Info {
        let mut i = self.inner.params().to_info();
        i.insert(
            "phase".into(),
            if self.phase == u64::MAX {
                json!("commanded")
            } else {
                json!(self.phase)
            },
        );
        i.insert("total_steps".into(), json!(self.total_steps));
        if let Some(r) = self.regime {
            i.insert("regime".into(), json!(crate::goal_regions::regime_name(r)));
            i.insert("regime_index".into(), json!(r));
        }
        i
    }
}

impl Env for NonStationaryCartPole {
    fn observation_space(&self) -> &Space {
        self.inner.observation_space()
    }
    fn action_space(&self) -> &Space {
        self.inner.action_space()
    }
    fn reset(&mut self, seed: Option<u64>) -> Result<(Observation, Info)> {
        self.apply()?;
        let (o, _) = self.inner.reset(seed)?;
        Ok((o, self.info()))
    }
    fn step(&mut self, action: &Action) -> Result<Step> {
        // Lettered regimes change only at a reset (commands too): an episode's return then
        // measures one regime, and a benchmark's switch points are episode starts.
        if !matches!(self.schedule, CartPoleSchedule::Regimes(_)) {
            self.apply()?;
        }
        let mut s = self.inner.step(action)?;
        self.total_steps += 1;
        s.info = self.info();
        Ok(s)
    }
}

/// How a bandit's arm means move.
#[derive(Clone, Debug, PartialEq)]
pub enum Drift {
    /// Stationary.
    None,
    /// Every step each mean takes a Gaussian step of standard deviation `sigma`.
    RandomWalk {
        /// Per-step standard deviation.
        sigma: f64,
    },
    /// Every `every` steps all means are redrawn from N(0, 1).
    Abrupt {
        /// Steps between redraws.
        every: u64,
    },
}

/// A `k`-armed bandit with Gaussian rewards `N(mean[a], noise²)` and drifting means. The
/// observation is a constant `[1.0]`; `info` carries the means, the best arm and the regret of
/// the pull, so a continual learner's tracking can be measured.
#[derive(Debug)]
pub struct DriftingBandit {
    means: Vec<f64>,
    drift: Drift,
    noise: f64,
    rng: ChaCha8Rng,
    total_steps: u64,
    started: bool,
    obs_space: Space,
    act_space: Space,
}

fn std_normal<R: Rng + ?Sized>(rng: &mut R) -> f64 {
    // Box–Muller; one draw discarded keeps it stateless.
    let u1: f64 = 1.0 - rng.random::<f64>();
    let u2: f64 = rng.random();
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

impl DriftingBandit {
    /// `arms` arms (at most [`MAX_DISCRETE_N`](crate::space::MAX_DISCRETE_N)) with means from
    /// N(0, 1), reward noise `noise`, and the given drift.
    pub fn new(arms: usize, drift: Drift, noise: f64) -> Result<Self> {
        let ok = arms > 0
            && u64::try_from(arms).is_ok_and(|a| a <= crate::space::MAX_DISCRETE_N)
            && noise.is_finite()
            && noise >= 0.0
            && match drift {
                Drift::None => true,
                Drift::RandomWalk { sigma } => sigma.is_finite() && sigma >= 0.0,
                Drift::Abrupt { every } => every > 0,
            };
        if !ok {
            return Err(EnvError::Config(format!(
                "bandit arms {arms}, noise {noise}, drift {drift:?}"
            )));
        }
        Ok(Self {
            means: vec![0.0; arms],
            drift,
            noise,
            rng: ChaCha8Rng::seed_from_u64(rand::random()),
            total_steps: 0,
            started: false,
            obs_space: Space::uniform_box(0.0, 1.0, vec![1]),
            act_space: Space::Discrete { n: arms as u64 },
        })
    }

    /// The current arm means.
    pub fn means(&self) -> &[f64] {
        &self.means
    }

    fn redraw(&mut self) {
        for m in &mut self.means {
            *m = std_normal(&mut self.rng);
        }
    }

    fn best(&self) -> (usize, f64) {
        self.means
            .iter()
            .copied()
            .enumerate()
            .fold(
                (0, f64::NEG_INFINITY),
                |b, (i, m)| if m > b.1 { (i, m) } else { b },
            )
    }

    fn info(&self) -> Info {
        let mut i = Info::new();
        i.insert("arm_means".into(), json!(self.means));
        i.insert("best_arm".into(), json!(self.best().0));
        i.insert("total_steps".into(), json!(self.total_steps));
        i
    }
}

impl Env for DriftingBandit {
    fn observation_space(&self) -> &Space {
        &self.obs_space
    }
    fn action_space(&self) -> &Space {
        &self.act_space
    }
    /// A seed restarts the whole world (means included); `None` keeps the drifted means, so
    /// drift continues across episodes.
    fn reset(&mut self, seed: Option<u64>) -> Result<(Observation, Info)> {
        if let Some(s) = seed {
            self.rng = ChaCha8Rng::seed_from_u64(s);
            self.total_steps = 0;
            self.started = false;
        }
        if !self.started {
            self.redraw();
            self.started = true;
        }
        Ok((vec![1.0], self.info()))
    }
    fn step(&mut self, action: &Action) -> Result<Step> {
        self.act_space.validate(action)?;
        if !self.started {
            return Err(EnvError::NeedsReset);
        }
        let arm = match action {
            Action::Discrete(a) => *a as usize,
            _ => {
                return Err(EnvError::InvalidAction(
                    "bandit needs a discrete arm".into(),
                ));
            }
        };
        let (_, best) = self.best();
        let mean = self.means[arm];
        let reward = mean + self.noise * std_normal(&mut self.rng);
        let mut info = self.info();
        info.insert("regret".into(), json!(best - mean));
        self.total_steps += 1;
        match self.drift {
            Drift::None => {}
            Drift::RandomWalk { sigma } => {
                for i in 0..self.means.len() {
                    self.means[i] += sigma * std_normal(&mut self.rng);
                }
            }
            Drift::Abrupt { every } => {
                if self.total_steps % every == 0 {
                    self.redraw();
                }
            }
        }
        Ok(Step {
            obs: vec![1.0],
            reward,
            terminated: false,
            truncated: false,
            info,
        })
    }
}

/// Which lettered regime (0 is A) a regime world is in, by the steps its instance has taken
/// (counted across episodes; a seeded reset does not restart the count, so an agent that seeds
/// every episode still moves through the phases).
#[derive(Clone, Debug, PartialEq)]
pub enum RegimeSchedule {
    /// Always the given regime: a fresh-start baseline on one regime.
    Fixed(usize),
    /// Phase `k` (steps `k·every .. (k+1)·every`) uses `regimes[k % regimes.len()]`, repeating.
    Cycle {
        /// Regime index of each phase.
        regimes: Vec<usize>,
        /// Steps per phase (> 0).
        every: u64,
    },
}

impl RegimeSchedule {
    /// The continual benchmark's order, as `GoalSchedule::returning_cycle`: A → B → A → B →
    /// C → A, `every` steps each, then again from A. Two first visits (B, C) measure
    /// adaptation, three returns (A, B, A) measure recall.
    pub fn returning_cycle(every: u64) -> Self {
        RegimeSchedule::Cycle {
            regimes: vec![0, 1, 0, 1, 2, 0],
            every,
        }
    }

    /// Parses the part of an ID after `<world>:`: a regime letter (`B`) held for good, or
    /// `cycle:<steps>`, the [returning cycle](Self::returning_cycle) with phases of that many
    /// steps. A letter past the world's `regimes`, a phase of 0 steps or anything else is an
    /// [`EnvError::Config`] naming the ID.
    pub fn parse(world: &str, spec: &str, regimes: usize) -> Result<Self> {
        let schedule = if let Some(every) = spec.strip_prefix("cycle:") {
            let every: u64 = every.parse().map_err(|_| {
                EnvError::Config(format!(
                    "`{world}:{spec}`: the phase length must be a whole number of steps"
                ))
            })?;
            Self::returning_cycle(every)
        } else {
            let mut chars = spec.chars();
            match (chars.next(), chars.next()) {
                (Some(c @ 'A'..='Z'), None) => RegimeSchedule::Fixed(c as usize - 'A' as usize),
                _ => {
                    return Err(EnvError::Config(format!(
                        "`{world}:{spec}`: expected a regime letter (`{world}:B`) or \
                         `{world}:cycle:<steps per phase>`"
                    )));
                }
            }
        };
        schedule.check(world, regimes)?;
        Ok(schedule)
    }

    /// Every regime named exists among `regimes`, and a cycle has phases of at least a step.
    fn check(&self, world: &str, regimes: usize) -> Result<()> {
        let known = |r: usize| {
            if r < regimes {
                Ok(())
            } else {
                Err(EnvError::Config(format!(
                    "{world}: regime {} does not exist; the world has regimes A to {}",
                    crate::goal_regions::regime_name(r).unwrap_or_else(|| r.to_string()),
                    crate::goal_regions::regime_name(regimes.saturating_sub(1)).unwrap_or_default()
                )))
            }
        };
        match self {
            RegimeSchedule::Fixed(r) => known(*r),
            RegimeSchedule::Cycle { regimes: rs, every } => {
                if rs.is_empty() || *every == 0 {
                    return Err(EnvError::Config(format!(
                        "{world}: a cycle needs at least one regime and phases of at least one \
                         step (got {} regimes, {every} steps)",
                        rs.len()
                    )));
                }
                rs.iter().try_for_each(|&r| known(r))
            }
        }
    }

    /// `(phase, regime)` after `steps` steps.
    pub fn at(&self, steps: u64) -> (u64, usize) {
        match self {
            RegimeSchedule::Fixed(r) => (0, *r),
            RegimeSchedule::Cycle { regimes, every } => {
                let phase = steps / (*every).max(1);
                let len = u64::try_from(regimes.len()).unwrap_or(u64::MAX).max(1);
                let slot = usize::try_from(phase % len).unwrap_or(0);
                (phase, regimes.get(slot).copied().unwrap_or(0))
            }
        }
    }
}

/// Regimes of `cartpole-regimes`: 3 (A, B, C).
pub const CARTPOLE_REGIMES: usize = 3;

/// The physics of CartPole regime `index`, `None` past [`CARTPOLE_REGIMES`]:
/// - A: standard CartPole-v1;
/// - B: the motor reversed (`force_mag` −10 N): the policy for A pushes the wrong way;
/// - C: a pole twice as long (half-length 1.0 m) and three times as heavy (0.3 kg): slower to
///   fall, heavier to move, so A's timing is off. A fresh agent still learns it (measured by
///   the continual benchmark's fresh-start baseline).
pub fn cartpole_regime(index: usize) -> Option<CartPoleParams> {
    let a = CartPoleParams::default();
    match index {
        0 => Some(a),
        1 => Some(CartPoleParams {
            force_mag: -a.force_mag,
            ..a
        }),
        2 => Some(CartPoleParams {
            length: 1.0,
            masspole: 0.3,
            ..a
        }),
        _ => None,
    }
}

/// Arms of `bandit-regimes`.
pub const BANDIT_REGIME_ARMS: usize = 10;

/// Regimes of `bandit-regimes`: 3 (A, B, C).
pub const BANDIT_REGIMES: usize = 3;

/// The best arm of bandit regime `index` (A: 0, B: 5, C: 3), `None` past [`BANDIT_REGIMES`].
fn bandit_best_arm(index: usize) -> Option<usize> {
    [0, 5, 3].get(index).copied()
}

/// The arm means of bandit regime `index`, fixed by the letter (never by a seed), `None` past
/// [`BANDIT_REGIMES`]. The best arm pays 1.0; arm `best + k` (mod 10) pays `0.5 − 0.1·k`, so a
/// uniform policy earns 0.1 a pull and the arms near the best are not all good. The best arm of
/// A pays 0.0 in B and −0.2 in C: a policy for one regime is worse than random in the next.
pub fn bandit_regime_means(index: usize) -> Option<Vec<f64>> {
    let best = bandit_best_arm(index)?;
    Some(
        (0..BANDIT_REGIME_ARMS)
            .map(|a| {
                let k = (a + BANDIT_REGIME_ARMS - best) % BANDIT_REGIME_ARMS;
                if k == 0 { 1.0 } else { 0.5 - 0.1 * k as f64 }
            })
            .collect(),
    )
}

/// A 10-armed Gaussian bandit (`N(mean, noise²)` rewards) whose arm means are those of the
/// lettered regime ([`bandit_regime_means`]) its [`RegimeSchedule`] is in. The observation is
/// a constant `[1.0]`, so the regime is hidden; a change takes effect at the next reset. `info`
/// carries `regime`, `regime_index`, `phase`, `arm_means`, `best_arm`, `total_steps` and, on
/// a step, the pull's `regret`.
///
/// Unlike [`DriftingBandit`], a seed restarts only the reward noise, not the schedule.
#[derive(Debug)]
pub struct RegimeBandit {
    schedule: RegimeSchedule,
    noise: f64,
    rng: ChaCha8Rng,
    means: Vec<f64>,
    regime: usize,
    phase: u64,
    total_steps: u64,
    started: bool,
    obs_space: Space,
    act_space: Space,
}

impl RegimeBandit {
    /// A bandit on `schedule` with reward noise `noise` (finite, ≥ 0); a schedule naming a
    /// regime past [`BANDIT_REGIMES`] or a cycle of 0-step phases is an error.
    pub fn new(schedule: RegimeSchedule, noise: f64) -> Result<Self> {
        schedule.check("bandit-regimes", BANDIT_REGIMES)?;
        if !(noise.is_finite() && noise >= 0.0) {
            return Err(EnvError::Config(format!(
                "bandit-regimes: noise {noise} must be finite and ≥ 0"
            )));
        }
        let (phase, regime) = schedule.at(0);
        Ok(Self {
            means: bandit_regime_means(regime).unwrap_or_default(),
            schedule,
            noise,
            rng: ChaCha8Rng::seed_from_u64(rand::random()),
            regime,
            phase,
            total_steps: 0,
            started: false,
            obs_space: Space::uniform_box(0.0, 1.0, vec![1]),
            act_space: Space::Discrete {
                n: BANDIT_REGIME_ARMS as u64,
            },
        })
    }

    /// The regime of the current episode (set at the last reset).
    pub fn regime(&self) -> usize {
        self.regime
    }

    /// The current arm means.
    pub fn means(&self) -> &[f64] {
        &self.means
    }

    fn best(&self) -> (usize, f64) {
        self.means
            .iter()
            .copied()
            .enumerate()
            .fold(
                (0, f64::NEG_INFINITY),
                |b, (i, m)| if m > b.1 { (i, m) } else { b },
            )
    }

    fn info(&self) -> Info {
        let mut i = Info::new();
        i.insert(
            "regime".into(),
            json!(crate::goal_regions::regime_name(self.regime)),
        );
        i.insert("regime_index".into(), json!(self.regime));
        i.insert("phase".into(), json!(self.phase));
        i.insert("arm_means".into(), json!(self.means));
        i.insert("best_arm".into(), json!(self.best().0));
        i.insert("total_steps".into(), json!(self.total_steps));
        i
    }
}

impl Env for RegimeBandit {
    fn observation_space(&self) -> &Space {
        &self.obs_space
    }
    fn action_space(&self) -> &Space {
        &self.act_space
    }
    fn reset(&mut self, seed: Option<u64>) -> Result<(Observation, Info)> {
        if let Some(s) = seed {
            self.rng = ChaCha8Rng::seed_from_u64(s);
        }
        (self.phase, self.regime) = self.schedule.at(self.total_steps);
        // The schedule was checked, so the regime has means.
        self.means = bandit_regime_means(self.regime).unwrap_or_default();
        self.started = true;
        Ok((vec![1.0], self.info()))
    }
    fn step(&mut self, action: &Action) -> Result<Step> {
        self.act_space.validate(action)?;
        if !self.started {
            return Err(EnvError::NeedsReset);
        }
        let mean = match action {
            Action::Discrete(a) => usize::try_from(*a)
                .ok()
                .and_then(|a| self.means.get(a).copied()),
            _ => None,
        }
        .ok_or_else(|| EnvError::InvalidAction(format!("bandit-regimes: {action:?}")))?;
        let reward = mean + self.noise * std_normal(&mut self.rng);
        let mut info = self.info();
        info.insert("regret".into(), json!(self.best().1 - mean));
        self.total_steps = self.total_steps.saturating_add(1);
        Ok(Step {
            obs: vec![1.0],
            reward,
            terminated: false,
            truncated: false,
            info,
        })
    }
}
