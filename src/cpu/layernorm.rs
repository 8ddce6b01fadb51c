//! LayerNorm over the last dimension.

use super::{add, Real};

/// The epsilon of GPT-2's LayerNorm (`layer_norm_epsilon`).
pub const LAYERNORM_EPS: f64 = 1e-5;

/// out (N,C) = (inp - mean) * rstd * weight (C) + bias (C); saves mean (N) and rstd (N).
#[allow(clippy::too_many_arguments)]
pub fn layernorm_forward<F: Real>(
    out: &mut [F],
    mean: &mut [F],
    rstd: &mut [F],
    inp: &[F],
    weight: &[F],
    bias: &[F],
    n: usize,
    c: usize,
) {
    for row in 0..n {
        let x = &inp[row * c..(row + 1) * c];
        let m = x.iter().map(|v| v.get()).sum::<f64>() / c as f64;
        let var = x.iter().map(|v| (v.get() - m).powi(2)).sum::<f64>() / c as f64;
        let s = 1.0 / (var + LAYERNORM_EPS).sqrt();
        for i in 0..c {
            out[row * c + i] = F::of((x[i].get() - m) * s * weight[i].get() + bias[i].get());
        }
        mean[row] = F::of(m);
        rstd[row] = F::of(s);
    }
}

/// Accumulates dinp (N,C), dweight (C), dbias (C) given dout (N,C) and the saved mean, rstd (N).
#[allow(clippy::too_many_arguments)]
pub fn layernorm_backward<F: Real>(
    dinp: &mut [F],
    dweight: &mut [F],
    dbias: &mut [F],
    dout: &[F],
    inp: &[F],
    weight: &[F],
    mean: &[F],
    rstd: &[F],
    n: usize,
    c: usize,
) {
    // The parameters' gradients sum over every row in f64, added once.
    let (mut dw, mut db) = (vec![0f64; c], vec![0f64; c]);
    for row in 0..n {
        let (m, s) = (mean[row].get(), rstd[row].get());
        let at = |i: usize| row * c + i;
        let norm = |i: usize| (inp[at(i)].get() - m) * s;
        let dnorm = |i: usize| weight[i].get() * dout[at(i)].get();
        let dnorm_mean = (0..c).map(dnorm).sum::<f64>() / c as f64;
        let dnorm_norm_mean = (0..c).map(|i| dnorm(i) * norm(i)).sum::<f64>() / c as f64;
        for i in 0..c {
            db[i] += dout[at(i)].get();
            dw[i] += norm(i) * dout[at(i)].get();
            add(&mut dinp[at(i)], (dnorm(i) - dnorm_mean - norm(i) * dnorm_norm_mean) * s);
        }
    }
    for (d, x) in dweight.iter_mut().zip(dw) {
        add(d, x);
    }
    for (d, x) in dbias.iter_mut().zip(db) {
        add(d, x);
    }
}
