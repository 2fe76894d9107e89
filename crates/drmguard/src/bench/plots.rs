//! The benchmark's plots (plotters, drawn into PNG files). Text needs a TrueType font, read at
//! run time from `$DRMGUARD_FONT` or the usual system locations (DejaVu Sans, as in Debian's
//! `fonts-dejavu-core`); without one, plots are skipped with a warning.

use std::path::Path;
use std::sync::OnceLock;

use plotters::prelude::*;
use plotters::style::FontStyle;

use crate::error::{Error, Result};
use crate::figures::reversed::write_png;

const FONT_PATHS: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/local/share/fonts/DejaVuSans.ttf",
    "/Library/Fonts/Arial.ttf",
    "/System/Library/Fonts/Supplemental/Arial.ttf",
    "C:\\Windows\\Fonts\\arial.ttf",
];

/// Registers a font for plotters once; false if none could be read.
fn font_ready() -> bool {
    static READY: OnceLock<bool> = OnceLock::new();
    *READY.get_or_init(|| {
        let candidates = std::env::var("DRMGUARD_FONT").ok().into_iter().chain(FONT_PATHS.iter().map(|s| s.to_string()));
        for path in candidates {
            if let Ok(bytes) = std::fs::read(&path) {
                // plotters keeps the font for the life of the process.
                let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                if plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok() {
                    return true;
                }
            }
        }
        tracing::warn!("no TrueType font found (set DRMGUARD_FONT to a .ttf file): benchmark plots are skipped");
        false
    })
}

fn plot_error(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::Image { path: path.to_path_buf(), message: e.to_string() }
}

const COLOURS: [RGBColor; 6] = [RGBColor(31, 119, 180), RGBColor(255, 127, 14), RGBColor(44, 160, 44), RGBColor(214, 39, 40), RGBColor(148, 103, 189), RGBColor(140, 86, 75)];

/// Draws into a `w`×`h` RGB image with `draw`, then writes it as PNG to `path`; false (and no
/// file) when no font is available.
fn render(path: &Path, (w, h): (u32, u32), draw: impl FnOnce(DrawingArea<BitMapBackend, plotters::coord::Shift>) -> Result<()>) -> Result<bool> {
    if !font_ready() {
        return Ok(false);
    }
    let mut buffer = vec![0u8; (w * h * 3) as usize];
    draw(BitMapBackend::with_buffer(&mut buffer, (w, h)).into_drawing_area())?;
    let image = image::RgbImage::from_raw(w, h, buffer).ok_or_else(|| plot_error(path, "plot buffer of the wrong size"))?;
    write_png(&image, path)?;
    Ok(true)
}

/// ROC curves, one per named series; returns false if skipped (no font).
pub fn roc_plot(path: &Path, title: &str, curves: &[(String, Vec<(f64, f64)>)]) -> Result<bool> {
    render(path, (640, 560), |root| {
        root.fill(&WHITE).map_err(|e| plot_error(path, e))?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 22))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(50)
            .build_cartesian_2d(0f64..1f64, 0f64..1f64)
            .map_err(|e| plot_error(path, e))?;
        chart
            .configure_mesh()
            .x_desc("false-positive rate")
            .y_desc("true-positive rate")
            .draw()
            .map_err(|e| plot_error(path, e))?;
        chart.draw_series(LineSeries::new([(0.0, 0.0), (1.0, 1.0)], BLACK.mix(0.3))).map_err(|e| plot_error(path, e))?;
        for (i, (name, points)) in curves.iter().enumerate() {
            let colour = COLOURS[i % COLOURS.len()];
            chart
                .draw_series(LineSeries::new(points.iter().copied(), colour.stroke_width(2)))
                .map_err(|e| plot_error(path, e))?
                .label(name.clone())
                .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], colour.stroke_width(2)));
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(|e| plot_error(path, e))?;
        root.present().map_err(|e| plot_error(path, e))?;
        Ok(())
    })
}

/// Two overlaid histograms (benign, backdoored) of one detector's suspicion scores.
pub fn histogram(path: &Path, title: &str, benign: &[f64], backdoored: &[f64]) -> Result<bool> {
    let all: Vec<f64> = benign.iter().chain(backdoored).copied().filter(|v| v.is_finite()).collect();
    let (lo, hi) = all.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &v| (a.min(v), b.max(v)));
    let (lo, hi) = if lo.is_finite() && hi > lo { (lo, hi) } else { (lo.min(0.0) - 1.0, hi.max(0.0) + 1.0) };
    let bins = 12usize;
    let width = (hi - lo) / bins as f64;
    let count = |values: &[f64]| {
        let mut counts = vec![0u32; bins];
        for &v in values.iter().filter(|v| v.is_finite()) {
            counts[(((v - lo) / width) as usize).min(bins - 1)] += 1;
        }
        counts
    };
    let (b, p) = (count(benign), count(backdoored));
    let top = b.iter().chain(&p).copied().max().unwrap_or(1).max(1);
    render(path, (640, 400), |root| {
        root.fill(&WHITE).map_err(|e| plot_error(path, e))?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(40)
            .build_cartesian_2d(lo..hi, 0u32..top + 1)
            .map_err(|e| plot_error(path, e))?;
        chart
            .configure_mesh()
            .x_desc("suspicion (larger = more suspicious)")
            .y_desc("models")
            .draw()
            .map_err(|e| plot_error(path, e))?;
        for (name, counts, colour) in [("benign", &b, COLOURS[0]), ("backdoored", &p, COLOURS[3])] {
            chart
                .draw_series(counts.iter().enumerate().map(|(i, &n)| {
                    let x0 = lo + i as f64 * width;
                    Rectangle::new([(x0, 0), (x0 + width, n)], colour.mix(0.45).filled())
                }))
                .map_err(|e| plot_error(path, e))?
                .label(name)
                .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 15, y + 5)], colour.mix(0.45).filled()));
        }
        chart.configure_series_labels().background_style(WHITE.mix(0.8)).border_style(BLACK).draw().map_err(|e| plot_error(path, e))?;
        root.present().map_err(|e| plot_error(path, e))?;
        Ok(())
    })
}
