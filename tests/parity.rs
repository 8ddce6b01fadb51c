//! Training-curve parity with PyTorch, the cheap part kept in CI: 50 steps of configs/tiny.toml from
//! the initial model in tests/fixtures/parity-tiny, on both backends, against the loss curve that
//! scripts/pytorch_parity.py recorded in float64 with transformers' GPT2LMHeadModel on the same
//! batches (pytorch-curve.json). The script also measured how far PyTorch's own float32 run drifts from
//! that curve: at most 1.135e-5 in any of the 50 losses. Every loss here must stay within twice that.

mod common;

use std::path::{Path, PathBuf};

use wgslm::gpu::DeviceChoice;
use wgslm::train::{RunOptions, TrainConfig};

/// PyTorch float32 against PyTorch float64 on these 50 steps: the largest |loss difference|.
const PYTORCH_FLOAT32_DRIFT: f64 = 1.135e-5;

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/parity-tiny")
}

fn curve_matches_pytorch(device: DeviceChoice, name: &str) {
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/tiny.toml");
    let overrides = ["max_steps=50", "eval_every=0", "checkpoint_every=0"].map(String::from).to_vec();
    let mut cfg = TrainConfig::load(Some(&config), &overrides).unwrap();
    cfg.init_from = fixture().display().to_string();
    let out = std::env::temp_dir().join(format!("wgslm-parity-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    wgslm::train::run(&cfg, &RunOptions::new(&out, device)).unwrap();

    let curve: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fixture().join("pytorch-curve.json")).unwrap()).unwrap();
    let want: Vec<f64> =
        curve["float64_losses"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
    // The figure in the fixture is the one this test states.
    let recorded = curve["float32_max_abs_drift"].as_f64().unwrap();
    assert!((recorded - PYTORCH_FLOAT32_DRIFT).abs() < 1e-8, "the fixture records a drift of {recorded}");
    let got: Vec<f64> = std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter_map(|v| v.get("loss").and_then(|l| l.as_f64()))
        .collect();
    assert_eq!(got.len(), 50);
    let tolerance = 2.0 * PYTORCH_FLOAT32_DRIFT;
    let mut worst = (0.0f64, 0);
    for (step, (g, w)) in got.iter().zip(&want).enumerate() {
        let d = (g - w).abs();
        assert!(
            d <= tolerance,
            "{name}: step {}: loss {g} vs PyTorch float64 {w}: |diff| {d:.3e} > {tolerance:.3e}",
            step + 1
        );
        if d > worst.0 {
            worst = (d, step + 1);
        }
    }
    eprintln!(
        "{name}: worst |loss - PyTorch float64| {:.3e} at step {} (tolerance {tolerance:.3e})",
        worst.0, worst.1
    );
}

#[test]
fn loss_curve_matches_pytorch_on_the_cpu() {
    curve_matches_pytorch(DeviceChoice::Cpu, "cpu");
}

#[test]
fn loss_curve_matches_pytorch_on_the_gpu() {
    if common::gpu().is_none() {
        return;
    }
    let device = std::env::var("WGSLM_TEST_DEVICE").unwrap_or_else(|_| "auto".into()).parse().unwrap();
    curve_matches_pytorch(device, "gpu");
}

/// `save_batches` records the initial model, the evaluation windows and every batch; a resumed run
/// records exactly what an uninterrupted one does.
#[test]
fn the_batch_record_survives_a_resume() {
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/tiny.toml");
    let overrides =
        ["max_steps=6", "eval_every=3", "checkpoint_every=0", "save_batches=true", "grad_accum_steps=2"];
    let cfg = TrainConfig::load(Some(&config), &overrides.map(String::from)).unwrap();
    let dir = |name: &str| {
        let d = std::env::temp_dir().join(format!("wgslm-record-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    };
    let (straight, interrupted) = (dir("straight"), dir("interrupted"));
    wgslm::train::run(&cfg, &RunOptions::new(&straight, DeviceChoice::Cpu)).unwrap();
    let opts = |resume, stop_after| RunOptions {
        resume,
        stop_after,
        ..RunOptions::new(&interrupted, DeviceChoice::Cpu)
    };
    wgslm::train::run(&cfg, &opts(false, Some(3))).unwrap();
    wgslm::train::run(&cfg, &opts(true, None)).unwrap();
    let read = |run: &Path, file: &str| std::fs::read(run.join(file)).unwrap();
    let batches = read(&straight, "batches.bin");
    assert_eq!(batches.len(), 6 * 2 * 2 * cfg.batch_size * cfg.block_size * 4, "6 steps of 2 micro-batches");
    assert_eq!(batches, read(&interrupted, "batches.bin"));
    assert_eq!(
        read(&straight, "eval_batches.bin").len(),
        cfg.eval_batches * 2 * cfg.batch_size * cfg.block_size * 4
    );
    // The initial model is a Hugging Face directory: the model every step started from.
    let (_, init) = wgslm::model::hf::load(&straight.join("init")).unwrap();
    let fresh =
        wgslm::model::init_params(&wgslm::model::hf::load(&straight.join("init")).unwrap().0, cfg.seed);
    assert!(init.iter().zip(&fresh).all(|(a, b)| a.to_bits() == b.to_bits()));
}
