//! Quantization hooks inside the model's conv and linear layers, and how each layer executes.
//!
//! A model is built from a [`QuantVarBuilder`](super::builder::QuantVarBuilder): a VarBuilder and,
//! optionally, a [`QuantPlan`]. With a plan, every conv / linear layer shows it its name (its
//! VarBuilder prefix, i.e. its tensor names), kind and weight, and keeps the [`LayerHook`] the plan
//! returns. Without a plan nothing changes. At forward time the hook may
//!
//! * observe the layer's input (calibration statistics),
//! * fake-quantize the input with a per-tensor scale (simulated int8 activations, QAT),
//! * fake-quantize the weight per output channel with the STE (QAT),
//! * run the layer as candle's quantized matmul ([`Exec::QMatMul`], Q8_0) instead of f32.

use super::builder::QuantVarBuilder;
use super::fake::{fake_quantize, fake_quantize_weight};
use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{Module, Result, Tensor};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// What kind of layer a hook sits in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LayerKind {
    /// A 2-D convolution; `pointwise` when 1×1, stride 1, groups 1, no padding (a matmul).
    Conv { pointwise: bool },
    /// A linear layer on `(…, in)` inputs.
    Linear,
}

impl LayerKind {
    /// Whether the layer is a matrix product over its input channels.
    pub fn is_matmul(self) -> bool {
        matches!(
            self,
            LayerKind::Linear | LayerKind::Conv { pointwise: true }
        )
    }
}

/// How a layer runs on the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Exec {
    /// candle's quantized matmul (`QMatMul`, Q8_0 blocks of 32 input channels) on CPU.
    QMatMul,
    /// The int8 weight is dequantized once at load and the layer runs in f32.
    Dequantized,
}

/// Q8_0 block size: `QMatMul` needs the input width to be a multiple of it.
pub const Q8_BLOCK: usize = 32;

/// The CPU execution choice of a layer: `QMatMul` for linear layers (attention projections, whose
/// tokens are already rows) whose input width is a multiple of the Q8_0 block; everything else is
/// dequantized at load. 1×1 convolutions stay f32 although they are matmuls: they would pay two
/// transposes around every `QMatMul` call, and with them the int8 model measured 449–479 ms per
/// frame against 338–352 ms for float (EVAL.md).
pub fn cpu_exec(kind: LayerKind, in_features: usize) -> Exec {
    if kind == LayerKind::Linear && in_features.is_multiple_of(Q8_BLOCK) {
        Exec::QMatMul
    } else {
        Exec::Dequantized
    }
}

/// What a layer shows the plan while it is built.
pub struct LayerInfo<'a> {
    /// VarBuilder prefix, e.g. `decoder.cls` or `backbone._blocks.3._expand_conv`.
    pub name: String,
    pub kind: LayerKind,
    /// The weight used at forward time (`(O, I, k, k)` conv, `(O, I)` linear; BN folded).
    pub weight: &'a Tensor,
    pub bias: Option<&'a Tensor>,
}

/// Receives every input a hooked layer sees (calibration).
pub trait Observer: Send + Sync {
    fn observe(&self, layer: &str, input: &Tensor) -> Result<()>;
}

/// Decides each layer's hook while a model is built.
pub trait QuantPlan {
    fn hook(&self, layer: &LayerInfo) -> Result<Option<LayerHook>>;
}

/// The quantization behaviour of one layer.
#[derive(Clone, Default)]
pub struct LayerHook {
    pub name: String,
    /// Record inputs (calibration).
    pub observer: Option<Arc<dyn Observer>>,
    /// Fake-quantize the input with this per-tensor scale.
    pub input_scale: Option<f32>,
    /// Fake-quantize the weight per output channel at every forward (QAT; STE gradient).
    pub fake_weight: bool,
    /// Run as a quantized matmul.
    pub matmul: Option<Arc<QMatMul>>,
}

impl std::fmt::Debug for LayerHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LayerHook")
            .field("name", &self.name)
            .field("observer", &self.observer.is_some())
            .field("input_scale", &self.input_scale)
            .field("fake_weight", &self.fake_weight)
            .field("matmul", &self.matmul.is_some())
            .finish()
    }
}

impl LayerHook {
    /// Whether this hook leaves a conv's arithmetic as float: nothing observed, nothing
    /// fake-quantized (an int8 artifact's dequantized layers).
    pub fn is_plain(&self) -> bool {
        self.observer.is_none() && self.input_scale.is_none() && !self.fake_weight
    }

    /// The layer's input after observation / fake quantization.
    pub fn input(&self, xs: &Tensor) -> Result<Tensor> {
        if let Some(o) = &self.observer {
            o.observe(&self.name, xs)?;
        }
        match self.input_scale {
            Some(s) => fake_quantize(xs, s),
            None => Ok(xs.clone()),
        }
    }

    /// The weight to use in this forward pass.
    pub fn weight(&self, w: &Tensor) -> Result<Tensor> {
        if self.fake_weight {
            fake_quantize_weight(w)
        } else {
            Ok(w.clone())
        }
    }

    /// `(…, in) → (…, out)` through the quantized matmul, if this layer has one.
    pub fn matmul(&self, xs: &Tensor) -> Option<Result<Tensor>> {
        self.matmul
            .as_ref()
            .map(|m| xs.contiguous().and_then(|x| m.forward(&x)))
    }
}

/// A 1×1, stride-1, unpadded convolution as a matrix product, through the hook's quantized matmul
/// when it has one: `xs (B, I, H, W)`, `weight (O, I, 1, 1)` → `(B, O, H, W)`, no bias. candle's
/// 1×1 `conv2d` is several times slower on CPU, forward and backward.
pub fn pointwise_conv(xs: &Tensor, weight: &Tensor, hook: Option<&LayerHook>) -> Result<Tensor> {
    let (b, i, h, w) = xs.dims4()?;
    let out_c = weight.dim(0)?;
    let ys = match hook.and_then(|q| q.matmul.as_ref()) {
        // (B, H·W, I) x (O, I)ᵀ -> (B, H·W, O)
        Some(m) => m
            .forward(&xs.flatten_from(2)?.transpose(1, 2)?.contiguous()?)?
            .transpose(1, 2)?,
        // (O, I) x (B, I, H·W) -> (B, O, H·W)
        None => weight
            .reshape((out_c, i))?
            .broadcast_matmul(&xs.flatten_from(2)?)?,
    };
    ys.reshape((b, out_c, h, w))
}

/// Q8_0 `QMatMul` of a weight `(O, I, …)` viewed as `(O, I·…)`.
pub fn q8_matmul(weight: &Tensor) -> Result<Arc<QMatMul>> {
    let w = weight.flatten_from(1)?.contiguous()?;
    let q = QTensor::quantize(&w, GgmlDType::Q8_0)?;
    Ok(Arc::new(QMatMul::from_qtensor(q)?))
}

/// A linear layer with candle_nn's names and initialisation (`weight (out, in)`, `bias (out,)`)
/// and an optional quantization hook.
#[derive(Debug, Clone)]
pub struct Linear {
    inner: candle_nn::Linear,
    quant: Option<Arc<LayerHook>>,
}

/// `candle_nn::linear` with a quantization hook.
pub fn linear(in_dim: usize, out_dim: usize, vb: QuantVarBuilder) -> Result<Linear> {
    let inner = candle_nn::linear(in_dim, out_dim, vb.vb().clone())?;
    let quant = vb.hook(LayerInfo {
        name: vb.prefix(),
        kind: LayerKind::Linear,
        weight: inner.weight(),
        bias: inner.bias(),
    })?;
    Ok(Linear { inner, quant })
}

impl Module for Linear {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let Some(h) = &self.quant else {
            return self.inner.forward(xs);
        };
        let xs = h.input(xs)?;
        let ys = match h.matmul(&xs) {
            Some(ys) => ys?,
            None => {
                let w = h.weight(self.inner.weight())?;
                return candle_nn::Linear::new(w, self.inner.bias().cloned()).forward(&xs);
            }
        };
        match self.inner.bias() {
            Some(b) => ys.broadcast_add(b),
            None => Ok(ys),
        }
    }
}
