//! Behaviour kept across the head redesign: the shipped fold-0 model (float checkpoint and int8
//! artifact, whose flag-style configs are migrated at load) and a seeded paper head give the grid
//! logits that the code before heads were types gave (`data/golden/head_logits.json`, written by
//! `examples/golden_logits.rs` at commit fbfe370).

use candle_core::{DType, Device};
use candle_nn::VarMap;
use mce_core::config::HeadKind;
use mce_core::inference::{load_model_file, models_dir, Segmenter};
use mce_core::model::init::seeded_varbuilder;
use mce_core::model::Mode;
use mce_core::{Mce, MceConfig};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[path = "../examples/golden_logits.rs"]
#[allow(dead_code)]
mod golden;

fn golden_file() -> BTreeMap<String, Vec<f32>> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/golden/head_logits.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn model(name: &str) -> PathBuf {
    models_dir().join(name)
}

/// Largest absolute difference relative to the largest golden magnitude.
fn rel_diff(ours: &[f32], theirs: &[f32]) -> f32 {
    assert_eq!(ours.len(), theirs.len());
    let scale = theirs.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-6);
    let worst = ours
        .iter()
        .zip(theirs)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    worst / scale
}

fn check(key: &str, logits: [Vec<f32>; 2], golden: &BTreeMap<String, Vec<f32>>) {
    for (k, ours) in ["k1", "k2"].iter().zip(logits) {
        let name = format!("{key}_{k}");
        let d = rel_diff(&ours, &golden[&name]);
        eprintln!("{name}: relative difference {d:.2e}");
        assert!(d < 1e-5, "{name}: relative difference {d}");
    }
}

#[test]
fn shipped_models_migrate_to_the_matching_head_and_keep_their_logits() {
    let dev = Device::Cpu;
    let golden = golden_file();
    for (key, file) in [
        ("shipped_float", "mce_edge_msrc_fold0.safetensors"),
        ("shipped_int8", "mce_edge_msrc_fold0.int8.safetensors"),
    ] {
        let m = load_model_file(&model(file), &dev).unwrap();
        assert_eq!(
            m.config,
            MceConfig::edge_lite0().with_head(HeadKind::Matching),
            "{file}"
        );
        assert_eq!(m.head.kind(), HeadKind::Matching);
        let seg = Segmenter::from_model(m, &dev);
        check(key, golden::logits(&seg, seg.head()).unwrap(), &golden);
    }
}

#[test]
fn a_seeded_paper_head_keeps_its_logits() {
    let dev = Device::Cpu;
    let cfg = MceConfig::edge_lite0();
    let vm = VarMap::new();
    Mce::new(&cfg, seeded_varbuilder(&vm, 7, DType::F32, &dev)).unwrap();
    let head = Mce::frozen(&cfg, &vm).unwrap();
    assert_eq!(head.kind(), HeadKind::Paper);
    let m = load_model_file(&model("mce_edge_msrc_fold0.safetensors"), &dev).unwrap();
    let seg = Segmenter::from_model(m, &dev);
    check(
        "paper_seeded7",
        golden::logits(&seg, &head).unwrap(),
        &golden_file(),
    );
    // and the encodings are the paper head's: a matching head's support cannot be decoded by it
    let q = head
        .encode_query(&golden::feats(&seg, "16_10_s.png").unwrap(), Mode::Eval)
        .unwrap();
    let other = seg
        .head()
        .encode_support(
            &golden::feats(&seg, "16_12_s.png").unwrap(),
            &golden::box_mask(320, &dev).unwrap(),
            Mode::Eval,
        )
        .unwrap();
    let e = head.decode_grid(&q, &[other]).unwrap_err();
    assert!(e.to_string().contains("paper head"), "{e}");
}
