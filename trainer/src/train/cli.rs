//! `mce-train train`: flags → [`TrainConfig`], then [`train`](super::train).

use super::{train, TrainConfig};
use crate::data::DatasetArgs;
use crate::eval::cli::ResizeArg;
use crate::optim::SgdConfig;
use anyhow::{bail, Context, Result};
use candle_core::Device;
use mce_core::config::HeadKind;
use mce_core::inference::{lite0_weights_path, load_backbone};
use mce_core::model::init::InitScheme;
use mce_core::model::loss::LossKind;
use mce_core::{BackboneKind, MceConfig};
use std::path::PathBuf;

/// `--loss` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LossArg {
    /// Pixel cross-entropy (the paper).
    Ce,
    /// Cross-entropy plus the per-episode soft Dice of the foreground.
    CeDice,
}

/// `--init` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum InitArg {
    /// candle's Kaiming normal, std √(2 / fan_in).
    Candle,
    /// PyTorch's default for conv and linear layers: uniform on ±1/√fan_in.
    Torch,
}

/// `--head` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum HeadArg {
    /// The paper's MCE head: cat(f_Q, V_s, f_cross, A_sim) → ASPP decoder.
    Paper,
    /// The class-agnostic matching head: cat(A_sim, nearest-neighbour priors) plus a prior skip.
    Matching,
    /// MCE with matching: the paper's head whose decoder also sees the nearest-neighbour priors
    /// (matched over all shots at once), plus a prior skip; starts as the nearest-neighbour rule.
    CrossMatching,
}

impl From<HeadArg> for HeadKind {
    fn from(h: HeadArg) -> Self {
        match h {
            HeadArg::Paper => HeadKind::Paper,
            HeadArg::Matching => HeadKind::Matching,
            HeadArg::CrossMatching => HeadKind::CrossMatching,
        }
    }
}

/// Flags of `train`.
#[derive(Debug, clap::Args)]
pub struct TrainArgs {
    #[command(flatten)]
    pub data: DatasetArgs,
    /// Model preset: `edge` (Lite0, 320) or `paper` (ResNet-50, 473).
    #[arg(long, default_value = "edge")]
    pub preset: String,
    /// Override the preset's input size.
    #[arg(long)]
    pub image_size: Option<usize>,
    /// How images are fitted to the square input, in training and wherever the model runs later
    /// (saved in the checkpoint's config).
    #[arg(long, value_enum, default_value_t = ResizeArg::Letterbox)]
    pub resize: ResizeArg,
    /// The head: `paper` (the paper's MCE head) or `matching` (class-agnostic: the decoder sees
    /// only the similarity map and the nearest-neighbour priors, and starts as that rule).
    #[arg(long, value_enum, default_value_t = HeadArg::Paper)]
    pub head: HeadArg,
    /// Older spelling of `--head matching` (kept so that earlier commands still run).
    #[arg(long, hide = true)]
    pub class_agnostic: bool,
    /// Older flag that came with `--class-agnostic`; the matching head always has the residual.
    #[arg(long, hide = true, requires = "class_agnostic")]
    pub prior_residual: bool,
    /// Backbone weights (safetensors, original names). Default: the bundled Lite0 for `edge`.
    #[arg(long)]
    pub backbone_weights: Option<PathBuf>,
    #[arg(long, default_value_t = 0)]
    pub fold: usize,
    #[arg(long, default_value_t = 4)]
    pub folds: usize,
    /// Shots per episode, drawn per step from this list.
    #[arg(long, value_delimiter = ',', default_value = "1")]
    pub shots: Vec<usize>,
    /// Episodes per step.
    #[arg(long, default_value_t = 8)]
    pub batch: usize,
    #[arg(long, default_value_t = 2000)]
    pub steps: usize,
    /// Base learning rate (paper: 0.0025 PASCAL, 0.005 COCO).
    #[arg(long, default_value_t = 0.0025)]
    pub lr: f64,
    #[arg(long, default_value_t = 0.9)]
    pub momentum: f64,
    #[arg(long, default_value_t = 1e-4)]
    pub weight_decay: f64,
    /// Linear learning-rate warm-up steps (0 = the paper's plain poly schedule).
    #[arg(long, default_value_t = 0)]
    pub warmup_steps: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Longer-side scales of the cached image variants.
    #[arg(long, value_delimiter = ',', default_value = "1.0")]
    pub scales: Vec<f32>,
    /// Do not add mirrored variants.
    #[arg(long)]
    pub no_flip: bool,
    /// Hold out about one training image in this many as validation queries (0 or 1: none, no
    /// validation and no best checkpoint).
    #[arg(long, default_value_t = 8)]
    pub val_every_image: u64,
    #[arg(long, default_value_t = 300)]
    pub val_episodes: usize,
    #[arg(long, default_value_t = 100)]
    pub val_interval: usize,
    #[arg(long, default_value_t = 50)]
    pub checkpoint_interval: usize,
    /// Stop with a checkpoint after this many minutes.
    #[arg(long)]
    pub max_minutes: Option<f64>,
    /// Pause with a checkpoint after this step (continue later with --resume).
    #[arg(long)]
    pub stop_at: Option<usize>,
    /// Online mode: backbone features every step, each image with PFENet's augmentation (scale,
    /// rotation, blur, flip, padded crop). For a GPU; on a CPU the default feature cache is faster.
    #[arg(long, conflicts_with = "qat")]
    pub online: bool,
    /// Loss: the paper's pixel cross-entropy, or cross-entropy plus a per-episode soft Dice term.
    #[arg(long, value_enum, default_value_t = LossArg::Ce)]
    pub loss: LossArg,
    /// How the head's conv and linear weights are initialised.
    #[arg(long, value_enum, default_value_t = InitArg::Candle)]
    pub init: InitArg,
    /// Run directory (checkpoints, log.jsonl).
    #[arg(long)]
    pub out: PathBuf,
    /// Continue from `<out>/last.safetensors`.
    #[arg(long)]
    pub resume: bool,
    /// `cpu` or `cuda:N` (CUDA needs a build with `--features cuda`).
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Quantization-aware fine-tuning of `--from` with the scales of `--calibration`
    /// (writes `<out>/qat.safetensors`; `mce-calib quantize` makes its int8 artifact).
    #[arg(long, requires_all = ["from", "calibration"])]
    pub qat: bool,
    /// With --qat: run the same fine-tune without fake quantization (the float control; writes
    /// `<out>/control.safetensors`).
    #[arg(long, requires = "qat")]
    pub qat_control: bool,
    /// The checkpoint the head starts from: with --qat, the float checkpoint to fine-tune;
    /// otherwise a warm start, e.g. a `cross-matching` head from a trained `paper` head (every
    /// tensor that fits is copied, wider decoder inputs get zeros; the rest starts from --seed).
    #[arg(long)]
    pub from: Option<PathBuf>,
    /// Calibration table (`mce-calib calibrate --table`) with the starting scales.
    #[arg(long)]
    pub calibration: Option<PathBuf>,
}

/// Parse `cpu` / `cuda:N`.
pub fn parse_device(name: &str) -> Result<Device> {
    match name.strip_prefix("cuda:") {
        None if name == "cpu" => Ok(Device::Cpu),
        Some(n) => {
            let ordinal: usize = n.parse().with_context(|| format!("bad device {name:?}"))?;
            Device::new_cuda(ordinal).with_context(|| {
                format!(
                    "{name}: CUDA unavailable (build with --features cuda on a machine with a GPU)"
                )
            })
        }
        None => bail!("unknown device {name:?} (cpu or cuda:N)"),
    }
}

impl TrainArgs {
    fn config(&self) -> Result<TrainConfig> {
        let head = match self.class_agnostic {
            true => HeadKind::Matching,
            false => self.head.into(),
        };
        let mut model = MceConfig::preset(&self.preset)?.with_head(head);
        if let Some(s) = self.image_size {
            model.image_size = s;
        }
        model.resize = self.resize.into();
        model.validate()?;
        if self.shots.is_empty() || self.shots.contains(&0) {
            bail!("--shots needs values ≥ 1");
        }
        Ok(TrainConfig {
            model,
            fold: self.fold,
            folds: self.folds,
            shots: self.shots.clone(),
            batch: self.batch.max(1),
            steps: self.steps,
            sgd: SgdConfig {
                lr: self.lr,
                momentum: self.momentum,
                weight_decay: self.weight_decay,
            },
            poly_power: 0.9,
            warmup_steps: self.warmup_steps,
            seed: self.seed,
            scales: self.scales.clone(),
            flips: !self.no_flip,
            val_every_image: self.val_every_image,
            val_episodes: self.val_episodes,
            val_interval: self.val_interval.max(1),
            checkpoint_interval: self.checkpoint_interval.max(1),
            max_minutes: self.max_minutes,
            stop_at: self.stop_at,
            online: self.online,
            loss: match self.loss {
                LossArg::Ce => LossKind::CrossEntropy,
                LossArg::CeDice => LossKind::CrossEntropyDice,
            },
            init: match self.init {
                InitArg::Candle => InitScheme::Candle,
                InitArg::Torch => InitScheme::Torch,
            },
            init_from: if self.qat { None } else { self.from.clone() },
        })
    }
}

pub fn run(args: &TrainArgs) -> Result<()> {
    let cfg = args.config()?;
    let device = parse_device(&args.device)?;
    if let (true, Some(from), Some(calibration)) = (args.qat, &args.from, &args.calibration) {
        let ds = args.data.open()?;
        let keep_float = match cfg.model.backbone {
            BackboneKind::EfficientnetLite0 => mce_core::quant::artifact::SENSITIVE_LITE0
                .map(String::from)
                .to_vec(),
            BackboneKind::Resnet50 => vec![],
        };
        let inputs = super::qat::QatInputs {
            from,
            calibration,
            keep_float,
            fake_quant: !args.qat_control,
        };
        let path = super::qat::qat(ds.as_ref(), &cfg, &inputs, &args.out, &device)?;
        println!(
            "{}: {} steps from {}; wrote {}",
            if args.qat_control {
                "QAT control (no fake quantization)"
            } else {
                "QAT"
            },
            cfg.steps,
            from.display(),
            path.display()
        );
        return Ok(());
    }
    let weights = match (&args.backbone_weights, cfg.model.backbone) {
        (Some(p), _) => p.clone(),
        (None, BackboneKind::EfficientnetLite0) => lite0_weights_path(),
        (None, BackboneKind::Resnet50) => {
            bail!("the paper preset needs --backbone-weights resnet50.safetensors (see README)")
        }
    };
    let backbone = load_backbone(&cfg.model, &weights, &device)?;
    let ds = args.data.open()?;
    let summary = train(
        ds.as_ref(),
        &cfg,
        &backbone,
        &weights,
        args.out.clone(),
        args.resume,
        &device,
    )?;
    println!(
        "trained {} steps in {:.1} min; final loss {:.4}; best validation mIoU {}; last: {}{}",
        summary.steps_done,
        summary.seconds / 60.0,
        summary.final_loss,
        summary.best_val_miou.map_or("n/a".into(), |m| format!(
            "{:.2} at step {}",
            100.0 * m,
            summary.best_step.unwrap_or(0)
        )),
        summary.last.display(),
        summary
            .best
            .map_or(String::new(), |b| format!("; best: {}", b.display())),
    );
    Ok(())
}
