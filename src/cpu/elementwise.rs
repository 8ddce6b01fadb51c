//! Elementwise kernels: zero, GELU (tanh approximation), residual add, SwiGLU, and the row copies
//! of incremental decoding.

use super::{add, Real};

/// out (n) = 0.
pub fn zero<F: Real>(out: &mut [F]) {
    out.fill(F::of(0.0));
}

/// sqrt(2/π), the constant of the tanh GELU.
const GELU_SCALE: f64 = 0.797_884_560_802_865_4;

/// out (n) = 0.5·x·(1 + tanh(sqrt(2/π)·(x + 0.044715·x³))), HF's "gelu_new".
pub fn gelu_forward<F: Real>(out: &mut [F], inp: &[F], n: usize) {
    for i in 0..n {
        let x = inp[i].get();
        out[i] = F::of(0.5 * x * (1.0 + (GELU_SCALE * (x + 0.044715 * x * x * x)).tanh()));
    }
}

/// dinp (n) += gelu'(inp) · dout.
pub fn gelu_backward<F: Real>(dinp: &mut [F], inp: &[F], dout: &[F], n: usize) {
    for i in 0..n {
        let x = inp[i].get();
        let th = (GELU_SCALE * (x + 0.044715 * x * x * x)).tanh();
        let sech2 = 1.0 - th * th;
        let grad = 0.5 * (1.0 + th) + 0.5 * x * sech2 * GELU_SCALE * (1.0 + 3.0 * 0.044715 * x * x);
        add(&mut dinp[i], grad * dout[i].get());
    }
}

/// out (n) = inp1 + inp2.
pub fn residual_forward<F: Real>(out: &mut [F], inp1: &[F], inp2: &[F], n: usize) {
    for i in 0..n {
        out[i] = F::of(inp1[i].get() + inp2[i].get());
    }
}

/// dinp1 (n) += dout; dinp2 (n) += dout.
pub fn residual_backward<F: Real>(dinp1: &mut [F], dinp2: &mut [F], dout: &[F], n: usize) {
    for i in 0..n {
        add(&mut dinp1[i], dout[i].get());
        add(&mut dinp2[i], dout[i].get());
    }
}

/// The logistic sigmoid, in a form whose exp never overflows: exp of a non-positive number only.
fn sigmoid(g: f64) -> f64 {
    if g >= 0.0 {
        1.0 / (1.0 + (-g).exp())
    } else {
        let e = g.exp();
        e / (1.0 + e)
    }
}

/// out (N,I) = silu(g) · u, where row r of inp (N,2I) is [g (I) | u (I)] and silu(g) = g·sigmoid(g).
pub fn swiglu_forward<F: Real>(out: &mut [F], inp: &[F], n: usize, i: usize) {
    for row in 0..n {
        for j in 0..i {
            let (g, u) = (inp[row * 2 * i + j].get(), inp[row * 2 * i + i + j].get());
            out[row * i + j] = F::of(g * sigmoid(g) * u);
        }
    }
}

/// dinp (N,2I) += [dout · u · silu'(g) | dout · silu(g)], with silu'(g) = s·(1 + g·(1 - s)), s = sigmoid(g).
pub fn swiglu_backward<F: Real>(dinp: &mut [F], inp: &[F], dout: &[F], n: usize, i: usize) {
    for row in 0..n {
        for j in 0..i {
            let (gi, ui) = (row * 2 * i + j, row * 2 * i + i + j);
            let (g, u, d) = (inp[gi].get(), inp[ui].get(), dout[row * i + j].get());
            let s = sigmoid(g);
            add(&mut dinp[gi], d * u * s * (1.0 + g * (1.0 - s)));
            add(&mut dinp[ui], d * g * s);
        }
    }
}

/// out (w) = inp[row] of inp (rows, w).
pub fn gather_row<F: Real>(out: &mut [F], inp: &[F], row: usize, w: usize) {
    out[..w].copy_from_slice(&inp[row * w..(row + 1) * w]);
}

/// out[row] = inp (w) in out (rows, w).
pub fn scatter_row<F: Real>(out: &mut [F], inp: &[F], row: usize, w: usize) {
    out[row * w..(row + 1) * w].copy_from_slice(&inp[..w]);
}
