//! The actor loop of every command: episodes of one environment acted through a
//! [`PolicyActor`], every step handed to replay, faults absorbed. What differs between `train`
//! and the daemon — budgets, seeds, the rate limiter, what an ended episode triggers, how a
//! fault is reported — is the [`ActingControl`] the loop is run with.

use std::time::Duration;

use autodidact_envs::Env;

use crate::actor::{Actor, PolicyActor};
use crate::adder::{Adder, ReplayAdder};
use crate::error::Result;
use crate::fault::{self, Backoff, Fault};

/// An actor that writes to the replay store.
pub type ReplayActor = PolicyActor<ReplayAdder>;

/// An episode that ended (terminated, truncated, or cut at `replay.max_episode_steps`).
#[derive(Clone, Copy, Debug)]
pub struct EpisodeEnd<'a> {
    /// The step count (of the control) when it began.
    pub started_at: u64,
    /// The step count after its last step.
    pub steps: u64,
    /// Its undiscounted return.
    pub ret: f64,
    /// Its length.
    pub len: u64,
    /// The mean absolute value of each observation feature over the episode.
    pub mean_abs_obs: &'a [f32],
    /// The absolute value of each feature of the episode's first observation (after reset):
    /// a statistic of the world alone, whatever the policy does (drift detection watches it).
    pub first_abs_obs: &'a [f32],
}

/// What a command decides about acting.
pub trait ActingControl {
    /// Before an episode: its reset seed, or `None` to stop acting.
    fn begin_episode(&mut self, actor: &mut ReplayActor) -> Result<Option<u64>>;
    /// Before each step: whether to take it (`false` stops acting; the episode in progress is
    /// stored, cut as truncated). Budgets, stop requests and the rate limiter live here.
    fn admit(&mut self, actor: &mut ReplayActor) -> Result<bool>;
    /// The step count now.
    fn steps(&self) -> u64;
    /// The exploration level to act with now.
    fn exploration(&self) -> f32;
    /// A good step was stored; returns the step count after it.
    fn stepped(&mut self, actor: &mut ReplayActor) -> Result<u64>;
    /// The environment failed a `call` ("reset" or "step") after `episode_steps` stored steps
    /// of the episode, the `in_row`-th time without a good step between. `Ok(true)`: go on
    /// after the backoff; `Ok(false)`: stop acting; an error gives up.
    fn fault(&mut self, f: Fault, call: &str, episode_steps: u64, in_row: u32) -> Result<bool>;
    /// The first good step after faults.
    fn recovered(&mut self);
    /// An episode ended; `env` is free (for an evaluation between episodes).
    fn end_episode(
        &mut self,
        env: &mut dyn Env,
        actor: &mut ReplayActor,
        end: &EpisodeEnd<'_>,
    ) -> Result<()>;
    /// Whether a wait (a backoff) should end early.
    fn stopping(&self) -> bool;
    /// The longest backoff after faults.
    fn backoff_max(&self) -> Duration;
}

/// Acts in `env` (observations of `obs_dim` values) until the control stops it. Returns
/// normally when the control stops acting; an error leaves the episode in progress to the
/// caller (which stores it, cut, before reporting the error).
pub fn act(
    env: &mut dyn Env,
    actor: &mut ReplayActor,
    obs_dim: usize,
    ctl: &mut dyn ActingControl,
) -> Result<()> {
    let mut backoff = Backoff::new(ctl.backoff_max());
    let mut obs_sum = vec![0f64; obs_dim];
    let mut mean_abs_obs = vec![0f32; obs_dim];
    let mut first_abs_obs = vec![0f32; obs_dim];
    // A fault is never an error of this loop: it cuts the episode, waits, and resets, for as
    // long as the control lets it.
    let on_fault = |ctl: &mut dyn ActingControl, backoff: &mut Backoff, f, call, len| {
        let wait = backoff.fault();
        Ok::<bool, crate::AgentError>(
            ctl.fault(f, call, len, backoff.in_row())?
                && fault::sleep_unless(wait, || ctl.stopping()),
        )
    };
    'episodes: while let Some(seed) = ctl.begin_episode(actor)? {
        let reset = env.reset(Some(seed)).map_err(Fault::from);
        let obs = match reset.and_then(|(o, _)| fault::check_observation(&o, obs_dim).map(|()| o)) {
            Ok(obs) => obs,
            Err(f) => {
                if on_fault(ctl, &mut backoff, f, "reset", 0)? {
                    continue;
                }
                break;
            }
        };
        actor.observe_first(&obs)?;
        for (f, &o) in first_abs_obs.iter_mut().zip(&obs) {
            *f = o.abs();
        }
        let started_at = ctl.steps();
        obs_sum.iter_mut().for_each(|s| *s = 0.0);
        let (mut obs, mut ret, mut len) = (obs, 0.0, 0u64);
        loop {
            if !ctl.admit(actor)? {
                actor.adder_mut().cut()?;
                break 'episodes;
            }
            actor.set_exploration(ctl.exploration());
            actor.update();
            let action = actor.select_action(&obs)?;
            let step = match fault::check_step(env.step(&action), obs_dim) {
                Ok(step) => step,
                Err(f) => {
                    // What was lived before the fault is stored, cut as truncated.
                    actor.adder_mut().cut()?;
                    if on_fault(ctl, &mut backoff, f, "step", len)? {
                        continue 'episodes;
                    }
                    break 'episodes;
                }
            };
            if backoff.in_row() > 0 {
                backoff.succeed();
                ctl.recovered();
            }
            for (s, &o) in obs_sum.iter_mut().zip(&step.obs) {
                *s += f64::from(o.abs());
            }
            ret += step.reward;
            len += 1;
            // `observe` also ends an episode at `replay.max_episode_steps`.
            let done = actor.observe(&action, &step)?;
            let steps = ctl.stepped(actor)?;
            if done {
                for (m, s) in mean_abs_obs.iter_mut().zip(&obs_sum) {
                    *m = (s / len as f64) as f32;
                }
                let end = EpisodeEnd {
                    started_at,
                    steps,
                    ret,
                    len,
                    mean_abs_obs: &mean_abs_obs,
                    first_abs_obs: &first_abs_obs,
                };
                ctl.end_episode(env, actor, &end)?;
                break;
            }
            obs = step.obs;
        }
    }
    Ok(())
}
