//! The shape of a GPT-2 model.

use crate::{Error, Result};

/// A GPT-2 model: pre-LayerNorm blocks (eps 1e-5), tanh GELU, learned positions, the output head tied
/// to the token embedding, biases everywhere.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ModelConfig {
    pub n_layer: usize,
    pub n_head: usize,
    pub n_embd: usize,
    pub vocab_size: usize,
    /// The longest sequence the position embedding covers.
    pub n_positions: usize,
}

impl ModelConfig {
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
        for (name, value, max) in [
            ("n_layer", self.n_layer, 1 << 12),
            ("n_embd", self.n_embd, 1 << 16),
            ("vocab_size", self.vocab_size, 1 << 24),
            ("n_positions", self.n_positions, 1 << 20),
        ] {
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

    /// Trainable parameters (the tied head counted once).
    pub fn n_params(&self) -> usize {
        let c = self.n_embd;
        let per_layer =
            2 * c + (3 * c * c + 3 * c) + (c * c + c) + 2 * c + (4 * c * c + 4 * c) + (4 * c * c + c);
        self.vocab_size * c + self.n_positions * c + self.n_layer * per_layer + 2 * c
    }
}
