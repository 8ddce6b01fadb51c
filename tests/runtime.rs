//! The architecture-free runtime: the classifier over chunks of rows and the attention variants, on
//! both architectures, against the CPU backend computing the same model in one chunk.

mod common;

use wgslm::backend::Backend;
use wgslm::cpu::CpuBackend;
use wgslm::model::layout::Init;
use wgslm::model::{Arch, Attention, BatchShape, LlamaConfig, Mode, Model, ModelConfig, ParamLayout};
use wgslm::rng::Rng;

const GPT2: ModelConfig = ModelConfig::gpt2(2, 3, 48, 997, 40);

fn llama() -> ModelConfig {
    let l = LlamaConfig {
        n_kv_head: 2,
        intermediate_size: 37,
        rope_theta: 500.0,
        norm_eps: 1e-5,
        tie_embeddings: false,
    };
    ModelConfig { arch: Arch::Llama(l), n_layer: 2, n_head: 6, n_embd: 36, vocab_size: 997, n_positions: 40 }
}

fn build(
    backend: Box<dyn Backend>,
    cfg: ModelConfig,
    shape: BatchShape,
    attention: Attention,
    dropout: f32,
) -> Model {
    let mode = Mode::Train { weight_decay: 0.1, dropout };
    let mut model = Model::with_attention(backend, cfg, shape, mode, attention).unwrap();
    model.set_dropout_seed(5).unwrap();
    let layout = ParamLayout::new(&cfg);
    let mut rng = Rng::new(3);
    let mut flat = vec![0f32; layout.total];
    for s in &layout.specs {
        for x in &mut flat[s.offset..s.offset + s.len()] {
            *x = if s.init == Init::Ones {
                1.0 + 0.1 * rng.normal() as f32
            } else {
                0.08 * rng.normal() as f32
            };
        }
    }
    model.set_params(&flat).unwrap();
    for micro in 0..shape.accum {
        let ids: Vec<u32> =
            (0..2 * shape.tokens()).map(|_| rng.below(cfg.vocab_size as u64) as u32).collect();
        model.set_batch(micro, &ids[..shape.tokens()], &ids[shape.tokens()..]).unwrap();
    }
    model
}

/// With the bindings limited to 64 rows of a 997-token vocabulary, the head, the loss and its
/// gradient run over 3 chunks of the 148 rows (the last one short); the CPU runs them in one.
#[test]
fn a_chunked_classifier_matches_one_chunk() {
    let Some(ctx) = common::gpu() else { return };
    let shape = BatchShape { b: 4, t: 37, accum: 2 };
    for cfg in [GPT2, llama()] {
        let mut gpu = wgslm::gpu::GpuBackend::with_context(ctx.clone());
        gpu.limit_bindings(64 * 997 + 63);
        assert_eq!(gpu.max_binding() / 997, 64);
        let mut g = build(Box::new(gpu), cfg, shape, Attention::Naive, 0.0);
        let mut c = build(Box::new(CpuBackend::new()), cfg, shape, Attention::Naive, 0.0);
        common::assert_same_model(&mut g, &mut c, &format!("{} in chunks", cfg.arch.name()));
    }
}

/// Flash attention on the GPU against naive attention on the CPU: the same model, loss and gradients
/// (the variants compute the same function), GPT-2 with and without dropout (the masks regenerate
/// from the same counter hash) and a grouped-query Llama.
#[test]
fn flash_attention_trains_the_same_model_as_naive() {
    let Some(ctx) = common::gpu() else { return };
    let shape = BatchShape { b: 2, t: 37, accum: 2 };
    for (cfg, dropout) in [(GPT2, 0.0), (GPT2, 0.2), (llama(), 0.0)] {
        let gpu = wgslm::gpu::GpuBackend::with_context(ctx.clone());
        let mut g = build(Box::new(gpu), cfg, shape, Attention::Flash, dropout);
        let mut c = build(Box::new(CpuBackend::new()), cfg, shape, Attention::Naive, dropout);
        common::assert_same_model(&mut g, &mut c, &format!("{} flash, dropout {dropout}", cfg.arch.name()));
    }
}

/// The CPU twins of the two variants agree on the whole model too.
#[test]
fn flash_and_naive_twins_agree_on_the_whole_model() {
    let shape = BatchShape { b: 2, t: 19, accum: 1 };
    for cfg in [GPT2, llama()] {
        let mut f = build(Box::new(CpuBackend::new()), cfg, shape, Attention::Flash, 0.0);
        let mut n = build(Box::new(CpuBackend::new()), cfg, shape, Attention::Naive, 0.0);
        common::assert_same_model(&mut f, &mut n, &format!("{} flash twin", cfg.arch.name()));
    }
}

/// Issue 16, item 1: a tensor a u32 index cannot reach (crossentropy's n·v here, 2³³ logits) is refused
/// with an error that names the op, before anything is dispatched; nothing wraps silently.
#[test]
fn a_tensor_past_u32_indexing_is_refused_before_dispatch() {
    use wgslm::backend::{BufId, Op, View};
    let Some(ctx) = common::gpu() else { return };
    let mut gpu = wgslm::gpu::GpuBackend::with_context(ctx);
    let (n, v) = (1usize << 20, 1usize << 13);
    let view = |buf: usize, len: usize| View::new(BufId(1000 + buf), 0, len);
    let op = Op::CrossentropyForward {
        losses: view(0, n),
        lse: view(1, n),
        logits: view(2, n * v),
        targets: view(3, n),
        n,
        v,
    };
    let err = gpu.prepare(&[op]).unwrap_err().to_string();
    assert!(
        err.contains("crossentropy_forward")
            && err.contains("8589934592 elements")
            && err.contains("32 bits"),
        "{err}"
    );
}

/// `attention = "auto"` asks the backend: on an adapter that cannot run the fused kernels at a shape
/// (lavapipe's loop limit at long T with large heads; llvmpipe under GL at all) it takes the naive
/// ones instead of failing, while an explicit "flash" stays flash (and is refused with the reason).
#[test]
fn auto_attention_falls_back_where_flash_cannot_run() {
    let Some(gpu) = common::gpu_backend() else { return };
    let cpu = CpuBackend::new();
    assert_eq!(Attention::choose("auto", &cpu, 1 << 16, 128), Some(Attention::Flash));
    assert_eq!(Attention::choose("auto", &gpu, 64, 16), Some(Attention::Flash), "short sequences run fused");
    assert_eq!(Attention::choose("naive", &gpu, 64, 16), Some(Attention::Naive));
    assert_eq!(Attention::choose("bogus", &gpu, 64, 16), None);
    let software = gpu.context().adapter.info.device_type == wgpu::DeviceType::Cpu;
    let long = (1usize..=20).map(|p| 1 << p).find(|&t| gpu.flash_unsupported(t, 128).is_some());
    if software {
        let t = long.expect("a software adapter stops loops after 65,535 iterations, so some T is too long");
        let why = gpu.flash_unsupported(t, 128).unwrap();
        assert!(why.contains("65,535"), "{why}");
        assert_eq!(Attention::choose("auto", &gpu, t, 128), Some(Attention::Naive));
        assert_eq!(Attention::choose("flash", &gpu, t, 128), Some(Attention::Flash));
    } else {
        assert_eq!(long, None, "a hardware adapter has no loop limit");
    }
}
