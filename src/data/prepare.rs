//! `wgslm prepare`: text files → tokenizer.json + train.bin + val.bin.

use std::path::{Path, PathBuf};

use indicatif::{ProgressBar, ProgressStyle};

use super::{builtin, tokenfile, Tok};
use crate::rng::Rng;
use crate::{fsutil, Error, Result};

/// Which tokenizer `prepare` makes or loads.
#[derive(Clone, Debug, PartialEq)]
pub enum TokenizerSpec {
    /// A byte-level BPE trained on the input.
    Bpe,
    /// One token per character of the input.
    Char,
    /// The 256 bytes.
    Byte,
    /// A tokenizer.json or GPT-2 vocab.json (+ merges.txt).
    Path(PathBuf),
}

impl std::str::FromStr for TokenizerSpec {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "bpe" => TokenizerSpec::Bpe,
            "char" => TokenizerSpec::Char,
            "byte" => TokenizerSpec::Byte,
            path => TokenizerSpec::Path(PathBuf::from(path)),
        })
    }
}

#[derive(Clone, Debug)]
pub struct PrepareOptions {
    pub inputs: Vec<PathBuf>,
    pub out: PathBuf,
    pub tokenizer: TokenizerSpec,
    /// Target vocabulary for a trained BPE.
    pub vocab_size: usize,
    /// The fraction of tokens (taken from the end) held out for validation.
    pub val_fraction: f64,
    /// Shuffles documents (when there are several) before the split.
    pub seed: u64,
    /// Also split .txt files into documents at this separator (e.g. a blank line).
    pub split: Option<String>,
}

/// What `prepare` wrote.
#[derive(Clone, Debug)]
pub struct Prepared {
    pub vocab_size: usize,
    pub documents: usize,
    pub train_tokens: usize,
    pub val_tokens: usize,
}

/// Reads documents: a .txt file is one document (or several, split at `split`); a .jsonl file holds
/// one document per line in its "text" field.
pub fn read_documents(paths: &[PathBuf], split: Option<&str>) -> Result<Vec<String>> {
    if paths.is_empty() {
        return Err(Error::Invalid("no input files; give one or more --input FILE (.txt or .jsonl)".into()));
    }
    let mut docs = Vec::new();
    for path in paths {
        let text = String::from_utf8(fsutil::read(path)?).map_err(|e| {
            Error::Invalid(format!(
                "{}: not UTF-8 text (byte {})",
                path.display(),
                e.utf8_error().valid_up_to()
            ))
        })?;
        if path.extension().is_some_and(|e| e == "jsonl") {
            for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
                let value: serde_json::Value = serde_json::from_str(line)
                    .map_err(|e| Error::Invalid(format!("{}:{}: not JSON: {e}", path.display(), i + 1)))?;
                let doc = value.get("text").and_then(|t| t.as_str()).ok_or_else(|| {
                    Error::Invalid(format!("{}:{}: no string field \"text\"", path.display(), i + 1))
                })?;
                docs.push(doc.to_string());
            }
        } else {
            match split {
                Some(sep) => docs.extend(text.split(sep).filter(|d| !d.trim().is_empty()).map(String::from)),
                None => docs.push(text),
            }
        }
    }
    if docs.iter().all(|d| d.is_empty()) {
        return Err(Error::Invalid(format!("{}: the input holds no text", paths[0].display())));
    }
    Ok(docs)
}

/// Builds the tokenizer `spec` names (training it on `docs` where needed).
pub fn make_tokenizer(spec: &TokenizerSpec, docs: &[String], vocab_size: usize) -> Result<Tok> {
    match spec {
        TokenizerSpec::Bpe => Tok::train_bpe(docs, vocab_size),
        TokenizerSpec::Char => Tok::chars(docs),
        TokenizerSpec::Byte => Tok::bytes(),
        TokenizerSpec::Path(p) => Tok::load(p),
    }
}

/// Tokenizes documents into one stream; with several documents, each starts with the end-of-text
/// token (as GPT-2 and llm.c do). A bar shows progress on large inputs.
pub fn tokenize(tok: &Tok, docs: &[String]) -> Result<Vec<u32>> {
    let bytes: usize = docs.iter().map(|d| d.len()).sum();
    let bar = if bytes > 8 << 20 { ProgressBar::new(bytes as u64) } else { ProgressBar::hidden() };
    bar.set_style(
        ProgressStyle::with_template("tokenizing {bar:40} {binary_bytes}/{binary_total_bytes} ({eta})")
            .expect("a valid template"),
    );
    let mut tokens = Vec::with_capacity(bytes / 3);
    for doc in docs {
        if docs.len() > 1 {
            tokens.push(tok.eot());
        }
        tokens.extend(tok.encode(doc)?);
        bar.inc(doc.len() as u64);
    }
    bar.finish_and_clear();
    Ok(tokens)
}

/// Splits a stream: the last `val_fraction` of the tokens is validation.
pub fn split(tokens: Vec<u32>, val_fraction: f64) -> (Vec<u32>, Vec<u32>) {
    // Floor, as nanoGPT does (`data[:int(n*0.9)]`).
    let at = ((tokens.len() as f64) * (1.0 - val_fraction)).floor() as usize;
    let mut train = tokens;
    let val = train.split_off(at.min(train.len()));
    (train, val)
}

fn shuffle(docs: &mut [String], seed: u64) {
    let mut rng = Rng::new(seed);
    for i in (1..docs.len()).rev() {
        docs.swap(i, rng.below(i as u64 + 1) as usize);
    }
}

/// `wgslm prepare`.
pub fn prepare(opts: &PrepareOptions) -> Result<Prepared> {
    if !(0.0..1.0).contains(&opts.val_fraction) {
        return Err(Error::Invalid(format!("--val-fraction {} must be in [0, 1)", opts.val_fraction)));
    }
    let mut docs = read_documents(&opts.inputs, opts.split.as_deref())?;
    if docs.len() > 1 {
        shuffle(&mut docs, opts.seed);
    }
    let tok = make_tokenizer(&opts.tokenizer, &docs, opts.vocab_size)?;
    let tokens = tokenize(&tok, &docs)?;
    let (train, val) = split(tokens, opts.val_fraction);
    write_prepared(&opts.out, &tok, &train, &val)?;
    Ok(Prepared {
        vocab_size: tok.vocab_size(),
        documents: docs.len(),
        train_tokens: train.len(),
        val_tokens: val.len(),
    })
}

/// Writes a prepared data directory: tokenizer.json (+ tokenizer_config.json), train.bin, val.bin.
pub fn write_prepared(dir: &Path, tok: &Tok, train: &[u32], val: &[u32]) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    tok.save(dir)?;
    tokenfile::write(&dir.join("train.bin"), train, tok.vocab_size())?;
    tokenfile::write(&dir.join("val.bin"), val, tok.vocab_size())
}

/// The embedded corpus, tokenized: (tokenizer, train tokens, val tokens). `stories` stories from
/// `seed`; the last tenth is validation.
pub fn builtin(
    seed: u64,
    stories: usize,
    spec: &TokenizerSpec,
    vocab_size: usize,
) -> Result<(Tok, Vec<u32>, Vec<u32>)> {
    let docs = builtin::stories(seed, stories);
    let tok = make_tokenizer(spec, &docs, vocab_size)?;
    let tokens = tokenize(&tok, &docs)?;
    let (train, val) = split(tokens, 0.1);
    Ok((tok, train, val))
}
