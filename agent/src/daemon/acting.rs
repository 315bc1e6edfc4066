//! One actor of the daemon, on the runtime's actor loop: acts with the learner's newest weights
//! or the champion's (`daemon.act_with`), stores every
//! step, feeds the drift detectors; an environment fault cuts the episode, never the daemon.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use autodidact_envs::Env;

use super::TRAIN_STREAM;
use super::shared::Shared;
use crate::adder::Adder;
use crate::error::Result;
use crate::fault::Fault;
use crate::rate::Admit;
use crate::runtime::acting::{ActingControl, EpisodeEnd, ReplayActor, act};
use crate::runtime::episode_seed;

/// The daemon's side of an actor: shared counters, the champion's version, the limiter.
struct DaemonActing<'a> {
    shared: &'a Shared,
    index: usize,
    last_version: i64,
}

impl ActingControl for DaemonActing<'_> {
    fn begin_episode(&mut self, actor: &mut ReplayActor) -> Result<Option<u64>> {
        if self.shared.stopping() {
            return Ok(None);
        }
        let version = self.shared.acting_version();
        if version != self.last_version {
            self.last_version = version;
            actor.adder_mut().set_model_version(Some(version));
        }
        let n = self.shared.episode_seq.fetch_add(1, Ordering::Relaxed);
        Ok(Some(episode_seed(
            self.shared.cfg.daemon.seed,
            TRAIN_STREAM,
            n,
        )))
    }

    fn admit(&mut self, actor: &mut ReplayActor) -> Result<bool> {
        let max_steps = self.shared.cfg.daemon.max_steps;
        if self.shared.stopping() {
            return Ok(false);
        }
        if max_steps > 0 && self.steps() >= max_steps {
            self.shared.done.notify_one();
            return Ok(false);
        }
        Ok(match self.shared.limiter.step() {
            Admit::Go => true,
            Admit::Starved => {
                actor.adder_mut().flush()?;
                true
            }
            Admit::Stopped => false,
        })
    }

    fn steps(&self) -> u64 {
        self.shared.steps.load(Ordering::Relaxed)
    }

    fn exploration(&self) -> f32 {
        self.shared.exploration(self.steps())
    }

    fn stepped(&mut self, _actor: &mut ReplayActor) -> Result<u64> {
        Ok(self.shared.steps.fetch_add(1, Ordering::Relaxed) + 1)
    }

    fn fault(&mut self, f: Fault, call: &str, episode_steps: u64, _in_row: u32) -> Result<bool> {
        self.shared.on_fault(self.index, call, &f, episode_steps);
        Ok(true)
    }

    fn recovered(&mut self) {
        self.shared.clear_faults(self.index);
    }

    fn end_episode(
        &mut self,
        _env: &mut dyn Env,
        _actor: &mut ReplayActor,
        end: &EpisodeEnd<'_>,
    ) -> Result<()> {
        self.shared.episodes.fetch_add(1, Ordering::Relaxed);
        self.shared
            .on_episode(end.started_at, end.steps, end.ret, end.first_abs_obs)
    }

    fn stopping(&self) -> bool {
        self.shared.stopping()
    }

    fn backoff_max(&self) -> Duration {
        Duration::from_secs_f64(self.shared.cfg.daemon.fault_backoff_max_s)
    }
}

/// Actor `index` acting in `env` until the daemon stops.
pub(crate) fn actor_loop(
    shared: Arc<Shared>,
    index: usize,
    mut env: Box<dyn Env>,
    mut actor: ReplayActor,
) -> Result<()> {
    let mut ctl = DaemonActing {
        shared: &shared,
        index,
        last_version: i64::MIN,
    };
    let result = act(env.as_mut(), &mut actor, shared.obs_dim, &mut ctl);
    let _ = env.close();
    // Whatever ended the loop, what this actor lived reaches the file.
    let stored = actor
        .adder_mut()
        .cut()
        .and_then(|()| actor.adder_mut().flush());
    result.and(stored)
}
