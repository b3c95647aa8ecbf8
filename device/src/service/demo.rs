//! `mce-device demo`: the whole service path on bundled data, in one command.
//!
//! Registers one bundled exemplar for each of 1–3 classes the default model never saw in training
//! (MSRC-v2 fold 0: bicycle, aeroplane, dog) in a temporary registry, plays the other bundled
//! photos through the real pipeline (file source, lossless, registry classes), and writes per
//! frame an overlay PNG and a JSON record (classes found, IoU against the bundled label of the
//! frame's class, latency) plus `summary.json`, then prints a table with the mean IoU and the
//! frames per second.

use super::notify::Notifier;
use super::pipeline::{Pipeline, PipelineOptions};
use super::registry_classes::RegistryClasses;
use super::source::file::ImageSequence;
use super::state::SourceState;
use super::worker::{Engine, FrameOutput, Render};
use crate::model::ModelArgs;
use crate::registry::{ExemplarInput, RegisterOptions, Registry};
use anyhow::{bail, Context, Result};
use candle_core::Device;
use mce_core::config::HeadKind;
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::broadcast::error::TryRecvError;

/// The bundled classes: (name, MSRC class id, exemplar stem in `assets/msrc`).
pub const DEMO_CLASSES: [(&str, u8, &str); 3] = [
    ("bicycle", 12, "8_10_s"),
    ("aeroplane", 8, "4_12_s"),
    ("dog", 20, "16_10_s"),
];

/// Arguments of `demo`.
#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// How many bundled classes to register and segment: 1 = bicycle, 2 = + aeroplane, 3 = + dog.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u8).range(1..=3))]
    pub classes: u8,
    /// Where to write overlays and JSON.
    #[arg(long, default_value = "out/demo")]
    pub out: PathBuf,
    /// Play only the first N frames (frames alternate between the classes). Default: all 7.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub frames: Option<u64>,
    /// The bundled samples (default: assets/msrc of this source tree).
    #[arg(long, hide = true)]
    pub assets: Option<PathBuf>,
    /// Leave the legend (class colours, names, areas) out of the overlay PNGs.
    #[arg(long)]
    pub no_legend: bool,
}

/// One frame of the demo.
#[derive(Debug, Clone, Serialize)]
pub struct DemoFrame {
    pub frame: String,
    /// The bundled class in this frame's label.
    pub true_class: String,
    /// IoU of that class's predicted pixels with its labelled pixels (void excluded); `None`
    /// when that class was not registered in this run.
    pub iou: Option<f64>,
    /// Registered classes with any pixel, with their area fraction.
    pub classes_found: Vec<(String, f64)>,
    /// Processing latency: capture + inference + encode, milliseconds.
    pub latency_ms: f64,
    /// Time the frame waited for the previous one to finish (lossless batch mode).
    pub queue_ms: f64,
    pub inference_ms: f64,
    pub overlay: String,
}

/// `summary.json`.
#[derive(Debug, Clone, Serialize)]
pub struct DemoSummary {
    pub model: String,
    pub model_trained: bool,
    /// The kind of head the model runs (`paper`, `matching`).
    pub model_head: HeadKind,
    pub classes: Vec<String>,
    pub frames: Vec<DemoFrame>,
    pub mean_iou: Option<f64>,
    pub frames_per_second: f64,
    pub mean_latency_ms: f64,
}

/// A temporary folder removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Result<Self> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let dir = std::env::temp_dir().join(format!("mce-demo-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(Self(dir))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn default_assets() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../assets/msrc")
}

/// The bundled photos that are not exemplars, alternating between the photo series (so that the
/// first frames cover every class), at most `limit`.
fn demo_frames(assets: &Path, limit: Option<u64>) -> Result<Vec<PathBuf>> {
    let mut frames: Vec<PathBuf> = std::fs::read_dir(assets)
        .with_context(|| format!("reading the bundled samples in {}", assets.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            name.ends_with("_s.png") && !DEMO_CLASSES.iter().any(|c| name == format!("{}.png", c.2))
        })
        .collect();
    frames.sort();
    if frames.is_empty() {
        bail!("no bundled frames (*_s.png) in {}", assets.display());
    }
    let series = |p: &PathBuf| {
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
        name.split('_').next().unwrap_or("").to_string()
    };
    let mut groups: Vec<(String, std::collections::VecDeque<PathBuf>)> = Vec::new();
    for f in frames {
        let key = series(&f);
        match groups.iter_mut().find(|(k, _)| *k == key) {
            Some((_, g)) => g.push_back(f),
            None => groups.push((key, std::collections::VecDeque::from([f]))),
        }
    }
    let mut out = Vec::new();
    while groups.iter().any(|(_, g)| !g.is_empty()) {
        out.extend(groups.iter_mut().filter_map(|(_, g)| g.pop_front()));
    }
    out.truncate(limit.map_or(usize::MAX, |n| n as usize));
    Ok(out)
}

/// The frame's class (the bundled class with most labelled pixels) and its IoU.
fn score(out: &FrameOutput, gt_path: &Path, registered: &[&str]) -> Result<(String, Option<f64>)> {
    let gt = image::open(gt_path)
        .with_context(|| format!("reading the label {}", gt_path.display()))?
        .to_luma8();
    let l = &out.labels;
    if (gt.width() as usize, gt.height() as usize) != (l.width, l.height) {
        bail!("{}: label size differs from the frame", gt_path.display());
    }
    let gt = gt.into_raw();
    let (name, id, _) = DEMO_CLASSES
        .iter()
        .max_by_key(|(_, id, _)| gt.iter().filter(|&&v| v == *id).count())
        .expect("three classes");
    let Some(idx) = registered.iter().position(|n| n == name) else {
        return Ok((name.to_string(), None));
    };
    let (mut inter, mut union) = (0u64, 0u64);
    for (&g, &p) in gt.iter().zip(&l.labels) {
        if g == 255 {
            continue;
        }
        let (g, p) = (g == *id, usize::from(p) == idx + 1);
        inter += u64::from(g && p);
        union += u64::from(g || p);
    }
    let iou = if union == 0 {
        1.0
    } else {
        inter as f64 / union as f64
    };
    Ok((name.to_string(), Some(iou)))
}

pub fn run(args: &DemoArgs) -> Result<()> {
    let assets = args.assets.clone().unwrap_or_else(default_assets);
    let frames = demo_frames(&assets, args.frames)?;
    let segmenter = args.model.load(&Device::Cpu)?;
    let trained = segmenter.trained;
    let model_head = segmenter.config().head.kind();
    let model = match (&args.model.model, &args.model.init) {
        (Some(p), _) => p.display().to_string(),
        (None, Some(i)) => format!("--init {i} (UNTRAINED head)"),
        (None, None) => crate::model::default_model_path().display().to_string(),
    };
    let chosen = &DEMO_CLASSES[..usize::from(args.classes)];
    let tmp = TempDir::new()?;
    let registry_dir = tmp.0.join("registry");
    let mut registry = Registry::open(&registry_dir)?;
    for (name, id, stem) in chosen {
        let opts = RegisterOptions {
            mask_class: Some(*id),
            ..RegisterOptions::default()
        };
        let input = ExemplarInput {
            image: assets.join(format!("{stem}.png")),
            mask: assets.join(format!("{stem}_GT.png")),
        };
        registry
            .register(name, &[input], &segmenter, &opts)
            .with_context(|| format!("registering the bundled {name} exemplar"))?;
        println!("registered {name:<9} from {stem}.png (MSRC class {id}, unseen in training)");
    }
    let frame_dir = tmp.0.join("frames");
    std::fs::create_dir_all(&frame_dir)?;
    for (i, f) in frames.iter().enumerate() {
        let name = f.file_name().expect("a file").to_string_lossy();
        std::fs::copy(f, frame_dir.join(format!("{i:03}-{name}")))
            .with_context(|| format!("copying {}", f.display()))?;
    }
    let names: Vec<&str> = chosen.iter().map(|c| c.0).collect();
    let source = RegistryClasses {
        dir: registry_dir,
        filter: Some(names.iter().map(|n| n.to_string()).collect()),
    };
    let engine = Engine::new(segmenter, Box::new(source))?;
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;

    let sequence = ImageSequence::open(&frame_dir, false, None)?;
    let options = PipelineOptions {
        lossless: true,
        render: Render {
            legend: !args.no_legend,
            ..Render::default()
        },
        ..PipelineOptions::default()
    };
    let start = Instant::now();
    let (pipeline, mut rx) = Pipeline::start_subscribed(
        Box::new(sequence),
        engine,
        options,
        Arc::new(Notifier::with_interval(None)),
    )?;
    println!(
        "\n{:<8} {:<10} {:>6}  {:>9}  classes found (area)",
        "frame", "class", "IoU", "latency"
    );
    let mut rows = Vec::new();
    let mut last_output = start;
    while rows.len() < frames.len() {
        let out = match rx.try_recv() {
            Ok(o) => o,
            Err(TryRecvError::Empty) => {
                let sh = pipeline.shared();
                let m = &sh.metrics;
                let lost = m.inference_errors.get() + m.frames_corrupt.get();
                if rows.len() as u64 + lost >= frames.len() as u64
                    || sh.source_status().state == SourceState::Failed
                {
                    break;
                }
                std::thread::sleep(Duration::from_millis(5));
                continue;
            }
            Err(e) => bail!("the demo fell behind the pipeline: {e}"),
        };
        last_output = Instant::now();
        let src = out.results.frame.source.clone().unwrap_or_default();
        let stem = Path::new(&src)
            .file_stem()
            .and_then(|s| s.to_str())
            .and_then(|s| s.split_once('-'))
            .map_or("frame".to_string(), |(_, s)| s.to_string());
        let (true_class, iou) = score(&out, &assets.join(format!("{stem}_GT.png")), &names)?;
        let overlay = format!("{stem}_overlay.png");
        out.overlay
            .save(args.out.join(&overlay))
            .with_context(|| format!("writing {}", args.out.join(&overlay).display()))?;
        let l = &out.results.latency;
        let row = DemoFrame {
            frame: stem.clone(),
            true_class,
            iou,
            classes_found: out
                .results
                .classes
                .iter()
                .filter(|c| c.pixels > 0)
                .map(|c| (c.name.clone(), c.area))
                .collect(),
            latency_ms: l.capture_ms + l.inference_ms + l.encode_ms,
            queue_ms: l.queue_ms,
            inference_ms: l.inference_ms,
            overlay,
        };
        let json = serde_json::to_vec_pretty(&row)?;
        std::fs::write(args.out.join(format!("{stem}.json")), json)?;
        let found: Vec<String> = row
            .classes_found
            .iter()
            .map(|(n, a)| format!("{n} {:.1}%", 100.0 * a))
            .collect();
        println!(
            "{:<8} {:<10} {:>6}  {:>6.0} ms  {}",
            row.frame,
            row.true_class,
            row.iou.map_or("-".into(), |v| format!("{v:.3}")),
            row.latency_ms,
            if found.is_empty() {
                "none".into()
            } else {
                found.join(", ")
            }
        );
        rows.push(row);
    }
    let report = pipeline.shutdown();
    let wall = last_output.duration_since(start).as_secs_f64().max(1e-9);
    let ious: Vec<f64> = rows.iter().filter_map(|r| r.iou).collect();
    let summary = DemoSummary {
        model,
        model_trained: trained,
        model_head,
        classes: names.iter().map(|n| n.to_string()).collect(),
        mean_iou: (!ious.is_empty()).then(|| ious.iter().sum::<f64>() / ious.len() as f64),
        frames_per_second: rows.len() as f64 / wall,
        mean_latency_ms: rows.iter().map(|r| r.latency_ms).sum::<f64>() / rows.len().max(1) as f64,
        frames: rows,
    };
    let path = args.out.join("summary.json");
    std::fs::write(&path, serde_json::to_vec_pretty(&summary)?)
        .with_context(|| format!("writing {}", path.display()))?;
    println!(
        "\n{} frames, {} class(es): mean IoU {} over {} frame(s) of registered classes, \
         {:.2} frames/s (mean latency {:.0} ms)",
        summary.frames.len(),
        summary.classes.len(),
        summary.mean_iou.map_or("-".into(), |v| format!("{v:.3}")),
        ious.len(),
        summary.frames_per_second,
        summary.mean_latency_ms
    );
    println!(
        "overlays: {0}/*_overlay.png   per-frame JSON: {0}/<frame>.json   summary: {1}",
        args.out.display(),
        path.display()
    );
    if report.processed < frames.len() as u64 {
        bail!(
            "only {} of {} frames were segmented ({} failed, {} unreadable)",
            report.processed,
            frames.len(),
            report.inference_errors,
            report.corrupt
        );
    }
    if !trained {
        crate::model::warn_untrained();
    }
    Ok(())
}
