//! Criterion benchmarks of the matrix products of a training step, at the shapes of
//! configs/tiny.toml and of a 4M-parameter model (config B of docs/BENCHMARKS.md: 4 layers, 4 heads,
//! 256 wide, vocab 4096, T 256, B 8), on the first adapter `--device auto` would pick.
//!
//! Each shape runs with the variant the autotuner picks for it on this adapter; set
//! WGSLM_BENCH_VARIANTS=all to time every variant the adapter can run. Times come from GPU
//! timestamps where the adapter has them (wall clock otherwise), through `iter_custom`, and the
//! throughput is in FLOP ("elements" in criterion's words). Run: `cargo bench --bench matmul`.

use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use wgslm::backend::{Backend, DType, Op, View};
use wgslm::gpu::{DeviceChoice, GpuBackend, GpuContext};
use wgslm::model::{BatchShape, ModelConfig};
use wgslm::rng::Rng;
use wgslm::train::TrainConfig;

type Gemm = ((usize, usize, usize, bool, bool), String);

/// The step shapes of configs/tiny.toml (whose vocabulary comes from its data).
fn tiny() -> wgslm::Result<Vec<Gemm>> {
    let tiny = TrainConfig::load(Some(std::path::Path::new("configs/tiny.toml")), &[])?;
    let vocab = wgslm::train::trainer::load_data(&tiny)?.tok.vocab_size();
    let shape = BatchShape { b: tiny.batch_size, t: tiny.block_size, accum: 1 };
    wgslm::bench::step_gemms(tiny.model(vocab), shape, &DeviceChoice::Auto)
}

/// The step shapes of config B of docs/BENCHMARKS.md, 4.3M parameters.
fn four_million() -> wgslm::Result<Vec<Gemm>> {
    let b = ModelConfig::gpt2(4, 4, 256, 4096, 256);
    wgslm::bench::step_gemms(b, BatchShape { b: 8, t: 256, accum: 1 }, &DeviceChoice::Auto)
}

fn matmul(c: &mut Criterion) {
    let ctx = match GpuContext::new(&DeviceChoice::Auto) {
        Ok(ctx) => Arc::new(ctx),
        Err(e) => {
            eprintln!("SKIPPED the matmul benchmarks: {e}");
            return;
        }
    };
    let every = std::env::var("WGSLM_BENCH_VARIANTS").is_ok_and(|v| v == "all");
    for (name, gemms) in [("tiny", tiny()), ("4M", four_million())] {
        let gemms = match gemms {
            Ok(g) => g,
            Err(e) => {
                eprintln!("SKIPPED the {name} matmul benchmarks: {e}");
                continue;
            }
        };
        let mut group = c.benchmark_group(format!("matmul/{name}"));
        group
            .sample_size(10)
            .warm_up_time(Duration::from_millis(300))
            .measurement_time(Duration::from_secs(2));
        for ((m, k, n, trans_a, trans_b), chosen) in gemms {
            let variants: Vec<String> = if every {
                ctx.matmul_variants().iter().map(|v| v.to_string()).collect()
            } else {
                vec![chosen]
            };
            for variant in variants {
                let mut gpu = GpuBackend::with_context(ctx.clone());
                let prepared = (|| -> wgslm::Result<_> {
                    gpu.set_matmul_variant(&variant)?;
                    let mut rng = Rng::new(7);
                    let mut buf = |len: usize| -> wgslm::Result<View> {
                        let v = View::new(gpu.alloc(DType::F32, len, "bench")?, 0, len);
                        let data: Vec<f32> = (0..len).map(|_| rng.normal() as f32).collect();
                        gpu.write_f32(v, &data)?;
                        Ok(v)
                    };
                    let (a, b, out) = (buf(m * k)?, buf(k * n)?, buf(m * n)?);
                    let op =
                        Op::Matmul { out, a, b, m, k, n, trans_a, trans_b, accumulate: false, half: false };
                    gpu.prepare(&[op])
                })();
                let plan = match prepared {
                    Ok(plan) => plan,
                    Err(e) => {
                        eprintln!("SKIPPED {variant} at {m}x{k}x{n}: {e}");
                        continue;
                    }
                };
                let layout =
                    format!("{}{}", if trans_a { "T" } else { "N" }, if trans_b { "T" } else { "N" });
                group.throughput(Throughput::Elements(2 * (m * k * n) as u64));
                group.bench_function(BenchmarkId::new(variant, format!("{m}x{k}x{n} {layout}")), |bench| {
                    bench.iter_custom(|iters| {
                        let (seconds, _) = gpu.time(plan, iters as usize).expect("timing a prepared matmul");
                        Duration::from_secs_f64(seconds * iters as f64)
                    })
                });
            }
        }
        group.finish();
    }
}

criterion_group!(benches, matmul);
criterion_main!(benches);
