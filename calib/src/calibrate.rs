//! `mce-calib calibrate`: run the float model over episodes of the fold's TRAINING classes and/or the
//! user's own frames against their exemplars ([`crate::frames`]), collect a histogram of every
//! conv / linear layer's input, choose scales by every method, and write the calibration table and
//! the int8 artifact.
//!
//! ```text
//! checkpoint ─ build under RecordPlan::observing ─▶ head + backbone with observers
//! train_pool(fold) ─ EpisodeSampler(seed) ─▶ N episodes ─ FeatureStore (backbone observed)
//!      ─ batches of 8 ─ head.forward(Eval) (head observed) ─▶ histograms per layer
//! --frames F --exemplars E ─ Segmenter (observed model) ─ each frame × each class ─┘
//! histograms ─ max / percentile / mse / kl ─▶ CalibrationTable ─▶ artifact (chosen method)
//! ```

use crate::frames::FrameSource;
use anyhow::{bail, Context, Result};
use candle_core::{DType, Device};
use candle_nn::VarBuilder;
use mce_core::checkpoint::{self, CheckpointFile};
use mce_core::inference::Segmenter;
use mce_core::model::Mode;
use mce_core::quant::artifact::{self, QuantSpec, SENSITIVE_LITE0};
use mce_core::quant::plan::{HistogramObserver, RecordPlan};
use mce_core::quant::scale::sqnr_db;
use mce_core::quant::table::TABLE_FORMAT;
use mce_core::quant::{timing, CalibrationTable, Exec, Method, QuantVarBuilder, QuantizedWeight};
use mce_core::{AnyBackbone, BackboneKind, Mce};
use mce_train::data::{EpisodeSampler, FewShotDataset};
use mce_train::features::FeatureStore;
use mce_train::train::batch;
use mce_train::transform::{Canvas, Variant};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;

/// The methods every table records.
pub const METHODS: [Method; 4] = [
    Method::Max,
    Method::Percentile(99.99),
    Method::Mse,
    Method::Kl,
];

/// Which episodes calibrate.
#[derive(Debug, Clone)]
pub struct CalibOptions {
    pub fold: usize,
    pub folds: usize,
    pub episodes: usize,
    pub seed: u64,
    /// The method whose scales go into the table's `scale` and the artifact.
    pub method: Method,
}

/// Build the float head and backbone of `file` with an observer on every layer.
fn observed_model(
    file: &CheckpointFile,
    observer: Arc<HistogramObserver>,
    device: &Device,
) -> Result<(Mce, AnyBackbone, Arc<RecordPlan>)> {
    let plan = Arc::new(RecordPlan::observing(observer));
    let vb = VarBuilder::from_tensors(file.tensors.clone(), DType::F32, device);
    let (head, backbone) =
        mce_core::checkpoint::build_model(&file.config, QuantVarBuilder::new(vb, plan.clone()))?;
    Ok((head, backbone, plan))
}

/// What calibration runs the float model on.
pub enum Source<'a> {
    /// 1-shot episodes of the fold's training classes ([`CalibOptions`]).
    Episodes(&'a dyn FewShotDataset),
    /// The user's frames against their exemplars ([`crate::frames`]).
    Frames(&'a FrameSource),
}

/// Collect statistics on training episodes of `ds` and build the table (nothing written).
pub fn calibrate(
    ds: &dyn FewShotDataset,
    file: &CheckpointFile,
    opts: &CalibOptions,
    device: &Device,
) -> Result<CalibrationTable> {
    calibrate_on(&[Source::Episodes(ds)], file, opts, device)
}

/// Run the observed float model over 1-shot training episodes; describe them.
fn observe_episodes(
    ds: &dyn FewShotDataset,
    head: &Mce,
    backbone: &AnyBackbone,
    file: &CheckpointFile,
    opts: &CalibOptions,
    device: &Device,
) -> Result<String> {
    let pool = ds.train_pool(opts.fold, opts.folds)?;
    let episodes = EpisodeSampler::new(opts.seed).episodes(&pool, 1, opts.episodes)?;
    let refs = mce_train::eval::episode_refs([episodes.as_slice()]);
    let canvas = Canvas::of(&file.config);
    let store = FeatureStore::build(ds, &refs, backbone, canvas, &[Variant::IDENTITY], device)?;
    let bar = mce_train::features::progress(episodes.len() as u64, "calibrate head");
    for chunk in episodes.chunks(8) {
        let b = batch::assemble(&store, chunk, || 0, device)?;
        head.forward(&b.query, &b.shots, Mode::Eval)?;
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    Ok(format!(
        "{} 1-shot episodes (seed {}) of the training classes of fold {}/{} of {}: {} images",
        opts.episodes,
        opts.seed,
        opts.fold,
        opts.folds,
        ds.name(),
        store_images(&refs)
    ))
}

/// Collect statistics on every source and build the table (nothing written).
pub fn calibrate_on(
    sources: &[Source],
    file: &CheckpointFile,
    opts: &CalibOptions,
    device: &Device,
) -> Result<CalibrationTable> {
    if sources.is_empty() {
        bail!("nothing to calibrate on: give a dataset (--dataset, --root) and/or --frames with --exemplars");
    }
    let observer = Arc::new(HistogramObserver::default());
    let (head, backbone, plan) = observed_model(file, observer.clone(), device)?;
    let mut seen = Vec::new();
    for source in sources {
        seen.push(match source {
            Source::Episodes(ds) => observe_episodes(*ds, &head, &backbone, file, opts, device)?,
            Source::Frames(src) => {
                // The segmenter owns its model: a second build sharing the observer.
                let (h, b, _) = observed_model(file, observer.clone(), device)?;
                let seg = Segmenter::new(file.config.clone(), b, h, device, true);
                crate::frames::observe(&seg, src)?
            }
        });
    }
    let histograms = observer.histograms();
    let mut layers = BTreeMap::new();
    for r in plan.records() {
        let Some(h) = histograms.get(&r.name) else {
            continue; // never ran (EfficientNet's classifier head)
        };
        let q = QuantizedWeight::quantize(&r.weight)?.dequantize(r.weight.device())?;
        let w_sqnr = sqnr_db(&r.weight, &q)?;
        layers.insert(
            r.name.clone(),
            CalibrationTable::layer(
                r.kind,
                r.weight.dims().to_vec(),
                w_sqnr,
                h.clone(),
                &METHODS,
                opts.method,
            ),
        );
    }
    Ok(CalibrationTable {
        format: TABLE_FORMAT.into(),
        checkpoint: file.path.display().to_string(),
        method: opts.method,
        source: seen.join("; "),
        layers,
    })
}

fn store_images(refs: &[mce_train::SampleRef]) -> usize {
    refs.iter()
        .map(|r| r.image)
        .collect::<std::collections::BTreeSet<_>>()
        .len()
}

/// The layers kept in f32 by default for a backbone.
pub fn default_keep_float(kind: BackboneKind) -> Vec<String> {
    match kind {
        BackboneKind::EfficientnetLite0 => SENSITIVE_LITE0.map(String::from).to_vec(),
        BackboneKind::Resnet50 => vec![],
    }
}

/// How the artifact's per-layer execution (`QMatMul` or dequantized f32) is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ExecChoice {
    /// Time both on this CPU with the model's own layer inputs; `QMatMul` only where faster.
    Measured,
    /// The fixed rule: `QMatMul` for every linear layer whose width is a multiple of 32.
    Rule,
}

/// Write the artifact of `file` with the table's scales of `method` (default: the table's).
pub fn write_artifact(
    out: &Path,
    file: &CheckpointFile,
    table: &CalibrationTable,
    method: Option<Method>,
    keep_float: &[String],
    exec: ExecChoice,
    device: &Device,
) -> Result<QuantSpec> {
    let method = method.unwrap_or(table.method);
    let scales: HashMap<String, f32> = table.scales(Some(method));
    let extra = BTreeMap::from([
        (
            "source_checkpoint".to_string(),
            file.path.display().to_string(),
        ),
        ("calibration".to_string(), table.source.clone()),
    ]);
    let timings = match exec {
        ExecChoice::Measured => Some(
            timing::measure(file, device)
                .with_context(|| format!("timing the layers of {}", file.path.display()))?,
        ),
        ExecChoice::Rule => None,
    };
    if let Some(t) = &timings {
        let fast = t.values().filter(|t| t.choice() == Exec::QMatMul).count();
        tracing::info!("{fast} of {} linear layers run faster as QMatMul", t.len());
    }
    artifact::write_from_checkpoint(
        out,
        file,
        &scales,
        method,
        keep_float,
        timings.as_ref(),
        &extra,
        device,
    )
    .with_context(|| format!("writing {}", out.display()))
}

/// Read a float checkpoint.
pub fn read_checkpoint(path: &Path, device: &Device) -> Result<CheckpointFile> {
    checkpoint::read(path, device).with_context(|| format!("reading {}", path.display()))
}
