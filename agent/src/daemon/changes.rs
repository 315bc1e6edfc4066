//! Noticing that the world changed (the drift detectors fed at every episode end) and the
//! daemon's response, recorded as `drift` reflections.

use std::sync::atomic::Ordering;

use super::shared::{Shared, lock};
use crate::drift::Direction;
use crate::error::Result;
use crate::runtime::changes::{Response, observation_drift, return_drift};

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
        let settled = self.exploration_settled(steps);
        let noticed = lock(&self.detectors).observe(ret, first_abs_obs, settled);
        let version = Some(self.champion_version.load(Ordering::Relaxed));
        let drift = &self.cfg.drift;
        if let Some(a) = &noticed.returns {
            self.boosted_at.store(steps, Ordering::Relaxed);
            *lock(&self.best_level) = None;
            self.lr_reset_at
                .store(self.updates.load(Ordering::Relaxed), Ordering::Relaxed);
            lock(&self.board).drifts += 1;
            let replay_dropped = drift
                .restart_replay
                .then(|| self.sampler.retain_newest_episodes(drift.returns.recent));
            if drift.reset_head {
                self.reset_head.store(true, Ordering::SeqCst);
            }
            let response = Response {
                replay_dropped,
                head_reset: drift.reset_head,
                exploration: true,
                learning_rate: Some((
                    self.dir.kind.plan(self.cfg.learners()).lr,
                    self.cfg.daemon.lr_decay_updates,
                )),
            };
            let (data, sentence) = return_drift(drift, steps, a, response);
            self.reflect("drift", version, data, sentence)?;
            let stuck = a.direction == Direction::Stuck;
            self.remember_and_recall(a.reference_mean, a.fallen_mean, steps, stuck)?;
        }
        if !noticed.observations.is_empty() {
            let boost = drift.boost_on_observations;
            if boost {
                self.boosted_at.store(steps, Ordering::Relaxed);
            }
            lock(&self.board).drifts += 1;
            let response = Response {
                exploration: boost,
                ..Response::default()
            };
            let (data, sentence) = observation_drift(drift, steps, &noticed.observations, response);
            self.reflect("drift", version, data, sentence)?;
        }
        Ok(())
    }
}
