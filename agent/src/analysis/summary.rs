//! `summary`: the whole file at a glance, from the kept aggregates and indexed lookups.

use std::io::Write;

use autodidact_replay::{ActionSpace, FileBytes, Inspector, Overview};
use serde_json::json;

use super::table::Table;
use super::{format_bytes, format_duration, format_time, plot::sparkline};

/// How many of the newest episodes "recent returns" shows.
const RECENT: usize = 20;

pub(crate) fn run(ins: &Inspector, as_json: bool, out: &mut dyn Write) -> anyhow::Result<()> {
    let view = ins.view()?;
    let o = view.overview(RECENT)?;
    drop(view);
    let bytes = ins.file_bytes()?;
    // Oldest first reads naturally as a trend.
    let recent: Vec<f64> = o.recent.iter().rev().map(|e| e.episode_return).collect();
    let recent_mean =
        (!recent.is_empty()).then(|| recent.iter().sum::<f64>() / recent.len() as f64);
    let best = o
        .runs
        .iter()
        .filter_map(|r| r.best_return.map(|b| (r.run.id, b)))
        .max_by(|a, b| a.1.total_cmp(&b.1));

    if as_json {
        return write_json(ins, &o, &bytes, &recent, recent_mean, best, out);
    }

    let wal = if bytes.wal > 0 {
        format!(" + {} write-ahead log", format_bytes(bytes.wal))
    } else {
        String::new()
    };
    writeln!(
        out,
        "file          {}  (schema v{}, {}{wal})",
        ins.path().display(),
        o.schema_version,
        format_bytes(bytes.main)
    )?;
    match (o.first_time, o.last_time) {
        (Some(a), Some(b)) => writeln!(
            out,
            "time span     {} → {} UTC  ({})",
            format_time(a),
            format_time(b),
            format_duration((b - a).max(0.0))
        )?,
        _ => writeln!(out, "time span     (nothing recorded yet)")?,
    }
    let total_eps: i64 = o.runs.iter().map(|r| r.stats.episodes_total).sum();
    let total_tr: i64 = o.runs.iter().map(|r| r.stats.transitions_total).sum();
    writeln!(out, "runs          {}", o.runs.len())?;
    writeln!(
        out,
        "episodes      {} stored ({} ever written)",
        o.episodes_kept(),
        total_eps
    )?;
    writeln!(
        out,
        "transitions   {} stored ({} ever written)",
        o.transitions_kept(),
        total_tr
    )?;
    let champion = o
        .champion
        .map_or("no champion".to_string(), |v| format!("champion v{v}"));
    writeln!(
        out,
        "models        {} versions: {champion}, {} candidate(s), {} rejected",
        o.models, o.candidates, o.rejected
    )?;
    let kinds: Vec<String> = o
        .reflections_by_kind
        .iter()
        .map(|(k, n)| format!("{k} {n}"))
        .collect();
    if o.schema_version < 2 {
        writeln!(out, "reflections   (schema v1 files have none)")?;
    } else if kinds.is_empty() {
        writeln!(out, "reflections   0")?;
    } else {
        writeln!(
            out,
            "reflections   {} ({})",
            o.reflections(),
            kinds.join(", ")
        )?;
    }
    if let Some((run, r)) = best {
        writeln!(out, "best return   {r:.2} (run {run})")?;
    }
    if let Some(m) = recent_mean {
        writeln!(
            out,
            "recent        mean {m:.2} over the last {} episodes  {}",
            recent.len(),
            sparkline(&recent, RECENT)
        )?;
    }
    if !o.runs.is_empty() {
        writeln!(out)?;
        runs_table(&o).print(out)?;
    }
    Ok(())
}

/// `--json`: the summary as one JSON object.
fn write_json(
    ins: &Inspector,
    o: &Overview,
    bytes: &FileBytes,
    recent: &[f64],
    recent_mean: Option<f64>,
    best: Option<(i64, f64)>,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let runs: Vec<_> = o
        .runs
        .iter()
        .map(|r| {
            json!({
                "id": r.run.id,
                "env_id": r.run.spec.env_id,
                "obs_dims": r.run.spec.obs_dims,
                "obs_dtype": r.run.spec.obs_dtype.as_str(),
                "action_space": r.run.spec.action_space,
                "started_at": r.run.started_at,
                "episodes_total": r.stats.episodes_total,
                "episodes_kept": r.stats.episodes_kept,
                "transitions_total": r.stats.transitions_total,
                "transitions_kept": r.stats.transitions_kept,
                "bytes_kept": r.stats.bytes_kept,
                "mean_return": mean(r.stats.return_sum_kept, r.stats.episodes_kept),
                "best_return": r.best_return,
            })
        })
        .collect();
    let v = json!({
        "path": ins.path(),
        "schema_version": o.schema_version,
        "file_bytes": bytes.main,
        "wal_bytes": bytes.wal,
        "first_time": o.first_time,
        "last_time": o.last_time,
        "runs": runs,
        "episodes_kept": o.episodes_kept(),
        "transitions_kept": o.transitions_kept(),
        "models": {"total": o.models, "champion": o.champion,
                   "candidates": o.candidates, "rejected": o.rejected},
        "reflections": o.reflections_by_kind.iter().map(|(k, n)| (k.clone(), json!(n))).collect::<serde_json::Map<_, _>>(),
        "best_return": best.map(|(run, r)| json!({"run_id": run, "return": r})),
        "recent_returns": recent,
        "recent_mean": recent_mean,
    });
    writeln!(out, "{v}")?;
    Ok(())
}

/// One row per run: its world, spaces and returns.
fn runs_table(o: &Overview) -> Table {
    let mut t = Table::new([
        "run",
        "env",
        "obs",
        "dtype",
        "actions",
        "episodes",
        "transitions",
        "mean return",
        "best return",
        "started (UTC)",
    ]);
    for r in &o.runs {
        let actions = match r.run.spec.action_space {
            ActionSpace::Discrete { n } => format!("discrete({n})"),
            ActionSpace::Continuous { dim } => format!("box({dim})"),
        };
        t.row(vec![
            r.run.id.to_string(),
            r.run.spec.env_id.clone(),
            format!("{:?}", r.run.spec.obs_dims),
            r.run.spec.obs_dtype.as_str().to_string(),
            actions,
            r.stats.episodes_kept.to_string(),
            r.stats.transitions_kept.to_string(),
            mean(r.stats.return_sum_kept, r.stats.episodes_kept)
                .map_or("-".into(), |m| format!("{m:.2}")),
            r.best_return.map_or("-".into(), |b| format!("{b:.2}")),
            format_time(r.run.started_at),
        ]);
    }
    t
}

fn mean(sum: f64, n: i64) -> Option<f64> {
    (n > 0).then(|| sum / n as f64)
}
