//! Batches of (inputs, targets) windows from a token stream: one in memory, or the shards of a data
//! directory, memory-mapped.

use std::path::{Path, PathBuf};

use super::tokenfile::TokenFile;
use crate::rng::Rng;
use crate::{Error, Result};

/// One stream of tokens: shards read in order as if they were one file. A window may cross from one
/// shard into the next, as it would in the one file the shards were cut from.
pub struct TokenSet {
    shards: Vec<Shard>,
    /// The index of each shard's first token in the stream.
    starts: Vec<usize>,
    len: usize,
}

enum Shard {
    Memory(Vec<u32>),
    Mapped(TokenFile),
}

impl Shard {
    fn len(&self) -> usize {
        match self {
            Shard::Memory(t) => t.len(),
            Shard::Mapped(f) => f.len(),
        }
    }

    fn extend_into(&self, at: usize, n: usize, out: &mut Vec<u32>) {
        match self {
            Shard::Memory(t) => out.extend_from_slice(&t[at..at + n]),
            Shard::Mapped(f) => f.extend_into(at, n, out),
        }
    }
}

/// The token files of split `split` ("train" or "val") in `dir`: `{split}.bin` if there is one, and the
/// shards named as llm.c names them (`*_{split}_*.bin`, or `*_{split}.bin`) in name order.
pub fn token_files(dir: &Path, split: &str) -> Result<(Option<PathBuf>, Vec<PathBuf>)> {
    let single = dir.join(format!("{split}.bin"));
    let (infix, suffix) = (format!("_{split}_"), format!("_{split}.bin"));
    let mut shards = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let path = entry.map_err(|e| Error::io(dir, e))?.path();
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        if name.ends_with(".bin")
            && (name.contains(&infix) || name.ends_with(&suffix))
            && !name.starts_with('.')
        {
            shards.push(path);
        }
    }
    shards.sort();
    Ok((single.is_file().then_some(single), shards))
}

/// The files [`token_files`] finds, refusing a directory that holds both kinds.
pub fn shard_paths(dir: &Path, split: &str) -> Result<Vec<PathBuf>> {
    match token_files(dir, split)? {
        (Some(_), shards) if !shards.is_empty() => Err(Error::Invalid(format!(
            "{}: holds both {split}.bin and {} `*_{split}_*.bin` shards; remove one or the other",
            dir.display(),
            shards.len()
        ))),
        (Some(single), _) => Ok(vec![single]),
        (None, shards) => Ok(shards),
    }
}

impl TokenSet {
    pub fn from_vec(tokens: Vec<u32>) -> Self {
        let len = tokens.len();
        TokenSet { shards: vec![Shard::Memory(tokens)], starts: vec![0], len }
    }

    /// Maps every file of `paths`, checking each header against its length and (with `vocab`) each
    /// token against the vocabulary, so that a damaged shard is named now rather than when a batch
    /// first reaches it.
    pub fn open(paths: &[PathBuf], vocab: Option<usize>) -> Result<Self> {
        let mut set = TokenSet { shards: Vec::new(), starts: Vec::new(), len: 0 };
        for path in paths {
            let file = TokenFile::open(path)?;
            if let Some(v) = vocab {
                file.check_ids(v)?;
            }
            set.starts.push(set.len);
            set.len += file.len();
            set.shards.push(Shard::Mapped(file));
        }
        Ok(set)
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn shards(&self) -> usize {
        self.shards.len()
    }

    /// Appends tokens `[at, at + n)` of the stream to `out`.
    pub fn extend_into(&self, mut at: usize, mut n: usize, out: &mut Vec<u32>) {
        let mut i = self.starts.partition_point(|&s| s <= at) - 1;
        while n > 0 {
            let shard = &self.shards[i];
            let (from, take) = (at - self.starts[i], n.min(self.starts[i] + shard.len() - at));
            shard.extend_into(from, take, out);
            (at, n, i) = (at + take, n - take, i + 1);
        }
    }

    /// Tokens `[at, at + n)`.
    pub fn get(&self, at: usize, n: usize) -> Vec<u32> {
        let mut out = Vec::with_capacity(n);
        self.extend_into(at, n, &mut out);
        out
    }
}

/// Draws random windows of T+1 tokens (as nanoGPT does); its one-word RNG state goes into checkpoints
/// so that a resumed run draws the same batches.
pub struct Loader {
    tokens: TokenSet,
    b: usize,
    t: usize,
    rng: Rng,
}

impl Loader {
    /// `what` names the data in errors.
    pub fn new(tokens: TokenSet, b: usize, t: usize, seed: u64, what: &str) -> Result<Self> {
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
        let mut window = Vec::with_capacity(self.t + 1);
        for _ in 0..self.b {
            let at = self.rng.below(span) as usize;
            window.clear();
            self.tokens.extend_into(at, self.t + 1, &mut window);
            x.extend_from_slice(&window[..self.t]);
            y.extend_from_slice(&window[1..]);
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
                let window = self.tokens.get(at, self.t + 1);
                x.extend_from_slice(&window[..self.t]);
                y.extend_from_slice(&window[1..]);
            }
            out.push((x, y));
        }
        out
    }
}
