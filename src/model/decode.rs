//! Sampling with a key/value cache. A sampling frame (1, T) keeps its activations between calls, so
//! after one full forward pass its attention inputs (each layer's qkv rows, after RoPE where there is
//! one) hold the keys and values of every position of the context: they are the cache. Each new token
//! then costs the forward pass of one position: the frame's forward program rewritten op by op for
//! one row ([`one_position`]) on small buffers of its own, whose attention writes the new row's q, k
//! and v into the frame's qkv tensor ([`Op::ScatterRow`]) and attends to rows `0..=pos` of it
//! ([`Op::AttentionDecode`]). The position is a one-word buffer the host writes, so one prepared
//! program serves every position. Architecture-free: it rewrites whatever ops a [`super::Network`]
//! emits, and an op it does not know turns the cache off (sampling then runs the full pass).

use std::collections::HashMap;

use crate::backend::{Backend, BufId, DType, Op, PlanId, View, WeightLayout};
use crate::Result;

/// The program that decodes one position, and what the frame's rows hold.
pub struct Decoder {
    pub plan: PlanId,
    /// (1) u32: the new token.
    pub token: View,
    /// (1) u32: its position, which is also the row of the cache it fills.
    pub pos: View,
    /// (V): its logits.
    pub logits: View,
    /// The tokens whose keys and values rows `0..len` of the frame hold (empty: none).
    pub cached: Vec<u32>,
}

/// What the frame hands the rewrite.
pub struct FrameViews {
    /// Rows of the frame (its block size); the batch is one sequence.
    pub t: usize,
    pub tokens: View,
    pub positions: View,
    pub params: BufId,
    /// The final hidden state (T, C) and the output head's weight ([V, C]).
    pub hidden: View,
    pub head: View,
    pub c: usize,
    pub v: usize,
}

/// Builds the one-position program for the forward ops `forward` of a (1, T) frame, or `None` when an
/// op has no one-position form (the caller then samples without the cache).
pub fn one_position(be: &mut dyn Backend, forward: &[Op], f: &FrameViews) -> Result<Option<Decoder>> {
    let token = View::new(be.alloc(DType::U32, 1, "decoding: token")?, 0, 1);
    let pos = View::new(be.alloc(DType::U32, 1, "decoding: position")?, 0, 1);
    let logits = View::new(be.alloc(DType::F32, f.v, "decoding: logits")?, 0, f.v);
    let mut rows = Rows {
        be,
        t: f.t,
        params: f.params,
        tokens: f.tokens,
        positions: f.positions,
        token,
        pos,
        mirrors: HashMap::new(),
    };
    let mut ops = Vec::new();
    for op in forward {
        if !rows.rewrite(op, &mut ops)? {
            log::debug!("sampling without a key/value cache: {} has no one-position form", op.name());
            return Ok(None);
        }
    }
    let Some(hidden) = rows.row(f.hidden)? else { return Ok(None) };
    ops.push(Op::MatmulForward {
        out: logits,
        inp: hidden,
        weight: f.head,
        bias: None,
        m: 1,
        k: f.c,
        n: f.v,
        layout: WeightLayout::OutIn,
    });
    let plan = rows.be.prepare(&ops)?;
    Ok(Some(Decoder { plan, token, pos, logits, cached: Vec::new() }))
}

/// The rewrite's state: each (T, w) activation of the frame has a (1, w) twin.
struct Rows<'a> {
    be: &'a mut dyn Backend,
    t: usize,
    params: BufId,
    tokens: View,
    positions: View,
    token: View,
    pos: View,
    mirrors: HashMap<View, View>,
}

impl Rows<'_> {
    /// The one-row twin of frame tensor `v`: parameters stay, the token ids become the new token, the
    /// positions its position; `None` for a tensor that is not whole rows of the frame.
    fn row(&mut self, v: View) -> Result<Option<View>> {
        if v.buf == self.params {
            return Ok(Some(v));
        }
        if v == self.tokens {
            return Ok(Some(self.token));
        }
        if v == self.positions {
            return Ok(Some(self.pos));
        }
        if let Some(m) = self.mirrors.get(&v) {
            return Ok(Some(*m));
        }
        if v.len % self.t != 0 {
            return Ok(None);
        }
        let len = v.len / self.t;
        let m = View::new(self.be.alloc(DType::F32, len, "decoding: one row")?, 0, len);
        self.mirrors.insert(v, m);
        Ok(Some(m))
    }

    /// Appends `op`'s one-position form to `out`; false when it has none.
    fn rewrite(&mut self, op: &Op, out: &mut Vec<Op>) -> Result<bool> {
        macro_rules! rows {
            ($($v:ident),*) => { $( let Some($v) = self.row($v)? else { return Ok(false) }; )* };
        }
        let t = self.t;
        let one = match *op {
            Op::EncoderForward { out: o, tokens, wte, wpe, b: 1, t: _, c } => {
                rows!(o, tokens);
                // The position's row of the position table, gathered where the kernel reads row 0.
                let wpe = match wpe {
                    Some(table) => {
                        let row =
                            View::new(self.be.alloc(DType::F32, c, "decoding: position embedding")?, 0, c);
                        out.push(Op::GatherRow { out: row, inp: table, row: self.pos, w: c });
                        Some(row)
                    }
                    None => None,
                };
                Op::EncoderForward { out: o, tokens, wte, wpe, b: 1, t: 1, c }
            }
            Op::LayernormForward { out: o, mean, rstd, inp, weight, bias, n, c } if n == t => {
                rows!(o, mean, rstd, inp);
                Op::LayernormForward { out: o, mean, rstd, inp, weight, bias, n: 1, c }
            }
            Op::RmsnormForward { out: o, rstd, inp, weight, n, c, eps } if n == t => {
                rows!(o, rstd, inp);
                Op::RmsnormForward { out: o, rstd, inp, weight, n: 1, c, eps }
            }
            Op::RopeForward { out: o, inp, positions, table, n, width, heads, hd } if n == t => {
                rows!(o, inp, positions);
                Op::RopeForward { out: o, inp, positions, table, n: 1, width, heads, hd }
            }
            Op::SwigluForward { out: o, inp, n, i } if n == t => {
                rows!(o, inp);
                Op::SwigluForward { out: o, inp, n: 1, i }
            }
            Op::MatmulForward { out: o, inp, weight, bias, m, k, n, layout } if m == t => {
                rows!(o, inp);
                Op::MatmulForward { out: o, inp, weight, bias, m: 1, k, n, layout }
            }
            Op::GeluForward { out: o, inp, n } if n % t == 0 => {
                rows!(o, inp);
                Op::GeluForward { out: o, inp, n: n / t }
            }
            Op::ResidualForward { out: o, inp1, inp2, n } if n % t == 0 => {
                rows!(o, inp1, inp2);
                Op::ResidualForward { out: o, inp1, inp2, n: n / t }
            }
            Op::AttentionForward { out: o, qkv, b: 1, c, nh, nkv, dropout: None, .. }
            | Op::FlashAttentionForward { out: o, qkv, b: 1, c, nh, nkv, dropout: None, .. } => {
                if let Some(why) = self.be.decode_unsupported(t, c / nh) {
                    log::info!("sampling without a key/value cache: {why}");
                    return Ok(false);
                }
                let cache = qkv;
                rows!(o, qkv);
                let w = qkv.len;
                out.push(Op::ScatterRow { out: cache, inp: qkv, row: self.pos, w });
                Op::AttentionDecode { out: o, qkv: cache, row: self.pos, t, c, nh, nkv }
            }
            _ => return Ok(false),
        };
        out.push(one);
        Ok(true)
    }
}
