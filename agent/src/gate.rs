//! The evaluation gate: whether a fine-tuned candidate may replace the champion.
//!
//! Both models play the same fresh evaluation episodes (the same seeds, no exploration), so
//! their returns pair up and the comparison is a paired one-sided t-test for
//! non-inferiority (as in clinical non-inferiority trials): with `dᵢ = candidateᵢ − championᵢ`
//! and a margin `m`, the null hypothesis "the candidate is worse by `m` or more" (mean d ≤ −m)
//! is tested against "it is not" (mean d > −m). The candidate is promoted only when the test
//! rejects the null at level α, i.e. when the data show it is not worse by the margin.
//! Pairing removes the variance the episodes' starting states share, so few episodes suffice
//! when the two models behave alike.
//!
//! The margin follows the world's own scale, never a constant in return units: it is
//! `margin_spread` times the spread of the world's returns (what the daemon has seen its
//! episodes return, and what the gate's own episodes returned), so the same default means the
//! same thing for returns in [−1, 1], [0, 500] or [−500, 0]. And whatever the margin, a
//! candidate whose mean is worse than the champion's by more than `max_worse_se` standard
//! errors of the paired difference is never promoted: non-inferiority must not let a
//! visibly worse model through because the world is noisy.
//!
//! A candidate whose weights hold a NaN or an infinity, or whose training loss diverged, is
//! rejected before any episode is played.
//!
//! The daemon (`crate::daemon`) runs it on every candidate.

use serde::{Deserialize, Serialize};
use statrs::distribution::{ContinuousCDF, StudentsT};

use crate::error::{AgentError, Result};

/// Settings of the gate.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GateConfig {
    /// Evaluation episodes per model.
    pub episodes: usize,
    /// Margin as a fraction of the world's return spread (see [`compare`]).
    pub margin_spread: f64,
    /// Margin as a fraction of the champion's |mean return| (0 by default: a mean's distance
    /// from zero says nothing of a world's scale; kept for configurations that want it).
    pub margin_rel: f64,
    /// Smallest margin, in return units (0 by default). The margin is the largest of the
    /// three.
    pub margin_abs: f64,
    /// A candidate worse than the champion by more than this many standard errors of the
    /// paired difference is never promoted.
    pub max_worse_se: f64,
    /// Significance level α of the one-sided test.
    pub alpha: f64,
}

impl Default for GateConfig {
    fn default() -> Self {
        GateConfig {
            episodes: 30,
            margin_spread: 0.05,
            margin_rel: 0.0,
            margin_abs: 0.0,
            max_worse_se: 2.0,
            alpha: 0.05,
        }
    }
}

impl GateConfig {
    /// Checks ranges, naming the key.
    pub fn validate(&self) -> Result<()> {
        // A t-test needs two pairs; the upper end keeps one judgement finite.
        crate::bounds::size("gate.episodes", self.episodes, 2, 10_000)?;
        crate::bounds::real("gate.margin_spread", self.margin_spread, 0.0, 1e6)?;
        crate::bounds::real("gate.margin_rel", self.margin_rel, 0.0, 1e6)?;
        crate::bounds::real("gate.margin_abs", self.margin_abs, 0.0, 1e300)?;
        crate::bounds::real("gate.max_worse_se", self.max_worse_se, 0.0, 1e6)?;
        if !(self.alpha > 0.0 && self.alpha < 1.0) {
            return Err(AgentError::Config("gate.alpha must be in (0, 1)".into()));
        }
        Ok(())
    }
}

/// What the gate decided, with the figures behind it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct GateReport {
    /// Whether the candidate replaces the champion.
    pub promote: bool,
    /// Candidate mean return.
    pub candidate_mean: f64,
    /// Candidate return standard deviation (sample).
    pub candidate_std: f64,
    /// Champion mean return.
    pub champion_mean: f64,
    /// Champion return standard deviation (sample).
    pub champion_std: f64,
    /// Paired episodes.
    pub episodes: usize,
    /// The non-inferiority margin used.
    pub margin: f64,
    /// The t statistic of `(mean d + margin) / (sd d / √n)` (infinite when every difference
    /// is equal).
    pub t: f64,
    /// One-sided p-value of "the candidate is worse by the margin or more".
    pub p_value: f64,
    /// Why, in a few words.
    pub reason: String,
}

impl GateReport {
    /// One sentence a person can read, e.g. "candidate v12 rejected: 187.0 ± 12.0 vs champion
    /// 203.0 ± 9.0 over 30 episodes (p = 0.41 that it is not worse by 10.2)".
    pub fn sentence(&self, candidate: i64, champion: i64) -> String {
        let verdict = if self.promote { "promoted" } else { "rejected" };
        if self.episodes == 0 {
            return format!("candidate v{candidate} {verdict}: {}", self.reason);
        }
        format!(
            "candidate v{candidate} {verdict}: {:.1} ± {:.1} vs champion v{champion} {:.1} ± {:.1} \
             over {} episodes ({})",
            self.candidate_mean,
            self.candidate_std,
            self.champion_mean,
            self.champion_std,
            self.episodes,
            self.reason
        )
    }

    /// An outright rejection, before any episode (NaN weights, a diverged loss).
    pub fn rejected_outright(reason: impl Into<String>) -> Self {
        GateReport {
            promote: false,
            candidate_mean: f64::NAN,
            candidate_std: f64::NAN,
            champion_mean: f64::NAN,
            champion_std: f64::NAN,
            episodes: 0,
            margin: f64::NAN,
            t: f64::NAN,
            p_value: f64::NAN,
            reason: reason.into(),
        }
    }
}

/// A figure with three significant digits, whatever the world's scale (0.0123, 1.23, 123).
fn fmt_sig(x: f64) -> String {
    if x == 0.0 || !x.is_finite() {
        return format!("{x}");
    }
    let digits = (2 - x.abs().log10().floor() as i32).max(0) as usize;
    format!("{x:.digits$}")
}

fn mean_std(x: &[f64]) -> (f64, f64) {
    let n = x.len() as f64;
    let mean = x.iter().sum::<f64>() / n;
    let var = if x.len() > 1 {
        x.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0)
    } else {
        0.0
    };
    (mean, var.sqrt())
}

/// Rejects a candidate outright when a parameter is NaN/∞ or its loss is not finite; returns
/// the reason, or `None` when the candidate may be evaluated.
pub fn sanity_check(params: impl IntoIterator<Item = f32>, loss: f32) -> Option<String> {
    if !loss.is_finite() {
        return Some(format!("its training loss diverged ({loss})"));
    }
    let bad = params.into_iter().filter(|p| !p.is_finite()).count();
    (bad > 0).then(|| format!("{bad} of its weights are NaN or infinite"))
}

/// The spread of a world's returns: the distance between the 10th and 90th percentiles of
/// `returns` (robust to the odd outlier episode); 0 for fewer than two.
pub fn return_spread(returns: impl IntoIterator<Item = f64>) -> f64 {
    let mut r: Vec<f64> = returns.into_iter().filter(|x| x.is_finite()).collect();
    if r.len() < 2 {
        return 0.0;
    }
    r.sort_by(f64::total_cmp);
    let at = |q: f64| r[((r.len() - 1) as f64 * q).round() as usize];
    at(0.9) - at(0.1)
}

/// The paired non-inferiority test on returns of the same episodes (`candidate[i]` and
/// `champion[i]` started from the same seed). `world_spread` is the spread of returns the
/// world has shown elsewhere ([`return_spread`] of recent training episodes; 0 if unknown):
/// the margin is `margin_spread` times the larger of it and the spread of these episodes.
pub fn compare(
    candidate: &[f64],
    champion: &[f64],
    cfg: &GateConfig,
    world_spread: f64,
) -> Result<GateReport> {
    cfg.validate()?;
    if candidate.len() != champion.len() || candidate.len() < 2 {
        return Err(AgentError::Config(format!(
            "the gate needs the same number (≥ 2) of paired episodes, got {} and {}",
            candidate.len(),
            champion.len()
        )));
    }
    if candidate.iter().chain(champion).any(|r| !r.is_finite()) {
        return Ok(GateReport::rejected_outright(
            "an evaluation return was not finite",
        ));
    }
    let n = candidate.len();
    let (candidate_mean, candidate_std) = mean_std(candidate);
    let (champion_mean, champion_std) = mean_std(champion);
    let diffs: Vec<f64> = candidate.iter().zip(champion).map(|(c, h)| c - h).collect();
    let (d_mean, d_sd) = mean_std(&diffs);
    let spread =
        return_spread(candidate.iter().chain(champion).copied()).max(if world_spread.is_finite() {
            world_spread
        } else {
            0.0
        });
    let margin = (cfg.margin_spread * spread)
        .max(cfg.margin_rel * champion_mean.abs())
        .max(cfg.margin_abs);
    let shifted = d_mean + margin;
    let se = d_sd / (n as f64).sqrt();
    let (t, p_value) = if d_sd == 0.0 {
        // Every pair differs by the same amount: the data leave no doubt either way (an
        // identical candidate is not worse, even with a zero margin).
        let t = if shifted > 0.0 {
            f64::INFINITY
        } else if shifted < 0.0 {
            f64::NEG_INFINITY
        } else {
            0.0
        };
        (t, if shifted >= 0.0 { 0.0 } else { 1.0 })
    } else {
        let t = shifted / (d_sd / (n as f64).sqrt());
        let dist = StudentsT::new(0.0, 1.0, (n - 1) as f64)
            .map_err(|e| AgentError::Config(format!("gate: {e}")))?;
        (t, 1.0 - dist.cdf(t))
    };
    // Worse by more than `max_worse_se` standard errors (strictly worse on every episode,
    // when the differences do not vary): never promoted, whatever the margin allows.
    let visibly_worse = d_mean < 0.0 && d_mean < -cfg.max_worse_se * se;
    let promote = p_value < cfg.alpha && !visibly_worse;
    let mut reason = format!(
        "paired t = {t:.2}, p = {p_value:.3} that it is worse by {} or more; α = {}",
        fmt_sig(margin),
        cfg.alpha
    );
    if visibly_worse {
        reason.push_str(&format!(
            "; its mean is {} below the champion's, more than {} standard errors ({})",
            fmt_sig(-d_mean),
            cfg.max_worse_se,
            fmt_sig(se)
        ));
    }
    Ok(GateReport {
        promote,
        candidate_mean,
        candidate_std,
        champion_mean,
        champion_std,
        episodes: n,
        margin,
        t,
        p_value,
        reason,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_t_distribution_matches_reference_values() {
        // Abramowitz & Stegun / Mathematica values of the Student t CDF.
        let t2 = StudentsT::new(0.0, 1.0, 2.0).unwrap();
        assert!((t2.cdf(1.0) - 0.788_675_134_6).abs() < 1e-8);
        let t4 = StudentsT::new(0.0, 1.0, 4.0).unwrap();
        assert!((t4.cdf(-1.0) - 0.186_950_483_4).abs() < 1e-8);
    }

    #[test]
    fn a_clearly_better_or_equal_candidate_passes_and_a_worse_one_does_not() {
        let cfg = GateConfig::default();
        let champion: Vec<f64> = (0..30).map(|i| 200.0 + (i % 7) as f64 * 3.0).collect();
        let better: Vec<f64> = champion.iter().map(|r| r + 20.0).collect();
        let worse: Vec<f64> = champion
            .iter()
            .enumerate()
            .map(|(i, r)| r - 30.0 + (i % 3) as f64)
            .collect();
        let r = compare(&better, &champion, &cfg, 0.0).unwrap();
        assert!(r.promote && r.p_value == 0.0, "{r:?}");
        let r = compare(&champion, &champion, &cfg, 0.0).unwrap();
        assert!(
            r.promote,
            "an identical candidate is not worse by the margin: {r:?}"
        );
        let r = compare(&worse, &champion, &cfg, 0.0).unwrap();
        assert!(!r.promote && r.p_value > 0.99, "{r:?}");
        assert!(r.sentence(12, 11).starts_with("candidate v12 rejected: "));
    }

    #[test]
    fn noise_decides_through_the_p_value_and_the_margin_follows_the_worlds_spread() {
        // Differences alternating −2 ± 10 (sample sd 10.17, standard error 1.86). In a world
        // whose returns spread over 200, the margin is 10: t = 8 / 1.86 ≈ 4.3, promoted.
        // Where only these episodes show the spread (20: margin 1), t ≈ −0.54: rejected.
        let champion = vec![200.0; 30];
        let noise = [10.0, -10.0];
        let candidate: Vec<f64> = (0..30).map(|i| 198.0 + noise[i % 2]).collect();
        let cfg = GateConfig::default();
        let r = compare(&candidate, &champion, &cfg, 200.0).unwrap();
        assert!((r.margin - 10.0).abs() < 1e-9, "{r:?}");
        assert!(r.promote && r.p_value < 0.001, "{r:?}");
        let r = compare(&candidate, &champion, &cfg, 0.0).unwrap();
        assert!((r.margin - 1.0).abs() < 1e-9, "{r:?}");
        assert!(!r.promote && r.p_value > 0.5, "{r:?}");
    }

    #[test]
    fn a_candidate_worse_by_more_than_two_standard_errors_is_never_promoted() {
        // −5 ± 10: within a margin of 10 (p ≈ 0.006), but 5 is more than 2 × 1.86 below.
        let champion = vec![200.0; 30];
        let noise = [10.0, -10.0];
        let candidate: Vec<f64> = (0..30).map(|i| 195.0 + noise[i % 2]).collect();
        let r = compare(&candidate, &champion, &GateConfig::default(), 200.0).unwrap();
        assert!(r.p_value < 0.01, "{r:?}");
        assert!(!r.promote, "{r:?}");
        assert!(r.reason.contains("standard errors"), "{}", r.reason);
    }

    /// The daemon once promoted a candidate at 0.1 ± 0.7 over a champion at 0.9 ± 0.0 in a
    /// world with returns in [−0.5, 0.9], under a margin of 1.0 return units.
    #[test]
    fn a_worse_candidate_in_a_small_world_is_rejected() {
        let champion = vec![0.9; 30];
        let candidate: Vec<f64> = (0..30)
            .map(|i| if i % 5 < 3 { 0.6 } else { -0.65 })
            .collect();
        let world = return_spread([-0.5, -0.2, 0.1, 0.4, 0.9, 0.9, 0.8, -0.4]);
        let r = compare(&candidate, &champion, &GateConfig::default(), world).unwrap();
        assert!(!r.promote, "{r:?}");
        let old = GateConfig {
            margin_spread: 0.0,
            margin_abs: 1.0,
            max_worse_se: 1e6,
            ..GateConfig::default()
        };
        assert!(
            compare(&candidate, &champion, &old, world).unwrap().promote,
            "the old constant margin let it through"
        );
    }

    #[test]
    fn the_decision_does_not_depend_on_the_worlds_scale() {
        // The same situation with returns in [−1, 1], [0, 500] and [−500, 0]: one decision.
        let base_champ: Vec<f64> = (0..30).map(|i| 0.5 + 0.02 * (i % 5) as f64).collect();
        let noise = [0.1, -0.1, 0.05];
        for (cand_shift, expect) in [(-0.01, true), (-0.2, false), (0.05, true)] {
            let base_cand: Vec<f64> = base_champ
                .iter()
                .enumerate()
                .map(|(i, r)| r + cand_shift + noise[i % 3])
                .collect();
            let base_world = [-1.0, -0.5, 0.0, 0.5, 1.0];
            for (scale, offset) in [(1.0, 0.0), (250.0, 250.0), (250.0, -250.0)] {
                let f = |v: &[f64]| v.iter().map(|r| r * scale + offset).collect::<Vec<_>>();
                let world = return_spread(f(&base_world));
                let r = compare(
                    &f(&base_cand),
                    &f(&base_champ),
                    &GateConfig::default(),
                    world,
                )
                .unwrap();
                assert_eq!(
                    r.promote, expect,
                    "shift {cand_shift}, scale {scale}: {r:?}"
                );
            }
        }
    }

    #[test]
    fn broken_candidates_and_bad_input_are_refused() {
        assert!(
            sanity_check([1.0, f32::NAN, 2.0], 0.5)
                .unwrap()
                .contains("1 of its")
        );
        assert!(
            sanity_check([1.0], f32::INFINITY)
                .unwrap()
                .contains("diverged")
        );
        assert!(sanity_check([1.0, -3.0], 0.5).is_none());
        let cfg = GateConfig::default();
        assert!(compare(&[1.0], &[1.0], &cfg, 0.0).is_err());
        assert!(compare(&[1.0, 2.0], &[1.0], &cfg, 0.0).is_err());
        let r = compare(&[1.0, f64::NAN], &[1.0, 2.0], &cfg, 0.0).unwrap();
        assert!(!r.promote);
        let bad = GateConfig {
            alpha: 0.0,
            ..GateConfig::default()
        };
        assert!(compare(&[1.0, 2.0], &[1.0, 2.0], &bad, 0.0).is_err());
    }
}
