//! # mce-calib
//!
//! Post-training calibration and int8 quantization of trained MCE models for the device, with a report
//! of accuracy lost and speed won. Not implemented yet: this crate is an empty skeleton reserved by
//! the workspace layout (see the calibration issue). It deliberately exports nothing.
