//! Training: the config, the learning-rate schedule, checkpoints, metrics, and the loop.

pub mod checkpoint;
pub mod config;
pub mod metrics;
pub mod record;
pub mod schedule;
pub mod trainer;

pub use config::TrainConfig;
pub use trainer::{run, run_in, RunOptions, Summary};
