// Token + position embedding, forward and backward; models whose positions come from RoPE have no
// position embedding (has_wpe = 0: the wpe binding is a dummy that is never read).
//
// Binding 0 of every entry is the uniform `Params`; bindings 1, 2, ... are the entry's buffers in the
// order listed beside it.
// Grid: one invocation per output element, 64 per workgroup, folded into (x, y) above 65,535
// workgroups. The backward pass uses no atomics: `order` lists positions sorted by token (computed on
// the host when the tokens are uploaded), so each token's rows are summed by one invocation, in order.

struct Params {
    b: u32,
    t: u32,
    c: u32,
    has_wpe: u32,
}

@group(0) @binding(0) var<uniform> p: Params;

const WG: u32 = 64u;

fn flat(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return (wid.y * nwg.x + wid.x) * WG + lid;
}

// encoder_forward: out (B,T,C) = wte[tokens[b,t]] + wpe[t], or wte[tokens[b,t]] when has_wpe is 0.
// Grid: B*T*C invocations.
// 1: out (read_write), 2: tokens (B,T) u32, 3: wte (V,C), 4: wpe (>=T,C) (a dummy without wpe)
@group(0) @binding(1) var<storage, read_write> out: array<f32>;
@group(0) @binding(2) var<storage, read> tokens: array<u32>;
@group(0) @binding(3) var<storage, read> wte: array<f32>;
@group(0) @binding(4) var<storage, read> wpe: array<f32>;

@compute @workgroup_size(64)
fn encoder_forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                   @builtin(local_invocation_index) lid: u32) {
    let idx = flat(wid, nwg, lid);
    if (idx >= p.b * p.t * p.c) {
        return;
    }
    let bt = idx / p.c;
    let i = idx % p.c;
    if (p.has_wpe != 0u) {
        out[idx] = wte[tokens[bt] * p.c + i] + wpe[(bt % p.t) * p.c + i];
    } else {
        out[idx] = wte[tokens[bt] * p.c + i];
    }
}

// encoder_backward_wte: dwte (V,C) += the rows of dout whose token is each v. Grid: B*T*C invocations;
// invocation (j, i) sums channel i of the run of equal tokens that starts at sorted position j, if one
// does, and does nothing otherwise.
// 1: dwte (read_write), 2: dout (B,T,C), 3: tokens (B,T) u32, 4: order (B*T) u32
@group(0) @binding(1) var<storage, read_write> dwte: array<f32>;
@group(0) @binding(2) var<storage, read> dout: array<f32>;
@group(0) @binding(3) var<storage, read> bw_tokens: array<u32>;
@group(0) @binding(4) var<storage, read> order: array<u32>;

@compute @workgroup_size(64)
fn encoder_backward_wte(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                        @builtin(local_invocation_index) lid: u32) {
    let n = p.b * p.t;
    let idx = flat(wid, nwg, lid);
    if (idx >= n * p.c) {
        return;
    }
    let j = idx / p.c;
    let i = idx % p.c;
    let tok = bw_tokens[order[j]];
    if (j > 0u && bw_tokens[order[j - 1u]] == tok) {
        return;
    }
    var s = 0.0;
    var k = j;
    loop {
        if (k >= n) {
            break;
        }
        let pos = order[k];
        if (bw_tokens[pos] != tok) {
            break;
        }
        s += dout[pos * p.c + i];
        k += 1u;
    }
    dwte[tok * p.c + i] += s;
}

// encoder_backward_wpe: dwpe (>=T,C) += sum over b of dout[b,t]. Grid: T*C invocations.
// 1: dwpe (read_write), 2: dout (B,T,C)
@group(0) @binding(1) var<storage, read_write> dwpe: array<f32>;

@compute @workgroup_size(64)
fn encoder_backward_wpe(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                        @builtin(local_invocation_index) lid: u32) {
    let idx = flat(wid, nwg, lid);
    if (idx >= p.t * p.c) {
        return;
    }
    var s = 0.0;
    for (var b = 0u; b < p.b; b += 1u) {
        s += dout[b * p.t * p.c + idx];
    }
    dwpe[idx] += s;
}
