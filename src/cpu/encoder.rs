//! Token + position embedding.

use super::{add, Real};

/// out (B,T,C) = wte[tokens[b,t]] (V,C) + wpe[t] (>=T,C); tokens (B,T). Without wpe (positions from
/// RoPE), out = wte[tokens[b,t]].
pub fn encoder_forward<F: Real>(
    out: &mut [F],
    tokens: &[u32],
    wte: &[F],
    wpe: Option<&[F]>,
    b: usize,
    t: usize,
    c: usize,
) {
    for bt in 0..b * t {
        let (tok, pos) = (tokens[bt] as usize, bt % t);
        for i in 0..c {
            out[bt * c + i] = match wpe {
                Some(wpe) => F::of(wte[tok * c + i].get() + wpe[pos * c + i].get()),
                None => wte[tok * c + i],
            };
        }
    }
}

/// dwte (V,C) += Σ over positions holding each token of dout; dwpe (>=T,C) += Σ_b dout[b,t] when
/// there is one.
pub fn encoder_backward<F: Real>(
    dwte: &mut [F],
    mut dwpe: Option<&mut [F]>,
    dout: &[F],
    tokens: &[u32],
    b: usize,
    t: usize,
    c: usize,
) {
    for bt in 0..b * t {
        let (tok, pos) = (tokens[bt] as usize, bt % t);
        for i in 0..c {
            let d = dout[bt * c + i].get();
            add(&mut dwte[tok * c + i], d);
            if let Some(dwpe) = dwpe.as_deref_mut() {
                add(&mut dwpe[pos * c + i], d);
            }
        }
    }
}
