//! Choosing the model a command runs: the checkpoint named by `--model` (a float checkpoint, or an
//! int8 artifact from `mce-calib`, told apart by its `format` metadata), the bundled trained edge
//! model when none is named, or the pretrained backbone with an untrained head (`--init lite0`),
//! which is announced loudly.

use anyhow::{bail, Context, Result};
use candle_core::Device;
use mce_core::inference::{lite0_weights_path, models_dir, Segmenter};
use mce_core::MceConfig;
use std::path::PathBuf;

/// The bundled trained edge model (MSRC-v2, fold 0, the `cross_matching` MCE head), used when no
/// model is named. The previous default, the class-agnostic `matching` head, stays bundled as
/// `models/mce_edge_msrc_fold0.safetensors` (`--model`).
pub fn default_model_path() -> PathBuf {
    models_dir().join("mce_edge_cross_msrc_fold0.safetensors")
}

/// Where the model comes from.
#[derive(Debug, Clone, clap::Args)]
pub struct ModelArgs {
    /// A trained MCE checkpoint (safetensors). Default: the bundled edge model, if present.
    #[arg(long, conflicts_with = "init")]
    pub model: Option<PathBuf>,
    /// No checkpoint: pretrained backbone + UNTRAINED head. Only `lite0` is bundled.
    #[arg(long, value_parser = ["lite0"])]
    pub init: Option<String>,
}

impl ModelArgs {
    pub fn load(&self, device: &Device) -> Result<Segmenter> {
        match (&self.model, &self.init) {
            (Some(path), _) => load_model_file(path, device)
                .with_context(|| format!("loading model {}", path.display())),
            (None, Some(_)) => {
                let weights = lite0_weights_path();
                let s = Segmenter::untrained(&MceConfig::edge_lite0(), &weights, device)
                    .with_context(|| format!("loading backbone {}", weights.display()))?;
                warn_untrained();
                Ok(s)
            }
            (None, None) => {
                let path = default_model_path();
                if !path.exists() {
                    bail!(
                        "no trained model bundled at {}: give a checkpoint with --model, or --init lite0",
                        path.display()
                    );
                }
                load_model_file(&path, device)
                    .with_context(|| format!("loading bundled model {}", path.display()))
            }
        }
    }
}

/// A float checkpoint or, detected by its `format` metadata, an int8 artifact from `mce-calib`.
fn load_model_file(path: &std::path::Path, device: &Device) -> Result<Segmenter> {
    let m = mce_core::inference::load_model_file(path, device)?;
    tracing::info!(
        "model {}: {} head ({}), {:?} backbone at {} px",
        path.display(),
        m.config.head.kind(),
        m.config.head.kind().describe(),
        m.config.backbone,
        m.config.image_size
    );
    if let Some(spec) = &m.quant {
        tracing::info!(
            "int8 model {} ({} layers, {} as quantized matmuls)",
            path.display(),
            spec.layers.len(),
            spec.layers
                .values()
                .filter(|l| l.exec == mce_core::quant::Exec::QMatMul)
                .count()
        );
    }
    Ok(Segmenter::from_model(m, device))
}

/// The loud warning every untrained-head run prints.
pub fn warn_untrained() {
    let line = "!".repeat(78);
    eprintln!("{line}\n!! WARNING: the MCE head is UNTRAINED (random weights, --init lite0).\n!! The backbone is pretrained, but the masks below are meaningless.\n!! Train one with mce-train, or pass --model <checkpoint>.\n{line}");
    tracing::warn!("running with an untrained head");
}
