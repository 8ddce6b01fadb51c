//! The matmul autotuner: for each matrix-product shape a program uses, time the variants on the actual
//! adapter, keep the fastest, and remember the choice on disk, keyed by adapter name, driver, wgpu
//! version and shape, so the next run on the same machine skips the timing.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::kernels::Call;
use super::{GpuBackend, GpuContext};
use crate::backend::{Backend, DType, Op, View};
use crate::{fsutil, Result};

/// The wgpu version the cache keys carry (kernels may compile differently under another).
const WGPU_VERSION: &str = "wgpu-30";

/// One matrix-product shape as a program uses it: (M, K, N, trans_a, trans_b).
pub type GemmShape = (usize, usize, usize, bool, bool);

/// Where tuning results are kept: `$WGSLM_CACHE_DIR`, else `$XDG_CACHE_HOME/wgslm`, else
/// `~/.cache/wgslm`; None when none can be found (tuning then happens every run).
pub fn cache_file() -> Option<PathBuf> {
    let dir = std::env::var_os("WGSLM_CACHE_DIR")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("XDG_CACHE_HOME").map(|d| PathBuf::from(d).join("wgslm")))
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/wgslm")))?;
    Some(dir.join("matmul-tuning.json"))
}

/// "MxKxN NT": a shape as text.
pub fn shape_key((m, k, n, ta, tb): GemmShape) -> String {
    format!("{m}x{k}x{n} {}{}", if ta { "T" } else { "N" }, if tb { "T" } else { "N" })
}

/// The inverse of [`shape_key`].
pub fn parse_shape_key(s: &str) -> Option<GemmShape> {
    let (dims, t) = s.split_once(' ')?;
    let d: Vec<usize> = dims.split('x').map(|x| x.parse().ok()).collect::<Option<_>>()?;
    let t: Vec<char> = t.chars().collect();
    match (d.as_slice(), t.as_slice()) {
        ([m, k, n], [a, b]) => Some((*m, *k, *n, *a == 'T', *b == 'T')),
        _ => None,
    }
}

/// The adapter, driver, wgpu version, the candidates (a choice made before a variant existed is not
/// a choice among them all) and the shape.
fn key(ctx: &GpuContext, shape: GemmShape) -> String {
    let a = &ctx.adapter;
    let candidates = ctx.tuning_candidates().join(",");
    format!("{} | {} | {WGPU_VERSION} | {candidates} | {}", a.info.name, a.driver(), shape_key(shape))
}

fn load() -> BTreeMap<String, String> {
    cache_file()
        .and_then(|p| std::fs::read(p).ok())
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

fn store(entries: &BTreeMap<String, String>) {
    let Some(path) = cache_file() else { return };
    if let Some(dir) = path.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    let json = serde_json::to_string_pretty(entries).expect("strings serialise");
    // A cache that cannot be written only costs time next run.
    if let Err(e) = fsutil::write_atomic(&path, json.as_bytes()) {
        log::warn!("could not save matmul tuning: {e}");
    }
}

/// Seconds one run of `shape` takes with `variant` on inputs `a` and `b` (the first run compiles and is
/// not counted), and the product that run computed.
fn time_variant(
    ctx: &Arc<GpuContext>,
    variant: &str,
    (m, k, n, ta, tb): GemmShape,
    (a_data, b_data): (&[f32], &[f32]),
) -> Result<(f64, Vec<f32>)> {
    let mut gpu = GpuBackend::with_context(ctx.clone());
    gpu.set_matmul_variant(variant)?;
    let mut view =
        |len: usize| -> Result<View> { Ok(View::new(gpu.alloc(DType::F32, len, "tuning")?, 0, len)) };
    let (out, a, b) = (view(m * n)?, view(m * k)?, view(k * n)?);
    gpu.write_f32(a, a_data)?;
    gpu.write_f32(b, b_data)?;
    let plan = gpu.prepare(&[Op::Matmul {
        out,
        a,
        b,
        m,
        k,
        n,
        trans_a: ta,
        trans_b: tb,
        accumulate: false,
        half: false,
    }])?;
    gpu.run(plan)?;
    let product = gpu.read_f32(out)?;
    Ok((gpu.time(plan, 2)?.0, product))
}

/// The dispatches of one matmul of `shape` under `variant` (none if the variant cannot run here).
fn matmul_calls(ctx: &Arc<GpuContext>, variant: &str, (m, k, n, ta, tb): GemmShape) -> Vec<Call> {
    let mut gpu = GpuBackend::with_context(ctx.clone());
    if gpu.set_matmul_variant(variant).is_err() {
        return Vec::new();
    }
    // Three placeholder buffers: an output that overlapped an input would not be a valid op.
    let view = |buf, len| View::new(crate::backend::BufId(usize::MAX - buf), 0, len);
    let (out, a, b) = (view(0, m * n), view(1, m * k), view(2, k * n));
    gpu.planned_calls(&[Op::Matmul {
        out,
        a,
        b,
        m,
        k,
        n,
        trans_a: ta,
        trans_b: tb,
        accumulate: false,
        half: false,
    }])
}

/// Checks that `variant` computes the product the CPU twin computes, on random data at an awkward
/// shape in all four transpose layouts: what a variant pinned by the user must pass before it runs
/// (the autotuner applies the same kind of check to every candidate).
pub fn check_variant(ctx: &Arc<GpuContext>, variant: &str) -> Result<()> {
    let (m, k, n) = (67, 129, 71);
    let mut rng = crate::rng::Rng::new(0x7069_6e73);
    let a: Vec<f32> = (0..m * k).map(|_| rng.normal() as f32).collect();
    let b: Vec<f32> = (0..k * n).map(|_| rng.normal() as f32).collect();
    for (ta, tb) in [(false, false), (false, true), (true, false), (true, true)] {
        let (_, product) = time_variant(ctx, variant, (m, k, n, ta, tb), (&a, &b))?;
        let mut want = vec![0f32; m * n];
        crate::cpu::matmul(&mut want, &a, &b, m, k, n, ta, tb, false);
        let err = crate::verify::rel_l2(&product, &want);
        // A NaN error fails too.
        if err.is_nan() || err > crate::verify::matmul_tolerance(k) {
            return Err(crate::Error::Invalid(format!(
                "matmul variant {variant:?} disagrees with the CPU twin on {}: relative L2 {err:.2e} at \
                 {m}x{k}x{n}{}{}; pin another variant or use matmul = \"auto\"",
                ctx.adapter.title(),
                if ta { " Aᵀ" } else { "" },
                if tb { " Bᵀ" } else { "" }
            )));
        }
    }
    Ok(())
}

/// The most f32 elements the operands and product of one tuning run may hold (64 MiB).
pub const TUNING_SCRATCH: usize = 1 << 24;

/// `shape` with M cut (in whole multiples of 64, at least 64) so that a, b and the product fit
/// [`TUNING_SCRATCH`].
fn bounded((m, k, n, ta, tb): GemmShape) -> GemmShape {
    let fits = |m: usize| m * k + k * n + m * n <= TUNING_SCRATCH;
    if fits(m) {
        return (m, k, n, ta, tb);
    }
    let rows = TUNING_SCRATCH.saturating_sub(k * n) / (k + n);
    ((rows / 64 * 64).clamp(64, m), k, n, ta, tb)
}

/// Chooses a variant for every shape: from the cache where it has one, else by timing the variants,
/// as long as `budget` lasts (shapes left when it runs out keep `fallback` and are not cached).
/// `others` are the rest of the program's dispatches, compiled beside the candidates.
pub fn choose(
    ctx: &Arc<GpuContext>,
    shapes: &[GemmShape],
    fallback: &'static str,
    budget: Duration,
    others: &[Call],
) -> BTreeMap<GemmShape, &'static str> {
    let variants = ctx.tuning_candidates();
    let mut cache = load();
    // Every candidate's pipelines for the shapes to be timed, and the program's other kernels,
    // compiled on every core first. Compiling is not timing: the budget starts after it.
    let untimed: Vec<GemmShape> =
        shapes.iter().copied().filter(|&s| !cache.contains_key(&key(ctx, s))).collect();
    let mut calls: Vec<Call> = variants
        .iter()
        .flat_map(|&v| {
            untimed
                .iter()
                .filter(move |&&s| !super::kernels::superseded(v, ctx.adapter.info.device_type, s))
                .flat_map(move |&s| matmul_calls(ctx, v, bounded(s)))
        })
        .collect();
    calls.extend_from_slice(others);
    if let Err(e) = ctx.precompile(&calls) {
        log::warn!("precompiling the matmul candidates: {e}");
    }
    let started = Instant::now();
    let mut chosen = BTreeMap::new();
    let mut changed = false;
    for &shape in shapes {
        let k = key(ctx, shape);
        if let Some(v) = cache.get(&k).and_then(|v| variants.iter().find(|x| **x == v.as_str())) {
            chosen.insert(shape, *v);
            continue;
        }
        if started.elapsed() > budget {
            // Cached too: a second fresh run then chooses the same kernels as this one, instead of
            // timing the shapes this run had no time for.
            chosen.insert(shape, fallback);
            cache.insert(k, fallback.to_string());
            changed = true;
            continue;
        }
        // Every candidate must agree with the first (blocked4x4, the plainest kernel) on random data
        // before its time counts: a variant that is wrong on this adapter is never chosen. The
        // operands are allocated beside the model's buffers, so a shape larger than TUNING_SCRATCH
        // is timed with fewer rows (the variants' ranking depends on the tile shapes, not on M).
        let timed = bounded(shape);
        let (m, depth, n, ..) = timed;
        let mut rng = crate::rng::Rng::new(0x7475_6e65);
        let a: Vec<f32> = (0..m * depth).map(|_| rng.normal() as f32).collect();
        let b: Vec<f32> = (0..depth * n).map(|_| rng.normal() as f32).collect();
        let mut reference: Option<Vec<f32>> = None;
        let mut best: Option<(&'static str, f64)> = None;
        let device_type = ctx.adapter.info.device_type;
        for &variant in variants.iter().filter(|v| !super::kernels::superseded(v, device_type, shape)) {
            match time_variant(ctx, variant, timed, (&a, &b)) {
                Ok((_, product))
                    if reference.as_ref().is_some_and(|r| {
                        crate::verify::rel_l2(&product, r) > 2.0 * crate::verify::matmul_tolerance(depth)
                    }) =>
                {
                    log::warn!(
                        "tuning {variant} at {shape:?}: its product disagrees with blocked4x4; not chosen"
                    );
                }
                Ok((s, product)) => {
                    reference.get_or_insert(product);
                    if best.is_none_or(|(_, b)| s < b) {
                        best = Some((variant, s));
                    }
                }
                Err(e) => log::warn!("tuning {variant} at {shape:?}: {e}"),
            }
        }
        let variant = best.map_or(fallback, |(v, _)| v);
        log::info!("matmul {shape:?}: {variant}");
        chosen.insert(shape, variant);
        cache.insert(k, variant.to_string());
        changed = true;
    }
    if changed {
        store(&cache);
    }
    chosen
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 16, item 7: the autotuner's operands stay within TUNING_SCRATCH whatever the model's
    /// shapes; small shapes are timed as they are.
    #[test]
    fn tuning_runs_fit_the_scratch_bound() {
        for shape in [
            (4096, 128, 50257, false, true),
            (50257, 4096, 128, true, false),
            (2048, 16384, 1024, false, false),
        ] {
            let (m, k, n, ta, tb) = bounded(shape);
            assert!(m * k + k * n + m * n <= TUNING_SCRATCH || m == 64, "{shape:?} -> {m}");
            assert_eq!((k, n, ta, tb), (shape.1, shape.2, shape.3, shape.4));
            assert!(m % 64 == 0 && m <= shape.0);
        }
        assert_eq!(bounded((512, 64, 48, false, true)), (512, 64, 48, false, true));
    }
}
