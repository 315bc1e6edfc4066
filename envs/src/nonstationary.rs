//! Non-stationary worlds for continual learning: a CartPole whose physics change on a schedule
//! or on command, and a multi-armed bandit whose arm means drift.
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
}

impl CartPoleSchedule {
    fn at(&self, step: u64, base: CartPoleParams) -> (CartPoleParams, u64) {
        match self {
            CartPoleSchedule::Constant => (base, 0),
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
        let mut s = Self {
            inner: CartPole::new(),
            base: CartPoleParams::default(),
            schedule,
            control: CartPoleControl::default(),
            total_steps: 0,
            phase: 0,
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

    fn apply(&mut self) -> Result<()> {
        let (p, phase) = match self.control.get() {
            Some(p) => (p, u64::MAX),
            None => self.schedule.at(self.total_steps, self.base),
        };
        self.phase = phase;
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
        self.apply()?;
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
