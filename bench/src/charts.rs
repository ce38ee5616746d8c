//! SVG charts for the HTML report, drawn with plotters' SVG backend (text is
//! emitted as SVG `<text>`, so no font files are needed at build or run time).

use crate::instances::DensityResult;
use crate::startup::StartupResult;
use plotters::coord::types::RangedCoordusize;
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

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

/// Whole chart width: the plot, then the legend column right of it.
const WIDTH: u32 = 1000;
/// The legend's own column, right of the plot, so it never covers a bar or a line.
pub const LEGEND_W: u32 = 240;
/// First legend entry's y (below the caption), and the step between entries.
const LEGEND_TOP: i32 = 48;
const LEGEND_STEP: i32 = 20;
/// Legend text longer than this is cut (13 px sans-serif, ~7 px a character).
const LEGEND_CHARS: usize = 30;

/// What a legend entry's swatch looks like.
#[derive(Clone, Copy)]
enum Swatch {
    /// A filled square, for bars.
    Block,
    /// A short line, for line charts.
    Line,
}

/// Draws `entries` (name, colour) top to bottom in `area`, the legend column.
fn draw_legend<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    entries: &[(String, RGBAColor)],
    swatch: Swatch,
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    let style =
        TextStyle::from(("sans-serif", 13).into_font()).pos(Pos::new(HPos::Left, VPos::Center));
    for (i, (name, color)) in entries.iter().enumerate() {
        let y = LEGEND_TOP + i as i32 * LEGEND_STEP;
        match swatch {
            Swatch::Block => {
                area.draw(&Rectangle::new([(8, y - 5), (18, y + 5)], color.filled()))?
            }
            Swatch::Line => area.draw(&PathElement::new(
                vec![(4, y), (20, y)],
                color.stroke_width(2),
            ))?,
        }
        let text = if name.chars().count() > LEGEND_CHARS {
            format!(
                "{}…",
                name.chars().take(LEGEND_CHARS - 1).collect::<String>()
            )
        } else {
            name.clone()
        };
        area.draw(&Text::new(text, (26, y), style.clone()))?;
    }
    Ok(())
}

/// Stacked startup bars, one chart per kind (containers and processes, then
/// VMs): the two differ by orders of magnitude, and one linear axis would
/// flatten the container bars. Each chart has its own scale.
pub fn startup_svgs(rows: &[StartupResult]) -> Result<Vec<String>, ChartError> {
    let mut out = Vec::new();
    let (vms, others): (Vec<StartupResult>, Vec<StartupResult>) = rows
        .iter()
        .cloned()
        .partition(|r| r.kind == crate::Kind::Vm);
    for (title, group) in [("containers", others), ("VMs", vms)] {
        if let Some(svg) = startup_svg(
            &group,
            &format!("Startup, {title}: median time per phase (ms)"),
        )? {
            out.push(svg);
        }
    }
    Ok(out)
}

/// Stacked bars: one bar per measured startup row, one segment per phase
/// (median ms); rows without a timeline are one `total` segment. `None` if no
/// row was measured.
pub fn startup_svg(rows: &[StartupResult], title: &str) -> Result<Option<String>, ChartError> {
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
    let labels: Vec<String> = rows.iter().map(|r| r.label.clone()).collect();
    stacked_bars(&labels, &stacks, title, "ms", "startup").map(Some)
}

/// Stacked bars, one per label, one colored segment per name in `stacks`
/// (a single segment draws plain bars), with a legend.
fn stacked_bars(
    labels: &[String],
    stacks: &[Vec<(String, f64)>],
    title: &str,
    y_desc: &str,
    chart_name: &'static str,
) -> Result<String, ChartError> {
    let mut names: Vec<String> = Vec::new();
    for s in stacks {
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
        * 1.1;
    let err = draw_err(chart_name);
    // Bars at most 160 px wide, with at least a tenth of their slot free.
    let slot = (WIDTH - LEGEND_W - 100) as f64 / labels.len() as f64;
    let gap = ((slot - (slot * 0.8).min(160.0)) / 2.0) as u32;
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (WIDTH, 420)).into_drawing_area();
        root.fill(&WHITE).map_err(&err)?;
        let (plot, legend) = root.split_horizontally(WIDTH - LEGEND_W);
        let mut chart = ChartBuilder::on(&plot)
            .caption(title, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(56)
            .build_cartesian_2d((0..labels.len() - 1).into_segmented(), 0f64..top)
            .map_err(&err)?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .y_desc(y_desc)
            .x_labels(labels.len())
            .x_label_formatter(&|v: &SegmentValue<usize>| match v {
                SegmentValue::CenterOf(i) => labels.get(*i).cloned().unwrap_or_default(),
                _ => String::new(),
            })
            .draw()
            .map_err(&err)?;
        let mut entries = Vec::new();
        for (ni, name) in names.iter().enumerate() {
            let color = Palette99::pick(ni).mix(0.9);
            entries.push((name.clone(), color));
            let mut bars: Vec<Rectangle<(SegmentValue<usize>, f64)>> = Vec::new();
            for (ri, stack) in stacks.iter().enumerate() {
                let mut base = 0.0;
                for (n, v) in stack {
                    if n == name {
                        // Integer segmented axes include their end value, so
                        // the axis is 0..n-1 and the last bar ends at `Last`.
                        let right = if ri + 1 == labels.len() {
                            SegmentValue::Last
                        } else {
                            SegmentValue::Exact(ri + 1)
                        };
                        let mut r = Rectangle::new(
                            [(SegmentValue::Exact(ri), base), (right, base + v)],
                            color.filled(),
                        );
                        r.set_margin(0, 0, gap, gap);
                        bars.push(r);
                    }
                    base += v;
                }
            }
            chart.draw_series(bars).map_err(&err)?;
        }
        draw_legend(&legend, &entries, Swatch::Block).map_err(&err)?;
        root.present().map_err(&err)?;
    }
    Ok(svg)
}

/// Network rows: a bar chart each for the 1-byte round trip (median),
/// bulk throughput and HTTP requests per second. Empty if none was measured.
pub fn network_svgs(rows: &[crate::network::NetworkResult]) -> Result<Vec<String>, ChartError> {
    let rows: Vec<_> = rows
        .iter()
        .filter(|r| r.status == crate::startup::RowStatus::Measured)
        .collect();
    let labels: Vec<String> = rows.iter().map(|r| r.label.clone()).collect();
    let rtt: Vec<f64> = rows.iter().map(|r| r.rtt_p50_us).collect();
    let bulk: Vec<f64> = rows.iter().map(|r| r.throughput_mbit_s).collect();
    let http: Vec<f64> = rows.iter().map(|r| r.http_rps).collect();
    one_bar_charts(
        &labels,
        &[
            ("Network: 1-byte TCP round trip, median (us)", "us", &rtt),
            ("Network: bulk TCP throughput (Mbit/s)", "Mbit/s", &bulk),
            ("Network: HTTP requests per second", "req/s", &http),
        ],
        "network",
    )
}

/// The pristine-db rows: the suite's time, and memory per instance.
pub fn pristine_svgs(rows: &[crate::pristine::PristineResult]) -> Result<Vec<String>, ChartError> {
    let rows: Vec<_> = rows
        .iter()
        .filter(|r| r.status == crate::startup::RowStatus::Measured)
        .collect();
    let labels: Vec<String> = rows.iter().map(|r| r.label.clone()).collect();
    let suite: Vec<f64> = rows.iter().map(|r| r.suite_s).collect();
    let pss: Vec<f64> = rows.iter().map(|r| r.pss_mib).collect();
    one_bar_charts(
        &labels,
        &[
            (
                "Pristine database per test: time for the whole suite (s)",
                "s",
                &suite,
            ),
            (
                "Pristine database per test: memory per instance, PSS (MiB)",
                "MiB",
                &pss,
            ),
        ],
        "pristine",
    )
}

/// One bar per row in each chart of `charts` (title, unit, a value per
/// label); none without labels.
fn one_bar_charts(
    labels: &[String],
    charts: &[(&str, &str, &[f64])],
    chart_name: &'static str,
) -> Result<Vec<String>, ChartError> {
    if labels.is_empty() {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    for (title, unit, values) in charts {
        let stacks: Vec<Vec<(String, f64)>> = values
            .iter()
            .map(|v| vec![(unit.to_string(), *v)])
            .collect();
        out.push(stacked_bars(labels, &stacks, title, unit, chart_name)?);
    }
    Ok(out)
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
        let (plot, legend) = root.split_horizontally(WIDTH - LEGEND_W);
        let mut chart: ChartContext<
            _,
            Cartesian2d<RangedCoordusize, plotters::coord::types::RangedCoordf64>,
        > = ChartBuilder::on(&plot)
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
        let mut entries = Vec::new();
        for (i, r) in results.iter().enumerate() {
            let color = Palette99::pick(i).to_rgba();
            entries.push((r.label.clone(), color));
            let pts: Vec<(usize, f64)> = r.points.iter().map(|p| (p.k, y(p))).collect();
            chart
                .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))
                .map_err(&err)?;
            chart
                .draw_series(pts.into_iter().map(|p| Circle::new(p, 3, color.filled())))
                .map_err(&err)?;
        }
        draw_legend(&legend, &entries, Swatch::Line).map_err(&err)?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::startup::{RowStatus, SegmentStat};
    use crate::stats::summarize;
    use crate::Kind;

    fn row(label: &str, kind: Kind, wall: f64, segments: &[(&str, f64)]) -> StartupResult {
        StartupResult {
            label: label.into(),
            kind,
            status: RowStatus::Measured,
            runs: 1,
            warmup: 0,
            wall_ms: summarize(&[wall]),
            segments: segments
                .iter()
                .map(|(n, v)| SegmentStat {
                    name: n.to_string(),
                    ms: summarize(&[*v]).unwrap(),
                })
                .collect(),
            samples_ms: vec![wall],
        }
    }

    #[test]
    fn one_bar_per_row_and_one_rect_per_segment() {
        // A single row (a one-segment axis) must draw too.
        let one = startup_svg(&[row("runc", Kind::Container, 30.0, &[])], "t")
            .unwrap()
            .unwrap();
        assert!(one.contains("runc") && one.contains("total"));
        // The bar itself: the first palette colour, as legend swatch and as a
        // bar with a positive width.
        let bar = one
            .split("<rect")
            .filter(|r| r.contains("#E6194B"))
            .filter(|r| !r.contains("width=\"-") && !r.contains("width=\"0\""))
            .count();
        assert_eq!(bar, 2, "{one}");
        let two = startup_svg(
            &[
                row("a", Kind::Container, 10.0, &[("exec", 1.0), ("ready", 9.0)]),
                row(
                    "b",
                    Kind::Container,
                    20.0,
                    &[("exec", 2.0), ("ready", 18.0)],
                ),
            ],
            "t",
        )
        .unwrap()
        .unwrap();
        // 2 rows x 2 segments, plus 2 legend swatches.
        let bars = two.matches("<rect").count();
        assert!(bars >= 6, "{bars} rects");
        assert!(startup_svg(&[], "t").unwrap().is_none());
    }

    #[test]
    fn vms_get_their_own_chart() {
        let rows = [
            row("duet container", Kind::Container, 10.0, &[("ready", 10.0)]),
            row("duet vm", Kind::Vm, 1000.0, &[("ready", 1000.0)]),
        ];
        let svgs = startup_svgs(&rows).unwrap();
        assert_eq!(svgs.len(), 2);
        assert!(svgs[0].contains("containers") && !svgs[0].contains("duet vm"));
        assert!(svgs[1].contains("VMs") && svgs[1].contains("duet vm"));
    }
}
