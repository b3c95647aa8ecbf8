//! EfficientNet-Lite0 against the float64 reference in `tests/data/golden/expected.json`: top-5 ImageNet
//! logits, per-tap feature statistics, tap shapes at 224 and 320, and checkpoint-loading errors.
//!
//! The logit tolerance (1e-3) is far below what symmetric instead of TF-SAME padding changes (~0.4 on
//! chelsea's top logit, see `diagnostic_symmetric_padding_WRONG` in the JSON), so that bug fails here.

use candle_core::{Device, Tensor};
use mce_core::backbone::efficientnet::EfficientNetLite0;
use mce_core::Backbone;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

const LOGIT_TOL: f32 = 1e-3;
const FEATURE_TOL: f32 = 2e-3;

fn weights_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/efficientnet_lite0.safetensors")
}

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/golden")
}

fn model() -> &'static EfficientNetLite0 {
    static MODEL: OnceLock<EfficientNetLite0> = OnceLock::new();
    MODEL
        .get_or_init(|| EfficientNetLite0::load(&weights_path(), &Device::Cpu).expect("load Lite0"))
}

fn expected() -> Value {
    let text = std::fs::read_to_string(golden_dir().join("expected.json")).expect("expected.json");
    serde_json::from_str(&text).expect("parse expected.json")
}

/// Decode an RGB PNG into `(1, 3, H, W)` f32, `(p - 127) / 128`.
fn load_image(path: &Path) -> Tensor {
    let img = image::open(path).expect("decode png").to_rgb8();
    let (w, h) = (img.width() as usize, img.height() as usize);
    let mut data = vec![0f32; 3 * h * w];
    for (x, y, p) in img.enumerate_pixels() {
        for c in 0..3 {
            data[(c * h + y as usize) * w + x as usize] = (p[c] as f32 - 127.0) / 128.0;
        }
    }
    Tensor::from_vec(data, (1, 3, h, w), &Device::Cpu).unwrap()
}

fn f(v: &Value) -> f32 {
    v.as_f64().expect("number") as f32
}

fn close(what: &str, got: f32, want: f32, tol: f32) {
    assert!(
        (got - want).abs() <= tol,
        "{what}: got {got}, expected {want} (tol {tol})"
    );
}

/// Compare one tap with its `feature_checks_tf_same` entry (shape, mean, abs-mean, 4 samples).
fn check_tap(name: &str, t: &Tensor, want: &Value) {
    let shape: Vec<usize> = want["shape_nchw"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as usize)
        .collect();
    assert_eq!(t.dims(), shape.as_slice(), "{name}: shape");
    let mean = t.mean_all().unwrap().to_scalar::<f32>().unwrap();
    let abs_mean = t
        .abs()
        .unwrap()
        .mean_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    close(&format!("{name} mean"), mean, f(&want["mean"]), FEATURE_TOL);
    close(
        &format!("{name} abs_mean"),
        abs_mean,
        f(&want["abs_mean"]),
        FEATURE_TOL,
    );
    let row: Vec<f32> = t
        .get(0)
        .unwrap()
        .get(0)
        .unwrap()
        .get(0)
        .unwrap()
        .to_vec1()
        .unwrap();
    for (i, w) in want["first4_ch0_row0"]
        .as_array()
        .unwrap()
        .iter()
        .enumerate()
    {
        close(&format!("{name} [0,0,0,{i}]"), row[i], f(w), FEATURE_TOL);
    }
}

fn check_image(name: &str, golden: &Value) {
    let x = load_image(&golden_dir().join(format!("{name}_224.png")));
    let mean = x.mean_all().unwrap().to_scalar::<f32>().unwrap();
    close(
        &format!("{name} input mean"),
        mean,
        f(&golden["input_tensor_stats"]["mean"]),
        1e-5,
    );

    // Every tap listed in the JSON (blocks 0, 2, 4, 10, 15), from one pass.
    let checks = golden["feature_checks_tf_same"].as_object().unwrap();
    let mut taps: Vec<(&String, usize)> = checks
        .iter()
        .map(|(k, v)| (k, v["after_block"].as_u64().unwrap() as usize))
        .collect();
    taps.sort_by_key(|t| t.1);
    let blocks: Vec<usize> = taps.iter().map(|t| t.1).collect();
    let outs = model().block_outputs(&x, &blocks).unwrap();
    for ((key, _), t) in taps.iter().zip(&outs) {
        check_tap(&format!("{name} {key}"), t, &checks[key.as_str()]);
    }
    // `features` returns exactly the stride 8/16/32 taps, times the documented feature scale.
    let feats = model().features(&x).unwrap();
    for (key, t) in ["stride8", "stride16", "stride32"]
        .iter()
        .zip(feats.levels())
    {
        let unscaled = (t / mce_core::backbone::efficientnet::FEATURE_SCALE).unwrap();
        check_tap(&format!("{name} features {key}"), &unscaled, &checks[*key]);
    }

    let logits = model().classify(&x).unwrap();
    assert_eq!(logits.dims(), &[1, 1000]);
    let logits: Vec<f32> = logits.squeeze(0).unwrap().to_vec1().unwrap();
    let mut order: Vec<usize> = (0..logits.len()).collect();
    order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
    let top5 = golden["top5"].as_array().unwrap();
    let want_idx: Vec<usize> = top5
        .iter()
        .map(|t| t["index"].as_u64().unwrap() as usize)
        .collect();
    assert_eq!(&order[..5], want_idx.as_slice(), "{name}: top-5 indices");
    for t in top5 {
        let i = t["index"].as_u64().unwrap() as usize;
        close(
            &format!("{name} logit[{i}]"),
            logits[i],
            f(&t["logit"]),
            LOGIT_TOL,
        );
    }
    let sum: f32 = logits.iter().sum();
    close(
        &format!("{name} sum of logits"),
        sum,
        f(&golden["logits_sum_all_1000"]),
        1e-2,
    );
}

#[test]
fn chelsea_matches_reference() {
    check_image("chelsea", &expected()["images"]["chelsea"]);
}

#[test]
fn coffee_matches_reference() {
    check_image("coffee", &expected()["images"]["coffee"]);
}

#[test]
fn tolerance_would_catch_symmetric_padding() {
    // Guard the guard: the known wrong-padding logits must be far outside LOGIT_TOL.
    let json = expected();
    for name in ["chelsea", "coffee"] {
        let img = &json["images"][name];
        let right = f(&img["top5"][0]["logit"]);
        let wrong = f(&img["diagnostic_symmetric_padding_WRONG"]["top5"][0]["logit"]);
        assert!(
            (right - wrong).abs() > 100.0 * LOGIT_TOL,
            "{name}: {right} vs {wrong}"
        );
    }
}

#[test]
fn tap_shapes_at_224_and_320() {
    for (size, want) in [
        (224, [(40, 28), (112, 14), (320, 7)]),
        (320, [(40, 40), (112, 20), (320, 10)]),
    ] {
        let x = Tensor::randn(0f32, 1f32, (1, 3, size, size), &Device::Cpu).unwrap();
        let feats = model().features(&x).unwrap();
        for (t, (c, s)) in feats.levels().into_iter().zip(want) {
            assert_eq!(t.dims(), &[1, c, s, s], "input {size}");
            assert!(!t.track_op());
        }
    }
    // A non-square, odd-sized input follows ceil(n / stride) per axis.
    let x = Tensor::zeros((1, 3, 97, 130), candle_core::DType::F32, &Device::Cpu).unwrap();
    let feats = model().features(&x).unwrap();
    assert_eq!(feats.level2.dims(), &[1, 40, 13, 17]);
    assert_eq!(feats.level4.dims(), &[1, 320, 4, 5]);
}

/// A scratch directory for checkpoint variants, unique per test process.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("mce-lite0-golden-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

/// The shipped weights minus the tensors whose names satisfy `drop`.
fn write_variant(name: &str, drop: impl Fn(&str) -> bool) -> PathBuf {
    let all = candle_core::safetensors::load(weights_path(), &Device::Cpu).unwrap();
    let kept: std::collections::HashMap<String, Tensor> =
        all.into_iter().filter(|(k, _)| !drop(k)).collect();
    let path = scratch(name);
    candle_core::safetensors::save(&kept, &path).unwrap();
    path
}

fn checkpoint_reason(path: &Path) -> String {
    match EfficientNetLite0::load(path, &Device::Cpu) {
        Err(mce_core::Error::Checkpoint { path: p, reason }) => {
            assert_eq!(p, path);
            reason
        }
        Err(e) => panic!("expected a Checkpoint error, got {e}"),
        Ok(_) => panic!("{} loaded", path.display()),
    }
}

#[test]
fn load_errors_name_the_problem() {
    let reason = checkpoint_reason(&scratch("does-not-exist.safetensors"));
    assert!(reason.contains("cannot read"), "{reason}");

    let corrupt = scratch("corrupt.safetensors");
    std::fs::write(&corrupt, b"\x10\0\0\0\0\0\0\0{not json at all").unwrap();
    let reason = checkpoint_reason(&corrupt);
    assert!(reason.contains("safetensors"), "{reason}");

    let missing = write_variant("missing.safetensors", |k| {
        k == "_blocks.3._depthwise_conv.weight"
    });
    let reason = checkpoint_reason(&missing);
    assert!(
        reason.contains("_blocks.3._depthwise_conv.weight"),
        "{reason}"
    );
}

#[test]
fn feature_only_checkpoint_loads_without_head() {
    let path = write_variant("features-only.safetensors", |k| {
        k.starts_with("_fc.") || k.starts_with("_conv_head.") || k.starts_with("_bn1.")
    });
    let m = EfficientNetLite0::load(&path, &Device::Cpu).unwrap();
    assert!(!m.has_classifier());
    let x = Tensor::zeros((1, 3, 64, 64), candle_core::DType::F32, &Device::Cpu).unwrap();
    assert_eq!(m.features(&x).unwrap().level4.dims(), &[1, 320, 2, 2]);
    let err = m.classify(&x).unwrap_err().to_string();
    assert!(err.contains("_fc"), "{err}");
    assert!(model().has_classifier());
}
