//! What a run records for an outside reproduction (`save_batches = true`): the initial model as a
//! Hugging Face directory (`init/`), every token batch the optimizer steps on (`batches.bin`), and the
//! evaluation windows (`eval_batches.bin`), so that another trainer (scripts/pytorch_parity.py) can
//! train the same model from the same start on the same data and be compared step by step.
//!
//! Both .bin files are flat arrays of little-endian u32 token ids, row-major: `batches.bin` is
//! (steps, grad_accum_steps, 2, batch_size, block_size) with inputs before targets; `eval_batches.bin`
//! is (eval_batches, 2, batch_size, block_size). `batches.json` gives the shapes.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::data::Tok;
use crate::model::{hf, BatchShape, ModelConfig};
use crate::{fsutil, Error, Result};

pub const INIT_DIR: &str = "init";
pub const BATCHES_FILE: &str = "batches.bin";
pub const EVAL_FILE: &str = "eval_batches.bin";
pub const SHAPES_FILE: &str = "batches.json";

/// The open batch file of a run.
pub struct BatchRecord {
    path: PathBuf,
    file: File,
}

fn bytes(ids: &[u32]) -> Vec<u8> {
    ids.iter().flat_map(|id| id.to_le_bytes()).collect()
}

impl BatchRecord {
    /// Starts the record of a fresh run: the initial model, the evaluation windows, the shapes, and
    /// an empty batch file.
    pub fn create(
        run: &Path,
        shape: BatchShape,
        config: &ModelConfig,
        tok: &Tok,
        params: &[f32],
        eval: &[(Vec<u32>, Vec<u32>)],
    ) -> Result<Self> {
        // A fresh run's directory holds no checkpoint (the trainer checked): an init/ that is a
        // model directory is the record of a run stopped before its first one, and is replaced.
        let init = run.join(INIT_DIR);
        if init.join(hf::CONFIG_FILE).is_file() {
            std::fs::remove_dir_all(&init).map_err(|e| Error::io(&init, e))?;
        } else if init.exists() {
            return Err(Error::Invalid(format!(
                "{} already exists and is not a model directory: a fresh run with save_batches = true \
                 writes its initial model there; move it or choose another --out",
                init.display()
            )));
        }
        hf::save(&init, config, params, Some(tok.eot()))?;
        tok.save(&init)?;
        let windows: Vec<u8> = eval.iter().flat_map(|(x, y)| [bytes(x), bytes(y)].concat()).collect();
        fsutil::write_atomic(&run.join(EVAL_FILE), &windows)?;
        let shapes = serde_json::json!({
            "batch_size": shape.b,
            "block_size": shape.t,
            "grad_accum_steps": shape.accum,
            "eval_batches": eval.len(),
            "dtype": "uint32 little-endian",
            "batches.bin": "(steps, grad_accum_steps, 2, batch_size, block_size): inputs, then targets",
            "eval_batches.bin": "(eval_batches, 2, batch_size, block_size): inputs, then targets",
        });
        let json = serde_json::to_string_pretty(&shapes).expect("a JSON value serialises");
        fsutil::write_atomic(&run.join(SHAPES_FILE), json.as_bytes())?;
        let path = run.join(BATCHES_FILE);
        let file = File::create(&path).map_err(|e| Error::io(&path, e))?;
        Ok(BatchRecord { path, file })
    }

    /// Continues the record of a resumed run at `step`: what a crash left past it is cut off.
    pub fn resume(run: &Path, shape: BatchShape, step: u64) -> Result<Self> {
        let path = run.join(BATCHES_FILE);
        let file = OpenOptions::new().append(true).open(&path).map_err(|e| Error::io(&path, e))?;
        let want = step * (shape.accum * 2 * shape.tokens() * 4) as u64;
        let have = file.metadata().map_err(|e| Error::io(&path, e))?.len();
        if have < want {
            return Err(Error::Invalid(format!(
                "{}: holds {have} bytes, fewer than the {want} of the {step} steps the checkpoint has done; \
                 the batch record is incomplete (start a new run to record one)",
                path.display()
            )));
        }
        file.set_len(want).map_err(|e| Error::io(&path, e))?;
        Ok(BatchRecord { path, file })
    }

    /// Appends one micro-batch.
    pub fn push(&mut self, inputs: &[u32], targets: &[u32]) -> Result<()> {
        let data = [bytes(inputs), bytes(targets)].concat();
        self.file.write_all(&data).map_err(|e| Error::io(&self.path, e))
    }
}
