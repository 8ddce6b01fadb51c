//! Hugging Face import and export: a directory with `config.json` and `model.safetensors` in the
//! `GPT2LMHeadModel` or `LlamaForCausalLM` layout, so that `transformers` loads what wgslm writes,
//! unchanged.
//!
//! Names and shapes come from the layout table, and the flat buffer stores every tensor in its HF
//! layout (GPT-2's Conv1D `[in, out]`, Llama's nn.Linear `[out, in]`), so import and export are copies
//! and a round trip is bit-exact. Each architecture parses and writes its own config.json fields.

use std::collections::HashMap;
use std::path::Path;

use super::{gpt2, llama, Arch, ModelConfig, ParamLayout};
use crate::tensors::{self, Tensor, TensorFile};
use crate::{fsutil, Error, Result};

pub const CONFIG_FILE: &str = "config.json";
pub const WEIGHTS_FILE: &str = "model.safetensors";

/// Reads and checks a `config.json` of a supported architecture.
pub fn read_config(path: &Path) -> Result<ModelConfig> {
    parse_config(path, &fsutil::read(path)?)
}

/// Parses and checks the bytes of a `config.json`; `path` names it in errors. `model_type` picks the
/// architecture ("gpt2" when absent, as in old GPT-2 files).
pub fn parse_config(path: &Path, bytes: &[u8]) -> Result<ModelConfig> {
    let text = std::str::from_utf8(bytes)
        .map_err(|_| Error::Invalid(format!("{}: not UTF-8 text", path.display())))?;
    let json: serde_json::Value = serde_json::from_str(text)
        .map_err(|e| Error::Invalid(format!("{}: not a GPT-2 or Llama config.json: {e}", path.display())))?;
    let model_type = json.get("model_type").and_then(|t| t.as_str()).unwrap_or("gpt2");
    let cfg = match model_type {
        "gpt2" => gpt2::parse_hf_config(path, json)?,
        "llama" => llama::parse_hf_config(path, json)?,
        other => {
            return Err(Error::Invalid(format!(
                "{}: model_type is \"{other}\"; wgslm trains \"gpt2\" and \"llama\" models",
                path.display()
            )))
        }
    };
    cfg.validate().map_err(|e| Error::Invalid(format!("{}: {e}", path.display())))?;
    Ok(cfg)
}

/// The buffers transformers keeps in some state dicts but wgslm computes: GPT-2's causal masks,
/// old Llama files' RoPE frequencies.
fn is_ignored_buffer(name: &str) -> bool {
    name.ends_with(".attn.bias")
        || name.ends_with(".attn.masked_bias")
        || name.ends_with("rotary_emb.inv_freq")
}

/// The token embedding, which a tied output head shares: its name, and how messages call it.
fn embedding_name(arch: &Arch) -> (&'static str, &'static str) {
    match arch {
        Arch::Gpt2 => ("transformer.wte.weight", "wte"),
        Arch::Llama(_) => ("model.embed_tokens.weight", "embed_tokens"),
    }
}

/// Loads `dir/config.json` and `dir/model.safetensors` into a flat buffer laid out by
/// `ParamLayout::new(&config)`.
pub fn load(dir: &Path) -> Result<(ModelConfig, Vec<f32>)> {
    let config = read_config(&dir.join(CONFIG_FILE))?;
    let file = TensorFile::open(&dir.join(WEIGHTS_FILE))?;
    load_weights(config, &file)
}

/// The weights of a model of `config` from a safetensors file. Accepts GPT-2 names with or without
/// the `transformer.` prefix, ignores the buffers transformers may store, widens F16 and BF16 to f32,
/// and accepts an `lm_head.weight` for a tied head only when it equals the embedding.
pub fn load_weights(config: ModelConfig, file: &TensorFile) -> Result<(ModelConfig, Vec<f32>)> {
    // A file too small for the configured model is refused before anything is allocated for it.
    if config.n_params() as u64 * 2 > file.len() as u64 {
        return Err(Error::Invalid(format!(
            "{}: holds {} bytes, too few for the {} parameters its config.json describes",
            file.path().display(),
            file.len(),
            config.n_params()
        )));
    }
    let layout = ParamLayout::new(&config);
    let names = file.names();
    let strip = config.arch == Arch::Gpt2 && !names.iter().any(|n| n.starts_with("transformer."));
    let stored = |name: &str| -> String {
        if strip {
            name.trim_start_matches("transformer.").to_string()
        } else {
            name.to_string()
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
        // No run starts from, samples from or resumes a model that is not finite.
        if let Some(i) = data.iter().position(|x| !x.is_finite()) {
            return Err(Error::Invalid(format!(
                "{}: tensor `{name}` holds a non-finite value (element {i}); the model is damaged",
                file.path().display()
            )));
        }
        flat[spec.offset..spec.offset + spec.len()].copy_from_slice(&data);
    }
    for name in &names {
        let known = layout.specs.iter().any(|s| stored(&s.name) == *name);
        if known || is_ignored_buffer(name) {
            continue;
        }
        if name == "lm_head.weight" {
            let (embedding, short) = embedding_name(&config.arch);
            let embedding = layout.index(embedding).expect("every layout has an embedding");
            let head = file.f32(name, Some(&layout.specs[embedding].shape))?;
            if head != layout.slice(&flat, embedding) {
                let hint = match config.arch {
                    Arch::Gpt2 => "wgslm's GPT-2 needs the output head tied to the token embedding",
                    Arch::Llama(_) => "config.json says the head is tied; set tie_word_embeddings to false",
                };
                return Err(Error::Invalid(format!(
                    "{}: lm_head.weight differs from {short}; {hint}",
                    file.path().display()
                )));
            }
            continue;
        }
        return Err(Error::Invalid(format!(
            "{}: unexpected tensor `{name}` (not part of a {} model with {} layers)",
            file.path().display(),
            config.arch.name(),
            config.n_layer
        )));
    }
    Ok((config, flat))
}

/// The `config.json` transformers needs to rebuild the model.
pub fn config_json(config: &ModelConfig, bos_eos: Option<u32>) -> serde_json::Value {
    match &config.arch {
        Arch::Gpt2 => gpt2::hf_config(config, bos_eos),
        Arch::Llama(l) => llama::hf_config(config, l, bos_eos),
    }
}

/// Writes `dir/config.json` and `dir/model.safetensors` (each atomically), HF names, F32, a tied
/// head left out as transformers does.
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

/// The precision `wgslm export` writes weights in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Precision {
    F32,
    Bf16,
    F16,
}

impl Precision {
    /// Parses `f32`, `bf16` or `f16` (or torch's names for them); `what` names the source in errors.
    pub fn parse(what: &str, s: &str) -> Result<Self> {
        match s {
            "f32" | "float32" => Ok(Self::F32),
            "bf16" | "bfloat16" => Ok(Self::Bf16),
            "f16" | "float16" => Ok(Self::F16),
            other => Err(Error::Invalid(format!("{what} is \"{other}\"; use f32, bf16 or f16"))),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "f32",
            Self::Bf16 => "bf16",
            Self::F16 => "f16",
        }
    }

    /// config.json's `torch_dtype` for weights stored in this precision.
    fn torch_dtype(self) -> &'static str {
        match self {
            Self::F32 => "float32",
            Self::Bf16 => "bfloat16",
            Self::F16 => "float16",
        }
    }

    /// `x` rounded to this precision (to nearest, ties to even) as the bits of a half, or None for
    /// f32. A value beyond f16's range becomes an infinity; [`export`] refuses such a model first.
    fn half_bits(self, x: f32) -> Option<u16> {
        match self {
            Self::F32 => None,
            Self::Bf16 => Some(half::bf16::from_f32(x).to_bits()),
            Self::F16 => Some(half::f16::from_f32(x).to_bits()),
        }
    }
}

/// The files of a model directory besides its weights and config that an export carries over: the
/// tokenizer and generation settings transformers reads. A checkpoint's training state is left out.
const CARRIED_FILES: &[&str] = &[
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "generation_config.json",
    "vocab.json",
    "merges.txt",
];

/// What [`export`] wrote.
#[derive(Debug)]
pub struct Exported {
    pub params: usize,
    /// Bytes of the new model.safetensors.
    pub bytes: u64,
    /// Relative L2 norm of the rounding (new weights against the source's), over all parameters.
    pub rounding: f64,
}

/// Writes the model of directory `src` as a new Hugging Face directory `out` with its weights in
/// `precision`: model.safetensors (BF16, F16 or F32 tensors), config.json with `torch_dtype` set, and
/// the tokenizer files beside them. `out` must not exist. Everything is written under a temporary
/// name beside `out` and renamed at the end, so a failed or interrupted export leaves no `out`, and
/// `src` is only read.
pub fn export(src: &Path, out: &Path, precision: Precision) -> Result<Exported> {
    if out.exists() {
        return Err(Error::Invalid(format!(
            "{}: already exists; export writes a new directory (choose another --out, or remove it)",
            out.display()
        )));
    }
    let (config, flat) = load(src)?;
    let layout = ParamLayout::new(&config);
    if precision == Precision::F16 {
        let limit = half::f16::MAX.to_f32();
        for (i, spec) in layout.specs.iter().enumerate() {
            if let Some(x) = layout.slice(&flat, i).iter().find(|x| x.abs() > limit) {
                return Err(Error::Invalid(format!(
                    "{}: tensor `{}` holds {x}, beyond f16's range (±{limit}); export with --dtype bf16, \
                     which keeps f32's range",
                    src.display(),
                    spec.name
                )));
            }
        }
    }
    let halves: Vec<u16> = flat.iter().filter_map(|&x| precision.half_bits(x)).collect();
    let widen = |bits: u16| match precision {
        Precision::F16 => half::f16::from_bits(bits).to_f32(),
        _ => half::bf16::from_bits(bits).to_f32(),
    };
    let (mut err, mut norm) = (0f64, 0f64);
    for (i, &x) in flat.iter().enumerate() {
        let rounded = halves.get(i).map_or(x, |&h| widen(h));
        err += (f64::from(rounded) - f64::from(x)).powi(2);
        norm += f64::from(x).powi(2);
    }
    let dtype = match precision {
        Precision::F16 => safetensors::Dtype::F16,
        _ => safetensors::Dtype::BF16,
    };
    let tensors = layout
        .specs
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let range = s.offset..s.offset + s.len();
            let tensor = match precision {
                Precision::F32 => Tensor::F32(layout.slice(&flat, i), s.shape.clone()),
                _ => Tensor::Half(&halves[range], dtype, s.shape.clone()),
            };
            (s.name.clone(), tensor)
        })
        .collect();

    let mut json: serde_json::Value = serde_json::from_slice(&fsutil::read(&src.join(CONFIG_FILE))?)
        .map_err(|e| Error::Invalid(format!("{}: {e}", src.join(CONFIG_FILE).display())))?;
    json["torch_dtype"] = precision.torch_dtype().into();

    let parent = out.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name =
        out.file_name().ok_or_else(|| Error::Invalid(format!("{}: not a directory name", out.display())))?;
    let tmp = parent.join(format!(".{}.tmp-{}", name.to_string_lossy(), std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    let written = (|| -> Result<u64> {
        std::fs::create_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
        let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
        tensors::write(&tmp.join(WEIGHTS_FILE), tensors, Some(metadata))?;
        let text = serde_json::to_string_pretty(&json).expect("a JSON value serialises");
        fsutil::write_atomic(&tmp.join(CONFIG_FILE), text.as_bytes())?;
        for file in CARRIED_FILES {
            let from = src.join(file);
            if from.is_file() {
                fsutil::write_atomic(&tmp.join(file), &fsutil::read(&from)?)?;
            }
        }
        let bytes = std::fs::metadata(tmp.join(WEIGHTS_FILE)).map_err(|e| Error::io(&tmp, e))?.len();
        std::fs::rename(&tmp, out).map_err(|e| Error::io(out, e))?;
        Ok(bytes)
    })();
    match written {
        Ok(bytes) => Ok(Exported {
            params: flat.len(),
            bytes,
            rounding: if norm > 0.0 { (err / norm).sqrt() } else { 0.0 },
        }),
        Err(e) => {
            let _ = std::fs::remove_dir_all(&tmp);
            Err(e)
        }
    }
}
