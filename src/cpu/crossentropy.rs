//! Fused softmax + cross-entropy.

use super::{add, Real};

/// Per row of logits (N,V): lse (N) = log Σ exp(logits), losses (N) = lse - logits[targets]. targets (N).
pub fn crossentropy_forward<F: Real>(
    losses: &mut [F],
    lse: &mut [F],
    logits: &[F],
    targets: &[u32],
    n: usize,
    v: usize,
) {
    for row in 0..n {
        let l = &logits[row * v..(row + 1) * v];
        let max = l.iter().map(|x| x.get()).fold(f64::NEG_INFINITY, f64::max);
        let s = max + l.iter().map(|x| (x.get() - max).exp()).sum::<f64>().ln();
        lse[row] = F::of(s);
        losses[row] = F::of(s - l[targets[row] as usize].get());
    }
}

/// dlogits (N,V) += scale · (softmax(logits) - onehot(targets)), using the saved lse (N).
#[allow(clippy::too_many_arguments)]
pub fn crossentropy_backward<F: Real>(
    dlogits: &mut [F],
    logits: &[F],
    lse: &[F],
    targets: &[u32],
    n: usize,
    v: usize,
    scale: f64,
) {
    for row in 0..n {
        for j in 0..v {
            let p = (logits[row * v + j].get() - lse[row].get()).exp();
            let y = if j == targets[row] as usize { 1.0 } else { 0.0 };
            add(&mut dlogits[row * v + j], scale * (p - y));
        }
    }
}
