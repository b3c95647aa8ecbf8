//! Quantization-aware fine-tuning (`mce-train train --qat --from C --calibration T`): the head of a
//! float checkpoint is fine-tuned with fake quantization in the loop — per-channel int8 weights and
//! per-tensor int8 inputs at the calibrated scales, straight-through gradients — on features of the
//! backbone as int8 simulates it (its weights and input scales come from calibration; it is frozen).
//!
//! ```text
//! checkpoint C ─ head vars (under SimulatePlan: fake-quant weights + inputs) ─┐
//! table T ─ input scales (checked against C's layers) ────────────────────────┤
//! episodes of every step drawn first ─ FeatureStore(their images only,        │
//!   backbone under SimulatePlan, frozen) ─ batches ─ CE ──────────────────────┴─ SGD ─▶ out/qat.safetensors
//! ```
//! `mce-calib quantize --checkpoint out/qat.safetensors --table T` then writes its int8 artifact.

use super::{batch, TrainConfig};
use crate::data::{ClassPool, Episode, EpisodeSampler, FewShotDataset};
use crate::features::{progress, FeatureStore};
use crate::optim::Sgd;
use crate::transform::{Canvas, Variant};
use crate::{Error, Result};
use candle_core::{DType, Device, Tensor};
use candle_nn::{Optimizer, VarBuilder, VarMap};
use mce_core::checkpoint::{self, CheckpointFile, BACKBONE_PREFIX};
use mce_core::model::loss::cross_entropy_ignore;
use mce_core::model::Mode;
use mce_core::ops::splitmix64;
use mce_core::quant::artifact::record_layers;
use mce_core::quant::plan::SimulatePlan;
use mce_core::quant::{CalibrationTable, QuantVarBuilder};
use mce_core::{AnyBackbone, Mce};
use rand_chacha::rand_core::SeedableRng;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Where QAT starts from.
pub struct QatInputs<'a> {
    /// The float checkpoint (head and backbone).
    pub from: &'a Path,
    /// The calibration table of that checkpoint.
    pub calibration: &'a Path,
    /// Layers whose weights stay f32 (as in the artifact).
    pub keep_float: Vec<String>,
    /// `false` runs the very same fine-tune (episodes, seeds, schedule) without fake quantization:
    /// the float control that tells what QAT changed from what more training changed.
    pub fake_quant: bool,
}

impl QatInputs<'_> {
    /// The file the fine-tune writes into its run folder.
    pub fn output_name(&self) -> &'static str {
        if self.fake_quant {
            "qat.safetensors"
        } else {
            "control.safetensors"
        }
    }
}

/// The model QAT trains: the float checkpoint's head as variables, built under a [`SimulatePlan`]
/// (every forward fake-quantizes weights and inputs), and the int8-simulated frozen backbone.
pub struct QatModel {
    pub file: CheckpointFile,
    pub table: CalibrationTable,
    /// The trainable head variables (initialised from the checkpoint).
    pub varmap: VarMap,
    /// The head with fake quantization in the loop (its weights are `varmap`'s variables).
    pub head: Mce,
    /// The backbone with fake-quantized weights and inputs (frozen).
    pub backbone: AnyBackbone,
}

/// Check that `table` calibrates the model of `file`: every head layer has an input scale and the
/// weight shape the table recorded. The first mismatch (in construction order) is reported.
fn check_table(
    file: &CheckpointFile,
    table: &CalibrationTable,
    table_path: &Path,
    device: &Device,
) -> Result<()> {
    for r in record_layers(file, device)? {
        if r.name.starts_with(BACKBONE_PREFIX) {
            continue;
        }
        let Some(l) = table.layers.get(&r.name) else {
            return Err(Error::format(
                table_path,
                format!(
                    "calibration table has no layer `{}` of {}: calibrate this checkpoint first",
                    r.name,
                    file.path.display()
                ),
            ));
        };
        if l.weight_shape != r.weight.dims() {
            return Err(Error::format(
                table_path,
                format!(
                    "layer `{}` has weight shape {:?} in the table but {:?} in {}: the table \
                     belongs to another model",
                    r.name,
                    l.weight_shape,
                    r.weight.dims(),
                    file.path.display()
                ),
            ));
        }
    }
    Ok(())
}

impl QatModel {
    /// Read the checkpoint and the table, check that they belong together, and build the model.
    pub fn new(inputs: &QatInputs, device: &Device) -> Result<Self> {
        let file = checkpoint::read(inputs.from, device)?;
        let table = CalibrationTable::load(inputs.calibration)?;
        check_table(&file, &table, inputs.calibration, device)?;
        let plan = Arc::new(SimulatePlan {
            input_scales: match inputs.fake_quant {
                true => table.scales(None),
                false => HashMap::new(),
            },
            fake_weights: inputs.fake_quant,
            keep_float: inputs.keep_float.clone(),
        });
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, device);
        let head = Mce::new(&file.config, QuantVarBuilder::new(vb, plan.clone()))?;
        checkpoint::load_head_into(&file, &varmap)?;
        let vb = VarBuilder::from_tensors(file.tensors.clone(), DType::F32, device);
        let backbone = AnyBackbone::new(
            file.config.backbone,
            QuantVarBuilder::new(vb.pp("backbone"), plan),
        )?;
        Ok(Self {
            file,
            table,
            varmap,
            head,
            backbone,
        })
    }

    /// The loss of one batch of episodes through the fake-quantized head (autograd on).
    pub fn loss(&self, b: &batch::Batch, seed: u64) -> Result<Tensor> {
        let logits = self
            .head
            .forward(&b.query, &b.shots, Mode::Train { seed })?;
        Ok(cross_entropy_ignore(&logits, &b.labels)?)
    }

    /// Save the head variables (float values; quantize them with the same table) and the
    /// checkpoint's backbone tensors as a checkpoint.
    pub fn save(&self, path: &Path, extra: &BTreeMap<String, String>) -> Result<()> {
        let backbone_tensors: HashMap<String, Tensor> = self
            .file
            .tensors
            .iter()
            .filter_map(|(k, t)| {
                k.strip_prefix(BACKBONE_PREFIX)
                    .map(|k| (k.to_string(), t.clone()))
            })
            .collect();
        Ok(checkpoint::save(
            path,
            &self.file.config,
            &self.varmap,
            &backbone_tensors,
            extra,
        )?)
    }
}

/// The seed of QAT step `step`.
fn step_seed(cfg: &TrainConfig, step: usize) -> u64 {
    splitmix64(cfg.seed ^ splitmix64(step as u64) ^ 0x0071_6174)
}

/// The episodes of every step, drawn up front (K per step from `cfg.shots`), so that only their
/// images go through the backbone.
pub fn schedule(pool: &ClassPool, cfg: &TrainConfig) -> Result<Vec<Vec<Episode>>> {
    if cfg.shots.is_empty() {
        return Err(Error::Input("QAT needs at least one shot count".into()));
    }
    (0..cfg.steps)
        .map(|step| {
            let seed = step_seed(cfg, step);
            let k = cfg.shots[(seed % cfg.shots.len() as u64) as usize];
            EpisodeSampler::new(seed).episodes(pool, k, cfg.batch.max(1))
        })
        .collect()
}

/// Fine-tune with fake quantization for `cfg.steps` steps; writes `out/qat.safetensors` (float
/// weights; quantize them with the same table), or `out/control.safetensors` for the float control
/// ([`QatInputs::fake_quant`] off). Returns that path.
pub fn qat(
    ds: &dyn FewShotDataset,
    cfg: &TrainConfig,
    inputs: &QatInputs,
    out: &Path,
    device: &Device,
) -> Result<PathBuf> {
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    let model = QatModel::new(inputs, device)?;
    let pool = ds.train_pool(cfg.fold, cfg.folds)?;
    let steps = schedule(&pool, cfg)?;
    let refs = crate::eval::episode_refs(steps.iter().map(Vec::as_slice));
    tracing::info!(
        "QAT of {} for {} steps: {} (image, class) pairs of fold {}/{}",
        inputs.from.display(),
        cfg.steps,
        refs.len(),
        cfg.fold,
        cfg.folds
    );
    let variants = Variant::grid(&cfg.scales, cfg.flips);
    let canvas = Canvas::of(&model.file.config);
    let store = FeatureStore::build(ds, &refs, &model.backbone, canvas, &variants, device)?;
    let mut opt = Sgd::from_varmap(&model.varmap, cfg.sgd);
    let bar = progress(cfg.steps as u64, "qat");
    let mut last_loss = f32::NAN;
    for (step, episodes) in steps.iter().enumerate() {
        let seed = step_seed(cfg, step);
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed ^ 1);
        let b = batch::assemble(
            &store,
            episodes,
            batch::random_variants(&store, &mut rng),
            device,
        )?;
        let loss = model.loss(&b, seed ^ 2)?;
        let lr = cfg.lr_at(step);
        opt.set_learning_rate(lr);
        opt.step(&loss.backward()?)?;
        last_loss = loss.to_scalar::<f32>()?;
        if !last_loss.is_finite() {
            return Err(Error::Input(format!(
                "QAT diverged at step {step} (loss {last_loss}); lower --lr"
            )));
        }
        bar.set_prefix(format!("loss {last_loss:.3} lr {lr:.2e}"));
        bar.inc(1);
    }
    bar.finish();
    let path = out.join(inputs.output_name());
    let extra = BTreeMap::from([
        ("qat_from".to_string(), inputs.from.display().to_string()),
        (
            "qat_calibration".to_string(),
            inputs.calibration.display().to_string(),
        ),
        ("qat_steps".to_string(), cfg.steps.to_string()),
        ("qat_fake_quant".to_string(), inputs.fake_quant.to_string()),
        ("qat_final_loss".to_string(), last_loss.to_string()),
        ("qat_lr".to_string(), cfg.sgd.lr.to_string()),
        ("qat_batch".to_string(), cfg.batch.to_string()),
        (
            "qat_fold".to_string(),
            format!("{}/{}", cfg.fold, cfg.folds),
        ),
    ]);
    model.save(&path, &extra)?;
    Ok(path)
}
