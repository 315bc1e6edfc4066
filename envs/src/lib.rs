//! Environments for autodidact, with Gymnasium 1.x semantics.
//!
//! - [`Env`]: the trait every world implements (`reset(seed)`, `step(action)`, spaces), with
//!   `terminated` and `truncated` kept apart everywhere.
//! - Native worlds: [`CartPole`], [`MountainCar`], [`Pendulum`] (matching Gymnasium's
//!   dynamics and seeding), [`NonStationaryCartPole`], [`DriftingBandit`], [`GoalRegions`] (a goal that moves
//!   between regions of the plane, regime hidden), [`GridWorld`].
//! - [`wrappers`]: time limit, action/observation clipping, normalisation, reward transforms,
//!   episode statistics.
//! - [`make`]: string IDs to envs, including `gym:<id>` (Gymnasium via a Python bridge),
//!   `exec:<command line>` and `tcp:<host:port>` (any peer speaking the protocol).
//! - [`VecEnv`]: N instances stepped together, same-step auto-reset.
//! - [`RemoteEnv`] and [`protocol`]: the JSON-lines protocol (`envs/PROTOCOL.md`), with
//!   timeouts, restarts and typed errors for misbehaving peers.
//!
//! This is the only crate of the workspace that spawns processes or speaks the env protocol.
#![warn(missing_docs)]

pub mod bridge;
pub mod classic;
pub mod env;
pub mod error;
pub mod goal_regions;
pub mod gridworld;
pub mod nonstationary;
pub mod np_rng;
pub mod protocol;
pub mod registry;
pub mod remote;
pub mod space;
pub mod vec_env;
pub mod wrappers;

pub use classic::{CartPole, CartPoleParams, MountainCar, Pendulum};
pub use env::{Env, Info, Observation, Step};
pub use error::{EnvError, ProtocolError, Result};
pub use goal_regions::{
    GoalControl, GoalRegion, GoalRegions, GoalRegionsError, GoalRegionsParams, GoalSchedule,
    MAX_REGIMES, regime_name,
};
pub use gridworld::GridWorld;
pub use nonstationary::{
    CartPoleControl, CartPoleSchedule, Drift, DriftingBandit, NonStationaryCartPole,
};
pub use registry::{Registry, known_ids, make, register};
pub use remote::{RemoteConfig, RemoteEnv, RemoteStats, Transport};
pub use space::{Action, MAX_DISCRETE_N, MAX_SHAPE_DIMS, MAX_SPACE_ELEMENTS, Space};
pub use vec_env::{VecEnv, VecStep};
