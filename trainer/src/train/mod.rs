//! Episodic meta-training of the MCE head on a frozen backbone: cached-feature mode (default), or
//! online mode with augmentation ([`online`]); and quantisation-aware fine-tuning of a trained
//! head ([`qat`]). [`train`] chains the steps of the private `run` module.
//!
//! ```text
//! dataset ─ train_pool(fold) ─ split ─▶ train pool / validation queries (training classes only)
//!   FeatureStore (backbone once per image × variant; online: validation images only)
//!   head from seed [--from: warm start from a checkpoint], SGD;
//!   --resume: head + optimizer state from last.safetensors
//!   [online: images of each step ─ augment ─ backbone]
//!   step s: seed_s = hash(seed, s) ─▶ K, episodes, variants, dropout ─▶ Batch ─▶ head ─▶ loss
//!           (CE, or CE + Dice) ─▶ backward ─▶ SGD (momentum, decay) at warm-up + poly LR
//!   every N steps: validation mIoU ─▶ best.safetensors;  last.safetensors + optimizer state
//! ```

pub mod batch;
pub mod cli;
pub mod online;
pub mod qat;
mod run;
pub mod state;
pub mod validate;
pub mod warm_start;

use crate::data::FewShotDataset;
use crate::optim::SgdConfig;
use crate::{Error, Result};
use candle_core::Device;
use mce_core::model::init::InitScheme;
use mce_core::model::loss::LossKind;
use mce_core::{AnyBackbone, MceConfig};
use run::{Run, TrainData, TrainModel};
use serde::{Deserialize, Serialize};
use state::RunFiles;
use std::path::PathBuf;

/// Everything that defines a training run (saved in every checkpoint's metadata).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainConfig {
    pub model: MceConfig,
    pub fold: usize,
    pub folds: usize,
    /// K of each batch, drawn per step from this list (e.g. `[1]` or `[1, 5]`).
    pub shots: Vec<usize>,
    pub batch: usize,
    pub steps: usize,
    pub sgd: SgdConfig,
    pub poly_power: f64,
    /// Linear learning-rate warm-up steps (0: the paper's plain poly schedule).
    #[serde(default)]
    pub warmup_steps: usize,
    pub seed: u64,
    /// Longer-side scales of the cached variants; each also mirrored when `flips`.
    pub scales: Vec<f32>,
    pub flips: bool,
    /// About 1/`val_every_image` of the training images become validation queries (0 or 1: none;
    /// every image trains, no validation runs and no `best` checkpoint is written).
    pub val_every_image: u64,
    pub val_episodes: usize,
    pub val_interval: usize,
    pub checkpoint_interval: usize,
    /// Stop (with a checkpoint) once this much wall time has passed.
    pub max_minutes: Option<f64>,
    /// Pause (with a checkpoint) after this step; `--resume` continues on the same schedule.
    pub stop_at: Option<usize>,
    /// Online mode ([`online`]): backbone features per step, with PFENet's augmentation, instead of
    /// the feature cache.
    #[serde(default)]
    pub online: bool,
    /// The loss minimised (absent from older runs, which read as the paper's cross-entropy).
    #[serde(default)]
    pub loss: LossKind,
    /// How the head's conv and linear weights are drawn (absent from older runs: candle's).
    #[serde(default)]
    pub init: InitScheme,
    /// Warm start ([`warm_start`]): the head starts from this checkpoint's tensors, those it
    /// lacks from `seed` (absent from older runs: none).
    #[serde(default)]
    pub init_from: Option<PathBuf>,
}

impl TrainConfig {
    /// The learning rate of `step`: linear warm-up, then poly decay over the run.
    pub fn lr_at(&self, step: usize) -> f64 {
        crate::optim::warmup_poly_lr(
            self.sgd.lr,
            step,
            self.steps,
            self.poly_power,
            self.warmup_steps,
        )
    }
}

/// What a run reports at the end.
#[derive(Debug, Clone, Serialize)]
pub struct TrainSummary {
    pub steps_done: usize,
    pub seconds: f64,
    pub final_loss: f64,
    pub best_val_miou: Option<f64>,
    pub best_step: Option<usize>,
    pub last: PathBuf,
    pub best: Option<PathBuf>,
}

/// Train on `ds` into `out`, resuming from `out/last.safetensors` when `resume`.
pub fn train(
    ds: &dyn FewShotDataset,
    cfg: &TrainConfig,
    backbone: &AnyBackbone,
    backbone_weights: &std::path::Path,
    out: PathBuf,
    resume: bool,
    device: &Device,
) -> Result<TrainSummary> {
    std::fs::create_dir_all(&out).map_err(|e| Error::io(&out, e))?;
    let files = RunFiles { dir: out };
    let data = TrainData::prepare(ds, cfg, backbone, device)?;
    let mut model = TrainModel::build(cfg, backbone_weights, device)?;
    let start = if resume {
        model.resume(&files, device)?
    } else {
        0
    };
    // A resumed run has its weights; only a fresh start reads the warm-start checkpoint.
    if let (0, Some(from)) = (start, &cfg.init_from) {
        model.warm_start(from, cfg, device)?;
    }
    let mut run = Run::new(cfg, files, start)?;
    let steps_done = run.train(&data, &mut model, device)?;
    Ok(run.finish(steps_done))
}
