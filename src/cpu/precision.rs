//! Twins of the mixed-precision kernels (shaders/half.wgsl): f32 to and from bf16 and f16, rounded
//! by the `half` crate (to nearest, ties to even; overflow to ±inf; NaN stays NaN, quieted).

use crate::backend::HalfFormat;

/// The 16 bits of `x` rounded to `format`.
pub fn to_half_bits(x: f32, format: HalfFormat) -> u16 {
    match format {
        HalfFormat::Bf16 => half::bf16::from_f32(x).to_bits(),
        HalfFormat::F16 => half::f16::from_f32(x).to_bits(),
    }
}

/// The f32 value of 16 bits of `format` (exact).
pub fn from_half_bits(bits: u16, format: HalfFormat) -> f32 {
    match format {
        HalfFormat::Bf16 => half::bf16::from_bits(bits).to_f32(),
        HalfFormat::F16 => half::f16::from_bits(bits).to_f32(),
    }
}

/// Element `i` of packed words (two per word, the even one in the low half).
fn get(words: &[u32], i: usize) -> u16 {
    (words[i / 2] >> (16 * (i % 2))) as u16
}

/// `round_half`: elements `first..first + n` of the packed `out` become `inp` rounded to `format`.
pub fn round_half(out: &mut [u32], inp: &[f32], first: usize, n: usize, format: HalfFormat) {
    for (i, &x) in inp[..n].iter().enumerate() {
        let (word, shift) = ((first + i) / 2, 16 * ((first + i) % 2));
        let bits = to_half_bits(x, format) as u32;
        out[word] = (out[word] & !(0xffff << shift)) | (bits << shift);
    }
}

/// `widen_half`: `out[i]` = element `first + i` of the packed `inp`, as f32.
pub fn widen_half(out: &mut [f32], inp: &[u32], first: usize, n: usize, format: HalfFormat) {
    for (i, o) in out[..n].iter_mut().enumerate() {
        *o = from_half_bits(get(inp, first + i), format);
    }
}

/// `quantize_half`: `out[i] = widen(round(inp[i]))`.
pub fn quantize_half(out: &mut [f32], inp: &[f32], n: usize, format: HalfFormat) {
    for (o, &x) in out[..n].iter_mut().zip(inp) {
        *o = from_half_bits(to_half_bits(x, format), format);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounding_is_to_nearest_even_with_overflow_to_infinity() {
        let q = |x: f32, f| from_half_bits(to_half_bits(x, f), f);
        // bf16 keeps 8 significant bits: 1 + 2^-8 is a tie between 1 and 1 + 2^-7 and goes to 1 (even).
        assert_eq!(q(1.0 + 2f32.powi(-8), HalfFormat::Bf16), 1.0);
        assert_eq!(q(1.0 + 3.0 * 2f32.powi(-8), HalfFormat::Bf16), 1.0 + 2.0 * 2f32.powi(-7));
        assert_eq!(q(65520.0, HalfFormat::F16), f32::INFINITY);
        assert_eq!(q(65519.0, HalfFormat::F16), 65504.0);
        assert_eq!(q(f32::MAX, HalfFormat::Bf16), f32::INFINITY);
        assert!(q(f32::NAN, HalfFormat::Bf16).is_nan() && q(f32::NAN, HalfFormat::F16).is_nan());
        // f16's smallest subnormal is 2^-24; half of it ties to zero.
        assert_eq!(q(2f32.powi(-24), HalfFormat::F16), 2f32.powi(-24));
        assert_eq!(q(2f32.powi(-25), HalfFormat::F16), 0.0);
    }

    #[test]
    fn round_leaves_the_other_half_of_a_shared_word() {
        let mut out = vec![0xaaaa_bbbb_u32; 3];
        round_half(&mut out, &[1.0, 2.0, 3.0], 1, 3, HalfFormat::Bf16);
        assert_eq!(out, vec![0x3f80_bbbb, 0x4040_4000, 0xaaaa_bbbb]);
        let mut back = vec![0.0; 3];
        widen_half(&mut back, &out, 1, 3, HalfFormat::Bf16);
        assert_eq!(back, vec![1.0, 2.0, 3.0]);
    }
}
