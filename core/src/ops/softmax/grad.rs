//! The softmax backward `y (g − Σ y·g)` on the CPU in f32: one pass per row, rows on rayon's pool.

use super::{LANES, MIN_ELEMS_PER_THREAD};
use crate::ops::par_rows;
use candle_core::{bail, CpuStorage, CustomOp2, Layout, Result, Shape};

/// The fused CPU f32 softmax gradient of `(y, g)`, both contiguous.
pub(super) struct SoftmaxGrad;

impl CustomOp2 for SoftmaxGrad {
    fn name(&self) -> &'static str {
        "mce-softmax-grad"
    }

    fn cpu_fwd(
        &self,
        y: &CpuStorage,
        y_layout: &Layout,
        g: &CpuStorage,
        g_layout: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (CpuStorage::F32(y), CpuStorage::F32(g)) = (y, g) else {
            bail!("{}: expected f32", self.name())
        };
        let (Some((y0, y1)), Some((g0, g1))) =
            (y_layout.contiguous_offsets(), g_layout.contiguous_offsets())
        else {
            bail!("{}: expected contiguous inputs", self.name())
        };
        if y_layout.shape() != g_layout.shape() {
            bail!(
                "{}: shapes {:?} and {:?}",
                self.name(),
                y_layout.shape(),
                g_layout.shape()
            )
        }
        let (y, g) = (&y[y0..y1], &g[g0..g1]);
        let row = y_layout.shape().dims().last().copied().unwrap_or(1);
        let mut dst = vec![0f32; y.len()];
        if row > 0 && !y.is_empty() {
            par_rows(&mut dst, row, MIN_ELEMS_PER_THREAD, |range, d| {
                softmax_grad_rows(&y[range.clone()], &g[range], d, row)
            });
        }
        Ok((CpuStorage::F32(dst), y_layout.shape().clone()))
    }
}

/// `y (g − y·g)` of each `row`-long row, on this thread, AVX2 code when available.
fn softmax_grad_rows(y: &[f32], g: &[f32], dst: &mut [f32], row: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU supports AVX2, checked just above.
            unsafe { softmax_grad_rows_avx2(y, g, dst, row) };
            return;
        }
    }
    softmax_grad_rows_generic(y, g, dst, row);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn softmax_grad_rows_avx2(y: &[f32], g: &[f32], dst: &mut [f32], row: usize) {
    softmax_grad_rows_generic(y, g, dst, row)
}

#[inline(always)]
fn softmax_grad_rows_generic(y: &[f32], g: &[f32], dst: &mut [f32], row: usize) {
    let rows = y.chunks_exact(row).zip(g.chunks_exact(row));
    for ((y, g), d) in rows.zip(dst.chunks_exact_mut(row)) {
        let mut lanes = [0f32; LANES];
        let (yc, gc) = (y.chunks_exact(LANES), g.chunks_exact(LANES));
        let tail: f32 = yc
            .remainder()
            .iter()
            .zip(gc.remainder())
            .map(|(a, b)| a * b)
            .sum();
        for (a, b) in yc.zip(gc) {
            for i in 0..LANES {
                lanes[i] += a[i] * b[i];
            }
        }
        let dot = lanes.iter().sum::<f32>() + tail;
        for ((d, &y), &g) in d.iter_mut().zip(y).zip(g) {
            *d = y * (g - dot);
        }
    }
}
