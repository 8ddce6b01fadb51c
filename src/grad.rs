//! `wgslm grad`: the loss, logits and every gradient of a Hugging Face GPT-2 or Llama on one batch, and
//! optionally N AdamW steps on it — in exactly the format of the PyTorch reference fixture, so any two
//! implementations (or backends) can be compared tensor by tensor.

use std::path::Path;

use crate::backend::{AdamwHyper, Backend};
use crate::model::{hf, BatchShape, Mode, Model, ModelConfig, ParamLayout};
use crate::tensors::{self, Tensor, TensorFile};
use crate::{Error, Result};

/// AdamW settings for `--adamw-steps` (no clipping, as in the reference).
#[derive(Clone, Copy, Debug)]
pub struct GradOptions {
    pub adamw_steps: usize,
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
}

impl Default for GradOptions {
    fn default() -> Self {
        GradOptions { adamw_steps: 0, lr: 1e-3, beta1: 0.9, beta2: 0.95, eps: 1e-8, weight_decay: 0.1 }
    }
}

/// What `wgslm grad` computes.
pub struct GradOutput {
    pub config: ModelConfig,
    pub shape: BatchShape,
    pub loss: f32,
    /// (B,T,V)
    pub logits: Vec<f32>,
    /// Flat, laid out by `ParamLayout::new(&config)`.
    pub params: Vec<f32>,
    pub grads: Vec<f32>,
    /// The loss before each AdamW step.
    pub losses: Vec<f32>,
    /// The parameters after the first step, flat (empty without steps).
    pub step1: Vec<f32>,
}

/// Reads a batch file: `inputs` and `targets`, [B, T], int32 or int64, ids below `vocab`.
pub fn read_batch(path: &Path, vocab: usize) -> Result<(Vec<u32>, Vec<u32>, usize, usize)> {
    let file = TensorFile::open(path)?;
    let (inputs, shape) = file.ints("inputs")?;
    let (targets, tshape) = file.ints("targets")?;
    if shape.len() != 2 || shape != tshape {
        return Err(Error::Invalid(format!(
            "{}: `inputs` {shape:?} and `targets` {tshape:?} must both be [B, T]",
            path.display()
        )));
    }
    let ids = |name: &str, v: Vec<i64>| -> Result<Vec<u32>> {
        v.iter()
            .enumerate()
            .map(|(i, &id)| {
                if id < 0 || id as usize >= vocab {
                    Err(Error::Invalid(format!(
                        "{}: `{name}` holds {id} at position {i}, outside the model's vocabulary of {vocab}",
                        path.display()
                    )))
                } else {
                    Ok(id as u32)
                }
            })
            .collect()
    };
    Ok((ids("inputs", inputs)?, ids("targets", targets)?, shape[0], shape[1]))
}

/// Runs the model in `model_dir` on the batch in `batch_file`.
pub fn run(
    backend: Box<dyn Backend>,
    model_dir: &Path,
    batch_file: &Path,
    opts: &GradOptions,
) -> Result<GradOutput> {
    crate::train::config::check_adamw("--", opts.lr, opts.beta1, opts.beta2, opts.eps, opts.weight_decay)
        .map_err(|e| Error::Invalid(e.replace("--weight_decay", "--weight-decay")))?;
    let (config, params) = hf::load(model_dir)?;
    let (inputs, targets, b, t) = read_batch(batch_file, config.vocab_size)?;
    if b == 0 || t == 0 {
        return Err(Error::Invalid(format!(
            "{}: the batch is [{b}, {t}]; it needs at least one sequence of at least one token",
            batch_file.display()
        )));
    }
    if t > config.n_positions {
        return Err(Error::Invalid(format!(
            "{}: T = {t} is longer than the model's n_positions {}",
            batch_file.display(),
            config.n_positions
        )));
    }
    let shape = BatchShape { b, t, accum: 1 };
    let mut model =
        Model::new(backend, config, shape, Mode::Train { weight_decay: opts.weight_decay, dropout: 0.0 })?;
    model.set_params(&params)?;
    model.set_batch(0, &inputs, &targets)?;
    let stats = model.compute_grads()?;
    // The backward pass wrote the logits' gradient over the logits: run the forward pass again.
    let logits = model.logits()?;
    let grads = model.grads()?;
    let (mut losses, mut step1) = (Vec::new(), Vec::new());
    for step in 1..=opts.adamw_steps as u64 {
        let hyper = AdamwHyper::at_step(opts.lr, opts.beta1, opts.beta2, opts.eps, 0.0, step);
        losses.push(model.step(&hyper)?.loss);
        if step == 1 {
            step1 = model.params()?;
        }
    }
    Ok(GradOutput { config, shape, loss: stats.loss, logits, params, grads, losses, step1 })
}

/// Writes the output in the reference format: `loss` [], `logits` [B,T,V], `grad.<HF name>`, and with
/// steps `losses` [N] and `step1.<HF name>`.
pub fn write(path: &Path, out: &GradOutput) -> Result<()> {
    let layout = ParamLayout::new(&out.config);
    let (b, t, v) = (out.shape.b, out.shape.t, out.config.vocab_size);
    let loss = [out.loss];
    let mut list: Vec<(String, Tensor<'_>)> = vec![
        ("loss".into(), Tensor::F32(&loss, vec![])),
        ("logits".into(), Tensor::F32(&out.logits, vec![b, t, v])),
    ];
    for (i, s) in layout.specs.iter().enumerate() {
        list.push((format!("grad.{}", s.name), Tensor::F32(layout.slice(&out.grads, i), s.shape.clone())));
        if !out.step1.is_empty() {
            list.push((
                format!("step1.{}", s.name),
                Tensor::F32(layout.slice(&out.step1, i), s.shape.clone()),
            ));
        }
    }
    if !out.losses.is_empty() {
        list.push(("losses".into(), Tensor::F32(&out.losses, vec![out.losses.len()])));
    }
    tensors::write(path, list, None)
}
