//! Llama: its parameter table (Hugging Face `LlamaForCausalLM` names, nn.Linear `[out, in]` weights),
//! its activation plan, and its forward and backward ops, written once for both backends. The runtime
//! (`model::runtime`) adds the output head (`lm_head`, or the embedding when tied), the loss and the
//! optimizer.
//!
//! A block: `h = x + o(attn(rope(qkv(rmsnorm₁(x)))))`, `out = h + down(swiglu(gate_up(rmsnorm₂(h))))`.
//! The q, k and v projections are packed one after another in the parameter buffer, so one matmul
//! against the `[(NH + 2·NKV)·hd, C]` matrix they form writes the packed qkv rows attention reads; the
//! gate and up projections likewise form one `[2·I, C]` matrix.

use super::layout::{Init, ParamDef};
use super::runtime::{ActAlloc, Attention, BatchShape, DropoutSeed, Io, Network, Weights};
use super::{Arch, LlamaConfig, ModelConfig};
use crate::backend::{qkv_width, rope_table, Backend, DType, Op, View, WeightLayout};
use crate::{Error, Result};

/// Indices into the layout of one block's tensors. q, k and v are packed, and gate and up.
#[derive(Clone, Copy, Debug)]
pub struct LayerIndex {
    pub input_norm: usize,
    pub q: usize,
    pub v: usize,
    pub o: usize,
    pub post_norm: usize,
    pub gate: usize,
    pub up: usize,
    pub down: usize,
}

/// Indices into the layout of every tensor the schedule names.
#[derive(Clone, Debug)]
pub struct Index {
    pub embed: usize,
    pub layers: Vec<LayerIndex>,
    pub norm: usize,
    /// `lm_head.weight`, or the embedding when the head is tied.
    pub head: usize,
}

fn llama(cfg: &ModelConfig) -> LlamaConfig {
    match cfg.arch {
        Arch::Llama(l) => l,
        Arch::Gpt2 => unreachable!("a Llama schedule for a GPT-2 config"),
    }
}

/// The parameter table, in buffer order (decayed 2-D tensors first), and where each tensor landed.
/// Initialisation: N(0, 0.02) for every matrix, scaled by 1/sqrt(2·n_layer) for the two projections
/// that feed the residual stream (o and down, as llama2.c and GPT-2 do); RMSNorm gains of one.
pub fn params(cfg: &ModelConfig) -> (Vec<ParamDef>, Index) {
    let l = llama(cfg);
    let (c, i) = (cfg.n_embd, l.intermediate_size);
    let kv = l.n_kv_head * cfg.head_size();
    let (normal, residual) = (Init::Normal(0.02), Init::Normal(0.02 / (2.0 * cfg.n_layer as f64).sqrt()));
    let mut defs: Vec<ParamDef> = Vec::new();
    let mut push = |def: ParamDef| {
        defs.push(def);
        defs.len() - 1
    };
    let at = |layer: usize, s: &str| format!("model.layers.{layer}.{s}");
    let embed = push(ParamDef::new("model.embed_tokens.weight".into(), vec![cfg.vocab_size, c], normal));
    let mut matrices = Vec::new();
    for layer in 0..cfg.n_layer {
        let q = push(ParamDef::new(at(layer, "self_attn.q_proj.weight"), vec![c, c], normal));
        push(ParamDef::new(at(layer, "self_attn.k_proj.weight"), vec![kv, c], normal).packed());
        let v = push(ParamDef::new(at(layer, "self_attn.v_proj.weight"), vec![kv, c], normal).packed());
        let o = push(ParamDef::new(at(layer, "self_attn.o_proj.weight"), vec![c, c], residual));
        let gate = push(ParamDef::new(at(layer, "mlp.gate_proj.weight"), vec![i, c], normal));
        let up = push(ParamDef::new(at(layer, "mlp.up_proj.weight"), vec![i, c], normal).packed());
        let down = push(ParamDef::new(at(layer, "mlp.down_proj.weight"), vec![c, i], residual));
        matrices.push((q, v, o, gate, up, down));
    }
    let head = if l.tie_embeddings {
        embed
    } else {
        push(ParamDef::new("lm_head.weight".into(), vec![cfg.vocab_size, c], normal))
    };
    let layers = matrices
        .into_iter()
        .enumerate()
        .map(|(layer, (q, v, o, gate, up, down))| LayerIndex {
            input_norm: push(ParamDef::new(at(layer, "input_layernorm.weight"), vec![c], Init::Ones)),
            q,
            v,
            o,
            post_norm: push(ParamDef::new(at(layer, "post_attention_layernorm.weight"), vec![c], Init::Ones)),
            gate,
            up,
            down,
        })
        .collect();
    let norm = push(ParamDef::new("model.norm.weight".into(), vec![c], Init::Ones));
    (defs, Index { embed, layers, norm, head })
}

/// One block's activations (or their gradients), each (B,T,·) unless said. W = (NH + 2·NKV)·hd.
#[derive(Clone, Copy)]
struct LayerActs {
    norm1: View,
    /// (N)
    norm1_rstd: View,
    /// (N,W): q, k and v before RoPE
    qkv: View,
    /// (N,W): after RoPE (v copied)
    qkv_rot: View,
    atty: View,
    /// What attention saves: (B,NH,T,T) probabilities or (B,NH,T) log-sum-exp (`Attention`).
    att: View,
    attproj: View,
    res2: View,
    norm2: View,
    norm2_rstd: View,
    /// (N,2I): gate and up
    gate_up: View,
    /// (N,I)
    swiglu: View,
    mlp: View,
    res3: View,
}

/// A frame's activations, or the activation gradients, shared by every block as GPT-2's are (see
/// `gpt2::Acts`): the residual stream's gradient alternates between two buffers, and within a block
/// tensors whose lives do not overlap share a buffer.
struct Acts {
    shape: BatchShape,
    encoded: View,
    layers: Vec<LayerActs>,
    norm: View,
    norm_rstd: View,
}

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
    let l = llama(cfg);
    let (n, c, i) = (s.tokens(), cfg.n_embd, l.intermediate_size);
    let w = qkv_width(c, cfg.n_head, l.n_kv_head);
    let att_len = attention.saved_len(s, cfg.n_head);
    let mut a = ActAlloc::new(be, grads, scalar, label, acts);
    let mut layers: Vec<LayerActs> = Vec::new();
    for layer in 0..cfg.n_layer {
        if grads {
            let res3 = a.residual_grad(layer, layer.checked_sub(2).map(|k| layers[k].res3), n * c)?;
            if layer > 0 {
                layers.push(LayerActs { res3, ..layers[0] });
                continue;
            }
            // In backward order: mlp, norm2, attproj and norm1 live one after another; so do gate_up
            // and qkv_rot, and swiglu, the attention-score scratch and qkv.
            let x1 = a.branch(n * c, "mlp, norm2, attention projection, norm1 (every block)")?;
            let y1 = a.branch((n * 2 * i).max(n * w), "gate and up, rotated qkv (every block)")?;
            let y2 =
                a.branch((n * i).max(n * w).max(att_len), "swiglu, attention scores, qkv (every block)")?;
            layers.push(LayerActs {
                norm1: x1,
                norm1_rstd: scalar,
                qkv: y2.slice(0, n * w),
                qkv_rot: y1.slice(0, n * w),
                atty: a.branch(n * c, "attention (every block)")?,
                att: y2.slice(0, att_len),
                attproj: x1,
                res2: a.tensor(n * c, "residual 2 (every block)")?,
                norm2: x1,
                norm2_rstd: scalar,
                gate_up: y1.slice(0, n * 2 * i),
                swiglu: y2.slice(0, n * i),
                mlp: x1,
                res3,
            });
            continue;
        }
        let p = |x: &str| format!("layers.{layer}.{x}");
        layers.push(LayerActs {
            norm1: a.tensor(n * c, &p("input norm"))?,
            norm1_rstd: a.stat(n, &p("input norm rstd"))?,
            qkv: a.tensor(n * w, &p("qkv"))?,
            qkv_rot: a.tensor(n * w, &p("qkv after rope"))?,
            atty: a.tensor(n * c, &p("attention"))?,
            att: a.attention_saved(attention, att_len, &p("attention probabilities or log-sum-exp"))?,
            attproj: a.tensor(n * c, &p("attention projection"))?,
            res2: a.tensor(n * c, &p("residual 2"))?,
            norm2: a.tensor(n * c, &p("post-attention norm"))?,
            norm2_rstd: a.stat(n, &p("post-attention norm rstd"))?,
            gate_up: a.tensor(n * 2 * i, &p("gate and up"))?,
            swiglu: a.tensor(n * i, &p("swiglu"))?,
            mlp: a.tensor(n * c, &p("mlp"))?,
            res3: a.tensor(n * c, &p("residual 3"))?,
        });
    }
    Ok(Acts {
        shape: s,
        encoded: a.tensor(n * c, "embedding")?,
        layers,
        norm: a.branch(n * c, "final norm")?,
        norm_rstd: a.stat(n, "final norm rstd")?,
    })
}

/// Llama as a [`Network`].
pub struct LlamaNet {
    config: ModelConfig,
    llama: LlamaConfig,
    attention: Attention,
    /// The element type of forward activations.
    acts: DType,
    index: Index,
    frames: Vec<Acts>,
    grads: Option<Acts>,
    /// RoPE's cos/sin table for positions 0..n_positions ([`rope_table`]), shared by every frame.
    rope: Option<View>,
}

impl LlamaNet {
    /// `acts` is the element type of the forward activations (`DType::Half` in mixed precision).
    pub fn new(config: &ModelConfig, attention: Attention, acts: DType) -> Self {
        LlamaNet {
            acts,
            config: *config,
            llama: llama(config),
            attention,
            index: params(config).1,
            frames: Vec::new(),
            grads: None,
            rope: None,
        }
    }

    fn grads(&self) -> &Acts {
        self.grads.as_ref().expect("the training plan exists before backward ops are built")
    }

    fn rope(&self) -> View {
        self.rope.expect("a frame exists before ops are built")
    }
}

impl Network for LlamaNet {
    fn add_frame(
        &mut self,
        be: &mut dyn Backend,
        shape: BatchShape,
        scalar: View,
        label: &str,
        acts: DType,
    ) -> Result<usize> {
        if self.rope.is_none() {
            let table = rope_table(self.llama.rope_theta, self.config.head_size(), self.config.n_positions);
            let view = View::new(be.alloc(DType::F32, table.len(), "rope cos/sin table")?, 0, table.len());
            be.write_f32(view, &table)?;
            self.rope = Some(view);
        }
        self.frames.push(alloc_acts(be, &self.config, self.attention, shape, false, scalar, label, acts)?);
        Ok(self.frames.len() - 1)
    }

    fn add_training(
        &mut self,
        be: &mut dyn Backend,
        dropout: Option<DropoutSeed>,
        scalar: View,
    ) -> Result<()> {
        if dropout.is_some() {
            return Err(Error::Invalid(
                "dropout is applied by arch = \"gpt2\" only; set dropout = 0 for a Llama".into(),
            ));
        }
        let shape = self.frames[0].shape;
        self.grads = Some(alloc_acts(be, &self.config, self.attention, shape, true, scalar, "", self.acts)?);
        Ok(())
    }

    fn hidden(&self, frame: usize) -> View {
        self.frames[frame].norm
    }

    fn hidden_grad(&self) -> View {
        self.grads().norm
    }

    fn head(&self) -> usize {
        self.index.head
    }

    fn saved(&self, frame: usize) -> Vec<View> {
        let a = &self.frames[frame];
        let mut acts = vec![a.encoded, a.norm, a.norm_rstd];
        for l in &a.layers {
            acts.extend([l.norm1, l.norm1_rstd, l.qkv, l.qkv_rot, l.atty, l.att, l.attproj]);
            acts.extend([l.res2, l.norm2, l.norm2_rstd, l.gate_up, l.swiglu, l.mlp, l.res3]);
        }
        acts
    }

    fn forward(&self, frame: usize, io: &Io, ops: &mut Vec<Op>) {
        let (cfg, ll, a, ix) = (&self.config, &self.llama, &self.frames[frame], &self.index);
        let s = io.shape;
        let (n, c, i, hd) = (s.tokens(), cfg.n_embd, ll.intermediate_size, cfg.head_size());
        let (nh, nkv) = (cfg.n_head, ll.n_kv_head);
        let w = qkv_width(c, nh, nkv);
        let eps = ll.norm_eps as f32;
        let p = |i: usize| io.params.at(i);
        let linear = |out: View, inp: View, weight: View, k: usize, nn: usize| Op::MatmulForward {
            out,
            inp,
            weight,
            bias: None,
            m: n,
            k,
            n: nn,
            layout: WeightLayout::OutIn,
        };
        ops.push(Op::EncoderForward {
            out: a.encoded,
            tokens: io.tokens,
            wte: p(ix.embed),
            wpe: None,
            b: s.b,
            t: s.t,
            c,
        });
        let mut x = a.encoded;
        for (la, li) in a.layers.iter().zip(&ix.layers) {
            ops.extend([
                Op::RmsnormForward {
                    out: la.norm1,
                    rstd: la.norm1_rstd,
                    inp: x,
                    weight: p(li.input_norm),
                    n,
                    c,
                    eps,
                },
                linear(la.qkv, la.norm1, io.params.span(li.q, li.v), c, w),
                Op::RopeForward {
                    out: la.qkv_rot,
                    inp: la.qkv,
                    positions: io.positions,
                    table: self.rope(),
                    n,
                    width: w,
                    heads: nh + nkv,
                    hd,
                },
                self.attention.forward(la.atty, la.att, la.qkv_rot, s, c, nh, nkv, None),
                linear(la.attproj, la.atty, p(li.o), c, c),
                Op::ResidualForward { out: la.res2, inp1: x, inp2: la.attproj, n: n * c },
                Op::RmsnormForward {
                    out: la.norm2,
                    rstd: la.norm2_rstd,
                    inp: la.res2,
                    weight: p(li.post_norm),
                    n,
                    c,
                    eps,
                },
                linear(la.gate_up, la.norm2, io.params.span(li.gate, li.up), c, 2 * i),
                Op::SwigluForward { out: la.swiglu, inp: la.gate_up, n, i },
                linear(la.mlp, la.swiglu, p(li.down), i, c),
                Op::ResidualForward { out: la.res3, inp1: la.res2, inp2: la.mlp, n: n * c },
            ]);
            x = la.res3;
        }
        ops.push(Op::RmsnormForward {
            out: a.norm,
            rstd: a.norm_rstd,
            inp: x,
            weight: p(ix.norm),
            n,
            c,
            eps,
        });
    }

    fn backward(&self, io: &Io, grads: Weights, ops: &mut Vec<Op>) {
        let (cfg, ll, a, d, ix) = (&self.config, &self.llama, &self.frames[0], self.grads(), &self.index);
        let s = io.shape;
        let (n, c, i, hd) = (s.tokens(), cfg.n_embd, ll.intermediate_size, cfg.head_size());
        let (nh, nkv) = (cfg.n_head, ll.n_kv_head);
        let w = qkv_width(c, nh, nkv);
        let (p, g) = (|i: usize| io.params.at(i), |i: usize| grads.at(i));
        let linear = |dinp: View, dout: View, inp: View, weight: View, dweight: View, k: usize, nn: usize| {
            Op::MatmulBackward {
                dinp,
                dweight,
                dbias: None,
                dout,
                inp,
                weight,
                m: n,
                k,
                n: nn,
                layout: WeightLayout::OutIn,
            }
        };
        // Each shared gradient buffer is zeroed just before the op that first accumulates into it.
        let zero = |ops: &mut Vec<Op>, views: &[View]| ops.extend(views.iter().map(|&out| Op::Zero { out }));
        let last = a.layers.last().map_or(a.encoded, |la| la.res3);
        let dlast = d.layers.last().map_or(d.encoded, |la| la.res3);
        zero(ops, &[d.encoded, dlast]);
        ops.push(Op::RmsnormBackward {
            dinp: dlast,
            dweight: g(ix.norm),
            dout: d.norm,
            inp: last,
            weight: p(ix.norm),
            rstd: a.norm_rstd,
            n,
            c,
        });
        for layer in (0..cfg.n_layer).rev() {
            let (la, da, li) = (&a.layers[layer], &d.layers[layer], &ix.layers[layer]);
            let (x, dx) = if layer == 0 {
                (a.encoded, d.encoded)
            } else {
                (a.layers[layer - 1].res3, d.layers[layer - 1].res3)
            };
            if layer > 0 {
                zero(ops, &[dx]);
            }
            zero(ops, &[da.res2, da.mlp]);
            ops.push(Op::ResidualBackward { dinp1: da.res2, dinp2: da.mlp, dout: da.res3, n: n * c });
            zero(ops, &[da.swiglu]);
            ops.push(linear(da.swiglu, da.mlp, la.swiglu, p(li.down), g(li.down), i, c));
            zero(ops, &[da.gate_up]);
            ops.push(Op::SwigluBackward { dinp: da.gate_up, inp: la.gate_up, dout: da.swiglu, n, i });
            zero(ops, &[da.norm2]);
            let (gate_up, dgate_up) = (io.params.span(li.gate, li.up), grads.span(li.gate, li.up));
            ops.extend([
                linear(da.norm2, da.gate_up, la.norm2, gate_up, dgate_up, c, 2 * i),
                Op::RmsnormBackward {
                    dinp: da.res2,
                    dweight: g(li.post_norm),
                    dout: da.norm2,
                    inp: la.res2,
                    weight: p(li.post_norm),
                    rstd: la.norm2_rstd,
                    n,
                    c,
                },
            ]);
            zero(ops, &[da.attproj]);
            ops.push(Op::ResidualBackward { dinp1: dx, dinp2: da.attproj, dout: da.res2, n: n * c });
            zero(ops, &[da.atty]);
            ops.push(linear(da.atty, da.attproj, la.atty, p(li.o), g(li.o), c, c));
            zero(ops, &[da.qkv_rot]);
            ops.push(
                self.attention
                    .backward(da.qkv_rot, da.att, da.atty, la.qkv_rot, la.atty, la.att, s, c, nh, nkv, None),
            );
            zero(ops, &[da.qkv]);
            ops.push(Op::RopeBackward {
                dinp: da.qkv,
                dout: da.qkv_rot,
                positions: io.positions,
                table: self.rope(),
                n,
                width: w,
                heads: nh + nkv,
                hd,
            });
            zero(ops, &[da.norm1]);
            let (qkv, dqkv) = (io.params.span(li.q, li.v), grads.span(li.q, li.v));
            ops.extend([
                linear(da.norm1, da.qkv, la.norm1, qkv, dqkv, c, w),
                Op::RmsnormBackward {
                    dinp: dx,
                    dweight: g(li.input_norm),
                    dout: da.norm1,
                    inp: x,
                    weight: p(li.input_norm),
                    rstd: la.norm1_rstd,
                    n,
                    c,
                },
            ]);
        }
        ops.push(Op::EncoderBackward {
            dwte: g(ix.embed),
            dwpe: None,
            dout: d.encoded,
            tokens: io.tokens,
            order: io.order,
            b: s.b,
            t: s.t,
            c,
        });
    }
}

/// The fields of a Llama `config.json` that matter; other keys are ignored, as transformers does.
#[derive(serde::Deserialize)]
struct HfConfig {
    hidden_size: usize,
    intermediate_size: usize,
    num_attention_heads: usize,
    num_hidden_layers: usize,
    num_key_value_heads: Option<usize>,
    vocab_size: usize,
    max_position_embeddings: usize,
    rms_norm_eps: Option<f64>,
    rope_theta: Option<f64>,
    rope_parameters: Option<serde_json::Value>,
    rope_scaling: Option<serde_json::Value>,
    hidden_act: Option<String>,
    attention_bias: Option<bool>,
    mlp_bias: Option<bool>,
    head_dim: Option<usize>,
    tie_word_embeddings: Option<bool>,
}

/// Reads a Llama `config.json` (already parsed as JSON); refuses, naming the field, what wgslm's
/// Llama does not compute.
pub fn parse_hf_config(path: &std::path::Path, json: serde_json::Value) -> Result<ModelConfig> {
    let hf: HfConfig = serde_json::from_value(json)
        .map_err(|e| Error::Invalid(format!("{}: not a Llama config.json: {e}", path.display())))?;
    let bad = |what: String| {
        Err(Error::Invalid(format!("{}: {what}; wgslm's Llama cannot load it", path.display())))
    };
    if let Some(act) = hf.hidden_act.as_deref().filter(|a| *a != "silu") {
        return bad(format!("hidden_act \"{act}\" is not \"silu\""));
    }
    if hf.attention_bias == Some(true) {
        return bad("attention_bias is true (wgslm's Llama has no biases)".into());
    }
    if hf.mlp_bias == Some(true) {
        return bad("mlp_bias is true (wgslm's Llama has no biases)".into());
    }
    if hf.num_attention_heads == 0 || hf.hidden_size % hf.num_attention_heads != 0 {
        return bad(format!(
            "hidden_size {} is not divisible by num_attention_heads {}",
            hf.hidden_size, hf.num_attention_heads
        ));
    }
    let head_size = hf.hidden_size / hf.num_attention_heads;
    if let Some(hd) = hf.head_dim.filter(|&hd| hd != head_size) {
        return bad(format!("head_dim {hd} is not hidden_size / num_attention_heads = {head_size}"));
    }
    // transformers 5 writes `rope_parameters`; older files a top-level `rope_theta` and
    // `rope_scaling`. Either may say which RoPE it is; only the default one is computed here.
    let mut theta = hf.rope_theta;
    for (field, value) in [("rope_parameters", &hf.rope_parameters), ("rope_scaling", &hf.rope_scaling)] {
        let Some(obj) = value.as_ref().filter(|v| !v.is_null()) else { continue };
        let kind = obj.get("rope_type").or_else(|| obj.get("type")).and_then(|t| t.as_str());
        if let Some(kind) = kind.filter(|k| *k != "default") {
            return bad(format!("{field}.rope_type is \"{kind}\" (only the default RoPE is supported)"));
        }
        if let Some(t) = obj.get("rope_theta") {
            theta = Some(t.as_f64().ok_or_else(|| {
                Error::Invalid(format!("{}: {field}.rope_theta is not a number", path.display()))
            })?);
        }
    }
    let l = LlamaConfig {
        n_kv_head: hf.num_key_value_heads.unwrap_or(hf.num_attention_heads),
        intermediate_size: hf.intermediate_size,
        rope_theta: theta.unwrap_or(10_000.0),
        norm_eps: hf.rms_norm_eps.unwrap_or(1e-6),
        tie_embeddings: hf.tie_word_embeddings.unwrap_or(false),
    };
    Ok(ModelConfig {
        arch: Arch::Llama(l),
        n_layer: hf.num_hidden_layers,
        n_head: hf.num_attention_heads,
        n_embd: hf.hidden_size,
        vocab_size: hf.vocab_size,
        n_positions: hf.max_position_embeddings,
    })
}

/// The Llama `config.json` transformers needs to rebuild the model, with the fields transformers 5
/// writes (`rope_parameters`) and the top-level `rope_theta` older versions read.
pub fn hf_config(config: &ModelConfig, l: &LlamaConfig, bos_eos: Option<u32>) -> serde_json::Value {
    serde_json::json!({
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "attention_bias": false,
        "attention_dropout": 0.0,
        "bos_token_id": bos_eos,
        "eos_token_id": bos_eos,
        "head_dim": config.head_size(),
        "hidden_act": "silu",
        "hidden_size": config.n_embd,
        "initializer_range": 0.02,
        "intermediate_size": l.intermediate_size,
        "max_position_embeddings": config.n_positions,
        "mlp_bias": false,
        "num_attention_heads": config.n_head,
        "num_hidden_layers": config.n_layer,
        "num_key_value_heads": l.n_kv_head,
        "pretraining_tp": 1,
        "rms_norm_eps": l.norm_eps,
        "rope_parameters": { "rope_theta": l.rope_theta, "rope_type": "default" },
        "rope_theta": l.rope_theta,
        "tie_word_embeddings": l.tie_embeddings,
        "torch_dtype": "float32",
        "use_cache": true,
        "vocab_size": config.vocab_size,
    })
}
