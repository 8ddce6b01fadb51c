//! Dropout with a counter-based mask (the same integer hash as shaders/dropout.wgsl).

use super::{add, Real};
use crate::backend::{dropout_scale, dropout_threshold};

/// "lowbias32" (Chris Wellons).
pub fn hash(x: u32) -> u32 {
    let mut v = x;
    v ^= v >> 16;
    v = v.wrapping_mul(0x7feb_352d);
    v ^= v >> 15;
    v = v.wrapping_mul(0x846c_a68b);
    v ^= v >> 16;
    v
}

/// The factor element i is multiplied by: 1/(1-p) when kept, 0 when dropped.
pub fn dropout_factor(seed: u32, stream: u32, i: usize, p: f32) -> f64 {
    let h = hash((i as u32).wrapping_add(hash(seed ^ hash(stream))));
    if h >= dropout_threshold(p) {
        dropout_scale(p) as f64
    } else {
        0.0
    }
}

/// out (n) = inp · mask / (1 - p).
pub fn dropout_forward<F: Real>(out: &mut [F], inp: &[F], seed: u32, n: usize, p: f32, stream: u32) {
    for i in 0..n {
        out[i] = F::of(inp[i].get() * dropout_factor(seed, stream, i, p));
    }
}

/// dinp (n) += dout · mask / (1 - p).
pub fn dropout_backward<F: Real>(dinp: &mut [F], dout: &[F], seed: u32, n: usize, p: f32, stream: u32) {
    for i in 0..n {
        add(&mut dinp[i], dout[i].get() * dropout_factor(seed, stream, i, p));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drops_the_asked_fraction_with_independent_masks() {
        let n = 200_000;
        for p in [0.1f32, 0.5, 0.9] {
            let dropped = (0..n).filter(|&i| dropout_factor(42, 3, i, p) == 0.0).count() as f64 / n as f64;
            assert!((dropped - p as f64).abs() < 0.005, "p = {p}: dropped {dropped}");
        }
        // Another stream or seed gives another mask: they agree on about p² + (1-p)² of the elements.
        let same = |s2: u32, st2: u32| {
            (0..n)
                .filter(|&i| {
                    (dropout_factor(42, 3, i, 0.5) == 0.0) == (dropout_factor(s2, st2, i, 0.5) == 0.0)
                })
                .count() as f64
                / n as f64
        };
        assert!((same(42, 4) - 0.5).abs() < 0.01 && (same(43, 3) - 0.5).abs() < 0.01);
    }
}
