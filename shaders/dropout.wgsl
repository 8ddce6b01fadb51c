// Dropout with a counter-based mask: element i of stream s under seed k is kept when
// hash(i + hash(k ^ hash(s))) >= threshold, with threshold = p * 2^32. Nothing is stored: the backward
// pass recomputes the same mask, and the same seed gives the same mask on every backend (the CPU twin
// runs the same integer hash).
//
// Binding 0 of every entry is the uniform `Params { n, threshold, scale, stream }` (scale = 1/(1-p));
// bindings 1, 2, ... are the entry's buffers in the order listed beside it.
// Grid: ceil(n / 64) workgroups of 64, folded into (x, y) above 65,535.

struct Params {
    n: u32,
    threshold: u32,
    scale: f32,
    stream: u32,
}

@group(0) @binding(0) var<uniform> p: Params;

const WG: u32 = 64u;

// "lowbias32" (Chris Wellons): a fast integer hash with good avalanche.
fn hash(x: u32) -> u32 {
    var v = x;
    v ^= v >> 16u;
    v *= 0x7feb352du;
    v ^= v >> 15u;
    v *= 0x846ca68bu;
    v ^= v >> 16u;
    return v;
}

fn keep_scale(seed: u32, i: u32) -> f32 {
    if (hash(i + hash(seed ^ hash(p.stream))) >= p.threshold) {
        return p.scale;
    }
    return 0.0;
}

fn flat(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return (wid.y * nwg.x + wid.x) * WG + lid;
}

// dropout_forward: out (n) = inp * mask * scale.
// 1: out (read_write), 2: inp, 3: seed (1) u32
@group(0) @binding(1) var<storage, read_write> out: array<f32>;
@group(0) @binding(2) var<storage, read> inp: array<f32>;
@group(0) @binding(3) var<storage, read> seed: array<u32>;

@compute @workgroup_size(64)
fn dropout_forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                   @builtin(local_invocation_index) lid: u32) {
    let i = flat(wid, nwg, lid);
    if (i < p.n) {
        out[i] = inp[i] * keep_scale(seed[0], i);
    }
}

// dropout_backward: dinp (n) += dout * mask * scale.
// 1: dinp (read_write), 2: dout, 3: seed (1) u32
@compute @workgroup_size(64)
fn dropout_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                    @builtin(local_invocation_index) lid: u32) {
    let i = flat(wid, nwg, lid);
    if (i < p.n) {
        out[i] += inp[i] * keep_scale(seed[0], i);
    }
}

// dropout_mask_inplace: x (n) *= mask * scale (attention backward: from the gradient of the dropped
// probabilities to that of the probabilities).
// 1: x (read_write), 2: seed (1) u32
@group(0) @binding(2) var<storage, read> seed_x: array<u32>;

@compute @workgroup_size(64)
fn dropout_mask_inplace(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                        @builtin(local_invocation_index) lid: u32) {
    let i = flat(wid, nwg, lid);
    if (i < p.n) {
        out[i] *= keep_scale(seed_x[0], i);
    }
}
