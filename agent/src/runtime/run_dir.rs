//! The run directory: one per run of `train` or the daemon, and everything both commands do to
//! it in one place — the lock, the replay store and its options, the run's spec, making or
//! loading the learner through the registry ([`crate::learners`]), and naming, saving and
//! registering checkpoints.
//!
//! ```text
//! <run-dir>/config.toml | daemon.toml   the fully resolved configuration
//! <run-dir>/state.json           counters and the latest checkpoint (written atomically)
//! <run-dir>/replay.sqlite        every transition lived, the model registry
//! <run-dir>/checkpoints/vV-stepN.*  the learner's files for model version V (its layout is
//!                                the learner's own; `.safetensors` holds the acting network)
//! <run-dir>/lock                 flock'ed while a process uses the run
//! ```

use std::path::{Path, PathBuf};

use autodidact_core::{NetworkConfig, ObsNormalizer, Precision};
use autodidact_envs::Space;
use autodidact_replay::{
    Dtype, MirrorOptions, NewModel, ReplayStore, Retention, RunSpec, Sampler, StoreOptions,
};
use serde::{Deserialize, Serialize};

use crate::config::{NetworkSection, ReplaySection};
use crate::error::{AgentError, Result};
use crate::learner::{Learner, LearnerMetrics};
use crate::learners::{LearnerConfigs, LearnerContext, LearnerKind, LearnerPlan};

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
pub struct RunLock {
    /// Holding the open file is holding the lock.
    _file: std::fs::File,
}

impl RunLock {
    /// Takes the lock of `run_dir`, or says that another process holds it.
    pub fn acquire(run_dir: &Path) -> Result<RunLock> {
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

/// `stem` + `suffix` as a path (`checkpoints/step-1000` + `.safetensors`).
pub fn with_suffix(stem: &Path, suffix: &str) -> PathBuf {
    let mut s = stem.as_os_str().to_os_string();
    s.push(suffix);
    PathBuf::from(s)
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

/// The learner's own rayon pool, so its parallel kernels never queue behind (or steal the
/// core of) the actor.
pub(crate) fn learner_pool(threads: usize) -> Result<rayon::ThreadPool> {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .thread_name(|i| format!("learner-{i}"))
        .build()
        .map_err(|e| AgentError::Config(format!("run.learner_threads: cannot start the pool: {e}")))
}

/// The registry's metrics of a model version. `expert_usage` (share of routed tokens per expert
/// of the first MoE layer) is what `autodidact replay … experts` charts; it is left out before
/// the first update, when nothing has been routed yet.
pub(crate) fn model_metrics(
    steps: u64,
    episodes: Option<u64>,
    m: &LearnerMetrics,
) -> serde_json::Value {
    let mut v = serde_json::json!({
        "env_steps": steps,
        "updates": m.updates,
        "loss": m.loss,
        "grad_norm": m.grad_norm,
    });
    if let Some(e) = episodes {
        v["episodes"] = serde_json::json!(e);
    }
    if !m.expert_usage.is_empty() {
        v["expert_usage"] = serde_json::json!(m.expert_usage);
        v["router_entropy"] = serde_json::json!(m.router_entropy);
    }
    if let Some(p) = &m.plasticity {
        v["plasticity"] = serde_json::json!(p);
    }
    v
}

/// Stored observations a plasticity measurement looks at.
pub const PLASTICITY_SAMPLES: usize = 512;

/// Measures `learner`'s plasticity (into its metrics) before a checkpoint records them. A
/// failed measurement costs the figures, never the checkpoint.
pub fn measure_plasticity(learner: &mut dyn Learner) {
    if let Err(e) = learner.plasticity(PLASTICITY_SAMPLES) {
        tracing::warn!(error = %e, "plasticity not measured");
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

/// A run directory in use: locked, with the world's spaces and the learner that acts in them.
pub struct RunDir {
    /// Its path.
    pub path: PathBuf,
    /// The learner kind of the run.
    pub kind: &'static dyn LearnerKind,
    /// Observation width.
    pub obs_dim: usize,
    /// The world's action space.
    pub action_space: Space,
    /// The network the learner acts with.
    pub network: NetworkConfig,
    /// The `[network]` section it was built from.
    pub network_section: NetworkSection,
    _lock: RunLock,
}

impl RunDir {
    /// Locks `path` (creating it and `checkpoints/`) for a run of `kind` in a world with
    /// `obs_dim` observation values and actions in `action_space`.
    pub fn open(
        path: &Path,
        kind: &'static dyn LearnerKind,
        obs_dim: usize,
        action_space: Space,
        network: &NetworkSection,
    ) -> Result<RunDir> {
        let net = kind.network(network, obs_dim, &action_space)?;
        net.validate()?;
        std::fs::create_dir_all(path.join("checkpoints"))
            .map_err(AgentError::io(path.join("checkpoints")))?;
        let lock = RunLock::acquire(path)?;
        Ok(RunDir {
            path: path.to_path_buf(),
            kind,
            obs_dim,
            action_space,
            network: net,
            network_section: network.clone(),
            _lock: lock,
        })
    }

    /// Opens (or creates) the replay file with the window, retention and durability of
    /// `replay` and the sampling the learner needs. `max_transitions`: the file's bound.
    pub fn open_store(
        &self,
        replay: &ReplaySection,
        needs: &LearnerPlan,
        max_transitions: Option<u64>,
    ) -> Result<ReplayStore> {
        Ok(ReplayStore::open(
            self.path.join(REPLAY_FILE),
            StoreOptions {
                mirror: MirrorOptions {
                    capacity: replay.capacity,
                    alpha: needs.priority_alpha,
                },
                retention: Retention {
                    max_transitions,
                    ..Retention::default()
                },
                durability: replay.durability.into(),
                ..StoreOptions::default()
            },
        )?)
    }

    /// The spec of a new run of `env_id` in the store; `config` is recorded with it.
    pub fn run_spec(&self, env_id: &str, config: serde_json::Value) -> Result<RunSpec> {
        Ok(RunSpec {
            env_id: env_id.to_string(),
            obs_dims: vec![self.obs_dim],
            obs_dtype: Dtype::F32,
            action_space: self.kind.action_space(&self.action_space)?,
            config,
            code_version: env!("CARGO_PKG_VERSION").into(),
        })
    }

    /// A fresh learner (`resume = None`) or the one saved under the stem `resume`.
    pub fn learner(
        &self,
        configs: LearnerConfigs<'_>,
        sampler: Sampler,
        seed: u64,
        planned_updates: u64,
        precision: Precision,
        resume: Option<&Path>,
    ) -> Result<Box<dyn Learner>> {
        let ctx = LearnerContext {
            configs,
            network: self.network.clone(),
            network_section: self.network_section.clone(),
            obs_dim: self.obs_dim,
            action_space: self.action_space.clone(),
            sampler,
            seed,
            planned_updates,
            precision,
        };
        match resume {
            None => self.kind.create(ctx),
            Some(stem) => self.kind.load(ctx, stem),
        }
    }

    /// The observation statistics actors feed and the learner's normaliser reads, if the
    /// network normalises: the learner's own after a resume.
    pub fn obs_stats(
        &self,
        network: &NetworkSection,
        learner: &dyn Learner,
    ) -> Option<std::sync::Arc<std::sync::Mutex<ObsNormalizer>>> {
        network.normalize_obs.then(|| {
            std::sync::Arc::new(std::sync::Mutex::new(learner.obs_stats().unwrap_or_else(
                || ObsNormalizer::new(self.obs_dim, true, network.obs_clip),
            )))
        })
    }

    /// Saves `learner` as model version `version` (the next one the registry will give) at
    /// `steps`, and returns the registry row for it (parent `parent`).
    pub fn save_model(
        &self,
        learner: &dyn Learner,
        version: i64,
        steps: u64,
        parent: Option<i64>,
        metrics: serde_json::Value,
    ) -> Result<SavedModel> {
        let stem = model_stem(version, steps);
        let file = learner.save(&self.path.join(&stem))?;
        self.saved_model(stem, file, parent, metrics)
    }

    /// The registry row of a learner saved under `stem` (see [`model_stem`]), whose acting
    /// network is `file`: the checksum is taken from the file as it is on disk.
    pub fn saved_model(
        &self,
        stem: String,
        file: PathBuf,
        parent: Option<i64>,
        metrics: serde_json::Value,
    ) -> Result<SavedModel> {
        let bytes = std::fs::read(&file).map_err(AgentError::io(&file))?;
        Ok(SavedModel {
            row: NewModel {
                parent,
                checkpoint_path: format!("{stem}.safetensors"),
                checksum: format!("crc32:{:08x}", crc32fast::hash(&bytes)),
                metrics,
            },
            stem,
            file,
        })
    }
}

/// The checkpoint stem (relative to the run directory) of model version `version` saved at
/// `steps`. Named by the version it will become, so no later checkpoint overwrites the files of
/// a registered one (two checkpoints may share a step count).
pub fn model_stem(version: i64, steps: u64) -> String {
    format!("checkpoints/v{version:05}-step{steps:010}")
}

/// A learner saved as a model version, not registered yet.
pub struct SavedModel {
    /// The registry row to register.
    pub row: NewModel,
    /// The checkpoint stem, relative to the run directory.
    pub stem: String,
    /// The file with the acting network.
    pub file: PathBuf,
}

/// Steps and episodes the store holds for run `run_id`: the record of what was lived, newer
/// than any checkpoint after a crash.
pub fn stored_counts(store: &ReplayStore, run_id: i64) -> Result<Option<(u64, u64)>> {
    Ok(store
        .summary()?
        .runs
        .iter()
        .find(|r| r.run_id == run_id)
        .map(|r| (r.transitions_total as u64, r.episodes_total as u64)))
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
}
