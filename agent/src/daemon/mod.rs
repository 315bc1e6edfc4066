//! The self-learning daemon: how autodidact lives for days against a world that changes.
//!
//! ```text
//!              ┌──────── champion (VariableSource) ◄──────── gate ◄── candidate ───┐
//!              ▼                                               │                    │
//!   actor 0..N (env, policy)   ── episodes ──► writer ──► replay.sqlite ──► learner ┘
//!              │                                               ▲                    ▲
//!              └── returns, obs ──► drift detectors            └──── reflection ────┘
//!                                   (exploration boost)        (reanalyse, lessons)
//! ```
//!
//! One tokio runtime hosts everything. The blocking work — N actors each owning an
//! environment, the learner (in its own rayon pool), the gate (with an environment of its
//! own) — runs on the runtime's blocking threads; the HTTP endpoint, the reflection schedule
//! and signal handling are async tasks.
//!
//! **Actors act with the learner, the gate guards.** Actors act with the learner's newest
//! weights (`daemon.act_with`), as `train`'s do: a champion that changes only when a candidate
//! passes lags the learner by thousands of steps, and the learner's own data then lacks what
//! it just learned. While the gate finds the learner's last candidate clearly worse than the
//! champion (by `gate.max_worse_se` standard errors beyond the margin, or broken outright),
//! the champion acts instead, until the next promotion. With `act_with = "champion"` only
//! promoted models act. The learner trains continuously and every
//! `daemon.candidate_every` updates cuts a candidate: a checkpoint registered as a model version
//! (status `candidate`, parent: the champion). The gate plays the candidate and the champion
//! on the same fresh episodes without exploration and promotes the candidate only if it is not
//! worse by the configured margin (a paired one-sided non-inferiority t-test, see
//! [`crate::gate`]); NaN weights or a diverged loss reject it outright. Every decision is a
//! `gate` reflection. The champion is what the run stands behind: what a restart resumes from,
//! what `eval` and apps use; the learner goes on training and cuts the next candidate.
//!
//! **Reflection.** Besides the gate: `drift` reflections when Page-Hinkley detectors see the
//! return fall or the observation statistics move ([`crate::drift`]); on a fall in return the
//! daemon raises plasticity by raising exploration — the learner kind's exploration level
//! (ε for DQN, the share of uniformly random actions for SAC) jumps to `drift.boost_epsilon` and
//! decays linearly over `drift.boost_steps` — so the learner sees what the changed world does
//! off the champion's now-wrong path; the replay window restarts from the changed world's
//! episodes and the learner resets its value head (`drift.restart_replay`, `drift.reset_head`;
//! see [`crate::runtime::changes`]). Every `reflection.every_s` seconds a pass runs a
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

mod acting;
mod changes;
mod checkpoints;
pub mod config;
mod gate;
mod http;
mod learning;
mod recall;
mod reflect;
mod shared;
mod start;
pub mod status;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Sender, SyncSender};
use std::time::{Duration, Instant};

use autodidact_core::load_checkpoint;
use autodidact_envs::Env;
use autodidact_replay::WriterHandle;

pub use config::DaemonConfig;
pub use status::{ReflectionLine, Status};

use crate::error::{AgentError, Result};
use crate::learner::Learner;
use crate::runtime::{REPLAY_FILE, STATE_FILE, check_stored_command, write_atomic};

/// The resolved configuration in a daemon's run directory.
pub const DAEMON_CONFIG_FILE: &str = "daemon.toml";
/// Where the daemon writes the address its HTTP endpoint is bound to.
pub const HTTP_ADDR_FILE: &str = "http.addr";
/// Stem of the learner state saved at a graceful stop.
const LEARNER_STEM: &str = "checkpoints/learner";

const TRAIN_STREAM: u64 = 11;
const GATE_STREAM: u64 = 12;
const ACTOR_STREAM: u64 = 13;
/// Seeds of the episodes a remembered champion plays when the gate tries to recall it.
const RECALL_STREAM: u64 = 14;
/// The daemon's learner never reaches the end of its schedule: the daemon sets the learning
/// rate itself (`daemon.lr_decay_updates`), and prioritized replay's β stays at its start.
const ENDLESS_PLAN: u64 = u64::MAX / 4;

use acting::actor_loop;
use gate::gate_loop;
use learning::LearnerRequest;
use shared::{Shared, lock};

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
            &self.shared.dir.path.join(HTTP_ADDR_FILE),
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
        let dest = self.shared.dir.path.join(format!("{stem}.safetensors"));
        // Saved again in the learner's layout (fresh optimiser state and counters), so that if
        // it becomes champion a rollback or a restart can learn on from it like from any other.
        // Unreadable, or not a network this learner can take: copied as it is, and the gate
        // rejects it outright, saying why.
        let adopted = load_checkpoint(checkpoint)
            .map_err(AgentError::from)
            .and_then(|loaded| {
                self.shared
                    .dir
                    .kind
                    .adopt(&loaded.network, &self.shared.dir.path.join(&stem))
            });
        if let Err(e) = adopted {
            tracing::warn!(error = %e, "the submitted checkpoint goes to the gate as it is");
            std::fs::copy(checkpoint, &dest).map_err(AgentError::io(checkpoint))?;
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
        // The gate has ended (unless the stop timed out): a candidate cut while it was
        // stopping is rejected now, so a graceful stop leaves nothing undecided.
        if joined.is_ok() {
            if let Err(e) = shared.reject_unjudged() {
                result = Err(e);
            }
        }
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
                match learner.save(&shared.dir.path.join(LEARNER_STEM)) {
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
        let _ = std::fs::remove_file(shared.dir.path.join(HTTP_ADDR_FILE));
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
