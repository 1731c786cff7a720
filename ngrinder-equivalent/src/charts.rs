//! PNG charts (plotters): of an experiment, TPS over time per run and TPS
//! and p99 by vusers per strategy; of every run, TPS, latency and errors
//! over time ([`run_charts`]).

use std::path::Path;

use plotters::prelude::*;

use crate::stats::Sample;

/// One line of a chart.
#[derive(Debug, Clone)]
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

const COLORS: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
];

/// The y axis of a chart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scale {
    Linear,
    /// For values that differ by orders of magnitude (strategies 100× apart,
    /// latency percentiles); points at or below zero are left out.
    Log,
}

impl Scale {
    /// `Log` when the positive values span 100× or more, else `Linear`.
    pub fn fitting(series: &[Series]) -> Self {
        let positive = series
            .iter()
            .flat_map(|s| s.points.iter())
            .map(|&(_, y)| y)
            .filter(|y| *y > 0.0);
        let (lo, hi) = positive.fold((f64::MAX, 0.0f64), |(lo, hi), y| (lo.min(y), hi.max(y)));
        if hi > 0.0 && hi / lo >= 100.0 {
            Self::Log
        } else {
            Self::Linear
        }
    }
}

/// Width of the legend panel, right of the plot: the legend never covers
/// the data.
const LEGEND_WIDTH: u32 = 200;

/// Draws `series` as lines with markers into `path`, the y axis on `scale`,
/// the legend in a panel of its own beside the plot.
pub fn lines(
    path: &Path,
    title: &str,
    x_label: &str,
    y_label: &str,
    scale: Scale,
    series: &[Series],
) -> anyhow::Result<()> {
    let series: Vec<Series> = match scale {
        Scale::Linear => series.to_vec(),
        Scale::Log => series
            .iter()
            .map(|s| Series {
                name: s.name.clone(),
                points: s.points.iter().copied().filter(|&(_, y)| y > 0.0).collect(),
            })
            .collect(),
    };
    let all = series.iter().flat_map(|s| s.points.iter());
    let (mut x_max, mut y_max) = (1.0f64, 1.0f64);
    let (mut x_min, mut y_min) = (f64::MAX, f64::MAX);
    for &(x, y) in all {
        x_max = x_max.max(x);
        x_min = x_min.min(x);
        y_max = y_max.max(y);
        y_min = y_min.min(y);
    }
    if x_min == f64::MAX || x_min >= x_max {
        x_min = 0.0;
    }
    let root = BitMapBackend::new(path, (960 + LEGEND_WIDTH, 540)).into_drawing_area();
    root.fill(&WHITE)?;
    let (plot, legend) = root.split_horizontally(960);
    let x = x_min..x_max * 1.02;
    match scale {
        Scale::Linear => draw(&plot, title, x_label, y_label, x, 0.0..y_max * 1.1, &series)?,
        Scale::Log => {
            let y_min = if y_min == f64::MAX { 0.1 } else { y_min / 2.0 };
            draw(
                &plot,
                title,
                x_label,
                &format!("{y_label} (log scale)"),
                x,
                (y_min..y_max * 2.0).log_scale(),
                &series,
            )?;
        }
    }
    for (i, s) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let y = 60 + 24 * i as i32;
        legend.draw(&PathElement::new(
            vec![(8, y), (32, y)],
            color.stroke_width(3),
        ))?;
        legend.draw(&Text::new(s.name.clone(), (40, y - 8), ("sans-serif", 15)))?;
    }
    root.present()?;
    Ok(())
}

fn draw<'a, Y>(
    area: &DrawingArea<BitMapBackend<'a>, plotters::coord::Shift>,
    title: &str,
    x_label: &str,
    y_label: &str,
    x: std::ops::Range<f64>,
    y: Y,
    series: &[Series],
) -> anyhow::Result<()>
where
    Y: plotters::coord::ranged1d::AsRangedCoord<Value = f64>,
    Y::CoordDescType: plotters::coord::ranged1d::ValueFormatter<f64>,
{
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(x, y)?;
    chart
        .configure_mesh()
        .x_desc(x_label)
        .y_desc(y_label)
        .draw()?;
    for (i, s) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        chart.draw_series(LineSeries::new(
            s.points.iter().copied(),
            color.stroke_width(2),
        ))?;
        chart.draw_series(
            s.points
                .iter()
                .map(|&(x, y)| Circle::new((x, y), 3, color.filled())),
        )?;
    }
    Ok(())
}

/// The charts of one run, beside its JSON and CSV: `<stem>-tps.png` (TPS
/// over time), `<stem>-latency.png` (p50, p99, p99.9 of tests and p99 of
/// every request over time) and `<stem>-errors.png` (the share of requests
/// that failed, over time). The last sample is left out: it covers only
/// part of a second.
pub fn run_charts(dir: &Path, stem: &str, samples: &[Sample]) -> anyhow::Result<()> {
    let whole = match samples.split_last() {
        Some((_, rest)) if !rest.is_empty() => rest,
        _ => samples,
    };
    let over_time = |name: &str, value: &dyn Fn(&Sample) -> f64| Series {
        name: name.to_owned(),
        points: whole.iter().map(|s| (s.t as f64, value(s))).collect(),
    };
    const X: &str = "seconds (negative: warm-up)";
    let tps = [over_time("TPS (tests)", &|s| s.tps)];
    lines(
        &dir.join(format!("{stem}-tps.png")),
        &format!("TPS over time, {stem}"),
        X,
        "TPS",
        Scale::fitting(&tps),
        &tps,
    )?;
    let latency = [
        over_time("p50, tests", &|s| s.p50_ms),
        over_time("p99, tests", &|s| s.p99_ms),
        over_time("p99.9, tests", &|s| s.p999_ms),
        over_time("p99, every request", &|s| s.all_p99_ms),
    ];
    lines(
        &dir.join(format!("{stem}-latency.png")),
        &format!("Latency over time, {stem}"),
        X,
        "ms",
        Scale::fitting(&latency),
        &latency,
    )?;
    let errors = [over_time("errors / requests", &|s| {
        let all = s.tests + s.errors;
        if all == 0 {
            0.0
        } else {
            100.0 * s.errors as f64 / all as f64
        }
    })];
    lines(
        &dir.join(format!("{stem}-errors.png")),
        &format!("Error rate over time, {stem}"),
        X,
        "% of requests",
        Scale::Linear,
        &errors,
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn series(points: &[f64]) -> Vec<Series> {
        vec![Series {
            name: "s".into(),
            points: points
                .iter()
                .enumerate()
                .map(|(i, y)| (i as f64, *y))
                .collect(),
        }]
    }

    #[test]
    fn the_scale_turns_log_when_values_span_a_hundredfold() {
        assert_eq!(Scale::fitting(&series(&[150.0, 30_000.0])), Scale::Log);
        assert_eq!(
            Scale::fitting(&series(&[0.0, 300.0, 29_000.0])),
            Scale::Linear
        );
        assert_eq!(Scale::fitting(&series(&[])), Scale::Linear);
    }

    #[test]
    fn a_run_gets_its_three_charts() {
        let dir = std::env::temp_dir().join(format!("charts-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let samples: Vec<Sample> = (-2..10)
            .map(|t| Sample {
                t,
                tests: 1_000,
                errors: u64::from(t == 3) * 10,
                tps: 1_000.0,
                p50_ms: 2.0,
                p99_ms: 9.0,
                p999_ms: 30.0,
                all_p99_ms: if t == 3 { 5_000.0 } else { 9.0 },
                ..Sample::default()
            })
            .collect();
        run_charts(&dir, "run", &samples).unwrap();
        for chart in ["run-tps.png", "run-latency.png", "run-errors.png"] {
            let bytes = std::fs::metadata(dir.join(chart)).unwrap().len();
            assert!(bytes > 1_000, "{chart}: {bytes} bytes");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
