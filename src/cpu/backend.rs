//! `CpuBackend`: runs a program of ops by calling the twins, in f32.

use super::*;
use crate::backend::{AdamwHyper, AttnDropout, Backend, BufId, Created, DType, Op, PlanId, View};
use crate::{Error, Result};

enum Buf {
    F32(Vec<f32>),
    U32(Vec<u32>),
    /// Packed 16-bit floats (`DType::Half`), as words.
    Half(Vec<u32>),
}

/// The reference backend. Buffers are host vectors; `run` executes ops one after another.
#[derive(Default)]
pub struct CpuBackend {
    bufs: Vec<Buf>,
    plans: Vec<Vec<Op>>,
}

impl CpuBackend {
    pub fn new() -> Self {
        Self::default()
    }

    fn f32s(&self, v: View) -> &[f32] {
        match &self.bufs[v.buf.0] {
            Buf::F32(d) => &d[v.offset..v.end()],
            Buf::U32(_) | Buf::Half(_) => panic!("{v:?} is a u32 buffer where f32 was expected"),
        }
    }

    fn u32s(&self, v: View) -> &[u32] {
        match &self.bufs[v.buf.0] {
            Buf::U32(d) | Buf::Half(d) => &d[v.offset..v.end()],
            Buf::F32(_) => panic!("{v:?} is an f32 buffer where u32 was expected"),
        }
    }

    /// Copies of the input views (cheap next to the work of any op), so that outputs can be borrowed
    /// mutably while the twin reads them.
    fn inputs(&self, views: &[View]) -> Vec<Vec<f32>> {
        views.iter().map(|v| self.f32s(*v).to_vec()).collect()
    }

    /// Runs `f` with mutable slices of the given disjoint output views, in the order given.
    fn with_outputs<R>(&mut self, views: &[View], f: impl FnOnce(&mut [&mut [f32]]) -> R) -> R {
        let mut ids: Vec<BufId> = views.iter().map(|v| v.buf).collect();
        ids.sort();
        ids.dedup();
        let mut taken: Vec<(BufId, Vec<f32>)> = ids
            .iter()
            .map(|&id| match std::mem::replace(&mut self.bufs[id.0], Buf::F32(Vec::new())) {
                Buf::F32(d) => (id, d),
                Buf::U32(_) | Buf::Half(_) => panic!("buffer {id:?} is u32 where an f32 output was expected"),
            })
            .collect();
        let mut slots: Vec<Option<&mut [f32]>> = (0..views.len()).map(|_| None).collect();
        for (id, data) in taken.iter_mut() {
            let mut mine: Vec<(usize, View)> =
                views.iter().copied().enumerate().filter(|(_, v)| v.buf == *id).collect();
            mine.sort_by_key(|(_, v)| v.offset);
            let mut rest: &mut [f32] = data;
            let mut base = 0;
            for (i, v) in mine {
                let tail = std::mem::take(&mut rest).split_at_mut(v.offset - base).1;
                let (slice, tail) = tail.split_at_mut(v.len);
                slots[i] = Some(slice);
                rest = tail;
                base = v.end();
            }
        }
        let mut outs: Vec<&mut [f32]> = slots.into_iter().map(|s| s.unwrap()).collect();
        let result = f(&mut outs);
        drop(outs);
        for (id, data) in taken {
            self.bufs[id.0] = Buf::F32(data);
        }
        result
    }

    fn mask(&self, d: &AttnDropout) -> Mask {
        Mask { seed: self.u32s(d.seed)[0], p: d.p, stream: d.stream }
    }

    fn exec(&mut self, op: &Op) {
        match *op {
            Op::Zero { out } => self.with_outputs(&[out], |o| zero(o[0])),
            Op::Round { out, inp, first, n, format } => {
                let x = self.f32s(inp).to_vec();
                match &mut self.bufs[out.buf.0] {
                    Buf::Half(d) | Buf::U32(d) => {
                        round_half(&mut d[out.offset..out.end()], &x, first, n, format)
                    }
                    Buf::F32(_) => panic!("round_half into the f32 buffer {:?}", out.buf),
                }
            }
            Op::Widen { out, inp, first, n, format } => {
                let words = self.u32s(inp).to_vec();
                self.with_outputs(&[out], |o| widen_half(o[0], &words, first, n, format))
            }
            Op::Quantize { out, inp, n, format } => {
                let i = self.inputs(&[inp]);
                self.with_outputs(&[out], |o| quantize_half(o[0], &i[0], n, format))
            }
            Op::FlashAttentionForward { out, lse, qkv, b, t, c, nh, nkv, dropout } => {
                let i = self.inputs(&[qkv]);
                let mask = dropout.map(|d| self.mask(&d));
                self.with_outputs(&[out, lse], |o| {
                    let [out, lse] = o else { unreachable!() };
                    flash_attention_forward(out, lse, &i[0], b, t, c, nh, nkv, mask)
                })
            }
            Op::FlashAttentionBackward { dqkv, dsum, dout, qkv, out, lse, b, t, c, nh, nkv, dropout } => {
                let i = self.inputs(&[dout, qkv, out, lse]);
                let mask = dropout.map(|d| self.mask(&d));
                self.with_outputs(&[dqkv, dsum], |o| {
                    let [dqkv, dsum] = o else { unreachable!() };
                    flash_attention_backward(dqkv, dsum, &i[0], &i[1], &i[2], &i[3], b, t, c, nh, nkv, mask)
                })
            }
            Op::EncoderForward { out, tokens, wte, wpe, b, t, c } => {
                let tok = self.u32s(tokens).to_vec();
                let wte = self.f32s(wte).to_vec();
                let wpe = wpe.map(|w| self.f32s(w).to_vec());
                self.with_outputs(&[out], |o| encoder_forward(o[0], &tok, &wte, wpe.as_deref(), b, t, c))
            }
            Op::EncoderBackward { dwte, dwpe, dout, tokens, b, t, c, .. } => {
                let tok = self.u32s(tokens).to_vec();
                let i = self.inputs(&[dout]);
                let mut outs = vec![dwte];
                outs.extend(dwpe);
                self.with_outputs(&outs, |o| {
                    let (first, rest) = o.split_at_mut(1);
                    let dwpe = rest.first_mut().map(|d| &mut **d);
                    encoder_backward(first[0], dwpe, &i[0], &tok, b, t, c)
                })
            }
            Op::LayernormForward { out, mean, rstd, inp, weight, bias, n, c } => {
                let i = self.inputs(&[inp, weight, bias]);
                self.with_outputs(&[out, mean, rstd], |o| {
                    let [out, mean, rstd] = o else { unreachable!() };
                    layernorm_forward(out, mean, rstd, &i[0], &i[1], &i[2], n, c)
                })
            }
            Op::LayernormBackward { dinp, dweight, dbias, dout, inp, weight, mean, rstd, n, c } => {
                let i = self.inputs(&[dout, inp, weight, mean, rstd]);
                self.with_outputs(&[dinp, dweight, dbias], |o| {
                    let [dinp, dweight, dbias] = o else { unreachable!() };
                    layernorm_backward(dinp, dweight, dbias, &i[0], &i[1], &i[2], &i[3], &i[4], n, c)
                })
            }
            Op::RmsnormForward { out, rstd, inp, weight, n, c, eps } => {
                let i = self.inputs(&[inp, weight]);
                self.with_outputs(&[out, rstd], |o| {
                    let [out, rstd] = o else { unreachable!() };
                    rmsnorm_forward(out, rstd, &i[0], &i[1], n, c, eps as f64)
                })
            }
            Op::RmsnormBackward { dinp, dweight, dout, inp, weight, rstd, n, c } => {
                let i = self.inputs(&[dout, inp, weight, rstd]);
                self.with_outputs(&[dinp, dweight], |o| {
                    let [dinp, dweight] = o else { unreachable!() };
                    rmsnorm_backward(dinp, dweight, &i[0], &i[1], &i[2], &i[3], n, c)
                })
            }
            // The row comes from the host's decoder, which keeps it in range; clamped so that a bad
            // one cannot take the process down.
            Op::GatherRow { out, inp, row, w } => {
                let r = (self.u32s(row)[0] as usize).min(inp.len / w - 1);
                let i = self.inputs(&[inp]);
                self.with_outputs(&[out], |o| gather_row(o[0], &i[0], r, w))
            }
            Op::ScatterRow { out, inp, row, w } => {
                let r = (self.u32s(row)[0] as usize).min(out.len / w - 1);
                let i = self.inputs(&[inp]);
                self.with_outputs(&[out], |o| scatter_row(o[0], &i[0], r, w))
            }
            Op::AttentionDecode { out, qkv, row, t, c, nh, nkv } => {
                let pos = (self.u32s(row)[0] as usize).min(t - 1);
                let i = self.inputs(&[qkv]);
                self.with_outputs(&[out], |o| attention_decode(o[0], &i[0], pos, c, nh, nkv))
            }
            Op::RopeForward { out, inp, positions, table, n, width, heads, hd } => {
                let pos = self.u32s(positions).to_vec();
                let i = self.inputs(&[inp, table]);
                self.with_outputs(&[out], |o| rope_forward(o[0], &i[0], &pos, &i[1], n, width, heads, hd))
            }
            Op::RopeBackward { dinp, dout, positions, table, n, width, heads, hd } => {
                let pos = self.u32s(positions).to_vec();
                let i = self.inputs(&[dout, table]);
                self.with_outputs(&[dinp], |o| rope_backward(o[0], &i[0], &pos, &i[1], n, width, heads, hd))
            }
            Op::SwigluForward { out, inp, n, i: width } => {
                let i = self.inputs(&[inp]);
                self.with_outputs(&[out], |o| swiglu_forward(o[0], &i[0], n, width))
            }
            Op::SwigluBackward { dinp, inp, dout, n, i: width } => {
                let i = self.inputs(&[inp, dout]);
                self.with_outputs(&[dinp], |o| swiglu_backward(o[0], &i[0], &i[1], n, width))
            }
            Op::Matmul { out, a, b, m, k, n, trans_a, trans_b, accumulate, half: true } => {
                let (a, b) = (self.u32s(a).to_vec(), self.u32s(b).to_vec());
                self.with_outputs(&[out], |o| matmul_f16(o[0], &a, &b, m, k, n, trans_a, trans_b, accumulate))
            }
            Op::Matmul { out, a, b, m, k, n, trans_a, trans_b, accumulate, half: false } => {
                let i = self.inputs(&[a, b]);
                self.with_outputs(&[out], |o| {
                    matmul(o[0], &i[0], &i[1], m, k, n, trans_a, trans_b, accumulate)
                })
            }
            Op::MatmulForward { out, inp, weight, bias, m, k, n, layout } => {
                let i = self.inputs(&[inp, weight]);
                let bias = bias.map(|b| self.f32s(b).to_vec());
                self.with_outputs(&[out], |o| {
                    matmul_forward(o[0], &i[0], &i[1], bias.as_deref(), m, k, n, layout)
                })
            }
            Op::MatmulBackward { dinp, dweight, dbias, dout, inp, weight, m, k, n, layout } => {
                let i = self.inputs(&[dout, inp, weight]);
                let mut outs = vec![dinp, dweight];
                outs.extend(dbias);
                self.with_outputs(&outs, |o| {
                    let (first, rest) = o.split_at_mut(2);
                    let [dinp, dweight] = first else { unreachable!() };
                    let dbias = rest.first_mut().map(|d| &mut **d);
                    matmul_backward(dinp, dweight, dbias, &i[0], &i[1], &i[2], m, k, n, layout)
                })
            }
            Op::AttentionForward { out, att, qkv, b, t, c, nh, nkv, dropout } => {
                let i = self.inputs(&[qkv]);
                let mask = dropout.map(|d| self.mask(&d));
                let mut outs = vec![out, att];
                outs.extend(dropout.map(|d| d.probs));
                self.with_outputs(&outs, |o| {
                    let (first, rest) = o.split_at_mut(2);
                    let [out, att] = first else { unreachable!() };
                    let probs = rest.first_mut().map(|p| (&mut **p, mask.unwrap()));
                    attention_forward(out, att, &i[0], b, t, c, nh, nkv, probs)
                })
            }
            Op::AttentionBackward { dqkv, datt, dout, qkv, att, b, t, c, nh, nkv, dropout } => {
                let i = self.inputs(&[dout, qkv, att]);
                let probs = dropout.map(|d| (self.f32s(d.probs).to_vec(), self.mask(&d)));
                self.with_outputs(&[dqkv, datt], |o| {
                    let [dqkv, datt] = o else { unreachable!() };
                    let probs = probs.as_ref().map(|(p, m)| (p.as_slice(), *m));
                    attention_backward(dqkv, datt, &i[0], &i[1], &i[2], b, t, c, nh, nkv, probs)
                })
            }
            Op::DropoutForward { out, inp, seed, n, p, stream } => {
                let i = self.inputs(&[inp]);
                let seed = self.u32s(seed)[0];
                self.with_outputs(&[out], |o| dropout_forward(o[0], &i[0], seed, n, p, stream))
            }
            Op::DropoutBackward { dinp, dout, seed, n, p, stream } => {
                let i = self.inputs(&[dout]);
                let seed = self.u32s(seed)[0];
                self.with_outputs(&[dinp], |o| dropout_backward(o[0], &i[0], seed, n, p, stream))
            }
            Op::GeluForward { out, inp, n } => {
                let i = self.inputs(&[inp]);
                self.with_outputs(&[out], |o| gelu_forward(o[0], &i[0], n))
            }
            Op::GeluBackward { dinp, inp, dout, n } => {
                let i = self.inputs(&[inp, dout]);
                self.with_outputs(&[dinp], |o| gelu_backward(o[0], &i[0], &i[1], n))
            }
            Op::ResidualForward { out, inp1, inp2, n } => {
                let i = self.inputs(&[inp1, inp2]);
                self.with_outputs(&[out], |o| residual_forward(o[0], &i[0], &i[1], n))
            }
            Op::ResidualBackward { dinp1, dinp2, dout, n } => {
                let i = self.inputs(&[dout]);
                self.with_outputs(&[dinp1, dinp2], |o| {
                    let [d1, d2] = o else { unreachable!() };
                    residual_backward(d1, d2, &i[0], n)
                })
            }
            Op::CrossentropyForward { losses, lse, logits, targets, n, v } => {
                let tgt = self.u32s(targets).to_vec();
                let i = self.inputs(&[logits]);
                self.with_outputs(&[losses, lse], |o| {
                    let [losses, lse] = o else { unreachable!() };
                    crossentropy_forward(losses, lse, &i[0], &tgt, n, v)
                })
            }
            Op::CrossentropyBackward { dlogits, logits, lse, targets, grad_scale, n, v, scale } => {
                let tgt = self.u32s(targets).to_vec();
                let i = self.inputs(&[logits, lse, grad_scale]);
                // The product in f32, as the kernel forms it.
                let scale = (scale * i[2][0]) as f64;
                // In place (dlogits == logits): `i` holds a copy of the logits; overwrite them.
                let in_place = dlogits == logits;
                self.with_outputs(&[dlogits], |o| {
                    if in_place {
                        zero(o[0]);
                    }
                    crossentropy_backward(o[0], &i[0], &i[1], &tgt, n, v, scale)
                })
            }
            Op::ReduceSum { out, inp, n, scale } => {
                let i = self.inputs(&[inp]);
                self.with_outputs(&[out], |o| reduce_sum(o[0], &i[0], n, scale as f64))
            }
            Op::GlobalNorm { out, inp, n } => {
                let i = self.inputs(&[inp]);
                self.with_outputs(&[out], |o| global_norm(o[0], &i[0], n))
            }
            Op::AdamwUpdate { params, grads, m, v, hyper, norm, n, weight_decay } => {
                let i = self.inputs(&[grads, hyper, norm]);
                let h = AdamwHyper::from_words(&i[1]);
                self.with_outputs(&[params, m, v], |o| {
                    let [p, m, v] = o else { unreachable!() };
                    adamw_update(p, m, v, &i[0], &h, i[2][0] as f64, n, weight_decay as f64)
                })
            }
        }
    }
}

impl Backend for CpuBackend {
    fn describe(&self) -> String {
        "cpu (reference twins, f32 storage, f64 sums)".to_string()
    }

    fn alloc(&mut self, dtype: DType, len: usize, label: &str) -> Result<BufId> {
        // A size the allocator refuses is an error, not an abort (under Linux's overcommit, one past
        // RAM and swap is refused; a smaller one that does not fit can still end in the OOM killer).
        fn zeroed<T: Clone + Default>(len: usize, label: &str) -> Result<Vec<T>> {
            let mut v = Vec::new();
            v.try_reserve_exact(len).map_err(|_| {
                Error::Invalid(format!(
                    "the CPU backend cannot allocate {len} elements for {label}; make the model or the batch smaller"
                ))
            })?;
            v.resize(len, T::default());
            Ok(v)
        }
        let buf = match dtype {
            DType::F32 => Buf::F32(zeroed(len, label)?),
            DType::U32 => Buf::U32(zeroed(len, label)?),
            DType::Half => Buf::Half(zeroed(len.div_ceil(2), label)?),
        };
        self.bufs.push(buf);
        Ok(BufId(self.bufs.len() - 1))
    }

    fn write_f32(&mut self, view: View, data: &[f32]) -> Result<()> {
        assert_eq!(view.len, data.len(), "write_f32: view and data lengths differ");
        match &mut self.bufs[view.buf.0] {
            Buf::F32(d) => d[view.offset..view.end()].copy_from_slice(data),
            Buf::U32(_) | Buf::Half(_) => panic!("write_f32 into the u32 buffer {:?}", view.buf),
        }
        Ok(())
    }

    fn write_u32(&mut self, view: View, data: &[u32]) -> Result<()> {
        assert_eq!(view.len, data.len(), "write_u32: view and data lengths differ");
        match &mut self.bufs[view.buf.0] {
            Buf::U32(d) | Buf::Half(d) => d[view.offset..view.end()].copy_from_slice(data),
            Buf::F32(_) => panic!("write_u32 into the f32 buffer {:?}", view.buf),
        }
        Ok(())
    }

    fn read_f32_into(&mut self, view: View, out: &mut [f32]) -> Result<()> {
        out.copy_from_slice(self.f32s(view));
        Ok(())
    }

    fn read_u32_into(&mut self, view: View, out: &mut [u32]) -> Result<()> {
        out.copy_from_slice(self.u32s(view));
        Ok(())
    }

    fn prepare(&mut self, ops: &[Op]) -> Result<PlanId> {
        for op in ops {
            op.check().map_err(Error::Invalid)?;
        }
        self.plans.push(ops.to_vec());
        Ok(PlanId(self.plans.len() - 1))
    }

    fn run(&mut self, plan: PlanId) -> Result<()> {
        let ops = std::mem::take(&mut self.plans[plan.0]);
        for op in &ops {
            self.exec(op);
        }
        self.plans[plan.0] = ops;
        Ok(())
    }

    fn sync(&mut self) -> Result<()> {
        Ok(())
    }

    fn created(&self) -> Created {
        Created { buffers: self.bufs.len(), ..Created::default() }
    }

    fn dtype(&self, buf: BufId) -> DType {
        match self.bufs[buf.0] {
            Buf::F32(_) => DType::F32,
            Buf::U32(_) => DType::U32,
            Buf::Half(_) => DType::Half,
        }
    }
}
