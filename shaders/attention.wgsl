// Causal self-attention with explicit scores, multi-head or grouped-query: forward in three kernels
// (scores, softmax, weighted values) and backward in four (probabilities, softmax, q, k and v), none
// with atomics.
//
// NH query heads share NKV key/value heads (NKV divides NH; NKV = NH is multi-head attention). A row
// of qkv (B,T,W), W = (NH + 2*NKV)*hs with hs = C/NH, holds the NH q heads (C columns), then the NKV
// k heads, then the NKV v heads; query head h reads kv head h / (NH/NKV). att (B,NH,T,T) holds the
// softmax probabilities (zero above the diagonal). Scores are scaled by 1/sqrt(hs). With NKV = NH
// every kernel does the same arithmetic in the same order as the multi-head kernels did before NKV
// existed, so GPT-2 results are bit-identical.
//
// Each invocation loops at most max(T, hs) times per loop, (NH/NKV)*T in attention_backward_kv
// (lavapipe silently stops an invocation's loops after 65,535 iterations in all), and the grids are
// wide: one invocation per score or per output element.
//
// Binding 0 of every entry is the uniform `Params { b, t, c, nh, nkv }`; bindings 1, 2, ... are the
// entry's buffers in the order listed beside it. Grids are 1-D, 64 invocations per workgroup, folded
// into (x, y) above 65,535 workgroups.

struct Params {
    b: u32,
    t: u32,
    c: u32,
    nh: u32,
    nkv: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;

const WG: u32 = 64u;

fn flat(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return (wid.y * nwg.x + wid.x) * WG + lid;
}

fn head_size() -> u32 {
    return p.c / p.nh;
}

fn scale() -> f32 {
    return 1.0 / sqrt(f32(head_size()));
}

// Elements per row of qkv.
fn qkv_width() -> u32 {
    return p.c + 2u * p.nkv * head_size();
}

// The kv head that query head h reads.
fn kv_head(h: u32) -> u32 {
    return h / (p.nh / p.nkv);
}

// Offset of part (0 q, 1 k, 2 v) of head h (a query head for q, a kv head for k and v) at position
// (b, t) in qkv.
fn qkv_at(b: u32, t: u32, part: u32, h: u32) -> u32 {
    var col = h * head_size();
    if (part == 1u) {
        col += p.c;
    } else if (part == 2u) {
        col += p.c + p.nkv * head_size();
    }
    return (b * p.t + t) * qkv_width() + col;
}

// attention_scores: att[b,h,t1,t2] = q[t1] . k[t2] * scale for t2 <= t1, else 0.
// Grid: B*NH*T*T invocations.
// 1: att (B,NH,T,T) (read_write), 2: qkv (B,T,W)
@group(0) @binding(1) var<storage, read_write> att: array<f32>;
@group(0) @binding(2) var<storage, read> qkv: array<f32>;

@compute @workgroup_size(64)
fn attention_scores(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                    @builtin(local_invocation_index) lid: u32) {
    let idx = flat(wid, nwg, lid);
    if (idx >= p.b * p.nh * p.t * p.t) {
        return;
    }
    let t2 = idx % p.t;
    let t1 = (idx / p.t) % p.t;
    let h = (idx / (p.t * p.t)) % p.nh;
    let b = idx / (p.t * p.t * p.nh);
    if (t2 > t1) {
        att[idx] = 0.0;
        return;
    }
    let q = qkv_at(b, t1, 0u, h);
    let k = qkv_at(b, t2, 1u, kv_head(h));
    var s = 0.0;
    for (var i = 0u; i < head_size(); i += 1u) {
        s += qkv[q + i] * qkv[k + i];
    }
    att[idx] = s * scale();
}

// attention_softmax: softmax of each row of att over t2 <= t1, in place. Grid: B*NH*T invocations.
// 1: att (B,NH,T,T) (read_write)
@compute @workgroup_size(64)
fn attention_softmax(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                     @builtin(local_invocation_index) lid: u32) {
    let row = flat(wid, nwg, lid);
    if (row >= p.b * p.nh * p.t) {
        return;
    }
    let t1 = row % p.t;
    let base = row * p.t;
    var mx = -3.402823e38;
    for (var t2 = 0u; t2 <= t1; t2 += 1u) {
        mx = max(mx, att[base + t2]);
    }
    var sum = 0.0;
    for (var t2 = 0u; t2 <= t1; t2 += 1u) {
        let e = exp(att[base + t2] - mx);
        att[base + t2] = e;
        sum += e;
    }
    let inv = 1.0 / sum;
    for (var t2 = 0u; t2 <= t1; t2 += 1u) {
        att[base + t2] *= inv;
    }
}

// attention_values: out[b,t1,h,i] = sum over t2 <= t1 of att[b,h,t1,t2] * v[b,t2,h,i].
// Grid: B*T*C invocations.
// 1: out (B,T,C) (read_write), 2: qkv, 3: att
@group(0) @binding(1) var<storage, read_write> out: array<f32>;
@group(0) @binding(3) var<storage, read> att_in: array<f32>;

@compute @workgroup_size(64)
fn attention_values(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                    @builtin(local_invocation_index) lid: u32) {
    let idx = flat(wid, nwg, lid);
    if (idx >= p.b * p.t * p.c) {
        return;
    }
    let hs = head_size();
    let i = idx % hs;
    let h = (idx / hs) % p.nh;
    let bt = idx / p.c;
    let t1 = bt % p.t;
    let b = bt / p.t;
    let arow = ((b * p.nh + h) * p.t + t1) * p.t;
    var s = 0.0;
    for (var t2 = 0u; t2 <= t1; t2 += 1u) {
        s += att_in[arow + t2] * qkv[qkv_at(b, t2, 2u, kv_head(h)) + i];
    }
    out[idx] = s;
}

// attention_backward_probs: datt[b,h,t1,t2] = dout[b,t1,h] . v[b,t2,h] for t2 <= t1, else 0: the
// gradient of the probabilities. Grid: B*NH*T*T invocations.
// 1: datt (B,NH,T,T) (read_write), 2: qkv, 3: dout (B,T,C)
@group(0) @binding(1) var<storage, read_write> datt: array<f32>;
@group(0) @binding(3) var<storage, read> dout: array<f32>;

@compute @workgroup_size(64)
fn attention_backward_probs(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                            @builtin(local_invocation_index) lid: u32) {
    let idx = flat(wid, nwg, lid);
    if (idx >= p.b * p.nh * p.t * p.t) {
        return;
    }
    let t2 = idx % p.t;
    let t1 = (idx / p.t) % p.t;
    let h = (idx / (p.t * p.t)) % p.nh;
    let b = idx / (p.t * p.t * p.nh);
    if (t2 > t1) {
        datt[idx] = 0.0;
        return;
    }
    let d = (b * p.t + t1) * p.c + h * head_size();
    let v = qkv_at(b, t2, 2u, kv_head(h));
    var s = 0.0;
    for (var i = 0u; i < head_size(); i += 1u) {
        s += dout[d + i] * qkv[v + i];
    }
    datt[idx] = s;
}

// attention_backward_softmax: datt = att * (datt - sum(att * datt)) * scale over each row, in place:
// from the gradient of the probabilities to that of the scaled scores' inputs.
// Grid: B*NH*T invocations.
// 1: datt (read_write), 2: att
@group(0) @binding(2) var<storage, read> att_b: array<f32>;

@compute @workgroup_size(64)
fn attention_backward_softmax(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                              @builtin(local_invocation_index) lid: u32) {
    let row = flat(wid, nwg, lid);
    if (row >= p.b * p.nh * p.t) {
        return;
    }
    let t1 = row % p.t;
    let base = row * p.t;
    var dot = 0.0;
    for (var t2 = 0u; t2 <= t1; t2 += 1u) {
        dot += att_b[base + t2] * datt[base + t2];
    }
    let sc = scale();
    for (var t2 = 0u; t2 <= t1; t2 += 1u) {
        datt[base + t2] = att_b[base + t2] * (datt[base + t2] - dot) * sc;
    }
}

// attention_backward_q: dq[b,t1,h,i] += sum over t2 <= t1 of datt[b,h,t1,t2] * k[b,t2,h,i].
// Grid: B*T*C invocations.
// 1: dqkv (B,T,W) (read_write), 2: qkv, 3: datt
@group(0) @binding(1) var<storage, read_write> dqkv: array<f32>;
@group(0) @binding(3) var<storage, read> dpre: array<f32>;

@compute @workgroup_size(64)
fn attention_backward_q(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                        @builtin(local_invocation_index) lid: u32) {
    let idx = flat(wid, nwg, lid);
    if (idx >= p.b * p.t * p.c) {
        return;
    }
    let hs = head_size();
    let i = idx % hs;
    let h = (idx / hs) % p.nh;
    let bt = idx / p.c;
    let t1 = bt % p.t;
    let b = bt / p.t;
    let arow = ((b * p.nh + h) * p.t + t1) * p.t;
    var s = 0.0;
    for (var t2 = 0u; t2 <= t1; t2 += 1u) {
        s += dpre[arow + t2] * qkv[qkv_at(b, t2, 1u, kv_head(h)) + i];
    }
    dqkv[qkv_at(b, t1, 0u, h) + i] += s;
}

// attention_backward_kv: for kv head g, dk[b,t2,g,i] += sum over its query heads h (in increasing
// order) and t1 >= t2 of datt[b,h,t1,t2] * q[b,t1,h,i], and dv[b,t2,g,i] += the same sum of
// att[b,h,t1,t2] * dout[b,t1,h,i]: one running sum per output, so the order is fixed without atomics.
// Grid: B*T*NKV*hs invocations.
// 1: dqkv (read_write), 2: qkv, 3: datt, 4: att, 5: dout (B,T,C)
@group(0) @binding(4) var<storage, read> att_kv: array<f32>;
@group(0) @binding(5) var<storage, read> dout_kv: array<f32>;

@compute @workgroup_size(64)
fn attention_backward_kv(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                         @builtin(local_invocation_index) lid: u32) {
    let idx = flat(wid, nwg, lid);
    let hs = head_size();
    let kv_c = p.nkv * hs;
    if (idx >= p.b * p.t * kv_c) {
        return;
    }
    let i = idx % hs;
    let g = (idx / hs) % p.nkv;
    let bt = idx / kv_c;
    let t2 = bt % p.t;
    let b = bt / p.t;
    let group = p.nh / p.nkv;
    var sk = 0.0;
    var sv = 0.0;
    for (var h = g * group; h < (g + 1u) * group; h += 1u) {
        for (var t1 = t2; t1 < p.t; t1 += 1u) {
            let a = ((b * p.nh + h) * p.t + t1) * p.t + t2;
            sk += dpre[a] * qkv[qkv_at(b, t1, 0u, h) + i];
            sv += att_kv[a] * dout_kv[(b * p.t + t1) * p.c + h * hs + i];
        }
    }
    dqkv[qkv_at(b, t2, 1u, g) + i] += sk;
    dqkv[qkv_at(b, t2, 2u, g) + i] += sv;
}
