//! The camera segmentation service (`mce-device serve`) and its demo (`mce-device demo`).
//!
//! ```text
//! source (v4l2 camera | image folder | image) ──capture thread──▶ latest-frame slot (1 frame)
//!   ──inference thread: backbone once + MCE head per class, combine, overlay, JPEG──▶
//!   latest output ──▶ HTTP (axum): /healthz /metrics /classes /frame.jpg /stream.mjpg /results
//! classes: registry ──(features cached per backbone)──▶ class encodings; SIGHUP re-loads them
//! systemd: READY=1, WATCHDOG=1 from the inference loop, RELOADING=1, STOPPING=1
//! ```
//!
//! | module | concept |
//! |---|---|
//! | [`source`] | the [`source::FrameSource`] trait, URLs, camera / file sources, pixel formats |
//! | [`slot`] | the one-frame mailbox between capture and inference |
//! | [`capture`] | the capture loop, back-off and reconnects |
//! | [`worker`] | the inference loop and its outputs |
//! | [`pipeline`] | starting and stopping the threads; shared state |
//! | [`classes`], [`registry_classes`] | where class encodings come from |
//! | [`results`] | combining classes, per-class statistics, the results JSON |
//! | [`metrics`], [`http`], [`notify`] | Prometheus metrics, HTTP routes, systemd notifications |
//! | [`serve`], [`demo`] | the two subcommands |

pub mod capture;
pub mod classes;
pub mod demo;
pub mod http;
pub mod metrics;
pub mod notify;
pub mod pipeline;
pub mod registry_classes;
pub mod results;
pub mod serve;
pub mod slot;
pub mod source;
pub mod worker;

pub use pipeline::{Pipeline, PipelineOptions, PipelineReport};
pub use worker::{Engine, FrameOutput};
