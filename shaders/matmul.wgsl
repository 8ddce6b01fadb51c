// General matrix product: out (M,N) (+)= op(a) · op(b) (+ bias), f32.
//
// op(a) is a (M,K), or its transpose stored (K,M) when TRANS_A; op(b) is b (K,N), or its transpose
// stored (N,K) when TRANS_B. TRANS_A and TRANS_B are pipeline-overridable constants, so each layout
// is its own pipeline with no branch in the inner loop.
//
// Binding contract (shared by every matmul variant, see docs/KERNELS.md):
//   0: uniform Params { m, k, n, flags, k_begin, k_end }
//      flags bit 0: accumulate into out; bit 1: add bias. Only k in [k_begin, k_end) is summed: the host
//      splits long K into chunks, one dispatch each, accumulating, so that no invocation loops more
//      than 65,535 times in all (lavapipe silently stops loops past that).
//   1: out (M,N) read_write   2: a   3: b   4: bias (N; a 1-element dummy when unused)
//
// This variant ("blocked4x4"): each invocation computes a 4x4 block of out in registers, loading
// straight from storage (no workgroup memory: barriers are costly on some drivers); a workgroup of
// 8x8 invocations covers a 32x32 tile. Grid: (ceil(N / 32), ceil(M / 32)). Edge blocks clamp their
// loads into the matrix and skip the stores that fall outside.

struct Params {
    m: u32,
    k: u32,
    n: u32,
    flags: u32,
    k_begin: u32,
    k_end: u32,
}

override TRANS_A: bool = false;
override TRANS_B: bool = false;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> out: array<f32>;
@group(0) @binding(2) var<storage, read> a: array<f32>;
@group(0) @binding(3) var<storage, read> b: array<f32>;
@group(0) @binding(4) var<storage, read> bias: array<f32>;

fn load_a(i: u32, kk: u32) -> f32 {
    if (TRANS_A) {
        return a[kk * p.m + i];
    }
    return a[i * p.k + kk];
}

fn load_b(kk: u32, j: u32) -> f32 {
    if (TRANS_B) {
        return b[j * p.k + kk];
    }
    return b[kk * p.n + j];
}

fn store_row(row: u32, col0: u32, v: vec4<f32>) {
    if (row >= p.m) {
        return;
    }
    for (var e = 0u; e < 4u; e += 1u) {
        let col = col0 + e;
        if (col < p.n) {
            let idx = row * p.n + col;
            var x = v[e];
            if ((p.flags & 2u) != 0u) {
                x += bias[col];
            }
            if ((p.flags & 1u) != 0u) {
                x += out[idx];
            }
            out[idx] = x;
        }
    }
}

@compute @workgroup_size(8, 8)
fn matmul(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let row0 = (wid.y * 8u + lid.y) * 4u;
    let col0 = (wid.x * 8u + lid.x) * 4u;
    if (row0 >= p.m || col0 >= p.n) {
        return;
    }
    let r0 = row0;
    let r1 = min(row0 + 1u, p.m - 1u);
    let r2 = min(row0 + 2u, p.m - 1u);
    let r3 = min(row0 + 3u, p.m - 1u);
    let c0 = col0;
    let c1 = min(col0 + 1u, p.n - 1u);
    let c2 = min(col0 + 2u, p.n - 1u);
    let c3 = min(col0 + 3u, p.n - 1u);
    var acc0 = vec4<f32>(0.0);
    var acc1 = vec4<f32>(0.0);
    var acc2 = vec4<f32>(0.0);
    var acc3 = vec4<f32>(0.0);
    for (var kk = p.k_begin; kk < p.k_end; kk += 1u) {
        let bv = vec4<f32>(load_b(kk, c0), load_b(kk, c1), load_b(kk, c2), load_b(kk, c3));
        acc0 += load_a(r0, kk) * bv;
        acc1 += load_a(r1, kk) * bv;
        acc2 += load_a(r2, kk) * bv;
        acc3 += load_a(r3, kk) * bv;
    }
    store_row(row0, col0, acc0);
    store_row(row0 + 1u, col0, acc1);
    store_row(row0 + 2u, col0, acc2);
    store_row(row0 + 3u, col0, acc3);
}

// matmul_backward_bias_partial: partial (blocks, N) = sums of dout (M,N) over blocks of 256 rows.
// The second stage (colsum_final in reduce.wgsl) adds the blocks into dbias in order.
// Grid: (ceil(N / 64), ceil(M / 256)); one invocation per (column, block).
// 1: partial (read_write), 2: dout (M,N)
@group(0) @binding(1) var<storage, read_write> partial: array<f32>;
@group(0) @binding(2) var<storage, read> dout: array<f32>;

@compute @workgroup_size(64)
fn matmul_backward_bias_partial(@builtin(workgroup_id) wid: vec3<u32>,
                                @builtin(local_invocation_index) lli: u32) {
    let j = wid.x * 64u + lli;
    if (j >= p.n) {
        return;
    }
    let begin = wid.y * 256u;
    let end = min(begin + 256u, p.m);
    var s = 0.0;
    for (var i = begin; i < end; i += 1u) {
        s += dout[i * p.n + j];
    }
    partial[wid.y * p.n + j] = s;
}
