//! The llm.c token format: a header of 256 little-endian i32 (magic 20240520, version, token count),
//! then the tokens: u16 for version 1, u32 for version 2 (vocabularies above 65,535).

use std::fs::File;
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use memmap2::Mmap;

use crate::{fsutil, Error, Result};

pub const MAGIC: i32 = 20240520;
const HEADER_INTS: usize = 256;
const HEADER_BYTES: usize = HEADER_INTS * 4;

/// Bytes per token of a file for a vocabulary of `vocab_size`: u16 unless the vocabulary needs more.
pub fn width_for(vocab_size: usize) -> usize {
    if vocab_size > 65_535 {
        4
    } else {
        2
    }
}

/// The header of a file of `count` tokens of `width` bytes.
fn header_bytes(width: usize, count: usize) -> Vec<u8> {
    let mut header = [0i32; HEADER_INTS];
    (header[0], header[1], header[2]) = (MAGIC, if width == 4 { 2 } else { 1 }, count as i32);
    header.iter().flat_map(|h| h.to_le_bytes()).collect()
}

/// Appends `tokens` to `out` as little-endian integers of `width` bytes (the inverse of [`widen`]).
pub fn narrow(tokens: &[u32], width: usize, out: &mut Vec<u8>) {
    out.reserve(tokens.len() * width);
    for &t in tokens {
        out.extend_from_slice(&t.to_le_bytes()[..width]);
    }
}

/// Encodes tokens in the llm.c format; u16 unless the vocabulary needs more.
pub fn encode(tokens: &[u32], vocab_size: usize) -> Vec<u8> {
    let width = width_for(vocab_size);
    let mut bytes = header_bytes(width, tokens.len());
    narrow(tokens, width, &mut bytes);
    bytes
}

/// Writes a token file atomically.
pub fn write(path: &Path, tokens: &[u32], vocab_size: usize) -> Result<()> {
    if tokens.len() > i32::MAX as usize {
        return Err(Error::Invalid(format!(
            "{}: {} tokens do not fit one llm.c file",
            path.display(),
            tokens.len()
        )));
    }
    fsutil::write_atomic(path, &encode(tokens, vocab_size))
}

/// What a header says: bytes per token and the token count, checked against the file's length.
struct Header {
    width: usize,
    count: usize,
}

fn header(path: &Path, head: &[u8], file_len: u64) -> Result<Header> {
    let bad = |what: String| {
        Error::Invalid(format!("{}: {what}; is it a token file written by `wgslm prepare`?", path.display()))
    };
    if head.len() < HEADER_BYTES {
        return Err(bad(format!("{file_len} bytes is shorter than the {HEADER_BYTES}-byte header")));
    }
    let int = |i: usize| i32::from_le_bytes(head[i * 4..i * 4 + 4].try_into().unwrap());
    if int(0) != MAGIC {
        return Err(bad(format!("bad magic number {} (expected {MAGIC})", int(0))));
    }
    let width = match int(1) {
        1 => 2,
        2 => 4,
        v => return Err(bad(format!("unknown version {v} (expected 1 or 2)"))),
    };
    let count = int(2);
    let body = file_len - HEADER_BYTES as u64;
    if count < 0 || body != count as u64 * width as u64 {
        return Err(bad(format!(
            "the header promises {count} tokens but the body holds {body} bytes ({} expected): truncated or corrupted",
            count.max(0) as u64 * width as u64
        )));
    }
    Ok(Header { width, count: count as usize })
}

/// Decodes a token file, checking the header against the body.
pub fn decode(path: &Path, bytes: &[u8]) -> Result<Vec<u32>> {
    let h = header(path, bytes, bytes.len() as u64)?;
    let mut tokens = Vec::with_capacity(h.count);
    widen(&bytes[HEADER_BYTES..], h.width, &mut tokens);
    Ok(tokens)
}

/// Reads a token file whole (widened to u32); [`TokenFile`] maps one instead.
pub fn read(path: &Path) -> Result<Vec<u32>> {
    decode(path, &fsutil::read(path)?)
}

/// A token file mapped into memory and read as stored (u16 or u32): opening one reads only its header,
/// so a file of any size costs no memory until its pages are read.
pub struct TokenFile {
    path: PathBuf,
    map: Mmap,
    width: usize,
    len: usize,
}

impl TokenFile {
    /// Maps `path`, checking its header against its length (a truncated file is an error here).
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        let file_len = file.metadata().map_err(|e| Error::io(path, e))?.len();
        let mut head = vec![0u8; HEADER_BYTES.min(file_len as usize)];
        (&file).read_exact(&mut head).map_err(|e| Error::io(path, e))?;
        let h = header(path, &head, file_len)?;
        // SAFETY: the map is read-only; a file changed underneath a running job is outside what any
        // reader can defend against (nanoGPT and llm.c map or read the same way).
        let map = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
        if map.len() as u64 != file_len {
            return Err(Error::Invalid(format!("{}: the file changed while it was opened", path.display())));
        }
        Ok(TokenFile { path: path.to_path_buf(), map, width: h.width, len: h.count })
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Appends tokens `[at, at + n)` to `out`.
    pub fn extend_into(&self, at: usize, n: usize, out: &mut Vec<u32>) {
        widen(
            &self.map[HEADER_BYTES + at * self.width..HEADER_BYTES + (at + n) * self.width],
            self.width,
            out,
        );
    }

    /// Checks every token against the vocabulary. Reads the file in pieces rather than through the
    /// map, so the scan leaves nothing resident.
    pub fn check_ids(&self, vocab: usize) -> Result<()> {
        const PIECE: usize = 1 << 22;
        let mut file = File::open(&self.path).map_err(|e| Error::io(&self.path, e))?;
        file.seek(SeekFrom::Start(HEADER_BYTES as u64)).map_err(|e| Error::io(&self.path, e))?;
        let mut buf = vec![0u8; PIECE];
        let mut at = 0;
        while at < self.len {
            let n = (self.len - at).min(PIECE / self.width);
            file.read_exact(&mut buf[..n * self.width]).map_err(|e| Error::io(&self.path, e))?;
            let mut piece = Vec::with_capacity(n);
            widen(&buf[..n * self.width], self.width, &mut piece);
            if let Some(i) = piece.iter().position(|&t| t as usize >= vocab) {
                return Err(Error::Invalid(format!(
                    "{}: token {} at position {} is outside the vocabulary of {vocab}; was it prepared with \
                     another tokenizer, or is the file corrupted?",
                    self.path.display(),
                    piece[i],
                    at + i
                )));
            }
            at += n;
        }
        Ok(())
    }
}

/// Appends the little-endian tokens of `bytes` (`width` bytes each) to `out`.
pub fn widen(bytes: &[u8], width: usize, out: &mut Vec<u32>) {
    if width == 2 {
        out.extend(bytes.chunks_exact(2).map(|b| u16::from_le_bytes([b[0], b[1]]) as u32));
    } else {
        out.extend(bytes.chunks_exact(4).map(|b| u32::from_le_bytes(b.try_into().unwrap())));
    }
}

/// Writes a token file of unknown length piece by piece: the body streams to a temporary name, and
/// [`TokenWriter::finish`] fills in the header and hands back the file still under that name, for the
/// caller to rename into place ([`Staged::commit`]) once everything it writes is complete. Dropped
/// before then, it removes the temporary file and leaves any file at the target untouched.
pub struct TokenWriter {
    path: PathBuf,
    tmp: PathBuf,
    out: Option<BufWriter<File>>,
    width: usize,
    count: usize,
}

impl TokenWriter {
    /// A file of tokens `width` bytes each (see [`width_for`]).
    pub fn create(path: &Path, width: usize) -> Result<Self> {
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let tmp = path.with_file_name(format!(".{name}.tmp-{}", std::process::id()));
        let mut out = BufWriter::with_capacity(1 << 20, File::create(&tmp).map_err(|e| Error::io(&tmp, e))?);
        out.write_all(&[0u8; HEADER_BYTES]).map_err(|e| Error::io(&tmp, e))?;
        Ok(TokenWriter { path: path.to_path_buf(), tmp, out: Some(out), width, count: 0 })
    }

    /// Appends tokens already encoded in the file's width ([`narrow`]).
    pub fn push_bytes(&mut self, bytes: &[u8]) -> Result<()> {
        let n = bytes.len() / self.width;
        if self.count + n > i32::MAX as usize {
            return Err(Error::Invalid(format!(
                "{}: more than {} tokens do not fit one llm.c file; write shards (`--shard-tokens`)",
                self.path.display(),
                i32::MAX
            )));
        }
        let out = self.out.as_mut().expect("an unfinished writer");
        out.write_all(bytes).map_err(|e| Error::io(&self.tmp, e))?;
        self.count += n;
        Ok(())
    }

    /// Writes the header and syncs, leaving the file under its temporary name until
    /// [`Staged::commit`].
    pub fn finish(mut self) -> Result<Staged> {
        let out = self.out.take().expect("an unfinished writer");
        let staged = Staged { tmp: self.tmp.clone(), path: self.path.clone(), done: false };
        let result = (|| {
            let mut file = out.into_inner().map_err(|e| e.into_error())?;
            file.seek(SeekFrom::Start(0))?;
            file.write_all(&header_bytes(self.width, self.count))?;
            file.sync_all()
        })();
        result.map_err(|e| Error::io(&self.path, e))?;
        Ok(staged)
    }
}

/// A finished token file under its temporary name; removed if dropped before [`Staged::commit`].
pub struct Staged {
    tmp: PathBuf,
    path: PathBuf,
    done: bool,
}

impl Staged {
    /// Where [`Staged::commit`] puts it.
    pub fn target(&self) -> &Path {
        &self.path
    }

    pub fn commit(mut self) -> Result<()> {
        std::fs::rename(&self.tmp, &self.path).map_err(|e| Error::io(&self.path, e))?;
        self.done = true;
        Ok(())
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        if !self.done {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

impl Drop for TokenWriter {
    fn drop(&mut self) {
        if self.out.is_some() {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}
