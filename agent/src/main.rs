//! `autodidact`: the command-line entry point. Kept thin: parsing, progress and error
//! reporting; the work lives in the library crates.

use std::process::ExitCode;

use anyhow::Context;
use autodidact::rollout::{Policy, rollout};
use clap::{Parser, Subcommand};

/// autodidact — a runtime for agents that teach themselves: a Mixture-of-Experts network that
/// acts in an environment, records its experience in SQLite, and fine-tunes itself on the CPU.
#[derive(Parser, Debug)]
#[command(name = "autodidact", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// List the environment IDs this build knows (plus the `gym:`, `exec:` and `tcp:` prefixes).
    Envs,
    /// Run episodes of an environment with a simple policy and report the returns: the quickest
    /// check that an environment (native, Gymnasium, or your own program) works with autodidact.
    Rollout {
        /// Environment ID: `cartpole`, `gym:CartPole-v1`, `exec:python3 my_env.py`,
        /// `tcp:127.0.0.1:7000`, … (see `autodidact envs`).
        #[arg(long, default_value = "cartpole")]
        env: String,
        /// Number of episodes.
        #[arg(long, default_value_t = 10)]
        episodes: usize,
        /// Seed of the first episode (episode i uses seed + i) and of the policy.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Which policy acts.
        #[arg(long, value_enum, default_value_t = Policy::Random)]
        policy: Policy,
        /// Print one JSON object instead of a table.
        #[arg(long)]
        json: bool,
    },
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Envs => {
            for id in autodidact_envs::known_ids() {
                let note = match id.split(':').next() {
                    Some("gym") if id.contains(':') => {
                        "  (Gymnasium through the Python bridge; needs python3 with gymnasium)"
                    }
                    Some("exec") if id.contains(':') => {
                        "  (a program speaking envs/PROTOCOL.md on stdin/stdout)"
                    }
                    Some("tcp") if id.contains(':') => "  (a server speaking envs/PROTOCOL.md)",
                    _ => "",
                };
                println!("{id}{note}");
            }
        }
        Command::Rollout {
            env,
            episodes,
            seed,
            policy,
            json,
        } => {
            anyhow::ensure!(episodes > 0, "--episodes must be at least 1");
            let mut e = autodidact_envs::make(&env).with_context(|| {
                format!("cannot start environment `{env}` (see `autodidact envs`)")
            })?;
            let bar = if json {
                indicatif::ProgressBar::hidden()
            } else {
                indicatif::ProgressBar::new(episodes as u64)
            };
            bar.set_style(
                indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} episodes {msg}")
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            let report = rollout(&env, e.as_mut(), policy, episodes, seed, |_, ret| {
                bar.inc(1);
                bar.set_message(format!("last return {ret:.1}"));
            })
            .with_context(|| format!("rollout in `{env}` failed"))?;
            bar.finish_and_clear();
            if json {
                println!("{}", serde_json::to_string(&report)?);
            } else {
                println!(
                    "env {}  policy {:?}  episodes {}",
                    report.env,
                    report.policy,
                    report.returns.len()
                );
                println!(
                    "return {:.2} ± {:.2}  (min {:.1}, max {:.1})",
                    report.mean,
                    report.std,
                    report.returns.iter().copied().fold(f64::INFINITY, f64::min),
                    report
                        .returns
                        .iter()
                        .copied()
                        .fold(f64::NEG_INFINITY, f64::max)
                );
                println!(
                    "terminated {} / truncated {}  ·  {:.0} env steps/s",
                    report.terminated,
                    report.returns.len() - report.terminated,
                    report.steps_per_s
                );
            }
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
