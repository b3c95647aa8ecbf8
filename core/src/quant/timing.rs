//! The measured per-layer execution choice: for every layer that *can* run as a Q8_0 `QMatMul`
//! ([`cpu_exec`] says so), time that against the f32 layer on the input the layer really sees in
//! one 1-shot episode at the model's input size, and keep `QMatMul` only where it is faster.
//!
//! ```text
//! checkpoint ─ head built under TimingPlan ─┐
//! backbone(pattern image) ─ Features ───────┴─ forward (eval) ─ each candidate layer's input:
//!                    min of REPS × (f32 linear)  vs  min of REPS × (QMatMul)  ─▶ LayerTiming
//! ```
//!
//! Timings belong to the CPU that measured them: quantize on the device (or a CPU like it). With
//! the choice made this way the int8 model never runs a layer slower than float does on that CPU,
//! up to timer noise; [`LayerTiming`] is recorded per layer in the artifact.

use super::builder::QuantVarBuilder;
use super::layers::QuantPlan;
use super::layers::{cpu_exec, q8_matmul, Exec, LayerHook, LayerInfo, Observer};
use crate::backbone::{AnyBackbone, Backbone};
use crate::checkpoint::CheckpointFile;
use crate::error::{Error, Result};
use crate::model::{Mce, Mode};
use candle_core::quantized::QMatMul;
use candle_core::{DType, Device, Module, Tensor};
use candle_nn::VarBuilder;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Timed repetitions of each variant (after one warm-up); the minimum is kept.
const REPS: usize = 5;

/// What one layer measured: nanoseconds per call, the minimum over 5 calls (integers, so
/// the artifact's JSON metadata round-trips them exactly).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerTiming {
    pub f32_ns: u64,
    pub qmatmul_ns: u64,
}

impl LayerTiming {
    /// `QMatMul` only when it measured faster.
    pub fn choice(&self) -> Exec {
        if self.qmatmul_ns < self.f32_ns {
            Exec::QMatMul
        } else {
            Exec::Dequantized
        }
    }
}

/// Timings per layer name.
pub type ExecTimings = BTreeMap<String, LayerTiming>;

/// A candidate layer: its f32 weight (bias left out: both variants would add it alike) and its
/// Q8_0 matmul.
struct Candidate {
    weight: Tensor,
    matmul: Arc<QMatMul>,
}

/// Times each candidate on the first input it sees.
#[derive(Default)]
struct Timer {
    candidates: Mutex<HashMap<String, Candidate>>,
    timings: Mutex<ExecTimings>,
}

fn min_ns(mut f: impl FnMut() -> candle_core::Result<Tensor>) -> candle_core::Result<u64> {
    f()?;
    let mut best = u64::MAX;
    for _ in 0..REPS {
        let t = Instant::now();
        f()?;
        best = best.min(t.elapsed().as_nanos().try_into().unwrap_or(u64::MAX));
    }
    Ok(best)
}

impl Observer for Timer {
    fn observe(&self, layer: &str, input: &Tensor) -> candle_core::Result<()> {
        let poisoned = || candle_core::Error::Msg("exec timer poisoned".into());
        if self
            .timings
            .lock()
            .map_err(|_| poisoned())?
            .contains_key(layer)
        {
            return Ok(());
        }
        let candidates = self.candidates.lock().map_err(|_| poisoned())?;
        let Some(c) = candidates.get(layer) else {
            return Ok(());
        };
        let linear = candle_nn::Linear::new(c.weight.clone(), None);
        let timing = LayerTiming {
            f32_ns: min_ns(|| linear.forward(input))?,
            qmatmul_ns: min_ns(|| c.matmul.forward(&input.contiguous()?))?,
        };
        self.timings
            .lock()
            .map_err(|_| poisoned())?
            .insert(layer.to_string(), timing);
        Ok(())
    }
}

/// Hooks a timing observer onto every `QMatMul` candidate; other layers stay plain.
struct TimingPlan(Arc<Timer>);

impl QuantPlan for TimingPlan {
    fn hook(&self, layer: &LayerInfo) -> candle_core::Result<Option<LayerHook>> {
        let in_features = layer.weight.elem_count() / layer.weight.dim(0)?.max(1);
        if cpu_exec(layer.kind, in_features) != Exec::QMatMul {
            return Ok(None);
        }
        let candidate = Candidate {
            weight: layer.weight.clone(),
            matmul: q8_matmul(layer.weight)?,
        };
        self.0
            .candidates
            .lock()
            .map_err(|_| candle_core::Error::Msg("exec timer poisoned".into()))?
            .insert(layer.name.clone(), candidate);
        Ok(Some(LayerHook {
            name: layer.name.clone(),
            observer: Some(self.0.clone()),
            ..Default::default()
        }))
    }
}

/// Time every `QMatMul` candidate of `file`'s head on this CPU, over one 1-shot episode (a
/// deterministic pattern image as query and support, the left half as the support mask).
pub fn measure(file: &CheckpointFile, device: &Device) -> Result<ExecTimings> {
    let err = |e: candle_core::Error| Error::Checkpoint {
        path: file.path.clone(),
        reason: format!("timing the layers: {e}"),
    };
    let timer = Arc::new(Timer::default());
    let vb = VarBuilder::from_tensors(file.tensors.clone(), DType::F32, device);
    let plan = Arc::new(TimingPlan(timer.clone()));
    let head = Mce::new(&file.config, QuantVarBuilder::new(vb.clone(), plan)).map_err(err)?;
    let backbone = AnyBackbone::new(file.config.backbone, vb.pp("backbone")).map_err(err)?;
    let s = file.config.image_size;
    let run = || -> candle_core::Result<()> {
        let image = (Tensor::arange(0f32, (3 * s * s) as f32, device)?.reshape((1, 3, s, s))?
            * 1e-3)?
            .sin()?;
        let feats = backbone.features(&image)?;
        let left = Tensor::ones((1, 1, s, s / 2), DType::F32, device)?;
        let mask = Tensor::cat(&[&left, &left.zeros_like()?], 3)?;
        head.forward(&feats, &[(feats.clone(), mask)], Mode::Eval)?;
        Ok(())
    };
    run().map_err(err)?;
    let timings = timer
        .timings
        .lock()
        .map(|t| t.clone())
        .map_err(|_| err(candle_core::Error::Msg("exec timer poisoned".into())))?;
    Ok(timings)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qmatmul_only_when_strictly_faster() {
        let t = |f32_ns, qmatmul_ns| LayerTiming { f32_ns, qmatmul_ns }.choice();
        assert_eq!(t(10, 9), Exec::QMatMul);
        assert_eq!(t(10, 10), Exec::Dequantized);
        assert_eq!(t(10, 12), Exec::Dequantized);
    }
}
