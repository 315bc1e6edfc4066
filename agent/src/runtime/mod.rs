//! The one runtime under `train` and the daemon: what both commands do the same way lives
//! here, once.
//!
//! - [`run_dir`]: the run directory — lock, store, spec, learner creation and loading through
//!   the learner registry, checkpoint naming, saving and registration, the state file;
//! - [`changes`]: noticing that the world changed (drift detectors) and the reflection that
//!   records it;
//! - [`memory`]: the worlds a run mastered, kept to be recalled when one comes back;
//! - [`acting`]: the actor loop (episodes, faults, replay), steered by an `ActingControl`;
//! - [`learning`]: the learner loop (rate limit, updates, publication), steered by a
//!   `LearningControl`.
//!
//! `train` is a bounded run of these; the daemon runs the same loops with the gate, drift
//! handling, reflection and HTTP around them.

pub mod acting;
pub mod changes;
pub mod learning;
pub mod memory;
pub mod run_dir;

pub use run_dir::{
    CONFIG_FILE, REPLAY_FILE, RunDir, RunLock, RunState, STATE_FILE, SavedModel, acting_checkpoint,
    check_stored_command, stored_counts, with_suffix,
};
pub(crate) use run_dir::{
    episode_seed, inside_run_dir, learner_pool, measure_plasticity, model_metrics, write_atomic,
};
