//! `plasticity`: whether the agent stays able to learn over a long life — the share of dormant
//! hidden units, the effective rank of the features its head reads, and how far its weights
//! moved from their initialisation — per model version, from `models.metrics.plasticity`
//! (measured when the version was saved).

use std::io::Write;

use autodidact_replay::Inspector;
use serde_json::{Value, json};

use super::plot::sparkline;
use super::table::Table;

/// Options of `plasticity`.
#[derive(clap::Args, Debug, Clone)]
pub struct PlasticityArgs {
    /// JSON lines: one object per model version.
    #[arg(long)]
    pub json: bool,
}

/// One version's figures.
struct Row {
    version: i64,
    status: String,
    env_steps: Option<f64>,
    updates: Option<f64>,
    dormant: f64,
    rank: Option<f64>,
    features: Option<f64>,
    distance: Option<f64>,
}

fn row(version: i64, status: &str, metrics: &Value) -> Option<Row> {
    let p = metrics.get("plasticity")?;
    Some(Row {
        version,
        status: status.to_string(),
        env_steps: metrics.get("env_steps").and_then(Value::as_f64),
        updates: p.get("updates").and_then(Value::as_f64),
        dormant: p.get("dormant_ratio").and_then(Value::as_f64)?,
        rank: p.get("effective_rank").and_then(Value::as_f64),
        features: p.get("feature_dim").and_then(Value::as_f64),
        distance: p.get("weight_distance").and_then(Value::as_f64),
    })
}

fn opt(v: Option<f64>, f: impl Fn(f64) -> String) -> String {
    v.map_or("-".into(), f)
}

pub(crate) fn run(ins: &Inspector, a: &PlasticityArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    let view = ins.view()?;
    let rows: Vec<Row> = view
        .models()?
        .iter()
        .filter_map(|m| row(m.version, m.status.as_str(), &m.metrics))
        .collect();
    drop(view);
    if a.json {
        for r in &rows {
            let v = json!({
                "version": r.version, "status": r.status, "env_steps": r.env_steps,
                "updates": r.updates, "dormant_ratio": r.dormant, "effective_rank": r.rank,
                "feature_dim": r.features, "weight_distance": r.distance,
            });
            writeln!(out, "{v}")?;
        }
        return Ok(());
    }
    if rows.is_empty() {
        writeln!(
            out,
            "no model version has plasticity figures (metrics.plasticity); runs record them at \
             every checkpoint once replay holds data"
        )?;
        return Ok(());
    }
    writeln!(
        out,
        "plasticity by model version: dormant hidden units (τ = 0.025, Sokar et al. 2023), \
         effective rank of the head's features (srank, δ = 0.01, Kumar et al. 2021), distance \
         of the weights from their initialisation (‖θ − θ₀‖ / ‖θ₀‖)"
    )?;
    let mut t = Table::new([
        "model",
        "status",
        "env steps",
        "updates",
        "dormant",
        "rank",
        "distance",
    ]);
    for r in &rows {
        t.row(vec![
            format!("v{}", r.version),
            r.status.clone(),
            opt(r.env_steps, |s| format!("{s:.0}")),
            opt(r.updates, |u| format!("{u:.0}")),
            format!("{:.1} %", 100.0 * r.dormant),
            match (r.rank, r.features) {
                (Some(k), Some(d)) => format!("{k:.0} / {d:.0}"),
                (Some(k), None) => format!("{k:.0}"),
                _ => "-".into(),
            },
            opt(r.distance, |d| format!("{d:.3}")),
        ]);
    }
    t.print(out)?;
    let dormant: Vec<f64> = rows.iter().map(|r| r.dormant).collect();
    writeln!(out, "dormant  {}", sparkline(&dormant, 60))?;
    let ranks: Vec<f64> = rows.iter().filter_map(|r| r.rank).collect();
    if !ranks.is_empty() {
        writeln!(out, "rank     {}", sparkline(&ranks, 60))?;
    }
    Ok(())
}
