// Elementwise kernels: zero, GELU (tanh approximation, HF "gelu_new"), residual add, SwiGLU.
//
// Binding 0 of every entry is the uniform `Params { n, i }` (i: the gate width of SwiGLU, unused by
// the others); bindings 1.. are listed per entry.
// Grid: one invocation per element, ceil(n / 64) workgroups of 64, folded into (x, y) when there are
// more than 65,535 (the flat workgroup id is wid.y * nwg.x + wid.x).

struct Params {
    n: u32,
    i: u32,
}

@group(0) @binding(0) var<uniform> p: Params;

const WG: u32 = 64u;
// sqrt(2 / pi)
const GELU_SCALE: f32 = 0.7978845608028654;

fn flat(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return (wid.y * nwg.x + wid.x) * WG + lid;
}

// tanh, clamped: some drivers compute tanh through exp and return NaN for large arguments, and
// tanh(±15) is ±1 in f32 anyway.
fn tanh_safe(x: f32) -> f32 {
    return tanh(clamp(x, -15.0, 15.0));
}

// zero: out (n) = 0.
// 1: out (read_write)
@group(0) @binding(1) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(64)
fn zero(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let i = flat(wid, nwg, lid);
    if (i < p.n) {
        out[i] = 0.0;
    }
}

// gelu_forward: out (n) = 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))).
// 1: out (read_write), 2: inp
@group(0) @binding(2) var<storage, read> inp: array<f32>;

@compute @workgroup_size(64)
fn gelu_forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_index) lid: u32) {
    let i = flat(wid, nwg, lid);
    if (i < p.n) {
        let x = inp[i];
        out[i] = 0.5 * x * (1.0 + tanh_safe(GELU_SCALE * (x + 0.044715 * x * x * x)));
    }
}

// gelu_backward: dinp (n) += gelu'(inp) * dout.
// 1: dinp (read_write), 2: inp, 3: dout
@group(0) @binding(1) var<storage, read_write> dinp: array<f32>;
@group(0) @binding(3) var<storage, read> dout: array<f32>;

@compute @workgroup_size(64)
fn gelu_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                 @builtin(local_invocation_index) lid: u32) {
    let i = flat(wid, nwg, lid);
    if (i < p.n) {
        let x = inp[i];
        let th = tanh_safe(GELU_SCALE * (x + 0.044715 * x * x * x));
        let sech2 = 1.0 - th * th;
        let grad = 0.5 * (1.0 + th) + 0.5 * x * sech2 * GELU_SCALE * (1.0 + 3.0 * 0.044715 * x * x);
        dinp[i] += grad * dout[i];
    }
}

// residual_forward: out (n) = inp1 + inp2.
// 1: out (read_write), 2: inp1, 3: inp2
@group(0) @binding(2) var<storage, read> inp1: array<f32>;
@group(0) @binding(3) var<storage, read> inp2: array<f32>;

@compute @workgroup_size(64)
fn residual_forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                    @builtin(local_invocation_index) lid: u32) {
    let i = flat(wid, nwg, lid);
    if (i < p.n) {
        out[i] = inp1[i] + inp2[i];
    }
}

// residual_backward: dinp1 (n) += dout; dinp2 (n) += dout.
// 1: dinp1 (read_write), 2: dinp2 (read_write), 3: dout
@group(0) @binding(2) var<storage, read_write> dinp2: array<f32>;

@compute @workgroup_size(64)
fn residual_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                     @builtin(local_invocation_index) lid: u32) {
    let i = flat(wid, nwg, lid);
    if (i < p.n) {
        let d = dout[i];
        dinp[i] += d;
        dinp2[i] += d;
    }
}

// The logistic sigmoid, in a form whose exp never overflows: exp of a non-positive number only
// (1 / (1 + exp(-g)) would take exp(88+) to infinity for g below about -88).
fn sigmoid(g: f32) -> f32 {
    if (g >= 0.0) {
        return 1.0 / (1.0 + exp(-g));
    }
    let e = exp(g);
    return e / (1.0 + e);
}

// swiglu_forward: out (N,I) = silu(g) * u with silu(g) = g * sigmoid(g), where row r of inp (N,2I) is
// [g (I) | u (I)]; n = N*I output elements.
// 1: out (read_write), 2: inp (N,2I)
@compute @workgroup_size(64)
fn swiglu_forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                  @builtin(local_invocation_index) lid: u32) {
    let idx = flat(wid, nwg, lid);
    if (idx < p.n) {
        let g_at = idx + (idx / p.i) * p.i;
        let g = inp[g_at];
        out[idx] = g * sigmoid(g) * inp[g_at + p.i];
    }
}

// swiglu_backward: dinp (N,2I) += [dout * u * silu'(g) | dout * silu(g)], with
// silu'(g) = s * (1 + g * (1 - s)) and s = sigmoid(g); n = N*I. Each invocation owns one (g, u) pair,
// so the two elements it writes are its own.
// 1: dinp (read_write), 2: inp (N,2I), 3: dout (N,I)
@compute @workgroup_size(64)
fn swiglu_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                   @builtin(local_invocation_index) lid: u32) {
    let idx = flat(wid, nwg, lid);
    if (idx < p.n) {
        let g_at = idx + (idx / p.i) * p.i;
        let g = inp[g_at];
        let u = inp[g_at + p.i];
        let d = dout[idx];
        let s = sigmoid(g);
        dinp[g_at] += d * u * s * (1.0 + g * (1.0 - s));
        dinp[g_at + p.i] += d * g * s;
    }
}
