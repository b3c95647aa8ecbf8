//! `mce-train eval`: evaluate a checkpoint on a fold's test episodes, print the table, write JSON.
//!
//! ```text
//! mce-train eval --checkpoint C --dataset msrc --root DIR --fold 0 --shots 1 \
//!                --episodes 1000 --seeds 0,1,2,3,4 [--json out.json]
//! ```

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use candle_core::Device;
use serde::Serialize;

use super::{evaluate_checkpoint_with, EvalOptions};
use crate::data::{DatasetArgs, FewShotDataset};
use mce_core::config::InputResize;

/// Dataset, fold and episode arguments shared by `eval` and `baselines`.
#[derive(Debug, Clone, clap::Args)]
pub struct EpisodeArgs {
    #[command(flatten)]
    pub data: DatasetArgs,
    /// Fold to test.
    #[arg(long)]
    pub fold: usize,
    /// Number of folds (default: the dataset's).
    #[arg(long)]
    pub folds: Option<usize>,
    /// Shots K per episode.
    #[arg(long, default_value_t = 1)]
    pub shots: usize,
    /// Episodes per seed.
    #[arg(long, default_value_t = 1000)]
    pub episodes: usize,
    /// Seeds of the episode lists, comma separated.
    #[arg(long, value_delimiter = ',', default_value = "0,1,2,3,4")]
    pub seeds: Vec<u64>,
    /// Also write the report as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

impl EpisodeArgs {
    /// Open the dataset these arguments name.
    pub fn open(&self) -> anyhow::Result<Box<dyn FewShotDataset>> {
        Ok(self.data.open()?)
    }

    /// The evaluation options (fold count defaults to the dataset's).
    pub fn options(&self, ds: &dyn FewShotDataset) -> EvalOptions {
        EvalOptions {
            fold: self.fold,
            n_folds: self.folds.unwrap_or_else(|| ds.default_folds()),
            shots: self.shots,
            episodes: self.episodes,
            seeds: self.seeds.clone(),
        }
    }
}

/// Arguments of `mce-train eval`.
#[derive(Debug, Clone, clap::Args)]
pub struct EvalArgs {
    /// Trained checkpoint (head, backbone and config), or an int8 artifact of `mce-calib`.
    #[arg(long)]
    pub checkpoint: PathBuf,
    #[command(flatten)]
    pub episodes: EpisodeArgs,
    /// Fit the images to the canvas this way instead of the model's own (an ablation).
    #[arg(long, value_enum)]
    pub resize: Option<ResizeArg>,
}

/// `--resize` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ResizeArg {
    /// Longer side to the input size, aspect kept, padded.
    Letterbox,
    /// Stretched to the square input.
    Squash,
}

impl From<ResizeArg> for InputResize {
    fn from(r: ResizeArg) -> Self {
        match r {
            ResizeArg::Letterbox => InputResize::Letterbox,
            ResizeArg::Squash => InputResize::Squash,
        }
    }
}

/// Write `value` as pretty JSON to `path`.
pub fn write_json(path: &Path, value: &impl Serialize) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(value)?;
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

/// The device to compute on: the first CUDA GPU when candle was built with CUDA, else the CPU.
pub fn compute_device() -> anyhow::Result<Device> {
    Ok(Device::cuda_if_available(0)?)
}

/// Run `mce-train eval`.
pub fn run(a: &EvalArgs) -> anyhow::Result<ExitCode> {
    let ds = a.episodes.open()?;
    let opts = a.episodes.options(ds.as_ref());
    let device = compute_device()?;
    let fit = a.resize.map(InputResize::from);
    let report = evaluate_checkpoint_with(ds.as_ref(), &a.checkpoint, &opts, fit, &device)?;
    print!("{report}");
    if let Some(path) = &a.episodes.json {
        write_json(path, &report)?;
    }
    Ok(ExitCode::SUCCESS)
}
