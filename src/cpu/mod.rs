//! The CPU reference backend: every kernel as plain Rust loops (the "twins" of the WGSL kernels).
//!
//! Twins are deliberately boring: one obvious loop nest each, long sums accumulated in f64, no
//! cleverness. They are generic over [`Real`] so that the same code runs in f32 (the CPU backend,
//! compared with the GPU) and in f64 (checked against finite differences). This module never imports
//! wgpu.

mod attention;
mod backend;
mod crossentropy;
mod dropout;
mod elementwise;
mod encoder;
mod layernorm;
mod matmul;
mod optim;
mod precision;
mod rmsnorm;
mod rope;

pub use attention::{
    attention_backward, attention_decode, attention_forward, flash_attention_backward,
    flash_attention_forward, Mask,
};
pub use backend::CpuBackend;
pub use crossentropy::{crossentropy_backward, crossentropy_forward};
pub use dropout::{dropout_backward, dropout_factor, dropout_forward, hash as dropout_hash};
pub use elementwise::{
    gather_row, gelu_backward, gelu_forward, residual_backward, residual_forward, scatter_row,
    swiglu_backward, swiglu_forward, zero,
};
pub use encoder::{encoder_backward, encoder_forward};
pub use layernorm::{layernorm_backward, layernorm_forward, LAYERNORM_EPS};
pub use matmul::{matmul, matmul_backward, matmul_f16, matmul_forward, pack_f16, unpack_f16};
pub use optim::{adamw_update, global_norm, reduce_sum};
pub use precision::{from_half_bits, quantize_half, round_half, to_half_bits, widen_half};
pub use rmsnorm::{rmsnorm_backward, rmsnorm_forward};
pub use rope::{rope_backward, rope_forward};

/// A float the twins compute with: f32 for the backend, f64 for gradient checks.
pub trait Real: Copy + Default + PartialEq + PartialOrd + std::fmt::Debug + Send + Sync + 'static {
    fn of(x: f64) -> Self;
    fn get(self) -> f64;
}

impl Real for f32 {
    fn of(x: f64) -> Self {
        x as f32
    }
    fn get(self) -> f64 {
        self as f64
    }
}

impl Real for f64 {
    fn of(x: f64) -> Self {
        x
    }
    fn get(self) -> f64 {
        self
    }
}

/// `dst[i] += x`, in f64.
#[inline]
fn add<F: Real>(dst: &mut F, x: f64) {
    *dst = F::of(dst.get() + x);
}
