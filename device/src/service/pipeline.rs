//! The wiring of the frame pipeline: [`Pipeline`] creates the [`Shared`] state, starts the
//! capture thread ([`capture::run`]) and the inference thread ([`worker::run`]), hands out the
//! published outputs, and stops and joins both threads.
//!
//! ```text
//! FrameSource ─(capture thread)─▶ FrameSlot (1 frame; stale ones dropped + counted)
//!     ─(inference thread: backbone and query encoding once, MCE head per class, combine,
//!       overlay, JPEG + JSON)─▶
//!     watch (latest FrameOutput: /frame.jpg, /results, /stream.mjpg) + broadcast (every output)
//! ```
//!
//! Both threads are plain OS threads (capture and inference block); the HTTP server and signal
//! handling run on tokio and only read what is published here and in [`Shared`]. The state
//! itself lives in [`super::state`], so that the threads' modules never import this one.

use super::capture::{self, Backoff};
use super::classes;
use super::notify::Notifier;
use super::slot::SlotStats;
use super::source::FrameSource;
use super::state::Shared;
use super::worker::{self, Engine, FrameOutput, Render};
use serde::Serialize;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tokio::sync::{broadcast, watch};

/// Pipeline settings.
#[derive(Debug, Clone, Default)]
pub struct PipelineOptions {
    /// Never drop frames: capture waits for inference (file batches, the demo).
    pub lossless: bool,
    /// Overlay drawing and JPEG quality.
    pub render: Render,
    /// Reconnect back-off for cameras.
    pub backoff: Backoff,
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
        let shared = Arc::new(Shared::new(
            source.describe(),
            engine.segmenter.trained,
            engine.segmenter.config().head.kind(),
        ));
        shared.set_classes(classes::infos(&engine.classes));
        let (latest_tx, latest) = watch::channel(None);
        let (all, first) = broadcast::channel(16);
        let worker = {
            let (shared, all, render) = (shared.clone(), all.clone(), options.render);
            std::thread::Builder::new()
                .name("mce-inference".into())
                .spawn(move || worker::run(engine, shared, latest_tx, all, notifier, render))?
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
        self.shared.request_reload();
    }

    /// Stop: capture stops, a frame waiting in the slot is dropped, the frame in inference is
    /// finished and published, then both threads are joined.
    pub fn shutdown(mut self) -> PipelineReport {
        self.shared.request_stop();
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
