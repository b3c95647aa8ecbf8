//! Int8 quantization: per-channel weight scales, the threshold methods on a known distribution, the
//! artifact round trip, and a loaded quantized model whose logits stay close to the float model's.

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use mce_core::checkpoint::{CheckpointFile, BACKBONE_PREFIX};
use mce_core::inference::{lite0_weights_path, models_dir, Segmenter};
use mce_core::model::Mode;
use mce_core::preprocess::{load_mask, load_rgb, MaskEncoding};
use mce_core::quant::artifact::{self, record_layers, LoadOptions};
use mce_core::quant::layers::{Exec, QuantPlan};
use mce_core::quant::plan::{HistogramObserver, RecordPlan};
use mce_core::quant::scale::{sqnr_db, BINS};
use mce_core::quant::QuantVarBuilder;
use mce_core::quant::{channel_scales, Histogram, Method, QuantizedWeight};
use mce_core::{Mce, MceConfig};
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;

fn tmp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("mce-quant-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

#[test]
fn per_channel_scales_of_a_hand_made_tensor() {
    let w = Tensor::new(
        &[[1.0f32, -2.54, 0.5], [0.0, 0.0, 0.0], [0.127, 0.05, -0.1]],
        &Device::Cpu,
    )
    .unwrap();
    let s = channel_scales(&w).unwrap();
    let want = [2.54 / 127.0, 1.0, 0.001];
    for (a, b) in s.iter().zip(want) {
        assert!((a - b).abs() < 1e-7, "{s:?}");
    }
    let q = QuantizedWeight::quantize(&w).unwrap();
    assert_eq!(q.data, vec![50, -127, 25, 0, 0, 0, 127, 50, -100]);
    let back = q.dequantize(&Device::Cpu).unwrap();
    let err = (back - &w).unwrap().abs().unwrap().flatten_all().unwrap();
    let err = err.to_vec1::<f32>().unwrap();
    for (i, e) in err.iter().enumerate() {
        assert!(*e <= s[i / 3] / 2.0 + 1e-7, "element {i}: error {e}");
    }
}

/// 10⁶ samples of N(0, 1) (Box–Muller on a fixed LCG) and 4 outliers at ±30.
fn gaussian_with_outliers() -> Vec<f32> {
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut uniform = move || {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        ((state >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    };
    let mut v: Vec<f32> = (0..500_000)
        .flat_map(|_| {
            let (u1, u2) = (uniform(), uniform());
            let r = (-2.0 * u1.ln()).sqrt();
            let a = 2.0 * std::f64::consts::PI * u2;
            [(r * a.cos()) as f32, (r * a.sin()) as f32]
        })
        .collect();
    v.extend([30.0, -30.0, 29.5, -29.0]);
    v
}

#[test]
fn calibration_methods_on_a_gaussian_with_planted_outliers() {
    let values = gaussian_with_outliers();
    let mut h = Histogram::default();
    // Two batches, the second widening the range (bins merge).
    h.add(&values[..1000]);
    h.add(&values[1000..]);
    assert_eq!(h.count, values.len() as u64);
    assert_eq!(h.bins.len(), BINS);
    let max = h.threshold(Method::Max);
    assert_eq!(max, 30.0, "max must keep the outliers");
    assert!(h.clip_rate(max) == 0.0);
    for m in [Method::Percentile(99.99), Method::Mse, Method::Kl] {
        let t = h.threshold(m);
        assert!(
            (2.5..25.0).contains(&t),
            "{m} must clip the outliers (|x| ≥ 29) but not the Gaussian, chose {t}"
        );
        assert!(
            h.clip_rate(t) >= 4.0 / values.len() as f64 && h.clip_rate(t) < 0.02,
            "{m}: {}",
            h.clip_rate(t)
        );
        // Clipping the outliers lowers the histogram's expected error versus max.
        assert!(h.mse_at(f64::from(t)) < h.mse_at(f64::from(max)), "{m}");
    }
    // 99.99 % of N(0,1) lies within 3.89 σ.
    let p = h.threshold(Method::Percentile(99.99));
    assert!((p - 3.89).abs() < 0.15, "percentile {p}");
    assert_eq!(
        "percentile:99.9".parse::<Method>(),
        Ok(Method::Percentile(99.9))
    );
    assert!("nope".parse::<Method>().is_err());
}

fn config() -> MceConfig {
    MceConfig::edge_lite0()
}

/// A seeded head and the bundled Lite0 backbone as an in-memory checkpoint.
fn float_checkpoint(path: PathBuf) -> CheckpointFile {
    let cfg = config();
    let vm = VarMap::new();
    let vb = mce_core::model::init::seeded_varbuilder(&vm, 3, DType::F32, &Device::Cpu);
    Mce::new(&cfg, vb).unwrap();
    let mut tensors: HashMap<String, Tensor> = vm
        .data()
        .lock()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_tensor().clone()))
        .collect();
    for (k, t) in candle_core::safetensors::load(lite0_weights_path(), &Device::Cpu).unwrap() {
        tensors.insert(format!("{BACKBONE_PREFIX}{k}"), t);
    }
    CheckpointFile {
        path,
        config: cfg,
        extra: BTreeMap::new(),
        tensors,
    }
}

fn asset(name: &str) -> PathBuf {
    models_dir().join("../assets/msrc").join(name)
}

/// Logits `(1, 2, S, S)` of class 12 (bicycle) on `8_13_s` with `8_10_s` as the exemplar.
fn logits(seg: &Segmenter) -> Tensor {
    let ex_img = load_rgb(asset("8_10_s.png")).unwrap();
    let ex_mask = load_mask(asset("8_10_s_GT.png"), MaskEncoding::ClassIndex(12)).unwrap();
    let ex = seg
        .exemplar(&ex_img, &ex_mask, &asset("8_10_s.png"))
        .unwrap();
    let class = seg.encode_class(&[ex]).unwrap();
    let frame = load_rgb(asset("8_13_s.png")).unwrap();
    let feats = seg.features(&seg.prepare(&frame).unwrap()).unwrap();
    let query = seg.head().encode_query(&feats, Mode::Eval).unwrap();
    seg.head().decode(&query, &class.shots).unwrap()
}

fn segmenter(file: &CheckpointFile, plan: Option<Arc<RecordPlan>>) -> Segmenter {
    let vb = VarBuilder::from_tensors(file.tensors.clone(), DType::F32, &Device::Cpu);
    let vb = match plan {
        Some(p) => QuantVarBuilder::new(vb, p as Arc<dyn QuantPlan>),
        None => vb.into(),
    };
    let (head, backbone) = mce_core::checkpoint::build_model(&file.config, vb).unwrap();
    Segmenter::new(file.config.clone(), backbone, head, &Device::Cpu, true)
}

#[test]
fn artifact_round_trip_and_quantized_logits_stay_close_to_float() {
    let path = tmp("model.safetensors");
    let file = float_checkpoint(tmp("float.safetensors"));
    // Float reference, then calibrate on the same pair of images (max method).
    let float_l = logits(&segmenter(&file, None));
    let observer = Arc::new(HistogramObserver::default());
    let plan = Arc::new(RecordPlan::observing(observer.clone()));
    logits(&segmenter(&file, Some(plan)));
    let scales: HashMap<String, f32> = observer
        .histograms()
        .iter()
        .map(|(k, h)| (k.clone(), h.threshold(Method::Max) / 127.0))
        .collect();
    let spec = artifact::write_from_checkpoint(
        &path,
        &file,
        &scales,
        Method::Max,
        &artifact::SENSITIVE_LITE0.map(String::from),
        None,
        &BTreeMap::from([("note".to_string(), "test".to_string())]),
        &Device::Cpu,
    )
    .unwrap();
    // The classifier head of Lite0 never runs for features: not stored.
    assert!(spec.layers.keys().all(|k| !k.contains("_conv_head")));
    assert!(spec.layers.contains_key("decoder.cls"));
    assert!(spec
        .layers
        .contains_key("backbone._blocks.15._project_conv"));
    // Linear layers with a width that is a multiple of 32 run as QMatMul; 1×1 convs stay f32.
    assert_eq!(spec.layers["cross.0.query_q"].exec, Exec::QMatMul); // linear, 128 inputs
    assert_eq!(spec.layers["decoder.cls"].exec, Exec::Dequantized); // 1×1 conv, 128 inputs
    assert_eq!(spec.layers["down_query.0"].exec, Exec::Dequantized); // 152 inputs
    assert_eq!(
        spec.layers["backbone._blocks.1._depthwise_conv"].exec,
        Exec::Dequantized
    );
    assert!(artifact::is_quantized(&path).unwrap());
    assert!(!artifact::is_quantized(&lite0_weights_path()).unwrap());

    // i8 on disk, scales f32, size about a quarter of f32.
    let bytes = std::fs::read(&path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let w = st.tensor("decoder.cls.weight").unwrap();
    assert_eq!(w.dtype(), safetensors::Dtype::I8);
    assert_eq!(
        st.tensor("decoder.cls.weight_scale").unwrap().dtype(),
        safetensors::Dtype::F32
    );
    let float_bytes: usize = file.tensors.values().map(|t| t.elem_count() * 4).sum();
    assert!(
        bytes.len() * 10 < float_bytes * 3,
        "{} vs {float_bytes}",
        bytes.len()
    );

    // Loading restores the spec and the exact int8 weights.
    let loaded = artifact::load(&path, &Device::Cpu, LoadOptions::default()).unwrap();
    assert_eq!(loaded.spec, spec);
    assert_eq!(loaded.extra.get("note").map(String::as_str), Some("test"));
    let orig = QuantizedWeight::quantize(&file.tensors["decoder.cls.weight"]).unwrap();
    let i8s: Vec<i8> = w.data().iter().map(|&b| b as i8).collect();
    assert_eq!(i8s, orig.data);

    // The quantized model (Q8_0 matmuls) stays within 20 dB SQNR of float on the bundled image.
    let q = Segmenter::new(
        loaded.config,
        loaded.backbone,
        loaded.head,
        &Device::Cpu,
        true,
    );
    let quant_l = logits(&q);
    let sqnr = sqnr_db(&float_l, &quant_l).unwrap();
    assert!(sqnr >= 20.0, "quantized vs float logit SQNR {sqnr:.1} dB");
    // Simulated static int8 activations (max scales, random head: a looser bound).
    let opts = LoadOptions {
        quantized_matmul: false,
        simulate_activations: true,
    };
    let sim = artifact::load(&path, &Device::Cpu, opts).unwrap();
    let sim_l = logits(&Segmenter::new(
        sim.config,
        sim.backbone,
        sim.head,
        &Device::Cpu,
        true,
    ));
    let sqnr = sqnr_db(&float_l, &sim_l).unwrap();
    assert!(
        sqnr >= 15.0,
        "simulated int8 vs float logit SQNR {sqnr:.1} dB"
    );

    // One flipped bit in the int8 weights: refused by the tensor checksum, naming the file.
    let mut rotten = std::fs::read(&path).unwrap();
    let start = 8 + u64::from_le_bytes(rotten[..8].try_into().unwrap()) as usize;
    let at = start + (rotten.len() - start) / 2;
    rotten[at] ^= 0x01;
    let bad = tmp("rotten.mceq");
    std::fs::write(&bad, rotten).unwrap();
    let e = match artifact::load(&bad, &Device::Cpu, LoadOptions::default()) {
        Ok(_) => panic!("a damaged artifact loaded"),
        Err(e) => e.to_string(),
    };
    assert!(
        e.contains("rotten.mceq") && e.contains("does not match its checksum"),
        "{e}"
    );
}

#[test]
fn a_float_checkpoint_or_broken_file_is_not_loaded_as_an_artifact() {
    let err = match artifact::load(&lite0_weights_path(), &Device::Cpu, LoadOptions::default()) {
        Ok(_) => panic!("loaded backbone weights as an artifact"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("not a quantized mce artifact"), "{err}");
    let bad = tmp("bad.safetensors");
    std::fs::write(&bad, b"garbage").unwrap();
    assert!(artifact::is_quantized(&bad).is_err());
    let err = artifact::load(&bad, &Device::Cpu, LoadOptions::default())
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("bad.safetensors"), "{err}");
}

/// The measured execution choice: every linear candidate is timed on its real input, the choice
/// follows the timing, convolutions are never candidates, and the timing is recorded per layer.
#[test]
fn measured_exec_choice_follows_the_timings_and_is_recorded() {
    let file = float_checkpoint(tmp("timed_float.safetensors"));
    let timings = mce_core::quant::timing::measure(&file, &Device::Cpu).unwrap();
    assert!(
        timings.contains_key("cross.0.query_q"),
        "{:?}",
        timings.keys()
    );
    assert!(!timings.contains_key("decoder.cls"));
    assert!(timings.keys().all(|k| !k.starts_with("backbone.")));
    for t in timings.values() {
        assert!(
            t.f32_ns > 0 && t.qmatmul_ns > 0 && t.f32_ns < u64::MAX,
            "{t:?}"
        );
    }
    let scales: HashMap<String, f32> = record_layers(&file, &Device::Cpu)
        .unwrap()
        .into_iter()
        .map(|r| (r.name, 0.05))
        .collect();
    let path = tmp("timed.int8.safetensors");
    let spec = artifact::write_from_checkpoint(
        &path,
        &file,
        &scales,
        Method::Max,
        &[],
        Some(&timings),
        &BTreeMap::new(),
        &Device::Cpu,
    )
    .unwrap();
    for (name, t) in &timings {
        assert_eq!(spec.layers[name].exec, t.choice(), "{name}");
        assert_eq!(spec.layers[name].timing, Some(*t), "{name}");
    }
    assert_eq!(spec.layers["decoder.cls"].timing, None);
    assert_eq!(spec.layers["decoder.cls"].exec, Exec::Dequantized);
    let loaded = artifact::load(&path, &Device::Cpu, LoadOptions::default()).unwrap();
    assert_eq!(loaded.spec, spec);
}
