//! What the daemon knows about itself, for `/status` (JSON) and `/metrics` (Prometheus text).
//!
//! Every collection here is a ring of fixed size: the board's memory does not grow with the
//! length of the run.

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Write as _;

use serde::Serialize;

use crate::fault::{Fault, FaultKind};
use crate::learner::LearnerMetrics;

/// Returns kept for the status and the return trend.
pub(crate) const RETURNS_KEPT: usize = 200;
/// Reflections kept for the status.
const REFLECTIONS_KEPT: usize = 10;

/// A reflection as the status shows it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ReflectionLine {
    /// Kind (`gate`, `drift`, `reanalyse`, `lessons`).
    pub kind: String,
    /// The model version it is about.
    pub model_version: Option<i64>,
    /// Environment steps when it was recorded.
    pub steps: u64,
    /// The sentence.
    pub sentence: String,
}

/// Mutable figures, behind one mutex in the daemon.
#[derive(Debug, Default)]
pub(crate) struct Board {
    /// Recent training returns with the step count at which each episode began.
    pub returns: VecDeque<(u64, f64)>,
    pub reflections: VecDeque<ReflectionLine>,
    pub reflections_by_kind: BTreeMap<String, u64>,
    pub promoted: u64,
    pub rejected: u64,
    pub drifts: u64,
    pub learner: LearnerMetrics,
    pub latest_version: i64,
}

impl Board {
    pub fn push_return(&mut self, started_at: u64, ret: f64) {
        if self.returns.len() == RETURNS_KEPT {
            self.returns.pop_front();
        }
        self.returns.push_back((started_at, ret));
    }

    pub fn push_reflection(&mut self, line: ReflectionLine) {
        *self
            .reflections_by_kind
            .entry(line.kind.clone())
            .or_default() += 1;
        if self.reflections.len() == REFLECTIONS_KEPT {
            self.reflections.pop_front();
        }
        self.reflections.push_back(line);
    }

    /// Mean of the last `n` returns.
    pub fn recent_return(&self, n: usize) -> Option<f64> {
        let k = self.returns.len().min(n);
        (k > 0).then(|| self.returns.iter().rev().take(k).map(|r| r.1).sum::<f64>() / k as f64)
    }
}

/// Faults of the environments, counted for `/status`, `/metrics` and `/healthz`. Fixed size:
/// one slot per actor plus one for the gate.
#[derive(Debug)]
pub(crate) struct FaultBoard {
    pub by_kind: BTreeMap<FaultKind, u64>,
    /// Faults in a row per actor, the gate's last.
    pub in_row: Vec<u64>,
    pub last: Option<String>,
    /// When each actor (and the gate) last recorded a `fault` reflection, and the faults
    /// since, so a peer faulting every few steps cannot flood the reflections table.
    noted_at: Vec<Option<std::time::Instant>>,
    unnoted: Vec<u64>,
}

/// A fault reflection is recorded at most this often per actor; the faults between are
/// counted in the next one.
const FAULT_NOTE_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

impl FaultBoard {
    /// A board for `actors` actors and the gate.
    pub fn new(actors: usize) -> FaultBoard {
        FaultBoard {
            by_kind: FaultKind::ALL.iter().map(|k| (*k, 0)).collect(),
            in_row: vec![0; actors + 1],
            last: None,
            noted_at: vec![None; actors + 1],
            unnoted: vec![0; actors + 1],
        }
    }

    /// Counts a fault of `who` (an actor index; `in_row.len() - 1` is the gate). Returns its
    /// faults in a row, and `Some(faults since the last note)` when this one should be
    /// recorded as a reflection.
    pub fn record(
        &mut self,
        who: usize,
        what: &str,
        f: &Fault,
        now: std::time::Instant,
    ) -> (u64, Option<u64>) {
        *self.by_kind.entry(f.kind).or_default() += 1;
        self.last = Some(format!("{what}: {f}"));
        let (Some(n), Some(noted), Some(unnoted)) = (
            self.in_row.get_mut(who),
            self.noted_at.get_mut(who),
            self.unnoted.get_mut(who),
        ) else {
            return (0, None);
        };
        *n += 1;
        *unnoted += 1;
        if noted.is_some_and(|t| now.duration_since(t) < FAULT_NOTE_EVERY) {
            return (*n, None);
        }
        *noted = Some(now);
        (*n, Some(std::mem::take(unnoted)))
    }

    /// A good step of `who`.
    pub fn clear(&mut self, who: usize) {
        if let Some(n) = self.in_row.get_mut(who) {
            *n = 0;
        }
    }

    pub fn status(&self) -> FaultStatus {
        FaultStatus {
            total: self.by_kind.values().sum(),
            by_kind: self
                .by_kind
                .iter()
                .map(|(k, n)| (k.name().to_string(), *n))
                .collect(),
            in_row_max: self.in_row.iter().copied().max().unwrap_or(0),
            last: self.last.clone(),
        }
    }
}

/// Environment faults as the status shows them.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct FaultStatus {
    /// Faulty steps and resets in this process.
    pub total: u64,
    /// The same, per kind (`timeout`, `disconnected`, `protocol`, `env_error`,
    /// `bad_observation`, `bad_reward`).
    pub by_kind: BTreeMap<String, u64>,
    /// The most faults in a row of any one actor or the gate.
    pub in_row_max: u64,
    /// The last fault, for a person.
    pub last: Option<String>,
}

/// The champion as the status shows it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ChampionStatus {
    /// Model version.
    pub version: i64,
    /// Its checkpoint, relative to the run directory.
    pub checkpoint: String,
}

/// Replay file figures.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ReplayStatus {
    /// Transitions kept in the file (after retention).
    pub transitions: i64,
    /// Episodes kept in the file.
    pub episodes: i64,
    /// Transitions in the sampling window.
    pub window: usize,
    /// The writer thread that commits episodes.
    pub writer: WriterStatus,
}

/// The replay writer as the status shows it: whether it is committing, and what it holds.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct WriterStatus {
    /// `busy` (another process holds the file's lock), `disk_full` or `io` while commits
    /// fail and are retried; none while it commits.
    pub stalled: Option<String>,
    /// Seconds since the current stall began.
    pub stalled_for_s: Option<f64>,
    /// Failed commit attempts retried since the start.
    pub retries: u64,
    /// The last failure's text (kept after the stall ends).
    pub last_error: Option<String>,
    /// Episodes acknowledged and not yet committed (bounded by the writer's channel).
    pub queued_episodes: u64,
    /// Acknowledged episodes lost because the writer stopped (0 while it runs).
    pub lost_episodes: u64,
}

impl WriterStatus {
    /// From the writer's own report.
    pub(crate) fn from_health(h: &autodidact_replay::WriterHealth) -> WriterStatus {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        WriterStatus {
            stalled: h.stall.as_ref().map(|s| s.reason.as_str().to_string()),
            stalled_for_s: h.stall.as_ref().map(|s| (now - s.since).max(0.0)),
            retries: h.retries,
            last_error: h.last_error.clone(),
            queued_episodes: h.queued_episodes,
            lost_episodes: h.lost_episodes,
        }
    }
}

/// The answer of `/status`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Status {
    /// Environments the actors act in.
    pub envs: Vec<String>,
    /// Number of actors.
    pub actors: usize,
    /// Whether the actors are acting (false while starting and stopping).
    pub acting: bool,
    /// Seconds since this process started the daemon.
    pub uptime_s: f64,
    /// Environment steps over the whole run.
    pub steps: u64,
    /// Episodes over the whole run.
    pub episodes: u64,
    /// Learner updates over the whole run.
    pub updates: u64,
    /// Environment steps per second in this process.
    pub steps_per_s: f64,
    /// Current exploration level (ε for DQN; see `crate::policy::ActMode`).
    pub epsilon: f32,
    /// The model the gate promoted last.
    pub champion: ChampionStatus,
    /// Whose weights the actors act with now: `"learner"` or `"champion"`
    /// (`daemon.act_with`).
    pub acting_with: String,
    /// The model version the actors' steps are attributed to (with the learner acting: the
    /// newest version cut from it).
    pub acting_version: i64,
    /// The newest registered model version.
    pub latest_version: i64,
    /// Candidates promoted by the gate in this process.
    pub promoted: u64,
    /// Candidates rejected by the gate in this process.
    pub rejected: u64,
    /// Drift alarms in this process.
    pub drifts: u64,
    /// Mean of the last 20 training returns.
    pub recent_return: Option<f64>,
    /// The last training returns (up to 20), oldest first.
    pub returns: Vec<f64>,
    /// The environment step (of the whole daemon) at which each of `returns`' episodes
    /// began: what lets a reader judge only episodes lived after a moment, with any number of
    /// actors.
    pub returns_started_at: Vec<u64>,
    /// The replay file.
    pub replay: ReplayStatus,
    /// Learner metrics.
    pub learner: LearnerMetrics,
    /// The last reflections, oldest first.
    pub last_reflections: Vec<ReflectionLine>,
    /// Reflections recorded in this process, per kind.
    pub reflections_by_kind: BTreeMap<String, u64>,
    /// Environment faults in this process.
    pub faults: FaultStatus,
    /// Why `/healthz` reports the daemon unhealthy, if it does (it keeps running either way).
    pub unhealthy: Option<String>,
    /// Peak resident memory of the process, MiB (Linux; 0 elsewhere).
    pub peak_rss_mib: f64,
    /// Current resident memory of the process, MiB (Linux; 0 elsewhere).
    pub rss_mib: f64,
}

impl Status {
    /// The status in Prometheus' text exposition format (version 0.0.4).
    pub fn prometheus(&self) -> String {
        let mut out = String::new();
        let mut metric = |name: &str, kind: &str, help: &str, samples: &[(&str, f64)]| {
            let _ = writeln!(out, "# HELP autodidact_{name} {help}");
            let _ = writeln!(out, "# TYPE autodidact_{name} {kind}");
            for (labels, v) in samples {
                let v = if v.is_finite() {
                    format!("{v}")
                } else if v.is_nan() {
                    "NaN".into()
                } else if *v > 0.0 {
                    "+Inf".into()
                } else {
                    "-Inf".into()
                };
                let _ = writeln!(out, "autodidact_{name}{labels} {v}");
            }
        };
        self.learning_metrics(&mut metric);
        self.health_metrics(&mut metric);
        out
    }

    /// Progress of acting, learning and the gate.
    fn learning_metrics(&self, metric: &mut impl FnMut(&str, &str, &str, &[(&str, f64)])) {
        metric(
            "env_steps_total",
            "counter",
            "Environment steps over the whole run.",
            &[("", self.steps as f64)],
        );
        metric(
            "episodes_total",
            "counter",
            "Episodes over the whole run.",
            &[("", self.episodes as f64)],
        );
        metric(
            "learner_updates_total",
            "counter",
            "Gradient updates over the whole run.",
            &[("", self.updates as f64)],
        );
        metric(
            "env_steps_per_second",
            "gauge",
            "Environment steps per second in this process.",
            &[("", self.steps_per_s)],
        );
        metric(
            "acting",
            "gauge",
            "1 while the actors act.",
            &[("", f64::from(u8::from(self.acting)))],
        );
        metric(
            "champion_version",
            "gauge",
            "Model version the actors act with.",
            &[("", self.champion.version as f64)],
        );
        metric(
            "latest_model_version",
            "gauge",
            "Newest registered model version.",
            &[("", self.latest_version as f64)],
        );
        metric(
            "gate_decisions_total",
            "counter",
            "Gate decisions in this process.",
            &[
                ("{verdict=\"promoted\"}", self.promoted as f64),
                ("{verdict=\"rejected\"}", self.rejected as f64),
            ],
        );
        metric(
            "drift_alarms_total",
            "counter",
            "Drift alarms in this process.",
            &[("", self.drifts as f64)],
        );
        metric(
            "recent_return",
            "gauge",
            "Mean of the last 20 training returns.",
            &[("", self.recent_return.unwrap_or(f64::NAN))],
        );
        metric(
            "epsilon",
            "gauge",
            "Exploration rate of the actors.",
            &[("", f64::from(self.epsilon))],
        );
    }

    /// Replay, reflections, experts, faults and health.
    fn health_metrics(&self, metric: &mut impl FnMut(&str, &str, &str, &[(&str, f64)])) {
        metric(
            "replay_transitions",
            "gauge",
            "Transitions kept in the replay file.",
            &[("", self.replay.transitions as f64)],
        );
        metric(
            "replay_episodes",
            "gauge",
            "Episodes kept in the replay file.",
            &[("", self.replay.episodes as f64)],
        );
        let w = &self.replay.writer;
        metric(
            "replay_writer_stalled",
            "gauge",
            "1 while the replay writer's commits fail and are retried (busy lock, full disk).",
            &[("", f64::from(u8::from(w.stalled.is_some())))],
        );
        metric(
            "replay_writer_retries_total",
            "counter",
            "Failed commit attempts the replay writer retried.",
            &[("", w.retries as f64)],
        );
        metric(
            "replay_queued_episodes",
            "gauge",
            "Episodes acknowledged and not yet committed.",
            &[("", w.queued_episodes as f64)],
        );
        if let Some(p) = &self.learner.plasticity {
            metric(
                "dormant_unit_ratio",
                "gauge",
                "Share of the learner's hidden units that are dormant (tau = 0.025, Sokar et al. 2023).",
                &[("", p.dormant_ratio)],
            );
            metric(
                "effective_rank",
                "gauge",
                "srank (delta = 0.01) of the features the learner's head reads (Kumar et al. 2021).",
                &[("", p.effective_rank as f64)],
            );
            metric(
                "weight_distance_from_init",
                "gauge",
                "|theta - theta0| / |theta0| of the learner's network.",
                &[("", p.weight_distance.unwrap_or(f64::NAN))],
            );
        }
        metric(
            "learner_loss",
            "gauge",
            "Moving average of the learner's TD loss.",
            &[("", f64::from(self.learner.loss))],
        );
        let kinds = labelled(
            "kind",
            self.reflections_by_kind.iter().map(|(k, n)| (k, *n as f64)),
        );
        metric(
            "reflections_total",
            "counter",
            "Reflections recorded in this process, per kind.",
            &as_refs(&kinds),
        );
        let usage = labelled(
            "expert",
            self.learner.expert_usage.iter().copied().enumerate(),
        );
        metric(
            "expert_usage",
            "gauge",
            "Share of routed tokens per expert of the first MoE layer (learner, moving average).",
            &as_refs(&usage),
        );
        let faults = labelled(
            "kind",
            self.faults.by_kind.iter().map(|(k, n)| (k, *n as f64)),
        );
        metric(
            "env_faults_total",
            "counter",
            "Faulty environment steps and resets in this process, per kind.",
            &as_refs(&faults),
        );
        metric(
            "env_faults_in_row",
            "gauge",
            "The most faults in a row of any one actor or the gate.",
            &[("", self.faults.in_row_max as f64)],
        );
        metric(
            "healthy",
            "gauge",
            "1 while /healthz answers 200.",
            &[("", f64::from(u8::from(self.unhealthy.is_none())))],
        );
        metric(
            "resident_memory_mib",
            "gauge",
            "Resident memory of the process.",
            &[("", self.rss_mib)],
        );
    }
}

/// One Prometheus sample per entry, labelled `{label="key"}`.
fn labelled<K: std::fmt::Display>(
    label: &str,
    entries: impl Iterator<Item = (K, f64)>,
) -> Vec<(String, f64)> {
    entries
        .map(|(k, v)| (format!("{{{label}=\"{k}\"}}"), v))
        .collect()
}

fn as_refs(samples: &[(String, f64)]) -> Vec<(&str, f64)> {
    samples.iter().map(|(l, v)| (l.as_str(), *v)).collect()
}

/// `(current, peak)` resident memory of this process in MiB, from `/proc/self/status`.
pub(crate) fn rss_mib() -> (f64, f64) {
    let Ok(text) = std::fs::read_to_string("/proc/self/status") else {
        return (0.0, 0.0);
    };
    let field = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<f64>().ok())
            .map_or(0.0, |kb| kb / 1024.0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rings_stay_bounded() {
        let mut b = Board::default();
        for i in 0..10_000 {
            b.push_return(i, i as f64);
            b.push_reflection(ReflectionLine {
                kind: "gate".into(),
                model_version: Some(1),
                steps: i,
                sentence: String::new(),
            });
        }
        assert_eq!(b.returns.len(), RETURNS_KEPT);
        assert_eq!(b.reflections.len(), REFLECTIONS_KEPT);
        assert_eq!(b.reflections_by_kind["gate"], 10_000);
        assert_eq!(b.recent_return(2), Some(9_998.5));
    }
}
