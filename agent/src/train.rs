//! The training loop: one environment, one actor, one learner, one replay file, joined into a
//! run directory that can be stopped at any moment and resumed.
//!
//! The run directory's layout is [`crate::runtime::run_dir`]'s.
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
use autodidact_envs::Env;
use autodidact_replay::{NewReflection, ReplayStore, Run, WriterHandle, WriterOptions};
use serde::Serialize;

use crate::actor::PolicyActor;
use crate::adder::{Adder, ReplayAdder};
use crate::config::{Mode, TrainConfig};
use crate::drift::Direction;
use crate::error::{AgentError, Result};
use crate::eval::{EvalReport, evaluate_capped};
use crate::fault::Fault;
use crate::learner::{Learner, LearnerMetrics};
use crate::learners::{Horizon, LearnerKind, LearnerPlan};
use crate::policy::Policy;
use crate::rate::{Admit, RateLimiter};
use crate::runtime::acting::{ActingControl, EpisodeEnd, ReplayActor, act};
use crate::runtime::changes::{
    ChangeWatch, Response, boosted_exploration, observation_drift, recall_failed, recalled,
    return_drift,
};
use crate::runtime::learning::{LearningControl, learn};
use crate::runtime::memory::{Memory, fits};
use crate::runtime::run_dir::model_stem;
pub use crate::runtime::{
    CONFIG_FILE, REPLAY_FILE, RunState, STATE_FILE, acting_checkpoint, check_stored_command,
};
use crate::runtime::{
    RunDir, episode_seed, inside_run_dir, learner_pool, measure_plasticity, model_metrics,
    stored_counts, write_atomic,
};
use crate::variable::VariableSource;

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
    /// Current exploration level (ε for DQN; see [`crate::policy::ActMode`]).
    pub exploration: f32,
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

enum Request {
    Save {
        stem: PathBuf,
        reply: Sender<Result<(PathBuf, LearnerMetrics)>>,
    },
    /// Reset the learner's head after a change of world ([`Learner::reset_head`]) and
    /// publish.
    ResetHead,
    /// Learn on with this learner (a recalled one) and publish it.
    Replace(Box<dyn Learner>),
    /// Publish now (a trial ended without a recall).
    Publish,
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
    /// A remembered learner is on trial: the actor acts with its weights, and the learner's
    /// publications wait until the trial ends.
    pinned: AtomicBool,
}

impl Shared {
    fn publish(&self, learner: &mut dyn Learner) -> Result<()> {
        if let Some(stats) = &self.obs_stats {
            let s = stats.lock().unwrap_or_else(|e| e.into_inner()).clone();
            learner.set_obs_stats(&s);
        }
        if !self.pinned.load(Ordering::SeqCst) {
            self.source.publish(learner.acting_snapshot()?);
        }
        Ok(())
    }

    /// The actor acts with `learner`'s weights (a remembered learner on trial) until
    /// [`Shared::unpin`].
    fn pin(&self, learner: &mut dyn Learner) -> Result<()> {
        self.pinned.store(true, Ordering::SeqCst);
        self.source.publish(learner.acting_snapshot()?);
        Ok(())
    }

    fn unpin(&self) {
        self.pinned.store(false, Ordering::SeqCst);
    }
}

/// `train`'s side of the learner loop (concurrent mode): save and stop requests from the
/// actor's thread, weights published to the actor's variable source.
struct TrainLearning {
    shared: Arc<Shared>,
    requests: Receiver<Request>,
    metrics: Arc<Mutex<LearnerMetrics>>,
}

impl LearningControl for TrainLearning {
    fn serve(&mut self, learner: &mut Box<dyn Learner>) -> Result<bool> {
        loop {
            match self.requests.try_recv() {
                Ok(Request::Save { stem, reply }) => {
                    measure_plasticity(learner.as_mut());
                    let r = self
                        .shared
                        .publish(learner.as_mut())
                        .and_then(|()| learner.save(&stem))
                        .map(|f| (f, learner.metrics()));
                    let _ = reply.send(r);
                }
                Ok(Request::ResetHead) => {
                    if learner.reset_head()? {
                        self.shared.publish(learner.as_mut())?;
                    }
                }
                Ok(Request::Replace(recalled)) => {
                    *learner = recalled;
                    self.shared.publish(learner.as_mut())?;
                }
                Ok(Request::Publish) => self.shared.publish(learner.as_mut())?,
                Ok(Request::Stop) => return Ok(false),
                Err(TryRecvError::Empty) => return Ok(true),
                // The loop that owned this learner is gone (it failed): end quietly.
                Err(TryRecvError::Disconnected) => return Ok(false),
            }
        }
    }

    fn publish(&mut self, learner: &mut dyn Learner) -> Result<()> {
        self.shared.publish(learner)?;
        *self.metrics.lock().unwrap_or_else(|e| e.into_inner()) = learner.metrics();
        Ok(())
    }
}

impl LearnerHost {
    /// The learner inline (lockstep) or on its own thread behind the rate limiter
    /// (concurrent), continuing from the counters in `state`.
    fn start(
        c: &TrainConfig,
        plan: &LearnerPlan,
        learner: Box<dyn Learner>,
        shared: &Arc<Shared>,
        state: &RunState,
    ) -> Result<LearnerHost> {
        let pool = learner_pool(c.run.learner_threads.unwrap_or(plan.threads))?;
        if c.run.mode == Mode::Lockstep {
            return Ok(LearnerHost::Inline {
                learner,
                updates: state.updates,
                pool,
            });
        }
        let limiter = Arc::new(RateLimiter::new(
            plan.replay_ratio,
            plan.learning_starts,
            c.run.max_lead_steps,
            state.steps,
            state.updates,
        ));
        let (tx, rx) = channel();
        let metrics = Arc::new(Mutex::new(learner.metrics()));
        let mut ctl = TrainLearning {
            shared: shared.clone(),
            requests: rx,
            metrics: metrics.clone(),
        };
        let (l, publish_every) = (limiter.clone(), plan.publish_every);
        let handle = std::thread::Builder::new()
            .name("learner".into())
            .spawn(move || {
                // However the learner ends (an error or a panic), the actor must not wait on
                // it any more.
                struct StopOnDrop(Arc<RateLimiter>);
                impl Drop for StopOnDrop {
                    fn drop(&mut self) {
                        self.0.stop();
                    }
                }
                let _guard = StopOnDrop(l.clone());
                let r = pool.install(|| learn(learner, &l, publish_every, &mut ctl));
                if let Err(e) = &r {
                    tracing::error!(error = %e, "learner failed");
                }
                r
            })
            .map_err(|e| AgentError::Io {
                path: PathBuf::from("<learner thread>"),
                source: e,
            })?;
        Ok(LearnerHost::Thread {
            limiter,
            requests: tx,
            metrics,
            handle: Some(handle),
        })
    }

    /// Publishes the learner's current weights and saves them: from a checkpoint on, actors
    /// act with exactly the checkpointed model, which is what a resumed run starts with.
    fn save(&mut self, stem: &Path, shared: &Shared) -> Result<(PathBuf, LearnerMetrics)> {
        match self {
            LearnerHost::Inline { learner, .. } => {
                measure_plasticity(learner.as_mut());
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

    /// Resets the learner's head after a change of world and has the actor act with it (at
    /// once inline; with the learner's next request check on its thread).
    fn reset_head(&mut self, shared: &Shared) -> Result<()> {
        match self {
            LearnerHost::Inline { learner, .. } => {
                if learner.reset_head()? {
                    shared.publish(learner.as_mut())?;
                }
                Ok(())
            }
            LearnerHost::Thread { requests, .. } => {
                if requests.send(Request::ResetHead).is_err() {
                    return Err(self.thread_failure());
                }
                Ok(())
            }
        }
    }

    /// Learns on with `recalled` in place of the learner, and has the actor act with it.
    fn replace(&mut self, recalled: Box<dyn Learner>, shared: &Shared) -> Result<()> {
        match self {
            LearnerHost::Inline { learner, .. } => {
                *learner = recalled;
                shared.publish(learner.as_mut())
            }
            LearnerHost::Thread { requests, .. } => {
                if requests.send(Request::Replace(recalled)).is_err() {
                    return Err(self.thread_failure());
                }
                Ok(())
            }
        }
    }

    /// Has the actor act with the learner's newest weights now.
    fn publish_now(&mut self, shared: &Shared) -> Result<()> {
        match self {
            LearnerHost::Inline { learner, .. } => shared.publish(learner.as_mut()),
            LearnerHost::Thread { requests, .. } => {
                if requests.send(Request::Publish).is_err() {
                    return Err(self.thread_failure());
                }
                Ok(())
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
    let space = env.action_space().clone();
    let kind = c.learner.resolve(&space)?;
    let plan = kind.plan(c.learners());
    let dir = RunDir::open(
        &run_dir,
        kind,
        env.observation_space().flat_dim(),
        space.clone(),
        &c.network,
    )?;
    let store = dir.open_store(
        &c.replay,
        &plan,
        (c.replay.max_stored_transitions > 0).then_some(c.replay.max_stored_transitions),
    )?;
    let planned = kind.planned_updates(c.learners(), c.run.steps);
    let precision = c.run.acting_precision.into();
    let (run, learner, state) = match resume {
        None => fresh_run(&dir, &store, &env_id, c, planned, precision)?,
        Some(state) => resumed_run(&dir, &store, state, c, planned, precision)?,
    };
    let fresh = state.model_version == 0;

    let writer: WriterHandle = store.start_writer(WriterOptions::default())?;
    let obs_stats = dir.obs_stats(&c.network, learner.as_ref());
    let shared = Arc::new(Shared {
        source: Arc::new(VariableSource::new(learner.acting_snapshot()?)),
        obs_stats,
        publish_every: plan.publish_every,
        pinned: AtomicBool::new(false),
    });
    let policy = kind.exploring_policy(c.learners(), &space)?;
    let mut actor = make_actor(c, &shared, &writer, &run, policy, &state, &run_dir)?;
    let mut host = LearnerHost::start(c, &plan, learner, &shared, &state)?;
    let mut ck = Checkpointer {
        dir: &dir,
        shared: &shared,
        store: &store,
        state,
    };
    if fresh {
        ck.checkpoint(&mut host, &mut actor)?;
    }

    let start_steps = ck.state.steps;
    let mut ctl = TrainActing::new(
        c,
        kind,
        hooks,
        &mut host,
        &mut ck,
        kind.policy(&space)?,
        dir.obs_dim,
    );
    if !fresh {
        ctl.warm_up(run.id)?;
    }
    let loop_result = act(env.as_mut(), &mut actor, dir.obs_dim, &mut ctl);
    let TrainActing {
        steps,
        episodes,
        recent,
        evals,
        eval_secs,
        started,
        interrupted,
        mut eval_policy,
        hooks,
        ..
    } = ctl;
    let interrupted = interrupted || (steps < c.run.steps && hooks.stop.load(Ordering::Relaxed));
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
        final_evaluation(env.as_mut(), eval_policy.as_mut(), learner.as_ref(), c)?
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
        replay_ratio_target: plan.replay_ratio,
        replay_ratio: if steps > plan.learning_starts {
            metrics.updates as f64 / (steps - plan.learning_starts) as f64
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

/// `train`'s side of the actor loop: a step budget, Ctrl-C, the learner inline (lockstep) or
/// behind the rate limiter, periodic evaluations and checkpoints, progress.
struct TrainActing<'a, 'c, 'h> {
    c: &'a TrainConfig,
    kind: &'static dyn LearnerKind,
    hooks: Hooks<'h>,
    host: &'a mut LearnerHost,
    ck: &'a mut Checkpointer<'c>,
    eval_policy: Box<dyn Policy>,
    steps: u64,
    episodes: u64,
    next_checkpoint: u64,
    next_eval: u64,
    recent: VecDeque<f64>,
    evals: Vec<EvalPoint>,
    eval_secs: f64,
    started: Instant,
    last_progress: Instant,
    interrupted: bool,
    /// Drift detectors: `train` responds to each change it notices and records it as a `drift`
    /// reflection.
    watch: ChangeWatch,
    /// The step of the last fall in return that raised exploration (see [`boosted_exploration`]).
    boosted_at: Option<u64>,
    /// Worlds mastered before, kept to be recalled.
    memory: Memory,
    /// Step at which the present world began (the last change noticed, or 0).
    world_since: u64,
    /// A remembered learner playing in the new world, if one is on trial.
    trial: Option<Trial>,
}

/// Remembered learners tried in a new world, one at a time.
struct Trial {
    /// Step of the change.
    change_at: u64,
    /// Mean return of the broken policy at the alarm: a recalled one must beat it clearly.
    broken: f64,
    /// The slot on trial and its learner.
    slot: usize,
    learner: Box<dyn Learner>,
    returns: Vec<f64>,
    /// Slots still to try, next first.
    queue: Vec<usize>,
    /// Slots tried and the mean they played.
    tried: Vec<(usize, f64)>,
}

impl<'a, 'c, 'h> TrainActing<'a, 'c, 'h> {
    fn new(
        c: &'a TrainConfig,
        kind: &'static dyn LearnerKind,
        hooks: Hooks<'h>,
        host: &'a mut LearnerHost,
        ck: &'a mut Checkpointer<'c>,
        eval_policy: Box<dyn Policy>,
        obs_dim: usize,
    ) -> Self {
        let (steps, episodes) = (ck.state.steps, ck.state.episodes);
        let memory = Memory::new(&ck.dir.path, c.drift.memory_slots);
        TrainActing {
            watch: ChangeWatch::new(&c.drift, obs_dim),
            next_checkpoint: (steps / c.run.checkpoint_every + 1) * c.run.checkpoint_every,
            next_eval: steps
                .checked_div(c.run.eval_every)
                .map_or(u64::MAX, |k| (k + 1) * c.run.eval_every),
            c,
            kind,
            hooks,
            host,
            ck,
            eval_policy,
            steps,
            episodes,
            recent: VecDeque::with_capacity(20),
            evals: Vec::new(),
            eval_secs: 0.0,
            started: Instant::now(),
            last_progress: Instant::now(),
            interrupted: false,
            boosted_at: None,
            memory,
            world_since: steps,
            trial: None,
        }
    }

    /// After a resume: the return detector sees the run's stored episodes again, so that it,
    /// the exploration boost, the present world's start and the replay window stand where an
    /// unbroken run would have them (a resumed lockstep run stays bit-exact), and the memory
    /// of mastered worlds is read back from its index. A trial in progress is not restored.
    fn warm_up(&mut self, run_id: i64) -> Result<()> {
        match Memory::load(&self.ck.dir.path, self.c.drift.memory_slots) {
            Ok(m) => self.memory = m,
            Err(e) => tracing::warn!(error = %e, "going on without the remembered worlds"),
        }
        let (recent, restart) = (self.c.drift.returns.recent, self.c.drift.restart_replay);
        let (mut step, mut since_alarm) = (0u64, None::<usize>);
        let stored = self.ck.store.snapshot()?.episodes(Some(run_id))?;
        for ep in stored {
            step += u64::try_from(ep.length).unwrap_or(0);
            let settled = self.exploration_at(step) <= self.exploration_floor() + 1e-6;
            if self
                .watch
                .observe_return(ep.episode_return, settled)
                .is_some()
            {
                self.boosted_at = Some(step);
                self.world_since = step;
                since_alarm = Some(recent);
            } else if let Some(n) = since_alarm.as_mut() {
                *n += 1;
            }
        }
        if let (Some(n), true) = (since_alarm, restart) {
            self.ck.store.sampler().retain_newest_episodes(n);
        }
        Ok(())
    }

    /// The exploration level at `steps` (the schedule, raised after a change).
    fn exploration_at(&self, steps: u64) -> f32 {
        let horizon = Horizon::Run {
            total: self.c.run.steps,
        };
        let base = self.kind.exploration(self.c.learners(), steps, horizon);
        boosted_exploration(
            &self.c.drift,
            base,
            self.exploration_floor(),
            self.boosted_at,
            steps,
        )
    }

    /// Where the run's exploration schedule ends.
    fn exploration_floor(&self) -> f32 {
        let horizon = Horizon::Run {
            total: self.c.run.steps,
        };
        self.kind.exploration(self.c.learners(), u64::MAX, horizon)
    }

    /// In lockstep mode, the updates the last step earned, in the learner's pool: the same
    /// allowance as the rate limiter's, ⌊ρ · (steps − learning_starts)⌋.
    fn learn_inline(&mut self) -> Result<()> {
        let (kind, learners, steps) = (self.kind, self.c.learners(), self.steps);
        if let LearnerHost::Inline {
            learner,
            updates,
            pool,
        } = &mut *self.host
        {
            let allowed = kind.planned_updates(learners, steps);
            while *updates < allowed && learner.ready() {
                pool.install(|| learner.update())?;
                *updates += 1;
                if *updates % self.ck.shared.publish_every == 0 {
                    self.ck.shared.publish(learner.as_mut())?;
                }
            }
        }
        Ok(())
    }

    /// Feeds the drift detectors, responds to a fall in return (exploration raised, the
    /// replay window restarted; see [`crate::config::DriftSection`]) and records what they notice. A
    /// reflection that cannot be written is logged, never fatal.
    fn notice(&mut self, end: &EpisodeEnd<'_>) -> Result<()> {
        let settled = self.trial.is_none() && self.exploration() <= self.exploration_floor() + 1e-6;
        let noticed = self.watch.observe(end.ret, end.first_abs_obs, settled);
        let drift = &self.c.drift;
        let mut rows = Vec::new();
        if let Some(a) = &noticed.returns {
            // A change noticed during a trial ends it: what was on trial is judged no more.
            if self.trial.take().is_some() {
                self.ck.shared.unpin();
            }
            // A stuck learner mastered nothing worth keeping: all slots are candidates.
            let kept = if !drift.recall {
                None
            } else if a.direction == Direction::Stuck {
                Some(usize::MAX)
            } else {
                Some(self.remember(a.reference_mean, end.steps)?)
            };
            self.boosted_at = Some(end.steps);
            let replay_dropped = drift.restart_replay.then(|| {
                self.ck
                    .store
                    .sampler()
                    .retain_newest_episodes(drift.returns.recent)
            });
            if drift.reset_head {
                self.host.reset_head(self.ck.shared)?;
            }
            let response = Response {
                exploration: true,
                replay_dropped,
                head_reset: drift.reset_head,
                ..Response::default()
            };
            rows.push(return_drift(drift, end.steps, a, response));
            self.world_since = end.steps;
            if let Some(k) = kept {
                self.memory.set_current(None);
                self.memory.save()?;
                let queue = self.memory.candidates(k);
                self.next_trial(end.steps, a.fallen_mean, queue, Vec::new())?;
            }
        }
        if !noticed.observations.is_empty() {
            rows.push(observation_drift(
                drift,
                end.steps,
                &noticed.observations,
                Response::default(),
            ));
        }
        for (data, sentence) in rows {
            self.reflect("drift", data, sentence);
        }
        Ok(())
    }

    /// Records a reflection; one that cannot be written is logged, never fatal.
    fn reflect(&self, kind: &str, data: serde_json::Value, sentence: String) {
        tracing::info!(kind, "{sentence}");
        let row = NewReflection {
            kind: kind.into(),
            model_version: Some(self.ck.state.model_version),
            data,
            sentence,
        };
        if let Err(e) = self.ck.store.add_reflection(&row) {
            tracing::warn!(error = %e, "could not record a {kind} reflection");
        }
    }

    /// Saves the learner that played the world just gone (at `level`) to its memory slot.
    fn remember(&mut self, level: f64, steps: u64) -> Result<usize> {
        let k = self.memory.keep(level, self.world_since, steps);
        std::fs::create_dir_all(self.memory.dir()).map_err(AgentError::io(self.memory.dir()))?;
        if let Some(slot) = self.memory.slot(k) {
            let stem = slot.stem.clone();
            self.host.save(&stem, self.ck.shared)?;
        }
        Ok(k)
    }

    /// Puts the next remembered learner of `queue` on trial; with none left, the trial ends
    /// without a recall and the (reset) learner acts again.
    fn next_trial(
        &mut self,
        change_at: u64,
        broken: f64,
        mut queue: Vec<usize>,
        tried: Vec<(usize, f64)>,
    ) -> Result<()> {
        let c = self.c;
        while !queue.is_empty() {
            let slot = queue.remove(0);
            let Some(stem) = self.memory.slot(slot).map(|s| s.stem.clone()) else {
                continue;
            };
            let loaded = self.ck.dir.learner(
                c.learners(),
                self.ck.store.sampler(),
                c.run.seed,
                self.kind.planned_updates(c.learners(), c.run.steps),
                c.run.acting_precision.into(),
                Some(&stem),
            );
            let mut learner = match loaded {
                Ok(l) => l,
                Err(e) => {
                    tracing::warn!(error = %e, "remembered world {slot} could not be loaded");
                    continue;
                }
            };
            self.ck.shared.pin(learner.as_mut())?;
            self.trial = Some(Trial {
                change_at,
                broken,
                slot,
                learner,
                returns: Vec::new(),
                queue,
                tried,
            });
            return Ok(());
        }
        self.ck.shared.unpin();
        self.host.publish_now(self.ck.shared)?;
        if !tried.is_empty() {
            let (data, sentence) = recall_failed(change_at, self.steps, &tried);
            self.reflect("recall", data, sentence);
        }
        Ok(())
    }

    /// Counts an episode of the learner on trial; after `drift.recall_episodes` judges it: one
    /// that plays at its remembered level and clearly above the broken policy (the mean of
    /// the alarm's recent returns that fell), both by the return detector's smallest fall ([`fits`]),
    /// becomes the learner again. An episode no better than the broken policy ends its trial
    /// at once.
    fn trial_episode(&mut self, ret: f64) -> Result<()> {
        let drift = &self.c.drift;
        let Some(t) = self.trial.as_mut() else {
            return Ok(());
        };
        t.returns.push(ret);
        // An episode no better than the broken policy's mean rules the candidate out at once:
        // wrong candidates cost one episode each, not `recall_episodes`.
        let tol = drift.returns.min_drop * self.watch.return_range();
        let hopeless = ret <= t.broken;
        if t.returns.len() < drift.recall_episodes && !hopeless {
            return Ok(());
        }
        let Some(t) = self.trial.take() else {
            return Ok(());
        };
        let mean = t.returns.iter().sum::<f64>() / t.returns.len() as f64;
        let Some(slot) = self.memory.slot(t.slot).cloned() else {
            return Ok(());
        };
        if !hopeless && fits(mean, slot.level, t.broken, tol) {
            self.ck.shared.unpin();
            self.host.replace(t.learner, self.ck.shared)?;
            self.boosted_at = None;
            self.memory.set_current(Some(t.slot));
            self.memory.save()?;
            let (data, sentence) = recalled(t.change_at, self.steps, t.slot, &slot, mean);
            self.reflect("recall", data, sentence);
            return Ok(());
        }
        let mut tried = t.tried;
        tried.push((t.slot, mean));
        self.next_trial(t.change_at, t.broken, t.queue, tried)
    }

    /// A periodic greedy evaluation of the acting weights (the learner waits meanwhile).
    fn evaluate(&mut self, env: &mut dyn Env) -> Result<()> {
        let c = self.c;
        let t = Instant::now();
        if let LearnerHost::Thread { limiter, .. } = &*self.host {
            limiter.set_paused(true);
        }
        let weights = self.ck.shared.source.latest();
        let r = evaluate_capped(
            env,
            self.eval_policy.as_mut(),
            &weights.snapshot,
            c.run.eval_episodes,
            episode_seed(c.run.seed, EVAL_EPISODES, 0),
            c.replay.episode_cap(),
        );
        if let LearnerHost::Thread { limiter, .. } = &*self.host {
            limiter.set_paused(false);
        }
        self.eval_secs += t.elapsed().as_secs_f64();
        match r {
            // A fault during an evaluation costs that evaluation, not the run.
            Err(AgentError::Fault(f)) => {
                tracing::warn!(steps = self.steps, "evaluation skipped after a fault: {f}");
            }
            r => {
                let r = r?;
                let point = EvalPoint {
                    steps: self.steps,
                    train_secs: self.started.elapsed().as_secs_f64() - self.eval_secs,
                    mean: r.mean,
                    std: r.std,
                };
                tracing::info!(
                    steps = self.steps,
                    updates = self.host.metrics().updates,
                    mean = r.mean,
                    std = r.std,
                    "evaluation"
                );
                (self.hooks.on_eval)(&point);
                self.evals.push(point);
            }
        }
        Ok(())
    }
}

impl ActingControl for TrainActing<'_, '_, '_> {
    fn begin_episode(&mut self, _actor: &mut ReplayActor) -> Result<Option<u64>> {
        Ok((self.steps < self.c.run.steps)
            .then(|| episode_seed(self.c.run.seed, TRAIN_EPISODES, self.episodes)))
    }

    fn admit(&mut self, actor: &mut ReplayActor) -> Result<bool> {
        if self.hooks.stop.load(Ordering::Relaxed) {
            self.interrupted = true;
            return Ok(false);
        }
        if self.steps >= self.c.run.steps {
            return Ok(false);
        }
        if let LearnerHost::Thread { limiter, .. } = &*self.host {
            match limiter.step() {
                Admit::Go => {}
                // Ahead, but the learner has nothing to sample: commit what is finished (the
                // writer would, within its batch latency) and go on.
                Admit::Starved => actor.adder_mut().flush()?,
                // Stopped from the learner side: it failed.
                Admit::Stopped => return Err(self.host.thread_failure()),
            }
        }
        Ok(true)
    }

    fn steps(&self) -> u64 {
        self.steps
    }

    fn exploration(&self) -> f32 {
        if self.trial.is_some() {
            // A remembered learner is judged on how it plays, as it played its world.
            return self.exploration_floor();
        }
        self.exploration_at(self.steps)
    }

    fn stepped(&mut self, _actor: &mut ReplayActor) -> Result<u64> {
        let exploration = self.exploration();
        self.steps += 1;
        self.learn_inline()?;
        if self.last_progress.elapsed() > Duration::from_millis(200) {
            self.last_progress = Instant::now();
            self.host.check_alive()?;
            (self.hooks.on_progress)(&Progress {
                steps: self.steps,
                total_steps: self.c.run.steps,
                recent_return: mean(&self.recent),
                exploration,
                learner: self.host.metrics(),
                model_version: self.ck.state.model_version,
            });
        }
        Ok(self.steps)
    }

    fn fault(&mut self, f: Fault, _call: &str, _episode_steps: u64, in_row: u32) -> Result<bool> {
        tracing::warn!(kind = f.kind.name(), "environment fault: {}", f.message);
        // A bounded run has no one to wait for: a world that keeps failing ends it, with its
        // last fault as the error.
        if in_row >= TRAIN_FAULTS_IN_ROW {
            return Err(f.into());
        }
        Ok(true)
    }

    fn recovered(&mut self) {}

    fn end_episode(
        &mut self,
        env: &mut dyn Env,
        actor: &mut ReplayActor,
        end: &EpisodeEnd<'_>,
    ) -> Result<()> {
        self.episodes += 1;
        if self.recent.len() == 20 {
            self.recent.pop_front();
        }
        self.recent.push_back(end.ret);
        self.trial_episode(end.ret)?;
        self.notice(end)?;
        let c = self.c;
        if self.steps >= self.next_eval {
            self.next_eval = (self.steps / c.run.eval_every + 1) * c.run.eval_every;
            self.evaluate(env)?;
        }
        if self.steps >= self.next_checkpoint {
            self.next_checkpoint =
                (self.steps / c.run.checkpoint_every + 1) * c.run.checkpoint_every;
            self.ck.state.steps = self.steps;
            self.ck.state.episodes = self.episodes;
            self.ck.checkpoint(self.host, actor)?;
        }
        Ok(())
    }

    fn stopping(&self) -> bool {
        self.hooks.stop.load(Ordering::Relaxed)
    }

    fn backoff_max(&self) -> Duration {
        Duration::from_secs(5)
    }
}

/// The actor of a run: acting through `policy` on the shared weights, its exploration
/// stream where the last checkpoint left it. In lockstep mode every episode is committed
/// before it is learned from.
fn make_actor(
    c: &TrainConfig,
    shared: &Shared,
    writer: &WriterHandle,
    run: &Run,
    policy: Box<dyn Policy>,
    state: &RunState,
    run_dir: &Path,
) -> Result<ReplayActor> {
    let lockstep = c.run.mode == Mode::Lockstep;
    let adder = ReplayAdder::new(writer.writer(), run.clone(), lockstep)
        .with_max_episode_steps(c.replay.episode_cap());
    let mut actor = PolicyActor::new(
        shared.source.clone(),
        adder,
        policy,
        c.run.seed,
        shared.obs_stats.clone(),
    );
    let word_pos: u128 = state
        .actor_rng_word_pos
        .parse()
        .map_err(|_| AgentError::RunDir {
            path: run_dir.join(STATE_FILE),
            reason: "actor_rng_word_pos is not a number".into(),
        })?;
    actor.set_rng_word_pos(word_pos);
    if state.model_version > 0 {
        actor
            .adder_mut()
            .set_model_version(Some(state.model_version));
    }
    Ok(actor)
}

/// The greedy evaluation at the end of a run; `None` if the environment failed during it.
fn final_evaluation(
    env: &mut dyn Env,
    policy: &mut dyn Policy,
    learner: &dyn Learner,
    c: &TrainConfig,
) -> Result<Option<EvalReport>> {
    let snapshot: Snapshot = learner.acting_snapshot()?;
    let r = evaluate_capped(
        env,
        policy,
        &snapshot,
        c.run.eval_episodes,
        episode_seed(c.run.seed, FINAL_EVAL_EPISODES, 0),
        c.replay.episode_cap(),
    );
    match r {
        Err(AgentError::Fault(f)) => {
            tracing::warn!("final evaluation skipped after a fault: {f}");
            Ok(None)
        }
        r => Ok(Some(r?)),
    }
}

/// A new run in the store, a fresh learner, and the state file's first counters.
fn fresh_run(
    dir: &RunDir,
    store: &ReplayStore,
    env_id: &str,
    c: &TrainConfig,
    planned: u64,
    precision: autodidact_core::Precision,
) -> Result<(Run, Box<dyn Learner>, RunState)> {
    write_atomic(&dir.path.join(CONFIG_FILE), c.to_toml()?.as_bytes())?;
    let spec = dir.run_spec(env_id, serde_json::json!({"env": env_id, "train": c}))?;
    let run = store.create_run(&spec)?;
    let learner = dir.learner(
        c.learners(),
        store.sampler(),
        c.run.seed,
        planned,
        precision,
        None,
    )?;
    let state = RunState {
        format: 1,
        env_id: env_id.to_string(),
        replay_run_id: run.id,
        steps: 0,
        episodes: 0,
        updates: 0,
        model_version: 0,
        checkpoint: String::new(),
        actor_rng_word_pos: "0".into(),
        learner_checkpoint: None,
    };
    Ok((run, learner, state))
}

/// The run, learner and counters of a run to continue. The store is the record of what was
/// lived: episodes committed after the last checkpoint (a crash) count, so no episode seed is
/// used twice.
fn resumed_run(
    dir: &RunDir,
    store: &ReplayStore,
    mut state: RunState,
    c: &TrainConfig,
    planned: u64,
    precision: autodidact_core::Precision,
) -> Result<(Run, Box<dyn Learner>, RunState)> {
    let run = store.run(state.replay_run_id)?;
    let stem = inside_run_dir(&dir.path, &state.checkpoint)?;
    let learner = dir.learner(
        c.learners(),
        store.sampler(),
        c.run.seed,
        planned,
        precision,
        Some(&stem),
    )?;
    if let Some((steps, episodes)) = stored_counts(store, run.id)? {
        if steps != state.steps {
            tracing::warn!(
                checkpoint_steps = state.steps,
                stored_steps = steps,
                "the replay file holds steps after the last checkpoint; continuing from the \
                 stored count with the checkpointed model"
            );
        }
        state.steps = steps;
        state.episodes = episodes;
    }
    if state.steps >= c.run.steps {
        return Err(AgentError::Config(format!(
            "the run already has {} steps, its budget is {}: pass a larger --steps to continue it",
            state.steps, c.run.steps
        )));
    }
    state.updates = learner.metrics().updates;
    // The resolved configuration now includes this session's overrides and budget.
    write_atomic(&dir.path.join(CONFIG_FILE), c.to_toml()?.as_bytes())?;
    Ok((run, learner, state))
}

fn mean(v: &VecDeque<f64>) -> Option<f64> {
    (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
}

struct Checkpointer<'a> {
    dir: &'a RunDir,
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
        actor: &mut PolicyActor<ReplayAdder>,
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
        actor: &mut PolicyActor<ReplayAdder>,
    ) -> Result<PathBuf> {
        let next = self.store.latest_model()?.map_or(1, |m| m.version + 1);
        let stem = model_stem(next, self.state.steps);
        let (file, metrics) = host.save(&self.dir.path.join(&stem), self.shared)?;
        // Everything the counters claim is committed before the state file says so.
        actor.adder_mut().flush()?;
        let parent = (self.state.model_version > 0).then_some(self.state.model_version);
        let m = model_metrics(self.state.steps, Some(self.state.episodes), &metrics);
        let saved = self.dir.saved_model(stem, file, parent, m)?;
        let model = self.store.register_model(&saved.row)?;
        self.store.promote(model.version)?;
        self.state.model_version = model.version;
        self.state.updates = metrics.updates;
        self.state.checkpoint = saved.stem;
        self.state.actor_rng_word_pos = actor.rng_word_pos().to_string();
        self.state.write(&self.dir.path)?;
        actor.adder_mut().set_model_version(Some(model.version));
        tracing::info!(
            version = model.version,
            steps = self.state.steps,
            "checkpoint"
        );
        Ok(saved.file)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
