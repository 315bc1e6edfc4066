//! The daemon's memory of the worlds it mastered (issue 14): at a change, the champion that
//! played the world just gone is kept in a memory slot; the gate then tries the champions
//! kept before in the new world, and one that plays at its remembered level becomes the
//! champion again, and the learner goes on from it.
//!
//! The same memory as `train`'s ([`crate::runtime::memory`]); what differs is who plays the
//! trial episodes: the gate, on its own environment, between candidates, so the actors keep
//! acting and the learner keeps learning the new world meanwhile. A recalled champion is
//! registered as a new model version (its parent the broken champion) and promoted like any
//! candidate the gate passed; its slot's files are copied, so pruning never touches memory.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

use autodidact_core::{Snapshot, load_checkpoint};
use autodidact_envs::Env;

use super::shared::{Shared, lock};
use super::{Candidate, RECALL_STREAM};
use crate::error::{AgentError, Result};
use crate::eval::evaluate_capped;
use crate::gate::GateReport;
use crate::policy::Policy;
use crate::runtime::changes::{recall_failed, recalled};
use crate::runtime::episode_seed;
use crate::runtime::memory::fits;
use crate::runtime::run_dir::model_stem;

/// Remembered champions to try in a new world, set at a change and taken by the gate.
#[derive(Clone, Debug)]
pub(crate) struct RecallRequest {
    /// Step of the change.
    pub(crate) change_at: u64,
    /// Mean return of the broken champion at the alarm: a recalled one must beat it clearly.
    pub(crate) broken: f64,
    /// Slots to try, most recently written first.
    pub(crate) queue: Vec<usize>,
}

/// Copies every file of checkpoint `from` (`<from>.safetensors`, `<from>.target.safetensors`,
/// …: whatever the learner's layout holds) to stem `to`, each through a temporary file and a
/// rename, so a crash leaves either the old file or the whole new one.
fn copy_checkpoint(from: &Path, to: &Path) -> Result<()> {
    let (Some(dir), Some(name)) = (from.parent(), from.file_name().and_then(|n| n.to_str())) else {
        return Err(AgentError::Config(format!(
            "not a checkpoint stem: {}",
            from.display()
        )));
    };
    let to_name = to
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| AgentError::Config(format!("not a checkpoint stem: {}", to.display())))?;
    let to_dir = to.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(to_dir).map_err(AgentError::io(to_dir))?;
    let prefix = format!("{name}.");
    for entry in std::fs::read_dir(dir).map_err(AgentError::io(dir))? {
        let entry = entry.map_err(AgentError::io(dir))?;
        let file = entry.file_name();
        let Some(rest) = file.to_str().and_then(|f| f.strip_prefix(&prefix)) else {
            continue;
        };
        if rest.ends_with(".tmp") {
            continue;
        }
        let target = to_dir.join(format!("{to_name}.{rest}"));
        let tmp = PathBuf::from(format!("{}.tmp", target.display()));
        std::fs::copy(entry.path(), &tmp).map_err(AgentError::io(&tmp))?;
        std::fs::rename(&tmp, &target).map_err(AgentError::io(&target))?;
    }
    Ok(())
}

impl Shared {
    /// At a fall in return: keeps the champion that played the world just gone (at `level`)
    /// in its memory slot, unless the alarm says it is `stuck` (it mastered nothing worth
    /// keeping), and asks the gate to try the other slots in the new world.
    pub(crate) fn remember_and_recall(
        &self,
        level: f64,
        broken: f64,
        steps: u64,
        stuck: bool,
    ) -> Result<()> {
        if !self.cfg.drift.recall {
            return Ok(());
        }
        let since = self.world_since.swap(steps, Ordering::SeqCst);
        let mut memory = lock(&self.memory);
        let just = if stuck {
            usize::MAX
        } else {
            let k = memory.keep(level, since, steps);
            if let Some(slot) = memory.slot(k) {
                let champion = lock(&self.champion_checkpoint).clone();
                let from = self
                    .dir
                    .path
                    .join(champion.trim_end_matches(".safetensors"));
                copy_checkpoint(&from, &slot.stem)?;
            }
            k
        };
        memory.set_current(None);
        memory.save()?;
        let queue = memory.candidates(just);
        drop(memory);
        *lock(&self.recall) = (!queue.is_empty()).then_some(RecallRequest {
            change_at: steps,
            broken,
            queue,
        });
        Ok(())
    }

    /// Run by the gate between candidates: tries the remembered champions of a pending
    /// request, most recent first, for `drift.recall_episodes` greedy episodes each (one, if
    /// it does no better than the broken champion). The first that plays at its remembered
    /// level and clearly above the broken champion ([`fits`]) is promoted, and the learner starts again from it.
    pub(crate) fn recall_if_asked(&self, env: &mut dyn Env, policy: &mut dyn Policy) -> Result<()> {
        let Some(req) = lock(&self.recall).take() else {
            return Ok(());
        };
        let drift = &self.cfg.drift;
        let tol = drift.returns.min_drop * lock(&self.detectors).return_range();
        let champion = self.champion.latest();
        let mut tried = Vec::new();
        for &k in &req.queue {
            if self.stopping() {
                return Ok(());
            }
            let Some(slot) = lock(&self.memory).slot(k).cloned() else {
                continue;
            };
            let snap = match load_checkpoint(&slot.stem.with_extension("safetensors")) {
                Ok(l) if l.network.config() == champion.snapshot.config() => {
                    Snapshot::from_network(&l.network, self.cfg.precision())?
                }
                Ok(_) => continue,
                Err(e) => {
                    tracing::warn!(error = %e, "remembered world {k} could not be loaded");
                    continue;
                }
            };
            let mut returns = Vec::new();
            let mut hopeless = false;
            while returns.len() < drift.recall_episodes && !hopeless {
                let j = returns.len() as u64;
                let seed = episode_seed(
                    self.cfg.daemon.seed,
                    RECALL_STREAM,
                    req.change_at
                        .wrapping_mul(1_000)
                        .wrapping_add(k as u64 * 64 + j),
                );
                let cap = self.cfg.replay.episode_cap();
                match evaluate_capped(env, policy, &snap, 1, seed, cap) {
                    Ok(r) => {
                        hopeless = r.mean <= req.broken;
                        returns.push(r.mean);
                    }
                    // A fault says nothing about the model: this slot is not judged now.
                    Err(e) => {
                        tracing::warn!(error = %e, "a recall episode failed");
                        break;
                    }
                }
            }
            if returns.is_empty() {
                continue;
            }
            let mean = returns.iter().sum::<f64>() / returns.len() as f64;
            if !hopeless
                && returns.len() == drift.recall_episodes
                && fits(mean, slot.level, req.broken, tol)
            {
                return self.promote_recalled(&req, k, &slot, &returns, mean);
            }
            tried.push((k, mean));
        }
        if !tried.is_empty() {
            let steps = self.steps.load(Ordering::Relaxed);
            let (data, sentence) = recall_failed(req.change_at, steps, &tried);
            let version = Some(self.champion_version.load(Ordering::Relaxed));
            self.reflect("recall", version, data, sentence)?;
        }
        Ok(())
    }

    /// Registers slot `k` as a new model version and promotes it through the gate's own
    /// decision (registry, champion, state file, reflection, pruning); then the learner
    /// starts again from it and exploration returns to its schedule.
    fn promote_recalled(
        &self,
        req: &RecallRequest,
        k: usize,
        slot: &crate::runtime::memory::Slot,
        returns: &[f64],
        mean: f64,
    ) -> Result<()> {
        let champion_version = self.champion_version.load(Ordering::SeqCst);
        let steps = self.steps.load(Ordering::Relaxed);
        let registering = lock(&self.registering);
        let next = self
            .retry_store("read the registry", |store| store.latest_model())?
            .map_or(1, |m| m.version + 1);
        let stem = model_stem(next, steps);
        copy_checkpoint(&slot.stem, &self.dir.path.join(&stem))?;
        let metrics = serde_json::json!({
            "env_steps": steps,
            "recalled_from": format!("world-{k}"),
            "level": slot.level,
        });
        let version = self.register_candidate(&stem, metrics)?;
        drop(registering);
        let loaded = load_checkpoint(&self.dir.path.join(format!("{stem}.safetensors")))?;
        let snap = Snapshot::from_network(&loaded.network, self.cfg.precision())?;
        let n = returns.len() as f64;
        let std =
            (returns.iter().map(|r| (r - mean).powi(2)).sum::<f64>() / (n - 1.0).max(1.0)).sqrt();
        let report = GateReport {
            promote: true,
            candidate_mean: mean,
            candidate_std: std,
            champion_mean: req.broken,
            champion_std: f64::NAN,
            episodes: returns.len(),
            margin: f64::NAN,
            t: f64::NAN,
            p_value: f64::NAN,
            reason: format!(
                "recalled world-{k}: it played {mean:.3} (remembered level {:.3}), clearly \
                 above the broken champion's {:.3}",
                slot.level, req.broken
            ),
        };
        let c = Candidate {
            version,
            checkpoint: format!("{stem}.safetensors"),
            loss: 0.0,
        };
        self.decide(&c, champion_version, report, Some(snap), false)?;
        self.rollback.store(true, Ordering::SeqCst);
        self.boosted_at.store(u64::MAX, Ordering::Relaxed);
        *lock(&self.best_level) = Some(mean);
        {
            let mut memory = lock(&self.memory);
            memory.set_current(Some(k));
            memory.save()?;
        }
        let (data, sentence) = recalled(req.change_at, steps, k, slot, mean);
        self.reflect("recall", Some(version), data, sentence)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_checkpoint_is_copied_file_by_file_and_nothing_else_is() {
        let dir = tempfile::tempdir().unwrap();
        let ck = dir.path().join("checkpoints");
        std::fs::create_dir_all(&ck).unwrap();
        std::fs::write(ck.join("v00001-step0000000100.safetensors"), b"main").unwrap();
        std::fs::write(ck.join("v00001-step0000000100.target.safetensors"), b"tgt").unwrap();
        std::fs::write(ck.join("v00001-step0000000100.safetensors.tmp"), b"half").unwrap();
        std::fs::write(ck.join("v00002-step0000000200.safetensors"), b"other").unwrap();
        let to = dir.path().join("memory/world-0");
        copy_checkpoint(&ck.join("v00001-step0000000100"), &to).unwrap();
        let mut files: Vec<String> = std::fs::read_dir(dir.path().join("memory"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        files.sort();
        assert_eq!(files, ["world-0.safetensors", "world-0.target.safetensors"]);
        assert_eq!(
            std::fs::read(to.with_extension("safetensors")).unwrap(),
            b"main"
        );
    }
}
