//! Native ports of Gymnasium's classic control envs: CartPole-v1, MountainCar-v0, Pendulum-v1.
//!
//! The arithmetic follows Gymnasium 1.4's Python line by line, in the same float widths
//! (including the spots where numpy 2 keeps a `float32` action in `float32`), and resets draw
//! from the same PCG64 stream (`np_rng`), so a seed and an action sequence reproduce
//! Gymnasium's episode. These structs are the bare envs; `registry::make` adds the time limits
//! `gym.make` adds.

use std::f64::consts::PI;

use serde_json::json;

use crate::env::{Env, Info, Observation, Step};
use crate::error::{EnvError, Result};
use crate::np_rng::NpRandom;
use crate::space::{Action, Space};

fn reseed(rng: &mut Option<NpRandom>, seed: Option<u64>) -> &mut NpRandom {
    match seed {
        Some(s) => rng.insert(NpRandom::from_seed(s)),
        None => rng.get_or_insert_with(NpRandom::from_entropy),
    }
}

/// Physical constants of CartPole; the non-stationary variant changes them mid-run.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CartPoleParams {
    /// m/s².
    pub gravity: f64,
    /// kg.
    pub masscart: f64,
    /// kg.
    pub masspole: f64,
    /// Half the pole's length, m.
    pub length: f64,
    /// N applied per action.
    pub force_mag: f64,
    /// Seconds per step.
    pub tau: f64,
}

impl Default for CartPoleParams {
    fn default() -> Self {
        Self {
            gravity: 9.8,
            masscart: 1.0,
            masspole: 0.1,
            length: 0.5,
            force_mag: 10.0,
            tau: 0.02,
        }
    }
}

impl CartPoleParams {
    /// The parameters as an `info` object.
    pub fn to_info(&self) -> Info {
        let mut m = Info::new();
        m.insert("gravity".into(), json!(self.gravity));
        m.insert("masscart".into(), json!(self.masscart));
        m.insert("masspole".into(), json!(self.masspole));
        m.insert("pole_length".into(), json!(self.length));
        m.insert("force_mag".into(), json!(self.force_mag));
        m
    }

    fn check(&self) -> Result<()> {
        let all = [
            self.gravity,
            self.masscart,
            self.masspole,
            self.length,
            self.force_mag,
            self.tau,
        ];
        if all.iter().all(|x| x.is_finite())
            && self.masscart > 0.0
            && self.masspole > 0.0
            && self.length > 0.0
            && self.tau > 0.0
        {
            Ok(())
        } else {
            Err(EnvError::Config(format!(
                "unphysical CartPole parameters {self:?}"
            )))
        }
    }
}

/// CartPole-v1 (Barto, Sutton & Anderson), Euler integration, reward 1 per step.
#[derive(Clone, Debug)]
pub struct CartPole {
    params: CartPoleParams,
    state: Option<[f64; 4]>,
    steps_beyond_terminated: Option<u64>,
    rng: Option<NpRandom>,
    obs_space: Space,
    act_space: Space,
}

const CARTPOLE_X_THRESHOLD: f64 = 2.4;

fn theta_threshold() -> f64 {
    12.0 * 2.0 * PI / 360.0
}

impl Default for CartPole {
    fn default() -> Self {
        Self::new()
    }
}

impl CartPole {
    /// The standard CartPole-v1.
    pub fn new() -> Self {
        let t = theta_threshold();
        let high = [
            (CARTPOLE_X_THRESHOLD * 2.0) as f32,
            f32::INFINITY,
            (t * 2.0) as f32,
            f32::INFINITY,
        ];
        Self {
            params: CartPoleParams::default(),
            state: None,
            steps_beyond_terminated: None,
            rng: None,
            obs_space: Space::Box {
                low: high.iter().map(|h| -h).collect(),
                high: high.to_vec(),
                shape: vec![4],
            },
            act_space: Space::Discrete { n: 2 },
        }
    }

    /// CartPole with other physical constants.
    pub fn with_params(params: CartPoleParams) -> Result<Self> {
        params.check()?;
        let mut c = Self::new();
        c.params = params;
        Ok(c)
    }

    /// Current physical constants.
    pub fn params(&self) -> CartPoleParams {
        self.params
    }

    /// Changes the physical constants; takes effect at the next step.
    pub fn set_params(&mut self, params: CartPoleParams) -> Result<()> {
        params.check()?;
        self.params = params;
        Ok(())
    }

    /// The full-precision state `[x, x_dot, theta, theta_dot]`, if reset.
    pub fn state(&self) -> Option<[f64; 4]> {
        self.state
    }

    /// Places the env in a state (a fresh episode from there).
    pub fn set_state(&mut self, state: [f64; 4]) {
        self.state = Some(state);
        self.steps_beyond_terminated = None;
    }

    fn obs(s: &[f64; 4]) -> Observation {
        s.iter().map(|&v| v as f32).collect()
    }
}

impl Env for CartPole {
    fn observation_space(&self) -> &Space {
        &self.obs_space
    }
    fn action_space(&self) -> &Space {
        &self.act_space
    }

    fn reset(&mut self, seed: Option<u64>) -> Result<(Observation, Info)> {
        let rng = reseed(&mut self.rng, seed);
        let mut s = [0.0; 4];
        for v in &mut s {
            *v = rng.uniform(-0.05, 0.05);
        }
        self.state = Some(s);
        self.steps_beyond_terminated = None;
        Ok((Self::obs(&s), Info::new()))
    }

    fn step(&mut self, action: &Action) -> Result<Step> {
        self.act_space.validate(action)?;
        let [x, x_dot, theta, theta_dot] = self.state.ok_or(EnvError::NeedsReset)?;
        let p = &self.params;
        let total_mass = p.masspole + p.masscart;
        let polemass_length = p.masspole * p.length;
        let force = if *action == Action::Discrete(1) {
            p.force_mag
        } else {
            -p.force_mag
        };
        let costheta = theta.cos();
        let sintheta = theta.sin();
        let temp = (force + polemass_length * (theta_dot * theta_dot) * sintheta) / total_mass;
        let thetaacc = (p.gravity * sintheta - costheta * temp)
            / (p.length * (4.0 / 3.0 - p.masspole * (costheta * costheta) / total_mass));
        let xacc = temp - polemass_length * thetaacc * costheta / total_mass;
        let s = [
            x + p.tau * x_dot,
            x_dot + p.tau * xacc,
            theta + p.tau * theta_dot,
            theta_dot + p.tau * thetaacc,
        ];
        self.state = Some(s);
        let t = theta_threshold();
        let terminated =
            s[0] < -CARTPOLE_X_THRESHOLD || s[0] > CARTPOLE_X_THRESHOLD || s[2] < -t || s[2] > t;
        // Gymnasium pays the terminal step and then 0 for steps taken past the end.
        let reward = if !terminated {
            1.0
        } else if let Some(n) = self.steps_beyond_terminated.as_mut() {
            *n += 1;
            0.0
        } else {
            self.steps_beyond_terminated = Some(0);
            1.0
        };
        Ok(Step {
            obs: Self::obs(&s),
            reward,
            terminated,
            truncated: false,
            info: Info::new(),
        })
    }
}

/// MountainCar-v0 (Moore 1990): three discrete pushes, reward -1 per step.
#[derive(Clone, Debug)]
pub struct MountainCar {
    state: Option<[f64; 2]>,
    rng: Option<NpRandom>,
    obs_space: Space,
    act_space: Space,
}

const MC_MIN_POS: f64 = -1.2;
const MC_MAX_POS: f64 = 0.6;
const MC_MAX_SPEED: f64 = 0.07;
const MC_GOAL_POS: f64 = 0.5;

impl Default for MountainCar {
    fn default() -> Self {
        Self::new()
    }
}

impl MountainCar {
    /// The standard MountainCar-v0.
    pub fn new() -> Self {
        Self {
            state: None,
            rng: None,
            obs_space: Space::Box {
                low: vec![MC_MIN_POS as f32, -MC_MAX_SPEED as f32],
                high: vec![MC_MAX_POS as f32, MC_MAX_SPEED as f32],
                shape: vec![2],
            },
            act_space: Space::Discrete { n: 3 },
        }
    }

    /// `[position, velocity]`, if reset.
    pub fn state(&self) -> Option<[f64; 2]> {
        self.state
    }

    /// Places the car.
    pub fn set_state(&mut self, state: [f64; 2]) {
        self.state = Some(state);
    }
}

impl Env for MountainCar {
    fn observation_space(&self) -> &Space {
        &self.obs_space
    }
    fn action_space(&self) -> &Space {
        &self.act_space
    }

    fn reset(&mut self, seed: Option<u64>) -> Result<(Observation, Info)> {
        let rng = reseed(&mut self.rng, seed);
        let s = [rng.uniform(-0.6, -0.4), 0.0];
        self.state = Some(s);
        Ok((vec![s[0] as f32, s[1] as f32], Info::new()))
    }

    fn step(&mut self, action: &Action) -> Result<Step> {
        self.act_space.validate(action)?;
        let a = match action {
            Action::Discrete(a) => *a,
            _ => {
                return Err(EnvError::InvalidAction(
                    "MountainCar needs a discrete action".into(),
                ));
            }
        };
        let [mut position, mut velocity] = self.state.ok_or(EnvError::NeedsReset)?;
        velocity += (a - 1) as f64 * 0.001 + (3.0 * position).cos() * (-0.0025);
        velocity = velocity.clamp(-MC_MAX_SPEED, MC_MAX_SPEED);
        position += velocity;
        position = position.clamp(MC_MIN_POS, MC_MAX_POS);
        if position == MC_MIN_POS && velocity < 0.0 {
            velocity = 0.0;
        }
        let terminated = position >= MC_GOAL_POS && velocity >= 0.0;
        self.state = Some([position, velocity]);
        Ok(Step {
            obs: vec![position as f32, velocity as f32],
            reward: -1.0,
            terminated,
            truncated: false,
            info: Info::new(),
        })
    }
}

/// Pendulum-v1: swing up and balance with a torque in [-2, 2]; never terminates.
#[derive(Clone, Debug)]
pub struct Pendulum {
    g: f64,
    state: Option<[f64; 2]>,
    rng: Option<NpRandom>,
    obs_space: Space,
    act_space: Space,
}

const PEND_MAX_SPEED: f64 = 8.0;
const PEND_MAX_TORQUE: f32 = 2.0;
const PEND_DT: f64 = 0.05;

impl Default for Pendulum {
    fn default() -> Self {
        Self::new()
    }
}

fn angle_normalize(x: f64) -> f64 {
    // numpy's `%` takes the divisor's sign, which for a positive divisor is `rem_euclid`.
    (x + PI).rem_euclid(2.0 * PI) - PI
}

impl Pendulum {
    /// The standard Pendulum-v1 (g = 10).
    pub fn new() -> Self {
        Self {
            g: 10.0,
            state: None,
            rng: None,
            obs_space: Space::Box {
                low: vec![-1.0, -1.0, -(PEND_MAX_SPEED as f32)],
                high: vec![1.0, 1.0, PEND_MAX_SPEED as f32],
                shape: vec![3],
            },
            act_space: Space::uniform_box(-PEND_MAX_TORQUE, PEND_MAX_TORQUE, vec![1]),
        }
    }

    /// `[theta, theta_dot]`, if reset.
    pub fn state(&self) -> Option<[f64; 2]> {
        self.state
    }

    /// Places the pendulum.
    pub fn set_state(&mut self, state: [f64; 2]) {
        self.state = Some(state);
    }

    fn obs(s: &[f64; 2]) -> Observation {
        vec![s[0].cos() as f32, s[0].sin() as f32, s[1] as f32]
    }
}

impl Env for Pendulum {
    fn observation_space(&self) -> &Space {
        &self.obs_space
    }
    fn action_space(&self) -> &Space {
        &self.act_space
    }

    fn reset(&mut self, seed: Option<u64>) -> Result<(Observation, Info)> {
        let rng = reseed(&mut self.rng, seed);
        let s = [rng.uniform(-PI, PI), rng.uniform(-1.0, 1.0)];
        self.state = Some(s);
        Ok((Self::obs(&s), Info::new()))
    }

    fn step(&mut self, action: &Action) -> Result<Step> {
        self.act_space.validate(action)?;
        let u = match action {
            Action::Continuous(v) => v[0].clamp(-PEND_MAX_TORQUE, PEND_MAX_TORQUE),
            _ => {
                return Err(EnvError::InvalidAction(
                    "Pendulum needs a continuous action".into(),
                ));
            }
        };
        let [th, thdot] = self.state.ok_or(EnvError::NeedsReset)?;
        // numpy 2 keeps `python_float * float32` in float32; mirror it to stay bit-close.
        let u_cost = f64::from(0.001f32 * (u * u));
        let an = angle_normalize(th);
        let costs = an * an + 0.1 * (thdot * thdot) + u_cost;
        let g_term = 3.0 * self.g / 2.0;
        let u_term = f64::from(3.0f32 * u);
        let newthdot =
            (thdot + (g_term * th.sin() + u_term) * PEND_DT).clamp(-PEND_MAX_SPEED, PEND_MAX_SPEED);
        let newth = th + newthdot * PEND_DT;
        let s = [newth, newthdot];
        self.state = Some(s);
        Ok(Step {
            obs: Self::obs(&s),
            reward: -costs,
            terminated: false,
            truncated: false,
            info: Info::new(),
        })
    }
}
