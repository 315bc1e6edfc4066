//! The policy seam: how a set of acting weights turns an observation into an action.
//!
//! A policy owns no optimiser and no weights: the caller hands it the snapshot to act with
//! (the actor's newest published weights, a checkpoint under evaluation, the gate's champion
//! or candidate), and the mode on every call, so one policy object serves exploration and
//! greedy evaluation alike and can never be left in the wrong mode (a pitfall of keeping
//! train/eval as a flag on the agent). Each learner kind pairs with its policy
//! ([`crate::learners::LearnerKind::policy`]); the actor, `eval` and the gate know only this
//! trait.

use autodidact_core::precision::Scratch;
use autodidact_core::{Snapshot, Tensor};
use autodidact_envs::{Action, Space};
use rand::Rng;
use rand_chacha::ChaCha8Rng;

use crate::error::{AgentError, Result};

/// How to act.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ActMode {
    /// The policy's best action, no exploration: evaluation and the gate.
    Greedy,
    /// Acting to learn. `level` in [0, 1] is how far to stray from the policy: the
    /// probability of a uniformly random action (ε for a value-based learner; warm-up is 1).
    /// A stochastic policy samples from itself on top of it.
    Explore {
        /// Probability of a uniformly random action.
        level: f32,
    },
}

/// What a policy chose.
#[derive(Clone, Debug, PartialEq)]
pub struct Acted {
    /// The action to send to the environment (and to store).
    pub action: Action,
    /// The model's value of that action, kept as behaviour data (NaN if it has none).
    pub value: f32,
}

/// Chooses actions from acting weights.
pub trait Policy: Send {
    /// The action for `obs` under `weights` in `mode`. `rng` is the caller's exploration
    /// stream (a resumed run continues it exactly); greedy acting draws nothing from it.
    fn act(
        &mut self,
        weights: &Snapshot,
        obs: &[f32],
        mode: ActMode,
        rng: &mut ChaCha8Rng,
    ) -> Result<Acted>;
}

/// Index of the largest value (the first one on ties).
pub fn argmax(values: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in values.iter().enumerate() {
        if v > values[best] {
            best = i;
        }
    }
    best
}

/// ε-greedy over the Q-values a snapshot outputs for `n_actions` discrete actions.
pub struct QPolicy {
    n_actions: usize,
    obs: Tensor,
    q: Tensor,
    /// Made from the first snapshot acted with: every version of one run shares its shapes.
    scratch: Option<Scratch>,
}

impl QPolicy {
    /// A policy over `n_actions` actions.
    pub fn new(n_actions: usize) -> Self {
        QPolicy {
            n_actions,
            obs: Tensor::default(),
            q: Tensor::default(),
            scratch: None,
        }
    }
}

impl Policy for QPolicy {
    fn act(
        &mut self,
        weights: &Snapshot,
        obs: &[f32],
        mode: ActMode,
        rng: &mut ChaCha8Rng,
    ) -> Result<Acted> {
        let out = weights.config().head.out_dim();
        if out != self.n_actions {
            return Err(AgentError::Config(format!(
                "the model has {out} outputs but the environment has {} actions",
                self.n_actions
            )));
        }
        if weights.config().obs_dim != obs.len() {
            return Err(AgentError::Config(format!(
                "the model reads {} observation values but the environment gives {}",
                weights.config().obs_dim,
                obs.len()
            )));
        }
        // Draw the coin first so the random stream does not depend on the network.
        let random = match mode {
            ActMode::Greedy => None,
            ActMode::Explore { level } => {
                let explore = rng.random::<f32>() < level;
                let a = rng.random_range(0..self.n_actions);
                explore.then_some(a)
            }
        };
        self.obs.resize(&[1, obs.len()]);
        self.obs.data_mut().copy_from_slice(obs);
        let scratch = self.scratch.get_or_insert_with(|| weights.scratch());
        weights.forward(&self.obs, &mut self.q, scratch)?;
        let a = random.unwrap_or_else(|| argmax(self.q.data()));
        Ok(Acted {
            action: Action::Discrete(a as i64),
            value: self.q.data().get(a).copied().unwrap_or(f32::NAN),
        })
    }
}

/// The number of actions of a discrete space, or a clear error naming who needs it.
pub fn discrete_actions(space: &Space, who: &str) -> Result<usize> {
    match space {
        Space::Discrete { n } if *n >= 1 => Ok(*n as usize),
        other => Err(AgentError::Config(format!(
            "{who} needs a discrete action space; the environment has {other:?}"
        ))),
    }
}
