//! Int8 quantization: the primitives the calibrator (`mce-calib`), QAT (`mce-train train --qat`) and
//! the device share.
//!
//! * [`fake`]: fake quantization (quantize → dequantize) with a straight-through gradient.
//! * [`scale`]: per-output-channel weight scales, activation histograms and the threshold methods
//!   (max, percentile, minimum MSE, minimum KL).
//! * [`kl`]: the KL divergence of one threshold (entropy calibration) from prefix sums.
//! * [`builder`]: [`QuantVarBuilder`], the VarBuilder and plan every model is built from.
//! * [`layers`]: the hook every conv / linear layer carries, the plan that decides it while a model
//!   is built, the 1×1-conv-as-matmul path, and the per-layer execution choice (`QMatMul` or
//!   dequantized f32).
//! * [`plan`]: plans for recording layers, calibration (histograms) and simulated int8 / QAT.
//! * [`table`]: the calibration table (JSON).
//! * [`timing`]: the measured per-layer choice between `QMatMul` and f32 on this CPU.
//! * [`artifact`]: the quantized artifact (safetensors with i8 weights, `format = "mce-quantized"`).

pub mod artifact;
pub mod builder;
pub mod fake;
pub mod kl;
pub mod layers;
pub mod plan;
pub mod scale;
pub mod table;
pub mod timing;

/// Largest int8 magnitude used (symmetric: −127…127).
pub const QMAX: f32 = 127.0;

pub use artifact::{is_quantized, LoadOptions, QuantSpec, QuantizedModel};
pub use builder::QuantVarBuilder;
pub use fake::{fake_quantize, fake_quantize_per_channel, fake_quantize_weight};
pub use layers::{Exec, LayerHook, LayerKind, QuantPlan};
pub use scale::{channel_scales, Histogram, Method, QuantizedWeight};
pub use table::CalibrationTable;
