//! The nearest-neighbour matching prior: a training-free input to the decoder of the matching head
//! (not in the paper; [`super::matching_head`]).
//!
//! For every query position and backbone level, and for the joint map of all three levels
//! ([`matching_maps`]): the best cosine similarity to a support foreground position minus the best
//! cosine to a support background position, over the positions of *all* K shots at once.
//! Averaging per-shot maps (the paper's K-shot fusion) loses what joint matching keeps: a query part that resembles one shot's object is found even when the other shots
//! show the object from another side. On MSRC-v2 this rule alone is the strongest training-free
//! baseline (`mce-train baselines`); as a decoder input it gives the head that evidence directly.
//!
//! Backbone features are frozen, so the prior carries no gradient and costs one matmul per level.

use super::decoder::Priors;
use super::masks::LevelMask;
use crate::backbone::Features;
use crate::ops::{l2_normalize_channels, resize_bilinear};
use candle_core::{Result, Tensor, D};

/// Added to the cosine of positions of the other kind, so they never win the max (cosines ≥ −1).
const EXCLUDE: f64 = 4.0;

/// Prior channels: levels 2, 3, 4 and the joint map.
pub const PRIOR_CHANNELS: usize = 4;

/// The maps the prior matches on, detached: levels 2, 3, 4 as they are, then the **joint** map —
/// levels 3 and 4 resized bilinearly to the level-2 grid, each L2-normalised per position,
/// concatenated and divided by √3. A cosine on the joint map is the mean of the three levels'
/// cosines at one position pair, so its best match must agree at every level: this is exactly the
/// `nearest` baseline of `mce-train baselines` (levels 2+3+4).
pub fn matching_maps(feats: &Features) -> Result<[Tensor; PRIOR_CHANNELS]> {
    let levels = feats.levels();
    let (_, _, h, w) = levels[0].dims4()?;
    let unit = |t: &Tensor| l2_normalize_channels(&resize_bilinear(&t.detach(), h, w)?);
    let joint = (Tensor::cat(
        &levels.map(unit).into_iter().collect::<Result<Vec<_>>>()?,
        1,
    )? / 3f64.sqrt())?;
    let [l2, l3, l4] = levels.map(|t| t.detach());
    Ok([l2, l3, l4, joint])
}

/// L2-normalise over channels and flatten: `(B, C, h, w)` → `(B, C, h·w)`.
pub fn normalized_tokens(feats: &Tensor) -> Result<Tensor> {
    let (b, c, h, w) = feats.dims4()?;
    l2_normalize_channels(&feats.detach().reshape((b, c, h * w))?)
}

/// One shot's side of the prior at one level: normalised support tokens and their fg/bg masks.
#[derive(Debug, Clone)]
pub struct SupportMatching {
    /// `(B, C, N)` unit-norm support features.
    tokens: Tensor,
    /// `(B, 1, N)`: 0 on foreground positions, −EXCLUDE on background ones.
    fg_bias: Tensor,
    /// `(B, 1, N)`: 0 on background positions, −EXCLUDE on foreground ones.
    bg_bias: Tensor,
}

impl SupportMatching {
    /// `feats (B, C, h, w)` of one level; `mask (B, 1, S, S)` with 1 = foreground.
    pub fn new(feats: &Tensor, mask: &Tensor) -> Result<Self> {
        let (b, _, h, w) = feats.dims4()?;
        let keep = LevelMask::new(mask, h, w)?.keep.reshape((b, 1, h * w))?; // (B, 1, N)
        Ok(Self {
            tokens: normalized_tokens(feats)?,
            fg_bias: ((keep.clone() - 1.0)? * EXCLUDE)?,
            bg_bias: (keep * -EXCLUDE)?,
        })
    }
}

/// One shot's side of the priors at levels 2, 3, 4 and the joint map ([`matching_maps`]).
pub fn support_matching(
    feats: &Features,
    mask: &Tensor,
) -> Result<[SupportMatching; PRIOR_CHANNELS]> {
    let [m2, m3, m4, joint] = matching_maps(feats)?;
    let shot = |m: &Tensor| SupportMatching::new(m, mask);
    Ok([shot(&m2)?, shot(&m3)?, shot(&m4)?, shot(&joint)?])
}

/// The priors of a query (its [`matching_maps`]) against K shots, matched over all shots at once,
/// on the `g × g` grid.
pub fn priors(
    query: &[Tensor; PRIOR_CHANNELS],
    shots: &[&[SupportMatching; PRIOR_CHANNELS]],
    g: usize,
) -> Result<Priors> {
    let prior = |l: usize| {
        let level: Vec<&SupportMatching> = shots.iter().map(|s| &s[l]).collect();
        level_prior(&query[l], &level, g)
    };
    Ok(Priors {
        levels: Tensor::cat(&[prior(0)?, prior(1)?, prior(2)?], 1)?,
        joint: prior(3)?,
    })
}

/// The prior at one level for a query and K shots, resized to the `g × g` grid: `(B, 1, g, g)`,
/// values in [−2, 2].
pub fn level_prior(query: &Tensor, shots: &[&SupportMatching], g: usize) -> Result<Tensor> {
    let (b, c, h, w) = query.dims4()?;
    let q = normalized_tokens(query)?.transpose(1, 2)?.contiguous()?; // (B, hw, C)
    let cat = |f: &dyn Fn(&SupportMatching) -> Tensor| {
        Tensor::cat(&shots.iter().map(|s| f(s)).collect::<Vec<_>>(), 2)
    };
    let s = cat(&|s| s.tokens.clone())?; // (B, C, K·N)
    debug_assert_eq!(s.dim(1)?, c);
    let cos = q.matmul(&s.contiguous()?)?; // (B, hw, K·N)
    let best = |bias: &Tensor| cos.broadcast_add(bias)?.max_keepdim(D::Minus1);
    let fg = best(&cat(&|s| s.fg_bias.clone())?)?; // (B, hw, 1)
    let bg = best(&cat(&|s| s.bg_bias.clone())?)?;
    // A level without background (or foreground) positions would leave −EXCLUDE in the max.
    let prior = (fg.clamp(-1.0, 1.0)? - bg.clamp(-1.0, 1.0)?)?;
    resize_bilinear(&prior.reshape((b, 1, h, w))?, g, g)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// Hand-made case: 2 channels, a 1×2 support with one fg and one bg position.
    #[test]
    fn prior_is_best_fg_minus_best_bg_over_all_shots() -> Result<()> {
        let dev = Device::Cpu;
        // Support A: fg token (1, 0), bg token (0, 1). Support B: fg token (0.6, 0.8), bg (−1, 0).
        let sa = Tensor::new(&[[[[1f32, 0.]], [[0., 1.]]]], &dev)?; // (1, 2, 1, 2)
        let sb = Tensor::new(&[[[[0.6f32, -1.]], [[0.8, 0.]]]], &dev)?;
        let mask = Tensor::new(&[[[[1f32, 1., 0., 0.]; 2]; 1]; 1], &dev)?; // (1,1,2,4): left half fg
        let (a, bm) = (
            SupportMatching::new(&sa, &mask)?,
            SupportMatching::new(&sb, &mask)?,
        );
        // Query tokens: (0, 2) → fg best max(0, 0.8) = 0.8, bg best max(1, 0) = 1 → −0.2.
        //               (3, 0) → fg best max(1, 0.6) = 1,   bg best max(0, −1) = 0 → 1.
        let q = Tensor::new(&[[[[0f32, 3.]], [[2., 0.]]]], &dev)?;
        let p = level_prior(&q, &[&a, &bm], 1)?; // 1×1 grid: bilinear average of the two.
        let two = level_prior(&q, &[&a, &bm], 2)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        assert!(
            (two[0] + 0.2).abs() < 1e-5 && (two[1] - 1.0).abs() < 1e-5,
            "{two:?}"
        );
        let one = p.flatten_all()?.to_vec1::<f32>()?;
        assert_eq!(one.len(), 1);
        // Shot A alone: query (0, 2) → fg 0, bg 1 → −1.
        let alone = level_prior(&q, &[&a], 2)?.flatten_all()?.to_vec1::<f32>()?;
        assert!((alone[0] + 1.0).abs() < 1e-5, "{alone:?}");
        Ok(())
    }
}
