//! Matrix products: the general GEMM and the linear layer built on it.

use super::{add, Real};
use crate::backend::WeightLayout;

/// out (M,N) (+)= op(a) · op(b); a is (M,K) or, with `trans_a`, (K,M); b is (K,N) or, with
/// `trans_b`, (N,K).
#[allow(clippy::too_many_arguments)]
pub fn matmul<F: Real>(
    out: &mut [F],
    a: &[F],
    b: &[F],
    m: usize,
    k: usize,
    n: usize,
    trans_a: bool,
    trans_b: bool,
    accumulate: bool,
) {
    let a_at = |i: usize, p: usize| if trans_a { a[p * m + i] } else { a[i * k + p] }.get();
    let b_at = |p: usize, j: usize| if trans_b { b[j * k + p] } else { b[p * n + j] }.get();
    for i in 0..m {
        for j in 0..n {
            let s: f64 = (0..k).map(|p| a_at(i, p) * b_at(p, j)).sum();
            let prev = if accumulate { out[i * n + j].get() } else { 0.0 };
            out[i * n + j] = F::of(prev + s);
        }
    }
}

/// `matmul` with a and b stored as f16, two per u32 word (the even element in the low half).
#[allow(clippy::too_many_arguments)]
pub fn matmul_f16<F: Real>(
    out: &mut [F],
    a: &[u32],
    b: &[u32],
    m: usize,
    k: usize,
    n: usize,
    trans_a: bool,
    trans_b: bool,
    accumulate: bool,
) {
    let a: Vec<F> = unpack_f16(a, m * k).into_iter().map(F::of).collect();
    let b: Vec<F> = unpack_f16(b, k * n).into_iter().map(F::of).collect();
    matmul(out, &a, &b, m, k, n, trans_a, trans_b, accumulate);
}

/// The first `len` halves of `words` (two per word, the even one in the low half), as f64.
pub fn unpack_f16(words: &[u32], len: usize) -> Vec<f64> {
    (0..len).map(|i| half::f16::from_bits((words[i / 2] >> (16 * (i % 2))) as u16).to_f64()).collect()
}

/// `x` rounded to f16 (nearest, ties to even), two per u32 word; an odd length leaves the last high
/// half zero.
pub fn pack_f16(x: &[f32]) -> Vec<u32> {
    x.chunks(2)
        .map(|p| {
            let half = |v: Option<&f32>| v.map_or(0, |&v| half::f16::from_f32(v).to_bits() as u32);
            half(p.first()) | (half(p.get(1)) << 16)
        })
        .collect()
}

/// Element (k, n) of a weight stored in `layout` with K inputs and N outputs.
fn weight_index(layout: WeightLayout, kk: usize, nn: usize, k: usize, n: usize) -> usize {
    match layout {
        WeightLayout::InOut => kk * n + nn,
        WeightLayout::OutIn => nn * k + kk,
    }
}

/// out (M,N) = inp (M,K) · W + bias (N); W is (K,N) for `InOut` or (N,K) for `OutIn`.
#[allow(clippy::too_many_arguments)]
pub fn matmul_forward<F: Real>(
    out: &mut [F],
    inp: &[F],
    weight: &[F],
    bias: Option<&[F]>,
    m: usize,
    k: usize,
    n: usize,
    layout: WeightLayout,
) {
    for i in 0..m {
        for j in 0..n {
            let mut s = bias.map_or(0.0, |b| b[j].get());
            for p in 0..k {
                s += inp[i * k + p].get() * weight[weight_index(layout, p, j, k, n)].get();
            }
            out[i * n + j] = F::of(s);
        }
    }
}

/// Accumulates dinp (M,K) += dout·Wᵀ, dweight (W's layout) += inpᵀ·dout, dbias (N) += Σ_rows dout.
#[allow(clippy::too_many_arguments)]
pub fn matmul_backward<F: Real>(
    dinp: &mut [F],
    dweight: &mut [F],
    dbias: Option<&mut [F]>,
    dout: &[F],
    inp: &[F],
    weight: &[F],
    m: usize,
    k: usize,
    n: usize,
    layout: WeightLayout,
) {
    for i in 0..m {
        for p in 0..k {
            let s: f64 =
                (0..n).map(|j| dout[i * n + j].get() * weight[weight_index(layout, p, j, k, n)].get()).sum();
            add(&mut dinp[i * k + p], s);
        }
    }
    for p in 0..k {
        for j in 0..n {
            let s: f64 = (0..m).map(|i| inp[i * k + p].get() * dout[i * n + j].get()).sum();
            add(&mut dweight[weight_index(layout, p, j, k, n)], s);
        }
    }
    if let Some(dbias) = dbias {
        for j in 0..n {
            add(&mut dbias[j], (0..m).map(|i| dout[i * n + j].get()).sum());
        }
    }
}
