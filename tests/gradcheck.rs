//! Every backward twin against central finite differences of its forward twin, in f64.
//!
//! Each check takes a scalar L = Σ w ⊙ forward(x) with a random w, so that dL/dout = w is what the
//! backward twin receives, and compares the twin's gradient with (L(x + h) − L(x − h)) / 2h for every
//! input element.

use wgslm::backend::WeightLayout;
use wgslm::cpu;
use wgslm::rng::Rng;

const H: f64 = 1e-6;
/// Central differences in f64 with h = 1e-6 are good to about 1e-9 relative here; 1e-6 leaves room
/// for curvature and still catches any wrong term.
const TOL: f64 = 1e-6;

fn randn(rng: &mut Rng, n: usize, scale: f64) -> Vec<f64> {
    (0..n).map(|_| rng.normal() * scale).collect()
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Compares `analytic` with finite differences of `loss` around `x`, which it perturbs in place.
fn assert_grad(what: &str, x: &mut [f64], analytic: &[f64], loss: &mut dyn FnMut(&[f64]) -> f64) {
    assert_eq!(x.len(), analytic.len(), "{what}: gradient length");
    let mut numeric = vec![0.0; x.len()];
    for i in 0..x.len() {
        let keep = x[i];
        x[i] = keep + H;
        let up = loss(x);
        x[i] = keep - H;
        let down = loss(x);
        x[i] = keep;
        numeric[i] = (up - down) / (2.0 * H);
    }
    let diff: f64 = numeric.iter().zip(analytic).map(|(n, a)| (n - a).powi(2)).sum::<f64>().sqrt();
    let norm: f64 = numeric.iter().map(|n| n * n).sum::<f64>().sqrt().max(1e-12);
    assert!(
        diff / norm <= TOL,
        "{what}: analytic gradient differs from finite differences by {:.3e} (relative L2)\n\
         analytic {analytic:?}\nnumeric  {numeric:?}",
        diff / norm
    );
}

#[test]
fn encoder_backward_matches_finite_differences() {
    let (b, t, c, v) = (2, 3, 5, 4);
    let mut rng = Rng::new(1);
    let tokens: Vec<u32> = vec![0, 3, 3, 1, 0, 3];
    let mut wte = randn(&mut rng, v * c, 1.0);
    let mut wpe = randn(&mut rng, (t + 1) * c, 1.0);
    let w = randn(&mut rng, b * t * c, 1.0);
    let (mut dwte, mut dwpe) = (vec![0.0; v * c], vec![0.0; (t + 1) * c]);
    cpu::encoder_backward(&mut dwte, Some(&mut dwpe), &w, &tokens, b, t, c);
    let forward = |wte: &[f64], wpe: Option<&[f64]>| {
        let mut out = vec![0.0; b * t * c];
        cpu::encoder_forward(&mut out, &tokens, wte, wpe, b, t, c);
        dot(&out, &w)
    };
    let wpe0 = wpe.clone();
    assert_grad("dwte", &mut wte.clone(), &dwte, &mut |x| forward(x, Some(&wpe0)));
    assert_grad("dwpe", &mut wpe, &dwpe, &mut |x| forward(&wte, Some(x)));
    // Without a position embedding (RoPE models) only wte has a gradient.
    let mut dwte = vec![0.0; v * c];
    cpu::encoder_backward(&mut dwte, None, &w, &tokens, b, t, c);
    assert_grad("dwte (no wpe)", &mut wte, &dwte, &mut |x| forward(x, None));
}

#[test]
fn layernorm_backward_matches_finite_differences() {
    let (n, c) = (3, 7);
    let mut rng = Rng::new(2);
    let mut x = randn(&mut rng, n * c, 2.0);
    let mut weight: Vec<f64> = randn(&mut rng, c, 0.3).iter().map(|g| 1.0 + g).collect();
    let mut bias = randn(&mut rng, c, 0.3);
    let w = randn(&mut rng, n * c, 1.0);
    let forward = |x: &[f64], weight: &[f64], bias: &[f64]| {
        let (mut out, mut mean, mut rstd) = (vec![0.0; n * c], vec![0.0; n], vec![0.0; n]);
        cpu::layernorm_forward(&mut out, &mut mean, &mut rstd, x, weight, bias, n, c);
        (dot(&out, &w), mean, rstd)
    };
    let (_, mean, rstd) = forward(&x, &weight, &bias);
    let (mut dx, mut dw, mut db) = (vec![0.0; n * c], vec![0.0; c], vec![0.0; c]);
    cpu::layernorm_backward(&mut dx, &mut dw, &mut db, &w, &x, &weight, &mean, &rstd, n, c);
    let (x0, w0, b0) = (x.clone(), weight.clone(), bias.clone());
    assert_grad("dinp", &mut x, &dx, &mut |v| forward(v, &w0, &b0).0);
    assert_grad("dweight", &mut weight, &dw, &mut |v| forward(&x0, v, &b0).0);
    assert_grad("dbias", &mut bias, &db, &mut |v| forward(&x0, &w0, v).0);
}

#[test]
fn rmsnorm_backward_matches_finite_differences() {
    let (n, c, eps) = (3, 7, 1e-5);
    let mut rng = Rng::new(9);
    let mut x = randn(&mut rng, n * c, 2.0);
    let mut weight: Vec<f64> = randn(&mut rng, c, 0.3).iter().map(|g| 1.0 + g).collect();
    let w = randn(&mut rng, n * c, 1.0);
    let forward = |x: &[f64], weight: &[f64]| {
        let (mut out, mut rstd) = (vec![0.0; n * c], vec![0.0; n]);
        cpu::rmsnorm_forward(&mut out, &mut rstd, x, weight, n, c, eps);
        (dot(&out, &w), rstd)
    };
    let (_, rstd) = forward(&x, &weight);
    let (mut dx, mut dw) = (vec![0.0; n * c], vec![0.0; c]);
    cpu::rmsnorm_backward(&mut dx, &mut dw, &w, &x, &weight, &rstd, n, c);
    let (x0, w0) = (x.clone(), weight.clone());
    assert_grad("dinp", &mut x, &dx, &mut |v| forward(v, &w0).0);
    assert_grad("dweight", &mut weight, &dw, &mut |v| forward(&x0, v).0);
}

#[test]
fn rope_backward_matches_finite_differences() {
    // Two rotated heads of size 6 and a copied tail of 5, positions out of order and repeated.
    let (n, width, heads, hd) = (4, 17, 2, 6);
    let positions: Vec<u32> = vec![3, 0, 7, 3];
    let table: Vec<f64> = wgslm::backend::rope_table(10_000.0, hd, 8).iter().map(|&v| v as f64).collect();
    let mut rng = Rng::new(10);
    let mut x = randn(&mut rng, n * width, 1.0);
    let w = randn(&mut rng, n * width, 1.0);
    let mut dx = vec![0.0; n * width];
    cpu::rope_backward(&mut dx, &w, &positions, &table, n, width, heads, hd);
    assert_grad("dinp", &mut x, &dx, &mut |v| {
        let mut out = vec![0.0; n * width];
        cpu::rope_forward(&mut out, v, &positions, &table, n, width, heads, hd);
        dot(&out, &w)
    });
}

#[test]
fn swiglu_backward_matches_finite_differences() {
    let (n, i) = (3, 5);
    let mut rng = Rng::new(11);
    // Gates from about -9 to 9: both branches of the sigmoid, and its flat tails.
    let mut x = randn(&mut rng, n * 2 * i, 3.0);
    let w = randn(&mut rng, n * i, 1.0);
    let mut dx = vec![0.0; n * 2 * i];
    cpu::swiglu_backward(&mut dx, &x, &w, n, i);
    assert_grad("dinp", &mut x, &dx, &mut |v| {
        let mut out = vec![0.0; n * i];
        cpu::swiglu_forward(&mut out, v, n, i);
        dot(&out, &w)
    });
}

#[test]
fn matmul_backward_matches_finite_differences() {
    let (m, k, n) = (3, 5, 4);
    for layout in [WeightLayout::InOut, WeightLayout::OutIn] {
        let mut rng = Rng::new(3);
        let mut inp = randn(&mut rng, m * k, 1.0);
        let mut weight = randn(&mut rng, k * n, 1.0);
        let mut bias = randn(&mut rng, n, 1.0);
        let w = randn(&mut rng, m * n, 1.0);
        let forward = |inp: &[f64], weight: &[f64], bias: &[f64]| {
            let mut out = vec![0.0; m * n];
            cpu::matmul_forward(&mut out, inp, weight, Some(bias), m, k, n, layout);
            dot(&out, &w)
        };
        let (mut dinp, mut dweight, mut dbias) = (vec![0.0; m * k], vec![0.0; k * n], vec![0.0; n]);
        cpu::matmul_backward(&mut dinp, &mut dweight, Some(&mut dbias), &w, &inp, &weight, m, k, n, layout);
        let (i0, w0, b0) = (inp.clone(), weight.clone(), bias.clone());
        assert_grad(&format!("dinp {layout:?}"), &mut inp, &dinp, &mut |v| forward(v, &w0, &b0));
        assert_grad(&format!("dweight {layout:?}"), &mut weight, &dweight, &mut |v| forward(&i0, v, &b0));
        assert_grad(&format!("dbias {layout:?}"), &mut bias, &dbias, &mut |v| forward(&i0, &w0, v));
    }
}

#[test]
fn attention_backward_matches_finite_differences() {
    // head size 3: not a power of two; with and without dropout on the probabilities; multi-head,
    // then grouped-query with two and with one kv head (each shared by several query heads).
    for (b, t, c, nh, nkv) in [(2, 4, 6, 2, 2), (2, 4, 12, 4, 2), (1, 5, 9, 3, 1)] {
        attention_case(b, t, c, nh, nkv);
    }
}

fn attention_case(b: usize, t: usize, c: usize, nh: usize, nkv: usize) {
    let width = wgslm::backend::qkv_width(c, nh, nkv);
    for mask in [None, Some(cpu::Mask { seed: 99, p: 0.3, stream: 5 })] {
        let mut rng = Rng::new(4);
        let mut qkv = randn(&mut rng, b * t * width, 1.0);
        let w = randn(&mut rng, b * t * c, 1.0);
        let forward = |qkv: &[f64]| {
            let (mut out, mut att, mut probs) =
                (vec![0.0; b * t * c], vec![0.0; b * nh * t * t], vec![0.0; b * nh * t * t]);
            cpu::attention_forward(
                &mut out,
                &mut att,
                qkv,
                b,
                t,
                c,
                nh,
                nkv,
                mask.map(|m| (probs.as_mut_slice(), m)),
            );
            (dot(&out, &w), att, probs)
        };
        let (_, att, probs) = forward(&qkv);
        let (mut dqkv, mut datt) = (vec![0.0; qkv.len()], vec![0.0; att.len()]);
        cpu::attention_backward(
            &mut dqkv,
            &mut datt,
            &w,
            &qkv,
            &att,
            b,
            t,
            c,
            nh,
            nkv,
            mask.map(|m| (probs.as_slice(), m)),
        );
        let what = format!("dqkv NH={nh} NKV={nkv}{}", if mask.is_some() { " (dropout)" } else { "" });
        assert_grad(&what, &mut qkv, &dqkv, &mut |v| forward(v).0);
    }
}

#[test]
fn flash_attention_backward_matches_finite_differences() {
    // Multi-head, then grouped-query with two and one kv heads; head sizes 3 and 2.
    for (b, t, c, nh, nkv) in [(2, 4, 6, 2, 2), (2, 4, 12, 4, 2), (1, 5, 9, 3, 1)] {
        let width = wgslm::backend::qkv_width(c, nh, nkv);
        for mask in [None, Some(cpu::Mask { seed: 99, p: 0.3, stream: 5 })] {
            let mut rng = Rng::new(12);
            let mut qkv = randn(&mut rng, b * t * width, 1.0);
            let w = randn(&mut rng, b * t * c, 1.0);
            let forward = |qkv: &[f64]| {
                let (mut out, mut lse) = (vec![0.0; b * t * c], vec![0.0; b * nh * t]);
                cpu::flash_attention_forward(&mut out, &mut lse, qkv, b, t, c, nh, nkv, mask);
                (dot(&out, &w), out, lse)
            };
            let (_, out, lse) = forward(&qkv);
            let (mut dqkv, mut dsum) = (vec![0.0; qkv.len()], vec![0.0; b * nh * t]);
            cpu::flash_attention_backward(&mut dqkv, &mut dsum, &w, &qkv, &out, &lse, b, t, c, nh, nkv, mask);
            let what =
                format!("flash dqkv NH={nh} NKV={nkv}{}", if mask.is_some() { " (dropout)" } else { "" });
            assert_grad(&what, &mut qkv, &dqkv, &mut |v| forward(v).0);
        }
    }
}

/// The fused twins compute the naive twins' function: the same output (and lse = log of the softmax
/// denominator) and the same gradient, with and without dropout, multi-head and grouped-query.
#[test]
fn flash_attention_twins_match_the_naive_twins() {
    for (b, t, c, nh, nkv) in [(2, 9, 12, 2, 2), (1, 13, 24, 6, 2), (2, 7, 20, 4, 1)] {
        let width = wgslm::backend::qkv_width(c, nh, nkv);
        for mask in [None, Some(cpu::Mask { seed: 7, p: 0.4, stream: 2 })] {
            let mut rng = Rng::new(13);
            let qkv = randn(&mut rng, b * t * width, 1.5);
            let dout = randn(&mut rng, b * t * c, 1.0);
            let att_len = b * nh * t * t;
            let (mut out, mut att, mut probs) =
                (vec![0.0; b * t * c], vec![0.0; att_len], vec![0.0; att_len]);
            let fwd = mask.map(|m| (probs.as_mut_slice(), m));
            cpu::attention_forward(&mut out, &mut att, &qkv, b, t, c, nh, nkv, fwd);
            let (mut dqkv, mut datt) = (vec![0.0; qkv.len()], vec![0.0; att_len]);
            let bwd = mask.map(|m| (probs.as_slice(), m));
            cpu::attention_backward(&mut dqkv, &mut datt, &dout, &qkv, &att, b, t, c, nh, nkv, bwd);

            let (mut fout, mut lse) = (vec![0.0; b * t * c], vec![0.0; b * nh * t]);
            cpu::flash_attention_forward(&mut fout, &mut lse, &qkv, b, t, c, nh, nkv, mask);
            let (mut fdqkv, mut dsum) = (vec![0.0; qkv.len()], vec![0.0; b * nh * t]);
            cpu::flash_attention_backward(
                &mut fdqkv, &mut dsum, &dout, &qkv, &fout, &lse, b, t, c, nh, nkv, mask,
            );

            let what = format!("NH={nh} NKV={nkv}{}", if mask.is_some() { " dropout" } else { "" });
            let close =
                |a: &[f64], b: &[f64]| a.iter().zip(b).all(|(x, y)| (x - y).abs() <= 1e-12 * (1.0 + y.abs()));
            assert!(close(&fout, &out), "{what}: flash out differs from naive");
            assert!(close(&fdqkv, &dqkv), "{what}: flash dqkv differs from naive");
            // The first probability of every row is exp(score(t1, 0) - lse): check it against att.
            for row in 0..b * nh * t {
                let t1 = row % t;
                let (bb, h) = (row / (nh * t), (row / t) % nh);
                let hs = c / nh;
                let q = (bb * t + t1) * width + h * hs;
                let k = bb * t * width + c + (h / (nh / nkv)) * hs;
                let s: f64 = (0..hs).map(|i| qkv[q + i] * qkv[k + i]).sum::<f64>() / (hs as f64).sqrt();
                let p = (s - lse[row]).exp();
                assert!((p - att[row * t]).abs() <= 1e-12, "{what}: lse of row {row}");
            }
        }
    }
}

#[test]
fn dropout_backward_matches_finite_differences() {
    let (n, p, seed, stream) = (40, 0.4, 7, 3);
    let mut rng = Rng::new(8);
    let mut x = randn(&mut rng, n, 1.0);
    let w = randn(&mut rng, n, 1.0);
    let mut dx = vec![0.0; n];
    cpu::dropout_backward(&mut dx, &w, seed, n, p, stream);
    assert!(dx.iter().filter(|d| **d == 0.0).count() > 5, "some elements must be dropped");
    assert_grad("dinp", &mut x, &dx, &mut |v| {
        let mut out = vec![0.0; n];
        cpu::dropout_forward(&mut out, v, seed, n, p, stream);
        dot(&out, &w)
    });
}

#[test]
fn gelu_backward_matches_finite_differences() {
    let n = 33;
    let mut rng = Rng::new(5);
    let mut x = randn(&mut rng, n, 3.0);
    let w = randn(&mut rng, n, 1.0);
    let mut dx = vec![0.0; n];
    cpu::gelu_backward(&mut dx, &x, &w, n);
    assert_grad("dinp", &mut x, &dx, &mut |v| {
        let mut out = vec![0.0; n];
        cpu::gelu_forward(&mut out, v, n);
        dot(&out, &w)
    });
}

#[test]
fn residual_backward_matches_finite_differences() {
    let n = 9;
    let mut rng = Rng::new(6);
    let mut a = randn(&mut rng, n, 1.0);
    let mut b = randn(&mut rng, n, 1.0);
    let w = randn(&mut rng, n, 1.0);
    let (mut da, mut db) = (vec![0.0; n], vec![0.0; n]);
    cpu::residual_backward(&mut da, &mut db, &w, n);
    let forward = |a: &[f64], b: &[f64]| {
        let mut out = vec![0.0; n];
        cpu::residual_forward(&mut out, a, b, n);
        dot(&out, &w)
    };
    let (a0, b0) = (a.clone(), b.clone());
    assert_grad("dinp1", &mut a, &da, &mut |v| forward(v, &b0));
    assert_grad("dinp2", &mut b, &db, &mut |v| forward(&a0, v));
}

#[test]
fn crossentropy_backward_matches_finite_differences() {
    let (n, v) = (4, 7);
    let mut rng = Rng::new(7);
    let mut logits = randn(&mut rng, n * v, 2.0);
    let targets: Vec<u32> = vec![0, 6, 3, 3];
    let scale = 1.0 / n as f64;
    let forward = |l: &[f64]| {
        let (mut losses, mut lse) = (vec![0.0; n], vec![0.0; n]);
        cpu::crossentropy_forward(&mut losses, &mut lse, l, &targets, n, v);
        (losses.iter().sum::<f64>() * scale, lse)
    };
    let (_, lse) = forward(&logits);
    let mut dlogits = vec![0.0; n * v];
    cpu::crossentropy_backward(&mut dlogits, &logits, &lse, &targets, n, v, scale);
    assert_grad("dlogits", &mut logits, &dlogits, &mut |l| forward(l).0);
}
