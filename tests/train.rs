//! The training product: a tiny run learns, a resumed run continues bit for bit, checkpoints are
//! complete model directories and old ones are pruned.

mod common;

use std::path::{Path, PathBuf};

use wgslm::gpu::DeviceChoice;
use wgslm::model::hf;
use wgslm::train::{checkpoint, RunOptions, Summary, TrainConfig};

fn tiny(overrides: &[&str]) -> TrainConfig {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/tiny.toml");
    let overrides: Vec<String> = overrides.iter().map(|s| s.to_string()).collect();
    TrainConfig::load(Some(&path), &overrides).unwrap()
}

fn run_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("wgslm-train-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn train(
    cfg: &TrainConfig,
    out: &Path,
    device: &DeviceChoice,
    resume: bool,
    stop_after: Option<u64>,
) -> Summary {
    let opts = RunOptions { resume, stop_after, ..RunOptions::new(out, device.clone()) };
    wgslm::train::run(cfg, &opts).unwrap()
}

#[test]
fn tiny_trains_and_the_loss_falls() {
    let Some(device) = common::gpu_device() else { return };
    let out = run_dir("tiny");
    let cfg = tiny(&[]);
    let s = train(&cfg, &out, &device, false, None);
    assert_eq!(s.steps, 100);
    let first = s.first_loss.unwrap();
    // A character model starts near ln(vocab) and must be well below it after 100 steps.
    assert!(first > 3.0, "the first loss {first} is already low: was the model initialised?");
    assert!(s.last_loss < first - 1.0, "the loss fell only from {first} to {}", s.last_loss);
    assert!(s.val_loss.unwrap() < first - 1.0, "val loss {:?} vs first loss {first}", s.val_loss);

    let lines = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    let values: Vec<serde_json::Value> = lines.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let steps: Vec<_> = values.iter().filter(|v| v.get("loss").is_some()).collect();
    assert_eq!(steps.len(), 100, "one metrics line per step");
    for key in ["step", "loss", "lr", "grad_norm", "tokens_per_s", "ms"] {
        assert!(steps.iter().all(|v| v.get(key).is_some()), "metrics lines lack {key}");
    }
    assert_eq!(values.iter().filter(|v| v.get("val_loss").is_some()).count(), 2, "evals at steps 50 and 100");

    // The newest checkpoint is a Hugging Face directory that imports.
    let (step, dir) = checkpoint::latest(&out).unwrap();
    assert_eq!(step, 100);
    let (config, params) = hf::load(&dir).unwrap();
    assert_eq!((config.n_layer, config.n_embd, config.n_positions), (2, 32, 32));
    assert!(params.iter().all(|x| x.is_finite()));
    for f in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "training_state.safetensors",
        "trainer.json",
    ] {
        assert!(dir.join(f).is_file(), "the checkpoint lacks {f}");
    }
    // keep_checkpoints = 2: steps 50 and 100.
    let kept: Vec<u64> = checkpoint::list(&out).iter().map(|(s, _)| *s).collect();
    assert_eq!(kept, vec![50, 100]);
}

/// N straight steps against N/2, stop, resume, N/2: every later loss and the final weights are
/// bit-identical. Dropout and gradient accumulation are on, so their random state must resume too.
fn resume_is_bit_exact(device: DeviceChoice, name: &str, matmul: &str, steps: usize) {
    let (matmul, max_steps, eval_every) =
        (format!("matmul={matmul}"), format!("max_steps={steps}"), format!("eval_every={}", steps / 2));
    let cfg =
        tiny(&[&max_steps, "dropout=0.1", "grad_accum_steps=2", "checkpoint_every=0", &eval_every, &matmul]);
    let straight = run_dir(&format!("{name}-straight"));
    let interrupted = run_dir(&format!("{name}-interrupted"));
    train(&cfg, &straight, &device, false, None);
    let half = train(&cfg, &interrupted, &device, false, Some(steps as u64 / 2));
    assert_eq!(half.steps, steps as u64 / 2);
    train(&cfg, &interrupted, &device, true, None);

    let (a, b) = (common::step_losses(&straight), common::step_losses(&interrupted));
    assert_eq!(a.len(), steps);
    assert_eq!(a, b, "the resumed run's losses differ from the straight run's");
    let (_, da) = checkpoint::latest(&straight).unwrap();
    let (_, db) = checkpoint::latest(&interrupted).unwrap();
    let (pa, pb) = (hf::load(&da).unwrap().1, hf::load(&db).unwrap().1);
    assert!(pa.iter().zip(&pb).all(|(x, y)| x.to_bits() == y.to_bits()), "the final weights differ");
}

#[test]
fn resume_is_bit_exact_on_the_gpu() {
    let Some(device) = common::gpu_device() else { return };
    // Under the autotuner's choices (which the checkpoint records), and, in shorter runs, under every
    // matmul variant the adapter has.
    resume_is_bit_exact(device.clone(), "gpu-auto", "auto", 16);
    for variant in common::gpu_matmul_variants() {
        resume_is_bit_exact(device.clone(), &format!("gpu-{variant}"), variant, 6);
    }
}

#[test]
fn resume_is_bit_exact_on_the_cpu() {
    resume_is_bit_exact(DeviceChoice::Cpu, "cpu", "auto", 16);
}

#[test]
fn a_finished_run_is_not_overwritten_and_resume_needs_a_run() {
    let cfg = tiny(&["max_steps=2", "eval_every=0"]);
    let out = run_dir("guard");
    let opts = |resume| RunOptions { resume, ..RunOptions::new(&out, DeviceChoice::Cpu) };
    let err = wgslm::train::run(&cfg, &opts(true)).unwrap_err().to_string();
    assert!(err.contains("no checkpoint to resume"), "{err}");
    wgslm::train::run(&cfg, &opts(false)).unwrap();
    let err = wgslm::train::run(&cfg, &opts(false)).unwrap_err().to_string();
    assert!(err.contains("already holds a run") && err.contains("--resume"), "{err}");
    let other = tiny(&["max_steps=2", "n_embd=64"]);
    let err = wgslm::train::run(&other, &opts(true)).unwrap_err().to_string();
    assert!(err.contains("n_embd"), "{err}");
}

/// A step whose gradients are not finite is skipped on the device (no update, AdamW's t does not
/// advance) and the run goes on.
fn bad_steps_are_skipped(device: DeviceChoice, name: &str) {
    let cfg = tiny(&["max_steps=12", "eval_every=0", "checkpoint_every=6"]);
    let out = run_dir(&format!("nan-{name}"));
    let opts = RunOptions { nan_steps: vec![5, 6], ..RunOptions::new(&out, device) };
    let s = wgslm::train::run(&cfg, &opts).unwrap();
    assert_eq!(s.steps, 12);
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .filter(|v: &serde_json::Value| v.get("loss").is_some())
        .collect();
    for v in &lines {
        let step = v["step"].as_u64().unwrap();
        assert_eq!(
            v["grad_norm"].is_string(),
            step == 5 || step == 6,
            "step {step}: grad_norm {}",
            v["grad_norm"]
        );
    }
    let (_, dir) = checkpoint::latest(&out).unwrap();
    let state = checkpoint::load(&dir).unwrap();
    assert_eq!(state.state.adam_t, 10, "two updates were skipped");
    assert!(state.params.iter().chain(&state.m).chain(&state.v).all(|x| x.is_finite()));
}

#[test]
fn bad_steps_are_skipped_on_the_gpu() {
    let Some(device) = common::gpu_device() else { return };
    bad_steps_are_skipped(device, "gpu");
}

#[test]
fn bad_steps_are_skipped_on_the_cpu() {
    bad_steps_are_skipped(DeviceChoice::Cpu, "cpu");
}

/// More bad steps in a row than max_bad_steps stop the run with a clear message; the last checkpoint
/// stays intact and finite.
#[test]
fn too_many_bad_steps_stop_the_run_with_the_checkpoint_intact() {
    let device = common::gpu_device().unwrap_or(DeviceChoice::Cpu);
    let cfg = tiny(&["max_steps=30", "eval_every=0", "checkpoint_every=10", "max_bad_steps=3"]);
    let out = run_dir("nan-stop");
    let opts = RunOptions { nan_steps: (11..=30).collect(), ..RunOptions::new(&out, device) };
    let err = wgslm::train::run(&cfg, &opts).unwrap_err().to_string();
    assert!(
        err.contains("4 steps in a row")
            && err.contains("max_bad_steps = 3")
            && err.contains("step-00000010"),
        "{err}"
    );
    let (step, dir) = checkpoint::latest(&out).unwrap();
    assert_eq!(step, 10);
    let loaded = checkpoint::load(&dir).unwrap();
    assert!(loaded.params.iter().all(|x| x.is_finite()));
}
