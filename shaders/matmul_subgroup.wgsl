// General matrix product, variant "subgroup": out (M,N) (+)= op(a) · op(b) (+ bias), f32, with the
// binding contract of matmul.wgsl (docs/KERNELS.md). Any shape, any layout (TRANS_A, TRANS_B). Needs
// the adapter's subgroup operations (wgpu's SUBGROUP feature).
//
// The 64 invocations of a workgroup form 64/X lane groups of X lanes (X a power of two no larger than
// the adapter's smallest subgroup, so a lane group never straddles two subgroups). The lanes of a group
// share R rows and take neighbouring blocks of 4 columns. Per X steps along K, each lane loads ONE
// element of a per row (element k0 + lane) and the group passes them round with subgroupShuffle: X
// times fewer loads of a than if every lane read every element, and the four loads of b per step are
// contiguous across the lanes.
//
// Every lane runs every shuffle (no early return; rows and columns past the edge are clamped on load
// and skipped on store), and the trip counts depend only on uniform values, as shuffles require.
//
// Grid: (ceil(N / (4*X)), ceil(M / (R*64/X))) workgroups of 64.

struct Params {
    m: u32,
    k: u32,
    n: u32,
    flags: u32,
    k_begin: u32,
    k_end: u32,
}

override TRANS_A: bool = false;
override TRANS_B: bool = false;
// Lanes per lane group; the host sets it from the adapter's smallest subgroup size.
override X: u32 = 8u;

const R: u32 = 8u;
const WG: u32 = 64u;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> out: array<f32>;
@group(0) @binding(2) var<storage, read> a: array<f32>;
@group(0) @binding(3) var<storage, read> b: array<f32>;
@group(0) @binding(4) var<storage, read> bias: array<f32>;

fn load_a(i: u32, kk: u32) -> f32 {
    if (TRANS_A) {
        return a[kk * p.m + i];
    }
    return a[i * p.k + kk];
}

fn load_b(kk: u32, j: u32) -> f32 {
    if (TRANS_B) {
        return b[j * p.k + kk];
    }
    return b[kk * p.n + j];
}

@compute @workgroup_size(64)
fn matmul_subgroup(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(subgroup_id) sg_id: u32,
    @builtin(subgroup_size) sg_size: u32,
    @builtin(subgroup_invocation_id) sg_lane: u32,
) {
    // The invocation's place is numbered from its subgroup and its lane in it, never from
    // local_invocation_index: WGSL does not tie the two together. With full subgroups (64 is a
    // multiple of every subgroup size up to 64; a larger subgroup holds the whole workgroup) `flat`
    // numbers the 64 invocations 0..63, and X divides the subgroup size, so a lane group of X lanes
    // lies within one subgroup, starting at lane `base`.
    let flat = sg_id * sg_size + sg_lane;
    let lane = flat % X;
    let row0 = (wid.y * (WG / X) + flat / X) * R;
    let col0 = (wid.x * X + lane) * 4u;
    let base = sg_lane - lane;
    let last_row = p.m - 1u;
    let last_col = p.n - 1u;
    let c0 = min(col0, last_col);
    let c1 = min(col0 + 1u, last_col);
    let c2 = min(col0 + 2u, last_col);
    let c3 = min(col0 + 3u, last_col);
    var acc: array<vec4<f32>, R>;
    var mine: array<f32, R>;
    for (var k0 = p.k_begin; k0 < p.k_end; k0 += X) {
        let steps = min(X, p.k_end - k0);
        // Lanes past the end of K load a valid element nobody reads.
        let ka = min(k0 + lane, p.k_end - 1u);
        for (var i = 0u; i < R; i += 1u) {
            mine[i] = load_a(min(row0 + i, last_row), ka);
        }
        for (var j = 0u; j < steps; j += 1u) {
            let kk = k0 + j;
            let bv = vec4<f32>(load_b(kk, c0), load_b(kk, c1), load_b(kk, c2), load_b(kk, c3));
            for (var i = 0u; i < R; i += 1u) {
                acc[i] += subgroupShuffle(mine[i], base + j) * bv;
            }
        }
    }
    for (var i = 0u; i < R; i += 1u) {
        let row = row0 + i;
        if (row >= p.m) {
            break;
        }
        for (var e = 0u; e < 4u; e += 1u) {
            let col = col0 + e;
            if (col < p.n) {
                let idx = row * p.n + col;
                var x = acc[i][e];
                if ((p.flags & 2u) != 0u) {
                    x += bias[col];
                }
                if ((p.flags & 1u) != 0u) {
                    x += out[idx];
                }
                out[idx] = x;
            }
        }
    }
}
