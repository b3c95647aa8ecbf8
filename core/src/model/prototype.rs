//! The prior branch of MCE: the masked-average prototype V_s and the similarity map A_sim (Eq. 10).

use super::masks::LevelMask;
use crate::config::SimilarityReduce;
use crate::ops::l2_normalize_channels;
use candle_core::{Result, Tensor, D};

const MAP_EPS: f64 = 5e-4;
/// Added to `max − min` in A_sim's min-max normalisation (MCE_PAPER.md §4).
const MINMAX_EPS: f64 = 1e-7;

/// Masked average pooling: `V_s = Σ f_S·M / (Σ M + 5e-4)`.
/// `feat (B, C, H, W)`, `mask (B, 1, H, W)` (already resized) → `(B, C, 1, 1)`.
pub fn masked_average_pool(feat: &Tensor, mask: &Tensor) -> Result<Tensor> {
    let num = feat.broadcast_mul(mask)?.sum_keepdim(3)?.sum_keepdim(2)?; // (B, C, 1, 1)
    let area = (mask.sum_keepdim(3)?.sum_keepdim(2)? + MAP_EPS)?; // (B, 1, 1, 1)
    num.broadcast_div(&area)
}

/// What the similarity map needs from one support image, computed once per support.
#[derive(Debug, Clone)]
pub enum SupportSimilarity {
    /// Mean of the normalised foreground support vectors: `(B, C)`.
    Mean(Tensor),
    /// Normalised support vectors `(B, C, N)` and the foreground bias `(B, 1, N)` (0 / −∞).
    Max { support: Tensor, bias: Tensor },
}

impl SupportSimilarity {
    /// `level4 (B, C, h, w)` of the support and its level mask at `h × w`.
    pub fn new(level4: &Tensor, mask: &LevelMask, reduce: SimilarityReduce) -> Result<Self> {
        let (b, c, h, w) = level4.dims4()?;
        let s = l2_normalize_channels(&level4.reshape((b, c, h * w))?)?; // (B, C, N)
        match reduce {
            SimilarityReduce::Mean => {
                // Σ_fg ŝ / |fg|: (B, C, N)·(B, N, 1) → (B, C, 1)
                let keep = mask.keep.unsqueeze(2)?;
                let sum = s.matmul(&keep)?.squeeze(2)?;
                let counts: Vec<f32> = mask.counts.iter().map(|&n| n.max(1) as f32).collect();
                let counts = Tensor::from_vec(counts, (b, 1), s.device())?.to_dtype(s.dtype())?;
                Ok(Self::Mean(sum.broadcast_div(&counts)?))
            }
            SimilarityReduce::Max => Ok(Self::Max {
                support: s,
                bias: mask.key_bias.reshape((b, 1, h * w))?,
            }),
        }
    }

    /// A_sim for a query `level4 (B, C, h, w)`: `(B, 1, h, w)`, min-max normalised per image.
    pub fn similarity(&self, query_level4: &Tensor) -> Result<Tensor> {
        let (b, c, h, w) = query_level4.dims4()?;
        let q = l2_normalize_channels(&query_level4.reshape((b, c, h * w))?)?; // (B, C, N)
        let sim = match self {
            // (B, 1, C) x (B, C, N) -> (B, 1, N)
            Self::Mean(mean) => mean.unsqueeze(1)?.matmul(&q)?,
            // (B, N, C) x (B, C, Ns) -> (B, N, Ns), max over support foreground
            Self::Max { support, bias } => q
                .transpose(1, 2)?
                .matmul(support)?
                .broadcast_add(bias)?
                .max_keepdim(D::Minus1)?
                .transpose(1, 2)?,
        };
        let min = sim.min_keepdim(D::Minus1)?;
        let max = sim.max_keepdim(D::Minus1)?;
        let sim = sim
            .broadcast_sub(&min)?
            .broadcast_div(&((max - &min)? + MINMAX_EPS)?)?;
        sim.reshape((b, 1, h, w))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn map_is_the_masked_mean() -> Result<()> {
        let dev = Device::Cpu;
        // one channel, 2x2: values 1,2,3,4; mask on 2 and 4
        let f = Tensor::new(&[[[[1f32, 2.0], [3.0, 4.0]]]], &dev)?;
        let m = Tensor::new(&[[[[0f32, 1.0], [0.0, 1.0]]]], &dev)?;
        let v = masked_average_pool(&f, &m)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        assert!((v[0] - 6.0 / 2.0005).abs() < 1e-5);
        Ok(())
    }

    #[test]
    fn mean_similarity_equals_mean_of_cosines() -> Result<()> {
        let dev = Device::Cpu;
        let s = Tensor::new(&[[[[1f32, 0.0]], [[0.0, 1.0]]]], &dev)?; // (1, 2ch, 1, 2): vectors (1,0), (0,1)
        let q = Tensor::new(&[[[[1f32, 1.0, 0.0]], [[0.0, 1.0, 3.0]]]], &dev)?; // (1,0),(1,1),(0,3)
        let mask = LevelMask::new(
            &Tensor::ones((1, 1, 1, 2), candle_core::DType::F32, &dev)?,
            1,
            2,
        )?;
        let sim = SupportSimilarity::new(&s, &mask, SimilarityReduce::Mean)?;
        let a = sim.similarity(&q)?.flatten_all()?.to_vec1::<f32>()?;
        // raw mean cosines: 0.5, 0.7071, 0.5 -> min-max: 0, 1, 0
        assert!(
            a[0].abs() < 1e-4 && (a[1] - 1.0).abs() < 1e-4 && a[2].abs() < 1e-4,
            "{a:?}"
        );
        Ok(())
    }
}
