//! Ready-made [`QuantPlan`]s: record the layers of a model, observe their inputs for calibration,
//! or simulate int8 (fake quantization) with calibrated activation scales, for evaluation and QAT.

use super::layers::{LayerHook, LayerInfo, LayerKind, Observer, QuantPlan};
use super::scale::Histogram;
use candle_core::{Result, Tensor};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

/// One conv / linear layer as built: name, kind, forward-time weight (BN folded) and bias.
#[derive(Debug, Clone)]
pub struct LayerRecord {
    pub name: String,
    pub kind: LayerKind,
    pub weight: Tensor,
    pub bias: Option<Tensor>,
}

impl LayerRecord {
    /// Input width of the layer's matmul view (`I·k·k` for convs).
    pub fn in_features(&self) -> usize {
        self.weight.elem_count() / self.weight.dim(0).unwrap_or(1).max(1)
    }
}

/// Histograms of |input| per layer name.
#[derive(Debug, Default)]
pub struct HistogramObserver {
    histograms: Mutex<BTreeMap<String, Histogram>>,
}

impl HistogramObserver {
    /// The histograms collected so far.
    pub fn histograms(&self) -> BTreeMap<String, Histogram> {
        self.histograms
            .lock()
            .map(|h| h.clone())
            .unwrap_or_default()
    }
}

impl Observer for HistogramObserver {
    fn observe(&self, layer: &str, input: &Tensor) -> Result<()> {
        let values = input
            .flatten_all()?
            .to_dtype(candle_core::DType::F32)?
            .to_vec1::<f32>()?;
        let mut h = self
            .histograms
            .lock()
            .map_err(|_| candle_core::Error::Msg("histogram observer poisoned".into()))?;
        h.entry(layer.to_string()).or_default().add(&values);
        Ok(())
    }
}

/// Records every layer built, and optionally attaches an observer to each.
#[derive(Default)]
pub struct RecordPlan {
    records: Mutex<Vec<LayerRecord>>,
    observer: Option<Arc<dyn Observer>>,
}

impl RecordPlan {
    /// Record only.
    pub fn new() -> Self {
        Self::default()
    }

    /// Record and observe every layer's input.
    pub fn observing(observer: Arc<dyn Observer>) -> Self {
        Self {
            records: Mutex::default(),
            observer: Some(observer),
        }
    }

    /// The layers built so far, in construction order.
    pub fn records(&self) -> Vec<LayerRecord> {
        self.records.lock().map(|r| r.clone()).unwrap_or_default()
    }
}

impl QuantPlan for RecordPlan {
    fn hook(&self, layer: &LayerInfo) -> Result<Option<LayerHook>> {
        if let Ok(mut r) = self.records.lock() {
            r.push(LayerRecord {
                name: layer.name.clone(),
                kind: layer.kind,
                weight: layer.weight.clone(),
                bias: layer.bias.cloned(),
            });
        }
        Ok(self.observer.as_ref().map(|o| LayerHook {
            name: layer.name.clone(),
            observer: Some(o.clone()),
            ..Default::default()
        }))
    }
}

/// Simulated int8: inputs fake-quantized with the calibrated per-tensor scales, weights
/// fake-quantized per output channel (STE, so the same plan serves QAT).
pub struct SimulatePlan {
    /// Input scale per layer name; layers without one keep f32 inputs.
    pub input_scales: HashMap<String, f32>,
    /// Fake-quantize weights per channel (off when they are already int8 values).
    pub fake_weights: bool,
    /// Layers whose weights stay f32 (mixed precision).
    pub keep_float: Vec<String>,
}

impl QuantPlan for SimulatePlan {
    fn hook(&self, layer: &LayerInfo) -> Result<Option<LayerHook>> {
        Ok(Some(LayerHook {
            name: layer.name.clone(),
            input_scale: self.input_scales.get(&layer.name).copied(),
            fake_weight: self.fake_weights && !self.keep_float.contains(&layer.name),
            ..Default::default()
        }))
    }
}
