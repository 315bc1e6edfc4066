//! `export`: transitions or episodes to CSV or JSON lines, streamed row by row from one
//! snapshot, so a file larger than memory exports in bounded memory.

use std::fmt::Write as _;
use std::io::{BufWriter, Write};
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

use autodidact_replay::{
    ActionRef, ActionSpace, EpisodeFilter, Inspector, TransitionFilter, TransitionView,
};

use super::episodes;

/// What to export.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Table {
    /// One row per step, observations decoded.
    Transitions,
    /// One row per episode.
    Episodes,
}

/// Output formats.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportFormat {
    /// Comma-separated values with a header row; observations flattened to `obs_0..`.
    Csv,
    /// One JSON object per line; observations as flat arrays.
    Jsonl,
}

/// Options of `export`.
#[derive(clap::Args, Debug, Clone)]
pub struct ExportArgs {
    /// What to export.
    #[arg(value_enum)]
    pub what: Table,
    /// Output file (`-` for standard output). Written under a temporary name and renamed when
    /// complete, so an interrupted export never leaves a plausible but partial file.
    #[arg(long)]
    pub out: PathBuf,
    /// Output format; by default taken from the extension (`.csv`, `.jsonl`, `.ndjson`).
    #[arg(long, value_enum)]
    pub format: Option<ExportFormat>,
    /// Only this run.
    #[arg(long)]
    pub run: Option<i64>,
    /// Only episodes with an id at least this.
    #[arg(long)]
    pub min_episode: Option<i64>,
    /// Only episodes with an id at most this.
    #[arg(long)]
    pub max_episode: Option<i64>,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
}

fn format_for(a: &ExportArgs) -> anyhow::Result<ExportFormat> {
    if let Some(f) = a.format {
        return Ok(f);
    }
    match a
        .out
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        Some("csv") => Ok(ExportFormat::Csv),
        Some("jsonl" | "ndjson" | "json") => Ok(ExportFormat::Jsonl),
        _ => anyhow::bail!(
            "cannot tell the format from `{}`: name it .csv or .jsonl, or pass --format",
            a.out.display()
        ),
    }
}

/// Rows between progress-bar updates: often enough to look live, rarely enough to cost
/// nothing.
const TICK: u64 = 4096;

pub(crate) fn run(ins: &Inspector, a: &ExportArgs, stdout: &mut dyn Write) -> anyhow::Result<()> {
    let format = format_for(a)?;
    let to_stdout = a.out.as_os_str() == "-";
    let view = ins.view()?;
    let overview = view.overview(0)?;
    let runs: Vec<_> = overview
        .runs
        .iter()
        .filter(|r| a.run.is_none_or(|id| id == r.run.id))
        .collect();
    if let Some(id) = a.run {
        anyhow::ensure!(!runs.is_empty(), "there is no run {id} in this file");
    }
    let total: i64 = runs
        .iter()
        .map(|r| match a.what {
            Table::Transitions => r.stats.transitions_kept,
            Table::Episodes => r.stats.episodes_kept,
        })
        .sum();
    let bar = if a.quiet || to_stdout {
        indicatif::ProgressBar::hidden()
    } else {
        indicatif::ProgressBar::new(total.max(0) as u64)
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:30} {pos}/{len} {msg} ({per_sec}, {eta} left)",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar.set_message(match a.what {
        Table::Transitions => "transitions",
        Table::Episodes => "episodes",
    });

    // Checked before any file is created, so a refusal leaves nothing behind.
    let layout = match a.what {
        Table::Transitions => common_layout(&runs.iter().map(|r| &r.run).collect::<Vec<_>>())?,
        Table::Episodes => (0, 0),
    };
    let mut file_out = None;
    let tmp = partial_path(&a.out);
    let out: &mut dyn Write = if to_stdout {
        stdout
    } else {
        let f = std::fs::File::create(&tmp)
            .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", tmp.display()))?;
        file_out.insert(BufWriter::with_capacity(1 << 20, f))
    };
    let result = match a.what {
        Table::Episodes => export_episodes(&view, a, format, out, &bar),
        Table::Transitions => export_transitions(&view, a, format, layout, out, &bar),
    };
    let result = result.and_then(|n| {
        out.flush()?;
        Ok(n)
    });
    drop(file_out);
    let n = match result {
        Ok(n) => n,
        Err(e) => {
            if !to_stdout {
                let _ = std::fs::remove_file(&tmp);
            }
            return Err(e);
        }
    };
    bar.finish_and_clear();
    if !to_stdout {
        std::fs::rename(&tmp, &a.out)
            .map_err(|e| anyhow::anyhow!("cannot move {} into place: {e}", tmp.display()))?;
        eprintln!("wrote {n} rows to {}", a.out.display());
    }
    Ok(())
}

fn partial_path(out: &Path) -> PathBuf {
    let mut s = out.as_os_str().to_owned();
    s.push(".partial");
    PathBuf::from(s)
}

/// (observation length, action width; 0 = discrete) shared by the exported runs. Episodes
/// carry no observations, so only a transitions export needs the runs to agree.
fn common_layout(runs: &[&autodidact_replay::Run]) -> anyhow::Result<(usize, usize)> {
    let mut layout = None;
    for r in runs {
        let act = match r.spec.action_space {
            ActionSpace::Discrete { .. } => 0,
            ActionSpace::Continuous { dim } => dim,
        };
        let this = (r.spec.obs_len(), act);
        match layout {
            None => layout = Some(this),
            Some(l) if l == this => {}
            Some(_) => anyhow::bail!(
                "the runs of this file have different observation or action shapes, so their \
                 transitions cannot share one table; export one run at a time with --run"
            ),
        }
    }
    Ok(layout.unwrap_or((0, 0)))
}

fn export_episodes(
    view: &autodidact_replay::View<'_>,
    a: &ExportArgs,
    format: ExportFormat,
    out: &mut dyn Write,
    bar: &indicatif::ProgressBar,
) -> anyhow::Result<u64> {
    if format == ExportFormat::Csv {
        writeln!(out, "{}", episodes::CSV_HEADER)?;
    }
    let mut n = 0u64;
    let mut io_err = None;
    view.for_each_episode(
        &EpisodeFilter {
            run_id: a.run,
            ..EpisodeFilter::default()
        },
        |e| {
            if a.min_episode.is_some_and(|m| e.id < m) || a.max_episode.is_some_and(|m| e.id > m) {
                return Ok(ControlFlow::Continue(()));
            }
            let r = match format {
                ExportFormat::Csv => episodes::write_csv_row(e, out),
                ExportFormat::Jsonl => episodes::write_json_row(e, out),
            };
            if let Err(err) = r {
                io_err = Some(err);
                return Ok(ControlFlow::Break(()));
            }
            n += 1;
            if n % TICK == 0 {
                bar.set_position(n);
            }
            Ok(ControlFlow::Continue(()))
        },
    )?;
    if let Some(e) = io_err {
        return Err(e.into());
    }
    Ok(n)
}

fn export_transitions(
    view: &autodidact_replay::View<'_>,
    a: &ExportArgs,
    format: ExportFormat,
    (obs_len, act_len): (usize, usize),
    out: &mut dyn Write,
    bar: &indicatif::ProgressBar,
) -> anyhow::Result<u64> {
    if format == ExportFormat::Csv {
        let mut h = String::from("id,run_id,episode_id,step");
        for i in 0..obs_len {
            let _ = write!(h, ",obs_{i}");
        }
        if act_len == 0 {
            h.push_str(",action");
        } else {
            for i in 0..act_len {
                let _ = write!(h, ",action_{i}");
            }
        }
        h.push_str(",reward,terminated,truncated,behaviour,priority");
        writeln!(out, "{h}")?;
    }
    let filter = TransitionFilter {
        run_id: a.run,
        min_episode: a.min_episode,
        max_episode: a.max_episode,
    };
    let mut line = String::with_capacity(256);
    let mut n = 0u64;
    let mut io_err = None;
    view.for_each_transition(&filter, |t| {
        line.clear();
        match format {
            ExportFormat::Csv => csv_row(t, &mut line),
            ExportFormat::Jsonl => json_row(t, &mut line),
        }
        if let Err(e) = out.write_all(line.as_bytes()) {
            io_err = Some(e);
            return Ok(ControlFlow::Break(()));
        }
        n += 1;
        if n % TICK == 0 {
            bar.set_position(n);
        }
        Ok(ControlFlow::Continue(()))
    })?;
    if let Some(e) = io_err {
        return Err(e.into());
    }
    Ok(n)
}

fn csv_row(t: &TransitionView<'_>, s: &mut String) {
    let _ = write!(s, "{},{},{},{}", t.id, t.run_id, t.episode_id, t.step);
    for v in t.obs {
        let _ = write!(s, ",{v}");
    }
    match t.action {
        ActionRef::Discrete(a) => {
            let _ = write!(s, ",{a}");
        }
        ActionRef::Continuous(v) => {
            for x in v {
                let _ = write!(s, ",{x}");
            }
        }
    }
    let _ = write!(
        s,
        ",{},{},{},",
        t.reward,
        u8::from(t.terminated),
        u8::from(t.truncated)
    );
    if let Some(b) = t.behaviour {
        let _ = write!(s, "{b}");
    }
    s.push(',');
    if let Some(p) = t.priority {
        let _ = write!(s, "{p}");
    }
    s.push('\n');
}

/// JSON has no NaN or infinity; those become `null`, as pandas and DuckDB expect.
fn json_num(s: &mut String, v: f64) {
    if v.is_finite() {
        let _ = write!(s, "{v}");
    } else {
        s.push_str("null");
    }
}

fn json_f32(s: &mut String, v: f32) {
    // f32's own shortest form reads back to the same f32 (f64 would print 0.10000000149...).
    if v.is_finite() {
        let _ = write!(s, "{v}");
    } else {
        s.push_str("null");
    }
}

fn json_row(t: &TransitionView<'_>, s: &mut String) {
    let _ = write!(
        s,
        "{{\"id\":{},\"run_id\":{},\"episode_id\":{},\"step\":{},\"obs\":[",
        t.id, t.run_id, t.episode_id, t.step
    );
    for (i, v) in t.obs.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        json_f32(s, *v);
    }
    s.push_str("],\"action\":");
    match t.action {
        ActionRef::Discrete(a) => {
            let _ = write!(s, "{a}");
        }
        ActionRef::Continuous(v) => {
            s.push('[');
            for (i, x) in v.iter().enumerate() {
                if i > 0 {
                    s.push(',');
                }
                json_f32(s, *x);
            }
            s.push(']');
        }
    }
    s.push_str(",\"reward\":");
    json_num(s, t.reward);
    let _ = write!(
        s,
        ",\"terminated\":{},\"truncated\":{},\"behaviour\":",
        t.terminated, t.truncated
    );
    match t.behaviour {
        Some(b) => json_num(s, b),
        None => s.push_str("null"),
    }
    s.push_str(",\"priority\":");
    match t.priority {
        Some(p) => json_num(s, p),
        None => s.push_str("null"),
    }
    s.push_str("}\n");
}
