//! `wgslm bench kernels`: every variant of a kernel at each shape, first checked against the CPU
//! twin, then timed. A wrong result is reported as FAIL and never timed.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::backend::{Backend, DType, Op, View};
use crate::gpu::kernels::CustomMatmul;
use crate::gpu::{GpuBackend, GpuContext};
use crate::rng::Rng;
use crate::verify::{self, rel_l2};
use crate::{Error, Result};

/// One variant at one shape.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Timing {
    pub kernel: String,
    pub variant: String,
    pub shape: String,
    /// Relative L2 error against the twin, and whether it is within tolerance.
    #[serde(with = "crate::report::nan_as_null")]
    pub error: f64,
    pub passed: bool,
    /// Why the variant could not run, if it could not.
    pub failure: Option<String>,
    pub ms: Option<f64>,
    /// GFLOP/s for matmul, GB/s (bytes read and written) for the other kernels.
    pub rate: Option<f64>,
    pub unit: String,
    /// This variant's rate as a percentage of the best at this shape.
    pub pct_of_best: Option<f64>,
    /// "timestamps" or "wall clock".
    pub method: String,
}

/// Matmul (`out = a·b`, neither transposed) with every variant in `variants` (and `custom`) at each
/// (M, K, N).
pub fn matmul(
    ctx: &Arc<GpuContext>,
    variants: &[String],
    custom: Option<CustomMatmul>,
    shapes: &[(usize, usize, usize)],
    reps: usize,
) -> Result<Vec<Timing>> {
    let mut out = Vec::new();
    for &(m, k, n) in shapes {
        let mut rng = Rng::new((m * 31 + k * 7 + n) as u64);
        let a: Vec<f32> = (0..m * k).map(|_| rng.normal() as f32).collect();
        let b: Vec<f32> = (0..k * n).map(|_| rng.normal() as f32).collect();
        let mut want = vec![0f32; m * n];
        crate::cpu::matmul(&mut want, &a, &b, m, k, n, false, false, false);
        // The f16 kernel is checked against the twin on the same halves.
        let (a16, b16) = (crate::cpu::pack_f16(&a), crate::cpu::pack_f16(&b));
        let mut want16 = vec![0f32; m * n];
        crate::cpu::matmul_f16(&mut want16, &a16, &b16, m, k, n, false, false, false);
        let shape = format!("{m}x{k}x{n}");
        let mut runs: Vec<(String, Option<CustomMatmul>)> =
            variants.iter().map(|v| (v.clone(), None)).collect();
        if let Some(c) = &custom {
            let file = std::path::Path::new(&c.name)
                .file_name()
                .map_or(c.name.clone(), |f| f.to_string_lossy().into_owned());
            runs.push((format!("custom ({file})"), Some(c.clone())));
        }
        let first = out.len();
        for (variant, custom) in runs {
            let mut gpu = GpuBackend::with_context(ctx.clone());
            let f16 = variant == F16_VARIANT;
            let chosen = match custom {
                Some(c) => {
                    gpu.set_custom_matmul(c);
                    Ok(())
                }
                None if f16 => Ok(()),
                None => gpu.set_matmul_variant(&variant),
            };
            let mut t = Timing {
                kernel: "matmul".into(),
                variant,
                shape: shape.clone(),
                error: f64::NAN,
                passed: false,
                failure: None,
                ms: None,
                rate: None,
                unit: "GFLOP/s".into(),
                pct_of_best: None,
                method: String::new(),
            };
            let result = (|| -> Result<()> {
                chosen?;
                let mut buf = |data: &[f32]| -> Result<View> {
                    let v = View::new(gpu.alloc(DType::F32, data.len(), "bench")?, 0, data.len());
                    gpu.write_f32(v, data)?;
                    Ok(v)
                };
                let ov = buf(&vec![0.0; m * n])?;
                let (trans_a, trans_b, accumulate) = (false, false, false);
                let (a, b) = if f16 {
                    let mut halves = |data: &[u32]| -> Result<View> {
                        let v = View::new(gpu.alloc(DType::U32, data.len(), "bench")?, 0, data.len());
                        gpu.write_u32(v, data)?;
                        Ok(v)
                    };
                    (halves(&a16)?, halves(&b16)?)
                } else {
                    (buf(&a)?, buf(&b)?)
                };
                let op = Op::Matmul { out: ov, a, b, m, k, n, trans_a, trans_b, accumulate, half: f16 };
                let plan = gpu.prepare(&[op])?;
                gpu.run(plan)?;
                t.error = rel_l2(&gpu.read_f32(ov)?, if f16 { &want16 } else { &want });
                t.passed = t.error <= verify::matmul_tolerance(k);
                if t.passed {
                    let (s, method) = gpu.time(plan, reps)?;
                    t.ms = Some(s * 1e3);
                    t.rate = Some(2.0 * (m * k * n) as f64 / s / 1e9);
                    t.method = method.into();
                }
                Ok(())
            })();
            if let Err(e) = result {
                t.failure = Some(e.to_string());
            }
            out.push(t);
        }
        rank(&mut out[first..]);
    }
    Ok(out)
}

fn rank(rows: &mut [Timing]) {
    let best = rows.iter().filter_map(|t| t.rate).fold(0.0, f64::max);
    for t in rows.iter_mut() {
        t.pct_of_best = t.rate.map(|r| 100.0 * r / best);
    }
}

/// Any other kernel, at the shapes of its `wgslm verify` cases, in GB/s of bytes read and written;
/// `attention` compares the naive and the fused kernels instead (see [`attention`]).
pub fn verified(
    ctx: &Arc<GpuContext>,
    kernel: &str,
    variants: &[String],
    reps: usize,
) -> Result<Vec<Timing>> {
    if kernel == "attention" {
        let chosen: Vec<&'static str> = if variants.iter().any(|v| v == "all") {
            ATTENTION_VARIANTS.to_vec()
        } else {
            let pick = |v: &String| crate::gpu::one_of(v, &ATTENTION_VARIANTS, "attention variant");
            variants.iter().map(pick).collect::<Result<_>>()?
        };
        return attention(ctx, &chosen, reps);
    }
    let cases: Vec<verify::Case> = verify::cases().into_iter().filter(|c| c.kernel == kernel).collect();
    if cases.is_empty() {
        return Err(Error::Invalid(format!(
            "--kernel {kernel}: no such kernel; the kernels are {}",
            verify::kernel_names().join(", ")
        )));
    }
    let mut out = Vec::new();
    for case in &cases {
        let mut gpu = GpuBackend::with_context(ctx.clone());
        let outcome = verify::run_case(case, &mut gpu);
        let mut t = Timing {
            kernel: kernel.into(),
            variant: "default".into(),
            shape: case.shape.clone(),
            error: outcome.worst,
            passed: outcome.passed(),
            failure: outcome.error.clone(),
            ms: None,
            rate: None,
            unit: "GB/s".into(),
            pct_of_best: None,
            method: String::new(),
        };
        if t.passed {
            let (plan, bytes) = verify::prepare_case(case, &mut gpu)?;
            let (s, method) = gpu.time(plan, reps)?;
            t.ms = Some(s * 1e3);
            t.rate = Some(bytes as f64 / s / 1e9);
            t.method = method.into();
        }
        out.push(t);
    }
    Ok(out)
}

/// The name `bench kernels` gives the f16-storage matmul (`Op::Matmul` with `half`) beside the f32 variants.
pub const F16_VARIANT: &str = "f16";

/// Every matmul variant `ctx` can run, for `--variant all`: the f32 ones the model can use, then the
/// f16-storage kernel where the adapter has shader-f16.
pub fn all_matmul_variants(ctx: &GpuContext) -> Vec<String> {
    let mut all: Vec<String> = ctx.matmul_variants().iter().map(|v| v.to_string()).collect();
    if ctx.kernel_unavailable("matmul_f16", "").is_none() {
        all.push(F16_VARIANT.to_string());
    }
    all
}

/// (B, T, C, NH, NKV) of the attention bench: multi-head with head size 64, and grouped-query with
/// one kv head for four query heads, at T = 256 and 1024; and the attention of configs/stories-llama.toml
/// (8 heads of 8 on 4 kv heads, B 16), where the kernels' bookkeeping weighs most.
pub const ATTENTION_SHAPES: [(usize, usize, usize, usize, usize); 5] = [
    (2, 256, 256, 4, 4),
    (2, 256, 256, 4, 1),
    (2, 1024, 256, 4, 4),
    (2, 1024, 256, 4, 1),
    (16, 256, 64, 8, 4),
];

/// The attention implementations the bench compares: the naive kernels, and the fused ones in each
/// kernel family (`kernels::FAMILIES`).
pub const ATTENTION_VARIANTS: [&str; 3] = ["naive", "flash-tiled", "flash-rows"];

/// The two attention implementations, forward and backward separately, at [`ATTENTION_SHAPES`]:
/// "naive" (`AttentionForward` / `AttentionBackward`, which store the (B,NH,T,T) probabilities) and
/// "flash-tiled" and "flash-rows" (`FlashAttentionForward` / `FlashAttentionBackward` in each kernel
/// family). Each is first checked against its CPU twin and timed only when it agrees. The rate is
/// effective GFLOP/s of the causal products a plain implementation does, the same count for every
/// variant: 2·B·NH·T²·hs forward (q·kᵀ and p·v over
/// the lower triangle), twice that backward (dp, dq, dk, dv); flash's recomputation is not counted.
pub fn attention(ctx: &Arc<GpuContext>, variants: &[&str], reps: usize) -> Result<Vec<Timing>> {
    use crate::backend::qkv_width;
    use crate::cpu::CpuBackend;
    let mut out = Vec::new();
    for &(b, t, c, nh, nkv) in &ATTENTION_SHAPES {
        let (hs, w) = (c / nh, qkv_width(c, nh, nkv));
        let mut rng = Rng::new((b * 131 + t * 17 + nkv) as u64);
        let qkv: Vec<f32> = (0..b * t * w).map(|_| rng.normal() as f32).collect();
        let dout: Vec<f32> = (0..b * t * c).map(|_| rng.normal() as f32).collect();
        // What each backward pass reads from its forward pass, from the twins.
        let att_len = b * nh * t * t;
        let mut att = vec![0f32; att_len];
        crate::cpu::attention_forward(&mut vec![0f32; b * t * c], &mut att, &qkv, b, t, c, nh, nkv, None);
        let (mut fout, mut lse) = (vec![0f32; b * t * c], vec![0f32; b * nh * t]);
        crate::cpu::flash_attention_forward(&mut fout, &mut lse, &qkv, b, t, c, nh, nkv, None);
        let kv = if nkv == nh { String::new() } else { format!(" NKV={nkv}") };
        let flops = 2.0 * (b * nh * t * t * hs) as f64;
        for (direction, work) in [("fwd", flops), ("bwd", 2.0 * flops)] {
            let shape = format!("B={b} T={t} NH={nh}{kv} hs={hs} {direction}");
            let first = out.len();
            for &variant in variants {
                // Builds the op on a backend, with its inputs written, and names the checked output.
                let build = |be: &mut dyn Backend| -> Result<(Op, View)> {
                    let mut buf = |data: &[f32]| -> Result<View> {
                        let v = View::new(be.alloc(DType::F32, data.len(), "bench")?, 0, data.len());
                        be.write_f32(v, data)?;
                        Ok(v)
                    };
                    let (q, zeros) = (buf(&qkv)?, |n: usize| vec![0f32; n]);
                    Ok(match (if variant == "naive" { "naive" } else { "flash" }, direction) {
                        ("naive", "fwd") => {
                            let (o, a) = (buf(&zeros(b * t * c))?, buf(&zeros(att_len))?);
                            let op = Op::AttentionForward {
                                out: o,
                                att: a,
                                qkv: q,
                                b,
                                t,
                                c,
                                nh,
                                nkv,
                                dropout: None,
                            };
                            (op, o)
                        }
                        ("flash", "fwd") => {
                            let (o, l) = (buf(&zeros(b * t * c))?, buf(&zeros(b * nh * t))?);
                            let op = Op::FlashAttentionForward {
                                out: o,
                                lse: l,
                                qkv: q,
                                b,
                                t,
                                c,
                                nh,
                                nkv,
                                dropout: None,
                            };
                            (op, o)
                        }
                        ("naive", _) => {
                            let (d, da) = (buf(&zeros(b * t * w))?, buf(&zeros(att_len))?);
                            let (dout, att) = (buf(&dout)?, buf(&att)?);
                            let op = Op::AttentionBackward {
                                dqkv: d,
                                datt: da,
                                dout,
                                qkv: q,
                                att,
                                b,
                                t,
                                c,
                                nh,
                                nkv,
                                dropout: None,
                            };
                            (op, d)
                        }
                        _ => {
                            let (d, ds) = (buf(&zeros(b * t * w))?, buf(&zeros(b * nh * t))?);
                            let (dout, o, l) = (buf(&dout)?, buf(&fout)?, buf(&lse)?);
                            let op = Op::FlashAttentionBackward {
                                dqkv: d,
                                dsum: ds,
                                dout,
                                qkv: q,
                                out: o,
                                lse: l,
                                b,
                                t,
                                c,
                                nh,
                                nkv,
                                dropout: None,
                            };
                            (op, d)
                        }
                    })
                };
                let mut row = Timing {
                    kernel: format!("attention_{}", if direction == "fwd" { "forward" } else { "backward" }),
                    variant: variant.into(),
                    shape: shape.clone(),
                    error: f64::NAN,
                    passed: false,
                    failure: None,
                    ms: None,
                    rate: None,
                    unit: "GFLOP/s".into(),
                    pct_of_best: None,
                    method: String::new(),
                };
                let result = (|| -> Result<()> {
                    let mut cpu = CpuBackend::new();
                    let (op, view) = build(&mut cpu)?;
                    let plan = cpu.prepare(&[op])?;
                    cpu.run(plan)?;
                    let want = cpu.read_f32(view)?;
                    let mut gpu = GpuBackend::with_context(ctx.clone());
                    if let Some(family) = variant.strip_prefix("flash-") {
                        gpu.set_family(family)?;
                    }
                    let (op, view) = build(&mut gpu)?;
                    let plan = gpu.prepare(&[op])?;
                    gpu.run(plan)?;
                    row.error = rel_l2(&gpu.read_f32(view)?, &want);
                    row.passed = row.error <= verify::TOLERANCE;
                    if row.passed {
                        let (s, method) = gpu.time(plan, reps)?;
                        row.ms = Some(s * 1e3);
                        row.rate = Some(work / s / 1e9);
                        row.method = method.into();
                    }
                    Ok(())
                })();
                if let Err(e) = result {
                    row.failure = Some(e.to_string());
                }
                out.push(row);
            }
            rank(&mut out[first..]);
        }
    }
    Ok(out)
}
