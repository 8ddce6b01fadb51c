//! The `wgslm` command line. Parsing and printing only: the work is done by the library.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};

use wgslm::backend::Backend;
use wgslm::gpu::{list_adapters, DeviceChoice, GpuBackend, GpuContext};
use wgslm::grad::GradOptions;
use wgslm::verify;

#[derive(Parser)]
#[command(
    name = "wgslm",
    version,
    about = "Train small GPT-2 style language models on any GPU with WGSL kernels"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// List every GPU adapter: index, name, API, type, driver, limits and optional features.
    Devices,
    /// Loss, logits and every gradient of a Hugging Face GPT-2 on one batch (and optionally AdamW
    /// steps), written as safetensors in the format of the PyTorch reference fixture.
    Grad {
        /// A directory with config.json and model.safetensors (GPT2LMHeadModel layout).
        #[arg(long)]
        model: PathBuf,
        /// safetensors with `inputs` and `targets`, [B, T], int32 or int64.
        #[arg(long)]
        batch: PathBuf,
        /// Where to write the results.
        #[arg(long)]
        out: PathBuf,
        /// Also run this many AdamW steps on the same batch (writes `losses` and `step1.*`).
        #[arg(long, default_value_t = 0)]
        adamw_steps: usize,
        #[arg(long, default_value_t = 1e-3)]
        lr: f32,
        #[arg(long, default_value_t = 0.9)]
        beta1: f32,
        #[arg(long, default_value_t = 0.95)]
        beta2: f32,
        #[arg(long, default_value_t = 1e-8)]
        eps: f32,
        /// Decoupled weight decay, applied to tensors with two or more dimensions.
        #[arg(long, default_value_t = 0.1)]
        weight_decay: f32,
        /// auto, vulkan, metal, dx12, gl, an index from `wgslm devices`, or cpu.
        #[arg(long, default_value = "auto")]
        device: String,
    },
    /// Check every kernel on an adapter against its CPU twin; exits non-zero on any failure.
    Verify {
        /// auto, vulkan, metal, dx12, gl, or an index from `wgslm devices`.
        #[arg(long, default_value = "auto")]
        device: String,
        /// Check only this kernel (e.g. layernorm_backward).
        #[arg(long)]
        kernel: Option<String>,
    },
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Devices => devices(),
        Command::Verify { device, kernel } => verify(&device, kernel.as_deref()),
        Command::Grad {
            model,
            batch,
            out,
            adamw_steps,
            lr,
            beta1,
            beta2,
            eps,
            weight_decay,
            device,
        } => {
            let opts = GradOptions {
                adamw_steps,
                lr,
                beta1,
                beta2,
                eps,
                weight_decay,
            };
            grad(&model, &batch, &out, &opts, &device)
        }
    }
}

fn grad(
    model: &Path,
    batch: &Path,
    out: &Path,
    opts: &GradOptions,
    device: &str,
) -> anyhow::Result<()> {
    let backend = wgslm::open_backend(&device.parse()?)?;
    eprintln!("running on {}", backend.describe());
    let result = wgslm::grad::run(backend, model, batch, opts)?;
    wgslm::grad::write(out, &result)?;
    println!("loss {:.6}", result.loss);
    if !result.losses.is_empty() {
        let losses: Vec<String> = result.losses.iter().map(|l| format!("{l:.6}")).collect();
        println!("losses before each AdamW step: {}", losses.join(" "));
    }
    println!("wrote {}", out.display());
    Ok(())
}

fn mib(bytes: u64) -> String {
    format!("{} MiB", bytes / (1 << 20))
}

fn devices() -> anyhow::Result<()> {
    let adapters = list_adapters();
    if adapters.is_empty() {
        bail!(
            "no GPU adapter found (no Vulkan, Metal, DX12 or GL driver); on Linux without a GPU, \
             `apt-get install mesa-vulkan-drivers` provides a software Vulkan adapter"
        );
    }
    for a in &adapters {
        let l = &a.limits;
        println!("[{}] {}", a.index, a.info.name);
        println!("    api:       {}", a.info.backend.to_str());
        println!("    type:      {:?}", a.info.device_type);
        println!("    driver:    {}", a.driver());
        println!(
            "    limits:    buffer {}, storage binding {}, workgroup memory {} KiB, {} invocations per workgroup, {} workgroups per dimension",
            mib(l.max_buffer_size),
            mib(l.max_storage_buffer_binding_size),
            l.max_compute_workgroup_storage_size / 1024,
            l.max_compute_invocations_per_workgroup,
            l.max_compute_workgroups_per_dimension,
        );
        let features = a.feature_names();
        println!(
            "    features:  {}",
            if features.is_empty() {
                "none".into()
            } else {
                features.join(", ")
            }
        );
    }
    Ok(())
}

fn verify(device: &str, only: Option<&str>) -> anyhow::Result<()> {
    let choice: DeviceChoice = device.parse()?;
    if choice == DeviceChoice::Cpu {
        bail!("--device cpu would check the twins against themselves; name a GPU adapter");
    }
    let ctx = Arc::new(GpuContext::new(&choice).context("opening the adapter to verify")?);
    println!("verifying every kernel on {}", ctx.describe());
    let names = verify::kernel_names();
    if let Some(k) = only {
        if !names.contains(&k) {
            bail!(
                "--kernel {k}: no such kernel; the kernels are {}",
                names.join(", ")
            );
        }
    }
    println!(
        "{:<24} {:>5}  {:>10}  result",
        "kernel", "cases", "worst err"
    );
    let mut failures = Vec::new();
    for name in names.into_iter().filter(|n| only.is_none_or(|k| k == *n)) {
        let outcomes = verify::check_kernel(name, &mut || {
            Ok(Box::new(GpuBackend::with_context(ctx.clone())) as Box<dyn Backend>)
        });
        let worst =
            outcomes
                .iter()
                .map(|o| o.worst)
                .fold(0.0f64, |a, b| if b.is_nan() || b > a { b } else { a });
        let failed: Vec<_> = outcomes.iter().filter(|o| !o.passed()).collect();
        let result = if failed.is_empty() {
            "PASS".to_string()
        } else {
            format!("FAIL ({} of {})", failed.len(), outcomes.len())
        };
        println!("{name:<24} {:>5}  {worst:>10.2e}  {result}", outcomes.len());
        failures.extend(failed.into_iter().cloned());
    }
    if !failures.is_empty() {
        println!("\nfailures (tolerance {:.0e} relative L2; each case also runs twice for identical bits):", verify::TOLERANCE);
        for f in &failures {
            println!("  {}", f.line());
        }
        bail!("{} case(s) failed on {}", failures.len(), ctx.describe());
    }
    println!(
        "all kernels agree with their CPU twins (relative L2 <= {:.0e}) and are deterministic",
        verify::TOLERANCE
    );
    Ok(())
}
