// Fused softmax + cross-entropy, forward per row and backward straight to dlogits.
//
// Binding 0 of every entry is the uniform `Params { n, v, scale }`; bindings 1, 2, ... are the entry's
// buffers in the order listed beside it.

struct Params {
    n: u32,
    v: u32,
    scale: f32,
}

@group(0) @binding(0) var<uniform> p: Params;

const WG: u32 = 64u;

var<workgroup> red: array<f32, 64>;

// The sum (or the max, when `take_max`) of `x` over the workgroup, in a fixed order; every invocation
// gets it.
fn wg_reduce(x: f32, lid: u32, take_max: bool) -> f32 {
    red[lid] = x;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s = s / 2u) {
        if (lid < s) {
            if (take_max) {
                red[lid] = max(red[lid], red[lid + s]);
            } else {
                red[lid] += red[lid + s];
            }
        }
        workgroupBarrier();
    }
    let r = red[0];
    workgroupBarrier();
    return r;
}

// crossentropy_forward: per row of logits (N,V), lse = log sum exp(logits) and
// losses = lse - logits[target]. One workgroup of 64 per row; grid: N workgroups, folded into (x, y).
// 1: losses (N) (read_write), 2: lse (N) (read_write), 3: logits (N,V), 4: targets (N) u32
@group(0) @binding(1) var<storage, read_write> losses: array<f32>;
@group(0) @binding(2) var<storage, read_write> lse: array<f32>;
@group(0) @binding(3) var<storage, read> logits: array<f32>;
@group(0) @binding(4) var<storage, read> targets: array<u32>;

@compute @workgroup_size(64)
fn crossentropy_forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                        @builtin(local_invocation_index) lid: u32) {
    let row = wid.y * nwg.x + wid.x;
    if (row >= p.n) {
        return;
    }
    let base = row * p.v;
    var mx = -3.402823e38;
    for (var i = lid; i < p.v; i += WG) {
        mx = max(mx, logits[base + i]);
    }
    mx = wg_reduce(mx, lid, true);
    var s = 0.0;
    for (var i = lid; i < p.v; i += WG) {
        s += exp(logits[base + i] - mx);
    }
    s = wg_reduce(s, lid, false);
    if (lid == 0u) {
        let l = mx + log(s);
        lse[row] = l;
        losses[row] = l - logits[base + targets[row]];
    }
}

// crossentropy_backward: dlogits (N,V) += scale * grad_scale * (exp(logits - lse) - onehot(target)),
// grad_scale a per-step multiplier set by the host (1 normally).
// One invocation per element; grid: ceil(N*V / 64) workgroups, folded into (x, y).
// 1: dlogits (read_write), 2: logits (N,V), 3: lse (N), 4: targets (N) u32, 5: grad_scale (1)
@group(0) @binding(1) var<storage, read_write> dlogits: array<f32>;
@group(0) @binding(2) var<storage, read> logits_in: array<f32>;
@group(0) @binding(3) var<storage, read> lse_in: array<f32>;
@group(0) @binding(5) var<storage, read> grad_scale: array<f32>;

@compute @workgroup_size(64)
fn crossentropy_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                         @builtin(local_invocation_index) lid: u32) {
    let idx = (wid.y * nwg.x + wid.x) * WG + lid;
    if (idx >= p.n * p.v) {
        return;
    }
    let row = idx / p.v;
    let j = idx % p.v;
    var y = 0.0;
    if (targets[row] == j) {
        y = 1.0;
    }
    dlogits[idx] += (p.scale * grad_scale[0]) * (exp(logits_in[idx] - lse_in[row]) - y);
}

// crossentropy_backward_inplace: the same gradient written over the logits it is formed from,
// logits (N,V) = scale * grad_scale * (exp(logits - lse) - onehot(target)): the model's step, where
// the logits are dead once the loss is formed, so no second (N,V) buffer is needed.
// Same grid. 1: logits (read_write), 2: lse (N), 3: targets (N) u32, 4: grad_scale (1)
@group(0) @binding(3) var<storage, read> targets_in3: array<u32>;
@group(0) @binding(4) var<storage, read> grad_scale_in4: array<f32>;

@compute @workgroup_size(64)
fn crossentropy_backward_inplace(@builtin(workgroup_id) wid: vec3<u32>,
                                 @builtin(num_workgroups) nwg: vec3<u32>,
                                 @builtin(local_invocation_index) lid: u32) {
    let idx = (wid.y * nwg.x + wid.x) * WG + lid;
    if (idx >= p.n * p.v) {
        return;
    }
    let row = idx / p.v;
    var y = 0.0;
    if (targets_in3[row] == idx % p.v) {
        y = 1.0;
    }
    dlogits[idx] = (p.scale * grad_scale_in4[0]) * (exp(dlogits[idx] - lse[row]) - y);
}
