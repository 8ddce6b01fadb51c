//! The one layout table: every parameter's Hugging Face name, shape and offset in the flat params
//! buffer. Gradients, Adam m and Adam v use the same offsets; checkpoints and HF export use the same
//! names.

use super::ModelConfig;

/// Tensors start on 64-element (256-byte) boundaries: the largest storage-binding offset alignment
/// WebGPU allows, so any tensor can be bound on its own.
pub const ALIGN: usize = 64;

/// One parameter tensor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParamSpec {
    /// The Hugging Face GPT2LMHeadModel name, e.g. `transformer.h.0.attn.c_attn.weight`.
    pub name: String,
    /// HF shape: Conv1D weights are `[in, out]`.
    pub shape: Vec<usize>,
    /// Element offset in the flat buffer.
    pub offset: usize,
    /// Weight decay applies (tensors with two or more dimensions).
    pub decay: bool,
}

impl ParamSpec {
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Indices into [`ParamLayout::specs`] of one block's tensors.
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

/// Where every parameter lives. Decayed tensors come first, then the others, so AdamW runs as two
/// contiguous ranges with their own weight decay.
#[derive(Clone, Debug)]
pub struct ParamLayout {
    pub specs: Vec<ParamSpec>,
    pub wte: usize,
    pub wpe: usize,
    pub layers: Vec<LayerIndex>,
    pub ln_f_w: usize,
    pub ln_f_b: usize,
    /// Elements in the flat buffer, padding included.
    pub total: usize,
    /// `[start, end)` of the decayed tensors and of the rest.
    pub decay_range: (usize, usize),
    pub no_decay_range: (usize, usize),
}

fn round_up(x: usize) -> usize {
    x.div_ceil(ALIGN) * ALIGN
}

impl ParamLayout {
    pub fn new(cfg: &ModelConfig) -> Self {
        let c = cfg.n_embd;
        // Names and shapes first, in buffer order; offsets are assigned once the order is known.
        let mut specs: Vec<ParamSpec> = Vec::new();
        let mut push = |name: String, shape: Vec<usize>| {
            let decay = shape.len() >= 2;
            specs.push(ParamSpec { name, shape, offset: 0, decay });
            specs.len() - 1
        };
        let h = |l: usize, s: &str| format!("transformer.h.{l}.{s}");
        // Decayed (2-D) tensors.
        let wte = push("transformer.wte.weight".into(), vec![cfg.vocab_size, c]);
        let wpe = push("transformer.wpe.weight".into(), vec![cfg.n_positions, c]);
        let mut weights = Vec::new();
        for l in 0..cfg.n_layer {
            weights.push([
                push(h(l, "attn.c_attn.weight"), vec![c, 3 * c]),
                push(h(l, "attn.c_proj.weight"), vec![c, c]),
                push(h(l, "mlp.c_fc.weight"), vec![c, 4 * c]),
                push(h(l, "mlp.c_proj.weight"), vec![4 * c, c]),
            ]);
        }
        // Everything else: biases and LayerNorm parameters.
        let mut layers = Vec::new();
        for (l, [c_attn_w, attn_proj_w, c_fc_w, mlp_proj_w]) in weights.into_iter().enumerate() {
            layers.push(LayerIndex {
                ln_1_w: push(h(l, "ln_1.weight"), vec![c]),
                ln_1_b: push(h(l, "ln_1.bias"), vec![c]),
                c_attn_w,
                c_attn_b: push(h(l, "attn.c_attn.bias"), vec![3 * c]),
                attn_proj_w,
                attn_proj_b: push(h(l, "attn.c_proj.bias"), vec![c]),
                ln_2_w: push(h(l, "ln_2.weight"), vec![c]),
                ln_2_b: push(h(l, "ln_2.bias"), vec![c]),
                c_fc_w,
                c_fc_b: push(h(l, "mlp.c_fc.bias"), vec![4 * c]),
                mlp_proj_w,
                mlp_proj_b: push(h(l, "mlp.c_proj.bias"), vec![c]),
            });
        }
        let ln_f_w = push("transformer.ln_f.weight".into(), vec![c]);
        let ln_f_b = push("transformer.ln_f.bias".into(), vec![c]);
        let (mut offset, mut decay_end) = (0, 0);
        for s in specs.iter_mut() {
            s.offset = offset;
            offset = round_up(offset + s.len());
            if s.decay {
                decay_end = offset;
            }
        }
        let total = offset;
        ParamLayout {
            specs,
            wte,
            wpe,
            layers,
            ln_f_w,
            ln_f_b,
            total,
            decay_range: (0, decay_end),
            no_decay_range: (decay_end, total),
        }
    }

    /// The spec with this HF name (with the `transformer.` prefix).
    pub fn find(&self, name: &str) -> Option<&ParamSpec> {
        self.specs.iter().find(|s| s.name == name)
    }

    /// Parameters, padding excluded.
    pub fn n_params(&self) -> usize {
        self.specs.iter().map(|s| s.len()).sum()
    }

    /// The spec's elements in a flat buffer laid out by this table.
    pub fn slice<'a>(&self, flat: &'a [f32], index: usize) -> &'a [f32] {
        let s = &self.specs[index];
        &flat[s.offset..s.offset + s.len()]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_are_aligned_disjoint_and_count_every_parameter() {
        let cfg = ModelConfig { n_layer: 3, n_head: 3, n_embd: 48, vocab_size: 997, n_positions: 37 };
        let layout = ParamLayout::new(&cfg);
        assert_eq!(layout.n_params(), cfg.n_params());
        assert_eq!(layout.specs.len(), 2 + 12 * 3 + 2);
        let mut end = 0;
        for s in &layout.specs {
            assert_eq!(s.offset % ALIGN, 0, "{} is not aligned", s.name);
            assert!(s.offset >= end, "{} overlaps the previous tensor", s.name);
            end = s.offset + s.len();
            let in_decay = s.offset < layout.decay_range.1;
            assert_eq!(in_decay, s.decay, "{} is in the wrong AdamW group", s.name);
        }
        assert!(end <= layout.total);
    }
}
