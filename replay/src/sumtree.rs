//! A sum-tree over a fixed number of leaves, for proportional prioritized sampling.

/// Binary tree whose internal nodes hold the sum of their children, over `capacity` leaves.
///
/// Leaves are the sampling weights (already raised to α by the caller). Sampling a prefix sum
/// `u ∈ [0, total)` walks from the root in `O(log n)`. Parents are recomputed as `left + right`
/// on every update, never adjusted by a delta, so rounding error cannot accumulate over
/// millions of priority updates.
#[derive(Debug, Clone)]
pub struct SumTree {
    leaves: usize,
    capacity: usize,
    nodes: Vec<f64>,
}

impl SumTree {
    /// A tree of `capacity` leaves, all zero.
    pub fn new(capacity: usize) -> Self {
        let leaves = capacity.max(1).next_power_of_two();
        SumTree {
            leaves,
            capacity,
            nodes: vec![0.0; 2 * leaves],
        }
    }

    /// Number of usable leaves.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Sum of all leaves.
    pub fn total(&self) -> f64 {
        self.nodes[1]
    }

    /// The weight of leaf `i` (0 outside the capacity).
    pub fn get(&self, i: usize) -> f64 {
        if i >= self.capacity {
            return 0.0;
        }
        self.nodes[self.leaves + i]
    }

    /// Sets leaf `i` to `weight`; non-finite or negative weights are stored as 0 so that the
    /// tree can never yield a negative or NaN total. Out-of-range leaves are ignored.
    pub fn set(&mut self, i: usize, weight: f64) {
        if i >= self.capacity {
            return;
        }
        let w = if weight.is_finite() && weight > 0.0 {
            weight
        } else {
            0.0
        };
        let mut node = self.leaves + i;
        self.nodes[node] = w;
        while node > 1 {
            node /= 2;
            self.nodes[node] = self.nodes[2 * node] + self.nodes[2 * node + 1];
        }
    }

    /// The leaf whose cumulative range `[prefix(i), prefix(i) + w_i)` contains `u`.
    ///
    /// Returns `None` when the tree is empty. Values of `u` at or beyond the total (possible by
    /// rounding) map to the last leaf with positive weight, and the walk never enters a
    /// zero-weight subtree, so the result always has positive weight.
    pub fn find(&self, u: f64) -> Option<usize> {
        if self.nodes[1] <= 0.0 {
            return None;
        }
        let mut u = if u.is_finite() { u.max(0.0) } else { 0.0 };
        let mut node = 1;
        while node < self.leaves {
            let left = 2 * node;
            let lw = self.nodes[left];
            let rw = self.nodes[left + 1];
            if (u < lw && lw > 0.0) || rw <= 0.0 {
                node = left;
            } else {
                u -= lw;
                node = left + 1;
            }
        }
        Some(node - self.leaves)
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
            weights in proptest::collection::vec(0u32..20, 1..70),
            updates in proptest::collection::vec((0usize..70, 0u32..20), 0..40),
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
