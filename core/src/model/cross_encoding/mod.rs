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
    /// The symmetric support branch's weights, per image over its foreground keys,
    /// `A_S = softmax(S_q S_k[fg]ᵀ/√d_h)`: `(1, h, N, n_fg)` each. They depend on the support
    /// alone, so a registered class pays for them once, not per frame; `None` without that branch
    /// or over their budget (`branch::SUPPORT_WEIGHTS`; then each frame computes them in chunks).
    a_s: Option<Vec<Tensor>>,
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

    /// Support-only work: tokens, the level mask and (symmetric support branch) its weights `A_S`.
    pub fn encode_support(&self, feat: &Tensor, mask: &Tensor) -> Result<SupportTokens> {
        let (_, _, h, w) = feat.dims4()?;
        let tokens = self.tokens(feat)?;
        let mask = LevelMask::new(mask, h, w)?;
        let a_s = match &self.branches {
            LevelBranches::Both(_, sb) | LevelBranches::SupportOnly(sb) => {
                sb.support_weights(&tokens, &mask, self.heads, self.scale)?
            }
            LevelBranches::QueryOnly(_) => None,
        };
        Ok(SupportTokens { tokens, mask, a_s })
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

#[cfg(test)]
mod tests {
    use crate::{Mce, MceConfig};
    use candle_core::{DType, Device, Result, Tensor};
    use candle_nn::{VarBuilder, VarMap};

    /// The support weights `A_S` kept at registration give the frame the same `f_cross,l` as
    /// computing them per frame (in chunks), and are kept only within their budget.
    #[test]
    fn kept_support_weights_equal_the_per_frame_ones() -> Result<()> {
        let dev = Device::Cpu;
        let cfg = MceConfig {
            image_size: 64, // level-2 grid 8×8
            ..MceConfig::edge_lite0()
        };
        let m = Mce::new(
            &cfg,
            VarBuilder::from_varmap(&VarMap::new(), DType::F32, &dev),
        )?;
        let enc = &m.cross_encoding().unwrap().levels().next().unwrap().1;
        let (g, c) = (cfg.level_grid(2), 40);
        let fq = Tensor::randn(0f32, 1f32, (2, c, g, g), &dev)?;
        let fs = Tensor::randn(0f32, 1f32, (2, c, g, g), &dev)?;
        // Two support images with different foregrounds: a box and almost all of the image.
        let mut mask = vec![0f32; 2 * g * g];
        mask[g * 2 + 3..g * 2 + 6].fill(1.0);
        mask[g * g + 1..].fill(1.0);
        let mask = Tensor::from_vec(mask, (2, 1, g, g), &dev)?;

        let q = enc.encode_query(&fq)?;
        let kept = enc.encode_support(&fs, &mask)?;
        let shapes: Vec<_> = kept
            .a_s
            .as_ref()
            .unwrap()
            .iter()
            .map(|a| a.dims().to_vec())
            .collect();
        assert_eq!(
            shapes,
            vec![vec![1, 4, g * g, 3], vec![1, 4, g * g, g * g - 1]]
        );
        let per_frame = super::SupportTokens {
            a_s: None,
            ..kept.clone()
        };
        let d = (enc.forward(&q, &kept)? - enc.forward(&q, &per_frame)?)?
            .abs()?
            .max_all()?
            .to_scalar::<f32>()?;
        assert!(d < 1e-5, "{d}");

        // Over the budget (4 heads × 4,096 tokens × 4,096 keys > 8 Mi), nothing is kept.
        let big = Tensor::ones((1, 1, 64, 64), DType::F32, &dev)?;
        let wide = MceConfig {
            image_size: 512,
            ..cfg
        };
        let m = Mce::new(
            &wide,
            VarBuilder::from_varmap(&VarMap::new(), DType::F32, &dev),
        )?;
        let enc = &m.cross_encoding().unwrap().levels().next().unwrap().1;
        let fs = Tensor::zeros((1, c, 64, 64), DType::F32, &dev)?;
        assert!(enc.encode_support(&fs, &big)?.a_s.is_none());
        Ok(())
    }
}
