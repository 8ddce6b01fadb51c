//! Every subcommand through the real binary: exit status and the lines a user reads.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn wgslm(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_wgslm")).args(args).output().unwrap()
}

fn ok(args: &[&str]) -> String {
    let out = wgslm(args);
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "wgslm {} failed:\n{stdout}\n{stderr}", args.join(" "));
    stdout.into_owned()
}

fn temp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("wgslm-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn devices_lists_adapters() {
    if common::gpu().is_none() {
        return;
    }
    let out = ok(&["devices"]);
    assert!(out.contains("[0]") && out.contains("api:") && out.contains("limits:"), "{out}");
}

#[test]
fn verify_checks_a_kernel() {
    if common::gpu().is_none() {
        return;
    }
    let device = std::env::var("WGSLM_TEST_DEVICE").unwrap_or_else(|_| "auto".into());
    let out = ok(&["verify", "--kernel", "residual_forward", "--device", &device]);
    assert!(out.contains("residual_forward") && out.contains("PASS") && !out.contains("FAIL"), "{out}");
}

/// Issue 16, item 8: on a machine without a desktop session, Mesa's device-select layer printed
/// "error: XDG_RUNTIME_DIR is invalid or not set" twice at every start; a newcomer read it as wgslm
/// failing. No command's output mentions it now.
#[test]
fn no_display_server_noise_at_start() {
    if common::gpu().is_none() {
        return;
    }
    for args in [&["devices"][..], &["verify", "--kernel", "zero"]] {
        let out = Command::new(env!("CARGO_BIN_EXE_wgslm"))
            .args(args)
            .env_remove("XDG_RUNTIME_DIR")
            .env_remove("NODEVICE_SELECT")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success() && !stderr.contains("XDG_RUNTIME_DIR"), "wgslm {args:?}: {stderr}");
    }
}

/// prepare → train → sample → eval, on the CPU backend (fast for a tiny model).
#[test]
fn prepare_train_sample_eval() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let data = temp("data");
    let run = temp("run");
    // A corpus in the style of the builtin one, so that the character vocabulary covers it.
    let text = temp("text");
    std::fs::create_dir_all(&text).unwrap();
    let corpus = text.join("stories.txt");
    std::fs::write(&corpus, wgslm::data::builtin::stories(5, 60).join("\n\n")).unwrap();

    let out = ok(&["prepare", "--input", s(&corpus), "--out", s(&data), "--tokenizer", "char"]);
    assert!(out.contains("train") && out.contains("val tokens"), "{out}");
    for f in ["tokenizer.json", "train.bin", "val.bin"] {
        assert!(data.join(f).is_file(), "prepare did not write {f}");
    }

    let config = root.join("configs/tiny.toml");
    let data_set = format!("data={}", s(&data));
    let out = ok(&[
        "train",
        "--config",
        s(&config),
        "--set",
        "max_steps=6",
        "--set",
        "eval_every=3",
        "--set",
        &data_set,
        "--out",
        s(&run),
        "--device",
        "cpu",
    ]);
    assert!(out.contains("trained 6 steps") && out.contains("val loss"), "{out}");
    // The picture of the run, rewritten at each evaluation (steps 3 and 6).
    let svg = std::fs::read_to_string(run.join("metrics.svg")).expect("train draws metrics.svg");
    assert!(svg.starts_with("<svg") && svg.contains("gradient norm"), "{}", &svg[..svg.len().min(300)]);

    let out = ok(&[
        "sample",
        "--model",
        s(&run),
        "--prompt",
        "Once",
        "--max-new-tokens",
        "12",
        "--seed",
        "3",
        "--device",
        "cpu",
    ]);
    assert!(out.starts_with("Once") && out.trim_end().chars().count() > 4, "{out:?}");
    let again = ok(&[
        "sample",
        "--model",
        s(&run),
        "--prompt",
        "Once",
        "--max-new-tokens",
        "12",
        "--seed",
        "3",
        "--device",
        "cpu",
    ]);
    assert_eq!(out, again, "the same seed must give the same sample");

    let out = ok(&["eval", "--model", s(&run), "--data", s(&data.join("val.bin")), "--device", "cpu"]);
    assert!(out.contains("mean loss") && out.contains("perplexity"), "{out}");
}

#[test]
fn help_lists_every_subcommand() {
    let out = ok(&["--help"]);
    for cmd in [
        "devices", "verify", "prepare", "train", "sample", "eval", "grad", "bench", "report", "plot",
        "export",
    ] {
        assert!(out.contains(cmd), "--help does not mention {cmd}:\n{out}");
    }
}

/// A drop-in kernel is checked and ranked beside ours; a wrong one is reported FAIL, never timed,
/// and the command fails.
#[test]
fn bench_kernels_checks_then_times_drop_in_kernels() {
    if common::gpu().is_none() {
        return;
    }
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/kernels");
    let json = temp("bench").with_extension("json");
    let naive = fixtures.join("naive_matmul.wgsl");
    let out = ok(&[
        "bench",
        "kernels",
        "--shader",
        s(&naive),
        "--variant",
        "blocked4x4",
        "--shape",
        "37x20x45",
        "--reps",
        "2",
        "--json",
        s(&json),
    ]);
    assert!(
        out.contains("custom (naive_matmul.wgsl)") && out.contains("% best") && !out.contains("FAIL"),
        "{out}"
    );
    let results: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert!(results["adapter"]["name"].is_string() && results["results"].as_array().unwrap().len() == 2);

    // Without wgpu's bounds checks on request (its indices are guarded), as ours run; never alone.
    let args = [
        "--shader",
        s(&naive),
        "--unchecked",
        "--variant",
        "blocked4x4",
        "--shape",
        "37x20x45",
        "--reps",
        "1",
    ];
    let out = ok(&[&["bench", "kernels"][..], &args].concat());
    assert!(out.contains("custom (naive_matmul.wgsl)") && !out.contains("FAIL"), "{out}");
    assert!(!wgslm(&["bench", "kernels", "--unchecked"]).status.success(), "--unchecked needs --shader");

    let wrong = fixtures.join("wrong_matmul.wgsl");
    let run =
        wgslm(&["bench", "kernels", "--shader", s(&wrong), "--variant", "blocked4x4", "--shape", "37x20x45"]);
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(!run.status.success(), "a wrong kernel must fail the command");
    let line = stdout.lines().find(|l| l.contains("wrong_matmul")).unwrap();
    assert!(line.contains("FAIL") && line.contains(" - "), "{line}");
}

#[test]
fn bench_train_and_soak_report() {
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/tiny.toml");
    let out = ok(&["bench", "train", "--config", s(&config), "--steps", "2", "--device", "cpu"]);
    assert!(
        out.contains("tokens/s") && out.contains("host encode + submit") && out.contains("analytic"),
        "{out}"
    );
    let out = ok(&["bench", "soak", "--config", s(&config), "--steps", "6", "--device", "cpu"]);
    assert!(out.contains("process RSS") && out.contains("live GPU buffers"), "{out}");
}

/// Issue 12, item 5: on an adapter with timestamps inside passes, the per-kernel breakdown is one
/// step run as training runs it, and its rows add up to that step (not to dispatches timed alone).
#[test]
fn bench_train_times_kernels_inside_the_step() {
    let Some(ctx) = common::gpu() else { return };
    let inside = wgpu::Features::TIMESTAMP_QUERY | wgpu::Features::TIMESTAMP_QUERY_INSIDE_PASSES;
    let device = std::env::var("WGSLM_TEST_DEVICE").unwrap_or_else(|_| "auto".into());
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/tiny.toml");
    let json = temp("bench-train-json").with_extension("json");
    let out = ok(&[
        "bench",
        "train",
        "--config",
        s(&config),
        "--steps",
        "2",
        "--device",
        &device,
        "--json",
        s(&json),
    ]);
    let j: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let _ = std::fs::remove_file(&json);
    let method = j["kernels_method"].as_str().unwrap();
    let rows: f64 = j["kernels"].as_array().unwrap().iter().map(|k| k["ms"].as_f64().unwrap()).sum();
    let wall = j["profiled_step_ms"].as_f64().unwrap();
    assert!(out.contains(&format!("timed {method}")), "{out}");
    if ctx.features.contains(inside) {
        assert_eq!(method, "by timestamps between its dispatches");
        // The stamps bracket every dispatch of the one submitted step; what the wall clock adds is
        // the submit and the readback.
        assert!(
            rows > 0.5 * wall && rows <= wall * 1.001,
            "rows {rows} ms against the step's {wall} ms\n{out}"
        );
    } else {
        assert_eq!(method, "each dispatch alone");
    }
}

/// Issue 16, item 2: on llvmpipe under GL, whose compiler takes minutes over the fused attention
/// kernels, verify reports them as not run, with the reason, instead of sitting in the compiler.
#[test]
fn verify_on_software_gl_says_what_it_cannot_run() {
    let out = wgslm(&["verify", "--device", "gl", "--quick", "--kernel", "flash_attention_forward"]);
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    if !out.status.success() {
        // No GL adapter on this machine: that must be what the error says (wgpu may log a warning
        // about the missing GL library before it).
        let last = stderr.trim().lines().last().unwrap_or_default();
        assert!(last.starts_with("error:") && last.contains("--device gl"), "{stderr}");
        return;
    }
    let row =
        stdout.lines().find(|l| l.starts_with("flash_attention_forward")).expect("a row for the kernel");
    if stdout.contains("[gl, Cpu]") {
        assert!(row.contains("SKIP (") && row.contains("compile the fused attention kernels"), "{row}");
        assert!(stdout.contains("not run on this adapter"), "{stdout}");
    } else {
        assert!(row.contains("PASS"), "a hardware GL adapter runs the fused kernels: {row}");
    }
}

/// A binary built without the `mpi` feature that a launcher starts as one of several ranks refuses to
/// train, rather than train N separate copies into one run directory.
#[cfg(not(feature = "mpi"))]
#[test]
fn without_mpi_one_of_several_ranks_refuses_to_train() {
    let out = temp("not-mpi");
    let tiny = concat!(env!("CARGO_MANIFEST_DIR"), "/configs/tiny.toml");
    let o = Command::new(env!("CARGO_BIN_EXE_wgslm"))
        .args(["train", "--config", tiny, "--device", "cpu", "--out", s(&out)])
        .env("OMPI_COMM_WORLD_SIZE", "2")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{stderr}");
    assert!(stderr.contains("built without MPI") && stderr.contains("--features mpi"), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(!out.exists(), "it wrote {}", out.display());
}

/// `export` writes a new HF directory whose every tensor is the source's rounded to bf16 or f16 (to
/// nearest, ties to even), with `torch_dtype` set; it never writes over a directory, refuses weights
/// f16 cannot hold, and leaves nothing behind when it refuses.
#[test]
fn export_writes_half_precision_models() {
    use wgslm::model::hf;
    use wgslm::tensors::TensorFile;
    let root = temp("export");
    std::fs::create_dir_all(&root).unwrap();
    for fixture in ["gpt2-tiny", "llama-tiny"] {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(fixture);
        let (config, flat) = hf::load(&src).unwrap();
        let layout = wgslm::model::ParamLayout::new(&config);
        for (dtype, torch, st) in
            [("bf16", "bfloat16", safetensors::Dtype::BF16), ("f16", "float16", safetensors::Dtype::F16)]
        {
            let out = root.join(format!("{fixture}-{dtype}"));
            let said = ok(&["export", "--model", s(&src), "--out", s(&out), "--dtype", dtype]);
            assert!(said.contains(&format!("as {dtype}")), "{said}");
            let json: serde_json::Value =
                serde_json::from_slice(&std::fs::read(out.join("config.json")).unwrap()).unwrap();
            assert_eq!(json["torch_dtype"], torch);
            let file = TensorFile::open(&out.join("model.safetensors")).unwrap();
            assert_eq!(file.names().len(), layout.specs.len());
            for (i, spec) in layout.specs.iter().enumerate() {
                assert_eq!(file.info(&spec.name).unwrap(), (spec.shape.clone(), st), "{}", spec.name);
                let want: Vec<f32> = layout
                    .slice(&flat, i)
                    .iter()
                    .map(|&x| match st {
                        safetensors::Dtype::BF16 => half::bf16::from_f32(x).to_f32(),
                        _ => half::f16::from_f32(x).to_f32(),
                    })
                    .collect();
                assert_eq!(file.f32(&spec.name, None).unwrap(), want, "{fixture} {dtype} {}", spec.name);
            }
            // What wgslm itself loads from it: the same config, the rounded weights.
            let (again, _) = hf::load(&out).unwrap();
            assert_eq!(again, config);

            // Never over an existing directory: refused, and the directory is as it was.
            let before = std::fs::read(out.join("model.safetensors")).unwrap();
            let o = wgslm(&["export", "--model", s(&src), "--out", s(&out), "--dtype", "f32"]);
            assert!(!o.status.success());
            let err = String::from_utf8_lossy(&o.stderr);
            assert!(err.contains("already exists") && err.lines().count() == 1, "{err}");
            assert_eq!(std::fs::read(out.join("model.safetensors")).unwrap(), before);
        }
    }

    // A weight beyond f16's range: f16 is refused by name (bf16 suggested) and leaves no directory.
    let big = root.join("big");
    let (config, mut flat) =
        hf::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/gpt2-tiny")).unwrap();
    flat[3] = 70_000.0;
    hf::save(&big, &config, &flat, None).unwrap();
    let out = root.join("big-f16");
    let o = wgslm(&["export", "--model", s(&big), "--out", s(&out), "--dtype", "f16"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("beyond f16's range") && err.contains("bf16"), "{err}");
    assert!(!out.exists());
    assert_eq!(
        std::fs::read_dir(&root)
            .unwrap()
            .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().starts_with('.'))
            .count(),
        0
    );
    ok(&["export", "--model", s(&big), "--out", s(&out), "--dtype", "bf16"]);
    let o = wgslm(&["export", "--model", s(&big), "--out", s(&root.join("x")), "--dtype", "f8"]);
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("use f32, bf16 or f16"));
    let _ = std::fs::remove_dir_all(&root);
}
