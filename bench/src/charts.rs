//! SVG charts for the HTML report, drawn with plotters' SVG backend (text is
//! emitted as SVG `<text>`, so no font files are needed at build or run time).

use crate::instances::DensityResult;
use crate::startup::StartupResult;
use plotters::coord::types::RangedCoordusize;
use plotters::prelude::*;

/// Errors drawing a chart.
#[derive(Debug, thiserror::Error)]
pub enum ChartError {
    /// plotters reported an error while drawing `chart`.
    #[error("drawing the {chart} chart: {message}")]
    Draw {
        /// Which chart.
        chart: &'static str,
        /// plotters' message.
        message: String,
    },
}

fn draw_err<E: std::fmt::Debug>(chart: &'static str) -> impl Fn(E) -> ChartError {
    move |e| ChartError::Draw {
        chart,
        message: format!("{e:?}"),
    }
}

const WIDTH: u32 = 820;

/// Stacked bars: one bar per measured startup row, one segment per phase
/// (median ms); rows without a timeline are one `total` segment. `None` if no
/// row was measured.
pub fn startup_svg(rows: &[StartupResult]) -> Result<Option<String>, ChartError> {
    let rows: Vec<&StartupResult> = rows.iter().filter(|r| r.wall_ms.is_some()).collect();
    if rows.is_empty() {
        return Ok(None);
    }
    // Segments per row: (name, median ms).
    let stacks: Vec<Vec<(String, f64)>> = rows
        .iter()
        .map(|r| {
            if r.segments.is_empty() {
                vec![(
                    "total".to_string(),
                    r.wall_ms.map(|w| w.median).unwrap_or(0.0),
                )]
            } else {
                r.segments
                    .iter()
                    .map(|s| (s.name.clone(), s.ms.median))
                    .collect()
            }
        })
        .collect();
    let mut names: Vec<String> = Vec::new();
    for s in &stacks {
        for (n, _) in s {
            if !names.contains(n) {
                names.push(n.clone());
            }
        }
    }
    let top = stacks
        .iter()
        .map(|s| s.iter().map(|(_, v)| v).sum::<f64>())
        .fold(0.0, f64::max)
        .max(0.001)
        * 1.15;
    let labels: Vec<String> = rows.iter().map(|r| r.label.clone()).collect();
    let err = draw_err("startup");
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (WIDTH, 420)).into_drawing_area();
        root.fill(&WHITE).map_err(&err)?;
        let mut chart = ChartBuilder::on(&root)
            .caption("Startup: median time per phase (ms)", ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(56)
            .build_cartesian_2d((0..rows.len()).into_segmented(), 0f64..top)
            .map_err(&err)?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .y_desc("ms")
            .x_labels(rows.len())
            .x_label_formatter(&|v: &SegmentValue<usize>| match v {
                SegmentValue::CenterOf(i) => labels.get(*i).cloned().unwrap_or_default(),
                _ => String::new(),
            })
            .draw()
            .map_err(&err)?;
        for (ni, name) in names.iter().enumerate() {
            let color = Palette99::pick(ni).mix(0.9);
            let mut bars: Vec<Rectangle<(SegmentValue<usize>, f64)>> = Vec::new();
            for (ri, stack) in stacks.iter().enumerate() {
                let mut base = 0.0;
                for (n, v) in stack {
                    if n == name {
                        let mut r = Rectangle::new(
                            [
                                (SegmentValue::Exact(ri), base),
                                (SegmentValue::Exact(ri + 1), base + v),
                            ],
                            color.filled(),
                        );
                        r.set_margin(0, 0, 18, 18);
                        bars.push(r);
                    }
                    base += v;
                }
            }
            chart
                .draw_series(bars)
                .map_err(&err)?
                .label(name.clone())
                .legend(move |(x, y)| {
                    Rectangle::new([(x, y - 5), (x + 10, y + 5)], color.filled())
                });
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .position(SeriesLabelPosition::UpperRight)
            .draw()
            .map_err(&err)?;
        root.present().map_err(&err)?;
    }
    Ok(Some(svg))
}

fn line_chart(
    results: &[DensityResult],
    title: &str,
    y_desc: &str,
    chart_name: &'static str,
    y: fn(&crate::instances::DensityPoint) -> f64,
) -> Result<Option<String>, ChartError> {
    let results: Vec<&DensityResult> = results.iter().filter(|r| !r.points.is_empty()).collect();
    if results.is_empty() {
        return Ok(None);
    }
    let max_k = results
        .iter()
        .flat_map(|r| r.points.iter().map(|p| p.k))
        .max()
        .unwrap_or(1);
    let max_y = results
        .iter()
        .flat_map(|r| r.points.iter().map(y))
        .fold(0.0, f64::max)
        .max(0.001)
        * 1.15;
    let err = draw_err(chart_name);
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (WIDTH, 360)).into_drawing_area();
        root.fill(&WHITE).map_err(&err)?;
        let mut chart: ChartContext<
            _,
            Cartesian2d<RangedCoordusize, plotters::coord::types::RangedCoordf64>,
        > = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(64)
            .build_cartesian_2d(0..max_k + max_k / 20 + 1, 0f64..max_y)
            .map_err(&err)?;
        chart
            .configure_mesh()
            .x_desc("instances (K)")
            .y_desc(y_desc)
            .draw()
            .map_err(&err)?;
        for (i, r) in results.iter().enumerate() {
            let color = Palette99::pick(i).to_rgba();
            let pts: Vec<(usize, f64)> = r.points.iter().map(|p| (p.k, y(p))).collect();
            chart
                .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))
                .map_err(&err)?
                .label(r.label.clone())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 16, y)], color.stroke_width(2))
                });
            chart
                .draw_series(pts.into_iter().map(|p| Circle::new(p, 3, color.filled())))
                .map_err(&err)?;
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .position(SeriesLabelPosition::UpperLeft)
            .draw()
            .map_err(&err)?;
        root.present().map_err(&err)?;
    }
    Ok(Some(svg))
}

/// Density curve: PSS per instance (MiB) against K.
pub fn density_memory_svg(results: &[DensityResult]) -> Result<Option<String>, ChartError> {
    line_chart(
        results,
        "Density: memory per instance (PSS, MiB)",
        "MiB per instance",
        "density memory",
        |p| p.pss_per_instance_kib / 1024.0,
    )
}

/// Density curve: time to start all K (s) against K.
pub fn density_time_svg(results: &[DensityResult]) -> Result<Option<String>, ChartError> {
    line_chart(
        results,
        "Density: time to start all K, one after another (s)",
        "seconds",
        "density time",
        |p| p.start_all_ms / 1000.0,
    )
}
