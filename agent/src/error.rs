//! The agent's error type: everything that can go wrong between the environment, the training
//! core, the replay store and the run directory, each with enough context to act on.

use std::path::PathBuf;

/// Errors of the agent library.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The environment failed (a dead child process, a bad observation, …).
    #[error("environment: {0}")]
    Env(#[from] autodidact_envs::EnvError),
    /// An environment's step or reset could not be used (see [`crate::fault`]).
    #[error("environment fault: {0}")]
    Fault(#[from] crate::fault::Fault),
    /// The training core failed (shapes, a bad checkpoint, …).
    #[error("training core: {0}")]
    Core(#[from] autodidact_core::CoreError),
    /// The replay store failed (disk full, locked, corrupted, …).
    #[error("replay store: {0}")]
    Replay(#[from] autodidact_replay::ReplayError),
    /// A configuration value is out of range or does not fit the environment.
    #[error("config: {0}")]
    Config(String),
    /// A file of the run directory could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A file of the run directory is malformed.
    #[error("{path}: {reason}")]
    RunDir {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A run directory's files ask to run a command the user has not agreed to.
    #[error(
        "{file} asks to run the environment `{env_id}`, which starts a program. A run directory \
         may come from someone else, so autodidact runs a stored command only when you say so: \
         pass --env '{env_id}' (or another environment) or --allow-exec"
    )]
    StoredCommand {
        /// The file that names it.
        file: PathBuf,
        /// The environment ID.
        env_id: String,
    },
    /// A worker thread died (a bug: it panicked).
    #[error("the {0} thread panicked; see the log above")]
    Panicked(&'static str),
}

impl AgentError {
    /// An I/O error on `path`.
    pub fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> AgentError {
        let path = path.into();
        move |source| AgentError::Io { path, source }
    }
}

/// Result alias of the agent library.
pub type Result<T, E = AgentError> = std::result::Result<T, E>;
