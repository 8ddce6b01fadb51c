//! Causal self-attention (multi-head, or grouped-query when `nkv < nh`), with explicit scores and
//! softmax.

use super::{add, dropout_factor, Real};

/// The dropout applied to attention probabilities: the mask of `seed` and `stream` with probability p.
#[derive(Clone, Copy, Debug)]
pub struct Mask {
    pub seed: u32,
    pub p: f32,
    pub stream: u32,
}

/// Where part (0 q, 1 k, 2 v) of head h (a query head for q, a kv head for k and v) starts within a
/// qkv row of `(nh + 2·nkv)·hs` elements: the NH q heads, then the NKV k heads, then the NKV v heads.
fn part_offset(part: usize, h: usize, c: usize, nkv: usize, hs: usize) -> usize {
    match part {
        0 => h * hs,
        1 => c + h * hs,
        _ => c + nkv * hs + h * hs,
    }
}

/// qkv (B,T,W) with W = (NH + 2·NKV)·hs → out (B,T,C); query head h reads kv head h / (NH/NKV).
/// att (B,NH,T,T) gets the softmax probabilities (0 above the diagonal). With `dropout`, its tensor
/// (B,NH,T,T) gets the dropped probabilities, which weight the values.
#[allow(clippy::too_many_arguments)]
pub fn attention_forward<F: Real>(
    out: &mut [F],
    att: &mut [F],
    qkv: &[F],
    b: usize,
    t: usize,
    c: usize,
    nh: usize,
    nkv: usize,
    mut dropout: Option<(&mut [F], Mask)>,
) {
    let hs = c / nh;
    let (w, group) = ((nh + 2 * nkv) * hs, nh / nkv);
    let scale = 1.0 / (hs as f64).sqrt();
    let at = |bb: usize, tt: usize, part: usize, h: usize, i: usize| {
        qkv[(bb * t + tt) * w + part_offset(part, h, c, nkv, hs) + i].get()
    };
    let mut row = vec![0.0f64; t];
    for bb in 0..b {
        for h in 0..nh {
            let kvh = h / group;
            for t1 in 0..t {
                for (t2, r) in row.iter_mut().enumerate().take(t1 + 1) {
                    *r = (0..hs).map(|i| at(bb, t1, 0, h, i) * at(bb, t2, 1, kvh, i)).sum::<f64>() * scale;
                }
                let max = row[..=t1].iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let sum: f64 = row[..=t1].iter().map(|s| (s - max).exp()).sum();
                let arow = (((bb * nh) + h) * t + t1) * t;
                for t2 in 0..t {
                    let mut p = if t2 <= t1 { (row[t2] - max).exp() / sum } else { 0.0 };
                    att[arow + t2] = F::of(p);
                    if let Some((probs, m)) = dropout.as_mut() {
                        p *= dropout_factor(m.seed, m.stream, arow + t2, m.p);
                        probs[arow + t2] = F::of(p);
                    }
                    row[t2] = p;
                }
                for i in 0..hs {
                    let s: f64 = (0..=t1).map(|t2| row[t2] * at(bb, t2, 2, kvh, i)).sum();
                    out[(bb * t + t1) * c + h * hs + i] = F::of(s);
                }
            }
        }
    }
}

/// The query at row `pos` of qkv (T,W) attending to rows `0..=pos` (see [`attention_forward`] for
/// the layout, heads and scale) → out (C): one position of incremental decoding.
pub fn attention_decode<F: Real>(out: &mut [F], qkv: &[F], pos: usize, c: usize, nh: usize, nkv: usize) {
    let hs = c / nh;
    let (w, group) = ((nh + 2 * nkv) * hs, nh / nkv);
    let scale = 1.0 / (hs as f64).sqrt();
    let at =
        |tt: usize, part: usize, h: usize, i: usize| qkv[tt * w + part_offset(part, h, c, nkv, hs) + i].get();
    for h in 0..nh {
        let kvh = h / group;
        let scores: Vec<f64> = (0..=pos)
            .map(|t2| (0..hs).map(|i| at(pos, 0, h, i) * at(t2, 1, kvh, i)).sum::<f64>() * scale)
            .collect();
        let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let probs: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
        let sum: f64 = probs.iter().sum();
        for i in 0..hs {
            let s: f64 = probs.iter().enumerate().map(|(t2, p)| p * at(t2, 2, kvh, i)).sum();
            out[h * hs + i] = F::of(s / sum);
        }
    }
}

/// Accumulates dqkv (B,T,W) from dout (B,T,C) through the saved att (B,NH,T,T). `datt` (B,NH,T,T) is
/// scratch: it receives the gradient of the pre-softmax scores (scaled), zero above the diagonal.
/// A kv head's gradient receives its query heads' contributions in increasing head order.
/// `dropout` must be the forward pass's: its tensor holds the dropped probabilities.
#[allow(clippy::too_many_arguments)]
pub fn attention_backward<F: Real>(
    dqkv: &mut [F],
    datt: &mut [F],
    dout: &[F],
    qkv: &[F],
    att: &[F],
    b: usize,
    t: usize,
    c: usize,
    nh: usize,
    nkv: usize,
    dropout: Option<(&[F], Mask)>,
) {
    let hs = c / nh;
    let (w, group) = ((nh + 2 * nkv) * hs, nh / nkv);
    let scale = 1.0 / (hs as f64).sqrt();
    let idx = |bb: usize, tt: usize, part: usize, h: usize, i: usize| {
        (bb * t + tt) * w + part_offset(part, h, c, nkv, hs) + i
    };
    let mut dp = vec![0.0f64; t];
    for bb in 0..b {
        for h in 0..nh {
            let kvh = h / group;
            for t1 in 0..t {
                let arow = (((bb * nh) + h) * t + t1) * t;
                let dout_at = |i: usize| dout[(bb * t + t1) * c + h * hs + i].get();
                // d(weights) = dout · v; through the dropout mask; then back through the softmax.
                for (t2, d) in dp.iter_mut().enumerate().take(t1 + 1) {
                    *d = (0..hs).map(|i| dout_at(i) * qkv[idx(bb, t2, 2, kvh, i)].get()).sum();
                    if let Some((_, m)) = dropout {
                        *d *= dropout_factor(m.seed, m.stream, arow + t2, m.p);
                    }
                }
                let dot: f64 = (0..=t1).map(|t2| att[arow + t2].get() * dp[t2]).sum();
                for t2 in 0..t {
                    let pre = if t2 <= t1 { att[arow + t2].get() * (dp[t2] - dot) * scale } else { 0.0 };
                    datt[arow + t2] = F::of(pre);
                    if t2 > t1 {
                        continue;
                    }
                    // The values were weighted by the dropped probabilities.
                    let p = dropout.map_or(att[arow + t2], |(probs, _)| probs[arow + t2]).get();
                    for i in 0..hs {
                        add(&mut dqkv[idx(bb, t1, 0, h, i)], pre * qkv[idx(bb, t2, 1, kvh, i)].get());
                        add(&mut dqkv[idx(bb, t2, 1, kvh, i)], pre * qkv[idx(bb, t1, 0, h, i)].get());
                        add(&mut dqkv[idx(bb, t2, 2, kvh, i)], p * dout_at(i));
                    }
                }
            }
        }
    }
}

/// The function of [`attention_forward`] (same layout, heads, scale and dropout masks), keeping only
/// what the fused kernels keep: out (B,T,C) and lse (B,NH,T), the log-sum-exp of each row of scaled
/// scores. With `dropout`, the values are weighted by the probabilities times the mask of element
/// ((b·NH + h)·T + t1)·T + t2, as the naive path masks its (B,NH,T,T) tensor.
#[allow(clippy::too_many_arguments)]
pub fn flash_attention_forward<F: Real>(
    out: &mut [F],
    lse: &mut [F],
    qkv: &[F],
    b: usize,
    t: usize,
    c: usize,
    nh: usize,
    nkv: usize,
    dropout: Option<Mask>,
) {
    let hs = c / nh;
    let (w, group) = ((nh + 2 * nkv) * hs, nh / nkv);
    let scale = 1.0 / (hs as f64).sqrt();
    let at = |bb: usize, tt: usize, part: usize, h: usize, i: usize| {
        qkv[(bb * t + tt) * w + part_offset(part, h, c, nkv, hs) + i].get()
    };
    let mut row = vec![0.0f64; t];
    for bb in 0..b {
        for h in 0..nh {
            let kvh = h / group;
            for t1 in 0..t {
                for (t2, r) in row.iter_mut().enumerate().take(t1 + 1) {
                    *r = (0..hs).map(|i| at(bb, t1, 0, h, i) * at(bb, t2, 1, kvh, i)).sum::<f64>() * scale;
                }
                let max = row[..=t1].iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let sum: f64 = row[..=t1].iter().map(|s| (s - max).exp()).sum();
                let mrow = (((bb * nh) + h) * t + t1) * t;
                lse[(bb * nh + h) * t + t1] = F::of(max + sum.ln());
                for (t2, r) in row.iter_mut().enumerate().take(t1 + 1) {
                    *r = (*r - max).exp() / sum
                        * dropout.map_or(1.0, |m| dropout_factor(m.seed, m.stream, mrow + t2, m.p));
                }
                for i in 0..hs {
                    let s: f64 = (0..=t1).map(|t2| row[t2] * at(bb, t2, 2, kvh, i)).sum();
                    out[(bb * t + t1) * c + h * hs + i] = F::of(s);
                }
            }
        }
    }
}

/// Accumulates dqkv (B,T,W) from dout (B,T,C), recomputing the probabilities `P = exp(s·q·k - lse)`
/// from qkv and the saved lse (B,NH,T). `dsum` (B,NH,T) receives `D = rowsum(dout ∘ out)` (out is the
/// forward output), with which `dS = P ∘ (dP - D)`, `dP = (dout·v) ∘ mask`: the softmax backward
/// without the (B,NH,T,T) tensors. Each gradient element is summed in f64 and added once.
#[allow(clippy::too_many_arguments)]
pub fn flash_attention_backward<F: Real>(
    dqkv: &mut [F],
    dsum: &mut [F],
    dout: &[F],
    qkv: &[F],
    out: &[F],
    lse: &[F],
    b: usize,
    t: usize,
    c: usize,
    nh: usize,
    nkv: usize,
    dropout: Option<Mask>,
) {
    let hs = c / nh;
    let (w, group) = ((nh + 2 * nkv) * hs, nh / nkv);
    let scale = 1.0 / (hs as f64).sqrt();
    let idx = |bb: usize, tt: usize, part: usize, h: usize, i: usize| {
        (bb * t + tt) * w + part_offset(part, h, c, nkv, hs) + i
    };
    let mut grad = vec![0.0f64; b * t * w];
    for bb in 0..b {
        for h in 0..nh {
            let kvh = h / group;
            for t1 in 0..t {
                let o = (bb * t + t1) * c + h * hs;
                let row = (bb * nh + h) * t + t1;
                dsum[row] = F::of((0..hs).map(|i| dout[o + i].get() * out[o + i].get()).sum::<f64>());
                let (d, l) = (dsum[row].get(), lse[row].get());
                for t2 in 0..=t1 {
                    let s: f64 = (0..hs)
                        .map(|i| qkv[idx(bb, t1, 0, h, i)].get() * qkv[idx(bb, t2, 1, kvh, i)].get())
                        .sum::<f64>()
                        * scale;
                    let p = (s - l).exp();
                    let f = dropout.map_or(1.0, |m| dropout_factor(m.seed, m.stream, row * t + t2, m.p));
                    let dp: f64 =
                        (0..hs).map(|i| dout[o + i].get() * qkv[idx(bb, t2, 2, kvh, i)].get()).sum();
                    let ds = p * (dp * f - d) * scale;
                    for i in 0..hs {
                        grad[idx(bb, t1, 0, h, i)] += ds * qkv[idx(bb, t2, 1, kvh, i)].get();
                        grad[idx(bb, t2, 1, kvh, i)] += ds * qkv[idx(bb, t1, 0, h, i)].get();
                        grad[idx(bb, t2, 2, kvh, i)] += p * f * dout[o + i].get();
                    }
                }
            }
        }
    }
    for (dst, g) in dqkv.iter_mut().zip(grad) {
        add(dst, g);
    }
}
