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

/// The geometry of a shifted sum: output channels, kernel size, padding, dilation.
#[derive(Debug, Clone, Copy)]
struct Shifts {
    c_out: usize,
    kh: usize,
    kw: usize,
    padding: usize,
    dilation: usize,
}

/// One tap's window: output rows `[y0, y1)` and columns `[x0, x1)` read input at `+ (oy, ox)`.
struct Window {
    y0: usize,
    y1: usize,
    x0: usize,
    x1: usize,
    oy: isize,
    ox: isize,
}

impl Shifts {
    fn out_size(&self, h: usize, w: usize) -> Result<(usize, usize)> {
        let span = |k: usize| self.dilation * (k - 1);
        let p2 = 2 * self.padding;
        if h + p2 < span(self.kh) + 1 || w + p2 < span(self.kw) + 1 {
            candle_core::bail!("conv2d_shifted: kernel larger than the padded input");
        }
        Ok((h + p2 - span(self.kh), w + p2 - span(self.kw)))
    }

    /// The window of tap `(i, j)` for an input `h × w` and output `oh × ow`; `None` when it
    /// reads padding only.
    fn window(
        &self,
        (i, j): (usize, usize),
        (h, w): (usize, usize),
        (oh, ow): (usize, usize),
    ) -> Option<Window> {
        let oy = (i * self.dilation) as isize - self.padding as isize;
        let ox = (j * self.dilation) as isize - self.padding as isize;
        let (y0, y1) = valid_range(oy, h, oh);
        let (x0, x1) = valid_range(ox, w, ow);
        (y0 < y1 && x0 < x1).then_some(Window {
            y0,
            y1,
            x0,
            x1,
            oy,
            ox,
        })
    }

    fn taps(&self) -> impl Iterator<Item = (usize, usize)> + '_ {
        (0..self.kh).flat_map(move |i| (0..self.kw).map(move |j| (i, j)))
    }
}

/// `Y[y, x] = Σ_t Z_t[y + i·d − p, x + j·d − p]`, zero outside: `z (B, kh·kw·O, H, W)` → `(B, O, oh, ow)`.
/// On the CPU (f32) one pass over `z` ([`ShiftSum`]); elsewhere candle ops.
pub fn sum_shifted(
    z: &Tensor,
    (c_out, kh, kw): (usize, usize, usize),
    padding: usize,
    dilation: usize,
) -> Result<Tensor> {
    let shifts = Shifts {
        c_out,
        kh,
        kw,
        padding,
        dilation,
    };
    if z.device().is_cpu() && z.dtype() == candle_core::DType::F32 {
        return z.contiguous()?.apply_op1(ShiftSum(shifts));
    }
    sum_shifted_ops(z, shifts)
}

/// [`sum_shifted`] with candle ops: narrow each tap's window and pad it into place.
fn sum_shifted_ops(z: &Tensor, s: Shifts) -> Result<Tensor> {
    let (b, _, h, w) = z.dims4()?;
    let (oh, ow) = s.out_size(h, w)?;
    let z = z.reshape((b, s.kh * s.kw, s.c_out, h, w))?;
    let mut out: Option<Tensor> = None;
    for (i, j) in s.taps() {
        let Some(win) = s.window((i, j), (h, w), (oh, ow)) else {
            continue; // this tap only ever reads padding
        };
        let part = z
            .i((.., i * s.kw + j))?
            .narrow(2, (win.y0 as isize + win.oy) as usize, win.y1 - win.y0)?
            .narrow(3, (win.x0 as isize + win.ox) as usize, win.x1 - win.x0)?
            .pad_with_zeros(2, win.y0, oh - win.y1)?
            .pad_with_zeros(3, win.x0, ow - win.x1)?;
        out = Some(match out {
            None => part,
            Some(acc) => (acc + part)?,
        });
    }
    match out {
        Some(y) => Ok(y),
        None => Tensor::zeros((b, s.c_out, oh, ow), z.dtype(), z.device()),
    }
}

/// The CPU shifted sum: every tap's window added in place, one pass; its backward takes each
/// tap's window of the output gradient back to the tap's place.
struct ShiftSum(Shifts);

impl candle_core::CustomOp1 for ShiftSum {
    fn name(&self) -> &'static str {
        "mce-shift-sum"
    }

    fn cpu_fwd(
        &self,
        storage: &candle_core::CpuStorage,
        layout: &candle_core::Layout,
    ) -> Result<(candle_core::CpuStorage, candle_core::Shape)> {
        let candle_core::CpuStorage::F32(data) = storage else {
            candle_core::bail!("{}: expected f32", self.name())
        };
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("{}: expected a contiguous input", self.name())
        };
        let z = &data[start..end];
        let (b, _, h, w) = layout.shape().dims4()?;
        let s = self.0;
        let (oh, ow) = s.out_size(h, w)?;
        let mut out = vec![0f32; b * s.c_out * oh * ow];
        for (t, tap) in s.taps().enumerate() {
            let Some(win) = s.window(tap, (h, w), (oh, ow)) else {
                continue;
            };
            for bo in 0..b * s.c_out {
                let (bi, o) = (bo / s.c_out, bo % s.c_out);
                let src = &z[((bi * s.kh * s.kw + t) * s.c_out + o) * h * w..][..h * w];
                let dst = &mut out[bo * oh * ow..][..oh * ow];
                for y in win.y0..win.y1 {
                    let sy = (y as isize + win.oy) as usize;
                    let sx = (win.x0 as isize + win.ox) as usize;
                    let src_row = &src[sy * w + sx..][..win.x1 - win.x0];
                    let dst_row = &mut dst[y * ow + win.x0..y * ow + win.x1];
                    for (d, v) in dst_row.iter_mut().zip(src_row) {
                        *d += v;
                    }
                }
            }
        }
        let shape = candle_core::Shape::from((b, s.c_out, oh, ow));
        Ok((candle_core::CpuStorage::F32(out), shape))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let (b, _, h, w) = arg.dims4()?;
        let s = self.0;
        let (oh, ow) = s.out_size(h, w)?;
        let taps = s
            .taps()
            .map(|tap| match s.window(tap, (h, w), (oh, ow)) {
                None => Tensor::zeros((b, s.c_out, h, w), grad.dtype(), grad.device()),
                Some(win) => {
                    let (sy, sx) = (
                        (win.y0 as isize + win.oy) as usize,
                        (win.x0 as isize + win.ox) as usize,
                    );
                    let (ny, nx) = (win.y1 - win.y0, win.x1 - win.x0);
                    grad.narrow(2, win.y0, ny)?
                        .narrow(3, win.x0, nx)?
                        .pad_with_zeros(2, sy, h - sy - ny)?
                        .pad_with_zeros(3, sx, w - sx - nx)
                }
            })
            .collect::<Result<Vec<_>>>()?;
        Tensor::stack(&taps, 1)?
            .reshape((b, s.kh * s.kw * s.c_out, h, w))
            .map(Some)
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
    fn the_cpu_shifted_sum_matches_candle_ops() -> Result<()> {
        let dev = Device::Cpu;
        for &(b, o, h, w, k, p, d) in &[
            (2, 3, 7, 6, 3, 1, 1),
            (1, 2, 5, 5, 3, 9, 9),
            (1, 4, 8, 7, 5, 2, 1),
        ] {
            let shifts = Shifts {
                c_out: o,
                kh: k,
                kw: k,
                padding: p,
                dilation: d,
            };
            let z = Var::randn(0f32, 1., (b, k * k * o, h, w), &dev)?;
            let fast = sum_shifted(&z, (o, k, k), p, d)?;
            let ops = sum_shifted_ops(&z, shifts)?;
            assert!(max_rel(&fast, &ops)? < 1e-6);
            let r = Tensor::randn(0f32, 1., ops.dims(), &dev)?;
            let (g1, g2) = (
                (fast * &r)?.sum_all()?.backward()?,
                (ops * &r)?.sum_all()?.backward()?,
            );
            assert!(max_rel(g1.get(&z).unwrap(), g2.get(&z).unwrap())? < 1e-6);
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
