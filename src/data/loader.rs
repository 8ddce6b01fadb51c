//! Batches of (inputs, targets) windows from a token stream.

use crate::rng::Rng;
use crate::{Error, Result};

/// Draws random windows of T+1 tokens (as nanoGPT does); its one-word RNG state goes into checkpoints
/// so that a resumed run draws the same batches.
pub struct Loader {
    tokens: Vec<u32>,
    b: usize,
    t: usize,
    rng: Rng,
}

/// Checks every token id against the vocabulary; `what` names the data in the error.
pub fn check_ids(tokens: &[u32], vocab: usize, what: &str) -> Result<()> {
    match tokens.iter().position(|&t| t as usize >= vocab) {
        Some(i) => Err(Error::Invalid(format!(
            "{what}: token {} at position {i} is outside the vocabulary of {vocab}; was it prepared with another tokenizer?",
            tokens[i]
        ))),
        None => Ok(()),
    }
}

impl Loader {
    /// `what` names the data in errors.
    pub fn new(tokens: Vec<u32>, b: usize, t: usize, seed: u64, what: &str) -> Result<Self> {
        if tokens.len() < t + 1 {
            return Err(Error::Invalid(format!(
                "{what}: {} tokens is shorter than one sequence of block_size + 1 = {}; use more data or a smaller block_size",
                tokens.len(),
                t + 1
            )));
        }
        Ok(Loader { tokens, b, t, rng: Rng::new(seed) })
    }

    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// B random windows: inputs (B,T) and the targets shifted by one.
    pub fn next_batch(&mut self) -> (Vec<u32>, Vec<u32>) {
        let span = (self.tokens.len() - self.t) as u64;
        let mut x = Vec::with_capacity(self.b * self.t);
        let mut y = Vec::with_capacity(self.b * self.t);
        for _ in 0..self.b {
            let at = self.rng.below(span) as usize;
            x.extend_from_slice(&self.tokens[at..at + self.t]);
            y.extend_from_slice(&self.tokens[at + 1..at + self.t + 1]);
        }
        (x, y)
    }

    /// The RNG state, for checkpoints.
    pub fn state(&self) -> u64 {
        self.rng.state()
    }

    pub fn set_state(&mut self, state: u64) {
        self.rng = Rng::from_state(state);
    }

    /// `batches` fixed batches of windows spread evenly over the stream: the same every evaluation.
    pub fn eval_batches(&self, batches: usize) -> Vec<(Vec<u32>, Vec<u32>)> {
        let windows = batches * self.b;
        let span = self.tokens.len() - self.t - 1;
        let mut out = Vec::new();
        for i in 0..batches {
            let (mut x, mut y) = (Vec::new(), Vec::new());
            for j in 0..self.b {
                let at = (i * self.b + j) * span / windows.max(1);
                x.extend_from_slice(&self.tokens[at..at + self.t]);
                y.extend_from_slice(&self.tokens[at + 1..at + self.t + 1]);
            }
            out.push((x, y));
        }
        out
    }
}
