//! Training-free baselines on the same test episodes and scoring as the model
//! ([`crate::eval`]), from the pretrained backbone's features alone:
//!
//! * (a) [`AllForeground`]: every pixel is foreground (its IoU is the foreground share);
//! * (b) [`PrototypeCosine`]: cosine to the support's masked-average prototype above a threshold;
//! * (c) [`NearestNeighbour`]: best cosine to a support foreground position minus best cosine to
//!   a support background position, > 0.
//!
//! ```text
//! test episodes (all seeds) + validation episodes (fold's train pool, val_seed)
//!     ─▶ one FeatureStore (pretrained backbone, test transform)
//! validation (train classes only) ─ calibrate ─▶ (b) feature + threshold, (c) feature
//! (a), (b), (c) ─ eval::evaluate_model (grouped by query, original resolution) ─▶ EvalReports
//!     ─▶ BaselinesReport (calibration evidence + one report per method)
//! ```

pub mod calibrate;
pub mod cli;
pub mod similarity;

use std::fmt;

use candle_core::{DType, Device, Tensor};
use mce_core::AnyBackbone;
use serde::{Deserialize, Serialize};

use crate::data::{Episode, FewShotDataset};
use crate::eval::{
    build_store, evaluate_model, seed_episodes, CanvasView, EpisodeModel, EvalOptions, EvalReport,
};
use crate::features::FeatureStore;
use crate::transform::Canvas;
use crate::Result;

pub use calibrate::{calibrate, validation_episodes, Calibration, CalibrationOptions, Candidate};
pub use cli::{run, BaselinesArgs};
pub use similarity::{FeatureChoice, NearestNeighbour, PrototypeCosine};

/// Seed of the validation episodes unless told otherwise.
pub const DEFAULT_VAL_SEED: u64 = 1_000_003;

/// Everything a baselines run needs.
#[derive(Debug, Clone, PartialEq)]
pub struct BaselineOptions {
    /// The test episodes (as for the model).
    pub eval: EvalOptions,
    /// Validation episodes drawn from the fold's training pool.
    pub val_episodes: usize,
    pub val_seed: u64,
    pub calibration: CalibrationOptions,
}

impl BaselineOptions {
    /// Defaults: `val_episodes` validation episodes with [`DEFAULT_VAL_SEED`], every feature,
    /// thresholds −1.00 … 1.00 by 0.01.
    pub fn new(eval: EvalOptions, val_episodes: usize) -> Self {
        BaselineOptions {
            eval,
            val_episodes,
            val_seed: DEFAULT_VAL_SEED,
            calibration: CalibrationOptions::default(),
        }
    }

    /// The validation episode list.
    pub fn validation(&self, ds: &dyn FewShotDataset) -> Result<Vec<Episode>> {
        let e = &self.eval;
        validation_episodes(
            ds,
            e.fold,
            e.n_folds,
            e.shots,
            self.val_episodes,
            self.val_seed,
        )
    }
}

/// Baseline (a): everything is foreground.
#[derive(Debug, Clone, Copy, Default)]
pub struct AllForeground;

impl EpisodeModel for AllForeground {
    type Query = ();

    fn encode_query(&self, _: &CanvasView, _: usize) -> Result<()> {
        Ok(())
    }

    fn logits(&self, view: &CanvasView, _: &(), ep: &Episode) -> Result<Tensor> {
        let s = view.size();
        let device = view.features(ep.query.image)?.level2.device().clone();
        let bg = Tensor::zeros((1, 1, s, s), DType::F32, &device)?;
        Ok(Tensor::cat(&[&bg, &bg.ones_like()?], 1)?)
    }
}

/// Features of every image the test episodes (all seeds) and the validation episodes need.
pub fn build_baseline_store(
    ds: &dyn FewShotDataset,
    backbone: &AnyBackbone,
    canvas: Canvas,
    opts: &BaselineOptions,
    device: &Device,
) -> Result<FeatureStore> {
    let mut lists = seed_episodes(ds, &opts.eval)?;
    lists.push(opts.validation(ds)?);
    build_store(ds, &lists, backbone, canvas, device)
}

/// The calibration and one evaluation report per baseline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BaselinesReport {
    /// The backbone the features come from (e.g. "efficientnet_lite0").
    pub backbone: String,
    pub image_size: usize,
    pub calibration: Calibration,
    /// all-foreground, prototype-cosine, nearest-neighbour.
    pub methods: Vec<EvalReport>,
    /// Seconds spent computing backbone features, when known.
    pub feature_seconds: Option<f64>,
}

/// Calibrate on the fold's training classes, then evaluate the three baselines on the test
/// episodes. `store` must hold the images of both (see [`build_baseline_store`]).
pub fn run_baselines(
    ds: &dyn FewShotDataset,
    store: &FeatureStore,
    backbone: &str,
    opts: &BaselineOptions,
) -> Result<BaselinesReport> {
    let view = CanvasView::new(store)?;
    let val = opts.validation(ds)?;
    let e = &opts.eval;
    let cal = calibrate(
        ds,
        &view,
        &val,
        &opts.calibration,
        (e.fold, e.n_folds, e.shots, opts.val_seed),
    )?;
    let chosen = |what: &str, m: Option<f64>| {
        format!(
            "{what}, chosen on {} validation episodes of the training classes {:?} (val mIoU {})",
            cal.val_episodes,
            cal.train_classes,
            m.map_or("-".into(), |m| format!("{:.2}", 100.0 * m))
        )
    };
    let all = evaluate_model(ds, store, &AllForeground, e, "all-foreground")?;
    let proto = PrototypeCosine {
        feature: cal.prototype_feature,
        threshold: cal.prototype_threshold,
    };
    let mut proto_report = evaluate_model(ds, store, &proto, e, "prototype-cosine")?;
    proto_report.notes.push(chosen(
        &format!(
            "feature {}, threshold {:.2}",
            proto.feature.name(),
            proto.threshold
        ),
        cal.prototype_val_miou,
    ));
    let nn = NearestNeighbour {
        feature: cal.nearest_feature,
    };
    let mut nn_report = evaluate_model(ds, store, &nn, e, "nearest-neighbour")?;
    nn_report.notes.push(chosen(
        &format!("feature {}", nn.feature.name()),
        cal.nearest_val_miou,
    ));
    Ok(BaselinesReport {
        backbone: backbone.to_string(),
        image_size: store.size(),
        calibration: cal,
        methods: vec![all, proto_report, nn_report],
        feature_seconds: None,
    })
}

impl fmt::Display for BaselinesReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.calibration;
        let pct = |m: Option<f64>| m.map_or("-".into(), |m| format!("{:.2}", 100.0 * m));
        writeln!(
            f,
            "backbone {} at {}×{}; validation: {} episodes (seed {}) of training classes {:?}",
            self.backbone,
            self.image_size,
            self.image_size,
            c.val_episodes,
            c.val_seed,
            c.train_classes
        )?;
        writeln!(
            f,
            "{:<20} {:<12} {:>9} {:>9}",
            "method", "feature", "threshold", "val mIoU"
        )?;
        for cand in &c.candidates {
            writeln!(
                f,
                "{:<20} {:<12} {:>9} {:>9}",
                cand.method,
                cand.feature.name(),
                cand.threshold.map_or("-".into(), |t| format!("{t:.2}")),
                pct(cand.val_miou)
            )?;
        }
        writeln!(
            f,
            "chosen: prototype {} @ {:.2}, nearest neighbour {}\n",
            c.prototype_feature.name(),
            c.prototype_threshold,
            c.nearest_feature.name()
        )?;
        for m in &self.methods {
            writeln!(f, "{m}")?;
        }
        writeln!(f, "{:<20} {:>16} {:>16}", "summary", "mIoU", "FB-IoU")?;
        for m in &self.methods {
            let show = |i: &Option<crate::eval::Interval>| {
                i.as_ref().map_or("-".into(), |i| {
                    format!("{:.2} ± {:.2}", 100.0 * i.mean, 100.0 * i.half_width)
                })
            };
            writeln!(
                f,
                "{:<20} {:>16} {:>16}",
                m.method,
                show(&m.miou),
                show(&m.fb_iou)
            )?;
        }
        if let Some(s) = self.feature_seconds {
            writeln!(f, "backbone features: {s:.1} s")?;
        }
        Ok(())
    }
}
