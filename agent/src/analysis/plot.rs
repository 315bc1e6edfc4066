//! What the images and the terminal sparkline share: the embedded font, the palette, and
//! rendering one figure to PNG or SVG by the output file's extension.

use std::path::Path;
use std::sync::OnceLock;

use plotters::coord::Shift;
use plotters::prelude::*;

/// DejaVu Sans (Bitstream Vera licence, see `fonts/DejaVuSans-LICENSE`), embedded because
/// plotters' system-font path needs fontconfig and FreeType, which a clean machine may lack;
/// with the font in the binary, axis labels render the same everywhere.
static FONT: &[u8] = include_bytes!("fonts/DejaVuSans.ttf");

/// Registers the embedded font once per process; plotters looks fonts up by family name.
pub(crate) fn ensure_font() -> anyhow::Result<()> {
    static DONE: OnceLock<bool> = OnceLock::new();
    let ok = *DONE.get_or_init(|| {
        plotters::style::register_font("sans-serif", FontStyle::Normal, FONT).is_ok()
    });
    anyhow::ensure!(
        ok,
        "the embedded font could not be loaded (a damaged build?)"
    );
    Ok(())
}

/// Line colours: distinguishable, and still apart when printed in grey.
pub(crate) const PALETTE: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(23, 190, 207),
];

/// A figure that can draw itself on any plotters backend.
pub(crate) trait Figure {
    /// Draws onto `root`, which is already filled white.
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> anyhow::Result<()>;
}

/// Image formats, chosen by the file extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Format {
    Png,
    Svg,
}

/// The format a path asks for, or an error that says which ones exist.
pub(crate) fn format_of(path: &Path) -> anyhow::Result<Format> {
    match path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        Some("png") => Ok(Format::Png),
        Some("svg") => Ok(Format::Svg),
        _ => anyhow::bail!(
            "{}: use a .png or .svg file name (the extension picks the format)",
            path.display()
        ),
    }
}

/// Renders `fig` to `path` (PNG or SVG by extension) at `size` pixels.
pub(crate) fn render(path: &Path, size: (u32, u32), fig: &impl Figure) -> anyhow::Result<()> {
    ensure_font()?;
    let fail = |e: &dyn std::fmt::Display| anyhow::anyhow!("drawing {}: {e}", path.display());
    match format_of(path)? {
        Format::Png => {
            let root = BitMapBackend::new(path, size).into_drawing_area();
            root.fill(&WHITE).map_err(|e| fail(&e))?;
            fig.draw(&root)?;
            root.present().map_err(|e| fail(&e))?;
        }
        Format::Svg => {
            let root = SVGBackend::new(path, size).into_drawing_area();
            root.fill(&WHITE).map_err(|e| fail(&e))?;
            fig.draw(&root)?;
            root.present().map_err(|e| fail(&e))?;
        }
    }
    Ok(())
}

/// Turns a plotters error into an anyhow error (their error types borrow the backend's).
pub(crate) fn err(e: impl std::fmt::Display) -> anyhow::Error {
    anyhow::anyhow!("drawing failed: {e}")
}

/// A one-line sparkline of `values` at most `width` characters wide (averaging buckets when
/// there are more values than characters). Non-finite values are skipped.
pub fn sparkline(values: &[f64], width: usize) -> String {
    const BARS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
    let finite: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
    if finite.is_empty() || width == 0 {
        return String::new();
    }
    let buckets = finite.len().min(width);
    let points: Vec<f64> = (0..buckets)
        .map(|b| {
            let lo = b * finite.len() / buckets;
            let hi = ((b + 1) * finite.len() / buckets).max(lo + 1);
            finite[lo..hi].iter().sum::<f64>() / (hi - lo) as f64
        })
        .collect();
    let min = points.iter().copied().fold(f64::INFINITY, f64::min);
    let max = points.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    points
        .iter()
        .map(|v| {
            if max > min {
                let i = ((v - min) / (max - min) * 7.0).round() as usize;
                BARS[i.min(7)]
            } else {
                BARS[3]
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sparkline_spans_min_to_max_and_buckets() {
        assert_eq!(
            sparkline(&[0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0], 8),
            "▁▂▃▄▅▆▇█"
        );
        assert_eq!(sparkline(&[1.0, 1.0, 9.0, 9.0], 2), "▁█");
        assert_eq!(sparkline(&[5.0, 5.0], 10), "▄▄");
        assert_eq!(sparkline(&[], 10), "");
        assert_eq!(sparkline(&[f64::NAN, 1.0, 2.0], 10), "▁█");
    }
}
