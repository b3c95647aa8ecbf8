//! The decoder of Eq. 11: `X = cat(f_Q, V_s, f_cross, A_sim)` → ASPP → 3×3 conv → 1×1 conv to 2 classes.
//!
//! ASPP as in BAM: five branches of `decoder_dim` channels with ReLU (image pooling + 1×1, 1×1, and three
//! dilated 3×3), concatenated and merged by a 1×1 conv (+ ReLU).

use super::conv::{conv2d, Conv as Conv2d};
use crate::config::MceConfig;
use candle_core::{Module, Result, Tensor};
use candle_nn::{Conv2dConfig, Init, VarBuilder};

/// Atrous spatial pyramid pooling.
#[derive(Debug, Clone)]
pub struct Aspp {
    pool: Conv2d,
    branch1x1: Conv2d,
    atrous: Vec<Conv2d>,
    project: Conv2d,
}

impl Aspp {
    pub fn new(in_c: usize, out_c: usize, rates: [usize; 3], vb: VarBuilder) -> Result<Self> {
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

/// ASPP → 3×3 conv (ReLU) → 1×1 conv to background/foreground logits on the stride-8 grid; with
/// `prior_residual`, plus a learned multiple of the joint matching prior (the last input channel).
#[derive(Debug, Clone)]
pub struct Decoder {
    aspp: Aspp,
    res: Conv2d,
    cls: Conv2d,
    prior_skip: Option<Conv2d>,
}

/// Initial weight of the joint prior in the skip: the fg − bg logit starts at
/// `PRIOR_SKIP_INIT · prior`, i.e. the nearest-neighbour rule (prior > 0) with some confidence.
const PRIOR_SKIP_INIT: f64 = 6.0;

impl Decoder {
    pub fn new(cfg: &MceConfig, vb: VarBuilder) -> Result<Self> {
        let dd = cfg.decoder_dim;
        let pad1 = Conv2dConfig {
            padding: 1,
            ..Default::default()
        };
        let (cls, prior_skip) = match cfg.prior_residual {
            // The head starts as the training-free rule and learns corrections to it.
            true => (
                Conv2d::with_init(
                    (dd, 2, 1),
                    Default::default(),
                    Init::Const(0.0),
                    Some(Init::Const(0.0)),
                    vb.pp("cls"),
                )?,
                Some(Conv2d::with_init(
                    (1, 1, 1),
                    Default::default(),
                    Init::Const(PRIOR_SKIP_INIT),
                    None,
                    vb.pp("prior_skip"),
                )?),
            ),
            false => (conv2d(dd, 2, 1, Default::default(), vb.pp("cls"))?, None),
        };
        Ok(Self {
            aspp: Aspp::new(cfg.decoder_in(), dd, cfg.aspp_rates, vb.pp("aspp"))?,
            res: conv2d(dd, dd, 3, pad1, vb.pp("res"))?,
            cls,
            prior_skip,
        })
    }
}

impl Module for Decoder {
    /// `X (B, decoder_in, h, w)` → logits `(B, 2, h, w)`.
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let x = self.aspp.forward(xs)?;
        let x = self.res.forward(&x)?.relu()?;
        let logits = self.cls.forward(&x)?;
        let Some(skip) = &self.prior_skip else {
            return Ok(logits);
        };
        let c = xs.dim(1)?;
        let p = skip.forward(&xs.narrow(1, c - 1, 1)?)?; // (B, 1, h, w): fg − bg evidence
        let half = (p * 0.5)?;
        logits + Tensor::cat(&[&half.neg()?, &half], 1)?
    }
}
