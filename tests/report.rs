//! Issue 15: `wgslm bench suite`, `wgslm report` and `wgslm plot`, looked at as a person would: the
//! page and the plot are rendered by headless Chromium to a screenshot that must be a non-blank image of
//! the expected size, and the page's text must hold every adapter and every figure of its inputs.
//!
//! Chromium (Debian's `chromium`) is installed by .ci/run, which sets WGSLM_REQUIRE_BROWSER=1 so that a
//! missing browser fails these tests there; elsewhere they say loudly that they skipped.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use wgslm::report::html::{fmt_mib, fmt_ms, fmt_rate, fmt_tokens};
use wgslm::report::{self, Input};

const BIN: &str = env!("CARGO_BIN_EXE_wgslm");

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/report")
}

/// A fresh directory, unique per call (tests run in parallel threads of one process).
fn temp(name: &str) -> PathBuf {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("wgslm-report-{}-{n}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn wgslm(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().unwrap()
}

fn ok(args: &[&str]) -> String {
    let out = wgslm(args);
    assert!(out.status.success(), "wgslm {args:?} failed:\n{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The stderr of a command that must fail, checked to be one line.
fn fails(args: &[&str]) -> String {
    let out = wgslm(args);
    assert!(!out.status.success(), "wgslm {args:?} should fail");
    let err = String::from_utf8_lossy(&out.stderr).trim().to_string();
    assert_eq!(err.lines().count(), 1, "one line expected:\n{err}");
    err
}

/// Headless Chromium, or None (after a loud line) when it is not installed and not required.
fn browser() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    for name in ["chromium", "chromium-browser", "google-chrome", "google-chrome-stable"] {
        if let Some(found) = std::env::split_paths(&path).map(|d| d.join(name)).find(|p| p.is_file()) {
            return Some(found);
        }
    }
    let require = std::env::var("WGSLM_REQUIRE_BROWSER").is_ok_and(|v| v == "1");
    assert!(!require, "WGSLM_REQUIRE_BROWSER=1 but no chromium is installed (apt-get install chromium)");
    let _ = writeln!(
        std::io::stderr(),
        "!!!!! BROWSER TESTS SKIPPED: no chromium (apt-get install chromium; WGSLM_REQUIRE_BROWSER=1 makes this a failure) !!!!!"
    );
    None
}

fn chromium(browser: &Path, args: &[&str], page: &Path) -> Output {
    let profile = temp("chromium-profile");
    let out = Command::new(browser)
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run"])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .arg(format!("file://{}", page.canonicalize().unwrap().display()))
        .output()
        .unwrap();
    assert!(out.status.success(), "chromium failed: {}", String::from_utf8_lossy(&out.stderr));
    out
}

/// The page's DOM after Chromium loaded it.
fn rendered_text(browser: &Path, page: &Path) -> String {
    String::from_utf8(chromium(browser, &["--dump-dom"], page).stdout).unwrap()
}

/// Screenshots `page` at `size`; asserts the image has that size and is not blank: many colours, and
/// a good share of pixels that are not the background.
fn assert_screenshot(browser: &Path, page: &Path, size: (u32, u32), what: &str) {
    let shot = temp("shot").join("shot.png");
    chromium(
        browser,
        &[&format!("--window-size={},{}", size.0, size.1), &format!("--screenshot={}", shot.display())],
        page,
    );
    assert_png(&shot, size, what);
}

fn assert_png(file: &Path, size: (u32, u32), what: &str) {
    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(file).unwrap()));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    assert_eq!((info.width, info.height), size, "{what}: image size");
    let channels = info.color_type.samples();
    let pixels: Vec<&[u8]> = buf[..info.buffer_size()].chunks(channels).collect();
    let background = pixels[0];
    let drawn = pixels.iter().filter(|p| p[..3] != background[..3]).count();
    let mut colours: Vec<[u8; 3]> = pixels.iter().map(|p| [p[0], p[1], p[2]]).collect();
    colours.sort_unstable();
    colours.dedup();
    assert!(
        drawn * 100 > pixels.len() && colours.len() > 20,
        "{what}: a blank picture ({drawn} of {} pixels drawn, {} colours)",
        pixels.len(),
        colours.len()
    );
}

/// Every figure the report promises to show, as it writes them.
fn figures(input: &Input) -> Vec<String> {
    let mut all = Vec::new();
    let (adapter, kernels) = match input {
        Input::Suite(s) => {
            for t in &s.train {
                all.push(fmt_tokens(t.tokens_per_s));
                all.push(fmt_ms(t.ms_per_step));
                all.extend(t.allocated_bytes.map(fmt_mib));
                all.push(fmt_mib(t.analytic_bytes));
            }
            (&s.adapter, &s.kernels)
        }
        Input::Kernels(k) => (&k.adapter, &k.results),
    };
    all.push(adapter.name.clone());
    all.push(adapter.label());
    all.extend(kernels.iter().filter(|t| t.passed).filter_map(|t| t.rate.map(fmt_rate)));
    all
}

#[test]
fn report_renders_every_adapter_and_figure() {
    let dir = temp("report");
    let mut files: Vec<PathBuf> = ["suite-lavapipe.json", "suite-llvmpipe-gl.json", "kernels-dropin.json"]
        .iter()
        .map(|f| fixtures().join(f))
        .collect();
    // A machine where one kernel failed verify, one variant failed its check and one config failed.
    let mut bad: serde_json::Value = serde_json::from_slice(&std::fs::read(&files[0]).unwrap()).unwrap();
    bad["verify"][3]["failures"] =
        serde_json::json!(["FAIL  layernorm_forward  N=7 C=24  rel L2 3.1e-2 (out)"]);
    bad["kernels"][1]["passed"] = serde_json::json!(false);
    bad["kernels"][1]["failure"] = serde_json::json!("wrong by 3%");
    bad["train"][1]["error"] = serde_json::json!("out of memory");
    files.push(dir.join("failing.json"));
    std::fs::write(&files[3], bad.to_string()).unwrap();
    files.push(files[3].clone()); // a third file of the same adapter
    let page = dir.join("report.html");
    let mut args = vec!["report"];
    args.extend(files.iter().map(|f| f.to_str().unwrap()));
    args.extend(["--out", page.to_str().unwrap()]);
    ok(&args);
    let html = std::fs::read_to_string(&page).unwrap();
    for external in ["src=\"http", "href=\"http", "@import", "url(http"] {
        assert!(!html.contains(external), "the page must load nothing from the network ({external})");
    }
    assert!(!html.contains("<script"), "the page needs no scripts");

    // Every input is read as what it is, and the old kernel file (no schema) still loads.
    let inputs: Vec<Input> = files.iter().map(|f| report::load(f).unwrap()).collect();
    assert!(matches!(inputs[0], Input::Suite(_)) && matches!(inputs[1], Input::Suite(_)));
    let Input::Kernels(k) = &inputs[2] else { panic!("kernels-dropin.json is a kernel benchmark") };
    assert!(k.schema.is_none() && k.results.iter().any(|t| t.variant.starts_with("custom")));

    let Some(browser) = browser() else { return };
    let text = rendered_text(&browser, &page);
    // Chromium's DOM dump escapes &, < and > in text (not quotes).
    let dom = |s: &str| s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;");
    for input in &inputs {
        for figure in figures(input) {
            assert!(text.contains(&dom(&figure)), "the page lacks {figure:?}");
        }
    }
    // Three suites of one adapter get three distinct columns.
    let head = &text[text.find("<thead>").unwrap()..text.find("</thead>").unwrap()];
    let label = match &inputs[0] {
        Input::Suite(s) => dom(&s.adapter.label()),
        _ => unreachable!(),
    };
    for n in ["", " #2", " #3"] {
        assert!(head.contains(&format!("<th>{label}{n}</th>")), "no column {label}{n}: {head}");
    }
    // The drop-in kernel sits beside ours; failures are red and spelled out, never hidden.
    assert!(text.contains("custom (naive_matmul.wgsl)"), "the drop-in kernel is missing");
    for failure in
        ["FAIL (1 of 3)", "layernorm_forward  N=7 C=24", "FAIL: wrong by 3%", "FAIL: out of memory"]
    {
        let at = text.find(failure).unwrap_or_else(|| panic!("the page lacks the failure {failure:?}"));
        // The cell (or list) it sits in is marked as a failure.
        let open = text[..at].rfind("<td").max(text[..at].rfind("<ul")).unwrap();
        let tag = &text[open..open + text[open..].find('>').unwrap()];
        assert!(tag.contains("class=\"fail\""), "{failure:?} is not marked as a failure: {tag}");
    }
    assert!(text.contains("FAIL: 1 of"), "the machine's verify verdict must show the failure");
    assert_screenshot(&browser, &page, (1280, 2000), "report.html");
}

#[test]
fn plot_draws_runs_as_svg_and_png() {
    let dir = temp("plot");
    let run = fixtures().join("run");
    let (svg, png) = (dir.join("loss.svg"), dir.join("loss.png"));
    ok(&["plot", run.to_str().unwrap(), run.to_str().unwrap(), "--out", svg.to_str().unwrap()]);
    ok(&["plot", run.to_str().unwrap(), "--out", png.to_str().unwrap()]);
    let (w, h) = wgslm::report::plot::SIZE;
    assert_png(&png, (w, h), "loss.png");
    let text = std::fs::read_to_string(&svg).unwrap();
    assert!(text.starts_with("<svg") && text.contains("loss against tokens"), "{}", &text[..200]);
    let Some(browser) = browser() else { return };
    assert_screenshot(&browser, &svg, (w, h), "loss.svg");
}

#[test]
fn bad_inputs_are_one_line_errors() {
    let dir = temp("bad");
    let not_json = dir.join("notes.json");
    std::fs::write(&not_json, "this is not json").unwrap();
    let newer = dir.join("newer.json");
    let mut suite: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fixtures().join("suite-lavapipe.json")).unwrap()).unwrap();
    suite["version"] = serde_json::json!(99);
    std::fs::write(&newer, suite.to_string()).unwrap();
    let other = dir.join("other.json");
    std::fs::write(&other, r#"{"schema": "something-else", "version": 1}"#).unwrap();
    let broken = dir.join("broken.json");
    suite["version"] = serde_json::json!(1);
    suite.as_object_mut().unwrap().remove("machine");
    std::fs::write(&broken, suite.to_string()).unwrap();
    let out = dir.join("r.html");
    let out = out.to_str().unwrap();

    let e = fails(&["report", not_json.to_str().unwrap(), "--out", out]);
    assert!(e.contains("notes.json") && e.contains("not JSON"), "{e}");
    let e = fails(&["report", newer.to_str().unwrap(), "--out", out]);
    assert!(e.contains("version 99") && e.contains("update wgslm"), "{e}");
    let e = fails(&["report", other.to_str().unwrap(), "--out", out]);
    assert!(e.contains("something-else"), "{e}");
    let e = fails(&["report", broken.to_str().unwrap(), "--out", out]);
    assert!(e.contains("broken.json") && e.contains("machine"), "{e}");
    assert!(!Path::new(out).exists(), "no page from bad inputs");

    let empty = temp("empty-run");
    let e = fails(&["plot", empty.to_str().unwrap(), "--out", dir.join("p.svg").to_str().unwrap()]);
    assert!(e.contains("no metrics.jsonl"), "{e}");
    let e = fails(&[
        "plot",
        fixtures().join("run").to_str().unwrap(),
        "--out",
        dir.join("p.gif").to_str().unwrap(),
    ]);
    assert!(e.contains(".svg or a .png"), "{e}");
    let garbled = temp("garbled-run");
    std::fs::write(
        garbled.join("metrics.jsonl"),
        "{\"step\":1,\"loss\":2.0}\nnot json\n{\"step\":2,\"loss\":1.0}\n",
    )
    .unwrap();
    let e = fails(&["plot", garbled.to_str().unwrap(), "--out", dir.join("p.svg").to_str().unwrap()]);
    assert!(e.contains("metrics.jsonl:2"), "{e}");
}

/// The suite itself, quick, on the test adapter: every stage ran and the file reads back.
#[test]
fn bench_suite_quick_writes_a_file_the_report_reads() {
    if common::gpu().is_none() {
        return;
    }
    let device = std::env::var("WGSLM_TEST_DEVICE").unwrap_or_else(|_| "auto".into());
    let dir = temp("suite");
    let json = dir.join("suite.json");
    ok(&["bench", "suite", "--quick", "--device", &device, "--json", json.to_str().unwrap()]);
    let Input::Suite(s) = report::load(&json).unwrap() else { panic!("not a suite file") };
    assert!(s.quick && s.version == report::SUITE_VERSION && !s.adapter.name.is_empty());
    assert!(!s.machine.os.is_empty() && s.machine.cores > 0 && !s.machine.commit.is_empty());
    let kernels = wgslm::verify::kernel_names();
    for k in &kernels {
        assert!(s.verify.iter().any(|r| r.kernel == *k), "verify row for {k} missing");
    }
    let failed: Vec<_> = s.verify.iter().filter(|r| !r.failures.is_empty()).collect();
    assert!(failed.is_empty(), "verify failed: {failed:?}");
    assert!(s.kernels.iter().all(|t| t.passed && t.rate.is_some_and(|r| r > 0.0)), "{:?}", s.kernels);
    assert_eq!(s.train.len(), 2);
    for t in &s.train {
        assert!(t.error.is_none() && t.tokens_per_s > 0.0 && t.params > 0, "{t:?}");
    }
    let page = dir.join("report.html");
    ok(&["report", json.to_str().unwrap(), "--out", page.to_str().unwrap()]);
    let html = std::fs::read_to_string(&page).unwrap();
    assert!(html.contains(&wgslm::report::html::esc(&s.adapter.name)));
}

/// Runs wgslm, failing the test if it has not finished within `secs` (a hang is a failure, not a stall).
fn finishes_within(args: &[&str], secs: u64) -> Output {
    let mut child = Command::new(BIN)
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("wgslm {args:?} did not finish within {secs} s");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    child.wait_with_output().unwrap()
}

/// A diverged run (losses near f64::MAX, non-finite ones) and a file with absurd rates still draw,
/// promptly: such values are left off the charts instead of stretching an axis to infinity.
#[test]
fn extreme_values_still_draw() {
    let dir = temp("extreme");
    let run = dir.join("run");
    std::fs::create_dir_all(&run).unwrap();
    std::fs::write(
        run.join("metrics.jsonl"),
        "{\"step\":1,\"loss\":1e308,\"lr\":1e-300,\"grad_norm\":-3,\"tokens_per_s\":1e30}\n\
         {\"step\":2,\"loss\":-1e308,\"lr\":0,\"grad_norm\":\"inf\",\"tokens_per_s\":0}\n\
         {\"step\":3,\"loss\":\"NaN\",\"lr\":0.001,\"grad_norm\":1.5,\"tokens_per_s\":900}\n\
         {\"step\":3,\"val_loss\":2.5}\n",
    )
    .unwrap();
    let svg = dir.join("p.svg");
    let out = finishes_within(&["plot", run.to_str().unwrap(), "--out", svg.to_str().unwrap()], 60);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(std::fs::read_to_string(&svg).unwrap().starts_with("<svg"));

    let mut suite: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fixtures().join("suite-lavapipe.json")).unwrap()).unwrap();
    suite["kernels"][0]["rate"] = serde_json::json!(1.7e308);
    suite["kernels"][1]["rate"] = serde_json::json!(-5.0);
    suite["train"][0]["tokens_per_s"] = serde_json::json!(1.7e308);
    let file = dir.join("absurd.json");
    std::fs::write(&file, suite.to_string()).unwrap();
    let page = dir.join("r.html");
    let out = finishes_within(&["report", file.to_str().unwrap(), "--out", page.to_str().unwrap()], 60);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let html = std::fs::read_to_string(&page).unwrap();
    assert!(html.contains(&fmt_rate(1.7e308)), "the table still shows the figure");
}
