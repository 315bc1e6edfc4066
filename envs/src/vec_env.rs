//! N envs stepped together.
//!
//! **Auto-reset rule: same-step.** When instance `i` ends (`terminated || truncated`) during
//! `step`, it is reset at once, inside the same call: `obs(i)` is already the first
//! observation of the next episode, the episode's last observation is in `final_obs[i]`, the
//! step's `info` in `infos[i]`, and the new episode's reset info in `reset_infos[i]`. Rewards
//! and flags belong to the finished transition. So a learner bootstraps from `final_obs[i]`
//! (when truncated) and acts next from `obs(i)`; there is no "dead" step to skip. This is
//! Gymnasium's `AutoresetMode.SAME_STEP`, not its default `NEXT_STEP`: same-step never wastes
//! an env step and never produces a transition that crosses episodes.
//!
//! With the `rayon` feature and `set_parallel(true)`, instances step on rayon's pool.

use crate::env::{Env, Info, Observation};
use crate::error::{EnvError, Result};
use crate::registry;
use crate::space::{Action, Space};

/// The result of stepping all instances.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct VecStep {
    /// Observations, row `i` at `[i * obs_dim .. (i + 1) * obs_dim]`; after an auto-reset, the
    /// new episode's first observation.
    pub obs: Vec<f32>,
    /// Reward of each instance's transition.
    pub rewards: Vec<f64>,
    /// True end of instance `i`'s episode.
    pub terminated: Vec<bool>,
    /// Outside cut of instance `i`'s episode.
    pub truncated: Vec<bool>,
    /// The finished episode's last observation, for instances that ended.
    pub final_obs: Vec<Option<Observation>>,
    /// Step info of each instance.
    pub infos: Vec<Info>,
    /// Reset info of instances that were auto-reset.
    pub reset_infos: Vec<Option<Info>>,
}

/// A vector of envs with identical spaces.
pub struct VecEnv {
    envs: Vec<Box<dyn Env>>,
    obs_dim: usize,
    parallel: bool,
}

impl std::fmt::Debug for VecEnv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VecEnv")
            .field("num_envs", &self.envs.len())
            .field("obs_dim", &self.obs_dim)
            .finish()
    }
}

struct One {
    obs: Observation,
    reward: f64,
    terminated: bool,
    truncated: bool,
    final_obs: Option<Observation>,
    info: Info,
    reset_info: Option<Info>,
}

fn step_one(env: &mut dyn Env, action: &Action) -> Result<One> {
    let s = env.step(action)?;
    if s.done() {
        let (obs, reset_info) = env.reset(None)?;
        Ok(One {
            obs,
            reward: s.reward,
            terminated: s.terminated,
            truncated: s.truncated,
            final_obs: Some(s.obs),
            info: s.info,
            reset_info: Some(reset_info),
        })
    } else {
        Ok(One {
            obs: s.obs,
            reward: s.reward,
            terminated: s.terminated,
            truncated: s.truncated,
            final_obs: None,
            info: s.info,
            reset_info: None,
        })
    }
}

impl VecEnv {
    /// Bundles `envs`; they must be non-empty and share their spaces.
    pub fn new(envs: Vec<Box<dyn Env>>) -> Result<Self> {
        let first = envs
            .first()
            .ok_or_else(|| EnvError::Config("VecEnv needs at least one env".into()))?;
        let (os, acts) = (
            first.observation_space().clone(),
            first.action_space().clone(),
        );
        if envs
            .iter()
            .any(|e| *e.observation_space() != os || *e.action_space() != acts)
        {
            return Err(EnvError::Config(
                "VecEnv instances have different spaces".into(),
            ));
        }
        Ok(Self {
            obs_dim: os.flat_dim(),
            envs,
            parallel: false,
        })
    }

    /// `n` instances of registry ID `id`.
    pub fn make(id: &str, n: usize) -> Result<Self> {
        Self::new((0..n).map(|_| registry::make(id)).collect::<Result<_>>()?)
    }

    /// Steps instances on rayon's pool (needs the `rayon` feature; otherwise a config error).
    pub fn set_parallel(&mut self, parallel: bool) -> Result<()> {
        if parallel && !cfg!(feature = "rayon") {
            return Err(EnvError::Config(
                "VecEnv parallel stepping needs the `rayon` feature".into(),
            ));
        }
        self.parallel = parallel;
        Ok(())
    }

    /// Number of instances.
    pub fn num_envs(&self) -> usize {
        self.envs.len()
    }

    /// Elements per observation.
    pub fn obs_dim(&self) -> usize {
        self.obs_dim
    }

    /// Shared observation space.
    pub fn observation_space(&self) -> &Space {
        self.envs[0].observation_space()
    }

    /// Shared action space.
    pub fn action_space(&self) -> &Space {
        self.envs[0].action_space()
    }

    /// Resets all instances; with a seed, instance `i` gets `seed + i` (as Gymnasium's vector
    /// envs do), so a run is reproducible and instances differ.
    pub fn reset(&mut self, seed: Option<u64>) -> Result<(Vec<f32>, Vec<Info>)> {
        let mut obs = Vec::with_capacity(self.envs.len() * self.obs_dim);
        let mut infos = Vec::with_capacity(self.envs.len());
        for (i, e) in self.envs.iter_mut().enumerate() {
            let (o, info) = e.reset(seed.map(|s| s.wrapping_add(i as u64)))?;
            obs.extend_from_slice(&o);
            infos.push(info);
        }
        Ok((obs, infos))
    }

    /// Steps every instance with its action, auto-resetting finished ones (same-step rule).
    pub fn step(&mut self, actions: &[Action]) -> Result<VecStep> {
        if actions.len() != self.envs.len() {
            return Err(EnvError::InvalidAction(format!(
                "{} actions for {} envs",
                actions.len(),
                self.envs.len()
            )));
        }
        let ones: Vec<One> = if self.parallel {
            self.step_parallel(actions)?
        } else {
            self.envs
                .iter_mut()
                .zip(actions)
                .map(|(e, a)| step_one(e.as_mut(), a))
                .collect::<Result<_>>()?
        };
        let n = ones.len();
        let mut out = VecStep {
            obs: Vec::with_capacity(n * self.obs_dim),
            rewards: Vec::with_capacity(n),
            terminated: Vec::with_capacity(n),
            truncated: Vec::with_capacity(n),
            final_obs: Vec::with_capacity(n),
            infos: Vec::with_capacity(n),
            reset_infos: Vec::with_capacity(n),
        };
        for o in ones {
            out.obs.extend_from_slice(&o.obs);
            out.rewards.push(o.reward);
            out.terminated.push(o.terminated);
            out.truncated.push(o.truncated);
            out.final_obs.push(o.final_obs);
            out.infos.push(o.info);
            out.reset_infos.push(o.reset_info);
        }
        Ok(out)
    }

    #[cfg(feature = "rayon")]
    fn step_parallel(&mut self, actions: &[Action]) -> Result<Vec<One>> {
        use rayon::prelude::*;
        self.envs
            .par_iter_mut()
            .zip(actions.par_iter())
            .map(|(e, a)| step_one(e.as_mut(), a))
            .collect()
    }

    #[cfg(not(feature = "rayon"))]
    fn step_parallel(&mut self, _actions: &[Action]) -> Result<Vec<One>> {
        Err(EnvError::Config(
            "VecEnv parallel stepping needs the `rayon` feature".into(),
        ))
    }

    /// Closes every instance, reporting the first failure after trying all.
    pub fn close(&mut self) -> Result<()> {
        let mut first = Ok(());
        for e in &mut self.envs {
            let r = e.close();
            if first.is_ok() {
                first = r;
            }
        }
        first
    }
}
