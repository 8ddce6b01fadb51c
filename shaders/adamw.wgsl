// The optimizer: AdamW.
//
// Binding 0 is the uniform `Params { n, weight_decay }`; bindings 1, 2, ... are listed below.

struct Params {
    n: u32,
    weight_decay: f32,
}

@group(0) @binding(0) var<uniform> p: Params;

// adamw_update: PyTorch's AdamW on n elements, after scaling grads by the clip factor
// min(1, clip / (norm + 1e-6)). A non-finite norm (a NaN or Inf anywhere in the gradients) skips the
// update, so one bad batch cannot poison the weights. The weight decay is decoupled.
// hyper (8 f32): lr, beta1, beta2, eps, 1 - beta1^t, 1 - beta2^t, clip (0: off), unscale (1 / the
// loss scale of f16 training, a power of two; 1 otherwise: the gradients and their norm are
// multiplied by it first, exactly).
// Grid: ceil(n / 64) workgroups of 64, folded into (x, y).
// 1: params (read_write), 2: m (read_write), 3: v (read_write), 4: grads, 5: hyper (8), 6: norm (1)
@group(0) @binding(1) var<storage, read_write> params: array<f32>;
@group(0) @binding(2) var<storage, read_write> m: array<f32>;
@group(0) @binding(3) var<storage, read_write> v: array<f32>;
@group(0) @binding(4) var<storage, read> grads: array<f32>;
@group(0) @binding(5) var<storage, read> hyper: array<f32>;
@group(0) @binding(6) var<storage, read> norm: array<f32>;

fn is_finite(x: f32) -> bool {
    return (bitcast<u32>(x) & 0x7f800000u) != 0x7f800000u;
}

@compute @workgroup_size(64)
fn adamw_update(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_index) lid: u32) {
    let i = (wid.y * nwg.x + wid.x) * 64u + lid;
    let unscale = hyper[7];
    let gn = norm[0] * unscale;
    if (i >= p.n || !is_finite(gn)) {
        return;
    }
    let lr = hyper[0];
    let b1 = hyper[1];
    let b2 = hyper[2];
    let eps = hyper[3];
    let bc1 = hyper[4];
    let bc2 = hyper[5];
    let clip = hyper[6];
    var s = 1.0;
    if (clip > 0.0) {
        s = min(1.0, clip / (gn + 1e-6));
    }
    let g = grads[i] * unscale * s;
    let mi = b1 * m[i] + (1.0 - b1) * g;
    let vi = b2 * v[i] + (1.0 - b2) * g * g;
    m[i] = mi;
    v[i] = vi;
    let decayed = params[i] * (1.0 - lr * p.weight_decay);
    params[i] = decayed - (lr / bc1) * mi / (sqrt(vi) / sqrt(bc2) + eps);
}
