//! Noticing that the world changed (the drift detectors fed at every episode end) and the
//! daemon's response, recorded as `drift` reflections.

use std::sync::atomic::Ordering;

use super::shared::{Shared, lock};
use crate::drift::Direction;
use crate::error::Result;

impl Shared {
    /// Feeds an ended episode (begun at step `started_at`, ended at `steps`, whose first
    /// observation had the feature magnitudes `first_abs_obs`) to the board and the drift
    /// detectors. The observation detectors watch first observations, not whole episodes: a
    /// learning policy changes the states it visits (a balanced pole stays near upright), but
    /// not where the world starts it, so a stationary world's learner raises no alarm.
    pub(crate) fn on_episode(
        &self,
        started_at: u64,
        steps: u64,
        ret: f64,
        first_abs_obs: &[f32],
    ) -> Result<()> {
        lock(&self.board).push_return(started_at, ret);
        let (ret_alarm, obs_alarms) = {
            let mut d = lock(&self.detectors);
            let r = d.returns.update(ret);
            let o = if self.cfg.drift.watch_observations {
                d.obs.update(first_abs_obs)
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
                self.dir.kind.plan(self.cfg.learners()).lr
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
                        "lr": self.dir.kind.plan(self.cfg.learners()).lr,
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
                        "mean |obs[{i}]| at reset {} from {:.3} to {:.3}",
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
}
