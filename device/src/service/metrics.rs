//! The service's Prometheus metrics (prometheus-client), served as OpenMetrics text on `/metrics`.
//!
//! Counters are also the single source of the frame counts `/healthz` and the pipeline report
//! show, so the numbers always agree.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

/// The `stage` label of the latency histogram.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StageLabel {
    pub stage: &'static str,
}

/// The `class` label of per-class gauges.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClassLabel {
    pub class: String,
}

/// Pipeline stages timed by `mce_stage_latency_seconds`.
pub mod stage {
    /// Reading and decoding one frame from the source.
    pub const CAPTURE: &str = "capture";
    /// Backbone + query encoding + the MCE head for every class.
    pub const INFERENCE: &str = "inference";
    /// Combining classes, drawing the overlay, JPEG and JSON encoding.
    pub const ENCODE: &str = "encode";
}

fn latency_histogram() -> Histogram {
    // 1 ms .. ~16 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 15))
}

/// All metrics of one service instance.
pub struct Metrics {
    registry: Registry,
    pub frames_in: Counter,
    pub frames_out: Counter,
    pub frames_dropped: Counter,
    pub frames_corrupt: Counter,
    pub inference_errors: Counter,
    pub source_errors: Counter,
    pub reloads: Counter,
    pub latency: Family<StageLabel, Histogram, fn() -> Histogram>,
    pub class_area: Family<ClassLabel, Gauge<f64, AtomicU64>>,
    pub classes: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("mce");
        let m = Self {
            registry: Registry::default(),
            frames_in: Counter::default(),
            frames_out: Counter::default(),
            frames_dropped: Counter::default(),
            frames_corrupt: Counter::default(),
            inference_errors: Counter::default(),
            source_errors: Counter::default(),
            reloads: Counter::default(),
            latency: Family::new_with_constructor(latency_histogram as fn() -> Histogram),
            class_area: Family::default(),
            classes: Gauge::default(),
        };
        let counters = [
            ("frames_in", "Frames captured from the source", &m.frames_in),
            (
                "frames_out",
                "Frames segmented and published",
                &m.frames_out,
            ),
            (
                "frames_dropped",
                "Stale frames replaced in the latest-frame slot before inference",
                &m.frames_dropped,
            ),
            (
                "frames_corrupt",
                "Frames skipped because they could not be decoded",
                &m.frames_corrupt,
            ),
            (
                "inference_errors",
                "Frames whose inference failed",
                &m.inference_errors,
            ),
            (
                "source_errors",
                "Source failures that led to a reconnect",
                &m.source_errors,
            ),
            ("reloads", "Registry reloads (SIGHUP)", &m.reloads),
        ];
        for (name, help, c) in counters {
            registry.register(name, help, c.clone());
        }
        registry.register_with_unit(
            "stage_latency",
            "Latency per pipeline stage (capture, inference, encode)",
            prometheus_client::registry::Unit::Seconds,
            m.latency.clone(),
        );
        registry.register(
            "class_foreground_area",
            "Fraction of the latest frame assigned to each class",
            m.class_area.clone(),
        );
        registry.register("classes", "Classes being segmented", m.classes.clone());
        Self { registry, ..m }
    }

    /// Record one stage's duration.
    pub fn observe(&self, stage: &'static str, d: Duration) {
        self.latency
            .get_or_create(&StageLabel { stage })
            .observe(d.as_secs_f64());
    }

    /// Forget the per-class gauges (after a reload changed the classes).
    pub fn reset_classes(&self, names: &[String]) {
        self.class_area.clear();
        for n in names {
            self.class_area
                .get_or_create(&ClassLabel { class: n.clone() })
                .set(0.0);
        }
        self.classes.set(names.len() as i64);
    }

    /// OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_has_counters_histograms_and_class_gauges() {
        let m = Metrics::new();
        m.frames_in.inc_by(3);
        m.frames_dropped.inc();
        m.observe(stage::INFERENCE, Duration::from_millis(250));
        m.reset_classes(&["dog".to_string()]);
        m.class_area
            .get_or_create(&ClassLabel {
                class: "dog".into(),
            })
            .set(0.25);
        let text = m.encode();
        for want in [
            "mce_frames_in_total 3",
            "mce_frames_dropped_total 1",
            "mce_frames_out_total 0",
            "mce_stage_latency_seconds_count{stage=\"inference\"} 1",
            "mce_class_foreground_area{class=\"dog\"} 0.25",
            "mce_classes 1",
            "# EOF",
        ] {
            assert!(text.contains(want), "missing {want:?} in\n{text}");
        }
    }
}
