//! The inference thread: take the newest frame, segment it against every class (backbone and
//! query encoding once, MCE head per class), combine the classes, draw the overlay, encode JPEG
//! and JSON, publish. Between frames it reloads the classes when asked (SIGHUP) and feeds the
//! systemd watchdog while it is healthy.

use super::classes::{self, ClassSource, LoadedClass};
use super::metrics::{stage, ClassLabel};
use super::notify::Notifier;
use super::results::{self, FrameInfo, FrameResults, LabelMap, Latency};
use super::slot::Frame;
use super::state::Shared;
use crate::overlay;
use anyhow::{Context, Result};
use bytes::Bytes;
use image::codecs::jpeg::JpegEncoder;
use image::RgbImage;
use mce_core::inference::Segmenter;
use std::sync::Arc;
use std::time::{Duration, Instant, UNIX_EPOCH};
use tokio::sync::{broadcast, watch};

/// Consecutive failed frames after which inference counts as unhealthy.
const UNHEALTHY_AFTER: u32 = 5;
/// How long the worker waits for a frame before looking at its flags again.
const POLL: Duration = Duration::from_millis(100);

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

/// One processed frame.
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

/// Segment, combine and encode one frame.
fn process(
    engine: &Engine,
    shared: &Shared,
    frame: Frame,
    jpeg_quality: u8,
) -> Result<FrameOutput> {
    let start = Instant::now();
    let queue = start.saturating_duration_since(frame.captured);
    let (w, h) = (frame.image.width() as usize, frame.image.height() as usize);
    let maps = if engine.classes.is_empty() {
        Vec::new()
    } else {
        let refs: Vec<_> = engine.classes.iter().map(|c| &c.encoding).collect();
        engine
            .segmenter
            .segment(&frame.image, &refs)
            .with_context(|| format!("segmenting frame {}", frame.index))?
    };
    let inference = start.elapsed();
    shared.metrics.observe(stage::INFERENCE, inference);

    let t = Instant::now();
    let labels = results::combine(&maps, w, h);
    let mut image = frame.image;
    let mut classes = Vec::with_capacity(maps.len());
    for (i, (class, map)) in engine.classes.iter().zip(&maps).enumerate() {
        let r = results::class_result(&class.name, &labels, i, &map.probability);
        if r.pixels > 0 {
            overlay::blend(
                &mut image,
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
    let mut jpeg = Vec::with_capacity(w * h / 4);
    JpegEncoder::new_with_quality(&mut jpeg, jpeg_quality)
        .encode_image(&image)
        .context("encoding the overlay JPEG")?;
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let mut results = FrameResults {
        frame: FrameInfo {
            index: frame.index,
            captured_unix_ms: frame
                .captured_at
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
            width: w,
            height: h,
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
    };
    let encode = t.elapsed();
    results.latency.encode_ms = ms(encode);
    shared.metrics.observe(stage::ENCODE, encode);
    let results_json = Bytes::from(serde_json::to_vec(&results).context("encoding results JSON")?);
    Ok(FrameOutput {
        results,
        results_json,
        jpeg: Bytes::from(jpeg),
        overlay: image,
        labels,
    })
}

/// The inference loop; returns when the pipeline stops (after finishing the frame in flight).
pub fn run(
    mut engine: Engine,
    shared: Arc<Shared>,
    latest: watch::Sender<Option<Arc<FrameOutput>>>,
    all: broadcast::Sender<Arc<FrameOutput>>,
    notifier: Arc<Notifier>,
    jpeg_quality: u8,
) {
    let mut failures = 0u32;
    loop {
        if shared.take_reload_request() {
            reload(&mut engine, &shared, &notifier);
        }
        if shared.inference_healthy() {
            notifier.watchdog();
        }
        if shared.stopping() {
            break;
        }
        let Some(frame) = shared.slot.take(POLL) else {
            continue;
        };
        let index = frame.index;
        match process(&engine, &shared, frame, jpeg_quality) {
            Ok(out) => {
                failures = 0;
                shared.set_healthy(true);
                shared.metrics.frames_out.inc();
                let out = Arc::new(out);
                let _ = all.send(out.clone());
                latest.send_replace(Some(out));
            }
            Err(e) => {
                failures += 1;
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
        }
    }
    tracing::debug!("inference thread stopped");
}
