//! The adder: turns an actor's stream of steps into replay writes.
//!
//! Acme's seam between acting and storage: the actor reports what happened, the adder decides
//! how it is stored. [`ReplayAdder`] writes whole episodes to the SQLite store (an episode
//! becomes visible atomically when it ends); a future adder for a shared PostgreSQL store or
//! a remote service implements the same trait.

use autodidact_envs::{Action, Step};
use autodidact_replay::{ActionRef, EpisodeEnd, EpisodeWriter, Run, Writer};

use crate::error::{AgentError, Result};

/// Receives the actor's experience.
pub trait Adder {
    /// The first observation of a new episode.
    fn add_first(&mut self, obs: &[f32]) -> Result<()>;
    /// One step: the action taken on the previous observation, what the behaviour policy
    /// recorded about it (a Q-value or log-probability), and what the environment returned.
    /// Returns whether this step ended the episode (and so committed it): the environment
    /// ended it, or the adder cut it at its length limit.
    fn add(&mut self, action: &Action, behaviour: Option<f32>, step: &Step) -> Result<bool>;
    /// Ends the episode in progress as truncated (cut from outside: a stop or the end of the
    /// step budget), so every step lived is stored and learners bootstrap past the cut.
    fn cut(&mut self) -> Result<()>;
}

/// Writes episodes through the replay store's writer thread.
#[derive(Debug)]
pub struct ReplayAdder {
    writer: Writer,
    run: Run,
    model_version: Option<i64>,
    current: Option<EpisodeWriter>,
    last_obs: Vec<f32>,
    commit_each_episode: bool,
    /// Steps after which an episode that has not ended is cut (`u64::MAX`: never).
    max_episode_steps: u64,
    /// Steps of the episode in progress.
    episode_steps: u64,
}

impl ReplayAdder {
    /// An adder writing episodes of `run`. With `commit_each_episode`, every finished episode
    /// is committed before [`Adder::add`] returns, so a learner sampling right after sees it
    /// (lockstep mode's determinism needs this; concurrent mode lets the writer batch).
    pub fn new(writer: Writer, run: Run, commit_each_episode: bool) -> Self {
        ReplayAdder {
            writer,
            run,
            model_version: None,
            current: None,
            last_obs: Vec::new(),
            commit_each_episode,
            max_episode_steps: u64::MAX,
            episode_steps: 0,
        }
    }

    /// Cuts an episode that reaches `steps` steps without ending, as truncated, and commits
    /// it: a world that never ends (a peer that never sends `terminated` or `truncated`) still
    /// reaches the learner, and what an episode holds in memory stays bounded. [`Adder::add`]
    /// then reports the episode ended, so the actor resets the environment.
    pub fn with_max_episode_steps(mut self, steps: u64) -> Self {
        self.max_episode_steps = steps.max(1);
        self
    }

    /// The registered model version recorded on episodes started from now on.
    pub fn set_model_version(&mut self, version: Option<i64>) {
        self.model_version = version;
    }

    /// Waits until everything sent so far is committed.
    pub fn flush(&self) -> Result<()> {
        Ok(self.writer.flush()?)
    }
}

impl Adder for ReplayAdder {
    fn add_first(&mut self, obs: &[f32]) -> Result<()> {
        self.current = Some(self.writer.begin_episode(&self.run, self.model_version));
        self.episode_steps = 0;
        self.last_obs.clear();
        self.last_obs.extend_from_slice(obs);
        Ok(())
    }

    fn add(&mut self, action: &Action, behaviour: Option<f32>, step: &Step) -> Result<bool> {
        let Some(ep) = self.current.as_mut() else {
            return Err(AgentError::Config(
                "adder: `add` before `add_first` (every episode starts with its first observation)"
                    .into(),
            ));
        };
        let action = match action {
            Action::Discrete(a) => ActionRef::Discrete(*a),
            Action::Continuous(v) => ActionRef::Continuous(v),
            Action::MultiDiscrete(_) => {
                return Err(AgentError::Config(
                    "multi-discrete actions cannot be stored yet".into(),
                ));
            }
        };
        ep.push(&self.last_obs, action, step.reward as f32, behaviour)?;
        self.episode_steps += 1;
        if step.done() || self.episode_steps >= self.max_episode_steps {
            let end = if step.terminated {
                EpisodeEnd::Terminated
            } else {
                EpisodeEnd::Truncated
            };
            if let Some(ep) = self.current.take() {
                ep.finish(&step.obs, end)?;
            }
            if self.commit_each_episode {
                self.writer.flush()?;
            }
            return Ok(true);
        }
        self.last_obs.clear();
        self.last_obs.extend_from_slice(&step.obs);
        Ok(false)
    }

    fn cut(&mut self) -> Result<()> {
        if let Some(ep) = self.current.take() {
            if !ep.is_empty() {
                ep.finish(&self.last_obs, EpisodeEnd::Truncated)?;
                if self.commit_each_episode {
                    self.writer.flush()?;
                }
            }
        }
        Ok(())
    }
}
