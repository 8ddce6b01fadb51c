//! Benchmarks behind `wgslm bench`: training-step speed with a per-kernel breakdown and memory
//! against the analytic count (`train`), a long run watching memory (`soak`), and kernel variants
//! checked then timed (`kernels`).

pub mod kernels;
pub mod suite;

use std::time::Instant;

use crate::backend::{AdamwHyper, Backend};
use crate::data::{Loader, TokenSet};
use crate::dist::{self, World};
use crate::gpu::DeviceChoice;
use crate::model::init_params;
use crate::model::{BatchShape, Mode, Model};
use crate::train::trainer::load_data;
use crate::train::TrainConfig;
use crate::Result;

/// The resident set size of this process (Linux), in bytes.
pub fn rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// The tokens a benchmark trains on.
#[derive(Clone, Copy, Debug)]
pub enum BenchData {
    /// The config's `data`, as `wgslm train` loads it.
    Config,
    /// Uniform random tokens below `vocab`: the step's speed does not depend on which tokens they
    /// are, so a benchmark needs no prepared data directory.
    Random { vocab: usize },
}

/// A model and a loader as `wgslm train` builds them on this rank of `world` (random initialisation,
/// every rank starting alike; no run directory).
fn setup(
    cfg: &TrainConfig,
    backend: Box<dyn Backend>,
    data: BenchData,
    world: &World,
) -> Result<(Model, Loader)> {
    let (vocab, tokens, source) = match data {
        BenchData::Config => {
            let d = load_data(cfg)?;
            (d.tok.vocab_size(), d.train, d.source)
        }
        BenchData::Random { vocab } => {
            let mut rng = crate::rng::Rng::new(cfg.seed);
            let n = (cfg.block_size + 1) * cfg.batch_size * 64;
            let tokens = TokenSet::from_vec((0..n).map(|_| rng.below(vocab as u64) as u32).collect());
            (vocab, tokens, format!("random tokens below {vocab}"))
        }
    };
    let model_cfg = cfg.model(vocab);
    let shape = BatchShape { b: cfg.batch_size, t: cfg.block_size, accum: cfg.grad_accum_steps };
    let attention =
        crate::model::Attention::choose(&cfg.attention, backend.as_ref(), shape.t, model_cfg.head_size())
            .ok_or_else(|| crate::Error::Invalid(format!("attention = {:?}", cfg.attention)))?;
    let precision = crate::model::Precision::parse(&cfg.precision)
        .ok_or_else(|| crate::Error::Invalid(format!("precision = {:?}", cfg.precision)))?;
    let mode = Mode::Train { weight_decay: cfg.weight_decay, dropout: cfg.dropout };
    // An f16 benchmark keeps the loss scale at 1: a step's work does not depend on it.
    let mut model = dist::build_alike(world, backend, |be| {
        Model::with_precision(be, model_cfg, shape, mode, attention, precision)
    })?;
    model.set_params(&init_params(&model_cfg, cfg.seed))?;
    let loader = Loader::new(tokens, shape.b, shape.t, cfg.seed, &source)?;
    let fingerprint = crate::train::trainer::run_fingerprint(cfg, &model_cfg, &loader, 0, 0);
    dist::sync_start(&mut model, world, fingerprint)?;
    Ok((model, loader))
}

fn step(model: &mut Model, loader: &mut Loader, cfg: &TrainConfig, t: u64) -> Result<f32> {
    Ok(step_in(model, loader, cfg, t, &World::single(), &mut Default::default())?.stats.loss)
}

/// One step of the job `world` runs (each rank its share of the batches), as `wgslm train` takes it.
fn step_in(
    model: &mut Model,
    loader: &mut Loader,
    cfg: &TrainConfig,
    t: u64,
    world: &World,
    bufs: &mut dist::StepBuffers,
) -> Result<dist::Stepped> {
    dist::load_step(model, loader, world, |_, _| Ok(()))?;
    let hyper = AdamwHyper::at_step(cfg.lr, cfg.beta1, cfg.beta2, cfg.eps, cfg.grad_clip, t);
    dist::step(model, world, &hyper, bufs)
}

/// The matrix products of one training step of `model` at `shape` on `device`, each with the
/// variant the autotuner picks for it there: what `benches/matmul.rs` times.
pub fn step_gemms(
    model: crate::model::ModelConfig,
    shape: BatchShape,
    device: &DeviceChoice,
) -> Result<Vec<(crate::gpu::tune::GemmShape, String)>> {
    let backend = crate::open_backend_with(device, "auto")?;
    let model = Model::new(backend, model, shape, Mode::Train { weight_decay: 0.1, dropout: 0.0 })?;
    Ok(model
        .backend()
        .kernel_choices()
        .into_iter()
        .filter_map(|(key, variant)| Some((crate::gpu::tune::parse_shape_key(&key)?, variant)))
        .collect())
}

/// What `bench train` measured.
#[derive(Clone, Debug)]
pub struct TrainBench {
    pub device: String,
    pub params: usize,
    pub tokens_per_step: usize,
    pub steps: usize,
    pub tokens_per_s: f64,
    pub ms_per_step: f64,
    /// Host time recording and submitting one step's program.
    pub submit_ms_per_step: f64,
    /// Per kernel entry point: dispatches per step and milliseconds per step, timed as
    /// `kernels_method` says (empty on the CPU backend).
    pub kernels: Vec<(String, usize, f64)>,
    /// [`Backend::profile_method`](crate::backend::Backend::profile_method).
    pub kernels_method: &'static str,
    /// Wall time of the profiled step (one more step after the timed ones), submit to readback.
    pub profiled_step_ms: f64,
    /// Bytes in GPU buffers after the steps (None on the CPU backend), and the analytic count.
    pub allocated: Option<u64>,
    pub analytic: u64,
    /// The buffers by kind, largest first: (label with every number written `N`, buffers, bytes).
    pub buffer_groups: Vec<(String, usize, u64)>,
    pub first_loss: f32,
    pub last_loss: f32,
    /// Data-parallel ranks (`mpirun -np N`; 1 alone): tokens per step and tokens/s are the whole job's.
    pub ranks: usize,
    /// Milliseconds per step rank 0 spent in the gradient all-reduce, waiting for the other ranks
    /// before it, and copying the gradients from and to the device (0 alone).
    pub allreduce_ms_per_step: f64,
    pub wait_ms_per_step: f64,
    pub copy_ms_per_step: f64,
}

/// Dispatch times (entry point, seconds) summed per entry point: (entry, dispatches, ms), the most
/// costly first.
fn per_kernel(times: Vec<(&'static str, f64)>) -> Vec<(String, usize, f64)> {
    let mut kernels: Vec<(String, usize, f64)> = Vec::new();
    for (entry, s) in times {
        match kernels.iter_mut().find(|k| k.0 == entry) {
            Some(k) => (k.1, k.2) = (k.1 + 1, k.2 + s * 1e3),
            None => kernels.push((entry.to_string(), 1, s * 1e3)),
        }
    }
    kernels.sort_by(|a, b| b.2.total_cmp(&a.2));
    kernels
}

/// Times `steps` training steps after two warm-up steps (which compile pipelines and fill caches).
pub fn train(cfg: &TrainConfig, steps: usize, device: &DeviceChoice) -> Result<TrainBench> {
    train_in(cfg, steps, device, &World::single())
}

/// [`train`] as one rank of a data-parallel job: every rank steps, the figures are the job's.
pub fn train_in(cfg: &TrainConfig, steps: usize, device: &DeviceChoice, world: &World) -> Result<TrainBench> {
    let backend = crate::open_backend_with(&world.device(device), &cfg.matmul)?;
    train_world(cfg, backend, BenchData::Config, steps, true, world)
}

/// [`train`] on a backend already open, on `data`; `profile` adds the per-kernel breakdown (one more
/// step, timed as [`Backend::profile_method`](crate::backend::Backend::profile_method) says).
pub fn train_on(
    cfg: &TrainConfig,
    backend: Box<dyn Backend>,
    data: BenchData,
    steps: usize,
    profile: bool,
) -> Result<TrainBench> {
    train_world(cfg, backend, data, steps, profile, &World::single())
}

fn train_world(
    cfg: &TrainConfig,
    backend: Box<dyn Backend>,
    data: BenchData,
    steps: usize,
    profile: bool,
    world: &World,
) -> Result<TrainBench> {
    let (mut model, mut loader) = setup(cfg, backend, data, world)?;
    let bufs = &mut dist::StepBuffers::default();
    let mut t = 1;
    let first_loss = step_in(&mut model, &mut loader, cfg, t, world, bufs)?.stats.loss;
    t += 1;
    step_in(&mut model, &mut loader, cfg, t, world, bufs)?;
    let (mut submit, mut last_loss) = (0.0, first_loss);
    let (mut allreduce, mut wait, mut copy) = (0.0, 0.0, 0.0);
    let started = Instant::now();
    for _ in 0..steps {
        t += 1;
        let s = step_in(&mut model, &mut loader, cfg, t, world, bufs)?;
        last_loss = s.stats.loss;
        (allreduce, wait, copy) = (allreduce + s.allreduce_s, wait + s.wait_s, copy + s.copy_s);
        submit += model.last_submit_seconds();
    }
    let seconds = started.elapsed().as_secs_f64();
    let tokens_per_step = model.shape.tokens() * model.shape.accum * world.size();
    let profiled = Instant::now();
    let kernels = per_kernel(if profile { model.profile_step()? } else { Vec::new() });
    let profiled_step_ms = profiled.elapsed().as_secs_f64() * 1e3;
    let kernels_method = model.backend().profile_method();
    Ok(TrainBench {
        device: model.backend().describe(),
        params: model.config.n_params(),
        tokens_per_step,
        steps,
        tokens_per_s: (steps * tokens_per_step) as f64 / seconds,
        ms_per_step: seconds * 1e3 / steps as f64,
        submit_ms_per_step: submit * 1e3 / steps as f64,
        kernels,
        kernels_method,
        profiled_step_ms,
        // wgpu's counters see no buffers on some APIs (GL): that is no figure, not zero bytes.
        allocated: model.backend().live_buffers().filter(|&(_, bytes)| bytes > 0).map(|(_, bytes)| bytes),
        analytic: model.analytic_bytes(),
        buffer_groups: buffer_groups(&model.backend().buffers()),
        first_loss,
        last_loss,
        ranks: world.size(),
        allreduce_ms_per_step: allreduce * 1e3 / steps as f64,
        wait_ms_per_step: wait * 1e3 / steps as f64,
        copy_ms_per_step: copy * 1e3 / steps as f64,
    })
}

/// Buffers grouped by label with every number written `N` (the layers' copies of one tensor
/// together), largest total first: (label, buffers, bytes).
pub fn buffer_groups(buffers: &[(String, u64)]) -> Vec<(String, usize, u64)> {
    let mut groups = std::collections::BTreeMap::<String, (usize, u64)>::new();
    for (label, bytes) in buffers {
        let mut key = String::with_capacity(label.len());
        // A number is a run of digits after no letter ("h.3", "ln_1", "inputs 0"; not "bf16").
        let (mut in_number, mut after_letter) = (false, false);
        for c in label.chars() {
            if !c.is_ascii_digit() {
                key.push(c);
            } else if after_letter {
                key.push(c);
                continue;
            } else if !in_number {
                key.push('N');
            }
            in_number = c.is_ascii_digit();
            after_letter = c.is_ascii_alphabetic();
        }
        let g = groups.entry(key).or_default();
        g.0 += 1;
        g.1 += bytes;
    }
    let mut v: Vec<_> = groups.into_iter().map(|(k, (n, b))| (k, n, b)).collect();
    v.sort_by(|a, b| b.2.cmp(&a.2).then_with(|| a.0.cmp(&b.0)));
    v
}

/// Buffers alive on the device, and their bytes.
pub type LiveBuffers = (usize, u64);

/// What `bench soak` saw at the start (after the first step) and at the end.
#[derive(Clone, Debug)]
pub struct Soak {
    pub device: String,
    pub steps: usize,
    pub seconds: f64,
    pub rss: (Option<u64>, Option<u64>),
    pub buffers: (Option<LiveBuffers>, Option<LiveBuffers>),
    pub losses: (f32, f32),
}

/// Trains `steps` steps and compares process memory and live GPU buffers at the start and the end.
pub fn soak(
    cfg: &TrainConfig,
    steps: usize,
    device: &DeviceChoice,
    mut progress: impl FnMut(usize),
) -> Result<Soak> {
    let backend = crate::open_backend_with(device, &cfg.matmul)?;
    let (mut model, mut loader) = setup(cfg, backend, BenchData::Config, &World::single())?;
    let first = step(&mut model, &mut loader, cfg, 1)?;
    let (rss0, buf0) = (rss_bytes(), model.backend().live_buffers());
    let started = Instant::now();
    let mut last = first;
    for t in 2..=steps as u64 {
        last = step(&mut model, &mut loader, cfg, t)?;
        progress(t as usize);
    }
    Ok(Soak {
        device: model.backend().describe(),
        steps,
        seconds: started.elapsed().as_secs_f64(),
        rss: (rss0, rss_bytes()),
        buffers: (buf0, model.backend().live_buffers()),
        losses: (first, last),
    })
}

/// Sampling speed at one context length, with or without the key/value cache.
#[derive(Clone, Debug, serde::Serialize)]
pub struct SampleBench {
    /// Tokens in the context when the last timed token is picked.
    pub context: usize,
    pub kv_cache: bool,
    pub tokens: usize,
    pub tokens_per_s: f64,
}

/// Times `tokens` next-token steps (logits read back, greedy pick) ending at each context length of
/// `contexts`, with and without the key/value cache, on a randomly initialised model of `cfg`'s shape
/// and vocabulary (`block_size` positions). Before the timed steps: a full pass over the prompt and
/// one untimed step, which compile the programs and fill the cache. Also returns the one-position
/// program's dispatches, each timed alone: (entry point, count, ms).
#[allow(clippy::type_complexity)]
pub fn sample(
    cfg: &TrainConfig,
    contexts: &[usize],
    tokens: usize,
    device: &DeviceChoice,
) -> Result<(String, Vec<SampleBench>, Vec<(String, usize, f64)>)> {
    if tokens == 0 {
        return Err(crate::Error::Invalid("--tokens 0: time at least one token".into()));
    }
    let backend = crate::open_backend_with(device, &cfg.matmul)?;
    let described = backend.describe();
    let model_cfg = cfg.model(cfg.vocab_size);
    let shape = BatchShape { b: 1, t: cfg.block_size, accum: 1 };
    let mut model = Model::new(backend, model_cfg, shape, Mode::Inference)?;
    model.set_params(&init_params(&model_cfg, cfg.seed))?;
    let mut rng = crate::rng::Rng::new(cfg.seed);
    let mut out = Vec::new();
    for &context in contexts {
        if context > shape.t || context < tokens.saturating_add(2) {
            return Err(crate::Error::Invalid(format!(
                "--context {context} with --tokens {tokens}: the context must be at least --tokens + 2 and at \
                 most the block size {}",
                shape.t
            )));
        }
        for kv_cache in [false, true] {
            model.set_kv_cache(kv_cache);
            let mut ids: Vec<u32> =
                (0..context - tokens - 1).map(|_| rng.below(model_cfg.vocab_size as u64) as u32).collect();
            let greedy = crate::sample::SampleOptions { temperature: 0.0, ..Default::default() };
            let mut next = |model: &mut Model, ids: &mut Vec<u32>| -> Result<()> {
                let logits = model.next_logits(ids)?;
                ids.push(crate::sample::pick(&logits, &greedy, &mut rng));
                Ok(())
            };
            next(&mut model, &mut ids)?;
            next(&mut model, &mut ids)?;
            let started = Instant::now();
            for _ in 0..tokens {
                next(&mut model, &mut ids)?;
            }
            let seconds = started.elapsed().as_secs_f64();
            out.push(SampleBench { context, kv_cache, tokens, tokens_per_s: tokens as f64 / seconds });
        }
    }
    Ok((described, out, per_kernel(model.profile_decode()?)))
}
