//! Tensor operations the model needs that candle 0.11 either lacks or cannot differentiate.
//!
//! * [`resize_bilinear`]: bilinear resize with `align_corners = true`, written as two matrix products so
//!   it has a backward pass (`upsample_bilinear2d` has none in candle 0.11).
//! * [`layer_norm`]: LayerNorm from primitive ops (`candle_nn::LayerNorm` silently drops gradients on
//!   contiguous inputs).
//! * [`softmax`]: last-dim softmax via [`softmax::softmax_last_dim`], a fused, vectorised, multithreaded
//!   CPU kernel with a backward pass (candle's fused `softmax_last_dim` has none and is slow).
//! * [`gelu`]: GELU (erf form), a vectorised, multithreaded CPU kernel with a backward pass
//!   (candle's `gelu_erf` calls scalar libm `erff` per element).
//! * [`frozen`]: convolution + BatchNorm folded into one convolution, for the frozen backbones.
//! * [`epilogue`]: a frozen conv's bias, residual and activation in one in-place pass.
//! * [`depthwise`]: a fast depthwise convolution (candle runs grouped convs one group at a time).
//! * [`shifted_conv`]: a stride-1 convolution as one GEMM and shifted sums (candle's im2col gather is
//!   slow on CPU).

pub mod depthwise;
pub mod epilogue;
pub mod exp;
pub mod frozen;
pub mod gelu;
pub mod shifted_conv;
pub mod softmax;

use candle_core::{Device, Result, Tensor, D};
use rayon::prelude::*;

/// The `(out, in)` interpolation matrix of a 1-D linear resize with `align_corners = true`.
pub fn interpolation_matrix(out: usize, input: usize, device: &Device) -> Result<Tensor> {
    let mut m = vec![0f32; out * input];
    for o in 0..out {
        if input == 1 {
            m[o * input] = 1.0;
            continue;
        }
        // align_corners: output index o maps to o * (input - 1) / (out - 1).
        let src = if out == 1 {
            0.0
        } else {
            o as f64 * (input - 1) as f64 / (out - 1) as f64
        };
        let lo = (src.floor() as usize).min(input - 1);
        let hi = (lo + 1).min(input - 1);
        let frac = (src - lo as f64) as f32;
        m[o * input + lo] += 1.0 - frac;
        m[o * input + hi] += frac;
    }
    Tensor::from_vec(m, (out, input), device)
}

/// Bilinear resize of `(B, C, H, W)` to `(B, C, h, w)` with `align_corners = true`, differentiable.
pub fn resize_bilinear(xs: &Tensor, h: usize, w: usize) -> Result<Tensor> {
    let (_, _, in_h, in_w) = xs.dims4()?;
    if (in_h, in_w) == (h, w) {
        return Ok(xs.clone());
    }
    let dtype = xs.dtype();
    let dev = xs.device();
    let ry = interpolation_matrix(h, in_h, dev)?.to_dtype(dtype)?; // (h, H)
    let rx = interpolation_matrix(w, in_w, dev)?.to_dtype(dtype)?.t()?; // (W, w)
                                                                        // (B, C, H, W) x (W, w) -> (B, C, H, w);  (h, H) x (B, C, H, w) -> (B, C, h, w)
    let xs = xs.broadcast_matmul(&rx)?;
    ry.broadcast_matmul(&xs)
}

/// Added to every L2 norm before dividing by it, so zero vectors stay finite (zero).
pub const NORM_EPS: f64 = 1e-7;

/// Divide every position's channel vector (dim 1) of `(B, C, …)` by its L2 norm (+ [`NORM_EPS`]):
/// the one L2 normalisation of the model and the baselines.
pub fn l2_normalize_channels(x: &Tensor) -> Result<Tensor> {
    let norm = (x.sqr()?.sum_keepdim(1)?.sqrt()? + NORM_EPS)?;
    x.broadcast_div(&norm)
}

/// LayerNorm over the last dimension: `(x - mean) / sqrt(var + eps) * weight + bias`.
pub fn layer_norm(xs: &Tensor, weight: &Tensor, bias: &Tensor, eps: f64) -> Result<Tensor> {
    let mean = xs.mean_keepdim(D::Minus1)?;
    let centered = xs.broadcast_sub(&mean)?;
    let var = centered.sqr()?.mean_keepdim(D::Minus1)?;
    let normed = centered.broadcast_div(&(var + eps)?.sqrt()?)?;
    normed.broadcast_mul(weight)?.broadcast_add(bias)
}

/// Softmax over the last dimension, differentiable (see [`softmax::softmax_last_dim`]).
pub fn softmax(xs: &Tensor) -> Result<Tensor> {
    softmax::softmax_last_dim(xs)
}

/// `f(range, dst[range])` over `row`-aligned ranges of `dst` that split it between rayon's global
/// pool (the one candle's kernels use), each holding at least `min_per_thread` elements; one range
/// on the calling thread when `dst` is small. The element-wise kernels' one way of using threads.
pub(crate) fn par_rows(
    dst: &mut [f32],
    row: usize,
    min_per_thread: usize,
    f: impl Fn(std::ops::Range<usize>, &mut [f32]) + Sync,
) {
    let rows = dst.len() / row;
    let threads = rayon::current_num_threads()
        .min(rows)
        .min(dst.len() / min_per_thread)
        .max(1);
    if threads == 1 {
        f(0..dst.len(), dst);
        return;
    }
    let chunk = rows.div_ceil(threads) * row;
    dst.par_chunks_mut(chunk)
        .enumerate()
        .for_each(|(i, d)| f(i * chunk..i * chunk + d.len(), d));
}

/// How many threads the CPU kernels run on: rayon's global pool, where candle's matmuls and this
/// module's kernels run (`RAYON_NUM_THREADS`, otherwise one per core). For reports.
pub fn compute_threads() -> usize {
    rayon::current_num_threads()
}

/// SplitMix64: a tiny, well-mixed, reproducible 64-bit hash / generator step.
pub fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// `Dropout2d`: zero whole channels of `(B, C, H, W)` with probability `p`, scale the rest by
/// `1/(1-p)`. The channel mask is a pure function of `seed` (candle's CPU `rand` is not seedable).
pub fn dropout2d(xs: &Tensor, p: f32, seed: u64) -> Result<Tensor> {
    if p <= 0.0 {
        return Ok(xs.clone());
    }
    let (b, c, _, _) = xs.dims4()?;
    let scale = 1.0 / (1.0 - p);
    let keep: Vec<f32> = (0..(b * c) as u64)
        .map(|i| {
            let u = (splitmix64(seed ^ splitmix64(i)) >> 40) as f32 / (1u64 << 24) as f32;
            if u >= p {
                scale
            } else {
                0.0
            }
        })
        .collect();
    let keep = Tensor::from_vec(keep, (b, c, 1, 1), xs.device())?.to_dtype(xs.dtype())?;
    xs.broadcast_mul(&keep)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interpolation_matrix_align_corners_hand_case() -> Result<()> {
        // 2 -> 3 with align_corners: sources 0, 0.5, 1.
        let m = interpolation_matrix(3, 2, &Device::Cpu)?.to_vec2::<f32>()?;
        assert_eq!(m, vec![vec![1.0, 0.0], vec![0.5, 0.5], vec![0.0, 1.0]]);
        // 3 -> 2: sources 0 and 2 exactly.
        let m = interpolation_matrix(2, 3, &Device::Cpu)?.to_vec2::<f32>()?;
        assert_eq!(m, vec![vec![1.0, 0.0, 0.0], vec![0.0, 0.0, 1.0]]);
        Ok(())
    }

    #[test]
    fn resize_matches_candle_upsample_and_has_gradient() -> Result<()> {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1f32, (2, 3, 5, 7), &dev)?;
        let ours = resize_bilinear(&x, 11, 9)?;
        let theirs = x.upsample_bilinear2d(11, 9, true)?;
        let diff = (ours - theirs)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(diff < 1e-5, "max diff {diff}");

        let v = candle_core::Var::from_tensor(&x)?;
        let y = resize_bilinear(v.as_tensor(), 11, 9)?.sum_all()?;
        let g = y.backward()?;
        let gx = g.get(v.as_tensor()).expect("gradient for resize input");
        // Each input pixel's weights sum to (11*9)/(5*7) on average; all must be positive.
        assert!(gx.min_all()?.to_scalar::<f32>()? > 0.0);
        let total = gx.sum_all()?.to_scalar::<f32>()?;
        assert!((total - 2.0 * 3.0 * 99.0).abs() < 1e-2, "total {total}");
        Ok(())
    }

    #[test]
    fn dropout2d_is_reproducible_and_drops_whole_channels() -> Result<()> {
        let x = Tensor::ones((2, 64, 3, 3), candle_core::DType::F32, &Device::Cpu)?;
        let a = dropout2d(&x, 0.5, 7)?.flatten_from(2)?.to_vec3::<f32>()?;
        let b = dropout2d(&x, 0.5, 7)?.flatten_from(2)?.to_vec3::<f32>()?;
        let c = dropout2d(&x, 0.5, 8)?.flatten_from(2)?.to_vec3::<f32>()?;
        assert_eq!(a, b);
        assert_ne!(a, c);
        let mut dropped = 0;
        for ch in a.iter().flatten() {
            assert!(ch.iter().all(|&v| v == ch[0]) && (ch[0] == 0.0 || ch[0] == 2.0));
            dropped += usize::from(ch[0] == 0.0);
        }
        assert!(
            (40..=88).contains(&dropped),
            "{dropped} of 128 channels dropped"
        );
        Ok(())
    }

    #[test]
    fn layer_norm_matches_hand_computation_and_has_gradients() -> Result<()> {
        let dev = Device::Cpu;
        let x = Tensor::new(&[[1f32, 2.0, 3.0, 6.0]], &dev)?;
        let w = candle_core::Var::new(&[1f32, 2.0, 1.0, 1.0], &dev)?;
        let b = candle_core::Var::new(&[0f32, 0.0, 1.0, 0.0], &dev)?;
        let y = layer_norm(&x, w.as_tensor(), b.as_tensor(), 0.0)?;
        // mean 3, var (4+1+0+9)/4 = 3.5
        let s = 3.5f32.sqrt();
        let expect = [-2.0 / s, 2.0 * (-1.0 / s), 1.0, 3.0 / s];
        for (a, e) in y.flatten_all()?.to_vec1::<f32>()?.iter().zip(expect) {
            assert!((a - e).abs() < 1e-5, "{a} vs {e}");
        }
        let g = (y.sqr()?.sum_all()?).backward()?;
        assert!(g.get(w.as_tensor()).is_some() && g.get(b.as_tensor()).is_some());
        Ok(())
    }
}
