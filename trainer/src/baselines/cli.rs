//! `mce-train baselines`: the training-free baselines on a fold's test episodes.
//!
//! ```text
//! mce-train baselines --dataset msrc --root DIR --fold 0 --shots 1 --episodes 1000 \
//!                     --seeds 0,1,2,3,4 [--val-episodes 300] [--json out.json]
//! ```

use crate::transform::Canvas;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use mce_core::inference::{lite0_weights_path, load_backbone};
use mce_core::{BackboneKind, MceConfig};

use super::{build_baseline_store, run_baselines, BaselineOptions};
use crate::eval::cli::{compute_device, write_json};
use crate::eval::EpisodeArgs;

/// Backbones the baselines can use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BackboneArg {
    /// EfficientNet-Lite0 (bundled ImageNet weights), canvas 320 by default.
    Lite0,
    /// ResNet-50 dilated (needs --weights), canvas 473 by default.
    Resnet50,
}

/// Arguments of `mce-train baselines`.
#[derive(Debug, Clone, clap::Args)]
pub struct BaselinesArgs {
    #[command(flatten)]
    pub episodes: EpisodeArgs,
    /// Validation episodes from the fold's training classes (choose feature and threshold).
    #[arg(long, default_value_t = 300)]
    pub val_episodes: usize,
    /// Seed of the validation episodes.
    #[arg(long, default_value_t = super::DEFAULT_VAL_SEED)]
    pub val_seed: u64,
    /// Backbone whose pretrained features the baselines compare.
    #[arg(long, value_enum, default_value_t = BackboneArg::Lite0)]
    pub backbone: BackboneArg,
    /// Backbone weights (safetensors, original tensor names); default: bundled Lite0.
    #[arg(long)]
    pub weights: Option<PathBuf>,
    /// Canvas side S (default: the backbone preset's, 320 for Lite0, 473 for ResNet-50).
    #[arg(long)]
    pub size: Option<usize>,
}

/// Run `mce-train baselines`.
pub fn run(a: &BaselinesArgs) -> anyhow::Result<ExitCode> {
    let ds = a.episodes.open()?;
    let mut opts = BaselineOptions::new(a.episodes.options(ds.as_ref()), a.val_episodes);
    opts.val_seed = a.val_seed;
    let mut config = match a.backbone {
        BackboneArg::Lite0 => MceConfig::edge_lite0(),
        BackboneArg::Resnet50 => MceConfig::paper_resnet50(),
    };
    if let Some(size) = a.size {
        config.image_size = size;
    }
    let weights = match (&a.weights, a.backbone) {
        (Some(w), _) => w.clone(),
        (None, BackboneArg::Lite0) => lite0_weights_path(),
        (None, BackboneArg::Resnet50) => anyhow::bail!("--backbone resnet50 needs --weights"),
    };
    let device = compute_device()?;
    let backbone = load_backbone(&config, &weights, &device)?;
    let start = Instant::now();
    let store = build_baseline_store(ds.as_ref(), &backbone, Canvas::of(&config), &opts, &device)?;
    let feature_seconds = start.elapsed().as_secs_f64();
    let name = match config.backbone {
        BackboneKind::EfficientnetLite0 => "efficientnet_lite0",
        BackboneKind::Resnet50 => "resnet50",
    };
    let mut report = run_baselines(ds.as_ref(), &store, name, &opts)?;
    report.feature_seconds = Some(feature_seconds);
    print!("{report}");
    if let Some(path) = &a.episodes.json {
        write_json(path, &report)?;
    }
    Ok(ExitCode::SUCCESS)
}
