// LayerNorm over the last dimension (eps 1e-5): forward, backward to the input, backward to the
// parameters.
//
// Binding 0 of every entry is the uniform `Params { n, c }`; bindings 1, 2, ... are the entry's buffers
// in the order listed beside it. The "tiled" row kernels run one workgroup of 64 per row (the flat
// workgroup id wid.y * nwg.x + wid.x is the row, so more than 65,535 rows fold into y) and reduce in a
// fixed tree; the "rows" family at the end of the file runs a row per invocation and sums it in
// order. Either way the results are bit-reproducible.

struct Params {
    n: u32,
    c: u32,
}

@group(0) @binding(0) var<uniform> p: Params;

const WG: u32 = 64u;
const EPS: f32 = 1e-5;

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

// layernorm_forward: out (N,C) = (inp - mean) * rstd * weight + bias; saves mean (N), rstd (N).
// Grid: N workgroups.
// 1: out (read_write), 2: mean (read_write), 3: rstd (read_write), 4: inp (N,C), 5: weight (C), 6: bias (C)
@group(0) @binding(1) var<storage, read_write> out: array<f32>;
@group(0) @binding(2) var<storage, read_write> mean: array<f32>;
@group(0) @binding(3) var<storage, read_write> rstd: array<f32>;
@group(0) @binding(4) var<storage, read> inp: array<f32>;
@group(0) @binding(5) var<storage, read> weight: array<f32>;
@group(0) @binding(6) var<storage, read> bias: array<f32>;

@compute @workgroup_size(64)
fn layernorm_forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                     @builtin(local_invocation_index) lid: u32) {
    let row = wid.y * nwg.x + wid.x;
    if (row >= p.n) {
        return;
    }
    let base = row * p.c;
    var s = 0.0;
    for (var i = lid; i < p.c; i += WG) {
        s += inp[base + i];
    }
    let m = wg_sum(s, lid) / f32(p.c);
    var v = 0.0;
    for (var i = lid; i < p.c; i += WG) {
        let d = inp[base + i] - m;
        v += d * d;
    }
    let r = 1.0 / sqrt(wg_sum(v, lid) / f32(p.c) + EPS);
    for (var i = lid; i < p.c; i += WG) {
        out[base + i] = (inp[base + i] - m) * r * weight[i] + bias[i];
    }
    if (lid == 0u) {
        mean[row] = m;
        rstd[row] = r;
    }
}

// layernorm_backward: dinp (N,C) += (dnorm - mean(dnorm) - norm * mean(dnorm * norm)) * rstd, with
// norm = (inp - mean) * rstd and dnorm = weight * dout. Grid: N workgroups.
// 1: dinp (read_write), 2: mean (N), 3: rstd (N), 4: inp (N,C), 5: weight (C), 6: dout (N,C)
@group(0) @binding(1) var<storage, read_write> dinp: array<f32>;
@group(0) @binding(2) var<storage, read> mean_in: array<f32>;
@group(0) @binding(3) var<storage, read> rstd_in: array<f32>;
@group(0) @binding(6) var<storage, read> dout: array<f32>;

@compute @workgroup_size(64)
fn layernorm_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                      @builtin(local_invocation_index) lid: u32) {
    let row = wid.y * nwg.x + wid.x;
    if (row >= p.n) {
        return;
    }
    let base = row * p.c;
    let m = mean_in[row];
    let r = rstd_in[row];
    var a = 0.0;
    var b = 0.0;
    for (var i = lid; i < p.c; i += WG) {
        let dn = weight[i] * dout[base + i];
        a += dn;
        b += dn * (inp[base + i] - m) * r;
    }
    let dn_mean = wg_sum(a, lid) / f32(p.c);
    let dn_norm_mean = wg_sum(b, lid) / f32(p.c);
    for (var i = lid; i < p.c; i += WG) {
        let norm = (inp[base + i] - m) * r;
        let dn = weight[i] * dout[base + i];
        dinp[base + i] += (dn - dn_mean - norm * dn_norm_mean) * r;
    }
}

// layernorm_backward_params_partial: for each block of 256 rows and each channel, the block's sums of
// norm * dout (into partial[0 .. blocks*C)) and of dout (into partial[blocks*C .. 2*blocks*C)). The
// second stage (colsum_final in reduce.wgsl) adds the blocks into dweight and dbias in order.
// Grid: (ceil(C / 64), blocks = ceil(N / 256)).
// 1: partial (2*blocks*C) (read_write), 2: mean (N), 3: rstd (N), 4: inp (N,C), 5: dout (N,C)
@group(0) @binding(1) var<storage, read_write> partial: array<f32>;
@group(0) @binding(5) var<storage, read> dout_p: array<f32>;

@compute @workgroup_size(64)
fn layernorm_backward_params_partial(@builtin(workgroup_id) wid: vec3<u32>,
                                     @builtin(num_workgroups) nwg: vec3<u32>,
                                     @builtin(local_invocation_index) lid: u32) {
    let i = wid.x * WG + lid;
    if (i >= p.c) {
        return;
    }
    let begin = wid.y * 256u;
    let end = min(begin + 256u, p.n);
    var dw = 0.0;
    var db = 0.0;
    for (var row = begin; row < end; row += 1u) {
        let d = dout_p[row * p.c + i];
        db += d;
        dw += (inp[row * p.c + i] - mean_in[row]) * rstd_in[row] * d;
    }
    partial[wid.y * p.c + i] = dw;
    partial[(nwg.y + wid.y) * p.c + i] = db;
}

// The "rows" family (kernels::FAMILIES; chosen on CPU-type adapters such as lavapipe): the same
// functions with the same bindings and params, one row per invocation and 8 invocations (one SIMD
// vector on lavapipe) per workgroup, summing each row in order with no workgroup memory and no
// barriers (which lavapipe runs as coroutines that save every live value at each barrier). Rows past
// N compute row N - 1 and store nothing; only the stores (and the read of dinp they update) sit in
// the test, so no other load is under divergent control flow. Grid: ceil(N / 8) workgroups (folded into y past
// 65,535). A row is walked 3 (forward) or 2 (backward) times: the host takes these kernels only while
// that stays inside lavapipe's loop limit.
const RW: u32 = 8u;

@compute @workgroup_size(8)
fn layernorm_rows_forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                          @builtin(local_invocation_index) lid: u32) {
    let at = (wid.y * nwg.x + wid.x) * RW + lid;
    let row = min(at, p.n - 1u);
    let base = row * p.c;
    var s = 0.0;
    for (var i = 0u; i < p.c; i += 1u) {
        s += inp[base + i];
    }
    let m = s / f32(p.c);
    var v = 0.0;
    for (var i = 0u; i < p.c; i += 1u) {
        let d = inp[base + i] - m;
        v += d * d;
    }
    let r = 1.0 / sqrt(v / f32(p.c) + EPS);
    for (var i = 0u; i < p.c; i += 1u) {
        let y = (inp[base + i] - m) * r * weight[i] + bias[i];
        if (at < p.n) {
            out[base + i] = y;
        }
    }
    if (at < p.n) {
        mean[row] = m;
        rstd[row] = r;
    }
}

@compute @workgroup_size(8)
fn layernorm_rows_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                           @builtin(local_invocation_index) lid: u32) {
    let at = (wid.y * nwg.x + wid.x) * RW + lid;
    let row = min(at, p.n - 1u);
    let base = row * p.c;
    let m = mean_in[row];
    let r = rstd_in[row];
    var a = 0.0;
    var b = 0.0;
    for (var i = 0u; i < p.c; i += 1u) {
        let dn = weight[i] * dout[base + i];
        a += dn;
        b += dn * (inp[base + i] - m) * r;
    }
    let dn_mean = a / f32(p.c);
    let dn_norm_mean = b / f32(p.c);
    for (var i = 0u; i < p.c; i += 1u) {
        let norm = (inp[base + i] - m) * r;
        let dn = weight[i] * dout[base + i];
        let d = (dn - dn_mean - norm * dn_norm_mean) * r;
        if (at < p.n) {
            dinp[base + i] += d;
        }
    }
}
