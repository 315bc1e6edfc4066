//! The learner loop of every command: updates at the pace the rate limiter allows, weights
//! published every `publish_every` updates. What differs between `train` and the daemon —
//! requests to serve, where published weights go, candidates — is the [`LearningControl`].

use std::time::Duration;

use crate::error::Result;
use crate::learner::Learner;
use crate::rate::RateLimiter;

/// What a command decides about learning.
pub trait LearningControl {
    /// Between updates: serves requests (save, reanalyse, roll back; it may replace the
    /// learner). `false` ends the loop.
    fn serve(&mut self, learner: &mut Box<dyn Learner>) -> Result<bool>;
    /// Just before an update (the daemon sets the learning rate here).
    fn before_update(&mut self, learner: &mut dyn Learner) {
        let _ = learner;
    }
    /// After an update.
    fn after_update(&mut self, learner: &mut dyn Learner) -> Result<()> {
        let _ = learner;
        Ok(())
    }
    /// Every `publish_every` updates: hand the newest weights and figures on.
    fn publish(&mut self, learner: &mut dyn Learner) -> Result<()>;
}

/// How long the loop waits for the rate limiter before looking at requests again.
const POLL: Duration = Duration::from_millis(2);

/// Runs `learner` until the control ends the loop or the rate limiter is stopped; returns it.
pub fn learn(
    mut learner: Box<dyn Learner>,
    limiter: &RateLimiter,
    publish_every: u64,
    ctl: &mut dyn LearningControl,
) -> Result<Box<dyn Learner>> {
    let (mut since_publish, mut starved) = (0u64, false);
    loop {
        if !ctl.serve(&mut learner)? {
            return Ok(learner);
        }
        if learner.ready() == starved {
            starved = !starved;
            limiter.set_starved(starved);
        }
        if starved {
            // Nothing committed to learn from yet: the writer commits an episode within
            // milliseconds of its end.
            std::thread::sleep(POLL);
            continue;
        }
        match limiter.update(POLL) {
            Some(true) => {}
            Some(false) => return Ok(learner),
            None => continue,
        }
        ctl.before_update(learner.as_mut());
        learner.update()?;
        ctl.after_update(learner.as_mut())?;
        since_publish += 1;
        if since_publish >= publish_every {
            since_publish = 0;
            ctl.publish(learner.as_mut())?;
        }
    }
}
