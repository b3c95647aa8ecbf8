//! The training loss (MCE_PAPER.md §9): pixel-wise 2-class cross-entropy, label 255 ignored.

use candle_core::{DType, Result, Tensor};

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
}
