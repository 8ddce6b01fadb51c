//! Hugging Face GPT-2 import and export: a directory with `config.json` and `model.safetensors` in the
//! `GPT2LMHeadModel` layout, so that `transformers` loads what wgslm writes, unchanged.
//!
//! Names and shapes come from the layout table; Conv1D weights are `[in, out]` in HF and in our flat
//! buffer alike, so import and export are copies and a round trip is bit-exact.

use std::collections::HashMap;
use std::path::Path;

use serde::Deserialize;

use super::{ModelConfig, ParamLayout};
use crate::tensors::{self, Tensor, TensorFile};
use crate::{fsutil, Error, Result};

pub const CONFIG_FILE: &str = "config.json";
pub const WEIGHTS_FILE: &str = "model.safetensors";

/// The fields of a GPT-2 `config.json` that matter; other keys are ignored, as transformers does.
#[derive(Deserialize)]
struct HfConfig {
    model_type: Option<String>,
    n_layer: usize,
    n_head: usize,
    n_embd: usize,
    vocab_size: usize,
    n_positions: Option<usize>,
    n_ctx: Option<usize>,
    n_inner: Option<usize>,
    activation_function: Option<String>,
    layer_norm_epsilon: Option<f64>,
    tie_word_embeddings: Option<bool>,
    scale_attn_weights: Option<bool>,
    scale_attn_by_inverse_layer_idx: Option<bool>,
}

/// Reads and checks a GPT-2 `config.json`.
pub fn read_config(path: &Path) -> Result<ModelConfig> {
    parse_config(path, &fsutil::read(path)?)
}

/// Parses and checks the bytes of a GPT-2 `config.json`; `path` names it in errors.
pub fn parse_config(path: &Path, bytes: &[u8]) -> Result<ModelConfig> {
    let text = std::str::from_utf8(bytes)
        .map_err(|_| Error::Invalid(format!("{}: not UTF-8 text", path.display())))?;
    let hf: HfConfig = serde_json::from_str(text)
        .map_err(|e| Error::Invalid(format!("{}: not a GPT-2 config.json: {e}", path.display())))?;
    let bad = |what: String| {
        Err(Error::Invalid(format!("{}: {what}; wgslm trains GPT-2 models only", path.display())))
    };
    if let Some(t) = hf.model_type.as_deref().filter(|t| *t != "gpt2") {
        return bad(format!("model_type is \"{t}\""));
    }
    if let Some(a) =
        hf.activation_function.as_deref().filter(|a| !matches!(*a, "gelu_new" | "gelu_pytorch_tanh"))
    {
        return bad(format!("activation_function \"{a}\" is not the tanh GELU (gelu_new)"));
    }
    if let Some(eps) = hf.layer_norm_epsilon.filter(|e| (e - 1e-5).abs() > 1e-12) {
        return bad(format!("layer_norm_epsilon {eps} is not 1e-5"));
    }
    if let Some(inner) = hf.n_inner.filter(|&i| i != 4 * hf.n_embd) {
        return bad(format!("n_inner {inner} is not 4 · n_embd"));
    }
    if hf.tie_word_embeddings == Some(false) {
        return bad("tie_word_embeddings is false (the output head must be tied to wte)".into());
    }
    if hf.scale_attn_weights == Some(false) || hf.scale_attn_by_inverse_layer_idx == Some(true) {
        return bad("attention scaling is not 1/sqrt(head size)".into());
    }
    let n_positions = hf
        .n_positions
        .or(hf.n_ctx)
        .ok_or_else(|| Error::Invalid(format!("{}: missing field `n_positions`", path.display())))?;
    let cfg = ModelConfig {
        n_layer: hf.n_layer,
        n_head: hf.n_head,
        n_embd: hf.n_embd,
        vocab_size: hf.vocab_size,
        n_positions,
    };
    cfg.validate().map_err(|e| Error::Invalid(format!("{}: {e}", path.display())))?;
    Ok(cfg)
}

/// The buffers transformers keeps in a state dict but wgslm computes: causal masks.
fn is_ignored_buffer(name: &str) -> bool {
    name.ends_with(".attn.bias") || name.ends_with(".attn.masked_bias")
}

/// Loads `dir/config.json` and `dir/model.safetensors` into a flat buffer laid out by
/// `ParamLayout::new(&config)`. Accepts names with or without the `transformer.` prefix, ignores the
/// attention-mask buffers, and accepts `lm_head.weight` only when it equals `wte`.
pub fn load(dir: &Path) -> Result<(ModelConfig, Vec<f32>)> {
    let config = read_config(&dir.join(CONFIG_FILE))?;
    let file = TensorFile::open(&dir.join(WEIGHTS_FILE))?;
    load_weights(config, &file)
}

/// The weights of a model of `config` from a safetensors file (see [`load`]).
pub fn load_weights(config: ModelConfig, file: &TensorFile) -> Result<(ModelConfig, Vec<f32>)> {
    // A file too small for the configured model is refused before anything is allocated for it.
    if config.n_params() as u64 * 4 > file.len() as u64 {
        return Err(Error::Invalid(format!(
            "{}: holds {} bytes, too few for the {} F32 parameters its config.json describes",
            file.path().display(),
            file.len(),
            config.n_params()
        )));
    }
    let layout = ParamLayout::new(&config);
    let names = file.names();
    let prefixed = names.iter().any(|n| n.starts_with("transformer."));
    let stored = |name: &str| -> String {
        if prefixed {
            name.to_string()
        } else {
            name.trim_start_matches("transformer.").to_string()
        }
    };
    let mut flat = vec![0f32; layout.total];
    for spec in &layout.specs {
        let name = stored(&spec.name);
        if !file.contains(&name) {
            return Err(Error::Invalid(format!(
                "{}: tensor `{name}` is missing (expected F32 {:?})",
                file.path().display(),
                spec.shape
            )));
        }
        let data = file.f32(&name, Some(&spec.shape))?;
        flat[spec.offset..spec.offset + spec.len()].copy_from_slice(&data);
    }
    for name in &names {
        let known = layout.specs.iter().any(|s| stored(&s.name) == *name);
        if known || is_ignored_buffer(name) {
            continue;
        }
        if name == "lm_head.weight" {
            let wte = &layout.specs[layout.wte];
            let head = file.f32(name, Some(&wte.shape))?;
            if head != layout.slice(&flat, layout.wte) {
                return Err(Error::Invalid(format!(
                    "{}: lm_head.weight differs from wte; wgslm needs the output head tied to the \
                     token embedding",
                    file.path().display()
                )));
            }
            continue;
        }
        return Err(Error::Invalid(format!(
            "{}: unexpected tensor `{name}` (not part of a GPT-2 model with {} layers)",
            file.path().display(),
            config.n_layer
        )));
    }
    Ok((config, flat))
}

/// The `config.json` transformers needs to rebuild the model.
pub fn config_json(config: &ModelConfig, bos_eos: Option<u32>) -> serde_json::Value {
    serde_json::json!({
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "activation_function": "gelu_new",
        "n_layer": config.n_layer,
        "n_head": config.n_head,
        "n_embd": config.n_embd,
        "n_inner": null,
        "vocab_size": config.vocab_size,
        "n_positions": config.n_positions,
        "n_ctx": config.n_positions,
        "layer_norm_epsilon": 1e-5,
        "initializer_range": 0.02,
        "attn_pdrop": 0.0,
        "embd_pdrop": 0.0,
        "resid_pdrop": 0.0,
        "scale_attn_weights": true,
        "scale_attn_by_inverse_layer_idx": false,
        "reorder_and_upcast_attn": false,
        "tie_word_embeddings": true,
        "use_cache": true,
        "bos_token_id": bos_eos,
        "eos_token_id": bos_eos,
        "torch_dtype": "float32",
    })
}

/// Writes `dir/config.json` and `dir/model.safetensors` (each atomically), HF names with the
/// `transformer.` prefix, F32, `lm_head.weight` left out as transformers does for tied heads.
pub fn save(dir: &Path, config: &ModelConfig, flat: &[f32], bos_eos: Option<u32>) -> Result<()> {
    let layout = ParamLayout::new(config);
    if flat.len() != layout.total {
        return Err(Error::Invalid(format!("{} values for a layout of {}", flat.len(), layout.total)));
    }
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let tensors = layout
        .specs
        .iter()
        .enumerate()
        .map(|(i, s)| (s.name.clone(), Tensor::F32(layout.slice(flat, i), s.shape.clone())))
        .collect();
    // transformers refuses safetensors files without format = pt.
    let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
    tensors::write(&dir.join(WEIGHTS_FILE), tensors, Some(metadata))?;
    let json = serde_json::to_string_pretty(&config_json(config, bos_eos)).expect("a JSON value serialises");
    fsutil::write_atomic(&dir.join(CONFIG_FILE), json.as_bytes())
}
