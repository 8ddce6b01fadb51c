// One matmul shape on one variant: compile time, run time, error vs the CPU twin (dev tool).
use wgslm::backend::*;
use wgslm::gpu::*;
fn main() {
    let a: Vec<String> = std::env::args().skip(1).collect();
    let (m, k, n): (usize, usize, usize) =
        (a[1].parse().unwrap(), a[2].parse().unwrap(), a[3].parse().unwrap());
    let (ta, tb) = (a[4] == "1", a[5] == "1");
    let mut g = GpuBackend::new(&DeviceChoice::Auto).unwrap();
    g.set_matmul_variant(&a[0]).unwrap();
    let mut rng = wgslm::rng::Rng::new(1);
    let xa: Vec<f32> = (0..m * k).map(|_| rng.normal() as f32).collect();
    let xb: Vec<f32> = (0..k * n).map(|_| rng.normal() as f32).collect();
    let mut t = |d: &[f32]| {
        let id = g.alloc(DType::F32, d.len(), "x").unwrap();
        let v = View::new(id, 0, d.len());
        g.write_f32(v, d).unwrap();
        v
    };
    let (o, x, y) = (t(&vec![0.0; m * n]), t(&xa), t(&xb));
    let t0 = std::time::Instant::now();
    let p = g
        .prepare(&[Op::Matmul { out: o, a: x, b: y, m, k, n, trans_a: ta, trans_b: tb, accumulate: false }])
        .unwrap();
    let compile = t0.elapsed().as_secs_f64();
    g.run(p).unwrap();
    g.sync().unwrap();
    let t0 = std::time::Instant::now();
    for _ in 0..3 {
        g.run(p).unwrap();
    }
    g.sync().unwrap();
    let s = t0.elapsed().as_secs_f64() / 3.0;
    let got = g.read_f32(o).unwrap();
    let mut want = vec![0f32; m * n];
    wgslm::cpu::matmul(&mut want, &xa, &xb, m, k, n, ta, tb, false);
    println!(
        "{} {m}x{k}x{n} ta={ta} tb={tb}: prepare {:.2} s, run {:.1} ms = {:.2} GFLOP/s, rel err {:.1e}",
        a[0],
        compile,
        s * 1e3,
        2.0 * (m * k * n) as f64 / s / 1e9,
        wgslm::verify::rel_l2(&got, &want)
    );
}
