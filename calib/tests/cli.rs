//! The real `mce-calib` binary on a generated `folders` dataset and a tiny float checkpoint:
//! `calibrate` (on episodes, and on a folder of frames with exemplars) writes a table with every
//! method's thresholds and an int8 artifact; `report` writes JSON and markdown comparing float and
//! quantized; bad inputs fail with an error naming the file or the problem, never a panic.

use candle_core::{DType, Device};
use candle_nn::VarMap;
use mce_core::checkpoint;
use mce_core::inference::lite0_weights_path;
use mce_core::quant::artifact::{self, LoadOptions};
use mce_core::quant::{is_quantized, Method};
use mce_core::Mce;
use mce_testkit::SquareFolders;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

/// 4 classes × 5 images: a coloured square on a noisy background, exact binary masks.
fn fixture(root: &Path) {
    SquareFolders {
        images: 5,
        size: (96, 72),
        side: (40, 3),
    }
    .write(root);
}

/// A float checkpoint: seeded head of a tiny config (64² input) and the bundled Lite0 backbone.
fn float_checkpoint(path: &Path) {
    let cfg = mce_testkit::tiny_edge_config(64);
    let vm = VarMap::new();
    let vb = mce_core::model::init::seeded_varbuilder(&vm, 11, DType::F32, &Device::Cpu);
    Mce::new(&cfg, vb).unwrap();
    let backbone = candle_core::safetensors::load(lite0_weights_path(), &Device::Cpu).unwrap();
    checkpoint::save(path, &cfg, &vm, &backbone, &BTreeMap::new()).unwrap();
}

struct Setup {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    data: PathBuf,
    float: PathBuf,
}

fn setup() -> Setup {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let data = dir.join("data");
    fixture(&data);
    let float = dir.join("float.safetensors");
    float_checkpoint(&float);
    Setup {
        _tmp: tmp,
        dir,
        data,
        float,
    }
}

/// Run `mce-calib` with `args`; (success, exit code, stdout + stderr).
fn calib(args: &[&str]) -> (bool, Option<i32>, String) {
    let o = Command::new(env!("CARGO_BIN_EXE_mce-calib"))
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    (o.status.success(), o.status.code(), text)
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// `calibrate` on 4 training episodes of fold 0/2 with `method`; returns (table, artifact).
fn calibrate(st: &Setup, method: &str, tag: &str) -> (PathBuf, PathBuf) {
    let (table, out) = (
        st.dir.join(format!("{tag}.table.json")),
        st.dir.join(format!("{tag}.int8.safetensors")),
    );
    let (ok, _, text) = calib(&[
        "calibrate",
        "--checkpoint",
        s(&st.float),
        "--dataset",
        "folders",
        "--root",
        s(&st.data),
        "--fold",
        "0",
        "--folds",
        "2",
        "--episodes",
        "4",
        "--method",
        method,
        "--table",
        s(&table),
        "--out",
        s(&out),
    ]);
    assert!(ok, "{text}");
    assert!(text.contains("calibrated"), "{text}");
    (table, out)
}

fn read_json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// Every layer has a finite threshold per method (none above max) and the scale of `method`.
fn check_table(table: &Value, method: &str) -> usize {
    assert_eq!(table["format"], "mce-calibration");
    let layers = table["layers"].as_object().unwrap();
    assert!(layers.keys().any(|k| k.starts_with("backbone.")));
    assert!(
        layers.keys().any(|k| k.starts_with("decoder.")),
        "{:?}",
        layers.keys()
    );
    for (name, l) in layers {
        let t = |m: &str| {
            l["thresholds"][m]
                .as_f64()
                .unwrap_or_else(|| panic!("{name}: no `{m}` threshold in {}", l["thresholds"]))
        };
        let max = t("max");
        for m in ["percentile:99.99", "mse", "kl"] {
            let v = t(m);
            assert!(
                v.is_finite() && v >= 0.0 && v <= max * 1.0001,
                "{name} {m}: {v} vs max {max}"
            );
        }
        let want = t(method).max(1e-12) / 127.0;
        let scale = l["scale"].as_f64().unwrap();
        assert!(
            (scale - want).abs() <= 1e-6 * want.max(1e-9),
            "{name}: scale {scale} vs {want}"
        );
        let clip = l["clip_rate"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&clip), "{name}: clip rate {clip}");
    }
    layers.len()
}

#[test]
fn calibrate_writes_every_method_and_an_artifact_from_episodes_and_from_frames() {
    let st = setup();
    let (table, out) = calibrate(&st, "mse", "episodes");
    let t = read_json(&table);
    assert_eq!(t["method"], "mse");
    let n = check_table(&t, "mse");
    assert!(
        t["source"].as_str().unwrap().contains("episodes"),
        "{}",
        t["source"]
    );
    assert!(is_quantized(&out).unwrap());
    let m = artifact::load(&out, &Device::Cpu, LoadOptions::default()).unwrap();
    assert_eq!(m.spec.method, Method::Mse);
    assert_eq!(m.config.image_size, 64);
    let (fb, qb) = (
        std::fs::metadata(&st.float).unwrap().len(),
        std::fs::metadata(&out).unwrap().len(),
    );
    assert!(qb * 10 <= fb * 3, "artifact {qb} bytes vs float {fb}");

    // your own frames against your exemplars (the folders layout), no dataset
    let (ftable, fout) = (
        st.dir.join("frames.table.json"),
        st.dir.join("frames.int8.safetensors"),
    );
    let (ok, _, text) = calib(&[
        "calibrate",
        "--checkpoint",
        s(&st.float),
        "--frames",
        s(&st.data.join("class2/images")),
        "--exemplars",
        s(&st.data),
        "--max-frames",
        "3",
        "--method",
        "kl",
        "--table",
        s(&ftable),
        "--out",
        s(&fout),
    ]);
    assert!(ok, "{text}");
    let ft = read_json(&ftable);
    assert_eq!(ft["method"], "kl");
    assert_eq!(
        check_table(&ft, "kl"),
        n,
        "frames calibrate the same layers"
    );
    let source = ft["source"].as_str().unwrap();
    assert!(
        source.contains("3 frames") && source.contains("4 classes"),
        "{source}"
    );
    assert!(is_quantized(&fout).unwrap());
}

#[test]
fn report_writes_json_and_markdown_for_float_and_quantized() {
    let st = setup();
    let (table, out) = calibrate(&st, "percentile", "report");
    let (json, md) = (st.dir.join("report.json"), st.dir.join("REPORT.md"));
    let (ok, _, text) = calib(&[
        "report",
        "--checkpoint",
        s(&st.float),
        "--table",
        s(&table),
        "--artifact",
        s(&out),
        "--qat-artifact",
        s(&out),
        "--dataset",
        "folders",
        "--root",
        s(&st.data),
        "--fold",
        "0",
        "--folds",
        "2",
        "--episodes",
        "3",
        "--seeds",
        "0",
        "--latency-frames",
        "1",
        "--json",
        s(&json),
        "--markdown",
        s(&md),
    ]);
    assert!(ok, "{text}");
    let r = read_json(&json);
    let variants = r["variants"].as_array().unwrap();
    let names: Vec<&str> = variants
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    for want in [
        "float",
        "int8-sim max",
        "int8-sim percentile:99.99",
        "int8-sim mse",
        "int8-sim kl",
        "int8 artifact (device: i8 weights, per-layer exec)",
        "int8 artifact (simulated static int8 inputs)",
        "int8 QAT artifact (device: i8 weights, per-layer exec)",
    ] {
        assert!(names.contains(&want), "no `{want}` row in {names:?}");
    }
    for v in variants {
        for k in ["miou", "fb_iou"] {
            let x = v[k].as_f64().unwrap_or(f64::NAN);
            assert!((0.0..=100.0).contains(&x), "{}: {k} {x}", v["name"]);
        }
    }
    let row = |name: &str| variants.iter().find(|v| v["name"] == name).unwrap();
    let float = row("float");
    let device = row("int8 artifact (device: i8 weights, per-layer exec)");
    let (fb, qb) = (
        float["file_bytes"].as_u64().unwrap(),
        device["file_bytes"].as_u64().unwrap(),
    );
    assert_eq!(fb, std::fs::metadata(&st.float).unwrap().len());
    assert!(qb < fb, "{qb} vs {fb}");
    for v in [float, device] {
        let l = v["latency_ms"].as_f64().unwrap();
        assert!(l > 0.0 && l.is_finite(), "{}: latency {l}", v["name"]);
    }
    let layers = r["layers"].as_array().unwrap();
    assert_eq!(
        layers.len(),
        read_json(&table)["layers"].as_object().unwrap().len()
    );
    for l in layers {
        let sq = l["input_sqnr_db"].as_f64().unwrap();
        assert!(sq.is_finite(), "{l}");
        assert!(
            ["QMatMul", "Dequantized", "-"].contains(&l["exec"].as_str().unwrap()),
            "{l}"
        );
    }
    assert!(layers.iter().any(|l| l["exec"] == "QMatMul"));

    let text = std::fs::read_to_string(&md).unwrap();
    assert!(
        text.contains("| variant | mIoU | FB-IoU | file | latency/frame |"),
        "{text}"
    );
    assert!(
        text.contains("| float |") && text.contains("| int8 artifact (device"),
        "{text}"
    );
    assert!(
        text.contains("| layer | input scale | clip rate | input SQNR dB |"),
        "{text}"
    );
    assert!(text.contains("decoder."), "{text}");
}

/// A failed run: exit code 2 (not a panic) with `needles` in its output.
fn fails_with(args: &[&str], needles: &[&str]) {
    let (ok, code, text) = calib(args);
    assert!(!ok, "{args:?} succeeded: {text}");
    assert!(!text.contains("panicked"), "{args:?} panicked: {text}");
    assert_eq!(code, Some(2), "{args:?}: {text}");
    for n in needles {
        assert!(text.contains(n), "{args:?}: no `{n}` in: {text}");
    }
}

#[test]
fn bad_inputs_fail_naming_the_file_or_the_problem() {
    let st = setup();
    let (table, out) = (
        s(&st.dir.join("t.json")).to_string(),
        s(&st.dir.join("o.safetensors")).to_string(),
    );
    let calibrate_with = |checkpoint: &str, method: &str| -> Vec<String> {
        [
            "calibrate",
            "--checkpoint",
            checkpoint,
            "--dataset",
            "folders",
            "--root",
            s(&st.data),
            "--folds",
            "2",
            "--episodes",
            "2",
            "--method",
            method,
            "--table",
            &table,
            "--out",
            &out,
        ]
        .map(String::from)
        .to_vec()
    };
    let run = |args: Vec<String>, needles: &[&str]| {
        fails_with(
            &args.iter().map(String::as_str).collect::<Vec<_>>(),
            needles,
        )
    };
    let missing = st.dir.join("missing_model.safetensors");
    run(
        calibrate_with(s(&missing), "max"),
        &["missing_model.safetensors"],
    );
    let junk = st.dir.join("notes_not_a_model.safetensors");
    std::fs::write(&junk, "these are notes, not tensors").unwrap();
    run(
        calibrate_with(s(&junk), "max"),
        &["notes_not_a_model.safetensors"],
    );
    let png = st.data.join("class0/images/0.png");
    run(calibrate_with(s(&png), "max"), &["0.png"]);
    run(
        calibrate_with(s(&st.float), "bogus"),
        &["unknown calibration method", "bogus"],
    );
    run(
        calibrate_with(s(&st.float), "percentile:150"),
        &["unknown calibration method"],
    );
    // nothing to calibrate on
    fails_with(
        &[
            "calibrate",
            "--checkpoint",
            s(&st.float),
            "--table",
            &table,
            "--out",
            &out,
        ],
        &["nothing to calibrate on"],
    );
    // a frames folder without images
    let empty = st.dir.join("no_frames_here");
    std::fs::create_dir_all(&empty).unwrap();
    fails_with(
        &[
            "calibrate",
            "--checkpoint",
            s(&st.float),
            "--frames",
            s(&empty),
            "--exemplars",
            s(&st.data),
            "--table",
            &table,
            "--out",
            &out,
        ],
        &["no_frames_here", "no frames"],
    );
    // quantize with a missing table; report with a float checkpoint given as the artifact
    let no_table = st.dir.join("absent_table.json");
    fails_with(
        &[
            "quantize",
            "--checkpoint",
            s(&st.float),
            "--table",
            s(&no_table),
            "--out",
            &out,
        ],
        &["absent_table.json"],
    );
    fails_with(
        &[
            "quantize",
            "--checkpoint",
            s(&st.float),
            "--table",
            s(&junk),
            "--out",
            &out,
        ],
        &["notes_not_a_model.safetensors", "not a calibration table"],
    );
    let (good_table, _) = calibrate(&st, "max", "good");
    let float_name = st.float.file_name().unwrap().to_str().unwrap();
    let report_with = |table: &str, needles: &[&str]| {
        let args = [
            "report",
            "--checkpoint",
            s(&st.float),
            "--table",
            table,
            "--artifact",
            s(&st.float),
            "--dataset",
            "folders",
            "--root",
            s(&st.data),
            "--fold",
            "0",
            "--folds",
            "2",
        ];
        fails_with(&args, needles);
    };
    report_with(
        s(&good_table),
        &[float_name, "not a quantized mce artifact"],
    );
    report_with(s(&no_table), &["absent_table.json"]);
    assert!(
        !Path::new(&out).exists(),
        "a failed run must not leave an artifact"
    );
}

#[test]
fn latency_times_float_and_int8_files_and_names_a_missing_one() {
    let st = setup();
    let (_, out) = calibrate(&st, "max", "latency");
    let json = st.dir.join("latency.json");
    let (ok, _, text) = calib(&[
        "latency",
        s(&st.float),
        s(&out),
        "--frames",
        "2",
        "--json",
        s(&json),
    ]);
    assert!(ok, "{text}");
    let v = read_json(&json);
    let rows = v["models"].as_array().unwrap();
    assert_eq!(rows.len(), 2);
    for (row, path) in rows.iter().zip([&st.float, &out]) {
        assert_eq!(row["model"].as_str().unwrap(), s(path));
        let ms = row["median_ms"].as_f64().unwrap();
        assert!(ms > 0.0 && ms.is_finite(), "{row}");
    }
    let missing = st.dir.join("missing.safetensors");
    fails_with(
        &["latency", s(&st.float), s(&missing)],
        &["missing.safetensors"],
    );
}

#[test]
fn help_texts_are_plain() {
    mce_testkit::assert_help_is_plain(env!("CARGO_BIN_EXE_mce-calib"));
}
