//! The SQLite replay store of autodidact.
//!
//! Everything an agent lives through is written here, and everything it learns is sampled
//! from here:
//!
//! - [`ReplayStore`] opens (creating or migrating) one SQLite file: runs, episodes,
//!   transitions, the model registry, reflections and metadata. The schema is in `SCHEMA.md`.
//! - [`WriterHandle`] / [`Writer`] / [`EpisodeWriter`]: actors buffer whole episodes and send
//!   them through a bounded channel to one writer thread, which commits them in batches and
//!   rides out transient failures (a lock held elsewhere, a full disk) by retrying, reporting
//!   its [`WriterHealth`] meanwhile.
//! - [`Inspector`]: read-only queries for looking back at a file of any schema version
//!   (summaries, filtered episodes, streamed exports), as `autodidact replay` shows them.
//! - [`Sampler`]: uniform and prioritized sampling with n-step returns from an in-memory
//!   mirror of the replay window, kept in step with what has been committed.
//!
//! This is the only crate of the workspace that knows SQLite.
#![warn(missing_docs)]

mod error;
mod inspect;
mod mirror;
mod schema;
mod store;
pub mod sumtree;
mod types;
mod writer;

pub use error::{ReplayError, Result};
pub use inspect::{
    EpisodeFilter, EpisodeInfo, EpisodeOrder, FileBytes, Inspector, Overview, RunOverview,
    TransitionFilter, TransitionView, View,
};
pub use mirror::{MirrorOptions, NStep, SampleBatch, Sampler};
pub use schema::{APPLICATION_ID, SCHEMA_VERSION};
pub use store::{
    Durability, EpisodeRow, EvictionPolicy, MAX_WINDOW_CAPACITY, Model, ModelStatus, NewModel,
    NewReflection, Reflection, ReplayStore, Retention, RunStats, Snapshot, StoreOptions, Summary,
    TransitionRow, check_checkpoint_path,
};
pub use types::{
    Action, ActionRef, ActionSpace, Dtype, EpisodeEnd, MAX_ACTION_DIM, MAX_OBS_ELEMENTS,
    MAX_OBS_RANK, MAX_SHAPE_JSON_BYTES, Run, RunSpec,
};
pub use writer::{
    EpisodeWriter, FIRST_RETRY_BACKOFF, Stall, StallReason, Writer, WriterHandle, WriterHealth,
    WriterOptions, WriterStats,
};
