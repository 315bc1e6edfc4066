//! Greedy evaluation: episodes without exploration, on the acting weights, through the learner
//! kind's [`Policy`] (so it serves every learner).

use autodidact_core::Snapshot;
use autodidact_envs::Env;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use crate::error::Result;
use crate::fault::{Fault, check_observation, check_step};
use crate::policy::{ActMode, Policy};

/// Returns of a greedy evaluation.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct EvalReport {
    /// Mean return.
    pub mean: f64,
    /// Population standard deviation of the return.
    pub std: f64,
    /// Number of episodes.
    pub episodes: usize,
    /// Return of each episode.
    pub returns: Vec<f64>,
    /// Length of each episode.
    pub lengths: Vec<u64>,
}

impl EvalReport {
    /// Summarises per-episode returns and lengths.
    pub fn from_returns(returns: Vec<f64>, lengths: Vec<u64>) -> Self {
        let n = returns.len().max(1) as f64;
        let mean = returns.iter().sum::<f64>() / n;
        let std = (returns.iter().map(|r| (r - mean).powi(2)).sum::<f64>() / n).sqrt();
        EvalReport {
            mean,
            std,
            episodes: returns.len(),
            returns,
            lengths,
        }
    }
}

/// Longest evaluation episode: a greedy policy can loop forever in a world without a time
/// limit (an `exec:` program, say), and an evaluation must end.
pub const MAX_EVAL_EPISODE_STEPS: u64 = 100_000;

/// Runs `episodes` greedy episodes of `env` with `snapshot` acting through `policy`, seeding
/// episode `j` with `seed + j`. An episode is cut after [`MAX_EVAL_EPISODE_STEPS`] steps.
pub fn evaluate(
    env: &mut dyn Env,
    policy: &mut dyn Policy,
    snapshot: &Snapshot,
    episodes: usize,
    seed: u64,
) -> Result<EvalReport> {
    evaluate_capped(
        env,
        policy,
        snapshot,
        episodes,
        seed,
        MAX_EVAL_EPISODE_STEPS,
    )
}

/// [`evaluate`] with episodes cut after `max_steps` steps: a run judges its models on
/// episodes as long as those it learns from (`replay.max_episode_steps`).
pub fn evaluate_capped(
    env: &mut dyn Env,
    policy: &mut dyn Policy,
    snapshot: &Snapshot,
    episodes: usize,
    seed: u64,
    max_steps: u64,
) -> Result<EvalReport> {
    let obs_dim = env.observation_space().flat_dim();
    // Greedy acting draws nothing from it; the policy's signature asks for one.
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let (mut returns, mut lengths) = (Vec::with_capacity(episodes), Vec::new());
    for j in 0..episodes {
        let (mut obs, _) = env
            .reset(Some(seed.wrapping_add(j as u64)))
            .map_err(Fault::from)?;
        let (mut ret, mut len) = (0.0, 0u64);
        loop {
            check_observation(&obs, obs_dim)?;
            let acted = policy.act(snapshot, &obs, ActMode::Greedy, &mut rng)?;
            // A faulty step makes the episode's return meaningless: an error, never a figure.
            let step = check_step(env.step(&acted.action), obs_dim)?;
            ret += step.reward;
            len += 1;
            if step.done() || len >= max_steps {
                break;
            }
            obs = step.obs;
        }
        returns.push(ret);
        lengths.push(len);
    }
    Ok(EvalReport::from_returns(returns, lengths))
}
