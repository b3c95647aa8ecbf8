//! The two attention branches of a cross-encoding level (Eqs. 5–9), each a complete type with its
//! `Linear` maps (Eq. 4) and its `MLP(LN(·))` output head.

use super::{QueryTokens, SupportTokens};
use crate::config::{Attention, PaperConfig};
use crate::model::masks::LevelMask;
use crate::ops::gelu::gelu_erf;
use crate::ops::{layer_norm, softmax};
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
        self.fc2.forward(&gelu_erf(&self.fc1.forward(xs)?)?)
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

/// `softmax(a bᵀ · scale + bias)`, all `(B, h, N, d_h)`; `bias` broadcasts on the key axis.
fn weights(a: &Tensor, b: &Tensor, scale: f64, bias: Option<&Tensor>) -> Result<Tensor> {
    let logits = (a * scale)?.matmul(&b.t()?)?; // (B, h, N, N); scaling a is N/d_h times cheaper
    let logits = match bias {
        Some(bias) => logits.broadcast_add(bias)?,
        None => logits,
    };
    softmax(&logits)
}

/// Attention weights alive at once in [`attend`]: 16 Mi f32 (64 MiB).
const CHUNK_WEIGHTS: usize = 1 << 24;

/// `softmax(a bᵀ · scale + bias) v` in row chunks of `a`, so that at most [`CHUNK_WEIGHTS`]
/// weights exist at a time (the paper preset's level maps are 8 × 3600 × 3600). `a (B, h, N, d_h)`,
/// `b (B, h, M, d_h)`, `v (B, h, M, e)` → `(B, h, N, e)`.
pub(super) fn attend(
    a: &Tensor,
    b: &Tensor,
    v: &Tensor,
    scale: f64,
    bias: Option<&Tensor>,
) -> Result<Tensor> {
    let (batch, heads, n, _) = a.dims4()?;
    let per_row = batch * heads * b.dim(2)?;
    let rows = (CHUNK_WEIGHTS / per_row.max(1)).max(1);
    if rows >= n {
        return weights(a, b, scale, bias)?.matmul(v);
    }
    let chunks = (0..n)
        .step_by(rows)
        .map(|r0| weights(&a.narrow(2, r0, rows.min(n - r0))?, b, scale, bias)?.matmul(v))
        .collect::<Result<Vec<_>>>()?;
    Tensor::cat(&chunks, 2)
}

/// Whether the query-only weights `A_Q` `(B, h, N, N)` are kept with the query (and shared by its
/// classes) rather than recomputed in chunks by each: up to [`CHUNK_WEIGHTS`] of them.
pub(super) fn keep_query_weights(tokens: &Tensor, heads: usize) -> Result<bool> {
    let (b, n, _) = tokens.dims3()?;
    Ok(b * heads * n * n <= CHUNK_WEIGHTS)
}

/// Support-only weights `A_S` kept with a support image, per level: up to 8 Mi (32 MiB). The edge
/// preset's level 2 (4 heads, 1,600 tokens) fits while the object covers up to 82 % of the image.
pub(super) const SUPPORT_WEIGHTS: usize = 1 << 23;

/// The three `Linear(d, d)` maps of one branch (Eq. 4), named `<side>_<q|k|v>` after the image
/// each is applied to, and the branch's `MLP(LN(·))`.
#[derive(Debug, Clone)]
pub(super) struct BranchMaps {
    q: Linear,
    k: Linear,
    v: Linear,
    head: BranchHead,
}

impl BranchMaps {
    /// `sides`: the image (`"query"` or `"support"`) each of q, k, v reads; `head`: the branch.
    fn new(cfg: &PaperConfig, sides: [&str; 3], head: &str, vb: &QuantVarBuilder) -> Result<Self> {
        let d = cfg.d_model;
        let map = |side: &str, n: &str| linear(d, d, vb.pp(format!("{side}_{n}")));
        Ok(Self {
            q: map(sides[0], "q")?,
            k: map(sides[1], "k")?,
            v: map(sides[2], "v")?,
            head: BranchHead::new(cfg, vb.clone(), head)?,
        })
    }
}

/// The query branch `R_Q` (Eqs. 7–8): every query position gathers support values.
#[derive(Debug, Clone)]
pub(super) enum QueryBranch {
    /// The paper: `R_Q = softmax(Q_q Q_kᵀ/√d_h) (S_v ⊙ M)`, weights from the query alone.
    Symmetric(BranchMaps),
    /// Ablation: `R_Q = softmax(Q_q S_kᵀ/√d_h + M_key) S_v`.
    Conventional(BranchMaps),
}

/// The support branch `R_S` (Eqs. 5–6): every support position gathers query values.
#[derive(Debug, Clone)]
pub(super) enum SupportBranch {
    /// The paper: `R_S = softmax(S_q S_kᵀ/√d_h + M_key) Q_v`, background keys get −∞.
    Symmetric(BranchMaps),
    /// Ablation: `R_S = softmax(S_q Q_kᵀ/√d_h) Q_v`.
    Conventional(BranchMaps),
}

/// Which branches a level runs; their outputs are fused in this order (query, then support).
#[derive(Debug, Clone)]
pub(super) enum LevelBranches {
    Both(QueryBranch, SupportBranch),
    QueryOnly(QueryBranch),
    SupportOnly(SupportBranch),
}

/// One branch's inputs at one level: both images' tokens split into heads on demand.
pub(super) struct Pair<'a> {
    pub(super) query: &'a QueryTokens,
    pub(super) support: &'a SupportTokens,
    pub(super) heads: usize,
    pub(super) scale: f64,
}

impl Pair<'_> {
    /// `tokens · W`, split into heads: `(B, h, N, d_h)`.
    fn map(&self, l: &Linear, tokens: &Tensor) -> Result<Tensor> {
        split_heads(&l.forward(tokens)?, self.heads)
    }
    fn q(&self, l: &Linear) -> Result<Tensor> {
        self.map(l, &self.query.tokens)
    }
    fn s(&self, l: &Linear) -> Result<Tensor> {
        self.map(l, &self.support.tokens)
    }
    fn key_bias(&self) -> &Tensor {
        &self.support.mask.key_bias
    }
}

impl QueryBranch {
    pub(super) fn new(cfg: &PaperConfig, vb: &QuantVarBuilder) -> Result<Self> {
        Ok(match cfg.attention {
            Attention::Symmetric => Self::Symmetric(BranchMaps::new(
                cfg,
                ["query", "query", "support"],
                "query",
                vb,
            )?),
            Attention::Conventional => Self::Conventional(BranchMaps::new(
                cfg,
                ["query", "support", "support"],
                "query",
                vb,
            )?),
        })
    }

    /// `A_Q` when it depends on the query alone (symmetric) and is small enough to keep.
    pub(super) fn query_weights(
        &self,
        tokens: &Tensor,
        heads: usize,
        scale: f64,
    ) -> Result<Option<Tensor>> {
        match self {
            Self::Symmetric(m) if keep_query_weights(tokens, heads)? => {
                let split = |l: &Linear| split_heads(&l.forward(tokens)?, heads);
                Ok(Some(weights(&split(&m.q)?, &split(&m.k)?, scale, None)?))
            }
            Self::Symmetric(_) | Self::Conventional(_) => Ok(None),
        }
    }

    /// `f'_Q = MLP(LN(R_Q))` for every shot: `(B, d, H, W)` each. The symmetric branch's
    /// weights depend on the query alone, so all shots' values go through them in one product.
    pub(super) fn forward_shots(&self, pairs: &[Pair]) -> Result<Vec<Tensor>> {
        let Some(first) = pairs.first() else {
            return Ok(vec![]);
        };
        let (h, w) = (first.query.h, first.query.w);
        match self {
            Self::Symmetric(m) => {
                // values: S_v with background tokens zeroed, (B, h, N, d_h) ⊙ (B, 1, N, 1), per
                // shot, side by side: (B, h, N, K·d_h)
                let values = pairs
                    .iter()
                    .map(|p| {
                        let keep = p.support.mask.keep.unsqueeze(1)?.unsqueeze(3)?;
                        p.s(&m.v)?.broadcast_mul(&keep)
                    })
                    .collect::<Result<Vec<_>>>()?;
                let d_h = values[0].dim(3)?;
                let values = Tensor::cat(&values, 3)?;
                let r_q = match &first.query.a_q {
                    Some(a_q) => a_q.matmul(&values)?,
                    None => attend(&first.q(&m.q)?, &first.q(&m.k)?, &values, first.scale, None)?,
                };
                (0..pairs.len())
                    .map(|k| m.head.forward(&r_q.narrow(3, k * d_h, d_h)?, h, w))
                    .collect()
            }
            Self::Conventional(m) => pairs
                .iter()
                .map(|p| {
                    let r_q = attend(
                        &p.q(&m.q)?,
                        &p.s(&m.k)?,
                        &p.s(&m.v)?,
                        p.scale,
                        Some(p.key_bias()),
                    )?;
                    m.head.forward(&r_q, h, w)
                })
                .collect(),
        }
    }
}

impl SupportBranch {
    pub(super) fn new(cfg: &PaperConfig, vb: &QuantVarBuilder) -> Result<Self> {
        Ok(match cfg.attention {
            Attention::Symmetric => Self::Symmetric(BranchMaps::new(
                cfg,
                ["support", "support", "query"],
                "support",
                vb,
            )?),
            Attention::Conventional => Self::Conventional(BranchMaps::new(
                cfg,
                ["support", "query", "query"],
                "support",
                vb,
            )?),
        })
    }

    /// `A_S` per support image over its foreground keys, when the branch is symmetric (the
    /// weights depend on the support alone) and they fit in [`SUPPORT_WEIGHTS`].
    pub(super) fn support_weights(
        &self,
        tokens: &Tensor,
        mask: &LevelMask,
        heads: usize,
        scale: f64,
    ) -> Result<Option<Vec<Tensor>>> {
        let Self::Symmetric(m) = self else {
            return Ok(None);
        };
        let n = tokens.dim(1)?;
        if mask.counts.iter().map(|c| heads * n * c).sum::<usize>() > SUPPORT_WEIGHTS {
            return Ok(None);
        }
        let split = |l: &Linear| split_heads(&l.forward(tokens)?, heads);
        let (s_q, s_k) = (split(&m.q)?, split(&m.k)?); // (B, h, N, d_h)
        let per_image = mask
            .keys
            .iter()
            .enumerate()
            .map(|(i, keys)| {
                let s_k = s_k.narrow(0, i, 1)?.index_select(keys, 2)?; // (1, h, n_fg, d_h)
                weights(&s_q.narrow(0, i, 1)?, &s_k, scale, None)
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Some(per_image))
    }

    /// `f'_S = MLP(LN(R_S))`: `(B, d, H, W)`.
    pub(super) fn forward(&self, p: &Pair) -> Result<Tensor> {
        let (m, r_s) = match self {
            Self::Symmetric(m) => (m, Self::symmetric(m, p)?),
            Self::Conventional(m) => (
                m,
                attend(&p.s(&m.q)?, &p.q(&m.k)?, &p.q(&m.v)?, p.scale, None)?,
            ),
        };
        m.head.forward(&r_s, p.query.h, p.query.w)
    }

    /// `R_S = softmax(S_q S_kᵀ/√d_h + M_key) Q_v`: `(B, h, N, d_h)`. Each support image attends to
    /// its own foreground keys only: the same result (background keys weigh exactly 0) without the
    /// background's share of the products, the softmax and their gradients.
    fn symmetric(m: &BranchMaps, p: &Pair) -> Result<Tensor> {
        let q_v = p.q(&m.v)?; // (B, h, N, d_h)
        if let Some(a_s) = &p.support.a_s {
            let per_image = a_s
                .iter()
                .zip(&p.support.mask.keys)
                .enumerate()
                .map(|(i, (a_s, keys))| a_s.matmul(&q_v.narrow(0, i, 1)?.index_select(keys, 2)?))
                .collect::<Result<Vec<_>>>()?;
            return Tensor::cat(&per_image, 0);
        }
        let (s_q, s_k) = (p.s(&m.q)?, p.s(&m.k)?);
        let per_image = p
            .support
            .mask
            .keys
            .iter()
            .enumerate()
            .map(|(i, keys)| {
                let image = |t: &Tensor| t.narrow(0, i, 1);
                let s_k = image(&s_k)?.index_select(keys, 2)?; // (1, h, n_fg, d_h)
                let q_v = image(&q_v)?.index_select(keys, 2)?;
                attend(&image(&s_q)?, &s_k, &q_v, p.scale, None)
            })
            .collect::<Result<Vec<_>>>()?;
        Tensor::cat(&per_image, 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn chunked_attention_equals_the_whole_map() -> Result<()> {
        let dev = Device::Cpu;
        // 1 × 1 × 4096 keys: 4096 rows per chunk, so 5000 query rows take two chunks.
        let a = Tensor::randn(0f32, 1., (1, 1, 5000, 4), &dev)?;
        let b = Tensor::randn(0f32, 1., (1, 1, 4096, 4), &dev)?;
        let v = Tensor::randn(0f32, 1., (1, 1, 4096, 3), &dev)?;
        let bias = Tensor::randn(0f32, 1., (1, 1, 1, 4096), &dev)?;
        for bias in [None, Some(&bias)] {
            let whole = weights(&a, &b, 0.5, bias)?.matmul(&v)?;
            let chunked = attend(&a, &b, &v, 0.5, bias)?;
            let d = (whole - chunked)?.abs()?.max_all()?.to_scalar::<f32>()?;
            assert!(d < 1e-6, "{d}");
        }
        // The edge preset's level-2 map (4 heads, 1,600 tokens) is kept; the paper's is not.
        let tokens = |n: usize| Tensor::zeros((1, n, 8), candle_core::DType::F32, &dev);
        assert!(keep_query_weights(&tokens(1600)?, 4)?);
        assert!(!keep_query_weights(&tokens(3600)?, 8)?);
        Ok(())
    }
}
