//! Tokenizers, all in the Hugging Face `tokenizer.json` format through the tokenizers crate: a trained
//! byte-level BPE, a character vocabulary, a byte vocabulary, or a loaded file.

use std::collections::BTreeSet;
use std::path::Path;

use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::models::bpe::{BpeTrainerBuilder, Vocab, BPE};
use tokenizers::models::TrainerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::{AddedToken, Tokenizer};

use crate::{fsutil, Error, Result};

/// The token that separates documents (GPT-2's).
pub const EOT: &str = "<|endoftext|>";

/// A tokenizer and its end-of-text id.
pub struct Tok {
    inner: Tokenizer,
    eot: u32,
    /// One past the largest id: the vocabulary a model needs (more than the token count when the
    /// ids have gaps, as special tokens placed after a hole do).
    size: usize,
}

fn tk_err(context: &str) -> impl Fn(tokenizers::Error) -> Error + '_ {
    move |e| Error::Invalid(format!("{context}: {e}"))
}

/// Runs code of the tokenizers crate, turning a panic inside it into an error: it can panic on
/// malformed input rather than return an error.
fn guarded<T>(context: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    std::panic::set_hook(hook);
    result.unwrap_or_else(|p| {
        let msg =
            p.downcast_ref::<String>().cloned().or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()));
        Err(Error::Invalid(format!(
            "{context}: the tokenizer failed ({})",
            msg.unwrap_or_else(|| "panic".into())
        )))
    })
}

/// The largest vocabulary `wgslm prepare` and the built-in data train a BPE to (GPT-2's is 50,257).
pub const MAX_VOCAB: usize = 1 << 20;

impl Tok {
    fn with_eot(mut inner: Tokenizer) -> Result<Self> {
        inner
            .add_special_tokens([AddedToken::from(EOT, true)])
            .map_err(tk_err("adding the end-of-text token"))?;
        let eot = inner.token_to_id(EOT).expect("the special token was just added");
        Ok(Self::new(inner, eot))
    }

    fn new(inner: Tokenizer, eot: u32) -> Self {
        let largest = inner.get_vocab(true).into_values().max().map_or(0, |id| id as usize + 1);
        let size = inner.get_vocab_size(true).max(largest);
        Tok { inner, eot, size }
    }

    /// A byte-level BPE (GPT-2 style) trained on `texts` up to `vocab_size` tokens, EOT included.
    pub fn train_bpe<I>(texts: I, vocab_size: usize) -> Result<Self>
    where
        I: Iterator<Item = String> + Send,
    {
        if vocab_size < 257 {
            return Err(Error::Invalid(format!(
                "vocab_size {vocab_size} is too small for a byte-level BPE: it needs the 256 bytes and {EOT}"
            )));
        }
        if vocab_size > MAX_VOCAB {
            return Err(Error::Invalid(format!(
                "vocab_size {vocab_size} is more than the {MAX_VOCAB} tokens a BPE trained here may have"
            )));
        }
        let mut trainer = TrainerWrapper::BpeTrainer(
            BpeTrainerBuilder::new()
                .vocab_size(vocab_size)
                .min_frequency(0)
                .show_progress(false)
                .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
                .special_tokens(vec![AddedToken::from(EOT, true)])
                .build(),
        );
        let mut tok = Tokenizer::new(BPE::default());
        tok.with_pre_tokenizer(Some(ByteLevel::default().add_prefix_space(false)));
        tok.with_decoder(Some(ByteLevelDecoder::default()));
        tok.train(&mut trainer, texts).map_err(tk_err("training the BPE tokenizer"))?;
        Self::with_eot(tok)
    }

    /// One token per character that occurs in `texts` (sorted), plus EOT.
    pub fn chars(texts: impl Iterator<Item = String>) -> Result<Self> {
        let mut set = BTreeSet::new();
        for text in texts {
            set.extend(text.chars());
        }
        let vocab: Vocab = set.iter().enumerate().map(|(i, c)| (c.to_string(), i as u32)).collect();
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, vec![])
            .build()
            .map_err(tk_err("building the character vocabulary"))?;
        let mut tok = Tokenizer::new(bpe);
        tok.with_decoder(Some(Fuse::new()));
        Self::with_eot(tok)
    }

    /// The 256 bytes (GPT-2's byte-to-character mapping, no merges), plus EOT.
    pub fn bytes() -> Result<Self> {
        let mut alphabet: Vec<char> = ByteLevel::alphabet().into_iter().collect();
        alphabet.sort();
        let vocab: Vocab = alphabet.iter().enumerate().map(|(i, c)| (c.to_string(), i as u32)).collect();
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, vec![])
            .build()
            .map_err(tk_err("building the byte vocabulary"))?;
        let mut tok = Tokenizer::new(bpe);
        tok.with_pre_tokenizer(Some(ByteLevel::default().add_prefix_space(false)));
        tok.with_decoder(Some(ByteLevelDecoder::default()));
        Self::with_eot(tok)
    }

    /// A tokenizer.json, or a GPT-2 `vocab.json` (with `merges.txt` beside it), or a directory holding
    /// either.
    pub fn load(path: &Path) -> Result<Self> {
        let context = format!("{}", path.display());
        let (json, vocab) = if path.is_dir() {
            (path.join("tokenizer.json"), path.join("vocab.json"))
        } else if path.file_name().is_some_and(|n| n == "vocab.json") {
            (path.with_file_name("-"), path.to_path_buf())
        } else {
            (path.to_path_buf(), path.with_file_name("-"))
        };
        if json.is_file() {
            let bytes = fsutil::read(&json)?;
            let tok = guarded(&context, || {
                std::str::from_utf8(&bytes)
                    .map_err(|_| Error::Invalid(format!("{}: not UTF-8 text", json.display())))?
                    .parse::<Tokenizer>()
                    .map_err(|e| {
                        Error::Invalid(format!("{}: not a valid tokenizer.json ({e})", json.display()))
                    })
            })?;
            return Self::from_loaded(tok, &context);
        }
        if vocab.is_file() {
            let merges = vocab.with_file_name("merges.txt");
            if !merges.is_file() {
                return Err(Error::Invalid(format!(
                    "{}: merges.txt is missing beside vocab.json",
                    merges.display()
                )));
            }
            let tok = guarded(&context, || {
                let bpe = BPE::from_file(&vocab.to_string_lossy(), &merges.to_string_lossy())
                    .build()
                    .map_err(tk_err(&context))?;
                let mut tok = Tokenizer::new(bpe);
                tok.with_pre_tokenizer(Some(ByteLevel::default().add_prefix_space(false)));
                tok.with_decoder(Some(ByteLevelDecoder::default()));
                Ok(tok)
            })?;
            return Self::from_loaded(tok, &context);
        }
        Err(Error::Invalid(format!(
            "{context}: no tokenizer.json, and no vocab.json + merges.txt pair; give a tokenizer.json file, a \
             GPT-2 vocab.json, or a directory holding one"
        )))
    }

    fn from_loaded(tok: Tokenizer, context: &str) -> Result<Self> {
        match tok.token_to_id(EOT) {
            Some(eot) => Ok(Self::new(tok, eot)),
            None => guarded(context, || Self::with_eot(tok)),
        }
    }

    pub fn eot(&self) -> u32 {
        self.eot
    }

    /// The vocabulary a model of this tokenizer needs: one past its largest id.
    pub fn vocab_size(&self) -> usize {
        self.size
    }

    /// Token ids of `text`. A character vocabulary cannot spell characters it has not seen; they are an
    /// error rather than silently dropped.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        if self.inner.get_pre_tokenizer().is_none() {
            let chars: BTreeSet<char> = text.chars().collect();
            let unknown: String =
                chars.into_iter().filter(|c| self.inner.token_to_id(&c.to_string()).is_none()).collect();
            if !unknown.is_empty() {
                return Err(Error::Invalid(format!(
                    "the character vocabulary has no token for {unknown:?}; use only characters of the training text"
                )));
            }
        }
        guarded("encoding text", || {
            let enc = self.inner.encode_fast(text, false).map_err(tk_err("encoding text"))?;
            Ok(enc.get_ids().to_vec())
        })
    }

    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        guarded("decoding tokens", || self.inner.decode(ids, false).map_err(tk_err("decoding tokens")))
    }

    /// The tokenizer.json text (Hugging Face format).
    pub fn to_json(&self) -> Result<String> {
        self.inner.to_string(false).map_err(tk_err("serialising the tokenizer"))
    }

    /// Writes `dir/tokenizer.json` and a `tokenizer_config.json` that lets `AutoTokenizer` load it.
    pub fn save(&self, dir: &Path) -> Result<()> {
        fsutil::write_atomic(&dir.join("tokenizer.json"), self.to_json()?.as_bytes())?;
        let config = serde_json::json!({
            "tokenizer_class": "PreTrainedTokenizerFast",
            "bos_token": EOT,
            "eos_token": EOT,
            "unk_token": null,
            "model_max_length": 1_000_000_000_000_000_000u64,
            "clean_up_tokenization_spaces": false,
        });
        fsutil::write_atomic(&dir.join("tokenizer_config.json"), config.to_string().as_bytes())
    }
}
