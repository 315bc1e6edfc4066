//! Documented ranges for every number a user can set, checked before anything is written.
//!
//! A config value or a command-line number is outside input: `replay.capacity = 2e18` once sent
//! the sum-tree's sizing loop into an overflow at full CPU, and `1e12` aborted on allocation.
//! Each key is checked against a range wide enough for any real use and narrow enough that
//! the memory or time it implies cannot take the machine down; the ranges are also written in
//! `agent/train.toml` and `agent/daemon.toml` beside their keys.

use std::fmt::Display;

use crate::error::{AgentError, Result};

/// Largest step count anywhere (a budget, a schedule length, an interval): 10¹², about three
/// years of a daemon at 10,000 steps/s.
pub const MAX_STEPS: u64 = 1_000_000_000_000;
/// Largest replay window, in transitions (2²⁶). The window and its sum-tree are sized from it.
pub const MAX_REPLAY_CAPACITY: u64 = 1 << 26;
/// Largest number of episodes of one evaluation or gate comparison.
pub const MAX_EPISODES: u64 = 100_000;
/// Most actors of one daemon.
pub const MAX_ACTORS: u64 = 64;
/// Largest thread count of a pool.
pub const MAX_THREADS: u64 = 256;
/// Largest width of the residual stream, a hidden layer or an expert.
pub const MAX_WIDTH: u64 = 65_536;
/// Largest number of residual blocks.
pub const MAX_BLOCKS: u64 = 256;
/// Largest number of experts of one MoE block.
pub const MAX_EXPERTS: u64 = 1_024;
/// Largest lead of the actor over the replay ratio, in steps.
pub const MAX_LEAD_STEPS: u64 = 1_000_000;
/// Largest episode kept in memory before it is cut, in steps.
pub const MAX_EPISODE_STEPS: u64 = 10_000_000;
/// Largest batch of one gradient update.
pub const MAX_BATCH: u64 = 65_536;

/// Checks `lo ≤ value ≤ hi` for an integer key.
pub(crate) fn int<T: Into<u64> + Copy + Display>(
    key: &str,
    value: T,
    lo: u64,
    hi: u64,
) -> Result<()> {
    let v: u64 = value.into();
    if (lo..=hi).contains(&v) {
        Ok(())
    } else {
        Err(out_of_range(key, &value, &lo, &hi))
    }
}

/// Checks `lo ≤ value ≤ hi` for a `usize` key.
pub(crate) fn size(key: &str, value: usize, lo: u64, hi: u64) -> Result<()> {
    int(key, value as u64, lo, hi)
}

/// Checks `lo ≤ value ≤ hi` for a real key; NaN and infinities are always out of range.
pub(crate) fn real(key: &str, value: f64, lo: f64, hi: f64) -> Result<()> {
    // Written so that NaN fails: every comparison with NaN is false.
    if value.is_finite() && value >= lo && value <= hi {
        Ok(())
    } else {
        Err(out_of_range(key, &value, &lo, &hi))
    }
}

fn out_of_range(key: &str, value: &dyn Display, lo: &dyn Display, hi: &dyn Display) -> AgentError {
    AgentError::Config(format!(
        "{key} = {value} is out of range: it must be between {lo} and {hi}"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_name_the_key_and_refuse_nan() {
        assert!(int("a.b", 5u64, 1, 10).is_ok());
        let e = int("a.b", 0u64, 1, 10).unwrap_err().to_string();
        assert!(e.contains("a.b") && e.contains("between 1 and 10"), "{e}");
        assert!(size("c", usize::MAX, 0, MAX_STEPS).is_err());
        assert!(real("r", f64::NAN, 0.0, 1.0).is_err());
        assert!(real("r", f64::INFINITY, 0.0, f64::MAX).is_err());
        assert!(real("r", 1.0, 0.0, 1.0).is_ok());
    }
}
