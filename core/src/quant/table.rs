//! The calibration table (JSON): per layer the activation histogram, the threshold every method
//! chose, the chosen scale with its clipping rate and estimated SQNR, and the weight's SQNR.
//! Written by `mce-calib calibrate`, read by the quantizer and by QAT (`mce-train train --qat`).

use super::layers::LayerKind;
use super::scale::{scale_of, Histogram, Method};
use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

/// `format` field of every calibration table.
pub const TABLE_FORMAT: &str = "mce-calibration";

/// Calibration of one layer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LayerCalibration {
    pub kind: LayerKind,
    pub weight_shape: Vec<usize>,
    /// SQNR (dB) of the per-channel int8 weight against the f32 weight.
    pub weight_sqnr_db: f64,
    /// Threshold per method name (`max`, `percentile:99.99`, `mse`, `kl`).
    pub thresholds: BTreeMap<String, f32>,
    /// The scale of the table's method: threshold / 127.
    pub scale: f32,
    /// Fraction of calibration inputs clipped at that scale.
    pub clip_rate: f64,
    /// Estimated SQNR (dB) of the input quantization at that scale.
    pub input_sqnr_db: f64,
    pub histogram: Histogram,
}

/// Everything `mce-calib calibrate` measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CalibrationTable {
    pub format: String,
    /// The float checkpoint calibrated.
    pub checkpoint: String,
    /// The method whose scales are in `scale` (and in the artifact).
    pub method: Method,
    /// What the statistics were collected on.
    pub source: String,
    pub layers: BTreeMap<String, LayerCalibration>,
}

impl CalibrationTable {
    /// Fill a layer's threshold of every method and select `method`'s.
    pub fn layer(
        kind: LayerKind,
        weight_shape: Vec<usize>,
        weight_sqnr_db: f64,
        histogram: Histogram,
        methods: &[Method],
        method: Method,
    ) -> LayerCalibration {
        let mut thresholds = BTreeMap::new();
        for m in methods.iter().chain(std::iter::once(&method)) {
            thresholds
                .entry(m.to_string())
                .or_insert_with(|| histogram.threshold(*m));
        }
        let t = thresholds[&method.to_string()];
        LayerCalibration {
            kind,
            weight_shape,
            weight_sqnr_db,
            thresholds,
            scale: scale_of(t),
            clip_rate: histogram.clip_rate(t),
            input_sqnr_db: histogram.sqnr_db(t),
            histogram,
        }
    }

    /// Input scales per layer for `method` (default: the table's own); thresholds the table
    /// recorded are reused, others computed from the histogram.
    pub fn scales(&self, method: Option<Method>) -> HashMap<String, f32> {
        self.layers
            .iter()
            .map(|(name, l)| {
                let s = match method {
                    Some(m) if m != self.method => match l.thresholds.get(&m.to_string()) {
                        Some(&t) => scale_of(t),
                        None => scale_of(l.histogram.threshold(m)),
                    },
                    _ => l.scale,
                };
                (name.clone(), s)
            })
            .collect()
    }

    /// Read and check a table.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let t: Self = serde_json::from_str(&text).map_err(|e| Error::Checkpoint {
            path: path.to_path_buf(),
            reason: format!("not a calibration table: {e}"),
        })?;
        if t.format != TABLE_FORMAT {
            return Err(Error::Checkpoint {
                path: path.to_path_buf(),
                reason: format!("format {:?}, expected {TABLE_FORMAT:?}", t.format),
            });
        }
        Ok(t)
    }

    /// Write as pretty JSON.
    pub fn save(&self, path: &Path) -> Result<()> {
        let text = serde_json::to_string_pretty(self).expect("table serialises");
        crate::checkpoint::write_atomic(path, text.as_bytes())
    }
}
