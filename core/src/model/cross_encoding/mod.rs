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
//! Each branch is a type ([`branch`]): the query branch `R_Q` and the support branch `R_S`, each
//! `Symmetric` (the paper, above) or `Conventional` (ablation: attend to the other image's keys);
//! a level runs both or one of them. What depends on the support alone is kept once in
//! [`SupportTokens`]; what depends on the query alone (the symmetric query branch's weights `A_Q`
//! included) in [`QueryTokens`], so several classes can share one query encoding.

mod branch;

use self::branch::{LevelBranches, Pair, QueryBranch, SupportBranch};
use super::conv::{conv2d, Conv as Conv2d};
use super::masks::LevelMask;
use crate::config::{Branches, PaperConfig};
use crate::ops::resize_bilinear;
use crate::quant::QuantVarBuilder;
use candle_core::{Module, Result, Tensor};

/// The support side of one level, cached per support image: its tokens and level mask.
#[derive(Debug, Clone)]
pub struct SupportTokens {
    /// `S = G_proj(f_S)`: `(B, N, d)`.
    tokens: Tensor,
    mask: LevelMask,
}

/// The query side of one level, shared by every class segmented in the same frame.
#[derive(Debug, Clone)]
pub struct QueryTokens {
    /// `Q = G_proj(f_Q)`: `(B, N, d)`.
    tokens: Tensor,
    /// The symmetric query branch's weights `A_Q = softmax(Q_q Q_kᵀ/√d_h)`, which depend on the
    /// query alone: `(B, h, N, N)`; `None` when the level has no symmetric query branch.
    a_q: Option<Tensor>,
    h: usize,
    w: usize,
}

/// The cross-image encoder of one level: `G_proj`, the branches and their fusion.
#[derive(Debug, Clone)]
pub struct LevelEncoder {
    proj: Conv2d,
    branches: LevelBranches,
    fuse: Conv2d,
    heads: usize,
    scale: f64,
}

impl LevelEncoder {
    pub fn new(cfg: &PaperConfig, in_channels: usize, vb: QuantVarBuilder) -> Result<Self> {
        let d = cfg.d_model;
        let branches = match cfg.branches {
            Branches::Both => {
                LevelBranches::Both(QueryBranch::new(cfg, &vb)?, SupportBranch::new(cfg, &vb)?)
            }
            Branches::QueryOnly => LevelBranches::QueryOnly(QueryBranch::new(cfg, &vb)?),
            Branches::SupportOnly => LevelBranches::SupportOnly(SupportBranch::new(cfg, &vb)?),
        };
        let n_branches = match branches {
            LevelBranches::Both(..) => 2,
            _ => 1,
        };
        Ok(Self {
            proj: conv2d(in_channels, d, 1, Default::default(), vb.pp("proj"))?,
            branches,
            fuse: conv2d(n_branches * d, d, 1, Default::default(), vb.pp("fuse"))?,
            heads: cfg.heads,
            scale: 1.0 / ((d / cfg.heads) as f64).sqrt(),
        })
    }

    /// `(B, C_l, H, W)` → tokens `(B, N, d)`.
    fn tokens(&self, feat: &Tensor) -> Result<Tensor> {
        let x = self.proj.forward(feat)?; // (B, d, H, W)
        let (b, d, h, w) = x.dims4()?;
        x.reshape((b, d, h * w))?.transpose(1, 2)?.contiguous()
    }

    /// Support-only work: tokens and the level mask.
    pub fn encode_support(&self, feat: &Tensor, mask: &Tensor) -> Result<SupportTokens> {
        let (_, _, h, w) = feat.dims4()?;
        Ok(SupportTokens {
            tokens: self.tokens(feat)?,
            mask: LevelMask::new(mask, h, w)?,
        })
    }

    /// Query-only work: tokens and (symmetric query branch) its attention weights `A_Q`.
    pub fn encode_query(&self, feat: &Tensor) -> Result<QueryTokens> {
        let (_, _, h, w) = feat.dims4()?;
        let tokens = self.tokens(feat)?;
        let a_q = match &self.branches {
            LevelBranches::Both(qb, _) | LevelBranches::QueryOnly(qb) => {
                qb.query_weights(&tokens, self.heads, self.scale)?
            }
            LevelBranches::SupportOnly(_) => None,
        };
        Ok(QueryTokens { tokens, a_q, h, w })
    }

    /// `f_cross,l = Conv1×1(cat(f'_Q, f'_S))`: `(B, d, H, W)`. Support and query share the grid.
    pub fn forward(&self, query: &QueryTokens, support: &SupportTokens) -> Result<Tensor> {
        let mut one = self.forward_shots(query, &[support])?;
        Ok(one.remove(0))
    }

    /// [`LevelEncoder::forward`] for each of K support shots against one query; the query
    /// branch's product runs once for all shots.
    pub fn forward_shots(
        &self,
        query: &QueryTokens,
        supports: &[&SupportTokens],
    ) -> Result<Vec<Tensor>> {
        let pairs: Vec<Pair> = supports
            .iter()
            .map(|support| Pair {
                query,
                support,
                heads: self.heads,
                scale: self.scale,
            })
            .collect();
        let support_side = |sb: &SupportBranch| -> Result<Vec<Tensor>> {
            pairs.iter().map(|p| sb.forward(p)).collect()
        };
        let per_shot: Vec<Vec<Tensor>> = match &self.branches {
            LevelBranches::Both(qb, sb) => qb
                .forward_shots(&pairs)?
                .into_iter()
                .zip(support_side(sb)?)
                .map(|(q, s)| vec![q, s])
                .collect(),
            LevelBranches::QueryOnly(qb) => qb
                .forward_shots(&pairs)?
                .into_iter()
                .map(|q| vec![q])
                .collect(),
            LevelBranches::SupportOnly(sb) => {
                support_side(sb)?.into_iter().map(|s| vec![s]).collect()
            }
        };
        per_shot
            .iter()
            .map(|parts| self.fuse.forward(&Tensor::cat(parts, 1)?))
            .collect()
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
