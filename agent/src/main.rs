//! `autodidact`: the command-line entry point. Kept thin: parsing, progress and error
//! reporting; the work lives in the library crates.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context;
use autodidact::config::TrainConfig;
use autodidact::rollout::{Policy, rollout};
use autodidact::train::{Hooks, RunSetup, TrainReport};
use clap::{Parser, Subcommand};

/// `autodidact replay …`: read-only views of a replay file. Part of the binary, not the
/// library, because it is presentation (tables, plots, files) reporting through `anyhow`.
mod analysis;

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
    /// Train an agent: a Mixture-of-Experts network acts in the environment, every step is
    /// stored in `<run-dir>/replay.sqlite`, and a learner fine-tunes the network in the
    /// background (Double DQN for discrete actions, Soft Actor-Critic for a bounded Box; see
    /// `learner.kind`). Ctrl-C stops cleanly; `--resume <run-dir>` continues.
    Train(TrainArgs),
    /// Run the self-learning daemon: actors act with the learner's newest weights while it
    /// fine-tunes in the background, an evaluation gate promotes only candidates that are not
    /// worse (and the champion acts when the learner's candidate is clearly worse), drift in the world raises exploration, and reflection passes are recorded in the
    /// replay file. Serves /healthz, /status and /metrics. SIGTERM or Ctrl-C stops cleanly;
    /// running it again with the same --run-dir resumes, also after a crash.
    Daemon(DaemonArgs),
    /// Evaluate a trained model greedily (no exploration) and report mean ± std return.
    Eval(EvalArgs),
    /// Look back at a replay file without writing code: summary, episodes, learning curve,
    /// expert usage, reflections, export (read-only; safe while a run is writing).
    Replay(analysis::ReplayArgs),
    /// List the environment IDs this build knows (plus the `gym:`, `exec:` and `tcp:` prefixes).
    Envs,
    /// Serve a world of this build (any ID of `autodidact envs`) on stdin/stdout with the
    /// protocol of envs/PROTOCOL.md, until `close` or end of input: a native world then runs
    /// as a separate program, e.g. `--env "exec:autodidact serve-env goal-regions:cycle:10000"`,
    /// to check that nothing depends on a world being native, or to give another runtime one
    /// of ours. Logs go to stderr; stdout carries only the protocol.
    ServeEnv {
        /// Environment ID to serve (see `autodidact envs`).
        id: String,
    },
    /// Run episodes of an environment with a simple policy and report the returns: the quickest
    /// check that an environment (native, Gymnasium, or your own program) works with autodidact.
    Rollout {
        /// Environment ID: `cartpole`, `gym:CartPole-v1`, `exec:python3 my_env.py`,
        /// `tcp:127.0.0.1:7000`, … (see `autodidact envs`).
        #[arg(long, default_value = "cartpole")]
        env: String,
        /// Number of episodes (1 to 100000).
        #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=100_000))]
        episodes: u64,
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

/// Options of `autodidact train`.
#[derive(clap::Args, Debug)]
struct TrainArgs {
    /// Environment ID: `cartpole`, `gym:CartPole-v1`, `exec:python3 my_env.py`,
    /// `tcp:127.0.0.1:7000`, … (see `autodidact envs`). Needs a discrete action space (DQN)
    /// or a one-dimensional Box with finite bounds (SAC).
    #[arg(long, required_unless_present_any = ["resume", "print_config"])]
    env: Option<String>,
    /// Total environment steps of the run (default: `run.steps` of the config, 50000).
    #[arg(long)]
    steps: Option<u64>,
    /// Seed of the network, exploration, sampling and environment resets.
    #[arg(long)]
    seed: Option<u64>,
    /// A TOML config file; keys it leaves out keep their defaults (see --print-config).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Override one config key, e.g. `--set dqn.lr=3e-4 --set run.mode=lockstep`.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
    /// Where the run's files go (default: a new `runs/<env>-<n>`).
    #[arg(long, value_name = "DIR")]
    run_dir: Option<PathBuf>,
    /// Continue the run in DIR from its latest checkpoint and replay file (with --steps: up
    /// to that new total). If the run's environment is a command (`exec:…`), repeat it with
    /// --env or pass --allow-exec: a stored command runs only with your consent.
    #[arg(long, value_name = "DIR", conflicts_with_all = ["config", "run_dir", "seed"])]
    resume: Option<PathBuf>,
    /// With --resume: run the run directory's environment even if it is a command.
    #[arg(long, requires = "resume")]
    allow_exec: bool,
    /// Print the fully resolved config as TOML and exit.
    #[arg(long)]
    print_config: bool,
    /// Print the final report as one JSON object instead of a paragraph.
    #[arg(long)]
    json: bool,
}

/// Options of `autodidact daemon`.
#[derive(clap::Args, Debug)]
struct DaemonArgs {
    /// Environment ID the actors act in (repeat for several; actor i uses the i-th modulo
    /// their number). Needed for a new run directory, optional when resuming.
    #[arg(long)]
    env: Vec<String>,
    /// The run directory: created if new, resumed if it holds a daemon run.
    #[arg(long, value_name = "DIR", default_value = "runs/daemon")]
    run_dir: PathBuf,
    /// Serve /healthz, /status and /metrics here (default: http.bind, 127.0.0.1:7979; port 0
    /// picks a free port, written to <run-dir>/http.addr). A non-loopback address needs
    /// --http-token.
    #[arg(long, value_name = "ADDR")]
    http: Option<String>,
    /// Bearer token required on /status and /metrics (also AUTODIDACT_HTTP_TOKEN).
    #[arg(long, value_name = "TOKEN")]
    http_token: Option<String>,
    /// Turn the HTTP endpoint off.
    #[arg(long, conflicts_with_all = ["http", "http_token"])]
    no_http: bool,
    /// Number of actors (daemon.actors).
    #[arg(long)]
    actors: Option<usize>,
    /// Stop after this many environment steps in total (daemon.max_steps; default: run until
    /// stopped).
    #[arg(long)]
    max_steps: Option<u64>,
    /// A TOML config file for a new run; keys it leaves out keep their defaults (see
    /// --print-config and agent/daemon.toml).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Override one config key, e.g. `--set gate.episodes=20 --set reflection.every_s=30`.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
    /// When resuming: run the saved environments even if one is a command (`exec:…`); a run
    /// directory may come from someone else, so a stored command needs your consent (naming
    /// the environments again with --env is consent too).
    #[arg(long)]
    allow_exec: bool,
    /// Log format on stderr.
    #[arg(long, value_enum, default_value_t = LogFormat::Human)]
    log_format: LogFormat,
    /// Print the fully resolved config as TOML and exit.
    #[arg(long)]
    print_config: bool,
}

/// How logs are written.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum LogFormat {
    /// Lines for a person.
    Human,
    /// One JSON object per line, for a log collector.
    Json,
}

fn daemon_command(args: DaemonArgs) -> anyhow::Result<()> {
    use autodidact::daemon::{Daemon, DaemonOptions};
    let mut set = args.set.clone();
    if let Some(a) = &args.http {
        set.push(format!("http.bind=\"{a}\""));
        set.push("http.enabled=true".into());
    }
    if let Some(t) = &args.http_token {
        set.push(format!("http.token=\"{t}\""));
    }
    if args.no_http {
        set.push("http.enabled=false".into());
    }
    if let Some(n) = args.actors {
        set.push(format!("daemon.actors={n}"));
    }
    if let Some(n) = args.max_steps {
        set.push(format!("daemon.max_steps={n}"));
    }
    let opts = DaemonOptions::resolve(
        &args.run_dir,
        args.config.as_deref(),
        &args.env,
        &set,
        args.allow_exec,
    )
    .with_context(|| format!("cannot start the daemon in {}", args.run_dir.display()))?;
    if args.print_config {
        print!("{}", opts.config.to_toml()?);
        return Ok(());
    }
    let daemon = Daemon::start(opts)
        .with_context(|| format!("cannot start the daemon in {}", args.run_dir.display()))?;
    if let Some(addr) = daemon.http_addr() {
        eprintln!("autodidact daemon: http://{addr}/status  (SIGTERM or Ctrl-C stops)");
    }
    let report = daemon.run_until_signal()?;
    let s = &report.status;
    eprintln!(
        "stopped after {} steps ({} episodes, {} updates); champion v{}; {} promoted, {} \
         rejected, {} drift alarms; stop took {:.1} s",
        s.steps,
        s.episodes,
        s.updates,
        s.champion.version,
        s.promoted,
        s.rejected,
        s.drifts,
        report.shutdown_s
    );
    Ok(())
}

fn train_command(args: TrainArgs) -> anyhow::Result<()> {
    let setup = match &args.resume {
        Some(dir) => {
            // Naming the run's environment again is consent to run it; naming another is a
            // mistake (one run learns one world).
            let consent = match &args.env {
                None => args.allow_exec,
                Some(env) => {
                    let stored = autodidact::train::RunState::read(dir)?.env_id;
                    anyhow::ensure!(
                        env.trim() == stored.trim(),
                        "the run in {} acts in `{stored}`, not `{env}`: drop --env to resume \
                         it, or start a new run",
                        dir.display()
                    );
                    true
                }
            };
            RunSetup::resume(dir, args.steps, &args.set, consent)
                .with_context(|| format!("cannot resume the run in {}", dir.display()))?
        }
        None => {
            let mut config = TrainConfig::load(args.config.as_deref(), &args.set)?;
            if let Some(s) = args.steps {
                config.run.steps = s;
            }
            if let Some(s) = args.seed {
                config.run.seed = s;
            }
            config.validate()?;
            if args.print_config {
                print!("{}", config.to_toml()?);
                return Ok(());
            }
            let env = args.env.clone().unwrap_or_default();
            let dir = args
                .run_dir
                .clone()
                .unwrap_or_else(|| RunSetup::default_run_dir(&env));
            RunSetup::fresh(&env, config, &dir)?
        }
    };
    if args.print_config {
        print!("{}", setup.config.to_toml()?);
        return Ok(());
    }
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    ctrlc::set_handler(move || {
        if flag.swap(true, Ordering::SeqCst) {
            eprintln!("\ninterrupted twice: exiting without a final checkpoint");
            std::process::exit(130);
        }
        eprintln!("\nstopping: finishing the step, checkpointing (Ctrl-C again to quit now)");
    })
    .context("cannot install the Ctrl-C handler")?;

    let bar = if args.json {
        indicatif::ProgressBar::hidden()
    } else {
        indicatif::ProgressBar::new(setup.config.run.steps)
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{elapsed_precise} {bar:24} {pos}/{len} steps {per_sec:>10} {msg}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let env_id = setup.env_id.clone();
    let run_dir = setup.run_dir.clone();
    eprintln!(
        "training on `{env_id}` in {} ({} steps, {:?} mode)",
        run_dir.display(),
        setup.config.run.steps,
        setup.config.run.mode
    );
    // Without a terminal (a pipe, a log file) the bar is hidden; a line per tenth of the run
    // keeps such logs informative. `--json` keeps stderr quiet.
    let log_lines = bar.is_hidden() && !args.json;
    let mut logged_tenths = 0;
    let mut on_progress = |p: &autodidact::train::Progress| {
        bar.set_position(p.steps);
        let ret = p
            .recent_return
            .map_or("–".to_string(), |r| format!("{r:.1}"));
        let experts = if p.learner.expert_usage.is_empty() {
            String::new()
        } else {
            let shares: Vec<String> = p
                .learner
                .expert_usage
                .iter()
                .map(|u| format!("{:.0}", u * 100.0))
                .collect();
            format!(" experts {}%", shares.join("/"))
        };
        let message = format!(
            "return {ret} loss {:.3} ε {:.2}{experts} v{}",
            p.learner.loss, p.exploration, p.model_version
        );
        let tenths = p.steps * 10 / p.total_steps.max(1);
        if log_lines && tenths > logged_tenths {
            logged_tenths = tenths;
            eprintln!("{}/{} steps  {message}", p.steps, p.total_steps);
        }
        bar.set_message(message);
    };
    let mut on_eval = |e: &autodidact::train::EvalPoint| {
        let line = format!("eval at {} steps: {:.1} ± {:.1}", e.steps, e.mean, e.std);
        if bar.is_hidden() {
            if !args.json {
                eprintln!("{line}");
            }
        } else {
            bar.println(line);
        }
    };
    let report = autodidact::train::train(
        setup,
        Hooks {
            stop,
            on_progress: &mut on_progress,
            on_eval: &mut on_eval,
        },
    )
    .with_context(|| {
        format!(
            "training on `{env_id}` failed (run directory {})",
            run_dir.display()
        )
    })?;
    bar.finish_and_clear();
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!("{}", summary_paragraph(&report));
    }
    Ok(())
}

/// The one-paragraph account of a run printed at its end.
fn summary_paragraph(r: &TrainReport) -> String {
    let mut s = format!(
        "{} `{}` for {} steps this session ({} in total, {} episodes) in {:.1} s of training \
         ({:.0} steps/s), with {} gradient updates (replay ratio {:.3}, configured {:.3}).",
        if r.interrupted {
            "Stopped training on"
        } else {
            "Trained on"
        },
        r.env_id,
        r.steps_this_session,
        r.steps,
        r.episodes,
        r.train_secs,
        r.steps_per_s,
        r.updates,
        r.replay_ratio,
        r.replay_ratio_target,
    );
    if let Some(ret) = r.recent_return {
        s += &format!(
            " The last training episodes returned {ret:.1} on average (with exploration)."
        );
    }
    if let Some(e) = &r.final_eval {
        s += &format!(
            " Greedy evaluation over {} episodes: {:.1} ± {:.1}.",
            e.episodes, e.mean, e.std
        );
    }
    if !r.learner.expert_usage.is_empty() {
        let shares: Vec<String> = r
            .learner
            .expert_usage
            .iter()
            .map(|u| format!("{:.0}%", u * 100.0))
            .collect();
        s += &format!(
            " The first MoE layer routes {} of its tokens to its experts.",
            shares.join(" / ")
        );
    }
    s += &format!(
        " Model v{} is saved in {}; the replay is {}. Continue with `autodidact train --resume {} \
         --steps N`, or evaluate with `autodidact eval --checkpoint {}`.",
        r.model_version,
        r.checkpoint.display(),
        r.run_dir.join(autodidact::train::REPLAY_FILE).display(),
        r.run_dir.display(),
        r.run_dir.display(),
    );
    s
}

/// Options of `autodidact eval`.
#[derive(clap::Args, Debug)]
struct EvalArgs {
    /// A checkpoint file (`…/checkpoints/step-N.safetensors`) or a run directory (meaning
    /// the model that run currently acts with).
    #[arg(long)]
    checkpoint: PathBuf,
    /// Environment ID (default: the run's environment when --checkpoint is a run dir).
    #[arg(long)]
    env: Option<String>,
    /// Run the run directory's own environment even if it is a command (`exec:…`): a run
    /// directory may come from someone else, so a stored command needs your consent.
    #[arg(long)]
    allow_exec: bool,
    /// Number of episodes (1 to 100000).
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    episodes: u64,
    /// Seed of the first episode (episode j uses seed + j).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Print one JSON object (`mean`, `std`, `episodes`, `returns`) instead of text.
    #[arg(long)]
    json: bool,
}

fn eval_command(a: EvalArgs) -> anyhow::Result<()> {
    let EvalArgs {
        checkpoint,
        env,
        allow_exec,
        episodes,
        seed,
        json,
    } = a;
    let episodes = episodes as usize;
    let (file, env, version) = if checkpoint.is_dir() {
        let (file, version) = autodidact::train::acting_checkpoint(&checkpoint)?;
        let env = match env {
            Some(e) => e,
            None => {
                let stored = autodidact::train::RunState::read(&checkpoint)?.env_id;
                autodidact::train::check_stored_command(
                    &stored,
                    &checkpoint.join(autodidact::train::STATE_FILE),
                    allow_exec,
                )?;
                stored
            }
        };
        (file, env, Some(version))
    } else {
        let env = env.context("--env is needed when --checkpoint is a file")?;
        (checkpoint.clone(), env, None)
    };
    let loaded = autodidact_core::load_checkpoint(&file)
        .with_context(|| format!("cannot load the model from {}", file.display()))?;
    let snapshot =
        autodidact_core::Snapshot::from_network(&loaded.network, autodidact_core::Precision::F32)?;
    let mut e = autodidact::fault::make_env(&env)
        .with_context(|| format!("cannot start environment `{env}` (see `autodidact envs`)"))?;
    // The learner that wrote the checkpoint acts with it: its policy takes greedy actions.
    let kind = autodidact::learners::of_checkpoint(&loaded.extra)
        .with_context(|| format!("cannot tell which learner wrote {}", file.display()))?;
    let mut policy = kind.policy(e.action_space()).with_context(|| {
        format!(
            "a {} model cannot act in `{env}` (its action space is {:?})",
            kind.name(),
            e.action_space()
        )
    })?;
    let report = autodidact::eval::evaluate(e.as_mut(), policy.as_mut(), &snapshot, episodes, seed)
        .with_context(|| format!("evaluation in `{env}` failed"))?;
    let _ = e.close();
    if json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        let which = version.map_or(String::new(), |v| format!(" (model v{v})"));
        println!(
            "{}{which} on `{env}`: {:.2} ± {:.2} over {} episodes (min {:.1}, max {:.1})",
            file.display(),
            report.mean,
            report.std,
            report.episodes,
            report.returns.iter().copied().fold(f64::INFINITY, f64::min),
            report
                .returns
                .iter()
                .copied()
                .fold(f64::NEG_INFINITY, f64::max),
        );
    }
    Ok(())
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Replay(args) => analysis::run(args)?,
        Command::Train(args) => train_command(args)?,
        Command::Daemon(args) => daemon_command(args)?,
        Command::Eval(args) => eval_command(args)?,
        Command::ServeEnv { id } => {
            let mut e = autodidact_envs::make(&id).with_context(|| {
                format!("cannot start environment `{id}` (see `autodidact envs`)")
            })?;
            let stdin = std::io::stdin().lock();
            let stdout = std::io::stdout().lock();
            let served = autodidact_envs::protocol::serve(e.as_mut(), &id, stdin, stdout);
            let _ = e.close();
            served.with_context(|| format!("serving `{id}` on stdin/stdout failed"))?;
        }
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
            let episodes = episodes as usize;
            let mut e = autodidact::fault::make_env(&env).with_context(|| {
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
    let cli = Cli::parse();
    // The daemon's log is its record of a long life: info by default, and JSON on request.
    let (default_level, format) = match &cli.command {
        Command::Daemon(a) => ("info", a.log_format),
        _ => ("warn", LogFormat::Human),
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    let logs = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter);
    match format {
        LogFormat::Human => logs.init(),
        LogFormat::Json => logs.json().init(),
    }
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
