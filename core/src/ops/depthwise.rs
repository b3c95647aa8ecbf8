//! Fast depthwise 2-D convolution for the frozen backbones.
//!
//! candle 0.11 runs a grouped convolution one group at a time (`chunk` + one `conv2d` per group +
//! `cat`), which for a depthwise conv means `C` tiny im2col + matmul calls: about 0.3 GFLOP/s here. This
//! module computes it directly as a candle [`CustomOp2`] on CPU/f32 (10-60x faster):
//!
//! * every `(batch, channel)` plane is independent; planes are split into contiguous chunks, one per
//!   worker of rayon's global pool (the pool candle's own kernels run on, so `RAYON_NUM_THREADS`
//!   applies and no second set of threads competes with rayon's spinning workers);
//! * each plane is first copied into a zero-padded scratch plane whose rows are stored *phase-split*
//!   by the stride (for stride `s`, padded column `x` goes to phase `x % s`, slot `x / s`), so every
//!   kernel tap of every output row reads one contiguous slice: no border branches, no gathers;
//! * the inner loop is `out_row += w_tap * in_slice`, which the compiler vectorises;
//! * padding may be asymmetric ([`depthwise_conv2d_padded`]), which TF "SAME" needs for stride 2 on
//!   even sizes, without a separate (slow) `pad_with_zeros` copy of the input.
//!
//! **Forward only.** The result carries no backward op: gradients do not flow through the fast path
//! (the backbones that use it are frozen). When either input tracks gradients, or for any other dtype
//! or device, the functions fall back to candle's differentiable `conv2d(groups = C)`.

use candle_core::{bail, CpuStorage, CustomOp2, DType, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// Depthwise 2-D convolution: `xs (B, C, H, W)`, `weight (C, 1, kh, kw)`, symmetric zero `padding`.
///
/// Returns `(B, C, Ho, Wo)` with `Ho = (H + 2 padding - dilation (kh - 1) - 1) / stride + 1` (same for
/// `Wo`), exactly what `xs.conv2d(weight, padding, stride, dilation, C)` gives.
///
/// The fast path (CPU, f32, neither input tracking gradients) has **no backward pass**; it is meant
/// for frozen weights. Other cases fall back to candle's grouped `conv2d`, which is differentiable
/// but slow.
pub fn depthwise_conv2d(
    xs: &Tensor,
    weight: &Tensor,
    stride: usize,
    padding: usize,
    dilation: usize,
) -> Result<Tensor> {
    depthwise_conv2d_padded(xs, weight, stride, [padding; 4], dilation)
}

/// [`depthwise_conv2d`] with per-side zero padding `[top, bottom, left, right]`: the same as
/// `pad_with_zeros` on dims 2 and 3 followed by a padding-0 depthwise conv, without the copy.
/// Forward only on the fast path, like [`depthwise_conv2d`].
pub fn depthwise_conv2d_padded(
    xs: &Tensor,
    weight: &Tensor,
    stride: usize,
    padding: [usize; 4],
    dilation: usize,
) -> Result<Tensor> {
    let (_, c, _, _) = xs.dims4()?;
    let (cw, per_group, _, _) = weight.dims4()?;
    let fast = xs.dtype() == DType::F32
        && weight.dtype() == DType::F32
        && xs.device().is_cpu()
        && weight.device().is_cpu()
        && !xs.track_op()
        && !weight.track_op()
        && per_group == 1
        && cw == c;
    let [top, bottom, left, right] = padding;
    if !fast {
        if top == bottom && top == left && top == right {
            return xs.conv2d(weight, top, stride, dilation, cw);
        }
        let xs = xs
            .pad_with_zeros(2, top, bottom)?
            .pad_with_zeros(3, left, right)?;
        return xs.conv2d(weight, 0, stride, dilation, cw);
    }
    if stride == 0 || dilation == 0 {
        bail!("depthwise_conv2d: stride ({stride}) and dilation ({dilation}) must be >= 1")
    }
    let op = DepthwiseConv2d {
        stride,
        padding,
        dilation,
    };
    xs.contiguous()?
        .apply_op2_no_bwd(&weight.contiguous()?, &op)
}

/// The custom op: geometry only, the tensors come from candle.
#[derive(Debug, Clone, Copy)]
struct DepthwiseConv2d {
    stride: usize,
    /// `[top, bottom, left, right]`.
    padding: [usize; 4],
    dilation: usize,
}

/// Per-plane geometry derived from the op and the input shapes.
#[derive(Debug, Clone, Copy)]
struct Plan {
    /// Input plane `h x w`, kernel `kh x kw`, stride, dilation.
    h: usize,
    w: usize,
    kh: usize,
    kw: usize,
    s: usize,
    d: usize,
    /// Top and left padding.
    top: usize,
    left: usize,
    /// Output plane `ho x wo`.
    ho: usize,
    wo: usize,
    /// Padded height and the length of one phase of a padded row (`ceil(padded width / s)`).
    hp: usize,
    phase_len: usize,
}

impl Plan {
    fn new(op: &DepthwiseConv2d, h: usize, w: usize, kh: usize, kw: usize) -> Result<Self> {
        let (s, d) = (op.stride, op.dilation);
        let [top, bottom, left, right] = op.padding;
        let (hp, wp) = (h + top + bottom, w + left + right);
        let (span_h, span_w) = (d * kh.max(1) - d + 1, d * kw.max(1) - d + 1);
        if kh == 0 || kw == 0 || hp < span_h || wp < span_w {
            bail!(
                "depthwise_conv2d: kernel {kh}x{kw} (dilation {d}) does not fit input {h}x{w} with padding {:?}",
                op.padding
            )
        }
        Ok(Self {
            h,
            w,
            kh,
            kw,
            s,
            d,
            top,
            left,
            ho: (hp - span_h) / s + 1,
            wo: (wp - span_w) / s + 1,
            hp,
            phase_len: wp.div_ceil(s),
        })
    }

    /// Length of one padded, phase-split row (`s` phases).
    fn row_len(&self) -> usize {
        self.s * self.phase_len
    }

    /// A zeroed scratch plane. Padding slots are never written, so it stays valid across planes.
    fn scratch(&self) -> Vec<f32> {
        vec![0f32; self.hp * self.row_len()]
    }

    /// Convolve one input plane `x (h*w)` with kernel `k (kh*kw)` into `out (ho*wo)`, which must be zero.
    fn plane(&self, x: &[f32], k: &[f32], out: &mut [f32], scratch: &mut [f32]) {
        let (s, left, row_len, phase_len) = (self.s, self.left, self.row_len(), self.phase_len);
        // Copy into the padded, phase-split scratch plane.
        for (y, src) in x.chunks_exact(self.w).enumerate() {
            let dst = &mut scratch[(y + self.top) * row_len..(y + self.top + 1) * row_len];
            if s == 1 {
                dst[left..left + self.w].copy_from_slice(src);
                continue;
            }
            // Phase r holds padded columns j*s + r, i.e. input columns j*s + r - left.
            for r in 0..s {
                let first = left.saturating_sub(r).div_ceil(s); // first slot inside the input
                let Some(x0) = (first * s + r).checked_sub(left).filter(|&x0| x0 < self.w) else {
                    continue;
                };
                let phase = &mut dst[r * phase_len + first..(r + 1) * phase_len];
                for (d, &v) in phase.iter_mut().zip(src[x0..].iter().step_by(s)) {
                    *d = v;
                }
            }
        }
        // Each tap of each output row: one contiguous slice of one phase of one padded row.
        let wo = self.wo;
        for (oy, orow) in out.chunks_exact_mut(wo).enumerate() {
            for ky in 0..self.kh {
                let row = &scratch[(oy * s + ky * self.d) * row_len..][..row_len];
                for kx in 0..self.kw {
                    let col = kx * self.d;
                    let start = (col % s) * phase_len + col / s;
                    axpy(orow, &row[start..start + wo], k[ky * self.kw + kx]);
                }
            }
        }
    }

    /// Run all `planes` planes of `x` (each `h*w`) with kernels `k` (each `kh*kw`, plane `i` uses kernel
    /// `i % channels`), in parallel.
    fn run(&self, x: &[f32], k: &[f32], planes: usize, channels: usize) -> Vec<f32> {
        let (in_sz, out_sz, k_sz) = (self.h * self.w, self.ho * self.wo, self.kh * self.kw);
        let mut out = vec![0f32; planes * out_sz];
        if planes == 0 || out_sz == 0 {
            return out;
        }
        // Roughly 64k multiply-adds per worker at least, so tiny convs do not pay for threads.
        let work = planes * out_sz * k_sz;
        let max_threads = rayon::current_num_threads();
        let threads = max_threads.min(planes).min(work.div_ceil(1 << 16)).max(1);
        let per_thread = planes.div_ceil(threads);
        let job = |first: usize, out: &mut [f32]| {
            let mut scratch = self.scratch();
            for (j, o) in out.chunks_exact_mut(out_sz).enumerate() {
                let i = first + j;
                let c = i % channels;
                self.plane(
                    &x[i * in_sz..(i + 1) * in_sz],
                    &k[c * k_sz..(c + 1) * k_sz],
                    o,
                    &mut scratch,
                );
            }
        };
        if threads == 1 {
            job(0, &mut out);
        } else {
            out.par_chunks_mut(per_thread * out_sz)
                .enumerate()
                .for_each(|(t, chunk)| job(t * per_thread, chunk));
        }
        out
    }
}

/// `out += a * x`, element-wise over equal-length slices (vectorised by the compiler).
#[inline]
fn axpy(out: &mut [f32], x: &[f32], a: f32) {
    for (o, &v) in out.iter_mut().zip(x) {
        *o += a * v;
    }
}

impl CustomOp2 for DepthwiseConv2d {
    fn name(&self) -> &'static str {
        "depthwise-conv2d"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (CpuStorage::F32(xs), CpuStorage::F32(ws)) = (s1, s2) else {
            bail!("depthwise_conv2d: the fast path takes f32 tensors only")
        };
        let (Some((x0, x1)), Some((w0, w1))) = (l1.contiguous_offsets(), l2.contiguous_offsets())
        else {
            bail!("depthwise_conv2d: inputs must be contiguous")
        };
        let (b, c, h, w) = l1.shape().dims4()?;
        let (cw, per_group, kh, kw) = l2.shape().dims4()?;
        if cw != c || per_group != 1 {
            bail!(
                "depthwise_conv2d: weight {:?} does not match {c} input channels",
                l2.shape()
            )
        }
        let plan = Plan::new(self, h, w, kh, kw)?;
        let out = plan.run(&xs[x0..x1], &ws[w0..w1], b * c, c);
        Ok((CpuStorage::F32(out), Shape::from((b, c, plan.ho, plan.wo))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    /// Deterministic pseudo-random values in [-1, 1).
    fn tensor(shape: (usize, usize, usize, usize), seed: u64) -> Result<Tensor> {
        let n = shape.0 * shape.1 * shape.2 * shape.3;
        let mut state = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let data: Vec<f32> = (0..n)
            .map(|_| {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((state >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect();
        Tensor::from_vec(data, shape, &Device::Cpu)
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> Result<f32> {
        assert_eq!(a.dims(), b.dims());
        (a - b)?.abs()?.max_all()?.to_scalar::<f32>()
    }

    #[test]
    fn matches_candle_grouped_conv() -> Result<()> {
        let mut cases = 0;
        for (k, (h, w)) in [(3, (9, 9)), (5, (10, 12)), (3, (16, 11)), (5, (7, 8))] {
            for stride in [1, 2] {
                for padding in [0, 1, 2] {
                    for dilation in [1, 2] {
                        if h + 2 * padding < dilation * (k - 1) + 1 {
                            continue;
                        }
                        let c = 6;
                        let x = tensor((2, c, h, w), cases)?;
                        let wt = tensor((c, 1, k, k), 1000 + cases)?;
                        let ours = depthwise_conv2d(&x, &wt, stride, padding, dilation)?;
                        let theirs = x.conv2d(&wt, padding, stride, dilation, c)?;
                        let d = max_diff(&ours, &theirs)?;
                        assert!(
                            d < 1e-4,
                            "k={k} {h}x{w} s={stride} p={padding} d={dilation}: diff {d}"
                        );
                        cases += 1;
                    }
                }
            }
        }
        assert!(cases >= 40, "only {cases} cases ran");
        Ok(())
    }

    #[test]
    fn many_planes_use_threads_and_match() -> Result<()> {
        // Enough work to split across workers; uneven plane count.
        let (c, k) = (37, 5);
        let x = tensor((2, c, 33, 30), 7)?;
        let wt = tensor((c, 1, k, k), 8)?;
        for stride in [1, 2] {
            let ours = depthwise_conv2d(&x, &wt, stride, 2, 1)?;
            let theirs = x.conv2d(&wt, 2, stride, 1, c)?;
            assert!(max_diff(&ours, &theirs)? < 1e-4);
        }
        Ok(())
    }

    #[test]
    fn non_contiguous_input_and_asymmetric_pre_padding() -> Result<()> {
        // A transposed view, then TF-SAME style bottom/right padding followed by a padding-0 conv.
        let c = 4;
        let x = tensor((1, c, 12, 10), 3)?.transpose(2, 3)?; // (1, 4, 10, 12), strided
        let wt = tensor((c, 1, 3, 3), 4)?;
        let xp = x.pad_with_zeros(2, 0, 1)?.pad_with_zeros(3, 0, 1)?;
        let ours = depthwise_conv2d(&x, &wt, 2, 1, 1)?;
        let theirs = x.contiguous()?.conv2d(&wt, 1, 2, 1, c)?;
        assert!(max_diff(&ours, &theirs)? < 1e-4);
        let ours = depthwise_conv2d(&xp, &wt, 2, 0, 1)?;
        let theirs = xp.conv2d(&wt, 0, 2, 1, c)?;
        assert_eq!(ours.dims(), &[1, c, 5, 6]);
        assert!(max_diff(&ours, &theirs)? < 1e-4);
        Ok(())
    }

    #[test]
    fn asymmetric_padding_matches_pad_then_conv() -> Result<()> {
        let c = 5;
        let mut seed = 100;
        for (k, (h, w)) in [(3, (10, 10)), (5, (11, 8)), (3, (7, 12))] {
            for stride in [1, 2, 3] {
                for pads in [[0, 1, 0, 1], [1, 2, 1, 2], [2, 0, 1, 3], [0, 0, 2, 1]] {
                    for dilation in [1, 2] {
                        seed += 1;
                        let x = tensor((2, c, h, w), seed)?;
                        let wt = tensor((c, 1, k, k), seed + 500)?;
                        let xp = x
                            .pad_with_zeros(2, pads[0], pads[1])?
                            .pad_with_zeros(3, pads[2], pads[3])?;
                        let theirs = xp.conv2d(&wt, 0, stride, dilation, c)?;
                        let ours = depthwise_conv2d_padded(&x, &wt, stride, pads, dilation)?;
                        let d = max_diff(&ours, &theirs)?;
                        assert!(
                            d < 1e-4,
                            "k={k} {h}x{w} s={stride} pads={pads:?} d={dilation}: {d}"
                        );
                        // The fallback (tracked weight) takes the same padding.
                        let v = Var::from_tensor(&wt)?;
                        let slow =
                            depthwise_conv2d_padded(&x, v.as_tensor(), stride, pads, dilation)?;
                        assert!(max_diff(&slow, &theirs)? < 1e-4);
                    }
                }
            }
        }
        Ok(())
    }

    #[test]
    fn fast_path_has_no_gradient_but_tracked_inputs_fall_back() -> Result<()> {
        let c = 3;
        let x = tensor((1, c, 6, 6), 5)?;
        let wt = tensor((c, 1, 3, 3), 6)?;
        assert!(!depthwise_conv2d(&x, &wt, 1, 1, 1)?.track_op());
        // A trainable weight takes candle's differentiable grouped conv.
        let v = Var::from_tensor(&wt)?;
        let y = depthwise_conv2d(&x, v.as_tensor(), 1, 1, 1)?;
        assert!(y.track_op());
        let grads = y.sum_all()?.backward()?;
        assert!(grads.get(v.as_tensor()).is_some());
        Ok(())
    }

    #[test]
    fn rejects_kernel_larger_than_padded_input() -> Result<()> {
        let x = tensor((1, 2, 3, 3), 1)?;
        let wt = tensor((2, 1, 5, 5), 2)?;
        assert!(depthwise_conv2d(&x, &wt, 1, 0, 1).is_err());
        assert_eq!(depthwise_conv2d(&x, &wt, 1, 1, 1)?.dims(), &[1, 2, 1, 1]);
        Ok(())
    }
}
