//! The head's 2-D convolution: candle_nn's `Conv2d` names (`weight`, `bias`) and initialisation,
//! but 1×1 convolutions run as a matrix product, which is ~3× faster than candle's 1×1 `conv2d`
//! forward and backward on CPU (the head has a dozen of them), and on the CPU the other stride-1
//! convolutions (the decoder's dilated 3×3s) run as one GEMM and shifted sums
//! ([`crate::ops::shifted_conv`]).
//!
//! Each conv carries an optional quantization hook ([`crate::quant::layers`]), given at
//! construction by the plan of its [`QuantVarBuilder`]; without one it is a plain f32 conv.

use crate::ops::shifted_conv::{sum_shifted, tap_products, tap_weights};
use crate::quant::layers::{pointwise_conv, LayerHook, LayerInfo, LayerKind};
use crate::quant::QuantVarBuilder;
use candle_core::{Module, Result, Tensor};
use candle_nn::{init, Conv2dConfig, Init};
use std::sync::Arc;

/// A trainable convolution (stride 1, groups 1).
#[derive(Debug, Clone)]
pub struct Conv {
    weight: Tensor,
    bias: Option<Tensor>,
    config: Conv2dConfig,
    quant: Option<Arc<LayerHook>>,
    /// The weight with its taps in front ([`tap_weights`]), packed once when the weight is fixed
    /// (not a trainable variable) and the conv is not pointwise.
    taps: Option<Tensor>,
}

impl Conv {
    /// `k × k` convolution from `in_c` to `out_c` channels, with or without bias.
    pub fn new(
        in_c: usize,
        out_c: usize,
        k: usize,
        config: Conv2dConfig,
        bias: bool,
        vb: QuantVarBuilder,
    ) -> Result<Self> {
        let bound = 1.0 / ((in_c * k * k) as f64).sqrt();
        let bias = bias.then_some(Init::Uniform {
            lo: -bound,
            up: bound,
        });
        Self::with_init(
            (in_c, out_c, k),
            config,
            init::DEFAULT_KAIMING_NORMAL,
            bias,
            vb,
        )
    }

    /// A convolution `(in_c, out_c, k)` with the given initialisations (bias: `None` for none).
    pub fn with_init(
        (in_c, out_c, k): (usize, usize, usize),
        config: Conv2dConfig,
        weight_init: Init,
        bias_init: Option<Init>,
        vb: QuantVarBuilder,
    ) -> Result<Self> {
        let weight = vb.get_with_hints((out_c, in_c, k, k), "weight", weight_init)?;
        let bias = bias_init
            .map(|b| vb.get_with_hints(out_c, "bias", b))
            .transpose()?;
        let pointwise = k == 1 && (config.padding, config.stride, config.groups) == (0, 1, 1);
        let quant = vb.hook(LayerInfo {
            name: vb.prefix(),
            kind: LayerKind::Conv { pointwise },
            weight: &weight,
            bias: bias.as_ref(),
        })?;
        let taps = match weight.is_variable() || pointwise {
            true => None,
            false => Some(tap_weights(&weight)?.contiguous()?),
        };
        Ok(Self {
            weight,
            bias,
            config,
            quant,
            taps,
        })
    }
}

/// A convolution taken apart at its linearity: the products of each part of its input (a channel
/// range) with the weight, summed, then shifted into place ([`crate::ops::shifted_conv`]). The
/// decoder's first layer runs this way so that the query's share is computed once per frame.
impl Conv {
    /// Whether [`Conv::products`] applies: stride 1, groups 1 and float arithmetic (a conv that
    /// calibrates or fake-quantizes sees its whole input at once).
    pub fn splits(&self) -> bool {
        let plain = self.quant.as_ref().is_none_or(|h| h.is_plain());
        (self.config.stride, self.config.groups) == (1, 1) && plain
    }

    /// `W[:, channels] · part` for every tap: `part (B, c, H, W)` → `(B, taps·O, H, W)`; a
    /// `(B, c, 1, 1)` part (a vector tiled over the grid) gives `(B, taps·O, 1, 1)`.
    pub fn products(&self, part: &Tensor, channels: std::ops::Range<usize>) -> Result<Tensor> {
        let taps = self.taps_of(&self.weight)?;
        tap_products(&taps.narrow(1, channels.start, channels.len())?, part)
    }

    /// `weight` (this conv's, or its fake-quantized copy) packed with its taps in front: the copy
    /// packed at construction when `weight` is the fixed weight itself, else packed now.
    fn taps_of(&self, weight: &Tensor) -> Result<Tensor> {
        let fake = self.quant.as_ref().is_some_and(|h| h.fake_weight);
        match (&self.taps, fake) {
            (Some(t), false) => Ok(t.clone()),
            _ => tap_weights(weight),
        }
    }

    /// The output from the summed products of all parts: shifted into place, plus the bias.
    pub fn from_products(&self, z: &Tensor) -> Result<Tensor> {
        let ys = self.shifted(z)?;
        match &self.bias {
            Some(b) => ys.broadcast_add(&b.reshape((1, ys.dim(1)?, 1, 1))?),
            None => Ok(ys),
        }
    }

    /// The summed products shifted into place (no bias).
    fn shifted(&self, z: &Tensor) -> Result<Tensor> {
        let (out_c, _, kh, kw) = self.weight.dims4()?;
        let c = &self.config;
        sum_shifted(z, (out_c, kh, kw), c.padding, c.dilation)
    }
}

/// `Conv2d` with bias, candle_nn's `conv2d` signature.
pub fn conv2d(
    in_c: usize,
    out_c: usize,
    k: usize,
    cfg: Conv2dConfig,
    vb: QuantVarBuilder,
) -> Result<Conv> {
    Conv::new(in_c, out_c, k, cfg, true, vb)
}

/// `Conv2d` without bias.
pub fn conv2d_no_bias(
    in_c: usize,
    out_c: usize,
    k: usize,
    cfg: Conv2dConfig,
    vb: QuantVarBuilder,
) -> Result<Conv> {
    Conv::new(in_c, out_c, k, cfg, false, vb)
}

impl Module for Conv {
    /// `(B, I, H, W)` → `(B, O, H', W')`.
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let (xs, weight) = match &self.quant {
            Some(h) => (h.input(xs)?, h.weight(&self.weight)?),
            None => (xs.clone(), self.weight.clone()),
        };
        let (out_c, _, kh, kw) = weight.dims4()?;
        let c = &self.config;
        let ys = if (kh, kw, c.padding, c.stride) == (1, 1, 0, 1) {
            pointwise_conv(&xs, &weight, self.quant.as_deref())?
        } else if xs.device().is_cpu() && (c.stride, c.groups) == (1, 1) {
            self.shifted(&tap_products(&self.taps_of(&weight)?, &xs)?)?
        } else {
            xs.conv2d(&weight, c.padding, c.stride, c.dilation, c.groups)?
        };
        match &self.bias {
            Some(b) => ys.broadcast_add(&b.reshape((1, out_c, 1, 1))?),
            None => Ok(ys),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    #[test]
    fn pointwise_path_matches_candle_conv() -> Result<()> {
        let dev = Device::Cpu;
        let vm = candle_nn::VarMap::new();
        let vb = candle_nn::VarBuilder::from_varmap(&vm, DType::F32, &dev);
        let ours = conv2d(6, 4, 1, Default::default(), vb.pp("a").into())?;
        let theirs = candle_nn::conv2d(6, 4, 1, Default::default(), vb.pp("a"))?; // same variables
        let x = Tensor::randn(0f32, 1., (2, 6, 5, 3), &dev)?;
        let d = (ours.forward(&x)? - theirs.forward(&x)?)?
            .abs()?
            .max_all()?
            .to_scalar::<f32>()?;
        assert!(d < 1e-5, "{d}");
        let three = conv2d(
            6,
            4,
            3,
            Conv2dConfig {
                padding: 2,
                dilation: 2,
                ..Default::default()
            },
            vb.pp("b").into(),
        )?;
        let cfg = Conv2dConfig {
            padding: 2,
            dilation: 2,
            ..Default::default()
        };
        let theirs3 = candle_nn::conv2d(6, 4, 3, cfg, vb.pp("b"))?.forward(&x)?;
        assert_eq!(three.forward(&x)?.dims(), &[2, 4, 5, 3]);
        // trainable (packed per call) and fixed weights (packed once at construction)
        let fixed_vb = candle_nn::VarBuilder::from_tensors(
            vm.data()
                .lock()
                .unwrap()
                .iter()
                .map(|(k, v)| (k.clone(), v.as_tensor().detach()))
                .collect(),
            DType::F32,
            &dev,
        );
        let fixed = conv2d(6, 4, 3, cfg, fixed_vb.pp("b").into())?;
        for y in [three.forward(&x)?, fixed.forward(&x)?] {
            let d = (y - &theirs3)?.abs()?.max_all()?.to_scalar::<f32>()?;
            assert!(d < 1e-5, "{d}");
        }
        Ok(())
    }
}
