//! `--plot FILE.svg`: what people look at instead of reading numbers. Two
//! charts, one line per run: acquire latency by percentile (log scale,
//! "nines" on the x axis: 90 %, 99 %, 99.9 %), and acquisitions per second
//! over the run. Open-loop runs plot latency from each cycle's intended
//! start (coordinated omission corrected).

use std::path::Path;

use plotters::prelude::*;

use crate::stats::Summary;

const COLOURS: [RGBColor; 4] = [
    RGBColor(214, 39, 40),
    RGBColor(31, 119, 180),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
];

/// Percentiles drawn up to 99.99 %: x is -log10(1 - q).
const MAX_NINES: f64 = 4.0;

pub fn draw(path: &Path, runs: &[Summary]) -> Result<(), String> {
    draw_inner(path, runs).map_err(|e| format!("--plot {}: {e}", path.display()))
}

fn draw_inner(path: &Path, runs: &[Summary]) -> Result<(), Box<dyn std::error::Error>> {
    let root = SVGBackend::new(path, (960, 760)).into_drawing_area();
    root.fill(&WHITE)?;
    let (top, bottom) = root.split_vertically(420);
    let first = runs.first().ok_or("no run to plot")?;
    let setup = &first.setup;
    let title = format!(
        "redlease workers: {} threads, {} keys, {} node(s), hold {:?}{}",
        setup.threads,
        setup.keys,
        setup.nodes,
        setup.hold,
        setup
            .rate
            .map_or(String::new(), |r| format!(", open loop {r}/s"))
    );

    fn latency(run: &Summary) -> &hdrhistogram::Histogram<u64> {
        if run.setup.rate.is_some() {
            &run.stats.response
        } else {
            &run.stats.latency
        }
    }
    let max_us = runs
        .iter()
        .map(|r| latency(r).max())
        .max()
        .unwrap_or(1)
        .max(10) as f64;
    let mut chart = ChartBuilder::on(&top)
        .caption(&title, ("sans-serif", 18))
        .margin(12)
        .margin_right(40)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..MAX_NINES, (1f64..max_us * 1.5).log_scale())?;
    chart
        .configure_mesh()
        .x_desc("percentile")
        .y_desc("acquire latency")
        .x_labels(5)
        .x_label_formatter(&|x| {
            // 0, 90, 99, 99.9, 99.99 %
            let digits = x.round().max(0.0) as usize;
            let q = 100.0 * (1.0 - 10f64.powf(-x));
            format!("{q:.*}%", digits.saturating_sub(2))
        })
        .y_label_formatter(&|us| {
            if *us >= 1000.0 {
                format!("{}ms", us / 1000.0)
            } else {
                format!("{us}µs")
            }
        })
        .draw()?;
    for (i, run) in runs.iter().enumerate() {
        let h = latency(run);
        if h.is_empty() {
            continue;
        }
        let colour = COLOURS[i % COLOURS.len()];
        let points = (0..=(MAX_NINES * 40.0) as usize).map(|step| {
            let x = step as f64 / 40.0;
            let q = 1.0 - 10f64.powf(-x);
            (x, h.value_at_quantile(q).max(1) as f64)
        });
        chart
            .draw_series(LineSeries::new(points, colour.stroke_width(2)))?
            .label(run.strategy())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], colour));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;

    let max_t = runs
        .iter()
        .map(|r| r.elapsed.as_secs_f64())
        .fold(1.0, f64::max);
    let max_rate = runs
        .iter()
        .flat_map(|r| r.timeline.iter().map(|&(_, rate)| rate))
        .fold(1.0, f64::max);
    let mut chart = ChartBuilder::on(&bottom)
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..max_t, 0f64..max_rate * 1.15)?;
    chart
        .configure_mesh()
        .x_desc("seconds into the run")
        .y_desc("acquisitions/s")
        .y_label_formatter(&|rate| format!("{rate:.0}"))
        .draw()?;
    for (i, run) in runs.iter().enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        chart
            .draw_series(LineSeries::new(
                run.timeline.iter().copied(),
                colour.stroke_width(2),
            ))?
            .label(run.strategy())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], colour));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}
