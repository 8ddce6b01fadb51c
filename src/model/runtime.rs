//! The architecture-free runtime: a model on a backend, planned for one batch shape. It owns the
//! parameters, gradients and AdamW moments, the frames (token, target and position inputs, logits,
//! losses), the output head and the loss, the programs (step, gradients, loss, logits, sampling), the
//! step statistics and the memory accounting. An architecture ([`Network`]) owns its activations and
//! supplies the ops from the token embedding to the final hidden state and back.
//!
//! Buffers are planned when the model is built; a step then only writes the batch and the step's
//! hyperparameters, runs one prepared program, and reads back the loss and the gradient norm.

use super::decode::{self, Decoder, FrameViews};
use super::layout::{ParamLayout, ALIGN};
use super::mixed::{self, Lowering, Precision};
use super::{gpt2, llama, Arch, ModelConfig};
use crate::backend::{
    encoder_order, AdamwHyper, AttnDropout, Backend, BufId, DType, Op, PlanId, View, WeightLayout,
};
use crate::{Error, Result};

/// The fixed shape of a batch: `accum` micro-batches of (b, t) tokens per optimizer step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchShape {
    pub b: usize,
    pub t: usize,
    pub accum: usize,
}

/// The most tokens one micro-batch may hold (batch size × sequence length): far past what a model of
/// this engine's sizes trains on, and small enough that no size computed from it overflows.
pub const MAX_BATCH_TOKENS: usize = 1 << 24;

/// The most micro-batches one step may accumulate.
pub const MAX_ACCUM: usize = 1 << 16;

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

/// How attention is computed: the two variants compute the same function.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attention {
    /// Explicit scores: the (B,NH,T,T) probabilities of every layer are kept for the backward pass
    /// (`attention_forward`/`attention_backward`); the reference variant.
    Naive,
    /// Fused, flash-style: only one log-sum-exp per row (B,NH,T) is kept, and the backward pass
    /// recomputes the probabilities tile by tile (`flash_attention_forward`/`_backward`).
    Flash,
}

impl Attention {
    /// The config value that names it.
    pub fn name(&self) -> &'static str {
        match self {
            Attention::Naive => "naive",
            Attention::Flash => "flash",
        }
    }

    /// `"naive"` or `"flash"`; `"auto"` is [`Attention::auto`] (the choice where the backend can run
    /// it; [`Attention::choose`] asks the backend).
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "naive" => Some(Attention::Naive),
            "flash" => Some(Attention::Flash),
            "auto" => Some(Attention::auto()),
            _ => None,
        }
    }

    /// The variant `"auto"` prefers: flash, which keeps O(T) instead of O(T²) per layer and runs
    /// 1.5-5.7× faster than naive on lavapipe at T 256-1024 (docs/BENCHMARKS.md).
    pub fn auto() -> Self {
        Attention::Flash
    }

    /// The variant `name` ("auto", "flash" or "naive") means on `backend` for a model with head size
    /// `head_size` at sequence length `t`: "auto" is flash unless the backend says it cannot run
    /// flash there ([`Backend::flash_unsupported`]), then naive; the others are what they name (a
    /// flash the backend cannot run is refused when the model is built, with the reason).
    pub fn choose(name: &str, backend: &dyn Backend, t: usize, head_size: usize) -> Option<Self> {
        if name != "auto" {
            return Self::parse(name);
        }
        match backend.flash_unsupported(t, head_size) {
            Some(why) => {
                log::info!("attention = auto: naive, since {why}");
                Some(Attention::Naive)
            }
            None => Some(Attention::auto()),
        }
    }

    /// Elements an attention op saves per layer for the backward pass (the probabilities or the
    /// log-sum-exp), which is also the scratch its backward pass needs.
    pub fn saved_len(&self, s: BatchShape, nh: usize) -> usize {
        match self {
            Attention::Naive => s.b * nh * s.t * s.t,
            Attention::Flash => s.b * nh * s.t,
        }
    }

    /// The forward op: `out` (B,T,C) from `qkv`, saving `saved` ([`Attention::saved_len`]).
    #[allow(clippy::too_many_arguments)]
    pub fn forward(
        &self,
        out: View,
        saved: View,
        qkv: View,
        s: BatchShape,
        c: usize,
        nh: usize,
        nkv: usize,
        dropout: Option<AttnDropout>,
    ) -> Op {
        let (b, t) = (s.b, s.t);
        match self {
            Attention::Naive => Op::AttentionForward { out, att: saved, qkv, b, t, c, nh, nkv, dropout },
            Attention::Flash => Op::FlashAttentionForward { out, lse: saved, qkv, b, t, c, nh, nkv, dropout },
        }
    }

    /// The backward op, accumulating into `dqkv`; `scratch` has [`Attention::saved_len`] elements and
    /// `out` is the forward output.
    #[allow(clippy::too_many_arguments)]
    pub fn backward(
        &self,
        dqkv: View,
        scratch: View,
        dout: View,
        qkv: View,
        out: View,
        saved: View,
        s: BatchShape,
        c: usize,
        nh: usize,
        nkv: usize,
        dropout: Option<AttnDropout>,
    ) -> Op {
        let (b, t) = (s.b, s.t);
        match self {
            Attention::Naive => Op::AttentionBackward {
                dqkv,
                datt: scratch,
                dout,
                qkv,
                att: saved,
                b,
                t,
                c,
                nh,
                nkv,
                dropout,
            },
            Attention::Flash => Op::FlashAttentionBackward {
                dqkv,
                dsum: scratch,
                dout,
                qkv,
                out,
                lse: saved,
                b,
                t,
                c,
                nh,
                nkv,
                dropout,
            },
        }
    }
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
    /// Allocates the activations of a new frame of `shape`, of element type `acts` (`DType::Half`
    /// for a training frame in mixed precision), and returns its number (0, 1, ...; frame 0 is the
    /// one training steps run on). `scalar` is a 1-element f32 view for tensors a plan does not need.
    fn add_frame(
        &mut self,
        be: &mut dyn Backend,
        shape: BatchShape,
        scalar: View,
        label: &str,
        acts: DType,
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

/// Allocates a network's activations, or with `grads` their gradients, one buffer each (so that a
/// kernel never binds one buffer both read-only and writable). Statistics (`stat`) need no gradient:
/// there they are the shared 1-element `scalar`.
pub struct ActAlloc<'a> {
    be: &'a mut dyn Backend,
    grads: bool,
    /// The element type of forward activations (`DType::Half` in mixed precision; so are the
    /// gradients inside a block's branches, [`ActAlloc::branch`]; the residual stream's gradients
    /// and statistics are always f32).
    acts: DType,
    scalar: View,
    prefix: &'a str,
}

impl<'a> ActAlloc<'a> {
    pub fn new(be: &'a mut dyn Backend, grads: bool, scalar: View, label: &'a str, acts: DType) -> Self {
        ActAlloc { be, grads, acts, scalar, prefix: if grads { "gradient of " } else { label } }
    }

    fn alloc(&mut self, dtype: DType, len: usize, name: &str) -> Result<View> {
        Ok(View::new(self.be.alloc(dtype, len, &format!("{}{name}", self.prefix))?, 0, len))
    }

    /// A tensor of `len` elements: an activation (in the activation type) or a gradient (f32).
    pub fn tensor(&mut self, len: usize, name: &str) -> Result<View> {
        let dtype = if self.grads { DType::F32 } else { self.acts };
        self.alloc(dtype, len, name)
    }

    /// A tensor a matmul reads or writes between the residual stream and the next matmul: an
    /// activation, or a gradient that is 16-bit in mixed precision too, as autocast leaves the
    /// gradients of 16-bit tensors (the backward matmuls read them rounded anyway). The gradient of
    /// the residual stream and of the embedding, which accumulate across blocks, stay f32
    /// ([`ActAlloc::tensor`]).
    pub fn branch(&mut self, len: usize, name: &str) -> Result<View> {
        let dtype = self.acts;
        self.alloc(dtype, len, name)
    }

    /// What attention saves for the backward pass ([`Attention::saved_len`] elements): naive
    /// attention's probabilities are an activation, flash attention's log-sum-exp a statistic (f32
    /// in every precision: the backward pass rebuilds the probabilities from it).
    pub fn attention_saved(&mut self, attention: Attention, len: usize, name: &str) -> Result<View> {
        match attention {
            Attention::Naive => self.tensor(len, name),
            Attention::Flash => self.alloc(DType::F32, len, name),
        }
    }

    /// A per-row statistic (a norm's mean or rstd, a log-sum-exp): f32, and no gradient.
    pub fn stat(&mut self, len: usize, name: &str) -> Result<View> {
        if self.grads {
            return Ok(self.scalar);
        }
        self.alloc(DType::F32, len, name)
    }

    /// The gradient of the residual stream after block `layer`: the backward pass reads block i's
    /// from one buffer while it accumulates block i-1's into the other, so two buffers serve every
    /// block, taken in turn (`two_back` is block `layer - 2`'s, when there is one).
    pub fn residual_grad(&mut self, layer: usize, two_back: Option<View>, len: usize) -> Result<View> {
        match two_back {
            Some(v) => Ok(v),
            None if layer % 2 == 0 => self.tensor(len, "residual stream (even blocks)"),
            None => self.tensor(len, "residual stream (odd blocks)"),
        }
    }
}

/// The network of `cfg`'s architecture.
fn network(cfg: &ModelConfig, attention: Attention, acts: DType) -> Box<dyn Network> {
    match cfg.arch {
        Arch::Gpt2 => Box::new(gpt2::Gpt2Net::new(cfg, attention, acts)),
        Arch::Llama(_) => Box::new(llama::LlamaNet::new(cfg, attention, acts)),
    }
}

/// Where the loss and the gradient norm live in the stats buffer (each on its own aligned slot).
const LOSS_AT: usize = 0;
const NORM_AT: usize = ALIGN;

/// The most logits one classifier chunk holds (64 MiB of f32; 16-bit in mixed precision), below the
/// adapter's binding limit too: the output head, the loss and its gradient run over chunks of rows,
/// so the largest trainable B·T does not depend on the vocabulary.
pub const LOGITS_CHUNK: usize = 1 << 24;

/// Rows of one classifier chunk: as many as [`LOGITS_CHUNK`] and the binding limit allow, in whole
/// multiples of 64 so that every chunk's slice of the hidden state, the losses and the targets starts
/// on a 256-byte boundary (any tensor view must), and all `n` rows when they fit.
fn chunk_rows(n: usize, v: usize, max_binding: usize) -> usize {
    let fits = LOGITS_CHUNK.min(max_binding) / v;
    if fits >= n {
        n
    } else {
        (fits / ALIGN * ALIGN).max(ALIGN)
    }
}

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
    /// `[first row, rows)` of each classifier chunk.
    chunks: Vec<(usize, usize)>,
    /// (rows of the largest chunk, V): the logits of one chunk; in a training step, their gradient.
    logits: View,
    losses: View,
    lse: View,
    /// The network's forward pass of micro-batch 0 (no head), and the head of each chunk after it.
    net_plan: PlanId,
    head_plans: Vec<PlanId>,
}

impl Frame {
    fn new(
        be: &mut dyn Backend,
        net: &mut dyn Network,
        cfg: &ModelConfig,
        shape: BatchShape,
        scalar: View,
        label: &str,
        acts: DType,
    ) -> Result<Self> {
        let (n, v) = (shape.tokens(), cfg.vocab_size);
        let rows = chunk_rows(n, v, be.max_binding());
        let chunks = (0..n).step_by(rows).map(|at| (at, rows.min(n - at))).collect();
        let net_frame = net.add_frame(be, shape, scalar, label, acts)?;
        let mut alloc = |dtype: DType, len: usize, what: &str| -> Result<View> {
            Ok(View::new(be.alloc(dtype, len, &format!("{label}{what}"))?, 0, len))
        };
        // 16-bit in mixed precision, as autocast leaves a 16-bit matmul's output; the loss and
        // its gradient are computed in f32 from their widening.
        let logits = alloc(acts, rows * v, "logits (one chunk of rows)")?;
        let losses = alloc(DType::F32, n, "losses")?;
        let lse = alloc(DType::F32, n, "logsumexp")?;
        let positions = alloc(DType::U32, n, "positions")?;
        let mut ids = |what: &str| -> Result<Vec<View>> {
            (0..shape.accum).map(|i| alloc(DType::U32, n, &format!("{what} {i}"))).collect()
        };
        let (tokens, targets, orders) = (ids("tokens")?, ids("targets")?, ids("token order")?);
        let pos: Vec<u32> = (0..n).map(|i| (i % shape.t) as u32).collect();
        be.write_u32(positions, &pos)?;
        Ok(Frame {
            shape,
            net: net_frame,
            tokens,
            targets,
            orders,
            positions,
            chunks,
            logits,
            losses,
            lse,
            net_plan: PlanId(0),
            head_plans: Vec::new(),
        })
    }

    /// What micro-batch `micro` of this frame hands the network.
    fn io<'a>(&self, params: Weights<'a>, micro: usize, train: bool) -> Io<'a> {
        Io {
            shape: self.shape,
            micro,
            params,
            tokens: self.tokens[micro],
            order: self.orders[micro],
            positions: self.positions,
            train,
        }
    }

    /// The output head on chunk `(at, rows)`: its logits, in the frame's chunk buffer.
    fn head_op(
        &self,
        net: &dyn Network,
        params: Weights,
        (at, rows): (usize, usize),
        c: usize,
        v: usize,
    ) -> Op {
        Op::MatmulForward {
            out: self.logits.slice(0, rows * v),
            inp: net.hidden(self.net).slice(at * c, rows * c),
            weight: params.at(net.head()),
            bias: None,
            m: rows,
            k: c,
            n: v,
            layout: WeightLayout::OutIn,
        }
    }

    /// Prepares the programs that produce this frame's logits: the network's forward pass of
    /// micro-batch 0, and the head on each chunk (run one by one, each read back before the next
    /// overwrites it).
    fn prepare_logits(
        &mut self,
        be: &mut dyn Backend,
        mixed: &mut Option<Lowering>,
        net: &dyn Network,
        params: Weights,
        c: usize,
        v: usize,
    ) -> Result<()> {
        let mut ops = Vec::new();
        net.forward(self.net, &self.io(params, 0, false), &mut ops);
        self.net_plan = prepare(be, mixed, &ops)?;
        self.head_plans = self
            .chunks
            .iter()
            .map(|&chunk| prepare(be, mixed, &[self.head_op(net, params, chunk, c, v)]))
            .collect::<Result<_>>()?;
        Ok(())
    }
}

/// `ops` lowered to mixed precision when the model trains in it, else as they are.
fn lower<'o>(
    be: &mut dyn Backend,
    mixed: &mut Option<Lowering>,
    ops: &'o [Op],
) -> Result<std::borrow::Cow<'o, [Op]>> {
    Ok(match mixed {
        Some(low) => low.lower(be, ops)?.into(),
        None => ops.into(),
    })
}

/// Prepares `ops`, lowered to mixed precision first when the model trains in it.
fn prepare(be: &mut dyn Backend, mixed: &mut Option<Lowering>, ops: &[Op]) -> Result<PlanId> {
    let ops = lower(be, mixed, ops)?;
    be.prepare(&ops)
}

struct Train {
    grads: BufId,
    m: BufId,
    v: BufId,
    weight_decay: f32,
    grad_plan: PlanId,
    step_plan: PlanId,
    /// A data-parallel step's two halves (see [`Model::local_grads`]): prepared on first use.
    split: Option<(PlanId, PlanId)>,
}

/// A model on a backend, planned for one batch shape.
pub struct Model {
    pub config: ModelConfig,
    pub layout: ParamLayout,
    pub shape: BatchShape,
    /// How attention is computed.
    pub attention: Attention,
    /// What the matmuls read: f32, or 16-bit activations and weight copies (`model::mixed`).
    pub precision: Precision,
    backend: Box<dyn Backend>,
    /// The mixed-precision pass every program goes through (`None` in f32).
    mixed: Option<Lowering>,
    /// Rounds the master parameters into their half copy (mixed precision).
    refresh_plan: Option<PlanId>,
    /// The loss scale of f16 training (1 otherwise): the loss gradient is multiplied by it and the
    /// parameter gradients divided by it before the optimizer reads them.
    loss_scale: f32,
    net: Box<dyn Network>,
    params: BufId,
    main: Frame,
    /// A (1, T) frame, when sampling is enabled on a model built for batches.
    sampler: Option<Frame>,
    /// Sampling with a key/value cache (see `decode`): built on first use; `None` inside when the
    /// network has ops without a one-position form.
    decoder: Option<Option<Decoder>>,
    /// Whether [`Model::next_logits`] may use the cache.
    kv_cache: bool,
    dropout: Option<DropoutSeed>,
    /// The loss-gradient multiplier (1 f32; see `Op::CrossentropyBackward`).
    grad_scale: View,
    scalar: View,
    stats: View,
    hyper: View,
    loss_plan: PlanId,
    train: Option<Train>,
    /// Seconds the last `step` spent recording and submitting its program (host time, no waiting).
    last_submit: f64,
}

impl Model {
    /// [`Model::with_attention`] with the attention variant `"auto"` picks.
    pub fn new(
        backend: Box<dyn Backend>,
        config: ModelConfig,
        shape: BatchShape,
        mode: Mode,
    ) -> Result<Self> {
        let attention = Attention::choose("auto", backend.as_ref(), shape.t, config.head_size())
            .expect("auto is a variant");
        Self::with_attention(backend, config, shape, mode, attention)
    }

    /// [`Model::with_precision`] in f32.
    pub fn with_attention(
        backend: Box<dyn Backend>,
        config: ModelConfig,
        shape: BatchShape,
        mode: Mode,
        attention: Attention,
    ) -> Result<Self> {
        Self::with_precision(backend, config, shape, mode, attention, Precision::F32)
    }

    /// Allocates every buffer and prepares every program for `shape`. Parameters start at zero; load
    /// them with [`Model::set_params`].
    pub fn with_precision(
        backend: Box<dyn Backend>,
        config: ModelConfig,
        shape: BatchShape,
        mode: Mode,
        attention: Attention,
        precision: Precision,
    ) -> Result<Self> {
        Self::with_scratch_cap(backend, config, shape, mode, attention, precision, mixed::SCRATCH_CAP)
    }

    /// [`Model::with_precision`], splitting the ops whose 16-bit conversions need more than
    /// `scratch_cap` elements of scratch (no effect in f32): tests split small models with it.
    pub fn with_scratch_cap(
        mut backend: Box<dyn Backend>,
        config: ModelConfig,
        shape: BatchShape,
        mode: Mode,
        attention: Attention,
        precision: Precision,
        scratch_cap: usize,
    ) -> Result<Self> {
        config.validate()?;
        let BatchShape { b, t, accum } = shape;
        if b == 0 || t == 0 || accum == 0 {
            return Err(Error::Invalid(format!(
                "a batch of {b} sequences of {t} tokens, {accum} micro-batches a step: each must be at least 1"
            )));
        }
        if b.checked_mul(t).is_none_or(|n| n > MAX_BATCH_TOKENS) || accum > MAX_ACCUM {
            return Err(Error::Invalid(format!(
                "a batch of {b} sequences of {t} tokens, {accum} micro-batches a step: at most {MAX_BATCH_TOKENS} \
                 tokens a micro-batch and {MAX_ACCUM} micro-batches a step; use a smaller batch"
            )));
        }
        if shape.t > config.n_positions {
            return Err(Error::Invalid(format!(
                "sequence length {} is longer than the model's n_positions {}",
                shape.t, config.n_positions
            )));
        }
        if precision == Precision::F16 {
            if let Some(why) = backend.f16_unsupported() {
                return Err(Error::Invalid(format!(
                    "precision = \"f16\" trains only where the adapter has shader-f16, and {why}; use \
                     precision = \"bf16\" (the same memory, f32's exponent range, no loss scaling)"
                )));
            }
        }
        let layout = ParamLayout::new(&config);
        let mut net = network(&config, attention, precision.activations());
        let be = backend.as_mut();
        let params = be.alloc(DType::F32, layout.total, "parameters")?;
        let mixed = match precision.format() {
            Some(format) => {
                let mut low = Lowering::new(be, format, params, layout.total)?;
                low.set_scratch_cap(scratch_cap);
                Some(low)
            }
            None => None,
        };
        let stats = View::new(be.alloc(DType::F32, NORM_AT + 1, "loss and gradient norm")?, 0, NORM_AT + 1);
        let hyper =
            View::new(be.alloc(DType::F32, AdamwHyper::WORDS, "AdamW step values")?, 0, AdamwHyper::WORDS);
        let scalar = View::new(be.alloc(DType::F32, 1, "unused statistics")?, 0, 1);
        let grad_scale = View::new(be.alloc(DType::F32, 1, "loss-gradient multiplier")?, 0, 1);
        be.write_f32(grad_scale, &[1.0])?;
        let main = Frame::new(be, net.as_mut(), &config, shape, scalar, "", precision.activations())?;
        let mut model = Model {
            config,
            layout,
            shape,
            attention,
            precision,
            backend,
            mixed,
            refresh_plan: None,
            loss_scale: 1.0,
            net,
            params,
            main,
            sampler: None,
            decoder: None,
            kv_cache: true,
            dropout: None,
            grad_scale,
            scalar,
            stats,
            hyper,
            loss_plan: PlanId(0),
            train: None,
            last_submit: 0.0,
        };
        // The training step first: its program holds every kernel the others use, so on the GPU its
        // shapes are tuned and its kernels compiled at once (`Backend::warm`) before any program is
        // prepared.
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
            let mut train =
                Train { grads, m, v, weight_decay, grad_plan: PlanId(0), step_plan: PlanId(0), split: None };
            let (mut ops, norm, update) = model.training_ops(&train);
            ops.extend(norm);
            let grad_len = ops.len();
            ops.extend(update);
            let be = model.backend.as_mut();
            let step = lower(be, &mut model.mixed, &ops)?;
            be.warm(&step)?;
            train.grad_plan = prepare(be, &mut model.mixed, &ops[..grad_len])?;
            train.step_plan = be.prepare(&step)?;
            model.train = Some(train);
        }
        if let Some(low) = &model.mixed {
            let refresh = low.refresh();
            model.refresh_plan = Some(model.backend.prepare(&refresh)?);
        }
        let weights = Weights { buf: model.params, layout: &model.layout };
        let (c, v) = (model.config.n_embd, model.config.vocab_size);
        let be = model.backend.as_mut();
        model.main.prepare_logits(be, &mut model.mixed, model.net.as_ref(), weights, c, v)?;
        let stats = model.stats;
        let mut loss_ops = vec![Op::Zero { out: stats }];
        for micro in 0..shape.accum {
            loss_ops.extend(model.forward_ops(&model.main, micro, true, None));
        }
        model.loss_plan = prepare(model.backend.as_mut(), &mut model.mixed, &loss_ops)?;
        Ok(model)
    }

    /// A training step's program in three parts: zeroing, then forward and backward over every
    /// micro-batch (the gradients and the loss); the global norm of the gradients; clipping and
    /// AdamW over the decayed and the undecayed parameters.
    fn training_ops(&self, train: &Train) -> (Vec<Op>, Vec<Op>, Vec<Op>) {
        let (total, stats, grads) = (self.layout.total, self.stats, train.grads);
        let mut ops = vec![Op::Zero { out: View::new(grads, 0, total) }, Op::Zero { out: stats }];
        for micro in 0..self.shape.accum {
            ops.extend(self.forward_ops(&self.main, micro, true, Some(train)));
            self.net.backward(&self.io(&self.main, micro, true), self.weights(grads), &mut ops);
        }
        let norm =
            vec![Op::GlobalNorm { out: stats.slice(NORM_AT, 1), inp: View::new(grads, 0, total), n: total }];
        let mut update = Vec::new();
        for ((start, end), wd) in
            [(self.layout.decay_range, train.weight_decay), (self.layout.no_decay_range, 0.0)]
        {
            if end > start {
                let at = |buf: BufId| View::new(buf, start, end - start);
                update.push(Op::AdamwUpdate {
                    params: at(self.params),
                    grads: at(grads),
                    m: at(train.m),
                    v: at(train.v),
                    hyper: self.hyper,
                    norm: stats.slice(NORM_AT, 1),
                    n: end - start,
                    weight_decay: wd,
                });
            }
        }
        // Mixed precision: the matmuls of the next step read the updated weights' half copy.
        update.extend(self.mixed.iter().flat_map(Lowering::refresh));
        (ops, norm, update)
    }

    fn weights(&self, buf: BufId) -> Weights<'_> {
        Weights { buf, layout: &self.layout }
    }

    fn io(&self, frame: &Frame, micro: usize, train: bool) -> Io<'_> {
        frame.io(self.weights(self.params), micro, train)
    }

    /// The forward pass of micro-batch `micro`: the network, then the output head chunk by chunk with
    /// (`loss`) the cross-entropy, added into the stats buffer's loss slot as a mean over the whole
    /// step. With `train`, a training step's: dropout applies, and each chunk's logits are turned
    /// into their gradient at once and carried back through the head into the network's
    /// `hidden_grad` and the head's gradient (llm.c's fused classifier), so no chunk is kept.
    fn forward_ops(&self, frame: &Frame, micro: usize, loss: bool, train: Option<&Train>) -> Vec<Op> {
        let (s, c, v) = (frame.shape, self.config.n_embd, self.config.vocab_size);
        let mut ops = Vec::new();
        self.net.forward(frame.net, &self.io(frame, micro, train.is_some()), &mut ops);
        if train.is_some() {
            ops.push(Op::Zero { out: self.net.hidden_grad() });
        }
        let head = self.net.head();
        for &(at, rows) in &frame.chunks {
            ops.push(frame.head_op(self.net.as_ref(), self.weights(self.params), (at, rows), c, v));
            if !loss {
                continue;
            }
            let logits = frame.logits.slice(0, rows * v);
            let (lse, targets) = (frame.lse.slice(at, rows), frame.targets[micro].slice(at, rows));
            ops.push(Op::CrossentropyForward {
                losses: frame.losses.slice(at, rows),
                lse,
                logits,
                targets,
                n: rows,
                v,
            });
            if let Some(train) = train {
                ops.extend([
                    // The logits are dead once the loss is formed: their gradient overwrites them.
                    Op::CrossentropyBackward {
                        dlogits: logits,
                        logits,
                        lse,
                        targets,
                        grad_scale: self.grad_scale,
                        n: rows,
                        v,
                        scale: self.mean_weight(s),
                    },
                    Op::MatmulBackward {
                        dinp: self.net.hidden_grad().slice(at * c, rows * c),
                        dweight: self.weights(train.grads).at(head),
                        dbias: None,
                        dout: logits,
                        inp: self.net.hidden(frame.net).slice(at * c, rows * c),
                        weight: self.weights(self.params).at(head),
                        m: rows,
                        k: c,
                        n: v,
                        layout: WeightLayout::OutIn,
                    },
                ]);
            }
        }
        if loss {
            ops.push(Op::ReduceSum {
                out: self.stats.slice(LOSS_AT, 1),
                inp: frame.losses,
                n: s.tokens(),
                scale: self.mean_weight(s),
            });
        }
        ops
    }

    /// d(step loss)/d(loss at one position): the loss is the mean over every position of every
    /// micro-batch.
    fn mean_weight(&self, shape: BatchShape) -> f32 {
        (1.0 / (shape.tokens() * shape.accum) as f64) as f32
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
        self.forget_cache();
        self.check_flat(flat.len())?;
        self.backend.write_f32(View::new(self.params, 0, self.layout.total), flat)?;
        match self.refresh_plan {
            Some(plan) => self.backend.run(plan),
            None => Ok(()),
        }
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

    /// Every parameter gradient of the last step, flat, as the optimizer receives them: in f16
    /// training still multiplied by the loss scale ([`Model::set_loss_scale`]).
    pub fn grads(&mut self) -> Result<Vec<f32>> {
        let mut out = vec![0.0; self.layout.total];
        self.read_grads_into(&mut out)?;
        Ok(out)
    }

    /// [`Model::grads`] into `out` (`layout.total` elements).
    pub fn read_grads_into(&mut self, out: &mut [f32]) -> Result<()> {
        let grads = self.train()?.grads;
        self.backend.read_f32_into(View::new(grads, 0, self.layout.total), out)
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

    /// The loss and the gradient norm of the last program; the norm unscaled (what the optimizer
    /// saw: exact, the loss scale is a power of two).
    fn read_stats(&mut self) -> Result<StepStats> {
        let s = self.backend.read_f32(self.stats)?;
        Ok(StepStats { loss: s[LOSS_AT], grad_norm: s[NORM_AT] * (1.0 / self.loss_scale) })
    }

    /// Forward and backward over the loaded micro-batches; leaves the gradients in place.
    pub fn compute_grads(&mut self) -> Result<StepStats> {
        self.forget_cache();
        let plan = self.train()?.grad_plan;
        self.backend.run(plan)?;
        self.read_stats()
    }

    /// Multiplies the gradient of the loss in the next steps by `x` (1 normally). A non-finite `x` makes
    /// every gradient non-finite: the fault-injection hook of the tests.
    pub fn set_grad_scale(&mut self, x: f32) -> Result<()> {
        self.backend.write_f32(self.grad_scale, &[x])
    }

    /// Sets the loss scale of the next steps (f16 training's dynamic loss scaling; a power of two):
    /// the loss gradient is multiplied by `scale`, and the parameter gradients and their norm are
    /// divided by it before clipping and AdamW, so that nothing but the 16-bit operands sees it.
    pub fn set_loss_scale(&mut self, scale: f32) -> Result<()> {
        if !(scale.is_finite() && scale > 0.0 && scale.log2().fract() == 0.0) {
            return Err(Error::Invalid(format!("loss scale {scale} must be a finite power of two")));
        }
        self.loss_scale = scale;
        self.set_grad_scale(scale)
    }

    /// The loss scale in effect (1 unless f16 training set one).
    pub fn loss_scale(&self) -> f32 {
        self.loss_scale
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
        self.forget_cache();
        let plan = self.train()?.step_plan;
        let hyper = AdamwHyper { grad_unscale: 1.0 / self.loss_scale, ..*hyper };
        self.backend.write_f32(self.hyper, &hyper.to_words())?;
        let t0 = std::time::Instant::now();
        self.backend.run(plan)?;
        self.last_submit = t0.elapsed().as_secs_f64();
        self.read_stats()
    }

    /// The first half of a data-parallel step (`crate::dist`): zeroing, forward and backward over the
    /// loaded micro-batches, leaving this process's gradients in place (no norm, no update). Returns
    /// the mean loss over those micro-batches.
    pub fn local_grads(&mut self) -> Result<f32> {
        self.forget_cache();
        let (local, _) = self.split_plans()?;
        let t0 = std::time::Instant::now();
        self.backend.run(local)?;
        self.last_submit = t0.elapsed().as_secs_f64();
        Ok(self.read_stats()?.loss)
    }

    /// Replaces every parameter gradient (a flat buffer laid out by `self.layout`).
    pub fn set_grads(&mut self, flat: &[f32]) -> Result<()> {
        self.check_flat(flat.len())?;
        let grads = self.train()?.grads;
        self.backend.write_f32(View::new(grads, 0, self.layout.total), flat)
    }

    /// The second half of a data-parallel step: the global norm of the gradients in place, clipping
    /// and AdamW, exactly as [`Model::step`] ends; `loss` is the step's loss to report.
    pub fn apply_grads(&mut self, hyper: &AdamwHyper, loss: f32) -> Result<StepStats> {
        self.forget_cache();
        let (_, update) = self.split_plans()?;
        let mut stats = vec![0.0; self.stats.len];
        stats[LOSS_AT] = loss;
        self.backend.write_f32(self.stats, &stats)?;
        let hyper = AdamwHyper { grad_unscale: 1.0 / self.loss_scale, ..*hyper };
        self.backend.write_f32(self.hyper, &hyper.to_words())?;
        self.backend.run(update)?;
        self.read_stats()
    }

    fn split_plans(&mut self) -> Result<(PlanId, PlanId)> {
        if let Some(split) = self.train()?.split {
            return Ok(split);
        }
        let (local, mut norm, update) = self.training_ops(self.train()?);
        norm.extend(update);
        let be = self.backend.as_mut();
        let split = (prepare(be, &mut self.mixed, &local)?, prepare(be, &mut self.mixed, &norm)?);
        self.train.as_mut().expect("checked above").split = Some(split);
        Ok(split)
    }

    /// Host seconds the last step spent recording and submitting its program.
    pub fn last_submit_seconds(&self) -> f64 {
        self.last_submit
    }

    /// The memory a training step needs by its definition, in bytes: parameters, gradients and both
    /// AdamW moments, plus the forward activations the backward pass reads.
    /// In mixed precision the half activations count two bytes an element, and the half copy of
    /// the parameters two more bytes a parameter.
    pub fn analytic_bytes(&self) -> u64 {
        let f = &self.main;
        let mut acts = self.net.saved(f.net);
        acts.extend([f.logits, f.losses, f.lse]);
        let states = if self.train.is_some() { 4 } else { 1 };
        let bytes = |v: &View| if self.backend.dtype(v.buf) == DType::Half { 2 } else { 4 } * v.len;
        let half_copy = if self.mixed.is_some() { 2 * self.config.n_params() } else { 0 };
        (4 * states * self.config.n_params() + half_copy + acts.iter().map(bytes).sum::<usize>()) as u64
    }

    /// Wall time of every dispatch of one training step (GPU backends only; a profiling aid).
    pub fn profile_step(&mut self) -> Result<Vec<(&'static str, f64)>> {
        self.forget_cache();
        let plan = self.train()?.step_plan;
        self.backend.profile(plan)
    }

    /// The mean loss over the loaded micro-batches, forward only.
    pub fn eval_loss(&mut self) -> Result<f32> {
        self.forget_cache();
        self.backend.run(self.loss_plan)?;
        Ok(self.read_stats()?.loss)
    }

    /// Runs the forward pass of micro-batch 0 and returns its logits, (B,T,V) flat.
    pub fn logits(&mut self) -> Result<Vec<f32>> {
        self.forget_cache();
        let f = &self.main;
        let (net_plan, heads, chunks, buf) = (f.net_plan, f.head_plans.clone(), f.chunks.clone(), f.logits);
        self.backend.run(net_plan)?;
        let v = self.config.vocab_size;
        let mut logits = Vec::with_capacity(self.shape.tokens() * v);
        for (plan, (_, rows)) in heads.into_iter().zip(chunks) {
            self.backend.run(plan)?;
            logits.extend(self.read(buf.slice(0, rows * v))?);
        }
        Ok(logits)
    }

    /// What the last program left in the logits buffer: the logits of the last chunk of rows of the
    /// last forward pass (all of them when one chunk holds B·T rows), or after a training step's
    /// backward pass their gradient.
    pub fn last_logits(&mut self) -> Result<Vec<f32>> {
        let (_, rows) = *self.main.chunks.last().expect("a frame has a chunk");
        self.read(self.main.logits.slice(0, rows * self.config.vocab_size))
    }

    /// The elements of `v` as f32 (widened when `v` is 16-bit).
    fn read(&mut self, v: View) -> Result<Vec<f32>> {
        mixed::read(self.backend.as_mut(), v, self.precision.format())
    }

    /// The per-position losses of the last forward pass with a loss (micro-batch `accum - 1`), (B,T).
    pub fn last_losses(&mut self) -> Result<Vec<f32>> {
        self.backend.read_f32(self.main.losses)
    }

    /// Adds a one-sequence frame sharing the parameters, for [`Model::next_logits`]: sampling from a
    /// model built for training batches costs one sequence, not a batch, per token. The frame is f32
    /// in every precision: in mixed precision it samples from the master weights (what a checkpoint
    /// holds, and `wgslm sample` loads), with the key/value cache.
    pub fn enable_sampling(&mut self) -> Result<()> {
        // A one-sequence f32 training frame serves as it is.
        let main_serves = self.shape.b == 1 && self.shape.accum == 1 && self.mixed.is_none();
        if self.sampler.is_some() || main_serves {
            return Ok(());
        }
        let shape = BatchShape { b: 1, t: self.shape.t, accum: 1 };
        let mut frame = Frame::new(
            self.backend.as_mut(),
            self.net.as_mut(),
            &self.config,
            shape,
            self.scalar,
            "sampling ",
            DType::F32,
        )?;
        let weights = Weights { buf: self.params, layout: &self.layout };
        let (c, v) = (self.config.n_embd, self.config.vocab_size);
        // Not lowered: f32 activations, the master weights.
        frame.prepare_logits(self.backend.as_mut(), &mut None, self.net.as_ref(), weights, c, v)?;
        self.sampler = Some(frame);
        // A decoder built before ran on the training frame; the next one runs on this frame.
        self.decoder = None;
        Ok(())
    }

    /// Each dispatch of the one-position program of the key/value cache, timed alone (the program
    /// runs at whatever position it last ran; empty when the cache is not built or not possible).
    pub fn profile_decode(&mut self) -> Result<Vec<(&'static str, f64)>> {
        // It reruns the program at the position last written, which may overwrite a row the cache
        // holds: the cache is forgotten.
        self.forget_cache();
        match self.decoder()? {
            Some(d) => {
                let plan = d.plan;
                self.backend.profile(plan)
            }
            None => Ok(Vec::new()),
        }
    }

    /// Turns the key/value cache of [`Model::next_logits`] on (the default) or off.
    pub fn set_kv_cache(&mut self, on: bool) {
        self.kv_cache = on;
        self.forget_cache();
    }

    /// What the sampling frame holds no longer follows from the context: the parameters changed, or
    /// (when the training frame is also the sampling frame) another program overwrote it.
    fn forget_cache(&mut self) {
        if let Some(Some(d)) = &mut self.decoder {
            d.cached.clear();
        }
    }

    /// The frame [`Model::next_logits`] runs on.
    fn sampling_frame(&self) -> Result<&Frame> {
        match &self.sampler {
            Some(frame) => Ok(frame),
            None if self.shape.b == 1 => Ok(&self.main),
            None => Err(Error::Invalid("sampling is not enabled on this model".into())),
        }
    }

    /// Builds the one-position program on first use.
    fn decoder(&mut self) -> Result<Option<&mut Decoder>> {
        // The one-position program is rewritten from f32 ops: the training frame of a mixed-precision
        // model (when it is also the sampling frame) samples with full passes.
        if self.mixed.is_some() && self.sampler.is_none() {
            return Ok(None);
        }
        if self.decoder.is_none() {
            let frame = self.sampling_frame()?;
            let weights = self.weights(self.params);
            let mut forward = Vec::new();
            self.net.forward(frame.net, &frame.io(weights, 0, false), &mut forward);
            let views = FrameViews {
                t: frame.shape.t,
                tokens: frame.tokens[0],
                positions: frame.positions,
                params: self.params,
                hidden: self.net.hidden(frame.net),
                head: weights.at(self.net.head()),
                c: self.config.n_embd,
                v: self.config.vocab_size,
            };
            self.decoder = Some(decode::one_position(self.backend.as_mut(), &forward, &views)?);
        }
        Ok(self.decoder.as_mut().and_then(Option::as_mut))
    }

    /// The logits that follow `context` (at most T tokens): (V). With the key/value cache (the
    /// default), a context that extends the last one by k tokens costs k one-position passes; any
    /// other context costs one full pass, which refills the cache.
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
        if self.kv_cache {
            if let Some(d) = self.decoder()? {
                let (plan, token, pos, logits) = (d.plan, d.token, d.pos, d.logits);
                let from = d.cached.len();
                if from > 0 && context.len() > from && context.starts_with(&d.cached) {
                    d.cached = context.to_vec();
                    for (i, &id) in context.iter().enumerate().skip(from) {
                        self.backend.write_u32(token, &[id])?;
                        self.backend.write_u32(pos, &[i as u32])?;
                        self.backend.run(plan)?;
                    }
                    return self.backend.read_f32(logits);
                }
            }
        }
        let logits = self.full_next_logits(context)?;
        if let Some(Some(d)) = &mut self.decoder {
            d.cached = if self.kv_cache { context.to_vec() } else { Vec::new() };
        }
        Ok(logits)
    }

    /// [`Model::next_logits`] by one pass over the whole (padded) context.
    fn full_next_logits(&mut self, context: &[u32]) -> Result<Vec<f32>> {
        let (t, v) = (self.shape.t, self.config.vocab_size);
        // Causal attention: the positions after the context do not change its logits.
        let mut padded = context.to_vec();
        padded.resize(t, 0);
        let frame = self.sampling_frame()?;
        // Only the chunk that holds the last position's row goes through the head.
        let row = context.len() - 1;
        let k = frame.chunks.iter().position(|&(at, rows)| row < at + rows).expect("the chunks cover T rows");
        let (tokens, order, logits) = (frame.tokens[0], frame.orders[0], frame.logits);
        let (net_plan, head_plan, at) = (frame.net_plan, frame.head_plans[k], frame.chunks[k].0);
        self.backend.write_u32(tokens, &padded)?;
        self.backend.write_u32(order, &encoder_order(&padded))?;
        self.backend.run(net_plan)?;
        self.backend.run(head_plan)?;
        self.read(logits.slice((row - at) * v, v))
    }
}
