//! # mce-core
//!
//! The MCE few-shot segmentation model (Masked Cross-image Encoding, Xu et al.) on candle, and
//! everything around it that both the trainer and the device need.
//!
//! Data flow of one episode:
//!
//! ```text
//! image files ──preprocess──▶ normalised tensors ──backbone (frozen)──▶ Features {level2, level3, level4}
//!                                                                        │
//!   support masks ──preprocess──▶ binary masks ───────────────────────────┤
//!                                                                        ▼
//!         model::Mce = config + one Head (paper: mid-level features, MAP prototype, similarity
//!         map, masked cross-image encoding at three levels; matching: similarity map and
//!         nearest-neighbour priors) ─ DecoderInput ─ ASPP decoder ──▶ 2-class logits ──▶ map back
//!                                                                        │
//!                                                   metrics (mIoU, FB-IoU) ◀┘
//! ```
//!
//! Modules: [`backbone`] (ResNet-50 dilated, EfficientNet-Lite0), [`model`] (the heads) and their
//! [`config`] (with the migration of older checkpoints' configs), [`checkpoint`] (safetensors +
//! serde config), [`preprocess`], [`metrics`], [`inference`] (support encoding cache for the
//! device), [`ops`] (differentiable helpers and kernels candle lacks), [`quant`] (int8: plans passed
//! to the model through a [`quant::QuantVarBuilder`], calibration, the artifact), [`alloc`] (the
//! binaries' allocator setting: freed memory kept for the next frame or step).

pub mod alloc;
pub mod backbone;
pub mod checkpoint;
pub mod config;
pub mod error;
pub mod image_file;
pub mod inference;
pub mod metrics;
pub mod model;
pub mod ops;
pub mod preprocess;
pub mod quant;

pub use backbone::{AnyBackbone, Backbone, BackboneKind, Features};
pub use config::MceConfig;
pub use error::{Error, Result};
pub use model::Mce;
