//! The library's error type. Every message says what went wrong, where, and what to do about it.

use std::path::PathBuf;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No adapter matches the `--device` the user asked for.
    #[error(
        "no adapter matches --device {wanted}; available: {available}. Run `wgslm devices` to list them"
    )]
    NoAdapter { wanted: String, available: String },

    /// The user's `--device` value is not one we understand.
    #[error(
        "--device {0}: expected auto, vulkan, metal, dx12, gl, cpu or an adapter index from `wgslm devices`"
    )]
    BadDevice(String),

    /// wgpu refused to create a device on the chosen adapter.
    #[error("could not open {adapter}: {message}")]
    RequestDevice { adapter: String, message: String },

    /// An allocation is larger than the adapter allows.
    #[error("{what}: {bytes} bytes, but {adapter} allows at most {limit} bytes per {kind}; use a smaller model or batch")]
    TooLarge { what: String, bytes: u64, limit: u64, kind: &'static str, adapter: String },

    /// A kernel needs more of a per-pipeline resource than the adapter has (GL and GLES adapters allow
    /// as few as 4 storage buffers per stage; WebGPU guarantees 256 invocations and 16 KiB of
    /// workgroup memory per workgroup).
    #[error("kernel {kernel} ({file}) needs {need} {what}, but {adapter} allows {have}; choose another adapter with --device (`wgslm devices` lists their limits)")]
    Unsupported { kernel: String, file: String, what: &'static str, need: u64, have: u64, adapter: String },

    /// A tensor has more elements than a kernel can index with 32 bits (Metal allows bindings past
    /// 4 GiB, where u32 indices would wrap silently).
    #[error("{op}: view #{view} has {elements} elements, more than a kernel indexes with 32 bits (4,294,967,295); use a smaller batch, block_size or model")]
    IndexRange { op: &'static str, view: usize, elements: u64 },

    /// The GPU ran out of memory.
    #[error("out of GPU memory while {0}; use a smaller model or batch")]
    OutOfMemory(String),

    /// wgpu reported a validation error: a bug in wgslm or a kernel, not in the user's input.
    #[error("GPU validation error while {context}: {message}")]
    Validation { context: String, message: String },

    /// The device was lost (driver reset, GPU removed, timeout).
    #[error("the GPU device was lost ({0}); the last checkpoint is intact: update the driver or retry, and resume with --resume")]
    DeviceLost(String),

    /// A WGSL source did not compile.
    #[error("{path}:{line}:{column}: {message}")]
    Shader { path: String, line: usize, column: usize, message: String },

    /// A user-supplied file could not be read or written. The OS error is part of the message and
    /// not also a `source` (an error chain printed with `{:#}` would repeat it).
    #[error("{}: {error}", path.display())]
    Io { path: PathBuf, error: std::io::Error },

    /// A user-supplied value is invalid.
    #[error("{0}")]
    Invalid(String),
}

impl Error {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { path: path.into(), error: source }
    }
}
