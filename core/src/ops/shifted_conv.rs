//! A stride-1 `k × k` convolution as one matrix product and `k²` shifted sums, for the CPU.
//!
//! candle 0.11 runs a general convolution as a tiled im2col whose gather writes the patch matrix
//! column by column (a cache miss per element): on the head's dilated 3×3 ASPP convs that gather
//! costs about as much as the arithmetic. A stride-1 convolution is instead a sum over its taps
//! `t = (i, j)` of a pointwise product read at a shifted position:
//!
//! ```text
//! Z = W_taps · X            W_taps: (k²·O, I), the weight with its taps moved to the front
//!                           X: (B, I, H·W)  →  Z: (B, k², O, H, W)   one GEMM, no im2col
//! Y[y, x] = Σ_t Z_t[y + i·d − p, x + j·d − p]    (terms outside the input are zero padding)
//! ```
//!
//! Every step is a candle op, so the result has candle's gradients and runs on any device; callers
//! use it on the CPU only (CUDA keeps cuDNN's convolution). Exact up to float summation order
//! (tested against candle's `conv2d`, values and gradients).

use candle_core::{IndexOp, Result, Tensor};

/// The output range `[lo, hi)` along one axis that tap offset `offset` (input = output + offset)
/// reads from an input of length `input`, for an output of length `output`.
fn valid_range(offset: isize, input: usize, output: usize) -> (usize, usize) {
    let lo = (-offset).max(0) as usize;
    let hi = (input as isize - offset).clamp(0, output as isize) as usize;
    (lo, hi.max(lo))
}

/// `conv2d(xs, weight)` with stride 1 and groups 1: `xs (B, I, H, W)`, `weight (O, I, kh, kw)` →
/// `(B, O, H + 2p − d(kh − 1), W + 2p − d(kw − 1))`.
pub fn conv2d_shifted(
    xs: &Tensor,
    weight: &Tensor,
    padding: usize,
    dilation: usize,
) -> Result<Tensor> {
    let (_, c_in, _, _) = xs.dims4()?;
    let (c_out, w_in, kh, kw) = weight.dims4()?;
    if w_in != c_in {
        candle_core::bail!("conv2d_shifted: input has {c_in} channels, weight expects {w_in}");
    }
    let z = tap_products(&tap_weights(weight)?, xs)?;
    sum_shifted(&z, (c_out, kh, kw), padding, dilation)
}

/// The weight `(O, I, kh, kw)` with its taps in front: `(kh·kw·O, I)`, row `t·O + o`.
pub fn tap_weights(weight: &Tensor) -> Result<Tensor> {
    let (c_out, c_in, kh, kw) = weight.dims4()?;
    weight
        .permute((2, 3, 0, 1))?
        .reshape((kh * kw * c_out, c_in))
}

/// `Z = W_taps · X`: `taps (T·O, I)` (or a column range of them) times `xs (B, I, H, W)` →
/// `(B, T·O, H, W)`. Linear in `xs`: the products of the parts of a concatenated input add up to
/// the product of the whole, and a `(B, I, 1, 1)` input (a vector tiled over the grid) costs one
/// matrix-vector product.
pub fn tap_products(taps: &Tensor, xs: &Tensor) -> Result<Tensor> {
    let (b, c_in, h, w) = xs.dims4()?;
    let rows = taps.dim(0)?;
    taps.contiguous()?
        .broadcast_left(b)?
        .matmul(&xs.reshape((b, c_in, h * w))?)?
        .reshape((b, rows, h, w))
}

/// `Y[y, x] = Σ_t Z_t[y + i·d − p, x + j·d − p]`, zero outside: `z (B, kh·kw·O, H, W)` → `(B, O, oh, ow)`.
pub fn sum_shifted(
    z: &Tensor,
    (c_out, kh, kw): (usize, usize, usize),
    padding: usize,
    dilation: usize,
) -> Result<Tensor> {
    let (b, _, h, w) = z.dims4()?;
    let span = |k: usize| dilation * (k - 1);
    if h + 2 * padding < span(kh) + 1 || w + 2 * padding < span(kw) + 1 {
        candle_core::bail!("conv2d_shifted: kernel larger than the padded input");
    }
    let (oh, ow) = (h + 2 * padding - span(kh), w + 2 * padding - span(kw));
    let z = z.reshape((b, kh * kw, c_out, h, w))?;
    let mut out: Option<Tensor> = None;
    for i in 0..kh {
        for j in 0..kw {
            let oy = (i * dilation) as isize - padding as isize;
            let ox = (j * dilation) as isize - padding as isize;
            let (y0, y1) = valid_range(oy, h, oh);
            let (x0, x1) = valid_range(ox, w, ow);
            if y0 == y1 || x0 == x1 {
                continue; // this tap only ever reads padding
            }
            let part = z
                .i((.., i * kw + j))?
                .narrow(2, (y0 as isize + oy) as usize, y1 - y0)?
                .narrow(3, (x0 as isize + ox) as usize, x1 - x0)?;
            let part = match (y0, y1, x0, x1) == (0, oh, 0, ow) {
                true => part,
                false => part
                    .pad_with_zeros(2, y0, oh - y1)?
                    .pad_with_zeros(3, x0, ow - x1)?,
            };
            out = Some(match out {
                None => part,
                Some(acc) => (acc + part)?,
            });
        }
    }
    match out {
        Some(y) => Ok(y),
        None => Tensor::zeros((b, c_out, oh, ow), z.dtype(), z.device()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn max_rel(a: &Tensor, b: &Tensor) -> Result<f32> {
        let d = (a - b)?.abs()?.max_all()?.to_scalar::<f32>()?;
        let m = b.abs()?.max_all()?.to_scalar::<f32>()?;
        Ok(d / m.max(1e-12))
    }

    #[test]
    fn matches_candle_conv2d_values_and_gradients() -> Result<()> {
        let dev = Device::Cpu;
        // (batch, in, out, h, w, k, padding, dilation): "same" dilated ASPP convs, valid convs,
        // a dilation larger than the image (only the centre tap reads data) and a rectangle.
        for &(b, i, o, h, w, k, p, d) in &[
            (2, 5, 4, 7, 6, 3, 1, 1),
            (1, 6, 3, 9, 9, 3, 3, 3),
            (2, 4, 5, 6, 8, 3, 0, 1),
            (1, 3, 2, 5, 5, 3, 9, 9),
            (1, 4, 4, 8, 7, 5, 2, 1),
        ] {
            let x = Var::randn(0f32, 1., (b, i, h, w), &dev)?;
            let wt = Var::randn(0f32, 1., (o, i, k, k), &dev)?;
            let ours = conv2d_shifted(&x, &wt, p, d)?;
            let theirs = x.conv2d(&wt, p, 1, d, 1)?;
            assert_eq!(ours.dims(), theirs.dims());
            let e = max_rel(&ours, &theirs)?;
            assert!(e < 1e-5, "values {:?}: {e}", (b, i, o, h, w, k, p, d));
            // Gradients of a fixed random projection of the output.
            let r = Tensor::randn(0f32, 1., theirs.dims(), &dev)?;
            let g_ours = (ours * &r)?.sum_all()?.backward()?;
            let g_theirs = (theirs * &r)?.sum_all()?.backward()?;
            for v in [&x, &wt] {
                let (a, c) = (g_ours.get(v).unwrap(), g_theirs.get(v).unwrap());
                let e = max_rel(a, c)?;
                assert!(e < 1e-4, "grads {:?}: {e}", (b, i, o, h, w, k, p, d));
            }
        }
        Ok(())
    }

    #[test]
    fn valid_ranges_by_hand() {
        // Output 5 wide from an input 5 wide, "same" padding 1: offset −1 reads outputs 1..5.
        assert_eq!(valid_range(-1, 5, 5), (1, 5));
        assert_eq!(valid_range(1, 5, 5), (0, 4));
        assert_eq!(valid_range(0, 5, 5), (0, 5));
        // An offset past the input: nothing.
        assert_eq!(valid_range(9, 5, 5), (0, 0));
        assert_eq!(valid_range(-9, 5, 5), (9, 9));
    }
}
