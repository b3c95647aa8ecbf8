//! The state the service's threads share: the capture thread, the inference thread and the HTTP
//! handlers all hold one [`Shared`] (the metrics, the latest-frame slot, the stop / reload /
//! health flags, the source's status for `/healthz`, the classes for `/classes`).
//!
//! A leaf of the service: it imports only `metrics`, `slot` and `classes::ClassInfo`, none of
//! which import it back, so the wiring (`pipeline`) and the modules it wires (`capture`, `worker`)
//! as well as `http` all depend on it, and none of them on `pipeline` for it.

use super::classes::ClassInfo;
use super::metrics::Metrics;
use super::slot::FrameSlot;
use mce_core::config::HeadKind;
use serde::Serialize;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, RwLock};
use std::time::Instant;

/// What the source is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SourceState {
    Starting,
    Streaming,
    /// The camera is missing or failed; retrying with back-off.
    Reconnecting,
    /// A non-looping file source played to its end.
    Finished,
    /// The source failed for good (see `last_error`).
    Failed,
    Stopped,
}

/// The source part of `/healthz`.
#[derive(Debug, Clone, Serialize)]
pub struct SourceStatus {
    pub description: String,
    pub state: SourceState,
    pub last_error: Option<String>,
}

/// State shared by the capture thread, the inference thread and the HTTP handlers.
pub struct Shared {
    pub metrics: Metrics,
    pub slot: FrameSlot,
    stop: AtomicBool,
    reload: AtomicBool,
    healthy: AtomicBool,
    source: Mutex<SourceStatus>,
    classes: RwLock<Vec<ClassInfo>>,
    pub model_trained: bool,
    /// The kind of head the loaded model runs (`/healthz`).
    pub model_head: HeadKind,
    pub started: Instant,
}

impl Shared {
    /// Fresh state for a source described as `source` (state `Starting`), with no classes yet;
    /// `started` is now.
    pub(crate) fn new(source: String, model_trained: bool, model_head: HeadKind) -> Self {
        Self {
            metrics: Metrics::new(),
            slot: FrameSlot::new(),
            stop: AtomicBool::new(false),
            reload: AtomicBool::new(false),
            healthy: AtomicBool::new(true),
            source: Mutex::new(SourceStatus {
                description: source,
                state: SourceState::Starting,
                last_error: None,
            }),
            classes: RwLock::new(Vec::new()),
            model_trained,
            model_head,
            started: Instant::now(),
        }
    }

    pub fn stopping(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }
    /// Ask both threads to stop.
    pub(crate) fn request_stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
    }
    pub(crate) fn stop_flag(&self) -> &AtomicBool {
        &self.stop
    }
    /// Ask the inference thread to re-load the classes before its next frame.
    pub(crate) fn request_reload(&self) {
        self.reload.store(true, Ordering::SeqCst);
    }
    pub(crate) fn take_reload_request(&self) -> bool {
        self.reload.swap(false, Ordering::SeqCst)
    }
    /// False after repeated inference failures (the watchdog then stops being fed).
    pub fn inference_healthy(&self) -> bool {
        self.healthy.load(Ordering::SeqCst)
    }
    pub(crate) fn set_healthy(&self, ok: bool) {
        self.healthy.store(ok, Ordering::SeqCst);
    }
    pub fn source_status(&self) -> SourceStatus {
        self.source
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
    pub(crate) fn set_source_state(&self, state: SourceState, error: Option<String>) {
        let mut s = self.source.lock().unwrap_or_else(|p| p.into_inner());
        s.state = state;
        if error.is_some() {
            s.last_error = error;
        }
    }
    pub fn classes(&self) -> Vec<ClassInfo> {
        self.classes
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
    pub(crate) fn set_classes(&self, infos: Vec<ClassInfo>) {
        let names: Vec<String> = infos.iter().map(|c| c.name.clone()).collect();
        self.metrics.reset_classes(&names);
        *self.classes.write().unwrap_or_else(|p| p.into_inner()) = infos;
    }
}
