//! The PNG: durable conditional appends (1 event/request), events/s and p99 latency against clients, one line per
//! system (medians over the rounds), log scales.

use std::path::Path;

use anyhow::Context as _;
use opossum_bench::report::peers::PeerDocument;
use plotters::prelude::*;

/// Where a sans-serif TrueType font usually is (plotters draws text with a font it is given).
const FONT_PATHS: [&str; 3] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
];
const COLORS: [RGBColor; 4] =
    [RGBColor(200, 60, 40), RGBColor(40, 90, 200), RGBColor(230, 150, 20), RGBColor(40, 150, 60)];

fn register_font() -> anyhow::Result<()> {
    let path = FONT_PATHS
        .iter()
        .find(|p| Path::new(p).exists())
        .context("no DejaVuSans.ttf for the plot's text (apt-get install fonts-dejavu-core)")?;
    // Registered once per process; plotters keeps a 'static reference.
    let bytes: &'static [u8] = Box::leak(std::fs::read(path)?.into_boxed_slice());
    plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
        .map_err(|_| anyhow::anyhow!("{path} is not a font plotters can read"))
}

/// Draws the plot of `doc` into `path`.
pub fn draw(doc: &PeerDocument, path: &Path) -> anyhow::Result<()> {
    register_font()?;
    let rows: Vec<_> = doc.rows.iter().filter(|r| r.name.starts_with("append_conditional_")).collect();
    anyhow::ensure!(!rows.is_empty(), "no conditional-append rows to plot");
    let systems: Vec<String> = doc.systems.iter().filter_map(|s| s["name"].as_str().map(String::from)).collect();
    let max_clients = rows.iter().map(|r| r.clients).max().unwrap_or(1).max(2) as f64;
    let series = |f: &dyn Fn(&opossum_bench::report::peers::Row, &str) -> Option<f64>| {
        systems
            .iter()
            .map(|s| {
                (s.clone(), rows.iter().filter_map(|r| f(r, s).map(|v| (r.clients as f64, v))).collect::<Vec<_>>())
            })
            .collect::<Vec<_>>()
    };
    let rate = series(&|r, s| r.median(s));
    let p99 = series(&|r, s| r.latency_median(s).map(|l| l.1));

    let root = BitMapBackend::new(path, (1400, 560)).into_drawing_area();
    root.fill(&WHITE)?;
    let root = root.titled(
        &format!(
            "durable conditional append, 1 event/request, {} events pre-filled ({} mode, {} rounds, medians)",
            doc.params["events"], doc.mode, doc.rounds
        ),
        ("sans-serif", 20),
    )?;
    let panels = root.split_evenly((1, 2));
    for (panel, (data, label)) in panels.iter().zip([(&rate, "events/s"), (&p99, "p99 latency, ms")]) {
        let values: Vec<f64> = data.iter().flat_map(|(_, v)| v.iter().map(|p| p.1)).filter(|v| *v > 0.0).collect();
        let lo = values.iter().copied().fold(f64::INFINITY, f64::min).clamp(1e-3, 1e12) / 2.0;
        let hi = values.iter().copied().fold(0.0, f64::max).max(lo * 4.0) * 2.0;
        let mut chart = ChartBuilder::on(panel)
            .margin(20)
            .x_label_area_size(45)
            .y_label_area_size(70)
            .build_cartesian_2d((0.8..max_clients * 1.25).log_scale(), (lo..hi).log_scale())?;
        chart
            .configure_mesh()
            .x_desc("clients")
            .y_desc(label)
            .x_label_formatter(&|x| format!("{x:.0}"))
            .y_label_formatter(&|y| if *y >= 10.0 { format!("{y:.0}") } else { format!("{y:.2}") })
            .label_style(("sans-serif", 14))
            .draw()?;
        for (i, (system, points)) in data.iter().enumerate() {
            let color = COLORS[i % COLORS.len()];
            chart
                .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))?
                .label(system.as_str())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
            chart.draw_series(points.iter().map(|p| Circle::new(*p, 4, color.filled())))?;
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .label_font(("sans-serif", 14))
            .position(SeriesLabelPosition::UpperLeft)
            .draw()?;
    }
    root.present()?;
    Ok(())
}
