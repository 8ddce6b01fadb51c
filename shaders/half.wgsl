// Mixed precision: f32 to and from 16-bit floats packed two per u32 word (the even element in the low
// half). bf16 is the top half of an f32; f16 is IEEE binary16. Both conversions are done on the bits
// with integer arithmetic, so they need no shader-f16, give the same bits on every adapter (no
// flushed subnormals, no implementation-defined overflow) and match the `half` crate the CPU twins
// use: round to nearest with ties to even, overflow to ±inf, NaN stays NaN (quieted).
//
// Binding 0 of every entry is the uniform `Params`; f32 data is bound as u32 words so that no value
// passes through a float register on its way. Grid: one invocation per item (a word for
// round_half, an element otherwise), 64 per workgroup, folded into (x, y) past 65,535 workgroups.

struct Params {
    // Elements converted.
    n: u32,
    // Index of the first element in the packed words.
    first: u32,
    // 0: bf16, 1: f16.
    format: u32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;

fn flat(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return (wid.y * nwg.x + wid.x) * 64u + lid;
}

fn bf16_from_f32(b: u32) -> u32 {
    if ((b & 0x7fffffffu) > 0x7f800000u) {
        return ((b >> 16u) | 0x40u) & 0xffffu;
    }
    // Round to nearest even: add just under half an ulp, plus the kept lowest bit.
    return ((b + 0x7fffu + ((b >> 16u) & 1u)) >> 16u) & 0xffffu;
}

fn f16_from_f32(b: u32) -> u32 {
    let sign = (b >> 16u) & 0x8000u;
    let exp = b & 0x7f800000u;
    let man = b & 0x007fffffu;
    if (exp == 0x7f800000u) {
        var nan_bit = 0u;
        if (man != 0u) {
            nan_bit = 0x200u;
        }
        return sign | 0x7c00u | nan_bit | (man >> 13u);
    }
    let half_exp = i32(exp >> 23u) - 127 + 15;
    if (half_exp >= 31) {
        return sign | 0x7c00u;
    }
    if (half_exp <= 0) {
        if (14 - half_exp > 24) {
            return sign;
        }
        let m = man | 0x00800000u;
        let shift = u32(14 - half_exp);
        var half_man = m >> shift;
        let round_bit = 1u << (shift - 1u);
        if ((m & round_bit) != 0u && (m & (3u * round_bit - 1u)) != 0u) {
            half_man += 1u;
        }
        return sign | half_man;
    }
    let h = sign | (u32(half_exp) << 10u) | (man >> 13u);
    if ((man & 0x1000u) != 0u && (man & 0x2fffu) != 0u) {
        return h + 1u;
    }
    return h;
}

fn f32_from_f16(h: u32) -> u32 {
    let sign = (h & 0x8000u) << 16u;
    let exp = h & 0x7c00u;
    let man = h & 0x3ffu;
    if ((h & 0x7fffu) == 0u) {
        return sign;
    }
    if (exp == 0x7c00u) {
        if (man == 0u) {
            return sign | 0x7f800000u;
        }
        return sign | 0x7fc00000u | (man << 13u);
    }
    if (exp == 0u) {
        // Subnormal: man · 2^-24, normalised.
        let e = countLeadingZeros(man) - 22u;
        return sign | ((112u - e) << 23u) | ((man << (14u + e)) & 0x7fffffu);
    }
    return sign | (((exp >> 10u) + 112u) << 23u) | (man << 13u);
}

fn to_half(bits: u32) -> u32 {
    if (p.format == 0u) {
        return bf16_from_f32(bits);
    }
    return f16_from_f32(bits);
}

fn from_half(h: u32) -> u32 {
    if (p.format == 0u) {
        return h << 16u;
    }
    return f32_from_f16(h);
}

// round_half: elements first..first+n of the packed `halves` = round(inp[0..n]); the other half of a
// word shared with an element outside the range keeps its bits. One invocation per word.
// 1: halves (read_write, packed words), 2: inp (f32 bits)
@group(0) @binding(1) var<storage, read_write> halves: array<u32>;
@group(0) @binding(2) var<storage, read> inp: array<u32>;

@compute @workgroup_size(64)
fn round_half(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
              @builtin(local_invocation_index) lid: u32) {
    let w = p.first / 2u + flat(wid, nwg, lid);
    if (w >= (p.first + p.n + 1u) / 2u) {
        return;
    }
    // Branch-free, and the upper bound tested as `e + 1 - first < n`: the form `e + 1 < first + n`
    // (branch or select) made every dispatch on lavapipe (Mesa 22.3) grow resident memory by
    // ~170 KB; this one does not (docs/BENCHMARKS.md).
    let e = 2u * w;
    let old = halves[w];
    let lo_in = e >= p.first;
    let hi_at = e + 1u - p.first;
    let hi_in = hi_at < p.n;
    let lo = select(old & 0xffffu, to_half(inp[select(0u, e - p.first, lo_in)]), lo_in);
    let hi = select(old >> 16u, to_half(inp[select(0u, hi_at, hi_in)]), hi_in);
    halves[w] = lo | (hi << 16u);
}

// widen_half: out[i] = element first + i of the packed `packed`, as f32 (exact).
// 1: out (read_write, f32 bits), 2: packed
@group(0) @binding(1) var<storage, read_write> out: array<u32>;
@group(0) @binding(2) var<storage, read> packed: array<u32>;

@compute @workgroup_size(64)
fn widen_half(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
              @builtin(local_invocation_index) lid: u32) {
    let i = flat(wid, nwg, lid);
    if (i >= p.n) {
        return;
    }
    let e = p.first + i;
    out[i] = from_half((packed[e / 2u] >> (16u * (e % 2u))) & 0xffffu);
}

// quantize_half: out[i] = widen(round(inp[i])), kept in f32.
// 1: out (read_write, f32 bits), 2: inp (f32 bits)
@compute @workgroup_size(64)
fn quantize_half(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                 @builtin(local_invocation_index) lid: u32) {
    let i = flat(wid, nwg, lid);
    if (i >= p.n) {
        return;
    }
    out[i] = from_half(to_half(inp[i]));
}

// quantize_half_inplace: out[i] = widen(round(out[i])).
// 1: out (read_write, f32 bits)
@compute @workgroup_size(64)
fn quantize_half_inplace(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                         @builtin(local_invocation_index) lid: u32) {
    let i = flat(wid, nwg, lid);
    if (i >= p.n) {
        return;
    }
    out[i] = from_half(to_half(out[i]));
}
