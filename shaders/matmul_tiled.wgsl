// General matrix product, variants "tiled64" and "tiled128": out (M,N) (+)= op(a) · op(b) (+ bias), f32,
// with the binding contract of matmul.wgsl (docs/KERNELS.md). Any shape; the layout is read at run time
// from flags bit 2 (a transposed) and bit 3 (b transposed), so one pipeline serves all four.
//
// The kernel made for GPUs (lavapipe prefers matmul_rows.wgsl). A workgroup of 16x16 invocations
// computes a TILE x TILE tile of out: tiled64 64x64 with 4x4 per invocation and K walked 16 at a time,
// tiled128 128x128 with 8x8 per invocation and K walked 8 at a time (kernels::variant_source writes
// TILE and KT). For each slice of K the workgroup stages TILE x KT of op(a) and KT x TILE of op(b) in
// workgroup memory, one vec4 of each per invocation:
//
// - coalesced whatever the layout: neighbouring invocations load neighbouring vec4s of the operand's
//   contiguous dimension (k for a stored (M,K) and b stored (N,K); i or j for a stored (K,M) and b
//   stored (K,N)), and the transposes are resolved on the way into workgroup memory;
// - as vec4 loads where the operand's rows allow them (row length a multiple of 4): the ".vec4" source
//   variant binds a and b as arrays of vec4 (the `//vec4 ` lines below replace the `// scalar` ones);
//   otherwise as four scalar loads of consecutive addresses.
//
// Each invocation then reads its rows of op(a) and columns of op(b) as vec4s from workgroup memory
// (neighbouring invocations, neighbouring vec4s) and keeps its 4x4 or 8x8 block of sums in registers.
// Its rows are 4·ty + 64·h + c and its columns 4·tx + 64·w + e (h, w < TILE / 64), so the stores of
// neighbouring invocations are neighbours too. Each sum runs over k in order, one product at a time.
// Grid: (ceil(N / TILE), ceil(M / TILE)).

struct Params {
    m: u32,
    k: u32,
    n: u32,
    flags: u32,
    k_begin: u32,
    k_end: u32,
}

const TILE: u32 = 64u;
const KT: u32 = 16u;
// Vec4s per row of a workgroup tile, and per invocation along each dimension.
const TV: u32 = 16u;
const V: u32 = 1u;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> out: array<f32>;
@group(0) @binding(2) var<storage, read> a: array<f32>; // scalar
@group(0) @binding(3) var<storage, read> b: array<f32>; // scalar
//vec4 @group(0) @binding(2) var<storage, read> a: array<vec4<f32>>;
//vec4 @group(0) @binding(3) var<storage, read> b: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read> bias: array<f32>;

// as4[kk][q][c] = op(a)(row0 + 4q + c, k0 + kk); bs4[kk][q][c] = op(b)(k0 + kk, col0 + 4q + c).
var<workgroup> as4: array<array<vec4<f32>, TV>, KT>;
var<workgroup> bs4: array<array<vec4<f32>, TV>, KT>;

// The four elements of a (or b) from flat index e on, those from `valid` on read as zero. In the
// vec4 variant e is a multiple of 4 and valid is 0 or 4.
fn fetch_a(e: u32, valid: u32) -> vec4<f32> {
    return vec4<f32>(select(0.0, a[e], valid > 0u), select(0.0, a[e + 1u], valid > 1u), select(0.0, a[e + 2u], valid > 2u), select(0.0, a[e + 3u], valid > 3u)); // scalar
    //vec4 return select(vec4<f32>(0.0), a[e / 4u], valid > 0u);
}

fn fetch_b(e: u32, valid: u32) -> vec4<f32> {
    return vec4<f32>(select(0.0, b[e], valid > 0u), select(0.0, b[e + 1u], valid > 1u), select(0.0, b[e + 2u], valid > 2u), select(0.0, b[e + 3u], valid > 3u)); // scalar
    //vec4 return select(vec4<f32>(0.0), b[e / 4u], valid > 0u);
}

// How many of the four indices from `at` on lie below `end`.
fn below(at: u32, end: u32) -> u32 {
    return min(end - min(at, end), 4u);
}

@compute @workgroup_size(16, 16)
fn matmul_tiled(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>,
                @builtin(local_invocation_index) li: u32) {
    let ta = (p.flags & 4u) != 0u;
    let tb = (p.flags & 8u) != 0u;
    let row0 = wid.y * TILE;
    let col0 = wid.x * TILE;
    // This invocation's vec4 of each slice: along k (4 per row of K_T) or along the tile (TV per row).
    let across_k = vec2<u32>(li / (KT / 4u), 4u * (li % (KT / 4u)));
    let across_tile = vec2<u32>(li / TV, li % TV);
    var acc: array<vec4<f32>, 4u * V * V>;
    for (var k0 = p.k_begin; k0 < p.k_end; k0 += KT) {
        if (ta) {
            // a stored (K,M): a row of the slice is TILE consecutive i at one k.
            let kk = across_tile.x;
            let i = row0 + 4u * across_tile.y;
            let valid = select(0u, below(i, p.m), k0 + kk < p.k_end);
            as4[kk][across_tile.y] = fetch_a((k0 + kk) * p.m + i, valid);
        } else {
            // a stored (M,K): a row of the slice is KT consecutive k at one i.
            let i = across_k.x;
            let kk = across_k.y;
            let valid = select(0u, below(k0 + kk, p.k_end), row0 + i < p.m);
            let v = fetch_a((row0 + i) * p.k + k0 + kk, valid);
            for (var c = 0u; c < 4u; c += 1u) {
                as4[kk + c][i / 4u][i % 4u] = v[c];
            }
        }
        if (tb) {
            // b stored (N,K): a row of the slice is KT consecutive k at one j.
            let j = across_k.x;
            let kk = across_k.y;
            let valid = select(0u, below(k0 + kk, p.k_end), col0 + j < p.n);
            let v = fetch_b((col0 + j) * p.k + k0 + kk, valid);
            for (var c = 0u; c < 4u; c += 1u) {
                bs4[kk + c][j / 4u][j % 4u] = v[c];
            }
        } else {
            // b stored (K,N): a row of the slice is TILE consecutive j at one k.
            let kk = across_tile.x;
            let j = col0 + 4u * across_tile.y;
            let valid = select(0u, below(j, p.n), k0 + kk < p.k_end);
            bs4[kk][across_tile.y] = fetch_b((k0 + kk) * p.n + j, valid);
        }
        workgroupBarrier();
        for (var kk = 0u; kk < KT; kk += 1u) {
            var av: array<vec4<f32>, V>;
            var bv: array<vec4<f32>, V>;
            for (var h = 0u; h < V; h += 1u) {
                av[h] = as4[kk][lid.y + 16u * h];
                bv[h] = bs4[kk][lid.x + 16u * h];
            }
            for (var r = 0u; r < 4u * V; r += 1u) {
                let x = av[r / 4u][r % 4u];
                for (var w = 0u; w < V; w += 1u) {
                    acc[r * V + w] += x * bv[w];
                }
            }
        }
        workgroupBarrier();
    }
    for (var r = 0u; r < 4u * V; r += 1u) {
        let row = row0 + 4u * lid.y + 64u * (r / 4u) + r % 4u;
        for (var w = 0u; w < V; w += 1u) {
            for (var e = 0u; e < 4u; e += 1u) {
                let col = col0 + 4u * lid.x + 64u * w + e;
                if (row < p.m && col < p.n) {
                    let idx = row * p.n + col;
                    var x = acc[r * V + w][e];
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
}
