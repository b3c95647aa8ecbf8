//! Matching statistics of the joint map: more class-agnostic evidence for the decoder (not in the
//! paper; `MceConfig::matching_stats`, needs `matching_prior`).
//!
//! The joint prior `best fg − best bg` ([`super::matching`]) throws away how confident each side
//! is and how many support positions agree, and it knows nothing of the query's own structure.
//! For every query position `i` of the joint map this module adds five channels:
//!
//! ```text
//! fg_best_i = max_{j ∈ fg} cos(q_i, s_j)            bg_best_i = max_{j ∈ bg} cos(q_i, s_j)
//! fg_soft_i = τ·log mean_{j ∈ fg} exp(cos(q_i, s_j)/τ)   (a soft top-k: how many positions agree)
//! bg_soft_i = the same over bg
//! spread_i  = Σ_k A_ik · prior_k,  A = softmax_k(cos(q_i, q_k)/τ_A)   (the prior propagated over
//!             the query's look-alike positions: object parts that match the exemplar weakly but
//!             resemble parts that match well)
//! ```
//!
//! All of it is computed from frozen features, so it carries no gradient, and none of it says which
//! class the object is: the head stays class-agnostic. Positions of all K shots are pooled, as in
//! the prior.

use super::matching::{normalized_tokens, Matches, SupportMatching};
use crate::ops::resize_bilinear;
use candle_core::{Result, Tensor, D};

/// Channels added to the decoder input.
pub const CHANNELS: usize = 5;
/// Temperature of the soft means over support positions.
const SOFT_TAU: f64 = 0.1;
/// Temperature of the query self-affinity.
const AFFINITY_TAU: f64 = 0.1;

/// Row-stochastic self-affinity of a query's joint map `(B, C, h, w)`: `(B, hw, hw)`.
pub fn query_affinity(joint: &Tensor) -> Result<Tensor> {
    let q = normalized_tokens(joint)?; // (B, C, hw)
    let cos = q.transpose(1, 2)?.contiguous()?.matmul(&q)?; // (B, hw, hw)
    candle_nn::ops::softmax_last_dim(&(cos / AFFINITY_TAU)?)
}

/// `τ·log mean_j exp((cos_ij + bias_j)/τ)` over the positions where `bias` is 0, `(B, hw, 1)`,
/// clamped to [−1, 1] (a side without positions reads −1, as in the prior).
fn soft_mean(cos: &Tensor, bias: &Tensor, keep: &Tensor) -> Result<Tensor> {
    let x = cos.broadcast_add(bias)?; // (B, hw, K·N)
    let best = x.max_keepdim(D::Minus1)?;
    let sum = (x.broadcast_sub(&best)? / SOFT_TAU)?
        .exp()?
        .sum_keepdim(D::Minus1)?;
    let count = keep.sum_keepdim(D::Minus1)?.clamp(1.0, f64::MAX)?; // (B, 1, 1)
    let lme = (best + (sum.log()?.broadcast_sub(&count.log()?)? * SOFT_TAU)?)?;
    lme.clamp(-1.0, 1.0)
}

/// The five statistics followed by the joint prior, `(B, CHANNELS + 1, g, g)`, for the joint map
/// of a query (`query (B, C, h, w)`, its `affinity` from [`query_affinity`]) and K shots.
pub fn joint_evidence(
    query: &Tensor,
    affinity: &Tensor,
    shots: &[&SupportMatching],
    g: usize,
) -> Result<Tensor> {
    let (b, _, h, w) = query.dims4()?;
    let m = Matches::new(query, shots)?;
    let (fg_best, bg_best) = (m.fg_best()?, m.bg_best()?); // (B, hw, 1)
    let prior = (&fg_best - &bg_best)?;
    let spread = affinity.matmul(&prior)?;
    let channels = [
        fg_best,
        bg_best,
        soft_mean(&m.cos, &m.fg_bias, &m.fg_keep)?,
        soft_mean(&m.cos, &m.bg_bias, &m.bg_keep)?,
        spread,
        prior,
    ];
    let x = Tensor::cat(&channels, 2)?; // (B, hw, 6)
    let x = x.transpose(1, 2)?.reshape((b, CHANNELS + 1, h, w))?;
    resize_bilinear(&x, g, g)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// One 2-channel query position against a support with two fg and one bg position.
    #[test]
    fn statistics_match_a_hand_computed_case() -> Result<()> {
        let dev = Device::Cpu;
        // Support 1×3 tokens (1,0), (0.6,0.8), (0,1); mask: the first two fg.
        let s = Tensor::new(&[[[[1f32, 0.6, 0.]], [[0., 0.8, 1.]]]], &dev)?;
        let mask = Tensor::new(&[[[[1f32, 1., 1., 1., 0., 0.]; 2]; 1]; 1], &dev)?; // (1,1,2,6)
        let shot = SupportMatching::new(&s, &mask)?;
        // Query 1×2: tokens (1, 0) and (0, 2).
        let q = Tensor::new(&[[[[1f32, 0.]], [[0., 2.]]]], &dev)?;
        let a = query_affinity(&q)?;
        let m = Matches::new(&q, &[&shot])?;
        let v = |t: Tensor| t.flatten_all().and_then(|t| t.to_vec1::<f32>());
        let close = |got: Vec<f32>, want: [f64; 2]| {
            let ok = got
                .iter()
                .zip(want)
                .all(|(g, w)| (*g as f64 - w).abs() < 1e-4);
            assert!(ok, "{got:?} against {want:?}");
        };
        // Position 0 (1,0): cos = 1, 0.6, 0 → fg best 1, bg best 0.
        // Position 1 (0,1): cos = 0, 0.8, 1 → fg best 0.8, bg best 1.
        close(v(m.fg_best()?)?, [1.0, 0.8]);
        close(v(m.bg_best()?)?, [0.0, 1.0]);
        // Soft means over the two fg positions; the single bg position is its own mean.
        let lme = |a: f64, c: f64| 0.1 * ((a / 0.1).exp() / 2.0 + (c / 0.1).exp() / 2.0).ln();
        let soft_fg = v(soft_mean(&m.cos, &m.fg_bias, &m.fg_keep)?)?;
        close(soft_fg, [lme(1.0, 0.6), lme(0.0, 0.8)]);
        close(v(soft_mean(&m.cos, &m.bg_bias, &m.bg_keep)?)?, [0.0, 1.0]);
        // Self-affinity: cos(q0, q1) = 0, so A = [[e^10, 1], [1, e^10]] / (e^10 + 1).
        let e = 10f64.exp();
        let (p0, p1) = (1.0, -0.2);
        let spread0 = (e * p0 + p1) / (e + 1.0);
        let spread1 = (p0 + e * p1) / (e + 1.0);
        let x = joint_evidence(&q, &a, &[&shot], 2)?; // g = 2: the 1×2 row, repeated
        assert_eq!(x.dims(), &[1, 6, 2, 2]);
        let row = x.narrow(2, 0, 1)?;
        close(v(row.narrow(1, 0, 1)?)?, [1.0, 0.8]);
        close(v(row.narrow(1, 4, 1)?)?, [spread0, spread1]);
        close(v(row.narrow(1, 5, 1)?)?, [p0, p1]);
        Ok(())
    }
}
