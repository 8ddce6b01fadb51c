//! The llm.c token format: a header of 256 little-endian i32 (magic 20240520, version, token count),
//! then the tokens: u16 for version 1, u32 for version 2 (vocabularies above 65,535).

use std::path::Path;

use crate::{fsutil, Error, Result};

pub const MAGIC: i32 = 20240520;
const HEADER_INTS: usize = 256;
const HEADER_BYTES: usize = HEADER_INTS * 4;

/// Encodes tokens in the llm.c format; u16 unless the vocabulary needs more.
pub fn encode(tokens: &[u32], vocab_size: usize) -> Vec<u8> {
    let version = if vocab_size > 65_535 { 2 } else { 1 };
    let width = if version == 2 { 4 } else { 2 };
    let mut bytes = Vec::with_capacity(HEADER_BYTES + tokens.len() * width);
    let mut header = [0i32; HEADER_INTS];
    header[0] = MAGIC;
    header[1] = version;
    header[2] = tokens.len() as i32;
    for h in header {
        bytes.extend_from_slice(&h.to_le_bytes());
    }
    for &t in tokens {
        if version == 2 {
            bytes.extend_from_slice(&t.to_le_bytes());
        } else {
            bytes.extend_from_slice(&(t as u16).to_le_bytes());
        }
    }
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

/// Decodes a token file, checking the header against the body.
pub fn decode(path: &Path, bytes: &[u8]) -> Result<Vec<u32>> {
    let bad = |what: String| {
        Error::Invalid(format!("{}: {what}; is it a token file written by `wgslm prepare`?", path.display()))
    };
    if bytes.len() < HEADER_BYTES {
        return Err(bad(format!("{} bytes is shorter than the {HEADER_BYTES}-byte header", bytes.len())));
    }
    let int = |i: usize| i32::from_le_bytes(bytes[i * 4..i * 4 + 4].try_into().unwrap());
    if int(0) != MAGIC {
        return Err(bad(format!("bad magic number {} (expected {MAGIC})", int(0))));
    }
    let width = match int(1) {
        1 => 2,
        2 => 4,
        v => return Err(bad(format!("unknown version {v} (expected 1 or 2)"))),
    };
    let count = int(2);
    let body = &bytes[HEADER_BYTES..];
    if count < 0 || body.len() != count as usize * width {
        return Err(bad(format!(
            "the header promises {count} tokens but the body holds {} bytes ({} expected): truncated or corrupted",
            body.len(),
            count.max(0) as usize * width
        )));
    }
    Ok(if width == 2 {
        body.chunks_exact(2).map(|b| u16::from_le_bytes([b[0], b[1]]) as u32).collect()
    } else {
        body.chunks_exact(4).map(|b| u32::from_le_bytes(b.try_into().unwrap())).collect()
    })
}

/// Reads a token file.
pub fn read(path: &Path) -> Result<Vec<u32>> {
    decode(path, &fsutil::read(path)?)
}
