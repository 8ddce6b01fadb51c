//! Sampling with a key/value cache gives what sampling over the whole context gives: the same logits
//! (to rounding) and the same tokens for the same seed, for both architectures, on the GPU and the CPU,
//! past the block size (where the window slides and the cache is refilled).

mod common;

use wgslm::backend::Backend;
use wgslm::cpu::CpuBackend;
use wgslm::data::Tok;
use wgslm::model::{Arch, Attention, BatchShape, LlamaConfig, Mode, Model, ModelConfig, Precision};
use wgslm::rng::Rng;
use wgslm::sample::{generate, SampleOptions};
use wgslm::verify::rel_l2;

/// Byte vocabulary (257 with end-of-text), awkward widths, a block of 29 positions.
fn configs() -> [(&'static str, ModelConfig); 2] {
    let llama = LlamaConfig {
        n_kv_head: 2,
        intermediate_size: 37,
        rope_theta: 500.0,
        norm_eps: 1e-5,
        tie_embeddings: false,
    };
    [
        ("gpt2", ModelConfig::gpt2(2, 3, 36, 257, 29)),
        (
            "llama",
            ModelConfig {
                arch: Arch::Llama(llama),
                n_layer: 2,
                n_head: 6,
                n_embd: 36,
                vocab_size: 257,
                n_positions: 29,
            },
        ),
    ]
}

/// A model built for batches of 2 (so sampling runs on its own one-sequence frame), or for one
/// sequence (sampling shares the training frame).
fn model(backend: Box<dyn Backend>, cfg: ModelConfig, b: usize) -> Model {
    let shape = BatchShape { b, t: cfg.n_positions, accum: 1 };
    let mut m = Model::new(backend, cfg, shape, Mode::Train { weight_decay: 0.1, dropout: 0.0 }).unwrap();
    m.set_params(&common::random_params(&cfg, 17)).unwrap();
    m.enable_sampling().unwrap();
    m
}

/// Makes a fresh backend.
type Make = Box<dyn Fn() -> Box<dyn Backend>>;

fn backends() -> Vec<(&'static str, Make)> {
    let mut all: Vec<(&'static str, Make)> =
        vec![("cpu", Box::new(|| Box::new(CpuBackend::new()) as Box<dyn Backend>))];
    if common::gpu().is_some() {
        all.push(("gpu", Box::new(|| Box::new(common::gpu_backend().unwrap()) as Box<dyn Backend>)));
    }
    all
}

#[test]
fn cached_logits_match_full_context_logits() {
    for (backend_name, backend) in backends() {
        for (arch, cfg) in configs() {
            for b in [1, 2] {
                let (mut cached, mut full) = (model(backend(), cfg, b), model(backend(), cfg, b));
                full.set_kv_cache(false);
                let mut rng = Rng::new(3);
                let ids: Vec<u32> = (0..cfg.n_positions).map(|_| rng.below(257) as u32).collect();
                // A prompt of 5, one token at a time to the block size, then a context that is not an
                // extension (refilled), then three tokens at once.
                let mut lens: Vec<usize> = (5..=cfg.n_positions).collect();
                lens.extend([7, 10]);
                for len in lens {
                    let (got, want) =
                        (cached.next_logits(&ids[..len]).unwrap(), full.next_logits(&ids[..len]).unwrap());
                    let err = rel_l2(&got, &want);
                    assert!(
                        err <= 1e-5,
                        "{backend_name} {arch} b={b}: logits after {len} tokens: relative L2 {err:.2e}"
                    );
                }
                // A step changes the weights: the cache must not serve the old ones.
                let shape_ids: Vec<u32> = (0..b * cfg.n_positions).map(|_| rng.below(257) as u32).collect();
                for m in [&mut cached, &mut full] {
                    m.set_batch(0, &shape_ids, &shape_ids).unwrap();
                    m.step(&wgslm::backend::AdamwHyper::at_step(1e-2, 0.9, 0.95, 1e-8, 1.0, 1)).unwrap();
                }
                let (got, want) =
                    (cached.next_logits(&ids[..11]).unwrap(), full.next_logits(&ids[..11]).unwrap());
                assert!(rel_l2(&got, &want) <= 1e-5, "{backend_name} {arch} b={b}: after a step");
            }
        }
    }
}

/// A model training in bf16 samples from its f32 master weights on an f32 frame with the key/value
/// cache: its logits are the f32 model's, bit for bit, for one-sequence training batches as for
/// larger ones; after a step, the cache follows the updated weights.
#[test]
fn mixed_precision_samples_from_the_master_weights_with_the_cache() {
    for (backend_name, backend) in backends() {
        for (arch, cfg) in configs() {
            for b in [1, 2] {
                let what = format!("{backend_name} {arch} b={b}");
                let f32 = model(backend(), cfg, b);
                let shape = BatchShape { b, t: cfg.n_positions, accum: 1 };
                let be = backend();
                let attention = Attention::choose("auto", be.as_ref(), shape.t, cfg.head_size()).unwrap();
                let mode = Mode::Train { weight_decay: 0.1, dropout: 0.0 };
                let mut bf16 =
                    Model::with_precision(be, cfg, shape, mode, attention, Precision::Bf16).unwrap();
                bf16.set_params(&common::random_params(&cfg, 17)).unwrap();
                bf16.enable_sampling().unwrap();
                let mut f32 = f32;
                let mut rng = Rng::new(4);
                let ids: Vec<u32> = (0..cfg.n_positions).map(|_| rng.below(257) as u32).collect();
                for len in [5, 6, 9, cfg.n_positions] {
                    let (got, want) =
                        (bf16.next_logits(&ids[..len]).unwrap(), f32.next_logits(&ids[..len]).unwrap());
                    assert!(
                        got.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits()),
                        "{what}: bf16 model's logits after {len} tokens are not the f32 model's"
                    );
                }
                if backend_name == "gpu" {
                    assert!(!bf16.profile_decode().unwrap().is_empty(), "{what}: no key/value cache program");
                }
                // The cache holds 10 tokens; after a step, 11 extend them, and only a cache that was
                // forgotten gives the updated weights' logits.
                bf16.next_logits(&ids[..10]).unwrap();
                let batch: Vec<u32> = (0..b * cfg.n_positions).map(|_| rng.below(257) as u32).collect();
                bf16.set_batch(0, &batch, &batch).unwrap();
                bf16.step(&wgslm::backend::AdamwHyper::at_step(1e-2, 0.9, 0.95, 1e-8, 1.0, 1)).unwrap();
                let cached = bf16.next_logits(&ids[..11]).unwrap();
                bf16.set_kv_cache(false);
                let full = bf16.next_logits(&ids[..11]).unwrap();
                assert!(rel_l2(&cached, &full) <= 1e-5, "{what}: after a step");
            }
        }
    }
}

#[test]
fn cached_sampling_gives_the_same_text_for_the_same_seed() {
    let tok = Tok::bytes().unwrap();
    for (backend_name, backend) in backends() {
        for (arch, cfg) in configs() {
            let mut texts = Vec::new();
            for cache in [true, false] {
                let mut m = model(backend(), cfg, 2);
                m.set_kv_cache(cache);
                // 60 new tokens: past the block size of 29, where the window slides.
                let opts =
                    SampleOptions { max_new_tokens: 60, temperature: 1.0, top_k: 0, top_p: 1.0, seed: 5 };
                let mut pieces = String::new();
                let text = generate(&mut m, &tok, "Once", &opts, |p| pieces.push_str(p)).unwrap();
                assert_eq!(pieces, text, "the pieces handed out as they come make up the text");
                texts.push(text);
            }
            assert!(texts[0].len() >= 30, "{backend_name} {arch}: too short to compare: {:?}", texts[0]);
            assert_eq!(texts[0], texts[1], "{backend_name} {arch}: cached and full-context sampling differ");
        }
    }
}
