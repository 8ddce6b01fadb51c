//! Shared test helpers: the GPU every GPU test runs on, or a loud skip.
#![allow(dead_code)]

use std::io::Write;
use std::sync::{Arc, OnceLock};

use wgslm::gpu::{DeviceChoice, GpuBackend, GpuContext};

/// The adapter GPU tests run on: `WGSLM_TEST_DEVICE` (default `auto`). Returns None, after one loud
/// line, when there is none and `WGSLM_REQUIRE_GPU` is not 1; fails the test when it is.
pub fn gpu() -> Option<Arc<GpuContext>> {
    static CTX: OnceLock<Option<Arc<GpuContext>>> = OnceLock::new();
    CTX.get_or_init(|| {
        let wanted = std::env::var("WGSLM_TEST_DEVICE").unwrap_or_else(|_| "auto".into());
        let choice: DeviceChoice = wanted.parse().expect("WGSLM_TEST_DEVICE");
        match GpuContext::new(&choice) {
            Ok(ctx) => {
                eprintln!("GPU tests run on {}", ctx.describe());
                Some(Arc::new(ctx))
            }
            Err(e) => {
                let require = std::env::var("WGSLM_REQUIRE_GPU").is_ok_and(|v| v == "1");
                assert!(!require, "WGSLM_REQUIRE_GPU=1 but no GPU adapter could be opened: {e}");
                // Straight to the stderr handle: the test harness captures eprintln! of passing tests.
                let _ = writeln!(
                    std::io::stderr(),
                    "!!!!! GPU TESTS SKIPPED: no GPU adapter ({e}). On Linux without a GPU, \
                     `apt-get install mesa-vulkan-drivers` gives a software Vulkan adapter; set \
                     WGSLM_REQUIRE_GPU=1 to make this a failure. !!!!!"
                );
                None
            }
        }
    })
    .clone()
}

/// A fresh GPU backend on the shared device, or None (see [`gpu`]).
pub fn gpu_backend() -> Option<GpuBackend> {
    gpu().map(GpuBackend::with_context)
}

/// A GPU backend on a device of its own, for a test that counts what the device creates (other tests
/// compile pipelines on the shared one while it runs); None without a GPU (see [`gpu`]).
pub fn private_gpu_backend() -> Option<GpuBackend> {
    gpu()?;
    let wanted = std::env::var("WGSLM_TEST_DEVICE").unwrap_or_else(|_| "auto".into());
    let ctx = GpuContext::new(&wanted.parse().expect("WGSLM_TEST_DEVICE")).expect("a second device");
    Some(GpuBackend::with_context(Arc::new(ctx)))
}

/// One fresh GPU backend per matmul variant the adapter has, each running that variant for every
/// product (no autotuner), for the whole-model tests; empty without a GPU (see [`gpu`]).
pub fn gpu_backend_per_variant() -> Vec<(&'static str, GpuBackend)> {
    let Some(ctx) = gpu() else { return Vec::new() };
    let variants = ctx.matmul_variants();
    assert!(variants.len() >= 5, "only {variants:?} on {}", ctx.adapter.title());
    variants
        .into_iter()
        .map(|v| {
            let mut backend = GpuBackend::with_context(ctx.clone());
            backend.set_matmul_variant(v).unwrap();
            (v, backend)
        })
        .collect()
}

/// Every matmul variant the adapter has, by name (empty without a GPU).
pub fn gpu_matmul_variants() -> Vec<&'static str> {
    gpu().map(|ctx| ctx.matmul_variants()).unwrap_or_default()
}

/// Loss, gradient norm, every gradient, the logits and three steps agree.
pub fn assert_same_model(g: &mut wgslm::model::Model, c: &mut wgslm::model::Model, what: &str) {
    use wgslm::backend::AdamwHyper;
    use wgslm::verify::rel_l2;
    let (sg, sc) = (g.compute_grads().unwrap(), c.compute_grads().unwrap());
    assert!((sg.loss - sc.loss).abs() <= 1e-5 * sc.loss.abs(), "{what}: loss {} vs {}", sg.loss, sc.loss);
    assert!(
        (sg.grad_norm - sc.grad_norm).abs() <= 1e-5 * sc.grad_norm,
        "{what}: norm {} vs {}",
        sg.grad_norm,
        sc.grad_norm
    );
    let layout = g.layout.clone();
    let (gg, gc) = (g.grads().unwrap(), c.grads().unwrap());
    for (i, s) in layout.specs.iter().enumerate() {
        let err = rel_l2(layout.slice(&gg, i), layout.slice(&gc, i));
        assert!(err <= 1e-5, "{what}: grad {} relative L2 {err:.2e}", s.name);
    }
    let err = rel_l2(&g.logits().unwrap(), &c.logits().unwrap());
    assert!(err <= 1e-5, "{what}: logits relative L2 {err:.2e}");
    for t in 1..=3 {
        let hyper = AdamwHyper::at_step(3e-3, 0.9, 0.95, 1e-8, 0.5, t);
        let (lg, lc) = (g.step(&hyper).unwrap(), c.step(&hyper).unwrap());
        assert!((lg.loss - lc.loss).abs() <= 1e-4, "{what}: step {t} loss {} vs {}", lg.loss, lc.loss);
    }
}

/// (step, loss bits) of every step line of a run's metrics.jsonl.
pub fn step_losses(run: &std::path::Path) -> Vec<(u64, u32)> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v.get("loss").is_some())
        .map(|v| (v["step"].as_u64().unwrap(), (v["loss"].as_f64().unwrap() as f32).to_bits()))
        .collect()
}

/// The `--device` GPU tests train on (`WGSLM_TEST_DEVICE`, default auto), or None (see [`gpu`]).
pub fn gpu_device() -> Option<wgslm::gpu::DeviceChoice> {
    gpu()?;
    Some(std::env::var("WGSLM_TEST_DEVICE").unwrap_or_else(|_| "auto".into()).parse().unwrap())
}

/// Parameters with every tensor random (gains near one), so that a kernel ignoring a tensor fails.
pub fn random_params(cfg: &wgslm::model::ModelConfig, seed: u64) -> Vec<f32> {
    use wgslm::model::layout::Init;
    let layout = wgslm::model::ParamLayout::new(cfg);
    let mut rng = wgslm::rng::Rng::new(seed);
    let mut flat = vec![0f32; layout.total];
    for s in &layout.specs {
        for x in &mut flat[s.offset..s.offset + s.len()] {
            *x = if s.init == Init::Ones {
                1.0 + 0.1 * rng.normal() as f32
            } else {
                0.1 * rng.normal() as f32
            };
        }
    }
    flat
}

/// A Llama where nothing is a power of two that need not be: 6 query heads of 6 on 2 kv heads, SwiGLU
/// width 37, vocab 97, 40 positions.
pub fn awkward_llama(tie_embeddings: bool) -> wgslm::model::ModelConfig {
    use wgslm::model::{Arch, LlamaConfig, ModelConfig};
    let llama = LlamaConfig {
        n_kv_head: 2,
        intermediate_size: 37,
        rope_theta: 500.0,
        norm_eps: 1e-5,
        tie_embeddings,
    };
    ModelConfig {
        arch: Arch::Llama(llama),
        n_layer: 2,
        n_head: 6,
        n_embd: 36,
        vocab_size: 97,
        n_positions: 40,
    }
}
