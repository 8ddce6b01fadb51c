//! Mixed precision (`precision = "bf16" | "f16"`): the conversion kernels bit for bit on special
//! values, the whole model in each mode on the GPU against the CPU backend in the same mode (GPT-2
//! and Llama at awkward sizes), and training in each mode.

mod common;

use std::path::{Path, PathBuf};

use wgslm::backend::{AdamwHyper, Backend, DType, HalfFormat, Op, View};
use wgslm::cpu::CpuBackend;
use wgslm::model::mixed::SCRATCH_CAP;
use wgslm::model::{Attention, BatchShape, LossScaler, Mode, Model, ModelConfig, Precision};
use wgslm::rng::Rng;
use wgslm::train::{RunOptions, TrainConfig};
use wgslm::verify::rel_l2;

/// Values where rounding is hardest: signed zeros, ties at both formats' precision, the edges of
/// f16's normal and subnormal ranges, overflow, infinities and NaNs.
fn special_values() -> Vec<f32> {
    let mut v = vec![0.0, -0.0, 1.0, -1.0, f32::INFINITY, f32::NEG_INFINITY, f32::NAN, -f32::NAN];
    v.extend([f32::from_bits(0x7fa0_0001), f32::MAX, f32::MIN_POSITIVE, 1e-45, -1e-45]);
    for e in [-27, -25, -24, -15, -14, 0, 15, 16] {
        let p = 2f32.powi(e);
        // Ties and near-ties at bf16's 8 and f16's 11 significant bits.
        for ulp in [p * 2f32.powi(-8), p * 2f32.powi(-11)] {
            v.extend([p + ulp, p + ulp * 0.999, p + ulp * 1.001, p + 3.0 * ulp, -(p + ulp)]);
        }
    }
    v.extend([65504.0, 65519.0, 65520.0, 65536.0, -65520.0, 3.3e38, 3.4e38]);
    let mut rng = Rng::new(5);
    v.extend((0..1000).map(|_| (rng.normal() * 10f64.powf(rng.normal() * 3.0)) as f32));
    v
}

/// Round-trips `x` through the kernels on `be` two ways: quantize_half, and round_half into packed
/// words at an odd first element then widen_half back. Returns the two results' bits.
fn round_trip(be: &mut dyn Backend, x: &[f32], format: HalfFormat) -> (Vec<u32>, Vec<u32>) {
    let n = x.len();
    let inp = View::new(be.alloc(DType::F32, n, "x").unwrap(), 0, n);
    let q = View::new(be.alloc(DType::F32, n, "q").unwrap(), 0, n);
    let w = View::new(be.alloc(DType::F32, n, "w").unwrap(), 0, n);
    let packed = be.alloc(DType::Half, n + 1, "h").unwrap();
    let words = View::new(packed, 0, (n + 1).div_ceil(2));
    be.write_f32(inp, x).unwrap();
    let ops = [
        Op::Quantize { out: q, inp, n, format },
        Op::Round { out: words, inp, first: 1, n, format },
        Op::Widen { out: w, inp: words, first: 1, n, format },
    ];
    let plan = be.prepare(&ops).unwrap();
    be.run(plan).unwrap();
    let bits = |v: Vec<f32>| v.into_iter().map(f32::to_bits).collect::<Vec<_>>();
    (bits(be.read_f32(q).unwrap()), bits(be.read_f32(w).unwrap()))
}

#[test]
fn conversions_match_the_twin_bit_for_bit() {
    let Some(gpu) = common::gpu_backend() else { return };
    let mut gpu = gpu;
    let x = special_values();
    for format in [HalfFormat::Bf16, HalfFormat::F16] {
        let (gq, gw) = round_trip(&mut gpu, &x, format);
        let (cq, cw) = round_trip(&mut CpuBackend::new(), &x, format);
        for (i, &v) in x.iter().enumerate() {
            let want = wgslm::cpu::from_half_bits(wgslm::cpu::to_half_bits(v, format), format).to_bits();
            assert_eq!(cq[i], want, "{}: twin quantize of {v:e}", format.name());
            assert_eq!(gq[i], cq[i], "{}: quantize_half of {v:e} ({:#x})", format.name(), v.to_bits());
            assert_eq!(gw[i], cw[i], "{}: round_half + widen_half of {v:e}", format.name());
        }
    }
}

const GPT2: ModelConfig = ModelConfig::gpt2(2, 3, 48, 997, 40);

fn llama() -> ModelConfig {
    common::awkward_llama(false)
}

fn build(
    backend: Box<dyn Backend>,
    cfg: ModelConfig,
    precision: Precision,
    attention: Attention,
    dropout: f32,
) -> Model {
    let shape = BatchShape { b: 2, t: 37, accum: 2 };
    build_split(backend, cfg, shape, SCRATCH_CAP, precision, attention, dropout)
}

/// [`build`] at `shape`, splitting the ops whose conversions need more than `cap` of scratch.
fn build_split(
    backend: Box<dyn Backend>,
    cfg: ModelConfig,
    shape: BatchShape,
    cap: usize,
    precision: Precision,
    attention: Attention,
    dropout: f32,
) -> Model {
    let mode = Mode::Train { weight_decay: 0.1, dropout };
    let mut model = Model::with_scratch_cap(backend, cfg, shape, mode, attention, precision, cap).unwrap();
    model.set_params(&common::random_params(&cfg, 7)).unwrap();
    let mut rng = Rng::new(8);
    let mut ids = || (0..shape.tokens()).map(|_| rng.below(cfg.vocab_size as u64) as u32).collect::<Vec<_>>();
    for micro in 0..shape.accum {
        let (x, y) = (ids(), ids());
        model.set_batch(micro, &x, &y).unwrap();
    }
    model
}

/// The whole model on the GPU against the CPU backend in the same precision.
///
/// Rounding to 16 bits turns f32-sized differences into 16-bit-sized ones: a value near a rounding
/// boundary goes one way on one backend and the other way on the other, and the flip travels on
/// through the layers (moving every parameter of the GPT-2 below by 2e-7 moves its bf16 logits by
/// 2e-3 on the CPU alone). So the backends cannot agree to 1e-5 as in f32; what must hold is that
/// the GPU's result is the CPU's up to that rounding noise:
/// - every gradient tensor and the logits (relative L2, d): d(GPU, CPU) ≤ max(d(CPU, CPU in f32),
///   1e-5), the GPU no farther from the CPU in its own mode than the mode's rounding moves the CPU
///   itself; and d(GPU, CPU in f32) within a factor of two of d(CPU, CPU in f32), the GPU rounding
///   as much as the CPU (a GPU that skipped the rounding would sit next to f32, a broken one far off);
/// - the loss, the gradient norm and the loss after each of three AdamW steps (single numbers, whose
///   rounding noise partly cancels and partly adds): within an eighth of the format's unit roundoff
///   (2^-8 for bf16, 2^-11 for f16) of the CPU's, relatively. A stale half copy of the weights after
///   a step, or a wrong tensor, moves them by percent. The steps' losses must also stay within four
///   unit roundoffs of f32's, which catches what both backends would share (the lowering pass).
fn same_model(cfg: ModelConfig, what: &str, dropout: f32, bindings: Option<usize>) {
    let Some(ctx) = common::gpu() else { return };
    for precision in [Precision::Bf16, Precision::F16] {
        for attention in [Attention::Flash, Attention::Naive] {
            let what = format!("{what} {} {}", precision.name(), attention.name());
            let mut gpu = wgslm::gpu::GpuBackend::with_context(ctx.clone());
            if let Some(limit) = bindings {
                gpu.limit_bindings(limit);
            }
            let mut g = build(Box::new(gpu), cfg, precision, attention, dropout);
            let mut c = build(Box::new(CpuBackend::new()), cfg, precision, attention, dropout);
            let mut f = build(Box::new(CpuBackend::new()), cfg, Precision::F32, attention, dropout);
            let unit = match precision {
                Precision::F16 => 2f64.powi(-11),
                _ => 2f64.powi(-8),
            };
            let scalar = |name: &str, gpu: f32, cpu: f32| {
                let d = ((gpu - cpu).abs() / cpu.abs()) as f64;
                assert!(d <= unit / 8.0, "{what}: {name} {gpu} on the GPU, {cpu} on the CPU: {d:.2e} apart");
            };
            let mut worst: f64 = 0.0;
            let mut check = |name: &str, gpu_cpu: f64, gpu_f32: f64, cpu_f32: f64| {
                assert!(
                    gpu_cpu <= cpu_f32.max(1e-5),
                    "{what}: {name}: the GPU is {gpu_cpu:.2e} from the CPU, more than the CPU's {cpu_f32:.2e} from f32"
                );
                assert!(
                    cpu_f32 <= 1e-5 || (0.5 * cpu_f32..=2.0 * cpu_f32).contains(&gpu_f32),
                    "{what}: {name}: the GPU is {gpu_f32:.2e} from f32, the CPU {cpu_f32:.2e}"
                );
                worst = worst.max(gpu_cpu / cpu_f32.max(1e-5));
            };
            let (sg, sc) = (g.compute_grads().unwrap(), c.compute_grads().unwrap());
            f.compute_grads().unwrap();
            scalar("loss", sg.loss, sc.loss);
            scalar("gradient norm", sg.grad_norm, sc.grad_norm);
            let layout = g.layout.clone();
            let (gg, gc, gf) = (g.grads().unwrap(), c.grads().unwrap(), f.grads().unwrap());
            for (i, s) in layout.specs.iter().enumerate() {
                let (a, b, d) = (layout.slice(&gg, i), layout.slice(&gc, i), layout.slice(&gf, i));
                check(&format!("grad {}", s.name), rel_l2(a, b), rel_l2(a, d), rel_l2(b, d));
            }
            let (lg, lc, lf) = (g.logits().unwrap(), c.logits().unwrap(), f.logits().unwrap());
            check("logits", rel_l2(&lg, &lc), rel_l2(&lg, &lf), rel_l2(&lc, &lf));
            // Three steps: the updates (and the half copy of the weights they refresh) agree too.
            for step in 1..=3 {
                let hyper = AdamwHyper::at_step(3e-3, 0.9, 0.95, 1e-8, 0.5, step);
                let (lg, lc, lf) =
                    (g.step(&hyper).unwrap(), c.step(&hyper).unwrap(), f.step(&hyper).unwrap());
                scalar(&format!("step {step} loss"), lg.loss, lc.loss);
                // And the mode trains the model f32 does (a stale half copy of the weights would
                // leave the loss where it was).
                let d = ((lc.loss - lf.loss).abs() / lf.loss) as f64;
                assert!(
                    d <= 4.0 * unit,
                    "{what}: step {step} loss {} in {}, {} in f32",
                    lc.loss,
                    precision.name(),
                    lf.loss
                );
            }
            eprintln!(
                "{what}: the GPU matches the CPU (at worst {worst:.2} of the mode's own distance from f32)"
            );
        }
    }
}

/// Ops split into pieces to bound the conversions' scratch (`Lowering`'s cap) do what the whole
/// ops do: on the CPU the forward pass is bit for bit the same (every row's products are), the
/// gradients differ only in the order a weight's gradient sums its rows (f32 rounding), and the GPU
/// matches the CPU with the pieces as without. The shape (T 64, C 48) keeps the pieces' f32 views
/// aligned, so the attention ops split by sequence too; the small cap splits the MLP, the
/// projections, GELU/SwiGLU and attention, and the scratch the GPU allocates stays under it.
#[test]
fn ops_split_to_bound_the_scratch_do_what_the_whole_ops_do() {
    // The CPU's comparisons run without a GPU too.
    let ctx = common::gpu();
    let shape = BatchShape { b: 3, t: 64, accum: 1 };
    // A vocabulary narrower than the widest row, so that the head's pieces (the logits are
    // 16-bit too) are under the least scratch below, and an unsplit MLP is not.
    let gpt2 = ModelConfig { n_positions: 64, vocab_size: 61, ..GPT2 };
    let llama = ModelConfig { n_positions: 64, vocab_size: 61, ..llama() };
    // A cap under every op's conversions, so that each splits as far as it can: into 64 rows (a
    // sequence for attention) at the least, so the widest row (GPT-2's MLP, 192; Llama's gate and
    // up projections side by side, 74) sets the least scratch.
    let cap = 4096;
    for (cfg, arch, widest) in [(gpt2, "gpt2", 192), (llama, "llama", 74)] {
        for attention in [Attention::Flash, Attention::Naive] {
            let what = format!("{arch} {}", attention.name());
            let bf16 = Precision::Bf16;
            let mut f32 =
                build_split(Box::new(CpuBackend::new()), cfg, shape, cap, Precision::F32, attention, 0.0);
            f32.compute_grads().unwrap();
            let (gf, lf) = (f32.grads().unwrap(), f32.logits().unwrap());
            let mut whole =
                build_split(Box::new(CpuBackend::new()), cfg, shape, SCRATCH_CAP, bf16, attention, 0.0);
            let mut split = build_split(Box::new(CpuBackend::new()), cfg, shape, cap, bf16, attention, 0.0);
            let (sw, ss) = (whole.compute_grads().unwrap(), split.compute_grads().unwrap());
            assert_eq!(
                sw.loss.to_bits(),
                ss.loss.to_bits(),
                "{what}: loss {} whole, {} split",
                sw.loss,
                ss.loss
            );
            let (lw, ls) = (whole.logits().unwrap(), split.logits().unwrap());
            assert!(lw.iter().zip(&ls).all(|(a, b)| a.to_bits() == b.to_bits()), "{what}: logits differ");
            let (gw, gs) = (whole.grads().unwrap(), split.grads().unwrap());
            let d = rel_l2(&gs, &gw);
            assert!(d < 1e-6, "{what}: split gradients {d:.2e} from whole");
            let Some(ctx) = &ctx else { continue };
            let gpu = wgslm::gpu::GpuBackend::with_context(ctx.clone());
            let mut g = build_split(Box::new(gpu), cfg, shape, cap, bf16, attention, 0.0);
            let (sg, lg) = (g.compute_grads().unwrap(), g.logits().unwrap());
            // The GPU with the pieces against the CPU with them, by same_model's measure: no farther
            // apart than the mode's rounding moves the CPU from f32.
            let unit = 2f64.powi(-8);
            let dl = ((sg.loss - ss.loss).abs() / ss.loss) as f64;
            assert!(dl <= unit / 8.0, "{what}: loss {} on the GPU, {} on the CPU", sg.loss, ss.loss);
            let gg = g.grads().unwrap();
            let (dg, dgf) = (rel_l2(&gg, &gs), rel_l2(&gs, &gf));
            assert!(
                dg <= dgf,
                "{what}: gradients: the GPU is {dg:.2e} from the CPU, the CPU {dgf:.2e} from f32"
            );
            let (dc, dcf) = (rel_l2(&lg, &ls), rel_l2(&ls, &lf));
            assert!(
                dc <= dcf,
                "{what}: logits: the GPU is {dc:.2e} from the CPU, the CPU {dcf:.2e} from f32"
            );
            // Every output scratch buffer is under the cap (the pieces were made).
            let scratch: Vec<_> = g
                .backend()
                .buffers()
                .into_iter()
                .filter(|(label, _)| label.starts_with("mixed-precision scratch (output"))
                .collect();
            assert!(!scratch.is_empty(), "{what}: no output scratch");
            // Naive attention's probabilities of one sequence are the least piece of it.
            let mut least = 64 * widest;
            if attention == Attention::Naive {
                least = least.max(cfg.n_head * shape.t * shape.t);
            }
            for (label, bytes) in scratch {
                assert!(bytes <= 4 * cap.max(least) as u64, "{what}: {label} is {bytes} bytes, over the cap");
            }
        }
    }
}

#[test]
fn gpt2_in_half_precision_matches_the_cpu() {
    same_model(GPT2, "gpt2", 0.0, None);
}

/// With dropout, whose backward pass writes the 16-bit gradients of the projections (and, in
/// naive attention, whose masks keep attention whole: unsplit 16-bit outputs).
#[test]
fn gpt2_with_dropout_in_half_precision_matches_the_cpu() {
    same_model(GPT2, "gpt2 with dropout", 0.1, None);
}

/// With the bindings limited to 64 rows of logits, the GPU runs the head, the loss and its
/// gradient over two chunks of the 74 rows (the gradient of the final norm, zeroed once, is
/// written by both); the CPU runs one.
#[test]
fn gpt2_with_a_chunked_classifier_in_half_precision_matches_the_cpu() {
    same_model(GPT2, "gpt2 in chunks", 0.0, Some(64 * GPT2.vocab_size + 63));
}

#[test]
fn llama_in_half_precision_matches_the_cpu() {
    same_model(llama(), "llama", 0.0, None);
}

fn tiny(overrides: &[&str]) -> TrainConfig {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/tiny.toml");
    let overrides: Vec<String> = overrides.iter().map(|s| s.to_string()).collect();
    TrainConfig::load(Some(&path), &overrides).unwrap()
}

fn run_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("wgslm-mixed-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn metrics(run: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    text.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

/// configs/tiny.toml in bf16 and in f16 learns as it does in f32: the same fall of the loss, and a
/// final validation loss within 1% of f32's (same seed, same batches).
#[test]
fn tiny_trains_in_bf16_and_f16_like_f32() {
    let Some(device) = common::gpu_device() else { return };
    let mut summaries = Vec::new();
    for precision in ["f32", "bf16", "f16"] {
        let out = run_dir(&format!("tiny-{precision}"));
        let cfg = tiny(&[&format!("precision={precision}"), "checkpoint_every=0"]);
        let s = wgslm::train::run(&cfg, &RunOptions::new(&out, device.clone())).unwrap();
        assert_eq!(s.steps, 100);
        let first = s.first_loss.unwrap();
        assert!(s.last_loss < first - 1.0, "{precision}: the loss fell only from {first} to {}", s.last_loss);
        let lines = metrics(&out);
        let scales: Vec<_> =
            lines.iter().filter(|v| v.get("loss").is_some()).map(|v| v.get("loss_scale")).collect();
        if precision == "f16" {
            assert!(scales.iter().all(|s| s.is_some()), "f16 metrics record the loss scale of every step");
        } else {
            assert!(scales.iter().all(|s| s.is_none()), "{precision} has no loss scale");
        }
        let (_, dir) = wgslm::train::checkpoint::latest(&out).unwrap();
        let state: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join("trainer.json")).unwrap()).unwrap();
        assert_eq!(state["precision"], precision);
        eprintln!("{precision}: loss {first} -> {}, val loss {:?}", s.last_loss, s.val_loss);
        summaries.push(s);
        let _ = std::fs::remove_dir_all(&out);
    }
    let f32_val = summaries[0].val_loss.unwrap();
    for (s, precision) in summaries[1..].iter().zip(["bf16", "f16"]) {
        let val = s.val_loss.unwrap();
        assert!(
            ((val - f32_val) / f32_val).abs() <= 0.01,
            "{precision}: val loss {val} is not within 1% of f32's {f32_val}"
        );
    }
}

/// f16's loss scaling: a step whose gradients overflow is skipped and halves the scale, without
/// counting as a bad step (the run goes on past max_bad_steps of them); the scaler's state is in the
/// checkpoint, and a resumed run continues with it, bit for bit.
#[test]
fn f16_overflow_halves_the_scale_and_a_resume_keeps_it() {
    let Some(device) = common::gpu_device() else { return };
    let cfg =
        tiny(&["precision=f16", "max_steps=16", "eval_every=8", "checkpoint_every=0", "max_bad_steps=1"]);
    // Steps 3, 4 and 5 overflow (their gradients are made non-finite while the loss stays finite).
    let options =
        |out: &Path| RunOptions { nan_steps: vec![3, 4, 5], ..RunOptions::new(out, device.clone()) };
    let straight = run_dir("f16-straight");
    let s = wgslm::train::run(&cfg, &options(&straight)).unwrap();
    assert_eq!(s.steps, 16, "overflows are not bad steps");
    let scales: Vec<f64> =
        metrics(&straight).iter().filter_map(|v| v.get("loss_scale").map(|s| s.as_f64().unwrap())).collect();
    let s0 = LossScaler::INITIAL as f64;
    assert_eq!(&scales[..6], &[s0, s0, s0, s0 / 2.0, s0 / 4.0, s0 / 8.0]);
    assert!(scales[6..].iter().all(|&s| s == s0 / 8.0));

    let interrupted = run_dir("f16-interrupted");
    let half = RunOptions { stop_after: Some(8), ..options(&interrupted) };
    wgslm::train::run(&cfg, &half).unwrap();
    let (_, dir) = wgslm::train::checkpoint::latest(&interrupted).unwrap();
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("trainer.json")).unwrap()).unwrap();
    assert_eq!(state["loss_scaler"]["scale"].as_f64(), Some(s0 / 8.0));
    assert_eq!(state["loss_scaler"]["clean_steps"].as_u64(), Some(3));
    wgslm::train::run(&cfg, &RunOptions { resume: true, ..options(&interrupted) }).unwrap();
    assert_eq!(common::step_losses(&straight), common::step_losses(&interrupted));
    // Every metric but the timings, the loss scale included, is the same.
    let untimed = |run: &Path| -> Vec<serde_json::Value> {
        metrics(run)
            .into_iter()
            .map(|mut v| {
                let o = v.as_object_mut().unwrap();
                o.remove("ms");
                o.remove("tokens_per_s");
                v
            })
            .collect()
    };
    assert_eq!(untimed(&straight), untimed(&interrupted));
}

/// f16 trains only where the adapter has shader-f16 (issue 13, item 2): elsewhere building the model
/// is an error that names bf16, and bf16 trains on the same adapter.
#[test]
fn f16_without_shader_f16_is_an_error_naming_bf16() {
    let Some(ctx) = common::gpu() else { return };
    let hidden = || {
        let mut gpu = wgslm::gpu::GpuBackend::with_context(ctx.clone());
        gpu.hide_shader_f16();
        Box::new(gpu)
    };
    let shape = BatchShape { b: 1, t: 8, accum: 1 };
    let mode = Mode::Train { weight_decay: 0.1, dropout: 0.0 };
    let err = Model::with_precision(hidden(), GPT2, shape, mode, Attention::Flash, Precision::F16)
        .err()
        .expect("f16 without shader-f16 must be refused")
        .to_string();
    assert!(err.contains("shader-f16") && err.contains("bf16"), "{err}");
    assert!(!err.contains('\n'), "one line: {err}");
    let mut m =
        Model::with_precision(hidden(), GPT2, shape, mode, Attention::Flash, Precision::Bf16).unwrap();
    m.set_params(&common::random_params(&GPT2, 7)).unwrap();
    m.set_batch(0, &[1; 8], &[2; 8]).unwrap();
    assert!(m.compute_grads().unwrap().loss.is_finite());
    // The CPU twins need no feature.
    Model::with_precision(Box::new(CpuBackend::new()), GPT2, shape, mode, Attention::Flash, Precision::F16)
        .unwrap();
}
