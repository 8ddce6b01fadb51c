//! The architecture-free runtime: a model on a backend, planned for one batch shape. It owns the
//! parameters, gradients and AdamW moments, the frames (token, target and position inputs, logits,
//! losses), the output head and the loss, the programs (step, gradients, loss, logits, sampling), the
//! step statistics and the memory accounting. An architecture ([`Network`]) owns its activations and
//! supplies the ops from the token embedding to the final hidden state and back.
//!
//! Buffers are planned when the model is built; a step then only writes the batch and the step's
//! hyperparameters, runs one prepared program, and reads back the loss and the gradient norm.

use super::layout::{ParamLayout, ALIGN};
use super::{gpt2, llama, Arch, ModelConfig};
use crate::backend::{encoder_order, AdamwHyper, Backend, BufId, DType, Op, PlanId, View, WeightLayout};
use crate::{Error, Result};

/// The fixed shape of a batch: `accum` micro-batches of (b, t) tokens per optimizer step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchShape {
    pub b: usize,
    pub t: usize,
    pub accum: usize,
}

impl BatchShape {
    pub fn tokens(&self) -> usize {
        self.b * self.t
    }
}

/// What the model is built for.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Mode {
    /// Forward only (sampling, evaluation): no gradients, no optimizer state.
    Inference,
    /// Forward, backward and AdamW, with decoupled weight decay on the decayed tensors, and dropout
    /// with probability `dropout` (0 = none) where the architecture applies it, during training steps
    /// only.
    Train { weight_decay: f32, dropout: f32 },
}

/// What one step measured.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepStats {
    /// Mean cross-entropy over every position of the step's micro-batches, before the update.
    pub loss: f32,
    /// Global L2 norm of the gradient, before clipping. Not finite means the update was skipped.
    pub grad_norm: f32,
}

/// The parameters (or their gradients, or a moment) as views by layout index.
#[derive(Clone, Copy)]
pub struct Weights<'a> {
    pub buf: BufId,
    pub layout: &'a ParamLayout,
}

impl Weights<'_> {
    /// Tensor `index`.
    pub fn at(&self, index: usize) -> View {
        let s = &self.layout.specs[index];
        View::new(self.buf, s.offset, s.len())
    }

    /// Tensors `first..=last` as one view; the layout packs them (see `ParamDef::packed`).
    pub fn span(&self, first: usize, last: usize) -> View {
        let (a, b) = (&self.layout.specs[first], &self.layout.specs[last]);
        let len: usize = self.layout.specs[first..=last].iter().map(|s| s.len()).sum();
        assert_eq!(a.offset + len, b.offset + b.len(), "{}..{} are not packed", a.name, b.name);
        View::new(self.buf, a.offset, len)
    }
}

/// What the runtime hands an architecture when it asks for one micro-batch's ops.
pub struct Io<'a> {
    pub shape: BatchShape,
    pub micro: usize,
    pub params: Weights<'a>,
    /// (B,T) u32 token ids.
    pub tokens: View,
    /// (B·T) u32: `encoder_order(tokens)`.
    pub order: View,
    /// (B·T) u32: the position of each token in its sequence.
    pub positions: View,
    /// A training step: apply dropout.
    pub train: bool,
}

/// Dropout as the runtime sets it up: the probability and the step's seed (1 u32, written by the
/// host before each step).
#[derive(Clone, Copy, Debug)]
pub struct DropoutSeed {
    pub p: f32,
    pub seed: View,
}

/// One architecture: its activations and the ops between the token ids and the final hidden state.
/// See docs/ARCHITECTURE.md, "Adding an architecture".
pub trait Network {
    /// Allocates the activations of a new frame of `shape` and returns its number (0, 1, ...; frame
    /// 0 is the one training steps run on). `scalar` is a 1-element f32 view for tensors a plan does
    /// not need.
    fn add_frame(
        &mut self,
        be: &mut dyn Backend,
        shape: BatchShape,
        scalar: View,
        label: &str,
    ) -> Result<usize>;
    /// Allocates what training frame 0 needs: activation gradients and dropout buffers.
    fn add_training(
        &mut self,
        be: &mut dyn Backend,
        dropout: Option<DropoutSeed>,
        scalar: View,
    ) -> Result<()>;
    /// Appends the forward ops of `frame` from the tokens to the final hidden state.
    fn forward(&self, frame: usize, io: &Io, ops: &mut Vec<Op>);
    /// The final hidden state of `frame` (N,C): the input of the output head.
    fn hidden(&self, frame: usize) -> View;
    /// The gradient of frame 0's final hidden state (N,C): the runtime zeroes it and the head's
    /// backward pass accumulates into it.
    fn hidden_grad(&self) -> View;
    /// Appends the backward ops of frame 0, in exact reverse of the forward pass, from
    /// [`Network::hidden_grad`] to the parameter gradients (accumulated into `grads`). Zeroes its own
    /// activation gradients before it accumulates into them.
    fn backward(&self, io: &Io, grads: Weights, ops: &mut Vec<Op>);
    /// The layout index of the output head, stored `[vocab, n_embd]` (`nn.Linear` layout).
    fn head(&self) -> usize;
    /// The forward activations of `frame` that a training step keeps (memory accounting).
    fn saved(&self, frame: usize) -> Vec<View>;
}

/// The network of `cfg`'s architecture.
fn network(cfg: &ModelConfig) -> Box<dyn Network> {
    match cfg.arch {
        Arch::Gpt2 => Box::new(gpt2::Gpt2Net::new(cfg)),
        Arch::Llama(_) => Box::new(llama::LlamaNet::new(cfg)),
    }
}

/// Where the loss and the gradient norm live in the stats buffer (each on its own aligned slot).
const LOSS_AT: usize = 0;
const NORM_AT: usize = ALIGN;

/// A batch shape's worth of inputs, the network's activations, and the classifier's outputs: the
/// training frame, or a one-sequence frame for sampling that shares the parameters.
struct Frame {
    shape: BatchShape,
    /// The network's number for this frame.
    net: usize,
    tokens: Vec<View>,
    targets: Vec<View>,
    orders: Vec<View>,
    positions: View,
    /// (B,T,V); after a training step's backward pass, their gradient.
    logits: View,
    losses: View,
    lse: View,
}

impl Frame {
    fn new(
        be: &mut dyn Backend,
        net: &mut dyn Network,
        cfg: &ModelConfig,
        shape: BatchShape,
        scalar: View,
        label: &str,
    ) -> Result<Self> {
        let n = shape.tokens();
        let net_frame = net.add_frame(be, shape, scalar, label)?;
        let mut alloc = |dtype: DType, len: usize, what: &str| -> Result<View> {
            Ok(View::new(be.alloc(dtype, len, &format!("{label}{what}"))?, 0, len))
        };
        let logits = alloc(DType::F32, n * cfg.vocab_size, "logits")?;
        let losses = alloc(DType::F32, n, "losses")?;
        let lse = alloc(DType::F32, n, "logsumexp")?;
        let positions = alloc(DType::U32, n, "positions")?;
        let mut ids = |what: &str| -> Result<Vec<View>> {
            (0..shape.accum).map(|i| alloc(DType::U32, n, &format!("{what} {i}"))).collect()
        };
        let (tokens, targets, orders) = (ids("tokens")?, ids("targets")?, ids("token order")?);
        let pos: Vec<u32> = (0..n).map(|i| (i % shape.t) as u32).collect();
        be.write_u32(positions, &pos)?;
        Ok(Frame { shape, net: net_frame, tokens, targets, orders, positions, logits, losses, lse })
    }
}

struct Train {
    grads: BufId,
    m: BufId,
    v: BufId,
    grad_plan: PlanId,
    step_plan: PlanId,
}

/// A model on a backend, planned for one batch shape.
pub struct Model {
    pub config: ModelConfig,
    pub layout: ParamLayout,
    pub shape: BatchShape,
    backend: Box<dyn Backend>,
    net: Box<dyn Network>,
    params: BufId,
    main: Frame,
    /// A (1, T) frame and its logits program, when sampling is enabled on a training model.
    sampler: Option<(Frame, PlanId)>,
    dropout: Option<DropoutSeed>,
    /// The loss-gradient multiplier (1 f32; see `Op::CrossentropyBackward`).
    grad_scale: View,
    scalar: View,
    stats: View,
    hyper: View,
    loss_plan: PlanId,
    logits_plan: PlanId,
    train: Option<Train>,
    /// Seconds the last `step` spent recording and submitting its program (host time, no waiting).
    last_submit: f64,
}

impl Model {
    /// Allocates every buffer and prepares every program for `shape`. Parameters start at zero; load
    /// them with [`Model::set_params`].
    pub fn new(
        mut backend: Box<dyn Backend>,
        config: ModelConfig,
        shape: BatchShape,
        mode: Mode,
    ) -> Result<Self> {
        config.validate()?;
        if shape.b == 0 || shape.t == 0 || shape.accum == 0 {
            return Err(Error::Invalid(format!("batch shape {shape:?}: every dimension must be at least 1")));
        }
        if shape.t > config.n_positions {
            return Err(Error::Invalid(format!(
                "sequence length {} is longer than the model's n_positions {}",
                shape.t, config.n_positions
            )));
        }
        let layout = ParamLayout::new(&config);
        let mut net = network(&config);
        let be = backend.as_mut();
        let params = be.alloc(DType::F32, layout.total, "parameters")?;
        let stats = View::new(be.alloc(DType::F32, NORM_AT + 1, "loss and gradient norm")?, 0, NORM_AT + 1);
        let hyper =
            View::new(be.alloc(DType::F32, AdamwHyper::WORDS, "AdamW step values")?, 0, AdamwHyper::WORDS);
        let scalar = View::new(be.alloc(DType::F32, 1, "unused statistics")?, 0, 1);
        let grad_scale = View::new(be.alloc(DType::F32, 1, "loss-gradient multiplier")?, 0, 1);
        be.write_f32(grad_scale, &[1.0])?;
        let main = Frame::new(be, net.as_mut(), &config, shape, scalar, "")?;
        let mut model = Model {
            config,
            layout,
            shape,
            backend,
            net,
            params,
            main,
            sampler: None,
            dropout: None,
            grad_scale,
            scalar,
            stats,
            hyper,
            loss_plan: PlanId(0),
            logits_plan: PlanId(0),
            train: None,
            last_submit: 0.0,
        };
        let stats = model.stats;
        let mut loss_ops = vec![Op::Zero { out: stats }];
        for micro in 0..shape.accum {
            loss_ops.extend(model.forward_ops(&model.main, micro, true, false));
        }
        model.loss_plan = model.backend.prepare(&loss_ops)?;
        model.logits_plan = model.backend.prepare(&model.forward_ops(&model.main, 0, false, false))?;

        if let Mode::Train { weight_decay, dropout } = mode {
            if !(0.0..1.0).contains(&dropout) {
                return Err(Error::Invalid(format!("dropout {dropout} must be in [0, 1)")));
            }
            let be = model.backend.as_mut();
            if dropout > 0.0 {
                let seed = View::new(be.alloc(DType::U32, 1, "dropout seed")?, 0, 1);
                model.dropout = Some(DropoutSeed { p: dropout, seed });
            }
            model.net.add_training(be, model.dropout, scalar)?;
            let total = model.layout.total;
            let grads = be.alloc(DType::F32, total, "gradients")?;
            let m = be.alloc(DType::F32, total, "AdamW m")?;
            let v = be.alloc(DType::F32, total, "AdamW v")?;
            let mut train = Train { grads, m, v, grad_plan: PlanId(0), step_plan: PlanId(0) };
            let mut ops = vec![Op::Zero { out: View::new(grads, 0, total) }, Op::Zero { out: stats }];
            for micro in 0..shape.accum {
                ops.extend(model.forward_ops(&model.main, micro, true, true));
                ops.extend(model.backward_ops(&train, micro));
            }
            ops.push(Op::GlobalNorm {
                out: stats.slice(NORM_AT, 1),
                inp: View::new(grads, 0, total),
                n: total,
            });
            train.grad_plan = model.backend.prepare(&ops)?;
            for ((start, end), wd) in
                [(model.layout.decay_range, weight_decay), (model.layout.no_decay_range, 0.0)]
            {
                if end > start {
                    let at = |buf: BufId| View::new(buf, start, end - start);
                    ops.push(Op::AdamwUpdate {
                        params: at(model.params),
                        grads: at(grads),
                        m: at(m),
                        v: at(v),
                        hyper: model.hyper,
                        norm: stats.slice(NORM_AT, 1),
                        n: end - start,
                        weight_decay: wd,
                    });
                }
            }
            train.step_plan = model.backend.prepare(&ops)?;
            model.train = Some(train);
        }
        Ok(model)
    }

    fn weights(&self, buf: BufId) -> Weights<'_> {
        Weights { buf, layout: &self.layout }
    }

    fn io(&self, frame: &Frame, micro: usize, train: bool) -> Io<'_> {
        Io {
            shape: frame.shape,
            micro,
            params: self.weights(self.params),
            tokens: frame.tokens[micro],
            order: frame.orders[micro],
            positions: frame.positions,
            train,
        }
    }

    /// The forward pass of micro-batch `micro`: the network, the output head and (with `loss`) the
    /// cross-entropy added into the stats buffer's loss slot as a mean over the whole step. `train`
    /// applies dropout.
    fn forward_ops(&self, frame: &Frame, micro: usize, loss: bool, train: bool) -> Vec<Op> {
        let (s, c, v) = (frame.shape, self.config.n_embd, self.config.vocab_size);
        let n = s.tokens();
        let mut ops = Vec::new();
        self.net.forward(frame.net, &self.io(frame, micro, train), &mut ops);
        ops.push(Op::MatmulForward {
            out: frame.logits,
            inp: self.net.hidden(frame.net),
            weight: self.weights(self.params).at(self.net.head()),
            bias: None,
            m: n,
            k: c,
            n: v,
            layout: WeightLayout::OutIn,
        });
        if loss {
            ops.extend([
                Op::CrossentropyForward {
                    losses: frame.losses,
                    lse: frame.lse,
                    logits: frame.logits,
                    targets: frame.targets[micro],
                    n,
                    v,
                },
                Op::ReduceSum {
                    out: self.stats.slice(LOSS_AT, 1),
                    inp: frame.losses,
                    n,
                    scale: self.loss_scale(s),
                },
            ]);
        }
        ops
    }

    /// d(step loss)/d(loss at one position): the loss is the mean over every position of every
    /// micro-batch.
    fn loss_scale(&self, shape: BatchShape) -> f32 {
        (1.0 / (shape.tokens() * shape.accum) as f64) as f32
    }

    /// The backward pass of micro-batch `micro`: the loss and the output head, then the network's.
    fn backward_ops(&self, train: &Train, micro: usize) -> Vec<Op> {
        let (f, c, v) = (&self.main, self.config.n_embd, self.config.vocab_size);
        let n = f.shape.tokens();
        let (p, g) = (self.weights(self.params), self.weights(train.grads));
        let head = self.net.head();
        let mut ops = vec![
            Op::Zero { out: self.net.hidden_grad() },
            // The logits are dead once the loss is formed: their gradient overwrites them.
            Op::CrossentropyBackward {
                dlogits: f.logits,
                logits: f.logits,
                lse: f.lse,
                targets: f.targets[micro],
                grad_scale: self.grad_scale,
                n,
                v,
                scale: self.loss_scale(f.shape),
            },
        ];
        ops.push(Op::MatmulBackward {
            dinp: self.net.hidden_grad(),
            dweight: g.at(head),
            dbias: None,
            dout: f.logits,
            inp: self.net.hidden(f.net),
            weight: p.at(head),
            m: n,
            k: c,
            n: v,
            layout: WeightLayout::OutIn,
        });
        self.net.backward(&self.io(f, micro, true), g, &mut ops);
        ops
    }

    pub fn backend(&self) -> &dyn Backend {
        self.backend.as_ref()
    }

    pub fn backend_mut(&mut self) -> &mut dyn Backend {
        self.backend.as_mut()
    }

    fn train(&self) -> Result<&Train> {
        self.train.as_ref().ok_or_else(|| Error::Invalid("this model was built for inference only".into()))
    }

    /// Loads micro-batch `micro`: `inputs` and `targets` are (B,T) token ids below the vocabulary size.
    pub fn set_batch(&mut self, micro: usize, inputs: &[u32], targets: &[u32]) -> Result<()> {
        let want = self.shape.tokens();
        if inputs.len() != want || targets.len() != want {
            return Err(Error::Invalid(format!(
                "a batch of {} inputs and {} targets for a model planned for B·T = {want}",
                inputs.len(),
                targets.len()
            )));
        }
        let v = self.config.vocab_size;
        for (what, ids) in [("input", inputs), ("target", targets)] {
            if let Some((i, id)) = ids.iter().enumerate().find(|(_, &id)| id as usize >= v) {
                return Err(Error::Invalid(format!(
                    "{what} token {id} at position {i} is outside the vocabulary of {v}; was the data \
                     prepared with another tokenizer?"
                )));
            }
        }
        let order = encoder_order(inputs);
        let (f, be) = (&self.main, self.backend.as_mut());
        be.write_u32(f.tokens[micro], inputs)?;
        be.write_u32(f.targets[micro], targets)?;
        be.write_u32(f.orders[micro], &order)
    }

    /// Writes every parameter (a flat buffer laid out by `self.layout`).
    pub fn set_params(&mut self, flat: &[f32]) -> Result<()> {
        self.check_flat(flat.len())?;
        self.backend.write_f32(View::new(self.params, 0, self.layout.total), flat)
    }

    fn check_flat(&self, len: usize) -> Result<()> {
        if len != self.layout.total {
            return Err(Error::Invalid(format!(
                "{len} values for a model whose layout holds {}",
                self.layout.total
            )));
        }
        Ok(())
    }

    /// Every parameter, flat.
    pub fn params(&mut self) -> Result<Vec<f32>> {
        self.backend.read_f32(View::new(self.params, 0, self.layout.total))
    }

    /// Every parameter gradient of the last step, flat.
    pub fn grads(&mut self) -> Result<Vec<f32>> {
        let grads = self.train()?.grads;
        self.backend.read_f32(View::new(grads, 0, self.layout.total))
    }

    /// AdamW's moments (m, v), flat.
    pub fn optimizer_state(&mut self) -> Result<(Vec<f32>, Vec<f32>)> {
        let (m, v) = (self.train()?.m, self.train()?.v);
        let total = self.layout.total;
        Ok((self.backend.read_f32(View::new(m, 0, total))?, self.backend.read_f32(View::new(v, 0, total))?))
    }

    pub fn set_optimizer_state(&mut self, m: &[f32], v: &[f32]) -> Result<()> {
        self.check_flat(m.len())?;
        self.check_flat(v.len())?;
        let (mb, vb) = (self.train()?.m, self.train()?.v);
        let total = self.layout.total;
        self.backend.write_f32(View::new(mb, 0, total), m)?;
        self.backend.write_f32(View::new(vb, 0, total), v)
    }

    fn read_stats(&mut self) -> Result<StepStats> {
        let s = self.backend.read_f32(self.stats)?;
        Ok(StepStats { loss: s[LOSS_AT], grad_norm: s[NORM_AT] })
    }

    /// Forward and backward over the loaded micro-batches; leaves the gradients in place.
    pub fn compute_grads(&mut self) -> Result<StepStats> {
        let plan = self.train()?.grad_plan;
        self.backend.run(plan)?;
        self.read_stats()
    }

    /// Multiplies the gradient of the loss in the next steps by `x` (1 normally). A non-finite `x` makes
    /// every gradient non-finite: the fault-injection hook of the tests.
    pub fn set_grad_scale(&mut self, x: f32) -> Result<()> {
        self.backend.write_f32(self.grad_scale, &[x])
    }

    /// Sets the seed of the dropout masks of the next steps (each step should have its own).
    pub fn set_dropout_seed(&mut self, seed: u32) -> Result<()> {
        match &self.dropout {
            Some(d) => self.backend.write_u32(d.seed, &[seed]),
            None => Ok(()),
        }
    }

    /// One optimizer step over the loaded micro-batches: zero gradients, forward, backward, global
    /// norm, clipping and AdamW, as one program (one submission on the GPU).
    pub fn step(&mut self, hyper: &AdamwHyper) -> Result<StepStats> {
        let plan = self.train()?.step_plan;
        self.backend.write_f32(self.hyper, &hyper.to_words())?;
        let t0 = std::time::Instant::now();
        self.backend.run(plan)?;
        self.last_submit = t0.elapsed().as_secs_f64();
        self.read_stats()
    }

    /// Host seconds the last step spent recording and submitting its program.
    pub fn last_submit_seconds(&self) -> f64 {
        self.last_submit
    }

    /// The memory a training step needs by its definition, in bytes: parameters, gradients and both
    /// AdamW moments, plus the forward activations the backward pass reads.
    pub fn analytic_bytes(&self) -> u64 {
        let f = &self.main;
        let mut acts = self.net.saved(f.net);
        acts.extend([f.logits, f.losses, f.lse]);
        let states = if self.train.is_some() { 4 } else { 1 };
        4 * (states * self.config.n_params() + acts.iter().map(|v| v.len).sum::<usize>()) as u64
    }

    /// Wall time of every dispatch of one training step (GPU backends only; a profiling aid).
    pub fn profile_step(&mut self) -> Result<Vec<(&'static str, f64)>> {
        let plan = self.train()?.step_plan;
        self.backend.profile(plan)
    }

    /// The mean loss over the loaded micro-batches, forward only.
    pub fn eval_loss(&mut self) -> Result<f32> {
        self.backend.run(self.loss_plan)?;
        Ok(self.read_stats()?.loss)
    }

    /// Runs the forward pass of micro-batch 0 and returns its logits, (B,T,V) flat.
    pub fn logits(&mut self) -> Result<Vec<f32>> {
        self.backend.run(self.logits_plan)?;
        self.backend.read_f32(self.main.logits)
    }

    /// The logits the last forward pass left (of the last micro-batch it ran), (B,T,V) flat. After a
    /// training step's backward pass the buffer holds the logits' gradient instead; use [`Model::logits`].
    pub fn last_logits(&mut self) -> Result<Vec<f32>> {
        self.backend.read_f32(self.main.logits)
    }

    /// The logits left by the last forward pass at one position of micro-batch 0: (V).
    pub fn logits_at(&mut self, b: usize, t: usize) -> Result<Vec<f32>> {
        let v = self.config.vocab_size;
        let row = b * self.shape.t + t;
        self.backend.read_f32(self.main.logits.slice(row * v, v))
    }

    /// Runs the forward pass of micro-batch 0 without reading anything back.
    pub fn forward(&mut self) -> Result<()> {
        self.backend.run(self.logits_plan)
    }

    /// The per-position losses of the last forward pass with a loss (micro-batch `accum - 1`), (B,T).
    pub fn last_losses(&mut self) -> Result<Vec<f32>> {
        self.backend.read_f32(self.main.losses)
    }

    /// Adds a one-sequence frame sharing the parameters, for [`Model::next_logits`]: sampling from a
    /// model built for training batches costs one sequence, not a batch, per token.
    pub fn enable_sampling(&mut self) -> Result<()> {
        if self.sampler.is_some() || self.shape.b == 1 && self.shape.accum == 1 {
            return Ok(());
        }
        let shape = BatchShape { b: 1, t: self.shape.t, accum: 1 };
        let frame = Frame::new(
            self.backend.as_mut(),
            self.net.as_mut(),
            &self.config,
            shape,
            self.scalar,
            "sampling ",
        )?;
        let plan = self.backend.prepare(&self.forward_ops(&frame, 0, false, false))?;
        self.sampler = Some((frame, plan));
        Ok(())
    }

    /// The logits that follow `context` (at most T tokens): (V).
    pub fn next_logits(&mut self, context: &[u32]) -> Result<Vec<f32>> {
        let (t, v) = (self.shape.t, self.config.vocab_size);
        if context.is_empty() || context.len() > t {
            return Err(Error::Invalid(format!(
                "a context of {} tokens for a model of block size {t}",
                context.len()
            )));
        }
        if let Some(&bad) = context.iter().find(|&&id| id as usize >= v) {
            return Err(Error::Invalid(format!("token {bad} is outside the vocabulary of {v}")));
        }
        // Causal attention: the positions after the context do not change its logits.
        let mut padded = context.to_vec();
        padded.resize(t, 0);
        let (frame, plan) = match &self.sampler {
            Some((frame, plan)) => (frame, *plan),
            None if self.shape.b == 1 => (&self.main, self.logits_plan),
            None => return Err(Error::Invalid("sampling is not enabled on this model".into())),
        };
        let (tokens, order, logits) = (frame.tokens[0], frame.orders[0], frame.logits);
        self.backend.write_u32(tokens, &padded)?;
        self.backend.write_u32(order, &encoder_order(&padded))?;
        self.backend.run(plan)?;
        self.backend.read_f32(logits.slice((context.len() - 1) * v, v))
    }
}
