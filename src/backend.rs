//! The op set both backends implement: every kernel of a GPT-2 or Llama training step, as data.
//!
//! A model schedule is a `Vec<Op>` built once (see `model::gpt2`). The CPU backend interprets it with
//! the plain-Rust twins in `cpu::`; the GPU backend compiles it once into pipelines, bind groups and a
//! uniform block, then replays it into one command encoder per step. Because both consume the same ops,
//! the CPU path proves the GPU path.
//!
//! Conventions every op follows:
//! - Views are flat element ranges of a backend buffer; shapes are the op's integer fields, row-major.
//! - Forward ops overwrite their outputs. Backward ops ACCUMULATE (`+=`) into every gradient output,
//!   activation gradients included, exactly like llm.c's CPU reference: the schedule zeroes gradients
//!   first, and fan-out (the residual stream, the tied embedding) needs no special case.
//! - Token ids, targets and orderings live in `DType::U32` buffers; everything else is f32.

use crate::Result;

/// Element type of a backend buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    F32,
    U32,
    /// 16-bit floats ([`HalfFormat`]) packed two per u32 word, the even element in the low half:
    /// `alloc(DType::Half, len)` holds `len` elements in `len.div_ceil(2)` words. Only
    /// [`Op::Round`] and [`Op::Widen`] touch such a buffer, through word views (see
    /// `model::mixed`, which moves a schedule's activations into them).
    Half,
}

/// A 16-bit float format of mixed-precision training (`precision = "bf16" | "f16"`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HalfFormat {
    /// bfloat16: the top half of an f32 (8 exponent bits, 7 mantissa bits); f32's range.
    Bf16,
    /// IEEE binary16 (5 exponent bits, 10 mantissa bits): largest finite 65,504.
    F16,
}

impl HalfFormat {
    pub fn name(&self) -> &'static str {
        match self {
            HalfFormat::Bf16 => "bf16",
            HalfFormat::F16 => "f16",
        }
    }

    /// The format's number in a kernel's params (0 bf16, 1 f16).
    pub fn code(&self) -> u32 {
        match self {
            HalfFormat::Bf16 => 0,
            HalfFormat::F16 => 1,
        }
    }
}

/// A buffer allocated by a backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BufId(pub usize);

/// A contiguous element range `[offset, offset + len)` of a buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct View {
    pub buf: BufId,
    pub offset: usize,
    pub len: usize,
}

impl View {
    pub fn new(buf: BufId, offset: usize, len: usize) -> Self {
        View { buf, offset, len }
    }

    /// A sub-range of this view; `offset` is relative to this view's start.
    pub fn slice(&self, offset: usize, len: usize) -> View {
        assert!(offset + len <= self.len, "slice {offset}+{len} outside a view of {} elements", self.len);
        View { buf: self.buf, offset: self.offset + offset, len }
    }

    pub fn end(&self) -> usize {
        self.offset + self.len
    }

    /// True when the two views share at least one element.
    pub fn overlaps(&self, other: &View) -> bool {
        self.buf == other.buf && self.offset < other.end() && other.offset < self.end()
    }
}

/// How a weight matrix of a `y = x·W` product is stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WeightLayout {
    /// `[in, out]` (K×N): Hugging Face GPT-2 Conv1D weights.
    InOut,
    /// `[out, in]` (N×K): `nn.Linear`, and the output head tied to `wte [vocab, n_embd]`.
    OutIn,
}

/// Dropout applied to the attention probabilities: `probs` holds the dropped probabilities (B,NH,T,T)
/// that weight the values; the mask comes from `seed` (1 u32) and `stream` (see `DropoutForward`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AttnDropout {
    pub probs: View,
    pub seed: View,
    pub p: f32,
    pub stream: u32,
}

/// One kernel invocation. Shapes in the doc comment of each variant; `n` = rows = B·T unless said.
#[derive(Clone, Debug, PartialEq)]
pub enum Op {
    /// `out[i] = 0`.
    Zero { out: View },
    /// Rounds f32 to a 16-bit format, to nearest with ties to even (overflow to ±inf, NaN stays
    /// NaN): elements `first..first + n` of the packed words `out` (see [`DType::Half`]) become
    /// `round(inp[0..n])`; the other half of a word that is shared with an element outside the range
    /// is left as it was. `out` holds `(first + n).div_ceil(2)` words.
    Round { out: View, inp: View, first: usize, n: usize, format: HalfFormat },
    /// `out[i] = inp element first + i` of the packed words `inp`, widened to f32 (exact).
    Widen { out: View, inp: View, first: usize, n: usize, format: HalfFormat },
    /// `out[i] = widen(round(inp[i]))`: f32 values rounded to the format and kept in f32 (a matmul
    /// operand that lives in an f32 buffer, such as an accumulated activation gradient). `out` may be
    /// `inp` itself (rounded in place).
    Quantize { out: View, inp: View, n: usize, format: HalfFormat },
    /// `out (B,T,C) = wte[tokens[b,t]] + wpe[t]`; tokens (B,T) u32, wte (V,C), wpe (>=T,C). Without
    /// `wpe` (models whose positions come from RoPE), `out = wte[tokens[b,t]]`.
    EncoderForward { out: View, tokens: View, wte: View, wpe: Option<View>, b: usize, t: usize, c: usize },
    /// `dwte[tokens[b,t]] += dout[b,t]`, `dwpe[t] += Σ_b dout[b,t]` (when there is a `dwpe`). `order` (B·T) u32 is
    /// `encoder_order(tokens)`: positions sorted by token, which lets the GPU sum each token's rows in a
    /// fixed order without float atomics.
    EncoderBackward {
        dwte: View,
        dwpe: Option<View>,
        dout: View,
        tokens: View,
        order: View,
        b: usize,
        t: usize,
        c: usize,
    },
    /// `out (N,C) = (inp - mean) * rstd * weight + bias`, eps 1e-5; saves mean (N) and rstd (N).
    LayernormForward {
        out: View,
        mean: View,
        rstd: View,
        inp: View,
        weight: View,
        bias: View,
        n: usize,
        c: usize,
    },
    /// Accumulates dinp (N,C), dweight (C), dbias (C) from dout (N,C) and the saved mean and rstd.
    LayernormBackward {
        dinp: View,
        dweight: View,
        dbias: View,
        dout: View,
        inp: View,
        weight: View,
        mean: View,
        rstd: View,
        n: usize,
        c: usize,
    },
    /// `out (N,C) = inp · rstd · weight` with `rstd = 1 / sqrt(mean(inp²) + eps)` per row; saves rstd (N).
    RmsnormForward { out: View, rstd: View, inp: View, weight: View, n: usize, c: usize, eps: f32 },
    /// Accumulates dinp (N,C) and dweight (C) from dout (N,C) and the saved rstd (N).
    RmsnormBackward {
        dinp: View,
        dweight: View,
        dout: View,
        inp: View,
        weight: View,
        rstd: View,
        n: usize,
        c: usize,
    },
    /// Rotary position embedding, Hugging Face's "rotate half" convention, on rows of `width` elements:
    /// the first `heads` chunks of `hd` elements of each row are rotated, the rest of the row is copied.
    /// In chunk j of row r, with p = positions[r] and i < hd/2:
    /// `out[i] = x[i]·cos - x[i+hd/2]·sin`, `out[i+hd/2] = x[i+hd/2]·cos + x[i]·sin`, where
    /// `cos = table[p·hd + i]` and `sin = table[p·hd + hd/2 + i]` (see [`rope_table`]).
    /// inp, out (N,width); positions (N) u32, each below table.len / hd; hd even.
    RopeForward {
        out: View,
        inp: View,
        positions: View,
        table: View,
        n: usize,
        width: usize,
        heads: usize,
        hd: usize,
    },
    /// `dinp += Rᵀ·dout` on the rotated chunks (the rotation by -angle), `dinp += dout` elsewhere.
    RopeBackward {
        dinp: View,
        dout: View,
        positions: View,
        table: View,
        n: usize,
        width: usize,
        heads: usize,
        hd: usize,
    },
    /// SwiGLU: `out (N,I) = silu(inp[:, :I]) · inp[:, I:]` with `silu(g) = g / (1 + exp(-g))`;
    /// inp (N,2I) holds the gate and the up projection side by side.
    SwigluForward { out: View, inp: View, n: usize, i: usize },
    /// Accumulates dinp (N,2I) from dout (N,I).
    SwigluBackward { dinp: View, inp: View, dout: View, n: usize, i: usize },
    /// General matrix product `out (M,N) (+)= op(a)·op(b)`: a is (M,K), or (K,M) when `trans_a`;
    /// b is (K,N), or (N,K) when `trans_b`. Overwrites unless `accumulate`. The building block of the
    /// matmul forward and backward ops, and the kernel that has variants. With `half`, a and b are
    /// stored as f16 (two per u32 word, the even element in the low half) and products and sums stay
    /// f32: the storage half of mixed precision ("matmul_f16"; needs shader-f16 on the GPU).
    Matmul {
        out: View,
        a: View,
        b: View,
        m: usize,
        k: usize,
        n: usize,
        trans_a: bool,
        trans_b: bool,
        accumulate: bool,
        half: bool,
    },
    /// `out (M,N) = inp (M,K) · W + bias (N)`, W stored as `layout` says.
    MatmulForward {
        out: View,
        inp: View,
        weight: View,
        bias: Option<View>,
        m: usize,
        k: usize,
        n: usize,
        layout: WeightLayout,
    },
    /// Accumulates dinp (M,K), dweight (same layout as weight) and dbias (N) from dout (M,N).
    MatmulBackward {
        dinp: View,
        dweight: View,
        dbias: Option<View>,
        dout: View,
        inp: View,
        weight: View,
        m: usize,
        k: usize,
        n: usize,
        layout: WeightLayout,
    },
    /// Causal self-attention with `nh` query heads sharing `nkv` key/value heads (`nkv` divides `nh`;
    /// `nkv == nh` is multi-head attention, `nkv == 1` multi-query). hd = C/NH. qkv (B,T,W) with
    /// W = (NH + 2·NKV)·hd holds q (NH·hd = C columns), then k and v (NKV·hd each); query head h reads
    /// kv head h / (NH/NKV). out (B,T,C); att (B,NH,T,T) saves the softmax probabilities (row t valid
    /// for t2 <= t). Scores are scaled by 1/sqrt(hd). With `dropout`, the values are weighted by the
    /// dropped probabilities, which it saves too.
    AttentionForward {
        out: View,
        att: View,
        qkv: View,
        b: usize,
        t: usize,
        c: usize,
        nh: usize,
        nkv: usize,
        dropout: Option<AttnDropout>,
    },
    /// Accumulates dqkv (B,T,W) from dout (B,T,C); `datt` (B,NH,T,T) is scratch. A kv head's gradient
    /// sums over its query heads in increasing order. `dropout` must be what the forward pass used.
    AttentionBackward {
        dqkv: View,
        datt: View,
        dout: View,
        qkv: View,
        att: View,
        b: usize,
        t: usize,
        c: usize,
        nh: usize,
        nkv: usize,
        dropout: Option<AttnDropout>,
    },
    /// Fused ("flash") causal attention: the same function as [`Op::AttentionForward`] (same qkv
    /// layout, heads, kv heads, scale and dropout masks), computed tile by tile with an online softmax
    /// so that nothing of size T² is stored. Saves `lse` (B,NH,T): the log-sum-exp of each row of
    /// scaled scores, which the backward pass recomputes the probabilities from. With `dropout`, the
    /// mask of probability (b, h, t1, t2) is that of element `((b·NH + h)·T + t1)·T + t2` of the
    /// stream (as `AttentionForward` applies it to its (B,NH,T,T) tensor); `dropout.probs` is unused.
    FlashAttentionForward {
        out: View,
        lse: View,
        qkv: View,
        b: usize,
        t: usize,
        c: usize,
        nh: usize,
        nkv: usize,
        dropout: Option<AttnDropout>,
    },
    /// Accumulates dqkv (B,T,W) from dout (B,T,C), recomputing the probabilities from qkv and `lse`;
    /// `out` is the forward output and `dsum` (B,NH,T) scratch for `D = rowsum(dout ∘ out)`. Sums in a
    /// fixed order (no atomics); a kv head's gradient sums over its query heads in increasing order.
    FlashAttentionBackward {
        dqkv: View,
        dsum: View,
        dout: View,
        qkv: View,
        out: View,
        lse: View,
        b: usize,
        t: usize,
        c: usize,
        nh: usize,
        nkv: usize,
        dropout: Option<AttnDropout>,
    },
    /// `out (W) = inp[row[0]]` of inp (rows, W); `row` is 1 u32. With [`Op::ScatterRow`] and
    /// [`Op::AttentionDecode`], what lets one prepared program decode at any position: the host writes
    /// the position into `row`.
    GatherRow { out: View, inp: View, row: View, w: usize },
    /// `out[row[0]] = inp (W)` in out (rows, W).
    ScatterRow { out: View, inp: View, row: View, w: usize },
    /// Causal attention of one query, the one at row `pos = row[0]` of qkv (T, W) (layout, heads,
    /// kv heads and scale as [`Op::AttentionForward`]), over the keys and values of rows `0..=pos`:
    /// sampling with a key/value cache, where qkv's rows are the cache. out (C).
    AttentionDecode { out: View, qkv: View, row: View, t: usize, c: usize, nh: usize, nkv: usize },
    /// `out = inp · mask / (1 - p)`, n elements; element i is kept when
    /// `hash(i + hash(seed ^ hash(stream))) >= p·2³²` (see shaders/dropout.wgsl). `seed` is 1 u32.
    DropoutForward { out: View, inp: View, seed: View, n: usize, p: f32, stream: u32 },
    /// `dinp += dout · mask / (1 - p)`, with the mask of the same seed and stream.
    DropoutBackward { dinp: View, dout: View, seed: View, n: usize, p: f32, stream: u32 },
    /// `out = gelu_tanh(inp)`, n elements ("gelu_new").
    GeluForward { out: View, inp: View, n: usize },
    /// `dinp += gelu_tanh'(inp) * dout`.
    GeluBackward { dinp: View, inp: View, dout: View, n: usize },
    /// `out = inp1 + inp2`, n elements.
    ResidualForward { out: View, inp1: View, inp2: View, n: usize },
    /// `dinp1 += dout; dinp2 += dout`.
    ResidualBackward { dinp1: View, dinp2: View, dout: View, n: usize },
    /// Fused softmax + cross-entropy per row: `losses[i] = lse_i - logits[i, targets[i]]` with
    /// `lse_i = log Σ_v exp(logits[i,v])`, saved in lse (N). logits (N,V), targets (N) u32.
    CrossentropyForward { losses: View, lse: View, logits: View, targets: View, n: usize, v: usize },
    /// `dlogits[i,v] += scale · grad_scale[0] · (softmax(logits[i])[v] - [v == targets[i]])`; scale is
    /// dL/dlosses[i] (1/(B·T) for a mean); grad_scale (1 f32) is a multiplier the host sets per step
    /// (1 normally: the hook for loss scaling, and for injecting faults in tests). With `dlogits` the
    /// same view as `logits`, the gradient overwrites the logits instead (`=` rather than `+=`).
    CrossentropyBackward {
        dlogits: View,
        logits: View,
        lse: View,
        targets: View,
        grad_scale: View,
        n: usize,
        v: usize,
        scale: f32,
    },
    /// `out[0] += scale * Σ inp[i]`, summed in a fixed order.
    ReduceSum { out: View, inp: View, n: usize, scale: f32 },
    /// `out[0] = sqrt(Σ inp[i]²)`, in a fixed order.
    GlobalNorm { out: View, inp: View, n: usize },
    /// AdamW on n elements. `hyper` is the step's [`AdamwHyper`] (written by the host before each
    /// step); `norm` (1) is the gradient's global norm, used for clipping. When the norm is not finite
    /// the update is skipped entirely. `weight_decay` is decoupled and chosen per parameter group.
    AdamwUpdate {
        params: View,
        grads: View,
        m: View,
        v: View,
        hyper: View,
        norm: View,
        n: usize,
        weight_decay: f32,
    },
}

/// The per-step AdamW values the host writes into the `hyper` view (8 f32 words).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamwHyper {
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    /// 1 - beta1^t, with t the 1-based step.
    pub bias_correction1: f32,
    /// 1 - beta2^t.
    pub bias_correction2: f32,
    /// Clip the global gradient norm to this; 0 disables clipping.
    pub grad_clip: f32,
    /// What the gradients are multiplied by before anything else: 1 / the loss scale of f16
    /// training (a power of two, so exact), 1 otherwise. The clip compares the unscaled norm.
    pub grad_unscale: f32,
}

impl AdamwHyper {
    pub const WORDS: usize = 8;

    /// The hyperparameters of step `t` (1-based), bias corrections computed in f64.
    pub fn at_step(lr: f32, beta1: f32, beta2: f32, eps: f32, grad_clip: f32, t: u64) -> Self {
        let t = t.max(1) as i32;
        AdamwHyper {
            lr,
            beta1,
            beta2,
            eps,
            bias_correction1: (1.0 - (beta1 as f64).powi(t)) as f32,
            bias_correction2: (1.0 - (beta2 as f64).powi(t)) as f32,
            grad_clip,
            grad_unscale: 1.0,
        }
    }

    pub fn to_words(&self) -> [f32; Self::WORDS] {
        [
            self.lr,
            self.beta1,
            self.beta2,
            self.eps,
            self.bias_correction1,
            self.bias_correction2,
            self.grad_clip,
            self.grad_unscale,
        ]
    }

    pub fn from_words(w: &[f32]) -> Self {
        AdamwHyper {
            lr: w[0],
            beta1: w[1],
            beta2: w[2],
            eps: w[3],
            bias_correction1: w[4],
            bias_correction2: w[5],
            grad_clip: w[6],
            grad_unscale: w[7],
        }
    }
}

/// Dropout keeps element i when its hash is at least this: p·2³², saturated.
pub fn dropout_threshold(p: f32) -> u32 {
    (p as f64 * 4_294_967_296.0).round().min(u32::MAX as f64) as u32
}

/// The factor kept elements are scaled by, 1 / (1 - p).
pub fn dropout_scale(p: f32) -> f32 {
    (1.0 / (1.0 - p as f64)) as f32
}

/// The clip factor PyTorch's `clip_grad_norm_` applies: `min(1, clip / (norm + 1e-6))`.
pub fn clip_scale(norm: f32, grad_clip: f32) -> f32 {
    if grad_clip > 0.0 {
        (grad_clip / (norm + 1e-6)).min(1.0)
    } else {
        1.0
    }
}

/// The cos/sin table of [`Op::RopeForward`] for positions `0..positions`: row p holds
/// `cos(p·f_i)` for i < hd/2, then `sin(p·f_i)`, with `f_i = theta^(-2i/hd)`, computed in f64 (as
/// Hugging Face's reference does in float64) and rounded once.
pub fn rope_table(theta: f64, hd: usize, positions: usize) -> Vec<f32> {
    let half = hd / 2;
    let mut table = Vec::with_capacity(positions * hd);
    for p in 0..positions {
        let angle = |i: usize| p as f64 * theta.powf(-((2 * i) as f64) / hd as f64);
        table.extend((0..half).map(|i| angle(i).cos() as f32));
        table.extend((0..half).map(|i| angle(i).sin() as f32));
    }
    table
}

/// Elements per row of the packed qkv tensor of [`Op::AttentionForward`].
pub fn qkv_width(c: usize, nh: usize, nkv: usize) -> usize {
    (nh + 2 * nkv) * (c / nh.max(1))
}

/// Positions `0..tokens.len()` stably sorted by token id: the `order` input of `EncoderBackward`.
pub fn encoder_order(tokens: &[u32]) -> Vec<u32> {
    let mut order: Vec<u32> = (0..tokens.len() as u32).collect();
    order.sort_by_key(|&i| tokens[i as usize]);
    order
}

impl Op {
    /// The kernel name: the WGSL entry family, the CPU twin and the test all carry it.
    pub fn name(&self) -> &'static str {
        match self {
            Op::Zero { .. } => "zero",
            Op::Round { .. } => "round_half",
            Op::Widen { .. } => "widen_half",
            Op::Quantize { .. } => "quantize_half",
            Op::EncoderForward { .. } => "encoder_forward",
            Op::EncoderBackward { .. } => "encoder_backward",
            Op::LayernormForward { .. } => "layernorm_forward",
            Op::LayernormBackward { .. } => "layernorm_backward",
            Op::RmsnormForward { .. } => "rmsnorm_forward",
            Op::RmsnormBackward { .. } => "rmsnorm_backward",
            Op::RopeForward { .. } => "rope_forward",
            Op::RopeBackward { .. } => "rope_backward",
            Op::SwigluForward { .. } => "swiglu_forward",
            Op::SwigluBackward { .. } => "swiglu_backward",
            Op::Matmul { half: false, .. } => "matmul",
            Op::Matmul { half: true, .. } => "matmul_f16",
            Op::MatmulForward { .. } => "matmul_forward",
            Op::MatmulBackward { .. } => "matmul_backward",
            Op::FlashAttentionForward { .. } => "flash_attention_forward",
            Op::FlashAttentionBackward { .. } => "flash_attention_backward",
            Op::AttentionForward { .. } => "attention_forward",
            Op::AttentionBackward { .. } => "attention_backward",
            Op::GatherRow { .. } => "gather_row",
            Op::ScatterRow { .. } => "scatter_row",
            Op::AttentionDecode { .. } => "attention_decode",
            Op::DropoutForward { .. } => "dropout_forward",
            Op::DropoutBackward { .. } => "dropout_backward",
            Op::GeluForward { .. } => "gelu_forward",
            Op::GeluBackward { .. } => "gelu_backward",
            Op::ResidualForward { .. } => "residual_forward",
            Op::ResidualBackward { .. } => "residual_backward",
            Op::CrossentropyForward { .. } => "crossentropy_forward",
            Op::CrossentropyBackward { .. } => "crossentropy_backward",
            Op::ReduceSum { .. } => "reduce_sum",
            Op::GlobalNorm { .. } => "global_norm",
            Op::AdamwUpdate { .. } => "adamw_update",
        }
    }

    /// The same op with every view `v` replaced by `f(v)` (shapes and flags unchanged).
    pub fn map_views(&self, f: &mut dyn FnMut(View) -> View) -> Op {
        match *self {
            Op::Zero { out } => Op::Zero { out: f(out) },
            Op::Round { out, inp, first, n, format } => {
                Op::Round { out: f(out), inp: f(inp), first, n, format }
            }
            Op::Widen { out, inp, first, n, format } => {
                Op::Widen { out: f(out), inp: f(inp), first, n, format }
            }
            Op::Quantize { out, inp, n, format } => Op::Quantize { out: f(out), inp: f(inp), n, format },
            Op::EncoderForward { out, tokens, wte, wpe, b, t, c } => Op::EncoderForward {
                out: f(out),
                tokens: f(tokens),
                wte: f(wte),
                wpe: wpe.map(&mut *f),
                b,
                t,
                c,
            },
            Op::EncoderBackward { dwte, dwpe, dout, tokens, order, b, t, c } => Op::EncoderBackward {
                dwte: f(dwte),
                dwpe: dwpe.map(&mut *f),
                dout: f(dout),
                tokens: f(tokens),
                order: f(order),
                b,
                t,
                c,
            },
            Op::LayernormForward { out, mean, rstd, inp, weight, bias, n, c } => Op::LayernormForward {
                out: f(out),
                mean: f(mean),
                rstd: f(rstd),
                inp: f(inp),
                weight: f(weight),
                bias: f(bias),
                n,
                c,
            },
            Op::LayernormBackward { dinp, dweight, dbias, dout, inp, weight, mean, rstd, n, c } => {
                Op::LayernormBackward {
                    dinp: f(dinp),
                    dweight: f(dweight),
                    dbias: f(dbias),
                    dout: f(dout),
                    inp: f(inp),
                    weight: f(weight),
                    mean: f(mean),
                    rstd: f(rstd),
                    n,
                    c,
                }
            }
            Op::RmsnormForward { out, rstd, inp, weight, n, c, eps } => {
                Op::RmsnormForward { out: f(out), rstd: f(rstd), inp: f(inp), weight: f(weight), n, c, eps }
            }
            Op::RmsnormBackward { dinp, dweight, dout, inp, weight, rstd, n, c } => Op::RmsnormBackward {
                dinp: f(dinp),
                dweight: f(dweight),
                dout: f(dout),
                inp: f(inp),
                weight: f(weight),
                rstd: f(rstd),
                n,
                c,
            },
            Op::RopeForward { out, inp, positions, table, n, width, heads, hd } => Op::RopeForward {
                out: f(out),
                inp: f(inp),
                positions: f(positions),
                table: f(table),
                n,
                width,
                heads,
                hd,
            },
            Op::RopeBackward { dinp, dout, positions, table, n, width, heads, hd } => Op::RopeBackward {
                dinp: f(dinp),
                dout: f(dout),
                positions: f(positions),
                table: f(table),
                n,
                width,
                heads,
                hd,
            },
            Op::SwigluForward { out, inp, n, i } => Op::SwigluForward { out: f(out), inp: f(inp), n, i },
            Op::SwigluBackward { dinp, inp, dout, n, i } => {
                Op::SwigluBackward { dinp: f(dinp), inp: f(inp), dout: f(dout), n, i }
            }
            Op::Matmul { out, a, b, m, k, n, trans_a, trans_b, accumulate, half } => {
                Op::Matmul { out: f(out), a: f(a), b: f(b), m, k, n, trans_a, trans_b, accumulate, half }
            }
            Op::MatmulForward { out, inp, weight, bias, m, k, n, layout } => Op::MatmulForward {
                out: f(out),
                inp: f(inp),
                weight: f(weight),
                bias: bias.map(&mut *f),
                m,
                k,
                n,
                layout,
            },
            Op::MatmulBackward { dinp, dweight, dbias, dout, inp, weight, m, k, n, layout } => {
                Op::MatmulBackward {
                    dinp: f(dinp),
                    dweight: f(dweight),
                    dbias: dbias.map(&mut *f),
                    dout: f(dout),
                    inp: f(inp),
                    weight: f(weight),
                    m,
                    k,
                    n,
                    layout,
                }
            }
            Op::AttentionForward { out, att, qkv, b, t, c, nh, nkv, dropout } => Op::AttentionForward {
                out: f(out),
                att: f(att),
                qkv: f(qkv),
                b,
                t,
                c,
                nh,
                nkv,
                dropout: dropout.map(|d| AttnDropout { probs: f(d.probs), seed: f(d.seed), ..d }),
            },
            Op::AttentionBackward { dqkv, datt, dout, qkv, att, b, t, c, nh, nkv, dropout } => {
                Op::AttentionBackward {
                    dqkv: f(dqkv),
                    datt: f(datt),
                    dout: f(dout),
                    qkv: f(qkv),
                    att: f(att),
                    b,
                    t,
                    c,
                    nh,
                    nkv,
                    dropout: dropout.map(|d| AttnDropout { probs: f(d.probs), seed: f(d.seed), ..d }),
                }
            }
            Op::FlashAttentionForward { out, lse, qkv, b, t, c, nh, nkv, dropout } => {
                Op::FlashAttentionForward {
                    out: f(out),
                    lse: f(lse),
                    qkv: f(qkv),
                    b,
                    t,
                    c,
                    nh,
                    nkv,
                    dropout: dropout.map(|d| AttnDropout { probs: f(d.probs), seed: f(d.seed), ..d }),
                }
            }
            Op::FlashAttentionBackward { dqkv, dsum, dout, qkv, out, lse, b, t, c, nh, nkv, dropout } => {
                Op::FlashAttentionBackward {
                    dqkv: f(dqkv),
                    dsum: f(dsum),
                    dout: f(dout),
                    qkv: f(qkv),
                    out: f(out),
                    lse: f(lse),
                    b,
                    t,
                    c,
                    nh,
                    nkv,
                    dropout: dropout.map(|d| AttnDropout { probs: f(d.probs), seed: f(d.seed), ..d }),
                }
            }
            Op::GatherRow { out, inp, row, w } => Op::GatherRow { out: f(out), inp: f(inp), row: f(row), w },
            Op::ScatterRow { out, inp, row, w } => {
                Op::ScatterRow { out: f(out), inp: f(inp), row: f(row), w }
            }
            Op::AttentionDecode { out, qkv, row, t, c, nh, nkv } => {
                Op::AttentionDecode { out: f(out), qkv: f(qkv), row: f(row), t, c, nh, nkv }
            }
            Op::DropoutForward { out, inp, seed, n, p, stream } => {
                Op::DropoutForward { out: f(out), inp: f(inp), seed: f(seed), n, p, stream }
            }
            Op::DropoutBackward { dinp, dout, seed, n, p, stream } => {
                Op::DropoutBackward { dinp: f(dinp), dout: f(dout), seed: f(seed), n, p, stream }
            }
            Op::GeluForward { out, inp, n } => Op::GeluForward { out: f(out), inp: f(inp), n },
            Op::GeluBackward { dinp, inp, dout, n } => {
                Op::GeluBackward { dinp: f(dinp), inp: f(inp), dout: f(dout), n }
            }
            Op::ResidualForward { out, inp1, inp2, n } => {
                Op::ResidualForward { out: f(out), inp1: f(inp1), inp2: f(inp2), n }
            }
            Op::ResidualBackward { dinp1, dinp2, dout, n } => {
                Op::ResidualBackward { dinp1: f(dinp1), dinp2: f(dinp2), dout: f(dout), n }
            }
            Op::CrossentropyForward { losses, lse, logits, targets, n, v } => Op::CrossentropyForward {
                losses: f(losses),
                lse: f(lse),
                logits: f(logits),
                targets: f(targets),
                n,
                v,
            },
            Op::CrossentropyBackward { dlogits, logits, lse, targets, grad_scale, n, v, scale } => {
                Op::CrossentropyBackward {
                    dlogits: f(dlogits),
                    logits: f(logits),
                    lse: f(lse),
                    targets: f(targets),
                    grad_scale: f(grad_scale),
                    n,
                    v,
                    scale,
                }
            }
            Op::ReduceSum { out, inp, n, scale } => Op::ReduceSum { out: f(out), inp: f(inp), n, scale },
            Op::GlobalNorm { out, inp, n } => Op::GlobalNorm { out: f(out), inp: f(inp), n },
            Op::AdamwUpdate { params, grads, m, v, hyper, norm, n, weight_decay } => Op::AdamwUpdate {
                params: f(params),
                grads: f(grads),
                m: f(m),
                v: f(v),
                hyper: f(hyper),
                norm: f(norm),
                n,
                weight_decay,
            },
        }
    }

    /// Every view the op reads, with the element count its shape requires.
    pub fn inputs(&self) -> Vec<(View, usize)> {
        match *self {
            Op::Zero { .. } => vec![],
            Op::Round { inp, n, .. } | Op::Quantize { inp, n, .. } => vec![(inp, n)],
            Op::Widen { inp, first, n, .. } => vec![(inp, (first + n).div_ceil(2))],
            Op::EncoderForward { tokens, wte, wpe, b, t, c, .. } => {
                let mut v = vec![(tokens, b * t), (wte, wte.len / c.max(1) * c)];
                v.extend(wpe.map(|wpe| (wpe, wpe.len.max(t * c))));
                v
            }
            Op::EncoderBackward { dout, tokens, order, b, t, c, .. } => {
                vec![(dout, b * t * c), (tokens, b * t), (order, b * t)]
            }
            Op::LayernormForward { inp, weight, bias, n, c, .. } => {
                vec![(inp, n * c), (weight, c), (bias, c)]
            }
            Op::LayernormBackward { dout, inp, weight, mean, rstd, n, c, .. } => {
                vec![(dout, n * c), (inp, n * c), (weight, c), (mean, n), (rstd, n)]
            }
            Op::RmsnormForward { inp, weight, n, c, .. } => vec![(inp, n * c), (weight, c)],
            Op::RmsnormBackward { dout, inp, weight, rstd, n, c, .. } => {
                vec![(dout, n * c), (inp, n * c), (weight, c), (rstd, n)]
            }
            Op::RopeForward { inp: x, positions, table, n, width, hd, .. }
            | Op::RopeBackward { dout: x, positions, table, n, width, hd, .. } => {
                vec![(x, n * width), (positions, n), (table, table.len / hd.max(1) * hd)]
            }
            Op::SwigluForward { inp, n, i, .. } => vec![(inp, n * 2 * i)],
            Op::SwigluBackward { inp, dout, n, i, .. } => vec![(inp, n * 2 * i), (dout, n * i)],
            Op::Matmul { a, b, m, k, n, half, .. } => {
                let words = |len: usize| if half { len.div_ceil(2) } else { len };
                vec![(a, words(m * k)), (b, words(k * n))]
            }
            Op::MatmulForward { inp, weight, bias, m, k, n, .. } => {
                let mut v = vec![(inp, m * k), (weight, k * n)];
                v.extend(bias.map(|b| (b, n)));
                v
            }
            Op::MatmulBackward { dout, inp, weight, m, k, n, .. } => {
                vec![(dout, m * n), (inp, m * k), (weight, k * n)]
            }
            Op::AttentionForward { qkv, b, t, c, nh, nkv, dropout, .. } => {
                let mut v = vec![(qkv, b * t * qkv_width(c, nh, nkv))];
                v.extend(dropout.map(|d| (d.seed, 1)));
                v
            }
            Op::AttentionBackward { dout, qkv, att, b, t, c, nh, nkv, dropout, .. } => {
                let w = qkv_width(c, nh, nkv);
                let mut v = vec![(dout, b * t * c), (qkv, b * t * w), (att, b * nh * t * t)];
                v.extend(dropout.iter().flat_map(|d| [(d.probs, b * nh * t * t), (d.seed, 1)]));
                v
            }
            Op::FlashAttentionForward { qkv, b, t, c, nh, nkv, dropout, .. } => {
                let mut v = vec![(qkv, b * t * qkv_width(c, nh, nkv))];
                v.extend(dropout.map(|d| (d.seed, 1)));
                v
            }
            Op::FlashAttentionBackward { dout, qkv, out, lse, b, t, c, nh, nkv, dropout, .. } => {
                let w = qkv_width(c, nh, nkv);
                let mut v = vec![(dout, b * t * c), (qkv, b * t * w), (out, b * t * c), (lse, b * nh * t)];
                v.extend(dropout.map(|d| (d.seed, 1)));
                v
            }
            Op::GatherRow { inp, row, w, .. } => vec![(inp, inp.len / w.max(1) * w), (row, 1)],
            Op::ScatterRow { inp, row, w, .. } => vec![(inp, w), (row, 1)],
            Op::AttentionDecode { qkv, row, t, c, nh, nkv, .. } => {
                vec![(qkv, t * qkv_width(c, nh, nkv)), (row, 1)]
            }
            Op::DropoutForward { inp, seed, n, .. } => vec![(inp, n), (seed, 1)],
            Op::DropoutBackward { dout, seed, n, .. } => vec![(dout, n), (seed, 1)],
            Op::GeluForward { inp, n, .. } => vec![(inp, n)],
            Op::GeluBackward { inp, dout, n, .. } => vec![(inp, n), (dout, n)],
            Op::ResidualForward { inp1, inp2, n, .. } => vec![(inp1, n), (inp2, n)],
            Op::ResidualBackward { dout, n, .. } => vec![(dout, n)],
            Op::CrossentropyForward { logits, targets, n, v, .. } => {
                vec![(logits, n * v), (targets, n)]
            }
            Op::CrossentropyBackward { logits, lse, targets, grad_scale, n, v, .. } => {
                vec![(logits, n * v), (lse, n), (targets, n), (grad_scale, 1)]
            }
            Op::ReduceSum { inp, n, .. } => vec![(inp, n)],
            Op::GlobalNorm { inp, n, .. } => vec![(inp, n)],
            Op::AdamwUpdate { grads, hyper, norm, n, .. } => {
                vec![(grads, n), (hyper, AdamwHyper::WORDS), (norm, 1)]
            }
        }
    }

    /// Every view the op writes, with the element count its shape requires.
    pub fn outputs(&self) -> Vec<(View, usize)> {
        match *self {
            Op::Zero { out } => vec![(out, out.len)],
            Op::Round { out, first, n, .. } => vec![(out, (first + n).div_ceil(2))],
            Op::Widen { out, n, .. } | Op::Quantize { out, n, .. } => vec![(out, n)],
            Op::EncoderForward { out, b, t, c, .. } => vec![(out, b * t * c)],
            Op::EncoderBackward { dwte, dwpe, t, c, .. } => {
                let mut v = vec![(dwte, dwte.len / c.max(1) * c)];
                v.extend(dwpe.map(|dwpe| (dwpe, dwpe.len.max(t * c))));
                v
            }
            Op::LayernormForward { out, mean, rstd, n, c, .. } => {
                vec![(out, n * c), (mean, n), (rstd, n)]
            }
            Op::LayernormBackward { dinp, dweight, dbias, n, c, .. } => {
                vec![(dinp, n * c), (dweight, c), (dbias, c)]
            }
            Op::RmsnormForward { out, rstd, n, c, .. } => vec![(out, n * c), (rstd, n)],
            Op::RmsnormBackward { dinp, dweight, n, c, .. } => vec![(dinp, n * c), (dweight, c)],
            Op::RopeForward { out: x, n, width, .. } | Op::RopeBackward { dinp: x, n, width, .. } => {
                vec![(x, n * width)]
            }
            Op::SwigluForward { out, n, i, .. } => vec![(out, n * i)],
            Op::SwigluBackward { dinp, n, i, .. } => vec![(dinp, n * 2 * i)],
            Op::Matmul { out, m, n, .. } => vec![(out, m * n)],
            Op::MatmulForward { out, m, n, .. } => vec![(out, m * n)],
            Op::MatmulBackward { dinp, dweight, dbias, m, k, n, .. } => {
                let mut v = vec![(dinp, m * k), (dweight, k * n)];
                v.extend(dbias.map(|b| (b, n)));
                v
            }
            Op::AttentionForward { out, att, b, t, c, nh, dropout, .. } => {
                let mut v = vec![(out, b * t * c), (att, b * nh * t * t)];
                v.extend(dropout.map(|d| (d.probs, b * nh * t * t)));
                v
            }
            Op::FlashAttentionForward { out, lse, b, t, c, nh, .. } => {
                vec![(out, b * t * c), (lse, b * nh * t)]
            }
            Op::FlashAttentionBackward { dqkv, dsum, b, t, c, nh, nkv, .. } => {
                vec![(dqkv, b * t * qkv_width(c, nh, nkv)), (dsum, b * nh * t)]
            }
            Op::GatherRow { out, w, .. } => vec![(out, w)],
            Op::ScatterRow { out, w, .. } => vec![(out, out.len / w.max(1) * w)],
            Op::AttentionDecode { out, c, .. } => vec![(out, c)],
            Op::DropoutForward { out, n, .. } => vec![(out, n)],
            Op::DropoutBackward { dinp, n, .. } => vec![(dinp, n)],
            Op::AttentionBackward { dqkv, datt, b, t, c, nh, nkv, .. } => {
                vec![(dqkv, b * t * qkv_width(c, nh, nkv)), (datt, b * nh * t * t)]
            }
            Op::GeluForward { out, n, .. } => vec![(out, n)],
            Op::GeluBackward { dinp, n, .. } => vec![(dinp, n)],
            Op::ResidualForward { out, n, .. } => vec![(out, n)],
            Op::ResidualBackward { dinp1, dinp2, n, .. } => vec![(dinp1, n), (dinp2, n)],
            Op::CrossentropyForward { losses, lse, n, .. } => vec![(losses, n), (lse, n)],
            Op::CrossentropyBackward { dlogits, n, v, .. } => vec![(dlogits, n * v)],
            Op::ReduceSum { out, .. } => vec![(out, 1)],
            Op::GlobalNorm { out, .. } => vec![(out, 1)],
            Op::AdamwUpdate { params, m, v, n, .. } => vec![(params, n), (m, n), (v, n)],
        }
    }

    /// Checks that every view has exactly the length the shape requires, that the shape is
    /// well-formed, and that no output overlaps another view. A failure is a bug in whoever built the
    /// op (the schedule or a test), so the message names the op and the view.
    pub fn check(&self) -> std::result::Result<(), String> {
        let name = self.name();
        let (ins, outs) = (self.inputs(), self.outputs());
        for (i, (view, want)) in ins.iter().chain(outs.iter()).enumerate() {
            if view.len != *want {
                return Err(format!("{name}: view #{i} has {} elements, the shape needs {want}", view.len));
            }
        }
        match *self {
            Op::EncoderForward { wte, wpe, t, c, .. }
            | Op::EncoderBackward { dwte: wte, dwpe: wpe, t, c, .. }
                if c == 0
                    || wte.len % c != 0
                    || wpe.is_some_and(|wpe| wpe.len % c != 0 || wpe.len / c < t) =>
            {
                return Err(format!("{name}: wte/wpe must be (V,{c}) and (>= {t},{c})"));
            }
            Op::GatherRow { inp: rows, w, .. } | Op::ScatterRow { out: rows, w, .. }
                if w == 0 || rows.len % w != 0 =>
            {
                return Err(format!("{name}: the rows must be a whole number of rows of {w}"));
            }
            Op::AttentionForward { c, nh, nkv, .. }
            | Op::AttentionDecode { c, nh, nkv, .. }
            | Op::AttentionBackward { c, nh, nkv, .. }
            | Op::FlashAttentionForward { c, nh, nkv, .. }
            | Op::FlashAttentionBackward { c, nh, nkv, .. }
                if nh == 0 || c % nh != 0 || nkv == 0 || nh % nkv != 0 =>
            {
                return Err(format!(
                    "{name}: {nh} heads must divide {c} channels and be a multiple of {nkv} kv heads"
                ));
            }
            Op::RopeForward { width, heads, hd, .. } | Op::RopeBackward { width, heads, hd, .. }
                if hd == 0 || hd % 2 != 0 || heads * hd > width =>
            {
                return Err(format!("{name}: {heads} heads of even size {hd} must fit rows of {width}"));
            }
            _ => {}
        }
        let in_place = matches!(*self, Op::CrossentropyBackward { dlogits, logits, .. } if dlogits == logits)
            || matches!(*self, Op::Quantize { out, inp, .. } if out == inp);
        for (i, (o, _)) in outs.iter().enumerate() {
            for (j, (other, _)) in ins.iter().chain(outs.iter()).enumerate() {
                if j != ins.len() + i && o.overlaps(other) && !(in_place && o == other) {
                    return Err(format!("{name}: output #{i} overlaps view #{j}"));
                }
            }
        }
        Ok(())
    }
}

/// A prepared program: the handle `Backend::prepare` returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PlanId(pub usize);

/// How many objects a backend has created so far. A training step must leave every count but
/// `submits` unchanged.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Created {
    pub buffers: usize,
    pub bind_groups: usize,
    /// Pipelines built on the device (on the GPU, shared by every backend on it).
    pub pipelines: usize,
    pub submits: usize,
}

/// What the model schedule and the tests need from a compute backend.
///
/// `prepare` is where all the work of planning happens (pipelines, bind groups, uniforms on the GPU);
/// `run` then executes a prepared program as often as wanted and allocates nothing.
pub trait Backend {
    /// One line: the backend and the adapter it runs on.
    fn describe(&self) -> String;
    /// A zero-initialised buffer of `len` elements (for `DType::Half`, `len.div_ceil(2)` words).
    fn alloc(&mut self, dtype: DType, len: usize, label: &str) -> Result<BufId>;
    fn write_f32(&mut self, view: View, data: &[f32]) -> Result<()>;
    fn write_u32(&mut self, view: View, data: &[u32]) -> Result<()>;
    /// Reads a view back into `out` (`view.len` elements; waits for all submitted work).
    fn read_f32_into(&mut self, view: View, out: &mut [f32]) -> Result<()>;
    /// Reads the words of a view of a `DType::U32` or `DType::Half` buffer back into `out`
    /// (`view.len` words; waits for all submitted work).
    fn read_u32_into(&mut self, view: View, out: &mut [u32]) -> Result<()>;
    /// Reads a view back (waits for all submitted work).
    fn read_f32(&mut self, view: View) -> Result<Vec<f32>> {
        let mut out = vec![0.0; view.len];
        self.read_f32_into(view, &mut out)?;
        Ok(out)
    }
    /// Checks and plans a program of ops.
    fn prepare(&mut self, ops: &[Op]) -> Result<PlanId>;
    /// Gets ready for programs made of `ops` before any of them is prepared: on the GPU, tunes their
    /// matmul shapes and compiles their kernels together, so a cold start compiles them all at once
    /// (on every core, on lavapipe) instead of program by program. Nothing elsewhere.
    fn warm(&mut self, ops: &[Op]) -> Result<()> {
        let _ = ops;
        Ok(())
    }
    /// Executes a prepared program. On the GPU this records one command encoder and submits it.
    fn run(&mut self, plan: PlanId) -> Result<()>;
    /// Waits until all submitted work has finished (and reports any fault it raised).
    fn sync(&mut self) -> Result<()>;
    /// Objects created so far.
    fn created(&self) -> Created;
    /// The element type `buf` was allocated with.
    fn dtype(&self, buf: BufId) -> DType;
    /// The matmul variant chosen for each shape (GPU backends), as "MxKxN NT" → variant: what a
    /// checkpoint records so that a resumed run uses the same kernels.
    fn kernel_choices(&self) -> std::collections::BTreeMap<String, String> {
        Default::default()
    }
    /// Uses these choices (from [`Backend::kernel_choices`]) for their shapes.
    fn pin_kernel_choices(&mut self, _choices: &std::collections::BTreeMap<String, String>) -> Result<()> {
        Ok(())
    }
    /// Why f16 training (`precision = "f16"`) is not offered here, if it is not: on a GPU, an adapter
    /// without shader-f16. (The CPU twins need nothing.)
    fn f16_unsupported(&self) -> Option<String> {
        None
    }
    /// Why the fused attention kernels cannot run here at sequence length `t` and head size
    /// `head_size`, if they cannot (then `attention = "auto"` uses the naive kernels).
    fn flash_unsupported(&self, _t: usize, _head_size: usize) -> Option<String> {
        None
    }
    /// Why one-position attention (`Op::AttentionDecode`) cannot run here over `t` keys with head
    /// size `head_size`, if it cannot (sampling then runs the full pass instead of the cache).
    fn decode_unsupported(&self, _t: usize, _head_size: usize) -> Option<String> {
        None
    }
    /// The most elements one storage binding may hold (unbounded on the CPU).
    fn max_binding(&self) -> usize {
        usize::MAX
    }
    /// Buffers alive on the device and their bytes (GPU backends), for memory reports.
    fn live_buffers(&self) -> Option<(usize, u64)> {
        None
    }
    /// Every buffer this backend allocated, as (label, bytes) (GPU backends; empty elsewhere).
    fn buffers(&self) -> Vec<(String, u64)> {
        Vec::new()
    }
    /// Runs a prepared program once and returns each dispatch's time with its entry point, for
    /// profiling ([`Backend::profile_method`] says how it was timed); backends that cannot do this
    /// return an empty list.
    fn profile(&mut self, _plan: PlanId) -> Result<Vec<(&'static str, f64)>> {
        Ok(Vec::new())
    }
    /// How [`Backend::profile`] times: "by timestamps between its dispatches" (GPU timestamps between
    /// the dispatches of one run) or "each dispatch alone" (each submitted and waited for on its own).
    fn profile_method(&self) -> &'static str {
        "each dispatch alone"
    }
}
