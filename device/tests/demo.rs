//! `mce-device demo` as a user runs it: bundled exemplars registered in a temporary registry, the
//! service pipeline over bundled frames, overlays and JSON written, a summary printed.

use std::path::Path;
use std::process::Command;

#[test]
fn demo_writes_consistent_overlays_and_summary() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("demo");
    let trained = mce_device::model::default_model_path().exists();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_mce-device"));
    cmd.args(["demo", "--classes", "3", "--frames", "3", "--out"])
        .arg(&out)
        .env("NO_COLOR", "1");
    if !trained {
        cmd.args(["--init", "lite0"]);
    }
    let o = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{stdout}\n{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(stderr.contains("UNTRAINED"), !trained, "{stderr}");
    assert!(
        stdout.contains("mean IoU") && stdout.contains("frames/s"),
        "{stdout}"
    );
    assert!(
        stdout.contains(&out.display().to_string()),
        "says where to look: {stdout}"
    );
    for class in ["bicycle", "aeroplane", "dog"] {
        assert!(stdout.contains(&format!("registered {class}")), "{stdout}");
    }

    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["model_trained"], trained);
    // the bundled model runs the cross_matching head; --init lite0 an untrained paper head
    let head = if trained { "cross_matching" } else { "paper" };
    assert_eq!(summary["model_head"], head, "{summary}");
    assert_eq!(
        summary["classes"],
        serde_json::json!(["bicycle", "aeroplane", "dog"])
    );
    let frames = summary["frames"].as_array().unwrap();
    assert_eq!(frames.len(), 3, "{summary}");
    let mut true_classes = Vec::new();
    let mut ious = Vec::new();
    for f in frames {
        let name = f["frame"].as_str().unwrap();
        let overlay = out.join(f["overlay"].as_str().unwrap());
        let img = image::open(&overlay).unwrap_or_else(|e| panic!("{}: {e}", overlay.display()));
        let src = image::open(
            Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../assets/msrc/{name}.png")),
        )
        .unwrap();
        assert_eq!((img.width(), img.height()), (src.width(), src.height()));
        // The legend in the corner: one swatch per class in the classes' colours (scale 1 below
        // 480 px: rows 10 px apart from y = 2, swatches at x 2..10).
        let img = img.to_rgb8();
        for (row, colour) in mce_device::overlay::PALETTE.iter().take(3).enumerate() {
            let y = 2 + 10 * row as u32 + 4;
            assert_eq!(&img.get_pixel(5, y).0, colour, "{name}: legend row {row}");
        }
        let iou = f["iou"]
            .as_f64()
            .expect("every class is registered: an IoU");
        assert!((0.0..=1.0).contains(&iou), "{f}");
        ious.push(iou);
        assert!(f["latency_ms"].as_f64().unwrap() > 0.0, "{f}");
        assert!(f["inference_ms"].as_f64().unwrap() > 0.0, "{f}");
        for (c, area) in f["classes_found"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| (p[0].as_str().unwrap(), p[1].as_f64().unwrap()))
        {
            assert!(summary["classes"]
                .as_array()
                .unwrap()
                .iter()
                .any(|n| n == c));
            assert!(area > 0.0 && area <= 1.0);
        }
        // The per-frame JSON matches the summary entry.
        let single: serde_json::Value =
            serde_json::from_slice(&std::fs::read(out.join(format!("{name}.json"))).unwrap())
                .unwrap();
        assert_eq!(&single, f);
        true_classes.push(f["true_class"].as_str().unwrap().to_string());
    }
    // --frames 3 alternates between the photo series: one frame of each class.
    true_classes.sort();
    assert_eq!(true_classes, ["aeroplane", "bicycle", "dog"]);
    let mean = summary["mean_iou"].as_f64().unwrap();
    assert!((mean - ious.iter().sum::<f64>() / 3.0).abs() < 1e-9);
    assert!(summary["frames_per_second"].as_f64().unwrap() > 0.0);
    println!("demo: mean IoU {mean:.3}, per frame {ious:?}, trained model: {trained}");
}

/// `--no-legend`: the overlay's corner is the frame (or the frame blended with a class colour).
#[test]
fn demo_without_legend_leaves_the_corner_to_the_frame() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("demo");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_mce-device"));
    cmd.args([
        "demo",
        "--classes",
        "1",
        "--frames",
        "1",
        "--no-legend",
        "--out",
    ])
    .arg(&out)
    .env("NO_COLOR", "1");
    if !mce_device::model::default_model_path().exists() {
        cmd.args(["--init", "lite0"]);
    }
    let o = cmd.output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("summary.json")).unwrap()).unwrap();
    let f = &summary["frames"][0];
    let img = image::open(out.join(f["overlay"].as_str().unwrap()))
        .unwrap()
        .to_rgb8();
    let name = f["frame"].as_str().unwrap();
    let src = image::open(
        Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../assets/msrc/{name}.png")),
    )
    .unwrap()
    .to_rgb8();
    let colour = mce_device::overlay::PALETTE[0];
    for (x, y) in [(5, 6), (5, 16), (40, 5)] {
        let (o, s) = (img.get_pixel(x, y).0, src.get_pixel(x, y).0);
        let blended: [u8; 3] =
            std::array::from_fn(|i| ((s[i] as u16 + colour[i] as u16) / 2) as u8);
        assert!(
            o == s || o == blended,
            "({x},{y}): {o:?} is neither {s:?} nor {blended:?}"
        );
    }
}
