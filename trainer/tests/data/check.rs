//! `check_data` on a folders fixture with a corrupt image, a size mismatch and a small class.

use mce_train::data::{check_data, CheckOptions, DataReport, Folders};
use mce_train::Result;

use super::fixtures::{self, binary, corrupt, rgb, BIG, H, W};

#[test]
fn check_data_collects_every_problem() -> Result<()> {
    let dir = fixtures::tempdir();
    let root = dir.path();
    // a: 3 good images; b: 1 image (too few for 1 shot); c: 2 good, 1 corrupt, 1 mismatched.
    for (class, n) in [("a", 3), ("b", 1), ("c", 2)] {
        for i in 0..n {
            rgb(&root.join(format!("{class}/images/{i}.jpg")), W, H);
            binary(&root.join(format!("{class}/masks/{i}.png")), W, H, BIG);
        }
    }
    corrupt(&root.join("c/images/broken.jpg"));
    binary(&root.join("c/masks/broken.png"), W, H, BIG);
    rgb(&root.join("c/images/wide.jpg"), W, H);
    binary(&root.join("c/masks/wide.png"), 64, 48, BIG);

    let ds = Folders::open(root)?;
    let report = check_data(&ds, &CheckOptions::default())?;
    assert_eq!(report.n_folds, 3);
    assert_eq!(report.images, 8);
    let counts: Vec<_> = report
        .classes
        .iter()
        .map(|c| (c.name.as_str(), c.images))
        .collect();
    assert_eq!(counts, [("a", 3), ("b", 1), ("c", 4)]);
    assert_eq!(report.folds.len(), 3);
    assert_eq!(report.folds[1].test_classes, [1]);

    assert_eq!(report.unreadable.len(), 1, "{:?}", report.unreadable);
    assert!(report.unreadable[0].path.ends_with("broken.jpg"));
    assert!(report.unreadable[0].error.contains("broken.jpg"));
    assert_eq!(report.size_mismatches.len(), 1);
    let m = &report.size_mismatches[0];
    assert!(m.image.ends_with("wide.jpg") && m.label.ends_with("wide.png"));
    assert_eq!((m.image_size, m.label_size), ((96, 64), (64, 48)));
    // b is short in every fold: as fold 1's test class and in the training pools of folds 0, 2.
    let small: Vec<_> = report
        .too_few_images
        .iter()
        .map(|s| (s.name.as_str(), s.fold, s.role.as_str(), s.images))
        .collect();
    assert_eq!(
        small,
        [
            ("b", 0, "train", 1),
            ("b", 1, "test", 1),
            ("b", 2, "train", 1)
        ]
    );
    assert!(!report.is_ok());
    assert_eq!(report.problem_count(), 5);

    let table = report.to_string();
    for needle in [
        "broken.jpg",
        "wide.jpg",
        "64x48",
        "too few images",
        "fold 1 test class 1 (b)",
    ] {
        assert!(table.contains(needle), "table lacks {needle:?}:\n{table}");
    }
    let json = serde_json::to_string(&report).expect("serialise");
    let back: DataReport = serde_json::from_str(&json).expect("deserialise");
    assert_eq!(back, report);

    // One fold and more shots: a has 3 images, so a 3-shot check flags a too.
    let opts = CheckOptions {
        fold: Some(0),
        shots: 3,
        decode_images: false,
        ..CheckOptions::default()
    };
    let report = check_data(&ds, &opts)?;
    assert_eq!(report.folds.len(), 1);
    assert!(report
        .too_few_images
        .iter()
        .any(|s| s.name == "a" && s.role == "test"));
    assert!(
        !report.unreadable.is_empty(),
        "a corrupt header is seen without decoding"
    );
    Ok(())
}

#[test]
fn check_data_command_line() {
    let dir = fixtures::tempdir();
    let root = dir.path().join("data");
    for (class, n) in [("a", 2), ("b", 2)] {
        for i in 0..n {
            rgb(&root.join(format!("{class}/images/{i}.jpg")), W, H);
            binary(&root.join(format!("{class}/masks/{i}.png")), W, H, BIG);
        }
    }
    let json = dir.path().join("report.json");
    let run = |extra: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_mce-train"))
            .args(["check-data", "--dataset", "folders", "--root"])
            .arg(&root)
            .args(extra)
            .output()
            .expect("run mce-train")
    };
    let out = run(&["--json", json.to_str().expect("utf-8 path")]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(stdout.contains("no problem found"), "{stdout}");
    let report: DataReport =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("json written")).expect("json");
    assert_eq!((report.images, report.n_folds), (4, 2));

    let out = run(&["--shots", "2", "--fold", "1"]);
    assert_eq!(out.status.code(), Some(1), "problems -> exit 1");
    assert!(String::from_utf8_lossy(&out.stdout).contains("classes with too few images"));
    let out = run(&["--fold", "7"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("fold 7"));
}
