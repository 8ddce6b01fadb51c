//! metrics.jsonl: one JSON line per step (step, loss, lr, grad_norm, tokens_per_s, ms, and in f16
//! training the loss_scale the step ran with) and one per evaluation (step, val_loss).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::{fsutil, Error, Result};

pub const FILE: &str = "metrics.jsonl";

pub struct Metrics {
    path: PathBuf,
    file: File,
}

fn line_step(line: &str) -> Option<u64> {
    serde_json::from_str::<serde_json::Value>(line).ok()?.get("step")?.as_u64()
}

impl Metrics {
    /// Opens `run/metrics.jsonl` for appending. On resume from `resumed_at`, lines of later steps
    /// (written after that checkpoint by the interrupted run) are dropped first, so every step appears
    /// once.
    pub fn open(run: &Path, resumed_at: Option<u64>) -> Result<Self> {
        let path = run.join(FILE);
        match resumed_at {
            Some(step) if path.exists() => {
                let text = String::from_utf8_lossy(&fsutil::read(&path)?).into_owned();
                let kept: String = text
                    .lines()
                    .filter(|l| line_step(l).is_some_and(|s| s <= step))
                    .map(|l| format!("{l}\n"))
                    .collect();
                fsutil::write_atomic(&path, kept.as_bytes())?;
            }
            Some(_) => {}
            None => fsutil::write_atomic(&path, b"")?,
        }
        let file =
            OpenOptions::new().append(true).create(true).open(&path).map_err(|e| Error::io(&path, e))?;
        Ok(Metrics { path, file })
    }

    fn write(&mut self, value: serde_json::Value) -> Result<()> {
        writeln!(self.file, "{value}").map_err(|e| Error::io(&self.path, e))
    }

    /// `step` is 1-based: the number of optimizer steps done. `loss_scale` is f16 training's.
    #[allow(clippy::too_many_arguments)]
    pub fn step(
        &mut self,
        step: u64,
        loss: f32,
        lr: f32,
        grad_norm: f32,
        tokens_per_s: f64,
        ms: f64,
        loss_scale: Option<f32>,
    ) -> Result<()> {
        let finite =
            |x: f32| if x.is_finite() { serde_json::json!(x) } else { serde_json::json!(x.to_string()) };
        let mut line = serde_json::json!({
            "step": step, "loss": finite(loss), "lr": lr, "grad_norm": finite(grad_norm),
            "tokens_per_s": tokens_per_s.round(), "ms": (ms * 1000.0).round() / 1000.0,
        });
        if let Some(scale) = loss_scale {
            line["loss_scale"] = serde_json::json!(scale);
        }
        self.write(line)
    }

    pub fn eval(&mut self, step: u64, val_loss: f32) -> Result<()> {
        self.write(serde_json::json!({ "step": step, "val_loss": val_loss }))
    }
}
