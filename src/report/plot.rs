//! Pictures of training runs: `wgslm plot RUN_DIR... --out FILE.svg|png`, and the `metrics.svg` that
//! `wgslm train` rewrites in its run directory at every evaluation.
//!
//! Six panels: train and validation loss against steps and against tokens, the learning rate, the
//! gradient norm, tokens per second, and a summary of each run; several runs overlay, one colour each.

use std::path::{Path, PathBuf};

use plotters::coord::Shift;
use plotters::prelude::*;

use super::charts::{self, color, drawing_error, ensure_font};
use crate::train::metrics;
use crate::train::TrainConfig;
use crate::{fsutil, Error, Result};

/// The picture `wgslm train` keeps in its run directory.
pub const RUN_PLOT: &str = "metrics.svg";

/// One optimizer step's line of metrics.jsonl.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepPoint {
    pub step: u64,
    /// NaN where the step's loss was not finite (written as a string).
    pub loss: f64,
    pub lr: f64,
    pub grad_norm: f64,
    pub tokens_per_s: f64,
}

/// A run directory's metrics.
#[derive(Clone, Debug)]
pub struct RunMetrics {
    /// The directory's name: the legend.
    pub name: String,
    pub steps: Vec<StepPoint>,
    /// (step, validation loss).
    pub val: Vec<(u64, f64)>,
    /// Tokens per optimizer step, from the run's config.toml (None if it has none).
    pub tokens_per_step: Option<u64>,
}

fn number(v: &serde_json::Value) -> Option<f64> {
    // Non-finite losses are written as strings ("NaN", "inf").
    v.as_f64().or_else(|| v.as_str().and_then(|s| s.parse().ok()))
}

/// Reads `dir/metrics.jsonl` (and `dir/config.toml` for tokens per step). A line that is not JSON is an
/// error naming its line; a later line for the same step replaces an earlier one.
pub fn read_run(dir: &Path) -> Result<RunMetrics> {
    let path = dir.join(metrics::FILE);
    if !path.is_file() {
        return Err(Error::Invalid(format!(
            "{}: no {} here; expected a run directory written by `wgslm train`",
            dir.display(),
            metrics::FILE
        )));
    }
    let text = String::from_utf8(fsutil::read(&path)?)
        .map_err(|_| Error::Invalid(format!("{}: not UTF-8 text", path.display())))?;
    // Keyed by step: a later line for the same step (a resumed run) replaces an earlier one.
    let mut steps = std::collections::BTreeMap::<u64, StepPoint>::new();
    let mut val = std::collections::BTreeMap::<u64, f64>::new();
    let count = text.lines().count();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let v: serde_json::Value = match serde_json::from_str(line) {
            Ok(v) => v,
            // A run still writing may have a half-written last line; it is read next time.
            Err(_) if i + 1 == count && !text.ends_with('\n') => break,
            Err(e) => {
                return Err(Error::Invalid(format!("{}:{}: not a JSON line ({e})", path.display(), i + 1)))
            }
        };
        let Some(step) = v.get("step").and_then(|s| s.as_u64()) else {
            return Err(Error::Invalid(format!("{}:{}: a line without \"step\"", path.display(), i + 1)));
        };
        let field = |k: &str| v.get(k).and_then(number);
        if let Some(l) = field("val_loss") {
            val.insert(step, l);
        } else if let Some(loss) = field("loss") {
            let point = StepPoint {
                step,
                loss,
                lr: field("lr").unwrap_or(f64::NAN),
                grad_norm: field("grad_norm").unwrap_or(f64::NAN),
                tokens_per_s: field("tokens_per_s").unwrap_or(f64::NAN),
            };
            steps.insert(step, point);
        }
    }
    let (steps, val) = (steps.into_values().collect(), val.into_iter().collect());
    let tokens_per_step = std::fs::read_to_string(dir.join("config.toml"))
        .ok()
        .and_then(|t| TrainConfig::parse("config.toml", &t).ok())
        .and_then(|c| c.batch_size.checked_mul(c.block_size)?.checked_mul(c.grad_accum_steps))
        .map(|n| n as u64);
    let name = std::fs::canonicalize(dir)
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| dir.display().to_string());
    Ok(RunMetrics { name, steps, val, tokens_per_step })
}

/// The picture format, from the file name.
fn format_of(out: &Path) -> Result<&'static str> {
    match out.extension().and_then(|e| e.to_str()).map(|e| e.to_ascii_lowercase()).as_deref() {
        Some("svg") => Ok("svg"),
        Some("png") => Ok("png"),
        _ => Err(Error::Invalid(format!("--out {}: name an .svg or a .png file", out.display()))),
    }
}

/// Size of the picture, in pixels.
pub const SIZE: (u32, u32) = (1500, 900);

/// Draws `runs` into `out` (.svg or .png), written atomically.
pub fn plot(runs: &[RunMetrics], out: &Path) -> Result<()> {
    let format = format_of(out)?;
    if runs.is_empty() {
        return Err(Error::Invalid("no run directories to plot".into()));
    }
    ensure_font();
    let bytes = match format {
        "svg" => {
            let mut svg = String::new();
            draw(SVGBackend::with_string(&mut svg, SIZE).into_drawing_area(), runs)?;
            svg.into_bytes()
        }
        _ => {
            let mut rgb = vec![0u8; (SIZE.0 * SIZE.1 * 3) as usize];
            draw(BitMapBackend::with_buffer(&mut rgb, SIZE).into_drawing_area(), runs)?;
            encode_png(&rgb, SIZE, out)?
        }
    };
    fsutil::write_atomic(out, &bytes)
}

fn encode_png(rgb: &[u8], (w, h): (u32, u32), out: &Path) -> Result<Vec<u8>> {
    let fail = |e: png::EncodingError| Error::Invalid(format!("{}: encoding PNG: {e}", out.display()));
    let mut bytes = Vec::new();
    let mut encoder = png::Encoder::new(&mut bytes, w, h);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder.write_header().map_err(fail)?;
    writer.write_image_data(rgb).map_err(fail)?;
    writer.finish().map_err(fail)?;
    Ok(bytes)
}

/// Rewrites the picture of the run in `dir` (`wgslm train` at each evaluation). A failure is only
/// logged: a picture is never worth stopping a run for.
pub fn refresh_run_plot(dir: &Path) {
    let result = read_run(dir).and_then(|run| plot(&[run], &dir.join(RUN_PLOT)));
    if let Err(e) = result {
        log::warn!("{}: could not draw {RUN_PLOT}: {e}", dir.display());
    }
}

/// One line of one panel: points and whether to mark them (sparse series such as validation loss).
struct Line {
    run: usize,
    label: String,
    points: Vec<(f64, f64)>,
    marked: bool,
}

/// The largest magnitude drawn: a diverged run's 1e30 loss would flatten every other point, and near
/// f64::MAX the axis arithmetic overflows (plotters then never finishes placing its labels).
pub const DRAWN_MAX: f64 = 1e15;

/// The points that can be drawn: finite and within [`DRAWN_MAX`].
fn finite(points: impl Iterator<Item = (f64, f64)>) -> Vec<(f64, f64)> {
    let ok = |v: f64| v.is_finite() && v.abs() <= DRAWN_MAX;
    points.filter(|&(x, y)| ok(x) && ok(y)).collect()
}

fn draw<DB: DrawingBackend>(root: DrawingArea<DB, Shift>, runs: &[RunMetrics]) -> Result<()>
where
    DB::ErrorType: 'static,
{
    let err = drawing_error("the training plot");
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let panels = root.split_evenly((2, 3));
    let by_step = |f: fn(&StepPoint) -> f64, name: &str| -> Vec<Line> {
        runs.iter()
            .enumerate()
            .map(|(r, run)| Line {
                run: r,
                label: format!("{} {name}", run.name),
                points: finite(run.steps.iter().map(|p| (p.step as f64, f(p)))),
                marked: false,
            })
            .collect()
    };
    let mut loss = by_step(|p| p.loss, "train");
    let mut loss_tokens = Vec::new();
    for (r, run) in runs.iter().enumerate() {
        loss.push(Line {
            run: r,
            label: format!("{} val", run.name),
            points: finite(run.val.iter().map(|&(s, l)| (s as f64, l))),
            marked: true,
        });
        if let Some(tps) = run.tokens_per_step {
            // In f64: a step count from the file times the tokens per step may not fit a u64.
            let tokens = |s: u64| s as f64 * tps as f64;
            loss_tokens.push(Line {
                run: r,
                label: format!("{} train", run.name),
                points: finite(run.steps.iter().map(|p| (tokens(p.step), p.loss))),
                marked: false,
            });
            loss_tokens.push(Line {
                run: r,
                label: format!("{} val", run.name),
                points: finite(run.val.iter().map(|&(s, l)| (tokens(s), l))),
                marked: true,
            });
        }
    }
    panel(&panels[0], "loss", "step", &loss, true)?;
    panel(&panels[1], "loss against tokens", "tokens", &loss_tokens, false)?;
    panel(&panels[2], "learning rate", "step", &by_step(|p| p.lr, "lr"), false)?;
    panel(&panels[3], "gradient norm (before clipping)", "step", &by_step(|p| p.grad_norm, "norm"), false)?;
    panel(&panels[4], "tokens per second", "step", &by_step(|p| p.tokens_per_s, "tok/s"), false)?;
    summary(&panels[5], runs)?;
    root.present().map_err(|e| err(&e))?;
    Ok(())
}

fn span(values: impl Iterator<Item = f64> + Clone) -> (f64, f64) {
    let lo = values.clone().fold(f64::INFINITY, f64::min);
    let hi = values.fold(f64::NEG_INFINITY, f64::max);
    if !lo.is_finite() || !hi.is_finite() {
        return (0.0, 1.0);
    }
    let pad = if hi > lo { (hi - lo) * 0.05 } else { lo.abs().max(1.0) * 0.05 };
    (lo - pad, hi + pad)
}

fn panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    title: &str,
    x_desc: &str,
    lines: &[Line],
    legend: bool,
) -> Result<()>
where
    DB::ErrorType: 'static,
{
    let err = drawing_error(title);
    let points = || lines.iter().flat_map(|l| l.points.iter());
    let (x0, x1) = span(points().map(|p| p.0));
    let (y0, y1) = span(points().map(|p| p.1));
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 18))
        .margin(10)
        .x_label_area_size(36)
        .y_label_area_size(62)
        .build_cartesian_2d(x0..x1, y0..y1)
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .x_desc(x_desc)
        .x_labels(6)
        .y_labels(6)
        .x_label_formatter(&|v| compact(*v))
        .y_label_formatter(&|v| compact(*v))
        .label_style(("sans-serif", 12))
        .draw()
        .map_err(|e| err(&e))?;
    if lines.iter().all(|l| l.points.is_empty()) {
        return Ok(());
    }
    for line in lines.iter().filter(|l| !l.points.is_empty()) {
        let c = color(line.run);
        let style = if line.marked { c.stroke_width(2) } else { c.mix(0.75).stroke_width(1) };
        let series =
            chart.draw_series(LineSeries::new(line.points.iter().copied(), style)).map_err(|e| err(&e))?;
        if legend {
            let legend_style = style;
            series
                .label(line.label.clone())
                .legend(move |(x, y)| PathElement::new([(x, y), (x + 16, y)], legend_style));
        }
        if line.marked {
            chart
                .draw_series(line.points.iter().map(|&p| Circle::new(p, 3, c.filled())))
                .map_err(|e| err(&e))?;
        }
    }
    if legend {
        charts::legend(&mut chart).map_err(|e| err(&e))?;
    }
    Ok(())
}

/// The last panel: each run's name, steps, last train loss and best validation loss, in its colour.
fn summary<DB: DrawingBackend>(area: &DrawingArea<DB, Shift>, runs: &[RunMetrics]) -> Result<()>
where
    DB::ErrorType: 'static,
{
    let err = drawing_error("the run summary");
    let title = ("sans-serif", 18).into_font().color(&BLACK);
    area.draw(&Text::new("runs", (20, 14), title)).map_err(|e| err(&e))?;
    for (i, run) in runs.iter().enumerate() {
        let last = run.steps.last();
        let best = run.val.iter().map(|v| v.1).filter(|v| v.is_finite()).fold(f64::INFINITY, f64::min);
        let line = format!(
            "{}: {} steps, loss {}, best val {}",
            run.name,
            last.map_or(0, |p| p.step),
            last.map_or("-".into(), |p| format!("{:.4}", p.loss)),
            if best.is_finite() { format!("{best:.4}") } else { "-".into() }
        );
        let style = ("sans-serif", 14).into_font().color(&color(i));
        area.draw(&Text::new(line, (20, 46 + 22 * i as i32), style)).map_err(|e| err(&e))?;
    }
    Ok(())
}

/// An axis label: 1.2k, 3.4M, 0.0003 → 3e-4.
fn compact(v: f64) -> String {
    let a = v.abs();
    if a == 0.0 {
        "0".into()
    } else if a >= 1e6 {
        format!("{:.1}M", v / 1e6)
    } else if a >= 1e4 {
        format!("{:.0}k", v / 1e3)
    } else if a >= 1.0 {
        format!("{v:.4}").trim_end_matches('0').trim_end_matches('.').to_string()
    } else if a >= 1e-2 {
        format!("{v:.3}")
    } else {
        format!("{v:.1e}").replace(".0e", "e")
    }
}

/// The run directories named on the command line, each read.
pub fn read_runs(dirs: &[PathBuf]) -> Result<Vec<RunMetrics>> {
    dirs.iter().map(|d| read_run(d)).collect()
}
