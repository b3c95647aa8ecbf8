//! The head: everything after the frozen backbone. [`Mce`] is a model config and one [`Head`], a
//! closed set of complete heads, each one type with a straight-line forward:
//!
//! | head | module | decoder input | K shots |
//! |---|---|---|---|
//! | [`Head::Paper`] | [`paper`] | `cat(f_Q, V_s, f_cross, A_sim)` (MCE_PAPER.md, Fig. 2) | averaged |
//! | [`Head::Matching`] | [`matching_head`] | `cat(A_sim, nearest-neighbour priors)`, plus a prior skip | matched jointly |
//! | [`Head::CrossMatching`] | [`cross_matching`] | `cat(f_Q, V_s, f_cross, A_sim, priors)`, plus a prior skip | averaged, priors matched jointly |
//!
//! ```text
//! support Features + mask ─ encode_support ─▶ SupportEncoding   (once per exemplar)
//! query Features ────────── encode_query ───▶ QueryEncoding     (once per frame)
//!                 decoder_input(query, shots) ─▶ DecoderInput (named parts) ─ decode ─▶ logits
//! ```
//!
//! Support-only work lives in [`SupportEncoding`] and query-only work in [`QueryEncoding`], so the
//! device encodes each exemplar once and each frame once, then runs only [`Mce::decode`] per class.
//! The parts shared by heads: [`cross_encoding`] (Eqs. 4–9), [`prototype`] (MAP, A_sim),
//! [`matching`] (the priors), [`decoder`] (ASPP and the decoder input), [`masks`], [`conv`].

pub mod conv;
pub mod cross_encoding;
pub mod cross_matching;
pub mod decoder;
pub mod init;
pub mod loss;
pub mod masks;
pub mod matching;
pub mod matching_head;
pub mod paper;
pub mod prototype;

use crate::backbone::Features;
use crate::config::{HeadConfig, HeadKind, MceConfig};
use crate::ops::resize_bilinear;
use crate::quant::QuantVarBuilder;
use candle_core::{Result, Tensor};
use cross_encoding::CrossEncoding;
use cross_matching::{CrossMatchingHead, CrossMatchingQuery, CrossMatchingSupport};
use decoder::DecoderInput;
use matching_head::{MatchingHead, MatchingQuery, MatchingSupport};
use paper::{PaperHead, PaperQuery, PaperSupport};

/// Whether a pass trains (Dropout2d on, drawn from `seed`) or evaluates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Eval,
    /// Training: dropout masks are a pure function of the seed, so runs and resumes reproduce.
    Train {
        seed: u64,
    },
}

impl Mode {
    /// A different but reproducible training seed for each part of a pass (query, shot k).
    pub fn derive(self, salt: u64) -> Mode {
        match self {
            Mode::Eval => Mode::Eval,
            Mode::Train { seed } => Mode::Train {
                seed: crate::ops::splitmix64(seed ^ salt.wrapping_mul(0x9E37_79B9_7F4A_7C15)),
            },
        }
    }
}

/// The trainable heads.
#[derive(Debug, Clone)]
#[allow(clippy::large_enum_variant)] // one head per model: its size does not matter
pub enum Head {
    Paper(PaperHead),
    Matching(MatchingHead),
    CrossMatching(CrossMatchingHead),
}

/// Everything a head needs from one support image (one shot), batched over episodes.
#[derive(Debug, Clone)]
pub enum SupportEncoding {
    Paper(PaperSupport),
    Matching(MatchingSupport),
    CrossMatching(CrossMatchingSupport),
}

/// Everything a head needs from one query image, shared by all classes segmented in it.
#[derive(Debug, Clone)]
pub enum QueryEncoding {
    Paper(PaperQuery),
    Matching(MatchingQuery),
    CrossMatching(CrossMatchingQuery),
}

/// An MCE model's head on top of a frozen backbone.
#[derive(Debug, Clone)]
pub struct Mce {
    config: MceConfig,
    head: Head,
}

fn mismatch(what: &str, head: HeadKind) -> candle_core::Error {
    candle_core::Error::Msg(format!("{what} was not made by a {head} head"))
}

/// Every shot's encoding as the head's own type, or a mismatch error.
fn shots_of<'a, T>(
    shots: &'a [SupportEncoding],
    kind: HeadKind,
    pick: impl Fn(&'a SupportEncoding) -> Option<&'a T>,
) -> Result<Vec<&'a T>> {
    shots
        .iter()
        .map(|s| pick(s).ok_or_else(|| mismatch("a support encoding", kind)))
        .collect()
}

impl Mce {
    /// Build the model's head from a VarBuilder (float) or a
    /// [`QuantVarBuilder`] with a quantization plan. Variable names are each head's (see
    /// [`PaperHead`], [`MatchingHead`]).
    pub fn new<'a>(config: &MceConfig, vb: impl Into<QuantVarBuilder<'a>>) -> Result<Self> {
        config
            .validate()
            .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        let vb = vb.into();
        let head = match &config.head {
            HeadConfig::Paper(c) => Head::Paper(PaperHead::new(c, config.backbone, vb)?),
            HeadConfig::Matching(c) => Head::Matching(MatchingHead::new(c, vb)?),
            HeadConfig::CrossMatching(c) => {
                Head::CrossMatching(CrossMatchingHead::new(c, config.backbone, vb)?)
            }
        };
        Ok(Self {
            config: config.clone(),
            head,
        })
    }

    pub fn config(&self) -> &MceConfig {
        &self.config
    }

    pub fn head(&self) -> &Head {
        &self.head
    }

    pub fn kind(&self) -> HeadKind {
        self.config.head.kind()
    }

    /// The cross-image encoding, for the heads that have one.
    pub fn cross_encoding(&self) -> Option<&CrossEncoding> {
        match &self.head {
            Head::Paper(h) => h.cross_encoding(),
            Head::CrossMatching(h) => h.mce().cross_encoding(),
            Head::Matching(_) => None,
        }
    }

    /// A copy of a trainable head whose weights are plain tensors: inference through it records no
    /// autograd graph, so intermediate tensors are freed as soon as they are used.
    pub fn frozen(config: &MceConfig, varmap: &candle_nn::VarMap) -> Result<Self> {
        let vars = varmap.data().lock().expect("varmap lock");
        let (dtype, device) = match vars.values().next() {
            Some(v) => (v.dtype(), v.device().clone()),
            None => candle_core::bail!("empty varmap"),
        };
        let tensors = vars
            .iter()
            .map(|(k, v)| (k.clone(), v.as_tensor().detach()))
            .collect();
        Self::new(
            config,
            candle_nn::VarBuilder::from_tensors(tensors, dtype, &device),
        )
    }

    /// Encode one support shot: `feats` of the support images, `mask (B, 1, S, S)` with 1 = foreground.
    pub fn encode_support(
        &self,
        feats: &Features,
        mask: &Tensor,
        mode: Mode,
    ) -> Result<SupportEncoding> {
        Ok(match &self.head {
            Head::Paper(h) => SupportEncoding::Paper(h.encode_support(feats, mask, mode)?),
            Head::Matching(h) => SupportEncoding::Matching(h.encode_support(feats, mask)?),
            Head::CrossMatching(h) => {
                SupportEncoding::CrossMatching(h.encode_support(feats, mask, mode)?)
            }
        })
    }

    /// Encode a query once for every class segmented in it.
    pub fn encode_query(&self, feats: &Features, mode: Mode) -> Result<QueryEncoding> {
        Ok(match &self.head {
            Head::Paper(h) => QueryEncoding::Paper(h.encode_query(feats, mode)?),
            Head::Matching(h) => QueryEncoding::Matching(h.encode_query(feats)?),
            Head::CrossMatching(h) => QueryEncoding::CrossMatching(h.encode_query(feats, mode)?),
        })
    }

    /// The decoder input for one query and K ≥ 1 support shots, by named parts.
    pub fn decoder_input(
        &self,
        query: &QueryEncoding,
        shots: &[SupportEncoding],
    ) -> Result<DecoderInput> {
        if shots.is_empty() {
            candle_core::bail!("MCE needs at least one support shot");
        }
        let kind = self.kind();
        match (&self.head, query) {
            (Head::Paper(h), QueryEncoding::Paper(q)) => {
                let s = shots_of(shots, kind, |s| match s {
                    SupportEncoding::Paper(s) => Some(s),
                    _ => None,
                })?;
                h.decoder_input(q, &s)
            }
            (Head::Matching(h), QueryEncoding::Matching(q)) => {
                let s = shots_of(shots, kind, |s| match s {
                    SupportEncoding::Matching(s) => Some(s),
                    _ => None,
                })?;
                h.decoder_input(q, &s)
            }
            (Head::CrossMatching(h), QueryEncoding::CrossMatching(q)) => {
                let s = shots_of(shots, kind, |s| match s {
                    SupportEncoding::CrossMatching(s) => Some(s),
                    _ => None,
                })?;
                h.decoder_input(q, &s)
            }
            _ => Err(mismatch("the query encoding", kind)),
        }
    }

    /// Logits `(B, 2, g, g)` on the stride-8 grid from a decoder input.
    pub fn decode_input(&self, input: &DecoderInput) -> Result<Tensor> {
        match &self.head {
            Head::Paper(h) => h.decode_input(input),
            Head::Matching(h) => h.decode_input(input),
            Head::CrossMatching(h) => h.decode_input(input),
        }
    }

    /// Logits `(B, 2, g, g)` on the stride-8 grid for one query and K ≥ 1 support shots.
    pub fn decode_grid(&self, query: &QueryEncoding, shots: &[SupportEncoding]) -> Result<Tensor> {
        self.decode_input(&self.decoder_input(query, shots)?)
    }

    /// Logits `(B, 2, S, S)` at the model's input resolution.
    pub fn decode(&self, query: &QueryEncoding, shots: &[SupportEncoding]) -> Result<Tensor> {
        let s = self.config.image_size;
        resize_bilinear(&self.decode_grid(query, shots)?, s, s)
    }

    /// One episode batch end to end: query features and K `(support features, mask)` shots.
    pub fn forward(
        &self,
        query: &Features,
        shots: &[(Features, Tensor)],
        mode: Mode,
    ) -> Result<Tensor> {
        let q = self.encode_query(query, mode.derive(0))?;
        let s = shots
            .iter()
            .enumerate()
            .map(|(k, (f, m))| self.encode_support(f, m, mode.derive(k as u64 + 1)))
            .collect::<Result<Vec<_>>>()?;
        self.decode(&q, &s)
    }
}
