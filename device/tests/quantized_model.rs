//! The device loads an int8 artifact (`format = "mce-quantized"`) through `--model` and segments
//! with it; its mask agrees with the float checkpoint's on the bundled bicycle photo.

use candle_core::{DType, Device};
use candle_nn::{VarBuilder, VarMap};
use mce_core::checkpoint::{self, BACKBONE_PREFIX};
use mce_core::inference::{lite0_weights_path, models_dir};
use mce_core::quant::artifact::{self, SENSITIVE_LITE0};
use mce_core::quant::plan::{HistogramObserver, RecordPlan};
use mce_core::quant::{Method, QuantVarBuilder};
use mce_core::{Mce, MceConfig};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

fn asset(name: &str) -> PathBuf {
    models_dir().join("../assets/msrc").join(name)
}

/// A float checkpoint (seeded head, bundled Lite0) and its int8 artifact, calibrated on one image.
fn models(dir: &Path) -> (PathBuf, PathBuf) {
    let cfg = MceConfig::edge_lite0();
    let vm = VarMap::new();
    let vb = mce_core::model::init::seeded_varbuilder(&vm, 5, DType::F32, &Device::Cpu);
    Mce::new(&cfg, vb).unwrap();
    let backbone = candle_core::safetensors::load(lite0_weights_path(), &Device::Cpu).unwrap();
    let float = dir.join("float.safetensors");
    checkpoint::save(&float, &cfg, &vm, &backbone, &BTreeMap::new()).unwrap();
    let file = checkpoint::read(&float, &Device::Cpu).unwrap();

    let observer = Arc::new(HistogramObserver::default());
    let vb = VarBuilder::from_tensors(file.tensors.clone(), DType::F32, &Device::Cpu);
    let plan = Arc::new(RecordPlan::observing(observer.clone()));
    let (head, net) = checkpoint::build_model(&cfg, QuantVarBuilder::new(vb, plan)).unwrap();
    let seg = mce_core::inference::Segmenter::new(cfg.clone(), net, head, &Device::Cpu, true);
    let img = mce_core::preprocess::load_rgb(asset("8_10_s.png")).unwrap();
    let mask = mce_core::preprocess::load_mask(
        asset("8_10_s_GT.png"),
        mce_core::preprocess::MaskEncoding::ClassIndex(12),
    )
    .unwrap();
    let ex = seg.exemplar(&img, &mask, &asset("8_10_s.png")).unwrap();
    let class = seg.encode_class(&[ex]).unwrap();
    seg.segment(&img, &[&class]).unwrap();
    let scales: HashMap<String, f32> = observer
        .histograms()
        .iter()
        .map(|(k, h)| (k.clone(), h.threshold(Method::Max) / 127.0))
        .collect();
    let int8 = dir.join("model.int8.safetensors");
    artifact::write_from_checkpoint(
        &int8,
        &file,
        &scales,
        Method::Max,
        &SENSITIVE_LITE0.map(String::from),
        None,
        &BTreeMap::new(),
        &Device::Cpu,
    )
    .unwrap();
    assert!(file.tensors.keys().any(|k| k.starts_with(BACKBONE_PREFIX)));
    (float, int8)
}

fn segment(model: &Path, out: &Path) -> (bool, String) {
    let o = Command::new(env!("CARGO_BIN_EXE_mce-device"))
        .arg("segment")
        .arg("--model")
        .arg(model)
        .arg("--support")
        .arg(format!(
            "{}:{}",
            asset("8_10_s.png").display(),
            asset("8_10_s_GT.png").display()
        ))
        .args(["--mask-class", "12", "--query"])
        .arg(asset("8_13_s.png"))
        .arg("--out")
        .arg(out)
        .env("RUST_LOG", "info")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    (o.status.success(), text)
}

fn read_mask(path: &Path) -> Vec<u8> {
    image::open(path).unwrap().to_luma8().into_raw()
}

#[test]
fn segment_runs_an_int8_artifact_and_agrees_with_float() {
    let dir = tempfile::tempdir().unwrap();
    let (float, int8) = models(dir.path());
    let float_bytes = std::fs::metadata(&float).unwrap().len();
    let int8_bytes = std::fs::metadata(&int8).unwrap().len();
    assert!(
        int8_bytes * 10 <= float_bytes * 3,
        "{int8_bytes} vs {float_bytes}"
    );

    let (ok, text) = segment(&int8, &dir.path().join("q.png"));
    assert!(ok, "{text}");
    assert!(text.contains("int8 model"), "{text}");
    let (ok, text) = segment(&float, &dir.path().join("f.png"));
    assert!(ok, "{text}");
    let (q, f) = (
        read_mask(&dir.path().join("q.png")),
        read_mask(&dir.path().join("f.png")),
    );
    assert_eq!(q.len(), f.len());
    let agree = q.iter().zip(&f).filter(|(a, b)| a == b).count() as f64 / q.len() as f64;
    assert!(
        agree >= 0.9,
        "int8 and float masks agree on {:.1}% of pixels",
        100.0 * agree
    );
}

#[test]
fn a_truncated_artifact_fails_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let (_, int8) = models(dir.path());
    let bytes = std::fs::read(&int8).unwrap();
    let bad = dir.path().join("broken.int8.safetensors");
    std::fs::write(&bad, &bytes[..bytes.len() / 2]).unwrap();
    let (ok, text) = segment(&bad, &dir.path().join("x.png"));
    assert!(!ok, "{text}");
    assert!(text.contains("broken.int8.safetensors"), "{text}");
}
