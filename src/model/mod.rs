pub mod config;
pub mod gpt2;
pub mod hf;
pub mod layout;
pub use config::ModelConfig;
pub use gpt2::{BatchShape, Gpt2, Mode, StepStats};
pub use layout::ParamLayout;
