//! The training configuration: a flat TOML file, unknown keys rejected, every key with its unit and
//! default below (docs/CONFIG.md lists the same), overridable with `--set key=value`.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::model::{Arch, LlamaConfig, ModelConfig};
use crate::{fsutil, Error, Result};

/// `key = v` must be finite and in `[lo, hi]`.
fn finite(key: &str, v: f32, lo: f32, hi: f32, what: &str) -> std::result::Result<(), String> {
    if v.is_finite() && v >= lo && v <= hi {
        Ok(())
    } else {
        Err(format!("{key} = {v} must be {what}"))
    }
}

/// AdamW's settings in the ranges it trains with (`eps = 0` would divide zero by zero where a
/// gradient is zero); `prefix` is what names them (`""` in a config, `"--"` on the command line).
pub fn check_adamw(
    prefix: &str,
    lr: f32,
    beta1: f32,
    beta2: f32,
    eps: f32,
    weight_decay: f32,
) -> std::result::Result<(), String> {
    finite(&format!("{prefix}lr"), lr, f32::MIN_POSITIVE, 10.0, "a finite number in (0, 10]")?;
    finite(&format!("{prefix}beta1"), beta1, 0.0, 0.999_999, "in [0, 1)")?;
    finite(&format!("{prefix}beta2"), beta2, 0.0, 0.999_999, "in [0, 1)")?;
    finite(&format!("{prefix}eps"), eps, f32::MIN_POSITIVE, 1.0, "in (0, 1]")?;
    finite(&format!("{prefix}weight_decay"), weight_decay, 0.0, 10.0, "in [0, 10]")
}

/// The most evaluation batches (`eval_batches`).
pub const MAX_EVAL_BATCHES: usize = 1 << 16;

/// The most stories `data = "builtin"` generates (about 540 MB of text).
pub const MAX_BUILTIN_STORIES: usize = 1_000_000;

/// Every key of a training config. The defaults train a ~0.45M-parameter model on the embedded stories
/// (docs/CONFIG.md is the reference).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    /// "builtin" (the embedded story generator) or a directory written by `wgslm prepare`
    /// (tokenizer.json, train.bin, val.bin). A relative path is taken from the working directory,
    /// else from the config file's directory.
    pub data: String,
    /// Stories generated when data = "builtin" (about 540 characters each).
    pub builtin_stories: usize,
    /// Tokenizer for data = "builtin": "char", "byte" or "bpe".
    pub tokenizer: String,
    /// Vocabulary size of a BPE trained for data = "builtin" (tokens).
    pub vocab_size: usize,

    /// A Hugging Face GPT-2 or Llama directory (or a run directory) to start from instead of a random
    /// initialisation ("" = none). n_layer, n_head and n_embd must match it, block_size may not exceed
    /// its n_positions, and the data's tokenizer must fit its vocabulary.
    pub init_from: String,

    /// The architecture: "gpt2" or "llama".
    pub arch: String,
    /// Transformer blocks.
    pub n_layer: usize,
    /// Attention heads per block; must divide n_embd.
    pub n_head: usize,
    /// Width of the residual stream (channels).
    pub n_embd: usize,
    /// Context length (tokens); also the model's n_positions.
    pub block_size: usize,
    /// Dropout probability on the embeddings, attention probabilities and residual branches (0 = off;
    /// GPT-2 only).
    pub dropout: f32,
    /// Llama: key/value heads, dividing n_head (default n_head).
    pub n_kv_head: Option<usize>,
    /// Llama: width of the SwiGLU MLP (default: llama's 8/3 · n_embd rounded up to a multiple of 32).
    pub intermediate_size: Option<usize>,
    /// Llama: RoPE base (default 10000).
    pub rope_theta: Option<f64>,
    /// Llama: RMSNorm epsilon (default 1e-5).
    pub norm_eps: Option<f64>,
    /// Llama: the output head is the token embedding (default false).
    pub tie_embeddings: Option<bool>,

    /// Sequences per micro-batch.
    pub batch_size: usize,
    /// Micro-batches accumulated into one optimizer step.
    pub grad_accum_steps: usize,
    /// Optimizer steps in the whole run.
    pub max_steps: usize,
    /// Peak learning rate, reached after warmup.
    pub lr: f32,
    /// Learning rate at the end of the cosine decay (at max_steps).
    pub min_lr: f32,
    /// Steps of linear warmup from 0 to lr.
    pub warmup_steps: usize,
    /// AdamW β1.
    pub beta1: f32,
    /// AdamW β2.
    pub beta2: f32,
    /// AdamW ε.
    pub eps: f32,
    /// Decoupled weight decay on 2-D tensors (matmul weights, embeddings); none on biases and gains.
    pub weight_decay: f32,
    /// Clip the global gradient L2 norm to this (0 = no clipping).
    pub grad_clip: f32,

    /// Evaluate on the validation set every this many steps (0 = only at the end).
    pub eval_every: usize,
    /// Batches per evaluation (fixed windows spread over the validation set).
    pub eval_batches: usize,
    /// Print a sample every this many steps (0 = only at the end).
    pub sample_every: usize,
    /// Tokens per sample.
    pub sample_tokens: usize,
    /// Text a sample starts from ("" = the end-of-text token).
    pub sample_prompt: String,
    /// Write a checkpoint every this many steps (0 = only at the end).
    pub checkpoint_every: usize,
    /// Checkpoints kept on disk; older ones are deleted (0 = keep all).
    pub keep_checkpoints: usize,
    /// Seed of the initialisation, the batches and dropout.
    pub seed: u64,
    /// Matmul kernels on a GPU: "auto" (time the variants per shape, cached on disk), "default" (the
    /// adapter's default), or a variant name to pin (see docs/KERNELS.md).
    pub matmul: String,
    /// Attention kernels: "auto", "flash" (fused; memory linear in T) or "naive" (explicit T² scores).
    pub attention: String,
    /// What the matmuls read: "f32", or "bf16" / "f16" mixed precision (16-bit activations and
    /// weight copies, f32 master weights, optimizer and sums; f16 with dynamic loss scaling). See
    /// docs/ARCHITECTURE.md, "Mixed precision".
    pub precision: String,
    /// Record the initial model, every training batch and the evaluation windows in the run
    /// directory, for a reproduction by another trainer (scripts/pytorch_parity.py).
    pub save_batches: bool,
    /// Consecutive steps with a non-finite loss or gradient tolerated (skipped) before stopping.
    pub max_bad_steps: usize,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            data: "builtin".into(),
            builtin_stories: 20_000,
            tokenizer: "char".into(),
            vocab_size: 512,
            init_from: String::new(),
            arch: "gpt2".into(),
            n_layer: 4,
            n_head: 4,
            n_embd: 96,
            block_size: 64,
            dropout: 0.0,
            n_kv_head: None,
            intermediate_size: None,
            rope_theta: None,
            norm_eps: None,
            tie_embeddings: None,
            batch_size: 16,
            grad_accum_steps: 1,
            max_steps: 400,
            lr: 3e-3,
            min_lr: 3e-4,
            warmup_steps: 40,
            beta1: 0.9,
            beta2: 0.99,
            eps: 1e-8,
            weight_decay: 0.1,
            grad_clip: 1.0,
            eval_every: 100,
            eval_batches: 20,
            sample_every: 100,
            sample_tokens: 200,
            sample_prompt: "Once upon a time".into(),
            checkpoint_every: 200,
            keep_checkpoints: 3,
            seed: 1337,
            matmul: "auto".into(),
            attention: "auto".into(),
            precision: "f32".into(),
            save_batches: false,
            max_bad_steps: 10,
        }
    }
}

/// Parses `value` as a TOML value when it is one (`3`, `1e-3`, `true`, `"x"`), else as a string.
fn parse_value(value: &str) -> toml::Value {
    format!("v = {value}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(value.to_string()))
}

impl TrainConfig {
    /// Parses config text; `origin` names it in errors.
    pub fn parse(origin: &str, text: &str) -> Result<Self> {
        let cfg: TrainConfig = toml::from_str(text)
            .map_err(|e| Error::Invalid(format!("{origin}: {}", one_line(&e.to_string()))))?;
        cfg.validate().map_err(|e| Error::Invalid(format!("{origin}: {e}")))?;
        Ok(cfg)
    }

    /// Reads a config file (or the defaults when `path` is None) and applies `key=value` overrides.
    pub fn load(path: Option<&Path>, overrides: &[String]) -> Result<Self> {
        let (mut table, origin) = match path {
            Some(p) => {
                let text = String::from_utf8(fsutil::read(p)?)
                    .map_err(|_| Error::Invalid(format!("{}: not UTF-8 text", p.display())))?;
                // Deserialising the text itself (not a merged table) keeps line numbers in errors.
                toml::from_str::<TrainConfig>(&text)
                    .map_err(|e| Error::Invalid(format!("{}: {}", p.display(), one_line(&e.to_string()))))?;
                let table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
                    Error::Invalid(format!("{}: {}", p.display(), one_line(&e.to_string())))
                })?;
                (table, p.display().to_string())
            }
            None => (toml::Table::new(), "the defaults".to_string()),
        };
        for o in overrides {
            let (key, value) = o.split_once('=').ok_or_else(|| {
                Error::Invalid(format!("--set {o}: expected key=value, e.g. --set lr=3e-4"))
            })?;
            table.insert(key.trim().to_string(), parse_value(value.trim()));
        }
        let mut cfg: TrainConfig = toml::Value::Table(table).try_into().map_err(|e: toml::de::Error| {
            Error::Invalid(format!("{origin} (with --set): {}", one_line(&e.to_string())))
        })?;
        if let Some(dir) = path.and_then(|p| p.parent()) {
            let relative = !cfg.data.is_empty() && Path::new(&cfg.data).is_relative();
            if cfg.data != "builtin" && relative && !dir.as_os_str().is_empty() {
                let joined = dir.join(&cfg.data);
                if !Path::new(&cfg.data).exists() && joined.exists() {
                    cfg.data = joined.to_string_lossy().into_owned();
                }
            }
        }
        cfg.validate().map_err(|e| Error::Invalid(format!("{origin}: {e}")))?;
        Ok(cfg)
    }

    /// Checks every value; the message names the key and says what is allowed.
    pub fn validate(&self) -> std::result::Result<(), String> {
        for (key, v) in [
            ("n_layer", self.n_layer),
            ("n_head", self.n_head),
            ("n_embd", self.n_embd),
            ("block_size", self.block_size),
            ("batch_size", self.batch_size),
            ("grad_accum_steps", self.grad_accum_steps),
            ("max_steps", self.max_steps),
            ("eval_batches", self.eval_batches),
        ] {
            if v == 0 {
                return Err(format!("{key} must be at least 1"));
            }
        }
        if self.n_embd % self.n_head != 0 {
            return Err(format!("n_embd {} is not divisible by n_head {}", self.n_embd, self.n_head));
        }
        use crate::model::{MAX_ACCUM, MAX_BATCH_TOKENS};
        if self.batch_size.checked_mul(self.block_size).is_none_or(|n| n > MAX_BATCH_TOKENS) {
            return Err(format!(
                "batch_size {} × block_size {} is more than {MAX_BATCH_TOKENS} tokens a micro-batch; lower one of them \
                 (grad_accum_steps makes a step larger without the memory)",
                self.batch_size, self.block_size
            ));
        }
        for (key, v, most) in [
            ("grad_accum_steps", self.grad_accum_steps, MAX_ACCUM),
            ("eval_batches", self.eval_batches, MAX_EVAL_BATCHES),
            ("builtin_stories", self.builtin_stories, MAX_BUILTIN_STORIES),
        ] {
            if v > most {
                return Err(format!("{key} = {v} is more than the {most} this engine takes"));
            }
        }
        let trains_bpe = self.data == "builtin" && self.tokenizer == "bpe";
        if trains_bpe && self.vocab_size > crate::data::MAX_VOCAB {
            return Err(format!(
                "vocab_size = {} is more than the {} tokens a BPE trained here may have",
                self.vocab_size,
                crate::data::MAX_VOCAB
            ));
        }
        check_adamw("", self.lr, self.beta1, self.beta2, self.eps, self.weight_decay)?;
        finite("min_lr", self.min_lr, 0.0, self.lr, "a finite number in [0, lr]")?;
        finite("grad_clip", self.grad_clip, 0.0, f32::MAX, "finite and >= 0")?;
        finite("dropout", self.dropout, 0.0, 0.95, "in [0, 0.95]")?;
        match self.arch.as_str() {
            "gpt2" => {
                let set = self.llama_keys();
                if let Some(key) = set.first() {
                    return Err(format!(
                        "{key} applies to arch = \"llama\" only; remove it or set arch = \"llama\""
                    ));
                }
            }
            "llama" => {
                if self.dropout > 0.0 {
                    return Err("dropout applies to arch = \"gpt2\" only; set dropout = 0 for a Llama".into());
                }
                let llama = self.model(1);
                llama.validate().map_err(|e| e.to_string())?;
            }
            other => return Err(format!("arch = {other:?} must be \"gpt2\" or \"llama\"")),
        }
        if !matches!(self.tokenizer.as_str(), "char" | "byte" | "bpe") {
            return Err(format!("tokenizer = {:?} must be \"char\", \"byte\" or \"bpe\"", self.tokenizer));
        }
        let variants = crate::gpu::kernels::MATMUL_VARIANTS;
        if !(matches!(self.matmul.as_str(), "auto" | "default") || variants.contains(&self.matmul.as_str())) {
            return Err(format!(
                "matmul = {:?} must be \"auto\", \"default\" or one of {}",
                self.matmul,
                variants.join(", ")
            ));
        }
        if crate::model::Attention::parse(&self.attention).is_none() {
            return Err(format!("attention = {:?} must be \"auto\", \"flash\" or \"naive\"", self.attention));
        }
        if crate::model::Precision::parse(&self.precision).is_none() {
            return Err(format!("precision = {:?} must be \"f32\", \"bf16\" or \"f16\"", self.precision));
        }
        if self.data.is_empty() {
            return Err("data = \"\" must be \"builtin\" or a directory written by `wgslm prepare`".into());
        }
        if self.data == "builtin" && self.builtin_stories < 10 {
            return Err("builtin_stories must be at least 10".into());
        }
        Ok(())
    }

    /// The Llama keys this config sets.
    fn llama_keys(&self) -> Vec<&'static str> {
        let mut set = Vec::new();
        macro_rules! some {
            ($($k:ident),*) => { $( if self.$k.is_some() { set.push(stringify!($k)); } )* };
        }
        some!(n_kv_head, intermediate_size, rope_theta, norm_eps, tie_embeddings);
        set
    }

    /// The model this config trains, given the data's vocabulary.
    pub fn model(&self, vocab_size: usize) -> ModelConfig {
        let arch = match self.arch.as_str() {
            "llama" => Arch::Llama(LlamaConfig {
                n_kv_head: self.n_kv_head.unwrap_or(self.n_head),
                // Llama's choice: 2/3 of a 4·C MLP (the gate costs a third matrix), rounded up to a
                // multiple of 32.
                intermediate_size: self.intermediate_size.unwrap_or((8 * self.n_embd / 3).div_ceil(32) * 32),
                rope_theta: self.rope_theta.unwrap_or(10_000.0),
                norm_eps: self.norm_eps.unwrap_or(1e-5),
                tie_embeddings: self.tie_embeddings.unwrap_or(false),
            }),
            _ => Arch::Gpt2,
        };
        ModelConfig {
            arch,
            n_layer: self.n_layer,
            n_head: self.n_head,
            n_embd: self.n_embd,
            vocab_size,
            n_positions: self.block_size,
        }
    }

    /// The config as TOML (what a run directory records).
    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("a config serialises")
    }
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}
