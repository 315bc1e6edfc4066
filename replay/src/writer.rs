//! The writer thread and the actor-side handles that feed it.
//!
//! Actors buffer a whole episode in an [`EpisodeWriter`] and send it when it ends, so an
//! episode is one message and lands in exactly one transaction: readers of the file and of
//! the mirror see it whole or not at all. The thread batches many episodes per transaction,
//! which is what makes SQLite fast here; the bounded channel pushes back on actors when the
//! disk cannot keep up, instead of buffering without limit.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, sync_channel};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use crate::error::{ReplayError, Result};
use crate::mirror::{EpisodeIn, Mirror};
use crate::store::{EvictionPolicy, Retention};
use crate::types::{ActionRef, Dtype, EpisodeEnd, Run, now_secs};

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
}

impl Default for WriterOptions {
    fn default() -> Self {
        WriterOptions {
            channel_capacity: 256,
            max_batch_transitions: 8192,
            max_batch_latency: Duration::from_millis(50),
            persist_priorities: true,
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
struct Shared {
    failure: Mutex<Option<Arc<ReplayError>>>,
    episodes: AtomicU64,
    transitions: AtomicU64,
    batches: AtomicU64,
    evicted: AtomicU64,
}

impl Shared {
    fn failure(&self) -> Option<Arc<ReplayError>> {
        self.failure
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn stats(&self) -> WriterStats {
        WriterStats {
            episodes: self.episodes.load(Ordering::Relaxed),
            transitions: self.transitions.load(Ordering::Relaxed),
            batches: self.batches.load(Ordering::Relaxed),
            evicted_episodes: self.evicted.load(Ordering::Relaxed),
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

    fn send(&self, msg: Msg) -> Result<()> {
        if self.shared.failure().is_some() {
            return Err(self.stopped());
        }
        self.tx.send(msg).map_err(|_| self.stopped())
    }

    /// Starts buffering an episode of `run`, acted by `model_version`.
    pub fn begin_episode(&self, run: &Run, model_version: Option<i64>) -> EpisodeWriter {
        let act_len = match run.spec.action_space {
            crate::ActionSpace::Discrete { .. } => 0,
            crate::ActionSpace::Continuous { dim } => dim,
        };
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
    pub fn flush(&self) -> Result<()> {
        let (tx, rx) = sync_channel(1);
        self.send(Msg::Flush(tx))?;
        rx.recv().map_err(|_| self.stopped())?
    }

    /// Counters so far.
    pub fn stats(&self) -> WriterStats {
        self.shared.stats()
    }

    /// The error that stopped the writer thread, if it has failed.
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

    /// Ends the episode with the observation after its last step and sends it to the writer
    /// thread. Blocks while the channel is full. `Ok` means queued, not committed: use
    /// [`Writer::flush`] for the latter.
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
        let shared = Arc::new(Shared::default());
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

    /// Commits everything queued, stops the thread and returns its counters, or the error that
    /// stopped it earlier.
    pub fn close(mut self) -> Result<WriterStats> {
        self.join()?;
        match self.writer.shared.failure() {
            Some(cause) => Err(ReplayError::WriterStopped { cause: Some(cause) }),
            None => Ok(self.writer.stats()),
        }
    }

    fn join(&mut self) -> Result<()> {
        if let Some(thread) = self.thread.take() {
            // A send error means the thread has already stopped, which is what we want.
            let _ = self.writer.tx.send(Msg::Shutdown);
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

impl WriterState {
    fn run(&mut self, conn: &mut Connection, rx: Receiver<Msg>) {
        let mut batch: Vec<Box<EpisodeData>> = Vec::new();
        let mut flushes: Vec<SyncSender<Result<()>>> = Vec::new();
        loop {
            let Ok(first) = rx.recv() else {
                // Every sender is gone and the queue is empty: nothing left to commit.
                return;
            };
            let deadline = Instant::now() + self.options.max_batch_latency;
            let mut next = Some(first);
            let mut transitions = 0;
            let mut stop = false;
            while let Some(msg) = next.take() {
                match msg {
                    Msg::Episode(e) => {
                        transitions += e.len();
                        batch.push(e);
                    }
                    Msg::Flush(reply) => flushes.push(reply),
                    Msg::Shutdown => stop = true,
                }
                if stop || !flushes.is_empty() || transitions >= self.options.max_batch_transitions
                {
                    break;
                }
                let now = Instant::now();
                if now >= deadline {
                    break;
                }
                match rx.recv_timeout(deadline - now) {
                    Ok(m) => next = Some(m),
                    Err(RecvTimeoutError::Timeout) => break,
                    Err(RecvTimeoutError::Disconnected) => stop = true,
                }
            }
            let result = self.commit(conn, &batch);
            batch.clear();
            match result {
                Ok(()) => {
                    for reply in flushes.drain(..) {
                        let _ = reply.send(Ok(()));
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, "replay writer stopped");
                    let cause = Arc::new(e);
                    *self
                        .shared
                        .failure
                        .lock()
                        .unwrap_or_else(|e| e.into_inner()) = Some(cause.clone());
                    for reply in flushes.drain(..) {
                        let _ = reply.send(Err(ReplayError::WriterStopped {
                            cause: Some(cause.clone()),
                        }));
                    }
                    // Returning drops the receiver: queued episodes are discarded and every
                    // later send fails with the stored cause.
                    return;
                }
            }
            if stop {
                return;
            }
        }
    }

    /// Writes one batch (plus dirty priorities and evictions) in one transaction, then brings
    /// the mirror in step with what was committed.
    fn commit(&mut self, conn: &mut Connection, batch: &[Box<EpisodeData>]) -> Result<()> {
        let dirty = if self.options.persist_priorities {
            self.mirror
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .take_dirty()
        } else {
            Vec::new()
        };
        if batch.is_empty() && dirty.is_empty() {
            return Ok(());
        }
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut deltas: HashMap<i64, StatsDelta> = HashMap::new();
        let mut inserted: Vec<(i64, Vec<i64>)> = Vec::with_capacity(batch.len());
        let mut new_transitions = 0i64;
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
                self.kept_transitions += len as i64;
                self.kept_bytes += payload;
                new_transitions += len as i64;
                inserted.push((ep_id, ids));
            }
            if !dirty.is_empty() {
                let mut up =
                    tx.prepare_cached("UPDATE transitions SET priority = ?2 WHERE id = ?1")?;
                for (id, p) in &dirty {
                    up.execute(params![id, *p as f64])?;
                }
            }
        }
        let (victims, kept_t, kept_b) = evict(
            &tx,
            &self.retention,
            &self.mirror,
            self.kept_transitions,
            self.kept_bytes,
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
