//! Results people compare across machines and runs: the `wgslm bench suite` file (its schema and
//! loader), the one-page HTML report built from such files (`wgslm report`), and pictures of training
//! runs (`wgslm plot`, and `metrics.svg` in every run directory).
//!
//! Schemas are versioned: a file says what it is (`schema`) and which version of it (`version`). The
//! loader reads every version this build knows and refuses newer ones with a message that says so.

pub mod charts;
pub mod html;
pub mod plot;

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::bench::kernels::Timing;
use crate::gpu::GpuContext;
use crate::verify;
use crate::{fsutil, Error, Result};

/// `schema` of a `wgslm bench suite --json` file.
pub const SUITE_SCHEMA: &str = "wgslm-bench-suite";
/// The suite version this build writes and the newest it reads.
pub const SUITE_VERSION: u32 = 1;
/// `schema` of a `wgslm bench kernels --json` file (files written before schemas existed have none
/// and load as version 0: the same fields).
pub const KERNELS_SCHEMA: &str = "wgslm-bench-kernels";
pub const KERNELS_VERSION: u32 = 1;

/// The machine a suite ran on.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Machine {
    /// Operating system, e.g. "Debian GNU/Linux 12 (bookworm)" (or "linux" where no release file says).
    pub os: String,
    pub arch: String,
    /// The CPU's model name, where the OS tells it.
    pub cpu: String,
    pub cores: usize,
    /// wgslm's version and the git commit it was built from ("unknown" outside a git checkout).
    pub wgslm: String,
    pub commit: String,
}

impl Machine {
    pub fn this() -> Self {
        let os = std::fs::read_to_string("/etc/os-release")
            .ok()
            .and_then(|t| {
                t.lines()
                    .find_map(|l| l.strip_prefix("PRETTY_NAME=").map(|v| v.trim_matches('"').to_string()))
            })
            .unwrap_or_else(|| std::env::consts::OS.to_string());
        let cpu = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|t| {
                t.lines().find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    (k.trim() == "model name").then(|| v.trim().to_string())
                })
            })
            .unwrap_or_else(|| "unknown".into());
        Machine {
            os,
            arch: std::env::consts::ARCH.to_string(),
            cpu,
            cores: std::thread::available_parallelism().map_or(0, |n| n.get()),
            wgslm: env!("CARGO_PKG_VERSION").to_string(),
            commit: env!("WGSLM_GIT_COMMIT").to_string(),
        }
    }
}

/// The adapter a suite (or a kernel benchmark) ran on.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Adapter {
    pub name: String,
    /// vulkan, metal, dx12 or gl (`backend` in files written before schemas existed).
    #[serde(alias = "backend")]
    pub api: String,
    pub device_type: String,
    pub driver: String,
    #[serde(default)]
    pub vendor: u32,
    #[serde(default)]
    pub device: u32,
    /// The optional features wgslm uses that the adapter has.
    #[serde(default)]
    pub features: Vec<String>,
    /// The limits wgslm's kernels depend on.
    #[serde(default)]
    pub limits: BTreeMap<String, u64>,
    /// Smallest and largest subgroup size, where the adapter has subgroups.
    #[serde(default)]
    pub subgroup_sizes: Option<(u32, u32)>,
}

impl Adapter {
    pub fn of(ctx: &GpuContext) -> Self {
        let a = &ctx.adapter;
        let l = &a.limits;
        let limits = [
            ("max_buffer_size", l.max_buffer_size),
            ("max_storage_buffer_binding_size", l.max_storage_buffer_binding_size),
            ("max_storage_buffers_per_shader_stage", l.max_storage_buffers_per_shader_stage as u64),
            ("max_compute_workgroup_storage_size", l.max_compute_workgroup_storage_size as u64),
            ("max_compute_invocations_per_workgroup", l.max_compute_invocations_per_workgroup as u64),
            ("max_compute_workgroups_per_dimension", l.max_compute_workgroups_per_dimension as u64),
        ];
        Adapter {
            name: a.info.name.clone(),
            api: a.info.backend.to_str().to_string(),
            device_type: format!("{:?}", a.info.device_type),
            driver: a.driver(),
            vendor: a.info.vendor,
            device: a.info.device,
            features: a.feature_names().iter().map(|f| f.to_string()).collect(),
            limits: limits.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
            subgroup_sizes: a
                .features
                .contains(wgpu::Features::SUBGROUP)
                .then_some((a.info.subgroup_min_size, a.info.subgroup_max_size)),
        }
    }

    /// "name (api)": how a report labels the adapter.
    pub fn label(&self) -> String {
        format!("{} ({})", self.name, self.api)
    }
}

/// `bench train` on one config, as the suite records it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TrainResult {
    /// The config's name (e.g. "bench-a").
    pub config: String,
    pub arch: String,
    pub params: usize,
    pub tokens_per_step: usize,
    pub steps: usize,
    /// (NaN, written as null, if the timing was not finite.)
    #[serde(with = "nan_as_null")]
    pub tokens_per_s: f64,
    #[serde(with = "nan_as_null")]
    pub ms_per_step: f64,
    /// Bytes in GPU buffers after the steps, and the analytic count.
    pub allocated_bytes: Option<u64>,
    pub analytic_bytes: u64,
    /// Why the config could not be trained here, if it could not.
    #[serde(default)]
    pub error: Option<String>,
    /// The matmul policy it trained with: "auto" (the autotuner, as `wgslm train` picks), or the
    /// variant a quick suite pinned (the winner of its kernel stage). Absent in files written before.
    #[serde(default)]
    pub matmul: Option<String>,
}

/// One machine's `wgslm bench suite` file.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Suite {
    pub schema: String,
    pub version: u32,
    /// When it ran, RFC 3339 UTC.
    pub created: String,
    /// Whether it ran with --quick (fewer cases, smaller shapes, fewer steps).
    pub quick: bool,
    pub seconds: f64,
    pub machine: Machine,
    pub adapter: Adapter,
    pub verify: Vec<verify::Row>,
    pub kernels: Vec<Timing>,
    pub train: Vec<TrainResult>,
}

/// A `wgslm bench kernels --json` file: one kernel's variants on one adapter, drop-in kernels among them.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct KernelsFile {
    #[serde(default)]
    pub schema: Option<String>,
    #[serde(default)]
    pub version: u32,
    pub adapter: Adapter,
    pub kernel: String,
    pub results: Vec<Timing>,
}

/// A file `wgslm report` reads.
#[derive(Clone, Debug)]
pub enum Input {
    // Both boxed: each holds an adapter with its limits, a few hundred bytes.
    Suite(Box<Suite>),
    Kernels(Box<KernelsFile>),
}

/// Reads a suite or kernel-benchmark file, whichever it is; refuses other JSON, newer schema versions
/// and malformed files with a message naming the file.
pub fn load(path: &Path) -> Result<Input> {
    let what = "expected a file written by `wgslm bench suite --json` or `wgslm bench kernels --json`";
    let bytes = fsutil::read(path)?;
    let value: serde_json::Value = serde_json::from_slice(&bytes)
        .map_err(|e| Error::Invalid(format!("{}: not JSON ({e}); {what}", path.display())))?;
    let schema_owned = value.get("schema").and_then(|s| s.as_str()).map(str::to_string);
    let schema = schema_owned.as_deref();
    let version = value.get("version").and_then(|v| v.as_u64());
    let malformed = |e: serde_json::Error| {
        Error::Invalid(format!(
            "{}: a {} file with a missing or wrong field ({e})",
            path.display(),
            schema.unwrap_or("kernels")
        ))
    };
    let newer = |v: u64, known: u32| {
        Error::Invalid(format!(
            "{}: {} version {v} is newer than this wgslm reads (up to {known}); update wgslm to read it",
            path.display(),
            schema.unwrap_or_default()
        ))
    };
    match (schema, version) {
        (Some(SUITE_SCHEMA), Some(v)) if v > SUITE_VERSION as u64 => Err(newer(v, SUITE_VERSION)),
        (Some(SUITE_SCHEMA), Some(_)) => {
            Ok(Input::Suite(Box::new(serde_json::from_value(value).map_err(malformed)?)))
        }
        (Some(KERNELS_SCHEMA), Some(v)) if v > KERNELS_VERSION as u64 => Err(newer(v, KERNELS_VERSION)),
        // Version 0: written by `bench kernels` before files carried a schema; the same fields.
        (Some(KERNELS_SCHEMA), Some(_)) | (None, None)
            if value.get("results").is_some() && value.get("adapter").is_some() =>
        {
            Ok(Input::Kernels(Box::new(serde_json::from_value(value).map_err(malformed)?)))
        }
        (Some(KERNELS_SCHEMA), Some(_)) => Err(Error::Invalid(format!(
            "{}: a {KERNELS_SCHEMA} file without \"adapter\" or \"results\"; {what}",
            path.display()
        ))),
        (Some(s), _) if s == SUITE_SCHEMA || s == KERNELS_SCHEMA => {
            Err(Error::Invalid(format!("{}: {s} without a version number; {what}", path.display())))
        }
        (Some(s), _) => {
            Err(Error::Invalid(format!("{}: schema {s:?} is not one wgslm reads; {what}", path.display())))
        }
        (None, _) => Err(Error::Invalid(format!("{}: JSON without a schema; {what}", path.display()))),
    }
}

/// Serializes NaN and infinities as null (JSON has neither) and reads null back as NaN.
pub mod nan_as_null {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &f64, s: S) -> std::result::Result<S::Ok, S::Error> {
        if v.is_finite() {
            s.serialize_f64(*v)
        } else {
            s.serialize_none()
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<f64, D::Error> {
        Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
    }
}

/// The current time, RFC 3339 UTC to the second.
pub fn now() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}
