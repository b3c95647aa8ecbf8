//! The training loss (MCE_PAPER.md §9): pixel-wise 2-class cross-entropy, label 255 ignored;
//! optionally plus a per-episode soft Dice term (not in the paper), which, like the per-class IoU
//! the field scores, weighs a small object as much as a large one.

use candle_core::{DType, Result, Tensor};
use serde::{Deserialize, Serialize};

/// Which loss a run minimises.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LossKind {
    /// Pixel-wise cross-entropy over the batch (the paper).
    #[default]
    CrossEntropy,
    /// Cross-entropy plus the mean over episodes of the soft Dice loss of the foreground.
    CrossEntropyDice,
}

impl LossKind {
    /// The loss of `logits (B, 2, H, W)` against `labels (B, H, W)` (255 ignored).
    pub fn loss(self, logits: &Tensor, labels: &Tensor) -> Result<Tensor> {
        let ce = cross_entropy_ignore(logits, labels)?;
        match self {
            LossKind::CrossEntropy => Ok(ce),
            LossKind::CrossEntropyDice => ce + soft_dice_ignore(logits, labels)?,
        }
    }
}

/// Mean over the batch of `1 − (2·Σ p·y + 1) / (Σ p + Σ y + 1)` per episode, with `p` the softmax
/// foreground probability and sums over the non-ignored pixels. Differentiable in `logits`.
pub fn soft_dice_ignore(logits: &Tensor, labels: &Tensor) -> Result<Tensor> {
    let labels = labels.to_dtype(DType::U32)?;
    let dtype = logits.dtype();
    let fg = labels.eq(1u32)?.to_dtype(dtype)?; // (B, H, W)
    let valid = (labels.eq(0u32)?.to_dtype(dtype)? + &fg)?;
    let p = candle_nn::ops::log_softmax(logits, 1)?
        .narrow(1, 1, 1)?
        .squeeze(1)?
        .exp()?
        .mul(&valid)?; // (B, H, W)
    let sum = |t: &Tensor| t.flatten_from(1)?.sum(1); // (B,)
    let inter = sum(&p.mul(&fg)?)?;
    let dice = ((inter * 2.0)? + 1.0)?.div(&((sum(&p)? + sum(&fg)?)? + 1.0)?)?;
    dice.neg()?.affine(1.0, 1.0)?.mean_all()
}

/// Label value that contributes nothing to the loss or the metrics.
pub const IGNORE_LABEL: u8 = 255;

/// Mean cross-entropy of `logits (B, 2, H, W)` against `labels (B, H, W)` (u8 or u32: 0 = background,
/// 1 = foreground, 255 = ignore) over the non-ignored pixels. Differentiable in `logits`.
pub fn cross_entropy_ignore(logits: &Tensor, labels: &Tensor) -> Result<Tensor> {
    let labels = labels.to_dtype(DType::U32)?;
    let dtype = logits.dtype();
    let fg = labels.eq(1u32)?.to_dtype(dtype)?; // (B, H, W)
    let bg = labels.eq(0u32)?.to_dtype(dtype)?;
    let lsm = candle_nn::ops::log_softmax(logits, 1)?; // (B, 2, H, W)
    let picked = (lsm.narrow(1, 0, 1)?.squeeze(1)?.mul(&bg)?
        + lsm.narrow(1, 1, 1)?.squeeze(1)?.mul(&fg)?)?;
    let valid = (fg + bg)?.sum_all()?;
    let valid = valid.maximum(&Tensor::ones((), dtype, logits.device())?)?;
    picked.sum_all()?.neg()?.div(&valid)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn hand_computed_cross_entropy_ignores_255() -> Result<()> {
        let dev = Device::Cpu;
        // 3 pixels: logits (0, ln 3) -> p_fg = 0.75; label fg, bg, ignore
        let l3 = 3f32.ln();
        let logits = Tensor::new(&[[[[0f32, 0.0, 5.0]], [[l3, l3, -5.0]]]], &dev)?; // (1,2,1,3)
        let labels = Tensor::new(&[[[1u8, 0, 255]]], &dev)?;
        let loss = cross_entropy_ignore(&logits, &labels)?.to_scalar::<f32>()?;
        let expect = (-(0.75f32.ln()) - 0.25f32.ln()) / 2.0;
        assert!((loss - expect).abs() < 1e-5, "{loss} vs {expect}");
        Ok(())
    }

    #[test]
    fn hand_computed_soft_dice_per_episode() -> Result<()> {
        let dev = Device::Cpu;
        let l3 = 3f32.ln();
        // Episode 1: p_fg = 0.75, 0.75, (ignored); labels fg, bg, 255:
        //   dice = (2·0.75 + 1) / (1.5 + 1 + 1) = 2.5 / 3.5.
        // Episode 2: p_fg = 0.5 everywhere, labels bg, bg, bg: dice = 1 / (1.5 + 0 + 1) = 0.4.
        let logits = Tensor::new(
            &[
                [[[0f32, 0.0, 5.0]], [[l3, l3, -5.0]]],
                [[[0f32, 0.0, 0.0]], [[0.0, 0.0, 0.0]]],
            ],
            &dev,
        )?; // (2, 2, 1, 3)
        let labels = Tensor::new(&[[[1u8, 0, 255]], [[0, 0, 0]]], &dev)?;
        let loss = soft_dice_ignore(&logits, &labels)?.to_scalar::<f32>()?;
        let expect = ((1.0 - 2.5 / 3.5) + (1.0 - 0.4)) / 2.0;
        assert!((loss - expect).abs() < 1e-5, "{loss} vs {expect}");
        let both = LossKind::CrossEntropyDice
            .loss(&logits, &labels)?
            .to_scalar::<f32>()?;
        let ce = cross_entropy_ignore(&logits, &labels)?.to_scalar::<f32>()?;
        assert!((both - ce - expect).abs() < 1e-5);
        // It has a gradient in the logits.
        let v = candle_core::Var::from_tensor(&logits)?;
        let g = soft_dice_ignore(v.as_tensor(), &labels)?.backward()?;
        let grad = g.get(v.as_tensor()).expect("gradient");
        assert!(grad.abs()?.sum_all()?.to_scalar::<f32>()? > 0.0);
        Ok(())
    }
}
