//! Support masks at a feature level, with the fallbacks of MCE_PAPER.md §5:
//! foreground where the bilinearly resized mask is ≥ 0.5; if no position qualifies (a tiny object),
//! where it is > 0; if still none, the mask is dropped for that level (every position counts).

use crate::ops::resize_bilinear;
use candle_core::{Result, Tensor};

/// A binary support mask at one feature level, one row per image of the batch.
#[derive(Debug, Clone)]
pub struct LevelMask {
    /// `(B, N)` f32, 1 = foreground token, 0 = background token.
    pub keep: Tensor,
    /// `(B, 1, 1, N)` additive attention mask on the key axis: 0 for foreground, −∞ for background.
    pub key_bias: Tensor,
    /// Per image: how many positions are foreground (after the fallbacks).
    pub counts: Vec<usize>,
    /// Per image: its foreground positions, `(n_fg,)` u32, ascending. Attention over masked keys
    /// may read only these: a −∞ key weighs exactly 0.
    pub keys: Vec<Tensor>,
}

/// How the binary mask of one image was obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MaskRule {
    /// Resized value ≥ 0.5.
    Threshold,
    /// No value reached 0.5: positions with resized value > 0.
    AnyOverlap,
    /// The mask vanished at this level: every position counts.
    Dropped,
}

/// Binarise one resized mask row following the fallbacks; returns the rule used.
pub fn binarize(values: &[f32]) -> (Vec<f32>, MaskRule) {
    let at = |t: &dyn Fn(f32) -> bool| -> Vec<f32> {
        values.iter().map(|&v| f32::from(u8::from(t(v)))).collect()
    };
    let strict = at(&|v| v >= 0.5);
    if strict.iter().any(|&v| v > 0.0) {
        return (strict, MaskRule::Threshold);
    }
    let loose = at(&|v| v > 0.0);
    if loose.iter().any(|&v| v > 0.0) {
        return (loose, MaskRule::AnyOverlap);
    }
    (vec![1.0; values.len()], MaskRule::Dropped)
}

impl LevelMask {
    /// Resize `mask (B, 1, S, S)` (values in [0, 1]) to `h × w` and binarise each image.
    pub fn new(mask: &Tensor, h: usize, w: usize) -> Result<Self> {
        let b = mask.dim(0)?;
        let resized = resize_bilinear(&mask.detach(), h, w)?.reshape((b, h * w))?;
        let rows = resized
            .to_dtype(candle_core::DType::F32)?
            .to_vec2::<f32>()?;
        let mut keep = Vec::with_capacity(b * h * w);
        let mut counts = Vec::with_capacity(b);
        for row in &rows {
            let (bin, _) = binarize(row);
            counts.push(bin.iter().filter(|&&v| v > 0.0).count());
            keep.extend(bin);
        }
        let bias: Vec<f32> = keep
            .iter()
            .map(|&k| if k > 0.0 { 0.0 } else { f32::NEG_INFINITY })
            .collect();
        let dev = mask.device();
        let dtype = mask.dtype();
        let keys = keep
            .chunks(h * w)
            .map(|row| {
                let idx: Vec<u32> = (0..row.len() as u32)
                    .filter(|&i| row[i as usize] > 0.0)
                    .collect();
                let n = idx.len();
                Tensor::from_vec(idx, n, dev)
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            keys,
            keep: Tensor::from_vec(keep, (b, h * w), dev)?.to_dtype(dtype)?,
            key_bias: Tensor::from_vec(bias, (b, 1, 1, h * w), dev)?.to_dtype(dtype)?,
            counts,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fallbacks_follow_the_spec() {
        assert_eq!(binarize(&[0.0, 0.6, 0.2]).1, MaskRule::Threshold);
        assert_eq!(binarize(&[0.0, 0.6, 0.2]).0, vec![0.0, 1.0, 0.0]);
        assert_eq!(binarize(&[0.0, 0.1, 0.2]).0, vec![0.0, 1.0, 1.0]);
        assert_eq!(binarize(&[0.0, 0.0]).0, vec![1.0, 1.0]);
        assert_eq!(binarize(&[0.0, 0.0]).1, MaskRule::Dropped);
    }

    #[test]
    fn each_image_lists_its_foreground_keys() -> Result<()> {
        let dev = candle_core::Device::Cpu;
        let m = Tensor::from_vec(vec![0f32, 1., 1., 0.], (1, 1, 2, 2), &dev)?;
        let lm = LevelMask::new(&m, 2, 2)?;
        assert_eq!(lm.keys[0].to_vec1::<u32>()?, vec![1, 2]);
        // Nothing qualifies: every position counts, so every position is a key.
        let empty = LevelMask::new(
            &Tensor::zeros((1, 1, 2, 2), candle_core::DType::F32, &dev)?,
            2,
            2,
        )?;
        assert_eq!(empty.keys[0].to_vec1::<u32>()?, vec![0, 1, 2, 3]);
        let batch = Tensor::cat(&[&m, &(1.0 - &m)?], 0)?;
        let keys = LevelMask::new(&batch, 2, 2)?.keys;
        assert_eq!(keys[1].to_vec1::<u32>()?, vec![0, 3]);
        Ok(())
    }
}
