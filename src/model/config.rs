//! The shape of a model: the fields every architecture has, and the architecture with its own.

use crate::{Error, Result};

/// The architecture of a model, with the fields only it has.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Arch {
    /// GPT-2: pre-LayerNorm blocks (eps 1e-5), tanh GELU MLP of width 4·n_embd, learned positions,
    /// the output head tied to the token embedding, biases everywhere.
    Gpt2,
    /// Llama: pre-RMSNorm blocks, RoPE on queries and keys, grouped-query attention, SwiGLU MLP, no
    /// biases, the head tied or not.
    Llama(LlamaConfig),
}

/// What a Llama model has beyond the common fields.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LlamaConfig {
    /// Key/value heads; divides n_head (n_head = grouped-query off, 1 = multi-query).
    pub n_kv_head: usize,
    /// Width of the SwiGLU MLP.
    pub intermediate_size: usize,
    /// RoPE base.
    pub rope_theta: f64,
    /// RMSNorm epsilon.
    pub norm_eps: f64,
    /// The output head is the token embedding.
    pub tie_embeddings: bool,
}

impl Arch {
    /// The name used by the `arch` config key and in messages.
    pub fn name(&self) -> &'static str {
        match self {
            Arch::Gpt2 => "gpt2",
            Arch::Llama(_) => "llama",
        }
    }
}

/// A model's shape.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ModelConfig {
    pub arch: Arch,
    pub n_layer: usize,
    pub n_head: usize,
    pub n_embd: usize,
    pub vocab_size: usize,
    /// The longest sequence the model is built for (GPT-2's position embedding; Llama's
    /// max_position_embeddings).
    pub n_positions: usize,
}

impl ModelConfig {
    /// A GPT-2 of these sizes.
    pub const fn gpt2(
        n_layer: usize,
        n_head: usize,
        n_embd: usize,
        vocab_size: usize,
        n_positions: usize,
    ) -> Self {
        ModelConfig { arch: Arch::Gpt2, n_layer, n_head, n_embd, vocab_size, n_positions }
    }

    /// Checks that the shapes are usable; the message names the field.
    pub fn validate(&self) -> Result<()> {
        for (name, value) in [
            ("n_layer", self.n_layer),
            ("n_head", self.n_head),
            ("n_embd", self.n_embd),
            ("vocab_size", self.vocab_size),
            ("n_positions", self.n_positions),
        ] {
            if value == 0 {
                return Err(Error::Invalid(format!("{name} must be at least 1")));
            }
        }
        if self.n_embd % self.n_head != 0 {
            return Err(Error::Invalid(format!(
                "n_embd {} is not divisible by n_head {}: each head needs n_embd / n_head channels",
                self.n_embd, self.n_head
            )));
        }
        // Bounds that keep every size computation far from overflow and refuse absurd files before
        // anything is allocated for them.
        let mut bounds = vec![
            ("n_layer", self.n_layer, 1 << 12),
            ("n_embd", self.n_embd, 1 << 16),
            ("vocab_size", self.vocab_size, 1 << 24),
            ("n_positions", self.n_positions, 1 << 20),
        ];
        if let Arch::Llama(l) = &self.arch {
            if l.n_kv_head == 0 || self.n_head % l.n_kv_head != 0 {
                return Err(Error::Invalid(format!(
                    "n_kv_head {} must divide n_head {} (each kv head serves n_head / n_kv_head query heads)",
                    l.n_kv_head, self.n_head
                )));
            }
            if self.head_size() % 2 != 0 {
                return Err(Error::Invalid(format!(
                    "the head size n_embd / n_head = {} must be even: RoPE rotates pairs of channels",
                    self.head_size()
                )));
            }
            if l.intermediate_size == 0 {
                return Err(Error::Invalid("intermediate_size must be at least 1".into()));
            }
            bounds.push(("intermediate_size", l.intermediate_size, 1 << 18));
            // Both are used in f32: a value that rounds to 0 or to inf there is refused too.
            for (name, v) in [("rope_theta", l.rope_theta), ("norm_eps", l.norm_eps)] {
                if !((v as f32).is_finite() && v as f32 >= f32::MIN_POSITIVE) {
                    return Err(Error::Invalid(format!(
                        "{name} = {v} must be a number above 0 that f32 holds ({:e} to {:e})",
                        f32::MIN_POSITIVE,
                        f32::MAX
                    )));
                }
            }
        }
        for (name, value, max) in bounds {
            if value > max {
                return Err(Error::Invalid(format!(
                    "{name} {value} is above the largest wgslm supports ({max})"
                )));
            }
        }
        let params = self.n_params() as f64;
        if params > 4e9 {
            return Err(Error::Invalid(format!(
                "a model of {params:.3e} parameters is beyond what wgslm can hold"
            )));
        }
        Ok(())
    }

    pub fn head_size(&self) -> usize {
        self.n_embd / self.n_head
    }

    /// Key/value heads (n_head for GPT-2).
    pub fn n_kv_head(&self) -> usize {
        match self.arch {
            Arch::Gpt2 => self.n_head,
            Arch::Llama(l) => l.n_kv_head,
        }
    }

    /// Trainable parameters (a tied head counted once).
    pub fn n_params(&self) -> usize {
        let (c, v) = (self.n_embd, self.vocab_size);
        match self.arch {
            Arch::Gpt2 => {
                let per_layer =
                    2 * c + (3 * c * c + 3 * c) + (c * c + c) + 2 * c + (4 * c * c + 4 * c) + (4 * c * c + c);
                v * c + self.n_positions * c + self.n_layer * per_layer + 2 * c
            }
            Arch::Llama(l) => {
                let kv = l.n_kv_head * self.head_size();
                let per_layer = 2 * c + c * (c + 2 * kv) + c * c + 3 * c * l.intermediate_size;
                let head = if l.tie_embeddings { 0 } else { v * c };
                v * c + self.n_layer * per_layer + c + head
            }
        }
    }
}
