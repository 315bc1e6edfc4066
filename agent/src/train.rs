//! The training loop: one environment, one actor, one learner, one replay file, joined into a
//! run directory that can be stopped at any moment and resumed.
//!
//! ```text
//! <run-dir>/config.toml          the fully resolved configuration
//! <run-dir>/state.json           counters and the latest checkpoint (written atomically)
//! <run-dir>/replay.sqlite        every transition lived, the model registry
//! <run-dir>/checkpoints/vV-stepN.safetensors         online network + optimizer (version V)
//! <run-dir>/checkpoints/vV-stepN.target.safetensors  target network
//! <run-dir>/lock                 flock'ed while a process trains the run
//! ```
//!
//! Every checkpoint registers a model version (parent: the previous one) and promotes it to
//! champion: `train` has no evaluation gate, the daemon adds one. Episodes record the
//! version that was champion when they started.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, Sender, TryRecvError, channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use autodidact_core::{HeadConfig, NetworkConfig, ObsNormalizer, Snapshot};
use autodidact_envs::{Env, Space};
use autodidact_replay::{
    ActionSpace, Dtype, MirrorOptions, NewModel, ReplayStore, Retention, Run, RunSpec,
    StoreOptions, WriterHandle, WriterOptions,
};
use serde::{Deserialize, Serialize};

use crate::actor::{Actor, EpsilonGreedyActor};
use crate::adder::{Adder, ReplayAdder};
use crate::config::{Mode, TrainConfig};
use crate::dqn::{DqnLearner, with_suffix};
use crate::error::{AgentError, Result};
use crate::eval::{EvalReport, evaluate_capped};
use crate::fault::{Backoff, Fault, check_observation, check_step};
use crate::learner::{Learner, LearnerMetrics};
use crate::rate::{Admit, RateLimiter};
use crate::variable::VariableSource;

/// Name of the counters file in a run directory.
pub const STATE_FILE: &str = "state.json";
/// Name of the resolved configuration in a run directory.
pub const CONFIG_FILE: &str = "config.toml";
/// Name of the replay file in a run directory.
pub const REPLAY_FILE: &str = "replay.sqlite";

/// Counters and pointers of a run, rewritten atomically at every checkpoint.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunState {
    /// File format version.
    pub format: u32,
    /// Environment ID.
    pub env_id: String,
    /// The run's id in the replay store.
    pub replay_run_id: i64,
    /// Environment steps taken (all of them stored).
    pub steps: u64,
    /// Episodes finished.
    pub episodes: u64,
    /// Gradient updates taken.
    pub updates: u64,
    /// The newest model version (registered in the replay store).
    pub model_version: i64,
    /// Checkpoint stem of that version, relative to the run directory.
    pub checkpoint: String,
    /// Position of the actor's exploration stream (a u128 as a string).
    pub actor_rng_word_pos: String,
    /// The daemon's learner state saved at a graceful stop (relative stem), newer than the
    /// champion; cleared when the daemon starts again, so a crash never resumes from it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub learner_checkpoint: Option<String>,
}

impl RunState {
    /// Reads `<run_dir>/state.json`.
    pub fn read(run_dir: &Path) -> Result<RunState> {
        let path = run_dir.join(STATE_FILE);
        let text = std::fs::read_to_string(&path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                AgentError::RunDir {
                    path: path.clone(),
                    reason: "not found: is this a run directory made by `autodidact train`?".into(),
                }
            } else {
                AgentError::Io {
                    path: path.clone(),
                    source: e,
                }
            }
        })?;
        serde_json::from_str(&text).map_err(|e| AgentError::RunDir {
            path,
            reason: format!("malformed: {e}"),
        })
    }

    pub(crate) fn write(&self, run_dir: &Path) -> Result<()> {
        let text = serde_json::to_string_pretty(self).map_err(|e| AgentError::RunDir {
            path: run_dir.join(STATE_FILE),
            reason: e.to_string(),
        })?;
        write_atomic(&run_dir.join(STATE_FILE), text.as_bytes())
    }
}

/// An exclusive advisory lock on `<run-dir>/lock`, held for a whole training session, so two
/// processes never write one run (both would append episodes and race on the state file). The
/// kernel drops it when the process dies, even by `kill -9`, so it never goes stale.
pub(crate) struct RunLock {
    /// Holding the open file is holding the lock.
    _file: std::fs::File,
}

impl RunLock {
    pub(crate) fn acquire(run_dir: &Path) -> Result<RunLock> {
        use std::os::fd::AsRawFd;
        let path = run_dir.join("lock");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(AgentError::io(&path))?;
        // SAFETY: flock on a descriptor this function owns for the File's lifetime; it reads
        // and writes no memory.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc != 0 {
            return Err(AgentError::RunDir {
                path: run_dir.to_path_buf(),
                reason: "another autodidact process is using this run directory".into(),
            });
        }
        Ok(RunLock { _file: file })
    }
}

/// Writes a file by writing a temporary sibling, syncing it and renaming it over the target,
/// then syncing the directory, so a crash or a power loss leaves either the old or the new
/// contents (without the directory sync, the rename itself may be lost on power loss).
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let tmp = with_suffix(path, ".tmp");
    let mut f = std::fs::File::create(&tmp).map_err(AgentError::io(&tmp))?;
    f.write_all(bytes).map_err(AgentError::io(&tmp))?;
    f.sync_all().map_err(AgentError::io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(AgentError::io(path))?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(AgentError::io(dir))
}

/// Joins a path read from a run directory's own files (the registry's `checkpoint_path`,
/// `state.json`'s checkpoint stems) onto the directory, refusing any that could reach outside
/// it: an absolute path, `..`, a root or a prefix. Those files may come from someone else, and
/// the daemon deletes old checkpoints by these paths.
pub(crate) fn inside_run_dir(run_dir: &Path, rel: &str) -> Result<PathBuf> {
    use std::path::Component;
    let p = Path::new(rel);
    let plain = p
        .components()
        .all(|c| matches!(c, Component::Normal(_) | Component::CurDir));
    if rel.is_empty() || !plain || p.components().next().is_none() {
        return Err(AgentError::RunDir {
            path: run_dir.to_path_buf(),
            reason: format!(
                "refers to `{rel}`, which is not a plain path inside the run directory (absolute \
                 or with `..`): the file was crafted or damaged"
            ),
        });
    }
    Ok(run_dir.join(p))
}

/// Refuses to run a command that a run directory's own files ask for, unless the user said
/// so (`consent`). A run directory may come from someone else, and `exec:<command>` runs a
/// program, as does `gym:<module>:<Env>` (Gymnasium imports the module). Every other ID is
/// data, not a command.
pub fn check_stored_command(env_id: &str, stored_in: &Path, consent: bool) -> Result<()> {
    let id = env_id.trim();
    let runs_code = id.starts_with("exec:")
        || id
            .strip_prefix("gym:")
            .is_some_and(|gym_id| gym_id.contains(':'));
    if !runs_code || consent {
        return Ok(());
    }
    Err(AgentError::StoredCommand {
        file: stored_in.to_path_buf(),
        env_id: id.to_string(),
    })
}

/// A run about to start or continue.
#[derive(Debug, Clone)]
pub struct RunSetup {
    /// Environment ID.
    pub env_id: String,
    /// Resolved configuration.
    pub config: TrainConfig,
    /// Run directory.
    pub run_dir: PathBuf,
    /// Counters to continue from (`None` for a fresh run).
    pub resume: Option<RunState>,
}

impl RunSetup {
    /// A fresh run in `run_dir`, which must not hold a run already.
    pub fn fresh(env_id: &str, config: TrainConfig, run_dir: &Path) -> Result<RunSetup> {
        config.validate()?;
        for f in [STATE_FILE, REPLAY_FILE] {
            if run_dir.join(f).exists() {
                return Err(AgentError::RunDir {
                    path: run_dir.to_path_buf(),
                    reason: format!(
                        "already holds a run ({f} exists): continue it with `autodidact train \
                         --resume {}` or choose another --run-dir",
                        run_dir.display()
                    ),
                });
            }
        }
        Ok(RunSetup {
            env_id: env_id.to_string(),
            config,
            run_dir: run_dir.to_path_buf(),
            resume: None,
        })
    }

    /// Continues the run in `run_dir` with its saved configuration plus `overrides`
    /// (`key=value`) and, if given, a new total step budget. A run whose environment is a
    /// command (`exec:…`) is refused unless `allow_command` (see [`check_stored_command`]).
    pub fn resume(
        run_dir: &Path,
        steps: Option<u64>,
        overrides: &[String],
        allow_command: bool,
    ) -> Result<RunSetup> {
        let state = RunState::read(run_dir)?;
        check_stored_command(&state.env_id, &run_dir.join(STATE_FILE), allow_command)?;
        let mut config = TrainConfig::load(Some(&run_dir.join(CONFIG_FILE)), overrides)?;
        if let Some(s) = steps {
            config.run.steps = s;
        }
        config.validate()?;
        Ok(RunSetup {
            env_id: state.env_id.clone(),
            config,
            run_dir: run_dir.to_path_buf(),
            resume: Some(state),
        })
    }

    /// A run directory name under `runs/` not used yet: `runs/<env>-<n>`.
    pub fn default_run_dir(env_id: &str) -> PathBuf {
        let name: String = env_id
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .take(40)
            .collect();
        let mut n = 1;
        loop {
            let dir = PathBuf::from("runs").join(format!("{name}-{n}"));
            if !dir.exists() {
                return dir;
            }
            n += 1;
        }
    }
}

/// One periodic evaluation during training.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct EvalPoint {
    /// Environment steps when it ran.
    pub steps: u64,
    /// Training seconds until then (evaluations excluded).
    pub train_secs: f64,
    /// Mean greedy return.
    pub mean: f64,
    /// Its standard deviation.
    pub std: f64,
}

/// What a training run did.
#[derive(Clone, Debug, Serialize)]
pub struct TrainReport {
    /// Environment ID.
    pub env_id: String,
    /// Run directory.
    pub run_dir: PathBuf,
    /// Environment steps over the whole run (including before a resume).
    pub steps: u64,
    /// Steps taken in this invocation.
    pub steps_this_session: u64,
    /// Episodes finished over the whole run.
    pub episodes: u64,
    /// Gradient updates over the whole run.
    pub updates: u64,
    /// Wall-clock seconds of this invocation, evaluations excluded.
    pub train_secs: f64,
    /// Seconds spent in periodic evaluations.
    pub eval_secs: f64,
    /// Environment steps per training second in this invocation.
    pub steps_per_s: f64,
    /// Configured updates per environment step.
    pub replay_ratio_target: f64,
    /// Measured updates per environment step after `learning_starts`.
    pub replay_ratio: f64,
    /// Mean return of the last 20 training episodes.
    pub recent_return: Option<f64>,
    /// Periodic evaluations.
    pub evals: Vec<EvalPoint>,
    /// The evaluation at the end.
    pub final_eval: Option<EvalReport>,
    /// The model version actors act with at the end.
    pub model_version: i64,
    /// Checkpoint of that version.
    pub checkpoint: PathBuf,
    /// Whether the run stopped on request (Ctrl-C) before its budget.
    pub interrupted: bool,
    /// Learner metrics at the end.
    pub learner: LearnerMetrics,
}

/// Live figures for a progress display, sampled by the caller's callback.
#[derive(Clone, Debug, Default)]
pub struct Progress {
    /// Steps so far (whole run).
    pub steps: u64,
    /// Step budget.
    pub total_steps: u64,
    /// Mean return of recent training episodes.
    pub recent_return: Option<f64>,
    /// Current ε.
    pub epsilon: f32,
    /// Learner metrics.
    pub learner: LearnerMetrics,
    /// Current model version.
    pub model_version: i64,
}

/// Caller hooks: how to show progress and when to stop.
pub struct Hooks<'a> {
    /// Set from outside (Ctrl-C) to stop after the current step; the run stays resumable.
    pub stop: Arc<AtomicBool>,
    /// Called about five times a second.
    pub on_progress: &'a mut dyn FnMut(&Progress),
    /// Called after each periodic evaluation.
    pub on_eval: &'a mut dyn FnMut(&EvalPoint),
}

/// Seed of episode `i` of a stream: distinct streams for training and evaluation episodes.
pub(crate) fn episode_seed(seed: u64, stream: u64, i: u64) -> u64 {
    // splitmix64 of (seed, stream) as the base, so nearby seeds give unrelated episodes.
    let mut z = seed ^ stream.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    // Halve the base (seeds stay below 2^63, which every Gymnasium accepts) before adding
    // the index, so consecutive episodes never share a seed.
    ((z ^ (z >> 31)) >> 1).wrapping_add(i) & (u64::MAX >> 1)
}
const TRAIN_EPISODES: u64 = 1;
/// Environment faults in a row (failed steps or resets, no good step between) after which
/// `train` gives up: a bounded run has no one to wait for, unlike the daemon.
const TRAIN_FAULTS_IN_ROW: u32 = 10;
const EVAL_EPISODES: u64 = 2;
const FINAL_EVAL_EPISODES: u64 = 3;

/// The network a DQN learner trains for this environment.
pub fn network_config(config: &TrainConfig, obs_dim: usize, n_actions: usize) -> NetworkConfig {
    config
        .network
        .build(obs_dim, HeadConfig::DuelingQ { n_actions })
}

/// The learner's own rayon pool, so its parallel kernels never queue behind (or steal the
/// core of) the actor.
pub(crate) fn learner_pool(threads: usize) -> Result<rayon::ThreadPool> {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .thread_name(|i| format!("learner-{i}"))
        .build()
        .map_err(|e| AgentError::Config(format!("run.learner_threads: cannot start the pool: {e}")))
}

enum Request {
    Save {
        stem: PathBuf,
        reply: Sender<Result<(PathBuf, LearnerMetrics)>>,
    },
    Stop,
}

/// Where the learner runs.
enum LearnerHost {
    /// Called from the actor's loop (lockstep mode); updates run in the learner's pool.
    Inline {
        learner: Box<dyn Learner>,
        updates: u64,
        pool: rayon::ThreadPool,
    },
    /// On its own thread (concurrent mode).
    Thread {
        limiter: Arc<RateLimiter>,
        requests: Sender<Request>,
        metrics: Arc<Mutex<LearnerMetrics>>,
        handle: Option<JoinHandle<Result<Box<dyn Learner>>>>,
    },
}

struct Shared {
    source: Arc<VariableSource>,
    obs_stats: Option<Arc<Mutex<ObsNormalizer>>>,
    publish_every: u64,
}

impl Shared {
    fn publish(&self, learner: &mut dyn Learner) -> Result<()> {
        if let Some(stats) = &self.obs_stats {
            let s = stats.lock().unwrap_or_else(|e| e.into_inner()).clone();
            learner.set_obs_stats(&s);
        }
        self.source.publish(learner.acting_snapshot()?);
        Ok(())
    }
}

fn learner_thread(
    mut learner: Box<dyn Learner>,
    shared: Arc<Shared>,
    limiter: Arc<RateLimiter>,
    requests: Receiver<Request>,
    metrics: Arc<Mutex<LearnerMetrics>>,
) -> Result<Box<dyn Learner>> {
    let mut since_publish = 0;
    let mut starved = false;
    loop {
        loop {
            let req = match requests.try_recv() {
                Ok(r) => r,
                Err(TryRecvError::Empty) => break,
                // The loop that owned this learner is gone (it failed): end quietly.
                Err(TryRecvError::Disconnected) => return Ok(learner),
            };
            match req {
                Request::Save { stem, reply } => {
                    let r = shared
                        .publish(learner.as_mut())
                        .and_then(|()| learner.save(&stem))
                        .map(|f| (f, learner.metrics()));
                    let _ = reply.send(r);
                }
                Request::Stop => return Ok(learner),
            }
        }
        if learner.ready() == starved {
            starved = !starved;
            limiter.set_starved(starved);
        }
        if starved {
            // Nothing committed to learn from yet: the writer commits an episode within
            // milliseconds of its end.
            std::thread::sleep(Duration::from_millis(1));
            continue;
        }
        if let Some(true) = limiter.update(Duration::from_millis(2)) {
            learner.update()?;
            since_publish += 1;
            if since_publish >= shared.publish_every {
                since_publish = 0;
                shared.publish(learner.as_mut())?;
                *metrics.lock().unwrap_or_else(|e| e.into_inner()) = learner.metrics();
            }
        }
    }
}

impl LearnerHost {
    /// Publishes the learner's current weights and saves them: from a checkpoint on, actors
    /// act with exactly the checkpointed model, which is what a resumed run starts with.
    fn save(&mut self, stem: &Path, shared: &Shared) -> Result<(PathBuf, LearnerMetrics)> {
        match self {
            LearnerHost::Inline { learner, .. } => {
                shared.publish(learner.as_mut())?;
                let f = learner.save(stem)?;
                Ok((f, learner.metrics()))
            }
            LearnerHost::Thread { requests, .. } => {
                let (tx, rx) = channel();
                let sent = requests.send(Request::Save {
                    stem: stem.to_path_buf(),
                    reply: tx,
                });
                // A failed send still holds the reply sender: check it before waiting.
                if sent.is_err() {
                    return Err(self.thread_failure());
                }
                match rx.recv() {
                    Ok(r) => r,
                    Err(_) => Err(self.thread_failure()),
                }
            }
        }
    }

    fn metrics(&self) -> LearnerMetrics {
        match self {
            LearnerHost::Inline { learner, .. } => learner.metrics(),
            LearnerHost::Thread { metrics, .. } => {
                metrics.lock().unwrap_or_else(|e| e.into_inner()).clone()
            }
        }
    }

    /// The learner thread's error after it ended (an error of its own, or a panic).
    fn thread_failure(&mut self) -> AgentError {
        if let LearnerHost::Thread {
            handle, limiter, ..
        } = self
        {
            limiter.stop();
            if let Some(h) = handle.take() {
                return match h.join() {
                    Ok(Err(e)) => e,
                    Ok(Ok(_)) => AgentError::Config("the learner stopped unexpectedly".into()),
                    Err(_) => AgentError::Panicked("learner"),
                };
            }
        }
        AgentError::Panicked("learner")
    }

    fn check_alive(&mut self) -> Result<()> {
        if let LearnerHost::Thread { handle, .. } = self {
            if handle.as_ref().is_some_and(|h| h.is_finished()) {
                return Err(self.thread_failure());
            }
        }
        Ok(())
    }

    /// Ends the learner thread (after letting it take the updates it is owed) and returns the
    /// learner.
    fn finish(self, steps: u64) -> Result<Box<dyn Learner>> {
        match self {
            LearnerHost::Inline { learner, .. } => Ok(learner),
            LearnerHost::Thread {
                limiter,
                requests,
                handle,
                ..
            } => {
                // Let the learner catch up on the updates the last steps earned, so the
                // reported ratio is the configured one.
                let owed = limiter.allowed_updates(steps);
                let deadline = Instant::now() + Duration::from_secs(600);
                while limiter.counts().1 < owed
                    && !limiter.is_starved()
                    && Instant::now() < deadline
                    && handle.as_ref().is_some_and(|h| !h.is_finished())
                {
                    std::thread::sleep(Duration::from_millis(1));
                }
                let _ = requests.send(Request::Stop);
                limiter.stop();
                match handle.map(|h| h.join()) {
                    Some(Ok(r)) => r,
                    _ => Err(AgentError::Panicked("learner")),
                }
            }
        }
    }
}

/// Runs (or continues) training until the step budget is spent or `hooks.stop` is set, then
/// checkpoints and evaluates.
pub fn train(setup: RunSetup, hooks: Hooks<'_>) -> Result<TrainReport> {
    let RunSetup {
        env_id,
        config,
        run_dir,
        resume,
    } = setup;
    let c = &config;
    let mut env = crate::fault::make_env(&env_id)?;
    let obs_dim = env.observation_space().flat_dim();
    let n_actions = match env.action_space() {
        Space::Discrete { n } if *n >= 1 => *n as usize,
        other => {
            return Err(AgentError::Config(format!(
                "the DQN learner needs a discrete action space; `{env_id}` has {other:?} \
                 (a continuous-action learner is planned)"
            )));
        }
    };
    let net_cfg = network_config(c, obs_dim, n_actions);
    net_cfg.validate()?;

    std::fs::create_dir_all(run_dir.join("checkpoints"))
        .map_err(AgentError::io(run_dir.join("checkpoints")))?;
    let _lock = RunLock::acquire(&run_dir)?;
    let store = ReplayStore::open(
        run_dir.join(REPLAY_FILE),
        StoreOptions {
            mirror: MirrorOptions {
                capacity: c.replay.capacity,
                alpha: if c.dqn.prioritized {
                    c.dqn.per_alpha
                } else {
                    0.0
                },
            },
            retention: Retention {
                max_transitions: (c.replay.max_stored_transitions > 0)
                    .then_some(c.replay.max_stored_transitions),
                ..Retention::default()
            },
            durability: c.replay.durability.into(),
            ..StoreOptions::default()
        },
    )?;
    let planned = c.dqn.planned_updates(c.run.steps);
    let precision = c.run.acting_precision.into();
    let (run, learner, state): (Run, Box<dyn Learner>, RunState) = match resume {
        None => {
            write_atomic(&run_dir.join(CONFIG_FILE), c.to_toml()?.as_bytes())?;
            let run = store.create_run(&RunSpec {
                env_id: env_id.clone(),
                obs_dims: vec![obs_dim],
                obs_dtype: Dtype::F32,
                action_space: ActionSpace::Discrete {
                    n: n_actions as i64,
                },
                config: serde_json::json!({"env": env_id, "train": c}),
                code_version: env!("CARGO_PKG_VERSION").into(),
            })?;
            let learner = DqnLearner::new(
                c.dqn.clone(),
                net_cfg,
                store.sampler(),
                c.run.seed,
                planned,
                precision,
            )?;
            let state = RunState {
                format: 1,
                env_id: env_id.clone(),
                replay_run_id: run.id,
                steps: 0,
                episodes: 0,
                updates: 0,
                model_version: 0,
                checkpoint: String::new(),
                actor_rng_word_pos: "0".into(),
                learner_checkpoint: None,
            };
            (run, Box::new(learner), state)
        }
        Some(mut state) => {
            let run = store.run(state.replay_run_id)?;
            let stem = inside_run_dir(&run_dir, &state.checkpoint)?;
            let learner = DqnLearner::load(
                c.dqn.clone(),
                &stem,
                store.sampler(),
                c.run.seed,
                planned,
                precision,
            )?;
            if learner.network().config() != &net_cfg {
                return Err(AgentError::RunDir {
                    path: stem,
                    reason: "the checkpoint's network differs from the configured one".into(),
                });
            }
            // The store is the record of what was lived: episodes committed after the last
            // checkpoint (a crash) count, so no episode seed is used twice.
            let summary = store.summary()?;
            if let Some(rs) = summary.runs.iter().find(|r| r.run_id == run.id) {
                if rs.transitions_total as u64 != state.steps {
                    tracing::warn!(
                        checkpoint_steps = state.steps,
                        stored_steps = rs.transitions_total,
                        "the replay file holds steps after the last checkpoint; continuing \
                         from the stored count with the checkpointed model"
                    );
                }
                state.steps = rs.transitions_total as u64;
                state.episodes = rs.episodes_total as u64;
            }
            if state.steps >= c.run.steps {
                return Err(AgentError::Config(format!(
                    "the run already has {} steps, its budget is {}: pass a larger --steps to \
                     continue it",
                    state.steps, c.run.steps
                )));
            }
            state.updates = learner.metrics().updates;
            // The resolved configuration now includes this session's overrides and budget.
            write_atomic(&run_dir.join(CONFIG_FILE), c.to_toml()?.as_bytes())?;
            (run, Box::new(learner), state)
        }
    };
    let fresh = state.model_version == 0;

    let writer: WriterHandle = store.start_writer(WriterOptions::default())?;
    let lockstep = c.run.mode == Mode::Lockstep;
    let obs_stats = c.network.normalize_obs.then(|| {
        Arc::new(Mutex::new(learner.obs_stats().unwrap_or_else(|| {
            ObsNormalizer::new(obs_dim, true, c.network.obs_clip)
        })))
    });
    let shared = Arc::new(Shared {
        source: Arc::new(VariableSource::new(learner.acting_snapshot()?)),
        obs_stats: obs_stats.clone(),
        publish_every: c.dqn.publish_every,
    });
    let adder = ReplayAdder::new(writer.writer(), run.clone(), lockstep)
        .with_max_episode_steps(c.replay.episode_cap());
    let mut actor = EpsilonGreedyActor::new(
        shared.source.clone(),
        adder,
        n_actions,
        c.run.seed,
        obs_stats,
    );
    let word_pos: u128 = state
        .actor_rng_word_pos
        .parse()
        .map_err(|_| AgentError::RunDir {
            path: run_dir.join(STATE_FILE),
            reason: "actor_rng_word_pos is not a number".into(),
        })?;
    actor.set_rng_word_pos(word_pos);
    if !fresh {
        actor
            .adder_mut()
            .set_model_version(Some(state.model_version));
    }

    let mut host = if lockstep {
        LearnerHost::Inline {
            learner,
            updates: state.updates,
            pool: learner_pool(c.run.learner_threads)?,
        }
    } else {
        let limiter = Arc::new(RateLimiter::new(
            c.dqn.replay_ratio,
            c.dqn.learning_starts,
            c.run.max_lead_steps,
            state.steps,
            state.updates,
        ));
        let (tx, rx) = channel();
        let metrics = Arc::new(Mutex::new(learner.metrics()));
        let (l, s, m) = (limiter.clone(), shared.clone(), metrics.clone());
        let pool = learner_pool(c.run.learner_threads)?;
        let handle = std::thread::Builder::new()
            .name("learner".into())
            .spawn(move || {
                // However the learner ends (an error or a panic), the actor must not wait
                // on it any more.
                struct StopOnDrop(Arc<RateLimiter>);
                impl Drop for StopOnDrop {
                    fn drop(&mut self) {
                        self.0.stop();
                    }
                }
                let _guard = StopOnDrop(l.clone());
                let r = pool.install(|| learner_thread(learner, s, l.clone(), rx, m));
                if let Err(e) = &r {
                    tracing::error!(error = %e, "learner failed");
                }
                r
            })
            .map_err(|e| AgentError::Io {
                path: PathBuf::from("<learner thread>"),
                source: e,
            })?;
        LearnerHost::Thread {
            limiter,
            requests: tx,
            metrics,
            handle: Some(handle),
        }
    };

    let mut ck = Checkpointer {
        run_dir: &run_dir,
        shared: &shared,
        store: &store,
        state,
    };
    if fresh {
        ck.checkpoint(&mut host, &mut actor)?;
    }

    let total = c.run.steps;
    let start_steps = ck.state.steps;
    let mut steps = ck.state.steps;
    let mut episodes = ck.state.episodes;
    let mut next_checkpoint = (steps / c.run.checkpoint_every + 1) * c.run.checkpoint_every;
    let mut next_eval = steps
        .checked_div(c.run.eval_every)
        .map_or(u64::MAX, |k| (k + 1) * c.run.eval_every);
    let mut recent: VecDeque<f64> = VecDeque::with_capacity(20);
    let mut evals = Vec::new();
    let mut eval_secs = 0.0;
    let started = Instant::now();
    let mut last_progress = Instant::now();
    let mut interrupted = false;

    // The loop runs in a closure so that whatever error ends it, the code below can still
    // store the cut episode and checkpoint what was learned before reporting the error.
    let mut run_loop = || -> Result<()> {
        let mut epsilon;
        let mut backoff = Backoff::new(Duration::from_secs(5));
        // A fault cuts the episode (what came before it is stored), waits and resets; only
        // a world that keeps failing ends the run, with its last fault as the error.
        let fault = |f: Fault, backoff: &mut Backoff| -> Result<()> {
            tracing::warn!(kind = f.kind.name(), "environment fault: {}", f.message);
            let wait = backoff.fault();
            if backoff.in_row() >= TRAIN_FAULTS_IN_ROW {
                return Err(f.into());
            }
            std::thread::sleep(wait);
            Ok(())
        };
        'episodes: while steps < total {
            let seed = episode_seed(c.run.seed, TRAIN_EPISODES, episodes);
            let reset = env.reset(Some(seed)).map_err(Fault::from);
            let obs = match reset.and_then(|(o, _)| check_observation(&o, obs_dim).map(|()| o)) {
                Ok(obs) => obs,
                Err(f) => {
                    fault(f, &mut backoff)?;
                    continue;
                }
            };
            actor.observe_first(&obs)?;
            let mut obs = obs;
            let mut ret = 0.0;
            loop {
                if hooks.stop.load(Ordering::Relaxed) {
                    interrupted = true;
                    actor.adder_mut().cut()?;
                    break 'episodes;
                }
                if steps >= total {
                    actor.adder_mut().cut()?;
                    break 'episodes;
                }
                if let LearnerHost::Thread { limiter, .. } = &host {
                    match limiter.step() {
                        Admit::Go => {}
                        // Ahead, but the learner has nothing to sample: commit what is
                        // finished (the writer would, within its batch latency) and go on.
                        Admit::Starved => actor.adder_mut().flush()?,
                        Admit::Stopped => {
                            // Stopped from the learner side: it failed.
                            actor.adder_mut().cut()?;
                            return Err(host.thread_failure());
                        }
                    }
                }
                epsilon = if steps < c.dqn.learning_starts {
                    c.dqn.exploration_initial_eps
                } else {
                    c.dqn.epsilon(steps, total)
                };
                actor.set_epsilon(epsilon);
                actor.update();
                let action = actor.select_action(&obs)?;
                let step = match check_step(env.step(&action), obs_dim) {
                    Ok(step) => step,
                    Err(f) => {
                        actor.adder_mut().cut()?;
                        fault(f, &mut backoff)?;
                        continue 'episodes;
                    }
                };
                backoff.succeed();
                steps += 1;
                ret += step.reward;
                let done = actor.observe(&action, &step)?;
                if let LearnerHost::Inline {
                    learner,
                    updates,
                    pool,
                } = &mut host
                {
                    // Same allowance as the rate limiter: ⌊ρ · (steps − learning_starts)⌋.
                    let allowed = c.dqn.planned_updates(steps);
                    while *updates < allowed && learner.ready() {
                        pool.install(|| learner.update())?;
                        *updates += 1;
                        if *updates % c.dqn.publish_every == 0 {
                            shared.publish(learner.as_mut())?;
                        }
                    }
                }
                if last_progress.elapsed() > Duration::from_millis(200) {
                    last_progress = Instant::now();
                    host.check_alive()?;
                    (hooks.on_progress)(&Progress {
                        steps,
                        total_steps: total,
                        recent_return: mean(&recent),
                        epsilon,
                        learner: host.metrics(),
                        model_version: ck.state.model_version,
                    });
                }
                if done {
                    episodes += 1;
                    if recent.len() == 20 {
                        recent.pop_front();
                    }
                    recent.push_back(ret);
                    break;
                }
                obs = step.obs;
            }
            if steps >= next_eval {
                next_eval = (steps / c.run.eval_every + 1) * c.run.eval_every;
                let t = Instant::now();
                if let LearnerHost::Thread { limiter, .. } = &host {
                    limiter.set_paused(true);
                }
                let weights = shared.source.latest();
                let r = evaluate_capped(
                    env.as_mut(),
                    &weights.snapshot,
                    c.run.eval_episodes,
                    episode_seed(c.run.seed, EVAL_EPISODES, 0),
                    c.replay.episode_cap(),
                );
                if let LearnerHost::Thread { limiter, .. } = &host {
                    limiter.set_paused(false);
                }
                eval_secs += t.elapsed().as_secs_f64();
                match r {
                    // A fault during an evaluation costs that evaluation, not the run.
                    Err(AgentError::Fault(f)) => {
                        tracing::warn!(steps, "evaluation skipped after a fault: {f}");
                    }
                    r => {
                        let r = r?;
                        let point = EvalPoint {
                            steps,
                            train_secs: started.elapsed().as_secs_f64() - eval_secs,
                            mean: r.mean,
                            std: r.std,
                        };
                        tracing::info!(
                            steps,
                            updates = host.metrics().updates,
                            mean = r.mean,
                            std = r.std,
                            "evaluation"
                        );
                        (hooks.on_eval)(&point);
                        evals.push(point);
                    }
                }
            }
            if steps >= next_checkpoint {
                next_checkpoint = (steps / c.run.checkpoint_every + 1) * c.run.checkpoint_every;
                ck.state.steps = steps;
                ck.state.episodes = episodes;
                ck.checkpoint(&mut host, &mut actor)?;
            }
        }
        Ok(())
    };
    let loop_result = run_loop();
    // Whatever stopped the loop, the steps lived are stored and the model is checkpointed.
    if let Err(e) = loop_result {
        // Best effort: a failing environment must not cost the learning since the last
        // checkpoint. If storing fails too (a full disk), the last checkpoint stands.
        let saved = actor
            .adder_mut()
            .cut()
            .and_then(|()| ck.final_checkpoint(host, &mut actor, steps, episodes));
        if let Err(e2) = saved {
            tracing::warn!(error = %e2, "no checkpoint after the failure; the last one stands");
        }
        return Err(e);
    }
    let (checkpoint, learner) = ck.final_checkpoint(host, &mut actor, steps, episodes)?;
    // Training time includes the learner catching up on the updates the last steps earned.
    let train_secs = started.elapsed().as_secs_f64() - eval_secs;
    writer.close()?;
    let skipped = store.sampler().skipped_episodes();
    if skipped > 0 {
        tracing::warn!(
            skipped,
            "episodes longer than the replay window (replay.capacity) were stored but never \
             sampled; raise replay.capacity"
        );
    }

    let metrics = learner.metrics();
    let final_eval = if interrupted {
        None
    } else {
        let snapshot: Snapshot = learner.acting_snapshot()?;
        let r = evaluate_capped(
            env.as_mut(),
            &snapshot,
            c.run.eval_episodes,
            episode_seed(c.run.seed, FINAL_EVAL_EPISODES, 0),
            c.replay.episode_cap(),
        );
        match r {
            Err(AgentError::Fault(f)) => {
                tracing::warn!("final evaluation skipped after a fault: {f}");
                None
            }
            r => Some(r?),
        }
    };
    let _ = env.close();
    Ok(TrainReport {
        env_id,
        run_dir: run_dir.clone(),
        steps,
        steps_this_session: steps - start_steps,
        episodes,
        updates: metrics.updates,
        train_secs,
        eval_secs,
        steps_per_s: (steps - start_steps) as f64 / train_secs.max(1e-9),
        replay_ratio_target: c.dqn.replay_ratio,
        replay_ratio: if steps > c.dqn.learning_starts {
            metrics.updates as f64 / (steps - c.dqn.learning_starts) as f64
        } else {
            0.0
        },
        recent_return: mean(&recent),
        evals,
        final_eval,
        model_version: ck.state.model_version,
        checkpoint,
        interrupted,
        learner: metrics,
    })
}

fn mean(v: &VecDeque<f64>) -> Option<f64> {
    (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
}

/// The registry's metrics of a model version. `expert_usage` (share of routed tokens per expert
/// of the first MoE layer) is what `autodidact replay … experts` charts; it is left out before
/// the first update, when nothing has been routed yet.
pub(crate) fn checkpoint_metrics(state: &RunState, m: &LearnerMetrics) -> serde_json::Value {
    let mut v = serde_json::json!({
        "env_steps": state.steps,
        "episodes": state.episodes,
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

struct Checkpointer<'a> {
    run_dir: &'a Path,
    shared: &'a Shared,
    store: &'a ReplayStore,
    state: RunState,
}

impl Checkpointer<'_> {
    /// Ends the learner (after the updates it is owed), checkpoints it with the actor's final
    /// counters and hands it back.
    fn final_checkpoint(
        &mut self,
        host: LearnerHost,
        actor: &mut EpsilonGreedyActor<ReplayAdder>,
        steps: u64,
        episodes: u64,
    ) -> Result<(PathBuf, Box<dyn Learner>)> {
        let learner = host.finish(steps)?;
        let mut host = LearnerHost::Inline {
            updates: learner.metrics().updates,
            learner,
            pool: learner_pool(1)?,
        };
        self.state.steps = steps;
        self.state.episodes = episodes;
        let file = self.checkpoint(&mut host, actor)?;
        match host {
            LearnerHost::Inline { learner, .. } => Ok((file, learner)),
            LearnerHost::Thread { .. } => Err(AgentError::Panicked("learner")),
        }
    }

    /// Saves the learner, registers and promotes a model version, and rewrites the state
    /// file; `self.state.steps`/`episodes` must already hold the actor's counters.
    fn checkpoint(
        &mut self,
        host: &mut LearnerHost,
        actor: &mut EpsilonGreedyActor<ReplayAdder>,
    ) -> Result<PathBuf> {
        // Named by the version it will become, so no later checkpoint can overwrite the files
        // of a registered one (two checkpoints may share a step count).
        let next = self.store.latest_model()?.map_or(1, |m| m.version + 1);
        let rel = format!("checkpoints/v{next:05}-step{:010}", self.state.steps);
        let (file, metrics) = host.save(&self.run_dir.join(&rel), self.shared)?;
        // Everything the counters claim is committed before the state file says so.
        actor.adder_mut().flush()?;
        let bytes = std::fs::read(&file).map_err(AgentError::io(&file))?;
        let model = self.store.register_model(&NewModel {
            parent: (self.state.model_version > 0).then_some(self.state.model_version),
            checkpoint_path: format!("{rel}.safetensors"),
            checksum: format!("crc32:{:08x}", crc32fast::hash(&bytes)),
            metrics: checkpoint_metrics(&self.state, &metrics),
        })?;
        self.store.promote(model.version)?;
        self.state.model_version = model.version;
        self.state.updates = metrics.updates;
        self.state.checkpoint = rel;
        self.state.actor_rng_word_pos = actor.rng_word_pos().to_string();
        self.state.write(self.run_dir)?;
        actor.adder_mut().set_model_version(Some(model.version));
        tracing::info!(
            version = model.version,
            steps = self.state.steps,
            "checkpoint"
        );
        Ok(file)
    }
}

/// The checkpoint file a run directory currently acts with: its champion model version (or
/// the newest registered one).
pub fn acting_checkpoint(run_dir: &Path) -> Result<(PathBuf, i64)> {
    let db = run_dir.join(REPLAY_FILE);
    if !db.exists() {
        return Err(AgentError::RunDir {
            path: run_dir.to_path_buf(),
            reason: format!("no {REPLAY_FILE}: not a run directory made by `autodidact train`"),
        });
    }
    let store = ReplayStore::open_read_only(&db)?;
    let model = match store.champion()? {
        Some(m) => m,
        None => store.latest_model()?.ok_or_else(|| AgentError::RunDir {
            path: db.clone(),
            reason: "no model version is registered yet".into(),
        })?,
    };
    Ok((
        inside_run_dir(run_dir, &model.checkpoint_path)?,
        model.version,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_paths_stay_inside_the_run_directory() {
        let dir = Path::new("/runs/a");
        assert_eq!(
            inside_run_dir(dir, "checkpoints/v00001-step0000000000.safetensors").unwrap(),
            dir.join("checkpoints/v00001-step0000000000.safetensors")
        );
        for bad in [
            "",
            "/etc/passwd",
            "../b/checkpoints/v1.safetensors",
            "checkpoints/../../x",
            "./..",
        ] {
            assert!(inside_run_dir(dir, bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn episode_seeds_never_repeat_within_or_across_streams() {
        let mut seen = std::collections::HashSet::new();
        for seed in 0..4u64 {
            for stream in [TRAIN_EPISODES, EVAL_EPISODES, FINAL_EVAL_EPISODES] {
                for i in 0..1_000 {
                    let s = episode_seed(seed, stream, i);
                    assert!(s < 1 << 63, "seeds fit in an i64");
                    assert!(
                        seen.insert(s),
                        "seed {s} repeated (seed {seed}, stream {stream}, i {i})"
                    );
                }
            }
        }
    }
}
