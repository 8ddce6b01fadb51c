//! The Llama schedule beyond the PyTorch fixture: GPU against CPU on a Llama with awkward sizes (odd
//! intermediate size, 6 query heads on 2 kv heads, head size 6, T 37), tied and untied heads, and
//! Hugging Face LlamaForCausalLM import and export.

mod common;

use std::path::{Path, PathBuf};

use wgslm::backend::Backend;
use wgslm::cpu::CpuBackend;
use wgslm::model::{hf, Arch, BatchShape, Mode, Model, ModelConfig, ParamLayout};
use wgslm::rng::Rng;
use wgslm::tensors::{self, Tensor};
use wgslm::verify::rel_l2;

fn awkward(tie_embeddings: bool) -> ModelConfig {
    common::awkward_llama(tie_embeddings)
}

fn build(backend: Box<dyn Backend>, cfg: ModelConfig, shape: BatchShape, seed: u64) -> Model {
    let mut model = Model::new(backend, cfg, shape, Mode::Train { weight_decay: 0.1, dropout: 0.0 }).unwrap();
    model.set_params(&common::random_params(&cfg, seed)).unwrap();
    let mut rng = Rng::new(seed + 1);
    let mut ids = || (0..shape.tokens()).map(|_| rng.below(cfg.vocab_size as u64) as u32).collect::<Vec<_>>();
    for micro in 0..shape.accum {
        let (x, y) = (ids(), ids());
        model.set_batch(micro, &x, &y).unwrap();
    }
    model
}

fn assert_close(what: &str, got: &[f32], want: &[f32], tol: f64) {
    let err = rel_l2(got, want);
    assert!(err <= tol, "{what}: relative L2 {err:.2e} > {tol:.0e}");
}

/// Under every matmul variant the adapter has.
fn gpu_matches_cpu(cfg: ModelConfig) {
    for (variant, gpu) in common::gpu_backend_per_variant() {
        let shape = BatchShape { b: 2, t: 37, accum: 2 };
        let mut g = build(Box::new(gpu), cfg, shape, 7);
        let mut c = build(Box::new(CpuBackend::new()), cfg, shape, 7);
        common::assert_same_model(&mut g, &mut c, &format!("llama [{variant}]"));
    }
}

#[test]
fn gpu_matches_cpu_on_an_awkward_llama() {
    gpu_matches_cpu(awkward(false));
}

#[test]
fn gpu_matches_cpu_on_an_awkward_llama_with_a_tied_head() {
    gpu_matches_cpu(awkward(true));
}

/// Sampling one sequence from a model built for batches gives the logits of the batch's forward
/// pass: the positions RoPE reads are those of the sequence, whatever the frame.
#[test]
fn llama_next_logits_match_the_batch_forward_pass() {
    let cfg = awkward(false);
    let shape = BatchShape { b: 2, t: 9, accum: 1 };
    let mut m = build(Box::new(CpuBackend::new()), cfg, shape, 3);
    let mut rng = Rng::new(5);
    let ids: Vec<u32> = (0..shape.tokens()).map(|_| rng.below(97) as u32).collect();
    m.set_batch(0, &ids, &ids).unwrap();
    let logits = m.logits().unwrap();
    m.enable_sampling().unwrap();
    let v = cfg.vocab_size;
    for len in [1, 5, 9] {
        let context = &ids[9..9 + len];
        let want = &logits[(9 + len - 1) * v..(9 + len) * v];
        assert_close(
            &format!("next logits after {len} tokens"),
            &m.next_logits(context).unwrap(),
            want,
            1e-6,
        );
    }
}

fn tempdir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("wgslm-llama-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn hf_round_trip_is_bit_exact_tied_and_untied() {
    for tie in [false, true] {
        let cfg = awkward(tie);
        let dir = tempdir(&format!("round-trip-{tie}"));
        let flat = common::random_params(&cfg, 11);
        hf::save(&dir, &cfg, &flat, Some(0)).unwrap();
        let (back_cfg, back) = hf::load(&dir).unwrap();
        assert_eq!(back_cfg, cfg);
        assert!(
            flat.iter().zip(&back).all(|(a, b)| a.to_bits() == b.to_bits()),
            "the round trip changed bits"
        );
        let names = tensors::TensorFile::open(&dir.join("model.safetensors")).unwrap().names();
        assert_eq!(names.iter().any(|n| n == "lm_head.weight"), !tie);
    }
}

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/llama-tiny")
}

/// An export carries what transformers wrote for the fixture: the same tensor names, dtypes and
/// shapes, and the config fields that shape the model with the same values.
#[test]
fn hf_export_matches_what_transformers_writes() {
    let (cfg, flat) = hf::load(&fixture()).unwrap();
    let dir = tempdir("export");
    hf::save(&dir, &cfg, &flat, Some(0)).unwrap();
    let header = |p: &Path| {
        let bytes = std::fs::read(p).unwrap();
        let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
        meta.tensors()
            .into_iter()
            .map(|(n, i)| (n, (format!("{:?}", i.dtype), i.shape.clone())))
            .collect::<std::collections::BTreeMap<_, _>>()
    };
    assert_eq!(header(&dir.join("model.safetensors")), header(&fixture().join("model.safetensors")));
    let json =
        |p: &Path| -> serde_json::Value { serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap() };
    let (want, got) = (json(&fixture().join("config.json")), json(&dir.join("config.json")));
    for key in [
        "architectures",
        "model_type",
        "hidden_size",
        "intermediate_size",
        "num_attention_heads",
        "num_hidden_layers",
        "num_key_value_heads",
        "head_dim",
        "hidden_act",
        "max_position_embeddings",
        "rms_norm_eps",
        "rope_parameters",
        "tie_word_embeddings",
        "attention_bias",
        "mlp_bias",
        "vocab_size",
    ] {
        assert_eq!(got.get(key), want.get(key), "config.json field {key}");
    }
}

/// F16 and BF16 weight files load, widened exactly to f32.
#[test]
fn half_precision_weights_are_widened_on_import() {
    let cfg = awkward(false);
    let layout = ParamLayout::new(&cfg);
    let flat = common::random_params(&cfg, 21);
    for dtype in [safetensors::Dtype::F16, safetensors::Dtype::BF16] {
        let round = |x: f32| -> (u16, f32) {
            match dtype {
                safetensors::Dtype::F16 => {
                    let h = half::f16::from_f32(x);
                    (h.to_bits(), h.to_f32())
                }
                _ => {
                    let h = half::bf16::from_f32(x);
                    (h.to_bits(), h.to_f32())
                }
            }
        };
        let halves: Vec<(Vec<u16>, Vec<f32>)> = (0..layout.specs.len())
            .map(|i| layout.slice(&flat, i).iter().map(|&x| round(x)).unzip())
            .collect();
        let dir = tempdir(&format!("half-{dtype:?}"));
        std::fs::write(dir.join("config.json"), hf::config_json(&cfg, None).to_string()).unwrap();
        let list = layout
            .specs
            .iter()
            .zip(&halves)
            .map(|(s, (bits, _))| (s.name.clone(), Tensor::Half(bits, dtype, s.shape.clone())))
            .collect();
        tensors::write(&dir.join("model.safetensors"), list, None).unwrap();
        let (_, back) = hf::load(&dir).unwrap();
        for (i, (_, widened)) in halves.iter().enumerate() {
            assert_eq!(layout.slice(&back, i), widened.as_slice(), "{dtype:?} {}", layout.specs[i].name);
        }
    }
}

/// What wgslm's Llama does not compute is refused with a message naming the field; both places a
/// RoPE theta can stand are read.
#[test]
fn llama_config_json_fields_are_read_or_refused() {
    let base = hf::config_json(&awkward(false), None);
    let parse = |edit: &dyn Fn(&mut serde_json::Value)| {
        let mut json = base.clone();
        edit(&mut json);
        hf::parse_config(Path::new("config.json"), json.to_string().as_bytes())
    };
    type Edit<'a> = &'a dyn Fn(&mut serde_json::Value);
    let refused: [(&str, Edit); 6] = [
        ("rope_parameters.rope_type", &|j| j["rope_parameters"]["rope_type"] = "linear".into()),
        ("rope_scaling.rope_type", &|j| {
            j["rope_scaling"] = serde_json::json!({"rope_type": "yarn", "factor": 2.0})
        }),
        ("attention_bias", &|j| j["attention_bias"] = true.into()),
        ("mlp_bias", &|j| j["mlp_bias"] = true.into()),
        ("hidden_act", &|j| j["hidden_act"] = "gelu".into()),
        ("head_dim", &|j| j["head_dim"] = 12.into()),
    ];
    for (field, edit) in refused {
        let err = parse(edit).expect_err(field).to_string();
        assert!(err.contains(field) && err.contains("config.json"), "{field}: {err}");
    }
    let theta = |cfg: ModelConfig| match cfg.arch {
        Arch::Llama(l) => l.rope_theta,
        Arch::Gpt2 => panic!("read as GPT-2"),
    };
    assert_eq!(theta(parse(&|_| {}).unwrap()), 500.0);
    let old_style = parse(&|j| {
        j.as_object_mut().unwrap().remove("rope_parameters");
        j["rope_theta"] = 1234.0.into();
    });
    assert_eq!(theta(old_style.unwrap()), 1234.0);
    let new_style = parse(&|j| {
        j.as_object_mut().unwrap().remove("rope_theta");
        j["rope_parameters"]["rope_theta"] = 4321.0.into();
    });
    assert_eq!(theta(new_style.unwrap()), 4321.0);
    let err = parse(&|j| j["num_key_value_heads"] = 4.into()).unwrap_err().to_string();
    assert!(err.contains("n_kv_head 4 must divide n_head 6"), "{err}");
}

/// A tied head accepts an `lm_head.weight` equal to the embedding and refuses a different one.
#[test]
fn a_tied_head_accepts_only_a_copy_of_the_embedding() {
    let cfg = awkward(true);
    let layout = ParamLayout::new(&cfg);
    let flat = common::random_params(&cfg, 31);
    let embed = layout.slice(&flat, layout.index("model.embed_tokens.weight").unwrap()).to_vec();
    let other = vec![0.25f32; embed.len()];
    for (head, ok) in [(&embed, true), (&other, false)] {
        let dir = tempdir(&format!("tied-{ok}"));
        std::fs::write(dir.join("config.json"), hf::config_json(&cfg, None).to_string()).unwrap();
        let mut list: Vec<(String, Tensor<'_>)> = layout
            .specs
            .iter()
            .enumerate()
            .map(|(i, s)| (s.name.clone(), Tensor::F32(layout.slice(&flat, i), s.shape.clone())))
            .collect();
        list.push(("lm_head.weight".into(), Tensor::F32(head, vec![97, 36])));
        tensors::write(&dir.join("model.safetensors"), list, None).unwrap();
        match hf::load(&dir) {
            Ok((_, back)) => assert!(ok && back == flat),
            Err(e) => {
                assert!(!ok && e.to_string().contains("lm_head.weight differs from embed_tokens"), "{e}")
            }
        }
    }
}

// The training product with a Llama: configs/tiny-llama.toml learns, resumes bit for bit, writes
// Llama checkpoints that `sample` and `init_from` read.

use wgslm::gpu::DeviceChoice;
use wgslm::train::{checkpoint, RunOptions, Summary, TrainConfig};

fn tiny_llama(overrides: &[&str]) -> TrainConfig {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/tiny-llama.toml");
    let overrides: Vec<String> = overrides.iter().map(|s| s.to_string()).collect();
    TrainConfig::load(Some(&path), &overrides).unwrap()
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
fn tiny_llama_trains_samples_and_fine_tunes() {
    let Some(device) = common::gpu_device() else { return };
    let out = tempdir("train");
    let s = train(&tiny_llama(&[]), &out, &device, false, None);
    assert_eq!(s.steps, 100);
    let first = s.first_loss.unwrap();
    assert!(first > 3.0, "the first loss {first} is already low: was the model initialised?");
    assert!(s.last_loss < first - 1.0, "the loss fell only from {first} to {}", s.last_loss);
    assert!(s.val_loss.unwrap() < first - 1.0, "val loss {:?} vs first loss {first}", s.val_loss);

    // The checkpoint is a LlamaForCausalLM directory with a separate head.
    let (_, dir) = checkpoint::latest(&out).unwrap();
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("config.json")).unwrap()).unwrap();
    assert_eq!(json["architectures"][0], "LlamaForCausalLM");
    assert_eq!(json["num_key_value_heads"], 2);
    let (config, params) = hf::load(&dir).unwrap();
    assert!(matches!(config.arch, Arch::Llama(l) if l.n_kv_head == 2 && !l.tie_embeddings));
    assert!(params.iter().all(|x| x.is_finite()));

    // `wgslm sample` reads it.
    let sampled = std::process::Command::new(env!("CARGO_BIN_EXE_wgslm"))
        .args(["sample", "--model"])
        .arg(&out)
        .args(["--prompt", "Once", "--max-new-tokens", "20", "--device", "cpu", "--seed", "3"])
        .output()
        .unwrap();
    assert!(sampled.status.success(), "{}", String::from_utf8_lossy(&sampled.stderr));
    let text = String::from_utf8(sampled.stdout).unwrap();
    assert!(text.starts_with("Once") && text.trim().len() > 8, "sampled {text:?}");

    // init_from the run: the fine-tuning run starts where it ended.
    let from = tempdir("init-from");
    let cfg = tiny_llama(&["max_steps=2", "eval_every=0", &format!("init_from={}", out.display())]);
    let tuned = train(&cfg, &from, &DeviceChoice::Cpu, false, None);
    assert!(
        tuned.first_loss.unwrap() < first - 1.0,
        "init_from started from scratch: {:?}",
        tuned.first_loss
    );
    // A GPT-2 config cannot start from it.
    let gpt2 = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/tiny.toml");
    let cfg = TrainConfig::load(Some(&gpt2), &[format!("init_from={}", out.display())]).unwrap();
    let err = wgslm::train::run(&cfg, &RunOptions::new(tempdir("init-gpt2"), DeviceChoice::Cpu)).unwrap_err();
    assert!(err.to_string().contains("the model is a llama but the config says arch = \"gpt2\""), "{err}");
}

fn llama_resume_is_bit_exact(device: DeviceChoice, name: &str, matmul: &str, steps: usize) {
    let (matmul, max_steps, eval_every) =
        (format!("matmul={matmul}"), format!("max_steps={steps}"), format!("eval_every={}", steps / 2));
    let cfg = tiny_llama(&[&max_steps, "grad_accum_steps=2", "checkpoint_every=0", &eval_every, &matmul]);
    let (straight, interrupted) =
        (tempdir(&format!("{name}-straight")), tempdir(&format!("{name}-interrupted")));
    std::fs::remove_dir_all(&straight).unwrap();
    std::fs::remove_dir_all(&interrupted).unwrap();
    train(&cfg, &straight, &device, false, None);
    assert_eq!(train(&cfg, &interrupted, &device, false, Some(steps as u64 / 2)).steps, steps as u64 / 2);
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
fn llama_resume_is_bit_exact_on_the_gpu() {
    let Some(device) = common::gpu_device() else { return };
    // Under the autotuner's choices, and, in shorter runs, under every matmul variant the adapter has.
    llama_resume_is_bit_exact(device.clone(), "resume-gpu-auto", "auto", 12);
    for variant in common::gpu_matmul_variants() {
        llama_resume_is_bit_exact(device.clone(), &format!("resume-gpu-{variant}"), variant, 6);
    }
}

#[test]
fn llama_resume_is_bit_exact_on_the_cpu() {
    llama_resume_is_bit_exact(DeviceChoice::Cpu, "resume-cpu", "auto", 12);
}

/// Keys of the other architecture are errors that say so.
#[test]
fn llama_keys_belong_to_llama() {
    let err = |overrides: &[&str]| {
        let overrides: Vec<String> = overrides.iter().map(|s| s.to_string()).collect();
        TrainConfig::load(None, &overrides).unwrap_err().to_string()
    };
    let e = err(&["n_kv_head=2"]);
    assert!(e.contains("n_kv_head applies to arch = \"llama\" only"), "{e}");
    let e = err(&["arch=llama", "dropout=0.1"]);
    assert!(e.contains("dropout applies to arch = \"gpt2\" only"), "{e}");
    let e = err(&["arch=llama", "n_kv_head=3"]);
    assert!(e.contains("n_kv_head 3 must divide n_head 4"), "{e}");
    let e = err(&["arch=mamba"]);
    assert!(e.contains("arch = \"mamba\" must be \"gpt2\" or \"llama\""), "{e}");
    let ok = TrainConfig::load(None, &["arch=llama".into(), "n_kv_head=1".into()]).unwrap();
    assert!(matches!(ok.model(100).arch, Arch::Llama(l) if l.n_kv_head == 1 && l.intermediate_size == 256));
}
