//! `wgslm bench suite`: the one command a person runs on each machine to compare it with others. It
//! records the machine and adapter, `verify`'s table, every matmul variant at the standard shapes
//! (checked, then timed), the attention kernels, and training speed and memory for configs A, B and
//! the Llama config, into one versioned JSON file that `wgslm report` reads.
//!
//! The configs are built into the binary and train on random tokens of their vocabulary, so the suite
//! needs nothing but the binary and an adapter.

use std::sync::Arc;
use std::time::Instant;

use crate::gpu::{GpuBackend, GpuContext};
use crate::report::{Adapter, Machine, Suite, TrainResult, SUITE_SCHEMA, SUITE_VERSION};
use crate::train::TrainConfig;
use crate::{verify, Result};

/// A config the suite trains: its name, its TOML (from configs/), and the vocabulary of the data it
/// is benchmarked on.
#[derive(Clone, Copy)]
pub struct SuiteConfig {
    pub name: &'static str,
    pub toml: &'static str,
    pub vocab: usize,
}

/// Config A (GPT-2, vocabulary 512), B (GPT-2, 4,096) and B's Llama twin.
pub const CONFIGS: [SuiteConfig; 3] = [
    SuiteConfig { name: "bench-a", toml: include_str!("../../configs/bench-a.toml"), vocab: 512 },
    SuiteConfig { name: "bench-b", toml: include_str!("../../configs/bench-b.toml"), vocab: 4096 },
    SuiteConfig {
        name: "bench-b-llama",
        toml: include_str!("../../configs/bench-b-llama.toml"),
        vocab: 4096,
    },
];

/// --quick: config A and its Llama twin, which each take seconds on a software adapter.
pub const QUICK_CONFIGS: [SuiteConfig; 2] = [
    CONFIGS[0],
    SuiteConfig { name: "bench-a-llama", toml: include_str!("../../configs/bench-a-llama.toml"), vocab: 512 },
];

/// The matmul shapes of docs/BENCHMARKS.md (M, K, N), and the quick suite's smaller ones.
pub const MATMUL_SHAPES: [(usize, usize, usize); 4] =
    [(1024, 1024, 1024), (2048, 256, 768), (2048, 1024, 256), (2048, 256, 1024)];
pub const QUICK_MATMUL_SHAPES: [(usize, usize, usize); 2] = [(256, 256, 256), (512, 128, 384)];

/// What the suite does at each stage, for a live log.
pub enum Progress<'a> {
    Stage(&'a str),
    Verified(&'a verify::Row),
    Timed(&'a crate::bench::kernels::Timing),
    Trained(&'a TrainResult),
}

/// Runs the suite on the adapter of `ctx`.
pub fn run(ctx: &Arc<GpuContext>, quick: bool, progress: &mut dyn FnMut(Progress)) -> Result<Suite> {
    let started = Instant::now();
    let created = crate::report::now();

    progress(Progress::Stage("verify: every kernel against its CPU twin"));
    let (rows, _) = verify::check_adapter(ctx, None, quick, &mut |r| progress(Progress::Verified(r)))?;

    progress(Progress::Stage("kernels: every matmul variant, checked then timed"));
    let variants = super::kernels::all_matmul_variants(ctx);
    let (shapes, reps): (&[_], usize) = if quick { (&QUICK_MATMUL_SHAPES, 3) } else { (&MATMUL_SHAPES, 5) };
    let mut kernels = super::kernels::matmul(ctx, &variants, None, shapes, reps)?;
    if !quick {
        progress(Progress::Stage("kernels: attention, naive and fused"));
        kernels.extend(super::kernels::attention(ctx, &super::kernels::ATTENTION_VARIANTS, reps)?);
    }
    for t in &kernels {
        progress(Progress::Timed(t));
    }

    progress(Progress::Stage("train: tokens per second and memory"));
    let (configs, steps): (&[SuiteConfig], usize) = if quick { (&QUICK_CONFIGS, 3) } else { (&CONFIGS, 10) };
    // A quick suite trains with the variant that won the kernel stage rather than autotuning every
    // shape: on a software adapter the tuner's candidates at the configs' layouts cost tens of seconds
    // of compiling, most of a quick suite's budget.
    let matmul = if quick { fastest_matmul(&kernels).unwrap_or("auto") } else { "auto" };
    let mut train = Vec::new();
    for c in configs {
        let result = train_config(ctx, c, steps, matmul);
        progress(Progress::Trained(&result));
        train.push(result);
    }

    Ok(Suite {
        schema: SUITE_SCHEMA.into(),
        version: SUITE_VERSION,
        created,
        quick,
        seconds: started.elapsed().as_secs_f64(),
        machine: Machine::this(),
        adapter: Adapter::of(ctx),
        verify: rows,
        kernels,
        train,
    })
}

/// The f32 matmul variant the model can use with the best summed rate over the timed shapes (shapes it
/// could not run count as zero), if any ran.
fn fastest_matmul(kernels: &[crate::bench::kernels::Timing]) -> Option<&'static str> {
    crate::gpu::kernels::MATMUL_VARIANTS
        .iter()
        .map(|&v| {
            let rates = kernels.iter().filter(|t| t.kernel == "matmul" && t.variant == v && t.passed);
            (v, rates.filter_map(|t| t.rate).sum::<f64>())
        })
        .filter(|&(_, total)| total > 0.0)
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .map(|(v, _)| v)
}

/// `bench train` on one built-in config with matmul policy `matmul` (see [`TrainResult::matmul`]); a
/// failure (the adapter cannot hold it, say) is recorded, not fatal, so the rest of the suite still
/// runs.
fn train_config(ctx: &Arc<GpuContext>, c: &SuiteConfig, steps: usize, matmul: &str) -> TrainResult {
    let mut result = TrainResult {
        config: c.name.into(),
        arch: String::new(),
        params: 0,
        tokens_per_step: 0,
        steps,
        tokens_per_s: 0.0,
        ms_per_step: 0.0,
        allocated_bytes: None,
        analytic_bytes: 0,
        error: None,
        matmul: Some(matmul.into()),
    };
    let outcome = (|| -> Result<()> {
        let cfg = TrainConfig::parse(&format!("configs/{}.toml", c.name), c.toml)?;
        result.arch = cfg.arch.clone();
        let mut backend = GpuBackend::with_context(ctx.clone());
        backend.set_matmul_policy(if matmul == "auto" { &cfg.matmul } else { matmul })?;
        let b = super::train_on(
            &cfg,
            Box::new(backend),
            super::BenchData::Random { vocab: c.vocab },
            steps,
            false,
        )?;
        result.params = b.params;
        result.tokens_per_step = b.tokens_per_step;
        result.tokens_per_s = b.tokens_per_s;
        result.ms_per_step = b.ms_per_step;
        result.allocated_bytes = b.allocated;
        result.analytic_bytes = b.analytic;
        Ok(())
    })();
    if let Err(e) = outcome {
        result.error = Some(e.to_string());
    }
    result
}
