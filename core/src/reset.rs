//! Giving a trained network back some of its plasticity when its world changed.
//!
//! A value network trained on one world is confidently wrong in the next: its head predicts
//! the old returns, and bootstrapped targets keep those predictions alive long after the
//! rewards stopped coming, so the greedy policy keeps walking to where the reward used to be.
//! Resetting the last layer(s) to fresh initial weights while keeping the body (Nikishin et al.
//! 2022, "The Primacy Bias in Deep Reinforcement Learning") drops the stale predictions and
//! keeps the features, which a new world can still use.

use crate::error::{CoreError, Result};
use crate::network::Network;
use crate::param::{Module, Param};

/// Names of the parameters [`reset_head`] resets: the output head's.
pub const HEAD_PREFIX: &str = "head.";

/// Resets the head of `net` (every parameter whose name starts with [`HEAD_PREFIX`]) to the
/// initial weights a fresh network of the same config draws from `seed`; the body, the
/// normaliser's statistics and the gradients' shapes are untouched. Returns the number of
/// scalars reset.
///
/// Use a seed other than the network's own: a head reset to its own θ₀ would start from the
/// same point that led to the stale predictions.
pub fn reset_head(net: &mut Network, seed: u64) -> Result<usize> {
    let fresh = Network::new(net.config().clone(), seed)?;
    let mut heads: Vec<&Param> = Vec::new();
    fresh.visit_params(&mut |p| {
        if p.name.starts_with(HEAD_PREFIX) {
            heads.push(p);
        }
    });
    let (mut i, mut reset, mut err) = (0, 0, None);
    net.visit_params_mut(&mut |p| {
        if !p.name.starts_with(HEAD_PREFIX) {
            return;
        }
        match heads.get(i) {
            Some(f) if f.name == p.name && f.value.shape() == p.value.shape() => {
                p.value.data_mut().copy_from_slice(f.value.data());
                reset += p.value.data().len();
            }
            _ => {
                err = Some(CoreError::Config(format!(
                    "parameter {} has no counterpart in a fresh network of the same config",
                    p.name
                )));
            }
        }
        i += 1;
    });
    match err {
        Some(e) => Err(e),
        None => Ok(reset),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::network::{BlockConfig, HeadConfig, NetworkConfig};
    use crate::tensor::Tensor;

    fn config(moe: bool) -> NetworkConfig {
        let block = if moe {
            BlockConfig::Moe {
                d_hidden: 8,
                n_experts: 2,
                top_k: 1,
                capacity_factor: None,
                router_noise_std: 0.0,
                normalize_gates: true,
                aux_loss_coef: 0.0,
                z_loss_coef: 0.0,
            }
        } else {
            BlockConfig::Dense { d_hidden: 8 }
        };
        NetworkConfig {
            obs_dim: 3,
            d_model: 8,
            blocks: vec![block],
            head: HeadConfig::DuelingQ { n_actions: 2 },
            normalize_obs: false,
            obs_clip: 10.0,
        }
    }

    fn values(net: &Network) -> Vec<(String, Vec<f32>)> {
        let mut v = Vec::new();
        net.visit_params(&mut |p| v.push((p.name.clone(), p.value.data().to_vec())));
        v
    }

    #[test]
    fn the_head_takes_fresh_weights_and_the_body_keeps_its_own() {
        for moe in [false, true] {
            let mut net = Network::new(config(moe), 1).unwrap();
            // Train-like drift of every weight, so "unchanged" and "reset" differ.
            net.visit_params_mut(&mut |p| p.value.data_mut().iter_mut().for_each(|x| *x += 0.5));
            let before = values(&net);
            let fresh = values(&Network::new(config(moe), 7).unwrap());
            let n = reset_head(&mut net, 7).unwrap();
            let after = values(&net);
            let mut head_scalars = 0;
            for ((name, b), ((_, a), (_, f))) in before.iter().zip(after.iter().zip(&fresh)) {
                if name.starts_with(HEAD_PREFIX) {
                    assert_eq!(a, f, "{name} is not the fresh network's");
                    head_scalars += a.len();
                } else {
                    assert_eq!(a, b, "{name} changed");
                }
            }
            assert!(head_scalars > 0);
            assert_eq!(n, head_scalars);
            // The network still runs.
            let obs = Tensor::from_vec(vec![0.1, 0.2, 0.3], &[1, 3]).unwrap();
            assert!(
                net.forward(&obs, false)
                    .unwrap()
                    .data()
                    .iter()
                    .all(|x| x.is_finite())
            );
        }
    }
}
