//! Models: an architecture-free runtime ([`runtime`]) and one file per architecture ([`gpt2`],
//! [`llama`]), each supplying its parameter table, activation plan, forward and backward ops and
//! config parsing. [`layout`] turns a parameter table into offsets; [`hf`] reads and writes Hugging
//! Face directories of either architecture.

pub mod config;
pub mod decode;
pub mod gpt2;
pub mod hf;
pub mod layout;
pub mod llama;
pub mod mixed;
pub mod runtime;

pub use config::{Arch, LlamaConfig, ModelConfig};
pub use layout::{init_params, ParamLayout};
pub use mixed::{LossScaler, Precision};
pub use runtime::{Attention, BatchShape, Mode, Model, StepStats, MAX_ACCUM, MAX_BATCH_TOKENS};
