//! The `Env` trait: Gymnasium 1.x semantics in Rust.

use serde_json::{Map, Value};

use crate::error::Result;
use crate::space::{Action, Space};

/// A flat observation. Every env in this crate observes `f32`s, flattened row-major.
pub type Observation = Vec<f32>;

/// Side information of a reset or step (Gymnasium's `info` dict). Non-stationary envs report
/// their hidden parameters here so that a change is observable by the experimenter but not by
/// the agent's observation.
pub type Info = Map<String, Value>;

/// The outcome of one `step`.
#[derive(Clone, Debug, PartialEq)]
pub struct Step {
    /// Observation after the action. On `terminated || truncated` this is the final observation
    /// of the episode (never the first of the next one).
    pub obs: Observation,
    /// Reward for the transition.
    pub reward: f64,
    /// The episode reached a true end: learners must not bootstrap past it.
    pub terminated: bool,
    /// The episode was cut from outside (time limit, peer fault): learners should bootstrap.
    pub truncated: bool,
    /// Side information.
    pub info: Info,
}

impl Step {
    /// Either end flag: the caller must `reset` before stepping again.
    pub fn done(&self) -> bool {
        self.terminated || self.truncated
    }
}

/// An environment with Gymnasium 1.x semantics.
///
/// Object safe, so worlds of any origin (native, bridged, remote) are `Box<dyn Env>` to the
/// agent. `Send` so an actor thread can own one.
pub trait Env: Send {
    /// The space observations are drawn from.
    fn observation_space(&self) -> &Space;

    /// The space actions must come from; `step` rejects others with `EnvError::InvalidAction`.
    fn action_space(&self) -> &Space;

    /// Starts an episode. `Some(seed)` reseeds the env's generator, so the same seed and the
    /// same actions give the same episode; `None` continues the current random stream.
    fn reset(&mut self, seed: Option<u64>) -> Result<(Observation, Info)>;

    /// Advances one step.
    fn step(&mut self, action: &Action) -> Result<Step>;

    /// Releases outside resources (child processes, sockets). Idempotent.
    fn close(&mut self) -> Result<()> {
        Ok(())
    }
}

impl<E: Env + ?Sized> Env for Box<E> {
    fn observation_space(&self) -> &Space {
        (**self).observation_space()
    }
    fn action_space(&self) -> &Space {
        (**self).action_space()
    }
    fn reset(&mut self, seed: Option<u64>) -> Result<(Observation, Info)> {
        (**self).reset(seed)
    }
    fn step(&mut self, action: &Action) -> Result<Step> {
        (**self).step(action)
    }
    fn close(&mut self) -> Result<()> {
        (**self).close()
    }
}
