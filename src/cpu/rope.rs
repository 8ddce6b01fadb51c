//! Rotary position embedding, Hugging Face's "rotate half" convention.

use super::{add, Real};

/// The (cos, sin) of pair i (< hd/2) at position p, from the table of `backend::rope_table`.
fn angle<F: Real>(table: &[F], p: usize, hd: usize, i: usize) -> (f64, f64) {
    (table[p * hd + i].get(), table[p * hd + hd / 2 + i].get())
}

/// out (N,width): in each of the first `heads` chunks of `hd` elements of row r, element i < hd/2 and
/// element i + hd/2 are rotated by the angle of position positions[r]; the rest of the row is copied.
#[allow(clippy::too_many_arguments)]
pub fn rope_forward<F: Real>(
    out: &mut [F],
    inp: &[F],
    positions: &[u32],
    table: &[F],
    n: usize,
    width: usize,
    heads: usize,
    hd: usize,
) {
    let half = hd / 2;
    for row in 0..n {
        let (x, o) = (&inp[row * width..(row + 1) * width], &mut out[row * width..(row + 1) * width]);
        let p = positions[row] as usize;
        for j in 0..heads {
            for i in 0..half {
                let (cos, sin) = angle(table, p, hd, i);
                let (a, b) = (x[j * hd + i].get(), x[j * hd + half + i].get());
                o[j * hd + i] = F::of(a * cos - b * sin);
                o[j * hd + half + i] = F::of(b * cos + a * sin);
            }
        }
        o[heads * hd..].copy_from_slice(&x[heads * hd..]);
    }
}

/// dinp (N,width) += the rotation by minus the angle of dout on the rotated chunks, dout elsewhere:
/// `dinp[i] += dout[i]·cos + dout[i+hd/2]·sin`, `dinp[i+hd/2] += dout[i+hd/2]·cos - dout[i]·sin`.
#[allow(clippy::too_many_arguments)]
pub fn rope_backward<F: Real>(
    dinp: &mut [F],
    dout: &[F],
    positions: &[u32],
    table: &[F],
    n: usize,
    width: usize,
    heads: usize,
    hd: usize,
) {
    let half = hd / 2;
    for (row, &p) in positions.iter().enumerate().take(n) {
        let (base, p) = (row * width, p as usize);
        for j in 0..heads {
            for i in 0..half {
                let (cos, sin) = angle(table, p, hd, i);
                let (lo, hi) = (base + j * hd + i, base + j * hd + half + i);
                let (a, b) = (dout[lo].get(), dout[hi].get());
                add(&mut dinp[lo], a * cos + b * sin);
                add(&mut dinp[hi], b * cos - a * sin);
            }
        }
        for k in base + heads * hd..base + width {
            add(&mut dinp[k], dout[k].get());
        }
    }
}
