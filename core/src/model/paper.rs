//! The paper's MCE head (MCE_PAPER.md, Fig. 2, Eqs. 4–11).
//!
//! ```text
//! f_S = ReLU(Conv1×1(cat(up(l3_S), l2_S)))     f_Q = ReLU(Conv1×1(cat(up(l3_Q), l2_Q)))   mid-level
//! V_s   = Σ f_S·M / (Σ M + 5e-4)                                              MAP prototype
//! A_sim = minmax(⟨x̂_q, mean_{s ∈ fg} x̂_s⟩)   on level 4                       (10)
//! f_cross = Conv1×1(cat_l(up(f_cross,l)))     f_cross,l: masked cross-image encoding (4–9)
//! K shots: V_s, f_cross, A_sim averaged over the shots
//! X = cat(f_Q, V_s, f_cross, A_sim) ─ ASPP ─ 3×3 ─ 1×1 ─▶ logits                (11)
//! ```
//!
//! Support-only work lives in [`PaperSupport`], query-only work in [`PaperQuery`], so the device
//! encodes each exemplar once and each frame once. The ablations of [`PaperAblation`] leave the
//! cross-image encoding or the similarity map out.

use super::conv::{conv2d_no_bias, Conv as Conv2d};
use super::cross_encoding::{CrossEncoding, QueryTokens, SupportTokens};
use super::decoder::{Classifier, Decoder, DecoderInput, QueryProducts};
use super::masks::LevelMask;
use super::prototype::{masked_average_pool, SupportSimilarity};
use super::Mode;
use crate::backbone::{BackboneKind, Features};
use crate::config::{PaperAblation, PaperConfig};
use crate::ops::{dropout2d, resize_bilinear};
use crate::quant::QuantVarBuilder;
use candle_core::{Module, Result, Tensor};

/// One support shot as the paper head needs it.
#[derive(Debug, Clone)]
pub struct PaperSupport {
    /// Prototype V_s: `(B, reduce_dim, 1, 1)`.
    pub prototype: Tensor,
    similarity: SupportSimilarity,
    /// One per cross-encoded level (none in the without-cross-map ablation).
    tokens: Vec<SupportTokens>,
}

/// One query as the paper head needs it, shared by all classes segmented in it.
#[derive(Debug, Clone)]
pub struct PaperQuery {
    /// Mid-level query features f_Q: `(B, reduce_dim, g, g)`.
    pub mid: Tensor,
    /// f_Q through the decoder's first layer, shared by every class ([`Decoder::query_products`]).
    products: Option<QueryProducts>,
    level4: Tensor,
    /// One per cross-encoded level (none in the without-cross-map ablation).
    tokens: Vec<QueryTokens>,
}

/// The paper's head; variables `down_query.0`, `down_supp.0`, `cross.<i>.*`, `cross.merge`,
/// `decoder.*`.
#[derive(Debug, Clone)]
pub struct PaperHead {
    config: PaperConfig,
    down_query: Conv2d,
    down_supp: Conv2d,
    /// Absent in the without-cross-map ablation.
    cross: Option<CrossEncoding>,
    decoder: Decoder,
}

impl PaperHead {
    pub fn new(cfg: &PaperConfig, backbone: BackboneKind, vb: QuantVarBuilder) -> Result<Self> {
        Self::with_decoder(cfg, backbone, cfg.decoder_in(), Classifier::Default, vb)
    }

    /// The same head with a decoder for `decoder_in` input channels, for heads that add parts to
    /// the decoder input ([`super::cross_matching`]).
    pub(super) fn with_decoder(
        cfg: &PaperConfig,
        backbone: BackboneKind,
        decoder_in: usize,
        classifier: Classifier,
        vb: QuantVarBuilder,
    ) -> Result<Self> {
        let channels = backbone.channels();
        let [c2, c3, _] = channels;
        let down = |name: &str| {
            conv2d_no_bias(c2 + c3, cfg.reduce_dim, 1, Default::default(), vb.pp(name))
        };
        Ok(Self {
            config: cfg.clone(),
            down_query: down("down_query.0")?,
            down_supp: down("down_supp.0")?,
            cross: cfg
                .has_cross()
                .then(|| CrossEncoding::new(cfg, channels, vb.pp("cross")))
                .transpose()?,
            decoder: Decoder::new(&cfg.decoder, decoder_in, classifier, vb.pp("decoder"))?,
        })
    }

    pub fn config(&self) -> &PaperConfig {
        &self.config
    }

    pub fn decoder(&self) -> &Decoder {
        &self.decoder
    }

    /// The cross-image encoding (absent in the without-cross-map ablation).
    pub fn cross_encoding(&self) -> Option<&CrossEncoding> {
        self.cross.as_ref()
    }

    /// Mid-level features `ReLU(Conv1×1(cat(level3, level2)))` on the stride-8 grid, Dropout2d in
    /// training: `(B, reduce_dim, g, g)`.
    fn mid_level(&self, conv: &Conv2d, feats: &Features, mode: Mode) -> Result<Tensor> {
        let (_, _, h, w) = feats.level2.dims4()?;
        let l3 = resize_bilinear(&feats.level3, h, w)?;
        let x = conv
            .forward(&Tensor::cat(&[&l3, &feats.level2], 1)?)?
            .relu()?;
        match mode {
            Mode::Train { seed } => dropout2d(&x, self.config.dropout, seed),
            Mode::Eval => Ok(x),
        }
    }

    /// One support shot: `mask (B, 1, S, S)` with 1 = foreground.
    pub fn encode_support(
        &self,
        feats: &Features,
        mask: &Tensor,
        mode: Mode,
    ) -> Result<PaperSupport> {
        let f_s = self.mid_level(&self.down_supp, feats, mode)?; // (B, r, g, g)
        let (_, _, g, _) = f_s.dims4()?;
        let prototype = masked_average_pool(&f_s, &resize_bilinear(mask, g, g)?)?;
        let (_, _, h4, w4) = feats.level4.dims4()?;
        let level_mask = LevelMask::new(mask, h4, w4)?;
        let similarity =
            SupportSimilarity::new(&feats.level4, &level_mask, self.config.similarity)?;
        let levels = feats.levels();
        let tokens = match &self.cross {
            Some(cross) => cross
                .levels()
                .map(|(l, enc)| enc.encode_support(levels[l - 2], mask))
                .collect::<Result<Vec<_>>>()?,
            None => vec![],
        };
        Ok(PaperSupport {
            prototype,
            similarity,
            tokens,
        })
    }

    /// A query: f_Q, its tokens and attention weights at every cross-encoded level.
    pub fn encode_query(&self, feats: &Features, mode: Mode) -> Result<PaperQuery> {
        let levels = feats.levels();
        let tokens = match &self.cross {
            Some(cross) => cross
                .levels()
                .map(|(l, enc)| enc.encode_query(levels[l - 2]))
                .collect::<Result<Vec<_>>>()?,
            None => vec![],
        };
        let mid = self.mid_level(&self.down_query, feats, mode)?;
        Ok(PaperQuery {
            products: self.decoder.query_products(&mid)?,
            mid,
            level4: feats.level4.clone(),
            tokens,
        })
    }

    /// `f_cross` of each shot on the `g × g` grid (none in the without-cross-map ablation); each
    /// level runs all shots at once.
    fn cross_terms(
        &self,
        query: &PaperQuery,
        shots: &[&PaperSupport],
        g: usize,
    ) -> Result<Vec<Option<Tensor>>> {
        let Some(cross) = &self.cross else {
            return Ok(vec![None; shots.len()]);
        };
        let per_level = cross
            .levels()
            .enumerate()
            .map(|(i, (_, enc))| {
                let supports: Vec<_> = shots.iter().map(|s| &s.tokens[i]).collect();
                enc.forward_shots(&query.tokens[i], &supports)
            })
            .collect::<Result<Vec<_>>>()?;
        (0..shots.len())
            .map(|k| {
                let levels: Vec<Tensor> = per_level.iter().map(|l| l[k].clone()).collect();
                cross.merge(&levels, g).map(Some)
            })
            .collect()
    }

    /// One shot's `(V_s, f_cross, A_sim)` on the `g × g` grid, as present in this head.
    fn shot_terms(
        &self,
        query: &PaperQuery,
        shot: &PaperSupport,
        cross: Option<Tensor>,
        g: usize,
    ) -> Result<ShotTerms> {
        let similarity = match self.config.ablation {
            PaperAblation::WithoutSimilarity => None,
            _ => Some(resize_bilinear(
                &shot.similarity.similarity(&query.level4)?,
                g,
                g,
            )?),
        };
        Ok(ShotTerms {
            prototype: shot.prototype.clone(),
            cross,
            similarity,
        })
    }

    /// `X = cat(f_Q, V_s, f_cross, A_sim)` with each support term averaged over the K shots.
    pub fn decoder_input(
        &self,
        query: &PaperQuery,
        shots: &[&PaperSupport],
    ) -> Result<DecoderInput> {
        let g = query.mid.dim(2)?;
        let terms = shots
            .iter()
            .zip(self.cross_terms(query, shots, g)?)
            .map(|(s, cross)| self.shot_terms(query, s, cross, g))
            .collect::<Result<Vec<_>>>()?;
        let mean = |part: &dyn Fn(&ShotTerms) -> Option<&Tensor>| -> Result<Option<Tensor>> {
            let present: Vec<&Tensor> = terms.iter().filter_map(part).collect();
            if present.is_empty() {
                return Ok(None);
            }
            let sum = present[1..]
                .iter()
                .try_fold(present[0].clone(), |a, t| a + *t)?;
            (sum / present.len() as f64).map(Some)
        };
        Ok(DecoderInput {
            query: Some(query.mid.clone()),
            query_products: query.products.clone(),
            prototype: mean(&|t| Some(&t.prototype))?,
            cross: mean(&|t| t.cross.as_ref())?,
            similarity: mean(&|t| t.similarity.as_ref())?,
            priors: None,
        })
    }

    /// Logits `(B, 2, g, g)` on the stride-8 grid.
    pub fn decode_input(&self, input: &DecoderInput) -> Result<Tensor> {
        self.decoder.forward_input(input)
    }
}

/// One shot's support terms before the K-shot average.
struct ShotTerms {
    prototype: Tensor,
    cross: Option<Tensor>,
    similarity: Option<Tensor>,
}
