//! Softmax over the last dimension: a fast fused CPU kernel that also has a backward pass.
//!
//! candle 0.11 offers either the composed `candle_nn::ops::softmax` (differentiable, several passes and
//! temporaries) or the fused `candle_nn::ops::softmax_last_dim` (no backward, scalar libm `exp` per
//! element). [`softmax_last_dim`] here is one custom op with both:
//!
//! * forward (CPU, f32): rows split over rayon's global pool; per row the max, a vectorisable
//!   Cephes-style `exp` ([`exp_approx`]), the sum and a scale by `1/sum`. The row kernel is plain f32
//!   arithmetic over fixed-width lane arrays so LLVM auto-vectorises it; on x86-64 an AVX2 copy of the
//!   same code is picked at run time (no FMA contraction, so both copies give bit-identical results);
//! * forward (other dtypes or devices): candle's fused `softmax_last_dim`;
//! * backward: `y * (g - sum(g * y, last dim, keepdim))`, on the CPU in f32 one pass per row on
//!   rayon's pool (a training step's attention maps are `8 × 4 × 1600 × 1600`: candle's four ops
//!   were four passes and three fresh tensors of that size), elsewhere with candle tensor ops.

mod grad;

use self::grad::SoftmaxGrad;
use super::exp::exp_approx;
use super::par_rows;
use candle_core::backend::BackendStorage;
use candle_core::{
    bail, CpuStorage, CudaStorage, CustomOp1, CustomOp2, DType, Layout, MetalStorage, Result,
    Shape, Tensor, D,
};

/// Softmax over the last dimension, differentiable. Rows whose logits are `-inf` give exactly `0` there
/// (a row needs at least one finite logit, as with any softmax).
pub fn softmax_last_dim(xs: &Tensor) -> Result<Tensor> {
    if xs.device().is_cpu() && xs.dtype() == DType::F32 {
        // `contiguous` is a cheap clone when `xs` already is, and keeps the autograd chain otherwise.
        return xs.contiguous()?.apply_op1(SoftmaxLastDim);
    }
    let ys = candle_nn::ops::softmax_last_dim(&xs.contiguous()?.detach())?;
    if !xs.track_op() {
        return Ok(ys);
    }
    // Attach the backward: an op of (xs, ys) whose forward just hands back ys's storage.
    xs.apply_op2(&ys, SoftmaxFromResult)
}

/// The softmax gradient `y * (g - sum(g * y, last dim, keepdim))`.
fn softmax_grad(res: &Tensor, grad_res: &Tensor) -> Result<Tensor> {
    if res.device().is_cpu() && res.dtype() == DType::F32 && grad_res.dtype() == DType::F32 {
        return res
            .contiguous()?
            .apply_op2_no_bwd(&grad_res.contiguous()?, &SoftmaxGrad);
    }
    let dot = (grad_res * res)?.sum_keepdim(D::Minus1)?;
    res * grad_res.broadcast_sub(&dot)?
}

/// The fused CPU f32 softmax.
struct SoftmaxLastDim;

impl CustomOp1 for SoftmaxLastDim {
    fn name(&self) -> &'static str {
        "mce-softmax-last-dim"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let CpuStorage::F32(data) = storage else {
            bail!("{}: expected f32, got {:?}", self.name(), storage.dtype())
        };
        let owned;
        let src: &[f32] = match layout.contiguous_offsets() {
            Some((start, end)) => &data[start..end],
            None => {
                owned = gather_strided(data, layout);
                &owned
            }
        };
        let row = layout.shape().dims().last().copied().unwrap_or(1);
        let mut dst = vec![0f32; src.len()];
        if row > 0 && !src.is_empty() {
            softmax_rows_parallel(src, &mut dst, row);
        }
        Ok((CpuStorage::F32(dst), layout.shape().clone()))
    }

    fn bwd(&self, _arg: &Tensor, res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        softmax_grad(res, grad_res).map(Some)
    }
}

/// A contiguous copy of the elements of a strided `layout` over `data`.
fn gather_strided(data: &[f32], layout: &Layout) -> Vec<f32> {
    let dims = layout.dims();
    let stride = layout.stride();
    let n = layout.shape().elem_count();
    let mut out = Vec::with_capacity(n);
    if n == 0 {
        return out;
    }
    let mut index = vec![0usize; dims.len()];
    let mut offset = layout.start_offset();
    for _ in 0..n {
        out.push(data[offset]);
        // Odometer step over the dims, innermost first.
        for d in (0..dims.len()).rev() {
            index[d] += 1;
            offset += stride[d];
            if index[d] < dims[d] {
                break;
            }
            offset -= stride[d] * dims[d];
            index[d] = 0;
        }
    }
    out
}

/// The non-CPU-f32 path: `(xs, ys) -> ys` where `ys` is candle's fused softmax of `xs`, so that the
/// result carries the softmax backward with respect to `xs`.
struct SoftmaxFromResult;

impl SoftmaxFromResult {
    fn take<S: BackendStorage>(&self, ys: &S, layout: &Layout) -> Result<(S, Shape)> {
        // `ys` is a fresh, contiguous tensor, so its whole storage is exactly the result.
        if layout.contiguous_offsets() != Some((0, layout.shape().elem_count())) {
            bail!("{}: the fused result must be contiguous", self.name())
        }
        Ok((ys.try_clone(layout)?, layout.shape().clone()))
    }
}

impl CustomOp2 for SoftmaxFromResult {
    fn name(&self) -> &'static str {
        "mce-softmax-last-dim-fallback"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        ys: &CpuStorage,
        layout: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        self.take(ys, layout)
    }

    fn cuda_fwd(
        &self,
        _: &CudaStorage,
        _: &Layout,
        ys: &CudaStorage,
        layout: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        self.take(ys, layout)
    }

    fn metal_fwd(
        &self,
        _: &MetalStorage,
        _: &Layout,
        ys: &MetalStorage,
        layout: &Layout,
    ) -> Result<(MetalStorage, Shape)> {
        self.take(ys, layout)
    }

    fn bwd(
        &self,
        _arg: &Tensor,
        _ys: &Tensor,
        res: &Tensor,
        grad_res: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        Ok((Some(softmax_grad(res, grad_res)?), None))
    }
}

/// Below this many elements per thread a softmax runs on fewer threads (on the calling one only).
const MIN_ELEMS_PER_THREAD: usize = 1 << 15;

/// Softmax of each `row`-long row of `src` into `dst`, the rows split over rayon's global pool.
fn softmax_rows_parallel(src: &[f32], dst: &mut [f32], row: usize) {
    par_rows(dst, row, MIN_ELEMS_PER_THREAD, |range, d| {
        softmax_rows(&src[range], d, row)
    });
}

/// Softmax of each `row`-long row of `src` into `dst` on this thread, AVX2 code when available.
fn softmax_rows(src: &[f32], dst: &mut [f32], row: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU supports AVX2, checked just above.
            unsafe { softmax_rows_avx2(src, dst, row) };
            return;
        }
    }
    softmax_rows_generic(src, dst, row);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn softmax_rows_avx2(src: &[f32], dst: &mut [f32], row: usize) {
    softmax_rows_generic(src, dst, row)
}

/// Lanes of the per-row reductions: independent accumulators let LLVM keep them in vector registers.
pub(super) const LANES: usize = 16;

#[inline(always)]
fn softmax_rows_generic(src: &[f32], dst: &mut [f32], row: usize) {
    for (s, d) in src.chunks_exact(row).zip(dst.chunks_exact_mut(row)) {
        softmax_row(s, d);
    }
}

#[inline(always)]
fn softmax_row(src: &[f32], dst: &mut [f32]) {
    // Max. `if v > m` skips NaN here; a NaN logit then turns the whole row into NaN through the sum.
    let mut lanes = [f32::NEG_INFINITY; LANES];
    let chunks = src.chunks_exact(LANES);
    let tail = chunks.remainder();
    for c in chunks {
        for i in 0..LANES {
            lanes[i] = if c[i] > lanes[i] { c[i] } else { lanes[i] };
        }
    }
    let mut max = f32::NEG_INFINITY;
    for &v in lanes.iter().chain(tail) {
        max = if v > max { v } else { max };
    }

    // exp(x - max) and its sum.
    let mut sums = [0f32; LANES];
    let mut s_chunks = src.chunks_exact(LANES);
    let mut d_chunks = dst.chunks_exact_mut(LANES);
    for (s, d) in (&mut s_chunks).zip(&mut d_chunks) {
        for i in 0..LANES {
            let e = exp_approx(s[i] - max);
            d[i] = e;
            sums[i] += e;
        }
    }
    let mut sum = 0f32;
    for (s, d) in s_chunks.remainder().iter().zip(d_chunks.into_remainder()) {
        let e = exp_approx(s - max);
        *d = e;
        sum += e;
    }
    let sum = sums.iter().sum::<f32>() + sum;

    let inv = 1.0 / sum;
    for d in dst.iter_mut() {
        *d *= inv;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    /// A small deterministic generator (xorshift) for masks and test data.
    struct Rng(u64);

    impl Rng {
        fn next_u32(&mut self) -> u32 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            (self.0 >> 32) as u32
        }
        /// Uniform in [-1, 1).
        fn unit(&mut self) -> f32 {
            self.next_u32() as f32 / 2_147_483_648.0 - 1.0
        }
    }

    fn max_abs_diff(a: &Tensor, b: &Tensor) -> Result<f32> {
        (a - b)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()
    }

    /// Rows of length `len`: random logits of magnitude `scale`, about a quarter masked to `-inf`
    /// (never a whole row); returns the tensor and the masked positions.
    fn logits(rows: usize, len: usize, scale: f32, seed: u64) -> Result<(Tensor, Vec<bool>)> {
        let mut rng = Rng(seed);
        let mut data = Vec::with_capacity(rows * len);
        let mut masked = Vec::with_capacity(rows * len);
        for _ in 0..rows {
            let keep = (rng.next_u32() as usize) % len;
            for j in 0..len {
                let m = j != keep && (rng.next_u32() & 3) == 0;
                masked.push(m);
                data.push(if m {
                    f32::NEG_INFINITY
                } else {
                    rng.unit() * scale
                });
            }
        }
        Ok((Tensor::from_vec(data, (rows, len), &Device::Cpu)?, masked))
    }

    #[test]
    fn forward_matches_composed_softmax() -> Result<()> {
        for (seed, &len) in [1usize, 7, 33, 1600].iter().enumerate() {
            for (k, scale) in [1f32, 10.0, 1e4].into_iter().enumerate() {
                let rows = if len == 1600 { 40 } else { 64 };
                let (x, masked) = logits(rows, len, scale, 1 + seed as u64 * 7 + k as u64)?;
                let ours = softmax_last_dim(&x)?;
                let theirs = candle_nn::ops::softmax(&x, D::Minus1)?;
                let diff = max_abs_diff(&ours, &theirs)?;
                assert!(diff <= 1e-6, "len {len} scale {scale}: max diff {diff:e}");
                let ys = ours.flatten_all()?.to_vec1::<f32>()?;
                for (y, m) in ys.iter().zip(&masked) {
                    if *m {
                        assert_eq!(*y, 0.0, "masked entry must be exactly 0");
                    } else {
                        assert!(y.is_finite() && *y >= 0.0);
                    }
                }
                let sums = ours.sum(D::Minus1)?.to_vec1::<f32>()?;
                assert!(sums.iter().all(|s| (s - 1.0).abs() < 1e-5), "{sums:?}");
            }
        }
        Ok(())
    }

    #[test]
    fn forward_4d_and_multithreaded() -> Result<()> {
        // Large enough to use several threads, and a row count not divisible by the thread count.
        let x = Tensor::randn(0f32, 3f32, (1, 3, 97, 130), &Device::Cpu)?;
        let ours = softmax_last_dim(&x)?;
        assert_eq!(ours.dims(), x.dims());
        let theirs = candle_nn::ops::softmax(&x, D::Minus1)?;
        assert!(max_abs_diff(&ours, &theirs)? <= 1e-6);
        Ok(())
    }

    #[test]
    fn non_contiguous_input() -> Result<()> {
        let x = Tensor::randn(0f32, 2f32, (45, 33), &Device::Cpu)?.t()?; // (33, 45), strided
        assert!(!x.is_contiguous());
        let ours = softmax_last_dim(&x)?;
        let theirs = candle_nn::ops::softmax(&x.contiguous()?, D::Minus1)?;
        assert!(max_abs_diff(&ours, &theirs)? <= 1e-6);
        // The kernel itself also accepts strided layouts.
        let direct = x.apply_op1_no_bwd(&SoftmaxLastDim)?;
        assert!(max_abs_diff(&direct, &theirs)? <= 1e-6);
        Ok(())
    }

    /// Gradient of `sum(softmax(x) * w)` w.r.t. `x` with `f` as the softmax.
    fn grad_of(x: &Tensor, w: &Tensor, f: impl Fn(&Tensor) -> Result<Tensor>) -> Result<Tensor> {
        let v = Var::from_tensor(x)?;
        let y = f(v.as_tensor())?;
        let grads = (y * w)?.sum_all()?.backward()?;
        Ok(grads.get(v.as_tensor()).expect("gradient").clone())
    }

    #[test]
    fn gradient_matches_composed_softmax() -> Result<()> {
        for (seed, &len) in [1usize, 7, 33, 1600].iter().enumerate() {
            let (x, masked) = logits(8, len, 4.0, 100 + seed as u64)?;
            let w = Tensor::randn(0f32, 1f32, (8, len), &Device::Cpu)?;
            let ours = grad_of(&x, &w, softmax_last_dim)?;
            let theirs = grad_of(&x, &w, |x| candle_nn::ops::softmax(x, D::Minus1))?;
            let diff = max_abs_diff(&ours, &theirs)?;
            assert!(diff <= 1e-5, "len {len}: max grad diff {diff:e}");
            let g = ours.flatten_all()?.to_vec1::<f32>()?;
            assert!(g.iter().zip(&masked).all(|(g, m)| !m || *g == 0.0));
        }
        // Large enough for the fused backward to split its rows between threads.
        let x = Tensor::randn(0f32, 3f32, (2, 3, 41, 700), &Device::Cpu)?;
        let w = Tensor::randn(0f32, 1f32, (2, 3, 41, 700), &Device::Cpu)?;
        let ours = grad_of(&x, &w, softmax_last_dim)?;
        let theirs = grad_of(&x, &w, |x| candle_nn::ops::softmax(x, D::Minus1))?;
        assert!(max_abs_diff(&ours, &theirs)? <= 1e-5);
        // Through a transposed (non-contiguous) input as well.
        let x = Tensor::randn(0f32, 2f32, (20, 9), &Device::Cpu)?.t()?;
        let w = Tensor::randn(0f32, 1f32, (9, 20), &Device::Cpu)?;
        let ours = grad_of(&x, &w, softmax_last_dim)?;
        let theirs = grad_of(&x, &w, |x| candle_nn::ops::softmax(x, D::Minus1))?;
        assert!(max_abs_diff(&ours, &theirs)? <= 1e-5);
        Ok(())
    }

    #[test]
    fn other_dtypes_fall_back_with_gradient() -> Result<()> {
        let x = Tensor::randn(0f64, 2f64, (5, 11), &Device::Cpu)?;
        let ours = softmax_last_dim(&x)?;
        let theirs = candle_nn::ops::softmax(&x, D::Minus1)?;
        let diff = (&ours - &theirs)?
            .abs()?
            .flatten_all()?
            .max(0)?
            .to_scalar::<f64>()?;
        assert!(diff < 1e-12, "{diff:e}");
        let w = Tensor::randn(0f64, 1f64, (5, 11), &Device::Cpu)?;
        let ours = grad_of(&x, &w, softmax_last_dim)?;
        let theirs = grad_of(&x, &w, |x| candle_nn::ops::softmax(x, D::Minus1))?;
        let diff = (ours - theirs)?
            .abs()?
            .flatten_all()?
            .max(0)?
            .to_scalar::<f64>()?;
        assert!(diff < 1e-12, "{diff:e}");
        Ok(())
    }
}
