//! `mce-device bench`: per-stage latency of one frame for the model presets, written as JSON.
//!
//! Stages per frame: backbone (query image), the cross-image encoding of each level (query tokens and
//! attention, plus one cross-encoding per shot), the decoder (ASPP, classifier), and the whole head
//! (`encode_query` + `decode`). Support encoding is reported separately: the device does it once per
//! exemplar, not per frame. Each figure is the median of `--runs` runs after one warm-up run.
//! Weights: the bundled Lite0 for the edge preset; ResNet-50 with zero weights (timing only: no
//! ImageNet ResNet-50 ships with mce) for the paper preset; a randomly initialised head for both.

use anyhow::{Context, Result};
use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use mce_core::backbone::{AnyBackbone, Backbone};
use mce_core::inference::load_backbone;
use mce_core::model::Mode;
use mce_core::{Mce, MceConfig};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

/// Arguments of `bench`.
#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// Presets to measure.
    #[arg(long, value_delimiter = ',', default_value = "edge,paper")]
    pub presets: Vec<String>,
    /// Support shots K.
    #[arg(long, value_delimiter = ',', default_value = "1,5")]
    pub shots: Vec<usize>,
    /// Timed runs per setting (the median is reported).
    #[arg(long, default_value_t = 10)]
    pub runs: usize,
    /// JSON output file.
    #[arg(long, default_value = "bench.json")]
    pub out: PathBuf,
}

/// Median milliseconds per stage for one (preset, K).
#[derive(Debug, Serialize)]
pub struct StageTimes {
    pub preset: String,
    pub image_size: usize,
    pub shots: usize,
    pub runs: usize,
    /// Stage name → median milliseconds.
    pub median_ms: BTreeMap<String, f64>,
}

#[derive(Debug, Serialize)]
struct Report {
    build: &'static str,
    threads: usize,
    note: &'static str,
    results: Vec<StageTimes>,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn timed<T>(f: impl FnOnce() -> candle_core::Result<T>) -> candle_core::Result<(T, f64)> {
    let t = Instant::now();
    let out = f()?;
    Ok((out, t.elapsed().as_secs_f64() * 1e3))
}

fn backbone_for(cfg: &MceConfig, device: &Device) -> Result<AnyBackbone> {
    match cfg.backbone {
        mce_core::BackboneKind::EfficientnetLite0 => {
            let path = mce_core::inference::lite0_weights_path();
            Ok(load_backbone(cfg, &path, device)?)
        }
        mce_core::BackboneKind::Resnet50 => Ok(AnyBackbone::new(
            cfg.backbone,
            VarBuilder::zeros(DType::F32, device),
        )?),
    }
}

/// One timed run: stage → milliseconds.
fn run_once(
    cfg: &MceConfig,
    backbone: &AnyBackbone,
    head: &Mce,
    support: &[mce_core::model::SupportEncoding],
    support_feats: &mce_core::Features,
    mask: &Tensor,
) -> Result<BTreeMap<String, f64>> {
    let s = cfg.image_size;
    let image = Tensor::randn(0f32, 1f32, (1, 3, s, s), &Device::Cpu)?;
    let mut t = BTreeMap::new();
    let (feats, ms) = timed(|| backbone.features(&image))?;
    t.insert("backbone".to_string(), ms);
    let levels = feats.levels();
    let support_levels = support_feats.levels();
    if let Some(cross) = head.cross_encoding() {
        for (l, enc) in cross.levels() {
            // support tokens are cached per exemplar on the device: not part of the frame time
            let st = enc.encode_support(support_levels[l - 2], mask)?;
            let (_, ms) = timed(|| {
                let q = enc.encode_query(levels[l - 2])?;
                for _ in 0..support.len() {
                    enc.forward(&q, &st)?;
                }
                Ok(())
            })?;
            t.insert(format!("mce_level{l}"), ms);
        }
    }
    let (query, ms_q) = timed(|| head.encode_query(&feats, Mode::Eval))?;
    let (x, _) = timed(|| head.decoder_input(&query, support))?;
    let (_, ms) = timed(|| head.decode_input(&x))?;
    t.insert("decoder".to_string(), ms);
    let (_, ms_d) = timed(|| head.decode(&query, support))?;
    t.insert("head_total".to_string(), ms_q + ms_d);
    t.insert("frame_total".to_string(), t["backbone"] + ms_q + ms_d);
    let (_, ms) = timed(|| head.encode_support(support_feats, mask, Mode::Eval))?;
    t.insert("support_encode_per_shot".to_string(), ms);
    Ok(t)
}

fn bench_preset(name: &str, shots: &[usize], runs: usize) -> Result<Vec<StageTimes>> {
    let cfg = MceConfig::preset(name)?;
    let device = Device::Cpu;
    let backbone = backbone_for(&cfg, &device)?;
    let vm = VarMap::new();
    Mce::new(&cfg, VarBuilder::from_varmap(&vm, DType::F32, &device))?;
    let head = Mce::frozen(&cfg, &vm)?;
    let s = cfg.image_size;
    let support_img = Tensor::randn(0f32, 1f32, (1, 3, s, s), &device)?;
    let support_feats = backbone.features(&support_img)?;
    let mask = Tensor::ones((1, 1, s, s), DType::F32, &device)?
        .pad_with_zeros(2, 0, 0)?
        .narrow(2, 0, s)?;
    let mut out = Vec::new();
    for &k in shots {
        let support = (0..k)
            .map(|_| head.encode_support(&support_feats, &mask, Mode::Eval))
            .collect::<candle_core::Result<Vec<_>>>()?;
        run_once(&cfg, &backbone, &head, &support, &support_feats, &mask)?; // warm-up
        let mut samples: BTreeMap<String, Vec<f64>> = BTreeMap::new();
        for _ in 0..runs {
            for (stage, ms) in run_once(&cfg, &backbone, &head, &support, &support_feats, &mask)? {
                samples.entry(stage).or_default().push(ms);
            }
        }
        let median_ms: BTreeMap<String, f64> =
            samples.into_iter().map(|(k, v)| (k, median(v))).collect();
        println!("{name:>6} K={k}: {}", summary_line(&median_ms));
        out.push(StageTimes {
            preset: name.to_string(),
            image_size: s,
            shots: k,
            runs,
            median_ms,
        });
    }
    Ok(out)
}

fn summary_line(m: &BTreeMap<String, f64>) -> String {
    m.iter()
        .map(|(k, v)| format!("{k} {v:.1} ms"))
        .collect::<Vec<_>>()
        .join(", ")
}

pub fn run(args: &BenchArgs) -> Result<()> {
    let mut results = Vec::new();
    for preset in &args.presets {
        results.extend(bench_preset(preset, &args.shots, args.runs.max(1))?);
    }
    let report = Report {
        build: if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        },
        threads: mce_core::ops::compute_threads(),
        note: "median per stage; paper preset uses zero ResNet-50 weights (timing only)",
        results,
    };
    let json = serde_json::to_string_pretty(&report)?;
    std::fs::write(&args.out, json).with_context(|| format!("writing {}", args.out.display()))?;
    println!("wrote {}", args.out.display());
    Ok(())
}
