//! `wgslm prepare`: text files → tokenizer.json + train.bin + val.bin.

use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use indicatif::{ProgressBar, ProgressStyle};
use rayon::prelude::*;

use super::tokenfile::TokenWriter;
use super::{builtin, tokenfile, Tok};
use crate::rng::Rng;
use crate::{Error, Result};

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
    /// Tokens per shard: a split larger than this is written as several files.
    pub shard_tokens: usize,
}

/// What `prepare` wrote.
#[derive(Clone, Debug)]
pub struct Prepared {
    pub vocab_size: usize,
    pub documents: usize,
    pub train_tokens: usize,
    pub val_tokens: usize,
    /// Token files written (train and val).
    pub shards: usize,
}

/// Text is cut into pieces of about this many bytes for the parallel tokenizer: a document larger
/// than twice this is tokenized piece by piece.
const PIECE_BYTES: usize = 1 << 20;
/// Documents are shuffled within blocks of about this much text; an input smaller than this is
/// shuffled whole.
const BLOCK_BYTES: usize = 16 << 20;
/// Shard size when none is given: llm.c's 100M tokens.
pub const DEFAULT_SHARD_TOKENS: usize = 100_000_000;

/// A piece of one document's text. A document is one piece (`first` and `last`) unless it is larger
/// than [`PIECE_BYTES`].
struct Piece {
    text: String,
    first: bool,
    last: bool,
}

/// Where a cut of `text` near `target` leaves the tokenization unchanged for the pre-tokenizers wgslm
/// writes (GPT-2's byte-level split never joins across these): after a newline, else before a space,
/// with non-space on both sides, searching back to `target / 2`. Any character boundary when the text
/// has no such place.
fn cut_point(text: &str, target: usize) -> usize {
    let b = text.as_bytes();
    let solid = |i: usize| i < b.len() && !b[i].is_ascii_whitespace();
    let after_newline = |i: usize| b[i - 1] == b'\n' && solid(i) && solid(i - 2);
    let before_space = |i: usize| b[i] == b' ' && solid(i - 1) && solid(i + 1);
    let back = (target / 2).max(2)..=target.min(b.len() - 1);
    for good in [&after_newline as &dyn Fn(usize) -> bool, &before_space] {
        if let Some(at) = back.clone().rev().find(|&i| good(i)) {
            return at;
        }
    }
    floor_char_boundary(text, target)
}

/// The largest character boundary of `text` at or before `at`.
fn floor_char_boundary(text: &str, at: usize) -> usize {
    (0..=at.min(text.len())).rev().find(|&i| text.is_char_boundary(i)).unwrap_or(0)
}

/// Reads the documents of the input files as pieces, a bounded amount at a time: a .txt file is one
/// document (or several, split at `split`); a .jsonl file holds one per line in its "text" field.
struct DocReader {
    paths: Vec<PathBuf>,
    split: Option<String>,
    next_file: usize,
    source: Option<Source>,
    /// Text bytes read so far (for the progress bar).
    consumed: u64,
    /// Whether any document held text.
    any_text: bool,
}

enum Source {
    Text(TextSource),
    Jsonl { path: PathBuf, file: BufReader<File>, line: usize, pending: Vec<Piece> },
}

impl DocReader {
    fn new(paths: &[PathBuf], split: Option<&str>) -> Result<Self> {
        if paths.is_empty() {
            return Err(Error::Invalid(
                "no input files; give one or more --input FILE (.txt or .jsonl)".into(),
            ));
        }
        if split == Some("") {
            return Err(Error::Invalid("--split must not be empty".into()));
        }
        Ok(DocReader {
            paths: paths.to_vec(),
            split: split.map(String::from),
            next_file: 0,
            source: None,
            consumed: 0,
            any_text: false,
        })
    }

    fn open(path: &Path) -> Result<BufReader<File>> {
        Ok(BufReader::with_capacity(1 << 20, File::open(path).map_err(|e| Error::io(path, e))?))
    }

    /// Whether the inputs hold more than one document (read only as far as it takes to know).
    fn several(paths: &[PathBuf], split: Option<&str>) -> Result<bool> {
        let jsonl = |p: &PathBuf| p.extension().is_some_and(|e| e == "jsonl");
        if paths.len() == 1 && split.is_none() && !jsonl(&paths[0]) {
            return Ok(false);
        }
        let mut reader = DocReader::new(paths, split)?;
        let mut docs = 0;
        while let Some(piece) = reader.next_piece()? {
            docs += piece.first as usize;
            if docs > 1 {
                return Ok(true);
            }
        }
        Ok(false)
    }

    fn next_piece(&mut self) -> Result<Option<Piece>> {
        loop {
            if self.source.is_none() {
                let Some(path) = self.paths.get(self.next_file).cloned() else { return Ok(None) };
                self.next_file += 1;
                let file = Self::open(&path)?;
                self.source = Some(if path.extension().is_some_and(|e| e == "jsonl") {
                    Source::Jsonl { path, file, line: 0, pending: Vec::new() }
                } else {
                    Source::Text(TextSource::new(path, file))
                });
            }
            let piece = match self.source.as_mut().expect("opened above") {
                Source::Jsonl { path, file, line, pending } => Self::jsonl_piece(path, file, line, pending)?,
                Source::Text(text) => text.next_piece(self.split.as_deref())?,
            };
            match piece {
                Some(p) => {
                    self.consumed += p.text.len() as u64;
                    self.any_text |= !p.text.is_empty();
                    return Ok(Some(p));
                }
                None => self.source = None,
            }
        }
    }

    fn jsonl_piece(
        path: &Path,
        file: &mut BufReader<File>,
        line: &mut usize,
        pending: &mut Vec<Piece>,
    ) -> Result<Option<Piece>> {
        if let Some(p) = pending.pop() {
            return Ok(Some(p));
        }
        let mut bytes = Vec::new();
        loop {
            bytes.clear();
            if file.read_until(b'\n', &mut bytes).map_err(|e| Error::io(path, e))? == 0 {
                return Ok(None);
            }
            *line += 1;
            let text = std::str::from_utf8(&bytes).map_err(|e| {
                Error::Invalid(format!(
                    "{}:{line}: not UTF-8 text (byte {})",
                    path.display(),
                    e.valid_up_to()
                ))
            })?;
            if text.trim().is_empty() {
                continue;
            }
            let value: serde_json::Value = serde_json::from_str(text)
                .map_err(|e| Error::Invalid(format!("{}:{line}: not JSON: {e}", path.display())))?;
            let doc = value.get("text").and_then(|t| t.as_str()).ok_or_else(|| {
                Error::Invalid(format!("{}:{line}: no string field \"text\"", path.display()))
            })?;
            let mut pieces = pieces_of(doc);
            pieces.reverse();
            *pending = pieces;
            return Ok(pending.pop());
        }
    }
}

/// A .txt input being read: `buf[pos..]` is text not yet handed out.
struct TextSource {
    path: PathBuf,
    file: BufReader<File>,
    buf: String,
    pos: usize,
    /// Bytes of an incomplete character at the end of the last read.
    tail: Vec<u8>,
    read: u64,
    /// Whether part of the current document has been handed out.
    started: bool,
    eof: bool,
}

impl TextSource {
    fn new(path: PathBuf, file: BufReader<File>) -> Self {
        TextSource {
            path,
            file,
            buf: String::new(),
            pos: 0,
            tail: Vec::new(),
            read: 0,
            started: false,
            eof: false,
        }
    }

    /// The next piece: the whole file is one document, or (with `split`) each stretch between
    /// separators that holds more than white space is.
    fn next_piece(&mut self, split: Option<&str>) -> Result<Option<Piece>> {
        loop {
            if let Some(sep) = split {
                while let Some(found) = self.buf[self.pos..].find(sep) {
                    let doc = self.buf[self.pos..self.pos + found].to_string();
                    self.pos += found + sep.len();
                    let first = !std::mem::replace(&mut self.started, false);
                    if first && doc.trim().is_empty() {
                        continue;
                    }
                    return Ok(Some(Piece { text: doc, first, last: true }));
                }
            }
            let rest = self.buf.len() - self.pos;
            if self.eof {
                if rest == 0 && (self.started || split.is_some()) {
                    return Ok(None);
                }
                let first = !std::mem::replace(&mut self.started, true);
                let text = self.buf[self.pos..].to_string();
                self.pos = self.buf.len();
                if split.is_some() && first && text.trim().is_empty() {
                    return Ok(None);
                }
                return Ok(Some(Piece { text, first, last: true }));
            }
            // A document too large for one piece: hand out its head, keeping enough to find a
            // separator that straddles the cut.
            let keep = split.map_or(0, str::len);
            if rest >= 2 * PIECE_BYTES + keep {
                // The cut is never past PIECE_BYTES, so the kept tail is never reached; the window
                // must end on a character boundary (the buffer holds whole characters, `keep` counts
                // bytes).
                let end = floor_char_boundary(&self.buf, self.pos + 2 * PIECE_BYTES);
                let at = cut_point(&self.buf[self.pos..end], PIECE_BYTES);
                let text = self.buf[self.pos..self.pos + at].to_string();
                self.pos += at;
                let first = !std::mem::replace(&mut self.started, true);
                return Ok(Some(Piece { text, first, last: false }));
            }
            self.fill()?;
        }
    }

    /// Reads the next block of the file onto the end of the buffer.
    fn fill(&mut self) -> Result<()> {
        self.buf.drain(..self.pos);
        self.pos = 0;
        let not_utf8 =
            |at: u64| Error::Invalid(format!("{}: not UTF-8 text (byte {at})", self.path.display()));
        let mut chunk = std::mem::take(&mut self.tail);
        let before = chunk.len();
        chunk.resize(before + PIECE_BYTES, 0);
        let n = self.file.read(&mut chunk[before..]).map_err(|e| Error::io(&self.path, e))?;
        chunk.truncate(before + n);
        if n == 0 {
            self.eof = true;
            return if chunk.is_empty() { Ok(()) } else { Err(not_utf8(self.read - chunk.len() as u64)) };
        }
        self.read += n as u64;
        let start = self.read - chunk.len() as u64;
        let valid = match std::str::from_utf8(&chunk) {
            Ok(_) => chunk.len(),
            // An incomplete character at the end waits for the next read.
            Err(e) if e.error_len().is_none() => e.valid_up_to(),
            Err(e) => return Err(not_utf8(start + e.valid_up_to() as u64)),
        };
        self.tail = chunk.split_off(valid);
        self.buf.push_str(std::str::from_utf8(&chunk).expect("checked above"));
        Ok(())
    }
}

/// A document in memory as pieces.
fn pieces_of(doc: &str) -> Vec<Piece> {
    let mut pieces = Vec::new();
    let mut rest = doc;
    while rest.len() > 2 * PIECE_BYTES {
        let at = cut_point(rest, PIECE_BYTES);
        pieces.push(Piece { text: rest[..at].to_string(), first: pieces.is_empty(), last: false });
        rest = &rest[at..];
    }
    pieces.push(Piece { text: rest.to_string(), first: pieces.is_empty(), last: true });
    pieces
}

/// Builds the tokenizer `spec` names, training it (where it needs training) on the texts `texts`
/// yields. The texts are read once, as they come.
pub fn make_tokenizer<I>(spec: &TokenizerSpec, texts: I, vocab_size: usize) -> Result<Tok>
where
    I: Iterator<Item = String> + Send,
{
    match spec {
        TokenizerSpec::Bpe => Tok::train_bpe(texts, vocab_size),
        TokenizerSpec::Char => Tok::chars(texts),
        TokenizerSpec::Byte => Tok::bytes(),
        TokenizerSpec::Path(p) => Tok::load(p),
    }
}

/// Tokenizes the pieces in parallel on all cores, in order, each document (when `several`) starting
/// with the end-of-text token (as GPT-2 and llm.c do), handing the ids to `sink`.
fn encode_pieces(
    tok: &Tok,
    pieces: &[Piece],
    several: bool,
    sink: &mut dyn FnMut(&[u32]) -> Result<()>,
) -> Result<()> {
    // A bounded number at a time: the tokenizer's working memory is many times the text's.
    for group in pieces.chunks(4 * rayon::current_num_threads()) {
        let ids: Vec<Vec<u32>> = group.par_iter().map(|p| tok.encode(&p.text)).collect::<Result<_>>()?;
        for (piece, ids) in group.iter().zip(ids) {
            if several && piece.first {
                sink(&[tok.eot()])?;
            }
            sink(&ids)?;
        }
    }
    Ok(())
}

/// Tokenizes documents held in memory into one stream (see [`encode_pieces`]).
pub fn tokenize(tok: &Tok, docs: &[String]) -> Result<Vec<u32>> {
    let pieces: Vec<Piece> = docs.iter().flat_map(|d| pieces_of(d)).collect();
    let mut tokens = Vec::with_capacity(docs.iter().map(|d| d.len()).sum::<usize>() / 3);
    encode_pieces(tok, &pieces, docs.len() > 1, &mut |ids| {
        tokens.extend_from_slice(ids);
        Ok(())
    })?;
    Ok(tokens)
}

/// Splits a stream: the last `val_fraction` of the tokens is validation.
pub fn split(tokens: Vec<u32>, val_fraction: f64) -> (Vec<u32>, Vec<u32>) {
    let at = split_at(tokens.len(), val_fraction);
    let mut train = tokens;
    let val = train.split_off(at);
    (train, val)
}

/// Where the validation tokens start in a stream of `n`: floor, as nanoGPT cuts (`data[:int(n*0.9)]`).
fn split_at(n: usize, val_fraction: f64) -> usize {
    (((n as f64) * (1.0 - val_fraction)).floor() as usize).min(n)
}

fn shuffle<T>(docs: &mut [T], rng: &mut Rng) {
    for i in (1..docs.len()).rev() {
        docs.swap(i, rng.below(i as u64 + 1) as usize);
    }
}

/// `wgslm prepare`. Streams: the inputs are read twice (once to train the tokenizer, where it needs
/// training, once to tokenize) a bounded amount at a time, the tokens go to a scratch file, and that
/// is cut into the splits' shards, so memory stays bounded whatever the input's size. Documents are
/// shuffled (when there are several) within blocks of [`BLOCK_BYTES`] of text: an input smaller than
/// that is shuffled whole.
pub fn prepare(opts: &PrepareOptions) -> Result<Prepared> {
    // A refused prepare removes the output directory it made (remove_dir: only while it is empty).
    let existed = opts.out.exists();
    let result = prepare_into(opts);
    if result.is_err() && !existed {
        let _ = std::fs::remove_dir(&opts.out);
    }
    result
}

fn prepare_into(opts: &PrepareOptions) -> Result<Prepared> {
    if !(0.0..1.0).contains(&opts.val_fraction) {
        return Err(Error::Invalid(format!("--val-fraction {} must be in [0, 1)", opts.val_fraction)));
    }
    if opts.shard_tokens == 0 || opts.shard_tokens > i32::MAX as usize {
        return Err(Error::Invalid(format!(
            "--shard-tokens {} must be in 1..={} (an llm.c token file counts its tokens in an i32)",
            opts.shard_tokens,
            i32::MAX
        )));
    }
    let foreign = foreign_token_files(&opts.out)?;
    if let Some(f) = foreign.first() {
        return Err(Error::Invalid(format!(
            "{}: holds token files `prepare` did not write ({} of them, e.g. {}); prepare into another --out",
            opts.out.display(),
            foreign.len(),
            f.display()
        )));
    }
    // Training a tokenizer reads the inputs once more than tokenizing does: a pipe would be empty
    // the second time.
    if matches!(opts.tokenizer, TokenizerSpec::Bpe | TokenizerSpec::Char) {
        if let Some(p) = opts.inputs.iter().find(|p| std::fs::metadata(p).is_ok_and(|m| !m.is_file())) {
            return Err(Error::Invalid(format!(
                "{}: not a regular file, and --tokenizer bpe or char reads its inputs twice; save it to a file \
                 first, or give --tokenizer byte or a tokenizer.json",
                p.display()
            )));
        }
    }
    let split = opts.split.as_deref();
    let several = DocReader::several(&opts.inputs, split)?;
    let total_bytes: u64 = opts
        .inputs
        .iter()
        .map(|p| std::fs::metadata(p).map(|m| m.len()).map_err(|e| Error::io(p, e)))
        .sum::<Result<u64>>()?;
    let bar = |what: &str| {
        let bar = if total_bytes > 8 << 20 { ProgressBar::new(total_bytes) } else { ProgressBar::hidden() };
        bar.set_style(
            ProgressStyle::with_template(&format!(
                "{what} {{bar:40}} {{binary_bytes}}/{{binary_total_bytes}} ({{binary_bytes_per_sec}}, {{eta}})"
            ))
            .expect("a valid template"),
        );
        bar
    };

    let tok = {
        let mut reader = DocReader::new(&opts.inputs, split)?;
        let mut failed = None;
        let progress = bar("training the tokenizer");
        let texts = std::iter::from_fn(|| match reader.next_piece() {
            Ok(p) => {
                let p = p?;
                progress.inc(p.text.len() as u64);
                Some(p.text)
            }
            Err(e) => {
                failed = Some(e);
                None
            }
        });
        let tok = make_tokenizer(&opts.tokenizer, texts, opts.vocab_size);
        progress.finish_and_clear();
        if let Some(e) = failed {
            return Err(e);
        }
        tok?
    };

    std::fs::create_dir_all(&opts.out).map_err(|e| Error::io(&opts.out, e))?;
    let scratch = Scratch::create(&opts.out)?;
    let mut out = BufWriter::with_capacity(1 << 20, scratch.file()?);
    let width = tokenfile::width_for(tok.vocab_size());
    let mut count = 0usize;
    let mut bytes = Vec::new();
    let mut sink = |ids: &[u32]| -> Result<()> {
        bytes.clear();
        tokenfile::narrow(ids, width, &mut bytes);
        count += ids.len();
        out.write_all(&bytes).map_err(|e| Error::io(&scratch.path, e))
    };
    let progress = bar("tokenizing");
    let mut reader = DocReader::new(&opts.inputs, split)?;
    let mut rng = Rng::new(opts.seed);
    let (mut documents, mut block, mut block_bytes) = (0usize, Vec::<Piece>::new(), 0usize);
    let mut flush = |block: &mut Vec<Piece>, sink: &mut dyn FnMut(&[u32]) -> Result<()>| -> Result<()> {
        if several {
            shuffle(block, &mut rng);
        }
        encode_pieces(&tok, block, several, sink)?;
        block.clear();
        Ok(())
    };
    // The pieces of a document too large to shuffle, in order, tokenized a group at a time.
    let mut large: Vec<Piece> = Vec::new();
    let group = 4 * rayon::current_num_threads();
    while let Some(piece) = reader.next_piece()? {
        documents += piece.first as usize;
        block_bytes += piece.text.len();
        if piece.first && piece.last {
            block.push(piece);
        } else {
            // The block before a large document goes first, then the document in order.
            if piece.first {
                flush(&mut block, &mut sink)?;
            }
            let last = piece.last;
            large.push(piece);
            if last || large.len() == group {
                encode_pieces(&tok, &large, several, &mut sink)?;
                large.clear();
                progress.set_position(reader.consumed);
            }
        }
        if block_bytes >= BLOCK_BYTES {
            encode_pieces(&tok, &large, several, &mut sink)?;
            large.clear();
            flush(&mut block, &mut sink)?;
            progress.set_position(reader.consumed);
            block_bytes = 0;
        }
    }
    encode_pieces(&tok, &large, several, &mut sink)?;
    flush(&mut block, &mut sink)?;
    if !reader.any_text {
        return Err(Error::Invalid(format!("{}: the input holds no text", opts.inputs[0].display())));
    }
    out.flush().map_err(|e| Error::io(&scratch.path, e))?;
    drop(out);
    progress.finish_and_clear();

    let at = split_at(count, opts.val_fraction);
    let shards = scratch.write_splits(&opts.out, width, at, count, opts.shard_tokens)?;
    tok.save(&opts.out)?;
    Ok(Prepared { vocab_size: tok.vocab_size(), documents, train_tokens: at, val_tokens: count - at, shards })
}

/// The token stream of a `prepare` in progress: raw tokens in a file beside the output, removed when
/// dropped.
struct Scratch {
    path: PathBuf,
}

impl Scratch {
    fn create(dir: &Path) -> Result<Self> {
        let path = dir.join(format!(".prepare-tokens.tmp-{}", std::process::id()));
        File::create(&path).map_err(|e| Error::io(&path, e))?;
        Ok(Scratch { path })
    }

    fn file(&self) -> Result<File> {
        std::fs::OpenOptions::new().write(true).open(&self.path).map_err(|e| Error::io(&self.path, e))
    }

    /// Cuts tokens `[0, at)` (of `width` bytes each) into the training shards and `[at, count)` into
    /// the validation ones:
    /// `train.bin` and `val.bin` when each fits one shard, `tokens_train_000000.bin`, ... otherwise.
    /// Every file is written under a temporary name first; then the token files of an earlier
    /// `prepare` that these do not replace are removed and the new ones renamed into place, so an
    /// interruption while writing leaves the directory as it was.
    fn write_splits(
        &self,
        dir: &Path,
        width: usize,
        at: usize,
        count: usize,
        shard_tokens: usize,
    ) -> Result<usize> {
        let mut input =
            BufReader::with_capacity(1 << 20, File::open(&self.path).map_err(|e| Error::io(&self.path, e))?);
        let mut staged = Vec::new();
        let mut bytes = vec![0u8; 1 << 20];
        for (split, n) in [("train", at), ("val", count - at)] {
            let shards = n.div_ceil(shard_tokens).max(1);
            for i in 0..shards {
                let path = if shards == 1 {
                    dir.join(format!("{split}.bin"))
                } else {
                    dir.join(format!("tokens_{split}_{i:06}.bin"))
                };
                let mut writer = TokenWriter::create(&path, width)?;
                let mut left = shard_tokens.min(n - i * shard_tokens);
                while left > 0 {
                    let take = left.min(bytes.len() / width);
                    input.read_exact(&mut bytes[..take * width]).map_err(|e| Error::io(&self.path, e))?;
                    writer.push_bytes(&bytes[..take * width])?;
                    left -= take;
                }
                staged.push(writer.finish()?);
            }
        }
        for path in own_token_files(dir)? {
            if !staged.iter().any(|s| s.target() == path) {
                std::fs::remove_file(&path).map_err(|e| Error::io(&path, e))?;
            }
        }
        let files = staged.len();
        for s in staged {
            s.commit()?;
        }
        Ok(files)
    }
}

/// Whether `name` is a token file `prepare` writes.
fn is_own_token_file(name: &str) -> bool {
    let shard = |split: &str| {
        name.strip_prefix(&format!("tokens_{split}_"))
            .and_then(|r| r.strip_suffix(".bin"))
            .is_some_and(|n| n.len() == 6 && n.bytes().all(|b| b.is_ascii_digit()))
    };
    name == "train.bin" || name == "val.bin" || shard("train") || shard("val")
}

/// The token files of `dir` (as the loader finds them) that `prepare` writes.
fn own_token_files(dir: &Path) -> Result<Vec<PathBuf>> {
    token_files_in(dir).map(|all| all.into_iter().filter(|p| is_own_token_file(&file_name(p))).collect())
}

/// The token files of `dir` that `prepare` did not write (llm.c's shards, say): it will not remove
/// or mix with them.
fn foreign_token_files(dir: &Path) -> Result<Vec<PathBuf>> {
    if !dir.is_dir() {
        return Ok(Vec::new());
    }
    token_files_in(dir).map(|all| all.into_iter().filter(|p| !is_own_token_file(&file_name(p))).collect())
}

fn token_files_in(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut all = Vec::new();
    for split in ["train", "val"] {
        let (single, shards) = super::loader::token_files(dir, split)?;
        all.extend(single.into_iter().chain(shards));
    }
    Ok(all)
}

fn file_name(p: &Path) -> String {
    p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
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
    let tok = make_tokenizer(spec, docs.iter().cloned(), vocab_size)?;
    let tokens = tokenize(&tok, &docs)?;
    let (train, val) = split(tokens, 0.1);
    Ok((tok, train, val))
}
