//! A world of your own in Rust: implement `Env`, register an ID, and every part of autodidact
//! that takes an env ID can use it.
//!
//! Run: `cargo run -p autodidact-envs --example custom_env`

use autodidact_envs::wrappers::{EpisodeStatistics, TimeLimit};
use autodidact_envs::{Action, Env, EnvError, Info, Observation, Space, Step, make, register};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// A thermostat: keep the room at 21 °C by choosing heater power 0..=2 while the outside cold
/// pulls the temperature down. Observation: `[temperature / 40]`.
pub struct Thermostat {
    temp: Option<f64>,
    rng: ChaCha8Rng,
    obs_space: Space,
    act_space: Space,
}

impl Thermostat {
    /// A room with a random start temperature.
    pub fn new() -> Self {
        Self {
            temp: None,
            rng: ChaCha8Rng::seed_from_u64(0),
            obs_space: Space::uniform_box(-1.0, 2.0, vec![1]),
            act_space: Space::Discrete { n: 3 },
        }
    }
}

impl Default for Thermostat {
    fn default() -> Self {
        Self::new()
    }
}

impl Env for Thermostat {
    fn observation_space(&self) -> &Space {
        &self.obs_space
    }

    fn action_space(&self) -> &Space {
        &self.act_space
    }

    fn reset(&mut self, seed: Option<u64>) -> Result<(Observation, Info), EnvError> {
        if let Some(s) = seed {
            self.rng = ChaCha8Rng::seed_from_u64(s);
        }
        let t = self.rng.random_range(10.0..30.0);
        self.temp = Some(t);
        Ok((vec![(t / 40.0) as f32], Info::new()))
    }

    fn step(&mut self, action: &Action) -> Result<Step, EnvError> {
        self.act_space.validate(action)?;
        let t = self.temp.ok_or(EnvError::NeedsReset)?;
        let power = match action {
            Action::Discrete(p) => *p as f64,
            _ => {
                return Err(EnvError::InvalidAction(
                    "thermostat takes Discrete(3)".into(),
                ));
            }
        };
        let t = t + 0.5 * power - 0.05 * (t - 5.0) + self.rng.random_range(-0.1..0.1);
        self.temp = Some(t);
        let mut info = Info::new();
        info.insert("temperature".into(), t.into());
        Ok(Step {
            obs: vec![(t / 40.0) as f32],
            reward: -(t - 21.0).abs(),
            terminated: !(-10.0..=60.0).contains(&t),
            truncated: false,
            info,
        })
    }
}

/// Registers `thermostat-v0` (with a 200-step time limit) in the process-wide registry.
pub fn register_thermostat() -> Result<(), EnvError> {
    register("thermostat-v0", || {
        Ok(Box::new(TimeLimit::new(Thermostat::new(), 200)?))
    })
}

fn main() -> Result<(), EnvError> {
    register_thermostat()?;
    let mut env = EpisodeStatistics::new(make("thermostat-v0")?);
    let (mut obs, _) = env.reset(Some(7))?;
    loop {
        // A bang-bang controller: full heat below the target, off above it.
        let heat = if obs[0] * 40.0 < 21.0 { 2 } else { 0 };
        let s = env.step(&Action::Discrete(heat))?;
        if s.done() {
            println!("episode: {}", s.info["episode"]);
            return Ok(());
        }
        obs = s.obs;
    }
}
