//! The actor seam (Acme's `Actor`): choose an action for an observation, report what
//! happened, and pick up new weights from the variable source without waiting for the
//! learner.

use std::sync::{Arc, Mutex};

use autodidact_core::precision::Scratch;
use autodidact_core::{ObsNormalizer, Tensor};
use autodidact_envs::{Action, Step};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::adder::Adder;
use crate::error::Result;
use crate::variable::{VariableSource, Weights};

/// Acts in an environment and reports experience.
pub trait Actor {
    /// The action for `obs`.
    fn select_action(&mut self, obs: &[f32]) -> Result<Action>;
    /// The first observation of an episode.
    fn observe_first(&mut self, obs: &[f32]) -> Result<()>;
    /// The step that followed the last selected action; returns whether it ended the episode.
    fn observe(&mut self, action: &Action, step: &Step) -> Result<bool>;
    /// Switches to the newest published weights (cheap; call it as often as you like).
    fn update(&mut self);
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

/// ε-greedy over the Q-values of the acting snapshot; records the chosen action's Q-value as
/// behaviour data.
pub struct EpsilonGreedyActor<A: Adder> {
    source: Arc<VariableSource>,
    weights: Arc<Weights>,
    adder: A,
    n_actions: usize,
    epsilon: f32,
    rng: ChaCha8Rng,
    obs_stats: Option<Arc<Mutex<ObsNormalizer>>>,
    obs: Tensor,
    q: Tensor,
    scratch: Scratch,
    last_q: f32,
}

/// Seed tag of the actor's exploration stream.
const RNG_STREAM: u64 = 0x0041_4354_4f52; // "ACTOR"

impl<A: Adder> EpsilonGreedyActor<A> {
    /// An actor over `n_actions` actions, seeded with `seed`. With `obs_stats`, every
    /// observation is folded into those shared running statistics (for the learner's
    /// normaliser).
    pub fn new(
        source: Arc<VariableSource>,
        adder: A,
        n_actions: usize,
        seed: u64,
        obs_stats: Option<Arc<Mutex<ObsNormalizer>>>,
    ) -> Self {
        let weights = source.latest();
        let scratch = weights.snapshot.scratch();
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        rng.set_stream(RNG_STREAM);
        EpsilonGreedyActor {
            source,
            weights,
            adder,
            n_actions,
            epsilon: 1.0,
            rng,
            obs_stats,
            obs: Tensor::default(),
            q: Tensor::default(),
            scratch,
            last_q: f32::NAN,
        }
    }

    /// Sets the exploration rate.
    pub fn set_epsilon(&mut self, epsilon: f32) {
        self.epsilon = epsilon;
    }

    /// Position of the exploration stream (saved with checkpoints for an exact resume).
    pub fn rng_word_pos(&self) -> u128 {
        self.rng.get_word_pos()
    }

    /// Restores the exploration stream's position.
    pub fn set_rng_word_pos(&mut self, pos: u128) {
        self.rng.set_word_pos(pos);
    }

    /// The adder.
    pub fn adder_mut(&mut self) -> &mut A {
        &mut self.adder
    }

    /// Generation of the weights in use.
    pub fn generation(&self) -> u64 {
        self.weights.generation
    }
}

impl<A: Adder> Actor for EpsilonGreedyActor<A> {
    fn select_action(&mut self, obs: &[f32]) -> Result<Action> {
        self.obs.resize(&[1, obs.len()]);
        self.obs.data_mut().copy_from_slice(obs);
        if let Some(stats) = &self.obs_stats {
            stats
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .update(&self.obs)?;
        }
        // Draw the coin first so the random stream does not depend on the network.
        let explore = self.rng.random::<f32>() < self.epsilon;
        let random_action = self.rng.random_range(0..self.n_actions);
        self.weights
            .snapshot
            .forward(&self.obs, &mut self.q, &mut self.scratch)?;
        let a = if explore {
            random_action
        } else {
            argmax(self.q.data())
        };
        self.last_q = self.q.data().get(a).copied().unwrap_or(f32::NAN);
        Ok(Action::Discrete(a as i64))
    }

    fn observe_first(&mut self, obs: &[f32]) -> Result<()> {
        self.adder.add_first(obs)
    }

    fn observe(&mut self, action: &Action, step: &Step) -> Result<bool> {
        self.adder.add(action, Some(self.last_q), step)
    }

    fn update(&mut self) {
        let latest = self.source.latest();
        if latest.generation != self.weights.generation {
            self.weights = latest;
        }
    }
}
