//! The actor seam (Acme's `Actor`): choose an action for an observation, report what
//! happened, and pick up new weights from the variable source without waiting for the
//! learner.

use std::sync::{Arc, Mutex};

use autodidact_core::{ObsNormalizer, Tensor};
use autodidact_envs::{Action, Step};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::adder::Adder;
use crate::error::Result;
use crate::policy::{ActMode, Policy};
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

/// Acts with the newest published weights through a learner kind's [`Policy`] and hands every
/// step to its adder, with the chosen action's value as behaviour data.
pub struct PolicyActor<A: Adder> {
    source: Arc<VariableSource>,
    weights: Arc<Weights>,
    adder: A,
    policy: Box<dyn Policy>,
    level: f32,
    rng: ChaCha8Rng,
    obs_stats: Option<Arc<Mutex<ObsNormalizer>>>,
    obs: Tensor,
    last_value: f32,
}

/// Seed tag of the actor's exploration stream.
const RNG_STREAM: u64 = 0x0041_4354_4f52; // "ACTOR"

impl<A: Adder> PolicyActor<A> {
    /// An actor acting through `policy`, seeded with `seed`. With `obs_stats`, every
    /// observation is folded into those shared running statistics (for the learner's
    /// normaliser).
    pub fn new(
        source: Arc<VariableSource>,
        adder: A,
        policy: Box<dyn Policy>,
        seed: u64,
        obs_stats: Option<Arc<Mutex<ObsNormalizer>>>,
    ) -> Self {
        let weights = source.latest();
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        rng.set_stream(RNG_STREAM);
        PolicyActor {
            source,
            weights,
            adder,
            policy,
            level: 1.0,
            rng,
            obs_stats,
            obs: Tensor::default(),
            last_value: f32::NAN,
        }
    }

    /// Sets the exploration level (see [`ActMode::Explore`]).
    pub fn set_exploration(&mut self, level: f32) {
        self.level = level;
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

impl<A: Adder> Actor for PolicyActor<A> {
    fn select_action(&mut self, obs: &[f32]) -> Result<Action> {
        if let Some(stats) = &self.obs_stats {
            self.obs.resize(&[1, obs.len()]);
            self.obs.data_mut().copy_from_slice(obs);
            stats
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .update(&self.obs)?;
        }
        let acted = self.policy.act(
            &self.weights.snapshot,
            obs,
            ActMode::Explore { level: self.level },
            &mut self.rng,
        )?;
        self.last_value = acted.value;
        Ok(acted.action)
    }

    fn observe_first(&mut self, obs: &[f32]) -> Result<()> {
        self.adder.add_first(obs)
    }

    fn observe(&mut self, action: &Action, step: &Step) -> Result<bool> {
        self.adder.add(action, Some(self.last_value), step)
    }

    fn update(&mut self) {
        let latest = self.source.latest();
        if latest.generation != self.weights.generation {
            self.weights = latest;
        }
    }
}
