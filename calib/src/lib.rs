//! # mce-calib
//!
//! Post-training int8 calibration and quantization of trained MCE models for the device, and a report
//! of the accuracy lost and the speed won. The primitives (fake quantization, scales, histograms,
//! the artifact format) live in `mce_core::quant`; this crate holds the policy:
//!
//! * [`calibrate`]: statistics on training-class episodes → calibration table → int8 artifact.
//! * [`frames`]: statistics on the user's own frames segmented against their exemplars.
//! * [`report`]: float vs simulated int8 per method vs the device artifact vs QAT on held-out episodes.
//! * [`cli`]: the `mce-calib` subcommands `calibrate`, `quantize` and `report`.

pub mod calibrate;
pub mod cli;
pub mod frames;
pub mod report;
