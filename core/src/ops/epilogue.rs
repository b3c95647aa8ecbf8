//! The epilogue of a frozen convolution in one pass over its output, in place:
//!
//! ```text
//! y (B, C, H, W) ← act(y + bias[c] [+ residual])        act: identity, ReLU or ReLU6
//! ```
//!
//! Written as separate candle ops this is two or three passes, each a fresh tensor and each
//! single-threaded (`broadcast_add`, `clamp`, `+`): about an eighth of the Lite0 backbone's time.
//! Here each `(batch, channel)` plane is one slice; planes run in chunks on rayon's global pool
//! (the pool candle's kernels use).
//!
//! **Forward only, CPU/f32 only.** In place means no backward: the fast path runs only when `y`
//! tracks no gradient (the frozen backbones at inference); otherwise, and on other devices or
//! dtypes, the same result comes from candle's differentiable ops.

use candle_core::{bail, CpuStorage, DType, InplaceOp2, InplaceOp3, Layout, Result, Tensor};
use rayon::prelude::*;

/// The activation after the bias (and residual).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    Identity,
    /// `max(x, 0)` (ResNet).
    Relu,
    /// `min(max(x, 0), 6)` (MobileNet, EfficientNet-Lite).
    Relu6,
}

impl Activation {
    fn apply(self, x: f32) -> f32 {
        match self {
            Activation::Identity => x,
            Activation::Relu => x.max(0.0),
            Activation::Relu6 => x.clamp(0.0, 6.0),
        }
    }
}

/// `act(ys + bias (C,) [+ residual])` for `ys (B, C, H, W)`, `residual` of `ys`'s shape.
/// Consumes `ys`: on the fast path its storage is overwritten, so `ys` must not be shared (a
/// convolution's fresh output).
pub fn bias_act(
    ys: Tensor,
    bias: &Tensor,
    residual: Option<&Tensor>,
    act: Activation,
) -> Result<Tensor> {
    let (_, c, _, _) = ys.dims4()?;
    let fast = ys.device().is_cpu()
        && ys.dtype() == DType::F32
        && ys.is_contiguous()
        && !ys.track_op()
        && bias.dtype() == DType::F32
        && residual.is_none_or(|r| r.dtype() == DType::F32 && r.dims() == ys.dims());
    if !fast {
        return reference(&ys, bias, residual, act);
    }
    let bias = bias.to_device(ys.device())?.contiguous()?;
    let op = Epilogue { channels: c, act };
    match residual {
        None => ys.inplace_op2(&bias, &op)?,
        Some(r) => ys.inplace_op3(&bias, &r.contiguous()?, &op)?,
    }
    Ok(ys)
}

/// The same with candle's ops (differentiable; any device).
fn reference(
    ys: &Tensor,
    bias: &Tensor,
    residual: Option<&Tensor>,
    act: Activation,
) -> Result<Tensor> {
    let (_, c, _, _) = ys.dims4()?;
    let mut y = ys.broadcast_add(&bias.reshape((1, c, 1, 1))?)?;
    if let Some(r) = residual {
        y = (y + r)?;
    }
    match act {
        Activation::Identity => Ok(y),
        Activation::Relu => y.relu(),
        Activation::Relu6 => y.clamp(0f32, 6f32),
    }
}

struct Epilogue {
    channels: usize,
    act: Activation,
}

impl Epilogue {
    /// `dst` planes of `plane` values, plane `i` of channel `i % channels`.
    fn run(&self, dst: &mut [f32], bias: &[f32], residual: Option<&[f32]>, plane: usize) {
        let planes = dst.len() / plane.max(1);
        let per_task = planes
            .div_ceil(rayon::current_num_threads().max(1) * 4)
            .max(1);
        let (act, channels) = (self.act, self.channels);
        dst.par_chunks_mut(per_task * plane)
            .enumerate()
            .for_each(|(task, chunk)| {
                for (j, y) in chunk.chunks_mut(plane).enumerate() {
                    let p = task * per_task + j;
                    let b = bias[p % channels];
                    match residual {
                        None => y.iter_mut().for_each(|v| *v = act.apply(*v + b)),
                        Some(r) => {
                            let r = &r[p * plane..(p + 1) * plane];
                            y.iter_mut()
                                .zip(r)
                                .for_each(|(v, &r)| *v = act.apply(*v + b + r));
                        }
                    }
                }
            });
    }
}

/// The contiguous f32 slice of `storage` under `layout`.
fn slice<'a>(storage: &'a CpuStorage, layout: &Layout) -> Result<&'a [f32]> {
    let (start, end) = contiguous_range(layout)?;
    Ok(&storage.as_slice::<f32>()?[start..end])
}

fn contiguous_range(layout: &Layout) -> Result<(usize, usize)> {
    match layout.contiguous_offsets() {
        Some(r) => Ok(r),
        None => bail!("epilogue: non-contiguous operand"),
    }
}

/// `(dst, plane size)` of the output operand.
fn dst_slice<'a>(dst: &'a mut CpuStorage, layout: &Layout) -> Result<(&'a mut [f32], usize)> {
    let (start, end) = contiguous_range(layout)?;
    let plane: usize = layout.dims()[2..].iter().product();
    let CpuStorage::F32(d) = dst else {
        bail!("epilogue: expected f32")
    };
    Ok((&mut d[start..end], plane))
}

impl InplaceOp2 for Epilogue {
    fn name(&self) -> &'static str {
        "conv-epilogue"
    }

    fn cpu_fwd(
        &self,
        dst: &mut CpuStorage,
        dst_l: &Layout,
        bias: &CpuStorage,
        bias_l: &Layout,
    ) -> Result<()> {
        let bias = slice(bias, bias_l)?;
        let (dst, plane) = dst_slice(dst, dst_l)?;
        self.run(dst, bias, None, plane);
        Ok(())
    }
}

impl InplaceOp3 for Epilogue {
    fn name(&self) -> &'static str {
        "conv-epilogue-residual"
    }

    fn cpu_fwd(
        &self,
        dst: &mut CpuStorage,
        dst_l: &Layout,
        bias: &CpuStorage,
        bias_l: &Layout,
        res: &CpuStorage,
        res_l: &Layout,
    ) -> Result<()> {
        let (bias, res) = (slice(bias, bias_l)?, slice(res, res_l)?);
        let (dst, plane) = dst_slice(dst, dst_l)?;
        self.run(dst, bias, Some(res), plane);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn close(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar()
            .unwrap()
    }

    /// Against candle's own ops, for both activations, with and without a residual, on odd sizes.
    #[test]
    fn matches_candle_ops() -> Result<()> {
        let dev = Device::Cpu;
        for (b, c, h, w) in [(1, 3, 5, 7), (2, 17, 9, 4), (3, 64, 1, 1)] {
            let ys = (Tensor::randn(0f32, 4., (b, c, h, w), &dev)? + 1.0)?;
            let bias = Tensor::randn(0f32, 2., c, &dev)?;
            let res = Tensor::randn(0f32, 3., (b, c, h, w), &dev)?;
            for act in [Activation::Identity, Activation::Relu, Activation::Relu6] {
                for residual in [None, Some(&res)] {
                    let want = reference(&ys, &bias, residual, act)?;
                    let got = bias_act(ys.copy()?, &bias, residual, act)?;
                    assert!(close(&got, &want) < 1e-6, "{:?} {act:?}", (b, c, h, w));
                }
            }
            // the clamp is active on this data
            let relu = bias_act(ys.copy()?, &bias, None, Activation::Relu6)?;
            assert_eq!(relu.min_all()?.to_scalar::<f32>()?, 0.0);
            assert_eq!(relu.max_all()?.to_scalar::<f32>()?, 6.0);
        }
        Ok(())
    }

    /// A tensor that tracks gradients takes candle's differentiable ops.
    #[test]
    fn tracked_inputs_keep_their_gradients() -> Result<()> {
        let dev = Device::Cpu;
        let x = candle_core::Var::new(&[[[[1f32, -2.], [7., 0.5]]]], &dev)?;
        let ys = (x.as_tensor() * 1.0)?;
        let y = bias_act(ys, &Tensor::new(&[0.5f32], &dev)?, None, Activation::Relu6)?;
        let g = y.sum_all()?.backward()?;
        let g: Vec<f32> = g.get(&x).unwrap().flatten_all()?.to_vec1()?;
        assert_eq!(g, [1., 0., 0., 1.]);
        Ok(())
    }
}
