//! Noticing that the world changed, the same way in every command: a fall in episode returns
//! ([`ReturnDrop`]) and observation statistics at reset that moved ([`ObsDrift`]), fed at
//! every episode end, and the `drift` reflection that records each alarm and the response.
//!
//! Both commands respond to a fall in return the same way, each step a `[drift]` key so it can
//! be switched off and measured (`cargo bench -p autodidact --bench continual`):
//! - exploration jumps to `drift.boost_epsilon` (1 by default: the world the policy knew is
//!   gone, so explore like a fresh agent) and decays over `drift.boost_steps`
//!   ([`boosted_exploration`]);
//! - the learners' replay window restarts from the episodes the alarm judged
//!   (`drift.restart_replay`): older episodes describe the world that is gone;
//! - the learner resets its value head and optimizer (`drift.reset_head`, Nikishin et al. 2022):
//!   stale value predictions otherwise keep the greedy policy where the reward used to be.
//!
//! The daemon also restarts its learning-rate decay. A change noticed only in the observation
//! statistics is recorded (and raises exploration only with `drift.boost_on_observations`).

use serde_json::{Value, json};

use crate::config::DriftSection;
use crate::drift::{Direction, Drift, ObsDrift, ReturnDrop};
use crate::runtime::memory::Slot;

/// The drift detectors of one run.
#[derive(Clone, Debug)]
pub struct ChangeWatch {
    cfg: DriftSection,
    returns: ReturnDrop,
    obs: ObsDrift,
}

/// What an episode's end made the detectors see.
#[derive(Clone, Debug, Default)]
pub struct Noticed {
    /// A fall in return.
    pub returns: Option<Drift>,
    /// Observation features whose magnitude at reset moved.
    pub observations: Vec<(usize, Drift)>,
}

impl ChangeWatch {
    /// Detectors for a world with `obs_dim` observation features.
    pub fn new(cfg: &DriftSection, obs_dim: usize) -> Self {
        ChangeWatch {
            cfg: cfg.clone(),
            returns: ReturnDrop::new(cfg.returns),
            obs: ObsDrift::new(obs_dim, cfg.observations),
        }
    }

    /// The world's return range as the return detector sees it (0 before any episode): the
    /// scale of "clearly better" and "at its level" for recall.
    pub fn return_range(&self) -> f64 {
        self.returns.range()
    }

    /// Feeds one ended episode's return to the return detector only (rebuilding its state from
    /// stored episodes after a resume).
    pub fn observe_return(&mut self, ret: f64, settled: bool) -> Option<Drift> {
        self.returns.update_settled(ret, settled)
    }

    /// Feeds one ended episode: its return and the magnitudes of its first observation's
    /// features (where the world started it, which no policy moves).
    ///
    /// `settled`: exploration is back at its floor and no response is in progress, so returns
    /// that stay at the bottom of the world's range are a policy stuck there (a `Stuck` alarm;
    /// see [`ReturnDrop::update_settled`]), not a learner still searching.
    pub fn observe(&mut self, ret: f64, first_abs_obs: &[f32], settled: bool) -> Noticed {
        let returns = self.returns.update_settled(ret, settled);
        let observations = if self.cfg.watch_observations {
            self.obs.update(first_abs_obs)
        } else {
            Vec::new()
        };
        Noticed {
            returns,
            observations,
        }
    }
}

/// The exploration level at `steps` when the schedule gives `base` (and `floor` at its end)
/// and exploration was last boosted at step `boosted_at`: the larger of the schedule and a
/// boost that starts at `drift.boost_epsilon` and decays linearly to the floor over
/// `drift.boost_steps`.
pub fn boosted_exploration(
    cfg: &DriftSection,
    base: f32,
    floor: f32,
    boosted_at: Option<u64>,
    steps: u64,
) -> f32 {
    let Some(at) = boosted_at.filter(|&at| steps >= at) else {
        return base;
    };
    let frac = 1.0 - (steps - at) as f64 / cfg.boost_steps.max(1) as f64;
    if frac <= 0.0 {
        return base;
    }
    base.max(floor + (cfg.boost_epsilon - floor) * frac as f32)
}

/// How a command responded to a change, for its reflection.
#[derive(Clone, Copy, Debug, Default)]
pub struct Response {
    /// Exploration raised to `drift.boost_epsilon` for `drift.boost_steps`.
    pub exploration: bool,
    /// The learning rate started again from this value, decaying over this many updates.
    pub learning_rate: Option<(f32, u64)>,
    /// The replay window restarted from the changed world's episodes, dropping this many
    /// older transitions from it.
    pub replay_dropped: Option<usize>,
    /// The learner's value head reset to fresh weights.
    pub head_reset: bool,
}

impl Response {
    fn words(&self, cfg: &DriftSection) -> String {
        let mut w = Vec::new();
        if self.exploration {
            w.push(format!(
                "exploration raised to {} for {} steps",
                cfg.boost_epsilon, cfg.boost_steps
            ));
        }
        if let Some((lr, _)) = self.learning_rate {
            w.push(format!("the learning rate back to {lr}"));
        }
        if self.head_reset {
            w.push("the value head reset".into());
        }
        if let Some(n) = self.replay_dropped {
            w.push(format!(
                "the replay window restarted from the last {} episodes ({n} older transitions \
                 set aside)",
                cfg.returns.recent
            ));
        }
        if w.is_empty() {
            "no response (recorded only)".into()
        } else {
            w.join(" and ")
        }
    }

    fn data(&self, cfg: &DriftSection) -> Value {
        let mut v = json!({});
        if self.exploration {
            v["exploration"] = json!(cfg.boost_epsilon);
            v["boost_steps"] = json!(cfg.boost_steps);
        }
        if let Some((lr, decay)) = self.learning_rate {
            v["lr"] = json!(lr);
            v["lr_decay_updates"] = json!(decay);
        }
        if let Some(n) = self.replay_dropped {
            v["replay_dropped"] = json!(n);
        }
        if self.head_reset {
            v["head_reset"] = json!(true);
        }
        v
    }
}

/// The `drift` reflection of a fall in return noticed at `steps`: its data and sentence.
pub fn return_drift(
    cfg: &DriftSection,
    steps: u64,
    a: &Drift,
    response: Response,
) -> (Value, String) {
    let recent = cfg.returns.recent;
    let sentence = if a.direction == Direction::Stuck {
        format!(
            "drift at step {steps}: the return stays at {:.3}, at the bottom of what this world \
             pays, where the agent once held {:.3} (the last {} episodes, exploration settled); \
             {}",
            a.mean,
            a.reference_mean,
            a.after,
            response.words(cfg)
        )
    } else {
        format!(
            "drift at step {steps}: the return fell from {:.3} to {:.3} (the last {recent} \
             episodes against the {} before); {}",
            a.reference_mean,
            a.mean,
            a.after.saturating_sub(recent as u64),
            response.words(cfg)
        )
    };
    let data = json!({
        "signal": "returns",
        "steps": steps,
        "alarm": a,
        "action": response.data(cfg),
    });
    (data, sentence)
}

/// The `drift` reflection of observation features that moved, noticed at `steps`.
pub fn observation_drift(
    cfg: &DriftSection,
    steps: u64,
    alarms: &[(usize, Drift)],
    response: Response,
) -> (Value, String) {
    let moved: Vec<String> = alarms
        .iter()
        .map(|(i, a)| {
            format!(
                "mean |obs[{i}]| at reset {} from {:.3} to {:.3}",
                match a.direction {
                    Direction::Up => "rose",
                    Direction::Down | Direction::Stuck => "fell",
                },
                a.reference_mean,
                a.mean
            )
        })
        .collect();
    let sentence = format!(
        "drift at step {steps}: observation statistics moved ({}); {}",
        moved.join(", "),
        response.words(cfg)
    );
    let features: Vec<Value> = alarms
        .iter()
        .map(|(i, a)| json!({"feature": i, "alarm": a}))
        .collect();
    let data = json!({
        "signal": "observations",
        "steps": steps,
        "features": features,
        "action": response.data(cfg),
    });
    (data, sentence)
}

/// The `recall` reflection of a remembered learner taken back at `steps` after the change at
/// `change_at`: slot `k` (`slot`), playing `mean` in the new world.
pub fn recalled(change_at: u64, steps: u64, k: usize, slot: &Slot, mean: f64) -> (Value, String) {
    let sentence = format!(
        "regime change at step {change_at}; recalled world-{k}, learned at steps {} – {} \
         (level {:.3}); back to {mean:.3} in {} steps",
        slot.learned.0,
        slot.learned.1,
        slot.level,
        steps.saturating_sub(change_at)
    );
    let data = json!({
        "outcome": "recalled",
        "change_at": change_at,
        "steps": steps,
        "slot": k,
        "learned": [slot.learned.0, slot.learned.1],
        "level": slot.level,
        "mean": mean,
    });
    (data, sentence)
}

/// The `recall` reflection of a change where no remembered learner played at its level:
/// `tried` holds each slot tried and the mean it played.
pub fn recall_failed(change_at: u64, steps: u64, tried: &[(usize, f64)]) -> (Value, String) {
    let list: Vec<String> = tried
        .iter()
        .map(|(k, m)| format!("world-{k} played {m:.3}"))
        .collect();
    let sentence = format!(
        "regime change at step {change_at}; no remembered world fits ({}); learning it anew \
         from step {steps}",
        list.join(", ")
    );
    let data = json!({
        "outcome": "none",
        "change_at": change_at,
        "steps": steps,
        "tried": tried.iter().map(|(k, m)| json!({"slot": k, "mean": m})).collect::<Vec<_>>(),
    });
    (data, sentence)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_boost_lifts_exploration_and_decays_back_to_the_schedule() {
        let cfg = DriftSection::default();
        let (base, floor) = (0.02, 0.02);
        assert_eq!(boosted_exploration(&cfg, base, floor, None, 5_000), base);
        let at = 1_000;
        let start = boosted_exploration(&cfg, base, floor, Some(at), at);
        assert!((start - cfg.boost_epsilon).abs() < 1e-6, "{start}");
        let half = boosted_exploration(&cfg, base, floor, Some(at), at + cfg.boost_steps / 2);
        assert!(half < start && half > base, "{half}");
        let after = boosted_exploration(&cfg, base, floor, Some(at), at + cfg.boost_steps);
        assert_eq!(after, base);
        // Never below the schedule (early on, the schedule is above the boost).
        assert_eq!(boosted_exploration(&cfg, 1.0, floor, Some(at), at), 1.0);
    }
}
