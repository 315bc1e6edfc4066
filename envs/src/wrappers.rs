//! Small composable wrappers, each one concern, in Gymnasium's spirit.

use std::collections::VecDeque;
use std::time::Instant;

use serde_json::json;

use crate::env::{Env, Info, Observation, Step};
use crate::error::{EnvError, Result};
use crate::space::{Action, Space};

/// Ends an episode as `truncated` after `max_steps` steps (Gymnasium's `TimeLimit`).
///
/// A step that terminates on the limit keeps `terminated = true` as well: a true end stays a
/// true end, whatever the clock says.
#[derive(Debug)]
pub struct TimeLimit<E> {
    inner: E,
    max_steps: u64,
    elapsed: u64,
}

impl<E: Env> TimeLimit<E> {
    /// Wraps `inner`; `max_steps` must be positive.
    pub fn new(inner: E, max_steps: u64) -> Result<Self> {
        if max_steps == 0 {
            return Err(EnvError::Config("TimeLimit needs max_steps > 0".into()));
        }
        Ok(Self {
            inner,
            max_steps,
            elapsed: 0,
        })
    }

    /// The wrapped env.
    pub fn inner_mut(&mut self) -> &mut E {
        &mut self.inner
    }
}

impl<E: Env> Env for TimeLimit<E> {
    fn observation_space(&self) -> &Space {
        self.inner.observation_space()
    }
    fn action_space(&self) -> &Space {
        self.inner.action_space()
    }
    fn reset(&mut self, seed: Option<u64>) -> Result<(Observation, Info)> {
        self.elapsed = 0;
        self.inner.reset(seed)
    }
    fn step(&mut self, action: &Action) -> Result<Step> {
        let mut s = self.inner.step(action)?;
        self.elapsed += 1;
        if self.elapsed >= self.max_steps {
            s.truncated = true;
        }
        Ok(s)
    }
    fn close(&mut self) -> Result<()> {
        self.inner.close()
    }
}

/// Clips a Box action into the action space's bounds before it reaches the env (Gymnasium's
/// `ClipAction`), so policies with unbounded outputs (Gaussian heads) can act.
#[derive(Debug)]
pub struct ClipAction<E> {
    inner: E,
}

impl<E: Env> ClipAction<E> {
    /// Wraps `inner`.
    pub fn new(inner: E) -> Self {
        Self { inner }
    }
}

impl<E: Env> Env for ClipAction<E> {
    fn observation_space(&self) -> &Space {
        self.inner.observation_space()
    }
    fn action_space(&self) -> &Space {
        self.inner.action_space()
    }
    fn reset(&mut self, seed: Option<u64>) -> Result<(Observation, Info)> {
        self.inner.reset(seed)
    }
    fn step(&mut self, action: &Action) -> Result<Step> {
        match (self.inner.action_space(), action) {
            (Space::Box { low, high, .. }, Action::Continuous(v)) if v.len() == low.len() => {
                let clipped = v
                    .iter()
                    .zip(low.iter().zip(high))
                    // max/min, not clamp: clamp panics on bounds a space check would refuse.
                    .map(|(x, (l, h))| x.max(*l).min(*h))
                    .collect();
                self.inner.step(&Action::Continuous(clipped))
            }
            _ => self.inner.step(action),
        }
    }
    fn close(&mut self) -> Result<()> {
        self.inner.close()
    }
}

/// Clips every observation element into `[low, high]`.
#[derive(Debug)]
pub struct ClipObservation<E> {
    inner: E,
    low: f32,
    high: f32,
}

impl<E: Env> ClipObservation<E> {
    /// Wraps `inner`; needs `low <= high`.
    pub fn new(inner: E, low: f32, high: f32) -> Result<Self> {
        if low.is_nan() || high.is_nan() || low > high {
            return Err(EnvError::Config(format!(
                "ClipObservation bounds [{low}, {high}]"
            )));
        }
        Ok(Self { inner, low, high })
    }

    fn clip(&self, obs: &mut [f32]) {
        for x in obs {
            *x = x.clamp(self.low, self.high);
        }
    }
}

impl<E: Env> Env for ClipObservation<E> {
    fn observation_space(&self) -> &Space {
        self.inner.observation_space()
    }
    fn action_space(&self) -> &Space {
        self.inner.action_space()
    }
    fn reset(&mut self, seed: Option<u64>) -> Result<(Observation, Info)> {
        let (mut o, i) = self.inner.reset(seed)?;
        self.clip(&mut o);
        Ok((o, i))
    }
    fn step(&mut self, action: &Action) -> Result<Step> {
        let mut s = self.inner.step(action)?;
        self.clip(&mut s.obs);
        Ok(s)
    }
    fn close(&mut self) -> Result<()> {
        self.inner.close()
    }
}

/// Running mean and variance (parallel Welford), as Gymnasium's `RunningMeanStd`.
#[derive(Clone, Debug)]
pub struct RunningMeanStd {
    /// Per-element mean.
    pub mean: Vec<f64>,
    /// Per-element variance.
    pub var: Vec<f64>,
    /// Pseudo-count; starts at 1e-4 like Gymnasium so the first sample does not divide by 0.
    pub count: f64,
}

impl RunningMeanStd {
    /// Statistics of `dim` elements.
    pub fn new(dim: usize) -> Self {
        Self {
            mean: vec![0.0; dim],
            var: vec![1.0; dim],
            count: 1e-4,
        }
    }

    /// Adds one sample.
    pub fn update(&mut self, x: &[f64]) {
        let total = self.count + 1.0;
        for ((m, v), &xi) in self.mean.iter_mut().zip(&mut self.var).zip(x) {
            let delta = xi - *m;
            let new_mean = *m + delta / total;
            let m2 = *v * self.count + delta * delta * self.count / total;
            *m = new_mean;
            *v = m2 / total;
        }
        self.count = total;
    }
}

/// Normalises observations to zero mean and unit variance with running statistics
/// (Gymnasium's `NormalizeObservation`). `set_update(false)` freezes them for evaluation.
#[derive(Debug)]
pub struct NormalizeObservation<E> {
    inner: E,
    stats: RunningMeanStd,
    update: bool,
    epsilon: f64,
}

impl<E: Env> NormalizeObservation<E> {
    /// Wraps `inner`.
    pub fn new(inner: E) -> Self {
        let dim = inner.observation_space().flat_dim();
        Self {
            inner,
            stats: RunningMeanStd::new(dim),
            update: true,
            epsilon: 1e-8,
        }
    }

    /// Whether new observations update the statistics.
    pub fn set_update(&mut self, update: bool) {
        self.update = update;
    }

    /// The statistics so far.
    pub fn stats(&self) -> &RunningMeanStd {
        &self.stats
    }

    fn normalize(&mut self, obs: &mut [f32]) {
        let x: Vec<f64> = obs.iter().map(|&v| f64::from(v)).collect();
        if self.update {
            self.stats.update(&x);
        }
        for ((o, xi), (m, v)) in obs
            .iter_mut()
            .zip(&x)
            .zip(self.stats.mean.iter().zip(&self.stats.var))
        {
            *o = ((xi - m) / (v + self.epsilon).sqrt()) as f32;
        }
    }
}

impl<E: Env> Env for NormalizeObservation<E> {
    fn observation_space(&self) -> &Space {
        self.inner.observation_space()
    }
    fn action_space(&self) -> &Space {
        self.inner.action_space()
    }
    fn reset(&mut self, seed: Option<u64>) -> Result<(Observation, Info)> {
        let (mut o, i) = self.inner.reset(seed)?;
        self.normalize(&mut o);
        Ok((o, i))
    }
    fn step(&mut self, action: &Action) -> Result<Step> {
        let mut s = self.inner.step(action)?;
        self.normalize(&mut s.obs);
        Ok(s)
    }
    fn close(&mut self) -> Result<()> {
        self.inner.close()
    }
}

/// Affine-then-clip reward transform: `clamp(reward * scale, min, max)`. Covers reward scaling
/// and reward clipping (Atari-style `[-1, 1]`) with one small type.
#[derive(Debug)]
pub struct TransformReward<E> {
    inner: E,
    scale: f64,
    min: f64,
    max: f64,
}

impl<E: Env> TransformReward<E> {
    /// Multiplies rewards by `scale`.
    pub fn scale(inner: E, scale: f64) -> Result<Self> {
        Self::new(inner, scale, f64::NEG_INFINITY, f64::INFINITY)
    }

    /// Clips rewards into `[min, max]`.
    pub fn clip(inner: E, min: f64, max: f64) -> Result<Self> {
        Self::new(inner, 1.0, min, max)
    }

    /// Scales, then clips.
    pub fn new(inner: E, scale: f64, min: f64, max: f64) -> Result<Self> {
        if !scale.is_finite() || min.is_nan() || max.is_nan() || min > max {
            return Err(EnvError::Config(format!(
                "TransformReward scale {scale}, bounds [{min}, {max}]"
            )));
        }
        Ok(Self {
            inner,
            scale,
            min,
            max,
        })
    }
}

impl<E: Env> Env for TransformReward<E> {
    fn observation_space(&self) -> &Space {
        self.inner.observation_space()
    }
    fn action_space(&self) -> &Space {
        self.inner.action_space()
    }
    fn reset(&mut self, seed: Option<u64>) -> Result<(Observation, Info)> {
        self.inner.reset(seed)
    }
    fn step(&mut self, action: &Action) -> Result<Step> {
        let mut s = self.inner.step(action)?;
        s.reward = (s.reward * self.scale).clamp(self.min, self.max);
        Ok(s)
    }
    fn close(&mut self) -> Result<()> {
        self.inner.close()
    }
}

/// Adds `info["episode"] = {"r": return, "l": length, "t": seconds}` on the step that ends an
/// episode (Gymnasium's `RecordEpisodeStatistics`), and keeps the last `HISTORY` finished
/// episodes (bounded, because a daemon runs for days).
#[derive(Debug)]
pub struct EpisodeStatistics<E> {
    inner: E,
    ret: f64,
    len: u64,
    started: Instant,
    finished: VecDeque<(f64, u64)>,
}

const HISTORY: usize = 100;

impl<E: Env> EpisodeStatistics<E> {
    /// Wraps `inner`.
    pub fn new(inner: E) -> Self {
        Self {
            inner,
            ret: 0.0,
            len: 0,
            started: Instant::now(),
            finished: VecDeque::with_capacity(HISTORY),
        }
    }

    /// `(return, length)` of every episode finished so far, oldest first.
    pub fn finished(&self) -> impl ExactSizeIterator<Item = &(f64, u64)> {
        self.finished.iter()
    }
}

impl<E: Env> Env for EpisodeStatistics<E> {
    fn observation_space(&self) -> &Space {
        self.inner.observation_space()
    }
    fn action_space(&self) -> &Space {
        self.inner.action_space()
    }
    fn reset(&mut self, seed: Option<u64>) -> Result<(Observation, Info)> {
        self.ret = 0.0;
        self.len = 0;
        self.started = Instant::now();
        self.inner.reset(seed)
    }
    fn step(&mut self, action: &Action) -> Result<Step> {
        let mut s = self.inner.step(action)?;
        self.ret += s.reward;
        self.len += 1;
        if s.done() {
            s.info.insert(
                "episode".into(),
                json!({"r": self.ret, "l": self.len, "t": self.started.elapsed().as_secs_f64()}),
            );
            if self.finished.len() == HISTORY {
                self.finished.pop_front();
            }
            self.finished.push_back((self.ret, self.len));
        }
        Ok(s)
    }
    fn close(&mut self) -> Result<()> {
        self.inner.close()
    }
}
