//! The GPT-2 schedule beyond the PyTorch fixture: GPU against CPU on a model with awkward sizes,
//! gradient accumulation, a step that allocates nothing, and Hugging Face import/export.

mod common;

use std::path::Path;

use wgslm::backend::{AdamwHyper, Backend};
use wgslm::cpu::CpuBackend;
use wgslm::model::{hf, BatchShape, Mode, Model, ModelConfig, ParamLayout};
use wgslm::rng::Rng;
use wgslm::tensors::{self, Tensor};
use wgslm::verify::rel_l2;

/// n_embd 48 with 3 heads (head size 16), vocab 997, T 37 of 40 positions, B 3: nothing a power of two
/// that need not be.
const AWKWARD: ModelConfig = ModelConfig::gpt2(2, 3, 48, 997, 40);

/// Parameters with every tensor random (gains near one), so that a kernel ignoring a bias fails.
fn random_params(cfg: &ModelConfig, seed: u64) -> Vec<f32> {
    let layout = ParamLayout::new(cfg);
    let mut rng = Rng::new(seed);
    let mut flat = vec![0f32; layout.total];
    for s in &layout.specs {
        let gain = s.name.contains("ln_") && s.name.ends_with(".weight");
        for x in &mut flat[s.offset..s.offset + s.len()] {
            *x = if gain { 1.0 + 0.1 * rng.normal() as f32 } else { 0.08 * rng.normal() as f32 };
        }
    }
    flat
}

fn random_tokens(rng: &mut Rng, n: usize, vocab: usize) -> Vec<u32> {
    (0..n).map(|_| rng.below(vocab as u64) as u32).collect()
}

fn build(backend: Box<dyn Backend>, cfg: ModelConfig, shape: BatchShape, seed: u64) -> Model {
    build_with(backend, cfg, shape, seed, 0.0)
}

fn build_with(
    backend: Box<dyn Backend>,
    cfg: ModelConfig,
    shape: BatchShape,
    seed: u64,
    dropout: f32,
) -> Model {
    let mut model = Model::new(backend, cfg, shape, Mode::Train { weight_decay: 0.1, dropout }).unwrap();
    model.set_dropout_seed(seed as u32).unwrap();
    model.set_params(&random_params(&cfg, seed)).unwrap();
    let mut rng = Rng::new(seed + 1);
    for micro in 0..shape.accum {
        let inputs = random_tokens(&mut rng, shape.tokens(), cfg.vocab_size);
        let targets = random_tokens(&mut rng, shape.tokens(), cfg.vocab_size);
        model.set_batch(micro, &inputs, &targets).unwrap();
    }
    model
}

fn assert_close(what: &str, got: &[f32], want: &[f32], tol: f64) {
    let err = rel_l2(got, want);
    assert!(err <= tol, "{what}: relative L2 {err:.2e} > {tol:.0e}");
}

fn assert_grads_close(layout: &ParamLayout, got: &[f32], want: &[f32], tol: f64) {
    for (i, s) in layout.specs.iter().enumerate() {
        assert_close(&format!("grad {}", s.name), layout.slice(got, i), layout.slice(want, i), tol);
    }
}

/// Under every matmul variant the adapter has.
#[test]
fn gpu_matches_cpu_on_an_awkward_model() {
    for (variant, gpu) in common::gpu_backend_per_variant() {
        let shape = BatchShape { b: 3, t: 37, accum: 2 };
        let mut g = build(Box::new(gpu), AWKWARD, shape, 7);
        let mut c = build(Box::new(CpuBackend::new()), AWKWARD, shape, 7);
        let (sg, sc) = (g.compute_grads().unwrap(), c.compute_grads().unwrap());
        assert!(
            (sg.loss - sc.loss).abs() <= 1e-5 * sc.loss.abs(),
            "[{variant}] loss {} vs {}",
            sg.loss,
            sc.loss
        );
        assert!(
            (sg.grad_norm - sc.grad_norm).abs() <= 1e-5 * sc.grad_norm,
            "[{variant}] norm {} vs {}",
            sg.grad_norm,
            sc.grad_norm
        );
        // After the backward pass the logits buffer holds their gradient (written in place).
        let what = |name: &str| format!("[{variant}] {name}");
        assert_close(&what("dlogits"), &g.last_logits().unwrap(), &c.last_logits().unwrap(), 1e-5);
        assert_close(&what("logits"), &g.logits().unwrap(), &c.logits().unwrap(), 1e-5);
        assert_grads_close(&g.layout.clone(), &g.grads().unwrap(), &c.grads().unwrap(), 1e-5);

        // Three steps with clipping active (the norm is well above 0.5): updates and losses agree.
        let before = c.params().unwrap();
        for t in 1..=3 {
            let hyper = AdamwHyper::at_step(3e-3, 0.9, 0.95, 1e-8, 0.5, t);
            let (lg, lc) = (g.step(&hyper).unwrap(), c.step(&hyper).unwrap());
            assert!(
                (lg.loss - lc.loss).abs() <= 1e-4,
                "[{variant}] step {t} loss {} vs {}",
                lg.loss,
                lc.loss
            );
        }
        let (pg, pc) = (g.params().unwrap(), c.params().unwrap());
        let dg: Vec<f32> = pg.iter().zip(&before).map(|(a, b)| a - b).collect();
        let dc: Vec<f32> = pc.iter().zip(&before).map(|(a, b)| a - b).collect();
        assert_close(&what("3-step update"), &dg, &dc, 5e-3);
        eprintln!("[{variant}] matches the CPU");
    }
}

/// With dropout on every site, the GPU and the CPU draw the same masks and agree; and the masks change
/// the result (dropout is not a no-op).
#[test]
fn gpu_matches_cpu_with_dropout() {
    let Some(gpu) = common::gpu_backend() else { return };
    let shape = BatchShape { b: 2, t: 37, accum: 2 };
    let mut g = build_with(Box::new(gpu), AWKWARD, shape, 9, 0.2);
    let mut c = build_with(Box::new(CpuBackend::new()), AWKWARD, shape, 9, 0.2);
    let (sg, sc) = (g.compute_grads().unwrap(), c.compute_grads().unwrap());
    assert!((sg.loss - sc.loss).abs() <= 1e-5 * sc.loss.abs(), "loss {} vs {}", sg.loss, sc.loss);
    assert_grads_close(&g.layout.clone(), &g.grads().unwrap(), &c.grads().unwrap(), 1e-5);
    let mut plain = build(Box::new(CpuBackend::new()), AWKWARD, shape, 9);
    let sp = plain.compute_grads().unwrap();
    assert!((sp.loss - sc.loss).abs() > 1e-3, "dropout changed nothing: {} vs {}", sp.loss, sc.loss);
    // A new seed draws new masks.
    c.set_dropout_seed(10).unwrap();
    assert_ne!(c.compute_grads().unwrap().loss, sc.loss);
}

/// Accumulating two micro-batches gives the mean of their losses and of their gradients.
#[test]
fn gradient_accumulation_averages_micro_batches() {
    let cfg = ModelConfig::gpt2(1, 2, 16, 37, 8);
    let (b, t) = (2, 7);
    let params = random_params(&cfg, 3);
    let mut rng = Rng::new(4);
    let batches: Vec<(Vec<u32>, Vec<u32>)> = (0..2)
        .map(|_| {
            (random_tokens(&mut rng, b * t, cfg.vocab_size), random_tokens(&mut rng, b * t, cfg.vocab_size))
        })
        .collect();
    let new = |accum| {
        let mut m = Model::new(
            Box::new(CpuBackend::new()),
            cfg,
            BatchShape { b, t, accum },
            Mode::Train { weight_decay: 0.0, dropout: 0.0 },
        )
        .unwrap();
        m.set_params(&params).unwrap();
        m
    };
    let mut both = new(2);
    for (i, (x, y)) in batches.iter().enumerate() {
        both.set_batch(i, x, y).unwrap();
    }
    let s = both.compute_grads().unwrap();
    let mut single = new(1);
    let mut losses = Vec::new();
    let mut sum = vec![0f32; both.layout.total];
    for (x, y) in &batches {
        single.set_batch(0, x, y).unwrap();
        losses.push(single.compute_grads().unwrap().loss);
        for (acc, g) in sum.iter_mut().zip(single.grads().unwrap()) {
            *acc += g / 2.0;
        }
    }
    let mean = (losses[0] + losses[1]) / 2.0;
    assert!((s.loss - mean).abs() <= 1e-6 * mean, "loss {} vs mean {mean}", s.loss);
    assert_grads_close(&both.layout.clone(), &both.grads().unwrap(), &sum, 1e-6);
}

/// After the first step, a step creates no buffers, bind groups or pipelines, and submits exactly
/// twice: the step itself and the readback of the loss.
#[test]
fn a_training_step_allocates_nothing() {
    let Some(gpu) = common::private_gpu_backend() else {
        return;
    };
    let cfg = ModelConfig::gpt2(2, 2, 32, 50, 16);
    let mut model = build(Box::new(gpu), cfg, BatchShape { b: 2, t: 16, accum: 2 }, 1);
    let hyper = AdamwHyper::at_step(1e-3, 0.9, 0.95, 1e-8, 1.0, 1);
    model.step(&hyper).unwrap();
    let after_first = model.backend().created();
    for _ in 0..3 {
        model.step(&hyper).unwrap();
    }
    let now = model.backend().created();
    assert_eq!(
        (now.buffers, now.bind_groups, now.pipelines),
        (after_first.buffers, after_first.bind_groups, after_first.pipelines),
        "a step created GPU objects"
    );
    assert_eq!(
        now.submits,
        after_first.submits + 3 * 2,
        "a step submitted more than the step and one readback"
    );
}

#[test]
fn hf_export_import_round_trip_is_bit_exact() {
    let dir = tempdir("round-trip");
    let flat = random_params(&AWKWARD, 11);
    hf::save(&dir, &AWKWARD, &flat, Some(5)).unwrap();
    let (cfg, back) = hf::load(&dir).unwrap();
    assert_eq!(cfg, AWKWARD);
    assert!(flat.iter().zip(&back).all(|(a, b)| a.to_bits() == b.to_bits()), "the round trip changed bits");
}

fn tempdir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("wgslm-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Writes a model directory with the given tensors and the AWKWARD config.
fn write_model(dir: &Path, tensors: Vec<(String, Tensor<'_>)>) {
    std::fs::write(dir.join("config.json"), hf::config_json(&AWKWARD, None).to_string()).unwrap();
    tensors::write(&dir.join("model.safetensors"), tensors, None).unwrap();
}

/// The AWKWARD model's tensors as HF writes them, renamed by `rename` (None drops a tensor).
fn hf_tensors<'a>(
    layout: &ParamLayout,
    flat: &'a [f32],
    rename: impl Fn(&str) -> Option<String>,
) -> Vec<(String, Tensor<'a>)> {
    layout
        .specs
        .iter()
        .enumerate()
        .filter_map(|(i, s)| {
            rename(&s.name).map(|n| (n, Tensor::F32(layout.slice(flat, i), s.shape.clone())))
        })
        .collect()
}

#[test]
fn hf_import_accepts_what_transformers_writes() {
    let layout = ParamLayout::new(&AWKWARD);
    let flat = random_params(&AWKWARD, 12);
    let wte = layout.slice(&flat, layout.index("transformer.wte.weight").unwrap());
    let mask = vec![1f32; 40 * 40];

    // No `transformer.` prefix, mask buffers present, lm_head.weight equal to wte.
    let dir = tempdir("import-variants");
    let mut t = hf_tensors(&layout, &flat, |n| Some(n.trim_start_matches("transformer.").to_string()));
    t.push(("h.0.attn.bias".into(), Tensor::F32(&mask, vec![1, 1, 40, 40])));
    t.push(("h.1.attn.masked_bias".into(), Tensor::F32(&mask[..1], vec![])));
    t.push(("lm_head.weight".into(), Tensor::F32(wte, vec![997, 48])));
    write_model(&dir, t);
    let (_, back) = hf::load(&dir).unwrap();
    assert_eq!(back, flat);
}

#[test]
fn hf_import_names_what_is_wrong() {
    let layout = ParamLayout::new(&AWKWARD);
    let flat = random_params(&AWKWARD, 13);
    let other = vec![0.5f32; 997 * 48];
    let ints = vec![0i32; 48];
    // (case, the tensors written, what the error must say)
    type Case<'a> = (&'a str, Vec<(String, Tensor<'a>)>, &'a str);
    let cases: Vec<Case<'_>> =
        vec![
            (
                "missing",
                hf_tensors(&layout, &flat, |n| (n != "transformer.h.1.ln_2.bias").then(|| n.to_string())),
                "transformer.h.1.ln_2.bias` is missing",
            ),
            (
                "unexpected",
                {
                    let mut t = hf_tensors(&layout, &flat, |n| Some(n.to_string()));
                    t.push(("transformer.h.2.ln_1.weight".into(), Tensor::F32(&flat[..48], vec![48])));
                    t
                },
                "unexpected tensor `transformer.h.2.ln_1.weight`",
            ),
            (
                "untied",
                {
                    let mut t = hf_tensors(&layout, &flat, |n| Some(n.to_string()));
                    t.push(("lm_head.weight".into(), Tensor::F32(&other, vec![997, 48])));
                    t
                },
                "lm_head.weight differs from wte",
            ),
            (
                "shape",
                hf_tensors(&layout, &flat, |n| Some(n.to_string()))
                    .into_iter()
                    .map(|(n, t)| {
                        if n == "transformer.h.0.attn.c_proj.weight" {
                            let Tensor::F32(d, _) = t else { unreachable!() };
                            (n, Tensor::F32(d, vec![96, 24]))
                        } else {
                            (n, t)
                        }
                    })
                    .collect(),
                "`transformer.h.0.attn.c_proj.weight` has shape [96, 24], expected [48, 48]",
            ),
            (
                "dtype",
                hf_tensors(&layout, &flat, |n| Some(n.to_string()))
                    .into_iter()
                    .map(|(n, t)| {
                        if n == "transformer.ln_f.bias" {
                            (n, Tensor::I32(&ints, vec![48]))
                        } else {
                            (n, t)
                        }
                    })
                    .collect(),
                "`transformer.ln_f.bias` is I32, expected F32",
            ),
        ];
    for (name, tensors, want) in cases {
        let dir = tempdir(&format!("import-{name}"));
        write_model(&dir, tensors);
        let err = hf::load(&dir).err().unwrap_or_else(|| panic!("{name}: loaded")).to_string();
        assert!(err.contains(want), "{name}: the error `{err}` does not say `{want}`");
        assert!(err.contains("model.safetensors"), "{name}: the error `{err}` does not name the file");
    }
}

/// A device that disappears mid-run (here destroyed on purpose) is an error, not a panic.
#[test]
fn a_lost_device_is_an_error() {
    if common::gpu().is_none() {
        return;
    }
    // A context of its own (destroying the shared one would end every other GPU test), on the adapter
    // the GPU tests run on.
    let device: wgslm::gpu::DeviceChoice =
        std::env::var("WGSLM_TEST_DEVICE").unwrap_or_else(|_| "auto".into()).parse().unwrap();
    let ctx = std::sync::Arc::new(wgslm::gpu::GpuContext::new(&device).unwrap());
    let gpu = wgslm::gpu::GpuBackend::with_context(ctx.clone());
    let cfg = ModelConfig::gpt2(1, 2, 16, 20, 8);
    let mut model = build(Box::new(gpu), cfg, BatchShape { b: 2, t: 8, accum: 1 }, 3);
    let hyper = AdamwHyper::at_step(1e-3, 0.9, 0.95, 1e-8, 1.0, 1);
    model.step(&hyper).unwrap();
    ctx.device.destroy();
    let err = model.step(&hyper).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, wgslm::Error::DeviceLost(_)), "{msg}");
    assert!(msg.contains("last checkpoint is intact") && msg.contains("--resume"), "{msg}");
}

/// The tensor names, dtypes and shapes of a safetensors file, and its metadata.
type Header = (
    std::collections::BTreeMap<String, (String, Vec<usize>)>,
    Option<std::collections::HashMap<String, String>>,
);

fn header(path: &Path) -> Header {
    let bytes = std::fs::read(path).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let tensors =
        meta.tensors().into_iter().map(|(n, i)| (n, (format!("{:?}", i.dtype), i.shape.clone()))).collect();
    (tensors, meta.metadata().clone())
}

/// An export carries exactly what transformers' `save_pretrained` wrote for the fixture: the same
/// tensor names, dtypes and shapes, `format = pt` metadata, and the config fields that shape the model
/// with the same values — so `GPT2LMHeadModel.from_pretrained` finds no missing or unexpected keys.
#[test]
fn hf_export_matches_what_transformers_writes() {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/gpt2-tiny");
    let (cfg, flat) = hf::load(&fixture).unwrap();
    let dir = tempdir("export-layout");
    hf::save(&dir, &cfg, &flat, Some(0)).unwrap();
    let (want, want_meta) = header(&fixture.join("model.safetensors"));
    let (got, got_meta) = header(&dir.join("model.safetensors"));
    assert_eq!(got, want, "the exported tensors differ from transformers' own");
    assert_eq!(got_meta.unwrap().get("format"), want_meta.unwrap().get("format"));
    let json =
        |p: &Path| -> serde_json::Value { serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap() };
    let (want, got) = (json(&fixture.join("config.json")), json(&dir.join("config.json")));
    for key in [
        "architectures",
        "model_type",
        "activation_function",
        "layer_norm_epsilon",
        "n_embd",
        "n_head",
        "n_layer",
        "n_positions",
        "vocab_size",
        "tie_word_embeddings",
        "scale_attn_weights",
        "bos_token_id",
        "eos_token_id",
    ] {
        assert_eq!(got.get(key), want.get(key), "config.json field {key}");
    }
}
