//! The state every part of the daemon shares, broken into what each part owns: counters,
//! the champion, the board behind `/status`, the store, faults; and how a part records a
//! reflection, a fault or a failure.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use autodidact_core::ObsNormalizer;
use autodidact_replay::{NewReflection, ReplayError, ReplayStore, Sampler, Writer};

use super::DaemonConfig;
use super::config::ActWith;
use super::recall::RecallRequest;
use super::status::{
    self, Board, ChampionStatus, FaultBoard, ReflectionLine, ReplayStatus, Status, WriterStatus,
};
use crate::error::{AgentError, Result};
use crate::fault::{self, Backoff, Fault};
use crate::learners::Horizon;
use crate::rate::RateLimiter;
use crate::runtime::changes::{ChangeWatch, boosted_exploration};
use crate::runtime::memory::Memory;
use crate::runtime::{RunDir, RunState};
use crate::variable::VariableSource;

/// State shared by every part of the daemon.
pub(crate) struct Shared {
    pub(crate) cfg: DaemonConfig,
    /// The run directory (and its lock, held while any part of the daemon runs).
    pub(crate) dir: RunDir,
    pub(crate) started: Instant,
    pub(crate) start_steps: u64,
    pub(crate) stop: AtomicBool,
    pub(crate) acting: AtomicBool,
    pub(crate) failure: Mutex<Option<String>>,
    pub(crate) done: tokio::sync::Notify,
    pub(crate) steps: AtomicU64,
    pub(crate) episodes: AtomicU64,
    pub(crate) episode_seq: AtomicU64,
    pub(crate) updates: AtomicU64,
    pub(crate) champion: Arc<VariableSource>,
    /// The weights the actors act with: the learner's newest, or the champion's (see
    /// `daemon.act_with` and [`Shared::acts_with_learner`]).
    pub(crate) behaviour: Arc<VariableSource>,
    /// Set when the gate found the learner's candidate clearly worse than the champion: the
    /// champion acts until the next promotion.
    pub(crate) learner_distrusted: AtomicBool,
    /// The newest model version cut from the learner (or the champion it started again
    /// from): what the actors' steps are attributed to while they act with the learner.
    pub(crate) learner_version: AtomicI64,
    pub(crate) champion_version: AtomicI64,
    pub(crate) champion_checkpoint: Mutex<String>,
    pub(crate) obs_stats: Option<Arc<Mutex<ObsNormalizer>>>,
    pub(crate) board: Mutex<Board>,
    pub(crate) store: Mutex<ReplayStore>,
    /// A handle on the replay writer, for its health (the status and `/healthz`).
    pub(crate) writer: Writer,
    /// Held from reading the next version number to registering it, so a checkpoint's file
    /// name carries the version it is registered as (the store's own lock is released while
    /// a busy file is waited for).
    pub(crate) registering: Mutex<()>,
    pub(crate) sampler: Sampler,
    pub(crate) limiter: Arc<RateLimiter>,
    pub(crate) gate_busy: AtomicBool,
    pub(crate) boosted_at: AtomicU64,
    /// Learner updates when the learning rate last started again from the configured one.
    pub(crate) lr_reset_at: AtomicU64,
    /// Gate rejections since the last promotion.
    pub(crate) rejections_in_row: AtomicU64,
    /// Set by the gate: the learner should start again from the champion.
    pub(crate) rollback: AtomicBool,
    /// Set on a fall in return (with `drift.reset_head`): the learner resets its value head.
    pub(crate) reset_head: AtomicBool,
    /// The best mean return a champion showed at the gate since the start or the last drift.
    pub(crate) best_level: Mutex<Option<f64>>,
    /// Versions below this have had their checkpoint files pruned (or kept as champion).
    pub(crate) prune_floor: AtomicI64,
    /// A champion just demoted by a promotion (0 = none), for the pruner.
    pub(crate) demoted: AtomicI64,
    pub(crate) detectors: Mutex<ChangeWatch>,
    /// The worlds mastered before (their champions), kept to be recalled.
    pub(crate) memory: Mutex<Memory>,
    /// Remembered champions the gate should try in a new world.
    pub(crate) recall: Mutex<Option<RecallRequest>>,
    /// Step at which the present world began (the last fall in return noticed, or the start).
    pub(crate) world_since: AtomicU64,
    /// Environment faults of the actors (one slot each) and the gate (the last slot).
    pub(crate) faults: Mutex<FaultBoard>,
    pub(crate) obs_dim: usize,
    pub(crate) run_id: i64,
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Shared {
    /// Records the first failure and stops everything.
    pub(crate) fn fail(&self, what: &str, e: &AgentError) {
        tracing::error!(error = %e, "{what} failed");
        let mut f = lock(&self.failure);
        if f.is_none() {
            *f = Some(format!("{what}: {e}"));
        }
        drop(f);
        self.stop.store(true, Ordering::SeqCst);
        self.limiter.stop();
        self.done.notify_one();
    }

    /// Why `/healthz` should report the daemon unhealthy: a failure that stopped it, or an
    /// environment that failed `daemon.unhealthy_after_faults` times in a row (the daemon goes
    /// on retrying it).
    pub(crate) fn unhealthy(&self) -> Option<String> {
        if let Some(f) = lock(&self.failure).clone() {
            return Some(f);
        }
        // A stalled writer holds what actors lived in memory (bounded; actors then wait):
        // someone should free the disk or the lock.
        let w = self.writer.health();
        if let Some(stall) = &w.stall {
            return Some(format!(
                "the replay writer cannot commit ({}: {}); {} episodes wait, retried {} times",
                stall.reason.as_str(),
                w.last_error.as_deref().unwrap_or("no detail"),
                w.queued_episodes,
                stall.attempts
            ));
        }
        let limit = self.cfg.daemon.unhealthy_after_faults;
        let b = lock(&self.faults);
        let (who, n) = b.in_row.iter().enumerate().find(|(_, n)| **n >= limit)?;
        Some(format!(
            "{}: {n} environment faults in a row (last: {})",
            self.who(who),
            b.last.as_deref().unwrap_or("unknown")
        ))
    }

    pub(crate) fn who(&self, index: usize) -> String {
        if index >= self.cfg.daemon.actors {
            "the gate".into()
        } else {
            format!("actor {index}")
        }
    }

    /// Counts and logs a faulty `reset` or `step` of actor `who` (the gate is
    /// `daemon.actors`), and records a `fault` reflection for the first of a burst. Never
    /// fails: a fault must not stop the daemon, and a reflection that cannot be written is
    /// only logged.
    pub(crate) fn on_fault(&self, who: usize, what: &str, f: &Fault, episode_steps: u64) {
        let (in_row, note) = lock(&self.faults).record(who, what, f, Instant::now());
        let name = self.who(who);
        tracing::warn!(
            who = %name,
            what,
            kind = f.kind.name(),
            in_row,
            "environment fault: {}",
            f.message
        );
        let Some(count) = note else {
            return;
        };
        let steps = self.steps.load(Ordering::Relaxed);
        let cut = if what == "step" {
            format!(
                "; the episode in progress was cut as truncated after {episode_steps} stored \
                 steps"
            )
        } else {
            String::new()
        };
        let earlier = if count > 1 {
            format!(" ({count} faults of {name} since its last fault reflection)")
        } else {
            String::new()
        };
        let sentence = format!(
            "fault at step {steps}: {name}'s environment failed a {what} ({}): {}{cut}; it is \
             reset after a backoff ({in_row} in a row){earlier}",
            f.kind.name(),
            f.message
        );
        let data = serde_json::json!({
            "who": name,
            "call": what,
            "kind": f.kind,
            "message": f.message,
            "steps": steps,
            "episode_steps": episode_steps,
            "in_row": in_row,
            "since_last_note": count,
        });
        let version = Some(self.champion_version.load(Ordering::Relaxed));
        if let Err(e) = self.reflect("fault", version, data, sentence) {
            tracing::warn!(error = %e, "could not record a fault reflection");
        }
    }

    /// Runs a write on the registry connection again while the file is busy (another
    /// process holds its lock past the busy timeout) or full, waiting longer each time, until
    /// it succeeds or the daemon stops: such a state passes, and must not end the daemon.
    pub(crate) fn retry_store<T>(
        &self,
        what: &str,
        mut f: impl FnMut(&ReplayStore) -> autodidact_replay::Result<T>,
    ) -> Result<T> {
        let mut backoff = Backoff::new(Duration::from_secs(5));
        loop {
            let r = f(&lock(&self.store));
            match r {
                Err(e @ (ReplayError::Busy(_) | ReplayError::DiskFull(_))) if !self.stopping() => {
                    let wait = backoff.fault();
                    tracing::warn!(error = %e, attempt = backoff.in_row(), "{what}: retrying");
                    fault::sleep_unless(wait, || self.stopping());
                }
                r => return Ok(r?),
            }
        }
    }

    /// A good step of actor `who` after faults: its faults in a row start again from zero.
    pub(crate) fn clear_faults(&self, who: usize) {
        lock(&self.faults).clear(who);
    }

    /// Whether the actors act with the learner's weights now.
    pub(crate) fn acts_with_learner(&self) -> bool {
        self.cfg.daemon.act_with == ActWith::Learner
            && !self.learner_distrusted.load(Ordering::SeqCst)
    }

    /// The model version the actors' steps are attributed to.
    pub(crate) fn acting_version(&self) -> i64 {
        if self.acts_with_learner() {
            self.learner_version.load(Ordering::SeqCst)
        } else {
            self.champion_version.load(Ordering::SeqCst)
        }
    }

    /// The champion acts (`distrust`: the learner's candidate was clearly worse than it),
    /// or the learner may act again at its next publication.
    pub(crate) fn distrust_learner(&self, distrust: bool) {
        self.learner_distrusted.store(distrust, Ordering::SeqCst);
        if !self.acts_with_learner() {
            self.behaviour
                .publish(self.champion.latest().snapshot.clone());
        }
    }

    pub(crate) fn stopping(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    /// The exploration level at `steps`: the learner's schedule, raised after a drift alarm.
    pub(crate) fn exploration(&self, steps: u64) -> f32 {
        let horizon = Horizon::Endless {
            span: self.cfg.daemon.exploration_steps,
        };
        let base = self
            .dir
            .kind
            .exploration(self.cfg.learners(), steps, horizon);
        let lo = self
            .dir
            .kind
            .exploration(self.cfg.learners(), u64::MAX, horizon);
        let at = self.boosted_at.load(Ordering::Relaxed);
        boosted_exploration(
            &self.cfg.drift,
            base,
            lo,
            (at != u64::MAX).then_some(at),
            steps,
        )
    }

    /// Whether exploration is back at the schedule's floor (no boost in progress).
    pub(crate) fn exploration_settled(&self, steps: u64) -> bool {
        let horizon = Horizon::Endless {
            span: self.cfg.daemon.exploration_steps,
        };
        let lo = self
            .dir
            .kind
            .exploration(self.cfg.learners(), u64::MAX, horizon);
        self.exploration(steps) <= lo + 1e-6
    }

    /// Stores a reflection and shows it on the board and in the log.
    pub(crate) fn reflect(
        &self,
        kind: &str,
        model_version: Option<i64>,
        data: serde_json::Value,
        sentence: String,
    ) -> Result<()> {
        let row = NewReflection {
            kind: kind.into(),
            model_version,
            data,
            sentence: sentence.clone(),
        };
        self.retry_store("record a reflection", |store| store.add_reflection(&row))?;
        tracing::info!(kind, "{sentence}");
        lock(&self.board).push_reflection(ReflectionLine {
            kind: kind.into(),
            model_version,
            steps: self.steps.load(Ordering::Relaxed),
            sentence,
        });
        Ok(())
    }

    /// The status as `/status` shows it.
    pub(crate) fn status(&self) -> Result<Status> {
        let summary = lock(&self.store).summary()?;
        let (transitions, episodes) = summary
            .runs
            .iter()
            .find(|r| r.run_id == self.run_id)
            .map_or((0, 0), |r| (r.transitions_kept, r.episodes_kept));
        let steps = self.steps.load(Ordering::Relaxed);
        let uptime = self.started.elapsed().as_secs_f64();
        let (rss, peak) = status::rss_mib();
        // Each lock is taken and released on its own: no guard may outlive its line here, or
        // `unhealthy` would wait on a lock this thread holds.
        let faults = lock(&self.faults).status();
        let writer = WriterStatus::from_health(&self.writer.health());
        let unhealthy = self.unhealthy();
        let b = lock(&self.board);
        Ok(Status {
            envs: self.cfg.daemon.envs.clone(),
            actors: self.cfg.daemon.actors,
            acting: self.acting.load(Ordering::Relaxed),
            uptime_s: uptime,
            steps,
            episodes: self.episodes.load(Ordering::Relaxed),
            updates: self.updates.load(Ordering::Relaxed),
            steps_per_s: (steps - self.start_steps) as f64 / uptime.max(1e-9),
            epsilon: self.exploration(steps),
            champion: ChampionStatus {
                version: self.champion_version.load(Ordering::Relaxed),
                checkpoint: lock(&self.champion_checkpoint).clone(),
            },
            acting_with: if self.acts_with_learner() {
                "learner"
            } else {
                "champion"
            }
            .into(),
            acting_version: self.acting_version(),
            latest_version: b.latest_version,
            promoted: b.promoted,
            rejected: b.rejected,
            drifts: b.drifts,
            recent_return: b.recent_return(20),
            returns: b.returns.iter().rev().take(20).rev().map(|r| r.1).collect(),
            returns_started_at: b.returns.iter().rev().take(20).rev().map(|r| r.0).collect(),
            replay: ReplayStatus {
                transitions,
                episodes,
                window: self.sampler.len(),
                writer: writer.clone(),
            },
            learner: b.learner.clone(),
            last_reflections: b.reflections.iter().cloned().collect(),
            reflections_by_kind: b.reflections_by_kind.clone(),
            faults,
            unhealthy,
            peak_rss_mib: peak,
            rss_mib: rss,
        })
    }

    /// Rewrites `state.json` from the current counters.
    pub(crate) fn write_state(&self, learner_checkpoint: Option<String>) -> Result<()> {
        let stem = lock(&self.champion_checkpoint)
            .trim_end_matches(".safetensors")
            .to_string();
        RunState {
            format: 1,
            env_id: self.cfg.daemon.envs.first().cloned().unwrap_or_default(),
            replay_run_id: self.run_id,
            steps: self.steps.load(Ordering::SeqCst),
            episodes: self.episodes.load(Ordering::SeqCst),
            updates: self.updates.load(Ordering::SeqCst),
            model_version: self.champion_version.load(Ordering::SeqCst),
            checkpoint: stem,
            actor_rng_word_pos: "0".into(),
            learner_checkpoint,
        }
        .write(&self.dir.path)
    }
}
