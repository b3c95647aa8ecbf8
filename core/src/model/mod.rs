//! The MCE head: everything after the frozen backbone (MCE_PAPER.md, Fig. 2).
//!
//! ```text
//! support Features ─┬─ down_supp ─▶ f_S ─ MAP(mask) ─▶ V_s ───────────────────────┐
//!                   ├─ level4 ─────────────────────────▶ SupportSimilarity ─┐      │
//!                   └─ levels 2,3,4 ─ cross.l.encode_support ─▶ SupportTokens│      │
//! query Features ───┬─ down_query ─▶ f_Q ────────────────────────────────────┼──────┼──┐
//!                   ├─ level4 ──────────────────────── A_sim ◀──────────────┘      │  │
//!                   └─ levels 2,3,4 ─ cross.l.encode_query ─▶ f_cross ─────────────┤  │
//!                                 X = cat(f_Q, V_s, f_cross, A_sim) ─ decoder ─▶ logits
//! ```
//!
//! With K shots, `f_cross`, `V_s` and `A_sim` are averaged over the shots before the concatenation.
//! Support-only work lives in [`SupportEncoding`] and query-only work in [`QueryEncoding`], so the
//! device encodes each exemplar once and each frame once, then runs only [`Mce::decode`] per class.
//!
//! Options beyond the paper (all off in the presets): `matching_prior` appends the
//! nearest-neighbour priors of levels 2, 3, 4 and of their joint map, matched over all shots
//! jointly ([`matching`]); `prior_residual` adds a learned multiple of the joint prior to the
//! logits, so the head starts as the nearest-neighbour rule ([`decoder`]);
//! [`DecoderInput::Matching`] keeps only `A_sim` and the priors, a class-agnostic input.

pub mod conv;
pub mod cross_encoding;
pub mod decoder;
pub mod init;
pub mod loss;
pub mod masks;
pub mod matching;
pub mod prototype;

use crate::backbone::Features;
use crate::config::{DecoderInput, MceConfig};
use crate::ops::{dropout2d, resize_bilinear};
use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;
use conv::{conv2d_no_bias, Conv as Conv2d};
use cross_encoding::{CrossEncoding, QueryTokens, SupportTokens};
use decoder::Decoder;
use masks::LevelMask;
use matching::SupportMatching;
use prototype::{masked_average_pool, SupportSimilarity};

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

/// Everything the head needs from one support image (one shot), batched over episodes.
#[derive(Debug, Clone)]
pub struct SupportEncoding {
    /// Prototype V_s: `(B, reduce_dim, 1, 1)` (absent with [`DecoderInput::Matching`]).
    pub prototype: Option<Tensor>,
    similarity: SupportSimilarity,
    tokens: Vec<SupportTokens>,
    /// Levels 2, 3, 4 and the joint map for the matching prior (empty when the config leaves it out).
    matching: Vec<SupportMatching>,
}

/// Everything the head needs from one query image, shared by all classes segmented in it.
#[derive(Debug, Clone)]
pub struct QueryEncoding {
    /// Mid-level query features f_Q: `(B, reduce_dim, grid, grid)` (absent with
    /// [`DecoderInput::Matching`]).
    pub mid: Option<Tensor>,
    /// Side of the stride-8 grid where the decoder runs.
    grid: usize,
    level4: Tensor,
    tokens: Vec<QueryTokens>,
    /// Levels 2, 3, 4 and the joint map for the matching prior (empty when the config leaves it out).
    levels: Vec<Tensor>,
}

/// The trainable MCE head on top of a frozen backbone.
#[derive(Debug, Clone)]
pub struct Mce {
    config: MceConfig,
    down_query: Option<Conv2d>,
    down_supp: Option<Conv2d>,
    cross: Option<CrossEncoding>,
    decoder: Decoder,
}

impl Mce {
    /// Build the head; variable names: `down_query.0`, `down_supp.0`, `cross.<i>.*`, `cross.merge`,
    /// `decoder.aspp.*`, `decoder.res`, `decoder.cls`.
    pub fn new(config: &MceConfig, vb: VarBuilder) -> Result<Self> {
        config
            .validate()
            .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        let [c2, c3, _] = config.backbone.channels();
        let r = config.reduce_dim;
        let full = config.decoder_input == DecoderInput::Full;
        let down = |name: &str| {
            full.then(|| conv2d_no_bias(c2 + c3, r, 1, Default::default(), vb.pp(name)))
                .transpose()
        };
        Ok(Self {
            config: config.clone(),
            down_query: down("down_query.0")?,
            down_supp: down("down_supp.0")?,
            cross: config
                .use_cross
                .then(|| CrossEncoding::new(config, vb.pp("cross")))
                .transpose()?,
            decoder: Decoder::new(config, vb.pp("decoder"))?,
        })
    }

    pub fn config(&self) -> &MceConfig {
        &self.config
    }

    /// The decoder (ASPP and classifier).
    pub fn decoder(&self) -> &Decoder {
        &self.decoder
    }

    /// The cross-image encoding (absent when the config disables it).
    pub fn cross_encoding(&self) -> Option<&CrossEncoding> {
        self.cross.as_ref()
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
        Self::new(config, VarBuilder::from_tensors(tensors, dtype, &device))
    }

    /// Mid-level features `ReLU(Conv1×1(cat(level3, level2)))` on the stride-8 grid, Dropout2d in training.
    fn mid_level(
        &self,
        conv: Option<&Conv2d>,
        feats: &Features,
        mode: Mode,
    ) -> Result<Option<Tensor>> {
        let Some(conv) = conv else {
            return Ok(None);
        };
        let (_, _, h, w) = feats.level2.dims4()?;
        let l3 = resize_bilinear(&feats.level3, h, w)?;
        let x = conv
            .forward(&Tensor::cat(&[&l3, &feats.level2], 1)?)?
            .relu()?;
        match mode {
            Mode::Train { seed } => dropout2d(&x, self.config.dropout, seed).map(Some),
            Mode::Eval => Ok(Some(x)),
        }
    }

    /// Encode one support shot: `feats` of the support images, `mask (B, 1, S, S)` with 1 = foreground.
    pub fn encode_support(
        &self,
        feats: &Features,
        mask: &Tensor,
        mode: Mode,
    ) -> Result<SupportEncoding> {
        let prototype = match self.mid_level(self.down_supp.as_ref(), feats, mode)? {
            Some(f_s) => {
                let (_, _, g, _) = f_s.dims4()?; // f_s: (B, r, g, g)
                Some(masked_average_pool(&f_s, &resize_bilinear(mask, g, g)?)?)
            }
            None => None,
        };
        let (_, _, h4, w4) = feats.level4.dims4()?;
        let similarity = SupportSimilarity::new(
            &feats.level4,
            &LevelMask::new(mask, h4, w4)?,
            self.config.similarity,
        )?;
        let levels = feats.levels();
        let tokens = match &self.cross {
            Some(cross) => cross
                .levels()
                .map(|(l, enc)| enc.encode_support(levels[l - 2], mask))
                .collect::<Result<Vec<_>>>()?,
            None => vec![],
        };
        let matching = match self.config.matching_prior {
            true => matching::matching_maps(feats)?
                .iter()
                .map(|f| SupportMatching::new(f, mask))
                .collect::<Result<Vec<_>>>()?,
            false => vec![],
        };
        Ok(SupportEncoding {
            prototype,
            similarity,
            tokens,
            matching,
        })
    }

    /// Encode a query: mid-level features, its tokens and attention weights at every level.
    pub fn encode_query(&self, feats: &Features, mode: Mode) -> Result<QueryEncoding> {
        let levels = feats.levels();
        let tokens = match &self.cross {
            Some(cross) => cross
                .levels()
                .map(|(l, enc)| enc.encode_query(levels[l - 2]))
                .collect::<Result<Vec<_>>>()?,
            None => vec![],
        };
        Ok(QueryEncoding {
            mid: self.mid_level(self.down_query.as_ref(), feats, mode)?,
            grid: feats.level2.dim(2)?,
            level4: feats.level4.clone(),
            tokens,
            levels: match self.config.matching_prior {
                true => matching::matching_maps(feats)?,
                false => vec![],
            },
        })
    }

    /// Per-shot (V_s, f_cross, A_sim) for one support encoding, on the `g × g` grid.
    fn shot_terms(
        &self,
        query: &QueryEncoding,
        shot: &SupportEncoding,
        g: usize,
    ) -> Result<Vec<Tensor>> {
        let mut terms = vec![];
        if let Some(v_s) = &shot.prototype {
            let (b, r, _, _) = v_s.dims4()?;
            terms.push(v_s.broadcast_as((b, r, g, g))?.contiguous()?);
        }
        if let Some(cross) = &self.cross {
            let per_level = cross
                .levels()
                .zip(query.tokens.iter().zip(&shot.tokens))
                .map(|((_, enc), (q, s))| enc.forward(q, s))
                .collect::<Result<Vec<_>>>()?;
            terms.push(cross.merge(&per_level, g)?);
        }
        if self.config.use_similarity {
            let sim = shot.similarity.similarity(&query.level4)?;
            terms.push(resize_bilinear(&sim, g, g)?);
        }
        Ok(terms)
    }

    /// The decoder input `X = cat(f_Q, V_s, f_cross, A_sim)`, each support term averaged over the
    /// K shots, then (optionally) the matching priors of levels 2, 3, 4 and of the joint map, over
    /// all shots jointly:
    /// `(B, decoder_in, g, g)`.
    pub fn decoder_input(
        &self,
        query: &QueryEncoding,
        shots: &[SupportEncoding],
    ) -> Result<Tensor> {
        if shots.is_empty() {
            candle_core::bail!("MCE needs at least one support shot");
        }
        let g = query.grid;
        let mut sums = self.shot_terms(query, &shots[0], g)?;
        for shot in &shots[1..] {
            let terms = self.shot_terms(query, shot, g)?;
            sums = sums
                .iter()
                .zip(&terms)
                .map(|(a, t)| a + t)
                .collect::<Result<Vec<_>>>()?;
        }
        let k = shots.len() as f64;
        let mut x: Vec<Tensor> = query.mid.iter().cloned().collect();
        for t in sums {
            x.push((t / k)?);
        }
        for (l, q) in query.levels.iter().enumerate() {
            let level: Vec<_> = shots.iter().map(|s| &s.matching[l]).collect();
            x.push(matching::level_prior(q, &level, g)?);
        }
        Tensor::cat(&x, 1)
    }

    /// Logits `(B, 2, g, g)` on the stride-8 grid for one query and K ≥ 1 support shots.
    pub fn decode_grid(&self, query: &QueryEncoding, shots: &[SupportEncoding]) -> Result<Tensor> {
        self.decoder.forward(&self.decoder_input(query, shots)?)
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
