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
use std::time::{Duration, Instant};

/// A source that has delivered no frame for this long while starting or reconnecting makes the
/// service unhealthy (so systemd's watchdog restarts it).
pub const SOURCE_STALL_LIMIT: Duration = Duration::from_secs(60);

/// The service's health, as `/healthz` reports it and the watchdog acts on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Health {
    Ok,
    /// Working towards frames (a camera being re-opened); still answered 200.
    Degraded,
    /// `/healthz` answers 503 and the systemd watchdog is no longer fed.
    Unhealthy,
}

/// The health rules, one pure function: inference failing, a failed source, a source that
/// finished without a single frame, or one that has produced nothing for longer than `stall`
/// is unhealthy; a reconnecting source is degraded.
pub fn judge(
    inference_healthy: bool,
    source: SourceState,
    frames_in: u64,
    since_last_frame: Duration,
    stall: Duration,
) -> Health {
    use SourceState::*;
    match source {
        _ if !inference_healthy => Health::Unhealthy,
        Failed => Health::Unhealthy,
        Finished if frames_in == 0 => Health::Unhealthy,
        Starting | Reconnecting if since_last_frame > stall => Health::Unhealthy,
        Reconnecting => Health::Degraded,
        _ => Health::Ok,
    }
}

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
    /// When the source last delivered a frame (the start before the first).
    last_frame: Mutex<Instant>,
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
            last_frame: Mutex::new(Instant::now()),
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
    /// False after repeated inference failures (see [`Shared::health`] for the whole picture).
    pub fn inference_healthy(&self) -> bool {
        self.healthy.load(Ordering::SeqCst)
    }
    pub(crate) fn set_healthy(&self, ok: bool) {
        self.healthy.store(ok, Ordering::SeqCst);
    }
    /// The source delivered a frame now.
    pub(crate) fn frame_arrived(&self) {
        *self.last_frame.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
    }
    /// The service's health now ([`judge`]).
    pub fn health(&self) -> Health {
        let since = self
            .last_frame
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .elapsed();
        judge(
            self.inference_healthy(),
            self.source_status().state,
            self.metrics.frames_in.get(),
            since,
            SOURCE_STALL_LIMIT,
        )
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_rules() {
        let (s, long) = (Duration::from_secs(1), Duration::from_secs(60));
        let j = |ok, state, n, since| judge(ok, state, n, since, long);
        use SourceState::*;
        assert_eq!(j(true, Streaming, 5, s), Health::Ok);
        assert_eq!(j(false, Streaming, 5, s), Health::Unhealthy);
        assert_eq!(j(true, Failed, 5, s), Health::Unhealthy);
        assert_eq!(j(true, Finished, 0, s), Health::Unhealthy);
        assert_eq!(j(true, Finished, 3, long * 10), Health::Ok);
        assert_eq!(j(true, Reconnecting, 3, s), Health::Degraded);
        assert_eq!(j(true, Reconnecting, 3, long * 2), Health::Unhealthy);
        assert_eq!(j(true, Starting, 0, s), Health::Ok);
        assert_eq!(j(true, Starting, 0, long * 2), Health::Unhealthy);
        assert_eq!(j(true, Stopped, 0, long * 2), Health::Ok);
    }
}
