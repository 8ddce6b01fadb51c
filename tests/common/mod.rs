//! Shared test helpers: the GPU every GPU test runs on, or a loud skip.
#![allow(dead_code)]

use std::io::Write;
use std::sync::{Arc, OnceLock};

use wgslm::gpu::{DeviceChoice, GpuBackend, GpuContext};

/// The adapter GPU tests run on: `WGSLM_TEST_DEVICE` (default `auto`). Returns None, after one loud
/// line, when there is none and `WGSLM_REQUIRE_GPU` is not 1; fails the test when it is.
pub fn gpu() -> Option<Arc<GpuContext>> {
    static CTX: OnceLock<Option<Arc<GpuContext>>> = OnceLock::new();
    CTX.get_or_init(|| {
        let wanted = std::env::var("WGSLM_TEST_DEVICE").unwrap_or_else(|_| "auto".into());
        let choice: DeviceChoice = wanted.parse().expect("WGSLM_TEST_DEVICE");
        match GpuContext::new(&choice) {
            Ok(ctx) => {
                eprintln!("GPU tests run on {}", ctx.describe());
                Some(Arc::new(ctx))
            }
            Err(e) => {
                let require = std::env::var("WGSLM_REQUIRE_GPU").is_ok_and(|v| v == "1");
                assert!(!require, "WGSLM_REQUIRE_GPU=1 but no GPU adapter could be opened: {e}");
                // Straight to the stderr handle: the test harness captures eprintln! of passing tests.
                let _ = writeln!(
                    std::io::stderr(),
                    "!!!!! GPU TESTS SKIPPED: no GPU adapter ({e}). On Linux without a GPU, \
                     `apt-get install mesa-vulkan-drivers` gives a software Vulkan adapter; set \
                     WGSLM_REQUIRE_GPU=1 to make this a failure. !!!!!"
                );
                None
            }
        }
    })
    .clone()
}

/// A fresh GPU backend on the shared device, or None (see [`gpu`]).
pub fn gpu_backend() -> Option<GpuBackend> {
    gpu().map(GpuBackend::with_context)
}
