//! A point in the plane looking for a goal region that moves: a small world for continual
//! learning whose regime (which region is the goal) is hidden from the agent.
//!
//! The agent sees only its own position, so after the goal moves the observations look the
//! same as before and only the rewards tell the change; a policy learned for one regime walks
//! to the wrong corner in another. This is the world of the continual benchmark (issue 14):
//! regimes come back (A → B → A → B → C → A), so a learner can be scored on adapting to a new
//! regime and on recalling an old one. The regime and the goal are reported in `info`.

use std::sync::{Arc, Mutex};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::json;

use crate::env::{Env, Info, Observation, Step};
use crate::error::{EnvError, Result};
use crate::space::{Action, Space};

/// Most regimes (goal regions) a [`GoalRegions`] world may have: 26, so that each has a
/// one-letter name `A`..`Z` in `info` and in benchmark tables.
pub const MAX_REGIMES: usize = 26;

/// A mistake in the configuration of a [`GoalRegions`] world, its schedule or its control.
///
/// Kept apart from [`EnvError::Config`]'s free text so a caller (a benchmark building worlds
/// from a config file) can tell which part of its configuration is wrong.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum GoalRegionsError {
    /// The world has no goal regions.
    #[error("a goal-regions world needs at least one region")]
    NoRegions,
    /// More regions than [`MAX_REGIMES`].
    #[error("{count} goal regions exceed the limit of {max}")]
    TooManyRegions {
        /// Regions given.
        count: usize,
        /// The limit, [`MAX_REGIMES`].
        max: usize,
    },
    /// A region's centre is not finite or lies outside the square [−1, 1]², or its radius is
    /// not in (0, 1].
    #[error("goal region {index}: {reason}")]
    BadRegion {
        /// Index of the region.
        index: usize,
        /// What is wrong with it.
        reason: String,
    },
    /// A region overlaps the square where episodes start, so an episode could start at its
    /// goal.
    #[error("goal region {index} overlaps the start square [-{spread}, {spread}]²")]
    StartInsideGoal {
        /// Index of the region.
        index: usize,
        /// Half-width of the start square.
        spread: f64,
    },
    /// A numeric parameter is out of its range (named, with the range in the message).
    #[error("parameter `{name}` = {value} is out of range: {range}")]
    BadParam {
        /// Which parameter.
        name: &'static str,
        /// The value given.
        value: f64,
        /// The accepted range, for a person.
        range: &'static str,
    },
    /// A `Cycle` schedule without phases.
    #[error("a Cycle schedule needs at least one regime")]
    EmptySchedule,
    /// A `Cycle` schedule with `every = 0` (a phase of no steps).
    #[error("a Cycle schedule needs every > 0 steps per phase")]
    ZeroEvery,
    /// A regime index (in a schedule or a command) that names no region.
    #[error("regime {index} does not exist; the world has {regimes} regimes")]
    UnknownRegime {
        /// The index given.
        index: usize,
        /// Regimes of the world.
        regimes: usize,
    },
    /// A [`GoalControl`] made for another number of regimes than the world it is given to.
    #[error("control handle is for {control} regimes, the world has {world}")]
    ControlMismatch {
        /// Regimes the handle was made for.
        control: usize,
        /// Regimes of the world.
        world: usize,
    },
}

/// The one-letter name of regime `index` (`0` → `"A"`), as reported in `info["regime"]`;
/// `None` past [`MAX_REGIMES`].
pub fn regime_name(index: usize) -> Option<String> {
    let i = u8::try_from(index)
        .ok()
        .filter(|&i| usize::from(i) < MAX_REGIMES)?;
    Some(char::from(b'A' + i).to_string())
}

/// A goal disc in the square [−1, 1]².
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GoalRegion {
    /// Centre `[x, y]`, inside the square.
    pub centre: [f64; 2],
    /// Radius, in (0, 1]; the agent reaches the goal when its distance to the centre is at
    /// most this.
    pub radius: f64,
}

/// The shape of a [`GoalRegions`] world: regions, move size, start spread, rewards.
#[derive(Clone, Debug, PartialEq)]
pub struct GoalRegionsParams {
    /// Regime `i` makes `regions[i]` the goal (1 to [`MAX_REGIMES`] regions).
    pub regions: Vec<GoalRegion>,
    /// Length of one move, in (0, 1].
    pub step_size: f64,
    /// Episodes start uniformly in [−spread, spread]², with spread in [0, 1); a region may not
    /// overlap this square.
    pub start_spread: f64,
    /// Reward for the step that reaches the goal (finite).
    pub goal_reward: f64,
    /// Reward for every other step (finite).
    pub step_reward: f64,
}

impl Default for GoalRegionsParams {
    /// Four corner discs of radius 0.2 at (±0.7, ±0.7): A top right, B bottom left (opposite
    /// A, so a policy for A walks away from B), C top left, D bottom right. Moves of 0.1;
    /// starts within 0.1 of the centre, so a goal is at least 9 moves away and a random walk
    /// seldom finds it in 100 steps; +1 at the goal and −0.01 per other step keep a 100-step
    /// episode's return in [−1, 1].
    fn default() -> Self {
        let disc = |x, y| GoalRegion {
            centre: [x, y],
            radius: 0.2,
        };
        Self {
            regions: vec![
                disc(0.7, 0.7),
                disc(-0.7, -0.7),
                disc(-0.7, 0.7),
                disc(0.7, -0.7),
            ],
            step_size: 0.1,
            start_spread: 0.1,
            goal_reward: 1.0,
            step_reward: -0.01,
        }
    }
}

impl GoalRegionsParams {
    fn check(&self) -> std::result::Result<(), GoalRegionsError> {
        let count = self.regions.len();
        if count == 0 {
            return Err(GoalRegionsError::NoRegions);
        }
        if count > MAX_REGIMES {
            return Err(GoalRegionsError::TooManyRegions {
                count,
                max: MAX_REGIMES,
            });
        }
        let param = |name, value: f64, ok: bool, range| {
            if ok && value.is_finite() {
                Ok(())
            } else {
                Err(GoalRegionsError::BadParam { name, value, range })
            }
        };
        let (s, sp) = (self.step_size, self.start_spread);
        param("step_size", s, s > 0.0 && s <= 1.0, "(0, 1]")?;
        param("start_spread", sp, (0.0..1.0).contains(&sp), "[0, 1)")?;
        param("goal_reward", self.goal_reward, true, "finite")?;
        param("step_reward", self.step_reward, true, "finite")?;
        for (index, r) in self.regions.iter().enumerate() {
            let bad = |reason: String| Err(GoalRegionsError::BadRegion { index, reason });
            if !r.centre.iter().all(|c| c.is_finite() && c.abs() <= 1.0) {
                return bad(format!("centre {:?} is outside [-1, 1]²", r.centre));
            }
            if !(r.radius.is_finite() && r.radius > 0.0 && r.radius <= 1.0) {
                return bad(format!("radius {} is not in (0, 1]", r.radius));
            }
            // Distance from the centre to the nearest point of the start square.
            let gap = r.centre.map(|c| (c.abs() - sp).max(0.0));
            if gap[0].hypot(gap[1]) <= r.radius {
                return Err(GoalRegionsError::StartInsideGoal { index, spread: sp });
            }
        }
        Ok(())
    }
}

/// How the regime of a [`GoalRegions`] world follows the steps it has taken.
///
/// A change of regime takes effect at the next `reset`, never inside an episode: an episode
/// has one goal from start to end, so its return measures one regime, and the step where the
/// world changed is the first step of an episode (a benchmark's switch points are exact).
#[derive(Clone, Debug, PartialEq)]
pub enum GoalSchedule {
    /// Always the given regime (an index: 0 is A); only a [`GoalControl`] command changes it.
    Constant(usize),
    /// Phase `k` (steps `k·every .. (k+1)·every` of this instance, counted across episodes)
    /// uses regime `regimes[k % regimes.len()]`, repeating.
    Cycle {
        /// Regime index of each phase.
        regimes: Vec<usize>,
        /// Steps per phase (> 0).
        every: u64,
    },
}

impl GoalSchedule {
    /// The benchmark's schedule: A → B → A → B → C → A (regimes 0, 1, 0, 1, 2, 0), `every`
    /// steps each, repeating. Regimes come back, so both adaptation to a new regime (B, C) and
    /// recall of a seen one (A, B) can be measured.
    pub fn returning_cycle(every: u64) -> Self {
        GoalSchedule::Cycle {
            regimes: vec![0, 1, 0, 1, 2, 0],
            every,
        }
    }

    fn check(&self, regimes: usize) -> std::result::Result<(), GoalRegionsError> {
        let known = |index: usize| {
            if index < regimes {
                Ok(())
            } else {
                Err(GoalRegionsError::UnknownRegime { index, regimes })
            }
        };
        match self {
            GoalSchedule::Constant(r) => known(*r),
            GoalSchedule::Cycle { regimes: rs, every } => {
                if rs.is_empty() {
                    return Err(GoalRegionsError::EmptySchedule);
                }
                if *every == 0 {
                    return Err(GoalRegionsError::ZeroEvery);
                }
                rs.iter().try_for_each(|&r| known(r))
            }
        }
    }

    /// `(phase, regime)` after `steps` steps; the schedule is checked, so no fallback is hit.
    fn at(&self, steps: u64) -> (u64, usize) {
        match self {
            GoalSchedule::Constant(r) => (0, *r),
            GoalSchedule::Cycle { regimes, every } => {
                let phase = steps / (*every).max(1);
                let len = u64::try_from(regimes.len()).unwrap_or(u64::MAX).max(1);
                let slot = usize::try_from(phase % len).unwrap_or(0);
                (phase, regimes.get(slot).copied().unwrap_or(0))
            }
        }
    }
}

#[derive(Debug, Default)]
struct ControlState {
    commanded: Option<usize>,
}

/// A cloneable remote control for [`GoalRegions`] worlds: a regime set here overrides the
/// schedule from each world's next `reset` on, until cleared.
///
/// Clones share one state, so every world built with the same handle (all actors' instances
/// and an evaluator's) switches on one command, even after the worlds were boxed and moved
/// into threads. The handle knows how many regimes its worlds have, so a bad command fails
/// where it is given rather than later inside an actor.
#[derive(Clone, Debug)]
pub struct GoalControl {
    regimes: usize,
    state: Arc<Mutex<ControlState>>,
}

impl GoalControl {
    /// A handle for worlds of `regimes` regimes (1 to [`MAX_REGIMES`]).
    pub fn new(regimes: usize) -> Result<Self> {
        if regimes == 0 {
            return Err(GoalRegionsError::NoRegions.into());
        }
        if regimes > MAX_REGIMES {
            return Err(GoalRegionsError::TooManyRegions {
                count: regimes,
                max: MAX_REGIMES,
            }
            .into());
        }
        Ok(Self {
            regimes,
            state: Arc::default(),
        })
    }

    /// Regimes of the worlds this handle drives.
    pub fn regimes(&self) -> usize {
        self.regimes
    }

    /// Makes `regime` the goal of every world sharing this handle, from its next reset on.
    pub fn set(&self, regime: usize) -> Result<()> {
        if regime >= self.regimes {
            return Err(GoalRegionsError::UnknownRegime {
                index: regime,
                regimes: self.regimes,
            }
            .into());
        }
        self.lock().commanded = Some(regime);
        Ok(())
    }

    /// Returns the worlds to their schedules (from their next reset on).
    pub fn clear(&self) {
        self.lock().commanded = None;
    }

    /// The commanded regime, if any.
    pub fn get(&self) -> Option<usize> {
        self.lock().commanded
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ControlState> {
        // The state is a plain Option: a panic elsewhere cannot leave it half-written.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A point agent in [−1, 1]² that must reach the goal disc of the current, hidden regime.
///
/// - Observation: the position `[x, y]` (Box [−1, 1]², `f32`). The regime is never in it.
/// - Actions: `Discrete(4)`: 0 up (+y), 1 down (−y), 2 left (−x), 3 right (+x), each a move
///   of `step_size`, clipped to the square.
/// - Reward: `goal_reward` (+1) on the step that ends within the goal disc, which terminates
///   the episode; `step_reward` (−0.01) on every other step. No time limit of its own: the
///   registry wraps it in a `TimeLimit` (truncation).
/// - Reset: a start drawn uniformly in [−spread, spread]² from the env's seeded generator.
///   The regime is chosen at reset, by the [`GoalControl`] command if one is set, else by the
///   [`GoalSchedule`] at the steps taken so far. A seed restarts the start positions' random
///   stream, not the schedule: the schedule counts the steps of this instance since it was
///   built, so an agent that seeds every episode still moves through the phases.
/// - `info` (reset and step): `regime` (`"A"`…), `regime_index`, `goal` `[x, y]`,
///   `goal_radius`, `phase` (the schedule's phase number, or `"commanded"`), `total_steps`.
///
/// Each instance counts its own steps, so N instances on a `Cycle { every }` schedule change
/// regime every `every` steps each (N·`every` steps in all); to switch a whole vector of
/// actors at a point of the total, use one [`GoalControl`] for all of them.
#[derive(Debug)]
pub struct GoalRegions {
    params: GoalRegionsParams,
    schedule: GoalSchedule,
    control: GoalControl,
    rng: ChaCha8Rng,
    pos: Option<[f64; 2]>,
    regime: usize,
    phase: Option<u64>,
    total_steps: u64,
    obs_space: Space,
    act_space: Space,
}

impl GoalRegions {
    /// The default world ([`GoalRegionsParams::default`], four corner goals) on `schedule`.
    pub fn new(schedule: GoalSchedule) -> Result<Self> {
        Self::with_params(GoalRegionsParams::default(), schedule)
    }

    /// A world of the given shape on `schedule`; every parameter and schedule entry is
    /// checked ([`GoalRegionsError`]).
    pub fn with_params(params: GoalRegionsParams, schedule: GoalSchedule) -> Result<Self> {
        params.check()?;
        let regimes = params.regions.len();
        schedule.check(regimes)?;
        let (phase, regime) = schedule.at(0);
        Ok(Self {
            control: GoalControl::new(regimes)?,
            params,
            schedule,
            rng: ChaCha8Rng::seed_from_u64(rand::random()),
            pos: None,
            regime,
            phase: Some(phase),
            total_steps: 0,
            obs_space: Space::uniform_box(-1.0, 1.0, vec![2]),
            act_space: Space::Discrete { n: 4 },
        })
    }

    /// Follows `control` instead of a handle of its own, so several worlds change together on
    /// one command; the handle must be for as many regimes as this world has.
    pub fn with_control(mut self, control: GoalControl) -> Result<Self> {
        let world = self.params.regions.len();
        if control.regimes() != world {
            return Err(GoalRegionsError::ControlMismatch {
                control: control.regimes(),
                world,
            }
            .into());
        }
        self.control = control;
        Ok(self)
    }

    /// The handle for changing the regime on command.
    pub fn control(&self) -> GoalControl {
        self.control.clone()
    }

    /// The world's shape.
    pub fn params(&self) -> &GoalRegionsParams {
        &self.params
    }

    /// The regime of the current episode (set at the last reset), for tests and benches that
    /// hold the world directly.
    pub fn regime(&self) -> usize {
        self.regime
    }

    /// The agent's position, if an episode is running.
    pub fn position(&self) -> Option<[f64; 2]> {
        self.pos
    }

    /// Steps taken by this instance since it was built.
    pub fn total_steps(&self) -> u64 {
        self.total_steps
    }

    fn goal(&self) -> GoalRegion {
        // `regime` is checked against the regions by the schedule and the control.
        self.params
            .regions
            .get(self.regime)
            .copied()
            .unwrap_or(GoalRegion {
                centre: [0.0, 0.0],
                radius: 0.0,
            })
    }

    fn info(&self) -> Info {
        let goal = self.goal();
        let mut i = Info::new();
        i.insert("regime".into(), json!(regime_name(self.regime)));
        i.insert("regime_index".into(), json!(self.regime));
        i.insert("goal".into(), json!(goal.centre));
        i.insert("goal_radius".into(), json!(goal.radius));
        i.insert(
            "phase".into(),
            match self.phase {
                Some(p) => json!(p),
                None => json!("commanded"),
            },
        );
        i.insert("total_steps".into(), json!(self.total_steps));
        i
    }

    fn obs(pos: [f64; 2]) -> Observation {
        pos.iter().map(|&v| v as f32).collect()
    }
}

impl Env for GoalRegions {
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
        (self.phase, self.regime) = match self.control.get() {
            Some(r) => (None, r),
            None => {
                let (p, r) = self.schedule.at(self.total_steps);
                (Some(p), r)
            }
        };
        let sp = self.params.start_spread;
        let mut draw = || sp * (2.0 * self.rng.random::<f64>() - 1.0);
        let pos = [draw(), draw()];
        self.pos = Some(pos);
        Ok((Self::obs(pos), self.info()))
    }

    /// Stepping after the goal was reached is [`EnvError::NeedsReset`]: the regime changes
    /// only at a reset, so an episode run past its end would hide a scheduled change.
    fn step(&mut self, action: &Action) -> Result<Step> {
        self.act_space.validate(action)?;
        let [x, y] = self.pos.ok_or(EnvError::NeedsReset)?;
        let s = self.params.step_size;
        let (dx, dy) = match action {
            Action::Discrete(0) => (0.0, s),
            Action::Discrete(1) => (0.0, -s),
            Action::Discrete(2) => (-s, 0.0),
            Action::Discrete(3) => (s, 0.0),
            other => {
                return Err(EnvError::InvalidAction(format!(
                    "goal-regions needs Discrete(0..4), got {other:?}"
                )));
            }
        };
        let pos = [(x + dx).clamp(-1.0, 1.0), (y + dy).clamp(-1.0, 1.0)];
        self.total_steps = self.total_steps.saturating_add(1);
        let goal = self.goal();
        let terminated = (pos[0] - goal.centre[0]).hypot(pos[1] - goal.centre[1]) <= goal.radius;
        self.pos = if terminated { None } else { Some(pos) };
        Ok(Step {
            obs: Self::obs(pos),
            reward: if terminated {
                self.params.goal_reward
            } else {
                self.params.step_reward
            },
            terminated,
            truncated: false,
            info: self.info(),
        })
    }
}
