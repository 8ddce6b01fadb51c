// Incremental decoding (sampling with a key/value cache): one new position at a time, at the row
// `row[0]` that the host writes into a one-word buffer, so one prepared program serves every position.
//
// Binding 0 of every entry is the uniform `Params`; bindings 1.. are listed per entry.

struct Params {
    // gather_row, scatter_row: elements per row. attention_decode: rows of qkv (T).
    w: u32,
    // attention_decode: C = NH·hd, NH, NKV.
    c: u32,
    nh: u32,
    nkv: u32,
}

@group(0) @binding(0) var<uniform> p: Params;

const WG: u32 = 64u;

// gather_row: out (w) = inp[row[0]] of inp (rows, w).
// 1: out (read_write), 2: inp, 3: row (1 u32)
@group(0) @binding(1) var<storage, read_write> out: array<f32>;
@group(0) @binding(2) var<storage, read> inp: array<f32>;
@group(0) @binding(3) var<storage, read> row: array<u32>;

// The flat invocation id of a grid folded into (x, y) past 65,535 workgroups.
fn flat(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return (wid.y * nwg.x + wid.x) * WG + lid;
}

@compute @workgroup_size(64)
fn gather_row(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
              @builtin(local_invocation_index) lid: u32) {
    let i = flat(wid, nwg, lid);
    if (i < p.w) {
        out[i] = inp[row[0] * p.w + i];
    }
}

// scatter_row: out[row[0]] = inp (w) in out (rows, w).
// 1: out (read_write), 2: inp, 3: row (1 u32)
@compute @workgroup_size(64)
fn scatter_row(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32) {
    let i = flat(wid, nwg, lid);
    if (i < p.w) {
        out[row[0] * p.w + i] = inp[i];
    }
}

// attention_decode: causal attention of the one query at row pos = row[0] of qkv (T, W) over the
// keys and values of rows 0..=pos (the cache), W = (NH + 2·NKV)·hd. out (C): head h's output at
// h·hd. One workgroup per query head. Keys go in tiles of TILE: each tile's scores land in workgroup
// memory and become exp(score - running maximum) in place, the running maximum and sum are updated
// (online softmax), and each invocation rescales and adds to the output elements it owns (d = lid, lid + 64, ...), which live in `out` until the end.
// Every sum runs in key order, so reruns give the same bits.
// 1: out (read_write), 2: qkv (as inp), 3: row (1 u32)
const TILE: u32 = 256u;
var<workgroup> scores: array<f32, 256>;
var<workgroup> partial: array<f32, 64>;

@compute @workgroup_size(64)
fn attention_decode(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                    @builtin(local_invocation_index) lid: u32) {
    let h = wid.y * nwg.x + wid.x;
    if (h >= p.nh) {
        return;
    }
    let hd = p.c / p.nh;
    let kvh = h / (p.nh / p.nkv);
    let width = p.c + 2u * p.nkv * hd;
    let pos = row[0];
    let q = pos * width + h * hd;
    let k_col = p.c + kvh * hd;
    let v_col = p.c + p.nkv * hd + kvh * hd;
    let scale = 1.0 / sqrt(f32(hd));
    for (var d = lid; d < hd; d += WG) {
        out[h * hd + d] = 0.0;
    }
    var m = -3.0e38;
    var l = 0.0;
    for (var start = 0u; start <= pos; start += TILE) {
        let count = min(TILE, pos + 1u - start);
        var local_max = -3.0e38;
        for (var j = lid; j < count; j += WG) {
            let k = (start + j) * width + k_col;
            var s = 0.0;
            for (var d = 0u; d < hd; d++) {
                s += inp[q + d] * inp[k + d];
            }
            scores[j] = s * scale;
            local_max = max(local_max, s * scale);
        }
        partial[lid] = local_max;
        workgroupBarrier();
        // Every invocation reads the same 64 values in the same order: the same maximum everywhere.
        var tile_max = partial[0];
        for (var i = 1u; i < WG; i++) {
            tile_max = max(tile_max, partial[i]);
        }
        let m_new = max(m, tile_max);
        let alpha = exp(m - m_new);
        // Each invocation turns its own scores into unnormalised probabilities, once.
        for (var j = lid; j < count; j += WG) {
            scores[j] = exp(scores[j] - m_new);
        }
        workgroupBarrier();
        var tile_sum = 0.0;
        for (var j = 0u; j < count; j++) {
            tile_sum += scores[j];
        }
        l = l * alpha + tile_sum;
        for (var d = lid; d < hd; d += WG) {
            var acc = out[h * hd + d] * alpha;
            for (var j = 0u; j < count; j++) {
                acc += scores[j] * inp[(start + j) * width + v_col + d];
            }
            out[h * hd + d] = acc;
        }
        m = m_new;
        workgroupBarrier();
    }
    for (var d = lid; d < hd; d += WG) {
        out[h * hd + d] = out[h * hd + d] / l;
    }
}
