//! RMSNorm over the last dimension (Llama's norm: no mean subtracted, no bias).

use super::{add, Real};

/// out (N,C) = inp · rstd · weight (C) with rstd = 1 / sqrt(mean(inp²) + eps) per row; saves rstd (N).
#[allow(clippy::too_many_arguments)]
pub fn rmsnorm_forward<F: Real>(
    out: &mut [F],
    rstd: &mut [F],
    inp: &[F],
    weight: &[F],
    n: usize,
    c: usize,
    eps: f64,
) {
    for row in 0..n {
        let x = &inp[row * c..(row + 1) * c];
        let ms = x.iter().map(|v| v.get() * v.get()).sum::<f64>() / c as f64;
        let s = 1.0 / (ms + eps).sqrt();
        for i in 0..c {
            out[row * c + i] = F::of(x[i].get() * s * weight[i].get());
        }
        rstd[row] = F::of(s);
    }
}

/// Accumulates dinp (N,C) and dweight (C) given dout (N,C) and the saved rstd (N). With
/// norm = inp · rstd and dnorm = weight · dout, `dinp = (dnorm - norm · mean(dnorm · norm)) · rstd`:
/// LayerNorm's gradient without the mean term, because no mean was subtracted.
#[allow(clippy::too_many_arguments)]
pub fn rmsnorm_backward<F: Real>(
    dinp: &mut [F],
    dweight: &mut [F],
    dout: &[F],
    inp: &[F],
    weight: &[F],
    rstd: &[F],
    n: usize,
    c: usize,
) {
    // The weight's gradient sums over every row in f64, added once.
    let mut dw = vec![0f64; c];
    for (row, s) in rstd.iter().enumerate().take(n) {
        let s = s.get();
        let at = |i: usize| row * c + i;
        let norm = |i: usize| inp[at(i)].get() * s;
        let dnorm = |i: usize| weight[i].get() * dout[at(i)].get();
        let dnorm_norm_mean = (0..c).map(|i| dnorm(i) * norm(i)).sum::<f64>() / c as f64;
        for i in 0..c {
            dw[i] += norm(i) * dout[at(i)].get();
            add(&mut dinp[at(i)], (dnorm(i) - norm(i) * dnorm_norm_mean) * s);
        }
    }
    for (d, x) in dweight.iter_mut().zip(dw) {
        add(d, x);
    }
}
