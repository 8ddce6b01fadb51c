//! Reading and writing safetensors files, with errors that name the file and the tensor.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use safetensors::{Dtype, SafeTensors};

use crate::{fsutil, Error, Result};

/// A safetensors file read into memory.
pub struct TensorFile {
    path: PathBuf,
    bytes: Vec<u8>,
}

/// One tensor to write: name, shape, data.
pub enum Tensor<'a> {
    F32(&'a [f32], Vec<usize>),
    I32(&'a [i32], Vec<usize>),
    /// Raw little-endian half-precision words (tests write f16 and bf16 files with it).
    Half(&'a [u16], Dtype, Vec<usize>),
}

impl TensorFile {
    pub fn open(path: &Path) -> Result<Self> {
        Self::from_bytes(path, fsutil::read(path)?)
    }

    /// A safetensors file already in memory; `path` names it in errors.
    pub fn from_bytes(path: &Path, bytes: Vec<u8>) -> Result<Self> {
        let file = TensorFile { path: path.to_path_buf(), bytes };
        file.parsed()?;
        Ok(file)
    }

    fn parsed(&self) -> Result<SafeTensors<'_>> {
        SafeTensors::deserialize(&self.bytes).map_err(|e| {
            Error::Invalid(format!(
                "{}: not a valid safetensors file ({e}); was it truncated or written by another tool?",
                self.path.display()
            ))
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Bytes in the file.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// Every tensor name in the file.
    pub fn names(&self) -> Vec<String> {
        self.parsed().map(|st| st.names().into_iter().map(String::from).collect()).unwrap_or_default()
    }

    pub fn contains(&self, name: &str) -> bool {
        self.parsed().is_ok_and(|st| st.tensor(name).is_ok())
    }

    /// The tensor's shape and dtype.
    pub fn info(&self, name: &str) -> Result<(Vec<usize>, Dtype)> {
        let st = self.parsed()?;
        let t = st
            .tensor(name)
            .map_err(|_| Error::Invalid(format!("{}: tensor `{name}` is missing", self.path.display())))?;
        Ok((t.shape().to_vec(), t.dtype()))
    }

    /// An f32 tensor, checked against the expected shape when one is given. F16 and BF16 tensors are
    /// widened to f32, which is exact.
    pub fn f32(&self, name: &str, shape: Option<&[usize]>) -> Result<Vec<f32>> {
        let st = self.parsed()?;
        let t = st
            .tensor(name)
            .map_err(|_| Error::Invalid(format!("{}: tensor `{name}` is missing", self.path.display())))?;
        if let Some(want) = shape {
            if t.shape() != want {
                return Err(Error::Invalid(format!(
                    "{}: tensor `{name}` has shape {:?}, expected {:?}",
                    self.path.display(),
                    t.shape(),
                    want
                )));
            }
        }
        let halves = |widen: fn(u16) -> f32| {
            t.data().chunks_exact(2).map(move |b| widen(u16::from_le_bytes([b[0], b[1]])))
        };
        Ok(match t.dtype() {
            Dtype::F32 => {
                t.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()
            }
            Dtype::F16 => halves(|h| half::f16::from_bits(h).to_f32()).collect(),
            Dtype::BF16 => halves(|h| half::bf16::from_bits(h).to_f32()).collect(),
            other => {
                return Err(Error::Invalid(format!(
                    "{}: tensor `{name}` is {other:?}, expected F32 (F16 and BF16 are converted too)",
                    self.path.display()
                )))
            }
        })
    }

    /// An integer tensor (I32 or I64) as i64, with its shape.
    pub fn ints(&self, name: &str) -> Result<(Vec<i64>, Vec<usize>)> {
        let st = self.parsed()?;
        let t = st
            .tensor(name)
            .map_err(|_| Error::Invalid(format!("{}: tensor `{name}` is missing", self.path.display())))?;
        let data = match t.dtype() {
            Dtype::I32 => t
                .data()
                .chunks_exact(4)
                .map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as i64)
                .collect(),
            Dtype::I64 => {
                t.data().chunks_exact(8).map(|b| i64::from_le_bytes(b.try_into().unwrap())).collect()
            }
            other => {
                return Err(Error::Invalid(format!(
                    "{}: tensor `{name}` is {other:?}, expected I32 or I64 token ids",
                    self.path.display()
                )))
            }
        };
        Ok((data, t.shape().to_vec()))
    }
}

/// Serialises tensors (with optional string metadata) into safetensors bytes.
pub fn serialize(
    tensors: Vec<(String, Tensor<'_>)>,
    metadata: Option<HashMap<String, String>>,
) -> Result<Vec<u8>> {
    let owned: Vec<(String, Dtype, Vec<usize>, &[u8])> = tensors
        .iter()
        .map(|(name, t)| match t {
            Tensor::F32(d, s) => (name.clone(), Dtype::F32, s.clone(), bytemuck::cast_slice::<f32, u8>(d)),
            Tensor::I32(d, s) => (name.clone(), Dtype::I32, s.clone(), bytemuck::cast_slice::<i32, u8>(d)),
            Tensor::Half(d, dtype, s) => {
                (name.clone(), *dtype, s.clone(), bytemuck::cast_slice::<u16, u8>(d))
            }
        })
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = owned
        .iter()
        .map(|(name, dtype, shape, data)| {
            let view = safetensors::tensor::TensorView::new(*dtype, shape.clone(), data)
                .map_err(|e| Error::Invalid(format!("tensor `{name}`: {e}")))?;
            Ok((name.clone(), view))
        })
        .collect::<Result<_>>()?;
    safetensors::serialize(views, metadata).map_err(|e| Error::Invalid(format!("serialising tensors: {e}")))
}

/// Writes tensors to `path` atomically.
pub fn write(
    path: &Path,
    tensors: Vec<(String, Tensor<'_>)>,
    metadata: Option<HashMap<String, String>>,
) -> Result<()> {
    fsutil::write_atomic(path, &serialize(tensors, metadata)?)
}
