// Rotary position embedding, Hugging Face's "rotate half" convention: forward and backward.
//
// Rows of `width` elements; in each of the first `heads` chunks of `hd` elements of row r, element
// i < hd/2 pairs with element i + hd/2 and the pair is rotated by the angle of position
// positions[r]: cos = table[p*hd + i], sin = table[p*hd + hd/2 + i]. Columns past heads*hd are not
// rotated (the v part of a packed qkv row, say).
//
// Binding 0 of every entry is the uniform `Params { n, width, heads, hd }`; bindings 1, 2, ... are the
// entry's buffers in the order listed beside it. Grid: one invocation per element of a row,
// ceil(n*width / 64) workgroups of 64, folded into (x, y) above 65,535 (the flat workgroup id is
// wid.y * nwg.x + wid.x). Each invocation writes only its own element, so there are no races.

struct Params {
    n: u32,
    width: u32,
    heads: u32,
    hd: u32,
}

@group(0) @binding(0) var<uniform> p: Params;

const WG: u32 = 64u;

fn flat(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return (wid.y * nwg.x + wid.x) * WG + lid;
}

@group(0) @binding(3) var<storage, read> positions: array<u32>;
@group(0) @binding(4) var<storage, read> table: array<f32>;

// rope_forward: out (N,width) = the rotation of inp on the rotated chunks, inp elsewhere:
// out[i] = x[i]*cos - x[i+hd/2]*sin, out[i+hd/2] = x[i+hd/2]*cos + x[i]*sin.
// Grid: N*width invocations.
// 1: out (read_write), 2: inp (N,width), 3: positions (N) u32, 4: table (rows, hd)
@group(0) @binding(1) var<storage, read_write> out: array<f32>;
@group(0) @binding(2) var<storage, read> inp: array<f32>;

@compute @workgroup_size(64)
fn rope_forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_index) lid: u32) {
    let idx = flat(wid, nwg, lid);
    if (idx >= p.n * p.width) {
        return;
    }
    let col = idx % p.width;
    if (col >= p.heads * p.hd) {
        out[idx] = inp[idx];
        return;
    }
    let half = p.hd / 2u;
    let i = col % p.hd;
    let pair = i % half;
    let t = positions[idx / p.width] * p.hd;
    let cos_a = table[t + pair];
    let sin_a = table[t + half + pair];
    if (i < half) {
        out[idx] = inp[idx] * cos_a - inp[idx + half] * sin_a;
    } else {
        out[idx] = inp[idx] * cos_a + inp[idx - half] * sin_a;
    }
}

// rope_backward: dinp (N,width) += the rotation by minus the angle of dout on the rotated chunks,
// dout elsewhere: dinp[i] += dout[i]*cos + dout[i+hd/2]*sin, dinp[i+hd/2] += dout[i+hd/2]*cos -
// dout[i]*sin. Grid: N*width invocations.
// 1: dinp (read_write), 2: dout (N,width), 3: positions (N) u32, 4: table (rows, hd)
@group(0) @binding(1) var<storage, read_write> dinp: array<f32>;
@group(0) @binding(2) var<storage, read> dout: array<f32>;

@compute @workgroup_size(64)
fn rope_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                 @builtin(local_invocation_index) lid: u32) {
    let idx = flat(wid, nwg, lid);
    if (idx >= p.n * p.width) {
        return;
    }
    let col = idx % p.width;
    if (col >= p.heads * p.hd) {
        dinp[idx] += dout[idx];
        return;
    }
    let half = p.hd / 2u;
    let i = col % p.hd;
    let pair = i % half;
    let t = positions[idx / p.width] * p.hd;
    let cos_a = table[t + pair];
    let sin_a = table[t + half + pair];
    if (i < half) {
        dinp[idx] += dout[idx] * cos_a + dout[idx + half] * sin_a;
    } else {
        dinp[idx] += dout[idx] * cos_a - dout[idx - half] * sin_a;
    }
}
