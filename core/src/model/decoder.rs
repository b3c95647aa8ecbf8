//! The decoder of Eq. 11: `X` → ASPP → 3×3 conv → 1×1 conv to 2 classes, and its input `X`,
//! assembled from named parts ([`DecoderInput`]) in one place.
//!
//! ASPP as in BAM: five branches of `decoder.dim` channels with ReLU (image pooling + 1×1, 1×1, and
//! three dilated 3×3), concatenated and merged by a 1×1 conv (+ ReLU).

use super::conv::{conv2d, Conv as Conv2d};
use crate::config::DecoderConfig;
use crate::quant::QuantVarBuilder;
use candle_core::{Module, Result, Tensor};
use candle_nn::{Conv2dConfig, Init};
use std::ops::Range;

/// Atrous spatial pyramid pooling.
#[derive(Debug, Clone)]
pub struct Aspp {
    pool: Conv2d,
    branch1x1: Conv2d,
    atrous: Vec<Conv2d>,
    project: Conv2d,
}

impl Aspp {
    pub fn new(in_c: usize, out_c: usize, rates: [usize; 3], vb: QuantVarBuilder) -> Result<Self> {
        let atrous = rates
            .iter()
            .enumerate()
            .map(|(i, &r)| {
                let cfg = Conv2dConfig {
                    padding: r,
                    dilation: r,
                    ..Default::default()
                };
                conv2d(in_c, out_c, 3, cfg, vb.pp(format!("atrous.{i}")))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            pool: conv2d(in_c, out_c, 1, Default::default(), vb.pp("pool"))?,
            branch1x1: conv2d(in_c, out_c, 1, Default::default(), vb.pp("branch1x1"))?,
            atrous,
            project: conv2d(5 * out_c, out_c, 1, Default::default(), vb.pp("project"))?,
        })
    }
}

impl Module for Aspp {
    /// `(B, C, H, W)` → `(B, out_c, H, W)`.
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let (b, _, h, w) = xs.dims4()?;
        let pooled = xs.mean_keepdim(3)?.mean_keepdim(2)?; // (B, C, 1, 1)
        let pooled = self.pool.forward(&pooled)?.relu()?;
        let out_c = pooled.dim(1)?;
        let mut branches = vec![
            pooled.broadcast_as((b, out_c, h, w))?,
            self.branch1x1.forward(xs)?.relu()?,
        ];
        for conv in &self.atrous {
            branches.push(conv.forward(xs)?.relu()?);
        }
        self.project.forward(&Tensor::cat(&branches, 1)?)?.relu()
    }
}

impl Aspp {
    /// The convs that read the decoder input over the grid, in branch order.
    fn grid_convs(&self) -> impl Iterator<Item = &Conv2d> {
        std::iter::once(&self.branch1x1).chain(&self.atrous)
    }

    /// Whether the input may be taken apart ([`Aspp::forward_parts`]).
    fn splits(&self) -> bool {
        self.grid_convs().all(Conv2d::splits) && self.pool.splits()
    }

    /// [`Aspp::forward`] of `input.tensor()` by parts: each grid conv is linear in its input, so
    /// `W·X = W_Q·f_Q + W_V·V_s + W_rest·rest`, with f_Q's products computed once per query
    /// ([`QueryProducts`]) and V_s's a matrix-vector product; only the rest is per class.
    fn forward_parts(&self, input: &DecoderInput) -> Result<Tensor> {
        let parts = input.parts()?;
        let (b, h, w) = input.grid()?;
        // Image pooling: the spatial mean of X, part by part.
        let means = parts
            .iter()
            .map(|(p, _)| match p {
                Part::Query(t) | Part::Map(t) => t.mean_keepdim(3)?.mean_keepdim(2),
                Part::Tiled(t) => Ok((*t).clone()),
            })
            .collect::<Result<Vec<_>>>()?;
        let pooled = self.pool.forward(&Tensor::cat(&means, 1)?)?.relu()?;
        let out_c = pooled.dim(1)?;
        let mut branches = vec![pooled.broadcast_as((b, out_c, h, w))?];
        let rest = rest_of(&parts)?;
        for (i, conv) in self.grid_convs().enumerate() {
            let mut z = match &rest {
                Some((t, range)) => Some(conv.products(t, range.clone())?),
                None => None,
            };
            for (part, range) in &parts {
                let term = match (part, &input.query_products) {
                    (Part::Query(_), Some(qp)) => qp.0[i].clone(),
                    (Part::Query(t), None) | (Part::Tiled(t), _) => {
                        conv.products(t, range.clone())?
                    }
                    (Part::Map(_), _) => continue, // in `rest`
                };
                z = Some(match z {
                    None => term,
                    Some(acc) => acc.broadcast_add(&term)?,
                });
            }
            let z = z.ok_or_else(|| candle_core::Error::Msg("empty decoder input".into()))?;
            branches.push(conv.from_products(&z)?.relu()?);
        }
        self.project.forward(&Tensor::cat(&branches, 1)?)?.relu()
    }
}

/// The map parts other than f_Q, concatenated, with their channel range (they are adjacent in X).
fn rest_of(parts: &[(Part, Range<usize>)]) -> Result<Option<(Tensor, Range<usize>)>> {
    let maps: Vec<_> = parts
        .iter()
        .filter_map(|(p, r)| match p {
            Part::Map(t) => Some((*t, r.clone())),
            _ => None,
        })
        .collect();
    let (Some(first), Some(last)) = (maps.first(), maps.last()) else {
        return Ok(None);
    };
    let range = first.1.start..last.1.end;
    if maps.iter().map(|(_, r)| r.len()).sum::<usize>() != range.len() {
        candle_core::bail!("the decoder input's map parts are not adjacent");
    }
    let ts: Vec<&Tensor> = maps.iter().map(|(t, _)| *t).collect();
    Ok(Some((Tensor::cat(&ts, 1)?, range)))
}

/// One part of the decoder input X as the first layer reads it.
#[derive(Debug, Clone, Copy)]
pub enum Part<'a> {
    /// f_Q `(B, c, g, g)`, whose products may be precomputed ([`QueryProducts`]).
    Query(&'a Tensor),
    /// Any other map over the grid: `(B, c, g, g)`.
    Map(&'a Tensor),
    /// A vector the same at every grid position: `(B, c, 1, 1)`.
    Tiled(&'a Tensor),
}

impl Part<'_> {
    fn tensor(&self) -> &Tensor {
        match self {
            Part::Query(t) | Part::Map(t) | Part::Tiled(t) => t,
        }
    }
}

/// f_Q's share of the first layer (the products of ASPP's 1×1 and atrous convs with f_Q, in
/// branch order), computed once per query by [`Decoder::query_products`] and reused by every class.
#[derive(Debug, Clone)]
pub struct QueryProducts(Vec<Tensor>);

/// The decoder's input by name. [`DecoderInput::tensor`] concatenates the parts present, always in
/// this order (the checkpoints' first-layer weights depend on it):
/// `cat(f_Q, V_s, f_cross, A_sim, prior_2, prior_3, prior_4, prior_joint)`.
#[derive(Debug, Clone, Default)]
pub struct DecoderInput {
    /// Query mid-level features f_Q: `(B, reduce_dim, g, g)`.
    pub query: Option<Tensor>,
    /// f_Q already through the first layer, when the head computed it with the query.
    pub query_products: Option<QueryProducts>,
    /// Prototype V_s, averaged over the shots: `(B, reduce_dim, 1, 1)`, tiled over the grid in X.
    pub prototype: Option<Tensor>,
    /// Cross-image encoding f_cross, averaged over the shots: `(B, reduce_dim, g, g)`.
    pub cross: Option<Tensor>,
    /// Similarity map A_sim, averaged over the shots: `(B, 1, g, g)`.
    pub similarity: Option<Tensor>,
    /// Nearest-neighbour priors matched over all shots jointly.
    pub priors: Option<Priors>,
}

/// The matching priors of levels 2, 3, 4 and of their joint map ([`super::matching`]).
#[derive(Debug, Clone)]
pub struct Priors {
    /// `(B, 3, g, g)`: levels 2, 3, 4.
    pub levels: Tensor,
    /// `(B, 1, g, g)`: the joint map, the nearest-neighbour rule's evidence (fg − bg cosine).
    pub joint: Tensor,
}

impl DecoderInput {
    /// The parts present, in X's channel order, each with its channel range in X.
    pub fn parts(&self) -> Result<Vec<(Part<'_>, Range<usize>)>> {
        let priors = self.priors.as_ref();
        let present = [
            self.query.as_ref().map(Part::Query),
            self.prototype.as_ref().map(Part::Tiled),
            self.cross.as_ref().map(Part::Map),
            self.similarity.as_ref().map(Part::Map),
            priors.map(|p| Part::Map(&p.levels)),
            priors.map(|p| Part::Map(&p.joint)),
        ];
        let mut at = 0;
        present
            .into_iter()
            .flatten()
            .map(|p| {
                let c = p.tensor().dim(1)?;
                at += c;
                Ok((p, at - c..at))
            })
            .collect()
    }

    /// `(B, g, g)` of the map parts.
    pub fn grid(&self) -> Result<(usize, usize, usize)> {
        for (p, _) in self.parts()? {
            if let Part::Query(t) | Part::Map(t) = p {
                let (b, _, h, w) = t.dims4()?;
                return Ok((b, h, w));
            }
        }
        candle_core::bail!("the decoder input has no map over the grid")
    }

    /// `X = cat(parts)`: `(B, C, g, g)`.
    pub fn tensor(&self) -> Result<Tensor> {
        let (b, h, w) = self.grid()?;
        let parts = self
            .parts()?
            .into_iter()
            .map(|(p, _)| match p {
                Part::Query(t) | Part::Map(t) => Ok(t.clone()),
                Part::Tiled(t) => t.broadcast_as((b, t.dim(1)?, h, w))?.contiguous(),
            })
            .collect::<Result<Vec<_>>>()?;
        Tensor::cat(&parts, 1)
    }
}

/// How the classifier starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Classifier {
    /// candle_nn's default initialisation.
    Default,
    /// Zero weights and bias: the decoder adds nothing until it learns (residual heads).
    Zero,
}

/// ASPP → 3×3 conv (ReLU) → 1×1 conv to background/foreground logits on the stride-8 grid.
#[derive(Debug, Clone)]
pub struct Decoder {
    aspp: Aspp,
    res: Conv2d,
    cls: Conv2d,
}

impl Decoder {
    /// Variables `aspp.*`, `res`, `cls`, for an input of `in_c` channels.
    pub fn new(
        cfg: &DecoderConfig,
        in_c: usize,
        classifier: Classifier,
        vb: QuantVarBuilder,
    ) -> Result<Self> {
        let dd = cfg.dim;
        let pad1 = Conv2dConfig {
            padding: 1,
            ..Default::default()
        };
        let cls = match classifier {
            Classifier::Default => conv2d(dd, 2, 1, Default::default(), vb.pp("cls"))?,
            Classifier::Zero => Conv2d::with_init(
                (dd, 2, 1),
                Default::default(),
                Init::Const(0.0),
                Some(Init::Const(0.0)),
                vb.pp("cls"),
            )?,
        };
        Ok(Self {
            aspp: Aspp::new(in_c, dd, cfg.aspp_rates, vb.pp("aspp"))?,
            res: conv2d(dd, dd, 3, pad1, vb.pp("res"))?,
            cls,
        })
    }
}

impl Decoder {
    /// Whether the first layer runs by parts here: on the CPU (where the shifted products are the
    /// fast convolution) and unquantized.
    fn splits_on(&self, device: &candle_core::Device) -> bool {
        device.is_cpu() && self.aspp.splits()
    }

    /// f_Q's first-layer products, for [`DecoderInput::query_products`]; `None` where the
    /// decoder does not run by parts. f_Q is the first part of X.
    pub fn query_products(&self, f_q: &Tensor) -> Result<Option<QueryProducts>> {
        if !self.splits_on(f_q.device()) {
            return Ok(None);
        }
        let c = f_q.dim(1)?;
        let products = self
            .aspp
            .grid_convs()
            .map(|conv| conv.products(f_q, 0..c))
            .collect::<Result<Vec<_>>>()?;
        Ok(Some(QueryProducts(products)))
    }

    /// Logits `(B, 2, h, w)` of a decoder input: the same as `forward(input.tensor())`, by parts
    /// where the decoder splits.
    pub fn forward_input(&self, input: &DecoderInput) -> Result<Tensor> {
        let device = match input.parts()?.first() {
            Some((p, _)) => p.tensor().device().clone(),
            None => candle_core::bail!("the decoder input has no parts"),
        };
        let x = match self.splits_on(&device) {
            true => self.aspp.forward_parts(input)?,
            false => self.aspp.forward(&input.tensor()?)?,
        };
        let x = self.res.forward(&x)?.relu()?;
        self.cls.forward(&x)
    }
}

impl Module for Decoder {
    /// `X (B, C, h, w)` → logits `(B, 2, h, w)`.
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let x = self.aspp.forward(xs)?;
        let x = self.res.forward(&x)?.relu()?;
        self.cls.forward(&x)
    }
}

/// Initial weight of the joint prior in the skip: the fg − bg logit starts at
/// `PRIOR_SKIP_INIT · prior`, i.e. the nearest-neighbour rule (prior > 0) with some confidence.
pub const PRIOR_SKIP_INIT: f64 = 6.0;

/// A learned multiple of the joint prior added to the logits: `∓ w·p/2` on (bg, fg).
#[derive(Debug, Clone)]
pub struct PriorSkip {
    conv: Conv2d,
}

impl PriorSkip {
    /// Variable `weight (1, 1, 1, 1)`, initialised to [`PRIOR_SKIP_INIT`]; no bias.
    pub fn new(vb: QuantVarBuilder) -> Result<Self> {
        Ok(Self {
            conv: Conv2d::with_init(
                (1, 1, 1),
                Default::default(),
                Init::Const(PRIOR_SKIP_INIT),
                None,
                vb,
            )?,
        })
    }

    /// `logits (B, 2, g, g) + cat(−p/2, p/2)` with `p = skip(joint) (B, 1, g, g)`.
    pub fn add_to(&self, logits: &Tensor, joint: &Tensor) -> Result<Tensor> {
        let half = (self.conv.forward(joint)? * 0.5)?;
        logits + Tensor::cat(&[&half.neg()?, &half], 1)?
    }
}
