//! What the daemon knows about itself, for `/status` (JSON) and `/metrics` (Prometheus text).
//!
//! Every collection here is a ring of fixed size: the board's memory does not grow with the
//! length of the run.

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Write as _;

use serde::Serialize;

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
    /// Recent training returns with the step count at which each episode ended.
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
    pub fn push_return(&mut self, steps: u64, ret: f64) {
        if self.returns.len() == RETURNS_KEPT {
            self.returns.pop_front();
        }
        self.returns.push_back((steps, ret));
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
    /// Current ε.
    pub epsilon: f32,
    /// The model the actors act with.
    pub champion: ChampionStatus,
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
    /// The replay file.
    pub replay: ReplayStatus,
    /// Learner metrics.
    pub learner: LearnerMetrics,
    /// The last reflections, oldest first.
    pub last_reflections: Vec<ReflectionLine>,
    /// Reflections recorded in this process, per kind.
    pub reflections_by_kind: BTreeMap<String, u64>,
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
        metric(
            "learner_loss",
            "gauge",
            "Moving average of the learner's TD loss.",
            &[("", f64::from(self.learner.loss))],
        );
        let kinds: Vec<(String, f64)> = self
            .reflections_by_kind
            .iter()
            .map(|(k, n)| (format!("{{kind=\"{k}\"}}"), *n as f64))
            .collect();
        let kinds: Vec<(&str, f64)> = kinds.iter().map(|(l, n)| (l.as_str(), *n)).collect();
        metric(
            "reflections_total",
            "counter",
            "Reflections recorded in this process, per kind.",
            &kinds,
        );
        let usage: Vec<(String, f64)> = self
            .learner
            .expert_usage
            .iter()
            .enumerate()
            .map(|(i, u)| (format!("{{expert=\"{i}\"}}"), *u))
            .collect();
        let usage: Vec<(&str, f64)> = usage.iter().map(|(l, n)| (l.as_str(), *n)).collect();
        metric(
            "expert_usage",
            "gauge",
            "Share of routed tokens per expert of the first MoE layer (learner, moving average).",
            &usage,
        );
        metric(
            "resident_memory_mib",
            "gauge",
            "Resident memory of the process.",
            &[("", self.rss_mib)],
        );
        out
    }
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
