//! EfficientNet-Lite0 (Tan & Le; the "Lite" variant: ReLU6, no squeeze-excite), frozen, on the
//! original PyTorch key names (`_conv_stem`, `_blocks.N.*`, `_conv_head`, `_fc`; see
//! `EFFICIENTNET_LITE0.md` next to the weights).
//!
//! Every conv is a [`FrozenConvBn`] (BatchNorm folded, eps 1e-3) with TensorFlow "SAME" padding,
//! computed from the input size at each call, so any input size works: a stride-2 conv on an even size
//! pads one pixel more at the bottom/right than at the top/left. Symmetric padding would still
//! classify but shifts every feature map (the golden test catches it).
//!
//! Features (input `H x W`, TF-SAME sizes `ceil(H / stride)`):
//! stride 8 = block 4 output (40 ch), stride 16 = block 10 output (112 ch),
//! stride 32 = block 15 output (320 ch). The head (`_conv_head`, `_bn1`, `_fc`) is only used by
//! [`EfficientNetLite0::classify`] and is optional.

use super::{Backbone, BackboneKind, Features};
use crate::ops::epilogue::Activation;
use crate::ops::frozen::{ConvGeometry, FrozenConvBn};
use crate::quant::QuantVarBuilder;
use candle_core::{DType, Device, Module, Result, Tensor};
use candle_nn::{Linear, VarBuilder};
use std::path::Path;

/// BatchNorm epsilon of the TF reference (`batch_norm_epsilon = 1e-3`; candle's default is 1e-5).
const BN_EPS: f64 = 1e-3;
/// Output channels of the stem.
const STEM_CHANNELS: usize = 32;
/// Channels of the head conv (input of `_fc`).
const HEAD_CHANNELS: usize = 1280;
/// ImageNet-1k classes.
const NUM_CLASSES: usize = 1000;
/// Factor applied to the feature levels. Lite0's block outputs are linear bottlenecks with a mean
/// |x| of about 5 (see the golden statistics), ResNet-50's post-ReLU outputs about 0.5–1; scaling
/// puts both in the range the Kaiming-initialised head expects, so one set of learning rates works
/// (unscaled, the first SGD step of a training run overshoots). Cosine similarities are unaffected.
pub const FEATURE_SCALE: f64 = 0.2;
/// Blocks whose outputs are the stride-8, 16 and 32 feature levels.
pub const TAP_BLOCKS: [usize; 3] = [4, 10, 15];

/// One stage of the TF block string `rR_kK_sSS_eE_iI_oO`.
#[derive(Debug, Clone, Copy)]
struct Stage {
    repeats: usize,
    kernel: usize,
    stride: usize,
    expand: usize,
    in_ch: usize,
    out_ch: usize,
}

const fn stage(
    repeats: usize,
    kernel: usize,
    stride: usize,
    expand: usize,
    i: usize,
    o: usize,
) -> Stage {
    Stage {
        repeats,
        kernel,
        stride,
        expand,
        in_ch: i,
        out_ch: o,
    }
}

/// The seven stages (`efficientnet_lite_builder`, SE suffixes removed, multipliers 1.0/1.0). Only the
/// first block of a stage uses the stage stride and input width; 16 blocks in all.
const STAGES: [Stage; 7] = [
    stage(1, 3, 1, 1, 32, 16),   // r1_k3_s11_e1_i32_o16
    stage(2, 3, 2, 6, 16, 24),   // r2_k3_s22_e6_i16_o24
    stage(2, 5, 2, 6, 24, 40),   // r2_k5_s22_e6_i24_o40
    stage(3, 3, 2, 6, 40, 80),   // r3_k3_s22_e6_i40_o80
    stage(3, 5, 1, 6, 80, 112),  // r3_k5_s11_e6_i80_o112
    stage(4, 5, 2, 6, 112, 192), // r4_k5_s22_e6_i112_o192
    stage(1, 3, 1, 6, 192, 320), // r1_k3_s11_e6_i192_o320
];

/// TF "SAME" padding `(before, after)` of one spatial dim: `out = ceil(in / s)`,
/// `total = max((out - 1) s + k - in, 0)`, the odd pixel goes after.
pub fn same_padding(size: usize, kernel: usize, stride: usize) -> (usize, usize) {
    let out = size.div_ceil(stride);
    let total = ((out.max(1) - 1) * stride + kernel).saturating_sub(size);
    (total / 2, total - total / 2)
}

/// A frozen conv + BN + activation with TF-SAME padding, computed from the input size at each
/// call.
#[derive(Debug, Clone)]
struct SameConvBn {
    conv: FrozenConvBn,
    kernel: usize,
    stride: usize,
    act: Activation,
}

impl SameConvBn {
    /// `shape = (out, in, k)`; `groups = in` makes it depthwise.
    fn new(
        conv: QuantVarBuilder,
        bn: QuantVarBuilder,
        shape: (usize, usize, usize),
        stride: usize,
        groups: usize,
        act: Activation,
    ) -> Result<Self> {
        let geometry = ConvGeometry::new(stride, 0, 1, groups);
        Ok(Self {
            conv: FrozenConvBn::new(conv, bn, shape, geometry, BN_EPS)?,
            kernel: shape.2,
            stride,
            act,
        })
    }

    /// `(B, in, H, W)` -> `act(conv(xs) [+ residual])`: `(B, out, ceil(H / s), ceil(W / s))`.
    fn forward(&self, xs: &Tensor, residual: Option<&Tensor>) -> Result<Tensor> {
        let (_, _, h, w) = xs.dims4()?;
        let (top, bottom) = same_padding(h, self.kernel, self.stride);
        let (left, right) = same_padding(w, self.kernel, self.stride);
        self.conv
            .forward_padded_act(xs, [top, bottom, left, right], self.act, residual)
    }
}

/// Stem: `_conv_stem` 3x3/2 (3 -> 32) + `_bn0` + ReLU6.
#[derive(Debug, Clone)]
struct Stem {
    conv: SameConvBn,
}

impl Stem {
    fn new(vb: &QuantVarBuilder) -> Result<Self> {
        let conv = SameConvBn::new(
            vb.pp("_conv_stem"),
            vb.pp("_bn0"),
            (STEM_CHANNELS, 3, 3),
            2,
            1,
            Activation::Relu6,
        )?;
        Ok(Self { conv })
    }

    /// `(B, 3, H, W)` -> `(B, 32, H/2, W/2)`.
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        self.conv.forward(xs, None)
    }
}

/// Inverted-residual block without SE: [expand 1x1 + BN + ReLU6] -> depthwise kxk/s + BN + ReLU6 ->
/// project 1x1 + BN (linear) [+ input when stride 1 and in == out].
#[derive(Debug, Clone)]
struct MbConvBlock {
    /// `_expand_conv` + `_bn0`; absent when the expand ratio is 1 (block 0).
    expand: Option<SameConvBn>,
    /// `_depthwise_conv` + `_bn1`.
    depthwise: SameConvBn,
    /// `_project_conv` + `_bn2`.
    project: SameConvBn,
    residual: bool,
}

impl MbConvBlock {
    fn new(
        vb: QuantVarBuilder,
        kernel: usize,
        stride: usize,
        expand: usize,
        in_ch: usize,
        out_ch: usize,
    ) -> Result<Self> {
        let mid = in_ch * expand;
        let expand = if expand == 1 {
            None
        } else {
            Some(SameConvBn::new(
                vb.pp("_expand_conv"),
                vb.pp("_bn0"),
                (mid, in_ch, 1),
                1,
                1,
                Activation::Relu6,
            )?)
        };
        let depthwise = SameConvBn::new(
            vb.pp("_depthwise_conv"),
            vb.pp("_bn1"),
            (mid, mid, kernel),
            stride,
            mid,
            Activation::Relu6,
        )?;
        let project = SameConvBn::new(
            vb.pp("_project_conv"),
            vb.pp("_bn2"),
            (out_ch, mid, 1),
            1,
            1,
            Activation::Identity,
        )?;
        Ok(Self {
            expand,
            depthwise,
            project,
            residual: stride == 1 && in_ch == out_ch,
        })
    }

    /// `(B, in, H, W)` -> `(B, out, ceil(H / s), ceil(W / s))`.
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let h = match &self.expand {
            Some(expand) => expand.forward(xs, None)?, // (B, mid, H, W), ReLU6
            None => xs.clone(),
        };
        let h = self.depthwise.forward(&h, None)?; // (B, mid, H/s, W/s), ReLU6
        let residual = self.residual.then_some(xs);
        self.project.forward(&h, residual) // (B, out, H/s, W/s), linear [+ xs]
    }
}

/// Classifier head: `_conv_head` 1x1 (320 -> 1280) + `_bn1` + ReLU6, global average pool, `_fc`.
#[derive(Debug, Clone)]
struct Head {
    conv: SameConvBn,
    fc: Linear,
}

impl Head {
    fn new(vb: &QuantVarBuilder, in_ch: usize) -> Result<Self> {
        let conv = SameConvBn::new(
            vb.pp("_conv_head"),
            vb.pp("_bn1"),
            (HEAD_CHANNELS, in_ch, 1),
            1,
            1,
            Activation::Relu6,
        )?;
        let fc = candle_nn::linear(HEAD_CHANNELS, NUM_CLASSES, vb.pp("_fc").vb().clone())?;
        Ok(Self { conv, fc })
    }

    /// `(B, 320, h, w)` -> logits `(B, 1000)`.
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let xs = self.conv.forward(xs, None)?; // (B, 1280, h, w), ReLU6
        let pooled = xs.mean((2, 3))?; // (B, 1280)
        self.fc.forward(&pooled)
    }
}

/// Frozen EfficientNet-Lite0: stem, 16 MBConv blocks and an optional classifier head.
#[derive(Debug, Clone)]
pub struct EfficientNetLite0 {
    stem: Stem,
    blocks: Vec<MbConvBlock>,
    /// Present when the weights hold `_fc` (and then `_conv_head`/`_bn1`).
    head: Option<Head>,
}

impl EfficientNetLite0 {
    /// Build from a VarBuilder over the original state dict. `_conv_head`, `_bn1` and `_fc` are
    /// loaded only if `_fc.weight` is present; without them [`Self::features`] still works.
    pub fn new<'a>(vb: impl Into<QuantVarBuilder<'a>>) -> Result<Self> {
        let vb = vb.into();
        let stem = Stem::new(&vb)?;
        let mut blocks = Vec::with_capacity(16);
        for st in STAGES {
            for r in 0..st.repeats {
                let (stride, in_ch) = if r == 0 {
                    (st.stride, st.in_ch)
                } else {
                    (1, st.out_ch)
                };
                let vb_block = vb.pp(format!("_blocks.{}", blocks.len()));
                blocks.push(MbConvBlock::new(
                    vb_block, st.kernel, stride, st.expand, in_ch, st.out_ch,
                )?);
            }
        }
        let head = if vb.contains_tensor("_fc.weight") {
            Some(Head::new(&vb, STAGES[STAGES.len() - 1].out_ch)?)
        } else {
            None
        };
        Ok(Self { stem, blocks, head })
    }

    /// Read a safetensors file with the original key names (all f32). Failures (missing or corrupt file,
    /// missing or mis-shaped tensor) are [`crate::Error::Checkpoint`] naming the file.
    pub fn load(path: &Path, device: &Device) -> crate::Result<Self> {
        let fail = |reason: String| crate::Error::Checkpoint {
            path: path.to_path_buf(),
            reason,
        };
        let data = std::fs::read(path)
            .map_err(|e| fail(format!("cannot read EfficientNet-Lite0 weights: {e}")))?;
        let vb = VarBuilder::from_buffered_safetensors(data, DType::F32, device)
            .map_err(|e| fail(format!("not a valid safetensors file: {e}")))?;
        Self::new(vb).map_err(|e| fail(format!("not EfficientNet-Lite0 weights: {e}")))
    }

    /// Whether the classifier head was loaded (so [`Self::classify`] works).
    pub fn has_classifier(&self) -> bool {
        self.head.is_some()
    }

    /// Run the stem and blocks `0..=max(keep)` on `(B, 3, H, W)` and return the outputs of the blocks
    /// listed in `keep` (ascending indices 0..16), in that order. Not detached.
    pub fn block_outputs(&self, images: &Tensor, keep: &[usize]) -> Result<Vec<Tensor>> {
        let Some(&last) = keep.iter().max() else {
            return Ok(Vec::new());
        };
        if last >= self.blocks.len() || keep.windows(2).any(|w| w[0] >= w[1]) {
            candle_core::bail!("block_outputs: {keep:?} must be ascending block indices below 16")
        }
        let mut xs = self.stem.forward(images)?; // (B, 32, H/2, W/2)
        let mut out = Vec::with_capacity(keep.len());
        for (i, block) in self.blocks[..=last].iter().enumerate() {
            xs = block.forward(&xs)?;
            if keep.contains(&i) {
                out.push(xs.clone());
            }
        }
        Ok(out)
    }

    /// ImageNet-1k logits `(B, 1000)` of normalised images `(B, 3, H, W)` (`(p - 127) / 128`).
    /// Errors if the checkpoint had no classifier head.
    pub fn classify(&self, images: &Tensor) -> Result<Tensor> {
        let Some(head) = &self.head else {
            candle_core::bail!(
                "EfficientNet-Lite0: no classifier head loaded (`_conv_head`, `_bn1`, `_fc` absent from the weights)"
            )
        };
        let last = self.blocks.len() - 1;
        let xs = self.block_outputs(images, &[last])?.remove(0); // (B, 320, H/32, W/32)
        head.forward(&xs)
    }
}

impl Backbone for EfficientNetLite0 {
    fn kind(&self) -> BackboneKind {
        BackboneKind::EfficientnetLite0
    }

    /// Stride 8 (40 ch), 16 (112 ch) and 32 (320 ch) taps times [`FEATURE_SCALE`], detached; the
    /// head is not run.
    fn features(&self, images: &Tensor) -> Result<Features> {
        let taps = self.block_outputs(images, &TAP_BLOCKS)?;
        let scale = |t: &Tensor| -> Result<Tensor> { Ok((t * FEATURE_SCALE)?.detach()) };
        let [level2, level3, level4] = [scale(&taps[0])?, scale(&taps[1])?, scale(&taps[2])?];
        Ok(Features {
            level2,
            level3,
            level4,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_padding_matches_tf() {
        // stride 1: symmetric k/2.
        assert_eq!(same_padding(112, 3, 1), (1, 1));
        assert_eq!(same_padding(7, 5, 1), (2, 2));
        // stride 2, even sizes: extra pixel after.
        assert_eq!(same_padding(224, 3, 2), (0, 1));
        assert_eq!(same_padding(56, 5, 2), (1, 2));
        // stride 2, odd sizes: symmetric.
        assert_eq!(same_padding(225, 3, 2), (1, 1));
        assert_eq!(same_padding(15, 5, 2), (2, 2));
        // 1x1.
        assert_eq!(same_padding(10, 1, 1), (0, 0));
    }

    #[test]
    fn stage_table_has_sixteen_blocks_and_the_tap_channels() {
        assert_eq!(STAGES.iter().map(|s| s.repeats).sum::<usize>(), 16);
        let outs: Vec<usize> = STAGES
            .iter()
            .flat_map(|s| (0..s.repeats).map(move |_| s.out_ch))
            .collect();
        let taps = TAP_BLOCKS.map(|b| outs[b]);
        assert_eq!(taps, BackboneKind::EfficientnetLite0.channels());
    }
}
