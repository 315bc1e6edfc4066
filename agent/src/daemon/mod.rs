//! The self-learning daemon: how autodidact lives for days against a world that changes.
//!
//! ```text
//!              ┌──────── champion (VariableSource) ◄──────── gate ◄── candidate ───┐
//!              ▼                                               │                    │
//!   actor 0..N (env, ε-greedy) ── episodes ──► writer ──► replay.sqlite ──► learner ┘
//!              │                                               ▲                    ▲
//!              └── returns, obs ──► drift detectors            └──── reflection ────┘
//!                                     (ε boost)                (reanalyse, lessons)
//! ```
//!
//! One tokio runtime hosts everything. The blocking work — N actors each owning an
//! environment, the learner (in its own rayon pool), the gate (with an environment of its
//! own) — runs on the runtime's blocking threads; the HTTP endpoint, the reflection schedule
//! and signal handling are async tasks.
//!
//! **Actors act with the champion only.** The learner trains continuously and every
//! `daemon.candidate_every` updates cuts a candidate: a checkpoint registered as a model version
//! (status `candidate`, parent: the champion). The gate plays the candidate and the champion
//! on the same fresh episodes without exploration and promotes the candidate only if it is not
//! worse by the configured margin (a paired one-sided non-inferiority t-test, see
//! [`crate::gate`]); NaN weights or a diverged loss reject it outright. Every decision is a
//! `gate` reflection. A rejected candidate changes nothing the actors do; the learner goes on
//! training and cuts the next one.
//!
//! **Reflection.** Besides the gate: `drift` reflections when Page-Hinkley detectors see the
//! return fall or the observation statistics move ([`crate::drift`]); on a fall in return the
//! daemon raises plasticity by raising exploration — ε jumps to `drift.boost_epsilon` and
//! decays linearly over `drift.boost_steps` — so the learner sees what the changed world does
//! off the champion's now-wrong path. Every `reflection.every_s` seconds a pass runs a
//! `reanalyse` (the learner recomputes targets and priorities of uniformly drawn stored
//! transitions with its newest weights, as in MuZero Reanalyse) and records `lessons`: the
//! return trend, which experts of the champion serve which observation regions, and the
//! states where episodes fail.
//!
//! **Stopping and crashing.** SIGTERM/SIGINT stop the actors (each stores its episode in
//! progress as truncated), flush the replay, save the learner, and write `state.json`,
//! within `daemon.shutdown_timeout_s`. A `kill -9` at any moment loses only what was not
//! committed: the registry in `replay.sqlite` is the truth about the champion, so the next
//! start acts with the last champion, resumes the learner from it, counts steps from the
//! committed episodes, and rejects a candidate that was registered but never judged.
//!
//! **Memory** is bounded for any run length: the sampling window (`replay.capacity`), the
//! file (`replay.max_stored_transitions`, required), the status rings, and channels of fixed
//! capacity; nothing is kept per episode.

pub mod config;
mod http;
mod reflect;
pub mod status;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, SyncSender};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use autodidact_core::{HeadConfig, Module, ObsNormalizer, Snapshot, load_checkpoint};
use autodidact_envs::{Env, Space};
use autodidact_replay::{
    ActionSpace, Dtype, MirrorOptions, ModelStatus, NewModel, NewReflection, ReplayError,
    ReplayStore, Retention, RunSpec, Sampler, StoreOptions, Writer, WriterHandle, WriterOptions,
};

pub use config::DaemonConfig;
pub use status::{ReflectionLine, Status};

use crate::actor::{Actor, EpsilonGreedyActor};
use crate::adder::{Adder, ReplayAdder};
use crate::dqn::{DqnLearner, with_suffix};
use crate::drift::{Direction, ObsDrift, ReturnDrop};
use crate::error::{AgentError, Result};
use crate::eval::evaluate_capped;
use crate::fault::{self, Backoff, Fault};
use crate::gate::{GateReport, compare, sanity_check};
use crate::learner::{Learner, LearnerMetrics, ReanalyseReport};
use crate::rate::{Admit, RateLimiter};
use crate::train::{
    REPLAY_FILE, RunLock, RunState, STATE_FILE, check_stored_command, episode_seed, inside_run_dir,
    learner_pool, write_atomic,
};
use crate::variable::VariableSource;
use status::{Board, ChampionStatus, FaultBoard, ReplayStatus, WriterStatus};

/// The resolved configuration in a daemon's run directory.
pub const DAEMON_CONFIG_FILE: &str = "daemon.toml";
/// Where the daemon writes the address its HTTP endpoint is bound to.
pub const HTTP_ADDR_FILE: &str = "http.addr";
/// Stem of the learner state saved at a graceful stop.
const LEARNER_STEM: &str = "checkpoints/learner";

const TRAIN_STREAM: u64 = 11;
const GATE_STREAM: u64 = 12;
const ACTOR_STREAM: u64 = 13;
/// Paired returns of the gate: (candidate, champion), one per seed.
type Pairs = (Vec<f64>, Vec<f64>);
/// Faults in a row after which the gate gives up judging a candidate (and rejects it).
const GATE_ATTEMPTS: u32 = 5;

/// Makes an environment from an ID; the default is [`autodidact_envs::make`]. A caller can
/// supply its own (an experiment that changes the world on command, say).
pub type EnvFactory = Arc<dyn Fn(&str) -> autodidact_envs::Result<Box<dyn Env>> + Send + Sync>;

/// What [`Daemon::start`] needs.
#[derive(Clone)]
pub struct DaemonOptions {
    /// The resolved configuration.
    pub config: DaemonConfig,
    /// The run directory (created if missing; resumed if it holds a daemon run).
    pub run_dir: PathBuf,
    /// How environments are made (default: the registry).
    pub env_factory: Option<EnvFactory>,
}

impl std::fmt::Debug for DaemonOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DaemonOptions")
            .field("config", &self.config)
            .field("run_dir", &self.run_dir)
            .finish_non_exhaustive()
    }
}

impl DaemonOptions {
    /// Resolves the configuration the way `autodidact daemon` does: a run directory that holds a
    /// daemon run resumes with its saved `daemon.toml` plus `overrides`; otherwise `file`
    /// (if any), then `overrides`, then `envs` (if any) make a fresh configuration. A saved
    /// environment that is a command (`exec:…`) runs only if `envs` names it again or
    /// `allow_command` is set (see [`crate::train::check_stored_command`]).
    pub fn resolve(
        run_dir: &Path,
        file: Option<&Path>,
        envs: &[String],
        overrides: &[String],
        allow_command: bool,
    ) -> Result<DaemonOptions> {
        let saved = run_dir.join(DAEMON_CONFIG_FILE);
        let config = if saved.exists() {
            if file.is_some() {
                return Err(AgentError::RunDir {
                    path: run_dir.to_path_buf(),
                    reason: format!(
                        "already holds a daemon run with its own {DAEMON_CONFIG_FILE}; change \
                         keys with --set KEY=VALUE, or choose another --run-dir"
                    ),
                });
            }
            let cfg = DaemonConfig::load(Some(&saved), overrides)?;
            if !envs.is_empty() && envs != cfg.daemon.envs.as_slice() {
                return Err(AgentError::Config(format!(
                    "daemon.envs: the run in {} acts in {:?}, not {:?}; drop --env to resume \
                     it, or choose another --run-dir",
                    run_dir.display(),
                    cfg.daemon.envs,
                    envs
                )));
            }
            // Naming the environments again on the command line is consent.
            for id in &cfg.daemon.envs {
                check_stored_command(id, &saved, allow_command || !envs.is_empty())?;
            }
            cfg
        } else {
            if run_dir.join(STATE_FILE).exists() || run_dir.join(REPLAY_FILE).exists() {
                return Err(AgentError::RunDir {
                    path: run_dir.to_path_buf(),
                    reason: "holds a `train` run; the daemon needs a run directory of its own"
                        .into(),
                });
            }
            let mut cfg = DaemonConfig::load(file, overrides)?;
            if !envs.is_empty() {
                cfg.daemon.envs = envs.to_vec();
            }
            cfg
        };
        if config.daemon.envs.is_empty() {
            return Err(AgentError::Config(
                "daemon.envs: no environment; pass --env ID (e.g. --env cartpole) or set \
                 daemon.envs in the config file"
                    .into(),
            ));
        }
        Ok(DaemonOptions {
            config,
            run_dir: run_dir.to_path_buf(),
            env_factory: None,
        })
    }
}

/// How a daemon session ended.
#[derive(Clone, Debug, serde::Serialize)]
pub struct DaemonReport {
    /// The status at the end.
    pub status: Status,
    /// Seconds the graceful stop took.
    pub shutdown_s: f64,
}

/// A candidate on its way to the gate.
#[derive(Debug)]
struct Candidate {
    version: i64,
    /// Checkpoint file, relative to the run directory.
    checkpoint: String,
    /// The learner's loss when it was cut (a diverged loss rejects it outright).
    loss: f32,
}

enum LearnerRequest {
    Reanalyse {
        batches: usize,
        reply: Sender<Result<Option<ReanalyseReport>>>,
    },
}

/// Detectors fed at every episode end.
struct Detectors {
    returns: ReturnDrop,
    obs: ObsDrift,
}

/// State shared by every part of the daemon.
pub(crate) struct Shared {
    cfg: DaemonConfig,
    run_dir: PathBuf,
    started: Instant,
    start_steps: u64,
    stop: AtomicBool,
    acting: AtomicBool,
    failure: Mutex<Option<String>>,
    done: tokio::sync::Notify,
    steps: AtomicU64,
    episodes: AtomicU64,
    episode_seq: AtomicU64,
    updates: AtomicU64,
    champion: Arc<VariableSource>,
    champion_version: AtomicI64,
    champion_checkpoint: Mutex<String>,
    obs_stats: Option<Arc<Mutex<ObsNormalizer>>>,
    board: Mutex<Board>,
    store: Mutex<ReplayStore>,
    /// A handle on the replay writer, for its health (the status and `/healthz`).
    writer: Writer,
    /// Held from reading the next version number to registering it, so a checkpoint's file
    /// name carries the version it is registered as (the store's own lock is released while
    /// a busy file is waited for).
    registering: Mutex<()>,
    sampler: Sampler,
    limiter: Arc<RateLimiter>,
    gate_busy: AtomicBool,
    boosted_at: AtomicU64,
    /// Learner updates when the learning rate last started again from `dqn.lr`.
    lr_reset_at: AtomicU64,
    /// Gate rejections since the last promotion.
    rejections_in_row: AtomicU64,
    /// Set by the gate: the learner should start again from the champion.
    rollback: AtomicBool,
    /// The best mean return a champion showed at the gate since the start or the last drift.
    best_level: Mutex<Option<f64>>,
    /// Versions below this have had their checkpoint files pruned (or kept as champion).
    prune_floor: AtomicI64,
    /// A champion just demoted by a promotion (0 = none), for the pruner.
    demoted: AtomicI64,
    detectors: Mutex<Detectors>,
    /// Environment faults of the actors (one slot each) and the gate (the last slot).
    faults: Mutex<FaultBoard>,
    obs_dim: usize,
    run_id: i64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Shared {
    /// Records the first failure and stops everything.
    fn fail(&self, what: &str, e: &AgentError) {
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

    fn who(&self, index: usize) -> String {
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
    fn on_fault(&self, who: usize, what: &str, f: &Fault, episode_steps: u64) {
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
    fn retry_store<T>(
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
    fn clear_faults(&self, who: usize) {
        lock(&self.faults).clear(who);
    }

    fn stopping(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    /// ε at `steps`: the schedule, raised after a drift alarm.
    fn epsilon(&self, steps: u64) -> f32 {
        let d = &self.cfg.dqn;
        let (hi, lo) = (d.exploration_initial_eps, d.exploration_final_eps);
        let base = if steps < d.learning_starts {
            hi
        } else {
            let t = (steps - d.learning_starts) as f64
                / self.cfg.daemon.exploration_steps.max(1) as f64;
            hi + (lo - hi) * t.min(1.0) as f32
        };
        let at = self.boosted_at.load(Ordering::Relaxed);
        if at == u64::MAX || steps < at {
            return base;
        }
        let frac = 1.0 - (steps - at) as f64 / self.cfg.drift.boost_steps.max(1) as f64;
        if frac <= 0.0 {
            return base;
        }
        let boost = lo + (self.cfg.drift.boost_epsilon - lo) * frac as f32;
        base.max(boost)
    }

    /// Stores a reflection and shows it on the board and in the log.
    fn reflect(
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

    /// Feeds an ended episode (begun at step `started_at`, ended at `steps`) to the board and
    /// the drift detectors.
    fn on_episode(
        &self,
        started_at: u64,
        steps: u64,
        ret: f64,
        mean_abs_obs: &[f32],
    ) -> Result<()> {
        lock(&self.board).push_return(started_at, ret);
        let (ret_alarm, obs_alarms) = {
            let mut d = lock(&self.detectors);
            let r = d.returns.update(ret);
            let o = if self.cfg.drift.watch_observations {
                d.obs.update(mean_abs_obs)
            } else {
                Vec::new()
            };
            (r, o)
        };
        let version = Some(self.champion_version.load(Ordering::Relaxed));
        let drift = &self.cfg.drift;
        if let Some(a) = ret_alarm {
            self.boosted_at.store(steps, Ordering::Relaxed);
            *lock(&self.best_level) = None;
            self.lr_reset_at
                .store(self.updates.load(Ordering::Relaxed), Ordering::Relaxed);
            lock(&self.board).drifts += 1;
            let sentence = format!(
                "drift at step {steps}: the return fell from {:.1} to {:.1} (the last {} episodes \
                 against the {} before); \
                 exploration raised to ε = {} for {} steps and the learning rate back to {}",
                a.reference_mean,
                a.mean,
                drift.returns.recent,
                a.after.saturating_sub(drift.returns.recent as u64),
                drift.boost_epsilon,
                drift.boost_steps,
                self.cfg.dqn.lr
            );
            self.reflect(
                "drift",
                version,
                serde_json::json!({
                    "signal": "returns",
                    "steps": steps,
                    "alarm": a,
                    "action": {
                        "epsilon": drift.boost_epsilon,
                        "boost_steps": drift.boost_steps,
                        "lr": self.cfg.dqn.lr,
                        "lr_decay_updates": self.cfg.daemon.lr_decay_updates,
                    },
                }),
                sentence,
            )?;
        }
        if !obs_alarms.is_empty() {
            let boost = drift.boost_on_observations;
            if boost {
                self.boosted_at.store(steps, Ordering::Relaxed);
            }
            lock(&self.board).drifts += 1;
            let moved: Vec<String> = obs_alarms
                .iter()
                .map(|(i, a)| {
                    format!(
                        "mean |obs[{i}]| {} from {:.3} to {:.3}",
                        match a.direction {
                            Direction::Up => "rose",
                            Direction::Down => "fell",
                        },
                        a.reference_mean,
                        a.mean
                    )
                })
                .collect();
            let sentence = format!(
                "drift at step {steps}: observation statistics moved ({}){}",
                moved.join(", "),
                if boost {
                    format!("; exploration raised to ε = {}", drift.boost_epsilon)
                } else {
                    String::new()
                }
            );
            let features: Vec<serde_json::Value> = obs_alarms
                .iter()
                .map(|(i, a)| serde_json::json!({"feature": i, "alarm": a}))
                .collect();
            self.reflect(
                "drift",
                version,
                serde_json::json!({
                    "signal": "observations",
                    "steps": steps,
                    "features": features,
                    "action": if boost {
                        serde_json::json!({"epsilon": drift.boost_epsilon, "boost_steps": drift.boost_steps})
                    } else {
                        serde_json::Value::Null
                    },
                }),
                sentence,
            )?;
        }
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
            epsilon: self.epsilon(steps),
            champion: ChampionStatus {
                version: self.champion_version.load(Ordering::Relaxed),
                checkpoint: lock(&self.champion_checkpoint).clone(),
            },
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

    /// Registers a saved checkpoint as a candidate (parent: the champion).
    fn register_candidate(&self, rel_stem: &str, metrics: serde_json::Value) -> Result<i64> {
        let rel = format!("{rel_stem}.safetensors");
        let file = self.run_dir.join(&rel);
        let bytes = std::fs::read(&file).map_err(AgentError::io(&file))?;
        let row = NewModel {
            parent: Some(self.champion_version.load(Ordering::SeqCst)),
            checkpoint_path: rel,
            checksum: format!("crc32:{:08x}", crc32fast::hash(&bytes)),
            metrics,
        };
        let model = self.retry_store("register a candidate", |store| store.register_model(&row))?;
        lock(&self.board).latest_version = model.version;
        Ok(model.version)
    }

    /// Saves the learner as the next model version and hands it to the gate.
    fn cut_candidate(&self, learner: &mut dyn Learner, gate: &SyncSender<Candidate>) -> Result<()> {
        if let Some(stats) = &self.obs_stats {
            learner.set_obs_stats(&lock(stats).clone());
        }
        let m = learner.metrics();
        let registering = lock(&self.registering);
        let next = self
            .retry_store("read the registry", |store| store.latest_model())?
            .map_or(1, |m| m.version + 1);
        let steps = self.steps.load(Ordering::Relaxed);
        let stem = format!("checkpoints/v{next:05}-step{steps:010}");
        learner.save(&self.run_dir.join(&stem))?;
        let version = self.register_candidate(&stem, model_metrics(steps, &m))?;
        drop(registering);
        self.gate_busy.store(true, Ordering::SeqCst);
        gate.send(Candidate {
            version,
            checkpoint: format!("{stem}.safetensors"),
            loss: m.loss,
        })
        .map_err(|_| AgentError::Panicked("gate"))
    }

    /// Plays the candidate against the champion and promotes or rejects it.
    fn judge(&self, c: &Candidate, env: &mut dyn Env) -> Result<()> {
        let champion_version = self.champion_version.load(Ordering::SeqCst);
        let champion = self.champion.latest();
        let gate = &self.cfg.gate;
        let mut snapshot = None;
        let report = match load_checkpoint(&self.run_dir.join(&c.checkpoint)) {
            Err(e) => GateReport::rejected_outright(format!("its checkpoint cannot be read: {e}")),
            Ok(loaded) if loaded.network.config() != champion.snapshot.config() => {
                GateReport::rejected_outright(
                    "its network's shape differs from the champion's (another environment or \
                     network config)",
                )
            }
            Ok(loaded) => {
                let mut params = Vec::new();
                loaded
                    .network
                    .visit_params(&mut |p| params.extend_from_slice(p.value.data()));
                match sanity_check(params, c.loss) {
                    Some(reason) => GateReport::rejected_outright(reason),
                    None => {
                        let snap = Snapshot::from_network(&loaded.network, self.cfg.precision())?;
                        let (cand, champ) = match self.play_pairs(c, env, &snap, &champion.snapshot)
                        {
                            // Left as a candidate: the next start rejects it, saying so.
                            None => return Ok(()),
                            Some(Ok(pairs)) => pairs,
                            Some(Err(f)) => {
                                return self.decide(
                                    c,
                                    champion_version,
                                    GateReport::rejected_outright(format!(
                                        "the gate's environment failed {GATE_ATTEMPTS} times in \
                                         a row, so it could not be judged ({f})"
                                    )),
                                    None,
                                    true,
                                );
                            }
                        };
                        snapshot = Some(snap);
                        let mut r = compare(&cand, &champ, gate)?;
                        // Non-inferiority alone would let a chain of promotions each lose up to
                        // a margin: the candidate must also stay within one margin of the best
                        // level a champion showed since the start or the last drift.
                        let mut best = lock(&self.best_level);
                        let floor = best.map(|b| b - r.margin);
                        if r.promote && floor.is_some_and(|f| r.candidate_mean < f) {
                            r.promote = false;
                            r.reason = format!(
                                "{}; but {:.1} is more than the margin below the best champion \
                                 level since the last drift, {:.1}",
                                r.reason,
                                r.candidate_mean,
                                best.unwrap_or(f64::NAN)
                            );
                        }
                        let seen = if r.promote {
                            r.champion_mean.max(r.candidate_mean)
                        } else {
                            r.champion_mean
                        };
                        *best = Some(best.map_or(seen, |b| b.max(seen)));
                        r
                    }
                }
            }
        };
        self.decide(c, champion_version, report, snapshot, false)
    }

    /// Plays the candidate and the champion on the same `gate.episodes` fresh seeds. A fault
    /// says nothing about either model, so a faulty episode pair is played again with the same
    /// seed after a backoff, up to [`GATE_ATTEMPTS`] times in a row. `None`: the daemon is
    /// stopping.
    fn play_pairs(
        &self,
        c: &Candidate,
        env: &mut dyn Env,
        candidate: &Snapshot,
        champion: &Snapshot,
    ) -> Option<Result<Pairs, Fault>> {
        let episodes = self.cfg.gate.episodes;
        let gate = self.cfg.daemon.actors;
        let mut backoff =
            Backoff::new(Duration::from_secs_f64(self.cfg.daemon.fault_backoff_max_s));
        let (mut cand, mut champ) = (Vec::new(), Vec::new());
        let mut j = 0;
        while j < episodes {
            if self.stopping() {
                return None;
            }
            let seed = episode_seed(
                self.cfg.daemon.seed,
                GATE_STREAM,
                (c.version as u64)
                    .wrapping_mul(episodes as u64)
                    .wrapping_add(j as u64),
            );
            let cap = self.cfg.replay.episode_cap();
            let pair = evaluate_capped(env, candidate, 1, seed, cap)
                .and_then(|a| Ok((a.mean, evaluate_capped(env, champion, 1, seed, cap)?.mean)));
            match pair {
                Ok((a, b)) => {
                    if backoff.in_row() > 0 {
                        backoff.succeed();
                        self.clear_faults(gate);
                    }
                    cand.push(a);
                    champ.push(b);
                    j += 1;
                }
                Err(e) => {
                    let f = match e {
                        AgentError::Fault(f) => f,
                        AgentError::Env(e) => Fault::from(e),
                        other => Fault {
                            kind: fault::FaultKind::EnvError,
                            message: other.to_string(),
                        },
                    };
                    let wait = backoff.fault();
                    self.on_fault(gate, "gate episode", &f, 0);
                    if backoff.in_row() >= GATE_ATTEMPTS {
                        return Some(Err(f));
                    }
                    if !fault::sleep_unless(wait, || self.stopping()) {
                        return None;
                    }
                }
            }
        }
        Some(Ok((cand, champ)))
    }

    /// Records the gate's decision: the registry first (it is what a restart believes), then
    /// the actors' champion, the state file, a `gate` reflection, and pruning.
    fn decide(
        &self,
        c: &Candidate,
        champion_version: i64,
        report: GateReport,
        snapshot: Option<Snapshot>,
        env_failed: bool,
    ) -> Result<()> {
        let mut sentence = report.sentence(c.version, champion_version);
        let mut rollback = false;
        if report.promote {
            self.rejections_in_row.store(0, Ordering::SeqCst);
        } else if !env_failed {
            // A candidate the environment kept from being judged says nothing of the learner.
            let n = self.rejections_in_row.fetch_add(1, Ordering::SeqCst) + 1;
            let after = self.cfg.daemon.rollback_after;
            // Only in a settled world (the learning rate has decayed at least halfway since
            // the start or the last drift): after a change the champion is what is wrong, and
            // the learner must be free to move away from it.
            let settled = self
                .updates
                .load(Ordering::Relaxed)
                .saturating_sub(self.lr_reset_at.load(Ordering::Relaxed))
                >= self.cfg.daemon.lr_decay_updates / 2;
            if after > 0 && n >= after && settled {
                self.rejections_in_row.store(0, Ordering::SeqCst);
                self.rollback.store(true, Ordering::SeqCst);
                rollback = true;
                sentence.push_str(&format!(
                    "; after {n} rejections in a row the learner starts again from champion \
                     v{champion_version}"
                ));
            }
        }
        let data = serde_json::json!({
            "candidate": c.version,
            "champion": champion_version,
            "steps": self.steps.load(Ordering::Relaxed),
            "test": "paired one-sided t-test for non-inferiority",
            "report": report,
            "learner_rolled_back": rollback,
        });
        // The registry first: it is what a restart believes.
        self.retry_store("record the gate's decision", |store| {
            if report.promote {
                store.promote(c.version)
            } else {
                store.reject(c.version)
            }
        })?;
        if let (true, Some(snap)) = (report.promote, snapshot) {
            self.demoted.store(champion_version, Ordering::SeqCst);
            self.champion.publish(snap);
            self.champion_version.store(c.version, Ordering::SeqCst);
            *lock(&self.champion_checkpoint) = c.checkpoint.clone();
            lock(&self.board).promoted += 1;
            self.write_state(None)?;
        } else {
            lock(&self.board).rejected += 1;
        }
        self.reflect("gate", Some(c.version), data, sentence)?;
        self.prune_checkpoints(c.version)
    }

    /// Deletes the checkpoint files of every version older than the newest
    /// `daemon.keep_checkpoints` except the champion's, so disk use stays bounded; registry rows
    /// stay, with the checksum of what was there. Versions below `prune_floor` are done, so each
    /// call looks only at what fell out of the window since the last one (plus a champion that
    /// was demoted after its turn).
    fn prune_checkpoints(&self, newest: i64) -> Result<()> {
        let upto = newest - self.cfg.daemon.keep_checkpoints as i64;
        let floor = self.prune_floor.load(Ordering::SeqCst);
        let demoted = self.demoted.swap(0, Ordering::SeqCst);
        let mut versions: Vec<i64> = (floor.max(1)..=upto).collect();
        if demoted > 0 && demoted < floor {
            versions.push(demoted);
        }
        for v in versions {
            let model = match lock(&self.store).model(v) {
                Ok(m) => m,
                Err(autodidact_replay::ReplayError::NotFound { .. }) => continue,
                Err(e) => return Err(e.into()),
            };
            if model.status == ModelStatus::Champion {
                continue;
            }
            self.remove_checkpoint_files(&model.checkpoint_path)?;
        }
        if upto >= floor {
            self.prune_floor.store(upto + 1, Ordering::SeqCst);
        }
        Ok(())
    }

    fn remove_checkpoint_files(&self, rel: &str) -> Result<()> {
        // The registry is a file: a crafted `checkpoint_path` must not delete anything outside
        // the run directory. Such a row is refused and left alone, and pruning goes on.
        let stem = match inside_run_dir(&self.run_dir, rel.trim_end_matches(".safetensors")) {
            Ok(stem) => stem,
            Err(e) => {
                tracing::warn!(error = %e, "not pruning a checkpoint outside the run directory");
                return Ok(());
            }
        };
        // Nor through a symbolic link inside it (a `checkpoints` link to elsewhere): the
        // directory the files are in must resolve to one inside the run directory.
        let inside = match (
            stem.parent().map(std::fs::canonicalize),
            std::fs::canonicalize(&self.run_dir),
        ) {
            (Some(Ok(dir)), Ok(root)) => dir.starts_with(&root),
            // A directory that is gone holds nothing to delete.
            _ => false,
        };
        if !inside {
            tracing::warn!(
                path = %stem.display(),
                "not pruning a checkpoint whose directory resolves outside the run directory"
            );
            return Ok(());
        }
        for f in [
            with_suffix(&stem, ".safetensors"),
            with_suffix(&stem, ".target.safetensors"),
        ] {
            match std::fs::remove_file(&f) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(AgentError::Io { path: f, source: e }),
            }
        }
        Ok(())
    }

    /// Rewrites `state.json` from the current counters.
    fn write_state(&self, learner_checkpoint: Option<String>) -> Result<()> {
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
        .write(&self.run_dir)
    }
}

/// Reads a model's checkpoint and checks it against the registry's checksum.
fn verify_checkpoint(run_dir: &Path, m: &autodidact_replay::Model) -> Result<()> {
    let file = inside_run_dir(run_dir, &m.checkpoint_path)?;
    let bytes = std::fs::read(&file).map_err(AgentError::io(&file))?;
    let sum = format!("crc32:{:08x}", crc32fast::hash(&bytes));
    if sum != m.checksum {
        return Err(AgentError::RunDir {
            path: file,
            reason: format!(
                "does not match the registry ({sum}, registered {}): it was changed or damaged",
                m.checksum
            ),
        });
    }
    Ok(())
}

/// The champion to resume with. If its checkpoint is missing or damaged (a power loss can
/// lose a file that was not synced, a disk can corrupt one), the newest earlier model that was
/// not rejected and whose checkpoint matches the registry takes its place, and the registry
/// says so: a run must resume after a power loss. Returns the reflection to record.
fn verified_champion(
    store: &ReplayStore,
    run_dir: &Path,
    champion: autodidact_replay::Model,
) -> Result<(
    autodidact_replay::Model,
    Option<(serde_json::Value, String)>,
)> {
    let why = match verify_checkpoint(run_dir, &champion) {
        Ok(()) => return Ok((champion, None)),
        Err(e) => e,
    };
    let mut earlier: Vec<_> = store
        .models()?
        .into_iter()
        .filter(|m| m.version < champion.version && m.status != ModelStatus::Rejected)
        .collect();
    earlier.sort_by_key(|m| std::cmp::Reverse(m.version));
    let Some(stand_in) = earlier
        .into_iter()
        .find(|m| verify_checkpoint(run_dir, m).is_ok())
    else {
        return Err(AgentError::RunDir {
            path: run_dir.to_path_buf(),
            reason: format!(
                "the champion v{}'s checkpoint cannot be used ({why}), and no earlier model's \
                 checkpoint matches the registry",
                champion.version
            ),
        });
    };
    store.promote(stand_in.version)?;
    store.reject(champion.version)?;
    let sentence = format!(
        "recovered at start: champion v{}'s checkpoint cannot be used ({why}); acting with \
         v{}, the newest earlier model whose checkpoint matches the registry",
        champion.version, stand_in.version
    );
    tracing::warn!("{sentence}");
    let data = serde_json::json!({
        "lost": champion.version,
        "champion": stand_in.version,
        "reason": why.to_string(),
    });
    Ok((stand_in, Some((data, sentence))))
}

/// The registry's metrics of a model version (the shape `train` writes).
fn model_metrics(steps: u64, m: &LearnerMetrics) -> serde_json::Value {
    let mut v = serde_json::json!({
        "env_steps": steps,
        "updates": m.updates,
        "loss": m.loss,
        "grad_norm": m.grad_norm,
    });
    if !m.expert_usage.is_empty() {
        v["expert_usage"] = serde_json::json!(m.expert_usage);
        v["router_entropy"] = serde_json::json!(m.router_entropy);
    }
    v
}

fn actor_loop(
    shared: Arc<Shared>,
    index: usize,
    mut env: Box<dyn Env>,
    mut actor: EpsilonGreedyActor<ReplayAdder>,
) -> Result<()> {
    let max_steps = shared.cfg.daemon.max_steps;
    let obs_dim = shared.obs_dim;
    let mut obs_sum = vec![0f64; obs_dim];
    let mut mean_abs_obs = vec![0f32; obs_dim];
    let mut last_version = i64::MIN;
    let mut backoff = Backoff::new(Duration::from_secs_f64(
        shared.cfg.daemon.fault_backoff_max_s,
    ));
    // A fault is never an error of this loop: it cuts the episode, waits, and resets. Only a
    // failure of the store (which holds what was lived) ends it.
    let fault = |backoff: &mut Backoff, f: Fault, what: &str, episode_steps: u64| -> bool {
        let wait = backoff.fault();
        shared.on_fault(index, what, &f, episode_steps);
        fault::sleep_unless(wait, || shared.stopping())
    };
    let result = (|| -> Result<()> {
        'episodes: loop {
            if shared.stopping() {
                break;
            }
            let version = shared.champion_version.load(Ordering::SeqCst);
            if version != last_version {
                last_version = version;
                actor.adder_mut().set_model_version(Some(version));
            }
            let n = shared.episode_seq.fetch_add(1, Ordering::Relaxed);
            let seed = episode_seed(shared.cfg.daemon.seed, TRAIN_STREAM, n);
            let obs = match env
                .reset(Some(seed))
                .map_err(Fault::from)
                .and_then(|(obs, _)| {
                    fault::check_observation(&obs, obs_dim)?;
                    Ok(obs)
                }) {
                Ok(obs) => obs,
                Err(f) => {
                    if fault(&mut backoff, f, "reset", 0) {
                        continue;
                    }
                    break;
                }
            };
            actor.observe_first(&obs)?;
            let started_at = shared.steps.load(Ordering::Relaxed);
            obs_sum.iter_mut().for_each(|s| *s = 0.0);
            let (mut obs, mut ret, mut len) = (obs, 0.0, 0u64);
            loop {
                if shared.stopping() {
                    actor.adder_mut().cut()?;
                    break 'episodes;
                }
                if max_steps > 0 && shared.steps.load(Ordering::Relaxed) >= max_steps {
                    actor.adder_mut().cut()?;
                    shared.done.notify_one();
                    break 'episodes;
                }
                match shared.limiter.step() {
                    Admit::Go => {}
                    Admit::Starved => actor.adder_mut().flush()?,
                    Admit::Stopped => {
                        actor.adder_mut().cut()?;
                        break 'episodes;
                    }
                }
                let steps = shared.steps.load(Ordering::Relaxed);
                actor.set_epsilon(shared.epsilon(steps));
                actor.update();
                let action = actor.select_action(&obs)?;
                let step = match fault::check_step(env.step(&action), obs_dim) {
                    Ok(step) => step,
                    Err(f) => {
                        // What was lived before the fault is stored, cut as truncated.
                        actor.adder_mut().cut()?;
                        if fault(&mut backoff, f, "step", len) {
                            continue 'episodes;
                        }
                        break 'episodes;
                    }
                };
                if backoff.in_row() > 0 {
                    backoff.succeed();
                    shared.clear_faults(index);
                }
                for (s, &o) in obs_sum.iter_mut().zip(&step.obs) {
                    *s += f64::from(o.abs());
                }
                let steps = shared.steps.fetch_add(1, Ordering::Relaxed) + 1;
                ret += step.reward;
                len += 1;
                // `observe` also ends an episode at `replay.max_episode_steps`.
                let done = actor.observe(&action, &step)?;
                if done {
                    shared.episodes.fetch_add(1, Ordering::Relaxed);
                    for (m, s) in mean_abs_obs.iter_mut().zip(&obs_sum) {
                        *m = (s / len as f64) as f32;
                    }
                    shared.on_episode(started_at, steps, ret, &mean_abs_obs)?;
                    break;
                }
                obs = step.obs;
            }
        }
        Ok(())
    })();
    let _ = env.close();
    // Whatever ended the loop, what this actor lived reaches the file.
    let flushed = actor.adder_mut().flush();
    result.and(flushed)
}

/// Loads a learner from a checkpoint stem (the champion's, for a rollback).
type Reload = Box<dyn Fn(&Path) -> Result<Box<dyn Learner>> + Send>;

fn learner_loop(
    shared: Arc<Shared>,
    mut learner: Box<dyn Learner>,
    requests: Receiver<LearnerRequest>,
    gate: SyncSender<Candidate>,
    reload: Reload,
) -> Result<Box<dyn Learner>> {
    let (decay, final_ratio) = (
        shared.cfg.daemon.lr_decay_updates.max(1) as f64,
        f64::from(shared.cfg.dqn.lr_final_ratio),
    );
    let limiter = shared.limiter.clone();
    let (mut since_candidate, mut since_publish, mut starved) = (0u64, 0u64, false);
    let candidate_every = shared.cfg.daemon.candidate_every;
    let publish_every = shared.cfg.dqn.publish_every;
    loop {
        if shared.stopping() {
            return Ok(learner);
        }
        // Empty or disconnected (no reflection schedule) alike: no request to serve now.
        while let Ok(LearnerRequest::Reanalyse { batches, reply }) = requests.try_recv() {
            let _ = reply.send(learner.reanalyse(batches));
        }
        if shared.rollback.swap(false, Ordering::SeqCst) {
            let stem = lock(&shared.champion_checkpoint)
                .trim_end_matches(".safetensors")
                .to_string();
            learner = reload(&shared.run_dir.join(stem))?;
            since_candidate = 0;
        }
        if learner.ready() == starved {
            starved = !starved;
            limiter.set_starved(starved);
        }
        if starved {
            std::thread::sleep(Duration::from_millis(2));
            continue;
        }
        match limiter.update(Duration::from_millis(5)) {
            Some(true) => {}
            Some(false) => return Ok(learner),
            None => continue,
        }
        let u = shared.updates.load(Ordering::Relaxed);
        let since_reset = u.saturating_sub(shared.lr_reset_at.load(Ordering::Relaxed)) as f64;
        learner.set_lr_scale((1.0 - (1.0 - final_ratio) * (since_reset / decay).min(1.0)) as f32);
        learner.update()?;
        shared.updates.store(u + 1, Ordering::Relaxed);
        since_candidate += 1;
        since_publish += 1;
        if since_publish >= publish_every {
            since_publish = 0;
            if let Some(stats) = &shared.obs_stats {
                learner.set_obs_stats(&lock(stats).clone());
            }
            lock(&shared.board).learner = learner.metrics();
        }
        if since_candidate >= candidate_every && !shared.gate_busy.load(Ordering::SeqCst) {
            since_candidate = 0;
            shared.cut_candidate(learner.as_mut(), &gate)?;
        }
    }
}

fn gate_loop(
    shared: Arc<Shared>,
    candidates: Receiver<Candidate>,
    mut env: Box<dyn Env>,
) -> Result<()> {
    let r = (|| loop {
        let c = match candidates.recv_timeout(Duration::from_millis(100)) {
            Ok(c) => c,
            Err(RecvTimeoutError::Timeout) => {
                if shared.stopping() {
                    return Ok(());
                }
                continue;
            }
            Err(RecvTimeoutError::Disconnected) => return Ok(()),
        };
        if shared.stopping() {
            return Ok(());
        }
        let r = shared.judge(&c, env.as_mut());
        shared.gate_busy.store(false, Ordering::SeqCst);
        r?;
    })();
    let _ = env.close();
    r
}

/// Reports a panic of a blocking task as a failure, so the rest of the daemon stops instead of
/// waiting on a part that is gone.
struct FailOnPanic(Arc<Shared>, &'static str);

impl Drop for FailOnPanic {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.gate_busy.store(false, Ordering::SeqCst);
            self.0.fail(self.1, &AgentError::Panicked(self.1));
        }
    }
}

/// One reflection pass: reanalyse, then lessons.
fn reflection_pass(shared: &Shared, learner: &Sender<LearnerRequest>) -> Result<()> {
    let (tx, rx) = std::sync::mpsc::channel();
    let batches = shared.cfg.reflection.reanalyse_batches;
    if batches > 0
        && learner
            .send(LearnerRequest::Reanalyse { batches, reply: tx })
            .is_ok()
    {
        match rx.recv_timeout(Duration::from_secs(120)) {
            Ok(Ok(Some(r))) => {
                let version = shared.champion_version.load(Ordering::Relaxed);
                let before = r
                    .mean_priority_before
                    .map(|p| format!(" (their stored priorities averaged {p:.3})"))
                    .unwrap_or_default();
                let sentence = format!(
                    "reanalysed {} stored transitions with the learner's newest weights: mean \
                     |TD error| {:.3}{before}, mean value target {:.2}, mean Q {:.2}",
                    r.transitions, r.mean_abs_td, r.mean_target, r.mean_q
                );
                shared.reflect(
                    "reanalyse",
                    Some(version),
                    serde_json::json!({"steps": shared.steps.load(Ordering::Relaxed), "report": r}),
                    sentence,
                )?;
            }
            Ok(Ok(None)) | Err(_) => {}
            Ok(Err(e)) => return Err(e),
        }
    }
    if let Some((data, sentence)) = reflect::lessons(shared)? {
        let version = shared.champion_version.load(Ordering::Relaxed);
        shared.reflect("lessons", Some(version), data, sentence)?;
    }
    shared.retry_store("trim the reflections", |store| {
        store.trim_reflections(shared.cfg.reflection.keep_reflections)
    })?;
    Ok(())
}

/// A running daemon. [`Daemon::run_until_signal`] is how the binary uses it; tests drive it
/// with [`Daemon::status`], [`Daemon::submit_candidate`] and [`Daemon::shutdown`].
pub struct Daemon {
    /// `Some` until the daemon is shut down (or dropped).
    rt: Option<tokio::runtime::Runtime>,
    /// Kept so the learner's request channel never disconnects while the daemon lives.
    _learner_tx: Sender<LearnerRequest>,
    shared: Arc<Shared>,
    writer: Option<WriterHandle>,
    actors: Vec<tokio::task::JoinHandle<Result<()>>>,
    learner: Option<tokio::task::JoinHandle<Result<Box<dyn Learner>>>>,
    gate: Option<tokio::task::JoinHandle<Result<()>>>,
    gate_tx: SyncSender<Candidate>,
    http_addr: Option<SocketAddr>,
    http_stop: Option<tokio::sync::oneshot::Sender<()>>,
    http_task: Option<tokio::task::JoinHandle<()>>,
    reflect_task: Option<tokio::task::JoinHandle<()>>,
    _lock: RunLock,
}

impl Drop for Daemon {
    /// A daemon dropped without [`Daemon::shutdown`] (an early error, a panic) still stops its
    /// parts and never waits for ever on one stuck in an environment call.
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.shared.limiter.stop();
        if let Some(tx) = self.http_stop.take() {
            let _ = tx.send(());
        }
        if let Some(rt) = self.rt.take() {
            rt.shutdown_timeout(Duration::from_secs_f64(
                self.shared.cfg.daemon.shutdown_timeout_s,
            ));
        }
    }
}

impl Daemon {
    /// Starts (or resumes) the daemon in `opts.run_dir`: checks every environment can be made,
    /// opens the replay file, loads the champion, and starts actors, learner, gate,
    /// reflection schedule and HTTP endpoint. Errors here leave the run directory as it was.
    pub fn start(opts: DaemonOptions) -> Result<Daemon> {
        let DaemonOptions {
            config: cfg,
            run_dir,
            env_factory,
        } = opts;
        cfg.validate()?;
        if cfg.daemon.envs.is_empty() {
            return Err(AgentError::Config(
                "daemon.envs: no environment configured".into(),
            ));
        }
        let factory: EnvFactory =
            env_factory.unwrap_or_else(|| Arc::new(|id: &str| autodidact_envs::make(id)));
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("autodidact-rt")
            .enable_all()
            .build()
            .map_err(|e| AgentError::Io {
                path: PathBuf::from("<tokio runtime>"),
                source: e,
            })?;

        // Every environment first: an unreachable adapter is an error before anything is
        // written.
        let make = |i: usize, id: &str| {
            factory(id)
                .map_err(AgentError::from)
                .and_then(|env| {
                    fault::check_spaces(env.as_ref())?;
                    Ok(env)
                })
                .map_err(|e| {
                    AgentError::Config(format!(
                        "daemon.envs: cannot start environment `{id}` for {}: {e}",
                        if i == usize::MAX {
                            "the gate".to_string()
                        } else {
                            format!("actor {i}")
                        }
                    ))
                })
        };
        let mut envs = Vec::with_capacity(cfg.daemon.actors);
        for i in 0..cfg.daemon.actors {
            let id = &cfg.daemon.envs[i % cfg.daemon.envs.len()];
            envs.push(make(i, id)?);
        }
        let gate_env = make(usize::MAX, &cfg.daemon.envs[0])?;
        let obs_space = envs[0].observation_space().clone();
        let act_space = envs[0].action_space().clone();
        for (i, e) in envs.iter().enumerate().chain([(usize::MAX, &gate_env)]) {
            if e.observation_space() != &obs_space || e.action_space() != &act_space {
                return Err(AgentError::Config(format!(
                    "daemon.envs: environment of {} has other spaces than actor 0's; one \
                     daemon learns one kind of world",
                    if i == usize::MAX {
                        "the gate".into()
                    } else {
                        format!("actor {i}")
                    }
                )));
            }
        }
        let obs_dim = obs_space.flat_dim();
        let n_actions = match act_space {
            Space::Discrete { n } if n >= 1 => n as usize,
            other => {
                return Err(AgentError::Config(format!(
                    "the DQN learner needs a discrete action space; the environment has \
                     {other:?} (a continuous-action learner is planned)"
                )));
            }
        };
        let net_cfg = cfg
            .network
            .build(obs_dim, HeadConfig::DuelingQ { n_actions });
        net_cfg.validate()?;

        std::fs::create_dir_all(run_dir.join("checkpoints"))
            .map_err(AgentError::io(run_dir.join("checkpoints")))?;
        let run_lock = RunLock::acquire(&run_dir)?;
        let fresh = !run_dir.join(STATE_FILE).exists();
        if fresh {
            // Before the replay file: a crash in between must leave a directory that the next
            // start recognises as this daemon's, not as a `train` run.
            write_atomic(
                &run_dir.join(DAEMON_CONFIG_FILE),
                cfg.persisted().to_toml()?.as_bytes(),
            )?;
        }
        let store = ReplayStore::open(
            run_dir.join(REPLAY_FILE),
            StoreOptions {
                mirror: MirrorOptions {
                    capacity: cfg.replay.capacity,
                    alpha: if cfg.dqn.prioritized {
                        cfg.dqn.per_alpha
                    } else {
                        0.0
                    },
                },
                retention: Retention {
                    max_transitions: Some(cfg.replay.max_stored_transitions),
                    ..Retention::default()
                },
                durability: cfg.replay.durability.into(),
                ..StoreOptions::default()
            },
        )?;
        // The learner's own schedule never advances (its horizon is never reached): the
        // daemon sets the learning rate itself (`daemon.lr_decay_updates`), and β stays at
        // `dqn.per_beta0`.
        let planned = u64::MAX / 4;
        let precision = cfg.precision();
        let mut recovered = None;
        let (run, learner, champion_rel, champion_version, steps, episodes) = if fresh {
            let existing = store.snapshot()?.runs()?.into_iter().next();
            let run = match existing {
                // A crash between creating the run and the first state file.
                Some(r) => r,
                None => store.create_run(&RunSpec {
                    env_id: cfg.daemon.envs[0].clone(),
                    obs_dims: vec![obs_dim],
                    obs_dtype: Dtype::F32,
                    action_space: ActionSpace::Discrete {
                        n: n_actions as i64,
                    },
                    config: serde_json::json!({"daemon": cfg.persisted()}),
                    code_version: env!("CARGO_PKG_VERSION").into(),
                })?,
            };
            let learner = DqnLearner::new(
                cfg.dqn.clone(),
                net_cfg.clone(),
                store.sampler(),
                cfg.daemon.seed,
                planned,
                precision,
            )?;
            let next = store.latest_model()?.map_or(1, |m| m.version + 1);
            let stem = format!("checkpoints/v{next:05}-step{:010}", 0);
            let file = learner.save(&run_dir.join(&stem))?;
            let bytes = std::fs::read(&file).map_err(AgentError::io(&file))?;
            let model = store.register_model(&NewModel {
                parent: None,
                checkpoint_path: format!("{stem}.safetensors"),
                checksum: format!("crc32:{:08x}", crc32fast::hash(&bytes)),
                metrics: model_metrics(0, &learner.metrics()),
            })?;
            store.promote(model.version)?;
            let rel = format!("{stem}.safetensors");
            (run, Box::new(learner), rel, model.version, 0, 0)
        } else {
            let state = RunState::read(&run_dir)?;
            let run = store.run(state.replay_run_id)?;
            let champion = store.champion()?.ok_or_else(|| AgentError::RunDir {
                path: run_dir.join(REPLAY_FILE),
                reason: "the model registry has no champion".into(),
            })?;
            let (champion, recovery) = verified_champion(&store, &run_dir, champion)?;
            recovered = recovery;
            // The learner state of a graceful stop is newer than the champion; after a crash
            // there is none and the learner starts again from the champion.
            let learner_stem = state
                .learner_checkpoint
                .as_ref()
                .map(|s| inside_run_dir(&run_dir, s))
                .transpose()?
                .filter(|s| with_suffix(s, ".safetensors").exists());
            let learner_stem = match learner_stem {
                Some(stem) => stem,
                None => inside_run_dir(
                    &run_dir,
                    champion.checkpoint_path.trim_end_matches(".safetensors"),
                )?,
            };
            let learner = DqnLearner::load(
                cfg.dqn.clone(),
                &learner_stem,
                store.sampler(),
                cfg.daemon.seed,
                planned,
                precision,
            )?;
            if learner.network().config() != &net_cfg {
                return Err(AgentError::RunDir {
                    path: learner_stem,
                    reason: "the checkpoint's network differs from the configured one".into(),
                });
            }
            let summary = store.summary()?;
            let (steps, episodes) = summary
                .runs
                .iter()
                .find(|r| r.run_id == run.id)
                .map_or((0, 0), |r| {
                    (r.transitions_total as u64, r.episodes_total as u64)
                });
            (
                run,
                Box::new(learner),
                champion.checkpoint_path.clone(),
                champion.version,
                steps,
                episodes,
            )
        };
        let champion_net = load_checkpoint(&inside_run_dir(&run_dir, &champion_rel)?)?.network;
        let champion = Arc::new(VariableSource::new(Snapshot::from_network(
            &champion_net,
            precision,
        )?));
        let obs_stats = cfg.network.normalize_obs.then(|| {
            Arc::new(Mutex::new(learner.obs_stats().unwrap_or_else(|| {
                ObsNormalizer::new(obs_dim, true, cfg.network.obs_clip)
            })))
        });
        let updates = learner.metrics().updates;
        // Steps taken after the champion was saved earned no updates yet; forgive them, so a
        // restarted daemon acts at once instead of waiting for the learner to catch up.
        let limiter = Arc::new(RateLimiter::new(
            cfg.dqn.replay_ratio,
            cfg.dqn.learning_starts,
            cfg.daemon.max_lead_steps,
            steps,
            updates.max(
                ((steps.saturating_sub(cfg.dqn.learning_starts)) as f64 * cfg.dqn.replay_ratio)
                    as u64,
            ),
        ));
        let latest = store.latest_model()?.map_or(0, |m| m.version);
        let pending: Vec<i64> = store
            .models()?
            .into_iter()
            // A demoted champion is a candidate again (the registry keeps one champion), but
            // it was judged; an undecided candidate is newer than the champion.
            .filter(|m| m.status == ModelStatus::Candidate && m.version > champion_version)
            .map(|m| m.version)
            .collect();
        let sampler = store.sampler();
        let writer = store.start_writer(WriterOptions::default())?;
        let board = Board {
            latest_version: latest,
            learner: learner.metrics(),
            ..Board::default()
        };
        let shared = Arc::new(Shared {
            run_dir: run_dir.clone(),
            started: Instant::now(),
            start_steps: steps,
            stop: AtomicBool::new(false),
            acting: AtomicBool::new(false),
            failure: Mutex::new(None),
            done: tokio::sync::Notify::new(),
            steps: AtomicU64::new(steps),
            episodes: AtomicU64::new(episodes),
            episode_seq: AtomicU64::new(episodes),
            updates: AtomicU64::new(updates),
            champion,
            champion_version: AtomicI64::new(champion_version),
            champion_checkpoint: Mutex::new(champion_rel),
            obs_stats: obs_stats.clone(),
            board: Mutex::new(board),
            store: Mutex::new(store),
            writer: writer.writer(),
            registering: Mutex::new(()),
            sampler,
            limiter,
            gate_busy: AtomicBool::new(false),
            boosted_at: AtomicU64::new(u64::MAX),
            lr_reset_at: AtomicU64::new(0),
            rejections_in_row: AtomicU64::new(0),
            rollback: AtomicBool::new(false),
            best_level: Mutex::new(None),
            prune_floor: AtomicI64::new(1),
            demoted: AtomicI64::new(0),
            detectors: Mutex::new(Detectors {
                returns: ReturnDrop::new(cfg.drift.returns),
                obs: ObsDrift::new(obs_dim, cfg.drift.observations),
            }),
            faults: Mutex::new(FaultBoard::new(cfg.daemon.actors)),
            obs_dim,
            run_id: run.id,
            cfg,
        });
        if let Some((data, sentence)) = recovered {
            shared.reflect("recovery", Some(champion_version), data, sentence)?;
        }
        for v in pending {
            lock(&shared.store).reject(v)?;
            shared.reflect(
                "gate",
                Some(v),
                serde_json::json!({"candidate": v, "interrupted": true}),
                format!("candidate v{v} rejected: the daemon stopped before the gate judged it"),
            )?;
        }
        // From here on a crash resumes from the champion, never from an older learner state.
        shared.write_state(None)?;
        let cfg = &shared.cfg;

        let (gate_tx, gate_rx) = std::sync::mpsc::sync_channel::<Candidate>(1);
        let (learner_tx, learner_rx) = std::sync::mpsc::channel();
        let pool = learner_pool(cfg.daemon.learner_threads)?;
        let reload: Reload = {
            let (dqn, sampler, seed) = (cfg.dqn.clone(), shared.sampler.clone(), cfg.daemon.seed);
            Box::new(move |stem: &Path| {
                let l =
                    DqnLearner::load(dqn.clone(), stem, sampler.clone(), seed, planned, precision)?;
                Ok(Box::new(l) as Box<dyn Learner>)
            })
        };
        let learner_task = {
            let (s, tx) = (shared.clone(), gate_tx.clone());
            rt.spawn_blocking(move || {
                let _guard = FailOnPanic(s.clone(), "learner");
                let r = pool.install(|| learner_loop(s.clone(), learner, learner_rx, tx, reload));
                if let Err(e) = &r {
                    s.fail("the learner", e);
                }
                r
            })
        };
        let gate_task = {
            let s = shared.clone();
            rt.spawn_blocking(move || {
                let _guard = FailOnPanic(s.clone(), "gate");
                let r = gate_loop(s.clone(), gate_rx, gate_env);
                if let Err(e) = &r {
                    s.fail("the gate", e);
                }
                r
            })
        };
        let mut actors = Vec::new();
        for (i, env) in envs.into_iter().enumerate() {
            let adder = ReplayAdder::new(writer.writer(), run.clone(), false)
                .with_max_episode_steps(cfg.replay.episode_cap());
            let actor = EpsilonGreedyActor::new(
                shared.champion.clone(),
                adder,
                n_actions,
                episode_seed(cfg.daemon.seed, ACTOR_STREAM + i as u64, episodes),
                obs_stats.clone(),
            );
            let s = shared.clone();
            actors.push(rt.spawn_blocking(move || {
                let _guard = FailOnPanic(s.clone(), "actor");
                let r = actor_loop(s.clone(), i, env, actor);
                if let Err(e) = &r {
                    s.fail(&format!("actor {i}"), e);
                }
                r
            }));
        }
        shared.acting.store(true, Ordering::SeqCst);

        let keep_learner_tx = learner_tx.clone();
        let reflect_task = (cfg.reflection.every_s > 0.0).then(|| {
            let s = shared.clone();
            let every = Duration::from_secs_f64(cfg.reflection.every_s);
            rt.spawn(async move {
                let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    if s.stopping() {
                        return;
                    }
                    let (s2, tx) = (s.clone(), learner_tx.clone());
                    // A failed pass is logged, not fatal: acting and learning do not need it.
                    match tokio::task::spawn_blocking(move || reflection_pass(&s2, &tx)).await {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => tracing::warn!(error = %e, "a reflection pass failed"),
                        Err(e) => tracing::error!(error = %e, "a reflection pass panicked"),
                    }
                }
            })
        });

        let mut daemon = Daemon {
            rt: Some(rt),
            _learner_tx: keep_learner_tx,
            shared,
            writer: Some(writer),
            actors,
            learner: Some(learner_task),
            gate: Some(gate_task),
            gate_tx,
            http_addr: None,
            http_stop: None,
            http_task: None,
            reflect_task,
            _lock: run_lock,
        };
        if daemon.shared.cfg.http.enabled {
            if let Err(e) = daemon.start_http() {
                let _ = daemon.shutdown();
                return Err(e);
            }
        }
        tracing::info!(
            run_dir = %run_dir.display(),
            envs = ?daemon.shared.cfg.daemon.envs,
            actors = daemon.shared.cfg.daemon.actors,
            champion = champion_version,
            steps,
            resumed = !fresh,
            "daemon started"
        );
        Ok(daemon)
    }

    fn start_http(&mut self) -> Result<()> {
        http::check_fd_budget(&self.shared.cfg.http)?;
        let bind = self.shared.cfg.http.bind.clone();
        let rt = self.rt.as_ref().ok_or(AgentError::Panicked("runtime"))?;
        let listener = rt
            .block_on(tokio::net::TcpListener::bind(&bind))
            .map_err(|e| {
                AgentError::Config(format!(
                    "http.bind: cannot listen on {bind}: {e} (pass --http 127.0.0.1:PORT with a \
                     free port, or 127.0.0.1:0 for any)"
                ))
            })?;
        let addr = listener.local_addr().map_err(AgentError::io(&bind))?;
        write_atomic(
            &self.shared.run_dir.join(HTTP_ADDR_FILE),
            format!("{addr}\n").as_bytes(),
        )?;
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let (s, token) = (self.shared.clone(), self.shared.cfg.http_token());
        self.http_task = Some(rt.spawn(async move {
            let stop = async move {
                let _ = rx.await;
            };
            if let Err(e) = http::serve(listener, s, token, stop).await {
                tracing::error!(error = %e, "the HTTP endpoint failed");
            }
        }));
        self.http_stop = Some(tx);
        self.http_addr = Some(addr);
        tracing::info!(%addr, "serving /healthz, /status and /metrics");
        Ok(())
    }

    /// The address the HTTP endpoint listens on.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http_addr
    }

    /// The current status.
    pub fn status(&self) -> Result<Status> {
        self.shared.status()
    }

    /// The first failure of a part of the daemon, if any (the daemon stops on it).
    pub fn failure(&self) -> Option<String> {
        lock(&self.shared.failure).clone()
    }

    /// Sends an outside checkpoint through the gate as a candidate, as if the learner had
    /// cut it (a model trained elsewhere, or a deliberately broken one in a test). It is
    /// copied into the run directory and registered first; returns its version. Waits while
    /// the gate judges an earlier candidate.
    pub fn submit_candidate(&self, checkpoint: &Path, loss: f32) -> Result<i64> {
        let registering = lock(&self.shared.registering);
        let next = self
            .shared
            .retry_store("read the registry", |store| store.latest_model())?
            .map_or(1, |m| m.version + 1);
        let stem = format!("checkpoints/v{next:05}-submitted");
        let dest = self.shared.run_dir.join(format!("{stem}.safetensors"));
        match load_checkpoint(checkpoint) {
            // Saved again in the learner's layout (a target network, fresh optimizer and
            // counters), so that if it becomes champion a rollback or a restart can learn on
            // from it like from any other.
            Ok(loaded) => {
                let extra = std::collections::BTreeMap::from([
                    ("learner".to_string(), "dqn".to_string()),
                    ("dqn_updates".to_string(), "0".to_string()),
                    ("dqn_rng_word_pos".to_string(), "0".to_string()),
                ]);
                let target = self
                    .shared
                    .run_dir
                    .join(format!("{stem}.target.safetensors"));
                autodidact_core::save_checkpoint(
                    &target,
                    &loaded.network,
                    None,
                    &Default::default(),
                )?;
                autodidact_core::save_checkpoint(&dest, &loaded.network, None, &extra)?;
            }
            // Unreadable: the gate rejects it outright, saying why.
            Err(_) => {
                std::fs::copy(checkpoint, &dest).map_err(AgentError::io(checkpoint))?;
            }
        }
        let version = self.shared.register_candidate(
            &stem,
            serde_json::json!({"submitted_from": checkpoint.display().to_string(), "loss": loss}),
        )?;
        drop(registering);
        self.shared.gate_busy.store(true, Ordering::SeqCst);
        self.gate_tx
            .send(Candidate {
                version,
                checkpoint: format!("{stem}.safetensors"),
                loss,
            })
            .map_err(|_| AgentError::Panicked("gate"))?;
        Ok(version)
    }

    /// Runs until SIGTERM or SIGINT (or `daemon.max_steps`, or a failure), then stops
    /// gracefully. A failure is returned as the error after the graceful stop.
    pub fn run_until_signal(self) -> Result<DaemonReport> {
        let shared = self.shared.clone();
        let rt = self.rt.as_ref().ok_or(AgentError::Panicked("runtime"))?;
        let waited: Result<()> = rt.block_on(async move {
            use tokio::signal::unix::{SignalKind, signal};
            let sig = |k| {
                signal(k).map_err(|e| AgentError::Io {
                    path: PathBuf::from("<signal handler>"),
                    source: e,
                })
            };
            let (mut term, mut int) =
                (sig(SignalKind::terminate())?, sig(SignalKind::interrupt())?);
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM: stopping"),
                _ = int.recv() => tracing::info!("SIGINT: stopping"),
                _ = shared.done.notified() => {}
            }
            // A second signal while stopping means "now": what is committed is safe.
            tokio::spawn(async move {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
                eprintln!("signalled twice: exiting without waiting for the graceful stop");
                std::process::exit(130);
            });
            Ok(())
        });
        waited?;
        self.shutdown()
    }

    /// Stops gracefully: actors store their episodes in progress (as truncated), the replay is
    /// flushed, the learner saved, `state.json` written. Bounded by
    /// `daemon.shutdown_timeout_s`.
    pub fn shutdown(mut self) -> Result<DaemonReport> {
        let t0 = Instant::now();
        let shared = self.shared.clone();
        let deadline = Duration::from_secs_f64(shared.cfg.daemon.shutdown_timeout_s);
        shared.stop.store(true, Ordering::SeqCst);
        shared.limiter.stop();
        let actors = std::mem::take(&mut self.actors);
        let (learner, gate) = (self.learner.take(), self.gate.take());
        let rt = self.rt.take().ok_or(AgentError::Panicked("runtime"))?;
        let joined = rt.block_on(async {
            tokio::time::timeout(deadline, async {
                let mut first_err = None;
                for a in actors {
                    if let Ok(Err(e)) | Err(e) = a.await.map_err(|_| AgentError::Panicked("actor"))
                    {
                        first_err.get_or_insert(e);
                    }
                }
                let learner = match learner {
                    Some(h) => h.await.map_err(|_| AgentError::Panicked("learner"))?,
                    None => Err(AgentError::Panicked("learner")),
                };
                if let Some(g) = gate {
                    let _ = g.await;
                }
                match first_err {
                    Some(e) => Err(e),
                    None => learner,
                }
            })
            .await
        });
        shared.acting.store(false, Ordering::SeqCst);
        let mut result: Result<()> = Ok(());
        let learner_ck = match joined {
            Err(_) => {
                result = Err(AgentError::Config(format!(
                    "the graceful stop took longer than daemon.shutdown_timeout_s ({} s); \
                     committed data is safe, the next start resumes from the champion",
                    shared.cfg.daemon.shutdown_timeout_s
                )));
                None
            }
            Ok(Err(e)) => {
                result = Err(e);
                None
            }
            Ok(Ok(mut learner)) => {
                if let Some(stats) = &shared.obs_stats {
                    learner.set_obs_stats(&lock(stats).clone());
                }
                lock(&shared.board).learner = learner.metrics();
                match learner.save(&shared.run_dir.join(LEARNER_STEM)) {
                    Ok(_) => Some(LEARNER_STEM.to_string()),
                    Err(e) => {
                        // Not fatal: the next start resumes the learner from the champion.
                        tracing::warn!(error = %e, "cannot save the learner state");
                        None
                    }
                }
            }
        };
        if let Some(w) = self.writer.take() {
            if let Err(e) = w.close() {
                result = result.and(Err(e.into()));
            }
        }
        if let Err(e) = shared.write_state(learner_ck) {
            result = result.and(Err(e));
        }
        if let Some(tx) = self.http_stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.reflect_task.take() {
            t.abort();
        }
        if let Some(t) = self.http_task.take() {
            let _ = rt.block_on(async { tokio::time::timeout(Duration::from_secs(2), t).await });
        }
        // A blocking task stuck in an environment call would hold a plain runtime drop for
        // ever: wait only for what is left of the bound.
        rt.shutdown_timeout(
            deadline
                .saturating_sub(t0.elapsed())
                .max(Duration::from_millis(100)),
        );
        let _ = std::fs::remove_file(shared.run_dir.join(HTTP_ADDR_FILE));
        let status = shared.status()?;
        if let Some(f) = lock(&shared.failure).clone() {
            result = result.and(Err(AgentError::Config(f)));
        }
        let report = DaemonReport {
            status,
            shutdown_s: t0.elapsed().as_secs_f64(),
        };
        tracing::info!(
            steps = report.status.steps,
            champion = report.status.champion.version,
            shutdown_s = report.shutdown_s,
            "daemon stopped"
        );
        result.map(|()| report)
    }
}
