//! The daemon's learner loop (training continuously, cutting candidates, rolling back) and the
//! reflection pass it serves (reanalyse, lessons).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, Sender, SyncSender};
use std::time::Duration;

use super::shared::{Shared, lock};
use super::{Candidate, ENDLESS_PLAN, reflect};
use crate::error::Result;
use crate::learner::{Learner, ReanalyseReport};
use crate::runtime::learning::{LearningControl, learn};

pub(crate) enum LearnerRequest {
    Reanalyse {
        batches: usize,
        reply: Sender<Result<Option<ReanalyseReport>>>,
    },
}

/// The daemon's side of the learner: requests, rollbacks, the learning-rate schedule, the
/// board, candidates.
struct DaemonLearning<'a> {
    shared: &'a Shared,
    requests: Receiver<LearnerRequest>,
    gate: SyncSender<Candidate>,
    since_candidate: u64,
}

impl LearningControl for DaemonLearning<'_> {
    fn serve(&mut self, learner: &mut Box<dyn Learner>) -> Result<bool> {
        let shared = self.shared;
        if shared.stopping() {
            return Ok(false);
        }
        // Empty or disconnected (no reflection schedule) alike: no request to serve now.
        while let Ok(LearnerRequest::Reanalyse { batches, reply }) = self.requests.try_recv() {
            let _ = reply.send(learner.reanalyse(batches));
        }
        if shared.rollback.swap(false, Ordering::SeqCst) {
            let stem = lock(&shared.champion_checkpoint)
                .trim_end_matches(".safetensors")
                .to_string();
            *learner = shared.dir.learner(
                shared.cfg.learners(),
                shared.sampler.clone(),
                shared.cfg.daemon.seed,
                ENDLESS_PLAN,
                shared.cfg.precision(),
                Some(&shared.dir.path.join(stem)),
            )?;
            self.since_candidate = 0;
            shared.learner_version.store(
                shared.champion_version.load(Ordering::SeqCst),
                Ordering::SeqCst,
            );
            // The actors act with what the learner starts again from at once (a recalled
            // champion, say), not with the weights it left.
            self.publish(learner.as_mut())?;
        }
        if shared.reset_head.swap(false, Ordering::SeqCst) {
            learner.reset_head()?;
        }
        Ok(true)
    }

    /// The learning rate decays from the configured one over `daemon.lr_decay_updates`,
    /// counted from the start or the last drift.
    fn before_update(&mut self, learner: &mut dyn Learner) {
        let shared = self.shared;
        let decay = shared.cfg.daemon.lr_decay_updates.max(1) as f64;
        let final_ratio = f64::from(shared.dir.kind.plan(shared.cfg.learners()).lr_final_ratio);
        let u = shared.updates.load(Ordering::Relaxed);
        let since_reset = u.saturating_sub(shared.lr_reset_at.load(Ordering::Relaxed)) as f64;
        learner.set_lr_scale((1.0 - (1.0 - final_ratio) * (since_reset / decay).min(1.0)) as f32);
    }

    fn after_update(&mut self, learner: &mut dyn Learner) -> Result<()> {
        let shared = self.shared;
        shared.updates.fetch_add(1, Ordering::Relaxed);
        self.since_candidate += 1;
        if self.since_candidate >= shared.cfg.daemon.candidate_every
            && !shared.gate_busy.load(Ordering::SeqCst)
        {
            self.since_candidate = 0;
            shared.cut_candidate(learner, &self.gate)?;
        }
        Ok(())
    }

    /// Refreshes the normaliser's statistics and the board, and hands the actors the
    /// learner's weights while they act with the learner (`daemon.act_with`).
    fn publish(&mut self, learner: &mut dyn Learner) -> Result<()> {
        if let Some(stats) = &self.shared.obs_stats {
            learner.set_obs_stats(&lock(stats).clone());
        }
        lock(&self.shared.board).learner = learner.metrics();
        if self.shared.acts_with_learner() {
            self.shared.behaviour.publish(learner.acting_snapshot()?);
        }
        Ok(())
    }
}

/// The daemon's learner: trains continuously until the daemon stops; returns the learner.
pub(crate) fn learner_loop(
    shared: Arc<Shared>,
    learner: Box<dyn Learner>,
    requests: Receiver<LearnerRequest>,
    gate: SyncSender<Candidate>,
) -> Result<Box<dyn Learner>> {
    let publish_every = shared.dir.kind.plan(shared.cfg.learners()).publish_every;
    let mut ctl = DaemonLearning {
        shared: &shared,
        requests,
        gate,
        since_candidate: 0,
    };
    learn(learner, &shared.limiter, publish_every, &mut ctl)
}

/// One reflection pass: reanalyse, then lessons.
pub(crate) fn reflection_pass(shared: &Shared, learner: &Sender<LearnerRequest>) -> Result<()> {
    let (tx, rx) = std::sync::mpsc::channel();
    let batches = shared.cfg.reflection.reanalyse_batches;
    if batches > 0
        && learner
            .send(LearnerRequest::Reanalyse { batches, reply: tx })
            .is_ok()
    {
        match rx.recv_timeout(Duration::from_secs(120)) {
            Ok(Ok(Some(r))) => {
                let version = shared.champion_version.load(Ordering::Relaxed);
                let before = r
                    .mean_priority_before
                    .map(|p| format!(" (their stored priorities averaged {p:.3})"))
                    .unwrap_or_default();
                let sentence = format!(
                    "reanalysed {} stored transitions with the learner's newest weights: mean \
                     |TD error| {:.3}{before}, mean value target {:.2}, mean Q {:.2}",
                    r.transitions, r.mean_abs_td, r.mean_target, r.mean_q
                );
                shared.reflect(
                    "reanalyse",
                    Some(version),
                    serde_json::json!({"steps": shared.steps.load(Ordering::Relaxed), "report": r}),
                    sentence,
                )?;
            }
            Ok(Ok(None)) | Err(_) => {}
            Ok(Err(e)) => return Err(e),
        }
    }
    // The newest plasticity measurement (every candidate takes one), as a row of its own so the
    // analysis tool can follow it over a long life.
    let plasticity = lock(&shared.board).learner.plasticity;
    if let Some(p) = plasticity {
        let version = shared.champion_version.load(Ordering::Relaxed);
        let steps = shared.steps.load(Ordering::Relaxed);
        shared.reflect(
            "plasticity",
            Some(version),
            serde_json::json!({"steps": steps, "plasticity": p}),
            format!(
                "plasticity at step {steps} (after {} updates): {}",
                p.updates,
                p.sentence()
            ),
        )?;
    }
    if let Some((data, sentence)) = reflect::lessons(shared)? {
        let version = shared.champion_version.load(Ordering::Relaxed);
        shared.reflect("lessons", Some(version), data, sentence)?;
    }
    shared.retry_store("trim the reflections", |store| {
        store.trim_reflections(shared.cfg.reflection.keep_reflections)
    })?;
    Ok(())
}
