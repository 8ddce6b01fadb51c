//! wgslm: train small GPT-2 and Llama language models on any GPU through hand-written WGSL kernels,
//! with every kernel proven against a plain-Rust twin.
//!
//! Start at [`backend`] (the op set), [`cpu`] (the twins), [`gpu`] (wgpu) and [`verify`] (the checks
//! that hold the two together). docs/ARCHITECTURE.md has the map.

pub mod backend;
pub mod bench;
pub mod cpu;
pub mod data;
pub mod dist;
mod error;
pub mod fsutil;
pub mod gpu;
pub mod grad;
pub mod model;
pub mod report;
pub mod rng;
pub mod sample;
pub mod tensors;
pub mod train;
pub mod verify;

pub use error::{Error, Result};

/// Opens the backend `--device` names: the CPU reference for `cpu`, otherwise a GPU adapter.
pub fn open_backend(choice: &gpu::DeviceChoice) -> Result<Box<dyn backend::Backend>> {
    open_backend_with(choice, "default")
}

/// The autotuner's time budget for one model's matrix-product shapes (cached results cost nothing).
pub const TUNING_BUDGET: std::time::Duration = std::time::Duration::from_secs(5);

/// Like [`open_backend`], with a matmul policy: "auto" (the autotuner), "default" (the adapter's
/// default variant) or a variant name (pinned).
pub fn open_backend_with(choice: &gpu::DeviceChoice, matmul: &str) -> Result<Box<dyn backend::Backend>> {
    Ok(match choice {
        gpu::DeviceChoice::Cpu => Box::new(cpu::CpuBackend::new()),
        gpu => {
            let mut backend = gpu::GpuBackend::new(gpu)?;
            backend.set_matmul_policy(matmul)?;
            Box::new(backend)
        }
    })
}
