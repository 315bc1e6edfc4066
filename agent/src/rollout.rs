//! Running episodes of an environment with a simple policy: the quickest check that a world a
//! user plugs in works end to end with the runtime.

use autodidact_core::precision::Precision;
use autodidact_core::{Network, Snapshot, Tensor};
use autodidact_envs::{Action, Env, Space};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

/// Which policy acts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Policy {
    /// Uniform samples from the action space.
    Random,
    /// Greedy actions of a freshly initialised (untrained) MoE Q-network, through a bf16
    /// snapshot: exercises the acting path, not a trained agent.
    UntrainedMoe,
}

/// What a rollout measured.
#[derive(Clone, Debug, Serialize)]
pub struct RolloutReport {
    /// Environment ID.
    pub env: String,
    /// Policy used.
    pub policy: Policy,
    /// Return of each episode.
    pub returns: Vec<f64>,
    /// Length of each episode.
    pub lengths: Vec<u64>,
    /// Episodes that ended by `terminated` (the rest were truncated).
    pub terminated: usize,
    /// Mean return.
    pub mean: f64,
    /// Standard deviation of the return.
    pub std: f64,
    /// Environment steps per second over the whole rollout.
    pub steps_per_s: f64,
}

/// Errors of a rollout.
#[derive(Debug, thiserror::Error)]
pub enum RolloutError {
    /// The environment failed.
    #[error(transparent)]
    Env(#[from] autodidact_envs::EnvError),
    /// The network failed.
    #[error(transparent)]
    Core(#[from] autodidact_core::CoreError),
    /// The policy cannot act in this action space.
    #[error("{0}")]
    Unsupported(String),
}

/// The network `autodidact train` would start from (the documented default config), for
/// `obs_dim` inputs and `n_actions` actions.
fn default_q_network(obs_dim: usize, n_actions: usize, seed: u64) -> Result<Network, RolloutError> {
    let cfg =
        crate::train::network_config(&crate::config::TrainConfig::default(), obs_dim, n_actions);
    Ok(Network::new(cfg, seed)?)
}

/// Runs `episodes` episodes of `env` with `policy`, seeding episode `i` with `seed + i`.
/// `on_episode` is called after each episode (for progress display).
pub fn rollout(
    env_id: &str,
    env: &mut dyn Env,
    policy: Policy,
    episodes: usize,
    seed: u64,
    mut on_episode: impl FnMut(usize, f64),
) -> Result<RolloutReport, RolloutError> {
    let obs_dim = env.observation_space().flat_dim();
    let action_space = env.action_space().clone();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let snapshot = match policy {
        Policy::Random => None,
        Policy::UntrainedMoe => {
            let Space::Discrete { n } = action_space else {
                return Err(RolloutError::Unsupported(format!(
                    "the untrained-moe policy needs a discrete action space; this env has {action_space:?} (use --policy random)"
                )));
            };
            let net = default_q_network(obs_dim, n as usize, seed)?;
            Some(Snapshot::from_network(&net, Precision::Bf16)?)
        }
    };
    let mut scratch = snapshot.as_ref().map(Snapshot::scratch).unwrap_or_default();
    let (mut q, mut obs_t) = (Tensor::default(), Tensor::default());
    let (mut returns, mut lengths, mut terminated) = (Vec::new(), Vec::new(), 0);
    let start = std::time::Instant::now();
    let mut steps = 0u64;
    for ep in 0..episodes {
        let (mut obs, _) = env.reset(Some(seed + ep as u64))?;
        let (mut ret, mut len) = (0.0, 0u64);
        loop {
            let action = match &snapshot {
                None => action_space.sample(&mut rng),
                Some(s) => {
                    obs_t.resize(&[1, obs_dim]);
                    obs_t.data_mut().copy_from_slice(&obs);
                    s.forward(&obs_t, &mut q, &mut scratch)?;
                    Action::Discrete(crate::policy::argmax(q.data()) as i64)
                }
            };
            let step = env.step(&action)?;
            ret += step.reward;
            len += 1;
            steps += 1;
            if step.done() {
                terminated += usize::from(step.terminated);
                break;
            }
            obs = step.obs;
        }
        returns.push(ret);
        lengths.push(len);
        on_episode(ep, ret);
    }
    env.close()?;
    let n = returns.len().max(1) as f64;
    let mean = returns.iter().sum::<f64>() / n;
    let std = (returns.iter().map(|r| (r - mean).powi(2)).sum::<f64>() / n).sqrt();
    Ok(RolloutReport {
        env: env_id.to_string(),
        policy,
        returns,
        lengths,
        terminated,
        mean,
        std,
        steps_per_s: steps as f64 / start.elapsed().as_secs_f64().max(1e-9),
    })
}
