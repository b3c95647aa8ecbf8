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

/// The decoder's input by name. [`DecoderInput::tensor`] concatenates the parts present, always in
/// this order (the checkpoints' first-layer weights depend on it):
/// `cat(f_Q, V_s, f_cross, A_sim, prior_2, prior_3, prior_4, prior_joint)`.
#[derive(Debug, Clone, Default)]
pub struct DecoderInput {
    /// Query mid-level features f_Q: `(B, reduce_dim, g, g)`.
    pub query: Option<Tensor>,
    /// Prototype V_s tiled over the grid, averaged over the shots: `(B, reduce_dim, g, g)`.
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
    /// `X = cat(parts)`: `(B, C, g, g)`.
    pub fn tensor(&self) -> Result<Tensor> {
        let priors = self.priors.as_ref();
        let parts: Vec<&Tensor> = [
            self.query.as_ref(),
            self.prototype.as_ref(),
            self.cross.as_ref(),
            self.similarity.as_ref(),
            priors.map(|p| &p.levels),
            priors.map(|p| &p.joint),
        ]
        .into_iter()
        .flatten()
        .collect();
        if parts.is_empty() {
            candle_core::bail!("the decoder input has no parts");
        }
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
