//! Masked Cross-image Encoding (Sec. II-C/D, Eqs. 4–9) at one backbone level, and its multi-level merge.
//!
//! Per level l, with support tokens `S = G_proj(f_S)` and query tokens `Q = G_proj(f_Q)` (`N × d`):
//!
//! ```text
//! S_q, S_k, S_v = W_S^{q,k,v} S          Q_q, Q_k, Q_v = W_Q^{q,k,v} Q                    (4)
//! R_S = softmax(S_q S_kᵀ / √d_h + M_key) Q_v     support branch: background keys get −∞     (5–6)
//! R_Q = softmax(Q_q Q_kᵀ / √d_h) (S_v ⊙ M)       query branch: background values zeroed      (7–8)
//! f'_S = MLP_S(LN_S(R_S)),  f'_Q = MLP_Q(LN_Q(R_Q))                                          (9)
//! f_cross,l = Conv1×1(cat(f'_Q, f'_S))
//! ```
//!
//! Everything that depends on the support alone is computed once in [`SupportTokens`]; everything
//! that depends on the query alone (including the query branch's attention weights) in
//! [`QueryTokens`], so several classes can share one query encoding.

use super::conv::{conv2d, Conv as Conv2d};
use super::masks::LevelMask;
use crate::config::{Attention, Branches, PaperConfig};
use crate::ops::{layer_norm, resize_bilinear, softmax};
use crate::quant::layers::{linear, Linear};
use crate::quant::QuantVarBuilder;
use candle_core::{Module, Result, Tensor};

/// `Linear(d, r·d) – GELU(erf) – Linear(r·d, d)`.
#[derive(Debug, Clone)]
pub struct Mlp {
    fc1: Linear,
    fc2: Linear,
}

impl Mlp {
    pub fn new(d: usize, hidden: usize, vb: QuantVarBuilder) -> Result<Self> {
        Ok(Self {
            fc1: linear(d, hidden, vb.pp("fc1"))?,
            fc2: linear(hidden, d, vb.pp("fc2"))?,
        })
    }
}

impl Module for Mlp {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        self.fc2.forward(&self.fc1.forward(xs)?.gelu_erf()?)
    }
}

/// LayerNorm (eps 1e-5) built from primitives so that it has gradients.
#[derive(Debug, Clone)]
pub struct Norm {
    weight: Tensor,
    bias: Tensor,
}

impl Norm {
    pub fn new(d: usize, vb: QuantVarBuilder) -> Result<Self> {
        Ok(Self {
            weight: vb.get_with_hints(d, "weight", candle_nn::Init::Const(1.0))?,
            bias: vb.get_with_hints(d, "bias", candle_nn::Init::Const(0.0))?,
        })
    }
}

impl Module for Norm {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        layer_norm(xs, &self.weight, &self.bias, 1e-5)
    }
}

/// One branch's output head: `MLP(LN(R))`.
#[derive(Debug, Clone)]
struct BranchHead {
    norm: Norm,
    mlp: Mlp,
}

impl BranchHead {
    fn new(cfg: &PaperConfig, vb: QuantVarBuilder, name: &str) -> Result<Self> {
        let d = cfg.d_model;
        Ok(Self {
            norm: Norm::new(d, vb.pp(format!("{name}_norm")))?,
            mlp: Mlp::new(d, d * cfg.mlp_ratio, vb.pp(format!("{name}_mlp")))?,
        })
    }

    /// `(B, h, N, d_h)` → `(B, d, H, W)`.
    fn forward(&self, r: &Tensor, h: usize, w: usize) -> Result<Tensor> {
        let tokens = merge_heads(r)?; // (B, N, d)
        let out = self.mlp.forward(&self.norm.forward(&tokens)?)?;
        let (b, _, d) = out.dims3()?;
        out.transpose(1, 2)?.reshape((b, d, h, w))
    }
}

/// `(B, N, d)` → `(B, heads, N, d/heads)`.
fn split_heads(xs: &Tensor, heads: usize) -> Result<Tensor> {
    let (b, n, d) = xs.dims3()?;
    xs.reshape((b, n, heads, d / heads))?
        .transpose(1, 2)?
        .contiguous()
}

/// `(B, heads, N, d_h)` → `(B, N, heads·d_h)`.
fn merge_heads(xs: &Tensor) -> Result<Tensor> {
    let (b, h, n, dh) = xs.dims4()?;
    xs.transpose(1, 2)?.contiguous()?.reshape((b, n, h * dh))
}

/// `softmax(a bᵀ · scale + bias) v`, all `(B, h, N, d_h)`; `bias` broadcasts on the key axis.
fn attend(a: &Tensor, b: &Tensor, v: &Tensor, scale: f64, bias: Option<&Tensor>) -> Result<Tensor> {
    weights(a, b, scale, bias)?.matmul(v)
}

fn weights(a: &Tensor, b: &Tensor, scale: f64, bias: Option<&Tensor>) -> Result<Tensor> {
    let logits = (a * scale)?.matmul(&b.t()?)?; // (B, h, N, N); scaling a is N/d_h times cheaper
    let logits = match bias {
        Some(bias) => logits.broadcast_add(bias)?,
        None => logits,
    };
    softmax(&logits)
}

/// The support side of one level, cached per support image.
#[derive(Debug, Clone)]
pub struct SupportTokens {
    q: Option<Tensor>,
    k: Option<Tensor>,
    v: Option<Tensor>,
    mask: LevelMask,
}

/// The query side of one level, shared by every class segmented in the same frame.
#[derive(Debug, Clone)]
pub struct QueryTokens {
    q: Option<Tensor>,
    k: Option<Tensor>,
    v: Option<Tensor>,
    /// Query-branch attention weights `softmax(Q_q Q_kᵀ/√d_h)` (symmetric attention only).
    query_weights: Option<Tensor>,
    h: usize,
    w: usize,
}

/// Optional `Linear(d, d)` maps of Eq. 4, created only when the chosen branches use them.
#[derive(Debug, Clone)]
struct Projections {
    q: Option<Linear>,
    k: Option<Linear>,
    v: Option<Linear>,
}

impl Projections {
    fn new(d: usize, use_qkv: [bool; 3], vb: QuantVarBuilder, side: &str) -> Result<Self> {
        let make = |on: bool, n: &str| -> Result<Option<Linear>> {
            on.then(|| linear(d, d, vb.pp(format!("{side}_{n}"))))
                .transpose()
        };
        Ok(Self {
            q: make(use_qkv[0], "q")?,
            k: make(use_qkv[1], "k")?,
            v: make(use_qkv[2], "v")?,
        })
    }

    /// `(B, N, d)` → the present maps, each split into heads.
    fn apply(&self, tokens: &Tensor, heads: usize) -> Result<[Option<Tensor>; 3]> {
        let run = |l: &Option<Linear>| -> Result<Option<Tensor>> {
            l.as_ref()
                .map(|l| split_heads(&l.forward(tokens)?, heads))
                .transpose()
        };
        Ok([run(&self.q)?, run(&self.k)?, run(&self.v)?])
    }
}

/// The cross-image encoder of one level: `G_proj`, the two branches and their fusion.
#[derive(Debug, Clone)]
pub struct LevelEncoder {
    proj: Conv2d,
    support_proj: Projections,
    query_proj: Projections,
    support_head: Option<BranchHead>,
    query_head: Option<BranchHead>,
    fuse: Conv2d,
    heads: usize,
    scale: f64,
    attention: Attention,
}

fn expect<'a>(t: &'a Option<Tensor>, what: &str) -> Result<&'a Tensor> {
    t.as_ref()
        .ok_or_else(|| candle_core::Error::Msg(format!("cross-encoding: {what} was not computed")))
}

impl LevelEncoder {
    pub fn new(cfg: &PaperConfig, in_channels: usize, vb: QuantVarBuilder) -> Result<Self> {
        let d = cfg.d_model;
        let query_branch = cfg.branches != Branches::SupportOnly;
        let support_branch = cfg.branches != Branches::QueryOnly;
        let symmetric = cfg.attention == Attention::Symmetric;
        // Which of q, k, v each side needs (see the module docs and Attention::Conventional).
        let support_qkv = [
            support_branch,
            (support_branch && symmetric) || (query_branch && !symmetric),
            query_branch,
        ];
        let query_qkv = [
            query_branch,
            (query_branch && symmetric) || (support_branch && !symmetric),
            support_branch,
        ];
        let n_branches = usize::from(query_branch) + usize::from(support_branch);
        Ok(Self {
            proj: conv2d(in_channels, d, 1, Default::default(), vb.pp("proj"))?,
            support_proj: Projections::new(d, support_qkv, vb.clone(), "support")?,
            query_proj: Projections::new(d, query_qkv, vb.clone(), "query")?,
            support_head: support_branch
                .then(|| BranchHead::new(cfg, vb.clone(), "support"))
                .transpose()?,
            query_head: query_branch
                .then(|| BranchHead::new(cfg, vb.clone(), "query"))
                .transpose()?,
            fuse: conv2d(n_branches * d, d, 1, Default::default(), vb.pp("fuse"))?,
            heads: cfg.heads,
            scale: 1.0 / ((d / cfg.heads) as f64).sqrt(),
            attention: cfg.attention,
        })
    }

    /// `(B, C_l, H, W)` → tokens `(B, N, d)`.
    fn tokens(&self, feat: &Tensor) -> Result<Tensor> {
        let x = self.proj.forward(feat)?; // (B, d, H, W)
        let (b, d, h, w) = x.dims4()?;
        x.reshape((b, d, h * w))?.transpose(1, 2)?.contiguous()
    }

    /// Support-only work: tokens, their projections, and the level mask.
    pub fn encode_support(&self, feat: &Tensor, mask: &Tensor) -> Result<SupportTokens> {
        let (_, _, h, w) = feat.dims4()?;
        let [q, k, v] = self.support_proj.apply(&self.tokens(feat)?, self.heads)?;
        Ok(SupportTokens {
            q,
            k,
            v,
            mask: LevelMask::new(mask, h, w)?,
        })
    }

    /// Query-only work: tokens, projections and (symmetric) the query branch's attention weights.
    pub fn encode_query(&self, feat: &Tensor) -> Result<QueryTokens> {
        let (_, _, h, w) = feat.dims4()?;
        let [q, k, v] = self.query_proj.apply(&self.tokens(feat)?, self.heads)?;
        let query_weights = match (&self.query_head, self.attention, &q, &k) {
            (Some(_), Attention::Symmetric, Some(q), Some(k)) => {
                Some(weights(q, k, self.scale, None)?)
            }
            _ => None,
        };
        Ok(QueryTokens {
            q,
            k,
            v,
            query_weights,
            h,
            w,
        })
    }

    /// `f_cross,l`: `(B, d, H, W)`. Support and query must share the level's grid.
    pub fn forward(&self, query: &QueryTokens, support: &SupportTokens) -> Result<Tensor> {
        let (h, w) = (query.h, query.w);
        let mut outs = Vec::with_capacity(2);
        if let Some(head) = &self.query_head {
            // values: S_v with background tokens zeroed, (B, h, N, d_h) ⊙ (B, 1, N, 1)
            let sv = expect(&support.v, "S_v")?;
            let keep = support.mask.keep.unsqueeze(1)?.unsqueeze(3)?;
            let r_q = match self.attention {
                Attention::Symmetric => {
                    expect(&query.query_weights, "A_Q")?.matmul(&sv.broadcast_mul(&keep)?)?
                }
                Attention::Conventional => attend(
                    expect(&query.q, "Q_q")?,
                    expect(&support.k, "S_k")?,
                    sv,
                    self.scale,
                    Some(&support.mask.key_bias),
                )?,
            };
            outs.push(head.forward(&r_q, h, w)?);
        }
        if let Some(head) = &self.support_head {
            let sq = expect(&support.q, "S_q")?;
            let qv = expect(&query.v, "Q_v")?;
            let r_s = match self.attention {
                Attention::Symmetric => attend(
                    sq,
                    expect(&support.k, "S_k")?,
                    qv,
                    self.scale,
                    Some(&support.mask.key_bias),
                )?,
                Attention::Conventional => {
                    attend(sq, expect(&query.k, "Q_k")?, qv, self.scale, None)?
                }
            };
            outs.push(head.forward(&r_s, h, w)?);
        }
        self.fuse.forward(&Tensor::cat(&outs, 1)?)
    }
}

/// All levels and the multi-level merge: `f_cross = Conv1×1(cat_l(up(f_cross,l)))`.
#[derive(Debug, Clone)]
pub struct CrossEncoding {
    levels: Vec<(usize, LevelEncoder)>,
    merge: Conv2d,
}

impl CrossEncoding {
    /// `channels`: the backbone's channels at levels 2, 3, 4.
    pub fn new(cfg: &PaperConfig, channels: [usize; 3], vb: QuantVarBuilder) -> Result<Self> {
        let levels = cfg
            .levels
            .iter()
            .enumerate()
            .map(|(i, &l)| Ok((l, LevelEncoder::new(cfg, channels[l - 2], vb.pp(i))?)))
            .collect::<Result<Vec<_>>>()?;
        let merge_in = cfg.levels.len() * cfg.d_model;
        let merge = conv2d(
            merge_in,
            cfg.reduce_dim,
            1,
            Default::default(),
            vb.pp("merge"),
        )?;
        Ok(Self { levels, merge })
    }

    /// The backbone levels this encoding reads, with their encoders.
    pub fn levels(&self) -> impl Iterator<Item = &(usize, LevelEncoder)> {
        self.levels.iter()
    }

    /// Merge per-level outputs on the `grid × grid` stride-8 grid: `(B, reduce_dim, grid, grid)`.
    pub fn merge(&self, per_level: &[Tensor], grid: usize) -> Result<Tensor> {
        let up = per_level
            .iter()
            .map(|x| resize_bilinear(x, grid, grid))
            .collect::<Result<Vec<_>>>()?;
        self.merge.forward(&Tensor::cat(&up, 1)?)
    }
}
