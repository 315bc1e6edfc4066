//! The writer thread and the actor-side handles that feed it.
//!
//! Actors buffer a whole episode in an [`EpisodeWriter`] and send it when it ends, so an
//! episode is one message and lands in exactly one transaction: readers of the file and of
//! the mirror see it whole or not at all. The thread batches many episodes per transaction,
//! which is what makes SQLite fast here; the bounded channel pushes back on actors when the
//! disk cannot keep up, instead of buffering without limit.
//!
//! A transient failure (a lock held by another process, a full disk, an I/O error that may
//! pass) does not stop the thread: it rolls the batch back and runs the whole transaction
//! again, with exponential backoff, until it commits. Only then does the mirror see the
//! batch, so every accepted episode reaches the file and the sampler exactly once.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TryRecvError, sync_channel};
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use crate::error::{ReplayError, Result};
use crate::mirror::{EpisodeIn, Mirror};
use crate::store::{EvictionPolicy, Retention};
use crate::types::{ActionRef, Dtype, EpisodeEnd, Run, now_secs};

/// First pause after a failed attempt; it doubles after each further failure, up to
/// [`WriterOptions::max_retry_backoff`].
pub const FIRST_RETRY_BACKOFF: Duration = Duration::from_millis(10);

/// Tuning of the writer thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriterOptions {
    /// Episodes that may wait in the channel before senders block (backpressure).
    pub channel_capacity: usize,
    /// A batch is committed once it holds at least this many transitions...
    pub max_batch_transitions: usize,
    /// ...or once its first episode has waited this long, whichever comes first.
    pub max_batch_latency: Duration,
    /// Write priorities changed by the learner back to the file with each batch, so that a
    /// restart resumes with them.
    pub persist_priorities: bool,
    /// Longest pause between two attempts at a batch that failed transiently (the pause starts
    /// at [`FIRST_RETRY_BACKOFF`] and doubles). A `SQLITE_BUSY` attempt also waits up to
    /// [`crate::StoreOptions::busy_timeout`] before it fails.
    pub max_retry_backoff: Duration,
    /// How long [`WriterHandle::close`] (or dropping the handle) keeps retrying a batch that
    /// fails transiently before it gives up and reports the accepted episodes it could not
    /// commit ([`ReplayError::Unwritten`]). Without a bound, a full disk would make shutdown
    /// hang forever.
    pub close_timeout: Duration,
}

impl Default for WriterOptions {
    fn default() -> Self {
        WriterOptions {
            channel_capacity: 256,
            max_batch_transitions: 8192,
            max_batch_latency: Duration::from_millis(50),
            persist_priorities: true,
            max_retry_backoff: Duration::from_secs(5),
            close_timeout: Duration::from_secs(30),
        }
    }
}

/// Counters of a writer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct WriterStats {
    /// Episodes committed.
    pub episodes: u64,
    /// Transitions committed.
    pub transitions: u64,
    /// Transactions committed.
    pub batches: u64,
    /// Episodes deleted by retention.
    pub evicted_episodes: u64,
}

/// Why the writer is not committing right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StallReason {
    /// Another connection holds a lock longer than the busy timeout (`SQLITE_BUSY`/`LOCKED`).
    Busy,
    /// The disk is full, or the file reached [`crate::StoreOptions::max_file_bytes`]
    /// (`SQLITE_FULL`).
    DiskFull,
    /// An I/O error that may pass (`SQLITE_IOERR`, `SQLITE_CANTOPEN`, `SQLITE_PROTOCOL`).
    Io,
}

impl StallReason {
    /// A short name for logs and metrics labels: `busy`, `disk_full` or `io`.
    pub fn as_str(self) -> &'static str {
        match self {
            StallReason::Busy => "busy",
            StallReason::DiskFull => "disk_full",
            StallReason::Io => "io",
        }
    }
}

/// A stall in progress: the last attempt at a batch failed and the writer is waiting to try
/// again.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Stall {
    /// What the last attempt failed on.
    pub reason: StallReason,
    /// When the first failed attempt of this stall happened, Unix seconds.
    pub since: f64,
    /// Failed attempts at the current batch so far.
    pub attempts: u64,
}

/// How the writer is doing, for a status page or metrics. Reading it takes one short lock
/// and a few atomic loads.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct WriterHealth {
    /// Failed attempts retried since the writer started, over all stalls.
    pub retries: u64,
    /// `Some` while the writer is stalled (the last attempt failed, another is coming).
    pub stall: Option<Stall>,
    /// Text of the last failure, kept after the stall ends.
    pub last_error: Option<String>,
    /// Episodes accepted by [`EpisodeWriter::finish`] and not yet committed (in the channel or
    /// in the batch being written). At most [`WriterOptions::channel_capacity`] plus one
    /// batch.
    pub queued_episodes: u64,
    /// When the last batch was committed, Unix seconds (`None` before the first).
    pub last_commit_at: Option<f64>,
    /// Accepted episodes that were dropped because the writer stopped (see
    /// [`ReplayError::Unwritten`]); 0 unless `stopped`.
    pub lost_episodes: u64,
    /// The writer thread has ended (closed, or stopped by a permanent error: see
    /// [`Writer::failure`]).
    pub stopped: bool,
}

/// State shared by a store and its writer thread: the file-size cap, which every connection
/// follows, and the bell that wakes a writer waiting to retry.
#[derive(Debug)]
pub(crate) struct Control {
    /// [`crate::StoreOptions::max_file_bytes`] as changed at run time; `u64::MAX` = none.
    max_file_bytes: AtomicU64,
    bell: Mutex<u64>,
    rung: Condvar,
}

impl Control {
    pub(crate) fn new(max_file_bytes: Option<u64>) -> Control {
        Control {
            max_file_bytes: AtomicU64::new(max_file_bytes.unwrap_or(u64::MAX)),
            bell: Mutex::new(0),
            rung: Condvar::new(),
        }
    }

    pub(crate) fn max_file_bytes(&self) -> Option<u64> {
        match self.max_file_bytes.load(Ordering::SeqCst) {
            u64::MAX => None,
            b => Some(b),
        }
    }

    pub(crate) fn set_max_file_bytes(&self, bytes: Option<u64>) {
        self.max_file_bytes
            .store(bytes.unwrap_or(u64::MAX), Ordering::SeqCst);
        self.ring();
    }

    /// Wakes a writer waiting to retry, so a change (more room, a shutdown) is tried at once.
    pub(crate) fn ring(&self) {
        *self.bell.lock().unwrap_or_else(|e| e.into_inner()) += 1;
        self.rung.notify_all();
    }

    /// The bell's count; take it before an attempt and pass it to [`Control::nap`], so a ring
    /// during the attempt is not missed.
    fn rings(&self) -> u64 {
        *self.bell.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sleeps for `d`, or less if the bell rang since `seen`.
    fn nap(&self, d: Duration, seen: u64) {
        let guard = self.bell.lock().unwrap_or_else(|e| e.into_inner());
        let _ = self
            .rung
            .wait_timeout_while(guard, d, |n| *n == seen)
            .unwrap_or_else(|e| e.into_inner());
    }
}

/// Sets `PRAGMA max_page_count` from a byte cap (`None` = SQLite's maximum). SQLite never
/// sets it below the current size of the file, so a cap smaller than the file freezes it at
/// its current size.
pub(crate) fn apply_max_file_bytes(conn: &Connection, bytes: Option<u64>) -> Result<()> {
    // SQLite's largest page number (SQLITE_MAX_PAGE_COUNT).
    const MAX_PAGES: u64 = 0xffff_fffe;
    let pages = match bytes {
        None => MAX_PAGES,
        Some(b) => {
            let page_size: i64 = conn.query_row("PRAGMA page_size", [], |r| r.get(0))?;
            let page_size = u64::try_from(page_size).unwrap_or(4096).max(1);
            (b / page_size).clamp(1, MAX_PAGES)
        }
    };
    conn.query_row(&format!("PRAGMA max_page_count = {pages}"), [], |_| Ok(()))?;
    Ok(())
}

/// One finished episode on its way to the writer thread.
#[derive(Debug)]
struct EpisodeData {
    run_id: i64,
    model_version: Option<i64>,
    dtype: Dtype,
    obs_len: usize,
    /// 0 for discrete actions.
    act_len: usize,
    obs: Vec<f32>,
    act_int: Vec<i64>,
    act_vec: Vec<f32>,
    rewards: Vec<f32>,
    behaviour: Vec<f32>,
    final_obs: Vec<f32>,
    terminated: bool,
    started_at: f64,
    ended_at: f64,
}

impl EpisodeData {
    fn len(&self) -> usize {
        self.rewards.len()
    }

    /// Bytes counted against [`Retention::max_bytes`]: all observation and action blobs.
    fn payload_bytes(&self) -> i64 {
        let obs = (self.len() + 1) * self.obs_len * self.dtype.size();
        let act = self.act_vec.len() * 4;
        (obs + act) as i64
    }
}

enum Msg {
    Episode(Box<EpisodeData>),
    Flush(SyncSender<Result<()>>),
    Shutdown,
}

#[derive(Debug, Default)]
struct HealthState {
    stall: Option<Stall>,
    last_error: Option<String>,
    last_commit_at: Option<f64>,
}

#[derive(Debug)]
struct Shared {
    failure: Mutex<Option<Arc<ReplayError>>>,
    episodes: AtomicU64,
    transitions: AtomicU64,
    batches: AtomicU64,
    evicted: AtomicU64,
    /// No message is accepted any more (close was asked, or the thread stopped).
    closed: AtomicBool,
    /// Senders between their check of `closed` and the end of their send; the thread's last
    /// drain waits for this to reach 0, so an accepted message is never left in the channel.
    inflight: AtomicU64,
    /// Episodes accepted by a send, and episodes committed or dropped since: their difference
    /// is the queue. Two counters rather than one gauge, because the thread may commit an
    /// episode before its sender has counted it.
    accepted: AtomicU64,
    settled: AtomicU64,
    lost: AtomicU64,
    retries: AtomicU64,
    finished: AtomicBool,
    health: Mutex<HealthState>,
    control: Arc<Control>,
}

impl Shared {
    fn new(control: Arc<Control>) -> Shared {
        Shared {
            failure: Mutex::new(None),
            episodes: AtomicU64::new(0),
            transitions: AtomicU64::new(0),
            batches: AtomicU64::new(0),
            evicted: AtomicU64::new(0),
            closed: AtomicBool::new(false),
            inflight: AtomicU64::new(0),
            accepted: AtomicU64::new(0),
            settled: AtomicU64::new(0),
            lost: AtomicU64::new(0),
            retries: AtomicU64::new(0),
            finished: AtomicBool::new(false),
            health: Mutex::new(HealthState::default()),
            control,
        }
    }

    fn failure(&self) -> Option<Arc<ReplayError>> {
        self.failure
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn health_state(&self) -> std::sync::MutexGuard<'_, HealthState> {
        self.health.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn stats(&self) -> WriterStats {
        WriterStats {
            episodes: self.episodes.load(Ordering::Relaxed),
            transitions: self.transitions.load(Ordering::Relaxed),
            batches: self.batches.load(Ordering::Relaxed),
            evicted_episodes: self.evicted.load(Ordering::Relaxed),
        }
    }

    fn health(&self) -> WriterHealth {
        let h = self.health_state();
        WriterHealth {
            retries: self.retries.load(Ordering::Relaxed),
            stall: h.stall,
            last_error: h.last_error.clone(),
            queued_episodes: self
                .accepted
                .load(Ordering::SeqCst)
                .saturating_sub(self.settled.load(Ordering::SeqCst)),
            last_commit_at: h.last_commit_at,
            lost_episodes: self.lost.load(Ordering::SeqCst),
            stopped: self.finished.load(Ordering::SeqCst),
        }
    }
}

/// Actor-side sender of episodes. Cheap to clone; every actor thread gets its own clone.
#[derive(Debug, Clone)]
pub struct Writer {
    tx: SyncSender<Msg>,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Msg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Msg::Episode(e) => write!(f, "Episode({} steps)", e.len()),
            Msg::Flush(_) => write!(f, "Flush"),
            Msg::Shutdown => write!(f, "Shutdown"),
        }
    }
}

impl Writer {
    fn stopped(&self) -> ReplayError {
        ReplayError::WriterStopped {
            cause: self.shared.failure(),
        }
    }

    /// Hands a message to the thread. `Ok` means the thread will see it: the `inflight` count
    /// makes the thread's last drain wait for a send that passed the `closed` check.
    fn send(&self, msg: Msg) -> Result<()> {
        let sh = &self.shared;
        let episode = matches!(msg, Msg::Episode(_));
        sh.inflight.fetch_add(1, Ordering::SeqCst);
        let result = if sh.closed.load(Ordering::SeqCst) {
            Err(self.stopped())
        } else {
            match self.tx.send(msg) {
                Ok(()) => {
                    if episode {
                        sh.accepted.fetch_add(1, Ordering::SeqCst);
                    }
                    Ok(())
                }
                Err(_) => Err(self.stopped()),
            }
        };
        sh.inflight.fetch_sub(1, Ordering::SeqCst);
        result
    }

    /// Starts buffering an episode of `run`, acted by `model_version`.
    pub fn begin_episode(&self, run: &Run, model_version: Option<i64>) -> EpisodeWriter {
        let act_len = run.spec.action_space.act_len();
        EpisodeWriter {
            writer: self.clone(),
            data: Box::new(EpisodeData {
                run_id: run.id,
                model_version,
                dtype: run.spec.obs_dtype,
                obs_len: run.spec.obs_len(),
                act_len,
                obs: Vec::new(),
                act_int: Vec::new(),
                act_vec: Vec::new(),
                rewards: Vec::new(),
                behaviour: Vec::new(),
                final_obs: Vec::new(),
                terminated: false,
                started_at: now_secs(),
                ended_at: 0.0,
            }),
        }
    }

    /// Blocks until everything this handle sent before the call is committed (and visible to
    /// samplers), or returns the error that stopped the writer.
    ///
    /// While the writer is stalled (see [`WriterHealth::stall`]) this waits through the
    /// retries; a caller that must not wait that long checks [`Writer::health`] first.
    pub fn flush(&self) -> Result<()> {
        let (tx, rx) = sync_channel(1);
        self.send(Msg::Flush(tx))?;
        rx.recv().map_err(|_| self.stopped())?
    }

    /// Counters so far.
    pub fn stats(&self) -> WriterStats {
        self.shared.stats()
    }

    /// How the writer is doing: retries, a stall in progress, episodes waiting.
    pub fn health(&self) -> WriterHealth {
        self.shared.health()
    }

    /// The error that stopped the writer thread, if one did: a permanent one, or a transient
    /// one that outlasted [`WriterOptions::close_timeout`] while closing.
    pub fn failure(&self) -> Option<Arc<ReplayError>> {
        self.shared.failure()
    }
}

/// Buffers one episode on the actor side. Nothing reaches the file until
/// [`EpisodeWriter::finish`]; dropping it unfinished discards the episode.
#[derive(Debug)]
pub struct EpisodeWriter {
    writer: Writer,
    data: Box<EpisodeData>,
}

impl EpisodeWriter {
    /// Records one step: the observation the action was chosen on, the action, the reward it
    /// earned, and optionally the behaviour policy's log-probability or Q-value (a NaN is
    /// stored as "none").
    pub fn push(
        &mut self,
        obs: &[f32],
        action: ActionRef<'_>,
        reward: f32,
        behaviour: Option<f32>,
    ) -> Result<()> {
        let d = &mut self.data;
        if obs.len() != d.obs_len {
            return Err(ReplayError::Shape(format!(
                "observation has {} values, the run declares {}",
                obs.len(),
                d.obs_len
            )));
        }
        match (action, d.act_len) {
            (ActionRef::Discrete(a), 0) => d.act_int.push(a),
            (ActionRef::Continuous(v), n) if n > 0 && v.len() == n => {
                d.act_vec.extend_from_slice(v)
            }
            (a, n) => {
                return Err(ReplayError::Shape(format!(
                    "action {a:?} does not fit the run's action space (continuous dim {n}, \
                     0 = discrete)"
                )));
            }
        }
        let start = d.obs.len();
        d.obs.extend_from_slice(obs);
        d.dtype.quantize(&mut d.obs[start..]);
        d.rewards.push(reward);
        d.behaviour.push(behaviour.unwrap_or(f32::NAN));
        Ok(())
    }

    /// Steps recorded so far.
    pub fn len(&self) -> usize {
        self.data.len()
    }

    /// Whether no step has been recorded.
    pub fn is_empty(&self) -> bool {
        self.data.len() == 0
    }

    /// Ends the episode with the observation after its last step and hands it to the writer
    /// thread.
    ///
    /// `Ok` means *accepted*: the episode is in the writer's bounded queue and will be
    /// committed exactly once, however many transient failures (a lock held elsewhere, a full
    /// disk) come first; while they last, the writer keeps it and retries. It is lost only if
    /// the process dies first (like anything not yet committed), if a permanent error stops
    /// the writer, or if [`WriterHandle::close`] gives up after
    /// [`WriterOptions::close_timeout`]; the last two are reported, never silent
    /// ([`WriterHealth::lost_episodes`], [`ReplayError::Unwritten`]). `Ok` does not mean
    /// committed: [`Writer::flush`] waits for that.
    ///
    /// Blocks while the queue is full ([`WriterOptions::channel_capacity`] episodes), which is
    /// what happens during a stall: senders wait instead of memory growing. Fails with
    /// [`ReplayError::WriterStopped`] (the episode not accepted) once the writer is closed or
    /// stopped.
    pub fn finish(self, final_obs: &[f32], end: EpisodeEnd) -> Result<()> {
        let EpisodeWriter { writer, mut data } = self;
        if data.len() == 0 {
            return Err(ReplayError::InvalidArgument(
                "an episode needs at least one step".into(),
            ));
        }
        if final_obs.len() != data.obs_len {
            return Err(ReplayError::Shape(format!(
                "final observation has {} values, the run declares {}",
                final_obs.len(),
                data.obs_len
            )));
        }
        data.final_obs = final_obs.to_vec();
        data.dtype.quantize(&mut data.final_obs);
        data.terminated = end == EpisodeEnd::Terminated;
        data.ended_at = now_secs();
        writer.send(Msg::Episode(data))
    }
}

/// Owner of the writer thread. Dropping it (or [`WriterHandle::close`]) commits what is queued
/// and joins the thread.
#[derive(Debug)]
pub struct WriterHandle {
    writer: Writer,
    thread: Option<JoinHandle<()>>,
}

/// Clears the store's "writer running" flag when the thread ends, however it ends.
struct RunningGuard(Arc<AtomicBool>);

impl Drop for RunningGuard {
    fn drop(&mut self) {
        self.0.store(false, Ordering::SeqCst);
    }
}

impl WriterHandle {
    pub(crate) fn start(
        conn: Connection,
        options: WriterOptions,
        retention: Retention,
        mirror: Arc<RwLock<Mirror>>,
        running: Arc<AtomicBool>,
        control: Arc<Control>,
    ) -> Result<WriterHandle> {
        if options.channel_capacity == 0 || options.max_batch_transitions == 0 {
            return Err(ReplayError::InvalidArgument(
                "channel_capacity and max_batch_transitions must be > 0".into(),
            ));
        }
        if running
            .compare_exchange(false, true, Ordering::SeqCst, Ordering::SeqCst)
            .is_err()
        {
            return Err(ReplayError::WriterAlreadyRunning);
        }
        let guard = RunningGuard(running);
        let (kept_transitions, kept_bytes): (i64, i64) = conn.query_row(
            "SELECT coalesce(sum(transitions_kept), 0), coalesce(sum(bytes_kept), 0) \
             FROM run_stats",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        let applied_cap = control.max_file_bytes();
        let shared = Arc::new(Shared::new(control));
        let (tx, rx) = sync_channel(options.channel_capacity);
        let mut state = WriterState {
            options,
            retention,
            mirror,
            shared: shared.clone(),
            kept_transitions,
            kept_bytes,
            obs_scratch: Vec::new(),
            act_scratch: Vec::new(),
            dirty: HashMap::new(),
            applied_cap,
            close_deadline: None,
        };
        let mut conn = conn;
        let thread = std::thread::Builder::new()
            .name("replay-writer".into())
            .spawn(move || {
                let _guard = guard;
                state.run(&mut conn, rx);
            })?;
        Ok(WriterHandle {
            writer: Writer { tx, shared },
            thread: Some(thread),
        })
    }

    /// A sender for an actor.
    pub fn writer(&self) -> Writer {
        self.writer.clone()
    }

    /// See [`Writer::flush`].
    pub fn flush(&self) -> Result<()> {
        self.writer.flush()
    }

    /// Counters so far.
    pub fn stats(&self) -> WriterStats {
        self.writer.stats()
    }

    /// See [`Writer::health`].
    pub fn health(&self) -> WriterHealth {
        self.writer.health()
    }

    /// Changes the cap on the file size at run time (see
    /// [`crate::StoreOptions::max_file_bytes`]); the same as
    /// [`crate::ReplayStore::set_max_file_bytes`]. A writer stalled on the cap tries again at
    /// once.
    pub fn set_max_file_bytes(&self, bytes: Option<u64>) {
        self.writer.shared.control.set_max_file_bytes(bytes);
    }

    /// Commits everything accepted, stops the thread and returns its counters.
    ///
    /// A batch that fails transiently is retried for at most
    /// [`WriterOptions::close_timeout`]; after that, or after a permanent error, the episodes
    /// still held are dropped and reported as [`ReplayError::Unwritten`]. A writer stopped
    /// earlier by a permanent error with nothing left over gives
    /// [`ReplayError::WriterStopped`].
    pub fn close(mut self) -> Result<WriterStats> {
        self.join()?;
        let lost = self.writer.shared.lost.load(Ordering::SeqCst);
        match self.writer.shared.failure() {
            Some(cause) if lost > 0 => Err(ReplayError::Unwritten {
                episodes: lost,
                cause,
            }),
            Some(cause) => Err(ReplayError::WriterStopped { cause: Some(cause) }),
            None => Ok(self.writer.stats()),
        }
    }

    fn join(&mut self) -> Result<()> {
        if let Some(thread) = self.thread.take() {
            let sh = &self.writer.shared;
            sh.closed.store(true, Ordering::SeqCst);
            sh.control.ring();
            // Wakes a thread waiting for its first message; if the channel is full the thread
            // is not waiting, and if it is gone there is nothing to wake.
            let _ = self.writer.tx.try_send(Msg::Shutdown);
            thread
                .join()
                .map_err(|_| ReplayError::WriterStopped { cause: None })?;
        }
        Ok(())
    }
}

impl Drop for WriterHandle {
    fn drop(&mut self) {
        if let Err(e) = self.join() {
            tracing::error!(error = %e, "replay writer thread panicked");
        }
    }
}

#[derive(Debug, Default, Clone, Copy)]
struct StatsDelta {
    episodes_total: i64,
    transitions_total: i64,
    episodes_kept: i64,
    transitions_kept: i64,
    bytes_kept: i64,
    return_sum_kept: f64,
}

struct WriterState {
    options: WriterOptions,
    retention: Retention,
    mirror: Arc<RwLock<Mirror>>,
    shared: Arc<Shared>,
    kept_transitions: i64,
    kept_bytes: i64,
    obs_scratch: Vec<u8>,
    act_scratch: Vec<u8>,
    /// Priorities taken from the mirror and not yet committed; a map, so a long stall keeps
    /// one entry per transition instead of one per update.
    dirty: HashMap<i64, f32>,
    /// The file-size cap this connection has, to notice a change.
    applied_cap: Option<u64>,
    /// Set when a closing writer first fails; `Some(None)` = no deadline.
    close_deadline: Option<Option<Instant>>,
}

const INSERT_EPISODE: &str = "INSERT INTO episodes (run_id, model_version, length, \
     episode_return, terminated, truncated, started_at, ended_at, final_obs, payload_bytes) \
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)";

const INSERT_TRANSITION: &str = "INSERT INTO transitions (episode_id, step, obs, action_int, \
     action_vec, reward, terminated, truncated, behaviour) \
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)";

const UPSERT_STATS: &str = "INSERT INTO run_stats (run_id, episodes_total, transitions_total, \
     episodes_kept, transitions_kept, bytes_kept, return_sum_kept) \
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) ON CONFLICT(run_id) DO UPDATE SET \
     episodes_total = episodes_total + excluded.episodes_total, \
     transitions_total = transitions_total + excluded.transitions_total, \
     episodes_kept = episodes_kept + excluded.episodes_kept, \
     transitions_kept = transitions_kept + excluded.transitions_kept, \
     bytes_kept = bytes_kept + excluded.bytes_kept, \
     return_sum_kept = return_sum_kept + excluded.return_sum_kept";

/// What the thread does after a round.
enum Next {
    Continue,
    Exit,
}

impl WriterState {
    fn closing(&self) -> bool {
        self.shared.closed.load(Ordering::SeqCst)
    }

    fn run(&mut self, conn: &mut Connection, rx: Receiver<Msg>) {
        let mut batch: Vec<Box<EpisodeData>> = Vec::new();
        let mut flushes: Vec<SyncSender<Result<()>>> = Vec::new();
        loop {
            if let Next::Exit = self.round(conn, &rx, &mut batch, &mut flushes) {
                break;
            }
        }
        self.shared.finished.store(true, Ordering::SeqCst);
    }

    /// Gathers one batch, commits it (retrying transient failures) and answers its flushes.
    // Episodes stay in the boxes they travelled in: moving the box is one pointer.
    #[allow(clippy::vec_box)]
    fn round(
        &mut self,
        conn: &mut Connection,
        rx: &Receiver<Msg>,
        batch: &mut Vec<Box<EpisodeData>>,
        flushes: &mut Vec<SyncSender<Result<()>>>,
    ) -> Next {
        let first = if self.closing() {
            match self.drain_one(rx) {
                Some(m) => m,
                None => return Next::Exit,
            }
        } else {
            match rx.recv() {
                Ok(m) => m,
                // Every sender is gone and the queue is empty: nothing left to commit.
                Err(_) => return Next::Exit,
            }
        };
        let deadline = Instant::now().checked_add(self.options.max_batch_latency);
        let mut next = Some(first);
        let mut transitions = 0;
        while let Some(msg) = next.take() {
            match msg {
                Msg::Episode(e) => {
                    transitions += e.len();
                    batch.push(e);
                }
                Msg::Flush(reply) => flushes.push(reply),
                // `closed` is already set; what is left in the channel is drained below.
                Msg::Shutdown => {}
            }
            if !flushes.is_empty() || transitions >= self.options.max_batch_transitions {
                break;
            }
            if self.closing() {
                next = self.drain_one(rx);
                continue;
            }
            let now = Instant::now();
            let wait = match deadline {
                Some(d) if now >= d => break,
                Some(d) => d - now,
                None => Duration::MAX,
            };
            match rx.recv_timeout(wait) {
                Ok(m) => next = Some(m),
                Err(RecvTimeoutError::Timeout) => break,
                Err(RecvTimeoutError::Disconnected) => {
                    self.shared.closed.store(true, Ordering::SeqCst);
                }
            }
        }
        match self.commit_with_retry(conn, batch) {
            Ok(()) => {
                self.shared
                    .settled
                    .fetch_add(batch.len() as u64, Ordering::SeqCst);
                batch.clear();
                for reply in flushes.drain(..) {
                    let _ = reply.send(Ok(()));
                }
                Next::Continue
            }
            Err(e) => {
                self.stop(e, rx, batch, flushes);
                Next::Exit
            }
        }
    }

    /// The next message of a closing writer, or `None` once the channel is empty and no
    /// sender is still in the middle of a send (so nothing accepted can arrive later).
    fn drain_one(&self, rx: &Receiver<Msg>) -> Option<Msg> {
        loop {
            match rx.try_recv() {
                Ok(m) => return Some(m),
                Err(TryRecvError::Disconnected) => return None,
                Err(TryRecvError::Empty) => {}
            }
            if self.shared.inflight.load(Ordering::SeqCst) == 0 {
                // A send that finished before the count fell to 0 is in the channel now; a
                // later one saw `closed` and was refused.
                return rx.try_recv().ok();
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Ends the thread after `cause`: refuses new messages, drops and counts every accepted
    /// episode it still holds, and answers every flush with the error.
    #[allow(clippy::vec_box)]
    fn stop(
        &mut self,
        cause: ReplayError,
        rx: &Receiver<Msg>,
        batch: &mut Vec<Box<EpisodeData>>,
        flushes: &mut Vec<SyncSender<Result<()>>>,
    ) {
        let cause = Arc::new(cause);
        *self
            .shared
            .failure
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(cause.clone());
        self.shared.closed.store(true, Ordering::SeqCst);
        let mut lost = batch.len() as u64;
        batch.clear();
        while let Some(msg) = self.drain_one(rx) {
            match msg {
                Msg::Episode(_) => lost += 1,
                Msg::Flush(reply) => flushes.push(reply),
                Msg::Shutdown => {}
            }
        }
        self.shared.lost.fetch_add(lost, Ordering::SeqCst);
        self.shared.settled.fetch_add(lost, Ordering::SeqCst);
        tracing::error!(error = %cause, lost_episodes = lost, "replay writer stopped");
        for reply in flushes.drain(..) {
            let _ = reply.send(Err(ReplayError::WriterStopped {
                cause: Some(cause.clone()),
            }));
        }
    }

    /// Commits `batch`, running the whole transaction again after each transient failure
    /// (with backoff) until it succeeds. Returns the error that ends the writer: a permanent
    /// one, or a transient one still there when a closing writer's deadline passes.
    fn commit_with_retry(
        &mut self,
        conn: &mut Connection,
        batch: &[Box<EpisodeData>],
    ) -> Result<()> {
        let mut backoff = FIRST_RETRY_BACKOFF;
        let mut attempts = 0u64;
        loop {
            let rings = self.shared.control.rings();
            let result = self.apply_cap(conn).and_then(|()| self.commit(conn, batch));
            let err = match result {
                Ok(()) => {
                    let mut h = self.shared.health_state();
                    if let Some(stall) = h.stall.take() {
                        tracing::info!(
                            reason = stall.reason.as_str(),
                            attempts = stall.attempts,
                            stalled_s = now_secs() - stall.since,
                            "replay writer resumed"
                        );
                    }
                    h.last_commit_at = Some(now_secs());
                    return Ok(());
                }
                Err(e) => e,
            };
            // A failed COMMIT leaves the transaction open when SQLite did not roll it back
            // itself; the next attempt must start from a clean connection.
            if !conn.is_autocommit() {
                let _ = conn.execute_batch("ROLLBACK");
            }
            let Some(reason) = err.stall_reason() else {
                return Err(err);
            };
            attempts += 1;
            let text = err.to_string();
            {
                let mut h = self.shared.health_state();
                let since = h.stall.map_or_else(now_secs, |s| s.since);
                h.stall = Some(Stall {
                    reason,
                    since,
                    attempts,
                });
                h.last_error = Some(text.clone());
            }
            if attempts.is_power_of_two() {
                tracing::warn!(
                    error = %text,
                    reason = reason.as_str(),
                    attempts,
                    episodes = batch.len(),
                    "replay writer stalled; retrying"
                );
            }
            let mut pause = backoff;
            if self.closing() {
                let now = Instant::now();
                // A timeout too large for an Instant means "retry for as long as it takes".
                let deadline = *self
                    .close_deadline
                    .get_or_insert_with(|| now.checked_add(self.options.close_timeout));
                if let Some(deadline) = deadline {
                    if now >= deadline {
                        return Err(err);
                    }
                    pause = pause.min(deadline - now);
                }
            }
            self.shared.retries.fetch_add(1, Ordering::Relaxed);
            self.shared.control.nap(pause, rings);
            backoff = backoff
                .saturating_mul(2)
                .min(self.options.max_retry_backoff.max(FIRST_RETRY_BACKOFF));
        }
    }

    /// Follows a change of the file-size cap made through the store or the handle.
    fn apply_cap(&mut self, conn: &Connection) -> Result<()> {
        let want = self.shared.control.max_file_bytes();
        if want != self.applied_cap {
            apply_max_file_bytes(conn, want)?;
            self.applied_cap = want;
        }
        Ok(())
    }

    /// Writes one batch (plus dirty priorities and evictions) in one transaction, then brings
    /// the mirror in step with what was committed.
    fn commit(&mut self, conn: &mut Connection, batch: &[Box<EpisodeData>]) -> Result<()> {
        if self.options.persist_priorities {
            let taken = self
                .mirror
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .take_dirty();
            // Newer values replace older ones of the same transition; kept until committed,
            // so a failed attempt loses none.
            self.dirty.extend(taken);
        }
        if batch.is_empty() && self.dirty.is_empty() {
            return Ok(());
        }
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut deltas: HashMap<i64, StatsDelta> = HashMap::new();
        let mut inserted: Vec<(i64, Vec<i64>)> = Vec::with_capacity(batch.len());
        let mut new_transitions = 0i64;
        // The kept totals change only once the transaction commits: a failed attempt is run
        // again from the same starting point.
        let mut kept_transitions = self.kept_transitions;
        let mut kept_bytes = self.kept_bytes;
        {
            let mut ins_ep = tx.prepare_cached(INSERT_EPISODE)?;
            let mut ins_tr = tx.prepare_cached(INSERT_TRANSITION)?;
            for ep in batch {
                let len = ep.len();
                let ret: f64 = ep.rewards.iter().map(|&r| r as f64).sum();
                let payload = ep.payload_bytes();
                self.obs_scratch.clear();
                ep.dtype.encode_into(&ep.final_obs, &mut self.obs_scratch);
                ins_ep.execute(params![
                    ep.run_id,
                    ep.model_version,
                    len as i64,
                    ret,
                    ep.terminated,
                    !ep.terminated,
                    ep.started_at,
                    ep.ended_at,
                    &self.obs_scratch[..],
                    payload
                ])?;
                let ep_id = tx.last_insert_rowid();
                let mut ids = Vec::with_capacity(len);
                for t in 0..len {
                    let last = t + 1 == len;
                    self.obs_scratch.clear();
                    ep.dtype.encode_into(
                        &ep.obs[t * ep.obs_len..(t + 1) * ep.obs_len],
                        &mut self.obs_scratch,
                    );
                    let (a_int, a_vec) = if ep.act_len == 0 {
                        (Some(ep.act_int[t]), None)
                    } else {
                        self.act_scratch.clear();
                        Dtype::F32.encode_into(
                            &ep.act_vec[t * ep.act_len..(t + 1) * ep.act_len],
                            &mut self.act_scratch,
                        );
                        (None, Some(&self.act_scratch[..]))
                    };
                    let b = ep.behaviour[t];
                    ins_tr.execute(params![
                        ep_id,
                        t as i64,
                        &self.obs_scratch[..],
                        a_int,
                        a_vec,
                        ep.rewards[t] as f64,
                        last && ep.terminated,
                        last && !ep.terminated,
                        if b.is_nan() { None } else { Some(b as f64) }
                    ])?;
                    ids.push(tx.last_insert_rowid());
                }
                let d = deltas.entry(ep.run_id).or_default();
                d.episodes_total += 1;
                d.transitions_total += len as i64;
                d.episodes_kept += 1;
                d.transitions_kept += len as i64;
                d.bytes_kept += payload;
                d.return_sum_kept += ret;
                kept_transitions += len as i64;
                kept_bytes += payload;
                new_transitions += len as i64;
                inserted.push((ep_id, ids));
            }
            if !self.dirty.is_empty() {
                let mut up =
                    tx.prepare_cached("UPDATE transitions SET priority = ?2 WHERE id = ?1")?;
                for (id, p) in &self.dirty {
                    up.execute(params![id, *p as f64])?;
                }
            }
        }
        let (victims, kept_t, kept_b) = evict(
            &tx,
            &self.retention,
            &self.mirror,
            kept_transitions,
            kept_bytes,
            &mut deltas,
        )?;
        {
            let mut up = tx.prepare_cached(UPSERT_STATS)?;
            for (run_id, d) in &deltas {
                up.execute(params![
                    run_id,
                    d.episodes_total,
                    d.transitions_total,
                    d.episodes_kept,
                    d.transitions_kept,
                    d.bytes_kept,
                    d.return_sum_kept
                ])?;
            }
        }
        tx.commit()?;
        self.dirty.clear();
        self.kept_transitions = kept_t;
        self.kept_bytes = kept_b;
        {
            let mut m = self.mirror.write().unwrap_or_else(|e| e.into_inner());
            for (ep, (ep_id, ids)) in batch.iter().zip(&inserted) {
                m.insert(&EpisodeIn {
                    episode_id: *ep_id,
                    ids,
                    obs_len: ep.obs_len,
                    act_len: ep.act_len,
                    obs: &ep.obs,
                    act_int: &ep.act_int,
                    act_vec: &ep.act_vec,
                    rewards: &ep.rewards,
                    behaviour: &ep.behaviour,
                    terminated: ep.terminated,
                    final_obs: &ep.final_obs,
                    priorities: None,
                });
            }
            for v in &victims {
                m.remove(*v);
            }
        }
        let s = &self.shared;
        s.episodes.fetch_add(batch.len() as u64, Ordering::Relaxed);
        s.transitions
            .fetch_add(new_transitions as u64, Ordering::Relaxed);
        s.batches.fetch_add(1, Ordering::Relaxed);
        s.evicted.fetch_add(victims.len() as u64, Ordering::Relaxed);
        if !victims.is_empty() {
            // Space reclaim is housekeeping: failing it (say, a reader holding the WAL) must
            // not stop ingestion, the pages are reused by later inserts anyway.
            if let Err(e) = crate::schema::incremental_vacuum(conn) {
                tracing::warn!(error = %e, "incremental vacuum failed");
            }
        }
        Ok(())
    }
}

/// Deletes whole episodes until the retention limits hold; returns the victims and the new
/// kept totals. Runs inside the batch transaction so that a crash cannot leave the counters
/// and the rows disagreeing.
fn evict(
    tx: &Connection,
    retention: &Retention,
    mirror: &Arc<RwLock<Mirror>>,
    mut kept_t: i64,
    mut kept_b: i64,
    deltas: &mut HashMap<i64, StatsDelta>,
) -> Result<(Vec<i64>, i64, i64)> {
    let over = |t: i64, b: i64| {
        retention.max_transitions.is_some_and(|m| t > m as i64)
            || retention.max_bytes.is_some_and(|m| b > m as i64)
    };
    let mut victims = Vec::new();
    if !over(kept_t, kept_b) {
        return Ok((victims, kept_t, kept_b));
    }
    let mut oldest_stmt =
        tx.prepare_cached("SELECT id FROM episodes WHERE id < ?1 ORDER BY id LIMIT 1")?;
    let mut info_stmt = tx.prepare_cached(
        "SELECT run_id, length, payload_bytes, episode_return FROM episodes WHERE id = ?1",
    )?;
    let mut del_tr = tx.prepare_cached("DELETE FROM transitions WHERE episode_id = ?1")?;
    let mut del_ep = tx.prepare_cached("DELETE FROM episodes WHERE id = ?1")?;
    // Lowest-priority eviction takes episodes outside the window first (the sampler cannot
    // see them, so they are worth least), then the window's lowest mean priority.
    let (window_start, mut by_priority) = match retention.policy {
        EvictionPolicy::Fifo => (i64::MAX, Vec::new().into_iter()),
        EvictionPolicy::LowestPriority => {
            let m = mirror.read().unwrap_or_else(|e| e.into_inner());
            (
                m.oldest_episode().unwrap_or(i64::MAX),
                m.episodes_by_priority().into_iter(),
            )
        }
    };
    while over(kept_t, kept_b) {
        let mut candidate: Option<i64> = oldest_stmt
            .query_row([window_start], |r| r.get(0))
            .optional()?;
        if candidate.is_none() {
            candidate = by_priority.next();
        }
        if candidate.is_none() {
            candidate = oldest_stmt.query_row([i64::MAX], |r| r.get(0)).optional()?;
        }
        let Some(id) = candidate else { break };
        let info: Option<(i64, i64, i64, f64)> = info_stmt
            .query_row([id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
            .optional()?;
        let Some((run_id, len, bytes, ret)) = info else {
            continue;
        };
        del_tr.execute([id])?;
        del_ep.execute([id])?;
        let d = deltas.entry(run_id).or_default();
        d.episodes_kept -= 1;
        d.transitions_kept -= len;
        d.bytes_kept -= bytes;
        d.return_sum_kept -= ret;
        kept_t -= len;
        kept_b -= bytes;
        victims.push(id);
    }
    Ok((victims, kept_t, kept_b))
}
