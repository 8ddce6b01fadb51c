// RMSNorm over the last dimension (Llama's norm: no mean subtracted, no bias): forward, backward to
// the input, backward to the weight.
//
// Binding 0 of every entry is the uniform `Params { n, c, eps }` (eps an f32, from the op); bindings
// 1, 2, ... are the entry's buffers in the order listed beside it. The "tiled" row kernels run one
// workgroup of 64 per row (the flat workgroup id wid.y * nwg.x + wid.x is the row, so more than 65,535
// rows fold into y) and reduce in a fixed tree; the "rows" family at the end of the file runs a row per
// invocation and sums it in order. Either way the results are bit-reproducible.

struct Params {
    n: u32,
    c: u32,
    eps: f32,
}

@group(0) @binding(0) var<uniform> p: Params;

const WG: u32 = 64u;

var<workgroup> red: array<f32, 64>;

// The sum of `v` over the workgroup, in a fixed order; every invocation gets it.
fn wg_sum(v: f32, lid: u32) -> f32 {
    red[lid] = v;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s = s / 2u) {
        if (lid < s) {
            red[lid] += red[lid + s];
        }
        workgroupBarrier();
    }
    let r = red[0];
    workgroupBarrier();
    return r;
}

// rmsnorm_forward: out (N,C) = inp * rstd * weight with rstd = 1 / sqrt(mean(inp^2) + eps); saves
// rstd (N). Grid: N workgroups.
// 1: out (read_write), 2: rstd (read_write), 3: inp (N,C), 4: weight (C)
@group(0) @binding(1) var<storage, read_write> out: array<f32>;
@group(0) @binding(2) var<storage, read_write> rstd: array<f32>;
@group(0) @binding(3) var<storage, read> inp: array<f32>;
@group(0) @binding(4) var<storage, read> weight: array<f32>;

@compute @workgroup_size(64)
fn rmsnorm_forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                   @builtin(local_invocation_index) lid: u32) {
    let row = wid.y * nwg.x + wid.x;
    if (row >= p.n) {
        return;
    }
    let base = row * p.c;
    var s = 0.0;
    for (var i = lid; i < p.c; i += WG) {
        let x = inp[base + i];
        s += x * x;
    }
    let r = 1.0 / sqrt(wg_sum(s, lid) / f32(p.c) + p.eps);
    for (var i = lid; i < p.c; i += WG) {
        out[base + i] = inp[base + i] * r * weight[i];
    }
    if (lid == 0u) {
        rstd[row] = r;
    }
}

// rmsnorm_backward: dinp (N,C) += (dnorm - norm * mean(dnorm * norm)) * rstd, with norm = inp * rstd
// and dnorm = weight * dout. Grid: N workgroups.
// 1: dinp (read_write), 2: rstd (N), 3: inp (N,C), 4: weight (C), 5: dout (N,C)
@group(0) @binding(1) var<storage, read_write> dinp: array<f32>;
@group(0) @binding(2) var<storage, read> rstd_in: array<f32>;
@group(0) @binding(5) var<storage, read> dout: array<f32>;

@compute @workgroup_size(64)
fn rmsnorm_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                    @builtin(local_invocation_index) lid: u32) {
    let row = wid.y * nwg.x + wid.x;
    if (row >= p.n) {
        return;
    }
    let base = row * p.c;
    let r = rstd_in[row];
    var b = 0.0;
    for (var i = lid; i < p.c; i += WG) {
        b += weight[i] * dout[base + i] * inp[base + i] * r;
    }
    let dn_norm_mean = wg_sum(b, lid) / f32(p.c);
    for (var i = lid; i < p.c; i += WG) {
        let norm = inp[base + i] * r;
        let dn = weight[i] * dout[base + i];
        dinp[base + i] += (dn - norm * dn_norm_mean) * r;
    }
}

// rmsnorm_backward_weight_partial: for each block of 256 rows and each channel, the block's sum of
// norm * dout, into partial[block * C + channel]. The second stage (colsum_final in reduce.wgsl) adds
// the blocks into dweight in order.
// Grid: (ceil(C / 64), blocks = ceil(N / 256)).
// 1: partial (blocks*C) (read_write), 2: rstd (N), 3: inp (N,C), 4: dout (N,C)
@group(0) @binding(1) var<storage, read_write> partial: array<f32>;
@group(0) @binding(4) var<storage, read> dout_p: array<f32>;

@compute @workgroup_size(64)
fn rmsnorm_backward_weight_partial(@builtin(workgroup_id) wid: vec3<u32>,
                                   @builtin(local_invocation_index) lid: u32) {
    let i = wid.x * WG + lid;
    if (i >= p.c) {
        return;
    }
    let begin = wid.y * 256u;
    let end = min(begin + 256u, p.n);
    var dw = 0.0;
    for (var row = begin; row < end; row += 1u) {
        dw += inp[row * p.c + i] * rstd_in[row] * dout_p[row * p.c + i];
    }
    partial[wid.y * p.c + i] = dw;
}

// The "rows" family: as in layernorm.wgsl, one row per invocation, 8 invocations per workgroup, no
// barriers; rows past N compute row N - 1 and store nothing. Grid: ceil(N / 8) workgroups (folded).
const RW: u32 = 8u;

@compute @workgroup_size(8)
fn rmsnorm_rows_forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                        @builtin(local_invocation_index) lid: u32) {
    let at = (wid.y * nwg.x + wid.x) * RW + lid;
    let row = min(at, p.n - 1u);
    let base = row * p.c;
    var s = 0.0;
    for (var i = 0u; i < p.c; i += 1u) {
        let x = inp[base + i];
        s += x * x;
    }
    let r = 1.0 / sqrt(s / f32(p.c) + p.eps);
    for (var i = 0u; i < p.c; i += 1u) {
        let y = inp[base + i] * r * weight[i];
        if (at < p.n) {
            out[base + i] = y;
        }
    }
    if (at < p.n) {
        rstd[row] = r;
    }
}

@compute @workgroup_size(8)
fn rmsnorm_rows_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                         @builtin(local_invocation_index) lid: u32) {
    let at = (wid.y * nwg.x + wid.x) * RW + lid;
    let row = min(at, p.n - 1u);
    let base = row * p.c;
    let r = rstd_in[row];
    var b = 0.0;
    for (var i = 0u; i < p.c; i += 1u) {
        b += weight[i] * dout[base + i] * inp[base + i] * r;
    }
    let dn_norm_mean = b / f32(p.c);
    for (var i = 0u; i < p.c; i += 1u) {
        let norm = inp[base + i] * r;
        let dn = weight[i] * dout[base + i];
        let d = (dn - norm * dn_norm_mean) * r;
        if (at < p.n) {
            dinp[base + i] += d;
        }
    }
}
