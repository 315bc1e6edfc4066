//! The drift-recovery scenario, in one place for the daemon bench (`benches/daemon.rs`) and the
//! daemon's recovery test (`tests/daemon.rs`, which includes this file by path), so that the
//! test's step budget rests on what the bench measures for the very same scenario: the same
//! config, the same world, the same change and the same judgement of recovery.
//!
//! The world is CartPole (500-step time limit) whose physics follow one shared control, so the
//! actor's and the gate's worlds change together. The change wires the cart's motor backwards
//! (the push of each action reverses), which breaks a greedy champion at once. (Pole length and
//! gravity changes in the learnable range did not: a champion that balances a 0.5 m pole still
//! balances a 0.15 m pole under 20 m/s², so its return barely falls.)
//!
//! Recovery is judged on episodes that *started* after the change only: an episode that spans
//! the change (or ended before it) says nothing about what was learned in the new world.

#![allow(dead_code)] // each includer uses its part

use std::sync::Arc;

use autodidact::daemon::{Daemon, DaemonConfig, EnvFactory, Status};
use autodidact_envs::wrappers::TimeLimit;
use autodidact_envs::{
    CartPoleControl, CartPoleParams, CartPoleSchedule, Env, NonStationaryCartPole,
};

/// Episodes judged for recovery: the mean of this many returns (the last ones in `/status`).
pub const JUDGED_EPISODES: usize = 20;

/// Fraction of the level before the change that counts as recovered.
pub const RECOVERED_FRACTION: f64 = 0.9;

/// The environment ID the scenario's factory answers to.
pub const ENV_ID: &str = "cartpole-drift";

/// The scenario's daemon settings: the defaults, with no HTTP endpoint and a faster cadence of
/// candidates, gate decisions and reflection passes, so a run fits in a CI test. One actor, as
/// the figures in BENCHMARKS.md were measured.
pub fn config(seed: u64) -> DaemonConfig {
    let mut c = DaemonConfig::default();
    c.daemon.envs = vec![ENV_ID.into()];
    c.daemon.seed = seed;
    c.daemon.actors = 1;
    c.http.enabled = false;
    c.dqn.learning_starts = 1_000;
    c.daemon.exploration_steps = 10_000;
    c.reflection.every_s = 2.0;
    c.reflection.reanalyse_batches = 8;
    c.gate.episodes = 10;
    c.daemon.candidate_every = 500;
    c
}

/// CartPoles whose physics follow `control`.
pub fn world(control: CartPoleControl) -> EnvFactory {
    Arc::new(move |_id: &str| {
        let env = NonStationaryCartPole::new(CartPoleSchedule::Constant)?
            .with_control(control.clone())?;
        Ok(Box::new(TimeLimit::new(env, 500)?) as Box<dyn Env>)
    })
}

/// The changed world: the motor wired backwards.
pub fn changed_world() -> CartPoleParams {
    CartPoleParams {
        force_mag: -10.0,
        ..CartPoleParams::default()
    }
}

/// The first world is learned: a promoted champion and a recent return of at least 450.
pub fn learned(s: &Status) -> bool {
    s.recent_return.is_some_and(|r| r >= 450.0) && s.returns.len() >= 20 && s.promoted >= 1
}

/// Held since `before` long enough for the return detector's windows to fill at a level of at
/// least 400 (its reference window is 50 episodes, the recent one 10).
pub fn held(s: &Status, before: &Status) -> bool {
    s.episodes >= before.episodes + 40 && s.recent_return.is_some_and(|r| r >= 400.0)
}

/// The drift alarm on returns raised after the change, with the steps at which it was raised.
pub fn alarm_after(s: &Status, changed_at: u64) -> Option<u64> {
    s.last_reflections
        .iter()
        .find(|r| r.kind == "drift" && r.steps > changed_at && r.sentence.contains("return fell"))
        .map(|r| r.steps)
}

/// The world changed: where, and what recovery means from there.
#[derive(Clone, Copy, Debug)]
pub struct Change {
    /// Environment steps when the world changed (read just before it did, so step counts
    /// measured from here are never short).
    pub steps: u64,
    /// The mean return before the change that recovery is measured against.
    pub level: f64,
}

impl Change {
    /// Changes the world of `daemon` (whose envs follow `control`) and notes where.
    pub fn apply(daemon: &Daemon, control: &CartPoleControl, level: f64) -> Change {
        let steps = daemon.status().expect("status").steps;
        control.set(changed_world());
        Change { steps, level }
    }

    /// The mean of the last [`JUDGED_EPISODES`] returns of episodes that began after the
    /// change (each return's start step is on the status); `None` until there are that many.
    pub fn judged_mean(&self, s: &Status) -> Option<f64> {
        self.judged_mean_of(&s.returns_started_at, &s.returns)
    }

    /// [`Change::judged_mean`] on a status's last returns and the steps their episodes began
    /// at (oldest first).
    pub fn judged_mean_of(&self, started_at: &[u64], returns: &[f64]) -> Option<f64> {
        let fresh: Vec<f64> = started_at
            .iter()
            .zip(returns)
            .filter(|(start, _)| **start >= self.steps)
            .map(|(_, r)| *r)
            .collect();
        let last = fresh.get(fresh.len().checked_sub(JUDGED_EPISODES)?..)?;
        Some(last.iter().sum::<f64>() / JUDGED_EPISODES as f64)
    }

    /// Whether the return, over episodes begun after the change, is back to
    /// [`RECOVERED_FRACTION`] of the level before it.
    pub fn recovered(&self, s: &Status) -> bool {
        self.judged_mean(s)
            .is_some_and(|m| m >= RECOVERED_FRACTION * self.level)
    }

    /// Steps since the change.
    pub fn steps_since(&self, s: &Status) -> u64 {
        s.steps.saturating_sub(self.steps)
    }
}
