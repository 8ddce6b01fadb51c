// Fused ("flash") causal attention, multi-head or grouped-query: the function of attention.wgsl
// computed tile by tile with an online softmax, so that nothing of size T*T is ever stored. The
// forward pass is one kernel; the backward pass is three (D = rowsum(dout * out); dK and dV per key
// tile; dQ per query tile), none with atomics, every sum in a fixed order (the same bits on a rerun).
//
// Layout as in attention.wgsl: a row of qkv (B,T,W), W = (NH + 2*NKV)*hs with hs = C/NH, holds the NH
// q heads, then the NKV k heads, then the NKV v heads; query head h reads kv head h / (NH/NKV). Scores
// are scaled by 1/sqrt(hs) and causal. lse (B,NH,T) is the log-sum-exp of each row of scaled scores,
// which the backward kernels recompute the probabilities from. With dropout, probability
// (b, h, t1, t2) is multiplied by the mask of element ((b*NH + h)*T + t1)*T + t2 of the stream (the
// hash of dropout.wgsl), exactly as the naive path masks its (B,NH,T,T) tensor.
//
// Two kernel families compute these passes (kernels::FAMILIES): the "tiled" kernels below,
// shaped for GPUs, and the "rows" kernels at the end of the file, shaped for SIMD CPUs (lavapipe).
//
// Tiles. A workgroup owns WG = 64 rows (queries in the forward and dQ kernels, keys in the dK/dV
// kernel), one per invocation, and walks the other side in tiles of BC rows staged in workgroup
// memory, where every invocation reads them at the same (uniform) index: lavapipe turns loads whose
// address depends on the invocation into scalar gathers, so only the staging loop pays for them.
// A head row is handled in chunks of C4 vec4s (zero-padded past hs): with hs <= 128 there is one
// chunk and the rows an invocation owns stay in registers; with larger heads the dot products loop
// over the chunks (reloading the owned rows), and the grid's z dimension picks which chunk of the
// output columns a workgroup accumulates. BC and C4 are pipeline-overridable constants chosen by the
// host (kernels::flash_tile): C4 = min(32, ceil(hs/4)), BC = min(32, 512/C4 rounded down to a
// multiple of 4), so each of the two staged tiles is at most 512 vec4s: 16 KiB of workgroup memory
// in all, the WebGPU minimum, for any head size.
//
// Loop bounds (lavapipe silently ends an invocation's loops after 65,535 iterations in all): the
// forward and dQ kernels run about 320 iterations per tile of BC keys, so up to T = 2048 with
// hs = 128 (about 41,000) and beyond 4096 for hs <= 64; the dK/dV kernel walks (query head, query
// tile) pairs of its group in the range [u_begin, u_end) that the host sizes to stay within budget,
// splitting the group's sum into several dispatches that accumulate in order.
// kernels::flash_loop_iterations mirrors these counts.
//
// Binding 0 of every entry is the uniform `Params`; bindings 1, 2, ... are the entry's buffers in the
// order listed beside it.

struct Params {
    b: u32,
    t: u32,
    c: u32,
    nh: u32,
    nkv: u32,
    // 1 when dropout applies to the probabilities.
    drop: u32,
    // Dropout keeps element i when its hash is at least this (p * 2^32), and scales it by drop_scale.
    threshold: u32,
    drop_scale: f32,
    stream: u32,
    // The dK/dV kernel's range of (query head within the group, query tile) pairs, head-major.
    u_begin: u32,
    u_end: u32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;

// vec4s per chunk of a head row (1..=32).
override C4: u32 = 16u;
// Rows per staged tile (4..=32, a multiple of 4); BC * C4 <= 512.
override BC: u32 = 32u;

const WG: u32 = 64u;
const NEG_BIG: f32 = -3.402823e38;

// Two staged tiles of BC rows by C4 vec4s: K and V (forward, dQ), or Q and dout (dK/dV).
var<workgroup> tile_a: array<vec4<f32>, 512>;
var<workgroup> tile_b: array<vec4<f32>, 512>;

fn head_size() -> u32 {
    return p.c / p.nh;
}

fn scale() -> f32 {
    return 1.0 / sqrt(f32(head_size()));
}

// Chunks of C4 vec4s per head row.
fn chunks() -> u32 {
    return ((head_size() + 3u) / 4u + C4 - 1u) / C4;
}

fn qkv_width() -> u32 {
    return p.c + 2u * p.nkv * head_size();
}

fn kv_head(h: u32) -> u32 {
    return h / (p.nh / p.nkv);
}

// Offset of part (0 q, 1 k, 2 v) of head h at position (b, t) in qkv.
fn qkv_at(b: u32, t: u32, part: u32, h: u32) -> u32 {
    var col = h * head_size();
    if (part == 1u) {
        col += p.c;
    } else if (part == 2u) {
        col += p.c + p.nkv * head_size();
    }
    return (b * p.t + t) * qkv_width() + col;
}

// "lowbias32", as in dropout.wgsl.
fn hash(x: u32) -> u32 {
    var v = x;
    v ^= v >> 16u;
    v *= 0x7feb352du;
    v ^= v >> 15u;
    v *= 0x846ca68bu;
    v ^= v >> 16u;
    return v;
}

// The part of the mask hash that depends only on the seed and the stream.
fn mask_mix(seed: u32) -> u32 {
    return hash(seed ^ hash(p.stream));
}

// The dropout factors (0 or 1/(1-p)) of the four mask elements idx, idx + step, idx + 2 step,
// idx + 3 step; all ones without dropout.
fn factors(mix: u32, idx: u32, step: u32) -> vec4<f32> {
    if (p.drop == 0u) {
        return vec4<f32>(1.0);
    }
    let i = vec4<u32>(idx, idx + step, idx + 2u * step, idx + 3u * step);
    let h = vec4<u32>(hash(i.x + mix), hash(i.y + mix), hash(i.z + mix), hash(i.w + mix));
    return select(vec4<f32>(0.0), vec4<f32>(p.drop_scale), h >= vec4<u32>(p.threshold));
}

fn hsum(v: vec4<f32>) -> f32 {
    return (v.x + v.y) + (v.z + v.w);
}

// ---- forward ----

@group(0) @binding(1) var<storage, read_write> out: array<f32>;
@group(0) @binding(2) var<storage, read_write> lse_out: array<f32>;
@group(0) @binding(3) var<storage, read> qkv: array<f32>;
@group(0) @binding(4) var<storage, read> seed_f: array<u32>;

// Elements col..col+3 of the qkv row that starts at base, zero at and past the head size.
fn qkv4(base: u32, col: u32) -> vec4<f32> {
    let hs = head_size();
    var v = vec4<f32>(0.0);
    if (col < hs) {
        v.x = qkv[base + col];
    }
    if (col + 1u < hs) {
        v.y = qkv[base + col + 1u];
    }
    if (col + 2u < hs) {
        v.z = qkv[base + col + 2u];
    }
    if (col + 3u < hs) {
        v.w = qkv[base + col + 3u];
    }
    return v;
}

// Stages chunk c of part `part` of head `head`, rows r0..r0+BC (zero past T), into tile_a (k = 0) or
// tile_b (k = 1). At most ceil(BC*C4/WG) <= 8 iterations.
fn stage_qkv(k: u32, b: u32, part: u32, head: u32, r0: u32, c: u32, lid: u32) {
    for (var e = lid; e < BC * C4; e += WG) {
        let r = e / C4;
        var v = vec4<f32>(0.0);
        if (r0 + r < p.t) {
            v = qkv4(qkv_at(b, r0 + r, part, head), (c * C4 + e % C4) * 4u);
        }
        if (k == 0u) {
            tile_a[e] = v;
        } else {
            tile_b[e] = v;
        }
    }
}

// flash_attention_forward: out (B,T,C) and lse (B,NH,T) from qkv (B,T,W).
// Grid: (ceil(T/64), B*NH, chunks); workgroup (x, y, z) computes output columns of chunk z for
// queries 64x..64x+63 of batch y / NH, head y % NH.
// 1: out (read_write), 2: lse (read_write), 3: qkv, 4: seed (1) u32 (a dummy without dropout)
@compute @workgroup_size(64)
fn flash_attention_forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let hs = head_size();
    let nch = chunks();
    let sc = scale();
    let b = wid.y / p.nh;
    let h = wid.y % p.nh;
    let g = kv_head(h);
    let cc = wid.z;
    let q0 = wid.x * WG;
    let t1 = q0 + lid;
    // Invocations past T compute row T-1 (their barriers are needed) and write nothing.
    let row = min(t1, p.t - 1u);
    // Key tiles at or below the diagonal of the tile's last query; those above are skipped.
    let n_kt = (min(q0 + WG, p.t) - 1u) / BC + 1u;
    let mix = mask_mix(seed_f[0]);
    let mrow = ((b * p.nh + h) * p.t + row) * p.t;
    let q_base = qkv_at(b, row, 0u, h);
    var q: array<vec4<f32>, 32>;
    var acc: array<vec4<f32>, 32>;
    // Scores, then probabilities, of the current key tile, four keys per vec4.
    var s: array<vec4<f32>, 8>;
    for (var d = 0u; d < C4; d += 1u) {
        q[d] = qkv4(q_base, d * 4u);
        acc[d] = vec4<f32>(0.0);
    }
    var m = NEG_BIG;
    var l = 0.0;
    for (var j = 0u; j < n_kt; j += 1u) {
        let k0 = j * BC;
        for (var c = 0u; c < nch; c += 1u) {
            if (nch > 1u) {
                for (var d = 0u; d < C4; d += 1u) {
                    q[d] = qkv4(q_base, (c * C4 + d) * 4u);
                }
            }
            workgroupBarrier();
            stage_qkv(0u, b, 1u, g, k0, c, lid);
            workgroupBarrier();
            for (var kb = 0u; kb < BC / 4u; kb += 1u) {
                var x = vec4<f32>(0.0);
                let base = kb * 4u * C4;
                for (var d = 0u; d < C4; d += 1u) {
                    let qd = q[d];
                    x += vec4<f32>(dot(qd, tile_a[base + d]), dot(qd, tile_a[base + C4 + d]),
                                   dot(qd, tile_a[base + 2u * C4 + d]), dot(qd, tile_a[base + 3u * C4 + d]));
                }
                if (c == 0u) {
                    s[kb] = x;
                } else {
                    s[kb] += x;
                }
            }
        }
        // Online softmax: the new running max, the factor that rescales what came before, and this
        // tile's probabilities relative to the new max (zero above the diagonal).
        var mt = m;
        for (var kb = 0u; kb < BC / 4u; kb += 1u) {
            let valid = vec4<u32>(k0 + kb * 4u) + vec4<u32>(0u, 1u, 2u, 3u) <= vec4<u32>(row);
            let sv = select(vec4<f32>(NEG_BIG), s[kb] * sc, valid);
            s[kb] = sv;
            mt = max(mt, max(max(sv.x, sv.y), max(sv.z, sv.w)));
        }
        let alpha = exp(m - mt);
        m = mt;
        l *= alpha;
        for (var kb = 0u; kb < BC / 4u; kb += 1u) {
            let valid = vec4<u32>(k0 + kb * 4u) + vec4<u32>(0u, 1u, 2u, 3u) <= vec4<u32>(row);
            let e = select(vec4<f32>(0.0), exp(s[kb] - m), valid);
            // The sum is of the undropped probabilities; the values are weighted by the dropped ones.
            l += hsum(e);
            s[kb] = e * factors(mix, mrow + k0 + kb * 4u, 1u);
        }
        for (var d = 0u; d < C4; d += 1u) {
            acc[d] *= alpha;
        }
        workgroupBarrier();
        stage_qkv(1u, b, 2u, g, k0, cc, lid);
        workgroupBarrier();
        for (var kb = 0u; kb < BC / 4u; kb += 1u) {
            let pv = s[kb];
            let base = kb * 4u * C4;
            for (var d = 0u; d < C4; d += 1u) {
                acc[d] += pv.x * tile_b[base + d] + pv.y * tile_b[base + C4 + d]
                    + pv.z * tile_b[base + 2u * C4 + d] + pv.w * tile_b[base + 3u * C4 + d];
            }
        }
    }
    if (t1 < p.t) {
        let inv = 1.0 / l;
        let o = (b * p.t + t1) * p.c + h * hs;
        for (var d = 0u; d < C4; d += 1u) {
            let col = (cc * C4 + d) * 4u;
            let v = acc[d] * inv;
            if (col < hs) {
                out[o + col] = v.x;
            }
            if (col + 1u < hs) {
                out[o + col + 1u] = v.y;
            }
            if (col + 2u < hs) {
                out[o + col + 2u] = v.z;
            }
            if (col + 3u < hs) {
                out[o + col + 3u] = v.w;
            }
        }
        if (cc == 0u) {
            lse_out[(b * p.nh + h) * p.t + t1] = m + log(l);
        }
    }
}

// ---- backward: D ----

@group(0) @binding(1) var<storage, read_write> dsum_out: array<f32>;
@group(0) @binding(2) var<storage, read> out_in: array<f32>;
@group(0) @binding(3) var<storage, read> dout_in: array<f32>;

// flash_attention_backward_dsum: dsum[b,h,t] = sum over i < hs of dout[b,t,h,i] * out[b,t,h,i].
// Grid: B*NH*T invocations, 64 per workgroup, folded into (x, y) above 65,535 workgroups.
// 1: dsum (B,NH,T) (read_write), 2: out (B,T,C), 3: dout (B,T,C)
@compute @workgroup_size(64)
fn flash_attention_backward_dsum(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                                 @builtin(local_invocation_index) lid: u32) {
    let row = (wid.y * nwg.x + wid.x) * WG + lid;
    if (row >= p.b * p.nh * p.t) {
        return;
    }
    let hs = head_size();
    let t = row % p.t;
    let h = (row / p.t) % p.nh;
    let b = row / (p.t * p.nh);
    let base = (b * p.t + t) * p.c + h * hs;
    var s = 0.0;
    for (var i = 0u; i < hs; i += 1u) {
        s += dout_in[base + i] * out_in[base + i];
    }
    dsum_out[row] = s;
}

// ---- backward: dK, dV and dQ ----

@group(0) @binding(1) var<storage, read_write> dqkv: array<f32>;
@group(0) @binding(2) var<storage, read> dsum: array<f32>;
@group(0) @binding(4) var<storage, read> dout: array<f32>;
@group(0) @binding(5) var<storage, read> lse: array<f32>;
@group(0) @binding(6) var<storage, read> seed_b: array<u32>;

// Elements col..col+3 of head h of dout at (b, t), zero at and past the head size.
fn dout4(b: u32, t: u32, h: u32, col: u32) -> vec4<f32> {
    let hs = head_size();
    let base = (b * p.t + t) * p.c + h * hs;
    var v = vec4<f32>(0.0);
    if (col < hs) {
        v.x = dout[base + col];
    }
    if (col + 1u < hs) {
        v.y = dout[base + col + 1u];
    }
    if (col + 2u < hs) {
        v.z = dout[base + col + 2u];
    }
    if (col + 3u < hs) {
        v.w = dout[base + col + 3u];
    }
    return v;
}

// Stages chunk c of query head h's q rows into tile_a and of its dout rows into tile_b, rows
// r0..r0+BC (zero past T). At most ceil(BC*C4/WG) <= 8 iterations.
fn stage_q_dout(b: u32, h: u32, r0: u32, c: u32, lid: u32) {
    for (var e = lid; e < BC * C4; e += WG) {
        let r = e / C4;
        let col = (c * C4 + e % C4) * 4u;
        var vq = vec4<f32>(0.0);
        var vd = vec4<f32>(0.0);
        if (r0 + r < p.t) {
            vq = qkv4(qkv_at(b, r0 + r, 0u, h), col);
            vd = dout4(b, r0 + r, h, col);
        }
        tile_a[e] = vq;
        tile_b[e] = vd;
    }
}

// Stages chunk c of kv head g's k rows into tile_a and its v rows into tile_b, rows r0..r0+BC.
fn stage_k_v(b: u32, g: u32, r0: u32, c: u32, lid: u32) {
    for (var e = lid; e < BC * C4; e += WG) {
        let r = e / C4;
        let col = (c * C4 + e % C4) * 4u;
        var vk = vec4<f32>(0.0);
        var vv = vec4<f32>(0.0);
        if (r0 + r < p.t) {
            vk = qkv4(qkv_at(b, r0 + r, 1u, g), col);
            vv = qkv4(qkv_at(b, r0 + r, 2u, g), col);
        }
        tile_a[e] = vk;
        tile_b[e] = vv;
    }
}

// The saved lse and D of rows t of head row bh (clamped into range: rows past T are masked anyway).
fn lse4(bh: u32, t: vec4<u32>) -> vec4<f32> {
    let r = bh * p.t;
    let tt = min(t, vec4<u32>(p.t - 1u));
    return vec4<f32>(lse[r + tt.x], lse[r + tt.y], lse[r + tt.z], lse[r + tt.w]);
}

fn dsum4(bh: u32, t: vec4<u32>) -> vec4<f32> {
    let r = bh * p.t;
    let tt = min(t, vec4<u32>(p.t - 1u));
    return vec4<f32>(dsum[r + tt.x], dsum[r + tt.y], dsum[r + tt.z], dsum[r + tt.w]);
}

// flash_attention_backward_kv: for kv head g and keys t2 of the workgroup's tile,
// dk[t2] += scale * sum of dS[t1,t2] q[t1] and dv[t2] += sum of Pd[t1,t2] dout[t1], over the pairs
// (query head of the group, query tile) numbered u_begin..u_end (head-major, query tiles in order;
// tiles wholly above the diagonal skipped), where P = exp(scale q.k - lse), Pd = P * mask,
// dS = P * ((dout . v) * mask - D). The workgroup owns its rows of dk and dv, so no other
// workgroup writes them; successive dispatches over later ranges add in order.
// Grid: (ceil(T/64), B*NKV, chunks); workgroup (x, y, z) owns columns of chunk z of keys 64x..64x+63.
// 1: dqkv (read_write), 2: dsum (B,NH,T), 3: qkv, 4: dout (B,T,C), 5: lse (B,NH,T), 6: seed u32
@compute @workgroup_size(64)
fn flash_attention_backward_kv(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let hs = head_size();
    let nch = chunks();
    let sc = scale();
    let group = p.nh / p.nkv;
    let b = wid.y / p.nkv;
    let g = wid.y % p.nkv;
    let cc = wid.z;
    let k0 = wid.x * WG;
    let t2 = k0 + lid;
    let key = min(t2, p.t - 1u);
    let n_qt = (p.t + BC - 1u) / BC;
    let mix = mask_mix(seed_b[0]);
    let k_base = qkv_at(b, key, 1u, g);
    let v_base = qkv_at(b, key, 2u, g);
    var kr: array<vec4<f32>, 32>;
    var vr: array<vec4<f32>, 32>;
    var dk: array<vec4<f32>, 32>;
    var dv: array<vec4<f32>, 32>;
    // Per block of four queries: q.k, then dS; dout.v, then the dropped probabilities.
    var s: array<vec4<f32>, 8>;
    var dp: array<vec4<f32>, 8>;
    for (var d = 0u; d < C4; d += 1u) {
        kr[d] = qkv4(k_base, d * 4u);
        vr[d] = qkv4(v_base, d * 4u);
        dk[d] = vec4<f32>(0.0);
        dv[d] = vec4<f32>(0.0);
    }
    for (var u = p.u_begin; u < p.u_end; u += 1u) {
        let h = g * group + u / n_qt;
        let q0 = (u % n_qt) * BC;
        // Every query of this tile comes before every key of the workgroup's: nothing to add.
        if (q0 + BC <= k0) {
            continue;
        }
        let bh = b * p.nh + h;
        for (var c = 0u; c < nch; c += 1u) {
            if (nch > 1u) {
                for (var d = 0u; d < C4; d += 1u) {
                    kr[d] = qkv4(k_base, (c * C4 + d) * 4u);
                    vr[d] = qkv4(v_base, (c * C4 + d) * 4u);
                }
            }
            workgroupBarrier();
            stage_q_dout(b, h, q0, c, lid);
            workgroupBarrier();
            for (var qb = 0u; qb < BC / 4u; qb += 1u) {
                var xs = vec4<f32>(0.0);
                var xp = vec4<f32>(0.0);
                let base = qb * 4u * C4;
                for (var d = 0u; d < C4; d += 1u) {
                    let kd = kr[d];
                    let vd = vr[d];
                    xs += vec4<f32>(dot(kd, tile_a[base + d]), dot(kd, tile_a[base + C4 + d]),
                                    dot(kd, tile_a[base + 2u * C4 + d]), dot(kd, tile_a[base + 3u * C4 + d]));
                    xp += vec4<f32>(dot(vd, tile_b[base + d]), dot(vd, tile_b[base + C4 + d]),
                                    dot(vd, tile_b[base + 2u * C4 + d]), dot(vd, tile_b[base + 3u * C4 + d]));
                }
                if (c == 0u) {
                    s[qb] = xs;
                    dp[qb] = xp;
                } else {
                    s[qb] += xs;
                    dp[qb] += xp;
                }
            }
        }
        for (var qb = 0u; qb < BC / 4u; qb += 1u) {
            let t1 = vec4<u32>(q0 + qb * 4u) + vec4<u32>(0u, 1u, 2u, 3u);
            let valid = (t1 >= vec4<u32>(key)) & (t1 < vec4<u32>(p.t));
            let pr = select(vec4<f32>(0.0), exp(s[qb] * sc - lse4(bh, t1)), valid);
            let f = factors(mix, (bh * p.t + t1.x) * p.t + key, p.t);
            s[qb] = pr * (dp[qb] * f - dsum4(bh, t1));
            dp[qb] = pr * f;
        }
        if (nch > 1u) {
            workgroupBarrier();
            stage_q_dout(b, h, q0, cc, lid);
            workgroupBarrier();
        }
        for (var qb = 0u; qb < BC / 4u; qb += 1u) {
            let ds = s[qb];
            let pd = dp[qb];
            let base = qb * 4u * C4;
            for (var d = 0u; d < C4; d += 1u) {
                dk[d] += ds.x * tile_a[base + d] + ds.y * tile_a[base + C4 + d]
                    + ds.z * tile_a[base + 2u * C4 + d] + ds.w * tile_a[base + 3u * C4 + d];
                dv[d] += pd.x * tile_b[base + d] + pd.y * tile_b[base + C4 + d]
                    + pd.z * tile_b[base + 2u * C4 + d] + pd.w * tile_b[base + 3u * C4 + d];
            }
        }
    }
    if (t2 < p.t) {
        let ko = qkv_at(b, t2, 1u, g);
        let vo = qkv_at(b, t2, 2u, g);
        for (var d = 0u; d < C4; d += 1u) {
            let col = (cc * C4 + d) * 4u;
            let k = dk[d] * sc;
            let v = dv[d];
            if (col < hs) {
                dqkv[ko + col] += k.x;
                dqkv[vo + col] += v.x;
            }
            if (col + 1u < hs) {
                dqkv[ko + col + 1u] += k.y;
                dqkv[vo + col + 1u] += v.y;
            }
            if (col + 2u < hs) {
                dqkv[ko + col + 2u] += k.z;
                dqkv[vo + col + 2u] += v.z;
            }
            if (col + 3u < hs) {
                dqkv[ko + col + 3u] += k.w;
                dqkv[vo + col + 3u] += v.w;
            }
        }
    }
}

// flash_attention_backward_q: dq[t1] += scale * sum over key tiles (in order) of dS[t1,t2] k[t2],
// with dS recomputed as in the dK/dV kernel.
// Grid: (ceil(T/64), B*NH, chunks); workgroup (x, y, z) owns columns of chunk z of queries
// 64x..64x+63 of batch y / NH, head y % NH.
// 1: dqkv (read_write), 2: dsum (B,NH,T), 3: qkv, 4: dout (B,T,C), 5: lse (B,NH,T), 6: seed u32
@compute @workgroup_size(64)
fn flash_attention_backward_q(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let hs = head_size();
    let nch = chunks();
    let sc = scale();
    let b = wid.y / p.nh;
    let h = wid.y % p.nh;
    let g = kv_head(h);
    let bh = wid.y;
    let cc = wid.z;
    let q0 = wid.x * WG;
    let t1 = q0 + lid;
    let row = min(t1, p.t - 1u);
    let n_kt = (min(q0 + WG, p.t) - 1u) / BC + 1u;
    let mix = mask_mix(seed_b[0]);
    let mrow = (bh * p.t + row) * p.t;
    let q_base = qkv_at(b, row, 0u, h);
    let lse_row = lse[bh * p.t + row];
    let d_row = dsum[bh * p.t + row];
    var qr: array<vec4<f32>, 32>;
    var dor: array<vec4<f32>, 32>;
    var dq: array<vec4<f32>, 32>;
    var s: array<vec4<f32>, 8>;
    var dp: array<vec4<f32>, 8>;
    for (var d = 0u; d < C4; d += 1u) {
        qr[d] = qkv4(q_base, d * 4u);
        dor[d] = dout4(b, row, h, d * 4u);
        dq[d] = vec4<f32>(0.0);
    }
    for (var j = 0u; j < n_kt; j += 1u) {
        let k0 = j * BC;
        for (var c = 0u; c < nch; c += 1u) {
            if (nch > 1u) {
                for (var d = 0u; d < C4; d += 1u) {
                    qr[d] = qkv4(q_base, (c * C4 + d) * 4u);
                    dor[d] = dout4(b, row, h, (c * C4 + d) * 4u);
                }
            }
            workgroupBarrier();
            stage_k_v(b, g, k0, c, lid);
            workgroupBarrier();
            for (var kb = 0u; kb < BC / 4u; kb += 1u) {
                var xs = vec4<f32>(0.0);
                var xp = vec4<f32>(0.0);
                let base = kb * 4u * C4;
                for (var d = 0u; d < C4; d += 1u) {
                    let qd = qr[d];
                    let od = dor[d];
                    xs += vec4<f32>(dot(qd, tile_a[base + d]), dot(qd, tile_a[base + C4 + d]),
                                    dot(qd, tile_a[base + 2u * C4 + d]), dot(qd, tile_a[base + 3u * C4 + d]));
                    xp += vec4<f32>(dot(od, tile_b[base + d]), dot(od, tile_b[base + C4 + d]),
                                    dot(od, tile_b[base + 2u * C4 + d]), dot(od, tile_b[base + 3u * C4 + d]));
                }
                if (c == 0u) {
                    s[kb] = xs;
                    dp[kb] = xp;
                } else {
                    s[kb] += xs;
                    dp[kb] += xp;
                }
            }
        }
        for (var kb = 0u; kb < BC / 4u; kb += 1u) {
            let t2 = vec4<u32>(k0 + kb * 4u) + vec4<u32>(0u, 1u, 2u, 3u);
            let valid = t2 <= vec4<u32>(row);
            let pr = select(vec4<f32>(0.0), exp(s[kb] * sc - lse_row), valid);
            let f = factors(mix, mrow + k0 + kb * 4u, 1u);
            s[kb] = pr * (dp[kb] * f - d_row);
        }
        if (nch > 1u) {
            workgroupBarrier();
            stage_k_v(b, g, k0, cc, lid);
            workgroupBarrier();
        }
        for (var kb = 0u; kb < BC / 4u; kb += 1u) {
            let ds = s[kb];
            let base = kb * 4u * C4;
            for (var d = 0u; d < C4; d += 1u) {
                dq[d] += ds.x * tile_a[base + d] + ds.y * tile_a[base + C4 + d]
                    + ds.z * tile_a[base + 2u * C4 + d] + ds.w * tile_a[base + 3u * C4 + d];
            }
        }
    }
    if (t1 < p.t) {
        let o = qkv_at(b, t1, 0u, h);
        for (var d = 0u; d < C4; d += 1u) {
            let col = (cc * C4 + d) * 4u;
            let v = dq[d] * sc;
            if (col < hs) {
                dqkv[o + col] += v.x;
            }
            if (col + 1u < hs) {
                dqkv[o + col + 1u] += v.y;
            }
            if (col + 2u < hs) {
                dqkv[o + col + 2u] += v.z;
            }
            if (col + 3u < hs) {
                dqkv[o + col + 3u] += v.w;
            }
        }
    }
}

// ---- the "rows" kernels: the same three passes for SIMD CPUs ----
//
// lavapipe runs a workgroup's invocations in SIMD lanes, eight at a time, and turns a workgroup with
// barriers into coroutines that save every live value at each barrier. These kernels take one SIMD
// vector per workgroup (LANES = 8), no workgroup memory and no barriers, and are built as
// matmul_rows.wgsl is: an invocation owns RR rows (queries in the forward and dQ kernels, keys in the
// dK/dV kernel) and the workgroup walks the other side in tiles of KT rows, one head column at a time.
// Per column, the KT elements of the tile's rows are read at indices that are the same for every lane
// (lavapipe loads each once and broadcasts it) and the RR elements of the invocation's own rows at
// per-lane indices; they feed RR*KT multiply-adds into the RR x KT block of scores held in registers.
// The outputs are accumulated in place, column by column (out, and dQ, dK, dV in dqkv), so no
// register array depends on the head size: one pipeline serves every head size, and its loops over
// the head run hs times per tile. Sums run in a fixed order, so a rerun gives the same bits. Same
// params and bindings as the kernels above.

const LANES: u32 = 8u;
// Rows per invocation, and rows per tile of the other side.
const RR: u32 = 8u;
const KT: u32 = 16u;

// The dropout factor (0 or 1/(1-p)) of mask element idx; 1 without dropout.
fn factor(mix: u32, idx: u32) -> f32 {
    if (p.drop == 0u) {
        return 1.0;
    }
    return select(0.0, p.drop_scale, hash(idx + mix) >= p.threshold);
}

// flash_rows_forward: flash_attention_forward's function.
// Grid: (ceil(T / (LANES*RR)), B*NH); lane i of workgroup (x, y) owns queries
// x*LANES*RR + r*LANES + i, r < RR, of batch y / NH, head y % NH.
// 1: out (read_write), 2: lse (read_write), 3: qkv, 4: seed (1) u32 (a dummy without dropout)
@compute @workgroup_size(8)
fn flash_rows_forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let hs = head_size();
    let sc = scale();
    let b = wid.y / p.nh;
    let h = wid.y % p.nh;
    let g = kv_head(h);
    let q0 = wid.x * LANES * RR;
    // Key tiles up to the workgroup's last query.
    let n_kt = (min(q0 + LANES * RR, p.t) - 1u) / KT + 1u;
    let mix = mask_mix(seed_f[0]);
    // Rows past T read row T-1 and write nothing.
    var row: array<u32, RR>;
    var qb: array<u32, RR>;
    var ob: array<u32, RR>;
    var m: array<f32, RR>;
    var l: array<f32, RR>;
    var alpha: array<f32, RR>;
    for (var r = 0u; r < RR; r += 1u) {
        row[r] = min(q0 + r * LANES + lid, p.t - 1u);
        qb[r] = qkv_at(b, row[r], 0u, h);
        ob[r] = (b * p.t + row[r]) * p.c + h * hs;
        m[r] = NEG_BIG;
        l[r] = 0.0;
    }
    for (var d = 0u; d < hs; d += 1u) {
        for (var r = 0u; r < RR; r += 1u) {
            if (q0 + r * LANES + lid < p.t) {
                out[ob[r] + d] = 0.0;
            }
        }
    }
    var kb: array<u32, KT>;
    var vb: array<u32, KT>;
    var x: array<f32, KT>;
    for (var j = 0u; j < n_kt; j += 1u) {
        let k0 = j * KT;
        for (var kk = 0u; kk < KT; kk += 1u) {
            let key = min(k0 + kk, p.t - 1u);
            kb[kk] = qkv_at(b, key, 1u, g);
            vb[kk] = qkv_at(b, key, 2u, g);
        }
        var s: array<array<f32, KT>, RR>;
        for (var d = 0u; d < hs; d += 1u) {
            for (var kk = 0u; kk < KT; kk += 1u) {
                x[kk] = qkv[kb[kk] + d];
            }
            for (var r = 0u; r < RR; r += 1u) {
                let qv = qkv[qb[r] + d];
                for (var kk = 0u; kk < KT; kk += 1u) {
                    s[r][kk] += qv * x[kk];
                }
            }
        }
        // Online softmax per row: the new running max, the factor that rescales what came before,
        // and this tile's probabilities relative to the new max (zero above the diagonal).
        for (var r = 0u; r < RR; r += 1u) {
            var mt = m[r];
            for (var kk = 0u; kk < KT; kk += 1u) {
                let sv = select(NEG_BIG, s[r][kk] * sc, k0 + kk <= row[r]);
                s[r][kk] = sv;
                mt = max(mt, sv);
            }
            alpha[r] = exp(m[r] - mt);
            m[r] = mt;
            var lt = 0.0;
            let mrow = ((b * p.nh + h) * p.t + row[r]) * p.t + k0;
            for (var kk = 0u; kk < KT; kk += 1u) {
                let e = select(0.0, exp(s[r][kk] - mt), k0 + kk <= row[r]);
                // The sum is of the undropped probabilities; the values are weighted by the dropped ones.
                lt += e;
                s[r][kk] = e * factor(mix, mrow + kk);
            }
            l[r] = l[r] * alpha[r] + lt;
        }
        for (var d = 0u; d < hs; d += 1u) {
            for (var kk = 0u; kk < KT; kk += 1u) {
                x[kk] = qkv[vb[kk] + d];
            }
            for (var r = 0u; r < RR; r += 1u) {
                var o = 0.0;
                for (var kk = 0u; kk < KT; kk += 1u) {
                    o += s[r][kk] * x[kk];
                }
                if (q0 + r * LANES + lid < p.t) {
                    out[ob[r] + d] = out[ob[r] + d] * alpha[r] + o;
                }
            }
        }
    }
    var inv: array<f32, RR>;
    for (var r = 0u; r < RR; r += 1u) {
        inv[r] = 1.0 / l[r];
    }
    for (var d = 0u; d < hs; d += 1u) {
        for (var r = 0u; r < RR; r += 1u) {
            if (q0 + r * LANES + lid < p.t) {
                out[ob[r] + d] *= inv[r];
            }
        }
    }
    for (var r = 0u; r < RR; r += 1u) {
        let t1 = q0 + r * LANES + lid;
        if (t1 < p.t) {
            lse_out[(b * p.nh + h) * p.t + t1] = m[r] + log(l[r]);
        }
    }
}

// flash_rows_backward_kv: flash_attention_backward_kv's function, over the same (query head, query
// tile) pairs u_begin..u_end but in tiles of KT queries (kernels::flash_rows_pairs).
// Grid: (ceil(T / (LANES*RR)), B*NKV); lane i of workgroup (x, y) owns keys x*LANES*RR + r*LANES + i,
// r < RR, of batch y / NKV, kv head y % NKV.
// 1: dqkv (read_write), 2: dsum (B,NH,T), 3: qkv, 4: dout (B,T,C), 5: lse (B,NH,T), 6: seed u32
@compute @workgroup_size(8)
fn flash_rows_backward_kv(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let hs = head_size();
    let sc = scale();
    let group = p.nh / p.nkv;
    let b = wid.y / p.nkv;
    let g = wid.y % p.nkv;
    let k0 = wid.x * LANES * RR;
    let n_qt = (p.t + KT - 1u) / KT;
    let mix = mask_mix(seed_b[0]);
    var key: array<u32, RR>;
    var kb: array<u32, RR>;
    var vb: array<u32, RR>;
    for (var r = 0u; r < RR; r += 1u) {
        key[r] = min(k0 + r * LANES + lid, p.t - 1u);
        kb[r] = qkv_at(b, key[r], 1u, g);
        vb[r] = qkv_at(b, key[r], 2u, g);
    }
    var qb: array<u32, KT>;
    var ob: array<u32, KT>;
    var x: array<f32, KT>;
    var y: array<f32, KT>;
    for (var u = p.u_begin; u < p.u_end; u += 1u) {
        let h = g * group + u / n_qt;
        let q0 = (u % n_qt) * KT;
        // Every query of this tile comes before every key of the workgroup's: nothing to add.
        if (q0 + KT <= k0) {
            continue;
        }
        let bh = b * p.nh + h;
        for (var kk = 0u; kk < KT; kk += 1u) {
            let t1 = min(q0 + kk, p.t - 1u);
            qb[kk] = qkv_at(b, t1, 0u, h);
            ob[kk] = (b * p.t + t1) * p.c + h * hs;
        }
        // q.k, then dS; dout.v, then the dropped probabilities.
        var s: array<array<f32, KT>, RR>;
        var dp: array<array<f32, KT>, RR>;
        for (var d = 0u; d < hs; d += 1u) {
            for (var kk = 0u; kk < KT; kk += 1u) {
                x[kk] = qkv[qb[kk] + d];
                y[kk] = dout[ob[kk] + d];
            }
            for (var r = 0u; r < RR; r += 1u) {
                let kv = qkv[kb[r] + d];
                let vv = qkv[vb[r] + d];
                for (var kk = 0u; kk < KT; kk += 1u) {
                    s[r][kk] += kv * x[kk];
                    dp[r][kk] += vv * y[kk];
                }
            }
        }
        for (var kk = 0u; kk < KT; kk += 1u) {
            let t1 = q0 + kk;
            let tc = min(t1, p.t - 1u);
            let lse_t = lse[bh * p.t + tc];
            let d_t = dsum[bh * p.t + tc];
            for (var r = 0u; r < RR; r += 1u) {
                let pr = select(0.0, exp(s[r][kk] * sc - lse_t), t1 >= key[r] && t1 < p.t);
                let f = factor(mix, (bh * p.t + tc) * p.t + key[r]);
                s[r][kk] = pr * (dp[r][kk] * f - d_t) * sc;
                dp[r][kk] = pr * f;
            }
        }
        for (var d = 0u; d < hs; d += 1u) {
            for (var kk = 0u; kk < KT; kk += 1u) {
                x[kk] = qkv[qb[kk] + d];
                y[kk] = dout[ob[kk] + d];
            }
            for (var r = 0u; r < RR; r += 1u) {
                var dk = 0.0;
                var dv = 0.0;
                for (var kk = 0u; kk < KT; kk += 1u) {
                    dk += s[r][kk] * x[kk];
                    dv += dp[r][kk] * y[kk];
                }
                if (k0 + r * LANES + lid < p.t) {
                    dqkv[kb[r] + d] += dk;
                    dqkv[vb[r] + d] += dv;
                }
            }
        }
    }
}

// flash_rows_backward_q: flash_attention_backward_q's function, in tiles of KT keys.
// Grid and rows as flash_rows_forward.
// 1: dqkv (read_write), 2: dsum (B,NH,T), 3: qkv, 4: dout (B,T,C), 5: lse (B,NH,T), 6: seed u32
@compute @workgroup_size(8)
fn flash_rows_backward_q(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let hs = head_size();
    let sc = scale();
    let b = wid.y / p.nh;
    let h = wid.y % p.nh;
    let g = kv_head(h);
    let bh = wid.y;
    let q0 = wid.x * LANES * RR;
    let n_kt = (min(q0 + LANES * RR, p.t) - 1u) / KT + 1u;
    let mix = mask_mix(seed_b[0]);
    var row: array<u32, RR>;
    var qb: array<u32, RR>;
    var ob: array<u32, RR>;
    var lse_r: array<f32, RR>;
    var d_r: array<f32, RR>;
    for (var r = 0u; r < RR; r += 1u) {
        row[r] = min(q0 + r * LANES + lid, p.t - 1u);
        qb[r] = qkv_at(b, row[r], 0u, h);
        ob[r] = (b * p.t + row[r]) * p.c + h * hs;
        lse_r[r] = lse[bh * p.t + row[r]];
        d_r[r] = dsum[bh * p.t + row[r]];
    }
    var kb: array<u32, KT>;
    var vb: array<u32, KT>;
    var x: array<f32, KT>;
    var y: array<f32, KT>;
    for (var j = 0u; j < n_kt; j += 1u) {
        let k0 = j * KT;
        for (var kk = 0u; kk < KT; kk += 1u) {
            let key = min(k0 + kk, p.t - 1u);
            kb[kk] = qkv_at(b, key, 1u, g);
            vb[kk] = qkv_at(b, key, 2u, g);
        }
        var s: array<array<f32, KT>, RR>;
        var dp: array<array<f32, KT>, RR>;
        for (var d = 0u; d < hs; d += 1u) {
            for (var kk = 0u; kk < KT; kk += 1u) {
                x[kk] = qkv[kb[kk] + d];
                y[kk] = qkv[vb[kk] + d];
            }
            for (var r = 0u; r < RR; r += 1u) {
                let qv = qkv[qb[r] + d];
                let ov = dout[ob[r] + d];
                for (var kk = 0u; kk < KT; kk += 1u) {
                    s[r][kk] += qv * x[kk];
                    dp[r][kk] += ov * y[kk];
                }
            }
        }
        for (var r = 0u; r < RR; r += 1u) {
            let mrow = (bh * p.t + row[r]) * p.t + k0;
            for (var kk = 0u; kk < KT; kk += 1u) {
                let pr = select(0.0, exp(s[r][kk] * sc - lse_r[r]), k0 + kk <= row[r]);
                s[r][kk] = pr * (dp[r][kk] * factor(mix, mrow + kk) - d_r[r]) * sc;
            }
        }
        for (var d = 0u; d < hs; d += 1u) {
            for (var kk = 0u; kk < KT; kk += 1u) {
                x[kk] = qkv[kb[kk] + d];
            }
            for (var r = 0u; r < RR; r += 1u) {
                var dq = 0.0;
                for (var kk = 0u; kk < KT; kk += 1u) {
                    dq += s[r][kk] * x[kk];
                }
                if (q0 + r * LANES + lid < p.t) {
                    dqkv[qb[r] + d] += dq;
                }
            }
        }
    }
}
