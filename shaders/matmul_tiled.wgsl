// General matrix product, variant "tiled64": out (M,N) (+)= op(a) · op(b) (+ bias), f32, with the
// binding contract of matmul.wgsl (docs/KERNELS.md). Any shape, any layout (TRANS_A, TRANS_B).
//
// The classic GPU shape: a workgroup of 16x16 invocations computes a 64x64 tile of out, each
// invocation a 4x4 block in registers. K is walked 16 at a time; for each step the workgroup stages a
// 64x16 slice of op(a) and a 16x64 slice of op(b) in workgroup memory (transposes resolved while
// staging, zeros past the edges), so every global element is read once per workgroup.
// Grid: (ceil(N / 64), ceil(M / 64)).

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

const TILE: u32 = 64u;
const KT: u32 = 16u;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> out: array<f32>;
@group(0) @binding(2) var<storage, read> a: array<f32>;
@group(0) @binding(3) var<storage, read> b: array<f32>;
@group(0) @binding(4) var<storage, read> bias: array<f32>;

// as_[kk][i] = op(a)(row0 + i, k0 + kk); bs[kk][j] = op(b)(k0 + kk, col0 + j).
var<workgroup> as_: array<array<f32, 64>, 16>;
var<workgroup> bs: array<array<f32, 64>, 16>;

fn load_a(i: u32, kk: u32) -> f32 {
    if (i >= p.m || kk >= p.k_end) {
        return 0.0;
    }
    if (TRANS_A) {
        return a[kk * p.m + i];
    }
    return a[i * p.k + kk];
}

fn load_b(kk: u32, j: u32) -> f32 {
    if (j >= p.n || kk >= p.k_end) {
        return 0.0;
    }
    if (TRANS_B) {
        return b[j * p.k + kk];
    }
    return b[kk * p.n + j];
}

@compute @workgroup_size(16, 16)
fn matmul_tiled(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>,
                @builtin(local_invocation_index) li: u32) {
    let row0 = wid.y * TILE;
    let col0 = wid.x * TILE;
    var acc: array<vec4<f32>, 4>;
    for (var k0 = p.k_begin; k0 < p.k_end; k0 += KT) {
        // 256 invocations stage 1024 elements of each slice: 4 each.
        for (var e = 0u; e < 4u; e += 1u) {
            let idx = li + 256u * e;
            let kk = idx / TILE;
            let x = idx % TILE;
            as_[kk][x] = load_a(row0 + x, k0 + kk);
            bs[kk][x] = load_b(k0 + kk, col0 + x);
        }
        workgroupBarrier();
        for (var kk = 0u; kk < KT; kk += 1u) {
            let bv = vec4<f32>(bs[kk][lid.x * 4u], bs[kk][lid.x * 4u + 1u], bs[kk][lid.x * 4u + 2u], bs[kk][lid.x * 4u + 3u]);
            for (var r = 0u; r < 4u; r += 1u) {
                acc[r] += as_[kk][lid.y * 4u + r] * bv;
            }
        }
        workgroupBarrier();
    }
    for (var r = 0u; r < 4u; r += 1u) {
        let row = row0 + lid.y * 4u + r;
        for (var e = 0u; e < 4u; e += 1u) {
            let col = col0 + lid.x * 4u + e;
            if (row < p.m && col < p.n) {
                let idx = row * p.n + col;
                var x = acc[r][e];
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
}
