//! A sum-tree over a fixed number of leaves, for proportional prioritized sampling.

/// Children per node. Sixteen f32 sums fill one 64-byte cache line, so a descent touches one
/// line per level, and a tree over a million leaves is 5 levels deep with every level but
/// the leaves (4 MiB) small enough to stay in cache: about one cache miss per lookup.
const FANOUT: usize = 16;

/// One node's children: a cache line of sums.
#[derive(Debug, Clone, Copy, Default)]
#[repr(C, align(64))]
struct Line([f32; FANOUT]);

/// A 16-ary tree whose internal nodes hold the sum of their children, over `capacity`
/// leaves.
///
/// Leaves are the sampling weights (already raised to α by the caller), stored as f32: half
/// the memory of f64 and therefore half the cache misses, at a relative precision of 1e-7,
/// far below what matters for sampling. Parents are recomputed from their children on every
/// update (summed in f64), never adjusted by a delta, so rounding error cannot accumulate
/// over millions of priority updates.
#[derive(Debug, Clone)]
pub struct SumTree {
    capacity: usize,
    /// `levels[d]` holds the `16^(d+1)` entries of depth `d + 1` (the root's children first),
    /// grouped in lines of 16 siblings; the last level holds the leaves.
    levels: Vec<Vec<Line>>,
    total: f64,
}

/// Levels using at least this many lines (128 KiB) are loaded ahead of the picks in
/// [`SumTree::find_many`]. Measured with a 1M-leaf tree, the level above the leaves
/// (~250 KiB) misses often enough to gain from it too; the small top levels stay in cache,
/// where the extra pass would only cost time.
const PREFETCH_LINES: usize = 2048;

/// Loads the first lane of each line `level[e]`, `e` in `entries`, and discards it: plain
/// loads with no dependency between them, so their cache misses overlap.
fn touch_lines(level: &[Line], entries: &[usize]) {
    let mut acc = 0u32;
    for &e in entries {
        if let Some(line) = level.get(e) {
            acc ^= line.0[0].to_bits();
        }
    }
    std::hint::black_box(acc);
}

/// Stores a weight as f32 without letting a positive weight become zero (it would never be
/// sampled again) or infinite.
fn to_lane(w: f64) -> f32 {
    if !(w.is_finite() && w > 0.0) {
        return 0.0;
    }
    (w as f32).clamp(f32::MIN_POSITIVE, f32::MAX / FANOUT as f32)
}

impl SumTree {
    /// A tree of `capacity` leaves, all zero.
    pub fn new(capacity: usize) -> Self {
        let mut depth = 1;
        let mut leaves = FANOUT;
        while leaves < capacity {
            leaves *= FANOUT;
            depth += 1;
        }
        let levels = (0..depth)
            .map(|d| vec![Line::default(); FANOUT.pow(d as u32)])
            .collect();
        SumTree {
            capacity,
            levels,
            total: 0.0,
        }
    }

    /// Number of usable leaves.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Sum of all leaves.
    pub fn total(&self) -> f64 {
        self.total
    }

    /// The weight of leaf `i` as stored (0 outside the capacity).
    pub fn get(&self, i: usize) -> f64 {
        if i >= self.capacity {
            return 0.0;
        }
        let leaves = &self.levels[self.levels.len() - 1];
        leaves[i / FANOUT].0[i % FANOUT] as f64
    }

    /// Sets leaf `i` to `weight`; non-finite or negative weights are stored as 0 so that the
    /// tree can never yield a negative or NaN total. Out-of-range leaves are ignored.
    pub fn set(&mut self, i: usize, weight: f64) {
        if i >= self.capacity {
            return;
        }
        let depth = self.levels.len();
        let mut entry = i;
        self.levels[depth - 1][entry / FANOUT].0[entry % FANOUT] = to_lane(weight);
        for d in (0..depth - 1).rev() {
            let line = entry / FANOUT;
            let sum: f64 = self.levels[d + 1][line].0.iter().map(|&x| x as f64).sum();
            entry = line;
            self.levels[d][entry / FANOUT].0[entry % FANOUT] = sum as f32;
        }
        self.total = self.levels[0][0].0.iter().map(|&x| x as f64).sum();
    }

    /// Picks the child of a line that contains `u`, moving `u` into its range. Never picks a
    /// zero-weight child: if rounding pushes `u` past the last positive child, that child.
    #[inline]
    fn pick(line: &Line, u: &mut f32) -> usize {
        let mut last_positive = 0;
        for (k, &w) in line.0.iter().enumerate() {
            if w > 0.0 {
                if *u < w {
                    return k;
                }
                last_positive = k;
            }
            *u -= w;
        }
        // `u` lies past the end of this line (rounding, or a query beyond the total):
        // descend into the last positive child and stay at its end, which lands on its last
        // positive leaf.
        *u = f32::INFINITY;
        last_positive
    }

    /// [`SumTree::pick`] without data-dependent branches in the common case.
    ///
    /// A mispredicted branch discards the speculative loads of the following queries in
    /// `find_many`, which is what lets their cache misses overlap; counting prefix sums with
    /// compares (compiled to conditional moves) keeps the pipeline full. Falls back to `pick`
    /// in the rare cases it cannot settle: a zero-weight lane or `u` past the line's end.
    #[inline]
    fn pick_fast(line: &Line, u: &mut f32) -> usize {
        let w = &line.0;
        let mut c = 0.0f32;
        let mut base = 0.0f32;
        let mut k = 0usize;
        for &x in &w[..FANOUT - 1] {
            c += x;
            let le = c <= *u;
            k += le as usize;
            base = if le { c } else { base };
        }
        let r = *u - base;
        if w[k] > 0.0 && r >= 0.0 && r < w[k] {
            *u = r;
            return k;
        }
        Self::pick(line, u)
    }

    fn start(&self, u: f64) -> f32 {
        if u.is_nan() { 0.0 } else { u.max(0.0) as f32 }
    }

    /// The leaf whose cumulative range `[prefix(i), prefix(i) + w_i)` contains `u`.
    ///
    /// Returns `None` when the tree is empty. Values of `u` at or beyond the total (possible by
    /// rounding) map to the last leaf with positive weight, and the walk never enters a
    /// zero-weight subtree, so the result always has positive weight.
    pub fn find(&self, u: f64) -> Option<usize> {
        if self.total <= 0.0 {
            return None;
        }
        let mut u = self.start(u);
        let mut entry = 0;
        for level in &self.levels {
            entry = entry * FANOUT + Self::pick(&level[entry], &mut u);
        }
        Some(entry)
    }

    /// [`SumTree::find`] for many values at once, written to `out`.
    ///
    /// Descends level by level across all queries, so the cache misses of different queries
    /// overlap instead of queueing behind each other. `scratch` is reused between calls.
    pub fn find_many(&self, us: &[f64], out: &mut [usize], scratch: &mut Vec<f32>) -> Option<()> {
        if self.total <= 0.0 || us.len() != out.len() {
            return None;
        }
        scratch.clear();
        scratch.extend(us.iter().map(|&u| self.start(u)));
        out.iter_mut().for_each(|e| *e = 0);
        let depth = self.levels.len();
        for (d, level) in self.levels.iter().enumerate() {
            // Large levels (the leaves of a large tree) miss on almost every line. The
            // pick loop is long, so the out-of-order window holds only a few queries' loads
            // at once; this tiny loop first puts all of the level's lines in flight together,
            // then the picks run on cached lines.
            let used_lines = self.capacity.div_ceil(FANOUT.pow((depth - d) as u32));
            if used_lines >= PREFETCH_LINES {
                touch_lines(level, out);
            }
            for (u, e) in scratch.iter_mut().zip(out.iter_mut()) {
                *e = *e * FANOUT + Self::pick_fast(&level[*e], u);
            }
        }
        Some(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The obvious linear scan that `find` must agree with.
    fn reference_find(w: &[f64], u: f64) -> Option<usize> {
        let total: f64 = w.iter().sum();
        if total <= 0.0 {
            return None;
        }
        let mut acc = 0.0;
        let mut last_positive = None;
        for (i, &x) in w.iter().enumerate() {
            if x > 0.0 {
                last_positive = Some(i);
                if u < acc + x {
                    return Some(i);
                }
            }
            acc += x;
        }
        last_positive
    }

    proptest! {
        // Integer weights keep every partial sum exact, so tree and scan must agree exactly,
        // including on range boundaries.
        #[test]
        fn find_matches_linear_scan(
            weights in proptest::collection::vec(0u32..20, 1..1000),
            updates in proptest::collection::vec((0usize..1000, 0u32..20), 0..40),
            probes in proptest::collection::vec(0.0f64..1.0, 1..30),
        ) {
            let mut w: Vec<f64> = weights.iter().map(|&x| x as f64).collect();
            let mut tree = SumTree::new(w.len());
            for (i, &x) in w.iter().enumerate() { tree.set(i, x); }
            for &(i, x) in &updates {
                let i = i % w.len();
                w[i] = x as f64;
                tree.set(i, x as f64);
            }
            let total: f64 = w.iter().sum();
            prop_assert_eq!(tree.total(), total);
            for (i, &x) in w.iter().enumerate() { prop_assert_eq!(tree.get(i), x); }
            for &p in &probes {
                let u = (p * (total + 1.0)).floor();
                prop_assert_eq!(tree.find(u), reference_find(&w, u), "u = {}", u);
            }
            if total > 0.0 {
                let us: Vec<f64> = probes.iter().map(|p| (p * (total + 1.0)).floor()).collect();
                let expected: Vec<usize> =
                    us.iter().map(|&u| reference_find(&w, u).unwrap()).collect();
                let mut out = vec![0; us.len()];
                tree.find_many(&us, &mut out, &mut Vec::new()).unwrap();
                prop_assert_eq!(out, expected);
            }
        }

        #[test]
        fn found_leaf_always_has_weight(
            weights in proptest::collection::vec(0.0f64..1.0, 1..100),
            u in -1.0f64..2.0,
        ) {
            let mut tree = SumTree::new(weights.len());
            for (i, &x) in weights.iter().enumerate() { tree.set(i, x); }
            if let Some(i) = tree.find(u * tree.total()) {
                prop_assert!(tree.get(i) > 0.0);
            } else {
                prop_assert_eq!(tree.total(), 0.0);
            }
        }
    }

    #[test]
    fn frequencies_follow_weights() {
        let mut tree = SumTree::new(4);
        for (i, w) in [1.0, 0.0, 3.0, 4.0].into_iter().enumerate() {
            tree.set(i, w);
        }
        let mut counts = [0usize; 4];
        let n = 8000;
        for k in 0..n {
            let u = (k as f64 + 0.5) / n as f64 * tree.total();
            counts[tree.find(u).unwrap()] += 1;
        }
        assert_eq!(counts, [1000, 0, 3000, 4000]);
    }
}
