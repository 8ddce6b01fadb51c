//! The `wgslm` command line. Parsing and printing only: the work is done by the library.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};

use std::io::Write;
use wgslm::gpu::{list_adapters, DeviceChoice, GpuContext};

use wgslm::data::prepare::PrepareOptions;
use wgslm::data::Tok;
use wgslm::dist::World;
use wgslm::grad::GradOptions;
use wgslm::model::{hf, BatchShape, Mode, Model};
use wgslm::report;
use wgslm::sample::SampleOptions;
use wgslm::train::{checkpoint, RunOptions, TrainConfig};
use wgslm::verify;

#[derive(Parser)]
#[command(
    name = "wgslm",
    version,
    about = "Train small GPT-2 and Llama language models on any GPU with WGSL kernels"
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
        /// Tokens per file: a split with more is written as shards (tokens_train_000000.bin, ...).
        #[arg(long, default_value_t = wgslm::data::prepare::DEFAULT_SHARD_TOKENS)]
        shard_tokens: usize,
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
        /// Matmul kernels: auto (autotune per shape), default, or a variant to pin (the `matmul` key).
        #[arg(long)]
        matmul: Option<String>,
        /// auto, vulkan, metal, dx12, gl, an index from `wgslm devices`, or cpu. Under mpirun, `auto`
        /// gives each rank on a machine the next adapter of the best kind.
        #[arg(long, default_value = "auto")]
        device: String,
        /// Fault injection (tests): make the gradients of these steps (1-based) non-finite...
        #[arg(long, hide = true, value_delimiter = ',')]
        nan_steps: Vec<u64>,
        /// ... only on this rank.
        #[arg(long, hide = true)]
        nan_rank: Option<usize>,
    },
    /// Generate text from a model directory (or a run directory's newest checkpoint).
    Sample {
        #[arg(long)]
        model: PathBuf,
        #[arg(long, default_value = "")]
        prompt: String,
        #[arg(long, default_value_t = 200)]
        max_new_tokens: usize,
        #[arg(long, default_value_t = 1.0, allow_negative_numbers = true)]
        temperature: f32,
        /// Keep only the k most likely tokens (0 = all).
        #[arg(long, default_value_t = 0)]
        top_k: usize,
        /// Nucleus sampling: keep tokens up to this cumulative probability (1 = all).
        #[arg(long, default_value_t = 1.0, allow_negative_numbers = true)]
        top_p: f32,
        #[arg(long, default_value_t = 1337)]
        seed: u64,
        #[arg(long, default_value = "auto")]
        device: String,
    },
    /// Write a model (or a run's newest checkpoint) as a new Hugging Face directory with its weights
    /// in bf16, f16 or f32; transformers loads it unchanged.
    Export {
        #[arg(long)]
        model: PathBuf,
        /// The new directory (must not exist).
        #[arg(long)]
        out: PathBuf,
        /// bf16 (f32's range, 8 bits of mantissa), f16 (refused if a weight is beyond ±65504) or f32.
        #[arg(long, default_value = "bf16")]
        dtype: String,
    },
    /// Mean loss and perplexity of a model over a whole token file.
    Eval {
        #[arg(long)]
        model: PathBuf,
        /// A token file from `wgslm prepare` (llm.c format), or a data directory (its validation
        /// split: val.bin or the `*_val_*.bin` shards).
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
    /// Loss, logits and every gradient of a Hugging Face GPT-2 or Llama on one batch (and optionally AdamW
    /// steps), written as safetensors in the format of the PyTorch reference fixture.
    Grad {
        /// A Hugging Face GPT-2 or Llama directory (config.json and model.safetensors).
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
        #[arg(long, default_value_t = 1e-3, allow_negative_numbers = true)]
        lr: f32,
        #[arg(long, default_value_t = 0.9, allow_negative_numbers = true)]
        beta1: f32,
        #[arg(long, default_value_t = 0.95, allow_negative_numbers = true)]
        beta2: f32,
        #[arg(long, default_value_t = 1e-8, allow_negative_numbers = true)]
        eps: f32,
        /// Decoupled weight decay, applied to tensors with two or more dimensions.
        #[arg(long, default_value_t = 0.1, allow_negative_numbers = true)]
        weight_decay: f32,
        /// auto, vulkan, metal, dx12, gl, an index from `wgslm devices`, or cpu.
        #[arg(long, default_value = "auto")]
        device: String,
    },
    /// Benchmarks: kernel variants (checked, then timed), training steps, a long soak run.
    Bench {
        #[command(subcommand)]
        what: BenchCommand,
    },
    /// One HTML page comparing machines side by side, from `bench suite` (and `bench kernels`) JSON files.
    Report {
        /// Files from `wgslm bench suite --json` or `wgslm bench kernels --json`, one column per adapter.
        #[arg(required = true, num_args = 1..)]
        files: Vec<PathBuf>,
        #[arg(long, default_value = "report.html")]
        out: PathBuf,
    },
    /// Loss (against steps and tokens), learning rate, gradient norm and tokens/s of runs, overlaid.
    Plot {
        /// Run directories written by `wgslm train`.
        #[arg(required = true, num_args = 1..)]
        runs: Vec<PathBuf>,
        /// An .svg or .png file.
        #[arg(long, default_value = "metrics.svg")]
        out: PathBuf,
    },
    /// Check every kernel on an adapter against its CPU twin; exits non-zero on any failure.
    Verify {
        /// auto, vulkan, metal, dx12, gl, or an index from `wgslm devices`.
        #[arg(long, default_value = "auto")]
        device: String,
        /// Check only this kernel (e.g. layernorm_backward).
        #[arg(long)]
        kernel: Option<String>,
        /// Only the smallest cases of each kernel (the awkward sizes 1, 7, 37, ...): seconds, not minutes.
        #[arg(long)]
        quick: bool,
    },
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Every variant of a kernel at each shape: checked against the CPU twin, then timed.
    Kernels {
        /// matmul (with its variants), attention (naive vs flash, forward and backward), or any kernel
        /// `wgslm verify` lists (at its test shapes).
        #[arg(long, default_value = "matmul")]
        kernel: String,
        /// A matmul variant (blocked4x4, vec4, tiled64, tiled128, rows16x32, rows32x16k4, subgroup, gemv,
        /// f16), an attention variant (naive, flash-tiled, flash-rows), or `all` (repeatable).
        #[arg(long, default_value = "all")]
        variant: Vec<String>,
        /// A matmul shape MxKxN (repeatable); default the four of docs/BENCHMARKS.md.
        #[arg(long, value_parser = parse_shape)]
        shape: Vec<(usize, usize, usize)>,
        /// A drop-in matmul kernel to check and rank beside ours (docs/KERNELS.md, "Drop-in kernels").
        #[arg(long)]
        shader: Option<PathBuf>,
        /// Compile the --shader kernel without wgpu's runtime bounds checks, as wgslm's own rows
        /// kernels are (on lavapipe the checks cost such kernels about 4x). Only for a kernel whose
        /// every index is clamped or guarded: an out-of-range access is then undefined behaviour.
        #[arg(long, requires = "shader")]
        unchecked: bool,
        /// Runs per timing.
        #[arg(long, default_value_t = 5)]
        reps: usize,
        /// Also write the results, with the adapter, as JSON.
        #[arg(long)]
        json: Option<PathBuf>,
        #[arg(long, default_value = "auto")]
        device: String,
    },
    /// Training-step speed: tokens/s, ms per step, host submit time, per-kernel time, memory.
    Train {
        #[arg(long)]
        config: Option<PathBuf>,
        #[arg(long = "set", value_name = "KEY=VALUE")]
        overrides: Vec<String>,
        /// Timed steps (after two warm-up steps).
        #[arg(long, default_value_t = 10)]
        steps: usize,
        /// Matmul kernels: auto (autotune per shape), default, or a variant to pin (the `matmul` key).
        #[arg(long)]
        matmul: Option<String>,
        #[arg(long)]
        json: Option<PathBuf>,
        #[arg(long, default_value = "auto")]
        device: String,
    },
    /// Sampling speed (tokens/s) with and without the key/value cache, on a randomly initialised model
    /// of a config's shape.
    Sample {
        #[arg(long)]
        config: Option<PathBuf>,
        #[arg(long = "set", value_name = "KEY=VALUE")]
        overrides: Vec<String>,
        /// Context lengths at which to time (each at most the config's block_size).
        #[arg(long, value_delimiter = ',', default_value = "64,256")]
        context: Vec<usize>,
        /// Timed tokens per context length.
        #[arg(long, default_value_t = 16)]
        tokens: usize,
        #[arg(long)]
        json: Option<PathBuf>,
        #[arg(long, default_value = "auto")]
        device: String,
    },
    /// The one command to run on each machine: the machine, `verify`, every kernel variant and training
    /// speed for configs A, B and Llama, into one JSON file for `wgslm report`.
    Suite {
        /// Smaller: the smallest verify cases, small matmul shapes, configs A and A-Llama for 3 steps.
        #[arg(long)]
        quick: bool,
        #[arg(long, default_value = "suite.json")]
        json: PathBuf,
        /// auto, vulkan, metal, dx12, gl, or an index from `wgslm devices`.
        #[arg(long, default_value = "auto")]
        device: String,
    },
    /// A long training run reporting process memory and live GPU buffers at its start and end.
    Soak {
        #[arg(long)]
        config: Option<PathBuf>,
        #[arg(long = "set", value_name = "KEY=VALUE")]
        overrides: Vec<String>,
        #[arg(long, default_value_t = 5000)]
        steps: usize,
        #[arg(long, default_value = "auto")]
        device: String,
    },
}

fn parse_shape(s: &str) -> Result<(usize, usize, usize), String> {
    let dims: Vec<usize> = s
        .split('x')
        .map(|d| d.trim().parse())
        .collect::<Result<_, _>>()
        .map_err(|_| format!("{s}: expected MxKxN, e.g. 1024x1024x1024"))?;
    match dims.as_slice() {
        // The host holds a, b and the reference product in f32: each at most 2^28 elements (1 GiB).
        [m, k, n] if [(m, k), (k, n), (m, n)].iter().any(|&(&a, &b)| a as u128 * b as u128 > 1 << 28) => {
            Err(format!("{s}: a matrix past 2^28 elements (1 GiB of f32); time smaller shapes"))
        }
        [m, k, n] if *m > 0 && *k > 0 && *n > 0 => Ok((*m, *k, *n)),
        _ => Err(format!("{s}: expected MxKxN with three positive sizes")),
    }
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    quiet_device_select_layer();
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Mesa's implicit Vulkan layer VK_LAYER_MESA_device_select reorders the adapters for the display
/// server's GPU, and on a machine without a desktop session it prints "error: XDG_RUNTIME_DIR is
/// invalid or not set in the environment." twice while it looks for one. wgslm ranks the adapters
/// itself (`--device`), so the layer is switched off by the variable it honours, unless the user set
/// it. Done first thing in `main`, while the process has one thread, as setting variables needs.
fn quiet_device_select_layer() {
    if std::env::var_os("NODEVICE_SELECT").is_none() {
        std::env::set_var("NODEVICE_SELECT", "1");
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Devices => devices(),
        Command::Verify { device, kernel, quick } => verify(&device, kernel.as_deref(), quick),
        Command::Bench { what } => bench(what),
        Command::Report { files, out } => report(&files, &out),
        Command::Plot { runs, out } => {
            let runs = wgslm::report::plot::read_runs(&runs)?;
            wgslm::report::plot::plot(&runs, &out)?;
            println!("wrote {}", out.display());
            Ok(())
        }
        Command::Prepare { input, out, tokenizer, vocab_size, val_fraction, seed, split, shard_tokens } => {
            let opts = PrepareOptions {
                inputs: input,
                out,
                tokenizer: tokenizer.parse()?,
                vocab_size,
                val_fraction,
                seed,
                split,
                shard_tokens,
            };
            let p = wgslm::data::prepare::prepare(&opts)?;
            println!(
                "{} documents -> {} train + {} val tokens, vocabulary {}; wrote {} token files to {}",
                p.documents,
                p.train_tokens,
                p.val_tokens,
                p.vocab_size,
                p.shards,
                opts.out.display()
            );
            Ok(())
        }
        Command::Train { config, mut overrides, out, resume, matmul, device, nan_steps, nan_rank } => {
            overrides.extend(matmul.map(|m| format!("matmul=\"{m}\"")));
            let cfg = TrainConfig::load(config.as_deref(), &overrides)?;
            let opts = RunOptions {
                out,
                resume,
                device: device.parse()?,
                quiet: false,
                stop_after: None,
                nan_steps,
                nan_rank,
            };
            in_world(|world| train(&cfg, &opts, world))
        }
        Command::Sample { model, prompt, max_new_tokens, temperature, top_k, top_p, seed, device } => {
            let opts = SampleOptions { max_new_tokens, temperature, top_k, top_p, seed };
            sample(&model, &prompt, &opts, &device)
        }
        Command::Export { model, out, dtype } => export(&model, &out, &dtype),
        Command::Eval { model, data, batch_size, device } => eval(&model, &data, batch_size, &device),
        Command::Grad { model, batch, out, adamw_steps, lr, beta1, beta2, eps, weight_decay, device } => {
            let opts = GradOptions { adamw_steps, lr, beta1, beta2, eps, weight_decay };
            grad(&model, &batch, &out, &opts, &device)
        }
    }
}

/// Runs `f` as one rank of the job an MPI launcher started, or alone. Under a launcher an error on
/// any rank ends the whole job (MPI_Abort), so no rank waits forever for one that has stopped.
fn in_world(f: impl FnOnce(&World) -> anyhow::Result<()>) -> anyhow::Result<()> {
    let world = World::from_env()?;
    if world.size() == 1 {
        return f(&world);
    }
    if let Err(e) = f(&world) {
        eprintln!("error (rank {} of {}): {e:#}", world.rank(), world.size());
        world.abort(1);
    }
    Ok(())
}

fn bench_train(
    cfg: &TrainConfig,
    steps: usize,
    device: &DeviceChoice,
    json: Option<&Path>,
    world: &World,
) -> anyhow::Result<()> {
    let b = wgslm::bench::train_in(cfg, steps.max(1), device, world)?;
    if !world.is_root() {
        return Ok(());
    }
    println!("{}", b.device);
    if b.ranks > 1 {
        let pc = |ms: f64| 100.0 * ms / b.ms_per_step;
        println!(
            "{} ranks (mpirun), the job's tokens. Rank 0 per step: all-reduce of {} gradients {:.2} ms ({:.1}%), \
             copies to and from the device {:.2} ms ({:.1}%), waiting for the other ranks {:.2} ms ({:.1}%)",
            b.ranks,
            b.params,
            b.allreduce_ms_per_step,
            pc(b.allreduce_ms_per_step),
            b.copy_ms_per_step,
            pc(b.copy_ms_per_step),
            b.wait_ms_per_step,
            pc(b.wait_ms_per_step)
        );
    }
    println!(
        "{} parameters, {} tokens per step: {:.0} tokens/s, {:.1} ms per step, host encode + submit {:.2} ms ({:.1}%)",
        b.params,
        b.tokens_per_step,
        b.tokens_per_s,
        b.ms_per_step,
        b.submit_ms_per_step,
        100.0 * b.submit_ms_per_step / b.ms_per_step
    );
    let mib = |x: u64| x as f64 / (1u64 << 20) as f64;
    match b.allocated {
        Some(a) => println!(
            "GPU memory: {:.1} MiB allocated, analytic count {:.1} MiB (params, grads, AdamW m and v, activations): {:.2}x",
            mib(a),
            mib(b.analytic),
            a as f64 / b.analytic as f64
        ),
        None => println!("analytic memory: {:.1} MiB", mib(b.analytic)),
    }
    if !b.buffer_groups.is_empty() {
        println!("largest buffers (N: any number):");
        for (label, count, bytes) in b.buffer_groups.iter().take(12) {
            println!("  {:>8.1} MiB  {count:>3} x {label}", mib(*bytes));
        }
    }
    let in_all: f64 = b.kernels.iter().map(|k| k.2).sum();
    if in_all > 0.0 {
        println!(
            "per kernel, one more step timed {} ({in_all:.2} ms in all: {:.0}% of that step's {:.2} ms of \
             wall time, {:.0}% of the timed steps' mean):",
            b.kernels_method,
            100.0 * in_all / b.profiled_step_ms,
            b.profiled_step_ms,
            100.0 * in_all / b.ms_per_step,
        );
    }
    print_kernels("", &b.kernels);
    if let Some(path) = json {
        let kernels: Vec<_> = b
            .kernels
            .iter()
            .map(|(n, c, ms)| serde_json::json!({"kernel": n, "dispatches": c, "ms": ms}))
            .collect();
        write_json(
            path,
            &serde_json::json!({
                "device": b.device, "params": b.params, "tokens_per_step": b.tokens_per_step, "steps": b.steps,
                "tokens_per_s": b.tokens_per_s, "ms_per_step": b.ms_per_step, "submit_ms_per_step": b.submit_ms_per_step,
                "allocated_bytes": b.allocated, "analytic_bytes": b.analytic, "kernels": kernels,
                "kernels_method": b.kernels_method, "profiled_step_ms": b.profiled_step_ms,
                "ranks": b.ranks, "allreduce_ms_per_step": b.allreduce_ms_per_step,
                "wait_ms_per_step": b.wait_ms_per_step, "copy_ms_per_step": b.copy_ms_per_step,
            }),
        )?;
    }
    Ok(())
}

fn train(cfg: &TrainConfig, opts: &RunOptions, world: &World) -> anyhow::Result<()> {
    let s = wgslm::train::run_in(cfg, opts, world)?;
    if !world.is_root() {
        return Ok(());
    }
    println!(
        "trained {} steps in {:.1} s ({:.0} tokens/s on {}{}); loss {} -> {:.4}{}",
        s.steps,
        s.seconds,
        s.tokens_per_s,
        s.device,
        match world.size() {
            1 => String::new(),
            n => format!(" and {} more rank(s)", n - 1),
        },
        s.first_loss.map_or("-".into(), |l| format!("{l:.4}")),
        s.last_loss,
        s.val_loss.map_or(String::new(), |v| format!(", val loss {v:.4}"))
    );
    println!(
        "model: {}\n  sample it: wgslm sample --model {} --prompt {:?}",
        s.checkpoint.display(),
        opts.out.display(),
        cfg.sample_prompt
    );
    Ok(())
}

/// A model directory (or a run's newest checkpoint) and its tokenizer (tokenizer.json, or GPT-2's
/// vocab.json and merges.txt), on a frame of B sequences of the length `t` says (at most
/// n_positions): a model of a long context need not run every pass at its full length.
fn open_model(
    dir: &Path,
    b: usize,
    device: &str,
    t: impl FnOnce(&Tok, &wgslm::model::ModelConfig) -> anyhow::Result<usize>,
) -> anyhow::Result<(Model, Tok)> {
    let dir = checkpoint::resolve_model_dir(dir)?;
    let (config, params) = hf::load(&dir)?;
    let tok = Tok::load(&dir)?;
    if tok.vocab_size() > config.vocab_size {
        bail!(
            "{}: the tokenizer has {} tokens but the model only {}",
            dir.display(),
            tok.vocab_size(),
            config.vocab_size
        );
    }
    let t = t(&tok, &config)?.clamp(1, config.n_positions);
    let backend = wgslm::open_backend(&device.parse()?)?;
    let shape = BatchShape { b, t, accum: 1 };
    let mut model = Model::new(backend, config, shape, Mode::Inference)?;
    model.set_params(&params)?;
    Ok((model, tok))
}

fn sample(dir: &Path, prompt: &str, opts: &SampleOptions, device: &str) -> anyhow::Result<()> {
    opts.validate()?;
    // The frame holds the prompt and the new tokens: past n_positions the context slides anyway.
    let (mut model, tok) = open_model(dir, 1, device, |tok, config| {
        let prompt = wgslm::sample::encode_prompt(tok, prompt, config.n_positions)?;
        Ok(prompt.len().saturating_add(opts.max_new_tokens))
    })?;
    let mut out = std::io::stdout();
    print!("{prompt}");
    wgslm::sample::generate(&mut model, &tok, prompt, opts, |piece| {
        let _ = write!(out, "{piece}");
        let _ = out.flush();
    })?;
    println!();
    Ok(())
}

fn export(model: &Path, out: &Path, dtype: &str) -> anyhow::Result<()> {
    use wgslm::model::hf;
    let precision = hf::Precision::parse("--dtype", dtype)?;
    let src = wgslm::train::checkpoint::resolve_model_dir(model)?;
    let done = hf::export(&src, out, precision)?;
    println!(
        "exported {} parameters from {} as {} to {} ({:.1} MB of weights; rounding {:.1e} relative L2)",
        done.params,
        src.display(),
        precision.name(),
        out.display(),
        done.bytes as f64 / 1e6,
        done.rounding
    );
    Ok(())
}

fn eval(dir: &Path, data: &Path, batch_size: usize, device: &str) -> anyhow::Result<()> {
    if batch_size == 0 {
        bail!("--batch-size must be at least 1");
    }
    let paths = if data.is_dir() {
        let paths = wgslm::data::loader::shard_paths(data, "val")?;
        if paths.is_empty() {
            bail!("{}: no val.bin and no `*_val_*.bin` shards", data.display());
        }
        paths
    } else {
        vec![data.to_path_buf()]
    };
    // Windows of n_positions tokens; data shorter than one is one window of its own length (the
    // same losses: the positions past the end are padding either way).
    let mut opened = None;
    let (mut model, _) = open_model(dir, batch_size, device, |_, config| {
        let tokens = wgslm::data::TokenSet::open(&paths, Some(config.vocab_size))?;
        if tokens.len() < 2 {
            bail!("{}: {} tokens; evaluation needs at least 2", data.display(), tokens.len());
        }
        let t = tokens.len() - 1;
        opened = Some(tokens);
        Ok(t)
    })?;
    let tokens = opened.expect("open_model asks for the frame");
    let t = model.shape.t;
    // Every token after the first is predicted once: windows of T inputs, stepping by T; the last
    // window is shorter, and positions past the end are padding whose losses are not counted.
    let windows: Vec<usize> = (0..tokens.len() - 1).step_by(t).collect();
    let (mut sum, mut count) = (0.0f64, 0usize);
    for batch in windows.chunks(batch_size) {
        let (mut x, mut y, mut valid) = (Vec::new(), Vec::new(), Vec::new());
        for row in 0..batch_size {
            let mut window = Vec::with_capacity(t + 1);
            if let Some(&start) = batch.get(row) {
                tokens.extend_into(start, (t + 1).min(tokens.len() - start), &mut window);
            }
            for j in 0..t {
                let ok = j + 1 < window.len();
                x.push(if ok { window[j] } else { 0 });
                y.push(if ok { window[j + 1] } else { 0 });
                valid.push(ok);
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

fn write_json(path: &Path, value: &serde_json::Value) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(value)?;
    wgslm::fsutil::write_atomic(path, text.as_bytes())?;
    println!("wrote {}", path.display());
    Ok(())
}

/// A per-kernel table (entry, dispatches, ms), with each entry's share; nothing when it is empty.
/// One line per kernel, after a heading of `title` and the total (none when `title` is empty).
fn print_kernels(title: &str, kernels: &[(String, usize, f64)]) {
    let total: f64 = kernels.iter().map(|k| k.2).sum();
    if total > 0.0 {
        if !title.is_empty() {
            println!("{title} ({total:.2} ms in all):");
        }
        for (name, count, ms) in kernels {
            println!("  {name:<36} {count:>4} x  {ms:>9.3} ms  {:>5.1}%", 100.0 * ms / total);
        }
    }
}

fn bench(what: BenchCommand) -> anyhow::Result<()> {
    match what {
        BenchCommand::Kernels { kernel, variant, shape, shader, unchecked, reps, json, device } => {
            let choice: DeviceChoice = device.parse()?;
            if choice == DeviceChoice::Cpu {
                bail!("bench kernels times GPU kernels; name a GPU adapter");
            }
            let ctx = Arc::new(GpuContext::new(&choice)?);
            println!("{}", ctx.describe());
            let rows = if kernel == "matmul" {
                let variants = if variant.iter().any(|v| v == "all") {
                    wgslm::bench::kernels::all_matmul_variants(&ctx)
                } else {
                    variant
                };
                let shapes = if shape.is_empty() {
                    vec![(1024, 1024, 1024), (2048, 256, 768), (2048, 1024, 256), (2048, 256, 1024)]
                } else {
                    shape
                };
                let custom = match &shader {
                    Some(p) => {
                        let text = String::from_utf8(wgslm::fsutil::read(p)?)
                            .map_err(|_| anyhow::anyhow!("{}: not UTF-8 text", p.display()))?;
                        let c = wgslm::gpu::kernels::CustomMatmul::parse(&p.display().to_string(), text)?;
                        Some(wgslm::gpu::kernels::CustomMatmul { unchecked, ..c })
                    }
                    None => None,
                };
                wgslm::bench::kernels::matmul(&ctx, &variants, custom, &shapes, reps)?
            } else {
                if shader.is_some() {
                    bail!("--shader takes a drop-in matmul kernel; use it with --kernel matmul");
                }
                wgslm::bench::kernels::verified(&ctx, &kernel, &variant, reps)?
            };
            println!("{:<28} {:<20} {:>10} {:>10} {:>7}  check", "variant", "shape", "ms", "rate", "% best");
            for t in &rows {
                let check = match (&t.failure, t.passed) {
                    (Some(f), _) => format!("FAIL: {f}"),
                    (None, false) => format!("FAIL: rel L2 {:.1e}", t.error),
                    (None, true) => format!("ok ({:.1e})", t.error),
                };
                let ms = t.ms.map_or("-".into(), |v| format!("{v:.3}"));
                let rate = t.rate.map_or("-".into(), |v| {
                    format!("{v:.2} {}", if t.unit == "GFLOP/s" { "GF/s" } else { "GB/s" })
                });
                let pct = t.pct_of_best.map_or("-".into(), |v| format!("{v:.0}%"));
                println!("{:<28} {:<20} {ms:>10} {rate:>10} {pct:>7}  {check}", t.variant, t.shape);
            }
            if let Some(m) = rows.iter().map(|t| &t.method).find(|m| !m.is_empty()) {
                println!("timed by {m}, {reps} runs each");
            }
            if let Some(path) = json {
                write_json(
                    &path,
                    &serde_json::json!({
                        "schema": report::KERNELS_SCHEMA, "version": report::KERNELS_VERSION,
                        "adapter": report::Adapter::of(&ctx), "kernel": kernel, "results": rows,
                    }),
                )?;
            }
            if rows.iter().any(|t| !t.passed) {
                bail!(
                    "{} result(s) FAILED the check against the CPU twin",
                    rows.iter().filter(|t| !t.passed).count()
                );
            }
            Ok(())
        }
        BenchCommand::Sample { config, overrides, context, tokens, json, device } => {
            let cfg = TrainConfig::load(config.as_deref(), &overrides)?;
            let (described, rows, kernels) = wgslm::bench::sample(&cfg, &context, tokens, &device.parse()?)?;
            println!("{described}");
            let m = cfg.model(cfg.vocab_size);
            println!(
                "{} {} parameters, block size {}; {tokens} timed tokens per row (greedy, logits read back)",
                cfg.arch,
                m.n_params(),
                cfg.block_size
            );
            for pair in rows.chunks(2) {
                let (full, cached) = (&pair[0], &pair[1]);
                println!(
                    "context {:>5}: {:>9.1} tokens/s full context, {:>9.1} tokens/s with the cache ({:.1}x)",
                    full.context,
                    full.tokens_per_s,
                    cached.tokens_per_s,
                    cached.tokens_per_s / full.tokens_per_s
                );
            }
            print_kernels(
                "one cached position, per kernel (timestamps inside the program where the adapter has them)",
                &kernels,
            );
            if let Some(path) = json {
                write_json(
                    &path,
                    &serde_json::json!({ "device": described, "config": cfg.arch, "rows": rows }),
                )?;
            }
            Ok(())
        }
        BenchCommand::Train { config, mut overrides, steps, matmul, json, device } => {
            overrides.extend(matmul.map(|m| format!("matmul=\"{m}\"")));
            let cfg = TrainConfig::load(config.as_deref(), &overrides)?;
            let device = device.parse()?;
            in_world(|world| bench_train(&cfg, steps, &device, json.as_deref(), world))
        }
        BenchCommand::Suite { quick, json, device } => suite(quick, &json, &device),
        BenchCommand::Soak { config, overrides, steps, device } => {
            if steps < 2 {
                bail!("--steps {steps}: a soak needs at least 2 steps (the first is the baseline)");
            }
            let cfg = TrainConfig::load(config.as_deref(), &overrides)?;
            let every = (steps / 10).max(1);
            let s = wgslm::bench::soak(&cfg, steps, &device.parse()?, |t| {
                if t % every == 0 {
                    eprintln!("step {t}/{steps}");
                }
            })?;
            println!(
                "{}: {} steps in {:.0} s, loss {:.4} -> {:.4}",
                s.device, s.steps, s.seconds, s.losses.0, s.losses.1
            );
            let mib = |x: Option<u64>| {
                x.map_or("-".into(), |v| format!("{:.1} MiB", v as f64 / (1u64 << 20) as f64))
            };
            println!("process RSS:       start {}  end {}", mib(s.rss.0), mib(s.rss.1));
            let buffers = |b: Option<(usize, u64)>| {
                b.map_or("-".into(), |(n, bytes)| {
                    format!("{n} buffers, {:.1} MiB", bytes as f64 / (1u64 << 20) as f64)
                })
            };
            println!("live GPU buffers:  start {}  end {}", buffers(s.buffers.0), buffers(s.buffers.1));
            Ok(())
        }
    }
}

/// Refuses an `--out` that is one of the command's inputs: writing it would destroy what it reads.
fn not_an_input(out: &Path, inputs: &[PathBuf]) -> anyhow::Result<()> {
    let Ok(out_at) = out.canonicalize() else { return Ok(()) };
    if let Some(input) = inputs.iter().find(|p| p.canonicalize().is_ok_and(|p| p == out_at)) {
        bail!("--out {}: that is {}, an input; write the output elsewhere", out.display(), input.display());
    }
    Ok(())
}

fn grad(model: &Path, batch: &Path, out: &Path, opts: &GradOptions, device: &str) -> anyhow::Result<()> {
    let files = [hf::CONFIG_FILE, "model.safetensors", "tokenizer.json"].map(|f| model.join(f));
    not_an_input(out, &[&[batch.to_path_buf()], &files[..]].concat())?;
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
        if a.features.contains(wgpu::Features::SUBGROUP) {
            println!(
                "    subgroups: {} to {} invocations",
                a.info.subgroup_min_size, a.info.subgroup_max_size
            );
        }
    }
    Ok(())
}

fn verify(device: &str, only: Option<&str>, quick: bool) -> anyhow::Result<()> {
    let choice: DeviceChoice = device.parse()?;
    if choice == DeviceChoice::Cpu {
        bail!("--device cpu would check the twins against themselves; name a GPU adapter");
    }
    let ctx = Arc::new(GpuContext::new(&choice).context("opening the adapter to verify")?);
    println!("verifying every kernel on {}", ctx.describe());
    println!("{:<32} {:>5}  {:>10}  result", "kernel", "cases", "worst err");
    let (rows, failures) = verify::check_adapter(&ctx, only, quick, &mut |row| {
        let worst = if row.skipped.is_some() { "-".into() } else { format!("{:.2e}", row.worst) };
        let cases = if row.skipped.is_some() { "-".into() } else { row.cases.to_string() };
        println!("{:<32} {cases:>5}  {worst:>10}  {}", row.name(), row.verdict());
    })?;
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
    let skipped: Vec<String> = rows.iter().filter(|r| r.skipped.is_some()).map(|r| r.name()).collect();
    if !skipped.is_empty() {
        println!("not run on this adapter (the reasons are above): {}", skipped.join(", "));
    }
    Ok(())
}

fn suite(quick: bool, json: &Path, device: &str) -> anyhow::Result<()> {
    use wgslm::bench::suite::Progress;
    let choice: DeviceChoice = device.parse()?;
    if choice == DeviceChoice::Cpu {
        bail!("bench suite measures a GPU adapter; name one (auto, vulkan, metal, dx12, gl or an index)");
    }
    let ctx = Arc::new(GpuContext::new(&choice).context("opening the adapter for the suite")?);
    println!("suite{} on {}", if quick { " (quick)" } else { "" }, ctx.describe());
    let suite = wgslm::bench::suite::run(&ctx, quick, &mut |p| match p {
        Progress::Stage(s) => println!("== {s}"),
        Progress::Verified(r) => println!("  {:<32} {}", r.name(), r.verdict()),
        Progress::Timed(t) => println!(
            "  {:<24} {:<12} {:<16} {}",
            t.kernel,
            t.variant,
            t.shape,
            match (t.passed, t.rate) {
                (false, _) => format!("FAIL {}", t.failure.clone().unwrap_or_default()),
                (true, Some(r)) => format!("{r:.2} {}", t.unit),
                (true, None) => "-".into(),
            }
        ),
        Progress::Trained(t) => match &t.error {
            Some(e) => println!("  {:<16} FAIL: {e}", t.config),
            None => println!(
                "  {:<16} {:.0} tokens/s, {:.1} ms per step, {} MiB",
                t.config,
                t.tokens_per_s,
                t.ms_per_step,
                t.allocated_bytes.map_or("-".into(), |b| format!("{:.1}", b as f64 / (1u64 << 20) as f64))
            ),
        },
    })?;
    write_json(json, &serde_json::to_value(&suite)?)?;
    println!(
        "done in {:.0} s; compare machines with `wgslm report {} OTHER.json --out report.html`",
        suite.seconds,
        json.display()
    );
    let failed = suite.verify.iter().filter(|r| !r.failures.is_empty()).count();
    if failed > 0 {
        bail!("{failed} kernel(s) FAILED verify on {} (the file records which)", ctx.describe());
    }
    Ok(())
}

fn report(files: &[PathBuf], out: &Path) -> anyhow::Result<()> {
    not_an_input(out, files)?;
    let inputs = files
        .iter()
        .map(|f| Ok((f.display().to_string(), report::load(f)?)))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let html = report::html::render(&inputs)?;
    wgslm::fsutil::write_atomic(out, html.as_bytes())?;
    println!("wrote {} ({} file(s))", out.display(), inputs.len());
    Ok(())
}
