//! The real MSRC-v2 in `shared/data/msrc-v2` beside the repository, when present.

use std::path::PathBuf;
use std::time::Instant;

use mce_train::data::{FewShotDataset, MsrcV2, Protocol};
use mce_train::Result;

/// Images containing each class (ids 0..22), from SOURCE.md.
const SOURCE_COUNTS: [usize; 23] = [
    150, 242, 144, 45, 3, 35, 160, 26, 30, 79, 60, 46, 32, 35, 34, 38, 35, 32, 161, 24, 30, 67, 33,
];

#[test]
fn real_msrc_class_counts() -> Result<()> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/msrc-v2");
    if !root.is_dir() {
        println!("skipped: {} not found", root.display());
        return Ok(());
    }
    let mut ds = MsrcV2::open(&root)?;
    assert_eq!(ds.catalog().entries().len(), 591);
    assert!(ds.catalog().listing_problems().is_empty());
    let started = Instant::now();
    let scan = ds.catalog().scan();
    let seconds = started.elapsed().as_secs_f64();
    println!("scanned 591 MSRC-v2 labels in {seconds:.2} s");
    assert!(seconds < 30.0, "scan took {seconds:.1} s");
    assert!(scan
        .images
        .iter()
        .all(|s| s.error.is_none() && s.unknown_values.is_empty()));

    let at = |ds: &MsrcV2, min: u64| -> Vec<usize> {
        (0..23)
            .map(|c| ds.catalog().class_images(c, min).len())
            .collect()
    };
    assert_eq!(at(&ds, 1), SOURCE_COUNTS);
    let counts = at(&ds, 2048);
    for fold in 0..4 {
        let (_, test) = ds.fold_classes(fold, 4)?;
        let row: Vec<String> = test
            .iter()
            .map(|&c| format!("{} {}", ds.classes()[c].name, counts[c]))
            .collect();
        let train = ds.train_pool(fold, 4)?.distinct_images();
        println!(
            "fold {fold} (>= 2048 px): {}; training images after filter: {train}",
            row.join(", ")
        );
    }
    ds.set_protocol(Protocol {
        min_pixels: 1,
        ..Protocol::default()
    });
    assert_eq!(ds.samples(4)?.len(), 3, "horse");
    Ok(())
}
