//! The serde `Config` of an MCE model: it alone decides every tensor shape of the head.
//!
//! Two named presets: [`MceConfig::paper_resnet50`] (the paper's setting) and
//! [`MceConfig::edge_lite0`] (EfficientNet-Lite0 at 320×320 with narrower widths, for the device).

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

/// How the K shots of a support set are combined.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ShotFusion {
    /// Average f_cross, V_s and A_sim over the shots (Sec. III-B).
    Average,
}

/// What the decoder sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DecoderInput {
    /// The paper's `X = cat(f_Q, V_s, f_cross, A_sim)` (plus the matching priors when on).
    #[default]
    Full,
    /// Not in the paper: only the class-agnostic evidence, `cat(A_sim, matching priors)`. Without
    /// the query's and the prototype's own features the head cannot learn which *training classes*
    /// tend to be foreground, only how similarity maps turn into masks (needs `matching_prior`,
    /// and no cross-encoding).
    Matching,
}

/// The model's configuration. Serialised into every checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MceConfig {
    /// Backbone architecture.
    pub backbone: BackboneKind,
    /// Square input size in pixels (473 for the paper).
    pub image_size: usize,
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
    /// Width of the ASPP branches and of the decoder (256 in the paper).
    pub decoder_dim: usize,
    /// ASPP dilation rates (6, 12, 18 in BAM).
    pub aspp_rates: [usize; 3],
    /// Dropout2d probability on the mid-level features during training (0.5).
    pub dropout: f32,
    /// Branches fused in the cross-image encoding.
    pub branches: Branches,
    /// Mean or max similarity map.
    pub similarity: SimilarityReduce,
    /// Symmetric (paper) or conventional cross-attention.
    pub attention: Attention,
    /// Combination of K shots.
    pub shot_fusion: ShotFusion,
    /// Ablation switches: feed the similarity map / the cross-encoding to the decoder.
    pub use_similarity: bool,
    pub use_cross: bool,
    /// Not in the paper: feed the decoder the training-free nearest-neighbour matching prior, one
    /// channel per backbone level plus one of the joint map, matched over all K shots jointly
    /// ([`crate::model::matching`]).
    /// Absent from older checkpoints, which read as `false`.
    #[serde(default)]
    pub matching_prior: bool,
    /// Not in the paper: add a learned multiple of the joint matching prior to the logits, with the
    /// classifier initialised to zero, so the head starts as the nearest-neighbour rule and learns
    /// corrections (needs `matching_prior`). Absent from older checkpoints, which read as `false`.
    #[serde(default)]
    pub prior_residual: bool,
    /// The decoder's input (absent from older checkpoints, which read as `full`).
    #[serde(default)]
    pub decoder_input: DecoderInput,
}

impl MceConfig {
    /// The paper's setting: ResNet-50 dilated to stride 8, 473×473, d = 256, 8 heads, three levels.
    pub fn paper_resnet50() -> Self {
        Self {
            backbone: BackboneKind::Resnet50,
            image_size: 473,
            reduce_dim: 256,
            d_model: 256,
            heads: 8,
            mlp_ratio: 4,
            levels: vec![2, 3, 4],
            decoder_dim: 256,
            aspp_rates: [6, 12, 18],
            dropout: 0.5,
            branches: Branches::Both,
            similarity: SimilarityReduce::Mean,
            attention: Attention::Symmetric,
            shot_fusion: ShotFusion::Average,
            use_similarity: true,
            use_cross: true,
            matching_prior: false,
            prior_residual: false,
            decoder_input: DecoderInput::Full,
        }
    }

    /// The edge setting: EfficientNet-Lite0 at 320×320 (grids 40/20/10), narrower widths.
    pub fn edge_lite0() -> Self {
        Self {
            backbone: BackboneKind::EfficientnetLite0,
            image_size: 320,
            reduce_dim: 128,
            d_model: 128,
            heads: 4,
            mlp_ratio: 2,
            decoder_dim: 128,
            aspp_rates: [3, 6, 9],
            ..Self::paper_resnet50()
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

    /// Check the values that would otherwise fail deep inside a forward pass.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Config(m));
        if self.heads == 0 || !self.d_model.is_multiple_of(self.heads) {
            return bad(format!(
                "d_model {} is not divisible by heads {}",
                self.d_model, self.heads
            ));
        }
        if self.levels.is_empty() && self.use_cross {
            return bad("use_cross needs at least one level".into());
        }
        if let Some(l) = self.levels.iter().find(|l| !(2..=4).contains(*l)) {
            return bad(format!("level {l} is not one of 2, 3, 4"));
        }
        if self.image_size < 16 {
            return bad(format!("image_size {} is too small", self.image_size));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return bad(format!("dropout {} is not in [0, 1)", self.dropout));
        }
        if self.prior_residual && !self.matching_prior {
            return bad("prior_residual needs matching_prior".into());
        }
        if self.decoder_input == DecoderInput::Matching && (!self.matching_prior || self.use_cross)
        {
            return bad("decoder_input `matching` needs matching_prior and no use_cross".into());
        }
        Ok(())
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

    /// Channels of the decoder input `cat(f_Q, V_s, f_cross, A_sim)`.
    pub fn decoder_in(&self) -> usize {
        let features = match self.decoder_input {
            DecoderInput::Full => 2 * self.reduce_dim,
            DecoderInput::Matching => 0,
        };
        features
            + if self.use_cross { self.reduce_dim } else { 0 }
            + usize::from(self.use_similarity)
            + if self.matching_prior { 4 } else { 0 }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_round_trip_through_json_and_validate() {
        for cfg in [MceConfig::paper_resnet50(), MceConfig::edge_lite0()] {
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
    }

    #[test]
    fn invalid_configs_are_rejected() {
        let mut c = MceConfig::edge_lite0();
        c.heads = 3;
        assert!(c.validate().unwrap_err().to_string().contains("divisible"));
        let mut c = MceConfig::edge_lite0();
        c.levels = vec![1];
        assert!(c.validate().is_err());
        assert!(MceConfig::preset("nope").is_err());
    }
}
