//! The in-memory mirror of the replay window, and the samplers that read it.
//!
//! SQLite is the system of record, but point reads from it cannot feed a learner at thousands
//! of batches per second, so sampling is served from this mirror. The writer appends an
//! episode only after the transaction holding it has committed, and removes evicted episodes
//! after the deleting transaction has committed, so the mirror never holds anything the file
//! does not; on open it is rebuilt from the newest episodes in the file.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use rand::Rng;

use crate::error::{ReplayError, Result};
use crate::sumtree::SumTree;

const NONE: u32 = u32::MAX;

/// Size and prioritization of the in-memory replay window.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MirrorOptions {
    /// Maximum number of transitions held in memory (whole episodes; oldest leave first).
    /// 0 disables the mirror.
    pub capacity: usize,
    /// Priority exponent α: sampling probability ∝ priority^α (0 = uniform).
    pub alpha: f64,
}

impl Default for MirrorOptions {
    fn default() -> Self {
        MirrorOptions {
            capacity: 100_000,
            alpha: 0.6,
        }
    }
}

/// n-step return settings for a sampled batch.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NStep {
    /// Number of rewards summed (1 = one-step TD).
    pub n: usize,
    /// Discount γ.
    pub gamma: f32,
}

impl NStep {
    /// One-step returns with discount `gamma`.
    pub fn one(gamma: f32) -> Self {
        NStep { n: 1, gamma }
    }
}

/// A batch of sampled transitions, laid out row-major in buffers that are reused across calls.
///
/// Row `i` of `obs` is `obs[i * obs_len..(i + 1) * obs_len]`. For the sampled transition at step
/// `t` of an episode of length `L`, with `k = min(n, L - t)`: `rewards[i] = Σ_{j<k} γ^j r_{t+j}`;
/// if `t + k < L` then `next_obs` is the observation at step `t + k` and `discounts[i] = γ^k`;
/// otherwise `next_obs` is the episode's final observation and `discounts[i]` is `γ^k` when the
/// episode was truncated or `0` when it terminated. A learner's target is therefore
/// `rewards[i] + discounts[i] * V(next_obs[i])` in every case.
#[derive(Debug, Clone, Default)]
pub struct SampleBatch {
    /// Number of rows.
    pub len: usize,
    /// Floats per observation.
    pub obs_len: usize,
    /// Floats per continuous action (0 for discrete action spaces).
    pub act_len: usize,
    /// Transition ids (`transitions.id`), for [`Sampler::update_priorities`].
    pub ids: Vec<i64>,
    /// Observations at the sampled steps.
    pub obs: Vec<f32>,
    /// Discrete actions (empty for continuous action spaces).
    pub actions: Vec<i64>,
    /// Continuous actions, `act_len` per row (empty for discrete action spaces).
    pub actions_continuous: Vec<f32>,
    /// Discounted n-step reward sums.
    pub rewards: Vec<f32>,
    /// Bootstrap observations.
    pub next_obs: Vec<f32>,
    /// Discount applied to the bootstrap value (0 after termination).
    pub discounts: Vec<f32>,
    /// Importance-sampling weights normalised by the batch maximum (1 for uniform sampling).
    pub weights: Vec<f32>,
    /// Behaviour log-probability or Q-value recorded when acting (NaN when none was recorded).
    pub behaviour: Vec<f32>,
    scratch_u: Vec<f64>,
    scratch_leaf: Vec<usize>,
}

impl SampleBatch {
    /// An empty batch with room reserved for `rows` CartPole-sized rows; buffers grow once to
    /// the real size on first use and are reused afterwards.
    pub fn with_capacity(rows: usize) -> Self {
        SampleBatch {
            ids: Vec::with_capacity(rows),
            rewards: Vec::with_capacity(rows),
            discounts: Vec::with_capacity(rows),
            weights: Vec::with_capacity(rows),
            behaviour: Vec::with_capacity(rows),
            ..Default::default()
        }
    }

    fn reshape(&mut self, rows: usize, obs_len: usize, act_len: usize) {
        self.len = rows;
        self.obs_len = obs_len;
        self.act_len = act_len;
        self.ids.resize(rows, 0);
        self.obs.resize(rows * obs_len, 0.0);
        self.next_obs.resize(rows * obs_len, 0.0);
        if act_len == 0 {
            self.actions.resize(rows, 0);
            self.actions_continuous.clear();
        } else {
            self.actions.clear();
            self.actions_continuous.resize(rows * act_len, 0.0);
        }
        self.rewards.resize(rows, 0.0);
        self.discounts.resize(rows, 0.0);
        self.weights.resize(rows, 1.0);
        self.behaviour.resize(rows, f32::NAN);
    }
}

/// One episode handed to the mirror: everything borrowed, nothing copied until insertion.
pub(crate) struct EpisodeIn<'a> {
    pub episode_id: i64,
    pub ids: &'a [i64],
    pub obs_len: usize,
    /// 0 for discrete actions.
    pub act_len: usize,
    pub obs: &'a [f32],
    pub act_int: &'a [i64],
    pub act_vec: &'a [f32],
    pub rewards: &'a [f32],
    /// NaN where no behaviour value was recorded.
    pub behaviour: &'a [f32],
    pub terminated: bool,
    pub final_obs: &'a [f32],
    /// Stored priorities (NaN = never set: use the current maximum); `None` = all new.
    pub priorities: Option<&'a [f32]>,
}

/// The scalars of one stored transition.
#[derive(Debug, Clone, Copy)]
struct SlotMeta {
    id: i64,
    /// Discrete action (unused for continuous actions, which live in `act_vec`).
    act: i64,
    reward: f32,
    behaviour: f32,
    /// Slot of the next step of the same episode, or `NONE` after the last step.
    next: u32,
    /// Index of the episode in `eps`.
    ep: u32,
    /// Steps from this one to the end of the episode, this one included (`len - t`).
    steps_left: u32,
}

const EMPTY_SLOT: SlotMeta = SlotMeta {
    id: 0,
    act: 0,
    reward: 0.0,
    behaviour: f32::NAN,
    next: NONE,
    ep: NONE,
    steps_left: 0,
};

#[derive(Debug)]
struct MirrorEpisode {
    id: i64,
    first: u32,
    len: u32,
    terminated: bool,
    final_obs: Vec<f32>,
}

/// Storage of the replay window: slots in an arena with a free list, each slot one transition,
/// the steps of an episode linked through `next` so that n-step walks need no lookups.
#[derive(Debug)]
pub(crate) struct Mirror {
    capacity: usize,
    alpha: f64,
    obs_len: usize,
    act_len: usize,
    shaped: bool,
    /// Per-slot scalars, together so that a sampled slot costs one cache miss for them.
    meta: Vec<SlotMeta>,
    obs: Vec<f32>,
    act_vec: Vec<f32>,
    prio: Vec<f32>,
    dirty: Vec<bool>,
    dirty_ids: Vec<i64>,
    tree: SumTree,
    live: Vec<u32>,
    live_pos: Vec<u32>,
    free: Vec<u32>,
    by_id: HashMap<i64, u32>,
    eps: Vec<Option<MirrorEpisode>>,
    eps_free: Vec<u32>,
    ep_by_id: HashMap<i64, u32>,
    order: VecDeque<i64>,
    max_priority: f32,
    skipped: u64,
}

impl Mirror {
    pub(crate) fn new(opts: MirrorOptions) -> Self {
        Mirror {
            capacity: opts.capacity,
            alpha: if opts.alpha.is_finite() && opts.alpha >= 0.0 {
                opts.alpha
            } else {
                0.0
            },
            obs_len: 0,
            act_len: 0,
            shaped: false,
            meta: Vec::new(),
            obs: Vec::new(),
            act_vec: Vec::new(),
            prio: Vec::new(),
            dirty: Vec::new(),
            dirty_ids: Vec::new(),
            tree: SumTree::new(opts.capacity),
            live: Vec::new(),
            live_pos: Vec::new(),
            free: Vec::new(),
            by_id: HashMap::new(),
            eps: Vec::new(),
            eps_free: Vec::new(),
            ep_by_id: HashMap::new(),
            order: VecDeque::new(),
            max_priority: 1.0,
            skipped: 0,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.live.len()
    }

    /// Oldest episode id still in the window.
    pub(crate) fn oldest_episode(&self) -> Option<i64> {
        self.order.iter().copied().find(|id| self.ep_by_id.contains_key(id))
    }

    fn weight(&self, p: f32) -> f64 {
        (p as f64).powf(self.alpha)
    }

    fn free_slots(&self) -> usize {
        self.capacity - self.meta.len() + self.free.len()
    }

    /// Adds a committed episode. Episodes of another shape than the window's (set by the first
    /// episode) or longer than the whole window are skipped and counted, never half-added.
    pub(crate) fn insert(&mut self, ep: &EpisodeIn<'_>) {
        let len = ep.ids.len();
        if len == 0 || self.capacity == 0 {
            return;
        }
        if !self.shaped {
            self.obs_len = ep.obs_len;
            self.act_len = ep.act_len;
            self.shaped = true;
        }
        let consistent = ep.obs_len == self.obs_len
            && ep.act_len == self.act_len
            && ep.obs.len() == len * ep.obs_len
            && ep.rewards.len() == len
            && ep.behaviour.len() == len
            && ep.final_obs.len() == ep.obs_len
            && if ep.act_len == 0 {
                ep.act_int.len() == len
            } else {
                ep.act_vec.len() == len * ep.act_len
            }
            && ep.priorities.is_none_or(|p| p.len() == len);
        if !consistent || len > self.capacity || self.ep_by_id.contains_key(&ep.episode_id) {
            self.skipped += 1;
            return;
        }
        while self.free_slots() < len {
            match self.order.pop_front() {
                Some(old) => self.remove(old),
                None => break,
            }
        }
        let ep_slot = match self.eps_free.pop() {
            Some(s) => s,
            None => {
                self.eps.push(None);
                (self.eps.len() - 1) as u32
            }
        };
        let mut prev = NONE;
        let mut first = NONE;
        for t in 0..len {
            let slot = match self.free.pop() {
                Some(s) => s,
                None => {
                    let s = self.meta.len() as u32;
                    self.meta.push(EMPTY_SLOT);
                    self.obs.resize(self.obs.len() + self.obs_len, 0.0);
                    self.act_vec.resize(self.act_vec.len() + self.act_len, 0.0);
                    self.prio.push(0.0);
                    self.dirty.push(false);
                    self.live_pos.push(NONE);
                    s
                }
            };
            let s = slot as usize;
            let o = self.obs_len;
            self.obs[s * o..(s + 1) * o].copy_from_slice(&ep.obs[t * o..(t + 1) * o]);
            let a = self.act_len;
            if a > 0 {
                self.act_vec[s * a..(s + 1) * a].copy_from_slice(&ep.act_vec[t * a..(t + 1) * a]);
            }
            self.meta[s] = SlotMeta {
                id: ep.ids[t],
                act: if a == 0 { ep.act_int[t] } else { 0 },
                reward: ep.rewards[t],
                behaviour: ep.behaviour[t],
                next: NONE,
                ep: ep_slot,
                steps_left: (len - t) as u32,
            };
            let p = match ep.priorities.map(|p| p[t]) {
                Some(p) if p.is_finite() && p > 0.0 => p,
                _ => self.max_priority,
            };
            self.max_priority = self.max_priority.max(p);
            self.prio[s] = p;
            self.dirty[s] = false;
            self.tree.set(s, self.weight(p));
            self.live_pos[s] = self.live.len() as u32;
            self.live.push(slot);
            self.by_id.insert(ep.ids[t], slot);
            if prev != NONE {
                self.meta[prev as usize].next = slot;
            } else {
                first = slot;
            }
            prev = slot;
        }
        self.eps[ep_slot as usize] = Some(MirrorEpisode {
            id: ep.episode_id,
            first,
            len: len as u32,
            terminated: ep.terminated,
            final_obs: ep.final_obs.to_vec(),
        });
        self.ep_by_id.insert(ep.episode_id, ep_slot);
        self.order.push_back(ep.episode_id);
        // Lazy deletion leaves stale ids in `order`; compact when they dominate.
        if self.order.len() > 2 * self.ep_by_id.len() + 64 {
            let keep = &self.ep_by_id;
            self.order.retain(|id| keep.contains_key(id));
        }
    }

    /// Removes an episode (evicted from the file, or pushed out of the window).
    pub(crate) fn remove(&mut self, episode_id: i64) {
        let Some(ep_slot) = self.ep_by_id.remove(&episode_id) else {
            return;
        };
        let Some(ep) = self.eps.get_mut(ep_slot as usize).and_then(Option::take) else {
            return;
        };
        self.eps_free.push(ep_slot);
        let mut slot = ep.first;
        while slot != NONE {
            let s = slot as usize;
            self.tree.set(s, 0.0);
            self.by_id.remove(&self.meta[s].id);
            self.dirty[s] = false;
            let pos = self.live_pos[s] as usize;
            let last = self.live.len() - 1;
            self.live.swap(pos, last);
            self.live_pos[self.live[pos] as usize] = pos as u32;
            self.live.pop();
            self.live_pos[s] = NONE;
            self.free.push(slot);
            slot = self.meta[s].next;
            self.meta[s] = EMPTY_SLOT;
        }
    }

    /// Episodes in the window, lowest mean priority first (for lowest-priority eviction).
    pub(crate) fn episodes_by_priority(&self) -> Vec<i64> {
        let mut v: Vec<(f64, i64)> = self
            .eps
            .iter()
            .flatten()
            .map(|ep| {
                let mut sum = 0.0f64;
                let mut slot = ep.first;
                while slot != NONE {
                    sum += self.prio[slot as usize] as f64;
                    slot = self.meta[slot as usize].next;
                }
                (sum / ep.len.max(1) as f64, ep.id)
            })
            .collect();
        v.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        v.into_iter().map(|(_, id)| id).collect()
    }

    /// Takes the priorities changed since the last call, for the writer to persist.
    pub(crate) fn take_dirty(&mut self) -> Vec<(i64, f32)> {
        let mut out = Vec::with_capacity(self.dirty_ids.len());
        for id in std::mem::take(&mut self.dirty_ids) {
            if let Some(&slot) = self.by_id.get(&id) {
                let s = slot as usize;
                if self.dirty[s] {
                    self.dirty[s] = false;
                    out.push((id, self.prio[s]));
                }
            }
        }
        out
    }

    fn update_priorities(&mut self, ids: &[i64], priorities: &[f32]) -> Result<usize> {
        if ids.len() != priorities.len() {
            return Err(ReplayError::InvalidArgument(format!(
                "{} ids but {} priorities",
                ids.len(),
                priorities.len()
            )));
        }
        if let Some(p) = priorities.iter().find(|p| !(p.is_finite() && **p > 0.0)) {
            return Err(ReplayError::InvalidArgument(format!(
                "priorities must be finite and > 0, got {p}"
            )));
        }
        let mut updated = 0;
        for (&id, &p) in ids.iter().zip(priorities) {
            if let Some(&slot) = self.by_id.get(&id) {
                let s = slot as usize;
                self.prio[s] = p;
                self.max_priority = self.max_priority.max(p);
                self.tree.set(s, self.weight(p));
                if !self.dirty[s] {
                    self.dirty[s] = true;
                    self.dirty_ids.push(id);
                }
                updated += 1;
            }
        }
        Ok(updated)
    }

    /// Writes row `i` of `batch` from `slot`, including its n-step target.
    #[inline]
    fn fill(&self, batch: &mut SampleBatch, i: usize, slot: u32, nstep: NStep) {
        let s = slot as usize;
        let m = self.meta[s];
        let o = self.obs_len;
        batch.ids[i] = m.id;
        batch.obs[i * o..(i + 1) * o].copy_from_slice(&self.obs[s * o..(s + 1) * o]);
        if self.act_len == 0 {
            batch.actions[i] = m.act;
        } else {
            let a = self.act_len;
            batch.actions_continuous[i * a..(i + 1) * a]
                .copy_from_slice(&self.act_vec[s * a..(s + 1) * a]);
        }
        batch.behaviour[i] = m.behaviour;
        let remaining = m.steps_left as usize;
        let k = nstep.n.max(1).min(remaining);
        let mut g = m.reward;
        let mut disc = nstep.gamma;
        let mut cur = m;
        for _ in 1..k {
            cur = self.meta[cur.next as usize];
            g += disc * cur.reward;
            disc *= nstep.gamma;
        }
        batch.rewards[i] = g;
        if k < remaining {
            let b = cur.next as usize;
            batch.next_obs[i * o..(i + 1) * o].copy_from_slice(&self.obs[b * o..(b + 1) * o]);
            batch.discounts[i] = disc;
        } else if let Some(ep) = self.eps.get(m.ep as usize).and_then(Option::as_ref) {
            batch.next_obs[i * o..(i + 1) * o].copy_from_slice(&ep.final_obs);
            batch.discounts[i] = if ep.terminated { 0.0 } else { disc };
        }
    }
}

/// Handle on the mirror for learners: cheap to clone, safe to share between threads.
///
/// Sampling takes a read lock, so several learners can sample at once; priority updates and
/// the writer's appends take the write lock briefly.
#[derive(Debug, Clone)]
pub struct Sampler {
    mirror: Arc<RwLock<Mirror>>,
}

impl Sampler {
    pub(crate) fn new(mirror: Arc<RwLock<Mirror>>) -> Self {
        Sampler { mirror }
    }

    fn read(&self) -> RwLockReadGuard<'_, Mirror> {
        // A poisoned lock only means another thread panicked; the mirror is updated so that
        // every panic-free path leaves it consistent, so keep serving.
        self.mirror.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Mirror> {
        self.mirror.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Transitions currently in the window.
    pub fn len(&self) -> usize {
        self.read().len()
    }

    /// Whether the window is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Episodes skipped because their shape differed from the window's or they were longer
    /// than the whole window.
    pub fn skipped_episodes(&self) -> u64 {
        self.read().skipped
    }

    /// Floats per observation in the window (0 before the first episode).
    pub fn obs_len(&self) -> usize {
        self.read().obs_len
    }

    /// Largest priority seen; new transitions enter at this priority.
    pub fn max_priority(&self) -> f32 {
        self.read().max_priority
    }

    /// Fills `batch` with `rows` transitions drawn uniformly (with replacement).
    pub fn sample_uniform<R: Rng + ?Sized>(
        &self,
        rng: &mut R,
        rows: usize,
        nstep: NStep,
        batch: &mut SampleBatch,
    ) -> Result<()> {
        let m = self.read();
        if m.live.is_empty() {
            return Err(ReplayError::Empty);
        }
        batch.reshape(rows, m.obs_len, m.act_len);
        for i in 0..rows {
            let slot = m.live[rng.random_range(0..m.live.len())];
            m.fill(batch, i, slot, nstep);
            batch.weights[i] = 1.0;
        }
        Ok(())
    }

    /// Fills `batch` with `rows` transitions drawn with probability ∝ priority^α, stratified
    /// over `rows` equal segments of the total, with importance weights
    /// `(N·P(i))^-β / max_batch`.
    pub fn sample_prioritized<R: Rng + ?Sized>(
        &self,
        rng: &mut R,
        rows: usize,
        nstep: NStep,
        beta: f64,
        batch: &mut SampleBatch,
    ) -> Result<()> {
        if !(beta.is_finite() && beta >= 0.0) {
            return Err(ReplayError::InvalidArgument(format!(
                "beta must be finite and >= 0, got {beta}"
            )));
        }
        let m = self.read();
        let total = m.tree.total();
        if m.live.is_empty() || total <= 0.0 {
            return Err(ReplayError::Empty);
        }
        batch.reshape(rows, m.obs_len, m.act_len);
        let segment = total / rows.max(1) as f64;
        batch.scratch_u.clear();
        batch
            .scratch_u
            .extend((0..rows).map(|i| (i as f64 + rng.random::<f64>()) * segment));
        batch.scratch_leaf.resize(rows, 0);
        m.tree
            .find_many(&mut batch.scratch_u, &mut batch.scratch_leaf)
            .ok_or(ReplayError::Empty)?;
        // w_i = (N·P(i))^-β normalised by the batch maximum, which belongs to the smallest
        // priority in the batch, so w_i / max = (p_i / p_min)^-β: exactly 1 for that row.
        let mut min_p = f64::INFINITY;
        for &leaf in &batch.scratch_leaf {
            min_p = min_p.min(m.tree.get(leaf));
        }
        for i in 0..rows {
            let leaf = batch.scratch_leaf[i];
            batch.weights[i] = (m.tree.get(leaf) / min_p).powf(-beta) as f32;
            m.fill(batch, i, leaf as u32, nstep);
        }
        Ok(())
    }

    /// Sets the priorities of transitions by id (e.g. `|TD error| + ε`). Ids that have left
    /// the window are ignored; returns how many were updated. Changed priorities are written
    /// to the file with the writer's next batch.
    pub fn update_priorities(&self, ids: &[i64], priorities: &[f32]) -> Result<usize> {
        self.write().update_priorities(ids, priorities)
    }

    /// The current priority of a transition, if it is in the window.
    pub fn priority(&self, id: i64) -> Option<f32> {
        let m = self.read();
        m.by_id.get(&id).map(|&s| m.prio[s as usize])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::SeedableRng;

    struct RefEpisode {
        rewards: Vec<f32>,
        terminated: bool,
    }

    /// n-step target straight from the definition: obs index of the bootstrap (`len` means
    /// the final observation), reward sum and discount.
    fn reference(ep: &RefEpisode, t: usize, n: usize, gamma: f32) -> (usize, f32, f32) {
        let len = ep.rewards.len();
        let mut g = 0.0f32;
        let mut k = 0;
        while k < n && t + k < len {
            g += gamma.powi(k as i32) * ep.rewards[t + k];
            k += 1;
        }
        let disc = if t + k == len && ep.terminated {
            0.0
        } else {
            gamma.powi(k as i32)
        };
        (t + k, g, disc)
    }

    proptest! {
        #[test]
        fn nstep_matches_reference(
            eps in proptest::collection::vec(
                (proptest::collection::vec(-5i32..5, 1..12), any::<bool>()), 1..8),
            n in 1usize..6,
            gamma in 0.5f32..1.0,
            capacity in 10usize..60,
            seed in any::<u64>(),
        ) {
            let mut mirror = Mirror::new(MirrorOptions { capacity, alpha: 0.6 });
            let mut next_id = 1i64;
            let mut refs = HashMap::new();
            for (e, (rewards, terminated)) in eps.iter().enumerate() {
                let len = rewards.len();
                let ids: Vec<i64> = (next_id..next_id + len as i64).collect();
                next_id += len as i64;
                // Observation of step t of episode e is [e, t]; the final one is [e, len].
                let obs: Vec<f32> = (0..len).flat_map(|t| [e as f32, t as f32]).collect();
                let rewards: Vec<f32> = rewards.iter().map(|&r| r as f32).collect();
                mirror.insert(&EpisodeIn {
                    episode_id: e as i64 + 1,
                    ids: &ids,
                    obs_len: 2,
                    act_len: 0,
                    obs: &obs,
                    act_int: &vec![0; len],
                    act_vec: &[],
                    rewards: &rewards,
                    behaviour: &vec![f32::NAN; len],
                    terminated: *terminated,
                    final_obs: &[e as f32, len as f32],
                    priorities: None,
                });
                for (t, id) in ids.iter().enumerate() {
                    refs.insert(*id, (e, t));
                }
            }
            let sampler = Sampler::new(Arc::new(RwLock::new(mirror)));
            let mut batch = SampleBatch::with_capacity(64);
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            sampler.sample_prioritized(&mut rng, 64, NStep { n, gamma }, 0.4, &mut batch).unwrap();
            for i in 0..batch.len {
                let (e, t) = refs[&batch.ids[i]];
                let ep = RefEpisode {
                    rewards: eps[e].0.iter().map(|&r| r as f32).collect(),
                    terminated: eps[e].1,
                };
                let (boot, g, disc) = reference(&ep, t, n, gamma);
                prop_assert_eq!(&batch.obs[2 * i..2 * i + 2], &[e as f32, t as f32]);
                prop_assert_eq!(&batch.next_obs[2 * i..2 * i + 2], &[e as f32, boot as f32]);
                prop_assert!((batch.rewards[i] - g).abs() <= 1e-4 * (1.0 + g.abs()),
                    "reward {} vs {}", batch.rewards[i], g);
                prop_assert!((batch.discounts[i] - disc).abs() <= 1e-5, "disc {} vs {}", batch.discounts[i], disc);
                prop_assert!(batch.weights[i] > 0.0 && batch.weights[i] <= 1.0);
            }
        }
    }
}
