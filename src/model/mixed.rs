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
//! - **Matmul operands that live in f32** (the activation gradients the backward matmuls read, the
//!   logits' gradient) are rounded in place into scratch ([`Op::Quantize`]).
//! - Products and sums stay f32, as do the per-row statistics (norm means and rstd, log-sum-exp),
//!   the logits and the loss, every activation gradient (the backward ops accumulate into them),
//!   the gradient norm and the optimizer.
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

/// The word view of a half buffer that holds elements `v`, and the index of `v`'s first element in
/// it: the words start on a 256-byte boundary, as every binding must.
fn words(v: View) -> (View, usize) {
    let start = v.offset / 2 / WORD_ALIGN * WORD_ALIGN;
    let first = v.offset - 2 * start;
    (View::new(v.buf, start, (first + v.len).div_ceil(2)), first)
}

/// Whether `op` adds into its outputs (then an output may not be half: there is nothing to add to).
fn accumulates(op: &Op) -> bool {
    match op {
        Op::Matmul { accumulate, .. } => *accumulate,
        Op::ReduceSum { .. } | Op::AdamwUpdate { .. } => true,
        _ => op.name().ends_with("_backward"),
    }
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

/// The lowering pass of one model, with its half copy of the parameters and its scratch buffers.
pub struct Lowering {
    format: HalfFormat,
    params: BufId,
    total: usize,
    /// The parameters in 16 bits, element for element (`DType::Half`).
    params_half: BufId,
    /// f32 scratch buffers: slot i holds an op's i-th largest converted view.
    scratch: Vec<(BufId, usize)>,
}

impl Lowering {
    /// A pass for the model whose f32 parameters are `params` (`total` elements).
    pub fn new(be: &mut dyn Backend, format: HalfFormat, params: BufId, total: usize) -> Result<Self> {
        let params_half = be.alloc(DType::Half, total, &format!("parameters ({})", format.name()))?;
        Ok(Lowering { format, params, total, params_half, scratch: Vec::new() })
    }

    pub fn format(&self) -> HalfFormat {
        self.format
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

    /// An f32 scratch view of `len` elements in slot `slot`, growing the slot when it is too small
    /// (programs prepared before keep the buffer they were given).
    fn scratch(&mut self, be: &mut dyn Backend, slot: usize, len: usize) -> Result<View> {
        if slot == self.scratch.len() {
            self.scratch.push((BufId(usize::MAX), 0));
        }
        if self.scratch[slot].1 < len {
            let id = be.alloc(DType::F32, len, &format!("mixed-precision scratch {slot}"))?;
            self.scratch[slot] = (id, len);
        }
        Ok(View::new(self.scratch[slot].0, 0, len))
    }

    /// Bytes of the half parameters and the scratch slots (memory accounting).
    pub fn bytes(&self) -> u64 {
        let scratch: usize = self.scratch.iter().map(|s| s.1).sum();
        (self.total.div_ceil(2) * 4 + scratch * 4) as u64
    }

    /// `ops` with their activations in half and their matmul operands rounded (see the module doc).
    pub fn lower(&mut self, be: &mut dyn Backend, ops: &[Op]) -> Result<Vec<Op>> {
        let format = self.format;
        let mut lowered = Vec::with_capacity(ops.len() * 3);
        for op in ops {
            if matches!(op, Op::Round { .. } | Op::Widen { .. } | Op::Quantize { .. }) {
                lowered.push(op.clone());
                continue;
            }
            let is_half = |v: &View| be.dtype(v.buf) == DType::Half;
            let outs: Vec<View> = op.outputs().into_iter().map(|(v, _)| v).filter(is_half).collect();
            if !outs.is_empty() && accumulates(op) {
                return Err(Error::Invalid(format!(
                    "mixed precision: {} adds into a 16-bit tensor; only forward ops may write one",
                    op.name()
                )));
            }
            // Every view that needs converting: (view, how), each once.
            let mut todo: BTreeMap<(usize, usize, usize), (View, Conv)> = BTreeMap::new();
            let key = |v: &View| (v.buf.0, v.offset, v.len);
            for (v, _) in op.inputs() {
                if is_half(&v) {
                    todo.insert(key(&v), (v, Conv::Widen(v)));
                }
            }
            for v in matmul_operands(op) {
                if is_half(&v) {
                    continue;
                }
                let conv = if v.buf == self.params {
                    Conv::Widen(View::new(self.params_half, v.offset, v.len))
                } else {
                    Conv::Quantize
                };
                todo.insert(key(&v), (v, conv));
            }
            for v in &outs {
                todo.insert(key(v), (*v, Conv::Round));
            }
            // Largest first, so that slot i is as large as the i-th largest view of any op.
            let mut views: Vec<(View, Conv)> = todo.into_values().collect();
            views.sort_by_key(|(v, _)| std::cmp::Reverse(v.len));
            let mut map: BTreeMap<(usize, usize, usize), View> = BTreeMap::new();
            let mut after = Vec::new();
            for (slot, (v, conv)) in views.into_iter().enumerate() {
                let s = self.scratch(be, slot, v.len)?;
                map.insert(key(&v), s);
                let n = v.len;
                match conv {
                    Conv::Widen(half) => {
                        let (inp, first) = words(half);
                        lowered.push(Op::Widen { out: s, inp, first, n, format });
                    }
                    Conv::Quantize => lowered.push(Op::Quantize { out: s, inp: v, n, format }),
                    Conv::Round => {
                        let (out, first) = words(v);
                        after.push(Op::Round { out, inp: s, first, n, format });
                    }
                }
            }
            lowered.push(op.map_views(&mut |v| map.get(&key(&v)).copied().unwrap_or(v)));
            lowered.extend(after);
        }
        Ok(lowered)
    }
}

/// How a view reaches its scratch copy.
#[derive(Clone, Copy)]
enum Conv {
    /// Widened from these half elements (the view itself, or its place in the half parameters).
    Widen(View),
    /// An f32 operand rounded to 16 bits.
    Quantize,
    /// An output, rounded into the half tensor after the op.
    Round,
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
        let ops = low.lower(&mut be, &[op]).unwrap();
        let names: Vec<_> = ops.iter().map(|o| o.name()).collect();
        assert_eq!(names, ["widen_half", "quantize_half", "widen_half", "matmul_backward"]);
        // Element 128 of the half copy is word 64, a 256-byte boundary.
        assert!(
            matches!(ops[2], Op::Widen { inp, first: 0, .. } if inp.buf == low.params_half && inp.offset == 64)
        );
        assert_eq!(low.refresh().len(), 1);
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
    /// The scale never halves below this (f16's smallest normal number: below it the scale would
    /// itself lose precision); GradScaler has no floor, but a run that keeps overflowing at such a
    /// scale has non-finite values of its own and stops on `max_bad_steps`.
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
