//! Bad input never panics: every case drives the real binary and expects a non-zero exit, no panic,
//! and a short error (at most two lines) that names the file, key or tensor.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use wgslm::data::{tokenfile, Tok};
use wgslm::model::{hf, init_params, Arch, LlamaConfig, ModelConfig};

const BIN: &str = env!("CARGO_BIN_EXE_wgslm");

/// Runs wgslm and checks it fails cleanly, saying every string of `must_say`.
fn fails(args: &[&str], must_say: &[&str]) {
    let out = Command::new(BIN).args(args).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let cmd = args.join(" ");
    assert!(!out.status.success(), "wgslm {cmd} succeeded");
    assert_ne!(out.status.code(), Some(101), "wgslm {cmd} panicked:\n{stderr}");
    assert!(!stderr.contains("panicked"), "wgslm {cmd} panicked:\n{stderr}");
    // Driver noise (EGL's XDG_RUNTIME_DIR complaint) is not ours.
    let lines: Vec<&str> =
        stderr.lines().filter(|l| !l.trim().is_empty() && !l.contains("XDG_RUNTIME_DIR")).collect();
    assert!(lines.len() <= 2, "wgslm {cmd}: a long error:\n{stderr}");
    for m in must_say {
        assert!(stderr.contains(m), "wgslm {cmd}: the error does not say {m:?}:\n{stderr}");
    }
}

/// A fresh directory of its own (tests run in parallel threads: no two calls share one).
fn temp(name: &str) -> PathBuf {
    static CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let call = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("wgslm-bad-{name}-{}-{call}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn config(dir: &Path, text: &str) -> PathBuf {
    let path = dir.join("bad.toml");
    std::fs::write(&path, text).unwrap();
    path
}

const TINY: ModelConfig = ModelConfig::gpt2(1, 2, 16, 40, 16);

/// A small valid model directory with a character tokenizer.
fn model_dir(name: &str) -> PathBuf {
    let dir = temp(name);
    hf::save(&dir, &TINY, &init_params(&TINY, 1), None).unwrap();
    Tok::chars(std::iter::once("abcdefghij klmnop.".to_string())).unwrap().save(&dir).unwrap();
    dir
}

/// A valid prepared data directory whose tokens are `train`.
fn data_dir(name: &str, train: &[u32]) -> PathBuf {
    let dir = temp(name);
    let tok = Tok::chars(std::iter::once("abcdefghij klmnop.".to_string())).unwrap();
    tok.save(&dir).unwrap();
    tokenfile::write(&dir.join("train.bin"), train, tok.vocab_size()).unwrap();
    tokenfile::write(&dir.join("val.bin"), &train[..train.len().min(200)], tok.vocab_size()).unwrap();
    dir
}

/// A config that fine-tunes `model` on `data`, with `keys` (TOML lines) added.
fn init_config(dir: &Path, data: &Path, model: &Path, keys: &str) -> PathBuf {
    config(dir, &format!("data = {:?}\ninit_from = {:?}\n{keys}", s(data), s(model)))
}

fn train_with(cfg: &Path, extra: &[&str], must_say: &[&str]) {
    let out = temp("run");
    let mut args = vec!["train", "--config", s(cfg), "--out", s(&out), "--device", "cpu"];
    args.extend(extra);
    fails(&args, must_say);
    left_empty(&out);
}

/// A refused run writes nothing into its run directory.
fn left_empty(dir: &Path) {
    let left: Vec<_> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert!(left.is_empty(), "a refused run left {left:?} in {}", dir.display());
}

#[test]
fn config_errors_name_the_key() {
    let dir = temp("config");
    let cases: &[(&str, &[&str])] = &[
        ("n_layers = 3\n", &["bad.toml", "n_layers"]),
        ("n_layer = \"four\"\n", &["bad.toml", "n_layer"]),
        ("n_embd = 50\nn_head = 4\n", &["n_embd 50", "n_head 4"]),
        ("n_layer = 0\n", &["n_layer must be at least 1"]),
        ("batch_size = -2\n", &["bad.toml", "batch_size"]),
        ("lr = nan\n", &["lr = NaN"]),
        ("max_steps = 10\n[section]\nx = 1\n", &["bad.toml", "section"]),
        ("dropout = 1.5\n", &["dropout"]),
        ("tokenizer = \"words\"\n", &["tokenizer"]),
        ("this is not toml\n", &["bad.toml"]),
        ("eps = 0\n", &["eps = 0"]),
        ("data = \"\"\n", &["data = \"\""]),
        // Sizes past what the engine takes are refused before anything is allocated for them.
        ("batch_size = 100000000\n", &["batch_size 100000000", "block_size"]),
        ("grad_accum_steps = 1000000000000\n", &["grad_accum_steps"]),
        ("eval_batches = 1000000000\n", &["eval_batches"]),
        ("builtin_stories = 1000000000000\n", &["builtin_stories"]),
        ("tokenizer = \"bpe\"\nvocab_size = 9223372036854775807\n", &["vocab_size"]),
        // The samples' prompt is checked before the first step, not after the last one.
        ("block_size = 8\n", &["sample_prompt", "block size of 8"]),
        ("sample_prompt = \"ñ\"\n", &["sample_prompt", "no token for"]),
    ];
    for (text, must) in cases {
        train_with(&config(&dir, text), &[], must);
    }
    fails(&["train", "--set", "lr=-1", "--out", s(&dir.join("r")), "--device", "cpu"], &["lr"]);
    fails(&["train", "--set", "no-equals-sign", "--device", "cpu"], &["key=value"]);
}

#[test]
fn missing_and_empty_files_are_named() {
    let dir = temp("missing");
    fails(&["train", "--config", s(&dir.join("nope.toml")), "--device", "cpu"], &["nope.toml"]);
    fails(&["sample", "--model", s(&dir.join("no-model")), "--device", "cpu"], &["no-model"]);
    fails(
        &[
            "eval",
            "--model",
            s(&model_dir("eval-missing")),
            "--data",
            s(&dir.join("none.bin")),
            "--device",
            "cpu",
        ],
        &["none.bin"],
    );
    fails(&["prepare", "--input", s(&dir.join("absent.txt")), "--out", s(&dir.join("o"))], &["absent.txt"]);

    // Empty files: a token file, weights, a tokenizer, a config.json.
    let data = data_dir("empty-train", &[1; 100]);
    std::fs::write(data.join("train.bin"), b"").unwrap();
    let cfg = config(&dir, &format!("data = {:?}\n", s(&data)));
    train_with(&cfg, &[], &["train.bin", "header"]);
    for (file, must) in [
        ("model.safetensors", "model.safetensors"),
        ("tokenizer.json", "tokenizer.json"),
        ("config.json", "config.json"),
    ] {
        let model = model_dir(&format!("empty-{file}"));
        std::fs::write(model.join(file), b"").unwrap();
        fails(&["sample", "--model", s(&model), "--device", "cpu"], &[must]);
    }
    let empty_text = dir.join("empty.txt");
    std::fs::write(&empty_text, b"").unwrap();
    fails(&["prepare", "--input", s(&empty_text), "--out", s(&dir.join("o2"))], &["empty.txt", "no text"]);
}

#[test]
fn damaged_weights_name_the_tensor() {
    let weights = |dir: &Path| dir.join("model.safetensors");
    // Truncated.
    let m = model_dir("truncated");
    let bytes = std::fs::read(weights(&m)).unwrap();
    std::fs::write(weights(&m), &bytes[..bytes.len() / 2]).unwrap();
    fails(&["sample", "--model", s(&m), "--device", "cpu"], &["model.safetensors", "truncated"]);
    // A header length past the end of the file.
    let m = model_dir("header");
    let mut bytes = std::fs::read(weights(&m)).unwrap();
    bytes[..8].copy_from_slice(&(1u64 << 40).to_le_bytes());
    std::fs::write(weights(&m), &bytes).unwrap();
    fails(&["sample", "--model", s(&m), "--device", "cpu"], &["model.safetensors"]);

    // Wrong dtype, wrong shape, missing tensor: rewrite the file with one tensor changed.
    let cases: [(&str, Edit, &[&str]); 3] = [
        ("transformer.ln_f.bias", Edit::Int32, &["transformer.ln_f.bias", "I32", "expected F32"]),
        (
            "transformer.h.0.mlp.c_fc.weight",
            Edit::Shape(vec![64, 16]),
            &["transformer.h.0.mlp.c_fc.weight", "[64, 16]", "[16, 64]"],
        ),
        ("transformer.ln_f.bias", Edit::Drop, &["transformer.ln_f.bias", "missing"]),
    ];
    for (i, (name, edit, must)) in cases.into_iter().enumerate() {
        let m = model_dir(&format!("edit{i}"));
        rewrite_weights(&weights(&m), name, edit);
        fails(&["sample", "--model", s(&m), "--device", "cpu"], must);
    }
}

/// How `rewrite_weights` changes one tensor.
enum Edit {
    Int32,
    Shape(Vec<usize>),
    Drop,
}

/// Writes the TINY model's weights with tensor `name` changed.
fn rewrite_weights(path: &Path, name: &str, edit: Edit) {
    use wgslm::tensors::Tensor;
    let layout = wgslm::model::ParamLayout::new(&TINY);
    let flat = init_params(&TINY, 2);
    let ints = vec![0i32; 16];
    let mut tensors = Vec::new();
    for (i, sp) in layout.specs.iter().enumerate() {
        let data = layout.slice(&flat, i);
        let t = match (&edit, sp.name == name) {
            (Edit::Int32, true) => Tensor::I32(&ints, sp.shape.clone()),
            (Edit::Shape(shape), true) => Tensor::F32(data, shape.clone()),
            (Edit::Drop, true) => continue,
            _ => Tensor::F32(data, sp.shape.clone()),
        };
        tensors.push((sp.name.clone(), t));
    }
    wgslm::tensors::write(path, tensors, None).unwrap();
}

#[test]
fn bad_config_json_is_named() {
    let m = model_dir("config-field");
    let json = hf::config_json(&TINY, None).to_string().replace("\"n_embd\":16,", "");
    std::fs::write(m.join("config.json"), json).unwrap();
    fails(&["sample", "--model", s(&m), "--device", "cpu"], &["config.json", "n_embd"]);
    let m = model_dir("config-not-json");
    std::fs::write(m.join("config.json"), "{ not json").unwrap();
    fails(
        &["sample", "--model", s(&m), "--device", "cpu"],
        &["config.json", "not a GPT-2 or Llama config.json"],
    );
}

#[test]
fn bad_token_files_are_refused() {
    let dir = temp("tokens");
    let data = data_dir("magic", &[1; 500]);
    let mut bytes = std::fs::read(data.join("train.bin")).unwrap();
    bytes[0] = 0;
    std::fs::write(data.join("train.bin"), &bytes).unwrap();
    train_with(&config(&dir, &format!("data = {:?}\n", s(&data))), &[], &["train.bin", "bad magic"]);

    let data = data_dir("truncated", &[1; 500]);
    let bytes = std::fs::read(data.join("train.bin")).unwrap();
    std::fs::write(data.join("train.bin"), &bytes[..bytes.len() - 3]).unwrap();
    train_with(&config(&dir, &format!("data = {:?}\n", s(&data))), &[], &["train.bin", "truncated"]);

    let mut ids = vec![1u32; 500];
    ids[321] = 9000;
    let data = data_dir("vocab", &ids);
    train_with(
        &config(&dir, &format!("data = {:?}\n", s(&data))),
        &[],
        &["train.bin", "9000", "position 321"],
    );

    let data = data_dir("short", &[1; 5]);
    train_with(
        &config(&dir, &format!("data = {:?}\nblock_size = 32\n", s(&data))),
        &[],
        &["shorter than one sequence"],
    );

    // eval: an id the model cannot embed.
    let bin = dir.join("high.bin");
    tokenfile::write(&bin, &[1, 2, 77], 100).unwrap();
    fails(
        &["eval", "--model", s(&model_dir("eval-vocab")), "--data", s(&bin), "--device", "cpu"],
        &["high.bin", "77"],
    );
}

#[test]
fn malformed_tokenizers_do_not_panic() {
    let variants = [
        "{",
        "{}",
        r#"{"model": {"type": "BPE", "vocab": {"a": 0}, "merges": ["a b"]}}"#,
        r#"{"version":"1.0","truncation":null,"padding":null,"added_tokens":[{"id":4294967295,"content":"x","special":true}],"normalizer":null,"pre_tokenizer":null,"post_processor":null,"decoder":null,"model":{"type":"BPE","vocab":{},"merges":[]}}"#,
        r#"{"version":"1.0","model":{"type":"WordPiece","vocab":{}}}"#,
    ];
    for (i, v) in variants.iter().enumerate() {
        let m = model_dir(&format!("tok{i}"));
        std::fs::write(m.join("tokenizer.json"), v).unwrap();
        fails(
            &["sample", "--model", s(&m), "--prompt", "ab", "--max-new-tokens", "2", "--device", "cpu"],
            &["tokenizer"],
        );
    }
}

#[test]
fn absent_backends_and_oversized_models_are_refused() {
    // No Linux machine has Metal (and no macOS machine DX12).
    let absent = if cfg!(target_os = "macos") { "dx12" } else { "metal" };
    fails(
        &["train", "--set", "max_steps=1", "--device", absent, "--out", s(&temp("absent"))],
        &[&format!("--device {absent}"), "wgslm devices"],
    );
    fails(&["train", "--device", "quantum"], &["--device quantum"]);
    if common::gpu().is_none() {
        return;
    }
    // A model whose MLP weight (n_embd × 4·n_embd) is just over the adapter's largest storage
    // binding: the smallest such width, from the adapter's own limits, so that the case is refused on
    // any adapter, large or small, before a step runs.
    let limit = common::gpu().unwrap().adapter.limits.max_storage_buffer_binding_size as f64;
    let n_embd = (((limit / 16.0).sqrt() as usize) / 8 + 1) * 8;
    assert!(16.0 * (n_embd * n_embd) as f64 > limit);
    let out = temp("huge");
    let n_embd = format!("n_embd={n_embd}");
    fails(
        &[
            "train",
            "--set",
            &n_embd,
            "--set",
            "n_head=8",
            "--set",
            "n_layer=1",
            "--set",
            "block_size=8",
            "--set",
            "batch_size=1",
            "--set",
            "builtin_stories=10",
            "--set",
            "matmul=default",
            "--out",
            s(&out),
        ],
        &["bytes", "allows at most"],
    );
    left_empty(&out);
}

#[test]
fn init_from_and_prompts_respect_the_model() {
    let dir = temp("init");
    let model = model_dir("init-model");
    let data = data_dir("init-data", &[1; 2000]);
    train_with(
        &init_config(&dir, &data, &model, "n_layer = 1\nn_head = 2\nn_embd = 16\nblock_size = 64\n"),
        &[],
        &["block_size 64", "n_positions 16"],
    );
    train_with(
        &init_config(&dir, &data, &model, "n_layer = 3\nn_head = 2\nn_embd = 16\nblock_size = 16\n"),
        &[],
        &["n_layer 1", "set n_layer = 1"],
    );
    let long = "abcd ".repeat(10);
    fails(
        &["sample", "--model", s(&model), "--prompt", &long, "--device", "cpu"],
        &["longer than the model's block size"],
    );
    fails(&["sample", "--model", s(&model), "--prompt", "xyz", "--device", "cpu"], &["no token for"]);
    fails(&["sample", "--model", s(&model), "--top-p", "0", "--device", "cpu"], &["--top-p"]);
}

#[test]
fn a_refused_resume_leaves_the_run_as_it_was() {
    let dir = temp("resume");
    let run = dir.join("run");
    let tiny = concat!(env!("CARGO_MANIFEST_DIR"), "/configs/tiny.toml");
    let train = |extra: &[&str]| {
        let mut args = vec!["train", "--config", tiny, "--out", s(&run), "--device", "cpu"];
        args.extend(["--set", "max_steps=2", "--set", "save_batches=true", "--set", "sample_tokens=0"]);
        args.extend(extra);
        args.iter().map(|a| a.to_string()).collect::<Vec<_>>()
    };
    let args = train(&[]);
    let out = Command::new(BIN).args(&args).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let config = std::fs::read(run.join("config.toml")).unwrap();
    let ckpt = run.join("checkpoints/step-00000002");
    let state_path = ckpt.join("trainer.json");
    let state = std::fs::read_to_string(&state_path).unwrap();

    // A batch record shorter than the checkpoint's steps.
    let batches = run.join("batches.bin");
    let full = std::fs::read(&batches).unwrap();
    std::fs::write(&batches, &full[..10]).unwrap();
    let args = train(&["--set", "lr=0.002", "--resume"]);
    fails(&args.iter().map(String::as_str).collect::<Vec<_>>(), &["batches.bin", "incomplete"]);
    assert_eq!(
        std::fs::read(run.join("config.toml")).unwrap(),
        config,
        "a refused resume rewrote config.toml"
    );
    std::fs::write(&batches, &full).unwrap();

    // A damaged trainer.json is named, not trained on.
    let json: serde_json::Value = serde_json::from_str(&state).unwrap();
    let damaged: [(&str, serde_json::Value, &[&str]); 6] = [
        ("ranks", serde_json::json!(0), &["ranks 0", "damaged"]),
        ("step", serde_json::json!(u64::MAX), &["step 18446744073709551615", "damaged"]),
        ("adam_t", serde_json::json!(3), &["adam_t 3", "damaged"]),
        ("attention", serde_json::json!("bogus"), &["attention \"bogus\"", "damaged"]),
        ("precision", serde_json::json!("f64"), &["precision \"f64\"", "damaged"]),
        // Once hung: a step of 2^63 micro-batches.
        ("ranks", serde_json::json!(1u64 << 63), &["9223372036854775808 rank(s)", "start a new run"]),
    ];
    for (key, value, says) in damaged {
        assert!(json.get(key).is_some(), "trainer.json has no {key}: {state}");
        let mut bad = json.clone();
        bad[key] = value;
        std::fs::write(&state_path, bad.to_string()).unwrap();
        let args = train(&["--resume"]);
        fails(&args.iter().map(String::as_str).collect::<Vec<_>>(), &[&["trainer.json"], says].concat());
    }
    std::fs::write(&state_path, &state).unwrap();

    // A fresh run with save_batches into a directory that already has an init/.
    let other = dir.join("other");
    std::fs::create_dir_all(other.join("init")).unwrap();
    let mut args = train(&[]);
    let at = args.iter().position(|a| a == s(&run)).unwrap();
    args[at] = s(&other).to_string();
    fails(&args.iter().map(String::as_str).collect::<Vec<_>>(), &["init", "already exists"]);
    assert!(!other.join("config.toml").exists(), "a refused run wrote config.toml");

    // A run stopped before its first checkpoint (none left) starts over in the same directory.
    std::fs::remove_dir_all(run.join("checkpoints")).unwrap();
    let out = Command::new(BIN).args(train(&[])).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn odd_values_of_command_line_flags_are_refused_in_one_line() {
    let dir = temp("flags");
    let model = model_dir("flags-model");
    let fixture = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/gpt2-tiny");
    let batch = format!("{fixture}/batch.safetensors");
    let grad = |flag: &str, value: &str| {
        let out = dir.join("g.safetensors");
        let args = ["grad", "--model", fixture, "--batch", &batch, "--out", s(&out), "--adamw-steps", "1"];
        let mut args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        args.extend([flag.to_string(), value.to_string(), "--device".into(), "cpu".into()]);
        fails(&args.iter().map(String::as_str).collect::<Vec<_>>(), &[flag]);
        assert!(!out.exists(), "grad {flag} {value} wrote its output");
    };
    grad("--lr", "nan");
    grad("--lr", "-1");
    grad("--beta1", "1");
    grad("--eps", "0");
    grad("--weight-decay", "nan");
    for (flag, value) in [("--temperature", "-1"), ("--top-p", "-1")] {
        fails(&["sample", "--model", s(&model), flag, value, "--device", "cpu"], &[flag]);
    }
    // An evaluation batch past what a micro-batch may hold, and one whose size overflows.
    let val = dir.join("val.bin");
    tokenfile::write(&val, &[1, 2, 3, 4, 5], 40).unwrap();
    for b in ["100000000", "18446744073709551615"] {
        fails(
            &["eval", "--model", s(&model), "--data", s(&val), "--batch-size", b, "--device", "cpu"],
            &["tokens a micro-batch"],
        );
    }
    let tiny = concat!(env!("CARGO_MANIFEST_DIR"), "/configs/tiny.toml");
    fails(
        &[
            "bench",
            "sample",
            "--config",
            tiny,
            "--context",
            "8",
            "--tokens",
            "18446744073709551615",
            "--device",
            "cpu",
        ],
        &["--tokens 18446744073709551615"],
    );
    fails(&["bench", "sample", "--config", tiny, "--tokens", "0", "--device", "cpu"], &["--tokens 0"]);
    fails(&["bench", "soak", "--config", tiny, "--steps", "1", "--device", "cpu"], &["--steps 1"]);
}

#[test]
fn tokenizers_and_prepare_refuse_cleanly() {
    // A tokenizer's vocabulary is one past its largest id: one with a gap needs a larger model.
    let model = model_dir("gap");
    let path = model.join("tokenizer.json");
    let mut json: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    json["model"]["vocab"]["e"] = serde_json::json!(100000);
    std::fs::write(&path, json.to_string()).unwrap();
    fails(
        &["sample", "--model", s(&model), "--prompt", "e", "--device", "cpu"],
        &["tokenizer has 100001 tokens"],
    );

    // prepare: a refused input leaves no output directory behind, and a vocabulary past the bound
    // is refused before the tokenizer library sees it.
    let dir = temp("prepare");
    let empty = dir.join("e.jsonl");
    std::fs::write(&empty, "{\"text\":\"\"}\n").unwrap();
    let out = dir.join("out");
    fails(&["prepare", "--input", s(&empty), "--out", s(&out), "--tokenizer", "char"], &["no text"]);
    assert!(!out.exists(), "a refused prepare left {}", out.display());
    let text = dir.join("in.txt");
    std::fs::write(&text, "hello world\n").unwrap();
    for v in ["18446744073709551615", "4294967296"] {
        fails(&["prepare", "--input", s(&text), "--out", s(&out), "--vocab-size", v], &["vocab_size"]);
        assert!(!out.exists(), "a refused prepare left {}", out.display());
    }
}

#[test]
fn odd_shapes_and_tiles_for_bench_kernels_are_refused() {
    let dir = temp("bench-kernels");
    for shape in ["16385x16385x1", "1x65536x65536", "18446744073709551615x2x2"] {
        fails(&["bench", "kernels", "--shape", shape], &[shape]);
    }
    // Llama's eps is used in f32: one that rounds to zero there would divide by zero.
    fails(
        &[
            "train",
            "--set",
            "arch=llama",
            "--set",
            "norm_eps=1e-50",
            "--out",
            s(&dir.join("r")),
            "--device",
            "cpu",
        ],
        &["norm_eps"],
    );
    if common::gpu().is_none() {
        return;
    }
    let naive = include_str!("fixtures/kernels/naive_matmul.wgsl");
    for (tile, value) in [("TILE_M", "0u"), ("TILE_N", "0u")] {
        let path = dir.join(format!("{tile}.wgsl"));
        std::fs::write(
            &path,
            naive.replace(&format!("const {tile}: u32 = 8u;"), &format!("const {tile} = {value};")),
        )
        .unwrap();
        fails(&["bench", "kernels", "--shader", s(&path), "--shape", "7x5x3"], &[tile, "positive integer"]);
    }
}

#[test]
fn long_contexts_outputs_and_starting_models_are_handled() {
    let dir = temp("second-round");
    // A Llama of a million positions (no tensor grows with them): sample and eval size their frame
    // to what they run, not to n_positions (a full pass over 2^20 positions per token never ended).
    let llama = LlamaConfig {
        n_kv_head: 1,
        intermediate_size: 24,
        rope_theta: 1e4,
        norm_eps: 1e-5,
        tie_embeddings: true,
    };
    let long = ModelConfig { arch: Arch::Llama(llama), n_positions: 1 << 20, ..TINY };
    let model = dir.join("long");
    hf::save(&model, &long, &init_params(&long, 1), None).unwrap();
    Tok::chars(std::iter::once("abcdefghij klmnop.".to_string())).unwrap().save(&model).unwrap();
    let run = |args: &[&str]| {
        let out = Command::new(BIN).args(args).output().unwrap();
        assert!(out.status.success(), "wgslm {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
    };
    run(&["sample", "--model", s(&model), "--prompt", "ab", "--max-new-tokens", "3", "--device", "cpu"]);
    let val = dir.join("val.bin");
    tokenfile::write(&val, &[1, 2, 3, 4, 5, 6, 7], 40).unwrap();
    run(&["eval", "--model", s(&model), "--data", s(&val), "--device", "cpu"]);

    // An output that is one of the inputs is refused before anything is written.
    let fixture = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/gpt2-tiny");
    let batch = dir.join("batch.safetensors");
    std::fs::copy(format!("{fixture}/batch.safetensors"), &batch).unwrap();
    let before = std::fs::read(&batch).unwrap();
    fails(
        &["grad", "--model", fixture, "--batch", s(&batch), "--out", s(&batch), "--device", "cpu"],
        &["an input"],
    );
    assert_eq!(std::fs::read(&batch).unwrap(), before);
    let suite = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/suites/lavapipe-2026-12-02.json");
    let copy = dir.join("suite.json");
    std::fs::copy(suite, &copy).unwrap();
    fails(&["report", s(&copy), "--out", s(&copy)], &["an input"]);
    assert_eq!(std::fs::read(&copy).unwrap(), std::fs::read(suite).unwrap());

    // init_from: a model that is not finite, and a Llama whose settings the config contradicts.
    let nan = dir.join("nan");
    let mut params = init_params(&TINY, 1);
    params[5] = f32::NAN;
    hf::save(&nan, &TINY, &params, None).unwrap();
    let data = data_dir("second-data", &[1; 2000]);
    train_with(
        &init_config(&dir, &data, &nan, "n_layer = 1\nn_head = 2\nn_embd = 16\nblock_size = 16\n"),
        &[],
        &["model.safetensors", "non-finite"],
    );
    fails(&["sample", "--model", s(&nan), "--device", "cpu"], &["model.safetensors", "non-finite"]);
    train_with(
        &init_config(
            &dir,
            &data,
            &model,
            "arch = \"llama\"\nn_layer = 1\nn_head = 2\nn_embd = 16\nn_kv_head = 2\nblock_size = 16\n",
        ),
        &[],
        &["n_kv_head 1", "set n_kv_head = 1"],
    );
}
