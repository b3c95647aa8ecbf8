//! Choosing the baselines' free parameters on the fold's TRAINING classes, never its test classes.
//!
//! ```text
//! train_pool(fold) (images with a test class removed) ─ EpisodeSampler(val_seed) ─▶ validation
//! episodes (same shots)
//! prototype: per feature, one pass: score map [−s, s] mapped to the original resolution by the
//!   shared path ─▶ d = 2·s_orig; per threshold t of the grid, foreground where d > 2t
//!   (histogram over the grid, summed per class) ─▶ val mIoU(feature, t) ─▶ best (feature, t)
//! nearest neighbour: per feature, the ordinary episode loop ─▶ val mIoU ─▶ best feature
//! ```
//!
//! Ties go to the earlier feature of the candidate list and the lower threshold.

use std::collections::BTreeMap;

use mce_core::preprocess::logits_at_original_size;
use serde::{Deserialize, Serialize};

use super::similarity::{score_logits, FeatureChoice, NearestNeighbour, PrototypeCosine};
use crate::data::{ClassId, Episode, EpisodeSampler, FewShotDataset};
use crate::eval::engine::visit_episodes;
use crate::eval::{score_episodes, CanvasView, Grouping};
use crate::features::progress;
use crate::Result;

/// What validation tries.
#[derive(Debug, Clone, PartialEq)]
pub struct CalibrationOptions {
    pub features: Vec<FeatureChoice>,
    /// Prototype thresholds, ascending.
    pub thresholds: Vec<f64>,
}

impl Default for CalibrationOptions {
    /// All features; thresholds −1.00, −0.99, …, 1.00 (the range of a cosine).
    fn default() -> Self {
        CalibrationOptions {
            features: FeatureChoice::ALL.to_vec(),
            thresholds: (-100..=100).map(|i| f64::from(i) / 100.0).collect(),
        }
    }
}

/// One candidate's validation score.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Candidate {
    pub method: String,
    pub feature: FeatureChoice,
    /// The best threshold for this feature (prototype only).
    pub threshold: Option<f64>,
    pub val_miou: Option<f64>,
}

/// The parameters chosen on the training classes, and the evidence.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Calibration {
    pub val_seed: u64,
    pub val_episodes: usize,
    pub shots: usize,
    /// The fold's training classes the validation episodes come from.
    pub train_classes: Vec<ClassId>,
    pub prototype_feature: FeatureChoice,
    pub prototype_threshold: f64,
    pub prototype_val_miou: Option<f64>,
    pub nearest_feature: FeatureChoice,
    pub nearest_val_miou: Option<f64>,
    pub candidates: Vec<Candidate>,
}

/// `n` validation episodes of `shots` shots from the fold's training pool (never a test class).
pub fn validation_episodes(
    ds: &dyn FewShotDataset,
    fold: usize,
    n_folds: usize,
    shots: usize,
    n: usize,
    seed: u64,
) -> Result<Vec<Episode>> {
    let pool = ds.train_pool(fold, n_folds)?;
    EpisodeSampler::new(seed).episodes(&pool, shots, n)
}

/// Per class and threshold: summed foreground intersection and union.
type Sweep = BTreeMap<ClassId, Vec<(u64, u64)>>;

/// Mean over classes (with a positive union) of `I / U` at threshold index `j`.
fn sweep_miou(sweep: &Sweep, j: usize) -> Option<f64> {
    let ious: Vec<f64> = sweep
        .values()
        .filter(|v| v[j].1 > 0)
        .map(|v| v[j].0 as f64 / v[j].1 as f64)
        .collect();
    (!ious.is_empty()).then(|| ious.iter().sum::<f64>() / ious.len() as f64)
}

/// Validation mIoU of the prototype baseline with `feature` at every threshold.
pub fn prototype_sweep(
    ds: &dyn FewShotDataset,
    view: &CanvasView,
    val: &[Episode],
    feature: FeatureChoice,
    thresholds: &[f64],
) -> Result<Vec<Option<f64>>> {
    let model = PrototypeCosine {
        feature,
        threshold: 0.0,
    };
    let n = thresholds.len();
    let mut sweep: Sweep = BTreeMap::new();
    let bar = progress(val.len() as u64, &format!("val proto {}", feature.name()));
    let lists = [val.to_vec()];
    visit_episodes(
        ds,
        view,
        &model,
        &lists,
        Grouping::ByQuery,
        |_, _, ep, q, label| {
            let logits = score_logits(&model.score(view, q, ep)?, 0.0, view.size())?;
            let at = logits_at_original_size(&logits, view.resize(), label.height, label.width)?;
            let d = (at.narrow(1, 1, 1)? - at.narrow(1, 0, 1)?)?
                .flatten_all()?
                .to_vec1::<f32>()?;
            // hist[k]: pixels predicted foreground for exactly the thresholds j < k.
            let (mut pos, mut neg) = (vec![0u64; n + 1], vec![0u64; n + 1]);
            for (&d, &l) in d.iter().zip(&label.data) {
                let k = thresholds.partition_point(|&t| 2.0 * t < f64::from(d));
                match l {
                    1 => pos[k] += 1,
                    0 => neg[k] += 1,
                    _ => {}
                }
            }
            let positives: u64 = pos.iter().sum();
            let sums = sweep.entry(ep.class).or_insert_with(|| vec![(0, 0); n]);
            let (mut tp, mut fp) = (0u64, 0u64);
            for j in (0..n).rev() {
                tp += pos[j + 1];
                fp += neg[j + 1];
                sums[j].0 += tp;
                sums[j].1 += positives + fp;
            }
            bar.inc(1);
            Ok(())
        },
    )?;
    bar.finish_and_clear();
    Ok((0..n).map(|j| sweep_miou(&sweep, j)).collect())
}

/// Validation mIoU of the nearest-neighbour baseline with `feature`.
pub fn nearest_val_miou(
    ds: &dyn FewShotDataset,
    view: &CanvasView,
    val: &[Episode],
    feature: FeatureChoice,
) -> Result<Option<f64>> {
    let bar = progress(val.len() as u64, &format!("val nn {}", feature.name()));
    let model = NearestNeighbour { feature };
    let scores = score_episodes(ds, view, &model, &[val.to_vec()], Grouping::ByQuery, &bar)?;
    bar.finish_and_clear();
    Ok(scores[0].accumulator.miou())
}

/// `a` better than `b` (strictly, so that ties keep the earlier candidate).
fn better(a: Option<f64>, b: Option<f64>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => a > b,
        (Some(_), None) => true,
        _ => false,
    }
}

/// Choose the prototype's feature and threshold and the nearest neighbour's feature on `val`.
pub fn calibrate(
    ds: &dyn FewShotDataset,
    view: &CanvasView,
    val: &[Episode],
    opts: &CalibrationOptions,
    (fold, n_folds, shots, val_seed): (usize, usize, usize, u64),
) -> Result<Calibration> {
    let first = *opts.features.first().ok_or_else(|| {
        crate::Error::Input("calibration needs at least one feature choice".into())
    })?;
    if opts.thresholds.is_empty() {
        return Err(crate::Error::Input("calibration needs thresholds".into()));
    }
    let mut cal = Calibration {
        val_seed,
        val_episodes: val.len(),
        shots,
        train_classes: ds.fold_classes(fold, n_folds)?.0,
        prototype_feature: first,
        prototype_threshold: opts.thresholds[0],
        prototype_val_miou: None,
        nearest_feature: first,
        nearest_val_miou: None,
        candidates: vec![],
    };
    for &feature in &opts.features {
        let curve = prototype_sweep(ds, view, val, feature, &opts.thresholds)?;
        let (mut j_best, mut best) = (0, curve[0]);
        for (j, &m) in curve.iter().enumerate() {
            if better(m, best) {
                (j_best, best) = (j, m);
            }
        }
        tracing::info!(feature = feature.name(), threshold = opts.thresholds[j_best],
            val_miou = ?best, "prototype validation");
        cal.candidates.push(Candidate {
            method: "prototype-cosine".into(),
            feature,
            threshold: Some(opts.thresholds[j_best]),
            val_miou: best,
        });
        if better(best, cal.prototype_val_miou) {
            cal.prototype_feature = feature;
            cal.prototype_threshold = opts.thresholds[j_best];
            cal.prototype_val_miou = best;
        }
    }
    for &feature in &opts.features {
        let m = nearest_val_miou(ds, view, val, feature)?;
        tracing::info!(feature = feature.name(), val_miou = ?m, "nearest-neighbour validation");
        cal.candidates.push(Candidate {
            method: "nearest-neighbour".into(),
            feature,
            threshold: None,
            val_miou: m,
        });
        if better(m, cal.nearest_val_miou) {
            cal.nearest_feature = feature;
            cal.nearest_val_miou = m;
        }
    }
    Ok(cal)
}
