//! Training-free similarity baselines on pretrained backbone features.
//!
//! ```text
//! Features ─ FeatureChoice (levels resized bilinearly to the level-2 grid, each L2-normalised per
//!            position, concatenated, / √L) ─▶ FeatureMap (C, h·w), unit norm per position
//! support canvas label ─ bilinear to h × w ─▶ foreground positions (≥ 0.5, then > 0, then all:
//!            the model's fallbacks) and background positions (label-0 share ≥ 0.5)
//! prototype:  p = mean over shots of the mean foreground vector, s = cos(query, p)
//! nearest:    d = max cos(query, support fg) − max cos(query, support bg), positions of all shots
//! score (1, 1, h, w) ─ score_logits: [t − s, s − t] ─ bilinear align_corners ─▶ (1, 2, S, S)
//! ```
//!
//! The logits go through the same mapping back to the original resolution as the model's, so the
//! decision is `s > t` (prototype) or `d > 0` (nearest neighbour) at every original pixel.

use candle_core::{Device, Tensor, D};
use mce_core::model::masks::binarize;
use mce_core::ops::{l2_normalize_channels, resize_bilinear};
use mce_core::Features;
use serde::{Deserialize, Serialize};

use crate::data::Episode;
use crate::eval::{CanvasView, EpisodeModel};
use crate::Result;

/// Which backbone features the similarity baselines compare.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FeatureChoice {
    /// Level 2 (stride 8).
    Level2,
    /// Level 3, upsampled to the level-2 grid.
    Level3,
    /// Level 4, upsampled to the level-2 grid.
    Level4,
    /// Levels 2 and 3, each L2-normalised, concatenated.
    Concat23,
    /// Levels 2, 3 and 4, each L2-normalised, concatenated.
    Concat234,
}

impl FeatureChoice {
    /// Every choice, in the order candidates are tried (ties go to the earlier one).
    pub const ALL: [FeatureChoice; 5] = [
        FeatureChoice::Level2,
        FeatureChoice::Level3,
        FeatureChoice::Level4,
        FeatureChoice::Concat23,
        FeatureChoice::Concat234,
    ];

    /// The backbone levels used.
    pub fn levels(self) -> &'static [usize] {
        match self {
            FeatureChoice::Level2 => &[2],
            FeatureChoice::Level3 => &[3],
            FeatureChoice::Level4 => &[4],
            FeatureChoice::Concat23 => &[2, 3],
            FeatureChoice::Concat234 => &[2, 3, 4],
        }
    }

    /// Short name for tables.
    pub fn name(self) -> &'static str {
        match self {
            FeatureChoice::Level2 => "level2",
            FeatureChoice::Level3 => "level3",
            FeatureChoice::Level4 => "level4",
            FeatureChoice::Concat23 => "level2+3",
            FeatureChoice::Concat234 => "level2+3+4",
        }
    }
}

/// Unit-norm feature vectors on the level-2 grid.
#[derive(Debug, Clone)]
pub struct FeatureMap {
    /// `(C, h·w)`.
    pub columns: Tensor,
    /// `(h·w, C)`, contiguous.
    pub rows: Tensor,
    pub h: usize,
    pub w: usize,
}

/// The [`FeatureMap`] of one image's features.
pub fn feature_map(f: &Features, choice: FeatureChoice) -> Result<FeatureMap> {
    let (_, _, h, w) = f.level2.dims4()?;
    let levels = f.levels();
    let parts = choice
        .levels()
        .iter()
        .map(|&l| l2_normalize_channels(&resize_bilinear(levels[l - 2], h, w)?))
        .collect::<candle_core::Result<Vec<_>>>()?;
    let scale = 1.0 / (parts.len() as f64).sqrt();
    let x = (Tensor::cat(&parts, 1)? * scale)?;
    let c = x.dim(1)?;
    let columns = x.reshape((c, h * w))?;
    let rows = columns.t()?.contiguous()?;
    Ok(FeatureMap {
        columns,
        rows,
        h,
        w,
    })
}

/// Foreground and background positions of one support on the `h × w` grid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SupportPositions {
    pub foreground: Vec<u32>,
    pub background: Vec<u32>,
}

/// Positions of a support from its canvas label (`S × S`, 1 / 0 / 255): foreground with the
/// model's resize-and-threshold rule and fallbacks; background where the bilinearly resized share
/// of label-0 pixels is ≥ 0.5 (ignore and padding are neither) and the position is not foreground.
pub fn support_positions(
    label: &[u8],
    size: usize,
    (h, w): (usize, usize),
    device: &Device,
) -> Result<SupportPositions> {
    let share = |keep: fn(u8) -> bool| -> Result<Vec<f32>> {
        let data: Vec<f32> = label.iter().map(|&v| f32::from(keep(v))).collect();
        let t = Tensor::from_vec(data, (1, 1, size, size), device)?;
        Ok(resize_bilinear(&t, h, w)?.flatten_all()?.to_vec1::<f32>()?)
    };
    let (fg, _) = binarize(&share(|v| v == 1)?);
    let bg = share(|v| v == 0)?;
    let mut out = SupportPositions {
        foreground: vec![],
        background: vec![],
    };
    for (i, (&f, &b)) in fg.iter().zip(&bg).enumerate() {
        if f > 0.0 {
            out.foreground.push(i as u32);
        } else if b >= 0.5 {
            out.background.push(i as u32);
        }
    }
    Ok(out)
}

/// Columns `(C, n)` of `map` at `positions`; `None` when there are none.
fn select(map: &FeatureMap, positions: &[u32]) -> Result<Option<Tensor>> {
    if positions.is_empty() {
        return Ok(None);
    }
    let dev = map.columns.device();
    let idx = Tensor::from_vec(positions.to_vec(), positions.len(), dev)?;
    Ok(Some(map.columns.index_select(&idx, 1)?))
}

/// Per shot of `ep`: the support's foreground and background vectors `(C, n)`.
fn support_vectors(
    view: &CanvasView,
    choice: FeatureChoice,
    ep: &Episode,
    (h, w): (usize, usize),
) -> Result<Vec<(Tensor, Option<Tensor>)>> {
    ep.supports
        .iter()
        .map(|&r| {
            let map = feature_map(view.features(r.image)?, choice)?;
            let device = map.columns.device().clone();
            let pos = support_positions(view.label(r)?, view.size(), (h, w), &device)?;
            let fg = select(&map, &pos.foreground)?.expect("binarize keeps a position");
            Ok((fg, select(&map, &pos.background)?))
        })
        .collect()
}

/// Two-channel canvas logits `[t − s, s − t]` from a score map `(1, 1, h, w)`, resized bilinearly
/// (align_corners) to `(1, 2, S, S)`: channel 1 wins exactly where the interpolated score exceeds
/// `t`.
pub fn score_logits(score: &Tensor, threshold: f64, size: usize) -> Result<Tensor> {
    let fg = score.affine(1.0, -threshold)?;
    let bg = score.affine(-1.0, threshold)?;
    Ok(resize_bilinear(&Tensor::cat(&[&bg, &fg], 1)?, size, size)?)
}

/// Baseline (b): cosine similarity to the support's masked-average prototype, foreground above
/// `threshold` (chosen on the fold's training classes).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PrototypeCosine {
    pub feature: FeatureChoice,
    pub threshold: f64,
}

impl PrototypeCosine {
    /// Cosine similarity map `(1, 1, h, w)` of the query to the prototype (mean over the shots of
    /// each shot's mean foreground vector, then normalised).
    pub fn score(&self, view: &CanvasView, q: &FeatureMap, ep: &Episode) -> Result<Tensor> {
        let shots = support_vectors(view, self.feature, ep, (q.h, q.w))?;
        let means = shots
            .iter()
            .map(|(fg, _)| Ok(fg.mean_keepdim(1)?))
            .collect::<Result<Vec<_>>>()?;
        let proto = Tensor::cat(&means, 1)?.mean_keepdim(1)?; // (C, 1)
        let proto = l2_normalize_channels(&proto.t()?)?; // (1, C)
        let s = proto.contiguous()?.matmul(&q.columns)?; // (1, h·w)
        Ok(s.reshape((1, 1, q.h, q.w))?)
    }
}

impl EpisodeModel for PrototypeCosine {
    type Query = FeatureMap;

    fn encode_query(&self, view: &CanvasView, image: usize) -> Result<FeatureMap> {
        feature_map(view.features(image)?, self.feature)
    }

    fn logits(&self, view: &CanvasView, q: &FeatureMap, ep: &Episode) -> Result<Tensor> {
        score_logits(&self.score(view, q, ep)?, self.threshold, view.size())
    }
}

/// Baseline (c): nearest-neighbour matching; foreground where the best cosine to a support
/// foreground position beats the best cosine to a support background position (all shots
/// pooled). Without any background position the background best is −1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NearestNeighbour {
    pub feature: FeatureChoice,
}

impl NearestNeighbour {
    /// `max cos(fg) − max cos(bg)` per query position, `(1, 1, h, w)`.
    pub fn score(&self, view: &CanvasView, q: &FeatureMap, ep: &Episode) -> Result<Tensor> {
        let shots = support_vectors(view, self.feature, ep, (q.h, q.w))?;
        let fg: Vec<&Tensor> = shots.iter().map(|(f, _)| f).collect();
        let bg: Vec<&Tensor> = shots.iter().filter_map(|(_, b)| b.as_ref()).collect();
        let best = |cols: &[&Tensor]| -> Result<Tensor> {
            Ok(q.rows
                .matmul(&Tensor::cat(cols, 1)?)?
                .max_keepdim(D::Minus1)?)
        };
        let fg_best = best(&fg)?; // (h·w, 1)
        let bg_best = if bg.is_empty() {
            fg_best.ones_like()?.neg()?
        } else {
            best(&bg)?
        };
        Ok((fg_best - bg_best)?.reshape((1, 1, q.h, q.w))?)
    }
}

impl EpisodeModel for NearestNeighbour {
    type Query = FeatureMap;

    fn encode_query(&self, view: &CanvasView, image: usize) -> Result<FeatureMap> {
        feature_map(view.features(image)?, self.feature)
    }

    fn logits(&self, view: &CanvasView, q: &FeatureMap, ep: &Episode) -> Result<Tensor> {
        score_logits(&self.score(view, q, ep)?, 0.0, view.size())
    }
}
