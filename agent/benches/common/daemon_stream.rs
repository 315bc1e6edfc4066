//! The continual benchmark's `daemon` runs: the daemon on a world whose regime follows one
//! shared control, switched by the bench at phase boundaries of the daemon's own step count.
//!
//! A world on a step schedule (`goal-regions:cycle:N`) counts the steps of each instance, and
//! the daemon's gate plays in an instance of its own: its world would lag the actors'. So the
//! daemon's worlds follow a control handle instead, as in the drift scenario
//! (`common/drift.rs`), and every instance switches on the one command.

#![allow(dead_code)] // each includer uses its part

use std::path::Path;
use std::time::{Duration, Instant};

use autodidact::daemon::{Daemon, DaemonOptions, EnvFactory};

/// The environment ID the factory answers to (recorded in the run's config).
pub const ENV_ID: &str = "continual-world";

/// A daemon run on a world switched by `set_regime`: its episodes `(length, return)` in the
/// order they were stored and the daemon's step counts at which each phase began (the first
/// is 0). One actor, so episodes are stored in the order they were lived and their lengths add
/// up to the step count.
pub fn run_daemon(
    run_dir: &Path,
    factory: EnvFactory,
    set_regime: &dyn Fn(usize),
    cycle: &[usize],
    phase: u64,
    seed: u64,
    overrides: &[String],
) -> (Vec<(u64, f64)>, Vec<u64>) {
    set_regime(cycle[0]);
    let mut opts = DaemonOptions::resolve(run_dir, None, &[ENV_ID.to_string()], overrides, false)
        .expect("daemon config");
    opts.env_factory = Some(factory);
    let c = &mut opts.config;
    c.daemon.seed = seed;
    c.daemon.actors = 1;
    c.http.enabled = false;
    let total = phase * cycle.len() as u64;
    c.daemon.max_steps = total;
    let daemon = Daemon::start(opts).expect("daemon start");
    let mut starts = vec![0];
    let t0 = Instant::now();
    loop {
        let s = daemon.status().expect("status");
        assert!(daemon.failure().is_none(), "{:?}", daemon.failure());
        let k = starts.len();
        if k < cycle.len() && s.steps >= k as u64 * phase {
            set_regime(cycle[k]);
            starts.push(s.steps);
            continue;
        }
        if s.steps >= total {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(3_600),
            "the daemon made no progress: {s:#?}"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    daemon.shutdown().expect("daemon shutdown");
    (super::episodes(run_dir), starts)
}
