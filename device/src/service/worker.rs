//! The inference thread: take the newest frame, segment it against every class (backbone and
//! query encoding once, MCE head per class), combine the classes, draw the overlay and its
//! legend ([`Render`]), encode JPEG and JSON, publish (`process` and its steps). Between frames it reloads the classes when asked
//! (SIGHUP) and feeds the systemd watchdog while the service is not unhealthy
//! ([`Shared::health`]); after `UNHEALTHY_AFTER` (5) failed frames in a row inference is
//! unhealthy (`/healthz` 503, no more watchdog pings) until one succeeds.

use super::classes::{self, ClassSource, LoadedClass};
use super::metrics::{stage, ClassLabel};
use super::notify::Notifier;
use super::results::{self, ClassResult, FrameInfo, FrameResults, LabelMap, Latency};
use super::slot::Frame;
use super::state::{Health, Shared};
use crate::overlay;
use anyhow::{Context, Result};
use bytes::Bytes;
use image::codecs::jpeg::JpegEncoder;
use image::RgbImage;
use mce_core::inference::{ClassMap, Segmenter};
use std::sync::Arc;
use std::time::{Duration, Instant, UNIX_EPOCH};
use tokio::sync::{broadcast, watch};

/// Consecutive failed frames after which inference counts as unhealthy.
const UNHEALTHY_AFTER: u32 = 5;
/// How long the worker waits for a frame before looking at its flags again.
const POLL: Duration = Duration::from_millis(100);

/// How overlays are drawn and encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Render {
    /// Quality of the overlay JPEG (1–100).
    pub jpeg_quality: u8,
    /// Draw the classes' legend ([`overlay::legend`]) into the overlay's top-left corner.
    pub legend: bool,
}

impl Default for Render {
    fn default() -> Self {
        Self {
            jpeg_quality: 80,
            legend: true,
        }
    }
}

/// The model and its classes, owned by the inference thread.
pub struct Engine {
    pub segmenter: Segmenter,
    pub classes: Vec<LoadedClass>,
    /// Asked again on reload; `None`: the classes are fixed.
    pub class_source: Option<Box<dyn ClassSource>>,
}

impl Engine {
    /// Load the classes from `source` and keep it for reloads.
    pub fn new(segmenter: Segmenter, source: Box<dyn ClassSource>) -> Result<Self> {
        let classes = source
            .load(&segmenter)
            .with_context(|| format!("loading classes from {}", source.describe()))?;
        Ok(Self {
            segmenter,
            classes,
            class_source: Some(source),
        })
    }
}

/// One processed frame, as published to `/frame.jpg`, `/results`, `/stream.mjpg` and subscribers.
#[derive(Debug, Clone)]
pub struct FrameOutput {
    pub results: FrameResults,
    /// `results` as JSON.
    pub results_json: Bytes,
    /// The overlay as JPEG.
    pub jpeg: Bytes,
    pub overlay: RgbImage,
    pub labels: LabelMap,
}

/// Re-load the classes from the engine's class source (`RELOADING=1` … `READY=1` around it);
/// on failure the previous classes stay.
fn reload(engine: &mut Engine, shared: &Shared, notifier: &Notifier) {
    let Some(source) = &engine.class_source else {
        tracing::warn!("reload requested, but the classes are fixed; nothing to do");
        return;
    };
    notifier.reloading();
    let t = Instant::now();
    match source.load(&engine.segmenter) {
        Ok(classes) => {
            let names: Vec<&str> = classes.iter().map(|c| c.name.as_str()).collect();
            tracing::info!(
                "reloaded {}: {} class(es) [{}] in {:.0} ms",
                source.describe(),
                classes.len(),
                names.join(", "),
                t.elapsed().as_secs_f64() * 1e3
            );
            engine.classes = classes;
            shared.set_classes(classes::infos(&engine.classes));
            shared.metrics.reloads.inc();
        }
        Err(e) => tracing::error!("reload failed, keeping the previous classes: {e:#}"),
    }
    notifier.ready();
}

/// Milliseconds, as the results JSON reports latencies.
fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Segment, combine and encode one frame: [`segment`] (the inference stage), then
/// [`combine_and_draw`], [`encode_jpeg`] and [`frame_results`] (the encode stage), then
/// [`encode_json`].
fn process(
    engine: &Engine,
    shared: &Shared,
    mut frame: Frame,
    render: Render,
) -> Result<FrameOutput> {
    let start = Instant::now();
    let queue = start.saturating_duration_since(frame.captured);
    let maps = segment(engine, &frame)?;
    let inference = start.elapsed();
    shared.metrics.observe(stage::INFERENCE, inference);

    let t = Instant::now();
    let mut image = std::mem::take(&mut frame.image);
    let (labels, classes) = combine_and_draw(engine, shared, &maps, &mut image);
    if render.legend {
        draw_legend(&mut image, &classes);
    }
    let jpeg = encode_jpeg(&image, render.jpeg_quality)?;
    let size = (labels.width, labels.height);
    let mut results = frame_results(engine, frame, size, queue, inference, classes);
    let encode = t.elapsed();
    results.latency.encode_ms = ms(encode);
    shared.metrics.observe(stage::ENCODE, encode);
    let results_json = encode_json(&results)?;
    Ok(FrameOutput {
        results,
        results_json,
        jpeg,
        overlay: image,
        labels,
    })
}

/// One probability map per class: the backbone and the query encoding run once for the frame,
/// the MCE head once per class ([`Segmenter::segment`]). No classes: no maps, no model run.
fn segment(engine: &Engine, frame: &Frame) -> Result<Vec<ClassMap>> {
    if engine.classes.is_empty() {
        return Ok(Vec::new());
    }
    let refs: Vec<_> = engine.classes.iter().map(|c| &c.encoding).collect();
    engine
        .segmenter
        .segment(&frame.image, &refs)
        .with_context(|| format!("segmenting frame {}", frame.index))
}

/// Combine the class maps into one label map ([`results::combine`]), then per class: its
/// statistics, its colour blended into `image` where it has pixels, and its area on the
/// `class_area` gauge.
fn combine_and_draw(
    engine: &Engine,
    shared: &Shared,
    maps: &[ClassMap],
    image: &mut RgbImage,
) -> (LabelMap, Vec<ClassResult>) {
    let (w, h) = (image.width() as usize, image.height() as usize);
    let labels = results::combine(maps, w, h);
    let mut classes = Vec::with_capacity(maps.len());
    for (i, (class, map)) in engine.classes.iter().zip(maps).enumerate() {
        let r = results::class_result(&class.name, &labels, i, &map.probability);
        if r.pixels > 0 {
            overlay::blend(
                image,
                &labels.mask(i),
                overlay::PALETTE[i % overlay::PALETTE.len()],
            );
        }
        shared
            .metrics
            .class_area
            .get_or_create(&ClassLabel {
                class: class.name.clone(),
            })
            .set(r.area);
        classes.push(r);
    }
    (labels, classes)
}

/// Every class's colour, name and area in the overlay's corner (also those with no pixels, so
/// that the colours stay where they were).
fn draw_legend(image: &mut RgbImage, classes: &[ClassResult]) {
    let entries: Vec<_> = classes
        .iter()
        .enumerate()
        .map(|(i, c)| overlay::legend::LegendEntry {
            name: &c.name,
            colour: overlay::PALETTE[i % overlay::PALETTE.len()],
            area: c.area,
        })
        .collect();
    overlay::legend::draw(image, &entries);
}

/// The overlay as JPEG of the given quality.
fn encode_jpeg(image: &RgbImage, quality: u8) -> Result<Bytes> {
    let (w, h) = (image.width() as usize, image.height() as usize);
    let mut jpeg = Vec::with_capacity(w * h / 4);
    JpegEncoder::new_with_quality(&mut jpeg, quality)
        .encode_image(image)
        .context("encoding the overlay JPEG")?;
    Ok(Bytes::from(jpeg))
}

/// The `/results` document of one frame of `size` (width, height) pixels; its `encode_ms` is
/// 0 until the caller knows it.
fn frame_results(
    engine: &Engine,
    frame: Frame,
    size: (usize, usize),
    queue: Duration,
    inference: Duration,
    classes: Vec<ClassResult>,
) -> FrameResults {
    FrameResults {
        frame: FrameInfo {
            index: frame.index,
            captured_unix_ms: frame
                .captured_at
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
            width: size.0,
            height: size.1,
            source: frame.label,
        },
        latency: Latency {
            capture_ms: ms(frame.capture_time),
            queue_ms: ms(queue),
            inference_ms: ms(inference),
            encode_ms: 0.0,
        },
        model_trained: engine.segmenter.trained,
        classes,
    }
}

/// The results as JSON (the `/results` body).
fn encode_json(results: &FrameResults) -> Result<Bytes> {
    Ok(Bytes::from(
        serde_json::to_vec(results).context("encoding results JSON")?,
    ))
}

/// A processed frame: inference is healthy again, the frame is counted, then published to every
/// subscriber and as the latest output.
fn publish(
    shared: &Shared,
    latest: &watch::Sender<Option<Arc<FrameOutput>>>,
    all: &broadcast::Sender<Arc<FrameOutput>>,
    out: FrameOutput,
) {
    shared.set_healthy(true);
    shared.metrics.frames_out.inc();
    let out = Arc::new(out);
    let _ = all.send(out.clone());
    latest.send_replace(Some(out));
}

/// A failed frame, the `failures`-th in a row: counted and logged; from [`UNHEALTHY_AFTER`] on,
/// inference is unhealthy (said once, when it turns).
fn record_failure(shared: &Shared, index: u64, e: &anyhow::Error, failures: u32) {
    shared.metrics.inference_errors.inc();
    tracing::error!("frame {index}: {e:#}");
    if failures >= UNHEALTHY_AFTER {
        if shared.inference_healthy() {
            tracing::error!(
                "{failures} frames in a row failed: inference is unhealthy, \
                 the systemd watchdog is no longer fed"
            );
        }
        shared.set_healthy(false);
    }
}

/// The inference loop; returns when the pipeline stops (after finishing the frame in flight).
/// Before each frame: a requested reload, then a watchdog ping while healthy.
pub fn run(
    mut engine: Engine,
    shared: Arc<Shared>,
    latest: watch::Sender<Option<Arc<FrameOutput>>>,
    all: broadcast::Sender<Arc<FrameOutput>>,
    notifier: Arc<Notifier>,
    render: Render,
) {
    let mut failures = 0u32;
    let mut health = Health::Ok;
    loop {
        if shared.take_reload_request() {
            reload(&mut engine, &shared, &notifier);
        }
        let now = shared.health();
        if now != health {
            tracing::warn!(from = ?health, to = ?now, source = ?shared.source_status().state, "health changed");
            health = now;
        }
        if health != Health::Unhealthy {
            notifier.watchdog();
        }
        if shared.stopping() {
            break;
        }
        let Some(frame) = shared.slot.take(POLL) else {
            continue;
        };
        let index = frame.index;
        match process(&engine, &shared, frame, render) {
            Ok(out) => {
                failures = 0;
                publish(&shared, &latest, &all, out);
            }
            Err(e) => {
                failures += 1;
                record_failure(&shared, index, &e, failures);
            }
        }
    }
    tracing::debug!("inference thread stopped");
}
