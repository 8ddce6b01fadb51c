// General matrix product, variant family "rows": out (M,N) (+)= op(a) · op(b) (+ bias), f32, with the
// binding contract of matmul.wgsl (docs/KERNELS.md). Any shape, any layout.
//
// Written for SIMD CPU targets such as lavapipe, where a load whose address depends on the invocation
// index becomes a loop over the SIMD lanes, while one that depends only on the workgroup id and loop
// counters stays a single load. Here invocations differ only in their rows: each computes R rows of a
// block of 4*C4 columns chosen by the workgroup id, so every load of b is uniform and each lane's load
// of a feeds 4*C4 multiply-adds. R and C4 are the tile knobs: the host derives the variants
// (rows16x32, rows32x64, ...) from this source by setting the two `const` lines below.
//
// The same source serves the f16-storage kernel (matmul_f16: Op::Matmul with `half`): the host puts
// `enable f16;` in front and sets `Elem` to f16, so a and b are read as halves and every product and
// sum stays f32. Each array<f16> packs two halves per 32-bit word, the even element in the low half.
//
// The layout is read from `flags` (bit 2: a stored (K,M); bit 3: b stored (N,K)) as two strides per
// operand, not set by the TRANS_A / TRANS_B overrides the other variants take: one pipeline serves all
// four layouts with the same sums, so lavapipe, which compiles a pipeline for tens of seconds on its
// first dispatch (most of it LLVM building the compute shader's coroutine frame), compiles this kernel
// once instead of once per layout.
//
// Grid: (ceil(N / (4*C4)), ceil(M / (WG*R))) workgroups of WG invocations.

struct Params {
    m: u32,
    k: u32,
    n: u32,
    flags: u32,
    k_begin: u32,
    k_end: u32,
}

alias Elem = f32;

const R: u32 = 16u;
const C4: u32 = 8u;
const WG: u32 = 8u;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> out: array<f32>;
@group(0) @binding(2) var<storage, read> a: array<Elem>;
@group(0) @binding(3) var<storage, read> b: array<Elem>;
@group(0) @binding(4) var<storage, read> bias: array<f32>;

@compute @workgroup_size(8)
fn matmul_rows(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let row0 = (wid.y * WG + lid) * R;
    let col0 = wid.x * C4 * 4u;
    let last_col = p.n - 1u;
    // Element (i, kk) of op(a) is a[i * a_row + kk * a_k]; element (kk, j) of op(b) is
    // b[kk * b_k + j * b_col].
    let trans_a = (p.flags & 4u) != 0u;
    let trans_b = (p.flags & 8u) != 0u;
    let a_row = select(p.k, 1u, trans_a);
    let a_k = select(1u, p.m, trans_a);
    let b_k = select(p.n, 1u, trans_b);
    let b_col = select(1u, p.k, trans_b);
    var acc: array<array<vec4<f32>, C4>, R>;
    var bv: array<vec4<f32>, C4>;
    for (var kk = p.k_begin; kk < p.k_end; kk += 1u) {
        let b0 = kk * b_k;
        for (var j = 0u; j < C4; j += 1u) {
            let c = col0 + 4u * j;
            // Columns past the edge read the last one; their sums are never stored.
            bv[j] = vec4<f32>(f32(b[b0 + min(c, last_col) * b_col]), f32(b[b0 + min(c + 1u, last_col) * b_col]),
                              f32(b[b0 + min(c + 2u, last_col) * b_col]),
                              f32(b[b0 + min(c + 3u, last_col) * b_col]));
        }
        let a0 = kk * a_k;
        for (var i = 0u; i < R; i += 1u) {
            let av = f32(a[a0 + min(row0 + i, p.m - 1u) * a_row]);
            for (var j = 0u; j < C4; j += 1u) {
                acc[i][j] += av * bv[j];
            }
        }
    }
    // The store walks a copy of the sums with one loop over the tile's elements: an unrolled
    // R x C4 x 4 store with its edge and flag tests is a control-flow graph that takes LLVM (lavapipe,
    // llvmpipe) tens of seconds to compile; the copy keeps `acc` itself in registers.
    var sums = acc;
    let rows = min(R, p.m - min(row0, p.m));
    let cols = min(4u * C4, p.n - min(col0, p.n));
    for (var q = 0u; q < rows * 4u * C4; q += 1u) {
        let i = q / (4u * C4);
        let cj = q % (4u * C4);
        if (cj < cols) {
            let idx = (row0 + i) * p.n + col0 + cj;
            var x = sums[i][cj / 4u][cj % 4u];
            if ((p.flags & 2u) != 0u) {
                x += bias[col0 + cj];
            }
            if ((p.flags & 1u) != 0u) {
                x += out[idx];
            }
            out[idx] = x;
        }
    }
}
