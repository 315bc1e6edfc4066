//! Enforcing the replay ratio between concurrent actors and a learner.
//!
//! The ratio `ρ` is gradient updates per environment step once `learning_starts` steps have
//! been collected: after `s` steps the learner may have taken at most
//! `⌊ρ · (s − learning_starts)⌋` updates, and the actor may run at most `max_lead` steps ahead
//! of what the learner has consumed. Whichever side runs ahead waits on a condition variable,
//! as Reverb's `SampleToInsertRatio` limiter does, so the ratio holds however fast either side
//! is (a slow Python environment, a large network).

use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Duration;

/// The rate limiter's answer to an actor about to step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admit {
    /// Within the allowed lead: step.
    Go,
    /// Ahead of the ratio, but the learner has nothing to sample yet: commit finished
    /// episodes, then step (waiting would deadlock when the episode in progress is the only
    /// data to come).
    Starved,
    /// The limiter was stopped (the learner ended).
    Stopped,
}

#[derive(Debug, Default)]
struct State {
    steps: u64,
    updates: u64,
    paused: bool,
    starved: bool,
    stopped: bool,
}

/// Shared by the actor and the learner threads.
#[derive(Debug)]
pub struct RateLimiter {
    ratio: f64,
    learning_starts: u64,
    max_lead: u64,
    state: Mutex<State>,
    changed: Condvar,
}

impl RateLimiter {
    /// A limiter for `ratio` updates per step after `learning_starts` steps, starting from
    /// `steps` steps and `updates` updates already done (a resumed run).
    pub fn new(ratio: f64, learning_starts: u64, max_lead: u64, steps: u64, updates: u64) -> Self {
        RateLimiter {
            ratio,
            learning_starts,
            max_lead,
            state: Mutex::new(State {
                steps,
                updates,
                ..State::default()
            }),
            changed: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Updates allowed after `steps` environment steps.
    pub fn allowed_updates(&self, steps: u64) -> u64 {
        (steps.saturating_sub(self.learning_starts) as f64 * self.ratio).floor() as u64
    }

    /// Actor side: waits until one more step keeps the actor within `max_lead` steps of the
    /// learner, then counts the step. Returns [`Admit::Starved`] instead of waiting when the
    /// learner has nothing to sample: the actor should then make sure its finished episodes
    /// are committed (they will feed the learner), and go on (only it can end the episode in
    /// progress).
    pub fn step(&self) -> Admit {
        let mut s = self.lock();
        loop {
            if s.stopped {
                return Admit::Stopped;
            }
            let owed = self.allowed_updates(s.steps + 1).saturating_sub(s.updates);
            let lead_steps = if self.ratio > 0.0 {
                (owed as f64 / self.ratio) as u64
            } else {
                0
            };
            if lead_steps <= self.max_lead || s.paused || s.starved {
                s.steps += 1;
                self.changed.notify_all();
                return if lead_steps > self.max_lead && s.starved {
                    Admit::Starved
                } else {
                    Admit::Go
                };
            }
            s = self
                .changed
                .wait_timeout(s, Duration::from_millis(50))
                .map(|(g, _)| g)
                .unwrap_or_else(|e| e.into_inner().0);
        }
    }

    /// Learner side: waits until one more update is allowed, then counts it. Returns `false`
    /// if the limiter was stopped. Wakes at least every `poll` so the learner can serve
    /// requests (checkpoints) while it waits.
    pub fn update(&self, poll: Duration) -> Option<bool> {
        let mut s = self.lock();
        if s.stopped {
            return Some(false);
        }
        if !s.paused && s.updates < self.allowed_updates(s.steps) {
            s.updates += 1;
            self.changed.notify_all();
            return Some(true);
        }
        let (g, _) = self
            .changed
            .wait_timeout(s, poll)
            .unwrap_or_else(|e| e.into_inner());
        s = g;
        if s.stopped {
            return Some(false);
        }
        None
    }

    /// Pauses (or resumes) the learner, e.g. while the actor evaluates; the actor is not held
    /// back by the ratio meanwhile.
    pub fn set_paused(&self, paused: bool) {
        self.lock().paused = paused;
        self.changed.notify_all();
    }

    /// Marks the learner as unable to learn (replay cannot serve a batch yet) or able again.
    pub fn set_starved(&self, starved: bool) {
        self.lock().starved = starved;
        self.changed.notify_all();
    }

    /// Whether the learner last reported it has nothing to sample.
    pub fn is_starved(&self) -> bool {
        self.lock().starved
    }

    /// Releases every waiter for good.
    pub fn stop(&self) {
        self.lock().stopped = true;
        self.changed.notify_all();
    }

    /// `(steps, updates)` so far.
    pub fn counts(&self) -> (u64, u64) {
        let s = self.lock();
        (s.steps, s.updates)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn the_ratio_holds_when_the_learner_is_slow_and_when_it_is_fast() {
        for learner_delay_us in [0u64, 200] {
            let rl = Arc::new(RateLimiter::new(0.25, 100, 40, 0, 0));
            let l = rl.clone();
            let learner = std::thread::spawn(move || {
                loop {
                    match l.update(Duration::from_millis(5)) {
                        Some(true) => {
                            std::thread::sleep(Duration::from_micros(learner_delay_us));
                        }
                        Some(false) => return,
                        None => {}
                    }
                }
            });
            let mut worst_lead = 0i64;
            for _ in 0..4000 {
                assert_eq!(rl.step(), Admit::Go);
                let (s, u) = rl.counts();
                let allowed = rl.allowed_updates(s) as i64;
                assert!(
                    u as i64 <= allowed,
                    "learner ahead of the ratio: {u} > {allowed}"
                );
                worst_lead = worst_lead.max(allowed - u as i64);
            }
            // The actor never runs more than max_lead steps (10 updates) ahead.
            assert!(worst_lead <= 11, "actor ran {worst_lead} updates ahead");
            rl.stop();
            learner.join().unwrap();
        }
    }
}
