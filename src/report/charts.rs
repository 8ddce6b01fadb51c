//! Charts drawn with plotters: grouped bar charts for the report, and the shared font and palette.
//!
//! Text is laid out with a bundled font (DejaVu Sans, assets/fonts), so a chart looks the same on a
//! machine without fonts installed; an SVG names the family "sans-serif" and the viewer draws it.

use std::sync::OnceLock;

use plotters::coord::ranged1d::SegmentValue;
use plotters::prelude::*;

use crate::{Error, Result};

const FONT: &[u8] = include_bytes!("../../assets/fonts/DejaVuSans.ttf");

/// Registers the bundled font as "sans-serif" (once per process).
pub fn ensure_font() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        // The bytes are the committed font, checked by the tests; failing here would be a build defect.
        if plotters::style::register_font("sans-serif", FontStyle::Normal, FONT).is_err() {
            log::warn!("the bundled font did not load; charts will have no text");
        }
    });
}

/// The colour of series `i`: a palette that stays distinct for the first ten and cycles after.
pub fn color(i: usize) -> RGBColor {
    const PALETTE: [RGBColor; 10] = [
        RGBColor(31, 119, 180),
        RGBColor(255, 127, 14),
        RGBColor(44, 160, 44),
        RGBColor(214, 39, 40),
        RGBColor(148, 103, 189),
        RGBColor(140, 86, 75),
        RGBColor(227, 119, 194),
        RGBColor(127, 127, 127),
        RGBColor(188, 189, 34),
        RGBColor(23, 190, 207),
    ];
    PALETTE[i % PALETTE.len()]
}

/// Turns a plotters error into ours, naming what was being drawn.
pub fn drawing_error(what: &str) -> impl Fn(&dyn std::fmt::Display) -> Error + '_ {
    move |e| Error::Invalid(format!("drawing {what}: {e}"))
}

/// The legend every chart draws: upper right, on a translucent white box.
pub fn legend<'a, DB, CT>(
    chart: &mut ChartContext<'a, DB, CT>,
) -> std::result::Result<(), DrawingAreaErrorKind<DB::ErrorType>>
where
    DB: DrawingBackend + 'a,
    CT: plotters::coord::CoordTranslate,
{
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.4))
        .label_font(("sans-serif", 12))
        .draw()
}

/// One series of a bar chart: its name (the legend) and a value per category (None: no bar).
pub struct Bars {
    pub name: String,
    pub values: Vec<Option<f64>>,
}

/// A bar chart as SVG text: one group of bars per category, one bar per series in each group, the
/// value written above each bar.
pub fn grouped_bars(title: &str, y_desc: &str, categories: &[String], series: &[Bars]) -> Result<String> {
    ensure_font();
    let err = drawing_error(title);
    // A series with no value here (a column without this section) has no bar and no legend entry.
    // Values past 1e15 (a file can say anything) get no bar: near f64::MAX the axis overflows.
    let drawn = |v: &Option<f64>| v.filter(|v| v.is_finite() && v.abs() <= 1e15);
    let series: Vec<Bars> = series
        .iter()
        .map(|s| Bars { name: s.name.clone(), values: s.values.iter().map(drawn).collect() })
        .filter(|s| s.values.iter().any(Option::is_some))
        .collect();
    let per_group = series.len().max(1) + 1; // a gap after each group
    let segments = (categories.len() * per_group).max(1);
    let top = series.iter().flat_map(|s| s.values.iter().flatten()).fold(0.0f64, |a, &b| a.max(b));
    // Headroom for the value labels, and for the legend above the tallest bars.
    let top = if top > 0.0 { top * (1.15 + 0.1 * series.len() as f64) } else { 1.0 };
    let width = (160 + segments * 22).clamp(480, 1400) as u32;
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (width, 360)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| err(&e))?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(64)
            .build_cartesian_2d((0..segments).into_segmented(), 0f64..top)
            .map_err(|e| err(&e))?;
        let label = |v: &SegmentValue<usize>| match v {
            SegmentValue::CenterOf(i) if i % per_group == (per_group - 2) / 2 => {
                categories.get(i / per_group).cloned().unwrap_or_default()
            }
            _ => String::new(),
        };
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(segments + 1)
            .x_label_formatter(&label)
            .y_desc(y_desc)
            .y_label_style(("sans-serif", 12))
            .x_label_style(("sans-serif", 12))
            .draw()
            .map_err(|e| err(&e))?;
        for (j, s) in series.iter().enumerate() {
            let c = color(j);
            let bars = s.values.iter().enumerate().filter_map(|(i, v)| v.map(|v| (i * per_group + j, v)));
            chart
                .draw_series(bars.clone().map(|(x, v)| {
                    Rectangle::new(
                        [(SegmentValue::Exact(x), 0.0), (SegmentValue::Exact(x + 1), v)],
                        c.filled(),
                    )
                }))
                .map_err(|e| err(&e))?
                .label(s.name.clone())
                .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], c.filled()));
            chart
                .draw_series(bars.map(|(x, v)| {
                    Text::new(
                        short(v),
                        (SegmentValue::Exact(x), v + top * 0.01),
                        ("sans-serif", 10).into_font().color(&BLACK),
                    )
                }))
                .map_err(|e| err(&e))?;
        }
        if series.len() > 1 || series.first().is_some_and(|s| !s.name.is_empty()) {
            legend(&mut chart).map_err(|e| err(&e))?;
        }
        root.present().map_err(|e| err(&e))?;
    }
    Ok(svg)
}

/// A figure in few characters for a bar label: 3 significant digits.
fn short(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}
