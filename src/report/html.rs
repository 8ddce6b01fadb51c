//! `wgslm report`: one self-contained HTML page comparing machines side by side (no network, no
//! scripts; charts are inline SVG).
//!
//! One column per adapter, in the order the files were given. Sections: the machines, `verify`'s
//! verdict per kernel (a failure is red and its cases are listed, never hidden), the kernel variants'
//! rates with a bar chart per shape (drop-in kernels from `bench kernels --shader --json` are rows and
//! bars beside our variants, in a column of their own), and training speed and memory per config.

use std::fmt::Write as _;

use super::charts::{grouped_bars, Bars};
use super::{Adapter, Input, Suite, TrainResult};
use crate::bench::kernels::Timing;
use crate::Result;

/// How the report writes a kernel's rate (GFLOP/s or GB/s).
pub fn fmt_rate(v: f64) -> String {
    format!("{v:.2}")
}
/// Training tokens per second.
pub fn fmt_tokens(v: f64) -> String {
    format!("{v:.0}")
}
/// Milliseconds per step.
pub fn fmt_ms(v: f64) -> String {
    format!("{v:.1}")
}
/// Bytes as MiB.
pub fn fmt_mib(bytes: u64) -> String {
    format!("{:.1}", bytes as f64 / (1u64 << 20) as f64)
}

/// Escapes text for HTML content and attribute values.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A table cell: text, an optional class (pass, fail, skip, missing) and an optional tooltip.
struct Cell {
    text: String,
    class: &'static str,
    title: String,
}

impl Cell {
    fn plain(text: impl Into<String>) -> Self {
        Cell { text: text.into(), class: "", title: String::new() }
    }
    fn with(text: impl Into<String>, class: &'static str) -> Self {
        Cell { text: text.into(), class, title: String::new() }
    }
    fn missing() -> Self {
        Cell::with("—", "missing")
    }
}

/// The page being written: a small writer whose every text goes through [`esc`].
struct Page {
    html: String,
}

impl Page {
    fn new(title: &str) -> Self {
        let mut html = String::new();
        let _ = write!(
            html,
            "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>{}</title>\n<style>{}</style>\n</head>\n<body>\n",
            esc(title),
            STYLE
        );
        Page { html }
    }

    fn heading(&mut self, level: u8, text: &str) {
        let _ = writeln!(self.html, "<h{level}>{}</h{level}>", esc(text));
    }

    fn para(&mut self, text: &str, class: &str) {
        let _ = writeln!(self.html, "<p class=\"{class}\">{}</p>", esc(text));
    }

    fn list(&mut self, items: &[String], class: &str) {
        let _ = writeln!(self.html, "<ul class=\"{class}\">");
        for i in items {
            let _ = writeln!(self.html, "<li>{}</li>", esc(i));
        }
        self.html.push_str("</ul>\n");
    }

    /// A table with a header row; the first cell of each row is its row header.
    fn table(&mut self, head: &[String], rows: &[Vec<Cell>]) {
        self.html.push_str("<table>\n<thead><tr>");
        for h in head {
            let _ = write!(self.html, "<th>{}</th>", esc(h));
        }
        self.html.push_str("</tr></thead>\n<tbody>\n");
        for row in rows {
            self.html.push_str("<tr>");
            for (i, c) in row.iter().enumerate() {
                let tag = if i == 0 { "th" } else { "td" };
                let _ = write!(self.html, "<{tag}");
                if !c.class.is_empty() {
                    let _ = write!(self.html, " class=\"{}\"", c.class);
                }
                if !c.title.is_empty() {
                    let _ = write!(self.html, " title=\"{}\"", esc(&c.title));
                }
                let _ = write!(self.html, ">{}</{tag}>", esc(&c.text));
            }
            self.html.push_str("</tr>\n");
        }
        self.html.push_str("</tbody>\n</table>\n");
    }

    /// An SVG drawn by plotters (generated here, not user text).
    fn figure(&mut self, svg: &str) {
        let _ = writeln!(self.html, "<figure>{svg}</figure>");
    }

    fn finish(mut self) -> String {
        self.html.push_str("</body>\n</html>\n");
        self.html
    }
}

const STYLE: &str = "body{font-family:sans-serif;margin:24px;color:#222;max-width:1500px}\
table{border-collapse:collapse;margin:8px 0 20px}th,td{border:1px solid #ccc;padding:4px 8px;text-align:left;font-size:13px;vertical-align:top}\
thead th{background:#eee}tbody th{font-weight:normal;background:#fafafa}\
td.pass{background:#dff3df}td.fail{background:#f8d0d0;color:#900;font-weight:bold}td.skip{background:#fff3cd}td.missing{color:#999}\
ul.fail{color:#900}p.note{color:#555;font-size:13px}figure{margin:8px 0}";

/// One column of the report: an adapter with its suite, or with the results of a `bench kernels` file.
struct Column<'a> {
    label: String,
    adapter: &'a Adapter,
    suite: Option<&'a Suite>,
    kernels: Vec<&'a Timing>,
}

fn columns<'a>(inputs: impl Iterator<Item = &'a Input>) -> Vec<Column<'a>> {
    let mut cols: Vec<Column> = Vec::new();
    for input in inputs {
        match input {
            Input::Suite(s) => cols.push(Column {
                label: s.adapter.label(),
                adapter: &s.adapter,
                suite: Some(s),
                kernels: s.kernels.iter().collect(),
            }),
            // Its own column, even beside a suite of the same adapter: both measured our variants,
            // and the report hides neither.
            Input::Kernels(k) => cols.push(Column {
                label: format!("{} · bench kernels", k.adapter.label()),
                adapter: &k.adapter,
                suite: None,
                kernels: k.results.iter().collect(),
            }),
        }
    }
    // Two files from the same adapter (two runs, or two machines with the same card) stay apart.
    let mut seen: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    for c in &mut cols {
        let n = seen.entry(c.label.clone()).or_insert(0);
        *n += 1;
        if *n > 1 {
            c.label = format!("{} #{n}", c.label);
        }
    }
    cols
}

/// The report page for `inputs` (each with the name of its file).
pub fn render(inputs: &[(String, Input)]) -> Result<String> {
    let cols = columns(inputs.iter().map(|(_, i)| i));
    let mut page = Page::new("wgslm benchmark report");
    page.heading(1, "wgslm benchmark report");
    page.para(
        &format!(
            "{} adapter(s) from {} file(s), made {} by wgslm {}.",
            cols.len(),
            inputs.len(),
            super::now(),
            env!("CARGO_PKG_VERSION")
        ),
        "note",
    );
    page.list(&inputs.iter().map(|(name, _)| name.clone()).collect::<Vec<_>>(), "files");
    let head: Vec<String> =
        std::iter::once(String::new()).chain(cols.iter().map(|c| c.label.clone())).collect();

    machines(&mut page, &cols, &head);
    verify(&mut page, &cols, &head);
    kernels(&mut page, &cols, &head)?;
    training(&mut page, &cols, &head)?;
    Ok(page.finish())
}

fn suite_cell(c: &Column, f: impl Fn(&Suite) -> String) -> Cell {
    c.suite.map_or_else(Cell::missing, |s| Cell::plain(f(s)))
}

fn machines(page: &mut Page, cols: &[Column], head: &[String]) {
    page.heading(2, "Machines");
    type Field = (&'static str, fn(&Column) -> Cell);
    let fields: [Field; 11] = [
        ("adapter", |c| Cell::plain(c.adapter.name.clone())),
        ("API", |c| Cell::plain(c.adapter.api.clone())),
        ("type", |c| Cell::plain(c.adapter.device_type.clone())),
        ("driver", |c| Cell::plain(c.adapter.driver.clone())),
        ("features", |c| {
            Cell::plain(if c.adapter.features.is_empty() {
                "none".into()
            } else {
                c.adapter.features.join(", ")
            })
        }),
        ("limits", |c| {
            Cell::plain(
                c.adapter.limits.iter().map(|(k, v)| format!("{k} {v}")).collect::<Vec<_>>().join("; "),
            )
        }),
        ("OS", |c| suite_cell(c, |s| format!("{} ({})", s.machine.os, s.machine.arch))),
        ("CPU", |c| suite_cell(c, |s| format!("{} ({} cores)", s.machine.cpu, s.machine.cores))),
        ("wgslm", |c| suite_cell(c, |s| format!("{} ({})", s.machine.wgslm, s.machine.commit))),
        ("suite", |c| {
            suite_cell(c, |s| {
                format!("{} · {} · {:.0} s", s.created, if s.quick { "quick" } else { "full" }, s.seconds)
            })
        }),
        ("verify", |c| match c.suite {
            None => Cell::missing(),
            Some(s) => {
                let failed = s.verify.iter().filter(|r| !r.failures.is_empty()).count();
                let skipped = s.verify.iter().filter(|r| r.skipped.is_some()).count();
                let run = s.verify.len() - skipped;
                if failed > 0 {
                    Cell::with(format!("FAIL: {failed} of {run} kernels"), "fail")
                } else if run == 0 {
                    Cell::with("not run", "fail")
                } else {
                    let skip = if skipped > 0 { format!(", {skipped} skipped") } else { String::new() };
                    Cell::with(format!("PASS: {run} kernels{skip}"), "pass")
                }
            }
        }),
    ];
    let rows: Vec<Vec<Cell>> = fields
        .iter()
        .map(|(name, f)| std::iter::once(Cell::plain(*name)).chain(cols.iter().map(f)).collect())
        .collect();
    page.table(head, &rows);
}

fn verify(page: &mut Page, cols: &[Column], head: &[String]) {
    page.heading(2, "Verify: every kernel against its CPU twin");
    page.para(
        "Each case compares the kernel's outputs with the CPU twin's (relative L2 within 1e-5, each element \
         within 1e-4 of the output's scale) and runs twice for identical bits. A quick suite runs the smallest \
         cases of each kernel.",
        "note",
    );
    let mut names: Vec<String> = Vec::new();
    for c in cols {
        for r in c.suite.iter().flat_map(|s| &s.verify) {
            if !names.contains(&r.name()) {
                names.push(r.name());
            }
        }
    }
    let rows: Vec<Vec<Cell>> = names
        .iter()
        .map(|name| {
            let cells = cols.iter().map(|c| {
                match c.suite.and_then(|s| s.verify.iter().find(|r| r.name() == *name)) {
                    None => Cell::missing(),
                    Some(r) => {
                        let class = if r.skipped.is_some() {
                            "skip"
                        } else if r.passed() {
                            "pass"
                        } else {
                            "fail"
                        };
                        let mut cell = Cell::with(r.verdict(), class);
                        if r.skipped.is_none() {
                            cell.title = format!("{} cases, worst relative L2 {:.2e}", r.cases, r.worst);
                        }
                        cell
                    }
                }
            });
            std::iter::once(Cell::plain(name.clone())).chain(cells).collect()
        })
        .collect();
    page.table(head, &rows);
    for c in cols {
        let lines: Vec<String> =
            c.suite.iter().flat_map(|s| &s.verify).flat_map(|r| r.failures.clone()).collect();
        if !lines.is_empty() {
            page.para(&format!("Failed cases on {}:", c.label), "");
            page.list(&lines, "fail");
        }
    }
}

fn timing_cell(t: Option<&Timing>) -> Cell {
    match t {
        None => Cell::missing(),
        Some(t) if !t.passed => {
            let why = t.failure.clone().unwrap_or_else(|| format!("relative L2 {:.1e}", t.error));
            Cell::with(format!("FAIL: {why}"), "fail")
        }
        Some(t) => match t.rate {
            Some(r) => {
                let mut cell = Cell::plain(format!("{} {}", fmt_rate(r), t.unit));
                if let Some(ms) = t.ms {
                    cell.title = format!("{ms:.3} ms, timed by {}", t.method);
                }
                cell
            }
            None => Cell::with("checked, not timed", "skip"),
        },
    }
}

fn kernels(page: &mut Page, cols: &[Column], head: &[String]) -> Result<()> {
    page.heading(2, "Kernels: every variant, checked then timed");
    let mut keys: Vec<(String, String, String)> = Vec::new();
    for c in cols {
        for t in &c.kernels {
            let key = (t.kernel.clone(), t.variant.clone(), t.shape.clone());
            if !keys.contains(&key) {
                keys.push(key);
            }
        }
    }
    if keys.is_empty() {
        page.para("No kernel results in these files.", "note");
        return Ok(());
    }
    fn find<'a>(c: &Column<'a>, k: &(String, String, String)) -> Option<&'a Timing> {
        c.kernels.iter().find(|t| t.kernel == k.0 && t.variant == k.1 && t.shape == k.2).copied()
    }
    let rows: Vec<Vec<Cell>> = keys
        .iter()
        .map(|k| {
            let name = format!("{} {} at {}", k.0, k.1, k.2);
            std::iter::once(Cell::plain(name)).chain(cols.iter().map(|c| timing_cell(find(c, k)))).collect()
        })
        .collect();
    page.table(head, &rows);
    // One chart per kernel and shape: a group of bars per variant, a bar per adapter.
    let mut groups: Vec<(String, String)> = Vec::new();
    for k in &keys {
        let g = (k.0.clone(), k.2.clone());
        if !groups.contains(&g) {
            groups.push(g);
        }
    }
    for (kernel, shape) in groups {
        let variants: Vec<String> =
            keys.iter().filter(|k| k.0 == kernel && k.2 == shape).map(|k| k.1.clone()).collect();
        let unit = cols
            .iter()
            .flat_map(|c| &c.kernels)
            .find(|t| t.kernel == kernel && t.shape == shape)
            .map_or("", |t| t.unit.as_str());
        let series = per_column(cols, &variants, |c, v| {
            let key = (kernel.clone(), v.clone(), shape.clone());
            find(c, &key).filter(|t| t.passed).and_then(|t| t.rate)
        });
        page.figure(&grouped_bars(&format!("{kernel} at {shape}"), unit, &variants, &series)?);
    }
    Ok(())
}

/// One bar series per column: its value for each category.
fn per_column(
    cols: &[Column],
    categories: &[String],
    value: impl Fn(&Column, &String) -> Option<f64>,
) -> Vec<Bars> {
    cols.iter()
        .map(|c| Bars { name: c.label.clone(), values: categories.iter().map(|k| value(c, k)).collect() })
        .collect()
}

fn training(page: &mut Page, cols: &[Column], head: &[String]) -> Result<()> {
    page.heading(2, "Training: tokens per second and memory");
    page.para(
        "`wgslm bench train` per config (random tokens of the config's vocabulary; the matmul kernels as \
         `wgslm train` picks them, or in a quick suite the variant that won the kernel stage): tokens per second and milliseconds per step over the timed steps after \
         two warm-up steps, and the bytes in GPU buffers against the analytic count.",
        "note",
    );
    let mut configs: Vec<String> = Vec::new();
    for c in cols {
        for t in c.suite.iter().flat_map(|s| &s.train) {
            if !configs.contains(&t.config) {
                configs.push(t.config.clone());
            }
        }
    }
    if configs.is_empty() {
        page.para("No training results in these files.", "note");
        return Ok(());
    }
    let find = |c: &Column, name: &str| -> Option<TrainResult> {
        c.suite.and_then(|s| s.train.iter().find(|t| t.config == name)).cloned()
    };
    type Metric = (&'static str, fn(&TrainResult) -> Option<String>);
    let metrics: [Metric; 5] = [
        ("tokens/s", |t| Some(fmt_tokens(t.tokens_per_s))),
        ("ms per step", |t| Some(fmt_ms(t.ms_per_step))),
        ("GPU MiB allocated", |t| t.allocated_bytes.map(fmt_mib)),
        ("analytic MiB", |t| Some(fmt_mib(t.analytic_bytes))),
        ("parameters, tokens per step, steps", |t| {
            Some(format!("{} {}, {}, {}", t.params, t.arch, t.tokens_per_step, t.steps))
        }),
    ];
    let mut rows = Vec::new();
    for name in &configs {
        for (metric, f) in &metrics {
            let cells = cols.iter().map(|c| match find(c, name) {
                None => Cell::missing(),
                Some(t) if t.error.is_some() => {
                    Cell::with(format!("FAIL: {}", t.error.unwrap_or_default()), "fail")
                }
                Some(t) => f(&t).map_or_else(Cell::missing, Cell::plain),
            });
            rows.push(std::iter::once(Cell::plain(format!("{name}: {metric}"))).chain(cells).collect());
        }
    }
    page.table(head, &rows);
    let chart = |title: &str, unit: &str, f: fn(&TrainResult) -> Option<f64>| {
        let series =
            per_column(cols, &configs, |c, n| find(c, n).filter(|t| t.error.is_none()).and_then(|t| f(&t)));
        grouped_bars(title, unit, &configs, &series)
    };
    page.figure(&chart("training tokens per second", "tokens/s", |t| Some(t.tokens_per_s))?);
    page.figure(&chart("GPU memory allocated", "MiB", |t| {
        t.allocated_bytes.map(|b| b as f64 / (1u64 << 20) as f64)
    })?);
    Ok(())
}
