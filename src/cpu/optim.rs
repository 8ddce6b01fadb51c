//! Reductions and the optimizer: reduce_sum, global_norm, AdamW.

use super::{add, Real};
use crate::backend::{clip_scale, AdamwHyper};

/// out[0] += scale · Σ inp (n).
pub fn reduce_sum<F: Real>(out: &mut [F], inp: &[F], n: usize, scale: f64) {
    add(&mut out[0], scale * inp[..n].iter().map(|x| x.get()).sum::<f64>());
}

/// out[0] = sqrt(Σ inp² (n)).
pub fn global_norm<F: Real>(out: &mut [F], inp: &[F], n: usize) {
    out[0] = F::of(inp[..n].iter().map(|x| x.get() * x.get()).sum::<f64>().sqrt());
}

/// AdamW on n elements (PyTorch's algorithm: decoupled decay `p *= 1 - lr·wd`, bias-corrected moments),
/// after scaling the gradient by the clip factor of `norm`. A non-finite norm skips the update.
#[allow(clippy::too_many_arguments)]
pub fn adamw_update<F: Real>(
    params: &mut [F],
    m: &mut [F],
    v: &mut [F],
    grads: &[F],
    hyper: &AdamwHyper,
    norm: f64,
    n: usize,
    weight_decay: f64,
) {
    let h = hyper;
    // Exact: the unscale is a power of two (1 unless f16 loss scaling is on). As the kernel does, the
    // norm is unscaled in f32 before it is tested (a scale below 1 can overflow it).
    let (unscale, norm) = (h.grad_unscale as f64, (norm as f32 * h.grad_unscale) as f64);
    if !norm.is_finite() {
        return;
    }
    let (lr, b1, b2, eps) = (h.lr as f64, h.beta1 as f64, h.beta2 as f64, h.eps as f64);
    let (bc1, bc2) = (h.bias_correction1 as f64, h.bias_correction2 as f64);
    let s = clip_scale(norm as f32, h.grad_clip) as f64;
    for i in 0..n {
        let g = grads[i].get() * unscale * s;
        let mi = b1 * m[i].get() + (1.0 - b1) * g;
        let vi = b2 * v[i].get() + (1.0 - b2) * g * g;
        let p = params[i].get() * (1.0 - lr * weight_decay);
        params[i] = F::of(p - lr / bc1 * mi / (vi.sqrt() / bc2.sqrt() + eps));
        m[i] = F::of(mi);
        v[i] = F::of(vi);
    }
}
