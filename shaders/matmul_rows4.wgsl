// General matrix product, variant "rows32x16k4": out (M,N) (+)= op(a) · op(b) (+ bias), f32, with the
// binding contract of matmul.wgsl (docs/KERNELS.md), for SIMD CPU targets such as lavapipe.
//
// matmul_rows.wgsl's scheme (invocations differ only in their rows, so every load of b is uniform
// across the SIMD lanes), walking K four deep: each step reads a vec4 of a per row of the invocation
// (op(a)[row, k..k+4]) and four rows of b, and adds a four-term dot product to each sum. On lavapipe
// this takes a quarter of the per-lane loads of a and a quarter of the read-modify-writes of the sums
// (which live in memory: R x 4·C4 of them per lane is more than a CPU's registers), and runs 1.0–2.2x
// as fast as rows16x32, about 1.5x at the median (docs/BENCHMARKS.md).
//
// a is read as vec4s, so a's rows along its stored dimension must be whole vec4s: with a stored
// (M,K) (flags bit 2 clear), K % 4 == 0, and the vec4 holds four steps of K; with a stored (K,M)
// (bit 2 set), M % 4 == 0, and four vec4s (one per K step) hold four rows each. The host runs
// rows16x32 for other shapes. K steps past `k_end` (a tail of K % 4 with a stored (K,M)) read as
// zeros, in a as in b. b's layout comes from bit 3 (b stored (N,K)). One pipeline serves every layout.
//
// Grid: (ceil(N / (4*C4)), ceil(M / (WG*R))) workgroups of WG invocations; `k_begin` a multiple of 4.

struct Params {
    m: u32,
    k: u32,
    n: u32,
    flags: u32,
    k_begin: u32,
    k_end: u32,
}

const R: u32 = 32u;
const C4: u32 = 4u;
const WG: u32 = 8u;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> out: array<f32>;
@group(0) @binding(2) var<storage, read> a: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> b: array<f32>;
@group(0) @binding(4) var<storage, read> bias: array<f32>;

@compute @workgroup_size(8)
fn matmul_rows4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let row0 = (wid.y * WG + lid) * R;
    let col0 = wid.x * C4 * 4u;
    let last_col = p.n - 1u;
    let trans_a = (p.flags & 4u) != 0u;
    let trans_b = (p.flags & 8u) != 0u;
    // Element (kk, j) of op(b) is b[kk * b_k + j * b_col].
    let b_k = select(p.n, 1u, trans_b);
    let b_col = select(1u, p.k, trans_b);
    // Row i's vec4 in a stored (M,K): a[min(row0 + i, M - 1) * K/4 + kq]. In a stored (K,M): a[kk * M/4
    // + min(row0/4 + q, M/4 - 1)] holds rows row0 + 4q .. row0 + 4q + 3 of K step kk.
    let k4 = p.k / 4u;
    let m4 = p.m / 4u;
    var acc: array<array<vec4<f32>, C4>, R>;
    var av: array<vec4<f32>, R>;
    var bv: array<array<vec4<f32>, C4>, 4>;
    for (var kq = p.k_begin / 4u; kq < (p.k_end + 3u) / 4u; kq += 1u) {
        for (var s = 0u; s < 4u; s += 1u) {
            let kk = 4u * kq + s;
            let live = kk < p.k_end;
            let b0 = min(kk, p.k - 1u) * b_k;
            for (var j = 0u; j < C4; j += 1u) {
                let c = col0 + 4u * j;
                let v = vec4<f32>(b[b0 + min(c, last_col) * b_col], b[b0 + min(c + 1u, last_col) * b_col],
                                  b[b0 + min(c + 2u, last_col) * b_col],
                                  b[b0 + min(c + 3u, last_col) * b_col]);
                bv[s][j] = select(vec4<f32>(0.0), v, live);
            }
        }
        if (trans_a) {
            for (var s = 0u; s < 4u; s += 1u) {
                let kk = 4u * kq + s;
                let a0 = min(kk, p.k - 1u) * m4;
                for (var q = 0u; q < R / 4u; q += 1u) {
                    let v = select(vec4<f32>(0.0), a[a0 + min(row0 / 4u + q, m4 - 1u)], kk < p.k_end);
                    av[4u * q][s] = v.x;
                    av[4u * q + 1u][s] = v.y;
                    av[4u * q + 2u][s] = v.z;
                    av[4u * q + 3u][s] = v.w;
                }
            }
        } else {
            for (var i = 0u; i < R; i += 1u) {
                av[i] = a[min(row0 + i, p.m - 1u) * k4 + kq];
            }
        }
        for (var i = 0u; i < R; i += 1u) {
            let x = av[i];
            for (var j = 0u; j < C4; j += 1u) {
                acc[i][j] += x.x * bv[0][j] + x.y * bv[1][j] + x.z * bv[2][j] + x.w * bv[3][j];
            }
        }
    }
    // One loop over the tile's elements, as matmul_rows.wgsl stores (an unrolled store with its edge
    // tests takes LLVM far longer to compile).
    var sums = acc;
    let rows = min(R, p.m - min(row0, p.m));
    let cols = min(4u * C4, p.n - min(col0, p.n));
    for (var q = 0u; q < rows * 4u * C4; q += 1u) {
        let i = q / (4u * C4);
        let cj = q % (4u * C4);
        if (cj < cols) {
            let idx = (row0 + i) * p.n + col0 + cj;
            var x = sums[i][cj / 4u][cj % 4u];
            if ((p.flags & 2u) != 0u) {
                x += bias[col0 + cj];
            }
            if ((p.flags & 1u) != 0u) {
                x += out[idx];
            }
            out[idx] = x;
        }
    }
}
