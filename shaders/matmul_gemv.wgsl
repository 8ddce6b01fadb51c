// Matrix product for a few rows of a: out (M,N) (+)= a (M,K) · op(b) (+ bias), M <= GEMV_ROWS. The
// shape of decoding one position (M = 1), where kernels tiled for many rows leave most of each tile
// idle. Same binding contract as every matmul variant (see matmul.wgsl and docs/KERNELS.md): Params
// { m, k, n, flags, k_begin, k_end }; 1: out, 2: a, 3: b, 4: bias. a is never transposed (the host
// falls back to the blocked kernel for TRANS_A).
//
// matmul_gemv_nn, b (K,N) (weights stored [in, out]): invocation j of the grid owns column j and
// walks k, so neighbouring invocations read neighbouring elements of each row of b. Grid: ceil(N / 64).
// matmul_gemv_nt, b (N,K) (weights stored [out, in]): one workgroup per column j; its 64 invocations
// take k = lid, lid + 64, ... and the partial sums are added in a fixed tree. Grid: N (folded).
// Every sum runs in a fixed order: reruns give the same bits.

struct Params {
    m: u32,
    k: u32,
    n: u32,
    flags: u32,
    k_begin: u32,
    k_end: u32,
}

const GEMV_ROWS: u32 = 8u;
const WG: u32 = 64u;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> out: array<f32>;
@group(0) @binding(2) var<storage, read> a: array<f32>;
@group(0) @binding(3) var<storage, read> b: array<f32>;
@group(0) @binding(4) var<storage, read> bias: array<f32>;

var<workgroup> partial: array<array<f32, 64>, 8>;

fn store(row: u32, col: u32, v: f32) {
    let idx = row * p.n + col;
    var x = v;
    if ((p.flags & 2u) != 0u) {
        x += bias[col];
    }
    if ((p.flags & 1u) != 0u) {
        x += out[idx];
    }
    out[idx] = x;
}

// Rows 0..7 of a at column kk, rows past M repeating the last (their sums are never stored). No loop
// over rows: the loop limiter counts every iteration, so the K loop must be the only one.
fn a_lo(kk: u32) -> vec4<f32> {
    let last = min(p.m, GEMV_ROWS) - 1u;
    return vec4<f32>(a[kk], a[min(1u, last) * p.k + kk], a[min(2u, last) * p.k + kk], a[min(3u, last) * p.k + kk]);
}

fn a_hi(kk: u32) -> vec4<f32> {
    let last = min(p.m, GEMV_ROWS) - 1u;
    return vec4<f32>(a[min(4u, last) * p.k + kk], a[min(5u, last) * p.k + kk], a[min(6u, last) * p.k + kk],
                     a[min(7u, last) * p.k + kk]);
}

fn sum_of(lo: vec4<f32>, hi: vec4<f32>, r: u32) -> f32 {
    if (r < 4u) {
        return lo[r];
    }
    return hi[r - 4u];
}

@compute @workgroup_size(64)
fn matmul_gemv_nn(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                  @builtin(local_invocation_index) lid: u32) {
    let col = (wid.y * nwg.x + wid.x) * WG + lid;
    if (col >= p.n) {
        return;
    }
    var lo = vec4<f32>(0.0);
    var hi = vec4<f32>(0.0);
    let two_halves = p.m > 4u;
    for (var kk = p.k_begin; kk < p.k_end; kk++) {
        let bv = b[kk * p.n + col];
        lo += a_lo(kk) * bv;
        if (two_halves) {
            hi += a_hi(kk) * bv;
        }
    }
    for (var r = 0u; r < min(p.m, GEMV_ROWS); r++) {
        store(r, col, sum_of(lo, hi, r));
    }
}

@compute @workgroup_size(64)
fn matmul_gemv_nt(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                  @builtin(local_invocation_index) lid: u32) {
    let col = wid.y * nwg.x + wid.x;
    // Uniform across the workgroup: every invocation of a column leaves together, or none does.
    if (col >= p.n) {
        return;
    }
    var lo = vec4<f32>(0.0);
    var hi = vec4<f32>(0.0);
    let two_halves = p.m > 4u;
    for (var kk = p.k_begin + lid; kk < p.k_end; kk += WG) {
        let bv = b[col * p.k + kk];
        lo += a_lo(kk) * bv;
        if (two_halves) {
            hi += a_hi(kk) * bv;
        }
    }
    for (var r = 0u; r < GEMV_ROWS; r++) {
        partial[r][lid] = sum_of(lo, hi, r);
    }
    workgroupBarrier();
    for (var half = WG / 2u; half > 0u; half /= 2u) {
        if (lid < half) {
            for (var r = 0u; r < GEMV_ROWS; r++) {
                partial[r][lid] += partial[r][lid + half];
            }
        }
        workgroupBarrier();
    }
    if (lid < min(p.m, GEMV_ROWS)) {
        store(lid, col, partial[lid][0]);
    }
}
