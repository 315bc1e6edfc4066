//! `experts`: how routing spread work over the experts, per model version and per region of
//! the observation space, as tables and a heat-map.
//!
//! Where the numbers come from (documented in `replay/SCHEMA.md`, "Expert statistics"):
//! `models.metrics.expert_usage` (fraction of routed tokens per expert, first MoE layer) for
//! each model version, and the newest reflection of kind `lessons` whose `data` has
//! `experts_by_region = {"regions": [label, ...], "usage": [[fraction per expert], ...]}`.

use std::io::Write;
use std::ops::ControlFlow;
use std::path::PathBuf;

use autodidact_replay::{Inspector, View};
use plotters::coord::Shift;
use plotters::prelude::*;
use serde_json::{Value, json};

use super::plot::{self, Figure, err};
use super::table::Table;

/// Options of `experts`.
#[derive(clap::Args, Debug, Clone)]
pub struct ExpertsArgs {
    /// Write the heat-map here; `.png` or `.svg` picks the format. Repeat for both.
    #[arg(long)]
    pub out: Vec<PathBuf>,
    /// Print one JSON object instead of tables.
    #[arg(long)]
    pub json: bool,
    /// Image size in pixels, WIDTHxHEIGHT.
    #[arg(long, default_value = "1000x700", value_parser = super::curve::parse_size)]
    pub size: (u32, u32),
}

/// Expert usage by observation region, from one `lessons` reflection.
#[derive(Debug, Clone, PartialEq)]
pub struct RegionUsage {
    /// The reflection it came from.
    pub reflection_id: i64,
    /// The model version the reflection is about.
    pub model_version: Option<i64>,
    /// One label per region.
    pub regions: Vec<String>,
    /// `usage[region][expert]`: fraction of the region's routed tokens per expert.
    pub usage: Vec<Vec<f64>>,
}

/// The expert statistics a file holds.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ExpertStats {
    /// (model version, status, usage per expert) for each version that recorded usage.
    pub by_version: Vec<(i64, String, Vec<f64>)>,
    /// Usage by region from the newest `lessons` reflection that has it.
    pub by_region: Option<RegionUsage>,
    /// Entries that were present but malformed, as sentences, so a writer's bug is visible.
    pub skipped: Vec<String>,
}

impl ExpertStats {
    /// Whether there is nothing to show.
    pub fn is_empty(&self) -> bool {
        self.by_version.is_empty() && self.by_region.is_none()
    }
}

fn numbers(v: &Value) -> Option<Vec<f64>> {
    v.as_array()?
        .iter()
        .map(|x| x.as_f64().filter(|f| f.is_finite()))
        .collect::<Option<Vec<f64>>>()
        .filter(|v| !v.is_empty())
}

fn parse_regions(v: &Value) -> Result<(Vec<String>, Vec<Vec<f64>>), String> {
    let regions: Vec<String> = v["regions"]
        .as_array()
        .ok_or("`regions` is not an array")?
        .iter()
        .map(|r| {
            r.as_str()
                .map(str::to_string)
                .unwrap_or_else(|| r.to_string())
        })
        .collect();
    let usage: Vec<Vec<f64>> = v["usage"]
        .as_array()
        .ok_or("`usage` is not an array")?
        .iter()
        .map(numbers)
        .collect::<Option<_>>()
        .ok_or("`usage` rows must be non-empty arrays of numbers")?;
    if regions.len() != usage.len() || regions.is_empty() {
        return Err(format!(
            "{} region labels but {} usage rows",
            regions.len(),
            usage.len()
        ));
    }
    if usage.iter().any(|r| r.len() != usage[0].len()) {
        return Err("usage rows have different numbers of experts".into());
    }
    Ok((regions, usage))
}

/// Reads the expert statistics of a file (see the module documentation for the shape).
pub fn expert_stats(view: &View<'_>) -> anyhow::Result<ExpertStats> {
    let mut s = ExpertStats::default();
    for m in view.models()? {
        match m.metrics.get("expert_usage") {
            None => {}
            Some(v) => match numbers(v) {
                Some(u) => s
                    .by_version
                    .push((m.version, m.status.as_str().to_string(), u)),
                None => s.skipped.push(format!(
                    "model v{}: metrics.expert_usage is not a non-empty array of numbers",
                    m.version
                )),
            },
        }
    }
    let mut newest = None;
    view.for_each_reflection(Some("lessons"), |r| {
        if let Some(v) = r.data.get("experts_by_region") {
            newest = Some((r.id, r.model_version, v.clone()));
        }
        Ok(ControlFlow::Continue(()))
    })?;
    if let Some((id, mv, v)) = newest {
        match parse_regions(&v) {
            Ok((regions, usage)) => {
                s.by_region = Some(RegionUsage {
                    reflection_id: id,
                    model_version: mv,
                    regions,
                    usage,
                })
            }
            Err(why) => s
                .skipped
                .push(format!("reflection {id}: data.experts_by_region: {why}")),
        }
    }
    Ok(s)
}

fn pct(v: f64) -> String {
    format!("{:.1}%", v * 100.0)
}

/// A heat-map panel: rows of cells coloured by their share.
struct Panel {
    title: String,
    row_labels: Vec<String>,
    rows: Vec<Vec<f64>>,
}

struct Heatmap {
    panels: Vec<Panel>,
}

fn shade(v: f64, max: f64) -> RGBColor {
    let t = if max > 0.0 {
        (v / max).clamp(0.0, 1.0)
    } else {
        0.0
    };
    let mix = |a: f64, b: f64| (a + (b - a) * t).round() as u8;
    RGBColor(mix(247.0, 8.0), mix(251.0, 48.0), mix(255.0, 107.0))
}

impl Figure for Heatmap {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> anyhow::Result<()> {
        let areas = root.split_evenly((self.panels.len(), 1));
        for (panel, area) in self.panels.iter().zip(areas.iter()) {
            let n_exp = panel.rows.iter().map(Vec::len).max().unwrap_or(1).max(1) as i32;
            let n_rows = panel.rows.len().max(1) as i32;
            let max = panel.rows.iter().flatten().copied().fold(0.0, f64::max);
            let labels = &panel.row_labels;
            let mut chart = ChartBuilder::on(area)
                .caption(&panel.title, ("sans-serif", 20))
                .margin(10)
                .x_label_area_size(40)
                .y_label_area_size(110)
                // A segmented 0..n has n + 1 segments; 0..n - 1 has exactly one per cell.
                .build_cartesian_2d(
                    (0..n_exp - 1).into_segmented(),
                    (0..n_rows - 1).into_segmented(),
                )
                .map_err(err)?;
            chart
                .configure_mesh()
                .disable_mesh()
                .x_desc("expert")
                .x_labels(n_exp as usize)
                .y_labels(n_rows as usize)
                .x_label_formatter(&|x| match x {
                    SegmentValue::CenterOf(i) => i.to_string(),
                    _ => String::new(),
                })
                .y_label_formatter(&|y| match y {
                    SegmentValue::CenterOf(i) => {
                        labels.get(*i as usize).cloned().unwrap_or_default()
                    }
                    _ => String::new(),
                })
                .label_style(("sans-serif", 13))
                .axis_desc_style(("sans-serif", 15))
                .draw()
                .map_err(err)?;
            let cells = panel.rows.iter().enumerate().flat_map(|(r, row)| {
                row.iter()
                    .enumerate()
                    .map(move |(e, &v)| (r as i32, e as i32, v))
            });
            chart
                .draw_series(cells.map(|(r, e, v)| {
                    Rectangle::new(
                        [
                            (SegmentValue::Exact(e), SegmentValue::Exact(r)),
                            (SegmentValue::Exact(e + 1), SegmentValue::Exact(r + 1)),
                        ],
                        shade(v, max).filled(),
                    )
                }))
                .map_err(err)?;
            if n_exp <= 16 && n_rows <= 24 {
                let texts = panel.rows.iter().enumerate().flat_map(|(r, row)| {
                    row.iter()
                        .enumerate()
                        .map(move |(e, &v)| (r as i32, e as i32, v))
                });
                chart
                    .draw_series(texts.map(|(r, e, v)| {
                        let color = if max > 0.0 && v / max > 0.55 {
                            WHITE
                        } else {
                            BLACK
                        };
                        Text::new(
                            pct(v),
                            (SegmentValue::CenterOf(e), SegmentValue::CenterOf(r)),
                            ("sans-serif", 12).into_font().color(&color),
                        )
                    }))
                    .map_err(err)?;
            }
        }
        Ok(())
    }
}

pub(crate) fn run(ins: &Inspector, a: &ExpertsArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    for p in &a.out {
        plot::format_of(p)?;
    }
    let view = ins.view()?;
    let s = expert_stats(&view)?;
    drop(view);
    if a.json {
        let v = json!({
            "by_version": s.by_version.iter().map(|(v, st, u)| json!({"version": v, "status": st, "usage": u})).collect::<Vec<_>>(),
            "by_region": s.by_region.as_ref().map(|r| json!({
                "reflection_id": r.reflection_id, "model_version": r.model_version,
                "regions": r.regions, "usage": r.usage})),
            "skipped": s.skipped,
        });
        writeln!(out, "{v}")?;
    }
    if s.is_empty() {
        if !a.json {
            writeln!(
                out,
                "this file has no expert statistics: no model version has metrics.expert_usage \
                 and no `lessons` reflection has data.experts_by_region (see replay/SCHEMA.md, \
                 \"Expert statistics\")"
            )?;
            for why in &s.skipped {
                writeln!(out, "skipped: {why}")?;
            }
        }
        if !a.out.is_empty() {
            eprintln!("no expert statistics, so no image written");
        }
        return Ok(());
    }
    if !a.json {
        if s.by_version.is_empty() {
            writeln!(out, "expert usage by model version: none recorded")?;
        } else {
            let n = s.by_version.iter().map(|v| v.2.len()).max().unwrap_or(0);
            writeln!(
                out,
                "expert usage by model version (share of routed tokens, first MoE layer)"
            )?;
            let mut header = vec!["model".to_string(), "status".to_string()];
            header.extend((0..n).map(|e| format!("e{e}")));
            let mut t = Table::new(header);
            for (v, st, u) in &s.by_version {
                let mut row = vec![format!("v{v}"), st.clone()];
                row.extend((0..n).map(|e| u.get(e).map_or("-".into(), |&x| pct(x))));
                t.row(row);
            }
            t.print(out)?;
        }
        writeln!(out)?;
        match &s.by_region {
            None => writeln!(out, "expert usage by observation region: none recorded")?,
            Some(r) => {
                writeln!(
                    out,
                    "expert usage by observation region (reflection {}{})",
                    r.reflection_id,
                    r.model_version
                        .map_or(String::new(), |v| format!(", model v{v}"))
                )?;
                let n = r.usage.first().map_or(0, Vec::len);
                let mut header = vec!["region".to_string()];
                header.extend((0..n).map(|e| format!("e{e}")));
                let mut t = Table::new(header);
                for (label, u) in r.regions.iter().zip(&r.usage) {
                    let mut row = vec![label.clone()];
                    row.extend(u.iter().map(|&x| pct(x)));
                    t.row(row);
                }
                t.print(out)?;
            }
        }
        for why in &s.skipped {
            writeln!(out, "skipped: {why}")?;
        }
    }
    let mut panels = Vec::new();
    if !s.by_version.is_empty() {
        panels.push(Panel {
            title: "expert usage by model version".into(),
            row_labels: s
                .by_version
                .iter()
                .map(|(v, st, _)| format!("v{v} ({st})"))
                .collect(),
            rows: s.by_version.iter().map(|(_, _, u)| u.clone()).collect(),
        });
    }
    if let Some(r) = &s.by_region {
        panels.push(Panel {
            title: "expert usage by observation region".into(),
            row_labels: r.regions.clone(),
            rows: r.usage.clone(),
        });
    }
    let fig = Heatmap { panels };
    for p in &a.out {
        plot::render(p, a.size, &fig)?;
        if !a.json {
            writeln!(out, "wrote {}", p.display())?;
        }
    }
    Ok(())
}
