//! The serde `Config` of an MCE model: the backbone, the input size and the head. It alone decides
//! every tensor shape of the model.
//!
//! The head is one of a closed set of complete heads ([`HeadConfig`], tagged by `kind` in JSON),
//! each with its own config struct:
//!
//! | `kind` | config | what the decoder sees |
//! |---|---|---|
//! | `paper` | [`PaperConfig`] | the paper's `X = cat(f_Q, V_s, f_cross, A_sim)` (Eq. 11) |
//! | `matching` | [`MatchingConfig`] | class-agnostic evidence only: `A_sim` and the nearest-neighbour priors |
//!
//! Two named presets, both with the paper head: [`MceConfig::paper_resnet50`] (the paper's
//! setting) and [`MceConfig::edge_lite0`] (EfficientNet-Lite0 at 320×320 with narrower widths, for
//! the device). [`MceConfig::with_head`] swaps in another head at the preset's decoder widths.
//! Checkpoints written before heads were types carry flag-style configs; [`legacy`] migrates them
//! when they are read.

pub mod legacy;

use crate::backbone::BackboneKind;
use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};

/// Which branches of the cross-image encoding feed the fusion (Table III ablation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Branches {
    /// Both branches, fused by a 1×1 conv (the paper's default).
    Both,
    /// Only the query branch `f'_Q`.
    QueryOnly,
    /// Only the support branch `f'_S`.
    SupportOnly,
}

/// How the similarity map `A_sim` reduces over support foreground positions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SimilarityReduce {
    /// Mean cosine similarity (MCE, Eq. 10).
    Mean,
    /// Max cosine similarity (PFENet's prior), for the ablation.
    Max,
}

/// Attention pattern of the cross-image encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Attention {
    /// The paper's symmetric design: weights from one image, values from the other (Eqs. 5–8).
    Symmetric,
    /// Conventional cross-attention: query tokens attend to masked support keys/values and support
    /// tokens attend to query keys/values. Ablation only.
    Conventional,
}

/// The paper's decoder-input ablations (Sec. III, "without cross map", "without similarity").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PaperAblation {
    /// The full model: `X = cat(f_Q, V_s, f_cross, A_sim)`.
    #[default]
    None,
    /// No cross-image encoding: `X = cat(f_Q, V_s, A_sim)`.
    WithoutCrossMap,
    /// No similarity map: `X = cat(f_Q, V_s, f_cross)`.
    WithoutSimilarity,
}

/// The decoder shared by the heads: ASPP, 3×3 conv, 1×1 classifier.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DecoderConfig {
    /// Width of the ASPP branches and of the decoder (256 in the paper).
    pub dim: usize,
    /// ASPP dilation rates (6, 12, 18 in BAM).
    pub aspp_rates: [usize; 3],
}

/// The paper's MCE head (MCE_PAPER.md, Fig. 2): mid-level features, MAP prototype, mean-cosine
/// similarity map, masked cross-image encoding at several levels, ASPP decoder; K shots averaged.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PaperConfig {
    /// Channels of the mid-level features f_Q / f_S and of the prototype (256 in the paper).
    pub reduce_dim: usize,
    /// Token width d of the cross-image encoding (256 in the paper).
    pub d_model: usize,
    /// Attention heads h (8 in the paper).
    pub heads: usize,
    /// MLP hidden width as a multiple of d (4 in the paper).
    pub mlp_ratio: usize,
    /// Backbone levels the cross-image encoding runs on (subset of {2, 3, 4}).
    pub levels: Vec<usize>,
    /// Dropout2d probability on the mid-level features during training (0.5).
    pub dropout: f32,
    pub decoder: DecoderConfig,
    /// Branches fused in the cross-image encoding.
    pub branches: Branches,
    /// Mean or max similarity map.
    pub similarity: SimilarityReduce,
    /// Symmetric (paper) or conventional cross-attention.
    pub attention: Attention,
    /// Which decoder inputs the ablation leaves out.
    #[serde(default)]
    pub ablation: PaperAblation,
}

/// Not in the paper: the class-agnostic matching head. The decoder sees only `A_sim` and the
/// nearest-neighbour priors of levels 2, 3, 4 and their joint map, matched over all K shots at
/// once; a learned multiple of the joint prior is added to the logits, with the classifier
/// initialised to zero, so the untrained head *is* the nearest-neighbour rule. Without the query's
/// and the prototype's own features it cannot learn which training classes tend to be foreground,
/// only how similarity maps turn into masks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MatchingConfig {
    pub decoder: DecoderConfig,
    /// Mean or max similarity map.
    pub similarity: SimilarityReduce,
}

/// Not in the paper: the paper's MCE head (every part of [`PaperConfig`]: f_Q, V_s, the masked
/// cross-image encoding, A_sim) whose decoder also sees the nearest-neighbour priors matched over
/// all K shots at once, with the matching head's prior skip and a zero-initialised classifier, so
/// the untrained head is the nearest-neighbour rule and training adds what the cross-image
/// encoding sees.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CrossMatchingConfig {
    /// The MCE part, exactly the paper head's config (its ablation must be `none`).
    #[serde(flatten)]
    pub mce: PaperConfig,
}

/// The head on top of the frozen backbone: one complete config per head.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum HeadConfig {
    Paper(PaperConfig),
    Matching(MatchingConfig),
    CrossMatching(CrossMatchingConfig),
}

/// The names of the heads, for command lines, logs and `/healthz`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HeadKind {
    Paper,
    Matching,
    CrossMatching,
}

impl HeadKind {
    pub fn name(self) -> &'static str {
        match self {
            HeadKind::Paper => "paper",
            HeadKind::Matching => "matching",
            HeadKind::CrossMatching => "cross_matching",
        }
    }

    /// One line on what the head does, for logs and reports.
    pub fn describe(self) -> &'static str {
        match self {
            HeadKind::Paper => "the paper's MCE head: cat(f_Q, V_s, f_cross, A_sim) -> ASPP",
            HeadKind::Matching => {
                "class-agnostic matching head: cat(A_sim, nearest-neighbour priors) -> ASPP + prior skip"
            }
            HeadKind::CrossMatching => {
                "MCE with matching: cat(f_Q, V_s, f_cross, A_sim, nearest-neighbour priors) -> ASPP + prior skip"
            }
        }
    }
}

impl std::fmt::Display for HeadKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl PaperConfig {
    /// Channels of the decoder input `cat(f_Q, V_s, f_cross, A_sim)`, less what the ablation drops.
    pub fn decoder_in(&self) -> usize {
        let r = self.reduce_dim;
        match self.ablation {
            PaperAblation::None => 3 * r + 1,
            PaperAblation::WithoutCrossMap => 2 * r + 1,
            PaperAblation::WithoutSimilarity => 3 * r,
        }
    }

    /// Whether the head has the cross-image encoding.
    pub fn has_cross(&self) -> bool {
        self.ablation != PaperAblation::WithoutCrossMap
    }

    /// Whether the decoder sees the similarity map.
    pub fn has_similarity(&self) -> bool {
        self.ablation != PaperAblation::WithoutSimilarity
    }

    fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Config(m));
        if self.heads == 0 || !self.d_model.is_multiple_of(self.heads) {
            return bad(format!(
                "d_model {} is not divisible by heads {}",
                self.d_model, self.heads
            ));
        }
        if self.levels.is_empty() && self.has_cross() {
            return bad("the cross-image encoding needs at least one level".into());
        }
        if let Some(l) = self.levels.iter().find(|l| !(2..=4).contains(*l)) {
            return bad(format!("level {l} is not one of 2, 3, 4"));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return bad(format!("dropout {} is not in [0, 1)", self.dropout));
        }
        Ok(())
    }
}

impl MatchingConfig {
    /// Channels of the decoder input `cat(A_sim, prior_2, prior_3, prior_4, prior_joint)`.
    pub fn decoder_in(&self) -> usize {
        1 + crate::model::matching::PRIOR_CHANNELS
    }
}

impl CrossMatchingConfig {
    /// Channels of `cat(f_Q, V_s, f_cross, A_sim, prior_2, prior_3, prior_4, prior_joint)`.
    pub fn decoder_in(&self) -> usize {
        self.mce.decoder_in() + crate::model::matching::PRIOR_CHANNELS
    }

    fn validate(&self) -> Result<()> {
        if self.mce.ablation != PaperAblation::None {
            return Err(Error::Config(format!(
                "the cross_matching head has no ablations (got {:?})",
                self.mce.ablation
            )));
        }
        self.mce.validate()
    }
}

impl HeadConfig {
    pub fn kind(&self) -> HeadKind {
        match self {
            HeadConfig::Paper(_) => HeadKind::Paper,
            HeadConfig::Matching(_) => HeadKind::Matching,
            HeadConfig::CrossMatching(_) => HeadKind::CrossMatching,
        }
    }

    pub fn decoder(&self) -> &DecoderConfig {
        match self {
            HeadConfig::Paper(c) => &c.decoder,
            HeadConfig::Matching(c) => &c.decoder,
            HeadConfig::CrossMatching(c) => &c.mce.decoder,
        }
    }

    /// Channels of the decoder input.
    pub fn decoder_in(&self) -> usize {
        match self {
            HeadConfig::Paper(c) => c.decoder_in(),
            HeadConfig::Matching(c) => c.decoder_in(),
            HeadConfig::CrossMatching(c) => c.decoder_in(),
        }
    }

    /// The similarity reduction of A_sim.
    fn similarity(&self) -> SimilarityReduce {
        match self {
            HeadConfig::Paper(c) => c.similarity,
            HeadConfig::Matching(c) => c.similarity,
            HeadConfig::CrossMatching(c) => c.mce.similarity,
        }
    }
}

/// How an image becomes the model's square input; the model was trained on inputs made this way,
/// so training, evaluation and the device all follow it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InputResize {
    /// Longer side to `S`, aspect kept, padded ([`crate::preprocess::Resize::LongerSidePad`]).
    #[default]
    Letterbox,
    /// Stretched to `S × S` ([`crate::preprocess::Resize::Direct`]).
    Squash,
}

impl InputResize {
    /// The pre-processing of an `size × size` input.
    pub fn at(self, size: usize) -> crate::preprocess::Resize {
        match self {
            InputResize::Letterbox => crate::preprocess::Resize::LongerSidePad(size),
            InputResize::Squash => crate::preprocess::Resize::Direct(size),
        }
    }
}

/// The model's configuration. Serialised into every checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MceConfig {
    /// Backbone architecture.
    pub backbone: BackboneKind,
    /// Square input size in pixels (473 for the paper).
    pub image_size: usize,
    /// How images are brought to `image_size` (checkpoints without it: letterbox).
    pub resize: InputResize,
    pub head: HeadConfig,
}

impl<'de> Deserialize<'de> for MceConfig {
    /// The current layout, or a flag-style config of older checkpoints migrated by [`legacy`].
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        legacy::deserialize_any_version(d)
    }
}

impl MceConfig {
    /// The paper's setting: ResNet-50 dilated to stride 8, 473×473, d = 256, 8 heads, three levels.
    pub fn paper_resnet50() -> Self {
        Self {
            backbone: BackboneKind::Resnet50,
            image_size: 473,
            resize: InputResize::Letterbox,
            head: HeadConfig::Paper(PaperConfig {
                reduce_dim: 256,
                d_model: 256,
                heads: 8,
                mlp_ratio: 4,
                levels: vec![2, 3, 4],
                dropout: 0.5,
                decoder: DecoderConfig {
                    dim: 256,
                    aspp_rates: [6, 12, 18],
                },
                branches: Branches::Both,
                similarity: SimilarityReduce::Mean,
                attention: Attention::Symmetric,
                ablation: PaperAblation::None,
            }),
        }
    }

    /// The edge setting: EfficientNet-Lite0 at 320×320 (grids 40/20/10), narrower widths.
    pub fn edge_lite0() -> Self {
        Self {
            backbone: BackboneKind::EfficientnetLite0,
            image_size: 320,
            resize: InputResize::Letterbox,
            head: HeadConfig::Paper(PaperConfig {
                reduce_dim: 128,
                d_model: 128,
                heads: 4,
                mlp_ratio: 2,
                levels: vec![2, 3, 4],
                dropout: 0.5,
                decoder: DecoderConfig {
                    dim: 128,
                    aspp_rates: [3, 6, 9],
                },
                branches: Branches::Both,
                similarity: SimilarityReduce::Mean,
                attention: Attention::Symmetric,
                ablation: PaperAblation::None,
            }),
        }
    }

    /// A preset by name: `paper` / `resnet50` or `edge` / `lite0`.
    pub fn preset(name: &str) -> Result<Self> {
        match name {
            "paper" | "resnet50" | "paper_resnet50" => Ok(Self::paper_resnet50()),
            "edge" | "lite0" | "edge_lite0" => Ok(Self::edge_lite0()),
            other => Err(Error::Config(format!(
                "unknown preset {other:?} (known: paper, edge)"
            ))),
        }
    }

    /// The same backbone and input size with the head of `kind`, at this config's decoder widths
    /// and similarity reduction (the paper head's other widths from the preset of this backbone).
    pub fn with_head(self, kind: HeadKind) -> Self {
        let decoder = *self.head.decoder();
        let similarity = self.head.similarity();
        let mce = || match &self.head {
            HeadConfig::Paper(c) => c.clone(),
            HeadConfig::CrossMatching(c) => c.mce.clone(),
            HeadConfig::Matching(_) => match Self::for_backbone(self.backbone).head {
                HeadConfig::Paper(c) => PaperConfig {
                    decoder,
                    similarity,
                    ..c
                },
                _ => unreachable!("every preset has the paper head"),
            },
        };
        let head = match kind {
            HeadKind::Paper => HeadConfig::Paper(mce()),
            HeadKind::CrossMatching => HeadConfig::CrossMatching(CrossMatchingConfig {
                mce: PaperConfig {
                    ablation: PaperAblation::None,
                    ..mce()
                },
            }),
            HeadKind::Matching => HeadConfig::Matching(MatchingConfig {
                decoder,
                similarity,
            }),
        };
        Self { head, ..self }
    }

    /// The preset of a backbone.
    fn for_backbone(backbone: BackboneKind) -> Self {
        match backbone {
            BackboneKind::Resnet50 => Self::paper_resnet50(),
            BackboneKind::EfficientnetLite0 => Self::edge_lite0(),
        }
    }

    /// The MCE part's config: the paper head's, or the cross-matching head's MCE part.
    pub fn paper(&self) -> Option<&PaperConfig> {
        match &self.head {
            HeadConfig::Paper(c) => Some(c),
            HeadConfig::CrossMatching(c) => Some(&c.mce),
            HeadConfig::Matching(_) => None,
        }
    }

    /// The MCE part's config to edit (see [`MceConfig::paper`]).
    pub fn paper_mut(&mut self) -> Option<&mut PaperConfig> {
        match &mut self.head {
            HeadConfig::Paper(c) => Some(c),
            HeadConfig::CrossMatching(c) => Some(&mut c.mce),
            HeadConfig::Matching(_) => None,
        }
    }

    /// Check the values that would otherwise fail deep inside a forward pass.
    pub fn validate(&self) -> Result<()> {
        if self.image_size < 16 {
            return Err(Error::Config(format!(
                "image_size {} is too small",
                self.image_size
            )));
        }
        match &self.head {
            HeadConfig::Paper(c) => c.validate(),
            HeadConfig::CrossMatching(c) => c.validate(),
            HeadConfig::Matching(_) => Ok(()),
        }
    }

    /// Side of the stride-8 grid where the decoder runs.
    pub fn grid(&self) -> usize {
        self.backbone.grid(self.image_size, 8)
    }

    /// Side of the feature grid of backbone level `level` (2, 3 or 4).
    pub fn level_grid(&self, level: usize) -> usize {
        self.backbone
            .grid(self.image_size, self.backbone.strides()[level - 2])
    }

    /// The pre-processing of this model's input.
    pub fn input_resize(&self) -> crate::preprocess::Resize {
        self.resize.at(self.image_size)
    }

    /// Channels of the decoder input.
    pub fn decoder_in(&self) -> usize {
        self.head.decoder_in()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_round_trip_through_json_and_validate() {
        for cfg in [
            MceConfig::paper_resnet50(),
            MceConfig::edge_lite0(),
            MceConfig::edge_lite0().with_head(HeadKind::Matching),
            MceConfig::edge_lite0().with_head(HeadKind::CrossMatching),
        ] {
            cfg.validate().unwrap();
            let json = serde_json::to_string(&cfg).unwrap();
            let back: MceConfig = serde_json::from_str(&json).unwrap();
            assert_eq!(cfg, back);
        }
        assert_eq!(MceConfig::paper_resnet50().grid(), 60);
        assert_eq!(MceConfig::paper_resnet50().decoder_in(), 769);
        let edge = MceConfig::edge_lite0();
        assert_eq!(
            [edge.level_grid(2), edge.level_grid(3), edge.level_grid(4)],
            [40, 20, 10]
        );
        let matching = edge.clone().with_head(HeadKind::Matching);
        assert_eq!(matching.decoder_in(), 5);
        assert_eq!(matching.with_head(HeadKind::Paper), edge);
        // the cross-matching head is the paper head plus four prior channels, and goes back
        let cross = edge.clone().with_head(HeadKind::CrossMatching);
        assert_eq!(cross.decoder_in(), edge.decoder_in() + 4);
        assert_eq!(cross.paper(), edge.paper());
        assert_eq!(cross.with_head(HeadKind::Paper), edge);
    }

    #[test]
    fn the_cross_matching_head_is_flat_json_and_has_no_ablation() {
        let cfg = MceConfig::edge_lite0().with_head(HeadKind::CrossMatching);
        let json = serde_json::to_value(&cfg).unwrap();
        assert_eq!(json["head"]["kind"], "cross_matching");
        assert_eq!(json["head"]["d_model"], 128);
        let mut bad = cfg;
        bad.paper_mut().unwrap().ablation = PaperAblation::WithoutCrossMap;
        let e = bad.validate().unwrap_err();
        assert!(e.to_string().contains("no ablations"), "{e}");
    }

    #[test]
    fn the_head_is_tagged_by_kind_in_json() {
        let json =
            serde_json::to_value(MceConfig::edge_lite0().with_head(HeadKind::Matching)).unwrap();
        assert_eq!(json["head"]["kind"], "matching");
        assert_eq!(json["head"]["decoder"]["dim"], 128);
    }

    #[test]
    fn invalid_configs_are_rejected() {
        let edge = |f: &dyn Fn(&mut PaperConfig)| {
            let mut c = MceConfig::edge_lite0();
            if let HeadConfig::Paper(p) = &mut c.head {
                f(p);
            }
            c.validate()
        };
        let e = edge(&|p| p.heads = 3).unwrap_err();
        assert!(e.to_string().contains("divisible"), "{e}");
        assert!(edge(&|p| p.levels = vec![1]).is_err());
        assert!(edge(&|p| p.levels = vec![]).is_err());
        assert!(edge(&|p| {
            p.levels = vec![];
            p.ablation = PaperAblation::WithoutCrossMap;
        })
        .is_ok());
        assert!(MceConfig::preset("nope").is_err());
    }
}
