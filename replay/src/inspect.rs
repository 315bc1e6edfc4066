//! Read-only queries for looking back at a file: what `autodidact replay` shows.
//!
//! [`Inspector`] differs from [`crate::ReplayStore::open_read_only`] in one way that matters to a
//! person holding an old file: it reads every schema version from 1 up, answering what an older
//! file can answer (a version 1 file has no kept aggregates and no reflections) instead of
//! asking for a migration, because an analysis must never be the thing that rewrites a file.
//!
//! Everything that can be large is streamed through a callback, one row at a time, so memory
//! stays bounded whatever the size of the file. Every query of one [`View`] sees the same
//! committed state, even while a writer in another process commits.

use std::collections::HashMap;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

use rusqlite::{Connection, OptionalExtension, params};

use crate::error::{ReplayError, Result};
use crate::schema;
use crate::store::{
    Durability, MODEL_SELECT, Model, ModelStatus, Reflection, RunStats, StoreOptions, connect,
    corrupt, model_from_row, read_run,
};
use crate::types::{ActionRef, ActionSpace, Dtype, Run};

/// Read-only access to a replay file of any schema version this build knows.
#[derive(Debug)]
pub struct Inspector {
    conn: Connection,
    path: PathBuf,
    version: i64,
}

/// Sizes of the files that make up the store on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileBytes {
    /// The main database file.
    pub main: u64,
    /// The write-ahead log next to it (`-wal`), 0 if absent: committed data that a checkpoint
    /// has not yet copied into the main file.
    pub wal: u64,
}

/// One run and its counters.
#[derive(Debug, Clone, PartialEq)]
pub struct RunOverview {
    /// The run as recorded.
    pub run: Run,
    /// Its counters: the kept aggregates on version 2 and later, computed from the episode
    /// rows on version 1 (where `*_total` then equal `*_kept`, eviction history being lost).
    pub stats: RunStats,
    /// Highest episode return stored, if any episode is.
    pub best_return: Option<f64>,
}

/// Everything `summary` shows, read in one snapshot.
#[derive(Debug, Clone, PartialEq)]
pub struct Overview {
    /// Schema version of the file.
    pub schema_version: i64,
    /// Runs, oldest first.
    pub runs: Vec<RunOverview>,
    /// Registered model versions.
    pub models: i64,
    /// Model versions currently `candidate`.
    pub candidates: i64,
    /// Model versions `rejected`.
    pub rejected: i64,
    /// The champion's version.
    pub champion: Option<i64>,
    /// Reflections per kind, most frequent first (empty on version 1).
    pub reflections_by_kind: Vec<(String, i64)>,
    /// Earliest time recorded anywhere in the file (run start), Unix seconds.
    pub first_time: Option<f64>,
    /// Latest time recorded (episode end, model registration or reflection), Unix seconds.
    pub last_time: Option<f64>,
    /// The newest episodes, newest first (at most the number asked for).
    pub recent: Vec<EpisodeInfo>,
}

impl Overview {
    /// Transitions stored, across runs.
    pub fn transitions_kept(&self) -> i64 {
        self.runs.iter().map(|r| r.stats.transitions_kept).sum()
    }

    /// Episodes stored, across runs.
    pub fn episodes_kept(&self) -> i64 {
        self.runs.iter().map(|r| r.stats.episodes_kept).sum()
    }

    /// Reflections, all kinds.
    pub fn reflections(&self) -> i64 {
        self.reflections_by_kind.iter().map(|(_, n)| n).sum()
    }
}

/// One episode without its observations.
#[derive(Debug, Clone, PartialEq)]
pub struct EpisodeInfo {
    /// Row id.
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
    /// Environment steps of the run up to the end of this episode: the steps of the stored
    /// episodes before it plus, from version 2, the steps of evicted ones (exact when
    /// retention evicts oldest first, an approximation under lowest-priority eviction).
    pub env_step: i64,
}

/// The column episodes are sorted by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EpisodeOrder {
    /// Commit order (the episode id).
    #[default]
    Id,
    /// Episode return.
    Return,
    /// Episode length.
    Length,
    /// End time.
    EndedAt,
    /// Environment step of the run at the episode's end.
    EnvStep,
}

/// Which episodes to list, and in what order. The default lists all, oldest first.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct EpisodeFilter {
    /// Only this run.
    pub run_id: Option<i64>,
    /// Only episodes acted by this model version.
    pub model_version: Option<i64>,
    /// Only episodes that ended at or after this time (Unix seconds).
    pub ended_after: Option<f64>,
    /// Only episodes that ended at or before this time (Unix seconds).
    pub ended_before: Option<f64>,
    /// Only episodes whose [`EpisodeInfo::env_step`] is at least this.
    pub min_step: Option<i64>,
    /// Only episodes whose [`EpisodeInfo::env_step`] is at most this.
    pub max_step: Option<i64>,
    /// Only episodes with a return of at least this.
    pub min_return: Option<f64>,
    /// Only episodes with a return of at most this.
    pub max_return: Option<f64>,
    /// Sort column.
    pub order: EpisodeOrder,
    /// Sort descending instead of ascending.
    pub descending: bool,
    /// At most this many rows.
    pub limit: Option<u64>,
}

/// Which transitions to export. The default exports all, in id order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TransitionFilter {
    /// Only this run.
    pub run_id: Option<i64>,
    /// Only episodes with an id at least this.
    pub min_episode: Option<i64>,
    /// Only episodes with an id at most this.
    pub max_episode: Option<i64>,
}

/// One transition as handed to the export callback; borrowed buffers are reused between rows,
/// which is what keeps an export of any size in bounded memory.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TransitionView<'a> {
    /// Row id.
    pub id: i64,
    /// Run of the episode.
    pub run_id: i64,
    /// Episode it belongs to.
    pub episode_id: i64,
    /// Step within the episode, from 0.
    pub step: i64,
    /// Observation before the action, decoded to f32 (flattened; see `obs_dims`).
    pub obs: &'a [f32],
    /// Shape of the observation, from the run.
    pub obs_dims: &'a [usize],
    /// Action taken.
    pub action: ActionRef<'a>,
    /// Reward received.
    pub reward: f64,
    /// This step ended the episode in a terminal state.
    pub terminated: bool,
    /// This step ended the episode by truncation.
    pub truncated: bool,
    /// Behaviour log-probability or Q-value, if recorded.
    pub behaviour: Option<f64>,
    /// Persisted priority, if the learner wrote one back.
    pub priority: Option<f64>,
}

impl Inspector {
    /// Opens `path` read-only (`SQLITE_OPEN_READ_ONLY`): never creates, writes or migrates.
    ///
    /// Refuses a missing file ([`ReplayError::NoSuchFile`]), a file that is not SQLite
    /// ([`ReplayError::NotADatabase`]), an SQLite file of another application
    /// ([`ReplayError::ForeignDatabase`]), a newer schema ([`ReplayError::TooNew`]), a damaged
    /// file ([`ReplayError::Damaged`], when the damage shows in the header or schema) and a run
    /// whose declared shapes are unreadable or beyond the limits of [`crate::RunSpec::validate`]
    /// ([`ReplayError::Corrupt`]).
    pub fn open(path: impl AsRef<Path>) -> Result<Inspector> {
        let path = path.as_ref().to_path_buf();
        if !path.is_file() {
            return Err(ReplayError::NoSuchFile { path });
        }
        schema::check_magic(&path)?;
        let conn = connect(&path, true, &StoreOptions::default(), Durability::Full)?;
        let header = schema::read_header(&conn, &path)?;
        if schema::classify(&header, &path)? {
            // An empty SQLite file (zero bytes) is not a replay store either.
            return Err(ReplayError::ForeignDatabase {
                path,
                reason: "the file is empty (no autodidact schema)".into(),
            });
        }
        let inspector = Inspector {
            conn,
            path,
            version: header.version,
        };
        // Every answer is shaped by the runs' declared shapes (export headers, decoded rows):
        // a run whose shape is absurd or unreadable refuses the file up front.
        inspector.view()?.runs()?;
        Ok(inspector)
    }

    /// Path of the database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Schema version of the file (1 ..= [`crate::SCHEMA_VERSION`]).
    pub fn schema_version(&self) -> i64 {
        self.version
    }

    /// Sizes of the main file and its write-ahead log.
    pub fn file_bytes(&self) -> Result<FileBytes> {
        let main = std::fs::metadata(&self.path)?.len();
        let mut wal_path = self.path.clone().into_os_string();
        wal_path.push("-wal");
        let wal = std::fs::metadata(&wal_path).map(|m| m.len()).unwrap_or(0);
        Ok(FileBytes { main, wal })
    }

    /// Begins a read snapshot; every query through the view sees one committed state. Holding
    /// it keeps a concurrent writer's log from being checkpointed, so views are meant to last
    /// one command.
    pub fn view(&self) -> Result<View<'_>> {
        let tx = self.conn.unchecked_transaction()?;
        // Pin the snapshot now rather than at the first query (deferred transactions start
        // reading lazily).
        tx.query_row("SELECT count(*) FROM sqlite_master", [], |_| Ok(()))?;
        Ok(View {
            tx,
            version: self.version,
        })
    }
}

/// One consistent read view of an [`Inspector`]'s file.
#[derive(Debug)]
pub struct View<'a> {
    tx: rusqlite::Transaction<'a>,
    version: i64,
}

impl View<'_> {
    /// Whether the file has the tables of `version` (reflections and kept aggregates came in 2).
    fn has(&self, version: i64) -> bool {
        self.version >= version
    }

    /// All runs, oldest first.
    pub fn runs(&self) -> Result<Vec<Run>> {
        let mut stmt = self.tx.prepare_cached("SELECT id FROM runs ORDER BY id")?;
        let ids = stmt
            .query_map([], |r| r.get::<_, i64>(0))?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        ids.into_iter().map(|id| read_run(&self.tx, id)).collect()
    }

    /// The summary of the file, keeping to indexed lookups and the kept aggregates on
    /// version 2 and later. The one exception is the best return per run, which reads the
    /// `episodes` table (one short row per episode, never the transitions).
    ///
    /// `recent` is how many of the newest episodes to include.
    pub fn overview(&self, recent: usize) -> Result<Overview> {
        let runs = self.runs()?;
        let mut per_run: HashMap<i64, (RunStats, Option<f64>)> = HashMap::new();
        {
            // One pass over episode rows: the best return, and on version 1 the counters that
            // version 2 keeps in run_stats.
            let mut stmt = self.tx.prepare_cached(
                "SELECT run_id, count(*), coalesce(sum(length), 0), \
                 coalesce(sum(payload_bytes), 0), coalesce(sum(episode_return), 0.0), \
                 max(episode_return) FROM episodes GROUP BY run_id",
            )?;
            let mut rows = stmt.query([])?;
            while let Some(r) = rows.next()? {
                let run_id: i64 = r.get(0)?;
                let (episodes, transitions): (i64, i64) = (r.get(1)?, r.get(2)?);
                let stats = RunStats {
                    run_id,
                    episodes_total: episodes,
                    transitions_total: transitions,
                    episodes_kept: episodes,
                    transitions_kept: transitions,
                    bytes_kept: r.get(3)?,
                    return_sum_kept: r.get(4)?,
                };
                per_run.insert(run_id, (stats, r.get(5)?));
            }
        }
        if self.has(2) {
            let mut stmt = self.tx.prepare_cached(
                "SELECT run_id, episodes_total, transitions_total, episodes_kept, \
                 transitions_kept, bytes_kept, return_sum_kept FROM run_stats",
            )?;
            let mut rows = stmt.query([])?;
            while let Some(r) = rows.next()? {
                let run_id: i64 = r.get(0)?;
                let stats = RunStats {
                    run_id,
                    episodes_total: r.get(1)?,
                    transitions_total: r.get(2)?,
                    episodes_kept: r.get(3)?,
                    transitions_kept: r.get(4)?,
                    bytes_kept: r.get(5)?,
                    return_sum_kept: r.get(6)?,
                };
                match per_run.get_mut(&run_id) {
                    Some(entry) => entry.0 = stats,
                    None => {
                        per_run.insert(run_id, (stats, None));
                    }
                }
            }
        }
        let totals: HashMap<i64, i64> = per_run
            .iter()
            .map(|(id, (stats, _))| (*id, stats.transitions_total))
            .collect();
        let runs = runs
            .into_iter()
            .map(|run| {
                let (stats, best_return) = per_run.remove(&run.id).unwrap_or((
                    RunStats {
                        run_id: run.id,
                        episodes_total: 0,
                        transitions_total: 0,
                        episodes_kept: 0,
                        transitions_kept: 0,
                        bytes_kept: 0,
                        return_sum_kept: 0.0,
                    },
                    None,
                ));
                RunOverview {
                    run,
                    stats,
                    best_return,
                }
            })
            .collect::<Vec<_>>();

        let mut counts: HashMap<String, i64> = HashMap::new();
        {
            let mut stmt = self
                .tx
                .prepare_cached("SELECT status, count(*) FROM models GROUP BY status")?;
            let mut rows = stmt.query([])?;
            while let Some(r) = rows.next()? {
                counts.insert(r.get(0)?, r.get(1)?);
            }
        }
        let count = |s: ModelStatus| counts.get(s.as_str()).copied().unwrap_or(0);
        let champion = self
            .tx
            .query_row(
                "SELECT version FROM models WHERE status = 'champion'",
                [],
                |r| r.get(0),
            )
            .optional()?;

        let mut reflections_by_kind = Vec::new();
        if self.has(2) {
            let mut stmt = self.tx.prepare_cached(
                "SELECT kind, count(*) FROM reflections GROUP BY kind ORDER BY 2 DESC, 1",
            )?;
            let mut rows = stmt.query([])?;
            while let Some(r) = rows.next()? {
                reflections_by_kind.push((r.get(0)?, r.get(1)?));
            }
        }

        // Each of these is one index or rowid lookup, not a scan.
        let first_time: Option<f64> =
            self.tx
                .query_row("SELECT min(started_at) FROM runs", [], |r| r.get(0))?;
        let mut last: Vec<Option<f64>> = vec![
            self.tx
                .query_row(
                    "SELECT ended_at FROM episodes ORDER BY id DESC LIMIT 1",
                    [],
                    |r| r.get(0),
                )
                .optional()?,
            self.tx
                .query_row(
                    "SELECT created_at FROM models ORDER BY version DESC LIMIT 1",
                    [],
                    |r| r.get(0),
                )
                .optional()?,
        ];
        if self.has(2) {
            last.push(
                self.tx
                    .query_row(
                        "SELECT created_at FROM reflections ORDER BY id DESC LIMIT 1",
                        [],
                        |r| r.get(0),
                    )
                    .optional()?,
            );
        }
        let last_time = last.into_iter().flatten().reduce(f64::max);

        let recent = self.recent_episodes(recent, &totals)?;

        Ok(Overview {
            schema_version: self.version,
            runs,
            models: counts.values().sum(),
            candidates: count(ModelStatus::Candidate),
            rejected: count(ModelStatus::Rejected),
            champion,
            reflections_by_kind,
            first_time,
            last_time,
            recent,
        })
    }

    /// The newest `n` episodes, newest first, by a rowid walk from the end.
    ///
    /// [`View::for_each_episode`] would number every episode of the file to find their
    /// environment steps; here they follow from the run's total instead, because every episode
    /// of a run newer than one in this list is in this list too.
    fn recent_episodes(&self, n: usize, totals: &HashMap<i64, i64>) -> Result<Vec<EpisodeInfo>> {
        let limit = i64::try_from(n).unwrap_or(i64::MAX);
        let mut stmt = self.tx.prepare_cached(
            "SELECT id, run_id, model_version, length, episode_return, terminated, truncated, \
             started_at, ended_at FROM episodes ORDER BY id DESC LIMIT ?1",
        )?;
        let mut rows = stmt.query([limit])?;
        let mut later: HashMap<i64, i64> = HashMap::new();
        let mut out = Vec::new();
        while let Some(r) = rows.next()? {
            let run_id: i64 = r.get(1)?;
            let length: i64 = r.get(3)?;
            let after = later.entry(run_id).or_insert(0);
            let env_step = totals.get(&run_id).copied().unwrap_or(0) - *after;
            *after += length;
            out.push(EpisodeInfo {
                id: r.get(0)?,
                run_id,
                model_version: r.get(2)?,
                length,
                episode_return: r.get(4)?,
                terminated: r.get(5)?,
                truncated: r.get(6)?,
                started_at: r.get(7)?,
                ended_at: r.get(8)?,
                env_step,
            });
        }
        Ok(out)
    }

    /// All model versions, oldest first, with their metrics.
    pub fn models(&self) -> Result<Vec<Model>> {
        let mut stmt = self
            .tx
            .prepare_cached(&format!("{MODEL_SELECT} ORDER BY version"))?;
        let rows = stmt.query_map([], model_from_row)?;
        rows.map(|r| r?).collect()
    }

    /// Calls `f` for each episode that passes `filter`, in the filter's order, until `f`
    /// returns `Break`.
    ///
    /// Filtering on the environment step numbers the run's episodes first, which reads every
    /// episode row of the run (not the transitions); the other filters use no more than that.
    pub fn for_each_episode(
        &self,
        filter: &EpisodeFilter,
        mut f: impl FnMut(&EpisodeInfo) -> Result<ControlFlow<()>>,
    ) -> Result<()> {
        // Evicted episodes are older than the kept ones under FIFO retention, so their steps
        // come before the first kept episode.
        let offset = if self.has(2) {
            "coalesce((SELECT s.transitions_total - s.transitions_kept FROM run_stats s \
             WHERE s.run_id = e.run_id), 0)"
        } else {
            "0"
        };
        let order = match filter.order {
            EpisodeOrder::Id => "id",
            EpisodeOrder::Return => "episode_return",
            EpisodeOrder::Length => "length",
            EpisodeOrder::EndedAt => "ended_at",
            EpisodeOrder::EnvStep => "env_step",
        };
        let dir = if filter.descending { "DESC" } else { "ASC" };
        // The tie-break on id keeps the order total, so paging and tests are deterministic.
        let sql = format!(
            "SELECT id, run_id, model_version, length, episode_return, terminated, truncated, \
             started_at, ended_at, env_step FROM ( \
               SELECT e.id, e.run_id, e.model_version, e.length, e.episode_return, \
                      e.terminated, e.truncated, e.started_at, e.ended_at, \
                      sum(e.length) OVER (PARTITION BY e.run_id ORDER BY e.id) + {offset} \
                        AS env_step \
               FROM episodes e WHERE (?1 IS NULL OR e.run_id = ?1)) \
             WHERE (?2 IS NULL OR model_version = ?2) \
               AND (?3 IS NULL OR ended_at >= ?3) AND (?4 IS NULL OR ended_at <= ?4) \
               AND (?5 IS NULL OR env_step >= ?5) AND (?6 IS NULL OR env_step <= ?6) \
               AND (?7 IS NULL OR episode_return >= ?7) AND (?8 IS NULL OR episode_return <= ?8) \
             ORDER BY {order} {dir}, id {dir} LIMIT ?9"
        );
        let limit = filter
            .limit
            .map_or(-1, |l| i64::try_from(l).unwrap_or(i64::MAX));
        let mut stmt = self.tx.prepare(&sql)?;
        let mut rows = stmt.query(params![
            filter.run_id,
            filter.model_version,
            filter.ended_after,
            filter.ended_before,
            filter.min_step,
            filter.max_step,
            filter.min_return,
            filter.max_return,
            limit
        ])?;
        while let Some(r) = rows.next()? {
            let info = EpisodeInfo {
                id: r.get(0)?,
                run_id: r.get(1)?,
                model_version: r.get(2)?,
                length: r.get(3)?,
                episode_return: r.get(4)?,
                terminated: r.get(5)?,
                truncated: r.get(6)?,
                started_at: r.get(7)?,
                ended_at: r.get(8)?,
                env_step: r.get(9)?,
            };
            if f(&info)?.is_break() {
                break;
            }
        }
        Ok(())
    }

    /// Calls `f` for each reflection, oldest first, optionally of one kind only (none on a
    /// version 1 file, which has no reflections table).
    pub fn for_each_reflection(
        &self,
        kind: Option<&str>,
        mut f: impl FnMut(&Reflection) -> Result<ControlFlow<()>>,
    ) -> Result<()> {
        if !self.has(2) {
            return Ok(());
        }
        let mut stmt = self.tx.prepare_cached(
            "SELECT id, created_at, kind, model_version, data, sentence FROM reflections \
             WHERE (?1 IS NULL OR kind = ?1) ORDER BY id",
        )?;
        let mut rows = stmt.query([kind])?;
        while let Some(r) = rows.next()? {
            let id: i64 = r.get(0)?;
            let data: String = r.get(4)?;
            let refl = Reflection {
                id,
                created_at: r.get(1)?,
                kind: r.get(2)?,
                model_version: r.get(3)?,
                data: serde_json::from_str(&data)
                    .map_err(|e| corrupt("reflections", id, &format!("data is not JSON: {e}")))?,
                sentence: r.get(5)?,
            };
            if f(&refl)?.is_break() {
                break;
            }
        }
        Ok(())
    }

    /// Calls `f` for each transition that passes `filter`, in id order (which is commit
    /// order), with the observation decoded, until `f` returns `Break`.
    ///
    /// Rows are stepped one at a time from SQLite and decoded into buffers reused between
    /// rows, so memory does not grow with the number of transitions.
    pub fn for_each_transition(
        &self,
        filter: &TransitionFilter,
        mut f: impl FnMut(&TransitionView<'_>) -> Result<ControlFlow<()>>,
    ) -> Result<()> {
        let layouts: HashMap<i64, Run> = self.runs()?.into_iter().map(|r| (r.id, r)).collect();
        let mut stmt = self.tx.prepare(
            "SELECT t.id, e.run_id, t.episode_id, t.step, t.obs, t.action_int, t.action_vec, \
             t.reward, t.terminated, t.truncated, t.behaviour, t.priority \
             FROM transitions t JOIN episodes e ON e.id = t.episode_id \
             WHERE (?1 IS NULL OR e.run_id = ?1) \
               AND (?2 IS NULL OR t.episode_id >= ?2) AND (?3 IS NULL OR t.episode_id <= ?3) \
             ORDER BY t.id",
        )?;
        let mut rows = stmt.query(params![
            filter.run_id,
            filter.min_episode,
            filter.max_episode
        ])?;
        let mut obs = Vec::new();
        let mut act = Vec::new();
        while let Some(r) = rows.next()? {
            let id: i64 = r.get(0)?;
            let run_id: i64 = r.get(1)?;
            let run = layouts
                .get(&run_id)
                .ok_or_else(|| corrupt("episodes", id, "unknown run"))?;
            obs.clear();
            let blob = r.get_ref(4)?.as_blob()?;
            if run.spec.obs_len().checked_mul(run.spec.obs_dtype.size()) != Some(blob.len()) {
                return Err(corrupt("transitions", id, "observation blob length"));
            }
            run.spec
                .obs_dtype
                .decode_into(blob, &mut obs)
                .ok_or_else(|| corrupt("transitions", id, "observation blob length"))?;
            let action = match run.spec.action_space {
                ActionSpace::Discrete { .. } => ActionRef::Discrete(
                    r.get::<_, Option<i64>>(5)?
                        .ok_or_else(|| corrupt("transitions", id, "missing action"))?,
                ),
                ActionSpace::Continuous { dim } => {
                    act.clear();
                    let blob = r
                        .get_ref(6)?
                        .as_blob_or_null()?
                        .ok_or_else(|| corrupt("transitions", id, "missing action"))?;
                    // Checked before decoding, so a long blob is never expanded.
                    if dim.checked_mul(4) != Some(blob.len()) {
                        return Err(corrupt("transitions", id, "action blob length"));
                    }
                    Dtype::F32
                        .decode_into(blob, &mut act)
                        .ok_or_else(|| corrupt("transitions", id, "action blob length"))?;
                    ActionRef::Continuous(&act)
                }
            };
            let view = TransitionView {
                id,
                run_id,
                episode_id: r.get(2)?,
                step: r.get(3)?,
                obs: &obs,
                obs_dims: &run.spec.obs_dims,
                action,
                reward: r.get(7)?,
                terminated: r.get(8)?,
                truncated: r.get(9)?,
                behaviour: r.get(10)?,
                priority: r.get(11)?,
            };
            if f(&view)?.is_break() {
                break;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        EpisodeEnd, NewModel, NewReflection, ReplayStore, RunSpec, SCHEMA_VERSION, WriterOptions,
    };

    fn spec(env: &str) -> RunSpec {
        RunSpec {
            env_id: env.into(),
            obs_dims: vec![2],
            obs_dtype: Dtype::F32,
            action_space: ActionSpace::Discrete { n: 3 },
            config: serde_json::json!({}),
            code_version: "test".into(),
        }
    }

    /// Two runs; run 1 has episodes of lengths 1..=4 (returns 10, 20, 30, 40) acted by
    /// models 1, 1, 2, 2; run 2 has one episode of length 5 (return -1).
    fn fixture(dir: &Path) -> PathBuf {
        let path = dir.join("r.sqlite");
        let store = ReplayStore::open(&path, StoreOptions::default()).unwrap();
        let a = store.create_run(&spec("A")).unwrap();
        let b = store.create_run(&spec("B")).unwrap();
        let m1 = store
            .register_model(&NewModel {
                parent: None,
                checkpoint_path: "m1".into(),
                checksum: "x".into(),
                metrics: serde_json::json!({"expert_usage": [0.5, 0.5]}),
            })
            .unwrap();
        let m2 = store
            .register_model(&NewModel {
                parent: Some(m1.version),
                checkpoint_path: "m2".into(),
                checksum: "y".into(),
                metrics: serde_json::json!({}),
            })
            .unwrap();
        store.promote(m2.version).unwrap();
        store
            .add_reflection(&NewReflection {
                kind: "promotion".into(),
                model_version: Some(m2.version),
                data: serde_json::json!({"gain": 1.5}),
                sentence: "better".into(),
            })
            .unwrap();
        let h = store.start_writer(WriterOptions::default()).unwrap();
        let w = h.writer();
        for (len, mv) in [(1, 1), (2, 1), (3, 2), (4, 2)] {
            let mut ep = w.begin_episode(&a, Some(mv));
            for t in 0..len {
                ep.push(
                    &[len as f32, t as f32],
                    ActionRef::Discrete(t as i64 % 3),
                    10.0 / len as f32,
                    None,
                )
                .unwrap();
            }
            ep.finish(&[0.0, 0.0], EpisodeEnd::Terminated).unwrap();
        }
        let mut ep = w.begin_episode(&b, None);
        for t in 0..5 {
            ep.push(&[9.0, t as f32], ActionRef::Discrete(0), -0.2, Some(0.5))
                .unwrap();
        }
        ep.finish(&[0.0, 0.0], EpisodeEnd::Truncated).unwrap();
        h.close().unwrap();
        path
    }

    #[test]
    fn overview_counts_and_best_returns() {
        let dir = tempfile::tempdir().unwrap();
        let path = fixture(dir.path());
        let ins = Inspector::open(&path).unwrap();
        let o = ins.view().unwrap().overview(3).unwrap();
        assert_eq!(o.schema_version, SCHEMA_VERSION);
        assert_eq!(o.runs.len(), 2);
        assert_eq!(o.episodes_kept(), 5);
        assert_eq!(o.transitions_kept(), 15);
        assert_eq!(o.runs[0].stats.transitions_total, 10);
        assert!((o.runs[0].best_return.unwrap() - 10.0).abs() < 1e-4);
        assert!((o.runs[1].best_return.unwrap() + 1.0).abs() < 1e-4);
        assert_eq!((o.models, o.candidates, o.rejected), (2, 1, 0));
        assert_eq!(o.champion, Some(2));
        assert_eq!(o.reflections_by_kind, vec![("promotion".to_string(), 1)]);
        assert_eq!(
            o.recent
                .iter()
                .map(|e| (e.id, e.env_step))
                .collect::<Vec<_>>(),
            vec![(5, 5), (4, 10), (3, 6)]
        );
        assert!(o.first_time.unwrap() <= o.last_time.unwrap());
        assert!(ins.file_bytes().unwrap().main > 0);
    }

    #[test]
    fn episode_filters_order_and_env_steps() {
        let dir = tempfile::tempdir().unwrap();
        let path = fixture(dir.path());
        let ins = Inspector::open(&path).unwrap();
        let v = ins.view().unwrap();
        let list = |f: EpisodeFilter| {
            let mut out = Vec::new();
            v.for_each_episode(&f, |e| {
                out.push((e.id, e.env_step));
                Ok(ControlFlow::Continue(()))
            })
            .unwrap();
            out
        };
        assert_eq!(
            list(EpisodeFilter::default()),
            vec![(1, 1), (2, 3), (3, 6), (4, 10), (5, 5)]
        );
        let f = EpisodeFilter {
            run_id: Some(1),
            model_version: Some(2),
            ..Default::default()
        };
        assert_eq!(list(f), vec![(3, 6), (4, 10)]);
        let f = EpisodeFilter {
            min_step: Some(3),
            max_step: Some(6),
            order: EpisodeOrder::Length,
            descending: true,
            ..Default::default()
        };
        assert_eq!(list(f), vec![(5, 5), (3, 6), (2, 3)]);
        let f = EpisodeFilter {
            min_return: Some(0.0),
            limit: Some(2),
            order: EpisodeOrder::Id,
            descending: true,
            ..Default::default()
        };
        assert_eq!(list(f), vec![(4, 10), (3, 6)]);
    }

    #[test]
    fn transitions_stream_decoded_and_stop_on_break() {
        let dir = tempfile::tempdir().unwrap();
        let path = fixture(dir.path());
        let ins = Inspector::open(&path).unwrap();
        let v = ins.view().unwrap();
        let mut rows = Vec::new();
        v.for_each_transition(&TransitionFilter::default(), |t| {
            let a = match t.action {
                ActionRef::Discrete(a) => a,
                ActionRef::Continuous(_) => -1,
            };
            rows.push((t.episode_id, t.step, t.obs.to_vec(), a, t.behaviour));
            Ok(ControlFlow::Continue(()))
        })
        .unwrap();
        assert_eq!(rows.len(), 15);
        assert_eq!(rows[1].0, 2);
        assert_eq!(rows[1].2, vec![2.0, 0.0]);
        assert_eq!(rows[14].3, 0);
        assert_eq!(rows[14].4, Some(0.5));
        let mut n = 0;
        v.for_each_transition(
            &TransitionFilter {
                run_id: Some(1),
                min_episode: Some(3),
                max_episode: None,
            },
            |_| {
                n += 1;
                Ok(if n == 4 {
                    ControlFlow::Break(())
                } else {
                    ControlFlow::Continue(())
                })
            },
        )
        .unwrap();
        assert_eq!(n, 4);
    }

    #[test]
    fn models_and_reflections_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = fixture(dir.path());
        let ins = Inspector::open(&path).unwrap();
        let v = ins.view().unwrap();
        let models = v.models().unwrap();
        assert_eq!(models[0].metrics["expert_usage"][0], 0.5);
        let mut kinds = Vec::new();
        v.for_each_reflection(Some("promotion"), |r| {
            kinds.push((r.kind.clone(), r.model_version));
            Ok(ControlFlow::Continue(()))
        })
        .unwrap();
        assert_eq!(kinds, vec![("promotion".to_string(), Some(2))]);
        let mut none = 0;
        v.for_each_reflection(Some("drift"), |_| {
            none += 1;
            Ok(ControlFlow::Continue(()))
        })
        .unwrap();
        assert_eq!(none, 0);
    }

    #[test]
    fn refuses_missing_empty_and_foreign_files_without_creating_them() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.sqlite");
        assert!(matches!(
            Inspector::open(&missing),
            Err(ReplayError::NoSuchFile { .. })
        ));
        assert!(!missing.exists());
        let empty = dir.path().join("empty.sqlite");
        std::fs::write(&empty, b"").unwrap();
        assert!(matches!(
            Inspector::open(&empty),
            Err(ReplayError::ForeignDatabase { .. })
        ));
        let foreign = dir.path().join("foreign.sqlite");
        Connection::open(&foreign)
            .unwrap()
            .execute_batch("CREATE TABLE t (x);")
            .unwrap();
        assert!(matches!(
            Inspector::open(&foreign),
            Err(ReplayError::ForeignDatabase { .. })
        ));
    }

    #[test]
    fn reads_a_version_1_file_without_migrating_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v1.sqlite");
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(schema::V1_FOR_TESTS).unwrap();
        conn.execute_batch(&format!(
            "PRAGMA application_id = {}; PRAGMA user_version = 1;
             INSERT INTO runs VALUES (1, 'CartPole-v1', '[2]', 'f32', '{{\"discrete\":{{\"n\":2}}}}',
                                      '{{}}', 'old', 100.0);
             INSERT INTO episodes VALUES (1, 1, NULL, 2, 3.5, 1, 0, 100.0, 101.0, x'0000000000000000', 24);
             INSERT INTO transitions VALUES (1, 1, 0, x'0000803f00000040', 1, NULL, 1.5, 0, 0, NULL, NULL);
             INSERT INTO transitions VALUES (2, 1, 1, x'0000404000008040', 0, NULL, 2.0, 1, 0, NULL, NULL);",
            crate::APPLICATION_ID
        ))
        .unwrap();
        drop(conn);
        let before = std::fs::read(&path).unwrap();
        let ins = Inspector::open(&path).unwrap();
        assert_eq!(ins.schema_version(), 1);
        let v = ins.view().unwrap();
        let o = v.overview(5).unwrap();
        assert_eq!((o.episodes_kept(), o.transitions_kept()), (1, 2));
        assert_eq!(o.runs[0].best_return, Some(3.5));
        assert_eq!(o.reflections(), 0);
        assert_eq!(o.last_time, Some(101.0));
        let mut obs = Vec::new();
        v.for_each_transition(&TransitionFilter::default(), |t| {
            obs.extend_from_slice(t.obs);
            Ok(ControlFlow::Continue(()))
        })
        .unwrap();
        assert_eq!(obs, vec![1.0, 2.0, 3.0, 4.0]);
        drop(v);
        drop(ins);
        assert_eq!(std::fs::read(&path).unwrap(), before);
    }
}
