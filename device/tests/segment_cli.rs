//! `mce-device segment` as a user runs it: real binary, bundled images, real checkpoint files.

use candle_core::{DType, Device};
use candle_nn::{VarBuilder, VarMap};
use mce_core::inference::{lite0_weights_path, Segmenter};
use mce_core::preprocess::{load_mask, load_rgb, MaskEncoding};
use mce_core::{checkpoint, Mce, MceConfig};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn asset(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../assets/msrc")
        .join(name)
}

fn tmp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("mce-segment-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn segment(args: &[&str]) -> Output {
    segment_with_models(args, None)
}

/// Run `segment`, optionally with another models folder (`MCE_MODELS_DIR`).
fn segment_with_models(args: &[&str], models: Option<&Path>) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_mce-device"));
    if let Some(dir) = models {
        cmd.env("MCE_MODELS_DIR", dir);
    }
    cmd.arg("segment")
        .args(args)
        .output()
        .expect("run mce-device")
}

/// A models folder with the Lite0 backbone but no trained model.
fn models_without_default(tag: &str) -> PathBuf {
    let dir = tmp_dir(tag);
    let link = dir.join("efficientnet_lite0.safetensors");
    if !link.exists() {
        std::os::unix::fs::symlink(lite0_weights_path(), &link).unwrap();
    }
    dir
}

fn pair(stem: &str) -> String {
    format!(
        "{}:{}",
        asset(&format!("{stem}.png")).display(),
        asset(&format!("{stem}_GT.png")).display()
    )
}

#[test]
fn untrained_init_runs_and_says_so() {
    let dir = tmp_dir("init");
    let (out, overlay) = (dir.join("m.png"), dir.join("o.png"));
    let query = asset("8_13_s.png");
    let o = segment(&[
        "--init",
        "lite0",
        "--mask-class",
        "12",
        "--support",
        &pair("8_10_s"),
        "--support",
        &pair("8_11_s"),
        "--query",
        query.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--overlay",
        overlay.to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{stderr}");
    assert!(stderr.contains("UNTRAINED"), "no loud warning: {stderr}");
    let mask = image::open(&out).unwrap().to_luma8();
    let q = image::open(&query).unwrap();
    assert_eq!((mask.width(), mask.height()), (q.width(), q.height()));
    assert!(mask.pixels().all(|p| p.0[0] == 0 || p.0[0] == 255));
    let ov = image::open(&overlay).unwrap();
    assert_eq!((ov.width(), ov.height()), (q.width(), q.height()));
}

#[test]
fn checkpoint_model_matches_the_library_result() {
    let dir = tmp_dir("ckpt");
    let cfg = MceConfig::edge_lite0();
    let vm = VarMap::new();
    Mce::new(&cfg, VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu)).unwrap();
    let backbone = candle_core::safetensors::load(lite0_weights_path(), &Device::Cpu).unwrap();
    let ckpt = dir.join("model.safetensors");
    checkpoint::save(&ckpt, &cfg, &vm, &backbone, &BTreeMap::new()).unwrap();

    let out = dir.join("m.png");
    let query = asset("4_14_s.png");
    let o = segment(&[
        "--model",
        ckpt.to_str().unwrap(),
        "--mask-class",
        "8",
        "--support",
        &pair("4_12_s"),
        "--query",
        query.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{stderr}");
    assert!(!stderr.contains("UNTRAINED"));
    let cli: Vec<u8> = image::open(&out)
        .unwrap()
        .to_luma8()
        .pixels()
        .map(|p| u8::from(p.0[0] > 0))
        .collect();

    let s = Segmenter::from_checkpoint(&ckpt, &Device::Cpu).unwrap();
    let mask_path = asset("4_12_s_GT.png");
    let ex = s
        .exemplar(
            &load_rgb(asset("4_12_s.png")).unwrap(),
            &load_mask(&mask_path, MaskEncoding::ClassIndex(8)).unwrap(),
            &mask_path,
        )
        .unwrap();
    let class = s.encode_class(&[ex]).unwrap();
    let lib = s.segment(&load_rgb(&query).unwrap(), &[&class]).unwrap()[0].mask();
    let differ = cli.iter().zip(&lib).filter(|(a, b)| a != b).count();
    assert!(
        differ * 1000 <= lib.len(),
        "{differ} of {} pixels differ",
        lib.len()
    );
}

#[test]
fn bad_inputs_fail_with_the_file_named() {
    let dir = tmp_dir("bad");
    let out = dir.join("m.png");
    let out = out.to_str().unwrap();
    let q = asset("8_13_s.png");
    let q = q.to_str().unwrap();
    let truncated = dir.join("trunc.safetensors");
    std::fs::write(&truncated, b"\x08\x00\x00\x00\x00\x00\x00\x00{}").unwrap();
    let wrong_size = format!(
        "{}:{}",
        asset("8_10_s.png").display(),
        asset("8_12_s_GT.png").display()
    );
    let bike = pair("8_10_s");
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec![
                "--init",
                "lite0",
                "--mask-class",
                "12",
                "--support",
                &bike,
                "--query",
                "/no/such/q.png",
                "--out",
                out,
            ],
            "/no/such/q.png",
        ),
        (
            vec![
                "--init",
                "lite0",
                "--support",
                &bike,
                "--query",
                q,
                "--out",
                out,
            ],
            "8_10_s_GT.png",
        ),
        (
            vec![
                "--init",
                "lite0",
                "--mask-class",
                "3",
                "--support",
                &bike,
                "--query",
                q,
                "--out",
                out,
            ],
            "no foreground",
        ),
        (
            vec![
                "--init",
                "lite0",
                "--mask-class",
                "12",
                "--support",
                &wrong_size,
                "--query",
                q,
                "--out",
                out,
            ],
            "8_12_s_GT.png",
        ),
        (
            vec![
                "--mask-class",
                "12",
                "--support",
                &bike,
                "--query",
                q,
                "--out",
                out,
            ],
            "--model",
        ),
        (
            vec![
                "--model",
                truncated.to_str().unwrap(),
                "--support",
                &bike,
                "--query",
                q,
                "--out",
                out,
            ],
            "trunc.safetensors",
        ),
        (
            vec![
                "--init",
                "lite0",
                "--support",
                "no-colon",
                "--query",
                q,
                "--out",
                out,
            ],
            "IMAGE:MASK",
        ),
    ];
    let no_default = models_without_default("nomodel");
    for (args, expect) in cases {
        let o = segment_with_models(&args, Some(&no_default));
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{args:?} succeeded");
        assert!(
            stderr.contains(expect),
            "{args:?}: expected {expect:?} in: {stderr}"
        );
        assert!(!stderr.contains("panicked"), "{args:?} panicked: {stderr}");
    }
}
