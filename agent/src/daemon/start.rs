//! Starting the daemon: worlds first (an unreachable adapter is an error before anything is
//! written), then the run directory, the champion and the learner, then the parts.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, Sender, SyncSender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use autodidact_core::{Snapshot, load_checkpoint};
use autodidact_envs::{Env, Space};
use autodidact_replay::{ModelStatus, ReplayStore, Run, WriterHandle, WriterOptions};

use super::checkpoints::verified_champion;
use super::learning::{LearnerRequest, learner_loop, reflection_pass};
use super::shared::{Shared, lock};
use super::status::{Board, FaultBoard};
use super::{
    ACTOR_STREAM, Candidate, DAEMON_CONFIG_FILE, Daemon, DaemonConfig, DaemonOptions, ENDLESS_PLAN,
    EnvFactory, FailOnPanic, actor_loop, gate_loop,
};
use crate::actor::PolicyActor;
use crate::adder::ReplayAdder;
use crate::error::{AgentError, Result};
use crate::fault;
use crate::learner::Learner;
use crate::rate::RateLimiter;
use crate::runtime::changes::ChangeWatch;
use crate::runtime::memory::Memory;
use crate::runtime::with_suffix;
use crate::runtime::{
    RunDir, RunState, STATE_FILE, episode_seed, inside_run_dir, learner_pool, model_metrics,
    stored_counts, write_atomic,
};
use crate::variable::VariableSource;

/// The environments of the actors and the gate, checked to share one kind of world.
struct Worlds {
    actors: Vec<Box<dyn Env>>,
    gate: Box<dyn Env>,
    obs_dim: usize,
    action_space: Space,
}

impl Worlds {
    fn make(cfg: &DaemonConfig, factory: &EnvFactory) -> Result<Worlds> {
        let who = |i: usize| {
            if i == usize::MAX {
                "the gate".to_string()
            } else {
                format!("actor {i}")
            }
        };
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
                        who(i)
                    ))
                })
        };
        let mut actors = Vec::with_capacity(cfg.daemon.actors);
        for i in 0..cfg.daemon.actors {
            actors.push(make(i, &cfg.daemon.envs[i % cfg.daemon.envs.len()])?);
        }
        let gate = make(usize::MAX, &cfg.daemon.envs[0])?;
        let obs_space = actors[0].observation_space().clone();
        let action_space = actors[0].action_space().clone();
        for (i, e) in actors.iter().enumerate().chain([(usize::MAX, &gate)]) {
            if e.observation_space() != &obs_space || e.action_space() != &action_space {
                return Err(AgentError::Config(format!(
                    "daemon.envs: environment of {} has other spaces than actor 0's; one \
                     daemon learns one kind of world",
                    who(i)
                )));
            }
        }
        Ok(Worlds {
            actors,
            gate,
            obs_dim: obs_space.flat_dim(),
            action_space,
        })
    }
}

/// Where a start continues from: the run, the learner, the champion and the counters.
struct Boot {
    run: Run,
    learner: Box<dyn Learner>,
    champion_rel: String,
    champion_version: i64,
    steps: u64,
    episodes: u64,
    /// A recovery reflection to record (the champion's checkpoint was lost).
    recovered: Option<(serde_json::Value, String)>,
}

/// A fresh daemon run: the run in the store (or the one a crash left before the first state
/// file), a fresh learner registered and promoted as v1.
fn boot_fresh(cfg: &DaemonConfig, dir: &RunDir, store: &ReplayStore) -> Result<Boot> {
    let existing = store.snapshot()?.runs()?.into_iter().next();
    let run = match existing {
        Some(r) => r,
        None => {
            let spec = dir.run_spec(
                &cfg.daemon.envs[0],
                serde_json::json!({"daemon": cfg.persisted()}),
            )?;
            store.create_run(&spec)?
        }
    };
    let learner = dir.learner(
        cfg.learners(),
        store.sampler(),
        cfg.daemon.seed,
        ENDLESS_PLAN,
        cfg.precision(),
        None,
    )?;
    let next = store.latest_model()?.map_or(1, |m| m.version + 1);
    let saved = dir.save_model(
        learner.as_ref(),
        next,
        0,
        None,
        model_metrics(0, None, &learner.metrics()),
    )?;
    let model = store.register_model(&saved.row)?;
    store.promote(model.version)?;
    Ok(Boot {
        run,
        learner,
        champion_rel: saved.row.checkpoint_path,
        champion_version: model.version,
        steps: 0,
        episodes: 0,
        recovered: None,
    })
}

/// A daemon run to resume: the registry's champion (or the newest earlier model whose file
/// verifies), the learner of a graceful stop (newer than the champion) or else the
/// champion's, and the counters the store holds.
fn boot_resumed(cfg: &DaemonConfig, dir: &RunDir, store: &ReplayStore) -> Result<Boot> {
    let state = RunState::read(&dir.path)?;
    let run = store.run(state.replay_run_id)?;
    let champion = store.champion()?.ok_or_else(|| AgentError::RunDir {
        path: dir.path.join(crate::runtime::REPLAY_FILE),
        reason: "the model registry has no champion".into(),
    })?;
    let (champion, recovered) = verified_champion(store, &dir.path, champion)?;
    // After a crash there is no learner state and the learner starts again from the champion.
    let learner_stem = state
        .learner_checkpoint
        .as_ref()
        .map(|s| inside_run_dir(&dir.path, s))
        .transpose()?
        .filter(|s| with_suffix(s, ".safetensors").exists());
    let learner_stem = match learner_stem {
        Some(stem) => stem,
        None => inside_run_dir(
            &dir.path,
            champion.checkpoint_path.trim_end_matches(".safetensors"),
        )?,
    };
    let learner = dir.learner(
        cfg.learners(),
        store.sampler(),
        cfg.daemon.seed,
        ENDLESS_PLAN,
        cfg.precision(),
        Some(&learner_stem),
    )?;
    let (steps, episodes) = stored_counts(store, run.id)?.unwrap_or((0, 0));
    Ok(Boot {
        run,
        learner,
        champion_rel: champion.checkpoint_path.clone(),
        champion_version: champion.version,
        steps,
        episodes,
        recovered,
    })
}

impl Shared {
    /// The shared state of a daemon that starts from `boot`.
    fn new(
        cfg: DaemonConfig,
        dir: RunDir,
        store: ReplayStore,
        writer: &WriterHandle,
        boot: &Boot,
    ) -> Result<Shared> {
        let champion_net = load_checkpoint(&inside_run_dir(&dir.path, &boot.champion_rel)?)?;
        let champion_snapshot = Snapshot::from_network(&champion_net.network, cfg.precision())?;
        // The actors start with the champion's weights either way: the learner's are
        // published at its first update (for a fresh run they are the same weights).
        let behaviour = Arc::new(VariableSource::new(champion_snapshot.clone()));
        let champion = Arc::new(VariableSource::new(champion_snapshot));
        let obs_stats = dir.obs_stats(&cfg.network, boot.learner.as_ref());
        let updates = boot.learner.metrics().updates;
        let needs = dir.kind.plan(cfg.learners());
        // Steps taken after the champion was saved earned no updates yet; forgive them, so a
        // restarted daemon acts at once instead of waiting for the learner to catch up.
        let owed = (boot.steps.saturating_sub(needs.learning_starts)) as f64 * needs.replay_ratio;
        let limiter = Arc::new(RateLimiter::new(
            needs.replay_ratio,
            needs.learning_starts,
            cfg.daemon.max_lead_steps,
            boot.steps,
            updates.max(owed as u64),
        ));
        let board = Board {
            latest_version: store.latest_model()?.map_or(0, |m| m.version),
            learner: boot.learner.metrics(),
            ..Board::default()
        };
        let obs_dim = dir.obs_dim;
        Ok(Shared {
            started: Instant::now(),
            start_steps: boot.steps,
            stop: AtomicBool::new(false),
            acting: AtomicBool::new(false),
            failure: Mutex::new(None),
            done: tokio::sync::Notify::new(),
            steps: AtomicU64::new(boot.steps),
            episodes: AtomicU64::new(boot.episodes),
            episode_seq: AtomicU64::new(boot.episodes),
            updates: AtomicU64::new(updates),
            champion,
            behaviour,
            learner_distrusted: AtomicBool::new(false),
            learner_version: AtomicI64::new(boot.champion_version),
            champion_version: AtomicI64::new(boot.champion_version),
            champion_checkpoint: Mutex::new(boot.champion_rel.clone()),
            obs_stats,
            board: Mutex::new(board),
            sampler: store.sampler(),
            store: Mutex::new(store),
            writer: writer.writer(),
            registering: Mutex::new(()),
            limiter,
            gate_busy: AtomicBool::new(false),
            boosted_at: AtomicU64::new(u64::MAX),
            lr_reset_at: AtomicU64::new(0),
            rejections_in_row: AtomicU64::new(0),
            rollback: AtomicBool::new(false),
            reset_head: AtomicBool::new(false),
            best_level: Mutex::new(None),
            prune_floor: AtomicI64::new(1),
            demoted: AtomicI64::new(0),
            detectors: Mutex::new(ChangeWatch::new(&cfg.drift, obs_dim)),
            memory: Mutex::new(
                Memory::load(&dir.path, cfg.drift.memory_slots).unwrap_or_else(|e| {
                    tracing::warn!(error = %e, "going on without the remembered worlds");
                    Memory::new(&dir.path, cfg.drift.memory_slots)
                }),
            ),
            recall: Mutex::new(None),
            world_since: AtomicU64::new(boot.steps),
            faults: Mutex::new(FaultBoard::new(cfg.daemon.actors)),
            obs_dim,
            run_id: boot.run.id,
            dir,
            cfg,
        })
    }

    /// Records what the start found: a recovered champion, and candidates the last run
    /// registered but never judged (rejected, saying so); then the state file, so a crash
    /// from here on resumes from the champion, never from an older learner state.
    fn record_start(&self, recovered: Option<(serde_json::Value, String)>) -> Result<()> {
        let champion_version = self.champion_version.load(Ordering::SeqCst);
        if let Some((data, sentence)) = recovered {
            self.reflect("recovery", Some(champion_version), data, sentence)?;
        }
        self.reject_unjudged()?;
        self.write_state(None)
    }

    /// Rejects, saying so, every candidate newer than the champion that the gate never judged
    /// (cut while the daemon was stopping). Called when the gate has ended: at a graceful stop,
    /// and at the next start for a stop that was not graceful.
    pub(crate) fn reject_unjudged(&self) -> Result<()> {
        let champion_version = self.champion_version.load(Ordering::SeqCst);
        let pending: Vec<i64> = lock(&self.store)
            .models()?
            .into_iter()
            // A demoted champion is a candidate again (the registry keeps one champion), but
            // it was judged; an undecided candidate is newer than the champion.
            .filter(|m| m.status == ModelStatus::Candidate && m.version > champion_version)
            .map(|m| m.version)
            .collect();
        for v in pending {
            lock(&self.store).reject(v)?;
            self.reflect(
                "gate",
                Some(v),
                serde_json::json!({"candidate": v, "interrupted": true}),
                format!("candidate v{v} rejected: the daemon stopped before the gate judged it"),
            )?;
        }
        Ok(())
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
        let worlds = Worlds::make(&cfg, &factory)?;
        let kind = cfg.learner.resolve(&worlds.action_space)?;
        let dir = RunDir::open(
            &run_dir,
            kind,
            worlds.obs_dim,
            worlds.action_space.clone(),
            &cfg.network,
        )?;
        let fresh = !run_dir.join(STATE_FILE).exists();
        if fresh {
            // Before the replay file: a crash in between must leave a directory that the next
            // start recognises as this daemon's, not as a `train` run.
            write_atomic(
                &run_dir.join(DAEMON_CONFIG_FILE),
                cfg.persisted().to_toml()?.as_bytes(),
            )?;
        }
        let needs = kind.plan(cfg.learners());
        let store = dir.open_store(&cfg.replay, &needs, Some(cfg.replay.max_stored_transitions))?;
        let mut boot = if fresh {
            boot_fresh(&cfg, &dir, &store)?
        } else {
            boot_resumed(&cfg, &dir, &store)?
        };
        let writer = store.start_writer(WriterOptions::default())?;
        let shared = Arc::new(Shared::new(cfg, dir, store, &writer, &boot)?);
        shared.record_start(boot.recovered.take())?;

        let (gate_tx, gate_rx) = std::sync::mpsc::sync_channel::<Candidate>(1);
        let (learner_tx, learner_rx) = std::sync::mpsc::channel();
        let learner_task = spawn_learner(&rt, &shared, boot.learner, learner_rx, gate_tx.clone())?;
        let gate_task = spawn_gate(&rt, &shared, gate_rx, worlds.gate)?;
        let actors = spawn_actors(
            &rt,
            &shared,
            &writer,
            &boot.run,
            worlds.actors,
            boot.episodes,
        )?;
        shared.acting.store(true, Ordering::SeqCst);
        let reflect_task = spawn_reflection(&rt, &shared, learner_tx.clone());

        let mut daemon = Daemon {
            rt: Some(rt),
            _learner_tx: learner_tx,
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
            learner = daemon.shared.dir.kind.name(),
            champion = boot.champion_version,
            steps = boot.steps,
            resumed = !fresh,
            "daemon started"
        );
        Ok(daemon)
    }
}

type Task<T> = tokio::task::JoinHandle<Result<T>>;

fn spawn_learner(
    rt: &tokio::runtime::Runtime,
    shared: &Arc<Shared>,
    learner: Box<dyn Learner>,
    requests: Receiver<LearnerRequest>,
    gate: SyncSender<Candidate>,
) -> Result<Task<Box<dyn Learner>>> {
    let threads = (shared.cfg.daemon.learner_threads)
        .unwrap_or_else(|| shared.dir.kind.plan(shared.cfg.learners()).threads);
    let pool = learner_pool(threads)?;
    let s = shared.clone();
    Ok(rt.spawn_blocking(move || {
        let _guard = FailOnPanic(s.clone(), "learner");
        let r = pool.install(|| learner_loop(s.clone(), learner, requests, gate));
        if let Err(e) = &r {
            s.fail("the learner", e);
        }
        r
    }))
}

fn spawn_gate(
    rt: &tokio::runtime::Runtime,
    shared: &Arc<Shared>,
    candidates: Receiver<Candidate>,
    env: Box<dyn Env>,
) -> Result<Task<()>> {
    let policy = shared.dir.kind.policy(&shared.dir.action_space)?;
    let s = shared.clone();
    Ok(rt.spawn_blocking(move || {
        let _guard = FailOnPanic(s.clone(), "gate");
        let r = gate_loop(s.clone(), candidates, env, policy);
        if let Err(e) = &r {
            s.fail("the gate", e);
        }
        r
    }))
}

fn spawn_actors(
    rt: &tokio::runtime::Runtime,
    shared: &Arc<Shared>,
    writer: &WriterHandle,
    run: &Run,
    envs: Vec<Box<dyn Env>>,
    episodes: u64,
) -> Result<Vec<Task<()>>> {
    let cfg = &shared.cfg;
    let mut actors = Vec::with_capacity(envs.len());
    for (i, env) in envs.into_iter().enumerate() {
        let adder = ReplayAdder::new(writer.writer(), run.clone(), false)
            .with_max_episode_steps(cfg.replay.episode_cap());
        let actor = PolicyActor::new(
            shared.behaviour.clone(),
            adder,
            shared
                .dir
                .kind
                .exploring_policy(cfg.learners(), &shared.dir.action_space)?,
            episode_seed(cfg.daemon.seed, ACTOR_STREAM + i as u64, episodes),
            shared.obs_stats.clone(),
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
    Ok(actors)
}

fn spawn_reflection(
    rt: &tokio::runtime::Runtime,
    shared: &Arc<Shared>,
    learner: Sender<LearnerRequest>,
) -> Option<tokio::task::JoinHandle<()>> {
    let every_s = shared.cfg.reflection.every_s;
    (every_s > 0.0).then(|| {
        let s = shared.clone();
        let every = Duration::from_secs_f64(every_s);
        rt.spawn(async move {
            let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                if s.stopping() {
                    return;
                }
                let (s2, tx) = (s.clone(), learner.clone());
                // A failed pass is logged, not fatal: acting and learning do not need it.
                match tokio::task::spawn_blocking(move || reflection_pass(&s2, &tx)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => tracing::warn!(error = %e, "a reflection pass failed"),
                    Err(e) => tracing::error!(error = %e, "a reflection pass panicked"),
                }
            }
        })
    })
}
