//! Fake quantization (quantize → dequantize in f32) with a straight-through gradient.
//!
//! `fq(x) = clamp(round(x / s), -127, 127) · s`. The forward value is the int8 grid value; the
//! gradient is the straight-through estimator with clipping: 1 where `|x| ≤ 127 s` (inside the
//! clip range), 0 outside. It is built from tensor ops so candle's autograd carries it:
//! `y = q.detach() + (x - x.detach()) · inside`, whose value is `q` and whose derivative is `inside`.

use super::QMAX;
use candle_core::{DType, Result, Tensor};

/// Smallest scale used: an all-zero channel or tensor quantizes to 0 without dividing by zero.
pub const MIN_SCALE: f32 = 1e-12;

/// Fake-quantize with `scale` broadcastable to `x` (a scalar tensor, or `(O, 1, …)` per channel).
fn fake_quantize_with(x: &Tensor, scale: &Tensor) -> Result<Tensor> {
    let scale = scale.to_dtype(x.dtype())?.detach();
    let xd = x.detach();
    let q = xd
        .broadcast_div(&scale)?
        .round()?
        .clamp(-QMAX, QMAX)?
        .broadcast_mul(&scale)?;
    let limit = (scale * f64::from(QMAX))?;
    let inside = xd.abs()?.broadcast_le(&limit)?.to_dtype(x.dtype())?;
    q + (x - xd)?.mul(&inside)?
}

/// Per-tensor symmetric int8 fake quantization of `x` with `scale` (STE gradient, see module docs).
pub fn fake_quantize(x: &Tensor, scale: f32) -> Result<Tensor> {
    let s = Tensor::new(scale.max(MIN_SCALE), x.device())?.to_dtype(DType::F32)?;
    fake_quantize_with(x, &s)
}

/// Per-output-channel (dim 0) symmetric int8 fake quantization; `scales` has one entry per channel.
pub fn fake_quantize_per_channel(w: &Tensor, scales: &Tensor) -> Result<Tensor> {
    let o = w.dim(0)?;
    if scales.elem_count() != o {
        candle_core::bail!(
            "fake_quantize_per_channel: {} scales for {o} output channels",
            scales.elem_count()
        )
    }
    let mut shape = vec![1usize; w.rank()];
    shape[0] = o;
    let s = scales.detach().clamp(MIN_SCALE, f32::MAX)?.reshape(shape)?;
    fake_quantize_with(w, &s)
}

/// Per-channel fake quantization with scales taken from the weight itself (`max |w_c| / 127`),
/// as in quantization-aware training: the scales follow the weights, the gradient is STE.
pub fn fake_quantize_weight(w: &Tensor) -> Result<Tensor> {
    let scales = (w.detach().flatten_from(1)?.abs()?.max(1)? / f64::from(QMAX))?;
    fake_quantize_per_channel(w, &scales)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn round_trip_snaps_to_the_grid_and_clips() -> Result<()> {
        let x = Tensor::new(&[0.0f32, 0.26, -0.74, 12.6, -100.0, 13.0], &Device::Cpu)?;
        let y = fake_quantize(&x, 0.1)?.to_vec1::<f32>()?;
        let want = [0.0f32, 0.3, -0.7, 12.6, -12.7, 12.7];
        for (a, b) in y.iter().zip(want) {
            assert!((a - b).abs() < 1e-5, "{y:?}");
        }
        Ok(())
    }

    #[test]
    fn straight_through_gradient_is_one_inside_and_zero_outside() -> Result<()> {
        let v = Var::new(&[0.05f32, -1.0, 12.0, 12.8, -13.0, 300.0], &Device::Cpu)?;
        let y = fake_quantize(v.as_tensor(), 0.1)?;
        let grads = (y * 2.0)?.sum_all()?.backward()?;
        let g = grads
            .get(v.as_tensor())
            .expect("gradient")
            .to_vec1::<f32>()?;
        assert_eq!(g, vec![2.0, 2.0, 2.0, 0.0, 0.0, 0.0]);
        Ok(())
    }
}
