//! A memory of the worlds a run has mastered, so that one coming back is recalled instead of
//! learned again (issue 14).
//!
//! When a change is noticed, the learner that mastered the world just gone is saved to a slot
//! (`<run-dir>/memory/world-<k>.*`, the learner kind's own checkpoint layout) with the level it
//! held. Then the remembered learners are tried in the new world, most recently learned first,
//! each for a few greedy episodes (one, if it does no better than the broken policy); one that
//! plays at its remembered level ([`fits`]) is taken back as the learner, and its slot is refined at the next change. A slot is one world: a learner that was
//! recalled goes back to the slot it came from, a world learned anew gets a new one (the oldest
//! is replaced once `drift.memory_slots` are full). In the spirit of Progress & Compress
//! (Schwarz et al. 2018), the knowledge base is kept apart from the active learner, here as
//! whole learners rather than a distilled network.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{AgentError, Result};

/// Subdirectory of the run directory holding the slots.
pub const MEMORY_DIR: &str = "memory";

/// The index of the slots in [`MEMORY_DIR`], written at every change of the memory so a
/// resumed run (or a restarted daemon) remembers what the stopped one did.
pub const INDEX_FILE: &str = "slots.json";

/// A slot as the index stores it: its file name, not a path (the index may come from
/// anywhere; a slot never points outside the memory directory).
#[derive(Serialize, Deserialize)]
struct StoredSlot {
    name: String,
    level: f64,
    learned: (u64, u64),
    written_at: u64,
}

/// The index file's content.
#[derive(Serialize, Deserialize)]
struct Index {
    slots: Vec<StoredSlot>,
    current: Option<usize>,
}

/// One remembered world.
#[derive(Clone, Debug, PartialEq)]
pub struct Slot {
    /// Checkpoint stem of the learner that mastered it.
    pub stem: PathBuf,
    /// The mean return it held there (the reference window of the alarm that ended it).
    pub level: f64,
    /// Steps over which it was learned: from the change that began the world to the one that
    /// ended it.
    pub learned: (u64, u64),
    /// Step at which the slot was last written (for replacement and ordering).
    pub written_at: u64,
}

/// The slots of one run.
#[derive(Clone, Debug)]
pub struct Memory {
    dir: PathBuf,
    max: usize,
    slots: Vec<Slot>,
    /// The slot the acting learner came from (recalled), if any.
    current: Option<usize>,
}

impl Memory {
    /// An empty memory of at most `max` slots under `run_dir`.
    pub fn new(run_dir: &Path, max: usize) -> Self {
        Memory {
            dir: run_dir.join(MEMORY_DIR),
            max: max.max(1),
            slots: Vec::new(),
            current: None,
        }
    }

    /// The memory a run directory's index holds, or an empty one if it has none. A malformed
    /// index, or one that names a slot outside the memory directory or without its file, is
    /// an error: the caller decides whether to go on without memory (the slots' files stay).
    pub fn load(run_dir: &Path, max: usize) -> Result<Self> {
        let mut m = Memory::new(run_dir, max);
        let path = m.dir.join(INDEX_FILE);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(m),
            Err(e) => return Err(AgentError::io(&path)(e)),
        };
        let bad = |reason: String| AgentError::RunDir {
            path: path.clone(),
            reason,
        };
        let index: Index =
            serde_json::from_str(&text).map_err(|e| bad(format!("not a memory index: {e}")))?;
        for s in index.slots.into_iter().take(m.max) {
            let plain = s.name.strip_prefix("world-").is_some_and(|n| {
                !n.is_empty() && n.len() <= 3 && n.bytes().all(|b| b.is_ascii_digit())
            });
            if !plain {
                return Err(bad(format!("slot name {:?} is not world-<n>", s.name)));
            }
            if !s.level.is_finite() || s.learned.0 > s.learned.1 {
                return Err(bad(format!(
                    "slot {} has a level or span out of range",
                    s.name
                )));
            }
            let stem = m.dir.join(&s.name);
            if !stem.with_extension("safetensors").is_file() {
                return Err(bad(format!("slot {} has no checkpoint file", s.name)));
            }
            m.slots.push(Slot {
                stem,
                level: s.level,
                learned: s.learned,
                written_at: s.written_at,
            });
        }
        m.current = index.current.filter(|&i| i < m.slots.len());
        Ok(m)
    }

    /// Writes the index (through a temporary file and a rename: a crash leaves the old index
    /// or the new one whole).
    pub fn save(&self) -> Result<()> {
        std::fs::create_dir_all(&self.dir).map_err(AgentError::io(&self.dir))?;
        let index = Index {
            slots: self
                .slots
                .iter()
                .map(|s| StoredSlot {
                    name: s
                        .stem
                        .file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_default(),
                    level: s.level,
                    learned: s.learned,
                    written_at: s.written_at,
                })
                .collect(),
            current: self.current,
        };
        let path = self.dir.join(INDEX_FILE);
        let tmp = self.dir.join(format!("{INDEX_FILE}.tmp"));
        let text = serde_json::to_string_pretty(&index)
            .map_err(|e| AgentError::Config(format!("memory index: {e}")))?;
        std::fs::write(&tmp, text).map_err(AgentError::io(&tmp))?;
        std::fs::rename(&tmp, &path).map_err(AgentError::io(&path))
    }

    /// Slots kept.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Whether no world is kept.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// The directory the slots' files go to (created by the caller before saving).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The slot for the world that just ended (learned from `since` to `steps`, held at
    /// `level`): the one the acting learner was recalled from, else a new one, else the one
    /// written longest ago. Returns its index; the caller saves the learner to its stem.
    pub fn keep(&mut self, level: f64, since: u64, steps: u64) -> usize {
        let index = match self.current {
            Some(i) if i < self.slots.len() => i,
            _ if self.slots.len() < self.max => {
                self.slots.push(Slot {
                    stem: self.dir.join(format!("world-{}", self.slots.len())),
                    level,
                    learned: (since, steps),
                    written_at: steps,
                });
                self.slots.len() - 1
            }
            _ => self
                .slots
                .iter()
                .enumerate()
                .min_by_key(|(_, s)| s.written_at)
                .map_or(0, |(i, _)| i),
        };
        let slot = &mut self.slots[index];
        if self.current == Some(index) {
            // Refined: it keeps the span it was first learned over, from its first start.
            slot.learned.1 = steps;
        } else {
            slot.learned = (since, steps);
        }
        slot.level = level;
        slot.written_at = steps;
        self.current = Some(index);
        index
    }

    /// Slots worth trying in a new world: all but `just` (the world that just ended, which
    /// is what failed), most recently written first.
    pub fn candidates(&self, just: usize) -> Vec<usize> {
        let mut c: Vec<usize> = (0..self.slots.len()).filter(|&i| i != just).collect();
        c.sort_by_key(|&i| std::cmp::Reverse(self.slots[i].written_at));
        c
    }

    /// Slot `i`.
    pub fn slot(&self, i: usize) -> Option<&Slot> {
        self.slots.get(i)
    }

    /// Records which slot the acting learner now comes from (`None`: a world learned anew).
    pub fn set_current(&mut self, i: Option<usize>) {
        self.current = i;
    }
}

/// Whether a remembered learner that played `mean` over its trial fits the new world, where
/// it once held `level` and the broken policy plays `broken`: it plays at its level and
/// clearly better than the broken policy, both by `tol` (the return detector's smallest fall).
/// A looser bar (half of what the change took) was measured worse: on the goal-regions cycle
/// it took back half-fitting learners, and recall went from 0.33× to 0.67× a fresh start.
pub fn fits(mean: f64, level: f64, broken: f64, tol: f64) -> bool {
    mean >= level - tol && mean > broken + tol
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_memory_survives_a_restart_and_a_bad_index_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut m = Memory::new(dir.path(), 4);
        let a = m.keep(0.9, 0, 20_000);
        m.set_current(None);
        let b = m.keep(0.8, 20_000, 40_000);
        std::fs::create_dir_all(m.dir()).unwrap();
        for k in [a, b] {
            std::fs::write(m.slot(k).unwrap().stem.with_extension("safetensors"), b"x").unwrap();
        }
        m.save().unwrap();
        let back = Memory::load(dir.path(), 4).unwrap();
        assert_eq!(back.len(), 2);
        assert_eq!(back.slot(a), m.slot(a));
        assert_eq!(back.slot(b), m.slot(b));
        assert_eq!(back.candidates(b), vec![a]);
        assert_eq!(back.current, Some(b));
        // No index: an empty memory, not an error.
        let other = tempfile::tempdir().unwrap();
        assert!(Memory::load(other.path(), 4).unwrap().is_empty());
        // A slot that points elsewhere, a truncated index, a slot without its file: errors.
        let index = dir.path().join(MEMORY_DIR).join(INDEX_FILE);
        let good = std::fs::read_to_string(&index).unwrap();
        for bad in [
            good.replace("world-0", "../../etc/passwd"),
            good[..good.len() / 2].to_string(),
            good.replace("world-1", "world-7"),
        ] {
            std::fs::write(&index, bad).unwrap();
            assert!(Memory::load(dir.path(), 4).is_err());
        }
    }

    #[test]
    fn a_learner_fits_when_it_plays_at_its_level_and_clearly_above_the_broken_policy() {
        // CartPole: held 490, the broken policy plays 10; a trial of 500, 500, 333 fits.
        assert!(fits(444.3, 490.0, 10.0, 96.0));
        assert!(!fits(200.0, 490.0, 10.0, 96.0));
        // A world in [-1, 1]: a learner of another region times out (-1) and does not fit, nor
        // does one that finds the goal in two episodes of three.
        assert!(!fits(-0.95, 0.9, -1.0, 0.4));
        assert!(!fits(0.26, 0.9, -1.0, 0.4));
        assert!(fits(0.85, 0.9, -1.0, 0.4));
        // No better than the broken policy by the smallest fall: not a fit, whatever the level.
        assert!(!fits(0.1, 0.0, 0.0, 0.2));
    }

    #[test]
    fn a_recalled_world_goes_back_to_its_slot_and_a_new_one_gets_its_own() {
        let mut m = Memory::new(Path::new("/run"), 3);
        // A learned over 0..20 k, then the world changed.
        let a = m.keep(0.9, 0, 20_000);
        assert_eq!(m.candidates(a), Vec::<usize>::new());
        m.set_current(None); // B is learned anew
        let b = m.keep(0.8, 20_000, 40_000);
        assert_ne!(a, b);
        assert_eq!(m.candidates(b), vec![a]);
        m.set_current(Some(a)); // A came back and was recalled
        assert_eq!(m.keep(0.95, 40_000, 60_000), a, "refined in place");
        let s = m.slot(a).unwrap();
        assert_eq!((s.level, s.learned), (0.95, (0, 60_000)));
        assert_eq!(m.candidates(a), vec![b]);
        // New worlds fill the memory, then replace the slot written longest ago (B).
        m.set_current(None);
        let c = m.keep(0.7, 60_000, 80_000);
        m.set_current(None);
        let d = m.keep(0.6, 80_000, 100_000);
        assert_eq!(d, b);
        assert_eq!(m.candidates(d), vec![c, a]);
        assert!(m.slot(c).unwrap().stem.starts_with("/run/memory"));
    }
}
