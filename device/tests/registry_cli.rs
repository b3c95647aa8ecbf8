//! The registry's subcommands through the real binary: register, list, show (text and JSON),
//! remove, and the default registry folder.

use candle_core::Device;
use mce_core::inference::{lite0_weights_path, Segmenter};
use mce_core::MceConfig;
use std::path::{Path, PathBuf};
use std::process::Command;

fn asset(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../assets/msrc")
        .join(name)
}

fn lite0_identity() -> String {
    let seg = Segmenter::untrained(
        &MceConfig::edge_lite0(),
        &lite0_weights_path(),
        &Device::Cpu,
    )
    .unwrap();
    seg.backbone_identity().to_string()
}

#[test]
fn cli_register_list_show_remove() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("registry");
    let run = |args: &[&str]| {
        let o = Command::new(env!("CARGO_BIN_EXE_mce-device"))
            .args(args)
            .arg("--registry")
            .arg(&dir)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
        assert!(o.status.success(), "{args:?}: {stderr}");
        String::from_utf8(o.stdout).unwrap()
    };
    let (img0, mask0) = (asset("8_10_s.png"), asset("8_10_s_GT.png"));
    let (img1, mask1) = (asset("8_11_s.png"), asset("8_11_s_GT.png"));
    let out = run(&[
        "register",
        "bicycle",
        "--init",
        "lite0",
        "--mask-class",
        "12",
        "--image",
        img0.to_str().unwrap(),
        "--mask",
        mask0.to_str().unwrap(),
        "--image",
        img1.to_str().unwrap(),
        "--mask",
        mask1.to_str().unwrap(),
    ]);
    assert!(
        out.contains("registered 2 exemplar(s) of class `bicycle`: 2 in total"),
        "{out}"
    );

    let list: serde_json::Value = serde_json::from_str(&run(&["list", "--json"])).unwrap();
    assert_eq!(
        list["classes"],
        serde_json::json!([{"name": "bicycle", "exemplars": 2}])
    );
    assert_eq!(list["quarantined"], serde_json::json!([]));
    assert!(run(&["list"]).contains("bicycle"));

    let show: serde_json::Value =
        serde_json::from_str(&run(&["show", "bicycle", "--json"])).unwrap();
    let ex = show["exemplars"].as_array().unwrap();
    assert_eq!(ex.len(), 2);
    assert_eq!(ex[1]["source_image"], "8_11_s.png");
    assert_eq!(
        (ex[0]["width"].as_u64(), ex[0]["height"].as_u64()),
        (Some(320), Some(213))
    );
    let identity = lite0_identity();
    assert_eq!(ex[0]["feature_caches"], serde_json::json!([identity]));
    assert!(Path::new(ex[0]["image_file"].as_str().unwrap()).is_file());
    assert!(run(&["show", "bicycle"]).contains("[1] id 2: 8_11_s.png + 8_11_s_GT.png"));

    assert!(run(&["remove", "bicycle", "--exemplar", "0"]).contains("1 left"));
    let show: serde_json::Value =
        serde_json::from_str(&run(&["show", "bicycle", "--json"])).unwrap();
    assert_eq!(show["exemplars"][0]["source_image"], "8_11_s.png");
    assert!(run(&["remove", "bicycle"]).contains("removed class `bicycle`"));
    let list: serde_json::Value = serde_json::from_str(&run(&["list", "--json"])).unwrap();
    assert_eq!(list["classes"], serde_json::json!([]));
}

#[test]
fn default_dir_follows_state_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let first = tmp.path().join("state");
    let second = tmp.path().join("other");
    let o = Command::new(env!("CARGO_BIN_EXE_mce-device"))
        .env(
            "STATE_DIRECTORY",
            format!("{}:{}", first.display(), second.display()),
        )
        .args(["list", "--json"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["registry"], first.to_str().unwrap());
    assert!(first.is_dir() && !second.exists());
}
