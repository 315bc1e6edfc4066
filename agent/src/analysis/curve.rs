//! `curve`: return against environment steps, one smoothed line per run, with a marker where
//! each new model version started acting and a vertical line where the agent noticed a change
//! of the world or recalled an earlier model (its `drift` and `recall` reflections); a
//! sparkline in the terminal and PNG/SVG images.

use std::collections::{HashMap, HashSet, VecDeque};
use std::io::Write;
use std::ops::ControlFlow;
use std::path::PathBuf;

use autodidact_replay::{EpisodeFilter, EpisodeOrder, Inspector};
use plotters::coord::Shift;
use plotters::prelude::*;

use super::plot::{self, Figure, PALETTE, err};

/// Options of `curve`.
#[derive(clap::Args, Debug, Clone)]
pub struct CurveArgs {
    /// Write the plot here; `.png` or `.svg` picks the format. Repeat for both.
    #[arg(long)]
    pub out: Vec<PathBuf>,
    /// Moving-average window, in episodes (1 to 1000000).
    #[arg(long, default_value_t = 20, value_parser = parse_smooth)]
    pub smooth: usize,
    /// Only this run.
    #[arg(long)]
    pub run: Option<i64>,
    /// Image size in pixels, WIDTHxHEIGHT.
    #[arg(long, default_value = "1000x600", value_parser = parse_size)]
    pub size: (u32, u32),
}

/// The moving-average window: its ring is allocated up front, so it is bounded.
fn parse_smooth(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if (1..=1_000_000).contains(&n) => Ok(n),
        _ => Err(format!(
            "`{s}`: expected a number of episodes from 1 to 1000000"
        )),
    }
}

pub(crate) fn parse_size(s: &str) -> Result<(u32, u32), String> {
    let bad = || format!("`{s}`: expected WIDTHxHEIGHT, e.g. 1000x600");
    let (w, h) = s.split_once(['x', 'X']).ok_or_else(bad)?;
    let (w, h): (u32, u32) = (w.parse().map_err(|_| bad())?, h.parse().map_err(|_| bad())?);
    if !(100..=10_000).contains(&w) || !(100..=10_000).contains(&h) {
        return Err(format!(
            "`{s}`: each side must be between 100 and 10000 pixels"
        ));
    }
    Ok((w, h))
}

/// Points drawn per run at most: more are invisible at any sane width and only make the SVG
/// heavy, so long runs are thinned evenly.
const MAX_POINTS: usize = 2000;

/// One run's curve.
#[derive(Debug, Default)]
pub(crate) struct RunCurve {
    pub run_id: i64,
    pub label: String,
    /// (environment step, smoothed return), thinned to at most about `MAX_POINTS`.
    pub points: Vec<(f64, f64)>,
    /// (environment step, smoothed return, model version) where a version first acted.
    pub markers: Vec<(f64, f64, i64)>,
    pub episodes: u64,
    pub best: f64,
}

struct Acc {
    curve: RunCurve,
    window: VecDeque<f64>,
    sum: f64,
    stride: u64,
    seen: HashSet<i64>,
    last: (f64, f64),
}

pub(crate) fn collect(
    ins: &Inspector,
    run: Option<i64>,
    smooth: usize,
) -> anyhow::Result<Vec<RunCurve>> {
    let smooth = smooth.max(1);
    let view = ins.view()?;
    let overview = view.overview(0)?;
    let mut accs: HashMap<i64, Acc> = HashMap::new();
    for r in &overview.runs {
        if run.is_some_and(|id| id != r.run.id) {
            continue;
        }
        let n = r.stats.episodes_kept.max(1) as u64;
        accs.insert(
            r.run.id,
            Acc {
                curve: RunCurve {
                    run_id: r.run.id,
                    label: format!("run {} ({})", r.run.id, r.run.spec.env_id),
                    best: f64::NEG_INFINITY,
                    ..RunCurve::default()
                },
                window: VecDeque::with_capacity(smooth),
                sum: 0.0,
                stride: n.div_ceil(MAX_POINTS as u64).max(1),
                seen: HashSet::new(),
                last: (0.0, 0.0),
            },
        );
    }
    let filter = EpisodeFilter {
        run_id: run,
        order: EpisodeOrder::Id,
        ..EpisodeFilter::default()
    };
    view.for_each_episode(&filter, |e| {
        let Some(a) = accs.get_mut(&e.run_id) else {
            return Ok(ControlFlow::Continue(()));
        };
        a.window.push_back(e.episode_return);
        a.sum += e.episode_return;
        if a.window.len() > smooth {
            a.sum -= a.window.pop_front().unwrap_or(0.0);
        }
        let y = a.sum / a.window.len() as f64;
        let x = e.env_step as f64;
        a.last = (x, y);
        let c = &mut a.curve;
        c.best = c.best.max(e.episode_return);
        if c.episodes % a.stride == 0 {
            c.points.push((x, y));
        }
        c.episodes += 1;
        if let Some(v) = e.model_version {
            // The version acting at the start is where the run began, not a promotion.
            if a.seen.insert(v) && a.seen.len() > 1 {
                c.markers.push((x, y, v));
            }
        }
        Ok(ControlFlow::Continue(()))
    })?;
    let mut out: Vec<RunCurve> = accs
        .into_values()
        .map(|mut a| {
            // The newest point always shows, whatever the thinning.
            if a.curve.points.last() != Some(&a.last) && a.curve.episodes > 0 {
                a.curve.points.push(a.last);
            }
            a.curve
        })
        .filter(|c| c.episodes > 0)
        .collect();
    out.sort_by_key(|c| c.run_id);
    Ok(out)
}

/// A moment the agent's reflections mark on the curve: (environment step, what happened).
pub(crate) type Mark = (f64, String);

/// Reflection kinds the curve marks: a change of the world noticed, a past model recalled.
const MARKED_KINDS: [&str; 2] = ["drift", "recall"];

/// The marks of the file's `drift` and `recall` reflections, oldest first; a reflection
/// without a step in its data (written by another tool) is left out.
pub(crate) fn collect_marks(ins: &Inspector) -> anyhow::Result<Vec<Mark>> {
    if ins.schema_version() < 2 {
        return Ok(Vec::new());
    }
    let view = ins.view()?;
    let mut marks = Vec::new();
    for kind in MARKED_KINDS {
        view.for_each_reflection(Some(kind), |r| {
            if let Some(step) = r.data.get("steps").and_then(serde_json::Value::as_f64) {
                let label = match r.data.get("signal").and_then(serde_json::Value::as_str) {
                    Some(signal) => format!("{kind} ({signal})"),
                    None => kind.to_string(),
                };
                marks.push((step, label));
            }
            Ok(ControlFlow::Continue(()))
        })?;
    }
    marks.sort_by(|a, b| a.0.total_cmp(&b.0));
    Ok(marks)
}

struct CurveFigure<'a> {
    curves: &'a [RunCurve],
    marks: &'a [Mark],
    title: String,
    smooth: usize,
}

impl Figure for CurveFigure<'_> {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> anyhow::Result<()> {
        let all = self.curves.iter().flat_map(|c| c.points.iter());
        let (mut x1, mut y0, mut y1) = (1.0f64, f64::INFINITY, f64::NEG_INFINITY);
        for &(x, y) in all {
            x1 = x1.max(x);
            y0 = y0.min(y);
            y1 = y1.max(y);
        }
        if !(y0.is_finite() && y1.is_finite()) {
            (y0, y1) = (0.0, 1.0);
        }
        let pad = ((y1 - y0) * 0.05).max(1e-6);
        let mut chart = ChartBuilder::on(root)
            .caption(&self.title, ("sans-serif", 22))
            .margin(12)
            .x_label_area_size(45)
            .y_label_area_size(65)
            .build_cartesian_2d(0f64..x1, (y0 - pad)..(y1 + pad))
            .map_err(err)?;
        chart
            .configure_mesh()
            .x_desc("environment steps")
            .x_label_formatter(&|x| format!("{x:.0}"))
            .y_desc(format!("return (mean of {} episodes)", self.smooth))
            .label_style(("sans-serif", 14))
            .axis_desc_style(("sans-serif", 16))
            .light_line_style(RGBColor(235, 235, 235))
            .draw()
            .map_err(err)?;
        let red = RGBColor(200, 40, 40);
        for (x, label) in self.marks {
            chart
                .draw_series(std::iter::once(PathElement::new(
                    vec![(*x, y0 - pad), (*x, y1 + pad)],
                    red.stroke_width(1),
                )))
                .map_err(err)?;
            chart
                .draw_series(std::iter::once(Text::new(
                    label.clone(),
                    (*x, y1 + pad),
                    ("sans-serif", 12).into_font().color(&red),
                )))
                .map_err(err)?;
        }
        for (i, c) in self.curves.iter().enumerate() {
            let color = PALETTE[i % PALETTE.len()];
            chart
                .draw_series(LineSeries::new(
                    c.points.iter().copied(),
                    color.stroke_width(2),
                ))
                .map_err(err)?
                .label(c.label.clone())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
                });
            chart
                .draw_series(c.markers.iter().map(|&(x, y, v)| {
                    EmptyElement::at((x, y))
                        + TriangleMarker::new((0, 0), 7, BLACK.filled())
                        + Text::new(format!("v{v}"), (-8, -22), ("sans-serif", 13))
                }))
                .map_err(err)?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font(("sans-serif", 14))
            .draw()
            .map_err(err)?;
        Ok(())
    }
}

pub(crate) fn run(ins: &Inspector, a: &CurveArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    for p in &a.out {
        plot::format_of(p)?;
    }
    let curves = collect(ins, a.run, a.smooth)?;
    let marks = collect_marks(ins)?;
    if curves.is_empty() {
        writeln!(out, "no episodes to plot yet; no image written")?;
        return Ok(());
    }
    for c in &curves {
        let ys: Vec<f64> = c.points.iter().map(|p| p.1).collect();
        let (first, last) = (
            ys.first().copied().unwrap_or(0.0),
            ys.last().copied().unwrap_or(0.0),
        );
        writeln!(
            out,
            "{}: {} episodes, {} env steps; smoothed return {first:.2} → {last:.2}, best episode {:.2}",
            c.label,
            c.episodes,
            c.points.last().map_or(0.0, |p| p.0),
            c.best
        )?;
        writeln!(out, "  {}", plot::sparkline(&ys, 60))?;
        if !c.markers.is_empty() {
            let m: Vec<String> = c
                .markers
                .iter()
                .map(|&(x, _, v)| format!("v{v} at step {x}"))
                .collect();
            writeln!(out, "  new model versions: {}", m.join(", "))?;
        }
    }
    if !marks.is_empty() {
        let m: Vec<String> = marks
            .iter()
            .map(|(x, label)| format!("{label} at step {x}"))
            .collect();
        writeln!(out, "changes noticed and recalls: {}", m.join(", "))?;
    }
    let name = ins
        .path()
        .file_name()
        .map_or("replay".into(), |n| n.to_string_lossy().into_owned());
    let fig = CurveFigure {
        curves: &curves,
        marks: &marks,
        title: format!("learning curve: {name}"),
        smooth: a.smooth.max(1),
    };
    for p in &a.out {
        plot::render(p, a.size, &fig)?;
        writeln!(out, "wrote {}", p.display())?;
    }
    Ok(())
}
