//! The steps of [`super::train`]: prepare the data (validation split, feature cache or online
//! batches), build or resume the model and optimizer, then per step train, log, validate and
//! checkpoint, and finally summarise.
//!
//! Every random draw of step `s` comes from `hash(seed, s)`, and the model's initial weights from
//! `seed`: a run is reproducible bit for bit, and a resumed run continues as if never paused.

use super::batch::{self, Batch};
use super::online::OnlineBatches;
use super::state::{self, RunFiles};
use super::validate::{self, Split};
use super::{TrainConfig, TrainSummary};
use crate::data::{Episode, FewShotDataset, SampleRef};
use crate::features::{progress, FeatureStore};
use crate::optim::Sgd;
use crate::transform::{Canvas, Variant};
use crate::{Error, Result};
use candle_core::{DType, Device, Tensor};
use candle_nn::{Optimizer, VarMap};
use indicatif::ProgressBar;
use mce_core::model::Mode;
use mce_core::ops::splitmix64;
use mce_core::{checkpoint, AnyBackbone, Mce};
use rand_chacha::rand_core::SeedableRng;
use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::Path;
use std::time::Instant;

/// What the run trains and validates on.
pub(super) struct TrainData<'a> {
    /// The fold's training pool, split into training images and validation queries.
    split: Split,
    /// Fixed 1-shot validation episodes (queries from `split.val`).
    val_episodes: Vec<Episode>,
    /// Cached features: of every pool image (cached mode), of the validation images (online).
    store: FeatureStore,
    /// Online mode: augmented batches straight from the dataset.
    online: Option<OnlineBatches<'a>>,
}

impl<'a> TrainData<'a> {
    /// Split the fold's training pool, draw the validation episodes and build the feature cache
    /// (every variant of every pool image; in online mode only the validation images).
    pub(super) fn prepare(
        ds: &'a dyn FewShotDataset,
        cfg: &TrainConfig,
        backbone: &'a AnyBackbone,
        device: &Device,
    ) -> Result<Self> {
        let pool = ds.train_pool(cfg.fold, cfg.folds)?;
        let split = validate::split(&pool, cfg.val_every_image, cfg.seed);
        let val_episodes = validate::episodes(&split, 1, cfg.val_episodes, cfg.seed ^ 0x0076_616c);
        let refs = pool_refs(&split);
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
            .then(|| OnlineBatches::new(ds, backbone, cfg.model.image_size));
        let refs = match online {
            // Only validation reads the cache.
            Some(_) => crate::eval::episode_refs([val_episodes.as_slice()]),
            None => refs,
        };
        let store = FeatureStore::build(
            ds,
            &refs,
            backbone,
            Canvas::of(&cfg.model),
            &variants,
            device,
        )?;
        Ok(TrainData {
            split,
            val_episodes,
            store,
            online,
        })
    }

    /// The batch of `episodes`: augmented from the images (online) or from cached variants drawn
    /// by `rng`.
    fn batch(
        &self,
        episodes: &[Episode],
        rng: &mut rand_chacha::ChaCha8Rng,
        device: &Device,
    ) -> Result<Batch> {
        match &self.online {
            Some(o) => o.assemble(episodes, rng, device),
            None => {
                let pick = batch::random_variants(&self.store, rng);
                batch::assemble(&self.store, episodes, pick, device)
            }
        }
    }
}

/// Every (image, class) pair of the split, training images then validation images.
fn pool_refs(split: &Split) -> Vec<SampleRef> {
    [&split.train, &split.val]
        .iter()
        .flat_map(|p| p.classes.iter())
        .flat_map(|(c, imgs)| imgs.iter().map(|&image| SampleRef { image, class: *c }))
        .collect()
}

/// The trained head, its optimizer and the backbone tensors every checkpoint carries.
pub(super) struct TrainModel {
    varmap: VarMap,
    head: Mce,
    opt: Sgd,
    backbone_tensors: HashMap<String, Tensor>,
}

impl TrainModel {
    /// A head initialised from `cfg.seed` and a fresh SGD optimizer.
    pub(super) fn build(
        cfg: &TrainConfig,
        backbone_weights: &Path,
        device: &Device,
    ) -> Result<Self> {
        let varmap = VarMap::new();
        let vb = mce_core::model::init::seeded_varbuilder_with(
            &varmap,
            cfg.seed,
            cfg.init,
            DType::F32,
            device,
        );
        let head = Mce::new(&cfg.model, vb)?;
        let opt = Sgd::from_varmap(&varmap, cfg.sgd);
        let backbone_tensors = state::backbone_tensors(backbone_weights, device)?;
        Ok(TrainModel {
            varmap,
            head,
            opt,
            backbone_tensors,
        })
    }

    /// Warm start ([`super::warm_start`]): the head's variables from the checkpoint at `from`.
    pub(super) fn warm_start(
        &mut self,
        from: &Path,
        cfg: &TrainConfig,
        device: &Device,
    ) -> Result<()> {
        let file = checkpoint::read(from, device)?;
        let done = super::warm_start::load_into(&file, &cfg.model, &self.varmap)?;
        tracing::info!(
            "warm start from {}: {} tensors copied, {} widened ({}), {} from the seed ({})",
            from.display(),
            done.copied.len(),
            done.widened.len(),
            done.widened.join(", "),
            done.kept.len(),
            done.kept.join(", ")
        );
        Ok(())
    }

    /// Load the head and optimizer state of `files.last()` when it exists; the step to continue
    /// from (0 when there is nothing to resume).
    pub(super) fn resume(&mut self, files: &RunFiles, device: &Device) -> Result<usize> {
        if !files.last().exists() {
            return Ok(0);
        }
        let file = checkpoint::read(&files.last(), device)?;
        checkpoint::load_head_into(&file, &self.varmap)?;
        let start = file
            .extra
            .get("step")
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        self.opt
            .load_state(state::load_optimizer(files, start, device)?)?;
        tracing::info!("resumed from {} at step {start}", files.last().display());
        Ok(start)
    }
}

/// What one training step reports.
struct StepOutcome {
    /// The batch loss.
    loss: f64,
    lr: f64,
    /// The shot count of the batch.
    shots: usize,
}

/// Step `step`: draw K and the episodes from `hash(seed, step)`, assemble the batch, forward with
/// dropout, and one SGD update at the schedule's learning rate.
fn train_step(
    cfg: &TrainConfig,
    data: &TrainData,
    model: &mut TrainModel,
    step: usize,
    device: &Device,
) -> Result<StepOutcome> {
    let step_seed = splitmix64(cfg.seed ^ splitmix64(step as u64));
    let shots = cfg.shots[(step_seed % cfg.shots.len() as u64) as usize];
    let episodes = batch::sample_episodes(&data.split.train, shots, cfg.batch, step_seed)?;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(step_seed ^ 1);
    let b = data.batch(&episodes, &mut rng, device)?;
    let mode = Mode::Train {
        seed: step_seed ^ 2,
    };
    let logits = model.head.forward(&b.query, &b.shots, mode)?;
    let loss = cfg.loss.loss(&logits, &b.labels)?;
    let lr = cfg.lr_at(step);
    model.opt.set_learning_rate(lr);
    model.opt.step(&loss.backward()?)?;
    Ok(StepOutcome {
        loss: f64::from(loss.to_scalar::<f32>()?),
        lr,
        shots,
    })
}

/// A JSON-lines log, appended to.
struct Log(std::fs::File);

impl Log {
    /// Open `path` for appending (created when missing).
    fn open(path: &Path) -> Result<Self> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| Error::io(path, e))?;
        Ok(Log(file))
    }

    fn write(&mut self, value: serde_json::Value) -> Result<()> {
        writeln!(self.0, "{value}").map_err(|e| Error::io("log.jsonl", e))
    }
}

/// The state of a run between steps: where it started, the log, progress and the best model.
pub(super) struct Run<'c> {
    cfg: &'c TrainConfig,
    files: RunFiles,
    log: Log,
    bar: ProgressBar,
    t0: Instant,
    start: usize,
    /// Exponential moving average of the loss (NaN before the first step).
    loss_avg: f64,
    best: Option<f64>,
    best_step: Option<usize>,
}

impl<'c> Run<'c> {
    /// Open the log and the progress bar of a run continuing at step `start`.
    pub(super) fn new(cfg: &'c TrainConfig, files: RunFiles, start: usize) -> Result<Self> {
        let log = Log::open(&files.log())?;
        let bar = progress(cfg.steps as u64, "train");
        bar.set_position(start as u64);
        Ok(Run {
            cfg,
            files,
            log,
            bar,
            t0: Instant::now(),
            start,
            loss_avg: f64::NAN,
            best: None,
            best_step: None,
        })
    }

    /// Train from the start step to `cfg.steps`, or until `--max-minutes` / `--stop-at` pause
    /// the run; the number of steps done.
    pub(super) fn train(
        &mut self,
        data: &TrainData,
        model: &mut TrainModel,
        device: &Device,
    ) -> Result<usize> {
        let mut step = self.start;
        while step < self.cfg.steps {
            let outcome = train_step(self.cfg, data, model, step, device)?;
            step += 1;
            let secs = self.record(step, &outcome)?;
            let out_of_time = self.cfg.max_minutes.is_some_and(|m| secs / 60.0 >= m)
                || self.cfg.stop_at.is_some_and(|s| step >= s);
            self.validate_and_checkpoint(data, model, step, out_of_time, device)?;
            if out_of_time {
                self.bar.println(format!(
                    "pausing at step {step} (--max-minutes / --stop-at); continue with --resume"
                ));
                break;
            }
        }
        Ok(step)
    }

    /// Update the loss average and the progress bar and log the step that just ended at
    /// `step`; the seconds since the run (re)started.
    fn record(&mut self, step: usize, o: &StepOutcome) -> Result<f64> {
        self.loss_avg = if self.loss_avg.is_nan() {
            o.loss
        } else {
            0.95 * self.loss_avg + 0.05 * o.loss
        };
        let secs = self.t0.elapsed().as_secs_f64();
        let eps = ((step - self.start) * self.cfg.batch) as f64 / secs;
        let (loss_avg, lr, k) = (self.loss_avg, o.lr, o.shots);
        self.bar.set_prefix(format!(
            "loss {loss_avg:.3} lr {lr:.2e} {eps:.2} ep/s K={k}"
        ));
        self.bar.set_position(step as u64);
        self.log.write(serde_json::json!({"step": step, "loss": o.loss, "lr": lr, "shots": k, "episodes_per_s": eps, "elapsed_s": secs}))?;
        Ok(secs)
    }

    /// Every `val_interval` steps (and at the last step of the run or session): validate, and
    /// save `best` when the validation mIoU improved (nothing without validation episodes). Every `checkpoint_interval` steps (and at
    /// the last): save `last` with the optimizer state.
    fn validate_and_checkpoint(
        &mut self,
        data: &TrainData,
        model: &TrainModel,
        step: usize,
        out_of_time: bool,
        device: &Device,
    ) -> Result<()> {
        let cfg = self.cfg;
        let last_step = step == cfg.steps || out_of_time;
        let validating = !data.val_episodes.is_empty();
        if validating && (step.is_multiple_of(cfg.val_interval) || last_step) {
            self.validate(data, model, step, device)?;
        }
        if step.is_multiple_of(cfg.checkpoint_interval) || last_step {
            state::save_last(
                &self.files,
                &cfg.model,
                &model.varmap,
                &model.backbone_tensors,
                &model.opt,
                &checkpoint_extra(cfg, step),
            )?;
        }
        Ok(())
    }

    /// Score the validation episodes with the current head, log and print the score, and save
    /// `best` when it is the best so far.
    fn validate(
        &mut self,
        data: &TrainData,
        model: &TrainModel,
        step: usize,
        device: &Device,
    ) -> Result<()> {
        let frozen = Mce::frozen(&self.cfg.model, &model.varmap)?;
        let v = validate::score(&frozen, &data.store, &data.val_episodes, device)?;
        self.log
            .write(serde_json::json!({"step": step, "val_miou": v.miou, "val_fb_iou": v.fb_iou}))?;
        self.bar.println(format!(
            "step {step}: validation mIoU {:.2} FB-IoU {:.2} ({} episodes)",
            100.0 * v.miou,
            100.0 * v.fb_iou,
            v.episodes
        ));
        if self.best.is_none_or(|b| v.miou > b) {
            self.best = Some(v.miou);
            self.best_step = Some(step);
            checkpoint::save(
                &self.files.best(),
                &self.cfg.model,
                &model.varmap,
                &model.backbone_tensors,
                &checkpoint_extra(self.cfg, step),
            )?;
        }
        Ok(())
    }

    /// Close the progress bar; what the run did, having stopped after `steps_done` steps.
    pub(super) fn finish(self, steps_done: usize) -> TrainSummary {
        self.bar.finish();
        TrainSummary {
            steps_done,
            seconds: self.t0.elapsed().as_secs_f64(),
            final_loss: self.loss_avg,
            best_val_miou: self.best,
            best_step: self.best_step,
            last: self.files.last(),
            best: self.best.map(|_| self.files.best()),
        }
    }
}

/// The metadata every checkpoint carries: its step and the whole [`TrainConfig`].
fn checkpoint_extra(cfg: &TrainConfig, step: usize) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("step".to_string(), step.to_string()),
        (
            "train_config".to_string(),
            serde_json::to_string(cfg).expect("serialises"),
        ),
    ])
}
