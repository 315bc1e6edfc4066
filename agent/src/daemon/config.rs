//! The daemon's configuration: one TOML file (`agent/daemon.toml` documents every key and its
//! default; `autodidact daemon --print-config` prints the resolved values). The network, replay
//! and DQN sections are the ones `train` uses; the daemon adds its own scheduling, the HTTP
//! endpoint, the evaluation gate, drift detection and the reflection schedule.

use std::net::SocketAddr;
use std::path::Path;

use autodidact_core::precision::Precision;
use serde::{Deserialize, Serialize};

use crate::bounds::{self, MAX_ACTORS, MAX_LEAD_STEPS, MAX_STEPS, MAX_THREADS};
pub use crate::config::DriftSection;
use crate::config::{NetworkSection, PrecisionName, ReplaySection};
use crate::dqn::DqnConfig;
use crate::error::{AgentError, Result};
use crate::gate::GateConfig;
use crate::learners::{LearnerConfigs, LearnerSection};
use crate::sac::SacConfig;

/// Everything the daemon needs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DaemonConfig {
    /// Environments, actors, scheduling.
    pub daemon: DaemonSection,
    /// The status endpoint.
    pub http: HttpSection,
    /// The Q-network (its input and output widths come from the environment).
    pub network: NetworkSection,
    /// The replay window and retention (bounded by default: the daemon runs for days).
    pub replay: ReplaySection,
    /// Which learner learns.
    pub learner: LearnerSection,
    /// The DQN learner's hyper-parameters. The daemon decays the learning rate over
    /// `daemon.lr_decay_updates` (and starts it again after a drift) instead of over a run's
    /// length, anneals ε over `daemon.exploration_steps` instead of `dqn.exploration_fraction`,
    /// and keeps prioritized replay's β at `dqn.per_beta0` (a run without end has no point to
    /// anneal it to).
    pub dqn: DqnConfig,
    /// Soft Actor-Critic's hyper-parameters (continuous actions); its exploration and
    /// learning-rate schedules are those of `[dqn]`'s note: no ε schedule (the Gaussian
    /// explores), the learning rate over `daemon.lr_decay_updates`.
    pub sac: SacConfig,
    /// When a candidate may replace the champion.
    pub gate: GateConfig,
    /// Detecting a changed world, and what the daemon does about it.
    pub drift: DriftSection,
    /// The schedule of reflection passes (reanalyse and lessons).
    pub reflection: ReflectionSection,
}

impl Default for DaemonConfig {
    fn default() -> Self {
        DaemonConfig {
            daemon: DaemonSection::default(),
            http: HttpSection::default(),
            network: NetworkSection::default(),
            replay: ReplaySection {
                max_stored_transitions: 1_000_000,
                ..ReplaySection::default()
            },
            learner: LearnerSection::default(),
            dqn: DqnConfig::default(),
            sac: SacConfig::default(),
            gate: GateConfig::default(),
            drift: DriftSection::default(),
            reflection: ReflectionSection::default(),
        }
    }
}

/// Whose weights the daemon's actors act with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActWith {
    /// The learner's newest weights, unless the gate found its last candidate clearly worse
    /// than the champion (then the champion's, until a candidate is promoted).
    Learner,
    /// The champion's only.
    Champion,
}

/// Environments, actors and scheduling.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DaemonSection {
    /// Environment IDs (native, `gym:`, `exec:`, `tcp:`); actor `i` acts in `envs[i % len]`.
    /// All must share observation and action spaces. `--env` sets a single one.
    pub envs: Vec<String>,
    /// Actors, each on its own thread with its own environment instance.
    pub actors: usize,
    /// Seed of the network, exploration, sampling and episode resets.
    pub seed: u64,
    /// Stop after this many environment steps in total (0 = run until stopped).
    pub max_steps: u64,
    /// Environment steps the actors may run ahead of the replay ratio before they wait for
    /// the learner.
    pub max_lead_steps: u64,
    /// After `dqn.learning_starts`, ε falls linearly from `dqn.exploration_initial_eps` to
    /// `dqn.exploration_final_eps` over this many steps. 5 000 by default, what `train`'s
    /// defaults give (`dqn.exploration_fraction` 0.1 of 50 000 steps): from scratch the daemon
    /// then needed 0.97–1.26× `train`'s steps on CartPole, MountainCar, Acrobot and a goal
    /// region (medians of 3 seeds), against 1.04–2.0× with 10 000.
    pub exploration_steps: u64,
    /// Learner updates between candidates sent to the gate (a candidate is only cut when the
    /// gate is free, so the gate never queues up).
    pub candidate_every: u64,
    /// The learning rate falls linearly from `dqn.lr` to `dqn.lr · dqn.lr_final_ratio` over
    /// this many updates, and starts again from `dqn.lr` after a drift alarm.
    pub lr_decay_updates: u64,
    /// After this many rejections in a row, the learner starts again from the champion
    /// (weights, target network and optimizer): a learner that diverged would otherwise only
    /// wander further (0 = never). Only in a settled world: not until the learning rate has
    /// decayed halfway since the start or the last drift alarm.
    pub rollback_after: u64,
    /// Checkpoint files kept besides the champion's: those of the newest this many versions.
    /// Older files are deleted (their registry rows stay), so the disk use is bounded.
    pub keep_checkpoints: u64,
    /// Number format of the weights actors act with (`f32`, `bf16`, `f16`).
    pub acting_precision: PrecisionName,
    /// Whose weights the actors act with: `learner` (its newest weights, as `train` acts; the
    /// champion takes over while the gate finds the learner's candidate clearly worse than it,
    /// until the next promotion) or `champion` (only models the gate promoted). The learner by
    /// default: a champion that changes only when a candidate passes the gate lags the
    /// learner by thousands of steps, which the learner's own data then lacks. Measured from
    /// scratch (3 seeds, steps until the last 20 returns average the mark): Acrobot to −120,
    /// the champion acting never got there in 40 k steps, the learner in 10.4 – 13.9 k (`train`
    /// 8.6 – 11.3 k); a goal region 5.99 – 6.24 k against 6.56 – 13.9 k; CartPole to 450
    /// 16.5 – 19.9 k against 18.8 – 27.2 k.
    pub act_with: ActWith,
    /// Threads of the learner's pool; unset, the learner's kind chooses
    /// ([`crate::learners::LearnerPlan::threads`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub learner_threads: Option<usize>,
    /// Seconds a graceful stop (SIGTERM, SIGINT) may take before the process exits anyway;
    /// committed data is safe either way.
    pub shutdown_timeout_s: f64,
    /// After this many faults of one actor's environment in a row (a failed step or reset,
    /// with no good step between), `/healthz` reports the daemon unhealthy. It keeps running
    /// and retrying either way.
    pub unhealthy_after_faults: u64,
    /// Longest wait between retries of a failing environment; the wait doubles per fault in
    /// a row from 50 ms up to this.
    pub fault_backoff_max_s: f64,
}

impl Default for DaemonSection {
    fn default() -> Self {
        DaemonSection {
            envs: Vec::new(),
            actors: 1,
            seed: 0,
            max_steps: 0,
            max_lead_steps: 200,
            exploration_steps: 5_000,
            candidate_every: 1_000,
            lr_decay_updates: 50_000,
            rollback_after: 5,
            keep_checkpoints: 20,
            acting_precision: PrecisionName::F32,
            act_with: ActWith::Learner,
            learner_threads: None,
            shutdown_timeout_s: 15.0,
            unhealthy_after_faults: 10,
            fault_backoff_max_s: 30.0,
        }
    }
}

/// The status endpoint.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpSection {
    /// Serve `/healthz`, `/status` and `/metrics`.
    pub enabled: bool,
    /// Address to listen on (port 0: any free port; the bound address is written to
    /// `<run-dir>/http.addr`).
    pub bind: String,
    /// Bearer token required on `/status` and `/metrics` (`Authorization: Bearer …`). Required
    /// when `bind` is not a loopback address. The environment variable
    /// `AUTODIDACT_HTTP_TOKEN` is used when this is empty.
    pub token: String,
    /// Connections served at once; one more is accepted and closed at once. Each costs a file
    /// descriptor, and the daemon's checkpoints and replay file need theirs: the start fails
    /// when this exceeds half the open-file limit (`ulimit -n`).
    pub max_connections: usize,
    /// Seconds a client has to send a whole request head, from the moment the connection opens
    /// or its previous answer is sent (so it also bounds how long a kept-alive connection may
    /// wait for its next request).
    pub header_read_timeout_s: f64,
    /// Seconds a connection may go without a byte read or written before it is closed (a
    /// client that stops sending its body, or stops reading its answer).
    pub idle_timeout_s: f64,
    /// Largest request body accepted (413 beyond it; no endpoint reads one today).
    pub max_body_bytes: u64,
}

/// Bounds of `http.max_connections`.
pub const HTTP_MAX_CONNECTIONS: std::ops::RangeInclusive<usize> = 1..=4096;
/// Bounds of `http.header_read_timeout_s` and `http.idle_timeout_s`, in seconds.
pub const HTTP_TIMEOUT_S: std::ops::RangeInclusive<f64> = 0.1..=3600.0;
/// Upper bound of `http.max_body_bytes` (64 MiB).
pub const HTTP_MAX_BODY_BYTES: u64 = 64 << 20;

impl Default for HttpSection {
    fn default() -> Self {
        HttpSection {
            enabled: true,
            bind: "127.0.0.1:7979".into(),
            token: String::new(),
            max_connections: 64,
            header_read_timeout_s: 10.0,
            idle_timeout_s: 60.0,
            max_body_bytes: 64 << 10,
        }
    }
}

/// The schedule of reflection passes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReflectionSection {
    /// Seconds between passes (reanalyse, then lessons); 0 = no passes.
    pub every_s: f64,
    /// Batches (of `dqn.batch_size`) a reanalyse pass revisits.
    pub reanalyse_batches: usize,
    /// Stored transitions a lessons pass routes through the champion.
    pub lessons_sample: usize,
    /// The replay file keeps the newest this many reflections (each pass trims the rest).
    pub keep_reflections: u64,
}

impl Default for ReflectionSection {
    fn default() -> Self {
        ReflectionSection {
            every_s: 60.0,
            reanalyse_batches: 64,
            lessons_sample: 2048,
            keep_reflections: 200_000,
        }
    }
}

impl DaemonConfig {
    /// Reads a TOML file over the defaults, then applies `key=value` overrides
    /// (`daemon.actors=2`, `gate.episodes=20`).
    pub fn load(file: Option<&Path>, overrides: &[String]) -> Result<DaemonConfig> {
        let cfg: DaemonConfig = crate::config::load_layered(file, overrides)?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// The config as TOML, every key present.
    pub fn to_toml(&self) -> Result<String> {
        toml::to_string_pretty(self).map_err(|e| AgentError::Config(e.to_string()))
    }

    /// The configuration as written to the run directory and the replay file: everything but
    /// the HTTP token, which is a secret (give it at every start, or in
    /// `AUTODIDACT_HTTP_TOKEN`).
    pub fn persisted(&self) -> DaemonConfig {
        let mut c = self.clone();
        c.http.token.clear();
        c
    }

    /// Every learner's config section.
    pub fn learners(&self) -> LearnerConfigs<'_> {
        LearnerConfigs {
            dqn: &self.dqn,
            sac: &self.sac,
        }
    }

    /// Precision of the acting weights.
    pub fn precision(&self) -> Precision {
        self.daemon.acting_precision.into()
    }

    /// The HTTP token: `http.token`, else `AUTODIDACT_HTTP_TOKEN`, else none.
    pub fn http_token(&self) -> Option<String> {
        if !self.http.token.is_empty() {
            return Some(self.http.token.clone());
        }
        std::env::var("AUTODIDACT_HTTP_TOKEN")
            .ok()
            .filter(|t| !t.is_empty())
    }

    /// Checks every value against its documented range (see [`crate::bounds`]), naming the
    /// key, before anything is written to the run directory.
    pub fn validate(&self) -> Result<()> {
        self.daemon.validate()?;
        self.http.validate(self.http_token().is_some())?;
        self.network.validate()?;
        self.replay
            .validate(self.learner.batch_size(self.learners()))?;
        self.learner.validate()?;
        if self.replay.max_stored_transitions == 0 {
            return bad(
                "replay.max_stored_transitions",
                "the daemon runs indefinitely, so the file needs a bound (default 1000000)",
            );
        }
        if self.replay.max_stored_transitions < self.replay.capacity as u64 {
            return bad(
                "replay.max_stored_transitions",
                "must be at least replay.capacity (the sampling window is rebuilt from the file)",
            );
        }
        self.drift.validate()?;
        self.reflection.validate()?;
        self.gate.validate()?;
        self.dqn.validate()?;
        self.sac.validate()
    }
}

fn bad(key: &str, why: &str) -> Result<()> {
    Err(AgentError::Config(format!("{key}: {why}")))
}

impl DaemonSection {
    /// Checks the `[daemon]` keys against their ranges.
    pub fn validate(&self) -> Result<()> {
        bounds::size("daemon.actors", self.actors, 1, MAX_ACTORS)?;
        if self.envs.iter().any(|e| e.trim().is_empty()) {
            return bad("daemon.envs", "an environment ID is empty");
        }
        bounds::int("daemon.max_steps", self.max_steps, 0, MAX_STEPS)?;
        bounds::int(
            "daemon.max_lead_steps",
            self.max_lead_steps,
            0,
            MAX_LEAD_STEPS,
        )?;
        bounds::int(
            "daemon.exploration_steps",
            self.exploration_steps,
            0,
            MAX_STEPS,
        )?;
        bounds::int("daemon.candidate_every", self.candidate_every, 1, MAX_STEPS)?;
        bounds::int(
            "daemon.lr_decay_updates",
            self.lr_decay_updates,
            1,
            MAX_STEPS,
        )?;
        bounds::int("daemon.rollback_after", self.rollback_after, 0, 1_000_000)?;
        // At least 1: the candidate being judged needs its file.
        bounds::int("daemon.keep_checkpoints", self.keep_checkpoints, 1, 100_000)?;
        if let Some(t) = self.learner_threads {
            bounds::size("daemon.learner_threads", t, 1, MAX_THREADS)?;
        }
        bounds::real(
            "daemon.shutdown_timeout_s",
            self.shutdown_timeout_s,
            0.1,
            3_600.0,
        )?;
        bounds::int(
            "daemon.unhealthy_after_faults",
            self.unhealthy_after_faults,
            1,
            1_000_000,
        )?;
        bounds::real(
            "daemon.fault_backoff_max_s",
            self.fault_backoff_max_s,
            0.01,
            3_600.0,
        )
    }
}

impl HttpSection {
    /// Checks the `[http]` keys; `has_token` says whether a token is configured (here or in
    /// the environment), which a non-loopback bind requires.
    pub fn validate(&self, has_token: bool) -> Result<()> {
        if !self.enabled {
            return Ok(());
        }
        let addr: SocketAddr = match self.bind.parse() {
            Ok(a) => a,
            Err(_) => {
                return bad(
                    "http.bind",
                    &format!("`{}` is not an address like 127.0.0.1:7979", self.bind),
                );
            }
        };
        if !addr.ip().is_loopback() && !has_token {
            return bad(
                "http.bind",
                &format!(
                    "{addr} is reachable from other machines: set http.token (or \
                     AUTODIDACT_HTTP_TOKEN) so only holders of the token can read it"
                ),
            );
        }
        bounds::size(
            "http.max_connections",
            self.max_connections,
            *HTTP_MAX_CONNECTIONS.start() as u64,
            *HTTP_MAX_CONNECTIONS.end() as u64,
        )?;
        for (key, v) in [
            ("http.header_read_timeout_s", self.header_read_timeout_s),
            ("http.idle_timeout_s", self.idle_timeout_s),
        ] {
            bounds::real(key, v, *HTTP_TIMEOUT_S.start(), *HTTP_TIMEOUT_S.end())?;
        }
        bounds::int(
            "http.max_body_bytes",
            self.max_body_bytes,
            0,
            HTTP_MAX_BODY_BYTES,
        )
    }
}

impl ReflectionSection {
    /// Checks the `[reflection]` keys against their ranges.
    pub fn validate(&self) -> Result<()> {
        let every = self.every_s;
        if !(every == 0.0 || (0.1..=86_400.0).contains(&every)) {
            return bad(
                "reflection.every_s",
                "must be 0 (no passes) or between 0.1 and 86400 seconds",
            );
        }
        bounds::size(
            "reflection.reanalyse_batches",
            self.reanalyse_batches,
            0,
            100_000,
        )?;
        bounds::size(
            "reflection.lessons_sample",
            self.lessons_sample,
            16,
            1_000_000,
        )?;
        bounds::int(
            "reflection.keep_reflections",
            self.keep_reflections,
            1,
            1_000_000_000,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_round_trip_and_match_the_documented_file() {
        let cfg = DaemonConfig::default();
        let back: DaemonConfig = toml::from_str(&cfg.to_toml().unwrap()).unwrap();
        assert_eq!(back, cfg);
        let documented = concat!(env!("CARGO_MANIFEST_DIR"), "/daemon.toml");
        let file = DaemonConfig::load(Some(Path::new(documented)), &[]).unwrap();
        assert_eq!(file, cfg, "agent/daemon.toml drifted from the code");
    }

    #[test]
    fn a_section_named_by_a_layer_keeps_the_daemons_own_defaults() {
        // `replay` is bounded for the daemon; naming another replay key must not reset it to
        // the section type's unbounded default (this once refused `--set replay.capacity=…`).
        let c = DaemonConfig::load(None, &["replay.max_episode_steps=300".into()]).unwrap();
        assert_eq!(c.replay.max_episode_steps, 300);
        assert_eq!(
            c.replay.max_stored_transitions,
            DaemonConfig::default().replay.max_stored_transitions
        );
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("d.toml");
        std::fs::write(&f, "[replay]\ncapacity = 5000\n").unwrap();
        let c = DaemonConfig::load(Some(&f), &[]).unwrap();
        assert_eq!(
            (c.replay.capacity, c.replay.max_stored_transitions),
            (5000, 1_000_000)
        );
    }

    #[test]
    fn bad_values_name_their_key() {
        for (kv, key) in [
            ("daemon.actors=0", "daemon.actors"),
            ("daemon.candidate_every=0", "daemon.candidate_every"),
            ("http.bind=nonsense", "http.bind"),
            ("http.bind=0.0.0.0:7979", "http.bind"),
            ("gate.alpha=2", "gate.alpha"),
            ("drift.boost_epsilon=1.5", "drift.boost_epsilon"),
            (
                "replay.max_stored_transitions=0",
                "replay.max_stored_transitions",
            ),
            ("daemon.shutdown_timeout_s=-1", "daemon.shutdown_timeout_s"),
            (
                "daemon.shutdown_timeout_s=1e20",
                "daemon.shutdown_timeout_s",
            ),
            ("reflection.every_s=1e-12", "reflection.every_s"),
            ("reflection.every_s=1e20", "reflection.every_s"),
            ("http.max_connections=0", "http.max_connections"),
            ("http.max_connections=5000", "http.max_connections"),
            ("http.header_read_timeout_s=0", "http.header_read_timeout_s"),
            (
                "http.header_read_timeout_s=nan",
                "http.header_read_timeout_s",
            ),
            ("http.idle_timeout_s=1e9", "http.idle_timeout_s"),
            ("http.max_body_bytes=1e12", "http.max_body_bytes"),
            ("daemon.nonsense=1", "nonsense"),
        ] {
            let err = DaemonConfig::load(None, &[kv.to_string()]).unwrap_err();
            assert!(err.to_string().contains(key), "{kv}: {err}");
        }
        let ok = DaemonConfig::load(
            None,
            &["http.bind=0.0.0.0:7979".into(), "http.token=s3cret".into()],
        );
        assert!(ok.is_ok(), "{ok:?}");
    }
}
