//! Every GPU kernel against its CPU twin, on random data at awkward sizes, plus determinism (each case
//! runs twice and must give the same bits). The cases live in `wgslm::verify`, shared with
//! `wgslm verify`.

mod common;

use std::io::Write;

use wgslm::backend::Backend;
use wgslm::gpu::GpuBackend;
use wgslm::verify;

fn check(kernel: &str) {
    let Some(ctx) = common::gpu() else { return };
    // Kernels built on matmul run once per matmul variant, the fused attention and row-norm kernels
    // once per kernel family.
    for variant in verify::variants(kernel) {
        if let Some(why) = ctx.kernel_unavailable(kernel, variant) {
            // Straight to the stderr handle: the harness would swallow eprintln! of a passing test, and
            // a skipped variant must show in CI's output with its reason.
            let _ =
                writeln!(std::io::stderr(), "SKIPPED {kernel} [{variant}] on {}: {why}", ctx.adapter.title());
            continue;
        }
        let outcomes = verify::check_kernel(kernel, &mut || {
            let mut gpu = GpuBackend::with_context(ctx.clone());
            gpu.set_variant(kernel, variant)?;
            Ok(Box::new(gpu) as Box<dyn Backend>)
        });
        assert!(!outcomes.is_empty(), "no cases for {kernel}");
        let report: Vec<String> = outcomes.iter().map(|o| o.line()).collect();
        eprintln!("{variant}:\n{}", report.join("\n"));
        assert!(
            outcomes.iter().all(|o| o.passed()),
            "{kernel} ({variant}) disagrees with its twin:\n{}",
            report.join("\n")
        );
    }
}

macro_rules! matches_cpu {
    ($($test:ident => $kernel:literal),* $(,)?) => {
        $(
            #[test]
            fn $test() {
                check($kernel);
            }
        )*

        /// Every kernel with cases has a test above, and every test names a kernel with cases.
        #[test]
        fn every_kernel_has_a_matches_cpu_test() {
            let tested = [$($kernel),*];
            let mut names = verify::kernel_names();
            names.sort();
            let mut tested_sorted = tested.to_vec();
            tested_sorted.sort();
            assert_eq!(names, tested_sorted);
        }
    };
}

matches_cpu! {
    zero_matches_cpu => "zero",
    encoder_forward_matches_cpu => "encoder_forward",
    encoder_backward_matches_cpu => "encoder_backward",
    layernorm_forward_matches_cpu => "layernorm_forward",
    layernorm_backward_matches_cpu => "layernorm_backward",
    rmsnorm_forward_matches_cpu => "rmsnorm_forward",
    rmsnorm_backward_matches_cpu => "rmsnorm_backward",
    rope_forward_matches_cpu => "rope_forward",
    rope_backward_matches_cpu => "rope_backward",
    swiglu_forward_matches_cpu => "swiglu_forward",
    swiglu_backward_matches_cpu => "swiglu_backward",
    matmul_matches_cpu => "matmul",
    matmul_f16_matches_cpu => "matmul_f16",
    matmul_forward_matches_cpu => "matmul_forward",
    matmul_backward_matches_cpu => "matmul_backward",
    attention_forward_matches_cpu => "attention_forward",
    attention_decode_matches_cpu => "attention_decode",
    gather_row_matches_cpu => "gather_row",
    scatter_row_matches_cpu => "scatter_row",
    attention_backward_matches_cpu => "attention_backward",
    flash_attention_forward_matches_cpu => "flash_attention_forward",
    flash_attention_backward_matches_cpu => "flash_attention_backward",
    dropout_forward_matches_cpu => "dropout_forward",
    dropout_backward_matches_cpu => "dropout_backward",
    gelu_forward_matches_cpu => "gelu_forward",
    round_half_matches_cpu => "round_half",
    widen_half_matches_cpu => "widen_half",
    quantize_half_matches_cpu => "quantize_half",
    gelu_backward_matches_cpu => "gelu_backward",
    residual_forward_matches_cpu => "residual_forward",
    residual_backward_matches_cpu => "residual_backward",
    crossentropy_forward_matches_cpu => "crossentropy_forward",
    crossentropy_backward_matches_cpu => "crossentropy_backward",
    reduce_sum_matches_cpu => "reduce_sum",
    global_norm_matches_cpu => "global_norm",
    adamw_update_matches_cpu => "adamw_update",
}

/// Whole-buffer ops split into binding-sized chunks on adapters with small binding limits; the
/// chunked paths must agree with the twins too.
#[test]
fn chunked_whole_buffer_ops_match_cpu() {
    let Some(ctx) = common::gpu() else { return };
    for kernel in ["zero", "global_norm", "adamw_update"] {
        let outcomes = verify::check_kernel(kernel, &mut || {
            let mut gpu = GpuBackend::with_context(ctx.clone());
            gpu.limit_bindings(1000);
            Ok(Box::new(gpu) as Box<dyn Backend>)
        });
        assert!(!outcomes.is_empty(), "no cases for {kernel}");
        let report: Vec<String> = outcomes.iter().map(|o| o.line()).collect();
        assert!(outcomes.iter().all(|o| o.passed()), "{kernel} in chunks:\n{}", report.join("\n"));
    }
}

/// docs/KERNELS.md: every kernel that runs on a 1-D grid folded into (x, y) past 65,535 workgroups has
/// a case whose grid is folded, so the fold is tested for each of them (kernels on 2-D grids of tiles
/// never fold), in both kernel families. Needs no GPU: it maps the cases' ops to their dispatches.
#[test]
fn every_folded_kernel_is_tested_past_65535_workgroups() {
    use std::collections::BTreeMap;
    use wgslm::backend::{DType, View};
    use wgslm::cpu::CpuBackend;
    use wgslm::gpu::kernels::{calls, scratch_len, Env};
    let view = |cpu: &mut CpuBackend, len| View::new(cpu.alloc(DType::F32, len, "env").unwrap(), 0, len);
    // Per entry point: whether every dispatch of it is 1-D, and whether one is folded.
    let mut entries: BTreeMap<&'static str, (bool, bool)> = BTreeMap::new();
    for (case, family) in verify::cases().iter().flat_map(|c| wgslm::gpu::kernels::FAMILIES.map(|f| (c, f))) {
        let mut backend = CpuBackend::new();
        for op in verify::case_ops(case, &mut backend).unwrap() {
            let max_binding = usize::MAX / 2;
            let env = Env {
                choices: Default::default(),
                custom: None,
                matmul: "rows16x32",
                subgroup_lanes: 8,
                dummy: view(&mut backend, 1),
                scratch: view(&mut backend, scratch_len(&op, max_binding).max(1)),
                max_binding,
                k_chunk: wgslm::gpu::kernels::MATMUL_K_CHUNK,
                family,
            };
            for call in calls(&op, &env) {
                let e = entries.entry(call.entry).or_insert((true, false));
                let [x, y, z] = call.groups;
                let folded = x == 65_535 && y > 1 && z == 1;
                e.0 &= y == 1 && z == 1 || folded;
                e.1 |= folded;
            }
        }
    }
    // Grids that do not grow with a product of the shapes: one workgroup (reduce_sum,
    // global_norm_final), a fixed 256 (global_norm_partial), or one invocation per channel or per row
    // of one tensor (colsum_final: C; encoder_backward_wpe: T·C; the flash backward's D: B·NH·T), or
    // one per query head (attention_decode) or per output column of a matrix-vector product
    // (matmul_gemv_nn), which would need a model past 4 million of those to fold.
    let small = [
        "reduce_sum",
        "global_norm_final",
        "global_norm_partial",
        "colsum_final",
        "encoder_backward_wpe",
        "flash_attention_backward_dsum",
        "attention_decode",
        "matmul_gemv_nn",
    ];
    let untested: Vec<&str> = entries
        .iter()
        .filter(|(e, &(one_d, folded))| one_d && !folded && !small.contains(e))
        .map(|(e, _)| *e)
        .collect();
    assert!(untested.is_empty(), "1-D kernels never dispatched past 65,535 workgroups: {untested:?}");
}
