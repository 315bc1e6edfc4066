//! `episodes`: a filtered, sorted table of episodes, or the same rows as CSV / JSON lines.

use std::io::Write;
use std::ops::ControlFlow;

use autodidact_replay::{EpisodeFilter, EpisodeInfo, Inspector};

use super::table::Table;
use super::{SortKey, format_time};

/// Rows a table shows when `--limit` is not given: a table is for reading, and tens of
/// thousands of lines are not; CSV and JSON lines are unlimited by default.
const TABLE_DEFAULT_LIMIT: u64 = 50;

/// Filters and output of `episodes`.
#[derive(clap::Args, Debug, Clone)]
pub struct EpisodesArgs {
    /// Only this run.
    #[arg(long)]
    pub run: Option<i64>,
    /// Only episodes acted by this model version.
    #[arg(long)]
    pub model: Option<i64>,
    /// Only episodes that ended at or after this time (Unix seconds).
    #[arg(long)]
    pub since: Option<f64>,
    /// Only episodes that ended at or before this time (Unix seconds).
    #[arg(long)]
    pub until: Option<f64>,
    /// Only episodes ending at or after this environment step of their run.
    #[arg(long)]
    pub min_step: Option<i64>,
    /// Only episodes ending at or before this environment step of their run.
    #[arg(long)]
    pub max_step: Option<i64>,
    /// Only episodes with at least this return.
    #[arg(long, allow_negative_numbers = true)]
    pub min_return: Option<f64>,
    /// Only episodes with at most this return.
    #[arg(long, allow_negative_numbers = true)]
    pub max_return: Option<f64>,
    /// Sort by this column.
    #[arg(long, value_enum, default_value_t = SortKey::Id)]
    pub sort: SortKey,
    /// Sort descending.
    #[arg(long)]
    pub desc: bool,
    /// At most this many rows (a table shows 50 unless told otherwise).
    #[arg(long)]
    pub limit: Option<u64>,
    /// JSON lines: one object per episode.
    #[arg(long, conflicts_with = "csv")]
    pub json: bool,
    /// CSV with a header row.
    #[arg(long)]
    pub csv: bool,
}

impl EpisodesArgs {
    pub(crate) fn filter(&self, default_limit: Option<u64>) -> EpisodeFilter {
        EpisodeFilter {
            run_id: self.run,
            model_version: self.model,
            ended_after: self.since,
            ended_before: self.until,
            min_step: self.min_step,
            max_step: self.max_step,
            min_return: self.min_return,
            max_return: self.max_return,
            order: self.sort.into(),
            descending: self.desc,
            limit: self.limit.or(default_limit),
        }
    }
}

/// Column names of episode CSV, shared with `export episodes`.
pub(crate) const CSV_HEADER: &str = "id,run_id,model_version,length,episode_return,terminated,\
truncated,started_at,ended_at,env_step";

pub(crate) fn write_csv_row(e: &EpisodeInfo, out: &mut dyn Write) -> std::io::Result<()> {
    writeln!(
        out,
        "{},{},{},{},{},{},{},{},{},{}",
        e.id,
        e.run_id,
        e.model_version.map_or(String::new(), |v| v.to_string()),
        e.length,
        e.episode_return,
        u8::from(e.terminated),
        u8::from(e.truncated),
        e.started_at,
        e.ended_at,
        e.env_step
    )
}

pub(crate) fn write_json_row(e: &EpisodeInfo, out: &mut dyn Write) -> std::io::Result<()> {
    let v = serde_json::json!({
        "id": e.id,
        "run_id": e.run_id,
        "model_version": e.model_version,
        "length": e.length,
        "episode_return": e.episode_return,
        "terminated": e.terminated,
        "truncated": e.truncated,
        "started_at": e.started_at,
        "ended_at": e.ended_at,
        "env_step": e.env_step,
    });
    writeln!(out, "{v}")
}

pub(crate) fn run(ins: &Inspector, a: &EpisodesArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    let view = ins.view()?;
    if a.csv || a.json {
        if a.csv {
            writeln!(out, "{CSV_HEADER}")?;
        }
        let mut io_err = None;
        view.for_each_episode(&a.filter(None), |e| {
            let r = if a.csv {
                write_csv_row(e, out)
            } else {
                write_json_row(e, out)
            };
            Ok(match r {
                Ok(()) => ControlFlow::Continue(()),
                Err(err) => {
                    io_err = Some(err);
                    ControlFlow::Break(())
                }
            })
        })?;
        if let Some(e) = io_err {
            return Err(e.into());
        }
        return Ok(());
    }
    let mut t = Table::new([
        "episode",
        "run",
        "model",
        "length",
        "return",
        "end",
        "env step",
        "ended (UTC)",
    ]);
    view.for_each_episode(&a.filter(Some(TABLE_DEFAULT_LIMIT)), |e| {
        t.row(vec![
            e.id.to_string(),
            e.run_id.to_string(),
            e.model_version.map_or("-".into(), |v| format!("v{v}")),
            e.length.to_string(),
            format!("{:.2}", e.episode_return),
            if e.terminated {
                "terminated"
            } else {
                "truncated"
            }
            .into(),
            e.env_step.to_string(),
            format_time(e.ended_at),
        ]);
        Ok(ControlFlow::Continue(()))
    })?;
    if t.is_empty() {
        writeln!(out, "no episodes match")?;
        return Ok(());
    }
    t.print(out)?;
    if a.limit.is_none() && t.len() as u64 == TABLE_DEFAULT_LIMIT {
        writeln!(
            out,
            "(at most {TABLE_DEFAULT_LIMIT} rows; --limit N for more, --csv or --json for all)"
        )?;
    }
    Ok(())
}
