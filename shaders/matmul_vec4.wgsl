// General matrix product, variant "vec4": out (M,N) (+)= op(a) · op(b) (+ bias), f32, with the binding
// contract of matmul.wgsl (docs/KERNELS.md), in two entry points by the layout of b.
//
// Each invocation computes a 4x4 block in registers; neighbouring invocations along x take
// neighbouring column blocks, so their loads of b are contiguous vec4s — wide loads on a CPU SIMD
// target such as lavapipe, coalesced loads on a GPU.
//
// matmul_vec4_rows: b stored (K,N) (NN, and TN with TRANS_A). Per k, one vec4 of b and four scalars of
//   a, which the invocations of a SIMD group share. Needs N % 4 == 0.
// matmul_vec4_dot: a stored (M,K), b stored (N,K) (NT). Per 4 k, four vec4s of a and four of b,
//   sixteen dot products. Needs K % 4 == 0.
// The host picks an entry only where its condition holds; matmul.wgsl covers every other shape.
// Grid: (ceil(N / 32), ceil(M / 32)) workgroups of 8x8.

struct Params {
    m: u32,
    k: u32,
    n: u32,
    flags: u32,
    k_begin: u32,
    k_end: u32,
}

override TRANS_A: bool = false;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> out: array<f32>;
@group(0) @binding(2) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> a4: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> b4: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read> bias: array<f32>;

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

fn load_a(i: u32, kk: u32) -> f32 {
    if (TRANS_A) {
        return a[kk * p.m + i];
    }
    return a[i * p.k + kk];
}

@compute @workgroup_size(8, 8)
fn matmul_vec4_rows(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let row0 = (wid.y * 8u + lid.y) * 4u;
    let col0 = (wid.x * 8u + lid.x) * 4u;
    if (row0 >= p.m || col0 >= p.n) {
        return;
    }
    let r1 = min(row0 + 1u, p.m - 1u);
    let r2 = min(row0 + 2u, p.m - 1u);
    let r3 = min(row0 + 3u, p.m - 1u);
    let n4 = p.n / 4u;
    let c4 = col0 / 4u;
    var acc0 = vec4<f32>(0.0);
    var acc1 = vec4<f32>(0.0);
    var acc2 = vec4<f32>(0.0);
    var acc3 = vec4<f32>(0.0);
    for (var kk = p.k_begin; kk < p.k_end; kk += 1u) {
        let bv = b4[kk * n4 + c4];
        acc0 += load_a(row0, kk) * bv;
        acc1 += load_a(r1, kk) * bv;
        acc2 += load_a(r2, kk) * bv;
        acc3 += load_a(r3, kk) * bv;
    }
    store_row(row0, col0, acc0);
    store_row(row0 + 1u, col0, acc1);
    store_row(row0 + 2u, col0, acc2);
    store_row(row0 + 3u, col0, acc3);
}

@compute @workgroup_size(8, 8)
fn matmul_vec4_dot(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let row0 = (wid.y * 8u + lid.y) * 4u;
    let col0 = (wid.x * 8u + lid.x) * 4u;
    if (row0 >= p.m || col0 >= p.n) {
        return;
    }
    let k4 = p.k / 4u;
    // Rows and columns past the edge read the last valid one; their results are not stored.
    let a0 = row0 * k4;
    let a1 = min(row0 + 1u, p.m - 1u) * k4;
    let a2 = min(row0 + 2u, p.m - 1u) * k4;
    let a3 = min(row0 + 3u, p.m - 1u) * k4;
    let b0 = col0 * k4;
    let b1 = min(col0 + 1u, p.n - 1u) * k4;
    let b2 = min(col0 + 2u, p.n - 1u) * k4;
    let b3 = min(col0 + 3u, p.n - 1u) * k4;
    var acc0 = vec4<f32>(0.0);
    var acc1 = vec4<f32>(0.0);
    var acc2 = vec4<f32>(0.0);
    var acc3 = vec4<f32>(0.0);
    for (var q = p.k_begin / 4u; q < p.k_end / 4u; q += 1u) {
        let x0 = b4[b0 + q];
        let x1 = b4[b1 + q];
        let x2 = b4[b2 + q];
        let x3 = b4[b3 + q];
        let y0 = a4[a0 + q];
        let y1 = a4[a1 + q];
        let y2 = a4[a2 + q];
        let y3 = a4[a3 + q];
        acc0 += vec4<f32>(dot(y0, x0), dot(y0, x1), dot(y0, x2), dot(y0, x3));
        acc1 += vec4<f32>(dot(y1, x0), dot(y1, x1), dot(y1, x2), dot(y1, x3));
        acc2 += vec4<f32>(dot(y2, x0), dot(y2, x1), dot(y2, x2), dot(y2, x3));
        acc3 += vec4<f32>(dot(y3, x0), dot(y3, x1), dot(y3, x2), dot(y3, x3));
    }
    store_row(row0, col0, acc0);
    store_row(row0 + 1u, col0, acc1);
    store_row(row0 + 2u, col0, acc2);
    store_row(row0 + 3u, col0, acc3);
}
