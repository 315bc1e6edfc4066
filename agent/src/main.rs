//! `autodidact`: the command-line entry point. Kept thin: parsing and error reporting only.

use clap::Parser;

/// autodidact — a self-teaching Mixture-of-Experts agent runtime.
#[derive(Parser, Debug)]
#[command(name = "autodidact", version, about, long_about = None)]
struct Cli {}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let _cli = Cli::parse();
    Ok(())
}
