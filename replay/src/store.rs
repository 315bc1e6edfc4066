//! The replay store: opening and migrating the file, runs, the model registry, reflections,
//! metadata and read-only snapshots. All SQL of the crate lives here and in `writer.rs`, so a
//! second backend only has to replace these two modules.

use std::cell::Cell;
use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, OptionalExtension, Row, params};

use crate::error::{ReplayError, Result};
use crate::mirror::{EpisodeIn, Mirror, MirrorOptions, Sampler};
use crate::schema::{self, SCHEMA_VERSION};
use crate::types::{
    Action, ActionSpace, Dtype, MAX_OBS_RANK, MAX_SHAPE_JSON_BYTES, Run, RunSpec, now_secs,
    obs_dims_problem,
};
use crate::writer::{Control, WriterHandle, WriterOptions, apply_max_file_bytes};

/// Largest in-memory sampling window, in transitions (2²⁸): [`ReplayStore::open`] refuses
/// a larger [`MirrorOptions::capacity`].
pub const MAX_WINDOW_CAPACITY: usize = 1 << 28;

/// How hard an episode batch's commit tries to reach the disk (the writer thread's
/// connection).
///
/// It applies to episodes only: the store's own connection, which writes runs, the model
/// registry, reflections and metadata, always runs `synchronous = FULL`, so that a registry
/// change (a promotion, say) is on disk when its call returns, whatever this says. A caller
/// may then delete files that the old state named. SCHEMA.md has the full table of promises.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// `synchronous = NORMAL` in WAL mode: a committed batch survives a crash of the process
    /// (including `kill -9`); the last batches may be lost on power failure or OS crash
    /// (never half of one: the file rolls back to an earlier commit).
    #[default]
    Normal,
    /// `synchronous = FULL`: every batch is fsynced at commit; survives power failure, costs a
    /// sync per batch.
    Full,
}

impl Durability {
    fn pragma(self) -> &'static str {
        match self {
            Durability::Normal => "NORMAL",
            Durability::Full => "FULL",
        }
    }
}

/// Which whole episodes leave first when the store is over capacity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EvictionPolicy {
    /// Oldest episode first.
    #[default]
    Fifo,
    /// Episodes outside the in-memory window first (oldest first), then the episode with the
    /// lowest mean priority in the window.
    LowestPriority,
}

/// Capacity of the file. Limits are checked by the writer after each batch; whole episodes are
/// deleted in the same transaction as the batch, then the space is returned to the OS by
/// incremental vacuum.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Retention {
    /// Keep at most this many transitions.
    pub max_transitions: Option<u64>,
    /// Keep at most this many payload bytes (observation and action blobs, see SCHEMA.md).
    pub max_bytes: Option<u64>,
    /// Which episodes go first.
    pub policy: EvictionPolicy,
}

/// Options of [`ReplayStore::open`].
#[derive(Debug, Clone, PartialEq)]
pub struct StoreOptions {
    /// Commit durability of episode batches (the registry is always durable at commit; see
    /// [`Durability`]).
    pub durability: Durability,
    /// The in-memory sampling window.
    pub mirror: MirrorOptions,
    /// Capacity and eviction.
    pub retention: Retention,
    /// How long a connection waits for another one's lock before failing with
    /// [`ReplayError::Busy`].
    pub busy_timeout: Duration,
    /// Hard cap on the size of the database file in bytes (`PRAGMA max_page_count`, rounded
    /// down to whole pages, on every connection of the store). Reaching it fails a write like
    /// a full disk does ([`ReplayError::DiskFull`]): the writer thread keeps what it holds and
    /// retries, a registry write returns the error. SQLite never lowers the cap below the
    /// current size of the file, so a cap smaller than the file freezes it at its size. The
    /// write-ahead log (`-wal`) is not counted. `None` = no cap but SQLite's own
    /// (4294967294 pages). Change it at run time with [`ReplayStore::set_max_file_bytes`].
    pub max_file_bytes: Option<u64>,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            durability: Durability::Normal,
            mirror: MirrorOptions::default(),
            retention: Retention::default(),
            busy_timeout: Duration::from_secs(5),
            max_file_bytes: None,
        }
    }
}

/// Status of a model version in the registry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelStatus {
    /// Registered, not (or no longer) the one acting.
    Candidate,
    /// The model that acts; at most one at a time (enforced by a unique index).
    Champion,
    /// Evaluated and turned down; cannot be promoted.
    Rejected,
}

impl ModelStatus {
    /// The name stored in the `status` column.
    pub fn as_str(self) -> &'static str {
        match self {
            ModelStatus::Candidate => "candidate",
            ModelStatus::Champion => "champion",
            ModelStatus::Rejected => "rejected",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        match s {
            "candidate" => Some(ModelStatus::Candidate),
            "champion" => Some(ModelStatus::Champion),
            "rejected" => Some(ModelStatus::Rejected),
            _ => None,
        }
    }
}

/// A model version to register.
#[derive(Debug, Clone, PartialEq)]
pub struct NewModel {
    /// The version it was trained from.
    pub parent: Option<i64>,
    /// Where the checkpoint lives: a plain relative path (see [`check_checkpoint_path`]).
    pub checkpoint_path: String,
    /// Checksum of the checkpoint file (e.g. hex SHA-256), to detect a swapped file.
    pub checksum: String,
    /// Evaluation metrics, free-form JSON.
    pub metrics: serde_json::Value,
}

/// Checks that `path` is a plain relative path: not empty, no NUL byte, and made only of
/// ordinary names (no root `/`, no Windows prefix such as `C:`, no `..`, no `.`). Joined to
/// a run directory, such a path names a file inside it (symbolic links aside), which is what
/// makes deleting an old checkpoint safe.
///
/// [`ReplayStore::register_model`] refuses any other path. A file written elsewhere (or
/// before this check existed) may still hold one, so a caller that acts on a stored path
/// checks it with this function (or [`Model::checkpoint_relative_path`]) first. Returns the
/// path as a [`Path`], or [`ReplayError::UnsafeCheckpointPath`].
pub fn check_checkpoint_path(path: &str) -> Result<&Path> {
    let refuse = |reason| {
        Err(ReplayError::UnsafeCheckpointPath {
            path: path.to_string(),
            reason,
        })
    };
    if path.is_empty() {
        return refuse("it is empty");
    }
    if path.contains('\0') {
        return refuse("it contains a NUL byte");
    }
    let p = Path::new(path);
    for c in p.components() {
        match c {
            Component::Normal(_) => {}
            Component::Prefix(_) => return refuse("it starts with a drive or UNC prefix"),
            Component::RootDir => return refuse("it is absolute"),
            Component::ParentDir => return refuse("it contains `..`"),
            Component::CurDir => return refuse("it contains `.`"),
        }
    }
    Ok(p)
}

/// A registered model version.
#[derive(Debug, Clone, PartialEq)]
pub struct Model {
    /// Version number (increasing, never reused).
    pub version: i64,
    /// The version it was trained from.
    pub parent: Option<i64>,
    /// Registration time, Unix seconds.
    pub created_at: f64,
    /// Where the checkpoint lives, as stored: check it with
    /// [`Model::checkpoint_relative_path`] before using it, since a file from elsewhere may
    /// hold any text here.
    pub checkpoint_path: String,
    /// Checksum of the checkpoint.
    pub checksum: String,
    /// Evaluation metrics.
    pub metrics: serde_json::Value,
    /// Current status.
    pub status: ModelStatus,
}

impl Model {
    /// The checkpoint path, if it is a plain relative path; see [`check_checkpoint_path`].
    pub fn checkpoint_relative_path(&self) -> Result<&Path> {
        check_checkpoint_path(&self.checkpoint_path)
    }
}

/// A reflection to record.
#[derive(Debug, Clone, PartialEq)]
pub struct NewReflection {
    /// Category, e.g. `drift`, `promotion`, `plateau`.
    pub kind: String,
    /// Model version it is about.
    pub model_version: Option<i64>,
    /// Structured content.
    pub data: serde_json::Value,
    /// One human-readable sentence.
    pub sentence: String,
}

/// A recorded reflection.
#[derive(Debug, Clone, PartialEq)]
pub struct Reflection {
    /// Row id.
    pub id: i64,
    /// Time, Unix seconds.
    pub created_at: f64,
    /// Category.
    pub kind: String,
    /// Model version it is about.
    pub model_version: Option<i64>,
    /// Structured content.
    pub data: serde_json::Value,
    /// One human-readable sentence.
    pub sentence: String,
}

/// An episode row.
#[derive(Debug, Clone, PartialEq)]
pub struct EpisodeRow {
    /// Row id (increasing, never reused).
    pub id: i64,
    /// Run it belongs to.
    pub run_id: i64,
    /// Model version that acted.
    pub model_version: Option<i64>,
    /// Number of transitions.
    pub length: i64,
    /// Undiscounted sum of rewards.
    pub episode_return: f64,
    /// Ended in a terminal state.
    pub terminated: bool,
    /// Cut short.
    pub truncated: bool,
    /// Start time, Unix seconds.
    pub started_at: f64,
    /// End time, Unix seconds.
    pub ended_at: f64,
    /// Observation after the last step.
    pub final_obs: Vec<f32>,
    /// Bytes counted against [`Retention::max_bytes`].
    pub payload_bytes: i64,
}

/// A transition row, decoded.
#[derive(Debug, Clone, PartialEq)]
pub struct TransitionRow {
    /// Row id, the id used for priority updates.
    pub id: i64,
    /// Episode it belongs to.
    pub episode_id: i64,
    /// Step within the episode, from 0.
    pub step: i64,
    /// Observation before the action.
    pub obs: Vec<f32>,
    /// Action taken.
    pub action: Action,
    /// Reward received.
    pub reward: f32,
    /// This step ended the episode in a terminal state.
    pub terminated: bool,
    /// This step ended the episode by truncation.
    pub truncated: bool,
    /// Behaviour log-probability or Q-value, if recorded.
    pub behaviour: Option<f32>,
    /// Persisted priority (`None` = the maximum at insertion time).
    pub priority: Option<f32>,
}

/// Kept per-run counters (table `run_stats`), maintained in the same transaction as every
/// insert and eviction so that summaries never scan transitions.
#[derive(Debug, Clone, PartialEq)]
pub struct RunStats {
    /// The run.
    pub run_id: i64,
    /// Episodes ever written.
    pub episodes_total: i64,
    /// Transitions ever written.
    pub transitions_total: i64,
    /// Episodes currently stored.
    pub episodes_kept: i64,
    /// Transitions currently stored.
    pub transitions_kept: i64,
    /// Payload bytes currently stored.
    pub bytes_kept: i64,
    /// Sum of returns of stored episodes.
    pub return_sum_kept: f64,
}

/// A summary of the whole file, read in one snapshot.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    /// Schema version of the file.
    pub schema_version: i64,
    /// Counters per run.
    pub runs: Vec<RunStats>,
    /// Number of registered models.
    pub models: i64,
    /// Current champion version.
    pub champion: Option<i64>,
    /// Number of reflections.
    pub reflections: i64,
}

impl Summary {
    /// Transitions stored across runs.
    pub fn transitions_kept(&self) -> i64 {
        self.runs.iter().map(|r| r.transitions_kept).sum()
    }

    /// Episodes stored across runs.
    pub fn episodes_kept(&self) -> i64 {
        self.runs.iter().map(|r| r.episodes_kept).sum()
    }
}

/// Opens a connection with the pragmas every connection of the store needs; `sync` is its
/// `PRAGMA synchronous` (irrelevant for a read-only connection, which never commits).
pub(crate) fn connect(
    path: &Path,
    read_only: bool,
    opts: &StoreOptions,
    sync: Durability,
) -> Result<Connection> {
    let flags = if read_only {
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX
    } else {
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX
    };
    let conn = Connection::open_with_flags(path, flags).map_err(ReplayError::from)?;
    conn.busy_timeout(opts.busy_timeout)?;
    conn.set_prepared_statement_cache_capacity(32);
    let sync = sync.pragma();
    conn.execute_batch(&format!(
        "PRAGMA foreign_keys = ON; PRAGMA synchronous = {sync}; PRAGMA cache_size = -16384;"
    ))
    .map_err(ReplayError::from)
    .map_err(schema::not_a_db(path))?;
    if opts.max_file_bytes.is_some() && !read_only {
        apply_max_file_bytes(&conn, opts.max_file_bytes)?;
    }
    Ok(conn)
}

/// The replay store: one SQLite file plus the in-memory sampling window.
///
/// One process writes (through [`ReplayStore::start_writer`]); any number of processes may
/// read, each through its own [`ReplayStore::open_read_only`].
#[derive(Debug)]
pub struct ReplayStore {
    conn: Connection,
    path: PathBuf,
    options: StoreOptions,
    read_only: bool,
    mirror: Arc<RwLock<Mirror>>,
    writer_running: Arc<AtomicBool>,
    /// Shared with the writer thread: the file-size cap and the bell that wakes it.
    control: Arc<Control>,
    /// The file-size cap the store's own connection has, to notice a change made through a
    /// [`WriterHandle`].
    applied_cap: Cell<Option<u64>>,
}

impl ReplayStore {
    /// Opens (creating or migrating as needed) the store at `path` for writing, and rebuilds
    /// the in-memory window from the newest episodes.
    ///
    /// Refuses a file that is not SQLite ([`ReplayError::NotADatabase`]), an SQLite file of
    /// another application ([`ReplayError::ForeignDatabase`]), a newer schema
    /// ([`ReplayError::TooNew`]) and a run whose declared shapes are unreadable or beyond the
    /// limits of [`RunSpec::validate`] ([`ReplayError::Corrupt`]).
    pub fn open(path: impl AsRef<Path>, options: StoreOptions) -> Result<ReplayStore> {
        let path = path.as_ref().to_path_buf();
        // Before anything is sized from it: the window's sum-tree grows by its fan-out until
        // it holds the capacity, which for an absurd value would overflow.
        if options.mirror.capacity > MAX_WINDOW_CAPACITY {
            return Err(ReplayError::InvalidArgument(format!(
                "mirror capacity {} exceeds the limit of {MAX_WINDOW_CAPACITY} transitions",
                options.mirror.capacity
            )));
        }
        schema::check_magic(&path)?;
        // The store's own connection writes the registry: always FULL (see `Durability`).
        let mut conn = connect(&path, false, &options, Durability::Full)?;
        let header = schema::read_header(&conn, &path)?;
        let fresh = schema::classify(&header, &path)?;
        if !fresh {
            // A run with an absurd or unreadable shape is refused before anything is sized
            // from it (the window rebuild, the caller's buffers) and before the file is
            // touched (WAL switch, migration).
            validate_runs(&conn)?;
        }
        if fresh {
            // Only possible before the first table exists.
            conn.execute_batch("PRAGMA auto_vacuum = INCREMENTAL;")?;
        }
        let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(ReplayError::InvalidArgument(format!(
                "could not switch {} to WAL (journal_mode is {mode})",
                path.display()
            )));
        }
        if header.version < SCHEMA_VERSION {
            schema::migrate(&mut conn, header.version)?;
        }
        let mirror = Mirror::new(options.mirror);
        let store = ReplayStore {
            conn,
            path,
            control: Arc::new(Control::new(options.max_file_bytes)),
            applied_cap: Cell::new(options.max_file_bytes),
            options,
            read_only: false,
            mirror: Arc::new(RwLock::new(mirror)),
            writer_running: Arc::new(AtomicBool::new(false)),
        };
        store.rebuild_mirror()?;
        Ok(store)
    }

    /// Opens an existing store read-only (`SQLITE_OPEN_READ_ONLY`): never writes, never
    /// migrates, has no sampling window. Each [`ReplayStore::snapshot`] sees one consistent
    /// state even while another process writes.
    pub fn open_read_only(path: impl AsRef<Path>) -> Result<ReplayStore> {
        let path = path.as_ref().to_path_buf();
        schema::check_magic(&path)?;
        let options = StoreOptions {
            mirror: MirrorOptions {
                capacity: 0,
                ..MirrorOptions::default()
            },
            ..StoreOptions::default()
        };
        let conn = connect(&path, true, &options, Durability::Full)?;
        let header = schema::read_header(&conn, &path)?;
        schema::classify(&header, &path)?;
        if header.version < SCHEMA_VERSION {
            return Err(ReplayError::NeedsMigration {
                found: header.version,
                expected: SCHEMA_VERSION,
            });
        }
        let store = ReplayStore {
            conn,
            path,
            mirror: Arc::new(RwLock::new(Mirror::new(options.mirror))),
            control: Arc::new(Control::new(None)),
            applied_cap: Cell::new(None),
            options,
            read_only: true,
            writer_running: Arc::new(AtomicBool::new(false)),
        };
        validate_runs(&store.conn)?;
        Ok(store)
    }

    /// Path of the database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Options the store was opened with (a cap changed since by
    /// [`ReplayStore::set_max_file_bytes`] is not reflected here; see
    /// [`ReplayStore::max_file_bytes`]).
    pub fn options(&self) -> &StoreOptions {
        &self.options
    }

    /// The cap on the file size in force now (see [`StoreOptions::max_file_bytes`]).
    pub fn max_file_bytes(&self) -> Option<u64> {
        self.control.max_file_bytes()
    }

    /// Changes the cap on the file size (see [`StoreOptions::max_file_bytes`]) for the store's
    /// connection at once and for its writer thread before its next attempt; a writer stalled
    /// on a full file is woken to try again. `None` removes the cap.
    pub fn set_max_file_bytes(&self, bytes: Option<u64>) -> Result<()> {
        self.control.set_max_file_bytes(bytes);
        self.follow_cap()
    }

    /// Brings the store's own connection to the cap in force, which a [`WriterHandle`] may
    /// have changed.
    fn follow_cap(&self) -> Result<()> {
        let want = self.control.max_file_bytes();
        if !self.read_only && want != self.applied_cap.get() {
            apply_max_file_bytes(&self.conn, want)?;
            self.applied_cap.set(want);
        }
        Ok(())
    }

    /// Whether the store was opened read-only.
    pub fn is_read_only(&self) -> bool {
        self.read_only
    }

    /// Schema version of the file.
    pub fn schema_version(&self) -> Result<i64> {
        Ok(self
            .conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))?)
    }

    /// A handle for sampling from the in-memory window.
    pub fn sampler(&self) -> Sampler {
        Sampler::new(self.mirror.clone())
    }

    /// Starts the writer thread (one per store). Episodes sent through its [`crate::Writer`]s
    /// are committed in batches and then appear in [`ReplayStore::sampler`].
    pub fn start_writer(&self, options: WriterOptions) -> Result<WriterHandle> {
        let conn = self.writer_connection()?;
        WriterHandle::start(
            conn,
            options,
            self.options.retention,
            self.mirror.clone(),
            self.writer_running.clone(),
            self.control.clone(),
        )
    }

    /// The writer thread's connection: episodes follow [`StoreOptions::durability`].
    fn writer_connection(&self) -> Result<Connection> {
        let conn = connect(
            &self.path,
            self.read_only,
            &self.options,
            self.options.durability,
        )?;
        if !self.read_only {
            // The cap may have changed since the store was opened.
            apply_max_file_bytes(&conn, self.control.max_file_bytes())?;
        }
        Ok(conn)
    }

    /// Records a new run.
    pub fn create_run(&self, spec: &RunSpec) -> Result<Run> {
        spec.validate()?;
        let started_at = now_secs();
        let tx = self.write_transaction()?;
        tx.execute(
            "INSERT INTO runs (env_id, obs_dims, obs_dtype, action_space, config, code_version, \
             started_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![
                spec.env_id,
                serde_json::to_string(&spec.obs_dims)?,
                spec.obs_dtype.as_str(),
                serde_json::to_string(&spec.action_space)?,
                serde_json::to_string(&spec.config)?,
                spec.code_version,
                started_at
            ],
        )?;
        let id = tx.last_insert_rowid();
        tx.execute("INSERT INTO run_stats (run_id) VALUES (?1)", [id])?;
        tx.commit()?;
        Ok(Run {
            id,
            spec: spec.clone(),
            started_at,
        })
    }

    /// A run by id.
    pub fn run(&self, id: i64) -> Result<Run> {
        self.snapshot()?.run(id)
    }

    /// Registers a model version as a candidate. Its `checkpoint_path` must be a plain
    /// relative path ([`check_checkpoint_path`]), relative to the directory the caller keeps
    /// checkpoints in; anything else is refused with [`ReplayError::UnsafeCheckpointPath`].
    pub fn register_model(&self, model: &NewModel) -> Result<Model> {
        check_checkpoint_path(&model.checkpoint_path)?;
        let created_at = now_secs();
        let tx = self.write_transaction()?;
        if let Some(parent) = model.parent {
            let exists: Option<i64> = tx
                .query_row(
                    "SELECT version FROM models WHERE version = ?1",
                    [parent],
                    |r| r.get(0),
                )
                .optional()?;
            if exists.is_none() {
                return Err(ReplayError::NotFound {
                    what: "parent model",
                    id: parent,
                });
            }
        }
        tx.execute(
            "INSERT INTO models (parent, created_at, checkpoint_path, checksum, metrics, status) \
             VALUES (?1, ?2, ?3, ?4, ?5, 'candidate')",
            params![
                model.parent,
                created_at,
                model.checkpoint_path,
                model.checksum,
                serde_json::to_string(&model.metrics)?
            ],
        )?;
        let version = tx.last_insert_rowid();
        tx.commit()?;
        Ok(Model {
            version,
            parent: model.parent,
            created_at,
            checkpoint_path: model.checkpoint_path.clone(),
            checksum: model.checksum.clone(),
            metrics: model.metrics.clone(),
            status: ModelStatus::Candidate,
        })
    }

    /// A transaction that takes the write lock at once (`BEGIN IMMEDIATE`). A deferred one that
    /// reads first would fail at once with `SQLITE_BUSY` (no waiting) whenever the writer
    /// thread committed between its read and its write, which a daemon does constantly.
    fn write_transaction(&self) -> Result<rusqlite::Transaction<'_>> {
        self.follow_cap()?;
        Ok(rusqlite::Transaction::new_unchecked(
            &self.conn,
            rusqlite::TransactionBehavior::Immediate,
        )?)
    }

    /// Makes `version` the champion and demotes the previous champion to candidate, in one
    /// transaction, so there is never a moment with two champions or (after the first
    /// promotion) none. A rejected model cannot be promoted.
    ///
    /// Like every registry write, the change is on stable storage when this returns `Ok`
    /// (`synchronous = FULL`, whatever [`StoreOptions::durability`] says), so the caller may
    /// delete the old champion's files: a power loss cannot bring back a registry naming
    /// them.
    pub fn promote(&self, version: i64) -> Result<()> {
        let tx = self.write_transaction()?;
        match model_status(&tx, version)? {
            ModelStatus::Rejected => {
                return Err(ReplayError::ModelStatus {
                    version,
                    reason: "a rejected model cannot be promoted".into(),
                });
            }
            ModelStatus::Champion => return Ok(()),
            ModelStatus::Candidate => {}
        }
        tx.execute(
            "UPDATE models SET status = 'candidate' WHERE status = 'champion'",
            [],
        )?;
        tx.execute(
            "UPDATE models SET status = 'champion' WHERE version = ?1",
            [version],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Marks a candidate as rejected. The champion cannot be rejected directly: promote its
    /// replacement first, so that something always acts.
    pub fn reject(&self, version: i64) -> Result<()> {
        let tx = self.write_transaction()?;
        if model_status(&tx, version)? == ModelStatus::Champion {
            return Err(ReplayError::ModelStatus {
                version,
                reason: "the champion cannot be rejected; promote another model first".into(),
            });
        }
        tx.execute(
            "UPDATE models SET status = 'rejected' WHERE version = ?1",
            [version],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// A model by version.
    pub fn model(&self, version: i64) -> Result<Model> {
        self.query_model("WHERE version = ?1", [version])?
            .ok_or(ReplayError::NotFound {
                what: "model",
                id: version,
            })
    }

    /// The current champion, if any.
    pub fn champion(&self) -> Result<Option<Model>> {
        self.query_model("WHERE status = 'champion'", [])
    }

    /// The most recently registered model, if any.
    pub fn latest_model(&self) -> Result<Option<Model>> {
        self.query_model("ORDER BY version DESC LIMIT 1", [])
    }

    /// All models, oldest first.
    pub fn models(&self) -> Result<Vec<Model>> {
        let mut stmt = self
            .conn
            .prepare(&format!("{MODEL_SELECT} ORDER BY version"))?;
        let rows = stmt.query_map([], model_from_row)?;
        rows.map(|r| r?).collect()
    }

    fn query_model<P: rusqlite::Params>(&self, tail: &str, p: P) -> Result<Option<Model>> {
        let mut stmt = self.conn.prepare(&format!("{MODEL_SELECT} {tail}"))?;
        let mut rows = stmt.query_map(p, model_from_row)?;
        rows.next().transpose()?.transpose()
    }

    /// Records a reflection; returns its id.
    pub fn add_reflection(&self, r: &NewReflection) -> Result<i64> {
        self.follow_cap()?;
        self.conn.execute(
            "INSERT INTO reflections (created_at, kind, model_version, data, sentence) \
             VALUES (?1, ?2, ?3, ?4, ?5)",
            params![
                now_secs(),
                r.kind,
                r.model_version,
                serde_json::to_string(&r.data)?,
                r.sentence
            ],
        )?;
        Ok(self.conn.last_insert_rowid())
    }

    /// Deletes all but the newest `keep` reflections (a long-lived writer's bound on the
    /// table); returns how many were deleted.
    pub fn trim_reflections(&self, keep: u64) -> Result<usize> {
        let keep = i64::try_from(keep).unwrap_or(i64::MAX);
        self.follow_cap()?;
        Ok(self.conn.execute(
            "DELETE FROM reflections WHERE id <= (SELECT max(id) FROM reflections) - ?1",
            [keep],
        )?)
    }

    /// The newest `limit` reflections, newest first, optionally of one kind only.
    pub fn reflections(&self, kind: Option<&str>, limit: usize) -> Result<Vec<Reflection>> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let mut stmt = self.conn.prepare(
            "SELECT id, created_at, kind, model_version, data, sentence FROM reflections \
             WHERE (?1 IS NULL OR kind = ?1) ORDER BY id DESC LIMIT ?2",
        )?;
        let rows = stmt.query_map(params![kind, limit], |row| {
            let data: String = row.get(4)?;
            Ok((
                Reflection {
                    id: row.get(0)?,
                    created_at: row.get(1)?,
                    kind: row.get(2)?,
                    model_version: row.get(3)?,
                    data: serde_json::Value::Null,
                    sentence: row.get(5)?,
                },
                data,
            ))
        })?;
        rows.map(|r| {
            let (mut refl, data) = r?;
            refl.data = serde_json::from_str(&data)?;
            Ok(refl)
        })
        .collect()
    }

    /// Sets a metadata value.
    pub fn set_metadata(&self, key: &str, value: &str) -> Result<()> {
        self.follow_cap()?;
        self.conn.execute(
            "INSERT INTO metadata (key, value) VALUES (?1, ?2) \
             ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            params![key, value],
        )?;
        Ok(())
    }

    /// A metadata value, if set.
    pub fn metadata(&self, key: &str) -> Result<Option<String>> {
        Ok(self
            .conn
            .query_row("SELECT value FROM metadata WHERE key = ?1", [key], |r| {
                r.get(0)
            })
            .optional()?)
    }

    /// Begins a read snapshot: every query through it sees the same committed state.
    pub fn snapshot(&self) -> Result<Snapshot<'_>> {
        let tx = self.conn.unchecked_transaction()?;
        // A deferred transaction takes its snapshot at the first read; read now so that the
        // snapshot is pinned at the moment `snapshot()` returns.
        tx.query_row("SELECT count(*) FROM sqlite_master", [], |_| Ok(()))?;
        Ok(Snapshot { tx })
    }

    /// Summary of the file (one snapshot; reads only the kept aggregates, never transitions).
    pub fn summary(&self) -> Result<Summary> {
        self.snapshot()?.summary()
    }

    /// Runs `PRAGMA integrity_check`; returns the problems found (empty = healthy).
    pub fn integrity_check(&self) -> Result<Vec<String>> {
        let mut stmt = self.conn.prepare("PRAGMA integrity_check")?;
        let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
        let out: Vec<String> = rows.collect::<rusqlite::Result<_>>()?;
        Ok(out.into_iter().filter(|l| l != "ok").collect())
    }

    /// Returns free pages to the filesystem (`PRAGMA incremental_vacuum`); the writer does
    /// this itself after evictions.
    pub fn reclaim_space(&self) -> Result<()> {
        schema::incremental_vacuum(&self.conn)
    }

    /// Loads the newest episodes that fit into the window, oldest of them first.
    fn rebuild_mirror(&self) -> Result<()> {
        let capacity = self.options.mirror.capacity;
        if capacity == 0 {
            return Ok(());
        }
        // Runs are few; their layouts decide which episodes can share the window, which
        // follows the shape of the newest episode (as the live mirror follows its first).
        let mut layouts: HashMap<i64, (Dtype, usize, usize)> = HashMap::new();
        for run in self.snapshot()?.runs()? {
            let act_len = run.spec.action_space.act_len();
            layouts.insert(run.id, (run.spec.obs_dtype, run.spec.obs_len(), act_len));
        }
        let mut shape: Option<(usize, usize)> = None;
        let mut picked: Vec<(i64, Dtype, bool, Vec<u8>)> = Vec::new();
        {
            let mut stmt = self.conn.prepare(
                "SELECT id, run_id, length, terminated, final_obs FROM episodes ORDER BY id DESC",
            )?;
            let mut rows = stmt.query([])?;
            let mut total = 0usize;
            while let Some(row) = rows.next()? {
                let id: i64 = row.get(0)?;
                let run_id: i64 = row.get(1)?;
                let len: i64 = row.get(2)?;
                let len = usize::try_from(len).map_err(|_| corrupt("episodes", id, "length"))?;
                let &(dtype, obs_len, act_len) = layouts
                    .get(&run_id)
                    .ok_or_else(|| corrupt("episodes", id, "unknown run"))?;
                if *shape.get_or_insert((obs_len, act_len)) != (obs_len, act_len) {
                    continue;
                }
                if len > capacity {
                    // The live mirror skips such episodes too; one must not end the rebuild.
                    continue;
                }
                if total + len > capacity {
                    break;
                }
                total += len;
                picked.push((id, dtype, row.get(3)?, row.get(4)?));
            }
        }
        let Some((obs_len, act_len)) = shape else {
            return Ok(());
        };
        let mut mirror = self.mirror.write().unwrap_or_else(|e| e.into_inner());
        let mut stmt = self.conn.prepare(
            "SELECT id, step, obs, action_int, action_vec, reward, behaviour, priority \
             FROM transitions WHERE episode_id = ?1 ORDER BY step",
        )?;
        let mut b = RebuildBuf::default();
        for (ep_id, dtype, terminated, final_blob) in picked.into_iter().rev() {
            b.clear();
            let mut rows = stmt.query([ep_id])?;
            while let Some(row) = rows.next()? {
                let id: i64 = row.get(0)?;
                let step: i64 = row.get(1)?;
                if step != b.ids.len() as i64 {
                    return Err(corrupt("transitions", id, "steps not contiguous from 0"));
                }
                b.ids.push(id);
                let blob: &[u8] = row.get_ref(2)?.as_blob()?;
                decode_obs(dtype, blob, obs_len, &mut b.obs, "transitions", id)?;
                if act_len == 0 {
                    let a: Option<i64> = row.get(3)?;
                    b.act_int
                        .push(a.ok_or_else(|| corrupt("transitions", id, "missing action"))?);
                } else {
                    let blob: Option<Vec<u8>> = row.get(4)?;
                    let blob = blob.ok_or_else(|| corrupt("transitions", id, "missing action"))?;
                    decode_obs(
                        Dtype::F32,
                        &blob,
                        act_len,
                        &mut b.act_vec,
                        "transitions",
                        id,
                    )?;
                }
                b.rewards.push(row.get::<_, f64>(5)? as f32);
                b.behaviour
                    .push(row.get::<_, Option<f64>>(6)?.map_or(f32::NAN, |v| v as f32));
                b.prio
                    .push(row.get::<_, Option<f64>>(7)?.map_or(f32::NAN, |v| v as f32));
            }
            let mut final_obs = Vec::with_capacity(obs_len);
            decode_obs(
                dtype,
                &final_blob,
                obs_len,
                &mut final_obs,
                "episodes",
                ep_id,
            )?;
            mirror.insert(&EpisodeIn {
                episode_id: ep_id,
                ids: &b.ids,
                obs_len,
                act_len,
                obs: &b.obs,
                act_int: &b.act_int,
                act_vec: &b.act_vec,
                rewards: &b.rewards,
                behaviour: &b.behaviour,
                terminated,
                final_obs: &final_obs,
                priorities: Some(&b.prio),
            });
        }
        Ok(())
    }
}

#[derive(Default)]
struct RebuildBuf {
    ids: Vec<i64>,
    obs: Vec<f32>,
    act_int: Vec<i64>,
    act_vec: Vec<f32>,
    rewards: Vec<f32>,
    behaviour: Vec<f32>,
    prio: Vec<f32>,
}

impl RebuildBuf {
    fn clear(&mut self) {
        self.ids.clear();
        self.obs.clear();
        self.act_int.clear();
        self.act_vec.clear();
        self.rewards.clear();
        self.behaviour.clear();
        self.prio.clear();
    }
}

pub(crate) fn corrupt(table: &'static str, id: i64, reason: &str) -> ReplayError {
    ReplayError::Corrupt {
        table,
        id,
        reason: reason.to_string(),
    }
}

/// Decodes one observation blob, checking that it has exactly `len` elements.
fn decode_obs(
    dtype: Dtype,
    blob: &[u8],
    len: usize,
    out: &mut Vec<f32>,
    table: &'static str,
    id: i64,
) -> Result<()> {
    // `len` comes from a validated run (at most MAX_OBS_ELEMENTS), but the product is checked
    // anyway: a mismatch must never be an overflow.
    if len.checked_mul(dtype.size()) != Some(blob.len()) {
        return Err(corrupt(
            table,
            id,
            &format!(
                "blob of {} bytes, expected {} {} values",
                blob.len(),
                len,
                dtype.as_str()
            ),
        ));
    }
    dtype
        .decode_into(blob, out)
        .ok_or_else(|| corrupt(table, id, "blob length"))
}

/// Reads, decodes and validates one `runs` row (shared by snapshots and the inspector).
///
/// The row comes from a file that anyone may have written, so every column is checked before
/// anything is sized from it: the shape columns are refused unread when longer than
/// [`MAX_SHAPE_JSON_BYTES`], parsed as integers, and checked against the limits of
/// [`RunSpec::validate`] with checked arithmetic. Anything wrong is [`ReplayError::Corrupt`].
pub(crate) fn read_run(conn: &Connection, id: i64) -> Result<Run> {
    // `octet_length` reads the size from the record header, so an oversized value is refused
    // without being loaded.
    let sql = format!(
        "SELECT env_id, \
           CASE WHEN octet_length(obs_dims) <= {MAX_SHAPE_JSON_BYTES} THEN obs_dims END, \
           obs_dtype, \
           CASE WHEN octet_length(action_space) <= {MAX_SHAPE_JSON_BYTES} \
             THEN action_space END, \
           config, code_version, started_at FROM runs WHERE id = ?1"
    );
    let bad = |what: &str| corrupt("runs", id, what);
    let text = |r: &Row<'_>, i: usize| -> rusqlite::Result<Option<String>> {
        Ok(match r.get_ref(i)? {
            rusqlite::types::ValueRef::Text(t) => Some(String::from_utf8_lossy(t).into_owned()),
            _ => None,
        })
    };
    let row = conn
        .query_row(&sql, [id], |r| {
            Ok((
                text(r, 0)?,
                text(r, 1)?,
                text(r, 2)?,
                text(r, 3)?,
                text(r, 4)?,
                text(r, 5)?,
                r.get::<_, Option<f64>>(6).ok().flatten(),
            ))
        })
        .optional()?
        .ok_or(ReplayError::NotFound { what: "run", id })?;
    let (env_id, dims, dtype, space, config, code_version, started_at) = row;
    let env_id = env_id.ok_or_else(|| bad("env_id is not text"))?;
    let dims = dims.ok_or_else(|| {
        bad(&format!(
            "obs_dims is not text of at most {MAX_SHAPE_JSON_BYTES} bytes"
        ))
    })?;
    let space = space.ok_or_else(|| {
        bad(&format!(
            "action_space is not text of at most {MAX_SHAPE_JSON_BYTES} bytes"
        ))
    })?;
    let obs_dims = parse_obs_dims(&dims).map_err(|e| bad(&format!("obs_dims {dims:?}: {e}")))?;
    let action_space: ActionSpace =
        serde_json::from_str(&space).map_err(|e| bad(&format!("action_space {space:?}: {e}")))?;
    if let Some(problem) = action_space.problem() {
        return Err(bad(&format!("action_space: {problem}")));
    }
    let config = config.ok_or_else(|| bad("config is not text"))?;
    Ok(Run {
        id,
        spec: RunSpec {
            env_id,
            obs_dims,
            obs_dtype: dtype
                .as_deref()
                .and_then(Dtype::parse)
                .ok_or_else(|| bad("obs_dtype"))?,
            action_space,
            config: serde_json::from_str(&config)
                .map_err(|e| bad(&format!("config is not JSON: {e}")))?,
            code_version: code_version.ok_or_else(|| bad("code_version is not text"))?,
        },
        started_at: started_at.ok_or_else(|| bad("started_at is not a number"))?,
    })
}

/// Reads every run of the file, refusing the first that does not decode or validate.
fn validate_runs(conn: &Connection) -> Result<()> {
    let tx = conn.unchecked_transaction()?;
    let ids = {
        let mut stmt = tx.prepare("SELECT id FROM runs ORDER BY id")?;
        stmt.query_map([], |r| r.get::<_, i64>(0))?
            .collect::<rusqlite::Result<Vec<_>>>()?
    };
    for id in ids {
        read_run(&tx, id)?;
    }
    Ok(())
}

/// Parses a stored observation shape: a JSON array of integers that passes
/// [`RunSpec::validate`]'s limits. Negative values and values beyond `u64` are refused here,
/// not wrapped.
fn parse_obs_dims(text: &str) -> std::result::Result<Vec<usize>, String> {
    let raw: Vec<serde_json::Number> =
        serde_json::from_str(text).map_err(|e| format!("not a JSON array of numbers: {e}"))?;
    if raw.len() > MAX_OBS_RANK {
        return Err(format!(
            "{} dimensions; at most {MAX_OBS_RANK} are allowed",
            raw.len()
        ));
    }
    let dims = raw
        .iter()
        .map(|n| {
            n.as_u64()
                .and_then(|d| usize::try_from(d).ok())
                .ok_or_else(|| format!("dimension {n} is not a non-negative integer"))
        })
        .collect::<std::result::Result<Vec<usize>, String>>()?;
    match obs_dims_problem(&dims) {
        Some(problem) => Err(problem),
        None => Ok(dims),
    }
}

pub(crate) const MODEL_SELECT: &str =
    "SELECT version, parent, created_at, checkpoint_path, checksum, metrics, status FROM models";

pub(crate) fn model_from_row(row: &Row<'_>) -> rusqlite::Result<Result<Model>> {
    let version: i64 = row.get(0)?;
    let metrics: String = row.get(5)?;
    let status: String = row.get(6)?;
    let metrics = match serde_json::from_str(&metrics) {
        Ok(m) => m,
        Err(e) => return Ok(Err(e.into())),
    };
    let Some(status) = ModelStatus::parse(&status) else {
        return Ok(Err(corrupt("models", version, "status")));
    };
    Ok(Ok(Model {
        version,
        parent: row.get(1)?,
        created_at: row.get(2)?,
        checkpoint_path: row.get(3)?,
        checksum: row.get(4)?,
        metrics,
        status,
    }))
}

fn model_status(conn: &Connection, version: i64) -> Result<ModelStatus> {
    let s: Option<String> = conn
        .query_row(
            "SELECT status FROM models WHERE version = ?1",
            [version],
            |r| r.get(0),
        )
        .optional()?;
    let s = s.ok_or(ReplayError::NotFound {
        what: "model",
        id: version,
    })?;
    ModelStatus::parse(&s).ok_or_else(|| corrupt("models", version, "status"))
}

/// A consistent read view of the file (an SQLite read transaction). Dropping it ends the
/// transaction; holding it for long keeps the WAL from being checkpointed, so keep it short.
#[derive(Debug)]
pub struct Snapshot<'a> {
    tx: rusqlite::Transaction<'a>,
}

impl Snapshot<'_> {
    /// The summary as of this snapshot.
    pub fn summary(&self) -> Result<Summary> {
        let schema_version = self.tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        let mut stmt = self.tx.prepare_cached(
            "SELECT run_id, episodes_total, transitions_total, episodes_kept, transitions_kept, \
             bytes_kept, return_sum_kept FROM run_stats ORDER BY run_id",
        )?;
        let runs = stmt
            .query_map([], |r| {
                Ok(RunStats {
                    run_id: r.get(0)?,
                    episodes_total: r.get(1)?,
                    transitions_total: r.get(2)?,
                    episodes_kept: r.get(3)?,
                    transitions_kept: r.get(4)?,
                    bytes_kept: r.get(5)?,
                    return_sum_kept: r.get(6)?,
                })
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        let models = self
            .tx
            .query_row("SELECT count(*) FROM models", [], |r| r.get(0))?;
        let champion = self
            .tx
            .query_row(
                "SELECT version FROM models WHERE status = 'champion'",
                [],
                |r| r.get(0),
            )
            .optional()?;
        let reflections = self
            .tx
            .query_row("SELECT count(*) FROM reflections", [], |r| r.get(0))?;
        Ok(Summary {
            schema_version,
            runs,
            models,
            champion,
            reflections,
        })
    }

    /// A run by id.
    pub fn run(&self, id: i64) -> Result<Run> {
        read_run(&self.tx, id)
    }

    /// All runs, oldest first.
    pub fn runs(&self) -> Result<Vec<Run>> {
        let mut stmt = self.tx.prepare_cached("SELECT id FROM runs ORDER BY id")?;
        let ids = stmt
            .query_map([], |r| r.get::<_, i64>(0))?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        ids.into_iter().map(|id| self.run(id)).collect()
    }

    /// Episodes, oldest first, of one run or of all runs.
    pub fn episodes(&self, run_id: Option<i64>) -> Result<Vec<EpisodeRow>> {
        let runs = self.run_layouts()?;
        let mut stmt = self.tx.prepare_cached(
            "SELECT id, run_id, model_version, length, episode_return, terminated, truncated, \
             started_at, ended_at, final_obs, payload_bytes \
             FROM episodes WHERE (?1 IS NULL OR run_id = ?1) ORDER BY id",
        )?;
        let mut rows = stmt.query([run_id])?;
        let mut out = Vec::new();
        while let Some(r) = rows.next()? {
            let id: i64 = r.get(0)?;
            let run_id: i64 = r.get(1)?;
            let run = runs
                .get(&run_id)
                .ok_or_else(|| corrupt("episodes", id, "unknown run"))?;
            let blob: &[u8] = r.get_ref(9)?.as_blob()?;
            let mut final_obs = Vec::new();
            decode_obs(
                run.spec.obs_dtype,
                blob,
                run.spec.obs_len(),
                &mut final_obs,
                "episodes",
                id,
            )?;
            out.push(EpisodeRow {
                id,
                run_id,
                model_version: r.get(2)?,
                length: r.get(3)?,
                episode_return: r.get(4)?,
                terminated: r.get(5)?,
                truncated: r.get(6)?,
                started_at: r.get(7)?,
                ended_at: r.get(8)?,
                final_obs,
                payload_bytes: r.get(10)?,
            });
        }
        Ok(out)
    }

    /// Every run by id, validated.
    fn run_layouts(&self) -> Result<HashMap<i64, Run>> {
        Ok(self.runs()?.into_iter().map(|r| (r.id, r)).collect())
    }

    /// The transitions of one episode in step order, observations decoded to f32.
    pub fn transitions(&self, episode_id: i64) -> Result<Vec<TransitionRow>> {
        let run_id: i64 = self
            .tx
            .query_row(
                "SELECT run_id FROM episodes WHERE id = ?1",
                [episode_id],
                |r| r.get(0),
            )
            .optional()?
            .ok_or(ReplayError::NotFound {
                what: "episode",
                id: episode_id,
            })?;
        let run = self.run(run_id)?;
        let (dtype, obs_len) = (run.spec.obs_dtype, run.spec.obs_len());
        let mut stmt = self.tx.prepare_cached(
            "SELECT id, step, obs, action_int, action_vec, reward, terminated, truncated, \
             behaviour, priority FROM transitions WHERE episode_id = ?1 ORDER BY step",
        )?;
        let mut rows = stmt.query([episode_id])?;
        let mut out = Vec::new();
        while let Some(r) = rows.next()? {
            let id: i64 = r.get(0)?;
            let mut obs = Vec::new();
            decode_obs(
                dtype,
                r.get_ref(2)?.as_blob()?,
                obs_len,
                &mut obs,
                "transitions",
                id,
            )?;
            let action = match run.spec.action_space {
                ActionSpace::Discrete { .. } => Action::Discrete(
                    r.get::<_, Option<i64>>(3)?
                        .ok_or_else(|| corrupt("transitions", id, "missing action"))?,
                ),
                ActionSpace::Continuous { dim } => {
                    let blob = r
                        .get_ref(4)?
                        .as_blob_or_null()?
                        .ok_or_else(|| corrupt("transitions", id, "missing action"))?;
                    let mut v = Vec::new();
                    decode_obs(Dtype::F32, blob, dim, &mut v, "transitions", id)?;
                    Action::Continuous(v)
                }
            };
            out.push(TransitionRow {
                id,
                episode_id,
                step: r.get(1)?,
                obs,
                action,
                reward: r.get::<_, f64>(5)? as f32,
                terminated: r.get(6)?,
                truncated: r.get(7)?,
                behaviour: r.get::<_, Option<f64>>(8)?.map(|v| v as f32),
                priority: r.get::<_, Option<f64>>(9)?.map(|v| v as f32),
            });
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn synchronous(conn: &Connection) -> i64 {
        conn.query_row("PRAGMA synchronous", [], |r| r.get(0))
            .unwrap()
    }

    #[test]
    fn an_absurd_window_is_refused_before_anything_is_sized() {
        let dir = tempfile::tempdir().unwrap();
        let opts = |capacity| StoreOptions {
            mirror: MirrorOptions {
                capacity,
                alpha: 0.6,
            },
            ..StoreOptions::default()
        };
        // 2e18 once overflowed the sum-tree's sizing loop (and spun for ever in release).
        for capacity in [
            2_000_000_000_000_000_000,
            usize::MAX,
            MAX_WINDOW_CAPACITY + 1,
        ] {
            let r = ReplayStore::open(dir.path().join("a.sqlite"), opts(capacity));
            assert!(
                matches!(r, Err(ReplayError::InvalidArgument(_))),
                "{capacity}"
            );
        }
        assert!(
            !dir.path().join("a.sqlite").exists(),
            "a refused open created the file"
        );
        assert!(ReplayStore::open(dir.path().join("b.sqlite"), opts(1_000)).is_ok());
    }

    /// The registry's connection is FULL (2) whatever the episode durability; the writer's
    /// follows `StoreOptions::durability` (NORMAL = 1).
    #[test]
    fn registry_commits_are_durable_whatever_the_episode_durability() {
        let dir = tempfile::tempdir().unwrap();
        for (durability, writer_level) in [(Durability::Normal, 1), (Durability::Full, 2)] {
            let store = ReplayStore::open(
                dir.path().join(format!("{durability:?}.sqlite")),
                StoreOptions {
                    durability,
                    ..StoreOptions::default()
                },
            )
            .unwrap();
            assert_eq!(synchronous(&store.conn), 2, "{durability:?}: registry");
            let writer = store.writer_connection().unwrap();
            assert_eq!(synchronous(&writer), writer_level, "{durability:?}: writer");
            let mode: String = writer
                .query_row("PRAGMA journal_mode", [], |r| r.get(0))
                .unwrap();
            assert_eq!(mode, "wal");
        }
    }
}
