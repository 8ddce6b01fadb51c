//! GPT-2: its parameter table (Hugging Face `GPT2LMHeadModel` names, Conv1D `[in, out]` weights), its
//! activation plan, and its forward and backward ops, written once for both backends. The runtime
//! (`model::runtime`) adds the output head (tied to `wte`), the loss and the optimizer.

use super::layout::{Init, ParamDef};
use super::runtime::{ActAlloc, Attention, BatchShape, DropoutSeed, Io, Network, Weights};
use super::ModelConfig;
use crate::backend::{AttnDropout, Backend, DType, Op, View, WeightLayout};
use crate::Result;

/// Indices into the layout of one block's tensors.
#[derive(Clone, Copy, Debug)]
pub struct LayerIndex {
    pub ln_1_w: usize,
    pub ln_1_b: usize,
    pub c_attn_w: usize,
    pub c_attn_b: usize,
    pub attn_proj_w: usize,
    pub attn_proj_b: usize,
    pub ln_2_w: usize,
    pub ln_2_b: usize,
    pub c_fc_w: usize,
    pub c_fc_b: usize,
    pub mlp_proj_w: usize,
    pub mlp_proj_b: usize,
}

/// Indices into the layout of every tensor the schedule names.
#[derive(Clone, Debug)]
pub struct Index {
    pub wte: usize,
    pub wpe: usize,
    pub layers: Vec<LayerIndex>,
    pub ln_f_w: usize,
    pub ln_f_b: usize,
}

/// The parameter table, in buffer order (decayed 2-D tensors first), and where each tensor landed.
/// Initialisation as GPT-2's: N(0, 0.02) for weights and embeddings, scaled by 1/sqrt(2·n_layer) for
/// the two projections that feed the residual stream; zero biases; LayerNorm gains of one.
pub fn params(cfg: &ModelConfig) -> (Vec<ParamDef>, Index) {
    let c = cfg.n_embd;
    let residual_std = 0.02 / (2.0 * cfg.n_layer as f64).sqrt();
    let mut defs: Vec<ParamDef> = Vec::new();
    let mut push = |name: String, shape: Vec<usize>, init: Init| {
        defs.push(ParamDef::new(name, shape, init));
        defs.len() - 1
    };
    let h = |l: usize, s: &str| format!("transformer.h.{l}.{s}");
    let normal = Init::Normal(0.02);
    // Decayed (2-D) tensors.
    let wte = push("transformer.wte.weight".into(), vec![cfg.vocab_size, c], normal);
    let wpe = push("transformer.wpe.weight".into(), vec![cfg.n_positions, c], normal);
    let mut weights = Vec::new();
    for l in 0..cfg.n_layer {
        weights.push([
            push(h(l, "attn.c_attn.weight"), vec![c, 3 * c], normal),
            push(h(l, "attn.c_proj.weight"), vec![c, c], Init::Normal(residual_std)),
            push(h(l, "mlp.c_fc.weight"), vec![c, 4 * c], normal),
            push(h(l, "mlp.c_proj.weight"), vec![4 * c, c], Init::Normal(residual_std)),
        ]);
    }
    // Everything else: biases and LayerNorm parameters.
    let mut layers = Vec::new();
    for (l, [c_attn_w, attn_proj_w, c_fc_w, mlp_proj_w]) in weights.into_iter().enumerate() {
        layers.push(LayerIndex {
            ln_1_w: push(h(l, "ln_1.weight"), vec![c], Init::Ones),
            ln_1_b: push(h(l, "ln_1.bias"), vec![c], Init::Zeros),
            c_attn_w,
            c_attn_b: push(h(l, "attn.c_attn.bias"), vec![3 * c], Init::Zeros),
            attn_proj_w,
            attn_proj_b: push(h(l, "attn.c_proj.bias"), vec![c], Init::Zeros),
            ln_2_w: push(h(l, "ln_2.weight"), vec![c], Init::Ones),
            ln_2_b: push(h(l, "ln_2.bias"), vec![c], Init::Zeros),
            c_fc_w,
            c_fc_b: push(h(l, "mlp.c_fc.bias"), vec![4 * c], Init::Zeros),
            mlp_proj_w,
            mlp_proj_b: push(h(l, "mlp.c_proj.bias"), vec![c], Init::Zeros),
        });
    }
    let ln_f_w = push("transformer.ln_f.weight".into(), vec![c], Init::Ones);
    let ln_f_b = push("transformer.ln_f.bias".into(), vec![c], Init::Zeros);
    (defs, Index { wte, wpe, layers, ln_f_w, ln_f_b })
}

/// One block's activations (or their gradients), each (B,T,·) unless said.
struct LayerActs {
    ln1: View,
    ln1_mean: View,
    ln1_rstd: View,
    qkv: View,
    atty: View,
    /// What attention saves: (B,NH,T,T) probabilities or (B,NH,T) log-sum-exp (`Attention`).
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

/// A frame's activations, or the activation gradients. Every block shares one set of gradients (the
/// backward pass visits one block at a time) but for the gradient of the residual stream, which
/// alternates between two buffers: block i reads it from one and accumulates block i-1's into the
/// other. Each buffer is zeroed just before the op that first accumulates into it.
struct Acts {
    shape: BatchShape,
    encoded: View,
    layers: Vec<LayerActs>,
    lnf: View,
    lnf_mean: View,
    lnf_rstd: View,
}

/// Allocates one buffer per activation tensor (separate buffers let a kernel read one activation and
/// write another without binding one buffer both read-only and writable), or, with `grads`, the
/// shared activation gradients described at `Acts`.
#[allow(clippy::too_many_arguments)]
fn alloc_acts(
    be: &mut dyn Backend,
    cfg: &ModelConfig,
    attention: Attention,
    s: BatchShape,
    grads: bool,
    scalar: View,
    label: &str,
    acts: DType,
) -> Result<Acts> {
    let (n, c) = (s.tokens(), cfg.n_embd);
    let att_len = attention.saved_len(s, cfg.n_head);
    let mut a = ActAlloc::new(be, grads, scalar, label, acts);
    let mut layers: Vec<LayerActs> = Vec::new();
    for l in 0..cfg.n_layer {
        if grads {
            // One block's gradients, shared by every block, but for the residual stream, which
            // alternates (see `Acts`). Within a block, tensors whose lives do not overlap share a
            // buffer (see `Gpt2Net::backward`): five buffers of 11·N·C elements instead of 18·N·C.
            let res3 = a.residual_grad(l, l.checked_sub(2).map(|k| layers[k].res3), n * c)?;
            if l > 0 {
                layers.push(LayerActs { res3, ..layers[0] });
                continue;
            }
            let x1 = a.branch(n * c, "mlp projection, ln_2, attention projection, ln_1 (every block)")?;
            let x2 = a.branch(n * c, "attention (every block)")?;
            let y1 = a.branch(n * 4 * c, "mlp gelu, qkv (every block)")?;
            // The attention-score scratch of the attention backward pass lives in the buffer of the
            // mlp fc gradient, dead by then.
            let y2 = a.branch((n * 4 * c).max(att_len), "mlp fc, attention scores (every block)")?;
            layers.push(LayerActs {
                ln1: x1,
                ln1_mean: scalar,
                ln1_rstd: scalar,
                qkv: y1.slice(0, n * 3 * c),
                atty: x2,
                att: y2.slice(0, att_len),
                attproj: x1,
                res2: a.tensor(n * c, "residual 2 (every block)")?,
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
            ln1: a.tensor(n * c, &p("ln_1"))?,
            ln1_mean: a.stat(n, &p("ln_1 mean"))?,
            ln1_rstd: a.stat(n, &p("ln_1 rstd"))?,
            qkv: a.tensor(n * 3 * c, &p("qkv"))?,
            atty: a.tensor(n * c, &p("attention"))?,
            att: a.attention_saved(attention, att_len, &p("attention probabilities or log-sum-exp"))?,
            attproj: a.tensor(n * c, &p("attention projection"))?,
            res2: a.tensor(n * c, &p("residual 2"))?,
            ln2: a.tensor(n * c, &p("ln_2"))?,
            ln2_mean: a.stat(n, &p("ln_2 mean"))?,
            ln2_rstd: a.stat(n, &p("ln_2 rstd"))?,
            fch: a.tensor(n * 4 * c, &p("mlp fc"))?,
            fch_gelu: a.tensor(n * 4 * c, &p("mlp gelu"))?,
            fcproj: a.tensor(n * c, &p("mlp projection"))?,
            res3: a.tensor(n * c, &p("residual 3"))?,
        });
    }
    Ok(Acts {
        shape: s,
        encoded: a.tensor(n * c, "embedding")?,
        layers,
        lnf: a.branch(n * c, "ln_f")?,
        lnf_mean: a.stat(n, "ln_f mean")?,
        lnf_rstd: a.stat(n, "ln_f rstd")?,
    })
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
    fn new(
        be: &mut dyn Backend,
        cfg: &ModelConfig,
        attention: Attention,
        s: BatchShape,
        d: DropoutSeed,
        scalar: View,
        acts: DType,
    ) -> Result<Self> {
        let (nc, att) = (s.tokens() * cfg.n_embd, s.b * cfg.n_head * s.t * s.t);
        // Flash attention regenerates its mask and keeps no dropped probabilities.
        let keeps_probs = attention == Attention::Naive;
        let mut alloc = |dtype: DType, len: usize, name: String| -> Result<View> {
            Ok(View::new(be.alloc(dtype, len, &name)?, 0, len))
        };
        let mut dropped = |grad: bool| -> Result<Dropped> {
            let g = if grad { "gradient of " } else { "" };
            // The dropped copies are activations (16-bit in mixed precision); their gradients f32.
            let dtype = if grad { DType::F32 } else { acts };
            let mut t = |len: usize, name: String| alloc(dtype, len, name);
            Ok(Dropped {
                encoded: t(nc, format!("{g}dropped embedding"))?,
                layers: (0..cfg.n_layer)
                    .map(|l| {
                        Ok([
                            if grad || !keeps_probs {
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
        Ok(Dropout { p: d.p, seed: d.seed, acts, grads })
    }

    /// Every dropout site of every micro-batch draws its own mask: site 0 is the embedding, then three
    /// per block.
    fn stream(&self, micro: usize, site: usize) -> u32 {
        (micro * (1 + 3 * self.acts.layers.len()) + site) as u32
    }
}

/// GPT-2 as a [`Network`].
pub struct Gpt2Net {
    config: ModelConfig,
    attention: Attention,
    /// The element type of forward activations.
    acts: DType,
    index: Index,
    frames: Vec<Acts>,
    grads: Option<Acts>,
    dropout: Option<Dropout>,
}

impl Gpt2Net {
    /// `acts` is the element type of the forward activations (`DType::Half` in mixed precision).
    pub fn new(config: &ModelConfig, attention: Attention, acts: DType) -> Self {
        Gpt2Net {
            acts,
            config: *config,
            attention,
            index: params(config).1,
            frames: Vec::new(),
            grads: None,
            dropout: None,
        }
    }

    fn grads(&self) -> &Acts {
        self.grads.as_ref().expect("the training plan exists before backward ops are built")
    }
}

impl Network for Gpt2Net {
    fn add_frame(
        &mut self,
        be: &mut dyn Backend,
        shape: BatchShape,
        scalar: View,
        label: &str,
        acts: DType,
    ) -> Result<usize> {
        self.frames.push(alloc_acts(be, &self.config, self.attention, shape, false, scalar, label, acts)?);
        Ok(self.frames.len() - 1)
    }

    fn add_training(
        &mut self,
        be: &mut dyn Backend,
        dropout: Option<DropoutSeed>,
        scalar: View,
    ) -> Result<()> {
        let shape = self.frames[0].shape;
        if let Some(d) = dropout {
            self.dropout = Some(Dropout::new(be, &self.config, self.attention, shape, d, scalar, self.acts)?);
        }
        self.grads = Some(alloc_acts(be, &self.config, self.attention, shape, true, scalar, "", self.acts)?);
        Ok(())
    }

    fn hidden(&self, frame: usize) -> View {
        self.frames[frame].lnf
    }

    fn hidden_grad(&self) -> View {
        self.grads().lnf
    }

    fn head(&self) -> usize {
        // The output head is tied to the token embedding: logits = lnf · wteᵀ.
        self.index.wte
    }

    fn saved(&self, frame: usize) -> Vec<View> {
        let a = &self.frames[frame];
        let mut acts: Vec<View> = vec![a.encoded, a.lnf, a.lnf_mean, a.lnf_rstd];
        for l in &a.layers {
            acts.extend([l.ln1, l.ln1_mean, l.ln1_rstd, l.qkv, l.atty, l.att, l.attproj, l.res2]);
            acts.extend([l.ln2, l.ln2_mean, l.ln2_rstd, l.fch, l.fch_gelu, l.fcproj, l.res3]);
        }
        if let Some(d) = &self.dropout {
            acts.push(d.acts.encoded);
            acts.extend(d.acts.layers.iter().flatten());
        }
        acts
    }

    fn forward(&self, frame: usize, io: &Io, ops: &mut Vec<Op>) {
        let (cfg, a, l, micro) = (&self.config, &self.frames[frame], &self.index, io.micro);
        let (n, c) = (io.shape.tokens(), cfg.n_embd);
        let s = io.shape;
        let p = |i: usize| io.params.at(i);
        let drop = self.dropout.as_ref().filter(|_| io.train);
        ops.push(Op::EncoderForward {
            out: a.encoded,
            tokens: io.tokens,
            wte: p(l.wte),
            wpe: Some(p(l.wpe)),
            b: s.b,
            t: s.t,
            c,
        });
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
        let mut x = dropped(ops, a.encoded, 0, drop.map(|d| d.acts.encoded));
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
                self.attention.forward(
                    la.atty,
                    la.att,
                    la.qkv,
                    s,
                    c,
                    cfg.n_head,
                    cfg.n_head,
                    drop.map(|d| AttnDropout {
                        probs: d.acts.layers[i][0],
                        seed: d.seed,
                        p: d.p,
                        stream: d.stream(micro, 1 + 3 * i),
                    }),
                ),
                linear(la.attproj, la.atty, li.attn_proj_w, li.attn_proj_b, c, c),
            ]);
            let attproj = dropped(ops, la.attproj, 2 + 3 * i, site(1));
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
            let fcproj = dropped(ops, la.fcproj, 3 + 3 * i, site(2));
            ops.push(Op::ResidualForward { out: la.res3, inp1: la.res2, inp2: fcproj, n: n * c });
            x = la.res3;
        }
        ops.push(Op::LayernormForward {
            out: a.lnf,
            mean: a.lnf_mean,
            rstd: a.lnf_rstd,
            inp: x,
            weight: p(l.ln_f_w),
            bias: p(l.ln_f_b),
            n,
            c,
        });
    }

    fn backward(&self, io: &Io, grads: Weights, ops: &mut Vec<Op>) {
        let (cfg, a, d, l, micro) = (&self.config, &self.frames[0], self.grads(), &self.index, io.micro);
        let s = io.shape;
        let (n, c) = (s.tokens(), cfg.n_embd);
        let p = |i: usize| io.params.at(i);
        let g = |i: usize| grads.at(i);
        let drop = self.dropout.as_ref();
        let mut zeroed = vec![d.encoded];
        zeroed.extend(d.layers.last().map(|l| l.res3));
        if let Some(dr) = drop {
            zeroed.push(dr.grads.encoded);
            zeroed.extend(dr.grads.layers.iter().flat_map(|[_, attproj, fcproj]| [*attproj, *fcproj]));
        }
        ops.extend(zeroed.into_iter().map(|out| Op::Zero { out }));
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
        ops.push(Op::LayernormBackward {
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
        });
        for i in (0..cfg.n_layer).rev() {
            let (la, da, li) = (&a.layers[i], &d.layers[i], &l.layers[i]);
            let (x, dx) = if i == 0 { (emb, demb) } else { (a.layers[i - 1].res3, d.layers[i - 1].res3) };
            // The block's gradients share buffers (see `alloc_acts`): each is zeroed just before the
            // op that first accumulates into it, when the tensor it held before is dead.
            let zero =
                |ops: &mut Vec<Op>, views: &[View]| ops.extend(views.iter().map(|&out| Op::Zero { out }));
            if i > 0 {
                zero(ops, &[dx]);
            }
            zero(ops, &[da.res2, da.fcproj]);
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
            undrop(ops, da.fcproj, dfcproj, 3 + 3 * i);
            zero(ops, &[da.fch_gelu]);
            ops.push(linear(da.fch_gelu, da.fcproj, la.fch_gelu, li.mlp_proj_w, li.mlp_proj_b, 4 * c, c));
            zero(ops, &[da.fch]);
            ops.push(Op::GeluBackward { dinp: da.fch, inp: la.fch, dout: da.fch_gelu, n: n * 4 * c });
            zero(ops, &[da.ln2]);
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
            zero(ops, &[da.attproj]);
            ops.push(Op::ResidualBackward { dinp1: dx, dinp2: dattproj, dout: da.res2, n: n * c });
            undrop(ops, da.attproj, dattproj, 2 + 3 * i);
            zero(ops, &[da.atty]);
            ops.push(linear(da.atty, da.attproj, la.atty, li.attn_proj_w, li.attn_proj_b, c, c));
            zero(ops, &[da.qkv]);
            ops.push(self.attention.backward(
                da.qkv,
                da.att,
                da.atty,
                la.qkv,
                la.atty,
                la.att,
                s,
                c,
                cfg.n_head,
                cfg.n_head,
                drop.map(|dr| AttnDropout {
                    probs: dr.acts.layers[i][0],
                    seed: dr.seed,
                    p: dr.p,
                    stream: dr.stream(micro, 1 + 3 * i),
                }),
            ));
            zero(ops, &[da.ln1]);
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
        undrop(ops, d.encoded, demb, 0);
        ops.push(Op::EncoderBackward {
            dwte: g(l.wte),
            dwpe: Some(g(l.wpe)),
            dout: d.encoded,
            tokens: io.tokens,
            order: io.order,
            b: s.b,
            t: s.t,
            c,
        });
    }
}

/// The fields of a GPT-2 `config.json` that matter; other keys are ignored, as transformers does.
#[derive(serde::Deserialize)]
struct HfConfig {
    n_layer: usize,
    n_head: usize,
    n_embd: usize,
    vocab_size: usize,
    n_positions: Option<usize>,
    n_ctx: Option<usize>,
    n_inner: Option<usize>,
    activation_function: Option<String>,
    layer_norm_epsilon: Option<f64>,
    tie_word_embeddings: Option<bool>,
    scale_attn_weights: Option<bool>,
    scale_attn_by_inverse_layer_idx: Option<bool>,
}

/// Reads a GPT-2 `config.json` (already parsed as JSON); refuses what wgslm's GPT-2 does not compute.
pub fn parse_hf_config(path: &std::path::Path, json: serde_json::Value) -> Result<ModelConfig> {
    let hf: HfConfig = serde_json::from_value(json)
        .map_err(|e| crate::Error::Invalid(format!("{}: not a GPT-2 config.json: {e}", path.display())))?;
    let bad = |what: String| {
        Err(crate::Error::Invalid(format!("{}: {what}; wgslm's GPT-2 cannot load it", path.display())))
    };
    if let Some(a) =
        hf.activation_function.as_deref().filter(|a| !matches!(*a, "gelu_new" | "gelu_pytorch_tanh"))
    {
        return bad(format!("activation_function \"{a}\" is not the tanh GELU (gelu_new)"));
    }
    if let Some(eps) = hf.layer_norm_epsilon.filter(|e| (e - 1e-5).abs() > 1e-12) {
        return bad(format!("layer_norm_epsilon {eps} is not 1e-5"));
    }
    if let Some(inner) = hf.n_inner.filter(|&i| i != 4 * hf.n_embd) {
        return bad(format!("n_inner {inner} is not 4 · n_embd"));
    }
    if hf.tie_word_embeddings == Some(false) {
        return bad("tie_word_embeddings is false (the output head must be tied to wte)".into());
    }
    if hf.scale_attn_weights == Some(false) || hf.scale_attn_by_inverse_layer_idx == Some(true) {
        return bad("attention scaling is not 1/sqrt(head size)".into());
    }
    let n_positions = hf
        .n_positions
        .or(hf.n_ctx)
        .ok_or_else(|| crate::Error::Invalid(format!("{}: missing field `n_positions`", path.display())))?;
    Ok(ModelConfig::gpt2(hf.n_layer, hf.n_head, hf.n_embd, hf.vocab_size, n_positions))
}

/// The GPT-2 `config.json` transformers needs to rebuild the model.
pub fn hf_config(config: &ModelConfig, bos_eos: Option<u32>) -> serde_json::Value {
    serde_json::json!({
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "activation_function": "gelu_new",
        "n_layer": config.n_layer,
        "n_head": config.n_head,
        "n_embd": config.n_embd,
        "n_inner": null,
        "vocab_size": config.vocab_size,
        "n_positions": config.n_positions,
        "n_ctx": config.n_positions,
        "layer_norm_epsilon": 1e-5,
        "initializer_range": 0.02,
        "attn_pdrop": 0.0,
        "embd_pdrop": 0.0,
        "resid_pdrop": 0.0,
        "scale_attn_weights": true,
        "scale_attn_by_inverse_layer_idx": false,
        "reorder_and_upcast_attn": false,
        "tie_word_embeddings": true,
        "use_cache": true,
        "bos_token_id": bos_eos,
        "eos_token_id": bos_eos,
        "torch_dtype": "float32",
    })
}
