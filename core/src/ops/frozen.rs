//! Frozen convolution + BatchNorm (eval mode) folded into a single convolution with bias.
//!
//! `BN(conv(x)) = conv(x) * g + (beta - mean * g)`, `g = gamma / sqrt(var + eps)`, so the BN scale
//! folds into the conv weight and its shift into a bias. Exact up to float rounding.
//!
//! A conv whose VarBuilder already holds a `bias` while its BN holds no `running_mean` is taken as
//! folded (the int8 artifact stores backbone convs that way). Each conv carries an optional
//! quantization hook ([`crate::quant::layers`]) named after its conv prefix, given by the plan of
//! its [`QuantVarBuilder`].

use super::epilogue::{bias_act, Activation};
use crate::quant::layers::{pointwise_conv, LayerHook, LayerInfo, LayerKind};
use crate::quant::QuantVarBuilder;
use candle_core::{Result, Tensor};
use std::sync::Arc;

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
    quant: Option<Arc<LayerHook>>,
}

impl FrozenConvBn {
    /// Load `conv` (a bias-free `Conv2d`, weight `[out, in/groups, k, k]`) and `bn` from their
    /// VarBuilder prefixes and fold them.
    pub fn new(
        conv: QuantVarBuilder,
        bn: QuantVarBuilder,
        shape: (usize, usize, usize),
        geometry: ConvGeometry,
        bn_eps: f64,
    ) -> Result<Self> {
        let (out_c, in_c, k) = shape;
        let name = conv.prefix();
        let weight = conv.get((out_c, in_c / geometry.groups, k, k), "weight")?;
        let g = geometry;
        let pointwise = k == 1 && (g.stride, g.padding, g.groups) == (1, 0, 1);
        let hook = |weight: &Tensor, bias: &Tensor| {
            conv.hook(LayerInfo {
                name: name.clone(),
                kind: LayerKind::Conv { pointwise },
                weight,
                bias: Some(bias),
            })
        };
        if conv.contains_tensor("bias") && !bn.contains_tensor("running_mean") {
            let bias = conv.get(out_c, "bias")?.detach();
            let weight = weight.detach();
            let quant = hook(&weight, &bias)?;
            return Ok(Self {
                weight,
                bias,
                geometry,
                quant,
            });
        }
        let gamma = bn.get(out_c, "weight")?;
        let beta = bn.get(out_c, "bias")?;
        let mean = bn.get(out_c, "running_mean")?;
        let var = bn.get(out_c, "running_var")?;
        let scale = gamma.div(&(var + bn_eps)?.sqrt()?)?;
        let weight = weight.broadcast_mul(&scale.reshape((out_c, 1, 1, 1))?)?;
        let (weight, bias) = (weight.detach(), (beta - mean.mul(&scale)?)?.detach());
        let quant = hook(&weight, &bias)?;
        Ok(Self {
            weight,
            bias,
            geometry,
            quant,
        })
    }

    /// Apply to `(B, I, H, W)` with the geometry's symmetric padding.
    pub fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        self.forward_act(xs, Activation::Identity, None)
    }

    /// `act(conv(xs) + residual)` with the geometry's symmetric padding; the bias, residual and
    /// activation in one pass ([`super::epilogue`]).
    pub fn forward_act(
        &self,
        xs: &Tensor,
        act: Activation,
        residual: Option<&Tensor>,
    ) -> Result<Tensor> {
        let p = self.geometry.padding;
        self.forward_padded_act(xs, [p, p, p, p], act, residual)
    }

    /// `act(conv(xs) + residual)` with explicit zero padding `[top, bottom, left, right]` (TF
    /// "SAME" pads asymmetrically): the conv by its cheapest exact route (`conv_padded`), then
    /// the bias, residual and activation in one pass.
    pub fn forward_padded_act(
        &self,
        xs: &Tensor,
        pads: [usize; 4],
        act: Activation,
        residual: Option<&Tensor>,
    ) -> Result<Tensor> {
        bias_act(self.conv_padded(xs, pads)?, &self.bias, residual, act)
    }

    /// The convolution without its bias, padded `[top, bottom, left, right]`, by the cheapest exact
    /// route: 1×1 stride-1 convs are a matmul (candle's 1×1 `conv2d` is ~4× slower), depthwise convs
    /// go to [`super::depthwise`], other stride-1 convs on the CPU to [`super::shifted_conv`], the
    /// rest to candle's `conv2d`.
    fn conv_padded(&self, xs: &Tensor, pads: [usize; 4]) -> Result<Tensor> {
        let (xs, weight) = match &self.quant {
            Some(h) => (h.input(xs)?, h.weight(&self.weight)?),
            None => (xs.clone(), self.weight.clone()),
        };
        let (xs, weight) = (&xs, &weight);
        let g = self.geometry;
        let (out_c, in_per_group, kh, kw) = weight.dims4()?;
        let ys = if (kh, kw, g.stride, g.groups) == (1, 1, 1, 1) && pads == [0; 4] {
            pointwise_conv(xs, weight, self.quant.as_deref())?
        } else if g.groups > 1 && g.groups == out_c && in_per_group == 1 {
            super::depthwise::depthwise_conv2d_padded(xs, weight, g.stride, pads, g.dilation)?
        } else {
            let [top, bottom, left, right] = pads;
            // The symmetric part goes to the conv; only the surplus is padded explicitly.
            let sym = top.min(bottom).min(left).min(right);
            let xs = if pads == [sym; 4] {
                xs.clone()
            } else {
                xs.pad_with_zeros(2, top - sym, bottom - sym)?
                    .pad_with_zeros(3, left - sym, right - sym)?
            };
            if xs.device().is_cpu() && (g.stride, g.groups) == (1, 1) {
                super::shifted_conv::conv2d_shifted(&xs, weight, sym, g.dilation)?
            } else {
                xs.conv2d(weight, sym, g.stride, g.dilation, g.groups)?
            }
        };
        Ok(ys)
    }
}
