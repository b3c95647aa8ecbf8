//! The class-agnostic matching head (not in the paper; [`MatchingConfig`]): the decoder sees only
//! evidence of *how well* query positions match the support, never *what* they look like.
//!
//! ```text
//! A_sim      = mean over shots of minmax(⟨x̂_q, mean_{s ∈ fg} x̂_s⟩)   on level 4   (Eq. 10)
//! prior_l    = max_{s ∈ fg, all K shots} cos(q, s) − max_{s ∈ bg, all K shots} cos(q, s)
//!              for l = 2, 3, 4 and the joint map                       (matching)
//! X          = cat(A_sim, prior_2, prior_3, prior_4, prior_joint)     (B, 5, g, g)
//! logits     = Decoder(X) + (−w·prior_joint/2, +w·prior_joint/2)      classifier starts at 0
//! ```
//!
//! With the classifier at zero and `w` = 6 the untrained head is the nearest-neighbour rule; the
//! decoder learns corrections. K shots are fused by matching over all their positions at once.

use super::decoder::{Classifier, Decoder, DecoderInput, PriorSkip};
use super::masks::LevelMask;
use super::matching::{self, SupportMatching};
use super::prototype::SupportSimilarity;
use crate::backbone::Features;
use crate::config::MatchingConfig;
use crate::ops::resize_bilinear;
use crate::quant::QuantVarBuilder;
use candle_core::{Result, Tensor};

/// One support shot as the matching head needs it.
#[derive(Debug, Clone)]
pub struct MatchingSupport {
    similarity: SupportSimilarity,
    /// Levels 2, 3, 4 and the joint map.
    matching: [SupportMatching; matching::PRIOR_CHANNELS],
}

/// One query as the matching head needs it.
#[derive(Debug, Clone)]
pub struct MatchingQuery {
    level4: Tensor,
    /// Levels 2, 3, 4 and the joint map ([`matching::matching_maps`]).
    maps: [Tensor; matching::PRIOR_CHANNELS],
    /// Side of the stride-8 grid where the decoder runs.
    grid: usize,
}

/// The class-agnostic residual head; variables `decoder.aspp.*`, `decoder.res`, `decoder.cls`,
/// `decoder.prior_skip`.
#[derive(Debug, Clone)]
pub struct MatchingHead {
    config: MatchingConfig,
    decoder: Decoder,
    prior_skip: PriorSkip,
}

impl MatchingHead {
    pub fn new(cfg: &MatchingConfig, vb: QuantVarBuilder) -> Result<Self> {
        let vb = vb.pp("decoder");
        Ok(Self {
            config: cfg.clone(),
            decoder: Decoder::new(&cfg.decoder, cfg.decoder_in(), Classifier::Zero, vb.clone())?,
            prior_skip: PriorSkip::new(vb.pp("prior_skip"))?,
        })
    }

    pub fn config(&self) -> &MatchingConfig {
        &self.config
    }

    pub fn decoder(&self) -> &Decoder {
        &self.decoder
    }

    /// One support shot: `mask (B, 1, S, S)` with 1 = foreground.
    pub fn encode_support(&self, feats: &Features, mask: &Tensor) -> Result<MatchingSupport> {
        let (_, _, h4, w4) = feats.level4.dims4()?;
        let level_mask = LevelMask::new(mask, h4, w4)?;
        let similarity =
            SupportSimilarity::new(&feats.level4, &level_mask, self.config.similarity)?;
        Ok(MatchingSupport {
            similarity,
            matching: matching::support_matching(feats, mask)?,
        })
    }

    pub fn encode_query(&self, feats: &Features) -> Result<MatchingQuery> {
        Ok(MatchingQuery {
            level4: feats.level4.clone(),
            maps: matching::matching_maps(feats)?,
            grid: feats.level2.dim(2)?,
        })
    }

    /// `X = cat(A_sim, priors)`: A_sim averaged over the shots, priors matched over all shots.
    pub fn decoder_input(
        &self,
        query: &MatchingQuery,
        shots: &[&MatchingSupport],
    ) -> Result<DecoderInput> {
        let g = query.grid;
        let sims = shots
            .iter()
            .map(|s| resize_bilinear(&s.similarity.similarity(&query.level4)?, g, g))
            .collect::<Result<Vec<_>>>()?;
        let sum = sims[1..].iter().try_fold(sims[0].clone(), |a, t| a + t)?;
        let matching: Vec<_> = shots.iter().map(|s| &s.matching).collect();
        Ok(DecoderInput {
            similarity: Some((sum / shots.len() as f64)?),
            priors: Some(matching::priors(&query.maps, &matching, g)?),
            ..Default::default()
        })
    }

    /// Logits `(B, 2, g, g)`: the decoder's correction plus the skip of the joint prior.
    pub fn decode_input(&self, input: &DecoderInput) -> Result<Tensor> {
        let Some(priors) = &input.priors else {
            candle_core::bail!("the matching head's decoder input has no priors");
        };
        let logits = self.decoder.forward_input(input)?;
        self.prior_skip.add_to(&logits, &priors.joint)
    }
}
