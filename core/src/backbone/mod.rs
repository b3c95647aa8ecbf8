//! Frozen ImageNet backbones. Each returns the three feature levels MCE uses, in the roles of ResNet's
//! `layer2` / `layer3` / `layer4`, detached from the autograd graph (the backbone is never trained).

pub mod efficientnet;
pub mod resnet;

use candle_core::{Module, Tensor};
use serde::{Deserialize, Serialize};

/// Which backbone a model uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BackboneKind {
    /// torchvision ResNet-50, layer3/layer4 dilated (output stride 8 at all levels).
    Resnet50,
    /// EfficientNet-Lite0, taps at strides 8/16/32.
    EfficientnetLite0,
}

impl BackboneKind {
    /// Channels of the three levels (layer2, layer3, layer4 roles).
    pub fn channels(self) -> [usize; 3] {
        match self {
            BackboneKind::Resnet50 => [512, 1024, 2048],
            BackboneKind::EfficientnetLite0 => [40, 112, 320],
        }
    }

    /// Output strides of the three levels.
    pub fn strides(self) -> [usize; 3] {
        match self {
            BackboneKind::Resnet50 => [8, 8, 8],
            BackboneKind::EfficientnetLite0 => [8, 16, 32],
        }
    }

    /// Per-channel (mean, std) in 0..255 pixel units that the weights were trained with.
    pub fn normalization(self) -> ([f32; 3], [f32; 3]) {
        match self {
            BackboneKind::Resnet50 => (
                [0.485 * 255.0, 0.456 * 255.0, 0.406 * 255.0],
                [0.229 * 255.0, 0.224 * 255.0, 0.225 * 255.0],
            ),
            BackboneKind::EfficientnetLite0 => ([127.0; 3], [128.0; 3]),
        }
    }

    /// Feature-grid side length for a square input of `size` pixels at the given stride,
    /// following each backbone's padding rule.
    pub fn grid(self, size: usize, stride: usize) -> usize {
        match self {
            // conv/pool with symmetric padding: floor((n - 1) / 2) + 1 per stride-2 step.
            BackboneKind::Resnet50 => {
                let mut n = size;
                let mut s = 1;
                while s < stride {
                    n = (n - 1) / 2 + 1;
                    s *= 2;
                }
                n
            }
            // TF "same": ceil(n / 2) per stride-2 step.
            BackboneKind::EfficientnetLite0 => {
                let mut n = size;
                let mut s = 1;
                while s < stride {
                    n = n.div_ceil(2);
                    s *= 2;
                }
                n
            }
        }
    }
}

/// The three feature levels of one batch of images, each `(B, C_l, H_l, W_l)`.
#[derive(Debug, Clone)]
pub struct Features {
    /// layer2 role: stride 8.
    pub level2: Tensor,
    /// layer3 role: stride 8 (ResNet) or 16 (Lite0).
    pub level3: Tensor,
    /// layer4 role: stride 8 (ResNet) or 32 (Lite0).
    pub level4: Tensor,
}

impl Features {
    /// The levels in order 2, 3, 4.
    pub fn levels(&self) -> [&Tensor; 3] {
        [&self.level2, &self.level3, &self.level4]
    }

    /// Select images `index` along the batch axis (keeps the batch axis, length `len`).
    pub fn narrow(&self, index: usize, len: usize) -> candle_core::Result<Features> {
        Ok(Features {
            level2: self.level2.narrow(0, index, len)?,
            level3: self.level3.narrow(0, index, len)?,
            level4: self.level4.narrow(0, index, len)?,
        })
    }
}

/// A frozen backbone: normalised images `(B, 3, H, W)` in, three detached feature levels out.
pub trait Backbone: Send + Sync {
    /// Which architecture this is.
    fn kind(&self) -> BackboneKind;
    /// Extract the three levels. Outputs carry no gradient.
    fn features(&self, images: &Tensor) -> candle_core::Result<Features>;
}

/// Either backbone, chosen at run time.
pub enum AnyBackbone {
    Resnet50(resnet::ResNet50),
    Lite0(efficientnet::EfficientNetLite0),
}

impl Backbone for AnyBackbone {
    fn kind(&self) -> BackboneKind {
        match self {
            AnyBackbone::Resnet50(_) => BackboneKind::Resnet50,
            AnyBackbone::Lite0(_) => BackboneKind::EfficientnetLite0,
        }
    }

    fn features(&self, images: &Tensor) -> candle_core::Result<Features> {
        match self {
            AnyBackbone::Resnet50(m) => m.features(images),
            AnyBackbone::Lite0(m) => m.features(images),
        }
    }
}

impl AnyBackbone {
    /// Build the backbone named by `kind` from a VarBuilder holding its (torchvision / original)
    /// weights, or a [`QuantVarBuilder`](crate::quant::QuantVarBuilder) with a quantization plan.
    pub fn new<'a>(
        kind: BackboneKind,
        vb: impl Into<crate::quant::QuantVarBuilder<'a>>,
    ) -> candle_core::Result<Self> {
        let vb = vb.into();
        Ok(match kind {
            BackboneKind::Resnet50 => AnyBackbone::Resnet50(resnet::ResNet50::new(vb)?),
            BackboneKind::EfficientnetLite0 => {
                AnyBackbone::Lite0(efficientnet::EfficientNetLite0::new(vb)?)
            }
        })
    }
}

/// A `Module` wrapper so a backbone stage can be used where candle expects one.
pub(crate) fn apply_all<M: Module>(xs: &Tensor, layers: &[M]) -> candle_core::Result<Tensor> {
    layers.iter().try_fold(xs.clone(), |x, l| l.forward(&x))
}
