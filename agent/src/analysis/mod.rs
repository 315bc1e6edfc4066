//! `autodidact replay <db> <command>`: looking back at what an agent lived and learned, from
//! its replay file, without writing code.
//!
//! The file is opened read-only through [`autodidact_replay::Inspector`] (the replay crate is
//! the only one that knows SQLite); this module turns what it reads into tables, plots, CSV
//! and JSON lines. Every command reads one snapshot, so a daemon may keep writing meanwhile.

mod curve;
mod episodes;
mod experts;
mod export;
mod plasticity;
mod plot;
mod reflections;
mod summary;
mod table;

use std::path::{Path, PathBuf};

use anyhow::Context;
use autodidact_replay::{EpisodeOrder, Inspector, ReplayError};

/// Arguments of `autodidact replay`.
#[derive(clap::Args, Debug)]
pub struct ReplayArgs {
    /// The replay database (the `.sqlite` file a run or the daemon writes). Opened read-only.
    pub db: PathBuf,
    /// What to show.
    #[command(subcommand)]
    pub command: ReplayCommand,
}

/// The commands of `autodidact replay`.
#[derive(clap::Subcommand, Debug)]
pub enum ReplayCommand {
    /// Runs, environments, episodes, transitions, model versions, reflections, file size, time
    /// span, best and recent returns.
    Summary {
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// A table of episodes, filtered and sorted.
    Episodes(episodes::EpisodesArgs),
    /// The learning curve: return against environment steps, smoothed, one line per run,
    /// with markers where a new model version started acting.
    Curve(curve::CurveArgs),
    /// Expert usage over model versions and by observation region.
    Experts(experts::ExpertsArgs),
    /// The reflection log.
    Reflections(reflections::ReflectionsArgs),
    /// Dormant units, effective rank and distance from initialisation per model version:
    /// whether the agent stays able to learn.
    Plasticity(plasticity::PlasticityArgs),
    /// Transitions or episodes to CSV or JSON lines, streamed.
    Export(export::ExportArgs),
}

/// Runs one `autodidact replay` command.
pub fn run(args: ReplayArgs) -> anyhow::Result<()> {
    let ins = open(&args.db)?;
    let mut out = std::io::stdout().lock();
    let result = match args.command {
        ReplayCommand::Summary { json } => summary::run(&ins, json, &mut out),
        ReplayCommand::Episodes(a) => episodes::run(&ins, &a, &mut out),
        ReplayCommand::Curve(a) => curve::run(&ins, &a, &mut out),
        ReplayCommand::Experts(a) => experts::run(&ins, &a, &mut out),
        ReplayCommand::Reflections(a) => reflections::run(&ins, &a, &mut out),
        ReplayCommand::Plasticity(a) => plasticity::run(&ins, &a, &mut out),
        ReplayCommand::Export(a) => export::run(&ins, &a, &mut out),
    };
    match result {
        // A closed pipe (`... | head`) is the reader's choice, not a failure.
        Err(e)
            if e.downcast_ref::<std::io::Error>()
                .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe) =>
        {
            Ok(())
        }
        other => other.with_context(|| format!("reading {}", args.db.display())),
    }
}

/// Opens the file read-only, turning each way of failing into a sentence that says what to do.
fn open(path: &Path) -> anyhow::Result<Inspector> {
    Inspector::open(path).map_err(|e| {
        let hint = match &e {
            ReplayError::NoSuchFile { .. } => {
                "pass the path of a replay file written by autodidact (a `.sqlite` file)"
            }
            ReplayError::NotADatabase { .. } | ReplayError::ForeignDatabase { .. } => {
                "this is not an autodidact replay file; pass the `.sqlite` file a run wrote"
            }
            ReplayError::TooNew { .. } => {
                "the file was written by a newer autodidact; read it with that version"
            }
            ReplayError::Damaged(_) => "the file is damaged",
            _ => "the file could not be read",
        };
        anyhow::Error::new(e).context(format!("cannot open {}: {hint}", path.display()))
    })
}

/// Sort keys accepted by `--sort`.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum SortKey {
    /// Commit order.
    Id,
    /// Episode return.
    Return,
    /// Episode length.
    Length,
    /// End time.
    Ended,
    /// Environment step of the run at the episode's end.
    Step,
}

impl From<SortKey> for EpisodeOrder {
    fn from(k: SortKey) -> Self {
        match k {
            SortKey::Id => EpisodeOrder::Id,
            SortKey::Return => EpisodeOrder::Return,
            SortKey::Length => EpisodeOrder::Length,
            SortKey::Ended => EpisodeOrder::EndedAt,
            SortKey::Step => EpisodeOrder::EnvStep,
        }
    }
}

/// Unix seconds as `YYYY-MM-DD HH:MM:SS` UTC, without a date crate: the civil-from-days
/// algorithm is short and exact for the proleptic Gregorian calendar.
pub(crate) fn format_time(secs: f64) -> String {
    if !secs.is_finite() {
        return "-".into();
    }
    let total = secs.floor() as i64;
    let days = total.div_euclid(86_400);
    let rem = total.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// A byte count for people.
pub(crate) fn format_bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// A duration in seconds for people.
pub(crate) fn format_duration(s: f64) -> String {
    if s < 120.0 {
        format!("{s:.0} s")
    } else if s < 7200.0 {
        format!("{:.1} min", s / 60.0)
    } else if s < 172_800.0 {
        format!("{:.1} h", s / 3600.0)
    } else {
        format!("{:.1} days", s / 86_400.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_and_sizes_read_well() {
        assert_eq!(format_time(0.0), "1970-01-01 00:00:00");
        assert_eq!(format_time(1_700_000_000.5), "2023-11-14 22:13:20");
        assert_eq!(format_time(951_782_400.0), "2000-02-29 00:00:00");
        assert_eq!(format_bytes(512), "512 B");
        assert_eq!(format_bytes(3 * 1024 * 1024), "3.0 MiB");
        assert_eq!(format_duration(30.0), "30 s");
        assert_eq!(format_duration(3600.0), "60.0 min");
    }
}
