use wgslm::backend::*;
use wgslm::gpu::*;
fn main() {
    let a: Vec<usize> = std::env::args().skip(1).map(|x| x.parse().unwrap()).collect();
    let (m, k, n, ta, tb) = (a[0], a[1], a[2], a[3] == 1, a[4] == 1);
    let mut g = GpuBackend::new(&DeviceChoice::Auto).unwrap();
    let mut t = |len| {
        let id = g.alloc(DType::F32, len, "x").unwrap();
        View::new(id, 0, len)
    };
    let (o, x, y) = (t(m * n), t(m * k), t(k * n));
    let p = g
        .prepare(&[Op::Matmul { out: o, a: x, b: y, m, k, n, trans_a: ta, trans_b: tb, accumulate: false }])
        .unwrap();
    g.run(p).unwrap();
    g.sync().unwrap();
    let reps = 5;
    let t0 = std::time::Instant::now();
    for _ in 0..reps {
        g.run(p).unwrap();
    }
    g.sync().unwrap();
    let s = t0.elapsed().as_secs_f64() / reps as f64;
    println!(
        "{m}x{k}x{n} ta={ta} tb={tb}: {:.1} ms, {:.2} GFLOP/s",
        s * 1e3,
        2.0 * (m * k * n) as f64 / s / 1e9
    );
}
