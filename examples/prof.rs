// Per-kernel wall time of one training step (dev tool).
use std::collections::BTreeMap;
use wgslm::gpu::{DeviceChoice, GpuBackend};
use wgslm::model::{BatchShape, Gpt2, Mode, ModelConfig};
fn main() {
    let args: Vec<usize> = std::env::args().skip(1).map(|a| a.parse().unwrap()).collect();
    let (l, c, v, t, b) = (args[0], args[1], args[2], args[3], args[4]);
    let cfg = ModelConfig { n_layer: l, n_head: 4, n_embd: c, vocab_size: v, n_positions: t };
    let gpu = GpuBackend::new(&DeviceChoice::Auto).unwrap();
    let mut m = Gpt2::new(
        Box::new(gpu),
        cfg,
        BatchShape { b, t, accum: 1 },
        Mode::Train { weight_decay: 0.1, dropout: 0.0 },
    )
    .unwrap();
    m.set_params(&wgslm::model::gpt2::init_params(&cfg, 1)).unwrap();
    let x: Vec<u32> = (0..b * t).map(|i| (i * 7 % v) as u32).collect();
    m.set_batch(0, &x, &x).unwrap();
    let h = wgslm::backend::AdamwHyper::at_step(1e-3, 0.9, 0.95, 1e-8, 1.0, 1);
    m.step(&h).unwrap();
    let t0 = std::time::Instant::now();
    m.step(&h).unwrap();
    let step = t0.elapsed().as_secs_f64();
    let times = m.profile_step().unwrap();
    let mut agg: BTreeMap<&str, (f64, usize)> = BTreeMap::new();
    for (e, s) in &times {
        let a = agg.entry(e).or_default();
        a.0 += s;
        a.1 += 1;
    }
    let total: f64 = times.iter().map(|t| t.1).sum();
    let mut rows: Vec<_> = agg.into_iter().collect();
    rows.sort_by(|a, b| b.1 .0.total_cmp(&a.1 .0));
    println!("step {:.3}s ({:.0} tok/s); sum of dispatches {:.3}s", step, (b * t) as f64 / step, total);
    for (e, (s, n)) in rows {
        println!("{e:32} {n:4} {:8.1} ms {:5.1}%", s * 1e3, 100.0 * s / total);
    }
}
