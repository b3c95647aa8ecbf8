//! The `mce-calib` command line.
//!
//! ```text
//! mce-calib calibrate --checkpoint C --dataset msrc --root DIR --fold 0 --episodes 200 \
//!                     --table calib/table.json --out model.int8.safetensors [--method percentile]
//! mce-calib calibrate --checkpoint C --frames my_frames/ --exemplars my_exemplars/ \
//!                     --table calib/table.json --out model.int8.safetensors   # your own data
//! mce-calib quantize  --checkpoint QAT.safetensors --table calib/table.json --out qat.int8.safetensors
//! mce-calib report    --checkpoint C --table T --artifact A [--qat-artifact Q] --dataset msrc --root DIR \
//!                     --fold 0 --episodes 300 --seeds 0 --json calib/report.json --markdown calib/REPORT.md
//! ```

use crate::calibrate::{self, CalibOptions, ExecChoice, Source};
use crate::frames::FrameSource;
use crate::report::{self, ReportInputs};
use anyhow::{Context, Result};
use mce_core::inference::{load_model_file, Segmenter};
use mce_core::quant::{CalibrationTable, Method};
use mce_train::data::{DatasetArgs, DatasetKind, Protocol};
use mce_train::eval::cli::compute_device;
use mce_train::eval::EpisodeArgs;
use std::path::PathBuf;

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Collect activation statistics on training-class episodes and/or your own frames; write the
    /// table and the artifact.
    Calibrate(CalibrateArgs),
    /// Write an artifact for a (QAT) checkpoint with the scales of an existing table.
    Quantize(QuantizeArgs),
    /// Compare float / simulated int8 / device int8 / QAT on held-out episodes.
    Report(ReportArgs),
    /// Per-frame latency of model files (float checkpoints or int8 artifacts), timed in turn frame
    /// by frame on the bundled bicycle photo; prints and writes JSON.
    Latency(LatencyArgs),
}

#[derive(Debug, clap::Args)]
pub struct LatencyArgs {
    /// Model files to time (float checkpoints and/or int8 artifacts).
    #[arg(required = true)]
    pub models: Vec<PathBuf>,
    /// Timed frames per model (the median is reported).
    #[arg(long, default_value_t = 50)]
    pub frames: usize,
    #[arg(long)]
    pub json: Option<PathBuf>,
}

fn parse_method(s: &str) -> Result<Method, String> {
    s.parse()
}

#[derive(Debug, clap::Args)]
pub struct CalibrateArgs {
    /// Float checkpoint.
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// Calibrate on training episodes of this dataset format (and/or on --frames).
    #[arg(long, value_enum, requires = "root")]
    pub dataset: Option<DatasetKind>,
    /// Dataset root.
    #[arg(long, requires = "dataset")]
    pub root: Option<PathBuf>,
    /// PASCAL: image list; FSS-1000: test-class list; COCO: instances json (images in --root).
    #[arg(long, requires = "dataset")]
    pub list: Option<PathBuf>,
    /// COCO without --list: split to open (train or val).
    #[arg(long, requires = "dataset")]
    pub split: Option<String>,
    /// Pixels a class needs to count in an image.
    #[arg(long, default_value_t = Protocol::default().min_pixels)]
    pub min_pixels: u64,
    /// Calibrate on your own frames: the images in this folder (no labels needed).
    #[arg(long, requires = "exemplars")]
    pub frames: Option<PathBuf>,
    /// Exemplars the frames are segmented against: `<class>/images/*` + `<class>/masks/*`.
    #[arg(long, requires = "frames")]
    pub exemplars: Option<PathBuf>,
    /// At most this many frames, evenly spaced in name order.
    #[arg(long)]
    pub max_frames: Option<usize>,
    #[arg(long, default_value_t = 0)]
    pub fold: usize,
    /// Number of folds (default: the dataset's).
    #[arg(long)]
    pub folds: Option<usize>,
    /// 1-shot episodes of the training classes to calibrate on.
    #[arg(long, default_value_t = 200)]
    pub episodes: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Scale method of the artifact: max, percentile[:P], mse, kl.
    #[arg(long, default_value = "percentile", value_parser = parse_method)]
    pub method: Method,
    /// Calibration table to write (JSON).
    #[arg(long)]
    pub table: PathBuf,
    /// Quantized artifact to write.
    #[arg(long)]
    pub out: PathBuf,
    /// Layers to keep in f32 (default: the backbone's sensitive layers; `none` for all int8).
    #[arg(long, value_delimiter = ',')]
    pub keep_float: Option<Vec<String>>,
    /// How each layer's execution (`QMatMul` or f32) is chosen.
    #[arg(long, value_enum, default_value_t = ExecChoice::Measured)]
    pub exec: ExecChoice,
}

impl CalibrateArgs {
    /// The dataset flags, when a dataset was named.
    pub fn dataset_args(&self) -> Option<DatasetArgs> {
        Some(DatasetArgs {
            dataset: self.dataset?,
            root: self.root.clone()?,
            list: self.list.clone(),
            split: self.split.clone(),
            min_pixels: self.min_pixels,
            filter_min_pixels: Protocol::default().filter_min_pixels,
        })
    }
}

#[derive(Debug, clap::Args)]
pub struct QuantizeArgs {
    #[arg(long)]
    pub checkpoint: PathBuf,
    #[arg(long)]
    pub table: PathBuf,
    /// Scale method (default: the table's).
    #[arg(long, value_parser = parse_method)]
    pub method: Option<Method>,
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long, value_delimiter = ',')]
    pub keep_float: Option<Vec<String>>,
    /// How each layer's execution (`QMatMul` or f32) is chosen.
    #[arg(long, value_enum, default_value_t = ExecChoice::Measured)]
    pub exec: ExecChoice,
}

#[derive(Debug, clap::Args)]
pub struct ReportArgs {
    /// The float checkpoint.
    #[arg(long)]
    pub checkpoint: PathBuf,
    #[arg(long)]
    pub table: PathBuf,
    #[arg(long)]
    pub artifact: PathBuf,
    /// Artifact of the QAT checkpoint (`mce-calib quantize`).
    #[arg(long)]
    pub qat_artifact: Option<PathBuf>,
    #[command(flatten)]
    pub episodes: EpisodeArgs,
    /// Frames timed per latency measurement.
    #[arg(long, default_value_t = 10)]
    pub latency_frames: usize,
    #[arg(long)]
    pub markdown: Option<PathBuf>,
    #[arg(long, value_delimiter = ',')]
    pub keep_float: Option<Vec<String>>,
}

fn keep_float(arg: &Option<Vec<String>>, kind: mce_core::BackboneKind) -> Vec<String> {
    match arg {
        Some(v) if v.iter().any(|s| s == "none") => vec![],
        Some(v) => v.clone(),
        None => calibrate::default_keep_float(kind),
    }
}

pub fn run(cmd: &Command) -> Result<()> {
    let device = compute_device()?;
    match cmd {
        Command::Calibrate(a) => {
            let file = calibrate::read_checkpoint(&a.checkpoint, &device)?;
            let ds = a
                .dataset_args()
                .as_ref()
                .map(DatasetArgs::open)
                .transpose()?;
            let frames = a
                .frames
                .as_ref()
                .zip(a.exemplars.as_ref())
                .map(|(f, e)| FrameSource {
                    frames: f.clone(),
                    exemplars: e.clone(),
                    max_frames: a.max_frames,
                });
            let mut sources = Vec::new();
            if let Some(ds) = &ds {
                sources.push(Source::Episodes(ds.as_ref()));
            }
            if let Some(f) = &frames {
                sources.push(Source::Frames(f));
            }
            let opts = CalibOptions {
                fold: a.fold,
                folds: a
                    .folds
                    .or_else(|| ds.as_ref().map(|d| d.default_folds()))
                    .unwrap_or(1),
                episodes: a.episodes,
                seed: a.seed,
                method: a.method,
            };
            let table = calibrate::calibrate_on(&sources, &file, &opts, &device)?;
            table.save(&a.table)?;
            let kf = keep_float(&a.keep_float, file.config.backbone);
            let spec =
                calibrate::write_artifact(&a.out, &file, &table, None, &kf, a.exec, &device)?;
            println!(
                "calibrated {} layers on {}; table {}; artifact {} ({} layers, {} bytes)",
                table.layers.len(),
                table.source,
                a.table.display(),
                a.out.display(),
                spec.layers.len(),
                std::fs::metadata(&a.out).map_or(0, |m| m.len())
            );
        }
        Command::Quantize(a) => {
            let file = calibrate::read_checkpoint(&a.checkpoint, &device)?;
            let table = CalibrationTable::load(&a.table)?;
            let kf = keep_float(&a.keep_float, file.config.backbone);
            let spec =
                calibrate::write_artifact(&a.out, &file, &table, a.method, &kf, a.exec, &device)?;
            println!("wrote {} ({} layers)", a.out.display(), spec.layers.len());
        }
        Command::Latency(a) => {
            let segs = a
                .models
                .iter()
                .map(|p| {
                    let m = load_model_file(p, &device)
                        .with_context(|| format!("loading {}", p.display()))?;
                    Ok(Segmenter::from_model(m, &device))
                })
                .collect::<Result<Vec<_>>>()?;
            let ms = report::interleaved_latency_ms(&segs.iter().collect::<Vec<_>>(), a.frames)?;
            let rows: Vec<serde_json::Value> = a
                .models
                .iter()
                .zip(&ms)
                .map(|(p, ms)| {
                    println!("{ms:8.1} ms  {}", p.display());
                    serde_json::json!({"model": p.display().to_string(), "median_ms": ms})
                })
                .collect();
            if let Some(p) = &a.json {
                let v = serde_json::json!({"frames": a.frames, "threads": mce_core::ops::compute_threads(), "models": rows});
                std::fs::write(p, serde_json::to_string_pretty(&v)?)
                    .with_context(|| format!("writing {}", p.display()))?;
            }
        }
        Command::Report(a) => {
            let ds = a.episodes.open()?;
            let opts = a.episodes.options(ds.as_ref());
            let table = CalibrationTable::load(&a.table)?;
            let file = calibrate::read_checkpoint(&a.checkpoint, &device)?;
            let inputs = ReportInputs {
                checkpoint: &a.checkpoint,
                table: &table,
                artifact: &a.artifact,
                qat_artifact: a.qat_artifact.as_deref(),
                keep_float: keep_float(&a.keep_float, file.config.backbone),
                latency_frames: a.latency_frames,
            };
            let r = report::build(ds.as_ref(), &opts, &inputs, &device)?;
            let md = report::markdown(&r);
            print!("{md}");
            if let Some(p) = &a.episodes.json {
                let text = serde_json::to_string_pretty(&r)?;
                std::fs::write(p, text).with_context(|| format!("writing {}", p.display()))?;
            }
            if let Some(p) = &a.markdown {
                std::fs::write(p, &md).with_context(|| format!("writing {}", p.display()))?;
            }
        }
    }
    Ok(())
}
