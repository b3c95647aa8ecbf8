//! Frozen convolution + BatchNorm (eval mode) folded into a single convolution with bias.
//!
//! `BN(conv(x)) = conv(x) * g + (beta - mean * g)`, `g = gamma / sqrt(var + eps)`, so the BN scale
//! folds into the conv weight and its shift into a bias. Exact up to float rounding.

use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;

/// Geometry of a 2-D convolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvGeometry {
    pub stride: usize,
    pub padding: usize,
    pub dilation: usize,
    pub groups: usize,
}

impl ConvGeometry {
    pub fn new(stride: usize, padding: usize, dilation: usize, groups: usize) -> Self {
        Self {
            stride,
            padding,
            dilation,
            groups,
        }
    }
}

/// A conv followed by an eval-mode BatchNorm, folded. Weight `(O, I/groups, k, k)`, bias `(O,)`.
#[derive(Debug, Clone)]
pub struct FrozenConvBn {
    pub weight: Tensor,
    pub bias: Tensor,
    pub geometry: ConvGeometry,
}

impl FrozenConvBn {
    /// Load `conv` (a bias-free `Conv2d`, weight `[out, in/groups, k, k]`) and `bn` from their
    /// VarBuilder prefixes and fold them.
    pub fn new(
        conv: VarBuilder,
        bn: VarBuilder,
        shape: (usize, usize, usize),
        geometry: ConvGeometry,
        bn_eps: f64,
    ) -> Result<Self> {
        let (out_c, in_c, k) = shape;
        let weight = conv.get((out_c, in_c / geometry.groups, k, k), "weight")?;
        let gamma = bn.get(out_c, "weight")?;
        let beta = bn.get(out_c, "bias")?;
        let mean = bn.get(out_c, "running_mean")?;
        let var = bn.get(out_c, "running_var")?;
        let scale = gamma.div(&(var + bn_eps)?.sqrt()?)?;
        let weight = weight.broadcast_mul(&scale.reshape((out_c, 1, 1, 1))?)?;
        let bias = (beta - mean.mul(&scale)?)?;
        Ok(Self {
            weight: weight.detach(),
            bias: bias.detach(),
            geometry,
        })
    }

    /// Apply to `(B, I, H, W)`. Depthwise convolutions take the fast path of [`super::depthwise`].
    pub fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let g = self.geometry;
        let (out_c, _, _, _) = self.weight.dims4()?;
        let ys = if g.groups > 1 && g.groups == out_c && self.weight.dim(1)? == 1 {
            super::depthwise::depthwise_conv2d(xs, &self.weight, g.stride, g.padding, g.dilation)?
        } else {
            xs.conv2d(&self.weight, g.padding, g.stride, g.dilation, g.groups)?
        };
        ys.broadcast_add(&self.bias.reshape((1, out_c, 1, 1))?)
    }
}
