//! Typed errors of the replay store.

use std::path::PathBuf;
use std::sync::Arc;

use rusqlite::ErrorCode;

/// Everything that can go wrong in the replay store.
///
/// SQLite failures that a caller can act on (a full disk, a lock held by someone else, a
/// read-only file) get their own variants so that the agent can react without string matching.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReplayError {
    /// The disk (or the configured page limit) is full; the failed batch was rolled back.
    #[error("the database is full (disk full or page limit reached): {0}")]
    DiskFull(String),
    /// Another connection holds a lock for longer than the busy timeout.
    #[error("the database is locked by another connection: {0}")]
    Busy(String),
    /// The file or the connection is read-only.
    #[error("the database is read-only: {0}")]
    ReadOnly(String),
    /// The file exists but is not an SQLite database.
    #[error("{path} is not an SQLite database")]
    NotADatabase {
        /// The offending file.
        path: PathBuf,
    },
    /// The file is an SQLite database written by something other than autodidact.
    #[error("{path} is an SQLite database but not an autodidact replay store: {reason}")]
    ForeignDatabase {
        /// The offending file.
        path: PathBuf,
        /// What gave it away.
        reason: String,
    },
    /// The file was written by a newer autodidact; reading it could misinterpret data.
    #[error("schema version {found} is newer than the newest this build knows ({supported})")]
    TooNew {
        /// `PRAGMA user_version` of the file.
        found: i64,
        /// Newest version this build understands.
        supported: i64,
    },
    /// A read-only open found an older schema, which only a writable open may migrate.
    #[error("schema version {found} needs migration to {expected}; open it writable once")]
    NeedsMigration {
        /// `PRAGMA user_version` of the file.
        found: i64,
        /// Version this build expects.
        expected: i64,
    },
    /// There is no file at the path a read-only open was given (a read-only open never
    /// creates one).
    #[error("{path}: no such file")]
    NoSuchFile {
        /// The path that was given.
        path: PathBuf,
    },
    /// SQLite found the file's pages inconsistent: the file was damaged (a partial copy, a
    /// disk error, an edit by hand). Nothing read from it can be trusted.
    #[error(
        "the database file is damaged ({0}); check it with `sqlite3 FILE 'PRAGMA integrity_check'` \
         and salvage what is left with `sqlite3 FILE .recover`"
    )]
    Damaged(String),
    /// An observation or action does not have the shape its run declared.
    #[error("shape mismatch: {0}")]
    Shape(String),
    /// A caller passed a value that cannot be honoured.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// A row, model or run that was asked for does not exist.
    #[error("{what} {id} not found")]
    NotFound {
        /// Kind of thing looked up.
        what: &'static str,
        /// Its identifier.
        id: i64,
    },
    /// A stored value cannot be decoded; the file was edited by hand or is damaged.
    #[error("corrupt row in {table} (id {id}): {reason}")]
    Corrupt {
        /// Table of the bad row.
        table: &'static str,
        /// Row id.
        id: i64,
        /// What is wrong with it.
        reason: String,
    },
    /// A model's `checkpoint_path` is not a plain relative path (see
    /// [`crate::check_checkpoint_path`]): it could name a file outside the run directory.
    #[error("checkpoint path {path:?} is not a plain relative path: {reason}")]
    UnsafeCheckpointPath {
        /// The offending path, as stored or given.
        path: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A model status change that the registry does not allow.
    #[error("model {version}: {reason}")]
    ModelStatus {
        /// Model version concerned.
        version: i64,
        /// Why the change was refused.
        reason: String,
    },
    /// The writer thread has stopped; `cause` is the error that stopped it, if any.
    #[error("the replay writer has stopped{}", match cause { Some(c) => format!(": {c}"), None => String::new() })]
    WriterStopped {
        /// The error that stopped the writer (shared by every sender that hits it).
        cause: Option<Arc<ReplayError>>,
    },
    /// The writer thread stopped while it still held episodes that senders had been told were
    /// accepted (see [`crate::EpisodeWriter::finish`]): a permanent error, or a transient one
    /// that outlasted [`crate::WriterOptions::close_timeout`] while closing. They are not in
    /// the file and never will be; `episodes` says how many.
    #[error("{episodes} accepted episodes were not committed: {cause}")]
    Unwritten {
        /// Accepted episodes that were dropped.
        episodes: u64,
        /// The error that kept them from being committed.
        cause: Arc<ReplayError>,
    },
    /// Only one writer thread may run per store, because the mirror follows one writer.
    #[error("a writer is already running for this store")]
    WriterAlreadyRunning,
    /// There is nothing to sample yet.
    #[error("the replay mirror holds no transitions")]
    Empty,
    /// Any other SQLite failure.
    #[error("sqlite: {0}")]
    Sqlite(rusqlite::Error),
    /// A JSON column could not be written or read.
    #[error("json: {0}")]
    Json(#[from] serde_json::Error),
    /// A filesystem operation failed.
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
}

impl ReplayError {
    /// The error behind a [`ReplayError::WriterStopped`], or `self` for any other variant.
    ///
    /// Lets callers match `DiskFull` / `Busy` / `ReadOnly` regardless of whether they hit the
    /// failure first-hand or learned about it from a stopped writer.
    pub fn root(&self) -> &ReplayError {
        match self {
            ReplayError::WriterStopped { cause: Some(c) } => c.root(),
            ReplayError::Unwritten { cause, .. } => cause.root(),
            other => other,
        }
    }

    /// Whether the failure may pass by itself, so that the same transaction is worth running
    /// again: a lock held by another connection (`SQLITE_BUSY` / `SQLITE_LOCKED`), a full disk
    /// or page limit (`SQLITE_FULL`), and I/O errors that a retry may not meet again
    /// (`SQLITE_IOERR` other than a filesystem reporting corruption, `SQLITE_CANTOPEN` as
    /// raised when the process is out of file descriptors, `SQLITE_PROTOCOL`).
    ///
    /// A damaged or read-only file, a constraint violation or a misuse is not transient:
    /// running the same statements again cannot succeed.
    pub fn is_transient(&self) -> bool {
        self.stall_reason().is_some()
    }

    /// The kind of stall a transient error causes, `None` for a permanent one.
    pub(crate) fn stall_reason(&self) -> Option<crate::writer::StallReason> {
        use crate::writer::StallReason;
        match self.root() {
            ReplayError::Busy(_) => Some(StallReason::Busy),
            ReplayError::DiskFull(_) => Some(StallReason::DiskFull),
            ReplayError::Sqlite(rusqlite::Error::SqliteFailure(ffi, _)) => match ffi.code {
                // SQLITE_IOERR_CORRUPTFS: the filesystem itself says the file is damaged.
                ErrorCode::SystemIoFailure if ffi.extended_code == SQLITE_IOERR_CORRUPTFS => None,
                ErrorCode::SystemIoFailure
                | ErrorCode::CannotOpen
                | ErrorCode::FileLockingProtocolFailed => Some(StallReason::Io),
                _ => None,
            },
            _ => None,
        }
    }
}

impl From<rusqlite::Error> for ReplayError {
    fn from(e: rusqlite::Error) -> Self {
        if let rusqlite::Error::SqliteFailure(ffi, _) = &e {
            let text = e.to_string();
            match ffi.code {
                ErrorCode::DiskFull => return ReplayError::DiskFull(text),
                ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked => {
                    return ReplayError::Busy(text);
                }
                ErrorCode::ReadOnly => return ReplayError::ReadOnly(text),
                ErrorCode::DatabaseCorrupt => return ReplayError::Damaged(text),
                _ => {}
            }
        }
        ReplayError::Sqlite(e)
    }
}

/// `SQLITE_IOERR | (33 << 8)`, not exported by every libsqlite3-sys version.
const SQLITE_IOERR_CORRUPTFS: std::ffi::c_int = 10 | (33 << 8);

/// Result alias of the replay crate.
pub type Result<T, E = ReplayError> = std::result::Result<T, E>;

impl From<rusqlite::types::FromSqlError> for ReplayError {
    fn from(e: rusqlite::types::FromSqlError) -> Self {
        // Only raised when a column holds an unexpected type, e.g. after a hand edit.
        ReplayError::Sqlite(rusqlite::Error::FromSqlConversionFailure(
            0,
            rusqlite::types::Type::Blob,
            Box::new(e),
        ))
    }
}
