//! Resident memory of repeated runs, alone in its own test binary so that no other test's
//! allocations move the process's resident set while it measures.

mod common;

use wgslm::backend::{Backend, DType, HalfFormat, Op, View};

/// The process's resident set in bytes (Linux: /proc/self/statm, in pages of 4 KiB).
#[cfg(target_os = "linux")]
fn resident() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("/proc/self/statm");
    let pages: u64 = statm.split_whitespace().nth(1).expect("statm's second field").parse().unwrap();
    pages * 4096
}

/// Every kind of conversion, run 300 times, leaves the resident set where it was. On lavapipe
/// (Mesa 22.3) an earlier round_half grew it by ~170 KB per dispatch (52 MB here; a bf16 training
/// run reached gigabytes), from the form of one comparison in the kernel (docs/BENCHMARKS.md).
#[cfg(target_os = "linux")]
#[test]
fn conversions_run_again_and_again_without_growing_resident_memory() {
    let Some(mut be) = common::gpu_backend() else { return };
    let n = 1001;
    let f = View::new(be.alloc(DType::F32, n, "f32").unwrap(), 0, n);
    let h = View::new(be.alloc(DType::Half, n + 1, "half").unwrap(), 0, (n + 1).div_ceil(2));
    for format in [HalfFormat::Bf16, HalfFormat::F16] {
        let ops = [
            Op::Round { out: h, inp: f, first: 1, n, format },
            Op::Widen { out: f, inp: h, first: 1, n, format },
            Op::Quantize { out: f, inp: f, n, format },
        ];
        for op in ops {
            let name = op.name();
            let plan = be.prepare(&[op]).unwrap();
            // Warm up: the first runs build what every later run reuses.
            for _ in 0..20 {
                be.run(plan).unwrap();
            }
            be.sync().unwrap();
            let before = resident();
            for _ in 0..300 {
                be.run(plan).unwrap();
                be.sync().unwrap();
            }
            let grown = resident().saturating_sub(before);
            assert!(
                grown < 8 << 20,
                "{} ({format:?}): 300 runs grew the resident set by {:.1} MB",
                name,
                grown as f64 / 1e6
            );
        }
    }
}
