//! The training loop: batches, learning-rate schedule, accumulation, clipping, evaluation, samples,
//! checkpoints and metrics, with exact resume.

use std::path::{Path, PathBuf};
use std::time::Instant;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::checkpoint::{self, TrainerState};
use super::metrics::Metrics;
use super::record::BatchRecord;
use super::schedule::lr_at;
use super::TrainConfig;
use crate::backend::AdamwHyper;
use crate::data::loader::{shard_paths, TokenSet};
use crate::data::prepare::{self, TokenizerSpec};
use crate::data::{Loader, Tok};
use crate::dist::{self, World};
use crate::gpu::DeviceChoice;
use crate::model::init_params;
use crate::model::{Attention, BatchShape, LossScaler, Mode, Model, Precision};
use crate::sample::{self, SampleOptions};
use crate::{fsutil, Error, Result};

/// Where and how to run.
#[derive(Clone, Debug)]
pub struct RunOptions {
    pub out: PathBuf,
    pub resume: bool,
    pub device: DeviceChoice,
    /// No progress bar and no samples on the terminal (tests, scripts).
    pub quiet: bool,
    /// Stop (with a checkpoint) after this many steps in all, as if interrupted; `--resume` continues.
    pub stop_after: Option<u64>,
    /// Fault injection for tests: the gradients of these steps (1-based) are made NaN (on every rank,
    /// or only on rank `nan_rank`).
    pub nan_steps: Vec<u64>,
    pub nan_rank: Option<usize>,
}

impl RunOptions {
    /// A fresh (not resumed), quiet run in `out` on `device`.
    pub fn new(out: impl Into<PathBuf>, device: DeviceChoice) -> Self {
        RunOptions {
            out: out.into(),
            resume: false,
            device,
            quiet: true,
            stop_after: None,
            nan_steps: Vec::new(),
            nan_rank: None,
        }
    }
}

/// What a run did.
#[derive(Clone, Debug)]
pub struct Summary {
    pub steps: u64,
    pub first_loss: Option<f32>,
    pub last_loss: f32,
    pub val_loss: Option<f32>,
    pub tokens_per_s: f64,
    pub seconds: f64,
    pub checkpoint: PathBuf,
    pub device: String,
}

/// Training and validation tokens with their tokenizer.
pub struct Data {
    pub tok: Tok,
    pub train: TokenSet,
    pub val: TokenSet,
    pub source: String,
}

/// Loads the data a config names: the embedded stories, or a directory from `wgslm prepare`.
pub fn load_data(cfg: &TrainConfig) -> Result<Data> {
    if cfg.data == "builtin" {
        let spec: TokenizerSpec = cfg.tokenizer.parse()?;
        let (tok, train, val) = prepare::builtin(cfg.seed, cfg.builtin_stories, &spec, cfg.vocab_size)?;
        return Ok(Data {
            tok,
            train: TokenSet::from_vec(train),
            val: TokenSet::from_vec(val),
            source: format!("{} embedded stories", cfg.builtin_stories),
        });
    }
    let dir = Path::new(&cfg.data);
    if !dir.is_dir() {
        return Err(Error::Invalid(format!(
            "data = {:?}: not a directory; use \"builtin\" or a directory written by `wgslm prepare`",
            cfg.data
        )));
    }
    let tok = Tok::load(&dir.join("tokenizer.json"))?;
    let v = Some(tok.vocab_size());
    let train_paths = shard_paths(dir, "train")?;
    if train_paths.is_empty() {
        return Err(Error::Invalid(format!(
            "{}: no train.bin and no `*_train_*.bin` shards; write them with `wgslm prepare`",
            dir.display()
        )));
    }
    let train = TokenSet::open(&train_paths, v)?;
    let val = TokenSet::open(&shard_paths(dir, "val")?, v)?;
    let shards = train.shards() + val.shards();
    let source =
        if shards > 2 { format!("{}, {shards} shards", dir.display()) } else { dir.display().to_string() };
    Ok(Data { tok, train, val, source })
}

/// The config keys a resumed run must share with the run it continues.
fn same_run(a: &TrainConfig, b: &TrainConfig) -> Vec<&'static str> {
    let mut diff = Vec::new();
    macro_rules! cmp {
        ($($k:ident),*) => { $( if a.$k != b.$k { diff.push(stringify!($k)); } )* };
    }
    cmp!(
        data,
        builtin_stories,
        tokenizer,
        vocab_size,
        init_from,
        arch,
        n_layer,
        n_head,
        n_embd,
        block_size,
        dropout,
        n_kv_head,
        intermediate_size,
        rope_theta,
        norm_eps,
        tie_embeddings,
        batch_size,
        seed
    );
    diff
}

struct Progress {
    bar: ProgressBar,
    every: u64,
}

impl Progress {
    fn new(start: u64, total: u64, quiet: bool) -> Self {
        let bar = ProgressBar::with_draw_target(
            Some(total),
            if quiet { ProgressDrawTarget::hidden() } else { ProgressDrawTarget::stderr() },
        );
        bar.set_style(
            ProgressStyle::with_template(
                "{bar:30} step {pos}/{len}  {msg}  [{elapsed_precise} < {eta_precise}]",
            )
            .expect("a valid template"),
        );
        bar.set_position(start);
        Progress { bar, every: (total / 20).max(1) }
    }

    /// Shows a line; when stderr is not a terminal the bar is hidden, so print a line now and then.
    fn update(&self, step: u64, msg: String, quiet: bool) {
        self.bar.set_position(step);
        if !quiet
            && self.bar.is_hidden()
            && (step % self.every == 0 || step == self.bar.length().unwrap_or(0))
        {
            eprintln!("step {step}/{}  {msg}", self.bar.length().unwrap_or(0));
        }
        self.bar.set_message(msg);
    }

    fn println(&self, text: &str, quiet: bool) {
        if quiet {
            return;
        }
        if self.bar.is_hidden() {
            eprintln!("{text}");
        } else {
            self.bar.println(text);
        }
    }
}

/// Trains as `cfg` says, writing checkpoints and metrics into `opts.out`.
pub fn run(cfg: &TrainConfig, opts: &RunOptions) -> Result<Summary> {
    run_in(cfg, opts, &World::single())
}

/// The micro-batches of `batch_size` one step of a run takes over all its ranks (each rank takes
/// `grad_accum_steps` of them).
fn global_micro_batches(cfg: &TrainConfig, ranks: usize) -> usize {
    cfg.grad_accum_steps * ranks
}

/// [`run`] as one rank of a data-parallel job (see [`crate::dist`]): every rank trains on its share of
/// each step; rank 0 alone prints, evaluates, samples and writes the run directory.
pub fn run_in(cfg: &TrainConfig, opts: &RunOptions, world: &World) -> Result<Summary> {
    let out = &opts.out;
    let root = world.is_root();
    let mut cfg = cfg.clone();
    let existing = checkpoint::latest(out);
    let resumed = match (&existing, opts.resume) {
        (Some((_, dir)), true) => Some(checkpoint::load(dir)?),
        (None, true) => {
            return Err(Error::Invalid(format!("--resume: {} has no checkpoint to resume from", out.display())))
        }
        (Some((step, _)), false) => {
            return Err(Error::Invalid(format!(
                "{} already holds a run (checkpoint at step {step}); continue it with --resume, or choose another --out",
                out.display()
            )))
        }
        (None, false) => None,
    };
    if let Some(r) = &resumed {
        // The run's step is `global` micro-batches; any number of ranks that divides it may go on
        // with it, each taking its share (the token stream is the same).
        let ranks = r.state.ranks.unwrap_or(1);
        let global = global_micro_batches(&r.state.config, ranks);
        if global_micro_batches(&cfg, world.size()) != global {
            if ranks == world.size() || cfg.grad_accum_steps != r.state.config.grad_accum_steps {
                return Err(Error::Invalid(format!(
                    "--resume: the run takes {global} micro-batches a step ({ranks} rank(s) x grad_accum_steps {}) \
                     but this one would take {} x {}; resume with the run's config ({})",
                    r.state.config.grad_accum_steps,
                    world.size(),
                    cfg.grad_accum_steps,
                    out.join("config.toml").display()
                )));
            }
            if global % world.size() != 0 {
                return Err(Error::Invalid(format!(
                    "--resume: the run takes {global} micro-batches a step, which {} ranks cannot share evenly; \
                     resume it on a number of ranks that divides {global}",
                    world.size()
                )));
            }
            cfg.grad_accum_steps = global / world.size();
            if root && !opts.quiet {
                eprintln!(
                    "resuming a run of {ranks} rank(s) on {}: grad_accum_steps {} per rank",
                    world.size(),
                    cfg.grad_accum_steps
                );
            }
        }
        let diff = same_run(&r.state.config, &cfg);
        if !diff.is_empty() {
            return Err(Error::Invalid(format!(
                "--resume: the config differs from the run's in {}; resume with the run's config ({})",
                diff.join(", "),
                out.join("config.toml").display()
            )));
        }
    }
    if global_micro_batches(&cfg, world.size()) > crate::model::MAX_ACCUM {
        return Err(Error::Invalid(format!(
            "{} rank(s) × grad_accum_steps {} is more than the {} micro-batches a step may take; lower \
             grad_accum_steps",
            world.size(),
            cfg.grad_accum_steps,
            crate::model::MAX_ACCUM
        )));
    }
    let cfg = &cfg;

    let data = load_data(cfg)?;
    let init = match (&resumed, cfg.init_from.as_str()) {
        (None, dir) if !dir.is_empty() => Some(load_init(cfg, Path::new(dir))?),
        _ => None,
    };
    let model_cfg = match (&resumed, &init) {
        (Some(r), _) => r.config,
        (None, Some((c, _))) => *c,
        (None, None) => cfg.model(data.tok.vocab_size()),
    };
    if data.tok.vocab_size() > model_cfg.vocab_size {
        return Err(Error::Invalid(format!(
            "the data's tokenizer has {} tokens but the model's vocabulary only {}",
            data.tok.vocab_size(),
            model_cfg.vocab_size
        )));
    }
    let shape = BatchShape { b: cfg.batch_size, t: cfg.block_size, accum: cfg.grad_accum_steps };
    // Several ranks on a machine take its adapters in turn.
    let mut backend = crate::open_backend_with(&world.device(&opts.device), &cfg.matmul)?;
    if let Some(r) = &resumed {
        backend.pin_kernel_choices(&r.state.kernels)?;
    }
    let device = backend.describe();
    // A resumed run keeps the attention variant it started with (checkpoints before the choice
    // existed used the naive one).
    let attention = match &resumed {
        Some(r) => r.state.attention.as_deref().unwrap_or("naive"),
        None => cfg.attention.as_str(),
    };
    let attention = Attention::choose(attention, backend.as_ref(), shape.t, model_cfg.head_size())
        .ok_or_else(|| {
            Error::Invalid(format!("unknown attention variant {attention:?} in the checkpoint"))
        })?;
    // A resumed run keeps its precision too (checkpoints before the choice existed trained in f32).
    let precision = match &resumed {
        Some(r) => r.state.precision.as_deref().unwrap_or("f32"),
        None => cfg.precision.as_str(),
    };
    if resumed.is_some() && precision != cfg.precision {
        log::warn!(
            "the run trains in {precision} (its checkpoint says so); precision = {:?} is ignored on resume",
            cfg.precision
        );
    }
    let precision = Precision::parse(precision)
        .ok_or_else(|| Error::Invalid(format!("unknown precision {precision:?} in the checkpoint")))?;
    let mode = Mode::Train { weight_decay: cfg.weight_decay, dropout: cfg.dropout };
    let mut model = dist::build_alike(world, backend, |be| {
        Model::with_precision(be, model_cfg, shape, mode, attention, precision)
    })?;
    // f16's dynamic loss scaling (none in f32 and bf16, whose range is f32's).
    let mut scaler = match &resumed {
        Some(r) if precision.loss_scaling() => Some(r.state.loss_scaler.unwrap_or_default()),
        _ if precision.loss_scaling() => Some(LossScaler::default()),
        _ => None,
    };
    if root {
        model.enable_sampling()?;
    }
    let mut loader =
        Loader::new(data.train, shape.b, shape.t, cfg.seed, &format!("{} (training split)", data.source))?;
    let val = match Loader::new(data.val, shape.b, shape.t, cfg.seed, "validation") {
        Ok(l) => Some(l.eval_batches(cfg.eval_batches)),
        Err(e) => {
            log::warn!("no evaluation: {e}");
            None
        }
    };

    let (mut step, mut adam_t, mut bad_steps) = (0u64, 0u64, 0usize);
    match &resumed {
        Some(r) => {
            model.set_params(&r.params)?;
            model.set_optimizer_state(&r.m, &r.v)?;
            loader.set_state(r.state.loader_state);
            (step, adam_t, bad_steps) = (r.state.step, r.state.adam_t, r.state.bad_steps);
        }
        None => match init {
            Some((_, params)) => model.set_params(&params)?,
            None => model.set_params(&init_params(&model_cfg, cfg.seed))?,
        },
    }
    dist::sync_start(&mut model, world, run_fingerprint(cfg, &model_cfg, &loader, step, adam_t))?;
    // The record holds the whole step's batches, every rank's, as one process with
    // grad_accum_steps N·A would train on them.
    let global = BatchShape { accum: shape.accum * world.size(), ..shape };
    // The samples come after hours of training: a prompt they cannot take is refused now.
    if root && !opts.quiet && cfg.sample_tokens > 0 {
        sample::encode_prompt(&data.tok, &cfg.sample_prompt, shape.t).map_err(|e| {
            Error::Invalid(format!("sample_prompt = {:?}: {e} (or set sample_tokens = 0)", cfg.sample_prompt))
        })?;
    }
    if root {
        std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    }
    let mut record = match (cfg.save_batches && root, &resumed) {
        (false, _) => None,
        (true, Some(r)) => Some(BatchRecord::resume(out, global, r.state.step)?),
        (true, None) => {
            let eval = val.as_deref().unwrap_or_default();
            Some(BatchRecord::create(out, global, &model_cfg, &data.tok, &model.params()?, eval)?)
        }
    };
    let mut metrics = match root {
        true => Some(Metrics::open(out, resumed.as_ref().map(|r| r.state.step))?),
        false => None,
    };
    // config.toml is written only once everything that can refuse the run (the data, the checkpoint,
    // the adapter, the model, the batch record) has accepted it: a refused run leaves the directory
    // as it was.
    if root {
        fsutil::write_atomic(&out.join("config.toml"), cfg.to_toml().as_bytes())?;
    }
    let quiet = opts.quiet || !root;
    let total = cfg.max_steps as u64;
    let progress = Progress::new(step, total, quiet);
    progress.println(
        &format!(
            "training {} parameters on {device}{}; data: {} ({} train tokens, vocab {}); {} tokens per step{}",
            model_cfg.n_params(),
            match world.size() {
                1 => String::new(),
                n => format!(" and {} more rank(s) ({n} in all)", n - 1),
            },
            data.source,
            loader.len(),
            model_cfg.vocab_size,
            global.tokens() * global.accum,
            if resumed.is_some() { format!("; resuming at step {step}") } else { String::new() }
        ),
        quiet,
    );

    let tokens_per_step = (global.tokens() * global.accum) as f64;
    let mut bufs = dist::StepBuffers::default();
    let started = Instant::now();
    let (mut first_loss, mut last_loss, mut val_loss) = (None, f32::NAN, None);
    let mut last_checkpoint = resumed.as_ref().map(|r| r.dir.clone());
    let steps_at_start = step;
    while step < total {
        let t0 = Instant::now();
        dist::load_step(&mut model, &mut loader, world, |x, y| match record.as_mut() {
            Some(r) => r.push(x, y),
            None => Ok(()),
        })?;
        // Each step draws fresh dropout masks, from the seed and the step alone (so a resumed run
        // draws the same ones); ranks after the first mix in their number, so each draws its own.
        let mut dropout_seed =
            crate::cpu::dropout_hash(cfg.seed as u32 ^ crate::cpu::dropout_hash(step as u32));
        if world.rank() > 0 {
            dropout_seed ^= crate::cpu::dropout_hash(0x9e37_79b9 ^ world.rank() as u32);
        }
        model.set_dropout_seed(dropout_seed)?;
        let lr = lr_at(step as usize, cfg.lr, cfg.min_lr, cfg.warmup_steps, cfg.max_steps);
        let hyper = AdamwHyper::at_step(lr, cfg.beta1, cfg.beta2, cfg.eps, cfg.grad_clip, adam_t + 1);
        let poisoned =
            opts.nan_steps.contains(&(step + 1)) && opts.nan_rank.is_none_or(|r| r == world.rank());
        let loss_scale = scaler.map(|s| s.scale);
        if let Some(scale) = loss_scale.filter(|&s| s != model.loss_scale()) {
            model.set_loss_scale(scale)?;
        }
        if poisoned {
            model.set_grad_scale(f32::NAN)?;
        }
        let stats = dist::step(&mut model, world, &hyper, &mut bufs)?.stats;
        if poisoned {
            model.set_grad_scale(model.loss_scale())?;
        }
        step += 1;
        let ms = t0.elapsed().as_secs_f64() * 1e3;
        let tps = tokens_per_step / (ms / 1e3);
        if let Some(metrics) = metrics.as_mut() {
            metrics.step(step, stats.loss, lr, stats.grad_norm, tps, ms, loss_scale)?;
        }
        if stats.grad_norm.is_finite() {
            adam_t += 1;
        }
        // f16: gradients that overflowed at this scale (the loss itself finite) skip the update and
        // halve the scale, as GradScaler does; that is routine, not a bad step, as long as the scale
        // can still halve (gradients non-finite at the smallest scale are broken, not large).
        let halved = match scaler.as_mut() {
            Some(s) => s.update(stats.grad_norm.is_finite()) && !stats.grad_norm.is_finite(),
            None => false,
        };
        let overflowed = halved && stats.loss.is_finite();
        if overflowed {
            log::info!(
                "step {step}: gradients overflowed at loss scale {}; update skipped",
                loss_scale.unwrap_or(1.0)
            );
        } else if stats.loss.is_finite() && stats.grad_norm.is_finite() {
            bad_steps = 0;
            first_loss.get_or_insert(stats.loss);
            last_loss = stats.loss;
        } else {
            bad_steps += 1;
            progress.println(
                &format!(
                    "step {step}: loss {} grad norm {}: the update was skipped",
                    stats.loss, stats.grad_norm
                ),
                quiet,
            );
            if bad_steps > cfg.max_bad_steps {
                let advice = "lower lr, raise warmup_steps or set grad_clip";
                let then = match &last_checkpoint {
                    Some(p) => {
                        format!("The last checkpoint ({}) is intact: {advice}, then --resume", p.display())
                    }
                    None => format!("No checkpoint was written yet: {advice}, then start the run again"),
                };
                return Err(Error::Invalid(format!(
                    "{bad_steps} steps in a row had a non-finite loss or gradient (max_bad_steps = {}); stopped at \
                     step {step}. {then}",
                    cfg.max_bad_steps
                )));
            }
        }
        progress.update(step, format!("loss {:.4}  lr {lr:.2e}  {tps:.0} tok/s", stats.loss), quiet);

        let last = step == total;
        let stopping = opts.stop_after == Some(step);
        let due = |every: usize| last || (every > 0 && step % every as u64 == 0);
        if due(cfg.eval_every) && root {
            if let (Some(batches), Some(metrics)) = (&val, metrics.as_mut()) {
                let loss = evaluate(&mut model, batches, shape.accum)?;
                metrics.eval(step, loss)?;
                crate::report::plot::refresh_run_plot(out);
                progress.println(&format!("step {step}: val loss {loss:.4}"), quiet);
                val_loss = Some(loss);
            }
        }
        if (due(cfg.checkpoint_every) || stopping) && root {
            let (m, v) = model.optimizer_state()?;
            let state = TrainerState {
                step,
                adam_t,
                loader_state: loader.state(),
                bad_steps,
                config: cfg.clone(),
                kernels: model.backend().kernel_choices(),
                attention: Some(model.attention.name().to_string()),
                precision: Some(model.precision.name().to_string()),
                loss_scaler: scaler,
                ranks: Some(world.size()),
                version: env!("CARGO_PKG_VERSION").to_string(),
            };
            let params = model.params()?;
            let dir =
                checkpoint::save(out, &model_cfg, &data.tok, &params, &m, &v, &state, cfg.keep_checkpoints)?;
            last_checkpoint = Some(dir);
        }
        // After the step's checkpoint (when one is due), so that a failing sample does not lose it.
        if due(cfg.sample_every) && !quiet && cfg.sample_tokens > 0 {
            let opts = SampleOptions {
                max_new_tokens: cfg.sample_tokens,
                seed: cfg.seed ^ step,
                ..Default::default()
            };
            let text = sample::generate(&mut model, &data.tok, &cfg.sample_prompt, &opts, |_| {})?;
            progress
                .println(&format!("--- sample at step {step} ---\n{}{text}\n---", cfg.sample_prompt), quiet);
        }
        if stopping {
            break;
        }
    }
    progress.bar.finish_and_clear();
    let seconds = started.elapsed().as_secs_f64();
    let steps = step - steps_at_start;
    Ok(Summary {
        steps: step,
        first_loss,
        last_loss,
        val_loss,
        tokens_per_s: if seconds > 0.0 { steps as f64 * tokens_per_step / seconds } else { 0.0 },
        seconds,
        checkpoint: last_checkpoint.unwrap_or_else(|| out.clone()),
        device,
    })
}

/// What every rank of a job must agree on before its first step: the config, the model, the data and
/// where the run stands.
pub(crate) fn run_fingerprint(
    cfg: &TrainConfig,
    model: &crate::model::ModelConfig,
    loader: &Loader,
    step: u64,
    adam_t: u64,
) -> u64 {
    use std::hash::{Hash, Hasher};
    // DefaultHasher::new() has fixed keys: the same value in every process of this binary.
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (cfg.to_toml(), model.n_params(), model.vocab_size, loader.len(), loader.state(), step, adam_t)
        .hash(&mut h);
    h.finish()
}

/// The model `init_from` names, checked against the config.
fn load_init(cfg: &TrainConfig, dir: &Path) -> Result<(crate::model::ModelConfig, Vec<f32>)> {
    let dir = checkpoint::resolve_model_dir(dir)?;
    let (m, params) = crate::model::hf::load(&dir)?;
    let name = dir.display();
    if cfg.arch != m.arch.name() {
        return Err(Error::Invalid(format!(
            "init_from {name}: the model is a {} but the config says arch = {:?}; set arch = \"{}\"",
            m.arch.name(),
            cfg.arch,
            m.arch.name()
        )));
    }
    for (key, ours, theirs) in [
        ("n_layer", cfg.n_layer, m.n_layer),
        ("n_head", cfg.n_head, m.n_head),
        ("n_embd", cfg.n_embd, m.n_embd),
    ] {
        if ours != theirs {
            return Err(Error::Invalid(format!(
                "init_from {name}: the model has {key} {theirs} but the config says {ours}; set {key} = {theirs}"
            )));
        }
    }
    if cfg.block_size > m.n_positions {
        return Err(Error::Invalid(format!(
            "block_size {} is above the n_positions {} of init_from {name}; use block_size <= {}",
            cfg.block_size, m.n_positions, m.n_positions
        )));
    }
    // The Llama keys a config sets must be the model's (unset, they come from it).
    if let crate::model::Arch::Llama(l) = m.arch {
        let differs = [
            ("n_kv_head", cfg.n_kv_head.is_some_and(|v| v != l.n_kv_head), l.n_kv_head.to_string()),
            (
                "intermediate_size",
                cfg.intermediate_size.is_some_and(|v| v != l.intermediate_size),
                l.intermediate_size.to_string(),
            ),
            ("rope_theta", cfg.rope_theta.is_some_and(|v| v != l.rope_theta), l.rope_theta.to_string()),
            ("norm_eps", cfg.norm_eps.is_some_and(|v| v != l.norm_eps), l.norm_eps.to_string()),
            (
                "tie_embeddings",
                cfg.tie_embeddings.is_some_and(|v| v != l.tie_embeddings),
                l.tie_embeddings.to_string(),
            ),
        ];
        if let Some((key, _, theirs)) = differs.into_iter().find(|(_, differs, _)| *differs) {
            return Err(Error::Invalid(format!(
                "init_from {name}: the model has {key} {theirs} but the config sets another; set {key} = {theirs} \
                 or leave it out"
            )));
        }
    }
    Ok((m, params))
}

/// Mean loss over fixed validation batches, `accum` micro-batches per forward program.
fn evaluate(model: &mut Model, batches: &[(Vec<u32>, Vec<u32>)], accum: usize) -> Result<f32> {
    let rounds = batches.len().div_ceil(accum);
    let mut total = 0.0f64;
    for r in 0..rounds {
        for micro in 0..accum {
            let (x, y) = &batches[(r * accum + micro) % batches.len()];
            model.set_batch(micro, x, y)?;
        }
        total += model.eval_loss()? as f64;
    }
    Ok((total / rounds as f64) as f32)
}
