//! The variable source (Acme's name): where the learner publishes acting weights and actors
//! pick them up.
//!
//! Weights are published as a whole immutable [`Snapshot`] behind an `Arc`, swapped in with
//! one atomic pointer store (`arc-swap`). An actor holding the previous `Arc` keeps acting
//! on the previous model until it asks for the latest, so no action ever sees half of one
//! model and half of another, and the actor never waits for the learner.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arc_swap::ArcSwap;
use autodidact_core::Snapshot;

/// One published set of acting weights.
#[derive(Debug)]
pub struct Weights {
    /// Publication counter, from 0 for the weights the source was created with.
    pub generation: u64,
    /// The acting network.
    pub snapshot: Snapshot,
}

/// Shared between one learner (publishing) and any number of actors (reading).
#[derive(Debug)]
pub struct VariableSource {
    current: ArcSwap<Weights>,
    next_generation: AtomicU64,
}

impl VariableSource {
    /// A source that serves `snapshot` as generation 0.
    pub fn new(snapshot: Snapshot) -> Self {
        VariableSource {
            current: ArcSwap::from_pointee(Weights {
                generation: 0,
                snapshot,
            }),
            next_generation: AtomicU64::new(1),
        }
    }

    /// Makes `snapshot` the weights every later [`VariableSource::latest`] returns; returns
    /// its generation.
    pub fn publish(&self, snapshot: Snapshot) -> u64 {
        let generation = self.next_generation.fetch_add(1, Ordering::Relaxed);
        self.current.store(Arc::new(Weights {
            generation,
            snapshot,
        }));
        generation
    }

    /// The latest published weights. Lock-free; never blocks on a publisher.
    pub fn latest(&self) -> Arc<Weights> {
        self.current.load_full()
    }
}
