//! MCE with matching (not in the paper; [`CrossMatchingConfig`]): the paper's head, every part of
//! it, whose decoder also sees the nearest-neighbour evidence of the matching head.
//!
//! ```text
//! f_Q, V_s, f_cross, A_sim  as the paper head (V_s, f_cross, A_sim averaged over the K shots)
//! prior_l = max_{s ∈ fg, all K shots} cos(q, s) − max_{s ∈ bg, all K shots} cos(q, s)
//!           for l = 2, 3, 4 and the joint map                                   (matching)
//! X       = cat(f_Q, V_s, f_cross, A_sim, prior_2, prior_3, prior_4, prior_joint)
//! logits  = Decoder(X) + (−w·prior_joint/2, +w·prior_joint/2)       classifier starts at 0
//! ```
//!
//! The paper fuses K shots by averaging, which wastes extra shots; the joint prior matches a query
//! position against the positions of all shots at once, so a part seen in any shot counts. With
//! the classifier at zero the untrained head is the nearest-neighbour rule, and the decoder learns
//! what the cross-image encoding and the features add to it.

use super::decoder::{Classifier, DecoderInput, PriorSkip};
use super::matching::{self, SupportMatching};
use super::paper::{PaperHead, PaperQuery, PaperSupport};
use super::Mode;
use crate::backbone::{BackboneKind, Features};
use crate::config::CrossMatchingConfig;
use crate::quant::QuantVarBuilder;
use candle_core::{Result, Tensor};

/// One support shot: the paper head's encoding and the shot's side of the priors.
#[derive(Debug, Clone)]
pub struct CrossMatchingSupport {
    pub mce: PaperSupport,
    /// Levels 2, 3, 4 and the joint map.
    matching: [SupportMatching; matching::PRIOR_CHANNELS],
}

/// One query: the paper head's encoding and the maps the priors match on.
#[derive(Debug, Clone)]
pub struct CrossMatchingQuery {
    pub mce: PaperQuery,
    /// Levels 2, 3, 4 and the joint map ([`matching::matching_maps`]).
    maps: [Tensor; matching::PRIOR_CHANNELS],
}

/// The paper head's variables (`down_query.0`, `down_supp.0`, `cross.*`, `decoder.*`, its first
/// decoder layer four channels wider) plus `decoder.prior_skip`.
#[derive(Debug, Clone)]
pub struct CrossMatchingHead {
    config: CrossMatchingConfig,
    mce: PaperHead,
    prior_skip: PriorSkip,
}

impl CrossMatchingHead {
    pub fn new(
        cfg: &CrossMatchingConfig,
        backbone: BackboneKind,
        vb: QuantVarBuilder,
    ) -> Result<Self> {
        let mce = PaperHead::with_decoder(
            &cfg.mce,
            backbone,
            cfg.decoder_in(),
            Classifier::Zero,
            vb.clone(),
        )?;
        Ok(Self {
            config: cfg.clone(),
            mce,
            prior_skip: PriorSkip::new(vb.pp("decoder").pp("prior_skip"))?,
        })
    }

    pub fn config(&self) -> &CrossMatchingConfig {
        &self.config
    }

    /// The MCE part: mid-level features, cross-image encoding, decoder.
    pub fn mce(&self) -> &PaperHead {
        &self.mce
    }

    /// One support shot: `mask (B, 1, S, S)` with 1 = foreground.
    pub fn encode_support(
        &self,
        feats: &Features,
        mask: &Tensor,
        mode: Mode,
    ) -> Result<CrossMatchingSupport> {
        Ok(CrossMatchingSupport {
            mce: self.mce.encode_support(feats, mask, mode)?,
            matching: matching::support_matching(feats, mask)?,
        })
    }

    pub fn encode_query(&self, feats: &Features, mode: Mode) -> Result<CrossMatchingQuery> {
        Ok(CrossMatchingQuery {
            mce: self.mce.encode_query(feats, mode)?,
            maps: matching::matching_maps(feats)?,
        })
    }

    /// `X = cat(f_Q, V_s, f_cross, A_sim, priors)`: the paper's terms averaged over the shots, the
    /// priors matched over all shots at once.
    pub fn decoder_input(
        &self,
        query: &CrossMatchingQuery,
        shots: &[&CrossMatchingSupport],
    ) -> Result<DecoderInput> {
        let mce: Vec<&PaperSupport> = shots.iter().map(|s| &s.mce).collect();
        let input = self.mce.decoder_input(&query.mce, &mce)?;
        let g = query.mce.mid.dim(2)?;
        let matching: Vec<_> = shots.iter().map(|s| &s.matching).collect();
        Ok(DecoderInput {
            priors: Some(matching::priors(&query.maps, &matching, g)?),
            ..input
        })
    }

    /// Logits `(B, 2, g, g)`: the decoder's correction plus the skip of the joint prior.
    pub fn decode_input(&self, input: &DecoderInput) -> Result<Tensor> {
        let Some(priors) = &input.priors else {
            candle_core::bail!("the cross_matching head's decoder input has no priors");
        };
        let logits = self.mce.decode_input(input)?;
        self.prior_skip.add_to(&logits, &priors.joint)
    }
}
