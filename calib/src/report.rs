//! `mce-calib report`: float vs simulated int8 (each calibration method) vs the device's int8
//! artifact (and the QAT artifact) on the same held-out test episodes of the fold, with per-layer
//! scale, clipping rate and SQNR, artifact sizes and per-frame latency. JSON and markdown.

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device};
use candle_nn::VarBuilder;
use mce_core::checkpoint::{self, CheckpointFile};
use mce_core::inference::{models_dir, Segmenter};
use mce_core::preprocess::{load_mask, load_rgb, MaskEncoding};
use mce_core::quant::artifact::{self, LoadOptions};
use mce_core::quant::plan::SimulatePlan;
use mce_core::quant::timing::LayerTiming;
use mce_core::quant::{CalibrationTable, Method, QuantVarBuilder};
use mce_core::{AnyBackbone, Mce, MceConfig};
use mce_train::data::FewShotDataset;
use mce_train::eval::{build_store, evaluate, seed_episodes, EvalOptions};
use mce_train::transform::Canvas;
use serde::Serialize;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// One evaluated variant of the model.
#[derive(Debug, Clone, Serialize)]
pub struct VariantResult {
    pub name: String,
    pub description: String,
    pub miou: f64,
    pub fb_iou: f64,
    /// Artifact size in bytes, where the variant is a file the device loads.
    pub file_bytes: Option<u64>,
    /// Median per-frame latency (backbone + query encoding + one class) in ms.
    pub latency_ms: Option<f64>,
}

/// One layer's row.
#[derive(Debug, Clone, Serialize)]
pub struct LayerRow {
    pub name: String,
    pub scale: f32,
    pub clip_rate: f64,
    pub input_sqnr_db: f64,
    pub weight_sqnr_db: f64,
    pub exec: String,
    /// The timing that chose `exec` (µs per call, f32 vs `QMatMul`), when it was measured.
    pub timing: Option<LayerTiming>,
    pub weight_dtype: String,
}

/// The whole report.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub episodes: String,
    pub calibration: String,
    pub method: Method,
    pub variants: Vec<VariantResult>,
    pub layers: Vec<LayerRow>,
    pub latency_note: String,
}

/// What to compare.
pub struct ReportInputs<'a> {
    pub checkpoint: &'a Path,
    pub table: &'a CalibrationTable,
    pub artifact: &'a Path,
    pub qat_artifact: Option<&'a Path>,
    pub keep_float: Vec<String>,
    pub latency_frames: usize,
}

fn asset(name: &str) -> PathBuf {
    models_dir().join("../assets/msrc").join(name)
}

/// Median ms per frame of `segment` on the bundled bicycle photo (exemplar `8_10_s`, 1 class) for
/// each segmenter. They are timed in turn, frame by frame, with the one that goes first rotating, so
/// a change of load on the machine hits every variant alike.
pub fn interleaved_latency_ms(segs: &[&Segmenter], frames: usize) -> Result<Vec<f64>> {
    let ex_img = load_rgb(asset("8_10_s.png"))?;
    let ex_mask = load_mask(asset("8_10_s_GT.png"), MaskEncoding::ClassIndex(12))?;
    let frame = load_rgb(asset("8_13_s.png"))?;
    let classes = segs
        .iter()
        .map(|seg| seg.encode_class(&[seg.exemplar(&ex_img, &ex_mask, &asset("8_10_s.png"))?]))
        .collect::<mce_core::Result<Vec<_>>>()?;
    for (seg, class) in segs.iter().zip(&classes) {
        for _ in 0..2 {
            seg.segment(&frame, &[class])?;
        }
    }
    let mut times = vec![Vec::new(); segs.len()];
    for round in 0..frames.max(1) {
        for j in 0..segs.len() {
            let i = (round + j) % segs.len();
            let t = Instant::now();
            segs[i].segment(&frame, &[&classes[i]])?;
            times[i].push(t.elapsed().as_secs_f64() * 1e3);
        }
    }
    Ok(times
        .into_iter()
        .map(|mut t| {
            t.sort_by(f64::total_cmp);
            t[t.len() / 2]
        })
        .collect())
}

/// The float model of `file` with simulated int8 (fake-quantized weights and inputs) at `method`.
fn simulated(
    file: &CheckpointFile,
    table: &CalibrationTable,
    method: Method,
    keep_float: &[String],
    device: &Device,
) -> Result<(Mce, AnyBackbone)> {
    let plan = std::sync::Arc::new(SimulatePlan {
        input_scales: table.scales(Some(method)),
        fake_weights: true,
        keep_float: keep_float.to_vec(),
    });
    let vb = VarBuilder::from_tensors(file.tensors.clone(), DType::F32, device);
    Ok(mce_core::checkpoint::build_model(
        &file.config,
        QuantVarBuilder::new(vb, plan),
    )?)
}

#[allow(clippy::too_many_arguments)]
fn score(
    ds: &dyn FewShotDataset,
    opts: &EvalOptions,
    config: &MceConfig,
    head: Mce,
    backbone: AnyBackbone,
    name: &str,
    description: String,
    file: Option<&Path>,
    timed: bool,
    device: &Device,
) -> Result<(VariantResult, Option<Segmenter>)> {
    let lists = seed_episodes(ds, opts)?;
    let store = build_store(ds, &lists, &backbone, Canvas::of(config), device)?;
    let r = evaluate(ds, &head, &store, opts)?;
    let timed = timed.then(|| Segmenter::new(config.clone(), backbone, head, device, true));
    let v = VariantResult {
        name: name.into(),
        description,
        miou: 100.0 * r.miou.map_or(f64::NAN, |i| i.mean),
        fb_iou: 100.0 * r.fb_iou.map_or(f64::NAN, |i| i.mean),
        file_bytes: file
            .and_then(|p| std::fs::metadata(p).ok())
            .map(|m| m.len()),
        latency_ms: None,
    };
    tracing::info!("{name}: mIoU {:.2} FB-IoU {:.2}", v.miou, v.fb_iou);
    Ok((v, timed))
}

/// Evaluate every variant on the same episodes.
pub fn build(
    ds: &dyn FewShotDataset,
    opts: &EvalOptions,
    inputs: &ReportInputs,
    device: &Device,
) -> Result<Report> {
    // Check the artifacts before the long evaluations.
    for path in std::iter::once(inputs.artifact).chain(inputs.qat_artifact) {
        if !artifact::is_quantized(path)? {
            bail!(
                "{}: not a quantized mce artifact (write one with `mce-calib calibrate` or `quantize`)",
                path.display()
            );
        }
    }
    let file = checkpoint::read(inputs.checkpoint, device)
        .with_context(|| format!("reading {}", inputs.checkpoint.display()))?;
    let cfg = file.config.clone();
    let mut variants = Vec::new();
    let mut timed = Vec::new();
    let mut push = |(v, seg): (VariantResult, Option<Segmenter>)| {
        if let Some(seg) = seg {
            timed.push((variants.len(), seg));
        }
        variants.push(v);
    };
    let m = checkpoint::load(inputs.checkpoint, device)?;
    push(score(
        ds,
        opts,
        &cfg,
        m.head,
        m.backbone,
        "float",
        "f32 checkpoint".into(),
        Some(inputs.checkpoint),
        true,
        device,
    )?);
    for method in crate::calibrate::METHODS {
        let (head, backbone) = simulated(&file, inputs.table, method, &inputs.keep_float, device)?;
        push(score(
            ds,
            opts,
            &cfg,
            head,
            backbone,
            &format!("int8-sim {method}"),
            format!("simulated static int8: per-channel weights, per-tensor inputs ({method})"),
            None,
            false,
            device,
        )?);
    }
    let mut artifacts = vec![("int8 artifact", inputs.artifact)];
    if let Some(q) = inputs.qat_artifact {
        artifacts.push(("int8 QAT artifact", q));
    }
    for (name, path) in artifacts {
        for (suffix, opts_load, t) in [
            (
                " (device: i8 weights, per-layer exec)",
                LoadOptions::default(),
                true,
            ),
            (
                " (simulated static int8 inputs)",
                LoadOptions {
                    quantized_matmul: false,
                    simulate_activations: true,
                },
                false,
            ),
        ] {
            let a = artifact::load(path, device, opts_load)
                .with_context(|| format!("loading {}", path.display()))?;
            push(score(
                ds,
                opts,
                &a.config,
                a.head,
                a.backbone,
                &format!("{name}{suffix}"),
                format!("{} ({} scales)", path.display(), a.spec.method),
                Some(path),
                t,
                device,
            )?);
        }
    }
    let segs: Vec<&Segmenter> = timed.iter().map(|(_, s)| s).collect();
    let ms = interleaved_latency_ms(&segs, inputs.latency_frames)?;
    for ((i, _), ms) in timed.iter().zip(ms) {
        variants[*i].latency_ms = Some(ms);
    }
    let spec = artifact::load(inputs.artifact, device, LoadOptions::default())?.spec;
    let layers = inputs
        .table
        .layers
        .iter()
        .map(|(name, l)| LayerRow {
            name: name.clone(),
            scale: l.scale,
            clip_rate: l.clip_rate,
            input_sqnr_db: l.input_sqnr_db,
            weight_sqnr_db: l.weight_sqnr_db,
            exec: spec
                .layers
                .get(name)
                .map_or("-".into(), |s| format!("{:?}", s.exec)),
            timing: spec.layers.get(name).and_then(|s| s.timing),
            weight_dtype: spec
                .layers
                .get(name)
                .map_or("-".into(), |s| s.weight_dtype.clone()),
        })
        .collect();
    Ok(Report {
        episodes: format!(
            "{} fold {}/{} {}-shot test episodes × seeds {:?}",
            ds.name(),
            opts.fold,
            opts.n_folds,
            opts.shots,
            opts.seeds
        ),
        calibration: inputs.table.source.clone(),
        method: inputs.table.method,
        variants,
        layers,
        latency_note: format!(
            "median of {} frames of Segmenter::segment (320², backbone + query + 1 class) on {}, \
             {} threads; the variants timed in turn, frame by frame",
            inputs.latency_frames,
            if device.is_cpu() { "CPU" } else { "GPU" },
            mce_core::ops::compute_threads()
        ),
    })
}

/// The report as markdown tables.
pub fn markdown(r: &Report) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "### Int8 quantization\n");
    let _ = writeln!(
        s,
        "Held-out episodes: {}. Calibration: {} (artifact scales: {}).\n",
        r.episodes, r.calibration, r.method
    );
    let _ = writeln!(s, "| variant | mIoU | FB-IoU | file | latency/frame |");
    let _ = writeln!(s, "|---|---:|---:|---:|---:|");
    for v in &r.variants {
        let size = v
            .file_bytes
            .map_or("-".into(), |b| format!("{:.2} MB", b as f64 / 1e6));
        let lat = v.latency_ms.map_or("-".into(), |l| format!("{l:.1} ms"));
        let _ = writeln!(
            s,
            "| {} | {:.2} | {:.2} | {size} | {lat} |",
            v.name, v.miou, v.fb_iou
        );
    }
    let _ = writeln!(s, "\nLatency: {}.\n", r.latency_note);
    let _ = writeln!(
        s,
        "| layer | input scale | clip rate | input SQNR dB | weight SQNR dB | weight | exec |"
    );
    let _ = writeln!(s, "|---|---:|---:|---:|---:|---|---|");
    for l in &r.layers {
        let exec = match l.timing {
            Some(t) => format!(
                "{} (f32 {:.0} µs, QMatMul {:.0} µs)",
                l.exec,
                t.f32_ns as f64 / 1e3,
                t.qmatmul_ns as f64 / 1e3
            ),
            None => l.exec.clone(),
        };
        let _ = writeln!(
            s,
            "| {} | {:.4e} | {:.2e} | {:.1} | {:.1} | {} | {exec} |",
            l.name, l.scale, l.clip_rate, l.input_sqnr_db, l.weight_sqnr_db, l.weight_dtype
        );
    }
    s
}
