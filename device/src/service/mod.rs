//! The camera segmentation service (`mce-device serve`) and its demo (`mce-device demo`).
//!
//! ```text
//! source (v4l2 camera | image folder | image) ──capture thread──▶ latest-frame slot (1 frame)
//!   ──inference thread: backbone + query encoding once, MCE head per class, combine, overlay,
//!     JPEG + JSON──▶
//!   latest output ──▶ HTTP (axum): /healthz /metrics /classes /frame.jpg /stream.mjpg /results
//! classes: registry ──(features cached per backbone)──▶ class encodings; SIGHUP re-loads them
//! systemd: READY=1, WATCHDOG=1 from the inference loop, RELOADING=1, STOPPING=1
//! ```
//!
//! | module | concept |
//! |---|---|
//! | [`source`] | the [`source::FrameSource`] trait, URLs, camera / file sources, pixel formats |
//! | [`slot`] | the one-frame mailbox between capture and inference |
//! | [`state`] | the state the threads and HTTP handlers share ([`state::Shared`]), source status |
//! | [`capture`] | the capture loop, back-off and reconnects |
//! | [`worker`] | the inference loop, the steps of one frame, its outputs |
//! | [`pipeline`] | starting and stopping the threads (the wiring) |
//! | [`classes`], [`registry_classes`] | where class encodings come from |
//! | [`results`] | combining classes, per-class statistics, the results JSON |
//! | [`metrics`], [`http`], [`notify`] | Prometheus metrics, HTTP routes, systemd notifications |
//! | [`serve`], [`demo`] | the two subcommands |
//!
//! Imports run one way: [`state`] depends only on the leaves [`metrics`], [`slot`] and
//! [`classes`]; [`capture`], [`worker`] and [`http`] depend on [`state`]; [`pipeline`] wires
//! [`capture`] and [`worker`]; [`serve`] and [`demo`] sit on top. No module imports one that
//! imports it back.

pub mod access;
pub mod capture;
pub mod classes;
pub mod demo;
pub mod http;
pub mod http_server;
pub mod metrics;
pub mod notify;
pub mod pipeline;
pub mod registry_classes;
pub mod results;
pub mod serve;
pub mod slot;
pub mod source;
pub mod state;
pub mod worker;

pub use pipeline::{Pipeline, PipelineOptions, PipelineReport};
pub use worker::{Engine, FrameOutput};
