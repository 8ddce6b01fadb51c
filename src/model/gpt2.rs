//! The GPT-2 schedule: forward, backward in exact reverse, AdamW — written once as ops and run by any
//! backend. Buffers are planned for a fixed batch shape when the model is built; a step then only
//! writes the batch and the step's hyperparameters, runs one prepared program, and reads back the
//! loss and the gradient norm.

use super::layout::{ParamLayout, ALIGN};
use super::ModelConfig;
use crate::backend::{
    encoder_order, AdamwHyper, AttnDropout, Backend, BufId, DType, Op, PlanId, View, WeightLayout,
};
use crate::rng::Rng;
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
    /// Forward, backward and AdamW, with decoupled weight decay on the 2-D tensors, and dropout with
    /// probability `dropout` (0 = none) on the embedding, the attention probabilities and both residual
    /// branches of every block, during training steps only.
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

/// One block's activations (or their gradients), each (B,T,·) unless said.
struct LayerActs {
    ln1: View,
    ln1_mean: View,
    ln1_rstd: View,
    qkv: View,
    atty: View,
    /// (B,NH,T,T)
    att: View,
    attproj: View,
    res2: View,
    ln2: View,
    ln2_mean: View,
    ln2_rstd: View,
    fch: View,
    fch_gelu: View,
    fcproj: View,
    res3: View,
}

struct Acts {
    encoded: View,
    layers: Vec<LayerActs>,
    lnf: View,
    lnf_mean: View,
    lnf_rstd: View,
    logits: View,
    losses: View,
    lse: View,
}

/// The activation gradients the backward pass accumulates into. Every block shares one set (the
/// backward pass visits one block at a time) but for the gradient of the residual stream, which
/// alternates between two buffers: block i reads it from one and accumulates block i-1's into the
/// other. Each buffer is zeroed just before the op that first accumulates into it.
impl Acts {
    /// The gradients zeroed before each micro-batch: the embedding, ln_f and the residual stream after
    /// the last block. (The logits' gradient needs no buffer: it is written over the logits.)
    fn grad_views(&self) -> Vec<View> {
        let mut v = vec![self.encoded, self.lnf];
        v.extend(self.layers.last().map(|l| l.res3));
        v
    }
}

/// Allocates one buffer per activation tensor (separate buffers let a kernel read one activation and
/// write another without binding one buffer both read-only and writable), or, with `grads`, the
/// shared activation gradients described at `Acts`.
fn alloc_acts(
    be: &mut dyn Backend,
    cfg: &ModelConfig,
    s: BatchShape,
    grads: bool,
    scalar: View,
) -> Result<Acts> {
    let (n, c, v) = (s.tokens(), cfg.n_embd, cfg.vocab_size);
    let att_len = s.b * cfg.n_head * s.t * s.t;
    let what = if grads { "gradient of " } else { "" };
    // Gradients need no statistics (`stat` tensors).
    let mut alloc = |len: usize, name: &str, stat: bool| -> Result<View> {
        if grads && stat {
            return Ok(scalar);
        }
        Ok(View::new(be.alloc(DType::F32, len, &format!("{what}{name}"))?, 0, len))
    };
    let mut layers: Vec<LayerActs> = Vec::new();
    for l in 0..cfg.n_layer {
        if grads {
            // One block's gradients, shared by every block, but for the residual stream, which
            // alternates (see `Acts`). Within a block, tensors whose lives do not overlap share a
            // buffer (see `Gpt2::backward_ops`): five buffers of 11·N·C elements instead of 18·N·C.
            let res3 = match l {
                0 => alloc(n * c, "residual stream (even blocks)", false)?,
                1 => alloc(n * c, "residual stream (odd blocks)", false)?,
                _ => layers[l - 2].res3,
            };
            if l > 0 {
                layers.push(LayerActs { res3, ..layers[0] });
                continue;
            }
            let x1 = alloc(n * c, "mlp projection, ln_2, attention projection, ln_1 (every block)", false)?;
            let x2 = alloc(n * c, "attention (every block)", false)?;
            let y1 = alloc(n * 4 * c, "mlp gelu, qkv (every block)", false)?;
            // The attention-score scratch of the attention backward pass lives in the buffer of the
            // mlp fc gradient, dead by then.
            let y2 = alloc((n * 4 * c).max(att_len), "mlp fc, attention scores (every block)", false)?;
            layers.push(LayerActs {
                ln1: x1,
                ln1_mean: scalar,
                ln1_rstd: scalar,
                qkv: y1.slice(0, n * 3 * c),
                atty: x2,
                att: y2.slice(0, att_len),
                attproj: x1,
                res2: alloc(n * c, "residual 2 (every block)", false)?,
                ln2: x1,
                ln2_mean: scalar,
                ln2_rstd: scalar,
                fch: y2.slice(0, n * 4 * c),
                fch_gelu: y1,
                fcproj: x1,
                res3,
            });
            continue;
        }
        let p = |x: &str| format!("h.{l}.{x}");
        layers.push(LayerActs {
            ln1: alloc(n * c, &p("ln_1"), false)?,
            ln1_mean: alloc(n, &p("ln_1 mean"), true)?,
            ln1_rstd: alloc(n, &p("ln_1 rstd"), true)?,
            qkv: alloc(n * 3 * c, &p("qkv"), false)?,
            atty: alloc(n * c, &p("attention"), false)?,
            att: alloc(att_len, &p("attention probabilities"), false)?,
            attproj: alloc(n * c, &p("attention projection"), false)?,
            res2: alloc(n * c, &p("residual 2"), false)?,
            ln2: alloc(n * c, &p("ln_2"), false)?,
            ln2_mean: alloc(n, &p("ln_2 mean"), true)?,
            ln2_rstd: alloc(n, &p("ln_2 rstd"), true)?,
            fch: alloc(n * 4 * c, &p("mlp fc"), false)?,
            fch_gelu: alloc(n * 4 * c, &p("mlp gelu"), false)?,
            fcproj: alloc(n * c, &p("mlp projection"), false)?,
            res3: alloc(n * c, &p("residual 3"), false)?,
        });
    }
    Ok(Acts {
        encoded: alloc(n * c, "embedding", false)?,
        layers,
        lnf: alloc(n * c, "ln_f", false)?,
        lnf_mean: alloc(n, "ln_f mean", true)?,
        lnf_rstd: alloc(n, "ln_f rstd", true)?,
        // The logits' gradient is written over the logits (see `Gpt2::backward_ops`).
        logits: if grads { scalar } else { alloc(n * v, "logits", false)? },
        losses: alloc(n, "losses", true)?,
        lse: alloc(n, "logsumexp", true)?,
    })
}

/// Where the loss and the gradient norm live in the stats buffer (each on its own aligned slot).
const LOSS_AT: usize = 0;
const NORM_AT: usize = ALIGN;

/// A batch shape's worth of inputs and activations: the training frame, or a one-sequence frame for
/// sampling that shares the parameters.
struct Frame {
    shape: BatchShape,
    acts: Acts,
    tokens: Vec<View>,
    targets: Vec<View>,
    orders: Vec<View>,
}

impl Frame {
    fn new(
        be: &mut dyn Backend,
        cfg: &ModelConfig,
        shape: BatchShape,
        scalar: View,
        label: &str,
    ) -> Result<Self> {
        let acts = alloc_acts(be, cfg, shape, false, scalar)?;
        let mut ids = |what: &str| -> Result<Vec<View>> {
            (0..shape.accum)
                .map(|i| {
                    let id = be.alloc(DType::U32, shape.tokens(), &format!("{label}{what} {i}"))?;
                    Ok(View::new(id, 0, shape.tokens()))
                })
                .collect()
        };
        let (tokens, targets, orders) = (ids("tokens")?, ids("targets")?, ids("token order")?);
        Ok(Frame { shape, acts, tokens, targets, orders })
    }
}

/// The outputs of the dropout sites (or their gradients): the embedding, and per block the attention
/// probabilities, the attention projection and the MLP projection.
struct Dropped {
    encoded: View,
    layers: Vec<[View; 3]>,
}

/// Dropout of a training model: the probability, the step's seed (1 u32, written by the host before
/// each step) and the dropped tensors.
struct Dropout {
    p: f32,
    seed: View,
    acts: Dropped,
    grads: Dropped,
}

impl Dropout {
    fn new(be: &mut dyn Backend, cfg: &ModelConfig, s: BatchShape, p: f32, scalar: View) -> Result<Self> {
        let (nc, att) = (s.tokens() * cfg.n_embd, s.b * cfg.n_head * s.t * s.t);
        let mut t = |len: usize, name: String| -> Result<View> {
            Ok(View::new(be.alloc(DType::F32, len, &name)?, 0, len))
        };
        let mut dropped = |grad: bool| -> Result<Dropped> {
            let g = if grad { "gradient of " } else { "" };
            Ok(Dropped {
                encoded: t(nc, format!("{g}dropped embedding"))?,
                layers: (0..cfg.n_layer)
                    .map(|l| {
                        Ok([
                            if grad {
                                scalar
                            } else {
                                t(att, format!("h.{l} dropped attention probabilities"))?
                            },
                            t(nc, format!("{g}h.{l} dropped attention projection"))?,
                            t(nc, format!("{g}h.{l} dropped mlp projection"))?,
                        ])
                    })
                    .collect::<Result<_>>()?,
            })
        };
        let (acts, grads) = (dropped(false)?, dropped(true)?);
        let seed = View::new(be.alloc(DType::U32, 1, "dropout seed")?, 0, 1);
        Ok(Dropout { p, seed, acts, grads })
    }

    /// Every dropout site of every micro-batch draws its own mask: site 0 is the embedding, then three
    /// per block.
    fn stream(&self, micro: usize, site: usize) -> u32 {
        (micro * (1 + 3 * self.acts.layers.len()) + site) as u32
    }
}

struct Train {
    grads: BufId,
    m: BufId,
    v: BufId,
    dacts: Acts,
    grad_plan: PlanId,
    step_plan: PlanId,
}

/// A GPT-2 model on a backend, planned for one batch shape.
pub struct Gpt2 {
    pub config: ModelConfig,
    pub layout: ParamLayout,
    pub shape: BatchShape,
    backend: Box<dyn Backend>,
    params: BufId,
    main: Frame,
    /// A (1, T) frame and its logits program, when sampling is enabled on a training model.
    sampler: Option<(Frame, PlanId)>,
    dropout: Option<Dropout>,
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

impl Gpt2 {
    /// Allocates every buffer and prepares every program for `shape`. Parameters start at zero; load
    /// them with [`Gpt2::set_params`].
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
        let be = backend.as_mut();
        let params = be.alloc(DType::F32, layout.total, "parameters")?;
        let stats = View::new(be.alloc(DType::F32, NORM_AT + 1, "loss and gradient norm")?, 0, NORM_AT + 1);
        let hyper =
            View::new(be.alloc(DType::F32, AdamwHyper::WORDS, "AdamW step values")?, 0, AdamwHyper::WORDS);
        let scalar = View::new(be.alloc(DType::F32, 1, "unused statistics")?, 0, 1);
        let grad_scale = View::new(be.alloc(DType::F32, 1, "loss-gradient multiplier")?, 0, 1);
        be.write_f32(grad_scale, &[1.0])?;
        let main = Frame::new(be, &config, shape, scalar, "")?;
        let mut model = Gpt2 {
            config,
            layout,
            shape,
            backend,
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
            if dropout > 0.0 {
                model.dropout =
                    Some(Dropout::new(model.backend.as_mut(), &model.config, shape, dropout, scalar)?);
            }
            let be = model.backend.as_mut();
            let total = model.layout.total;
            let grads = be.alloc(DType::F32, total, "gradients")?;
            let m = be.alloc(DType::F32, total, "AdamW m")?;
            let v = be.alloc(DType::F32, total, "AdamW v")?;
            let dacts = alloc_acts(be, &model.config, shape, true, scalar)?;
            let mut train = Train { grads, m, v, dacts, grad_plan: PlanId(0), step_plan: PlanId(0) };
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

    fn param(&self, index: usize) -> View {
        let s = &self.layout.specs[index];
        View::new(self.params, s.offset, s.len())
    }

    fn grad(&self, train: &Train, index: usize) -> View {
        let s = &self.layout.specs[index];
        View::new(train.grads, s.offset, s.len())
    }

    /// The forward pass of micro-batch `micro`, and (with `loss`) the cross-entropy added into the
    /// stats buffer's loss slot as a mean over the whole step. `train` applies dropout.
    fn forward_ops(&self, frame: &Frame, micro: usize, loss: bool, train: bool) -> Vec<Op> {
        let (cfg, s, a, l) = (&self.config, frame.shape, &frame.acts, &self.layout);
        let (n, c, v) = (s.tokens(), cfg.n_embd, cfg.vocab_size);
        let p = |i: usize| self.param(i);
        let drop = self.dropout.as_ref().filter(|_| train);
        let mut ops = vec![Op::EncoderForward {
            out: a.encoded,
            tokens: frame.tokens[micro],
            wte: p(l.wte),
            wpe: Some(p(l.wpe)),
            b: s.b,
            t: s.t,
            c,
        }];
        // Where dropout applies, the dropped copy takes the tensor's place downstream.
        let dropped = |ops: &mut Vec<Op>, inp: View, site: usize, out: Option<View>| match (drop, out) {
            (Some(d), Some(out)) => {
                ops.push(Op::DropoutForward {
                    out,
                    inp,
                    seed: d.seed,
                    n: inp.len,
                    p: d.p,
                    stream: d.stream(micro, site),
                });
                out
            }
            _ => inp,
        };
        let mut x = dropped(&mut ops, a.encoded, 0, drop.map(|d| d.acts.encoded));
        for (i, (la, li)) in a.layers.iter().zip(&l.layers).enumerate() {
            let linear =
                |out: View, inp: View, w: usize, bias: usize, k: usize, nn: usize| Op::MatmulForward {
                    out,
                    inp,
                    weight: p(w),
                    bias: Some(p(bias)),
                    m: n,
                    k,
                    n: nn,
                    layout: WeightLayout::InOut,
                };
            let site = |k: usize| drop.map(|d| d.acts.layers[i][k]);
            ops.extend([
                Op::LayernormForward {
                    out: la.ln1,
                    mean: la.ln1_mean,
                    rstd: la.ln1_rstd,
                    inp: x,
                    weight: p(li.ln_1_w),
                    bias: p(li.ln_1_b),
                    n,
                    c,
                },
                linear(la.qkv, la.ln1, li.c_attn_w, li.c_attn_b, c, 3 * c),
                Op::AttentionForward {
                    out: la.atty,
                    att: la.att,
                    qkv: la.qkv,
                    b: s.b,
                    t: s.t,
                    c,
                    nh: cfg.n_head,
                    nkv: cfg.n_head,
                    dropout: drop.map(|d| AttnDropout {
                        probs: d.acts.layers[i][0],
                        seed: d.seed,
                        p: d.p,
                        stream: d.stream(micro, 1 + 3 * i),
                    }),
                },
                linear(la.attproj, la.atty, li.attn_proj_w, li.attn_proj_b, c, c),
            ]);
            let attproj = dropped(&mut ops, la.attproj, 2 + 3 * i, site(1));
            ops.extend([
                Op::ResidualForward { out: la.res2, inp1: x, inp2: attproj, n: n * c },
                Op::LayernormForward {
                    out: la.ln2,
                    mean: la.ln2_mean,
                    rstd: la.ln2_rstd,
                    inp: la.res2,
                    weight: p(li.ln_2_w),
                    bias: p(li.ln_2_b),
                    n,
                    c,
                },
                linear(la.fch, la.ln2, li.c_fc_w, li.c_fc_b, c, 4 * c),
                Op::GeluForward { out: la.fch_gelu, inp: la.fch, n: n * 4 * c },
                linear(la.fcproj, la.fch_gelu, li.mlp_proj_w, li.mlp_proj_b, 4 * c, c),
            ]);
            let fcproj = dropped(&mut ops, la.fcproj, 3 + 3 * i, site(2));
            ops.push(Op::ResidualForward { out: la.res3, inp1: la.res2, inp2: fcproj, n: n * c });
            x = la.res3;
        }
        ops.extend([
            Op::LayernormForward {
                out: a.lnf,
                mean: a.lnf_mean,
                rstd: a.lnf_rstd,
                inp: x,
                weight: p(l.ln_f_w),
                bias: p(l.ln_f_b),
                n,
                c,
            },
            // The output head is tied to the token embedding: logits = lnf · wteᵀ.
            Op::MatmulForward {
                out: a.logits,
                inp: a.lnf,
                weight: p(l.wte),
                bias: None,
                m: n,
                k: c,
                n: v,
                layout: WeightLayout::OutIn,
            },
        ]);
        if loss {
            ops.extend([
                Op::CrossentropyForward {
                    losses: a.losses,
                    lse: a.lse,
                    logits: a.logits,
                    targets: frame.targets[micro],
                    n,
                    v,
                },
                Op::ReduceSum {
                    out: self.stats.slice(LOSS_AT, 1),
                    inp: a.losses,
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

    /// The backward pass of micro-batch `micro`, in exact reverse of the forward pass, accumulating
    /// into the parameter gradients.
    fn backward_ops(&self, train: &Train, micro: usize) -> Vec<Op> {
        let (cfg, s, a, d, l) = (&self.config, self.shape, &self.main.acts, &train.dacts, &self.layout);
        let (n, c, v) = (s.tokens(), cfg.n_embd, cfg.vocab_size);
        let p = |i: usize| self.param(i);
        let g = |i: usize| self.grad(train, i);
        let drop = self.dropout.as_ref();
        let mut zeroed = d.grad_views();
        if let Some(dr) = drop {
            zeroed.push(dr.grads.encoded);
            zeroed.extend(dr.grads.layers.iter().flat_map(|[_, attproj, fcproj]| [*attproj, *fcproj]));
        }
        let mut ops: Vec<Op> = zeroed.into_iter().map(|out| Op::Zero { out }).collect();
        // The embedding as the first block saw it (dropped, with dropout), and its gradient.
        let (emb, demb) = match drop {
            Some(dr) => (dr.acts.encoded, dr.grads.encoded),
            None => (a.encoded, d.encoded),
        };
        let last = a.layers.last().map_or(emb, |la| la.res3);
        let dlast = d.layers.last().map_or(demb, |la| la.res3);
        let undrop = |ops: &mut Vec<Op>, dinp: View, dout: View, site: usize| {
            if let Some(dr) = drop {
                ops.push(Op::DropoutBackward {
                    dinp,
                    dout,
                    seed: dr.seed,
                    n: dinp.len,
                    p: dr.p,
                    stream: dr.stream(micro, site),
                });
            }
        };
        ops.extend([
            // The logits are dead once the loss is formed: their gradient overwrites them.
            Op::CrossentropyBackward {
                dlogits: a.logits,
                logits: a.logits,
                lse: a.lse,
                targets: self.main.targets[micro],
                grad_scale: self.grad_scale,
                n,
                v,
                scale: self.loss_scale(s),
            },
            Op::MatmulBackward {
                dinp: d.lnf,
                dweight: g(l.wte),
                dbias: None,
                dout: a.logits,
                inp: a.lnf,
                weight: p(l.wte),
                m: n,
                k: c,
                n: v,
                layout: WeightLayout::OutIn,
            },
            Op::LayernormBackward {
                dinp: dlast,
                dweight: g(l.ln_f_w),
                dbias: g(l.ln_f_b),
                dout: d.lnf,
                inp: last,
                weight: p(l.ln_f_w),
                mean: a.lnf_mean,
                rstd: a.lnf_rstd,
                n,
                c,
            },
        ]);
        for i in (0..cfg.n_layer).rev() {
            let (la, da, li) = (&a.layers[i], &d.layers[i], &l.layers[i]);
            let (x, dx) = if i == 0 { (emb, demb) } else { (a.layers[i - 1].res3, d.layers[i - 1].res3) };
            // The block's gradients share buffers (see `alloc_acts`): each is zeroed just before the
            // op that first accumulates into it, when the tensor it held before is dead.
            let zero =
                |ops: &mut Vec<Op>, views: &[View]| ops.extend(views.iter().map(|&out| Op::Zero { out }));
            if i > 0 {
                zero(&mut ops, &[dx]);
            }
            zero(&mut ops, &[da.res2, da.fcproj]);
            let dsite = |k: usize, plain: View| drop.map_or(plain, |dr| dr.grads.layers[i][k]);
            let (dfcproj, dattproj) = (dsite(2, da.fcproj), dsite(1, da.attproj));
            let linear = |dinp: View, dout: View, inp: View, w: usize, bias: usize, k: usize, nn: usize| {
                Op::MatmulBackward {
                    dinp,
                    dweight: g(w),
                    dbias: Some(g(bias)),
                    dout,
                    inp,
                    weight: p(w),
                    m: n,
                    k,
                    n: nn,
                    layout: WeightLayout::InOut,
                }
            };
            ops.push(Op::ResidualBackward { dinp1: da.res2, dinp2: dfcproj, dout: da.res3, n: n * c });
            undrop(&mut ops, da.fcproj, dfcproj, 3 + 3 * i);
            zero(&mut ops, &[da.fch_gelu]);
            ops.push(linear(da.fch_gelu, da.fcproj, la.fch_gelu, li.mlp_proj_w, li.mlp_proj_b, 4 * c, c));
            zero(&mut ops, &[da.fch]);
            ops.push(Op::GeluBackward { dinp: da.fch, inp: la.fch, dout: da.fch_gelu, n: n * 4 * c });
            zero(&mut ops, &[da.ln2]);
            ops.extend([
                linear(da.ln2, da.fch, la.ln2, li.c_fc_w, li.c_fc_b, c, 4 * c),
                Op::LayernormBackward {
                    dinp: da.res2,
                    dweight: g(li.ln_2_w),
                    dbias: g(li.ln_2_b),
                    dout: da.ln2,
                    inp: la.res2,
                    weight: p(li.ln_2_w),
                    mean: la.ln2_mean,
                    rstd: la.ln2_rstd,
                    n,
                    c,
                },
            ]);
            zero(&mut ops, &[da.attproj]);
            ops.push(Op::ResidualBackward { dinp1: dx, dinp2: dattproj, dout: da.res2, n: n * c });
            undrop(&mut ops, da.attproj, dattproj, 2 + 3 * i);
            zero(&mut ops, &[da.atty]);
            ops.push(linear(da.atty, da.attproj, la.atty, li.attn_proj_w, li.attn_proj_b, c, c));
            zero(&mut ops, &[da.qkv]);
            ops.extend([Op::AttentionBackward {
                dqkv: da.qkv,
                datt: da.att,
                dout: da.atty,
                qkv: la.qkv,
                att: la.att,
                b: s.b,
                t: s.t,
                c,
                nh: cfg.n_head,
                nkv: cfg.n_head,
                dropout: drop.map(|dr| AttnDropout {
                    probs: dr.acts.layers[i][0],
                    seed: dr.seed,
                    p: dr.p,
                    stream: dr.stream(micro, 1 + 3 * i),
                }),
            }]);
            zero(&mut ops, &[da.ln1]);
            ops.extend([
                linear(da.ln1, da.qkv, la.ln1, li.c_attn_w, li.c_attn_b, c, 3 * c),
                Op::LayernormBackward {
                    dinp: dx,
                    dweight: g(li.ln_1_w),
                    dbias: g(li.ln_1_b),
                    dout: da.ln1,
                    inp: x,
                    weight: p(li.ln_1_w),
                    mean: la.ln1_mean,
                    rstd: la.ln1_rstd,
                    n,
                    c,
                },
            ]);
        }
        undrop(&mut ops, d.encoded, demb, 0);
        ops.push(Op::EncoderBackward {
            dwte: g(l.wte),
            dwpe: Some(g(l.wpe)),
            dout: d.encoded,
            tokens: self.main.tokens[micro],
            order: self.main.orders[micro],
            b: s.b,
            t: s.t,
            c,
        });
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
        let a = &self.main.acts;
        let mut acts: Vec<View> = vec![a.encoded, a.lnf, a.lnf_mean, a.lnf_rstd, a.logits, a.losses, a.lse];
        for l in &a.layers {
            acts.extend([l.ln1, l.ln1_mean, l.ln1_rstd, l.qkv, l.atty, l.att, l.attproj, l.res2]);
            acts.extend([l.ln2, l.ln2_mean, l.ln2_rstd, l.fch, l.fch_gelu, l.fcproj, l.res3]);
        }
        if let Some(d) = &self.dropout {
            acts.push(d.acts.encoded);
            acts.extend(d.acts.layers.iter().flatten());
        }
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
        self.backend.read_f32(self.main.acts.logits)
    }

    /// The logits the last forward pass left (of the last micro-batch it ran), (B,T,V) flat. After a
    /// training step's backward pass the buffer holds the logits' gradient instead; use [`Gpt2::logits`].
    pub fn last_logits(&mut self) -> Result<Vec<f32>> {
        self.backend.read_f32(self.main.acts.logits)
    }

    /// The logits left by the last forward pass at one position of micro-batch 0: (V).
    pub fn logits_at(&mut self, b: usize, t: usize) -> Result<Vec<f32>> {
        let v = self.config.vocab_size;
        let row = b * self.shape.t + t;
        self.backend.read_f32(self.main.acts.logits.slice(row * v, v))
    }

    /// Runs the forward pass of micro-batch 0 without reading anything back.
    pub fn forward(&mut self) -> Result<()> {
        self.backend.run(self.logits_plan)
    }

    /// The per-position losses of the last forward pass with a loss (micro-batch `accum - 1`), (B,T).
    pub fn last_losses(&mut self) -> Result<Vec<f32>> {
        self.backend.read_f32(self.main.acts.losses)
    }

    /// Adds a one-sequence frame sharing the parameters, for [`Gpt2::next_logits`]: sampling from a
    /// model built for training batches costs one sequence, not a batch, per token.
    pub fn enable_sampling(&mut self) -> Result<()> {
        if self.sampler.is_some() || self.shape.b == 1 && self.shape.accum == 1 {
            return Ok(());
        }
        let shape = BatchShape { b: 1, t: self.shape.t, accum: 1 };
        let frame = Frame::new(self.backend.as_mut(), &self.config, shape, self.scalar, "sampling ")?;
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
        let (tokens, order, logits) = (frame.tokens[0], frame.orders[0], frame.acts.logits);
        self.backend.write_u32(tokens, &padded)?;
        self.backend.write_u32(order, &encoder_order(&padded))?;
        self.backend.run(plan)?;
        self.backend.read_f32(logits.slice((context.len() - 1) * v, v))
    }
}

/// GPT-2's initialisation: N(0, 0.02) for weights and embeddings, scaled by 1/sqrt(2·n_layer) for the
/// two projections that feed the residual stream; zero biases; LayerNorm gains of one.
pub fn init_params(cfg: &ModelConfig, seed: u64) -> Vec<f32> {
    let layout = ParamLayout::new(cfg);
    let mut flat = vec![0f32; layout.total];
    let mut rng = Rng::new(seed);
    let residual_std = 0.02 / (2.0 * cfg.n_layer as f64).sqrt();
    for s in &layout.specs {
        let out = &mut flat[s.offset..s.offset + s.len()];
        if s.name.ends_with("ln_1.weight")
            || s.name.ends_with("ln_2.weight")
            || s.name.ends_with("ln_f.weight")
        {
            out.fill(1.0);
        } else if s.decay {
            let std = if s.name.ends_with("c_proj.weight") { residual_std } else { 0.02 };
            out.iter_mut().for_each(|x| *x = (rng.normal() * std) as f32);
        }
    }
    flat
}
