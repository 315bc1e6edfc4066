//! Detecting a change in the world: the Page-Hinkley test (Page 1954; Hinkley 1971; in the
//! streaming form of Gama et al. 2013) on episode returns and on observation statistics.
//!
//! For a stream `x₁, x₂, …` with running mean `x̄ₜ`, the test keeps the cumulative deviations
//! `Uₜ = Σ (xᵢ − x̄ᵢ − δ)` (for a rise) and `Lₜ = Σ (xᵢ − x̄ᵢ + δ)` (for a fall) and raises an
//! alarm when `Uₜ − min U > λ` or `max L − Lₜ > λ`. `δ` (the change too small to care about)
//! and `λ` (the evidence needed) are given in units of the stream's standard deviation,
//! measured over a warm-up window after every alarm, so one setting fits returns of 500 and
//! observations of 0.05 alike. The unit is at least 5 % of the warm-up's |mean|: a stream
//! that barely varies (a solved CartPole returns 500 every time) must not alarm on a wobble,
//! yet a fall from it is still seen at once.
//!
//! For returns both commands use [`ReturnDrop`], two adjacent windows compared for a fall: a
//! Page-Hinkley detector that restarts after every rise (which is what learning looks like)
//! spends its warm-ups blind, and a warm-up that spans a change inflates its unit until a
//! later fall goes unseen. Page-Hinkley watches the observation features (the daemon feeds it
//! each episode's first observation, which a learning policy cannot move). A fall is not the
//! only sign: a change that comes while returns are low already (during a collapse, or while a
//! response explores) shows no fall, so once exploration settles `ReturnDrop` also reports
//! returns stuck at the bottom of the world's range where the agent once held its top.
//!
//! What a command does on drift is in [`crate::runtime::changes`]. This module only detects.

use serde::{Deserialize, Serialize};

/// Settings of a Page-Hinkley detector.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DriftConfig {
    /// Magnitude of change to ignore, in standard deviations of the warm-up window.
    pub delta: f64,
    /// Evidence needed for an alarm, in standard deviations.
    pub lambda: f64,
    /// Samples of the warm-up window (after start and after each alarm).
    pub warmup: usize,
}

impl Default for DriftConfig {
    fn default() -> Self {
        DriftConfig {
            delta: 0.5,
            lambda: 25.0,
            warmup: 30,
        }
    }
}

/// Which way the stream moved.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// The mean rose.
    Up,
    /// The mean fell.
    Down,
    /// Returns stay at the bottom of the world's range where the agent once held its top,
    /// with exploration settled: a confident, wrong policy that no fall will reveal any more
    /// (it fell before and never came back).
    Stuck,
}

/// An alarm.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Drift {
    /// Which way.
    pub direction: Direction,
    /// Samples since the detector last (re)started.
    pub after: u64,
    /// Mean before the change (the warm-up window's).
    pub reference_mean: f64,
    /// Running mean at the alarm.
    pub mean: f64,
    /// What the changed world pays the old policy ([`ReturnDrop`]: the mean of the recent
    /// window's returns that fell, below the reference mean by the smallest fall that counts;
    /// Page-Hinkley: the running mean). Not the recent mean: the alarm comes while the recent
    /// window still holds episodes lived before the change, which lift its mean (even its
    /// median) far above what the broken policy earns.
    pub fallen_mean: f64,
}

/// A two-sided Page-Hinkley detector on one stream.
#[derive(Clone, Debug)]
pub struct PageHinkley {
    cfg: DriftConfig,
    n: u64,
    mean: f64,
    m2: f64,
    unit: f64,
    reference_mean: f64,
    up: f64,
    up_min: f64,
    down: f64,
    down_max: f64,
}

impl PageHinkley {
    /// A detector that starts with a warm-up window.
    pub fn new(cfg: DriftConfig) -> Self {
        PageHinkley {
            cfg,
            n: 0,
            mean: 0.0,
            m2: 0.0,
            unit: 0.0,
            reference_mean: 0.0,
            up: 0.0,
            up_min: 0.0,
            down: 0.0,
            down_max: 0.0,
        }
    }

    /// Starts over (a new warm-up), e.g. after an alarm was acted on.
    pub fn reset(&mut self) {
        *self = PageHinkley::new(self.cfg);
    }

    /// Feeds one sample; returns an alarm when the stream's mean has moved (and restarts).
    /// Non-finite samples are ignored.
    pub fn update(&mut self, x: f64) -> Option<Drift> {
        if !x.is_finite() {
            return None;
        }
        self.n += 1;
        let d = x - self.mean;
        self.mean += d / self.n as f64;
        self.m2 += d * (x - self.mean);
        let warmup = self.cfg.warmup.max(2) as u64;
        if self.n < warmup {
            return None;
        }
        if self.n == warmup {
            let sd = (self.m2 / (self.n - 1) as f64).sqrt();
            self.unit = sd.max(0.05 * self.mean.abs()).max(1e-9);
            self.reference_mean = self.mean;
            return None;
        }
        let (delta, lambda) = (self.cfg.delta * self.unit, self.cfg.lambda * self.unit);
        self.up += x - self.mean - delta;
        self.up_min = self.up_min.min(self.up);
        self.down += x - self.mean + delta;
        self.down_max = self.down_max.max(self.down);
        let direction = if self.up - self.up_min > lambda {
            Direction::Up
        } else if self.down_max - self.down > lambda {
            Direction::Down
        } else {
            return None;
        };
        let alarm = Drift {
            direction,
            after: self.n,
            reference_mean: self.reference_mean,
            mean: self.mean,
            fallen_mean: self.mean,
        };
        self.reset();
        Some(alarm)
    }
}

/// Settings of a [`ReturnDrop`] detector.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReturnDropConfig {
    /// Episodes in the recent window.
    pub recent: usize,
    /// Episodes in the reference window (the ones before the recent window).
    pub reference: usize,
    /// Smallest fall that counts, as a fraction of the world's return range (the widest 5th to
    /// 95th percentile span any [`RANGE_MEMORY`] consecutive returns have shown): a scale the
    /// world shows, where the reference mean's magnitude is not one (returns near 0, or
    /// negative).
    pub min_drop: f64,
    /// The fall must also exceed this many standard errors of the difference of means (with
    /// the reference window's spread).
    pub z: f64,
}

impl Default for ReturnDropConfig {
    fn default() -> Self {
        ReturnDropConfig {
            recent: 10,
            reference: 50,
            min_drop: 0.2,
            z: 4.0,
        }
    }
}

/// Returns a [`ReturnDrop`] remembers for the world's range (kept across alarms: the range is
/// the world's, not a regime's).
pub const RANGE_MEMORY: usize = 1000;

/// How often (in samples) the widest range is measured again: a sort of [`RANGE_MEMORY`]
/// values, cheap but needless every episode.
const RANGE_EVERY: usize = 10;

/// A fall in a stream, as two adjacent windows see it: the mean of the last `recent` samples
/// against the mean of the `reference` samples before them (in the spirit of ADWIN's two
/// sub-windows, with fixed sizes). An alarm needs a fall of at least `min_drop` of the world's
/// return range *and* of `z` standard errors, so a learner's rising returns never alarm, a
/// solved task failing now and then under exploration does not either, and a world that breaks
/// the policy is seen `recent` episodes after the change. Both thresholds are in the world's own
/// units, so one setting serves returns in [−1, 1], [0, 500] and [−500, 0]. Unlike
/// Page-Hinkley it has no warm-up whose scale a change could distort: the windows slide, and
/// after an alarm both are emptied, so the next alarm compares against the changed world.
#[derive(Clone, Debug)]
pub struct ReturnDrop {
    cfg: ReturnDropConfig,
    window: std::collections::VecDeque<f64>,
    history: std::collections::VecDeque<f64>,
    /// The widest range measured so far: once the policy converges, the last returns span
    /// only its own wobble (0.85 to 0.91 where the world pays −1 to 1), and a range that shrank
    /// with them would call that wobble a change of world.
    widest: f64,
    seen: usize,
    /// The best reference-window mean seen: whether the agent ever held the world's top.
    best_reference: f64,
}

impl ReturnDrop {
    /// An empty detector.
    pub fn new(cfg: ReturnDropConfig) -> Self {
        ReturnDrop {
            cfg,
            window: std::collections::VecDeque::with_capacity(cfg.recent + cfg.reference),
            history: std::collections::VecDeque::with_capacity(RANGE_MEMORY),
            widest: 0.0,
            seen: 0,
            best_reference: f64::NEG_INFINITY,
        }
    }

    /// Feeds one sample; returns an alarm (direction `Down`) when the recent window fell.
    /// Non-finite samples are ignored. Never alarms `Stuck` (see [`ReturnDrop::update_settled`]).
    pub fn update(&mut self, x: f64) -> Option<Drift> {
        self.update_settled(x, false)
    }

    /// [`ReturnDrop::update`], and with `settled` (exploration back at its floor, no response
    /// in progress) also a `Stuck` alarm: both windows in the bottom `min_drop` of the world's
    /// range while the remembered returns still show its top and the agent once held it (a
    /// reference window within `min_drop` of the top). That is a policy that fell and never
    /// came back, or a change that came while returns were low already, so no fall shows it.
    pub fn update_settled(&mut self, x: f64, settled: bool) -> Option<Drift> {
        if !x.is_finite() {
            return None;
        }
        let (w, r) = (self.cfg.recent.max(1), self.cfg.reference.max(2));
        if self.window.len() == w + r {
            self.window.pop_front();
        }
        self.window.push_back(x);
        if self.history.len() == RANGE_MEMORY {
            self.history.pop_front();
        }
        self.history.push_back(x);
        self.seen += 1;
        if self.seen % RANGE_EVERY == 0 {
            self.widest = self.widest.max(self.span());
        }
        if self.window.len() < w + r.clamp(2, 20) {
            return None;
        }
        let split = self.window.len() - w;
        let stats = |it: &mut dyn Iterator<Item = f64>| {
            let v: Vec<f64> = it.collect();
            let n = v.len() as f64;
            let m = v.iter().sum::<f64>() / n;
            let var = v.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / (n - 1.0).max(1.0);
            (m, var, n)
        };
        let (m_ref, v_ref, n_ref) = stats(&mut self.window.iter().copied().take(split));
        let (m_rec, _, n_rec) = stats(&mut self.window.iter().copied().skip(split));
        // The reference window's spread for both: under "no change" they share it, and ten
        // recent samples estimate it too poorly to be trusted (a calm streak would alarm).
        let se = (v_ref * (1.0 / n_ref + 1.0 / n_rec)).sqrt();
        let drop = m_ref - m_rec;
        // One sort of the remembered returns per episode serves both tests.
        let (lo, hi) = self.quantiles();
        let range = self.widest.max(hi - lo);
        self.best_reference = self.best_reference.max(m_ref);
        let direction = if drop > self.cfg.min_drop * range && drop > self.cfg.z * se {
            Direction::Down
        } else if settled && self.stuck(m_ref, m_rec, (lo, hi), range) {
            Direction::Stuck
        } else {
            return None;
        };
        let after = self.window.len() as u64;
        let bar = m_ref - self.cfg.min_drop * range;
        let fallen: Vec<f64> = self
            .window
            .iter()
            .copied()
            .skip(split)
            .filter(|&x| x < bar)
            .collect();
        let fallen_mean = if fallen.is_empty() {
            m_rec
        } else {
            fallen.iter().sum::<f64>() / fallen.len() as f64
        };
        self.window.clear();
        Some(Drift {
            direction,
            after,
            reference_mean: if direction == Direction::Stuck {
                self.best_reference
            } else {
                m_ref
            },
            mean: m_rec,
            fallen_mean,
        })
    }

    /// Whether both windows sit at the bottom of the world's range while the remembered
    /// returns still show its top and a reference window once held it.
    fn stuck(&self, m_ref: f64, m_rec: f64, (lo, hi): (f64, f64), range: f64) -> bool {
        let margin = self.cfg.min_drop * range;
        range > 0.0
            && hi - lo > margin
            && self.best_reference > hi - margin
            && m_ref < lo + margin
            && m_rec < lo + margin
    }
}

impl ReturnDrop {
    /// The world's return range: the widest span measured so far, or the current one if wider.
    pub fn range(&self) -> f64 {
        self.widest.max(self.span())
    }

    /// The 5th to 95th percentile span of the remembered returns.
    fn span(&self) -> f64 {
        let (lo, hi) = self.quantiles();
        hi - lo
    }

    /// The 5th and 95th percentiles of the remembered returns (0 and 0 for none).
    fn quantiles(&self) -> (f64, f64) {
        let mut v: Vec<f64> = self.history.iter().copied().collect();
        v.sort_by(f64::total_cmp);
        let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
        if v.is_empty() {
            (0.0, 0.0)
        } else {
            (at(0.05), at(0.95))
        }
    }
}

/// One detector per observation feature, fed with a per-episode statistic of each feature.
#[derive(Clone, Debug)]
pub struct ObsDrift {
    detectors: Vec<PageHinkley>,
}

impl ObsDrift {
    /// Detectors for `dims` features.
    pub fn new(dims: usize, cfg: DriftConfig) -> Self {
        ObsDrift {
            detectors: vec![PageHinkley::new(cfg); dims],
        }
    }

    /// Feeds the mean observation of one episode; returns the features that drifted.
    pub fn update(&mut self, episode_mean_obs: &[f32]) -> Vec<(usize, Drift)> {
        self.detectors
            .iter_mut()
            .zip(episode_mean_obs)
            .enumerate()
            .filter_map(|(i, (d, &x))| d.update(x as f64).map(|a| (i, a)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;
    use rand_distr::{Distribution, Normal};

    #[test]
    fn a_stationary_stream_raises_no_alarm() {
        // 20 streams of 5,000 Gaussian samples each (100,000 samples) at the default setting.
        let normal = Normal::new(100.0, 15.0).unwrap();
        let mut alarms = 0;
        for seed in 0..20 {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let mut ph = PageHinkley::new(DriftConfig::default());
            for _ in 0..5_000 {
                alarms += usize::from(ph.update(normal.sample(&mut rng)).is_some());
            }
        }
        assert_eq!(alarms, 0, "false alarms on stationary streams");
    }

    #[test]
    fn a_shift_of_two_standard_deviations_is_caught_within_thirty_samples() {
        let mut worst = 0;
        for (seed, shift) in [(1u64, -30.0), (2, 30.0), (3, -30.0), (4, 30.0)] {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let before = Normal::new(100.0, 15.0).unwrap();
            let after = Normal::new(100.0 + shift, 15.0).unwrap();
            let mut ph = PageHinkley::new(DriftConfig::default());
            for _ in 0..300 {
                assert!(ph.update(before.sample(&mut rng)).is_none());
            }
            let found = (1..=200).find_map(|k| ph.update(after.sample(&mut rng)).map(|d| (k, d)));
            let (k, d) = found.expect("the shift is detected");
            let want = if shift > 0.0 {
                Direction::Up
            } else {
                Direction::Down
            };
            assert_eq!(d.direction, want);
            worst = worst.max(k);
        }
        assert!(worst <= 30, "detected only after {worst} samples");
    }

    #[test]
    fn a_fall_from_a_perfect_record_is_seen_at_once() {
        let mut ph = PageHinkley::new(DriftConfig::default());
        for _ in 0..100 {
            assert!(ph.update(500.0).is_none());
        }
        let k = (1..=10).find(|_| ph.update(180.0).is_some());
        assert!(k.is_some_and(|k| k <= 3), "{k:?}");
        assert!(
            ph.update(f64::NAN).is_none(),
            "non-finite samples are ignored"
        );
    }

    #[test]
    fn return_drop_ignores_learning_and_stray_failures_but_sees_a_broken_world() {
        let mut d = ReturnDrop::new(ReturnDropConfig::default());
        // Rising returns (a learner) never alarm.
        for i in 0..300 {
            assert!(
                d.update(10.0 + i as f64 * 1.6).is_none(),
                "rise alarmed at {i}"
            );
        }
        // A solved task with a failure every 15 episodes does not either.
        for i in 0..600 {
            let x = if i % 15 == 7 { 120.0 } else { 500.0 };
            assert!(d.update(x).is_none(), "stray failure alarmed at {i}");
        }
        // A broken world is seen within the recent window.
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let after = Normal::new(250.0, 80.0).unwrap();
        let k = (1..=20).find(|_| d.update(after.sample(&mut rng)).is_some());
        assert!(k.is_some_and(|k| k <= 10), "{k:?}");
        // And the detector starts over in the changed world.
        for i in 0..2_000 {
            let x = after.sample(&mut rng).clamp(0.0, 500.0);
            assert!(d.update(x).is_none(), "false alarm at {i}");
        }
        assert!(d.update(f64::NAN).is_none());
    }

    #[test]
    fn return_drop_keeps_the_worlds_range_after_the_policy_converges() {
        // A goal world paying −1 (timeout) to 0.9: learnt in 200 episodes, then thousands of
        // episodes that wobble between 0.87 and 0.91. Against the converged policy's own span
        // (0.04) one detour among ten would be a "fall"; against the world's (1.9) it is not.
        let mut rng = ChaCha8Rng::seed_from_u64(11);
        let mut d = ReturnDrop::new(ReturnDropConfig::default());
        for i in 0..200 {
            let x = if rng.random::<f64>() < i as f64 / 200.0 {
                0.88
            } else {
                -1.0
            };
            assert!(d.update(x).is_none(), "learning alarmed at {i}");
        }
        for i in 0..5_000 {
            // As measured on goal-regions: 0.87 to 0.91, and a detour now and then.
            let x = if i % 250 == 125 {
                0.35
            } else {
                0.87 + 0.04 * rng.random::<f64>()
            };
            assert!(d.update(x).is_none(), "a wobble alarmed at {i}");
        }
        // The goal moved: every episode times out.
        let mut alarm = None;
        let k = (1..=20).find(|_| {
            alarm = d.update(-1.0);
            alarm.is_some()
        });
        assert!(k.is_some_and(|k| k <= 10), "{k:?}");
        // The alarm comes while the recent window still holds the old world's returns: its
        // mean is far above what the moved goal pays, the mean of the returns that fell is not.
        let a = alarm.unwrap();
        assert!(a.mean > -0.5, "{a:?}");
        assert_eq!(a.fallen_mean, -1.0, "{a:?}");
    }

    #[test]
    fn a_policy_stuck_at_the_bottom_is_seen_once_exploration_settles() {
        let mut d = ReturnDrop::new(ReturnDropConfig::default());
        let mut rng = ChaCha8Rng::seed_from_u64(13);
        // Learning from the floor to the top, exploration settled: never "stuck".
        for i in 0..300 {
            let x = if rng.random::<f64>() < i as f64 / 200.0 {
                0.88
            } else {
                -1.0
            };
            assert!(
                d.update_settled(x, true).is_none(),
                "learning alarmed at {i}"
            );
        }
        // The world changes: a fall, seen as one.
        let k = (1..=20).find(|_| d.update_settled(-1.0, true).is_some());
        assert!(k.is_some_and(|k| k <= 10), "{k:?}");
        // Still at the floor while the response explores: no alarm.
        for i in 0..100 {
            assert!(
                d.update_settled(-1.0, false).is_none(),
                "alarm while exploring at {i}"
            );
        }
        // Exploration settled at the floor, returns still at the bottom: stuck.
        let a = (0..60)
            .find_map(|_| d.update_settled(-1.0, true))
            .expect("a stuck alarm");
        assert_eq!(a.direction, Direction::Stuck);
        assert!(a.reference_mean > 0.8 && a.mean == -1.0, "{a:?}");
        // Without `settled` (the plain `update`) never.
        let mut plain = d.clone();
        assert!((0..200).all(|_| plain.update(-1.0).is_none()));
        // Once the remembered returns no longer show the top, the alarms stop.
        let alarms = (0..3_000)
            .filter_map(|i| d.update_settled(-1.0, true).map(|_| i))
            .collect::<Vec<_>>();
        assert!(alarms.iter().all(|&i| i < RANGE_MEMORY), "{alarms:?}");
        assert!(alarms.len() <= RANGE_MEMORY / 30 + 1, "{}", alarms.len());
    }

    #[test]
    fn return_drop_alarms_alike_whatever_the_worlds_scale() {
        // One stream (learning, a plateau with stray failures, a broken world, a recovery),
        // seen in [0, 500], [−500, 0] and [−1, 1]: the alarms fall on the same episodes.
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let noise = Normal::new(0.0, 0.04).unwrap();
        let mut stream = Vec::new();
        for i in 0..300 {
            stream.push((0.02 + i as f64 / 300.0 + noise.sample(&mut rng)).clamp(0.0, 1.0));
        }
        // A solved task that returns its best every time but for a failure every 70 episodes:
        // the reference window is often flawless (no spread), so only the range says a single
        // failure among ten is no change.
        for i in 0..600 {
            stream.push(if i % 70 == 7 { 0.25 } else { 1.0 });
        }
        for _ in 0..200 {
            stream.push((0.5 + 4.0 * noise.sample(&mut rng)).clamp(0.0, 1.0));
        }
        for i in 0..300 {
            stream.push((0.5 + i as f64 / 600.0 + noise.sample(&mut rng)).clamp(0.0, 1.0));
        }
        let alarms = |scale: f64, offset: f64| -> Vec<usize> {
            let mut d = ReturnDrop::new(ReturnDropConfig::default());
            stream
                .iter()
                .enumerate()
                .filter_map(|(i, x)| d.update(x * scale + offset).map(|_| i))
                .collect()
        };
        let base = alarms(500.0, 0.0);
        assert!(
            !base.is_empty() && base.iter().all(|&i| (900..920).contains(&i)),
            "one alarm, soon after the world broke at 900: {base:?}"
        );
        assert_eq!(alarms(500.0, -500.0), base, "returns in [-500, 0]");
        assert_eq!(alarms(2.0, -1.0), base, "returns in [-1, 1]");
    }

    #[test]
    fn observation_drift_names_the_feature() {
        let mut od = ObsDrift::new(3, DriftConfig::default());
        let mut rng = ChaCha8Rng::seed_from_u64(9);
        let noise = Normal::new(0.0, 0.01).unwrap();
        for _ in 0..200 {
            let obs: Vec<f32> = (0..3).map(|_| noise.sample(&mut rng) as f32).collect();
            assert!(od.update(&obs).is_empty());
        }
        let mut hits = Vec::new();
        for _ in 0..50 {
            let mut obs: Vec<f32> = (0..3).map(|_| noise.sample(&mut rng) as f32).collect();
            obs[1] += 0.05;
            hits.extend(od.update(&obs));
        }
        assert!(
            !hits.is_empty() && hits.iter().all(|(i, _)| *i == 1),
            "{hits:?}"
        );
    }
}
