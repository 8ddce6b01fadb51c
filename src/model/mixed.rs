//! Mixed precision (`precision = "bf16" | "f16"`): a pass over a program of ops that moves the
//! network's activations into 16-bit storage and rounds every matmul operand to 16 bits, while
//! every kernel still computes in f32.
//!
//! What is half and where rounding happens (docs/ARCHITECTURE.md, "Mixed precision"):
//! - **Activations** (`ActAlloc::tensor` of a forward frame: every tensor a block passes on or the
//!   backward pass reads, the residual stream included) live in `DType::Half` buffers. An op that
//!   writes one writes f32 into a scratch buffer, then [`Op::Round`] rounds it into the half tensor;
//!   an op that reads one gets it widened ([`Op::Widen`], exact) into a scratch buffer first.
//! - **Weights**: the master weights, gradients and AdamW moments stay f32. A half copy of the
//!   parameters (same element offsets) is rounded from the master after every update and every
//!   upload ([`Lowering::refresh`]); each matmul reads its weight from the copy.
//! - **The logits** are 16-bit (the head's matmul writes them through a scratch and `Round`); the
//!   cross-entropy reads them widened, and its gradient overwrites them in place, on their widening.
//! - **The gradients inside a block's branches** (of the norms' outputs, q/k/v, the attention
//!   output, the projections, the MLP's hidden layer; `ActAlloc::branch`) are 16-bit: a backward op
//!   that adds into one adds into its f32 widening, or into zeros after a zeroing nothing read
//!   (whose 16-bit write is then dropped), and the sum is rounded once.
//! - **Matmul operands that live in f32** are rounded in place or into scratch ([`Op::Quantize`]).
//!   GPT-2's and Llama's programs have none left (every output gradient a matmul reads is 16-bit);
//!   the rule stays for programs that do.
//! - Products and sums stay f32, as do the per-row statistics (norm means and rstd, log-sum-exp),
//!   the loss, the gradients of the residual stream and the embedding (which add up across the
//!   blocks), the gradient norm and the optimizer.
//!
//! The pass is architecture-free: it sees only ops and the element type of their buffers, so GPT-2,
//! Llama and both attention variants get the same treatment, and the CPU backend runs the same
//! lowered program (its twins round with the `half` crate) as the GPU.

use std::collections::BTreeMap;

use crate::backend::{Backend, BufId, DType, HalfFormat, Op, View};
use crate::{Error, Result};

/// How a model stores what its matmuls read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Precision {
    #[default]
    F32,
    Bf16,
    F16,
}

impl Precision {
    pub const NAMES: [&'static str; 3] = ["f32", "bf16", "f16"];

    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "f32" => Some(Precision::F32),
            "bf16" => Some(Precision::Bf16),
            "f16" => Some(Precision::F16),
            _ => None,
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
            Precision::F16 => "f16",
        }
    }

    /// The 16-bit format, or `None` in f32.
    pub fn format(&self) -> Option<HalfFormat> {
        match self {
            Precision::F32 => None,
            Precision::Bf16 => Some(HalfFormat::Bf16),
            Precision::F16 => Some(HalfFormat::F16),
        }
    }

    /// The element type of activations.
    pub fn activations(&self) -> DType {
        if self.format().is_some() {
            DType::Half
        } else {
            DType::F32
        }
    }

    /// Whether training needs dynamic loss scaling (f16's narrow range; bf16 has f32's).
    pub fn loss_scaling(&self) -> bool {
        *self == Precision::F16
    }
}

/// Rows of a half tensor a kernel may bind from: 64 words (256 bytes).
const WORD_ALIGN: usize = 64;

/// The most elements one refresh op converts (64 MiB of f32), a multiple of 2 · WORD_ALIGN.
const REFRESH_CHUNK: usize = 1 << 24;

/// The most f32 scratch elements (3 MiB) an op's row-sized conversions should need: an op over more
/// is split into pieces over fewer rows (or sequences), each converted on its own, when it can be
/// ([`split`]). Without it the scratch is as large as the largest activation (the MLP's, 4·C wide),
/// which is most of what 16-bit activations save.
pub const SCRATCH_CAP: usize = 3 << 18;

/// The word view of a half buffer that holds elements `v`, and the index of `v`'s first element in
/// it: the words start on a 256-byte boundary, as every binding must.
fn words(v: View) -> (View, usize) {
    let start = v.offset / 2 / WORD_ALIGN * WORD_ALIGN;
    let first = v.offset - 2 * start;
    (View::new(v.buf, start, (first + v.len).div_ceil(2)), first)
}

/// The elements of `v` as f32, widened on the host when `v` is 16-bit.
pub fn read(be: &mut dyn Backend, v: View, format: Option<HalfFormat>) -> Result<Vec<f32>> {
    let (DType::Half, Some(format)) = (be.dtype(v.buf), format) else { return be.read_f32(v) };
    let (w, first) = words(v);
    let mut packed = vec![0; w.len];
    be.read_u32_into(w, &mut packed)?;
    let mut out = vec![0.0; v.len];
    crate::cpu::widen_half(&mut out, &packed, first, v.len, format);
    Ok(out)
}

/// Whether `op` keeps what its outputs held: it adds into them (a 16-bit one then starts from its
/// widening, or from zeros), or writes only part of them (a row).
fn accumulates(op: &Op) -> bool {
    match op {
        Op::Matmul { accumulate, .. } => *accumulate,
        Op::ReduceSum { .. } | Op::AdamwUpdate { .. } | Op::ScatterRow { .. } => true,
        _ => op.name().ends_with("_backward"),
    }
}

/// Outputs of a backward op that it overwrites whole, scratch of its own: nothing to widen first.
fn overwritten(op: &Op) -> Vec<View> {
    match *op {
        Op::FlashAttentionBackward { dsum, .. } => vec![dsum],
        Op::AttentionBackward { datt, .. } => vec![datt],
        _ => vec![],
    }
}

/// Whether `op` may write a 16-bit tensor: not the ops whose outputs are parameters, their
/// gradients or optimizer state, which are f32 by design (a 16-bit one is a schedule's mistake).
fn may_write_half(op: &Op) -> bool {
    !matches!(
        op,
        Op::EncoderBackward { .. } | Op::AdamwUpdate { .. } | Op::ReduceSum { .. } | Op::GlobalNorm { .. }
    )
}

/// The matmul operands of `op` (weights, activations, output gradients), which are read in half.
fn matmul_operands(op: &Op) -> Vec<View> {
    match *op {
        Op::MatmulForward { inp, weight, .. } => vec![inp, weight],
        Op::MatmulBackward { dout, inp, weight, .. } => vec![dout, inp, weight],
        Op::Matmul { a, b, half: false, .. } => vec![a, b],
        _ => vec![],
    }
}

/// Whether `v` is dead after op `i` of `ops`: no later op reads any of it before one overwrites all
/// of it (or the program ends).
fn dead_after(ops: &[Op], i: usize, v: View) -> bool {
    for op in &ops[i + 1..] {
        if op.inputs().iter().any(|(w, _)| w.overlaps(&v)) {
            return false;
        }
        let covers = |w: &View| w.buf == v.buf && w.offset <= v.offset && v.end() <= w.end();
        if !accumulates(op) && op.outputs().iter().any(|(w, _)| covers(w)) {
            return true;
        }
    }
    true
}

/// Whether `v` was zeroed, whole, by the last op of `ops[..i]` that touches any of it: then an op
/// that adds into `v` can add into zeros instead of into its widening.
fn zeroed_before(ops: &[Op], i: usize, v: View) -> bool {
    let touches = |op: &Op| op.inputs().into_iter().chain(op.outputs()).any(|(w, _)| w.overlaps(&v));
    match ops[..i].iter().rev().find(|op| touches(op)) {
        Some(Op::Zero { out }) => out.buf == v.buf && out.offset <= v.offset && v.end() <= out.end(),
        _ => false,
    }
}

/// Whether the zeroing of the 16-bit view `v` by op `i` need not happen: the ops after it write
/// every element of it (starting from zeros, [`zeroed_before`]) before any op reads it. Without this
/// a zeroed gradient would be zeroed in f32, rounded into 16 bits, then widened again.
fn zero_is_dead(ops: &[Op], i: usize, v: View) -> bool {
    let mut covered: Vec<(usize, usize)> = Vec::new();
    for op in &ops[i + 1..] {
        if op.inputs().iter().any(|(w, _)| w.overlaps(&v)) {
            return false;
        }
        for (w, _) in op.outputs() {
            if !w.overlaps(&v) {
                continue;
            }
            // An op adding into what an earlier one wrote widens it, and would read the part of it
            // that is not written yet: only disjoint pieces are followed.
            let again = covered.iter().any(|&(a, b)| w.offset < b && a < w.end());
            if w.offset < v.offset || w.end() > v.end() || (again && accumulates(op)) {
                return false;
            }
            covered.push((w.offset, w.end()));
        }
        covered.sort_unstable();
        let mut reach = v.offset;
        for &(a, b) in &covered {
            if a > reach {
                break;
            }
            reach = reach.max(b);
        }
        if reach >= v.end() {
            return true;
        }
    }
    false
}

/// f32 scratch buffers that grow on demand (programs prepared before keep the buffer they got).
#[derive(Default)]
struct Scratch {
    bufs: Vec<(BufId, usize)>,
}

impl Scratch {
    /// Buffer `slot`, of at least `len` elements.
    fn get(&mut self, be: &mut dyn Backend, slot: usize, len: usize, what: &str) -> Result<BufId> {
        if slot == self.bufs.len() {
            self.bufs.push((BufId(usize::MAX), 0));
        }
        if self.bufs[slot].1 < len {
            let id = be.alloc(DType::F32, len, &format!("mixed-precision scratch ({what} {slot})"))?;
            self.bufs[slot] = (id, len);
        }
        Ok(self.bufs[slot].0)
    }
}

/// Elements of `len`, rounded up so that the next view in an arena starts on a 256-byte boundary.
fn aligned(len: usize) -> usize {
    len.div_ceil(WORD_ALIGN) * WORD_ALIGN
}

/// The lowering pass of one model, with its half copy of the parameters and its scratch buffers.
pub struct Lowering {
    format: HalfFormat,
    params: BufId,
    total: usize,
    /// The parameters in 16 bits, element for element (`DType::Half`).
    params_half: BufId,
    /// One buffer all of an op's widened and quantized inputs share (read-only bindings of one
    /// buffer may coexist), laid end to end.
    inputs: Scratch,
    /// One buffer per half output of an op (a writable binding has its buffer to itself).
    outputs: Scratch,
    /// [`SCRATCH_CAP`], or what a test sets.
    cap: usize,
}

impl Lowering {
    /// A pass for the model whose f32 parameters are `params` (`total` elements).
    pub fn new(be: &mut dyn Backend, format: HalfFormat, params: BufId, total: usize) -> Result<Self> {
        let params_half = be.alloc(DType::Half, total, &format!("parameters ({})", format.name()))?;
        Ok(Lowering {
            format,
            params,
            total,
            params_half,
            inputs: Scratch::default(),
            outputs: Scratch::default(),
            cap: SCRATCH_CAP,
        })
    }

    /// Splits ops whose conversions need more than `elements` of scratch (tests use small caps to
    /// split small models).
    pub fn set_scratch_cap(&mut self, elements: usize) {
        self.cap = elements.max(1);
    }

    /// The row-sized scratch op `i` of `ops` would need converted whole: what its conversions
    /// ([`Lowering::conversions`]) put in the input arena but the weights (whose size does not shrink
    /// with the rows), or its largest 16-bit output, whichever is more. 0 for the conversions
    /// themselves and for ops that cannot be lowered (`lower` reports those).
    fn row_scratch(&self, be: &dyn Backend, ops: &[Op], i: usize) -> usize {
        let Ok(Some(c)) = self.conversions(be, ops, i) else { return 0 };
        let widened = c.widen.iter().filter(|(_, half)| half.buf != self.params_half).map(|(v, _)| v.len);
        let ins: usize = widened.chain(c.quantize.iter().map(|v| v.len)).sum();
        ins.max(c.outs.iter().map(|(v, _)| v.len).max().unwrap_or(0))
    }

    /// `ops` with every op that needs more than the cap of scratch split where it can be.
    fn split_large(&self, be: &dyn Backend, ops: &[Op]) -> Vec<Op> {
        let mut out = Vec::with_capacity(ops.len());
        for (i, op) in ops.iter().enumerate() {
            let need = self.row_scratch(be, ops, i);
            let pieces = (need > self.cap).then(|| split(op, self.cap as f64 / need as f64)).flatten();
            // Every f32 or u32 view a kernel binds must start on a 256-byte boundary.
            let aligned = |ops: &Vec<Op>| {
                ops.iter().all(|o| {
                    o.inputs()
                        .into_iter()
                        .chain(o.outputs())
                        .all(|(v, _)| be.dtype(v.buf) == DType::Half || v.offset % WORD_ALIGN == 0)
                })
            };
            match pieces {
                Some(pieces) if aligned(&pieces) => out.extend(pieces),
                _ => out.push(op.clone()),
            }
        }
        out
    }

    /// The ops that round the master parameters into their half copy.
    pub fn refresh(&self) -> Vec<Op> {
        (0..self.total)
            .step_by(REFRESH_CHUNK)
            .map(|at| {
                let n = REFRESH_CHUNK.min(self.total - at);
                let (out, first) = words(View::new(self.params_half, at, n));
                Op::Round { out, inp: View::new(self.params, at, n), first, n, format: self.format }
            })
            .collect()
    }

    /// What op `i` of `ops` needs converted (None for the conversions themselves).
    fn conversions(&self, be: &dyn Backend, ops: &[Op], i: usize) -> Result<Option<Conversions>> {
        let op = &ops[i];
        if matches!(op, Op::Round { .. } | Op::Widen { .. } | Op::Quantize { .. }) {
            return Ok(None);
        }
        let is_half = |v: &View| be.dtype(v.buf) == DType::Half;
        let half_outs: Vec<View> = op.outputs().into_iter().map(|(v, _)| v).filter(is_half).collect();
        // An input that is one of the outputs, exactly, is an op working in place (the logits'
        // gradient overwriting the logits): it reads and writes the output's slot.
        let in_place_io = |o: &View| op.inputs().iter().any(|(v, _)| v == o);
        if !half_outs.is_empty() && !may_write_half(op) {
            return Err(Error::Invalid(format!(
                "mixed precision: {} writes a 16-bit tensor; its outputs are f32 by design",
                op.name()
            )));
        }
        if op.inputs().iter().any(|(v, _)| half_outs.iter().any(|o| o.overlaps(v) && o != v)) {
            return Err(Error::Invalid(format!(
                "mixed precision: {} reads part of the 16-bit tensor it writes; it cannot be lowered",
                op.name()
            )));
        }
        let outs = half_outs
            .into_iter()
            .map(|o| {
                let start = if in_place_io(&o) {
                    Start::Widen
                } else if !accumulates(op) || overwritten(op).contains(&o) {
                    Start::Blank
                } else if zeroed_before(ops, i, o) {
                    Start::Zero
                } else {
                    Start::Widen
                };
                (o, start)
            })
            .collect::<Vec<_>>();
        // Every input that needs converting, each once, in a fixed order.
        let mut widen: BTreeMap<View, (View, View)> = BTreeMap::new();
        let mut quantize: BTreeMap<View, View> = BTreeMap::new();
        for (v, _) in op.inputs() {
            if is_half(&v) && !outs.iter().any(|(o, _)| *o == v) {
                widen.insert(v, (v, v));
            }
        }
        for v in matmul_operands(op) {
            if v.buf == self.params {
                widen.insert(v, (v, View::new(self.params_half, v.offset, v.len)));
            } else if !is_half(&v) {
                quantize.insert(v, v);
            }
        }
        // An f32 operand nothing reads afterwards is rounded where it lies (the logits' gradient,
        // an activation gradient the next block zeroes): no scratch for the largest operand.
        let (in_place, quantize): (Vec<View>, Vec<View>) = quantize
            .into_values()
            .partition(|v| dead_after(ops, i, *v) && !outs.iter().any(|(o, _)| o.overlaps(v)));
        Ok(Some(Conversions { widen: widen.into_values().collect(), quantize, in_place, outs }))
    }

    /// `ops` with their activations in half and their matmul operands rounded (see the module doc).
    pub fn lower(&mut self, be: &mut dyn Backend, ops: &[Op]) -> Result<Vec<Op>> {
        let format = self.format;
        let ops = &self.split_large(be, ops)[..];
        // A zeroing of a 16-bit tensor that the ops after it overwrite whole is dropped.
        let dropped: Vec<bool> = (0..ops.len())
            .map(|i| matches!(ops[i], Op::Zero { out } if be.dtype(out.buf) == DType::Half && zero_is_dead(ops, i, out)))
            .collect();
        let plans: Vec<Option<Conversions>> = (0..ops.len())
            .map(|i| if dropped[i] { Ok(None) } else { self.conversions(be, ops, i) })
            .collect::<Result<_>>()?;
        // The scratch the whole program needs, allocated before any of it is used: a buffer that
        // grew mid-program would leave the earlier ops holding the smaller one.
        let need = plans.iter().flatten().map(Conversions::input_elements).max().unwrap_or(0);
        let arena = if need > 0 { Some(self.inputs.get(be, 0, need, "inputs")?) } else { None };
        let slots = plans.iter().flatten().map(|c| c.outs.len()).max().unwrap_or(0);
        let mut outputs = Vec::with_capacity(slots);
        for slot in 0..slots {
            let len = plans.iter().flatten().filter_map(|c| c.outs.get(slot)).map(|(v, _)| v.len).max();
            outputs.push(self.outputs.get(be, slot, len.unwrap_or(1), "output")?);
        }
        let mut lowered = Vec::with_capacity(ops.len() * 3);
        // The weights the previous op widened, and where in the arena: the pieces of a split op
        // read the same weight from the same place, so only the first piece widens it. Only the
        // conversions write the arena, and only the refresh (passed through, below) the half copy.
        let mut held: Vec<(View, View)> = Vec::new();
        for ((op, plan), dropped) in ops.iter().zip(plans).zip(dropped) {
            if dropped {
                continue;
            }
            let Some(c) = plan else {
                held.clear();
                lowered.push(op.clone());
                continue;
            };
            let mut widened = Vec::new();
            let mut map: BTreeMap<View, View> = BTreeMap::new();
            lowered.extend(c.in_place.iter().map(|&v| Op::Quantize { out: v, inp: v, n: v.len, format }));
            let mut at = 0;
            let mut next = |len: usize| {
                let s = View::new(arena.expect("sized above"), at, len);
                at += aligned(len);
                s
            };
            for (v, half) in c.widen {
                let s = next(v.len);
                if half.buf == self.params_half {
                    widened.push((s, half));
                }
                if !held.contains(&(s, half)) {
                    let (inp, first) = words(half);
                    lowered.push(Op::Widen { out: s, inp, first, n: v.len, format });
                }
                map.insert(v, s);
            }
            held = widened;
            for v in c.quantize {
                let s = next(v.len);
                lowered.push(Op::Quantize { out: s, inp: v, n: v.len, format });
                map.insert(v, s);
            }
            let mut after = Vec::new();
            for (slot, (v, start)) in c.outs.into_iter().enumerate() {
                let s = View::new(outputs[slot], 0, v.len);
                let (out, first) = words(v);
                match start {
                    Start::Blank => {}
                    Start::Zero => lowered.push(Op::Zero { out: s }),
                    Start::Widen => lowered.push(Op::Widen { out: s, inp: out, first, n: v.len, format }),
                }
                after.push(Op::Round { out, inp: s, first, n: v.len, format });
                map.insert(v, s);
            }
            lowered.push(op.map_views(&mut |v| map.get(&v).copied().unwrap_or(v)));
            lowered.extend(after);
        }
        Ok(lowered)
    }
}

/// `op` as ops over consecutive pieces of its rows, or of its sequences for attention, each a
/// `fraction` of the whole or less (but at least one unit), that together do what it does:
/// products and element-wise ops piece by piece; what sums over the rows (a weight's and a bias's
/// gradient) accumulates across the pieces, which the backward ops do anyway. Rows go in multiples of 64 (sequences: whole ones), so that the f32 views
/// of a piece stay 256-byte aligned where the op's were; the caller checks. None for ops it does not
/// know how to split, ops with dropout (its masks are numbered by element), or when one piece would
/// hold everything.
fn split(op: &Op, fraction: f64) -> Option<Vec<Op>> {
    // The pieces of `n` units (`per` a piece, a multiple of `unit`), each made by `make` from the
    // piece's `cut` (a view of `n` units of `width` elements, sliced to the piece; None for a view
    // of another size) and its count of units.
    type Cut<'a> = &'a dyn Fn(View, usize) -> Option<View>;
    let each = |n: usize, unit: usize, make: &dyn Fn(Cut, usize) -> Option<Op>| -> Option<Vec<Op>> {
        let per = ((n as f64 * fraction) as usize / unit * unit).max(unit);
        if per >= n {
            return None;
        }
        (0..n)
            .step_by(per)
            .map(|at| {
                let r = per.min(n - at);
                make(&|v: View, width: usize| (v.len == n * width).then(|| v.slice(at * width, r * width)), r)
            })
            .collect()
    };
    match *op {
        Op::MatmulForward { out, inp, weight, bias, m, k, n, layout } => each(m, 64, &|cut, r| {
            Some(Op::MatmulForward { out: cut(out, n)?, inp: cut(inp, k)?, weight, bias, m: r, k, n, layout })
        }),
        Op::MatmulBackward { dinp, dweight, dbias, dout, inp, weight, m, k, n, layout } => {
            each(m, 64, &|cut, r| {
                let (dinp, dout, inp) = (cut(dinp, k)?, cut(dout, n)?, cut(inp, k)?);
                Some(Op::MatmulBackward { dinp, dweight, dbias, dout, inp, weight, m: r, k, n, layout })
            })
        }
        Op::GeluForward { out, inp, n } => {
            each(n, 64, &|cut, e| Some(Op::GeluForward { out: cut(out, 1)?, inp: cut(inp, 1)?, n: e }))
        }
        Op::GeluBackward { dinp, inp, dout, n } => each(n, 64, &|cut, e| {
            Some(Op::GeluBackward { dinp: cut(dinp, 1)?, inp: cut(inp, 1)?, dout: cut(dout, 1)?, n: e })
        }),
        Op::SwigluForward { out, inp, n, i } => each(n, 64, &|cut, r| {
            Some(Op::SwigluForward { out: cut(out, i)?, inp: cut(inp, 2 * i)?, n: r, i })
        }),
        Op::SwigluBackward { dinp, inp, dout, n, i } => each(n, 64, &|cut, r| {
            let (dinp, inp, dout) = (cut(dinp, 2 * i)?, cut(inp, 2 * i)?, cut(dout, i)?);
            Some(Op::SwigluBackward { dinp, inp, dout, n: r, i })
        }),
        Op::EncoderForward { out, tokens, wte, wpe, b, t, c } => each(b, 1, &|cut, s| {
            Some(Op::EncoderForward { out: cut(out, t * c)?, tokens: cut(tokens, t)?, wte, wpe, b: s, t, c })
        }),
        Op::ResidualForward { out, inp1, inp2, n } => each(n, 64, &|cut, e| {
            Some(Op::ResidualForward { out: cut(out, 1)?, inp1: cut(inp1, 1)?, inp2: cut(inp2, 1)?, n: e })
        }),
        Op::ResidualBackward { dinp1, dinp2, dout, n } => each(n, 64, &|cut, e| {
            let (dinp1, dinp2, dout) = (cut(dinp1, 1)?, cut(dinp2, 1)?, cut(dout, 1)?);
            Some(Op::ResidualBackward { dinp1, dinp2, dout, n: e })
        }),
        Op::CrossentropyForward { losses, lse, logits, targets, n, v } => each(n, 64, &|cut, r| {
            let (losses, lse, logits, targets) =
                (cut(losses, 1)?, cut(lse, 1)?, cut(logits, v)?, cut(targets, 1)?);
            Some(Op::CrossentropyForward { losses, lse, logits, targets, n: r, v })
        }),
        Op::CrossentropyBackward { dlogits, logits, lse, targets, grad_scale, n, v, scale } => {
            each(n, 64, &|cut, r| {
                let (dlogits, logits, lse, targets) =
                    (cut(dlogits, v)?, cut(logits, v)?, cut(lse, 1)?, cut(targets, 1)?);
                Some(Op::CrossentropyBackward { dlogits, logits, lse, targets, grad_scale, n: r, v, scale })
            })
        }
        Op::LayernormForward { out, mean, rstd, inp, weight, bias, n, c } => each(n, 64, &|cut, r| {
            let (out, mean, rstd, inp) = (cut(out, c)?, cut(mean, 1)?, cut(rstd, 1)?, cut(inp, c)?);
            Some(Op::LayernormForward { out, mean, rstd, inp, weight, bias, n: r, c })
        }),
        Op::LayernormBackward { dinp, dweight, dbias, dout, inp, weight, mean, rstd, n, c } => {
            each(n, 64, &|cut, r| {
                let (dinp, dout, inp) = (cut(dinp, c)?, cut(dout, c)?, cut(inp, c)?);
                let (mean, rstd) = (cut(mean, 1)?, cut(rstd, 1)?);
                Some(Op::LayernormBackward { dinp, dweight, dbias, dout, inp, weight, mean, rstd, n: r, c })
            })
        }
        Op::RmsnormForward { out, rstd, inp, weight, n, c, eps } => each(n, 64, &|cut, r| {
            let (out, rstd, inp) = (cut(out, c)?, cut(rstd, 1)?, cut(inp, c)?);
            Some(Op::RmsnormForward { out, rstd, inp, weight, n: r, c, eps })
        }),
        Op::RmsnormBackward { dinp, dweight, dout, inp, weight, rstd, n, c } => each(n, 64, &|cut, r| {
            let (dinp, dout, inp, rstd) = (cut(dinp, c)?, cut(dout, c)?, cut(inp, c)?, cut(rstd, 1)?);
            Some(Op::RmsnormBackward { dinp, dweight, dout, inp, weight, rstd, n: r, c })
        }),
        Op::RopeForward { out, inp, positions, table, n, width, heads, hd } => each(n, 64, &|cut, r| {
            let (out, inp, positions) = (cut(out, width)?, cut(inp, width)?, cut(positions, 1)?);
            Some(Op::RopeForward { out, inp, positions, table, n: r, width, heads, hd })
        }),
        Op::RopeBackward { dinp, dout, positions, table, n, width, heads, hd } => each(n, 64, &|cut, r| {
            let (dinp, dout, positions) = (cut(dinp, width)?, cut(dout, width)?, cut(positions, 1)?);
            Some(Op::RopeBackward { dinp, dout, positions, table, n: r, width, heads, hd })
        }),
        Op::FlashAttentionForward { out, lse, qkv, b, t, c, nh, nkv, dropout: None } => {
            let w = crate::backend::qkv_width(c, nh, nkv);
            each(b, 1, &|cut, s| {
                let (out, lse, qkv) = (cut(out, t * c)?, cut(lse, nh * t)?, cut(qkv, t * w)?);
                Some(Op::FlashAttentionForward { out, lse, qkv, b: s, t, c, nh, nkv, dropout: None })
            })
        }
        Op::FlashAttentionBackward { dqkv, dsum, dout, qkv, out, lse, b, t, c, nh, nkv, dropout: None } => {
            let w = crate::backend::qkv_width(c, nh, nkv);
            each(b, 1, &|cut, s| {
                let (dqkv, dsum, dout) = (cut(dqkv, t * w)?, cut(dsum, nh * t)?, cut(dout, t * c)?);
                let (qkv, out, lse) = (cut(qkv, t * w)?, cut(out, t * c)?, cut(lse, nh * t)?);
                Some(Op::FlashAttentionBackward {
                    dqkv,
                    dsum,
                    dout,
                    qkv,
                    out,
                    lse,
                    b: s,
                    t,
                    c,
                    nh,
                    nkv,
                    dropout: None,
                })
            })
        }
        Op::AttentionForward { out, att, qkv, b, t, c, nh, nkv, dropout: None } => {
            let w = crate::backend::qkv_width(c, nh, nkv);
            each(b, 1, &|cut, s| {
                let (out, att, qkv) = (cut(out, t * c)?, cut(att, nh * t * t)?, cut(qkv, t * w)?);
                Some(Op::AttentionForward { out, att, qkv, b: s, t, c, nh, nkv, dropout: None })
            })
        }
        Op::AttentionBackward { dqkv, datt, dout, qkv, att, b, t, c, nh, nkv, dropout: None } => {
            let w = crate::backend::qkv_width(c, nh, nkv);
            each(b, 1, &|cut, s| {
                let (dqkv, datt, dout) = (cut(dqkv, t * w)?, cut(datt, nh * t * t)?, cut(dout, t * c)?);
                let (qkv, att) = (cut(qkv, t * w)?, cut(att, nh * t * t)?);
                Some(Op::AttentionBackward { dqkv, datt, dout, qkv, att, b: s, t, c, nh, nkv, dropout: None })
            })
        }
        _ => None,
    }
}

/// What the f32 slot of a 16-bit output holds when the op starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Start {
    /// Anything: the op overwrites it.
    Blank,
    /// Zeros: the op adds into an output that was zeroed and not touched since.
    Zero,
    /// The output widened: the op adds into it, or works on it in place.
    Widen,
}

/// What one op needs converted around it.
struct Conversions {
    /// (the op's view, where its 16-bit elements are): widened into the input arena.
    widen: Vec<(View, View)>,
    /// f32 operands rounded into the input arena.
    quantize: Vec<View>,
    /// f32 operands rounded where they lie (dead afterwards).
    in_place: Vec<View>,
    /// Half outputs: written to an output slot (which starts as `Start` says), then rounded into
    /// place.
    outs: Vec<(View, Start)>,
}

impl Conversions {
    fn input_elements(&self) -> usize {
        self.widen.iter().map(|(v, _)| aligned(v.len)).sum::<usize>()
            + self.quantize.iter().map(|v| aligned(v.len)).sum::<usize>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::CpuBackend;

    #[test]
    fn an_op_on_half_activations_is_wrapped_in_conversions() {
        let mut be = CpuBackend::new();
        let params = be.alloc(DType::F32, 256, "p").unwrap();
        let mut low = Lowering::new(&mut be, HalfFormat::Bf16, params, 256).unwrap();
        let x = View::new(be.alloc(DType::Half, 300, "x").unwrap(), 0, 300);
        let y = View::new(be.alloc(DType::Half, 300, "y").unwrap(), 0, 300);
        let ops = low.lower(&mut be, &[Op::GeluForward { out: y, inp: x, n: 300 }]).unwrap();
        let names: Vec<_> = ops.iter().map(|o| o.name()).collect();
        assert_eq!(names, ["widen_half", "gelu_forward", "round_half"]);
        for op in &ops {
            op.check().unwrap();
        }
        // A slice that starts mid-word binds from the 64-word boundary below it.
        let (w, first) = words(View::new(x.buf, 131, 20));
        assert_eq!((w.offset, first, w.len), (64, 3, 12));
    }

    #[test]
    fn matmul_weights_come_from_the_half_copy_and_f32_operands_are_quantized() {
        let mut be = CpuBackend::new();
        let params = be.alloc(DType::F32, 512, "p").unwrap();
        let mut low = Lowering::new(&mut be, HalfFormat::F16, params, 512).unwrap();
        let inp = View::new(be.alloc(DType::Half, 8, "x").unwrap(), 0, 8);
        let dout = View::new(be.alloc(DType::F32, 8, "dy").unwrap(), 0, 8);
        let (dinp, dweight) =
            (View::new(be.alloc(DType::F32, 8, "dx").unwrap(), 0, 8), View::new(params, 0, 4));
        let op = Op::MatmulBackward {
            dinp,
            dweight,
            dbias: None,
            dout,
            inp,
            weight: View::new(params, 128, 4),
            m: 4,
            k: 2,
            n: 2,
            layout: crate::backend::WeightLayout::InOut,
        };
        let ops = low.lower(&mut be, std::slice::from_ref(&op)).unwrap();
        let names: Vec<_> = ops.iter().map(|o| o.name()).collect();
        // Nothing reads dout afterwards: it is rounded in place.
        assert_eq!(names, ["quantize_half", "widen_half", "widen_half", "matmul_backward"]);
        assert!(matches!(ops[0], Op::Quantize { out, inp, .. } if out == dout && inp == dout));
        // Element 128 of the half copy is word 64, a 256-byte boundary.
        let from_copy = |op: &Op| matches!(op, Op::Widen { inp, first: 0, .. } if inp.buf == low.params_half && inp.offset == 64);
        assert!(from_copy(&ops[1]));
        // A later reader sees dout as it was: the rounded copy goes to scratch.
        let reader = Op::GeluForward { out: dinp, inp: dout, n: 8 };
        let ops = low.lower(&mut be, &[op, reader]).unwrap();
        assert!(matches!(ops[2], Op::Quantize { out, inp, .. } if inp == dout && out != dout));
        assert_eq!(low.refresh().len(), 1);
    }

    /// Every op `split` knows, over 16-bit activations, splits under a small cap into pieces that
    /// are well-formed ops (`Op::check`: every view the length the piece's shape needs).
    #[test]
    fn every_op_split_knows_splits_into_well_formed_pieces() {
        use crate::backend::{qkv_width, WeightLayout};
        let mut be = CpuBackend::new();
        let params = be.alloc(DType::F32, 1 << 16, "p").unwrap();
        let mut low = Lowering::new(&mut be, HalfFormat::Bf16, params, 1 << 16).unwrap();
        low.set_scratch_cap(64);
        let (b, t, c, nh, nkv, i) = (2, 64, 64, 2, 1, 96);
        let (n, w) = (b * t, qkv_width(c, nh, nkv));
        let mut tensor = |dtype: DType, len: usize| View::new(be.alloc(dtype, len, "t").unwrap(), 0, len);
        let (h, f) = (DType::Half, DType::F32);
        let weight = |at: usize, len: usize| View::new(params, at * 1024, len);
        // Every output its own tensor (Op::check refuses an output that overlaps another view).
        let (x, y, g, g2) = (tensor(h, n * c), tensor(h, n * c), tensor(f, n * c), tensor(f, n * c));
        let (qkv, qkv2, dqkv) = (tensor(h, n * w), tensor(h, n * w), tensor(f, n * w));
        let (lse, dsum, mean, rstd) =
            (tensor(f, b * nh * t), tensor(f, b * nh * t), tensor(f, n), tensor(f, n));
        let (att, datt) = (tensor(h, b * nh * t * t), tensor(f, b * nh * t * t));
        let (wide, wide2, dwide, dwide2) =
            (tensor(h, n * i), tensor(h, n * i), tensor(f, n * i), tensor(f, n * i));
        let (gate_up, dgate_up) = (tensor(h, n * 2 * i), tensor(f, n * 2 * i));
        let (tokens, table) = (tensor(DType::U32, n), tensor(f, t * (c / nh)));
        let (dw, db, db2, one) = (tensor(f, c * i), tensor(f, c), tensor(f, c), tensor(f, 1));
        let mm = WeightLayout::InOut;
        let (ln_w, ln_b, fc) = (weight(9, c), weight(10, c), weight(20, c * i));
        let ops = [
            Op::EncoderForward {
                out: x,
                tokens,
                wte: weight(0, 10 * c),
                wpe: Some(weight(1, t * c)),
                b,
                t,
                c,
            },
            Op::LayernormForward { out: y, mean, rstd, inp: x, weight: ln_w, bias: ln_b, n, c },
            Op::LayernormBackward {
                dinp: g,
                dweight: db,
                dbias: db2,
                dout: g2,
                inp: x,
                weight: ln_w,
                mean,
                rstd,
                n,
                c,
            },
            Op::RmsnormForward { out: y, rstd, inp: x, weight: ln_w, n, c, eps: 1e-5 },
            Op::RmsnormBackward { dinp: g, dweight: db, dout: g2, inp: x, weight: ln_w, rstd, n, c },
            Op::ResidualForward { out: y, inp1: x, inp2: x, n: n * c },
            Op::ResidualBackward { dinp1: g, dinp2: y, dout: g2, n: n * c },
            Op::CrossentropyForward { losses: mean, lse: rstd, logits: wide, targets: tokens, n, v: i },
            Op::CrossentropyBackward {
                dlogits: wide,
                logits: wide,
                lse: rstd,
                targets: tokens,
                grad_scale: one,
                n,
                v: i,
                scale: 0.5,
            },
            Op::RopeForward {
                out: qkv2,
                inp: qkv,
                positions: tokens,
                table,
                n,
                width: w,
                heads: nh + nkv,
                hd: c / nh,
            },
            Op::GeluForward { out: wide2, inp: wide, n: n * i },
            Op::GeluBackward { dinp: dwide2, inp: wide, dout: dwide, n: n * i },
            Op::SwigluForward { out: wide, inp: gate_up, n, i },
            Op::SwigluBackward { dinp: dgate_up, inp: gate_up, dout: dwide, n, i },
            Op::MatmulForward { out: wide, inp: x, weight: fc, bias: None, m: n, k: c, n: i, layout: mm },
            Op::MatmulBackward {
                dinp: g,
                dweight: dw,
                dbias: None,
                dout: dwide,
                inp: x,
                weight: fc,
                m: n,
                k: c,
                n: i,
                layout: mm,
            },
            Op::FlashAttentionForward { out: y, lse, qkv, b, t, c, nh, nkv, dropout: None },
            Op::FlashAttentionBackward {
                dqkv,
                dsum,
                dout: g,
                qkv,
                out: y,
                lse,
                b,
                t,
                c,
                nh,
                nkv,
                dropout: None,
            },
            Op::AttentionForward { out: y, att, qkv, b, t, c, nh, nkv, dropout: None },
            Op::AttentionBackward { dqkv, datt, dout: g, qkv, att, b, t, c, nh, nkv, dropout: None },
        ];
        for op in ops {
            let name = op.name();
            let pieces = split(&op, 0.01).unwrap_or_else(|| panic!("{name} did not split"));
            assert!(pieces.len() >= 2, "{name}: {} piece", pieces.len());
            for piece in &pieces {
                piece.check().unwrap_or_else(|e| panic!("{name}: {e}"));
            }
            // The lowering makes the same pieces (their f32 views are aligned).
            let lowered = low.lower(&mut be, std::slice::from_ref(&op)).unwrap();
            assert_eq!(lowered.iter().filter(|o| o.name() == name).count(), pieces.len(), "{name}");
        }
    }

    /// A backward op adding into a 16-bit gradient adds into its f32 widening and the sum is rounded
    /// once; after a zeroing that nothing reads, it adds into zeros and the zeroing of the 16-bit
    /// tensor is dropped; a zeroing that is read stays.
    #[test]
    fn an_op_adding_into_a_half_gradient_adds_into_zeros_or_its_widening() {
        use crate::cpu::{from_half_bits, to_half_bits};
        let format = HalfFormat::Bf16;
        let mut be = CpuBackend::new();
        let params = be.alloc(DType::F32, 64, "p").unwrap();
        let mut low = Lowering::new(&mut be, format, params, 64).unwrap();
        let n = 300;
        let mut half = |name: &str| View::new(be.alloc(DType::Half, n, name).unwrap(), 0, n);
        let (x, dy, g) = (half("x"), half("dy"), half("g"));
        let values = |k: f32| -> Vec<f32> {
            (0..n)
                .map(|i| from_half_bits(to_half_bits((i as f32 * 0.37 + k).sin() * 3.0, format), format))
                .collect()
        };
        let pack = |v: &[f32]| -> Vec<u32> {
            v.chunks(2)
                .map(|p| to_half_bits(p[0], format) as u32 | (to_half_bits(p[1], format) as u32) << 16)
                .collect()
        };
        let (xs, dys, gs) = (values(0.0), values(1.0), values(2.0));
        let words = |v: View| View::new(v.buf, 0, n / 2);
        be.write_u32(words(x), &pack(&xs)).unwrap();
        be.write_u32(words(dy), &pack(&dys)).unwrap();
        let backward = Op::GeluBackward { dinp: g, inp: x, dout: dy, n };
        // The f32 sum each element should hold, rounded once.
        let expect = |start: &[f32]| -> Vec<u32> {
            let mut d = start.to_vec();
            crate::cpu::gelu_backward(&mut d, &xs, &dys, n);
            d.iter().map(|&v| to_half_bits(v, format) as u32).collect()
        };
        let run = |be: &mut CpuBackend, ops: &[Op]| -> Vec<u32> {
            let plan = be.prepare(ops).unwrap();
            be.run(plan).unwrap();
            read(be, g, Some(format)).unwrap().iter().map(|&v| to_half_bits(v, format) as u32).collect()
        };
        let names = |ops: &[Op]| ops.iter().map(|o| o.name()).collect::<Vec<_>>();

        // Adding into what the gradient holds.
        be.write_u32(words(g), &pack(&gs)).unwrap();
        let ops = low.lower(&mut be, std::slice::from_ref(&backward)).unwrap();
        assert_eq!(names(&ops), ["widen_half", "widen_half", "widen_half", "gelu_backward", "round_half"]);
        assert_eq!(run(&mut be, &ops), expect(&gs));

        // Adding into zeros: the 16-bit tensor is not zeroed, its f32 slot is.
        be.write_u32(words(g), &pack(&gs)).unwrap();
        let ops = low.lower(&mut be, &[Op::Zero { out: g }, backward.clone()]).unwrap();
        assert_eq!(names(&ops), ["widen_half", "widen_half", "zero", "gelu_backward", "round_half"]);
        assert!(matches!(ops[2], Op::Zero { out } if be.dtype(out.buf) == DType::F32));
        assert_eq!(run(&mut be, &ops), expect(&vec![0.0; n]));

        // A zeroing something reads first stays (zeroed in f32, rounded into 16 bits).
        let y = View::new(be.alloc(DType::F32, n, "y").unwrap(), 0, n);
        let read_first = Op::GeluForward { out: y, inp: g, n };
        let ops = low.lower(&mut be, &[Op::Zero { out: g }, read_first, backward]).unwrap();
        assert_eq!(names(&ops[..2]), ["zero", "round_half"]);
        assert!(matches!(ops[1], Op::Round { out, .. } if out.buf == g.buf));
    }

    /// The cross-entropy's gradient overwriting 16-bit logits works in place on their widening.
    #[test]
    fn the_logits_gradient_overwrites_half_logits_in_place_on_their_widening() {
        let mut be = CpuBackend::new();
        let params = be.alloc(DType::F32, 64, "p").unwrap();
        let mut low = Lowering::new(&mut be, HalfFormat::F16, params, 64).unwrap();
        let (rows, v) = (3, 70);
        let logits = View::new(be.alloc(DType::Half, rows * v, "logits").unwrap(), 0, rows * v);
        let lse = View::new(be.alloc(DType::F32, rows, "lse").unwrap(), 0, rows);
        let targets = View::new(be.alloc(DType::U32, rows, "targets").unwrap(), 0, rows);
        let grad_scale = View::new(be.alloc(DType::F32, 1, "scale").unwrap(), 0, 1);
        let op = Op::CrossentropyBackward {
            dlogits: logits,
            logits,
            lse,
            targets,
            grad_scale,
            n: rows,
            v,
            scale: 0.5,
        };
        let ops = low.lower(&mut be, &[op]).unwrap();
        let names: Vec<_> = ops.iter().map(|o| o.name()).collect();
        assert_eq!(names, ["widen_half", "crossentropy_backward", "round_half"]);
        let Op::Widen { out: slot, .. } = ops[0] else { unreachable!() };
        assert!(
            matches!(ops[1], Op::CrossentropyBackward { dlogits, logits, .. } if dlogits == slot && logits == slot)
        );
        assert!(matches!(ops[2], Op::Round { out, inp, .. } if inp == slot && out.buf == logits.buf));
    }

    #[test]
    fn a_split_matmul_widens_its_weight_once() {
        let mut be = CpuBackend::new();
        let params = be.alloc(DType::F32, 4096, "p").unwrap();
        let mut low = Lowering::new(&mut be, HalfFormat::Bf16, params, 4096).unwrap();
        low.set_scratch_cap(1000);
        let (m, k, n) = (200, 16, 32);
        let inp = View::new(be.alloc(DType::Half, m * k, "x").unwrap(), 0, m * k);
        let out = View::new(be.alloc(DType::Half, m * n, "y").unwrap(), 0, m * n);
        let weight = View::new(params, 0, k * n);
        let layout = crate::backend::WeightLayout::InOut;
        let op = Op::MatmulForward { out, inp, weight, bias: None, m, k, n, layout };
        let ops = low.lower(&mut be, std::slice::from_ref(&op)).unwrap();
        let count = |name: &str| ops.iter().filter(|o| o.name() == name).count();
        // 6,400 output elements at a cap of 1,000: the least piece, 64 rows (2,048 elements).
        assert_eq!(count("matmul_forward"), 4);
        assert_eq!(count("round_half"), 4);
        let from_copy =
            ops.iter().filter(|o| matches!(o, Op::Widen { inp, .. } if inp.buf == low.params_half));
        assert_eq!(from_copy.count(), 1);
        assert_eq!(count("widen_half"), 5);
        // A refresh of the half copy between two uses passes through, and the next use widens anew.
        let mut program = vec![op.clone()];
        program.extend(low.refresh());
        program.push(op);
        let ops = low.lower(&mut be, &program).unwrap();
        let from_copy =
            ops.iter().filter(|o| matches!(o, Op::Widen { inp, .. } if inp.buf == low.params_half));
        assert_eq!(from_copy.count(), 2);
    }
}

/// Dynamic loss scaling for f16 training, as torch.amp's `GradScaler` does it: the loss gradient is
/// multiplied by `scale` so that small gradients survive f16's range; a step whose gradients
/// overflow (a non-finite norm) is skipped and the scale halved; after `GROWTH_INTERVAL` clean steps
/// in a row the scale doubles. Saved in checkpoints, so a resumed run continues bit for bit.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LossScaler {
    /// The scale of the next step (a power of two).
    pub scale: f32,
    /// Clean steps since the scale last changed.
    pub clean_steps: u32,
}

impl Default for LossScaler {
    fn default() -> Self {
        LossScaler { scale: Self::INITIAL, clean_steps: 0 }
    }
}

impl LossScaler {
    /// GradScaler's `init_scale`.
    pub const INITIAL: f32 = 65536.0;
    /// GradScaler's `growth_interval`.
    pub const GROWTH_INTERVAL: u32 = 2000;
    /// The scale never halves below this; GradScaler has no floor. A step that overflows at this
    /// scale is a bad step for the trainer (its gradients are broken, not large), so a run whose
    /// backward pass keeps producing NaNs stops on `max_bad_steps` instead of skipping forever.
    pub const MIN: f32 = 1.0 / 16384.0;

    /// Records a step: `finite` when its gradient norm was finite (the update was applied).
    /// Returns true when the scale changed.
    pub fn update(&mut self, finite: bool) -> bool {
        if !finite {
            self.clean_steps = 0;
            let halved = (self.scale * 0.5).max(Self::MIN);
            let changed = halved != self.scale;
            self.scale = halved;
            return changed;
        }
        self.clean_steps += 1;
        if self.clean_steps >= Self::GROWTH_INTERVAL {
            self.clean_steps = 0;
            // Stays finite: 2^127 is the largest power of two an f32 holds.
            if self.scale < 2f32.powi(127) {
                self.scale *= 2.0;
                return true;
            }
        }
        false
    }
}

#[cfg(test)]
mod scaler_tests {
    use super::LossScaler;

    #[test]
    fn the_scale_halves_on_overflow_and_doubles_after_the_growth_interval() {
        let mut s = LossScaler::default();
        assert_eq!(s.scale, 65536.0);
        assert!(s.update(false));
        assert_eq!((s.scale, s.clean_steps), (32768.0, 0));
        for _ in 0..LossScaler::GROWTH_INTERVAL - 1 {
            assert!(!s.update(true));
        }
        assert_eq!(s.clean_steps, LossScaler::GROWTH_INTERVAL - 1);
        assert!(s.update(true));
        assert_eq!((s.scale, s.clean_steps), (65536.0, 0));
        // An overflow resets the count of clean steps.
        s.update(true);
        s.update(false);
        assert_eq!((s.scale, s.clean_steps), (32768.0, 0));
        let mut low = LossScaler { scale: LossScaler::MIN, clean_steps: 5 };
        assert!(!low.update(false));
        assert_eq!(low.scale, LossScaler::MIN);
    }
}
