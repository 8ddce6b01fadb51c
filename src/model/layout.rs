//! The one layout table: every parameter's Hugging Face name, shape, initialisation and offset in the
//! flat params buffer. Gradients, Adam m and Adam v use the same offsets; checkpoints and HF import and
//! export use the same names. Each architecture supplies its table ([`ParamDef`]s); this file assigns
//! the offsets.

use super::{gpt2, llama, Arch, ModelConfig};
use crate::rng::Rng;

/// Tensors start on 64-element (256-byte) boundaries: the largest storage-binding offset alignment
/// WebGPU allows, so any tensor can be bound on its own.
pub const ALIGN: usize = 64;

/// How a tensor starts out in a fresh model.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Init {
    Zeros,
    Ones,
    /// Normal samples with mean 0 and this standard deviation.
    Normal(f64),
}

/// One parameter tensor as an architecture declares it.
#[derive(Clone, Debug, PartialEq)]
pub struct ParamDef {
    /// The Hugging Face name, e.g. `transformer.h.0.attn.c_attn.weight`.
    pub name: String,
    /// HF shape (GPT-2's Conv1D weights are `[in, out]`, nn.Linear weights `[out, in]`).
    pub shape: Vec<usize>,
    /// Weight decay applies.
    pub decay: bool,
    pub init: Init,
    /// Placed right after the previous tensor, without alignment padding, so that the two can be
    /// bound as one matrix (Llama's q, k and v projections; its gate and up projections).
    pub packed: bool,
}

impl ParamDef {
    /// A tensor with decay on exactly when it has two or more dimensions.
    pub fn new(name: String, shape: Vec<usize>, init: Init) -> Self {
        let decay = shape.len() >= 2;
        ParamDef { name, shape, decay, init, packed: false }
    }

    /// The same tensor, placed right after the previous one (see `packed`).
    pub fn packed(self) -> Self {
        ParamDef { packed: true, ..self }
    }
}

/// One parameter tensor in the flat buffer.
#[derive(Clone, Debug, PartialEq)]
pub struct ParamSpec {
    pub name: String,
    pub shape: Vec<usize>,
    /// Element offset in the flat buffer.
    pub offset: usize,
    pub decay: bool,
    pub init: Init,
}

impl ParamSpec {
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Where every parameter lives. Decayed tensors come first, then the others, so AdamW runs as two
/// contiguous ranges with their own weight decay.
#[derive(Clone, Debug)]
pub struct ParamLayout {
    pub specs: Vec<ParamSpec>,
    /// Elements in the flat buffer, padding included.
    pub total: usize,
    /// `[start, end)` of the decayed tensors and of the rest.
    pub decay_range: (usize, usize),
    pub no_decay_range: (usize, usize),
}

fn round_up(x: usize) -> usize {
    x.div_ceil(ALIGN) * ALIGN
}

/// The table of `cfg`'s architecture.
pub fn param_defs(cfg: &ModelConfig) -> Vec<ParamDef> {
    match cfg.arch {
        Arch::Gpt2 => gpt2::params(cfg).0,
        Arch::Llama(_) => llama::params(cfg).0,
    }
}

impl ParamLayout {
    pub fn new(cfg: &ModelConfig) -> Self {
        Self::from_defs(param_defs(cfg))
    }

    /// Assigns offsets in the order given. Architectures list decayed tensors first: a table that
    /// does not is a bug in the architecture, caught here.
    pub fn from_defs(defs: Vec<ParamDef>) -> Self {
        let (mut offset, mut decay_end) = (0, 0);
        let mut specs = Vec::with_capacity(defs.len());
        let mut seen_no_decay = false;
        for d in defs {
            assert!(!(d.decay && seen_no_decay), "{}: decayed tensors must come first", d.name);
            seen_no_decay |= !d.decay;
            let at = match specs.last() {
                Some(prev) if d.packed => {
                    let prev: &ParamSpec = prev;
                    assert_eq!(prev.decay, d.decay, "{}: packed with a tensor of the other group", d.name);
                    prev.offset + prev.len()
                }
                _ => offset,
            };
            let spec = ParamSpec { name: d.name, shape: d.shape, offset: at, decay: d.decay, init: d.init };
            offset = round_up(at + spec.len());
            if spec.decay {
                decay_end = offset;
            }
            specs.push(spec);
        }
        ParamLayout { specs, total: offset, decay_range: (0, decay_end), no_decay_range: (decay_end, offset) }
    }

    /// The spec with this HF name.
    pub fn find(&self, name: &str) -> Option<&ParamSpec> {
        self.specs.iter().find(|s| s.name == name)
    }

    /// The index of the spec with this HF name.
    pub fn index(&self, name: &str) -> Option<usize> {
        self.specs.iter().position(|s| s.name == name)
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

    /// A fresh model's parameters: each tensor as its [`Init`] says, the normal samples drawn from
    /// one generator in table order.
    pub fn init(&self, seed: u64) -> Vec<f32> {
        let mut flat = vec![0f32; self.total];
        let mut rng = Rng::new(seed);
        for s in &self.specs {
            let out = &mut flat[s.offset..s.offset + s.len()];
            match s.init {
                Init::Zeros => {}
                Init::Ones => out.fill(1.0),
                Init::Normal(std) => out.iter_mut().for_each(|x| *x = (rng.normal() * std) as f32),
            }
        }
        flat
    }
}

/// A fresh model's parameters (see [`ParamLayout::init`]).
pub fn init_params(cfg: &ModelConfig, seed: u64) -> Vec<f32> {
    ParamLayout::new(cfg).init(seed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::LlamaConfig;

    fn check(cfg: &ModelConfig) {
        let layout = ParamLayout::new(cfg);
        assert_eq!(layout.n_params(), cfg.n_params());
        let mut end = 0;
        for s in &layout.specs {
            assert!(s.offset >= end, "{} overlaps the previous tensor", s.name);
            end = s.offset + s.len();
            let in_decay = s.offset < layout.decay_range.1;
            assert_eq!(in_decay, s.decay, "{} is in the wrong AdamW group", s.name);
        }
        assert!(end <= layout.total);
    }

    #[test]
    fn offsets_are_aligned_disjoint_and_count_every_parameter() {
        let cfg = ModelConfig::gpt2(3, 3, 48, 997, 37);
        let layout = ParamLayout::new(&cfg);
        assert_eq!(layout.specs.len(), 2 + 12 * 3 + 2);
        for s in &layout.specs {
            assert_eq!(s.offset % ALIGN, 0, "{} is not aligned", s.name);
        }
        check(&cfg);
    }

    #[test]
    fn llama_packs_its_projections_and_counts_every_parameter() {
        for tie in [false, true] {
            let l = LlamaConfig {
                n_kv_head: 2,
                intermediate_size: 37,
                rope_theta: 1e4,
                norm_eps: 1e-5,
                tie_embeddings: tie,
            };
            let cfg = ModelConfig {
                arch: Arch::Llama(l),
                n_layer: 2,
                n_head: 6,
                n_embd: 36,
                vocab_size: 97,
                n_positions: 40,
            };
            check(&cfg);
            let layout = ParamLayout::new(&cfg);
            let at = |n: &str| layout.find(n).unwrap_or_else(|| panic!("{n} missing"));
            let (q, k, v) = (
                at("model.layers.1.self_attn.q_proj.weight"),
                at("model.layers.1.self_attn.k_proj.weight"),
                at("model.layers.1.self_attn.v_proj.weight"),
            );
            assert_eq!((q.offset + q.len(), k.offset + k.len()), (k.offset, v.offset));
            let (g, u) = (at("model.layers.0.mlp.gate_proj.weight"), at("model.layers.0.mlp.up_proj.weight"));
            assert_eq!(g.offset + g.len(), u.offset);
            assert_eq!(layout.find("lm_head.weight").is_none(), tie);
        }
    }
}
