// Elementwise kernels: zero, GELU (tanh approximation, HF "gelu_new"), residual add.
//
// Binding 0 of every entry is the uniform `Params { n }`; bindings 1.. are listed per entry.
// Grid: one invocation per element, ceil(n / 64) workgroups of 64, folded into (x, y) when there are
// more than 65,535 (the flat workgroup id is wid.y * nwg.x + wid.x).

struct Params {
    n: u32,
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
