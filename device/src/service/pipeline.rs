//! The frame pipeline: capture thread → latest-frame slot → inference thread → published results.
//!
//! ```text
//! FrameSource ─(capture thread)─▶ FrameSlot (1 frame; stale ones dropped + counted)
//!     ─(inference thread: backbone once, MCE head per class, combine, overlay, JPEG)─▶
//!     watch (latest FrameOutput: /frame.jpg, /results, /stream.mjpg) + broadcast (every output)
//! ```
//!
//! Both worker threads are plain OS threads (capture and inference block); the HTTP server and
//! signal handling run on tokio and only read what is published here.

use super::capture::{self, Backoff};
use super::classes::ClassInfo;
use super::metrics::Metrics;
use super::notify::Notifier;
use super::slot::{FrameSlot, SlotStats};
use super::source::FrameSource;
use super::worker::{self, Engine, FrameOutput};
use serde::Serialize;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tokio::sync::{broadcast, watch};

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
    pub started: Instant,
}

impl Shared {
    pub fn stopping(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }
    pub(crate) fn stop_flag(&self) -> &AtomicBool {
        &self.stop
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

/// Pipeline settings.
#[derive(Debug, Clone)]
pub struct PipelineOptions {
    /// Never drop frames: capture waits for inference (file batches, the demo).
    pub lossless: bool,
    /// Quality of the overlay JPEG (1–100).
    pub jpeg_quality: u8,
    /// Reconnect back-off for cameras.
    pub backoff: Backoff,
}

impl Default for PipelineOptions {
    fn default() -> Self {
        Self {
            lossless: false,
            jpeg_quality: 80,
            backoff: Backoff::default(),
        }
    }
}

/// Frame counts at shutdown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct PipelineReport {
    pub captured: u64,
    pub processed: u64,
    pub dropped: u64,
    pub corrupt: u64,
    pub inference_errors: u64,
    #[serde(skip)]
    pub slot: SlotStats,
}

/// A running pipeline. Dropping it without [`Pipeline::shutdown`] leaves the threads running.
pub struct Pipeline {
    shared: Arc<Shared>,
    latest: watch::Receiver<Option<Arc<FrameOutput>>>,
    all: broadcast::Sender<Arc<FrameOutput>>,
    capture: Option<JoinHandle<()>>,
    worker: Option<JoinHandle<()>>,
}

impl Pipeline {
    /// Start capture and inference threads.
    pub fn start(
        source: Box<dyn FrameSource>,
        engine: Engine,
        options: PipelineOptions,
        notifier: Arc<Notifier>,
    ) -> std::io::Result<Self> {
        Ok(Self::start_subscribed(source, engine, options, notifier)?.0)
    }

    /// [`Pipeline::start`], with a receiver subscribed before the first frame, so that it sees
    /// every output (up to 16 unread ones; keep up or see `Lagged`).
    pub fn start_subscribed(
        source: Box<dyn FrameSource>,
        engine: Engine,
        options: PipelineOptions,
        notifier: Arc<Notifier>,
    ) -> std::io::Result<(Self, broadcast::Receiver<Arc<FrameOutput>>)> {
        let shared = Arc::new(Shared {
            metrics: Metrics::new(),
            slot: FrameSlot::new(),
            stop: AtomicBool::new(false),
            reload: AtomicBool::new(false),
            healthy: AtomicBool::new(true),
            source: Mutex::new(SourceStatus {
                description: source.describe(),
                state: SourceState::Starting,
                last_error: None,
            }),
            classes: RwLock::new(Vec::new()),
            model_trained: engine.segmenter.trained,
            started: Instant::now(),
        });
        shared.set_classes(super::classes::infos(&engine.classes));
        let (latest_tx, latest) = watch::channel(None);
        let (all, first) = broadcast::channel(16);
        let worker = {
            let (shared, all, q) = (shared.clone(), all.clone(), options.jpeg_quality);
            std::thread::Builder::new()
                .name("mce-inference".into())
                .spawn(move || worker::run(engine, shared, latest_tx, all, notifier, q))?
        };
        let capture = {
            let shared = shared.clone();
            let (lossless, backoff) = (options.lossless, options.backoff);
            std::thread::Builder::new()
                .name("mce-capture".into())
                .spawn(move || capture::run(source, shared, lossless, backoff))?
        };
        let pipeline = Self {
            shared,
            latest,
            all,
            capture: Some(capture),
            worker: Some(worker),
        };
        Ok((pipeline, first))
    }

    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// The latest output (None before the first frame); closes when the pipeline stops.
    pub fn latest(&self) -> watch::Receiver<Option<Arc<FrameOutput>>> {
        self.latest.clone()
    }

    /// Every output from now on (a slow receiver sees `Lagged`).
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<FrameOutput>> {
        self.all.subscribe()
    }

    /// Re-load the classes before the next frame (SIGHUP).
    pub fn request_reload(&self) {
        self.shared.reload.store(true, Ordering::SeqCst);
    }

    /// Stop: capture stops, a frame waiting in the slot is dropped, the frame in inference is
    /// finished and published, then both threads are joined.
    pub fn shutdown(mut self) -> PipelineReport {
        self.shared.stop.store(true, Ordering::SeqCst);
        if self.shared.slot.close() {
            self.shared.metrics.frames_dropped.inc();
        }
        if let Some(w) = self.worker.take() {
            if w.join().is_err() {
                tracing::error!("the inference thread panicked");
            }
        }
        if let Some(c) = self.capture.take() {
            // A camera dequeue returns within its 2 s timeout; do not hang on a stuck driver.
            let deadline = Instant::now() + Duration::from_secs(5);
            while !c.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            if c.is_finished() {
                let _ = c.join();
            } else {
                tracing::warn!("the capture thread did not stop within 5 s; leaving it behind");
            }
        }
        self.report()
    }

    /// Counts so far.
    pub fn report(&self) -> PipelineReport {
        let m = &self.shared.metrics;
        PipelineReport {
            captured: m.frames_in.get(),
            processed: m.frames_out.get(),
            dropped: m.frames_dropped.get(),
            corrupt: m.frames_corrupt.get(),
            inference_errors: m.inference_errors.get(),
            slot: self.shared.slot.stats(),
        }
    }
}
