//! The cost–quality plot of `cargo xtask eval --plot FILE` (PNG, `plotters`).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use plotters::prelude::*;
use plotters::style::{FontStyle, register_font};
use switchyard_routing::eval::Report;

/// Where TrueType fonts usually are; `SWITCHYARD_PLOT_FONT` overrides.
const FONT_CANDIDATES: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/System/Library/Fonts/Supplemental/Arial.ttf",
    "/Library/Fonts/Arial.ttf",
];

fn load_font() -> Result<()> {
    let candidates: Vec<PathBuf> = std::env::var_os("SWITCHYARD_PLOT_FONT")
        .map(PathBuf::from)
        .into_iter()
        .chain(FONT_CANDIDATES.iter().map(PathBuf::from))
        .collect();
    let Some(path) = candidates.iter().find(|p| p.is_file()) else {
        bail!("no TrueType font found for the plot labels; set SWITCHYARD_PLOT_FONT to a .ttf file");
    };
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    // plotters keeps registered fonts for the life of the process.
    let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
    register_font("sans-serif", FontStyle::Normal, bytes)
        .map_err(|_| anyhow!("{} is not a usable TrueType font", path.display()))
}

/// Draws the router's λ sweep, every single model, the random and oracle
/// points on a log-cost axis, and writes a PNG to `path`. `Ok(false)`, with
/// nothing written, when no point has a cost (data without costs).
pub fn plot(report: &Report, title: &str, path: &Path) -> Result<bool> {
    let positive = |c: f64| c.is_finite() && c > 0.0;
    let costs: Vec<f64> = report
        .sweep
        .iter()
        .map(|s| s.point.cost)
        .chain(report.single.iter().map(|s| s.1.cost))
        .chain([report.oracle.cost, report.random.cost])
        .filter(|&c| positive(c))
        .collect();
    let qualities: Vec<f64> = report
        .sweep
        .iter()
        .map(|s| s.point.quality)
        .chain(report.single.iter().map(|s| s.1.quality))
        .chain([report.oracle.quality, report.random.quality])
        .collect();
    let (Some(lo), Some(hi)) = (
        costs.iter().copied().reduce(f64::min),
        costs.iter().copied().reduce(f64::max),
    ) else {
        return Ok(false);
    };
    load_font()?;
    // The data's own range: scores need not lie in [0, 1] (ratings 1–10).
    let q_lo = qualities.iter().copied().fold(f64::INFINITY, f64::min);
    let q_hi = qualities.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let pad = ((q_hi - q_lo) * 0.05).max(0.01);
    let draw = || -> Result<(), Box<dyn std::error::Error>> {
        let root = BitMapBackend::new(path, (1100, 750)).into_drawing_area();
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 22))
            .margin(20)
            .x_label_area_size(50)
            .y_label_area_size(70)
            .build_cartesian_2d((lo * 0.7..hi * 2.5).log_scale(), (q_lo - pad)..(q_hi + pad))?;
        chart
            .configure_mesh()
            .x_desc("mean cost per query (log scale)")
            .y_desc("mean quality")
            .label_style(("sans-serif", 14))
            .draw()?;
        let mut sweep: Vec<(f64, f64)> = report
            .sweep
            .iter()
            .filter(|s| positive(s.point.cost))
            .map(|s| (s.point.cost, s.point.quality))
            .collect();
        sweep.sort_by(|a, b| a.0.total_cmp(&b.0));
        chart
            .draw_series(LineSeries::new(sweep.clone(), BLUE.stroke_width(2)))?
            .label(format!("router (λ sweep), AIQ {:.4}", report.aiq))
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE.stroke_width(2)));
        chart.draw_series(sweep.iter().map(|&p| Circle::new(p, 3, BLUE.filled())))?;
        chart
            .draw_series(
                report
                    .single
                    .iter()
                    .filter(|s| positive(s.1.cost))
                    .map(|s| Circle::new((s.1.cost, s.1.quality), 5, RED.filled())),
            )?
            .label(format!("single models (hull AIQ {:.4})", report.zero_router_aiq))
            .legend(|(x, y)| Circle::new((x + 10, y), 5, RED.filled()));
        for (name, p) in report.single.iter().filter(|s| positive(s.1.cost)) {
            chart.draw_series(std::iter::once(Text::new(
                name.clone(),
                (p.cost * 1.05, p.quality + 0.004),
                ("sans-serif", 12),
            )))?;
        }
        if positive(report.oracle.cost) {
            chart
                .draw_series(std::iter::once(TriangleMarker::new(
                    (report.oracle.cost, report.oracle.quality),
                    8,
                    GREEN.filled(),
                )))?
                .label("oracle")
                .legend(|(x, y)| TriangleMarker::new((x + 10, y), 6, GREEN.filled()));
        }
        if positive(report.random.cost) {
            chart
                .draw_series(std::iter::once(Cross::new(
                    (report.random.cost, report.random.quality),
                    6,
                    BLACK.stroke_width(2),
                )))?
                .label("random model")
                .legend(|(x, y)| Cross::new((x + 10, y), 5, BLACK.stroke_width(2)));
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .background_style(WHITE.mix(0.9))
            .border_style(BLACK)
            .label_font(("sans-serif", 14))
            .draw()?;
        root.present()?;
        Ok(())
    };
    draw().map_err(|e| anyhow!("drawing {}: {e}", path.display()))?;
    Ok(true)
}
