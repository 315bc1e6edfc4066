//! The checkpoints of a long life: pruning old versions' files (bounded disk) and finding a
//! champion whose file verifies after a power loss.

use std::path::Path;
use std::sync::atomic::Ordering;

use autodidact_replay::{ModelStatus, ReplayStore};

use super::shared::{Shared, lock};
use crate::error::{AgentError, Result};
use crate::runtime::inside_run_dir;
use crate::runtime::with_suffix;

impl Shared {
    /// Deletes the checkpoint files of every version older than the newest
    /// `daemon.keep_checkpoints` except the champion's, so disk use stays bounded; registry rows
    /// stay, with the checksum of what was there. Versions below `prune_floor` are done, so each
    /// call looks only at what fell out of the window since the last one (plus a champion that
    /// was demoted after its turn).
    pub(crate) fn prune_checkpoints(&self, newest: i64) -> Result<()> {
        let upto = newest - self.cfg.daemon.keep_checkpoints as i64;
        let floor = self.prune_floor.load(Ordering::SeqCst);
        let demoted = self.demoted.swap(0, Ordering::SeqCst);
        let mut versions: Vec<i64> = (floor.max(1)..=upto).collect();
        if demoted > 0 && demoted < floor {
            versions.push(demoted);
        }
        for v in versions {
            let model = match lock(&self.store).model(v) {
                Ok(m) => m,
                Err(autodidact_replay::ReplayError::NotFound { .. }) => continue,
                Err(e) => return Err(e.into()),
            };
            if model.status == ModelStatus::Champion {
                continue;
            }
            self.remove_checkpoint_files(&model.checkpoint_path)?;
        }
        if upto >= floor {
            self.prune_floor.store(upto + 1, Ordering::SeqCst);
        }
        Ok(())
    }

    pub(crate) fn remove_checkpoint_files(&self, rel: &str) -> Result<()> {
        // The registry is a file: a crafted `checkpoint_path` must not delete anything outside
        // the run directory. Such a row is refused and left alone, and pruning goes on.
        let stem = match inside_run_dir(&self.dir.path, rel.trim_end_matches(".safetensors")) {
            Ok(stem) => stem,
            Err(e) => {
                tracing::warn!(error = %e, "not pruning a checkpoint outside the run directory");
                return Ok(());
            }
        };
        // Nor through a symbolic link inside it (a `checkpoints` link to elsewhere): the
        // directory the files are in must resolve to one inside the run directory.
        let inside = match (
            stem.parent().map(std::fs::canonicalize),
            std::fs::canonicalize(&self.dir.path),
        ) {
            (Some(Ok(dir)), Ok(root)) => dir.starts_with(&root),
            // A directory that is gone holds nothing to delete.
            _ => false,
        };
        if !inside {
            tracing::warn!(
                path = %stem.display(),
                "not pruning a checkpoint whose directory resolves outside the run directory"
            );
            return Ok(());
        }
        for f in self
            .dir
            .kind
            .file_suffixes()
            .iter()
            .map(|sfx| with_suffix(&stem, sfx))
        {
            match std::fs::remove_file(&f) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(AgentError::Io { path: f, source: e }),
            }
        }
        Ok(())
    }
}

/// Reads a model's checkpoint and checks it against the registry's checksum.
pub(crate) fn verify_checkpoint(run_dir: &Path, m: &autodidact_replay::Model) -> Result<()> {
    let file = inside_run_dir(run_dir, &m.checkpoint_path)?;
    let bytes = std::fs::read(&file).map_err(AgentError::io(&file))?;
    let sum = format!("crc32:{:08x}", crc32fast::hash(&bytes));
    if sum != m.checksum {
        return Err(AgentError::RunDir {
            path: file,
            reason: format!(
                "does not match the registry ({sum}, registered {}): it was changed or damaged",
                m.checksum
            ),
        });
    }
    Ok(())
}

/// The champion to resume with. If its checkpoint is missing or damaged (a power loss can
/// lose a file that was not synced, a disk can corrupt one), the newest earlier model that was
/// not rejected and whose checkpoint matches the registry takes its place, and the registry
/// says so: a run must resume after a power loss. Returns the reflection to record.
pub(crate) fn verified_champion(
    store: &ReplayStore,
    run_dir: &Path,
    champion: autodidact_replay::Model,
) -> Result<(
    autodidact_replay::Model,
    Option<(serde_json::Value, String)>,
)> {
    let why = match verify_checkpoint(run_dir, &champion) {
        Ok(()) => return Ok((champion, None)),
        Err(e) => e,
    };
    let mut earlier: Vec<_> = store
        .models()?
        .into_iter()
        .filter(|m| m.version < champion.version && m.status != ModelStatus::Rejected)
        .collect();
    earlier.sort_by_key(|m| std::cmp::Reverse(m.version));
    let Some(stand_in) = earlier
        .into_iter()
        .find(|m| verify_checkpoint(run_dir, m).is_ok())
    else {
        return Err(AgentError::RunDir {
            path: run_dir.to_path_buf(),
            reason: format!(
                "the champion v{}'s checkpoint cannot be used ({why}), and no earlier model's \
                 checkpoint matches the registry",
                champion.version
            ),
        });
    };
    store.promote(stand_in.version)?;
    store.reject(champion.version)?;
    let sentence = format!(
        "recovered at start: champion v{}'s checkpoint cannot be used ({why}); acting with \
         v{}, the newest earlier model whose checkpoint matches the registry",
        champion.version, stand_in.version
    );
    tracing::warn!("{sentence}");
    let data = serde_json::json!({
        "lost": champion.version,
        "champion": stand_in.version,
        "reason": why.to_string(),
    });
    Ok((stand_in, Some((data, sentence))))
}
