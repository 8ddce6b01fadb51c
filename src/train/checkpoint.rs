//! Checkpoints. Each is a Hugging Face GPT-2 or Llama directory (config.json, model.safetensors,
//! tokenizer.json) that transformers loads unchanged, plus the optimizer and trainer state
//! (training_state.safetensors, trainer.json).
//!
//! A checkpoint is written into a hidden temporary directory, every file fsynced, then renamed to
//! `checkpoints/step-NNNNNNNN` in one step: a crash leaves either no new checkpoint or a complete one,
//! and the newest complete checkpoint wins.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::TrainConfig;
use crate::data::Tok;
use crate::model::{hf, ModelConfig, ParamLayout};
use crate::tensors::{self, Tensor, TensorFile};
use crate::{fsutil, Error, Result};

pub const DIR: &str = "checkpoints";
const STATE_FILE: &str = "training_state.safetensors";
const TRAINER_FILE: &str = "trainer.json";

/// Everything beyond the weights that a resumed run needs to continue exactly.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainerState {
    /// Optimizer steps done.
    pub step: u64,
    /// AdamW's step count t (steps whose update was applied).
    pub adam_t: u64,
    /// The training loader's RNG state.
    pub loader_state: u64,
    /// Consecutive skipped (non-finite) steps so far.
    pub bad_steps: usize,
    /// The config the run was started with.
    pub config: TrainConfig,
    /// The matmul variant of each shape ("MxKxN NT" → variant), so a resumed run uses the same kernels
    /// and stays bit-identical.
    #[serde(default)]
    pub kernels: std::collections::BTreeMap<String, String>,
    /// The attention variant the run used ("naive" or "flash"; absent in older checkpoints, which
    /// used "naive"), so a resumed run keeps it.
    #[serde(default)]
    pub attention: Option<String>,
    /// The number of data-parallel ranks the run had (absent before there were any: one). A step
    /// takes `ranks × grad_accum_steps` micro-batches; a resume may use any number of ranks that
    /// divides it.
    #[serde(default)]
    pub ranks: Option<usize>,
    /// The precision the run trains in ("f32", "bf16" or "f16"; absent in older checkpoints: f32),
    /// so a resumed run keeps it.
    #[serde(default)]
    pub precision: Option<String>,
    /// f16 training's loss scaler, so a resumed run continues with the same scale.
    #[serde(default)]
    pub loss_scaler: Option<crate::model::LossScaler>,
    /// The wgslm version that wrote the checkpoint.
    pub version: String,
}

/// What a trainer state must hold to be resumed from (a damaged file is refused, not trained on).
/// Its config is not held to today's bounds: the resumed run trains on the config it is given,
/// which must agree with this one on the keys that shape the run.
fn check_state(state: &TrainerState, dir: &Path) -> std::result::Result<(), String> {
    let named = dir.file_name().and_then(|n| n.to_str()).and_then(|n| n.strip_prefix("step-"));
    if let Some(step) = named.and_then(|n| n.parse::<u64>().ok()) {
        if state.step != step {
            return Err(format!("step {} in the checkpoint of step {step}", state.step));
        }
    }
    if state.adam_t > state.step {
        return Err(format!("adam_t {} is past step {}", state.adam_t, state.step));
    }
    if state.ranks == Some(0) || state.config.grad_accum_steps == 0 {
        return Err(format!(
            "ranks {} and grad_accum_steps {} must be at least 1",
            state.ranks.unwrap_or(1),
            state.config.grad_accum_steps
        ));
    }
    if let Some(a) = state.attention.as_deref().filter(|a| crate::model::Attention::parse(a).is_none()) {
        return Err(format!("attention {a:?} is not a variant this wgslm knows"));
    }
    if let Some(p) = state.precision.as_deref().filter(|p| crate::model::Precision::parse(p).is_none()) {
        return Err(format!("precision {p:?} is not one this wgslm knows"));
    }
    if let Some(s) = state.loss_scaler.filter(|s| !(s.scale.is_finite() && s.scale > 0.0)) {
        return Err(format!("loss scale {} is not a positive number", s.scale));
    }
    Ok(())
}

/// A checkpoint read back.
pub struct Loaded {
    pub dir: PathBuf,
    pub config: ModelConfig,
    pub params: Vec<f32>,
    pub m: Vec<f32>,
    pub v: Vec<f32>,
    pub state: TrainerState,
}

fn step_dir_name(step: u64) -> String {
    format!("step-{step:08}")
}

/// Complete checkpoints of a run, oldest first.
pub fn list(run: &Path) -> Vec<(u64, PathBuf)> {
    let Ok(entries) = std::fs::read_dir(run.join(DIR)) else { return Vec::new() };
    let mut found: Vec<(u64, PathBuf)> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let step = name.strip_prefix("step-")?.parse().ok()?;
            Some((step, e.path()))
        })
        .filter(|(_, p)| p.join(TRAINER_FILE).is_file())
        .collect();
    found.sort();
    found
}

/// The newest complete checkpoint of a run.
pub fn latest(run: &Path) -> Option<(u64, PathBuf)> {
    list(run).pop()
}

/// A model directory: `dir` itself when it holds config.json, else the newest checkpoint of the run
/// in `dir`.
pub fn resolve_model_dir(dir: &Path) -> Result<PathBuf> {
    if dir.join(hf::CONFIG_FILE).is_file() {
        return Ok(dir.to_path_buf());
    }
    latest(dir).map(|(_, p)| p).ok_or_else(|| {
        Error::Invalid(format!(
            "{}: neither a model directory (no config.json) nor a run directory with checkpoints",
            dir.display()
        ))
    })
}

/// Writes a checkpoint of `step` and prunes old ones beyond `keep` (0 keeps all). Refuses parameters
/// that are not finite: no checkpoint ever holds a NaN or an Inf.
#[allow(clippy::too_many_arguments)]
pub fn save(
    run: &Path,
    config: &ModelConfig,
    tok: &Tok,
    params: &[f32],
    m: &[f32],
    v: &[f32],
    state: &TrainerState,
    keep: usize,
) -> Result<PathBuf> {
    if let Some(i) = params.iter().chain(m).chain(v).position(|x| !x.is_finite()) {
        return Err(Error::Invalid(format!(
            "step {}: the model state holds a non-finite value (element {i}); not writing a checkpoint",
            state.step
        )));
    }
    let dir = run.join(DIR);
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    remove_partials(&dir);
    let name = step_dir_name(state.step);
    let tmp = dir.join(format!(".partial-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;

    hf::save(&tmp, config, params, Some(tok.eot()))?;
    tok.save(&tmp)?;
    let layout = ParamLayout::new(config);
    let mut moments = Vec::new();
    for (i, s) in layout.specs.iter().enumerate() {
        moments.push((format!("m.{}", s.name), Tensor::F32(layout.slice(m, i), s.shape.clone())));
        moments.push((format!("v.{}", s.name), Tensor::F32(layout.slice(v, i), s.shape.clone())));
    }
    tensors::write(&tmp.join(STATE_FILE), moments, None)?;
    let json = serde_json::to_string_pretty(state).expect("the trainer state serialises");
    // trainer.json last: a directory with it is complete (the rename below makes that atomic anyway).
    fsutil::write_atomic(&tmp.join(TRAINER_FILE), json.as_bytes())?;

    let final_dir = dir.join(&name);
    if final_dir.exists() {
        let old = dir.join(format!(".old-{name}-{}", std::process::id()));
        std::fs::rename(&final_dir, &old).map_err(|e| Error::io(&final_dir, e))?;
        std::fs::rename(&tmp, &final_dir).map_err(|e| Error::io(&final_dir, e))?;
        let _ = std::fs::remove_dir_all(&old);
    } else {
        std::fs::rename(&tmp, &final_dir).map_err(|e| Error::io(&final_dir, e))?;
    }
    if let Ok(d) = std::fs::File::open(&dir) {
        let _ = d.sync_all();
    }
    if keep > 0 {
        let all = list(run);
        for (_, old) in all.iter().take(all.len().saturating_sub(keep)) {
            let _ = std::fs::remove_dir_all(old);
        }
    }
    Ok(final_dir)
}

/// Removes what interrupted writes left behind.
fn remove_partials(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.filter_map(|e| e.ok()) {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with(".partial-") || name.starts_with(".old-") {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
}

/// Reads a checkpoint directory.
pub fn load(dir: &Path) -> Result<Loaded> {
    let (config, params) = hf::load(dir)?;
    let state_path = dir.join(TRAINER_FILE);
    let text = String::from_utf8(fsutil::read(&state_path)?)
        .map_err(|_| Error::Invalid(format!("{}: not UTF-8 text", state_path.display())))?;
    let state: TrainerState = serde_json::from_str(&text)
        .map_err(|e| Error::Invalid(format!("{}: not a wgslm trainer state: {e}", state_path.display())))?;
    check_state(&state, dir).map_err(|e| {
        Error::Invalid(format!(
            "{}: {e}; the checkpoint is damaged: resume from an earlier one (move this one away)",
            state_path.display()
        ))
    })?;
    let (ranks, accum) = (state.ranks.unwrap_or(1), state.config.grad_accum_steps);
    if ranks.checked_mul(accum).is_none_or(|n| n > crate::model::MAX_ACCUM) {
        return Err(Error::Invalid(format!(
            "{}: a step of {ranks} rank(s) × grad_accum_steps {accum} is more than the {} micro-batches a \
             step this wgslm takes; start a new run",
            state_path.display(),
            crate::model::MAX_ACCUM
        )));
    }
    let file = TensorFile::open(&dir.join(STATE_FILE))?;
    let layout = ParamLayout::new(&config);
    let (mut m, mut v) = (vec![0f32; layout.total], vec![0f32; layout.total]);
    for s in &layout.specs {
        m[s.offset..s.offset + s.len()].copy_from_slice(&file.f32(&format!("m.{}", s.name), Some(&s.shape))?);
        v[s.offset..s.offset + s.len()].copy_from_slice(&file.f32(&format!("v.{}", s.name), Some(&s.shape))?);
    }
    Ok(Loaded { dir: dir.to_path_buf(), config, params, m, v, state })
}
