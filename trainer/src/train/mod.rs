//! Episodic meta-training of the MCE head on a frozen backbone: cached-feature mode (default), or
//! online mode with augmentation ([`online`]).
//!
//! ```text
//! dataset ─ train_pool(fold) ─ split ─▶ train pool / validation queries (training classes only)
//!   FeatureStore (backbone once per image × variant; online: validation images only)
//!   [online: images of each step ─ augment ─ backbone]
//!   step s: seed_s = hash(seed, s) ─▶ episodes, variants, dropout ─▶ Batch ─▶ head ─▶ CE loss
//!           ─▶ backward ─▶ SGD (momentum, decay) at poly LR
//!   every N steps: validation mIoU ─▶ best.safetensors;  last.safetensors + optimizer state
//! ```

pub mod batch;
pub mod cli;
pub mod online;
pub mod qat;
pub mod state;
pub mod validate;

use crate::data::{FewShotDataset, SampleRef};
use crate::features::{progress, FeatureStore};
use crate::optim::{warmup_poly_lr, Sgd, SgdConfig};
use crate::transform::Variant;
use crate::{Error, Result};
use candle_core::{DType, Device};
use candle_nn::{Optimizer, VarMap};
use mce_core::model::loss::LossKind;
use mce_core::model::Mode;
use mce_core::ops::splitmix64;
use mce_core::{checkpoint, AnyBackbone, Mce, MceConfig};
use rand_chacha::rand_core::SeedableRng;
use serde::{Deserialize, Serialize};
use state::RunFiles;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

/// Everything that defines a training run (saved in every checkpoint's metadata).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainConfig {
    pub model: MceConfig,
    pub fold: usize,
    pub folds: usize,
    /// K of each batch, drawn per step from this list (e.g. `[1]` or `[1, 5]`).
    pub shots: Vec<usize>,
    pub batch: usize,
    pub steps: usize,
    pub sgd: SgdConfig,
    pub poly_power: f64,
    /// Linear learning-rate warm-up steps (0: the paper's plain poly schedule).
    #[serde(default)]
    pub warmup_steps: usize,
    pub seed: u64,
    /// Longer-side scales of the cached variants; each also mirrored when `flips`.
    pub scales: Vec<f32>,
    pub flips: bool,
    /// About 1/`val_every_image` of the training images become validation queries.
    pub val_every_image: u64,
    pub val_episodes: usize,
    pub val_interval: usize,
    pub checkpoint_interval: usize,
    /// Stop (with a checkpoint) once this much wall time has passed.
    pub max_minutes: Option<f64>,
    /// Pause (with a checkpoint) after this step; `--resume` continues on the same schedule.
    pub stop_at: Option<usize>,
    /// Online mode ([`online`]): backbone features per step, with PFENet's augmentation, instead of
    /// the feature cache.
    #[serde(default)]
    pub online: bool,
    /// The loss minimised (absent from older runs, which read as the paper's cross-entropy).
    #[serde(default)]
    pub loss: LossKind,
}

/// What a run reports at the end.
#[derive(Debug, Clone, Serialize)]
pub struct TrainSummary {
    pub steps_done: usize,
    pub seconds: f64,
    pub final_loss: f64,
    pub best_val_miou: Option<f64>,
    pub best_step: Option<usize>,
    pub last: PathBuf,
    pub best: Option<PathBuf>,
}

/// A JSON-lines log.
struct Log(std::fs::File);

impl Log {
    fn write(&mut self, value: serde_json::Value) -> Result<()> {
        writeln!(self.0, "{value}").map_err(|e| Error::io("log.jsonl", e))
    }
}

/// Train on `ds` into `out`, resuming from `out/last.safetensors` when `resume`.
pub fn train(
    ds: &dyn FewShotDataset,
    cfg: &TrainConfig,
    backbone: &AnyBackbone,
    backbone_weights: &std::path::Path,
    out: PathBuf,
    resume: bool,
    device: &Device,
) -> Result<TrainSummary> {
    std::fs::create_dir_all(&out).map_err(|e| Error::io(&out, e))?;
    let files = RunFiles { dir: out };
    let split = validate::split(
        &ds.train_pool(cfg.fold, cfg.folds)?,
        cfg.val_every_image,
        cfg.seed,
    );
    let val_episodes = validate::episodes(&split, 1, cfg.val_episodes, cfg.seed ^ 0x0076_616c);
    let refs: Vec<SampleRef> = [&split.train, &split.val]
        .iter()
        .flat_map(|p| p.classes.iter())
        .flat_map(|(c, imgs)| imgs.iter().map(|&image| SampleRef { image, class: *c }))
        .collect();
    tracing::info!(
        "fold {}: {} training classes, {} (image, class) pairs, {} validation episodes",
        cfg.fold,
        split.train.classes.len(),
        refs.len(),
        val_episodes.len()
    );
    let variants = Variant::grid(&cfg.scales, cfg.flips);
    let online = cfg
        .online
        .then(|| online::OnlineBatches::new(ds, backbone, cfg.model.image_size));
    let refs = match online {
        // Only validation reads the cache.
        Some(_) => crate::eval::episode_refs([val_episodes.as_slice()]),
        None => refs,
    };
    let store = FeatureStore::build(ds, &refs, backbone, cfg.model.image_size, &variants, device)?;

    let varmap = VarMap::new();
    let vb = mce_core::model::init::seeded_varbuilder(&varmap, cfg.seed, DType::F32, device);
    let head = Mce::new(&cfg.model, vb)?;
    let mut opt = Sgd::from_varmap(&varmap, cfg.sgd);
    let backbone_tensors = state::backbone_tensors(backbone_weights, device)?;
    let mut start = 0;
    if resume && files.last().exists() {
        let file = checkpoint::read(&files.last(), device)?;
        checkpoint::load_head_into(&file, &varmap)?;
        start = file
            .extra
            .get("step")
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        opt.load_state(state::load_optimizer(&files, start, device)?)?;
        tracing::info!("resumed from {} at step {start}", files.last().display());
    }
    let mut log = Log(std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(files.log())
        .map_err(|e| Error::io(files.log(), e))?);
    let extra = |step: usize| {
        BTreeMap::from([
            ("step".to_string(), step.to_string()),
            (
                "train_config".to_string(),
                serde_json::to_string(cfg).expect("serialises"),
            ),
        ])
    };

    let bar = progress(cfg.steps as u64, "train");
    bar.set_position(start as u64);
    let t0 = Instant::now();
    let (mut best, mut best_step, mut loss_avg) = (None::<f64>, None, f64::NAN);
    let mut step = start;
    while step < cfg.steps {
        let step_seed = splitmix64(cfg.seed ^ splitmix64(step as u64));
        let k = cfg.shots[(step_seed % cfg.shots.len() as u64) as usize];
        let episodes = batch::sample_episodes(&split.train, k, cfg.batch, step_seed)?;
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(step_seed ^ 1);
        let b = match &online {
            Some(o) => o.assemble(&episodes, &mut rng, device)?,
            None => batch::assemble(
                &store,
                &episodes,
                batch::random_variants(&store, &mut rng),
                device,
            )?,
        };
        let logits = head.forward(
            &b.query,
            &b.shots,
            Mode::Train {
                seed: step_seed ^ 2,
            },
        )?;
        let loss = cfg.loss.loss(&logits, &b.labels)?;
        let lr = warmup_poly_lr(
            cfg.sgd.lr,
            step,
            cfg.steps,
            cfg.poly_power,
            cfg.warmup_steps,
        );
        opt.set_learning_rate(lr);
        opt.step(&loss.backward()?)?;
        step += 1;

        let l = f64::from(loss.to_scalar::<f32>()?);
        loss_avg = if loss_avg.is_nan() {
            l
        } else {
            0.95 * loss_avg + 0.05 * l
        };
        let secs = t0.elapsed().as_secs_f64();
        let eps = ((step - start) * cfg.batch) as f64 / secs;
        bar.set_prefix(format!(
            "loss {loss_avg:.3} lr {lr:.2e} {eps:.2} ep/s K={k}"
        ));
        bar.set_position(step as u64);
        log.write(serde_json::json!({"step": step, "loss": l, "lr": lr, "shots": k, "episodes_per_s": eps, "elapsed_s": secs}))?;

        let out_of_time = cfg.max_minutes.is_some_and(|m| secs / 60.0 >= m)
            || cfg.stop_at.is_some_and(|s| step >= s);
        let last_step = step == cfg.steps || out_of_time;
        if step % cfg.val_interval == 0 || last_step {
            let frozen = Mce::frozen(&cfg.model, &varmap)?;
            let v = validate::score(&frozen, &store, &val_episodes, device)?;
            log.write(
                serde_json::json!({"step": step, "val_miou": v.miou, "val_fb_iou": v.fb_iou}),
            )?;
            bar.println(format!(
                "step {step}: validation mIoU {:.2} FB-IoU {:.2} ({} episodes)",
                100.0 * v.miou,
                100.0 * v.fb_iou,
                v.episodes
            ));
            if best.is_none_or(|b| v.miou > b) {
                best = Some(v.miou);
                best_step = Some(step);
                checkpoint::save(
                    &files.best(),
                    &cfg.model,
                    &varmap,
                    &backbone_tensors,
                    &extra(step),
                )?;
            }
        }
        if step % cfg.checkpoint_interval == 0 || last_step {
            state::save_last(
                &files,
                &cfg.model,
                &varmap,
                &backbone_tensors,
                &opt,
                &extra(step),
            )?;
        }
        if out_of_time {
            bar.println(format!(
                "pausing at step {step} (--max-minutes / --stop-at); continue with --resume"
            ));
            break;
        }
    }
    bar.finish();
    Ok(TrainSummary {
        steps_done: step,
        seconds: t0.elapsed().as_secs_f64(),
        final_loss: loss_avg,
        best_val_miou: best,
        best_step,
        last: files.last(),
        best: best.map(|_| files.best()),
    })
}
