//! Candidates and the gate: cutting a candidate from the learner, judging it against the
//! champion on the same seeds with greedy actions through the learner's policy, and recording
//! the decision (registry first, then the actors' champion, the state file, a reflection).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender};
use std::time::Duration;

use autodidact_core::{Module, Snapshot, load_checkpoint};
use autodidact_envs::Env;

use super::shared::{Shared, lock};
use super::{Candidate, GATE_ATTEMPTS, GATE_STREAM, Pairs};
use crate::error::{AgentError, Result};
use crate::eval::evaluate_capped;
use crate::fault::{self, Backoff, Fault};
use crate::gate::{GateReport, compare, return_spread, sanity_check};
use crate::learner::Learner;
use crate::policy::Policy;
use crate::runtime::run_dir::model_stem;
use crate::runtime::{episode_seed, measure_plasticity, model_metrics};

impl Shared {
    /// Registers a saved checkpoint as a candidate (parent: the champion).
    pub(crate) fn register_candidate(
        &self,
        rel_stem: &str,
        metrics: serde_json::Value,
    ) -> Result<i64> {
        let file = self.dir.path.join(format!("{rel_stem}.safetensors"));
        let parent = Some(self.champion_version.load(Ordering::SeqCst));
        let saved = self
            .dir
            .saved_model(rel_stem.to_string(), file, parent, metrics)?;
        let model = self.retry_store("register a candidate", |store| {
            store.register_model(&saved.row)
        })?;
        lock(&self.board).latest_version = model.version;
        Ok(model.version)
    }

    /// Saves the learner as the next model version and hands it to the gate.
    pub(crate) fn cut_candidate(
        &self,
        learner: &mut dyn Learner,
        gate: &SyncSender<Candidate>,
    ) -> Result<()> {
        if let Some(stats) = &self.obs_stats {
            learner.set_obs_stats(&lock(stats).clone());
        }
        measure_plasticity(learner);
        let m = learner.metrics();
        let registering = lock(&self.registering);
        let next = self
            .retry_store("read the registry", |store| store.latest_model())?
            .map_or(1, |m| m.version + 1);
        let steps = self.steps.load(Ordering::Relaxed);
        let stem = model_stem(next, steps);
        learner.save(&self.dir.path.join(&stem))?;
        let version = self.register_candidate(&stem, model_metrics(steps, None, &m))?;
        drop(registering);
        self.learner_version.store(version, Ordering::SeqCst);
        self.gate_busy.store(true, Ordering::SeqCst);
        let sent = gate.send(Candidate {
            version,
            checkpoint: format!("{stem}.safetensors"),
            loss: m.loss,
        });
        match sent {
            Ok(()) => Ok(()),
            // The gate ends as soon as the daemon stops, possibly while this candidate was
            // being saved: it stays registered, unjudged, and the shutdown (or, after a crash,
            // the next start) rejects it, saying so.
            Err(_) if self.stopping() => Ok(()),
            Err(_) => Err(AgentError::Panicked("gate")),
        }
    }

    /// Plays the candidate against the champion and promotes or rejects it.
    pub(crate) fn judge(
        &self,
        c: &Candidate,
        env: &mut dyn Env,
        policy: &mut dyn Policy,
    ) -> Result<()> {
        let champion_version = self.champion_version.load(Ordering::SeqCst);
        let champion = self.champion.latest();
        let gate = &self.cfg.gate;
        let mut snapshot = None;
        let report = match load_checkpoint(&self.dir.path.join(&c.checkpoint)) {
            Err(e) => GateReport::rejected_outright(format!("its checkpoint cannot be read: {e}")),
            Ok(loaded)
                if crate::learners::of_checkpoint(&loaded.extra)
                    .map_or(true, |k| k.name() != self.dir.kind.name()) =>
            {
                GateReport::rejected_outright(format!(
                    "it was not written by this run's learner ({})",
                    self.dir.kind.name()
                ))
            }
            Ok(loaded) if loaded.network.config() != champion.snapshot.config() => {
                GateReport::rejected_outright(
                    "its network's shape differs from the champion's (another environment or \
                     network config)",
                )
            }
            Ok(loaded) => {
                let mut params = Vec::new();
                loaded
                    .network
                    .visit_params(&mut |p| params.extend_from_slice(p.value.data()));
                match sanity_check(params, c.loss) {
                    Some(reason) => GateReport::rejected_outright(reason),
                    None => {
                        let snap = Snapshot::from_network(&loaded.network, self.cfg.precision())?;
                        let pairs = self.play_pairs(c, env, policy, &snap, &champion.snapshot);
                        let (cand, champ) = match pairs {
                            // Left as a candidate: the shutdown rejects it, saying so.
                            None => return Ok(()),
                            Some(Ok(pairs)) => pairs,
                            Some(Err(f)) => {
                                return self.decide(
                                    c,
                                    champion_version,
                                    GateReport::rejected_outright(format!(
                                        "the gate's environment failed {GATE_ATTEMPTS} times in \
                                         a row, so it could not be judged ({f})"
                                    )),
                                    None,
                                    true,
                                );
                            }
                        };
                        snapshot = Some(snap);
                        let world = return_spread(lock(&self.board).returns.iter().map(|r| r.1));
                        let mut r = compare(&cand, &champ, gate, world)?;
                        // Non-inferiority alone would let a chain of promotions each lose up to
                        // a margin: the candidate must also stay within one margin of the best
                        // level a champion showed since the start or the last drift.
                        let mut best = lock(&self.best_level);
                        let floor = best.map(|b| b - r.margin);
                        if r.promote && floor.is_some_and(|f| r.candidate_mean < f) {
                            r.promote = false;
                            r.reason = format!(
                                "{}; but {:.1} is more than the margin below the best champion \
                                 level since the last drift, {:.1}",
                                r.reason,
                                r.candidate_mean,
                                best.unwrap_or(f64::NAN)
                            );
                        }
                        let seen = if r.promote {
                            r.champion_mean.max(r.candidate_mean)
                        } else {
                            r.champion_mean
                        };
                        *best = Some(best.map_or(seen, |b| b.max(seen)));
                        r
                    }
                }
            }
        };
        self.decide(c, champion_version, report, snapshot, false)
    }

    /// Plays the candidate and the champion on the same `gate.episodes` fresh seeds. A fault
    /// says nothing about either model, so a faulty episode pair is played again with the same
    /// seed after a backoff, up to [`GATE_ATTEMPTS`] times in a row. `None`: the daemon is
    /// stopping.
    pub(crate) fn play_pairs(
        &self,
        c: &Candidate,
        env: &mut dyn Env,
        policy: &mut dyn Policy,
        candidate: &Snapshot,
        champion: &Snapshot,
    ) -> Option<Result<Pairs, Fault>> {
        let episodes = self.cfg.gate.episodes;
        let gate = self.cfg.daemon.actors;
        let mut backoff =
            Backoff::new(Duration::from_secs_f64(self.cfg.daemon.fault_backoff_max_s));
        let (mut cand, mut champ) = (Vec::new(), Vec::new());
        let mut j = 0;
        while j < episodes {
            if self.stopping() {
                return None;
            }
            let seed = episode_seed(
                self.cfg.daemon.seed,
                GATE_STREAM,
                (c.version as u64)
                    .wrapping_mul(episodes as u64)
                    .wrapping_add(j as u64),
            );
            let cap = self.cfg.replay.episode_cap();
            let pair = evaluate_capped(env, policy, candidate, 1, seed, cap).and_then(|a| {
                let b = evaluate_capped(env, policy, champion, 1, seed, cap)?;
                Ok((a.mean, b.mean))
            });
            match pair {
                Ok((a, b)) => {
                    if backoff.in_row() > 0 {
                        backoff.succeed();
                        self.clear_faults(gate);
                    }
                    cand.push(a);
                    champ.push(b);
                    j += 1;
                }
                Err(e) => {
                    let f = match e {
                        AgentError::Fault(f) => f,
                        AgentError::Env(e) => Fault::from(e),
                        other => Fault {
                            kind: fault::FaultKind::EnvError,
                            message: other.to_string(),
                        },
                    };
                    let wait = backoff.fault();
                    self.on_fault(gate, "gate episode", &f, 0);
                    if backoff.in_row() >= GATE_ATTEMPTS {
                        return Some(Err(f));
                    }
                    if !fault::sleep_unless(wait, || self.stopping()) {
                        return None;
                    }
                }
            }
        }
        Some(Ok((cand, champ)))
    }

    /// Records the gate's decision: the registry first (it is what a restart believes), then
    /// the actors' champion, the state file, a `gate` reflection, and pruning.
    pub(crate) fn decide(
        &self,
        c: &Candidate,
        champion_version: i64,
        report: GateReport,
        snapshot: Option<Snapshot>,
        env_failed: bool,
    ) -> Result<()> {
        let mut sentence = report.sentence(c.version, champion_version);
        let mut rollback = false;
        if report.promote {
            self.rejections_in_row.store(0, Ordering::SeqCst);
        } else if !env_failed {
            // A candidate the environment kept from being judged says nothing of the learner.
            let n = self.rejections_in_row.fetch_add(1, Ordering::SeqCst) + 1;
            let after = self.cfg.daemon.rollback_after;
            // Only in a settled world (the learning rate has decayed at least halfway since
            // the start or the last drift): after a change the champion is what is wrong, and
            // the learner must be free to move away from it.
            let settled = self
                .updates
                .load(Ordering::Relaxed)
                .saturating_sub(self.lr_reset_at.load(Ordering::Relaxed))
                >= self.cfg.daemon.lr_decay_updates / 2;
            if after > 0 && n >= after && settled {
                self.rejections_in_row.store(0, Ordering::SeqCst);
                self.rollback.store(true, Ordering::SeqCst);
                rollback = true;
                sentence.push_str(&format!(
                    "; after {n} rejections in a row the learner starts again from champion \
                     v{champion_version}"
                ));
            }
        }
        let data = serde_json::json!({
            "candidate": c.version,
            "champion": champion_version,
            "steps": self.steps.load(Ordering::Relaxed),
            "test": "paired one-sided t-test for non-inferiority",
            "report": report,
            "learner_rolled_back": rollback,
        });
        // The registry first: it is what a restart believes.
        self.retry_store("record the gate's decision", |store| {
            if report.promote {
                store.promote(c.version)
            } else {
                store.reject(c.version)
            }
        })?;
        if let (true, Some(snap)) = (report.promote, snapshot) {
            self.demoted.store(champion_version, Ordering::SeqCst);
            self.champion.publish(snap);
            self.distrust_learner(false);
            self.champion_version.store(c.version, Ordering::SeqCst);
            *lock(&self.champion_checkpoint) = c.checkpoint.clone();
            lock(&self.board).promoted += 1;
            self.write_state(None)?;
        } else {
            lock(&self.board).rejected += 1;
            // Clearly worse: worse than the margin by more than `gate.max_worse_se` standard
            // errors, or broken outright. Noise or a failing environment is no reason, and only
            // a candidate cut from the learner says anything about it (not one submitted).
            let clearly_worse =
                report.t < -self.cfg.gate.max_worse_se || (report.episodes == 0 && !env_failed);
            if clearly_worse && c.version == self.learner_version.load(Ordering::SeqCst) {
                self.distrust_learner(true);
            }
        }
        self.reflect("gate", Some(c.version), data, sentence)?;
        self.prune_checkpoints(c.version)
    }
}

pub(crate) fn gate_loop(
    shared: Arc<Shared>,
    candidates: Receiver<Candidate>,
    mut env: Box<dyn Env>,
    mut policy: Box<dyn Policy>,
) -> Result<()> {
    let r = (|| loop {
        if lock(&shared.recall).is_some() {
            shared.gate_busy.store(true, Ordering::SeqCst);
            let r = shared.recall_if_asked(env.as_mut(), policy.as_mut());
            shared.gate_busy.store(false, Ordering::SeqCst);
            r?;
        }
        let c = match candidates.recv_timeout(Duration::from_millis(100)) {
            Ok(c) => c,
            Err(RecvTimeoutError::Timeout) => {
                if shared.stopping() {
                    return Ok(());
                }
                continue;
            }
            Err(RecvTimeoutError::Disconnected) => return Ok(()),
        };
        if shared.stopping() {
            return Ok(());
        }
        let r = shared.judge(&c, env.as_mut(), policy.as_mut());
        shared.gate_busy.store(false, Ordering::SeqCst);
        r?;
    })();
    let _ = env.close();
    r
}
