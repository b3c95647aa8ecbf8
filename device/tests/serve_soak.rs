//! Soak: a source far faster than inference (3000 tiny frames at ~1 kHz against a real model at
//! 64 px) through the real pipeline. The slot never holds more than one frame, every captured
//! frame is either processed or counted as dropped, and memory stays flat.

use candle_core::Device;
use mce_core::inference::{lite0_weights_path, Segmenter};
use mce_core::preprocess::MaskEncoding;
use mce_core::MceConfig;
use mce_device::service::classes::{ExemplarFile, ExemplarFiles};
use mce_device::service::notify::Notifier;
use mce_device::service::source::{Captured, FrameSource, SourceError};
use mce_device::service::{Engine, Pipeline, PipelineOptions};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

const FRAMES: u64 = 3000;
/// Allowed RSS growth between the warm start and the end of the run.
const RSS_BOUND_KIB: u64 = 16 * 1024;

/// Synthetic frames, one per millisecond, then the end.
struct Burst {
    made: u64,
    interval: Duration,
}

impl FrameSource for Burst {
    fn describe(&self) -> String {
        format!("{FRAMES} synthetic frames")
    }
    fn next_frame(&mut self) -> Result<Option<Captured>, SourceError> {
        if self.made == FRAMES {
            return Ok(None);
        }
        let v = (self.made % 251) as u8;
        self.made += 1;
        Ok(Some(Captured {
            image: image::RgbImage::from_fn(48, 32, |x, y| {
                image::Rgb([v, x as u8 * 5, y as u8 * 7])
            }),
            label: None,
        }))
    }
    fn frame_interval(&self) -> Option<Duration> {
        Some(self.interval)
    }
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("VmRSS in /proc/self/status")
}

#[test]
fn fast_source_slow_model_drops_without_queueing_or_growing() {
    let cfg = MceConfig {
        image_size: 64,
        ..MceConfig::edge_lite0()
    };
    let segmenter = Segmenter::untrained(&cfg, &lite0_weights_path(), &Device::Cpu).unwrap();
    let assets = Path::new(env!("CARGO_MANIFEST_DIR")).join("../assets/msrc");
    let classes = ExemplarFiles {
        classes: vec![(
            "bicycle".into(),
            vec![ExemplarFile {
                image: assets.join("8_10_s.png"),
                mask: assets.join("8_10_s_GT.png"),
                encoding: MaskEncoding::ClassIndex(12),
            }],
        )],
    };
    let engine = Engine::new(segmenter, Box::new(classes)).unwrap();
    let source = Burst {
        made: 0,
        interval: Duration::from_millis(1),
    };
    let start = Instant::now();
    let pipeline = Pipeline::start(
        Box::new(source),
        engine,
        PipelineOptions::default(),
        Arc::new(Notifier::with_interval(None)),
    )
    .unwrap();
    let shared = pipeline.shared().clone();
    let deadline = Instant::now() + Duration::from_secs(60);
    while shared.metrics.frames_out.get() < 3 {
        assert!(Instant::now() < deadline, "no frames processed");
        std::thread::sleep(Duration::from_millis(5));
    }
    let rss_start = rss_kib();
    let mut max_pending = 0;
    while shared.metrics.frames_in.get() < FRAMES {
        assert!(
            Instant::now() < deadline,
            "capture too slow: {:?}",
            pipeline.report()
        );
        max_pending = max_pending.max(shared.slot.stats().max_pending);
        std::thread::sleep(Duration::from_millis(20));
    }
    let rss_end = rss_kib();
    let report = pipeline.shutdown();
    let secs = start.elapsed().as_secs_f64();
    println!(
        "soak: {} captured, {} processed, {} dropped in {secs:.1} s; RSS {rss_start} KiB at warm \
         start, {rss_end} KiB at the end (bound: +{RSS_BOUND_KIB} KiB)",
        report.captured, report.processed, report.dropped
    );
    assert_eq!(report.captured, FRAMES);
    assert_eq!(report.inference_errors, 0);
    assert_eq!(report.corrupt, 0);
    assert_eq!(
        report.dropped + report.processed,
        report.captured,
        "{report:?}"
    );
    assert!(report.processed >= 3);
    assert!(
        report.dropped > report.processed,
        "capture was not faster than inference"
    );
    assert_eq!(report.slot.max_pending, 1, "{:?}", report.slot);
    assert!(max_pending <= 1);
    assert_eq!(report.slot.put, FRAMES);
    assert_eq!(report.slot.taken + report.slot.dropped, report.slot.put);
    assert!(
        rss_end <= rss_start + RSS_BOUND_KIB,
        "RSS grew from {rss_start} KiB to {rss_end} KiB"
    );
}
