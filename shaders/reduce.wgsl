// Reductions: reduce_sum, global_norm (two stages), colsum_final (the second stage of the column
// sums of matmul_backward and layernorm_backward).
//
// Binding 0 of every entry is the uniform `Params { n, f, c, off }` (f: a scale; c: columns; off: an
// element offset into the input); bindings
// 1, 2, ... are the entry's buffers in the order listed beside it. Every reduction runs in a fixed
// order (fixed partition, fixed tree), so the same input gives the same bits.

struct Params {
    n: u32,
    f: f32,
    c: u32,
    off: u32,
}

@group(0) @binding(0) var<uniform> p: Params;

const RWG: u32 = 256u;
// Must equal gpu::kernels::NORM_PARTIALS.
const PARTIALS: u32 = 256u;

var<workgroup> red: array<f32, 256>;

fn wg_sum(x: f32, lid: u32) -> f32 {
    red[lid] = x;
    workgroupBarrier();
    for (var s = RWG / 2u; s > 0u; s = s / 2u) {
        if (lid < s) {
            red[lid] += red[lid + s];
        }
        workgroupBarrier();
    }
    let r = red[0];
    workgroupBarrier();
    return r;
}

// reduce_sum: out[0] += f * sum(inp (n)). Grid: one workgroup of 256.
// 1: out (1) (read_write), 2: inp (n)
@group(0) @binding(1) var<storage, read_write> out: array<f32>;
@group(0) @binding(2) var<storage, read> inp: array<f32>;

@compute @workgroup_size(256)
fn reduce_sum(@builtin(local_invocation_index) lid: u32) {
    var s = 0.0;
    for (var i = lid; i < p.n; i += RWG) {
        s += inp[i];
    }
    s = wg_sum(s, lid);
    if (lid == 0u) {
        out[0] += p.f * s;
    }
}

// global_norm_partial: partials[g] = sum of squares of the g-th of PARTIALS equal chunks of inp (n).
// Grid: PARTIALS workgroups of 256.
// 1: partials (PARTIALS) (read_write), 2: inp (n)
@group(0) @binding(1) var<storage, read_write> partials: array<f32>;

@compute @workgroup_size(256)
fn global_norm_partial(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let chunk = (p.n + PARTIALS - 1u) / PARTIALS;
    let start = wid.x * chunk;
    let end = min(start + chunk, p.n);
    var s = 0.0;
    for (var i = start + lid; i < end; i += RWG) {
        let x = inp[i];
        s += x * x;
    }
    s = wg_sum(s, lid);
    if (lid == 0u) {
        partials[wid.x] = s;
    }
}

// global_norm_final: out[0] = sqrt(sum of the n partials), n a multiple of PARTIALS (one set of
// partials per chunk of the input). Grid: one workgroup of 256.
// 1: out (1) (read_write), 2: partials (n)
@compute @workgroup_size(256)
fn global_norm_final(@builtin(local_invocation_index) lid: u32) {
    var s = 0.0;
    for (var i = lid; i < p.n; i += RWG) {
        s += inp[i];
    }
    s = wg_sum(s, lid);
    if (lid == 0u) {
        out[0] = sqrt(s);
    }
}

// colsum_final: out (C) += sum over the n blocks of the (n, C) partial sums starting at element off of
// binding 2, in block order.
// Grid: ceil(C / 64) workgroups of 64, flat over (x, y).
// 1: out (C) (read_write), 2: partial (n, C)
@compute @workgroup_size(64)
fn colsum_final(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_index) lid: u32) {
    let j = (wid.y * nwg.x + wid.x) * 64u + lid;
    if (j >= p.c) {
        return;
    }
    var s = 0.0;
    for (var b = 0u; b < p.n; b += 1u) {
        s += inp[p.off + b * p.c + j];
    }
    out[j] += s;
}
