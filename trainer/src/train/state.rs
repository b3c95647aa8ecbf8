//! What a run leaves on disk: model checkpoints (`last`, `best`, loadable by the device) and the
//! optimizer's momentum buffers beside `last`, so `--resume` continues bit for bit. Every random draw
//! of a step is derived from (seed, step), so no generator state needs saving.

use crate::optim::Sgd;
use crate::{Error, Result};
use candle_core::{Device, Tensor};
use candle_nn::VarMap;
use mce_core::{checkpoint, MceConfig};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

/// File names inside a run directory.
pub struct RunFiles {
    pub dir: PathBuf,
}

impl RunFiles {
    pub fn last(&self) -> PathBuf {
        self.dir.join("last.safetensors")
    }
    pub fn best(&self) -> PathBuf {
        self.dir.join("best.safetensors")
    }
    pub fn optimizer(&self) -> PathBuf {
        self.dir.join("last.optimizer.safetensors")
    }
    pub fn log(&self) -> PathBuf {
        self.dir.join("log.jsonl")
    }
}

/// The backbone tensors a checkpoint carries: everything but an ImageNet classifier head.
pub fn backbone_tensors(path: &Path, device: &Device) -> Result<HashMap<String, Tensor>> {
    let all = candle_core::safetensors::load(path, device)
        .map_err(|e| Error::format(path, format!("cannot read backbone weights: {e}")))?;
    let classifier = |k: &str| {
        k.starts_with("_fc.")
            || k.starts_with("_conv_head.")
            || k.starts_with("_bn1.")
            || k.starts_with("fc.")
    };
    Ok(all.into_iter().filter(|(k, _)| !classifier(k)).collect())
}

/// Save model + optimizer state for `step` (the optimizer file first: a crash between the two
/// leaves a newer optimizer file, which resume detects by its step).
pub fn save_last(
    files: &RunFiles,
    config: &MceConfig,
    varmap: &VarMap,
    backbone: &HashMap<String, Tensor>,
    opt: &Sgd,
    extra: &BTreeMap<String, String>,
) -> Result<()> {
    let step = extra.get("step").cloned().unwrap_or_default();
    let meta = HashMap::from([("step".to_string(), step)]);
    let bytes = safetensors::serialize(opt.state().iter(), Some(meta))
        .map_err(|e| Error::format(files.optimizer(), format!("cannot serialise: {e:?}")))?;
    checkpoint::write_atomic(&files.optimizer(), &bytes)?;
    checkpoint::save(&files.last(), config, varmap, backbone, extra)?;
    Ok(())
}

/// Load the optimizer buffers saved with the checkpoint of `step`.
pub fn load_optimizer(
    files: &RunFiles,
    step: usize,
    device: &Device,
) -> Result<BTreeMap<String, Tensor>> {
    let path = files.optimizer();
    let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes)
        .map_err(|e| Error::format(&path, format!("corrupt optimizer state: {e:?}")))?;
    let saved = meta
        .metadata()
        .as_ref()
        .and_then(|m| m.get("step"))
        .cloned()
        .unwrap_or_default();
    if saved != step.to_string() {
        return Err(Error::format(
            &path,
            format!("optimizer state is from step {saved:?}, the checkpoint from step {step}"),
        ));
    }
    let tensors = candle_core::safetensors::load_buffer(&bytes, device)
        .map_err(|e| Error::format(&path, e.to_string()))?;
    Ok(tensors.into_iter().collect())
}
