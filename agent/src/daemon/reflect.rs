//! The `lessons` reflection: what changed since the last pass, in figures and one sentence.
//!
//! - **Return trend**: the mean of the last 20 training returns against the 20 before.
//! - **Experts by region**: stored observations are split into regions by the two features
//!   that vary most (below or above their median), routed through the champion, and each
//!   region's share of routed tokens per expert of the first MoE layer is recorded in the
//!   shape `autodidact replay … experts` charts (`experts_by_region`, see replay/SCHEMA.md).
//! - **Where episodes fail**: the stored transitions that terminated an episode, and the
//!   feature in which their final observations differ most from all others (in standard
//!   deviations).

use std::sync::atomic::Ordering;

use autodidact_core::{Tensor, load_checkpoint};
use autodidact_replay::{NStep, ReplayError, SampleBatch};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde_json::{Value, json};

use super::{Shared, lock};
use crate::error::Result;

/// Most observation values a lessons pass holds (64 MiB of f32).
const LESSONS_VALUES: usize = 1 << 24;

/// Returns the lessons' data and sentence, or `None` while replay is empty.
pub(crate) fn lessons(shared: &Shared) -> Result<Option<(Value, String)>> {
    // The sample's observations live in memory at once: `lessons_sample` rows, at most
    // LESSONS_VALUES values in all whatever the world's observation width.
    let n = shared
        .cfg
        .reflection
        .lessons_sample
        .min(LESSONS_VALUES / shared.obs_dim.max(1))
        .max(1);
    let steps = shared.steps.load(Ordering::Relaxed);
    let version = shared.champion_version.load(Ordering::Relaxed);
    let mut batch = SampleBatch::with_capacity(n);
    let mut rng = ChaCha8Rng::seed_from_u64(shared.cfg.daemon.seed ^ steps);
    match shared.sampler.sample_uniform(
        &mut rng,
        n,
        NStep::one(shared.dir.kind.plan(shared.cfg.learners()).gamma),
        &mut batch,
    ) {
        Err(ReplayError::Empty) => return Ok(None),
        r => r?,
    }
    let (previous, recent, trend) = return_trend(shared);
    let features = Features::of(&batch);
    let gamma_ok = shared.dir.kind.plan(shared.cfg.learners()).gamma > 0.0;
    let Some((experts_by_region, routing_words)) = routing(shared, &batch, &features)? else {
        return Ok(None);
    };
    let (failure, failure_words) = failures(&batch, &features, gamma_ok);

    let trend_words = match (previous, recent) {
        (Some(p), Some(r)) => format!("return {p:.1} → {r:.1} ({trend})"),
        _ => format!("return trend: {trend}"),
    };
    let sentence = format!(
        "lessons at step {steps} (champion v{version}): {trend_words}; {}{failure_words}",
        if routing_words.is_empty() {
            String::new()
        } else {
            format!("experts by region: {routing_words}; ")
        }
    );
    let mut data = json!({
        "steps": steps,
        "return_trend": {"previous": previous, "recent": recent, "direction": trend},
        "failures": failure,
    });
    if !experts_by_region.is_null() {
        data["experts_by_region"] = experts_by_region;
    }
    Ok(Some((data, sentence)))
}

/// Step 1, the return trend: the mean of the last 20 episodes against the 20 before.
fn return_trend(shared: &Shared) -> (Option<f64>, Option<f64>, &'static str) {
    let (previous, recent) = {
        let b = lock(&shared.board);
        let r: Vec<f64> = b.returns.iter().map(|x| x.1).collect();
        let mean = |s: &[f64]| (!s.is_empty()).then(|| s.iter().sum::<f64>() / s.len() as f64);
        let k = r.len();
        (
            mean(&r[k.saturating_sub(40)..k.saturating_sub(20)]),
            mean(&r[k.saturating_sub(20)..]),
        )
    };
    let trend = match (previous, recent) {
        (Some(p), Some(r)) if r > p + 0.05 * p.abs().max(1.0) => "rising",
        (Some(p), Some(r)) if r < p - 0.05 * p.abs().max(1.0) => "falling",
        (Some(_), Some(_)) => "steady",
        _ => "too few episodes to tell",
    };
    (previous, recent, trend)
}

/// Step 2, feature statistics of a sample, and its regions: split at the median of the (at most)
/// two features that vary most.
struct Features {
    mean: Vec<f64>,
    std: Vec<f64>,
    split: Vec<(usize, f32)>,
    labels: Vec<String>,
}

impl Features {
    fn of(batch: &SampleBatch) -> Features {
        let (d, rows) = (batch.obs_len, batch.len);
        let mut mean = vec![0f64; d];
        let mut sq = vec![0f64; d];
        for i in 0..rows {
            for (j, &x) in batch.obs[i * d..(i + 1) * d].iter().enumerate() {
                mean[j] += f64::from(x);
                sq[j] += f64::from(x) * f64::from(x);
            }
        }
        let std: Vec<f64> = (0..d)
            .map(|j| {
                mean[j] /= rows as f64;
                (sq[j] / rows as f64 - mean[j] * mean[j]).max(0.0).sqrt()
            })
            .collect();
        let mut by_spread: Vec<usize> = (0..d).filter(|&j| std[j] > 1e-9).collect();
        by_spread.sort_by(|&a, &b| std[b].total_cmp(&std[a]));
        by_spread.truncate(2);
        let median = |j: usize| {
            let mut v: Vec<f32> = (0..rows).map(|i| batch.obs[i * d + j]).collect();
            v.sort_by(f32::total_cmp);
            v[v.len() / 2]
        };
        let split: Vec<(usize, f32)> = by_spread.iter().map(|&j| (j, median(j))).collect();
        let labels: Vec<String> = (0..1usize << split.len())
            .map(|r| {
                if split.is_empty() {
                    return "all".to_string();
                }
                split
                    .iter()
                    .enumerate()
                    .map(|(k, &(j, _))| {
                        let bit = (r >> (split.len() - 1 - k)) & 1;
                        format!("obs[{j}] {}", if bit == 1 { "high" } else { "low" })
                    })
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .collect();
        Features {
            mean,
            std,
            split,
            labels,
        }
    }

    fn regions(&self) -> usize {
        self.labels.len()
    }

    fn region_of(&self, o: &[f32]) -> usize {
        self.split
            .iter()
            .fold(0usize, |r, &(j, m)| r * 2 + usize::from(o[j] >= m))
    }
}

/// Step 3: which experts of the champion's first MoE layer serve each region (`Null` and no words
/// for a network without one). `None`: the champion was replaced and its file pruned since;
/// routing waits for the next pass.
fn routing(shared: &Shared, batch: &SampleBatch, f: &Features) -> Result<Option<(Value, String)>> {
    let (d, rows) = (batch.obs_len, batch.len);
    let champion_file = shared
        .dir
        .path
        .join(lock(&shared.champion_checkpoint).clone());
    let Ok(loaded) = load_checkpoint(&champion_file) else {
        return Ok(None);
    };
    let mut net = loaded.network;
    let mut x = Tensor::try_zeros(&[rows, d])?;
    x.data_mut().copy_from_slice(&batch.obs[..rows * d]);
    net.forward(&x, false)?;
    let Some(layer) = net.moe_layers().next() else {
        return Ok(Some((Value::Null, String::new())));
    };
    let (e, k) = (layer.config().n_experts, layer.config().top_k);
    let assign = layer.last_assignments();
    let mut counts = vec![vec![0f64; e]; f.regions()];
    let mut tokens = vec![0usize; f.regions()];
    for i in 0..rows {
        let r = f.region_of(&batch.obs[i * d..(i + 1) * d]);
        tokens[r] += 1;
        for &a in &assign[i * k..(i + 1) * k] {
            counts[r][a as usize] += 1.0;
        }
    }
    let usage: Vec<Vec<f64>> = counts
        .iter()
        .zip(&tokens)
        .map(|(c, &t)| c.iter().map(|&x| x / t.max(1) as f64).collect())
        .collect();
    let words: Vec<String> = usage
        .iter()
        .zip(&f.labels)
        .zip(&tokens)
        .filter(|(_, t)| **t > 0)
        .map(|((u, l), _)| {
            let (best, share) = u
                .iter()
                .enumerate()
                .max_by(|a, b| a.1.total_cmp(b.1))
                .map_or((0, 0.0), |(i, s)| (i, *s));
            format!("{l} → expert {best} ({:.0} %)", 100.0 * share / k as f64)
        })
        .collect();
    let data = json!({"regions": f.labels, "usage": usage, "tokens": tokens});
    Ok(Some((data, words.join("; "))))
}

/// Step 4, where episodes fail: the sampled transitions that ended an episode (with γ > 0, a
/// one-step discount of 0 marks a terminated one), and the feature their states differ most in.
fn failures(batch: &SampleBatch, f: &Features, gamma_ok: bool) -> (Value, String) {
    let (d, rows) = (batch.obs_len, batch.len);
    let failed: Vec<&[f32]> = (0..rows)
        .filter(|&i| gamma_ok && batch.discounts[i] == 0.0)
        .map(|i| &batch.next_obs[i * d..(i + 1) * d])
        .collect();
    let mut failure = json!({"sampled": failed.len(), "of": rows});
    if failed.is_empty() {
        return (
            failure,
            format!("none of {rows} sampled transitions ended in failure"),
        );
    }
    let fail_mean: Vec<f64> = (0..d)
        .map(|j| failed.iter().map(|o| f64::from(o[j])).sum::<f64>() / failed.len() as f64)
        .collect();
    let z: Vec<f64> = (0..d)
        .map(|j| {
            if f.std[j] > 1e-9 {
                (fail_mean[j] - f.mean[j]) / f.std[j]
            } else {
                0.0
            }
        })
        .collect();
    let (fj, fz) = z
        .iter()
        .enumerate()
        .max_by(|a, b| a.1.abs().total_cmp(&b.1.abs()))
        .map_or((0, 0.0), |(j, v)| (j, *v));
    failure["mean_final_obs"] = json!(fail_mean);
    failure["most_distinct_feature"] = json!(fj);
    failure["z"] = json!(fz);
    let words = format!(
        "{} of {rows} sampled transitions ended an episode, their states most unlike the rest          in obs[{fj}] ({}, {:.1} sd from the mean)",
        failed.len(),
        if fz >= 0.0 { "high" } else { "low" },
        fz.abs()
    );
    (failure, words)
}
