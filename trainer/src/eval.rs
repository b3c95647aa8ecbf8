//! Evaluation of a few-shot segmenter on a fold's fixed test episodes, with the paper's protocol
//! (the one EVAL.md reports): several seeds of `test_episodes`, scoring at the ORIGINAL label
//! resolution, mIoU per class accumulated over episodes, FB-IoU, and the spread across seeds
//! (mean and 95 % Student-t interval).
//!
//! ```text
//! EvalOptions ─ test_episodes(fold, shots, n, seed) per seed ─▶ episode lists
//!        └─ episode_refs ─▶ FeatureStore::build(…, [Variant::IDENTITY]) (backbone once per image)
//! episodes of all seeds, grouped by query image (engine::score_episodes):
//!     EpisodeModel::encode_query(query features)                     once per distinct query
//!     per episode: EpisodeModel::logits(query, supports) ─▶ (1, 2, S, S) canvas logits
//!         ─ preprocess::logits_to_original_size (crop valid region, bilinear align_corners,
//!           argmax) ─▶ prediction orig_h × orig_w
//!         ─ vs Sample::load_mask (original resolution, 255 ignored, loaded once per SampleRef)
//!         ─▶ IouAccumulator of that seed
//! per seed Summary ─▶ EvalReport (per class IoU, mIoU, FB-IoU; mean ± t-interval; wall time)
//! ```
//!
//! [`EpisodeModel`] is what the trained head ([`MceEval`]) and the training-free baselines
//! (`crate::baselines`) implement, so all of them share the episodes, the mapping back and the
//! scoring.

pub mod cli;
pub mod engine;
pub mod report;
pub mod stats;

use std::path::Path;
use std::time::Instant;

use candle_core::{Device, Tensor};
use mce_core::model::{Mode, QueryEncoding};
use mce_core::preprocess::Resize;
use mce_core::{AnyBackbone, Features, Mce};

use crate::data::{test_episodes, Episode, FewShotDataset, SampleRef};
use crate::features::{progress, FeatureStore};
use crate::transform::{Canvas, Variant};
use crate::{Error, Result};
use mce_core::config::InputResize;

pub use cli::{run, EpisodeArgs, EvalArgs};
pub use engine::{predict_original, score_episodes, Grouping, Prediction, SeedScores};
pub use report::{ClassScore, EvalReport, SeedResult};
pub use stats::{t_quantile, Interval};

/// Which episodes to evaluate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EvalOptions {
    pub fold: usize,
    pub n_folds: usize,
    /// Shots K per episode.
    pub shots: usize,
    /// Episodes per seed (1000 in the protocol).
    pub episodes: usize,
    /// One episode list per seed (`test_episodes(…, seed)`).
    pub seeds: Vec<u64>,
}

impl EvalOptions {
    /// [`Error::Input`] for an empty seed list or zero episodes / shots.
    pub fn check(&self) -> Result<()> {
        if self.seeds.is_empty() || self.episodes == 0 || self.shots == 0 {
            return Err(Error::Input(format!(
                "evaluation needs at least one seed, episode and shot (seeds {:?}, episodes {}, \
                 shots {})",
                self.seeds, self.episodes, self.shots
            )));
        }
        Ok(())
    }
}

/// The fixed test-episode list of every seed, in the order of `opts.seeds`.
pub fn seed_episodes(ds: &dyn FewShotDataset, opts: &EvalOptions) -> Result<Vec<Vec<Episode>>> {
    opts.check()?;
    opts.seeds
        .iter()
        .map(|&seed| test_episodes(ds, opts.fold, opts.n_folds, opts.shots, opts.episodes, seed))
        .collect()
}

/// Every distinct (image, class) that the episodes use as query or support, ascending.
pub fn episode_refs<'a>(lists: impl IntoIterator<Item = &'a [Episode]>) -> Vec<SampleRef> {
    let mut refs: Vec<SampleRef> = lists
        .into_iter()
        .flatten()
        .flat_map(|e| std::iter::once(e.query).chain(e.supports.iter().copied()))
        .collect();
    refs.sort_unstable();
    refs.dedup();
    refs
}

/// Backbone features (test transform only) of exactly the images the episode lists need.
pub fn build_store(
    ds: &dyn FewShotDataset,
    lists: &[Vec<Episode>],
    backbone: &AnyBackbone,
    canvas: Canvas,
    device: &Device,
) -> Result<FeatureStore> {
    let refs = episode_refs(lists.iter().map(Vec::as_slice));
    FeatureStore::build(ds, &refs, backbone, canvas, &[Variant::IDENTITY], device)
}

/// Read access to a [`FeatureStore`] at its test-transform variant ([`Variant::IDENTITY`]).
#[derive(Clone, Copy)]
pub struct CanvasView<'a> {
    store: &'a FeatureStore,
    variant: usize,
}

impl<'a> CanvasView<'a> {
    /// [`Error::Input`] when the store lacks the identity variant.
    pub fn new(store: &'a FeatureStore) -> Result<Self> {
        let variant = store
            .variants()
            .iter()
            .position(|v| *v == Variant::IDENTITY)
            .ok_or_else(|| {
                Error::Input(
                    "the feature store has no identity variant (the test transform)".into(),
                )
            })?;
        Ok(CanvasView { store, variant })
    }

    /// The canvas side `S`.
    pub fn size(&self) -> usize {
        self.store.size()
    }

    /// How images were brought to the canvas: the device's test transform for this model.
    pub fn resize(&self) -> Resize {
        self.store.canvas().resize()
    }

    /// Backbone features `(1, C, h, w)` per level.
    pub fn features(&self, image: usize) -> Result<&'a Features> {
        self.store.features(image, self.variant)
    }

    /// Canvas label `S × S` (1 class, 0 other, 255 ignore / padding).
    pub fn label(&self, r: SampleRef) -> Result<&'a [u8]> {
        self.store.label(r, self.variant)
    }

    /// Original `(height, width)` of a cached image.
    pub fn original_size(&self, image: usize) -> Result<(usize, usize)> {
        self.store
            .original_size(image)
            .ok_or_else(|| Error::Input(format!("image {image} is not in the feature store")))
    }

    /// The model's support mask `(1, 1, S, S)` f32: label 1 → 1, 0 and 255 → 0, on the device of
    /// the image's features.
    pub fn support_mask(&self, r: SampleRef) -> Result<Tensor> {
        let s = self.size();
        let data: Vec<f32> = self.label(r)?.iter().map(|&v| f32::from(v == 1)).collect();
        let device = self.features(r.image)?.level2.device().clone();
        Ok(Tensor::from_vec(data, (1, 1, s, s), &device)?)
    }
}

/// A segmenter evaluated episode by episode; the query side is encoded once per query image.
pub trait EpisodeModel {
    /// What is computed from the query image alone.
    type Query;

    /// Encode the query image (called once per distinct query image when grouping).
    fn encode_query(&self, view: &CanvasView, image: usize) -> Result<Self::Query>;

    /// Logits `(1, 2, S, S)` on the canvas for the episode; channel 1 wins = foreground.
    fn logits(&self, view: &CanvasView, query: &Self::Query, episode: &Episode) -> Result<Tensor>;
}

/// The MCE head in evaluation mode, on cached backbone features.
pub struct MceEval<'a> {
    pub head: &'a Mce,
}

impl EpisodeModel for MceEval<'_> {
    type Query = QueryEncoding;

    fn encode_query(&self, view: &CanvasView, image: usize) -> Result<QueryEncoding> {
        Ok(self.head.encode_query(view.features(image)?, Mode::Eval)?)
    }

    fn logits(&self, view: &CanvasView, query: &QueryEncoding, ep: &Episode) -> Result<Tensor> {
        let shots = ep
            .supports
            .iter()
            .map(|&r| {
                let mask = view.support_mask(r)?;
                Ok(self
                    .head
                    .encode_support(view.features(r.image)?, &mask, Mode::Eval)?)
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(self.head.decode(query, &shots)?)
    }
}

/// Evaluate a trained head on the fold's test episodes of every seed (`store` must hold their
/// images at the head's input size, e.g. from [`build_store`]).
pub fn evaluate(
    ds: &dyn FewShotDataset,
    head: &Mce,
    store: &FeatureStore,
    opts: &EvalOptions,
) -> Result<EvalReport> {
    let size = head.config().image_size;
    if store.size() != size {
        return Err(Error::Input(format!(
            "the feature store's canvas is {}, the model's input size is {size}",
            store.size()
        )));
    }
    evaluate_model(ds, store, &MceEval { head }, opts, "mce")
}

/// Evaluate any [`EpisodeModel`] (grouped by query image) and report under `method`.
pub fn evaluate_model<M: EpisodeModel + ?Sized>(
    ds: &dyn FewShotDataset,
    store: &FeatureStore,
    model: &M,
    opts: &EvalOptions,
    method: &str,
) -> Result<EvalReport> {
    let lists = seed_episodes(ds, opts)?;
    let view = CanvasView::new(store)?;
    let total: usize = lists.iter().map(Vec::len).sum();
    let bar = progress(total as u64, method);
    let start = Instant::now();
    let scores = score_episodes(ds, &view, model, &lists, Grouping::ByQuery, &bar)?;
    bar.finish_and_clear();
    let wall = start.elapsed().as_secs_f64();
    tracing::info!(method, episodes = total, seconds = wall, "evaluated");
    Ok(EvalReport::new(method, ds, opts, &scores, wall))
}

/// Load a checkpoint, build the features of exactly the episodes' images with its backbone, and
/// evaluate. The report's notes record the checkpoint and the feature time.
pub fn evaluate_checkpoint(
    ds: &dyn FewShotDataset,
    checkpoint: &Path,
    opts: &EvalOptions,
    device: &Device,
) -> Result<EvalReport> {
    evaluate_checkpoint_with(ds, checkpoint, opts, None, device)
}

/// [`evaluate_checkpoint`], with the images fitted to the canvas by `fit` instead of the model's
/// own [`InputResize`] (an ablation: the same head under another test transform).
pub fn evaluate_checkpoint_with(
    ds: &dyn FewShotDataset,
    checkpoint: &Path,
    opts: &EvalOptions,
    fit: Option<InputResize>,
    device: &Device,
) -> Result<EvalReport> {
    // A float checkpoint, or an int8 artifact (`mce-calib`) run as the device runs it.
    let model = mce_core::inference::load_model_file(checkpoint, device)?;
    let lists = seed_episodes(ds, opts)?;
    let start = Instant::now();
    let canvas = Canvas {
        fit: fit.unwrap_or(model.config.resize),
        ..Canvas::of(&model.config)
    };
    let store = build_store(ds, &lists, &model.backbone, canvas, device)?;
    let feature_seconds = start.elapsed().as_secs_f64();
    let mut report = evaluate(ds, &model.head, &store, opts)?;
    report
        .notes
        .push(format!("checkpoint: {}", checkpoint.display()));
    report
        .notes
        .push(format!("input: {:?} of {}", canvas.fit, canvas.size));
    report.notes.push(format!(
        "backbone features of {} images: {feature_seconds:.1} s (not in the wall time)",
        episode_refs(lists.iter().map(Vec::as_slice))
            .iter()
            .map(|r| r.image)
            .collect::<std::collections::BTreeSet<_>>()
            .len()
    ));
    Ok(report)
}
