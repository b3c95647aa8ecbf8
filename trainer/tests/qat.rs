//! Quantization-aware fine-tuning on a generated folder dataset: fake quantization is really in the
//! forward pass, straight-through gradients reach every head variable, a short run moves the head,
//! and its checkpoint loads and quantizes into an artifact the device loader accepts. A table of
//! another model is refused naming the table.

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use mce_core::checkpoint::{self, CheckpointFile};
use mce_core::inference::{lite0_weights_path, Segmenter};
use mce_core::model::Mode;
use mce_core::preprocess::{load_mask, load_rgb, prepare_image, MaskEncoding, Resize};
use mce_core::quant::artifact::{self, LoadOptions};
use mce_core::quant::plan::{HistogramObserver, RecordPlan};
use mce_core::quant::scale::sqnr_db;
use mce_core::quant::table::TABLE_FORMAT;
use mce_core::quant::{is_quantized, CalibrationTable, Method, QuantVarBuilder, QuantizedWeight};
use mce_core::{AnyBackbone, Backbone, Mce, MceConfig};
use mce_testkit::SquareFolders;
use mce_train::data::{EpisodeSampler, FewShotDataset, Folders};
use mce_train::features::FeatureStore;
use mce_train::optim::SgdConfig;
use mce_train::train::batch::{self, Batch};
use mce_train::train::qat::{qat, QatInputs, QatModel};
use mce_train::train::TrainConfig;
use mce_train::transform::Variant;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// 4 classes × 6 images: a coloured square (class colour) on a noisy background, exact masks.
fn fixture(root: &Path) {
    SquareFolders {
        images: 6,
        size: (100, 80),
        side: (48, 2),
    }
    .write(root);
}

fn model_config() -> MceConfig {
    mce_testkit::tiny_edge_config(64)
}

fn train_config(steps: usize) -> TrainConfig {
    TrainConfig {
        model: model_config(),
        fold: 0,
        folds: 2,
        shots: vec![1],
        batch: 2,
        steps,
        sgd: SgdConfig {
            lr: 0.01,
            ..SgdConfig::default()
        },
        poly_power: 0.9,
        warmup_steps: 0,
        seed: 3,
        scales: vec![1.0],
        flips: false,
        val_every_image: 3,
        val_episodes: 4,
        val_interval: 100,
        checkpoint_interval: 100,
        max_minutes: None,
        stop_at: None,
        online: false,
        loss: Default::default(),
        init: Default::default(),
        init_from: None,
    }
}

/// A float checkpoint: seeded head of the tiny config and the bundled Lite0 backbone.
fn float_checkpoint(dir: &Path) -> PathBuf {
    let cfg = model_config();
    let vm = VarMap::new();
    let vb = mce_core::model::init::seeded_varbuilder(&vm, 7, DType::F32, &Device::Cpu);
    Mce::new(&cfg, vb).unwrap();
    let backbone = candle_core::safetensors::load(lite0_weights_path(), &Device::Cpu).unwrap();
    let path = dir.join("float.safetensors");
    checkpoint::save(&path, &cfg, &vm, &backbone, &BTreeMap::new()).unwrap();
    path
}

/// A batch of 2 one-shot training episodes through the given backbone (identity variant).
fn episode_batch(ds: &Folders, backbone: &AnyBackbone, seed: u64) -> Batch {
    let pool = ds.train_pool(0, 2).unwrap();
    let episodes = EpisodeSampler::new(seed).episodes(&pool, 1, 2).unwrap();
    let refs: Vec<_> = episodes
        .iter()
        .flat_map(|e| std::iter::once(e.query).chain(e.supports.iter().copied()))
        .collect();
    let store = FeatureStore::build(
        ds,
        &refs,
        backbone,
        mce_train::transform::Canvas::letterbox(64),
        &[Variant::IDENTITY],
        &Device::Cpu,
    )
    .unwrap();
    batch::assemble(&store, &episodes, || 0, &Device::Cpu).unwrap()
}

/// What `mce-calib calibrate` does, with `mce_core::quant` only: observe every layer's input on a
/// few training episodes and choose percentile scales.
fn calibrate(ds: &Folders, file: &CheckpointFile, path: &Path) -> CalibrationTable {
    let observer = Arc::new(HistogramObserver::default());
    let plan = Arc::new(RecordPlan::observing(observer.clone()));
    let vb = VarBuilder::from_tensors(file.tensors.clone(), DType::F32, &Device::Cpu);
    let (head, backbone) =
        checkpoint::build_model(&file.config, QuantVarBuilder::new(vb, plan.clone())).unwrap();
    let b = episode_batch(ds, &backbone, 0);
    head.forward(&b.query, &b.shots, Mode::Eval).unwrap();
    let histograms = observer.histograms();
    let method = Method::Percentile(99.99);
    let layers = plan
        .records()
        .into_iter()
        .filter_map(|r| {
            let h = histograms.get(&r.name)?;
            let q = QuantizedWeight::quantize(&r.weight).unwrap();
            let w_sqnr = sqnr_db(&r.weight, &q.dequantize(&Device::Cpu).unwrap()).unwrap();
            let l = CalibrationTable::layer(
                r.kind,
                r.weight.dims().to_vec(),
                w_sqnr,
                h.clone(),
                &[Method::Max, method],
                method,
            );
            Some((r.name, l))
        })
        .collect();
    let table = CalibrationTable {
        format: TABLE_FORMAT.into(),
        checkpoint: file.path.display().to_string(),
        method,
        source: "2 fixture episodes".into(),
        layers,
    };
    table.save(path).unwrap();
    table
}

struct Setup {
    _dir: tempfile::TempDir,
    dir: PathBuf,
    ds: Folders,
    float: PathBuf,
    table: PathBuf,
}

fn setup() -> Setup {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    fixture(&dir.join("data"));
    let ds = Folders::open(dir.join("data")).unwrap();
    let float = float_checkpoint(&dir);
    let table = dir.join("table.json");
    let file = checkpoint::read(&float, &Device::Cpu).unwrap();
    let t = calibrate(&ds, &file, &table);
    assert!(t.layers.keys().any(|k| k.starts_with("backbone.")));
    assert!(t.layers.keys().any(|k| !k.starts_with("backbone.")));
    Setup {
        _dir: tmp,
        dir,
        ds,
        float,
        table,
    }
}

fn flat(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

fn head_tensors(path: &Path) -> BTreeMap<String, Vec<f32>> {
    checkpoint::read(path, &Device::Cpu)
        .unwrap()
        .tensors
        .iter()
        .filter(|(k, _)| !k.starts_with("backbone."))
        .map(|(k, t)| (k.clone(), flat(t)))
        .collect()
}

#[test]
fn fake_quantization_is_in_the_loop_and_gradients_pass_straight_through() {
    let s = setup();
    let inputs = QatInputs {
        from: &s.float,
        calibration: &s.table,
        keep_float: artifact::SENSITIVE_LITE0.map(String::from).to_vec(),
        fake_quant: true,
    };
    let model = QatModel::new(&inputs, &Device::Cpu).unwrap();

    // The float model of the same checkpoint, with a trainable head.
    let file = checkpoint::read(&s.float, &Device::Cpu).unwrap();
    let float_vars = VarMap::new();
    let float_head = Mce::new(
        &file.config,
        VarBuilder::from_varmap(&float_vars, DType::F32, &Device::Cpu),
    )
    .unwrap();
    checkpoint::load_head_into(&file, &float_vars).unwrap();
    let float_backbone = checkpoint::backbone_from(&file, &Device::Cpu).unwrap();

    // The simulated int8 backbone on a fixture image: different features, close to the float ones.
    let img = load_rgb(s.dir.join("data/class2/images/4.png")).unwrap();
    let x = prepare_image(
        &img,
        Resize::LongerSidePad(64),
        file.config.backbone,
        &Device::Cpu,
    )
    .unwrap()
    .tensor
    .unsqueeze(0)
    .unwrap();
    let (fq, ff) = (
        model.backbone.features(&x).unwrap(),
        float_backbone.features(&x).unwrap(),
    );
    for (level, f, q) in [(2, &ff.level2, &fq.level2), (4, &ff.level4, &fq.level4)] {
        let db = sqnr_db(f, q).unwrap();
        assert!(
            db < 80.0,
            "level {level}: int8 backbone equals float ({db} dB)"
        );
        assert!(db > 12.0, "level {level}: int8 backbone SQNR {db:.1} dB");
    }

    // The fake-quantized head on the same float features: different logits, close to float.
    let b = episode_batch(&s.ds, &float_backbone, 1);
    let lq = model.head.forward(&b.query, &b.shots, Mode::Eval).unwrap();
    let lf = float_head.forward(&b.query, &b.shots, Mode::Eval).unwrap();
    assert_eq!(lq.dims(), lf.dims());
    let max_diff = (&lq - &lf)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!(max_diff > 1e-5, "QAT logits equal float: {max_diff}");
    let head_sqnr = sqnr_db(&lf, &lq).unwrap();
    assert!(head_sqnr > 15.0, "QAT vs float logits: {head_sqnr} dB");

    // Gradients through the fake quantization (STE) reach every head variable and point the same
    // way as the float model's.
    let loss = model.loss(&b, 5).unwrap();
    let l = loss.to_scalar::<f32>().unwrap();
    assert!(l.is_finite() && l > 0.0, "loss {l}");
    let grads = loss.backward().unwrap();
    let float_logits = float_head
        .forward(&b.query, &b.shots, Mode::Train { seed: 5 })
        .unwrap();
    let float_loss = mce_core::model::loss::cross_entropy_ignore(&float_logits, &b.labels).unwrap();
    let float_grads = float_loss.backward().unwrap();
    let vars = model.varmap.all_vars();
    let float_map: HashMap<String, _> = float_vars.data().lock().unwrap().clone();
    let (mut dot, mut nq, mut nf, mut nonzero) = (0f64, 0f64, 0f64, 0);
    for (name, var) in model.varmap.data().lock().unwrap().iter() {
        let g = grads
            .get(var.as_tensor())
            .unwrap_or_else(|| panic!("no gradient for {name}"));
        let g = flat(g);
        assert!(
            g.iter().all(|v| v.is_finite()),
            "{name}: non-finite gradient"
        );
        nonzero += usize::from(g.iter().any(|&v| v != 0.0));
        let gf = flat(float_grads.get(float_map[name].as_tensor()).unwrap());
        for (a, b) in g.iter().zip(&gf) {
            dot += f64::from(*a) * f64::from(*b);
            nq += f64::from(*a).powi(2);
            nf += f64::from(*b).powi(2);
        }
    }
    assert_eq!(
        nonzero,
        vars.len(),
        "every head variable gets a non-zero gradient"
    );
    let cosine = dot / (nq.sqrt() * nf.sqrt());
    assert!(cosine > 0.8, "QAT and float gradients: cosine {cosine:.3}");
    assert!(cosine < 1.0 - 1e-9, "QAT gradient equals the float one");
}

#[test]
fn a_qat_run_moves_the_head_and_quantizes_for_the_device() {
    let s = setup();
    let out = s.dir.join("qat");
    let inputs = QatInputs {
        from: &s.float,
        calibration: &s.table,
        keep_float: artifact::SENSITIVE_LITE0.map(String::from).to_vec(),
        fake_quant: true,
    };
    let path = qat(&s.ds, &train_config(3), &inputs, &out, &Device::Cpu).unwrap();
    assert_eq!(path, out.join("qat.safetensors"));

    let file = checkpoint::read(&path, &Device::Cpu).unwrap();
    assert_eq!(file.extra.get("qat_steps").map(String::as_str), Some("3"));
    let loss: f32 = file.extra["qat_final_loss"].parse().unwrap();
    assert!(loss.is_finite() && loss > 0.0, "final loss {loss}");
    let (before, after) = (head_tensors(&s.float), head_tensors(&path));
    assert_eq!(
        before.keys().collect::<Vec<_>>(),
        after.keys().collect::<Vec<_>>()
    );
    let moved = before.iter().filter(|(k, v)| after[*k] != **v).count();
    assert!(
        moved * 2 > before.len(),
        "only {moved} of {} head tensors changed",
        before.len()
    );
    let float_file = checkpoint::read(&s.float, &Device::Cpu).unwrap();
    for (k, t) in float_file
        .tensors
        .iter()
        .filter(|(k, _)| k.starts_with("backbone."))
    {
        assert_eq!(
            flat(t),
            flat(&file.tensors[k]),
            "{k}: the backbone must stay frozen"
        );
    }
    // a complete float checkpoint
    checkpoint::load(&path, &Device::Cpu).unwrap();

    // quantized with the same table: an artifact the device loader accepts and segments with
    let table = CalibrationTable::load(&s.table).unwrap();
    let int8 = s.dir.join("qat.int8.safetensors");
    artifact::write_from_checkpoint(
        &int8,
        &file,
        &table.scales(None),
        table.method,
        &inputs.keep_float,
        None,
        &BTreeMap::new(),
        &Device::Cpu,
    )
    .unwrap();
    assert!(is_quantized(&int8).unwrap());
    assert!(!is_quantized(&path).unwrap());
    let (fb, qb) = (
        std::fs::metadata(&path).unwrap().len(),
        std::fs::metadata(&int8).unwrap().len(),
    );
    assert!(qb * 10 <= fb * 3, "artifact {qb} bytes vs float {fb} bytes");
    let m = artifact::load(&int8, &Device::Cpu, LoadOptions::default()).unwrap();
    assert_eq!(m.config, file.config);
    let seg = Segmenter::new(m.config, m.backbone, m.head, &Device::Cpu, true);
    let img_path = s.dir.join("data/class1/images/0.png");
    let img = load_rgb(&img_path).unwrap();
    let mask = load_mask(s.dir.join("data/class1/masks/0.png"), MaskEncoding::Binary).unwrap();
    let class = seg
        .encode_class(&[seg.exemplar(&img, &mask, &img_path).unwrap()])
        .unwrap();
    let query = load_rgb(s.dir.join("data/class1/images/3.png")).unwrap();
    let maps = seg.segment(&query, &[&class]).unwrap();
    assert_eq!((maps[0].width, maps[0].height), (100, 80));
    assert!(maps[0]
        .probability
        .iter()
        .all(|p| p.is_finite() && (0.0..=1.0).contains(p)));

    // `mce-train eval` takes the artifact as it takes the float checkpoint, on the same episodes.
    let opts = mce_train::eval::EvalOptions {
        fold: 0,
        n_folds: 2,
        shots: 1,
        episodes: 6,
        seeds: vec![0],
    };
    let eval = |p: &std::path::Path| {
        let r = mce_train::eval::evaluate_checkpoint(&s.ds, p, &opts, &Device::Cpu).unwrap();
        r.miou.map(|i| i.mean).unwrap()
    };
    let (float_miou, int8_miou) = (eval(&path), eval(&int8));
    assert!(
        (float_miou - int8_miou).abs() < 0.1,
        "float {float_miou} vs int8 {int8_miou}"
    );
}

#[test]
fn a_table_of_another_model_or_a_missing_checkpoint_is_refused_by_name() {
    let s = setup();
    let mut table = CalibrationTable::load(&s.table).unwrap();
    let head_layer = table
        .layers
        .keys()
        .find(|k| !k.starts_with("backbone."))
        .unwrap()
        .clone();
    table.layers.get_mut(&head_layer).unwrap().weight_shape[0] += 1;
    let other = s.dir.join("other_model_table.json");
    table.save(&other).unwrap();
    let err = QatModel::new(
        &QatInputs {
            from: &s.float,
            calibration: &other,
            keep_float: vec![],
            fake_quant: true,
        },
        &Device::Cpu,
    )
    .err()
    .expect("a mismatched table must be refused")
    .to_string();
    assert!(err.contains("other_model_table.json"), "{err}");
    assert!(err.contains(&head_layer), "{err}");

    table.layers.remove(&head_layer);
    table.save(&other).unwrap();
    let err = QatModel::new(
        &QatInputs {
            from: &s.float,
            calibration: &other,
            keep_float: vec![],
            fake_quant: true,
        },
        &Device::Cpu,
    )
    .err()
    .expect("a table without a head layer must be refused")
    .to_string();
    assert!(
        err.contains("other_model_table.json") && err.contains(&head_layer),
        "{err}"
    );

    let missing = s.dir.join("no_such_checkpoint.safetensors");
    let err = QatModel::new(
        &QatInputs {
            from: &missing,
            calibration: &s.table,
            keep_float: vec![],
            fake_quant: true,
        },
        &Device::Cpu,
    )
    .err()
    .expect("a missing checkpoint must be refused")
    .to_string();
    assert!(err.contains("no_such_checkpoint.safetensors"), "{err}");
}

/// The float control of QAT: the same model without fake quantization gives exactly the float
/// checkpoint's features and logits, and its fine-tune writes `control.safetensors`.
#[test]
fn qat_control_is_the_float_model() {
    let s = setup();
    let inputs = QatInputs {
        from: &s.float,
        calibration: &s.table,
        keep_float: vec![],
        fake_quant: false,
    };
    let control = QatModel::new(&inputs, &Device::Cpu).unwrap();
    let file = checkpoint::read(&s.float, &Device::Cpu).unwrap();
    let float_backbone = checkpoint::backbone_from(&file, &Device::Cpu).unwrap();
    let float_head = checkpoint::load(&s.float, &Device::Cpu).unwrap().head;
    let b = episode_batch(&s.ds, &float_backbone, 1);
    let lc = control
        .head
        .forward(&b.query, &b.shots, Mode::Eval)
        .unwrap();
    let lf = float_head.forward(&b.query, &b.shots, Mode::Eval).unwrap();
    let diff = (&lc - &lf).unwrap().abs().unwrap().max_all().unwrap();
    assert_eq!(diff.to_scalar::<f32>().unwrap(), 0.0);
    let cb = episode_batch(&s.ds, &control.backbone, 1);
    let d = (&cb.query.level4 - &b.query.level4)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap();
    assert_eq!(d.to_scalar::<f32>().unwrap(), 0.0);
    let out = s.dir.join("control_run");
    let path = qat(&s.ds, &train_config(2), &inputs, &out, &Device::Cpu).unwrap();
    assert_eq!(path, out.join("control.safetensors"));
    let meta = checkpoint::read(&path, &Device::Cpu).unwrap();
    assert_eq!(
        meta.extra.get("qat_fake_quant").map(String::as_str),
        Some("false")
    );
}
