//! The `wgslm` command line. Parsing and printing only: the work is done by the library.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};

use std::io::Write;
use wgslm::backend::Backend;
use wgslm::gpu::kernels::MATMUL_VARIANTS;
use wgslm::gpu::{list_adapters, DeviceChoice, GpuBackend, GpuContext};

use wgslm::data::prepare::PrepareOptions;
use wgslm::data::Tok;
use wgslm::grad::GradOptions;
use wgslm::model::{hf, BatchShape, Gpt2, Mode};
use wgslm::sample::SampleOptions;
use wgslm::train::{checkpoint, RunOptions, TrainConfig};
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
    /// Tokenize text files (.txt, .jsonl with a "text" field) into tokenizer.json + train.bin + val.bin.
    Prepare {
        /// Input files; each .txt file is a document, each .jsonl line another.
        #[arg(long, required = true, num_args = 1..)]
        input: Vec<PathBuf>,
        /// Output directory.
        #[arg(long)]
        out: PathBuf,
        /// bpe (train a byte-level BPE), char, byte, or the path of a tokenizer.json or GPT-2 vocab.json.
        #[arg(long, default_value = "bpe")]
        tokenizer: String,
        /// Vocabulary size of a trained BPE (tokens, end-of-text included).
        #[arg(long, default_value_t = 4096)]
        vocab_size: usize,
        /// Fraction of the tokens, from the end, held out for validation.
        #[arg(long, default_value_t = 0.1)]
        val_fraction: f64,
        /// Seed of the document shuffle (inputs with several documents).
        #[arg(long, default_value_t = 1337)]
        seed: u64,
        /// Also split .txt files into documents at this separator, e.g. --split $'\n\n'.
        #[arg(long)]
        split: Option<String>,
    },
    /// Train a model. With no arguments: a small model on the embedded stories.
    Train {
        /// A TOML config (see configs/ and docs/CONFIG.md); the defaults when absent.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Override one config key, e.g. --set max_steps=100 (repeatable).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        overrides: Vec<String>,
        /// The run directory: checkpoints, metrics.jsonl, config.toml.
        #[arg(long, default_value = "runs/default")]
        out: PathBuf,
        /// Continue the run in --out from its newest complete checkpoint.
        #[arg(long)]
        resume: bool,
        /// auto, vulkan, metal, dx12, gl, an index from `wgslm devices`, or cpu.
        #[arg(long, default_value = "auto")]
        device: String,
    },
    /// Generate text from a model directory (or a run directory's newest checkpoint).
    Sample {
        #[arg(long)]
        model: PathBuf,
        #[arg(long, default_value = "")]
        prompt: String,
        #[arg(long, default_value_t = 200)]
        max_new_tokens: usize,
        #[arg(long, default_value_t = 1.0)]
        temperature: f32,
        /// Keep only the k most likely tokens (0 = all).
        #[arg(long, default_value_t = 0)]
        top_k: usize,
        /// Nucleus sampling: keep tokens up to this cumulative probability (1 = all).
        #[arg(long, default_value_t = 1.0)]
        top_p: f32,
        #[arg(long, default_value_t = 1337)]
        seed: u64,
        #[arg(long, default_value = "auto")]
        device: String,
    },
    /// Mean loss and perplexity of a model over a whole token file.
    Eval {
        #[arg(long)]
        model: PathBuf,
        /// A token file from `wgslm prepare` (llm.c format).
        #[arg(long)]
        data: PathBuf,
        /// Sequences per batch.
        #[arg(long, default_value_t = 8)]
        batch_size: usize,
        #[arg(long, default_value = "auto")]
        device: String,
    },
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
        Command::Prepare { input, out, tokenizer, vocab_size, val_fraction, seed, split } => {
            let opts = PrepareOptions {
                inputs: input,
                out,
                tokenizer: tokenizer.parse()?,
                vocab_size,
                val_fraction,
                seed,
                split,
            };
            let p = wgslm::data::prepare::prepare(&opts)?;
            println!(
                "{} documents -> {} train + {} val tokens, vocabulary {}; wrote {}",
                p.documents,
                p.train_tokens,
                p.val_tokens,
                p.vocab_size,
                opts.out.display()
            );
            Ok(())
        }
        Command::Train { config, overrides, out, resume, device } => {
            let cfg = TrainConfig::load(config.as_deref(), &overrides)?;
            let opts = RunOptions { out, resume, device: device.parse()?, quiet: false, stop_after: None };
            let s = wgslm::train::run(&cfg, &opts)?;
            println!(
                "trained {} steps in {:.1} s ({:.0} tokens/s on {}); loss {} -> {:.4}{}",
                s.steps,
                s.seconds,
                s.tokens_per_s,
                s.device,
                s.first_loss.map_or("-".into(), |l| format!("{l:.4}")),
                s.last_loss,
                s.val_loss.map_or(String::new(), |v| format!(", val loss {v:.4}"))
            );
            println!(
                "model: {}\n  sample it: wgslm sample --model {} --prompt \"Once upon a time\"",
                s.checkpoint.display(),
                opts.out.display()
            );
            Ok(())
        }
        Command::Sample { model, prompt, max_new_tokens, temperature, top_k, top_p, seed, device } => {
            let opts = SampleOptions { max_new_tokens, temperature, top_k, top_p, seed };
            sample(&model, &prompt, &opts, &device)
        }
        Command::Eval { model, data, batch_size, device } => eval(&model, &data, batch_size, &device),
        Command::Grad { model, batch, out, adamw_steps, lr, beta1, beta2, eps, weight_decay, device } => {
            let opts = GradOptions { adamw_steps, lr, beta1, beta2, eps, weight_decay };
            grad(&model, &batch, &out, &opts, &device)
        }
    }
}

/// A model directory (or a run's newest checkpoint) and its tokenizer, on a (B, n_positions) frame.
fn open_model(dir: &Path, b: usize, device: &str) -> anyhow::Result<(Gpt2, Tok)> {
    let dir = checkpoint::resolve_model_dir(dir)?;
    let (config, params) = hf::load(&dir)?;
    let tok = Tok::load(&dir.join("tokenizer.json"))?;
    if tok.vocab_size() > config.vocab_size {
        bail!(
            "{}: the tokenizer has {} tokens but the model only {}",
            dir.display(),
            tok.vocab_size(),
            config.vocab_size
        );
    }
    let backend = wgslm::open_backend(&device.parse()?)?;
    let shape = BatchShape { b, t: config.n_positions, accum: 1 };
    let mut model = Gpt2::new(backend, config, shape, Mode::Inference)?;
    model.set_params(&params)?;
    Ok((model, tok))
}

fn sample(dir: &Path, prompt: &str, opts: &SampleOptions, device: &str) -> anyhow::Result<()> {
    opts.validate()?;
    let (mut model, tok) = open_model(dir, 1, device)?;
    let mut out = std::io::stdout();
    print!("{prompt}");
    wgslm::sample::generate(&mut model, &tok, prompt, opts, |piece| {
        let _ = write!(out, "{piece}");
        let _ = out.flush();
    })?;
    println!();
    Ok(())
}

fn eval(dir: &Path, data: &Path, batch_size: usize, device: &str) -> anyhow::Result<()> {
    if batch_size == 0 {
        bail!("--batch-size must be at least 1");
    }
    let tokens = wgslm::data::tokenfile::read(data)?;
    if tokens.len() < 2 {
        bail!("{}: {} tokens; evaluation needs at least 2", data.display(), tokens.len());
    }
    let (mut model, _) = open_model(dir, batch_size, device)?;
    wgslm::data::loader::check_ids(&tokens, model.config.vocab_size, &data.display().to_string())?;
    let t = model.shape.t;
    // Every token after the first is predicted once: windows of T inputs, stepping by T; the last
    // window is shorter, and positions past the end are padding whose losses are not counted.
    let windows: Vec<usize> = (0..tokens.len() - 1).step_by(t).collect();
    let (mut sum, mut count) = (0.0f64, 0usize);
    for batch in windows.chunks(batch_size) {
        let (mut x, mut y, mut valid) = (Vec::new(), Vec::new(), Vec::new());
        for row in 0..batch_size {
            let start = batch.get(row).copied();
            for j in 0..t {
                let at = start.map(|s| s + j).filter(|&p| p + 1 < tokens.len());
                x.push(at.map_or(0, |p| tokens[p]));
                y.push(at.map_or(0, |p| tokens[p + 1]));
                valid.push(at.is_some());
            }
        }
        model.set_batch(0, &x, &y)?;
        model.eval_loss()?;
        for (l, ok) in model.last_losses()?.iter().zip(&valid) {
            if *ok {
                sum += *l as f64;
                count += 1;
            }
        }
    }
    let mean = sum / count as f64;
    println!("{count} tokens: mean loss {mean:.4}, perplexity {:.3}", mean.exp());
    Ok(())
}

fn grad(model: &Path, batch: &Path, out: &Path, opts: &GradOptions, device: &str) -> anyhow::Result<()> {
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
        println!("    features:  {}", if features.is_empty() { "none".into() } else { features.join(", ") });
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
            bail!("--kernel {k}: no such kernel; the kernels are {}", names.join(", "));
        }
    }
    println!("{:<32} {:>5}  {:>10}  result", "kernel", "cases", "worst err");
    let mut failures = Vec::new();
    let runs = names.into_iter().filter(|n| only.is_none_or(|k| k == *n)).flat_map(|name| {
        // Kernels built on matmul are checked with every matmul variant.
        let variants: &[&'static str] = if name.starts_with("matmul") { MATMUL_VARIANTS } else { &[""] };
        variants.iter().map(move |v| (name, *v))
    });
    for (kernel, variant) in runs {
        let name = if variant.is_empty() { kernel.to_string() } else { format!("{kernel} [{variant}]") };
        let outcomes = verify::check_kernel(kernel, &mut || {
            let mut gpu = GpuBackend::with_context(ctx.clone());
            if !variant.is_empty() {
                gpu.set_matmul_variant(variant)?;
            }
            Ok(Box::new(gpu) as Box<dyn Backend>)
        });
        let worst =
            outcomes.iter().map(|o| o.worst).fold(0.0f64, |a, b| if b.is_nan() || b > a { b } else { a });
        let failed: Vec<_> = outcomes.iter().filter(|o| !o.passed()).collect();
        let result = if failed.is_empty() {
            "PASS".to_string()
        } else {
            format!("FAIL ({} of {})", failed.len(), outcomes.len())
        };
        println!("{name:<32} {:>5}  {worst:>10.2e}  {result}", outcomes.len());
        failures.extend(failed.into_iter().cloned());
    }
    if !failures.is_empty() {
        println!(
            "\nfailures (tolerance {:.0e} relative L2; each case also runs twice for identical bits):",
            verify::TOLERANCE
        );
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
