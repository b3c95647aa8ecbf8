//! PASCAL-5i, FSS-1000, folders and MSRC-v2 fixtures: classes, fold splits, the pixel threshold
//! and the training-image filter.

use std::path::Path;

use mce_train::data::{ClassPool, FewShotDataset, Folders, Fss1000, MsrcV2, Pascal5i, Protocol};
use mce_train::{ClassId, Result};

use super::fixtures::{self, area, label, rgb, Rect, BIG, H, SMALL, W};

/// Class 1 also at the right half (2304 pixels), beside a class 2 at the left.
const RIGHT: Rect = [48, 0, 96, 48];

/// The PASCAL fixture, ids p1..p8 in list order (entry indices 0..7):
/// p1 c1 big; p2 c1 big + c6 10x10; p3 c1 small + c7 right; p4 c1 big + 255 band;
/// p5 c3 exactly 2048 px; p6 c3 2047 px; p7 c2 big; p8 c2 big + c1 right.
pub fn pascal(root: &Path) {
    let c3_2048: Rect = [0, 0, 64, 32];
    let labels: [Vec<(u8, Rect)>; 8] = [
        vec![(1, BIG)],
        vec![(1, BIG), (6, [50, 0, 60, 10])],
        vec![(1, SMALL), (7, RIGHT)],
        vec![(1, BIG), (255, [0, 60, 96, 64])],
        vec![(3, c3_2048)],
        vec![(3, c3_2048), (0, [63, 31, 64, 32])],
        vec![(2, BIG)],
        vec![(2, BIG), (1, RIGHT)],
    ];
    let mut list = String::new();
    for (i, regions) in labels.iter().enumerate() {
        let id = format!("2008_00000{}", i + 1);
        rgb(&root.join(format!("JPEGImages/{id}.jpg")), W, H);
        label(
            &root.join(format!("SegmentationClassAug/{id}.png")),
            W,
            H,
            0,
            regions,
        );
        list.push_str(&format!(
            "JPEGImages/{id}.jpg SegmentationClassAug/{id}.png\n"
        ));
    }
    list.push_str("JPEGImages/2008_000001.jpg SegmentationClassAug/2008_000001.png\n"); // repeat
    std::fs::write(root.join("train.txt"), list).expect("write list");
}

fn pool_of(pool: &ClassPool) -> Vec<(ClassId, Vec<usize>)> {
    pool.classes
        .iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(&c, v)| (c, v.clone()))
        .collect()
}

#[test]
fn pascal_classes_folds_threshold_filter() -> Result<()> {
    let dir = fixtures::tempdir();
    pascal(dir.path());
    let mut ds = Pascal5i::open(dir.path(), Some(&dir.path().join("train.txt")))?;
    assert_eq!(
        ds.catalog().entries().len(),
        8,
        "the repeated line is dropped"
    );
    assert_eq!(ds.classes().len(), 20);
    assert_eq!(
        (ds.classes()[0].id, ds.classes()[0].name.as_str()),
        (1, "aeroplane")
    );
    assert_eq!(ds.classes()[19].name, "tvmonitor");
    let (train, test) = ds.fold_classes(0, 4)?;
    assert_eq!(test, [1, 2, 3, 4, 5]);
    assert_eq!(train, (6..=20).collect::<Vec<_>>());
    assert_eq!(ds.fold_classes(2, 4)?.1, [11, 12, 13, 14, 15]);
    assert!(ds.fold_classes(4, 4).is_err());

    // Threshold: c1 counts in p1 p2 p4 p8, not in p3 (1600 px); c3 at exactly 2048, not 2047.
    let c1: Vec<_> = ds.samples(1)?.iter().map(|s| s.image.clone()).collect();
    assert_eq!(c1.len(), 4);
    assert!(c1[3].ends_with("JPEGImages/2008_000008.jpg"));
    assert_eq!(ds.catalog().class_images(3, 2048), [4]);
    assert_eq!(ds.catalog().scan().images[5].pixels(3), 2047);
    assert_eq!(ds.catalog().scan().images[2].pixels(1), area(SMALL));
    let test0 = ds.test_pool(0, 4)?;
    assert_eq!(
        pool_of(&test0),
        [(1, vec![0, 1, 3, 7]), (2, vec![6, 7]), (3, vec![4])]
    );

    // Filter: fold 1 tests 6..10, so p2 (c6, 100 px) and p3 (c7) leave training.
    let train1 = ds.train_pool(1, 4)?;
    assert_eq!(
        pool_of(&train1),
        [(1, vec![0, 3, 7]), (2, vec![6, 7]), (3, vec![4])]
    );
    // Fold 0 tests 1..5: p3's 1600 px of c1 are enough to remove it (any pixel filters), so c7
    // has no training image although it counts in p3.
    assert_eq!(ds.catalog().class_images(7, 2048), [2]);
    assert!(ds.train_pool(0, 4)?.images(7).is_empty());
    // Filter 0 keeps every image (the test-class ablation): p3 is back for c7; a filter above
    // p3's 1600 px of c1 keeps it too, one at 1600 removes it.
    for (filter, c7) in [(0, vec![2]), (1601, vec![2]), (1600, vec![])] {
        ds.set_protocol(Protocol {
            filter_min_pixels: filter,
            ..Protocol::default()
        });
        assert_eq!(ds.train_pool(0, 4)?.images(7), c7, "filter {filter}");
    }
    // The threshold is a parameter.
    ds.set_protocol(Protocol {
        min_pixels: 1,
        ..Protocol::default()
    });
    assert_eq!(ds.catalog().class_images(3, 1), [4, 5]);
    assert_eq!(ds.samples(3)?.len(), 2);
    assert_eq!(ds.samples(6)?.len(), 1);

    // Id-per-line lists give the same images; a missing listed file is reported, not fatal.
    let ids = "2008_000001\n2008_000002\n\n2008_000099\n";
    std::fs::write(dir.path().join("ids.txt"), ids).expect("write");
    let ds = Pascal5i::open(dir.path(), Some(&dir.path().join("ids.txt")))?;
    assert_eq!(ds.catalog().entries().len(), 2);
    let problems = ds.catalog().listing_problems();
    assert_eq!(problems.len(), 1);
    assert!(
        problems[0].path.ends_with("2008_000099.jpg"),
        "{problems:?}"
    );
    // No list: every label PNG.
    assert_eq!(
        Pascal5i::open(dir.path(), None)?.catalog().entries().len(),
        8
    );
    assert!(Pascal5i::open(dir.path().join("nope"), None).is_err());
    Ok(())
}

/// FSS-1000: classes apple, bee, cat with 3 images each; one image has no mask.
fn fss(root: &Path) {
    for class in ["apple", "bee", "cat"] {
        for n in 1..=3 {
            rgb(&root.join(format!("{class}/{n}.jpg")), W, H);
            fixtures::binary(&root.join(format!("{class}/{n}.png")), W, H, BIG);
        }
    }
    rgb(&root.join("cat/4.jpg"), W, H);
}

#[test]
fn fss_classes_and_class_list() -> Result<()> {
    let dir = fixtures::tempdir();
    fss(dir.path());
    let ds = Fss1000::open(dir.path(), None)?;
    let names: Vec<_> = ds
        .classes()
        .iter()
        .map(|c| (c.id, c.name.as_str()))
        .collect();
    assert_eq!(names, [(0, "apple"), (1, "bee"), (2, "cat")]);
    assert_eq!(ds.catalog().entries().len(), 9);
    assert!(ds.catalog().listing_problems()[0]
        .path
        .ends_with("cat/4.jpg"));
    assert_eq!(ds.default_folds(), 4);
    assert_eq!(ds.fold_classes(1, 4)?, (vec![0, 2], vec![1]));
    assert!(
        ds.fold_classes(3, 4).is_err(),
        "3 classes, fold 3 tests nothing"
    );
    assert_eq!(ds.samples(2)?.len(), 3);

    std::fs::write(dir.path().join("test.txt"), "cat\nbee\n").expect("write");
    let ds = Fss1000::open(dir.path(), Some(&dir.path().join("test.txt")))?;
    assert_eq!(ds.default_folds(), 1);
    assert_eq!(ds.fold_classes(0, 1)?, (vec![0], vec![1, 2]));
    assert!(ds.fold_classes(0, 4).is_err());
    assert_eq!(ds.train_pool(0, 1)?.images(0), [0, 1, 2]);
    std::fs::write(dir.path().join("bad.txt"), "dog\n").expect("write");
    let err = Fss1000::open(dir.path(), Some(&dir.path().join("bad.txt"))).unwrap_err();
    assert!(
        err.to_string().contains("bad.txt") && err.to_string().contains("dog"),
        "{err}"
    );
    Ok(())
}

#[test]
fn folders_match_masks_by_stem() -> Result<()> {
    let dir = fixtures::tempdir();
    let root = dir.path();
    for (class, n) in [("dog", 3), ("car", 2)] {
        for i in 0..n {
            rgb(&root.join(format!("{class}/images/{class}{i}.jpg")), W, H);
            fixtures::binary(
                &root.join(format!("{class}/masks/{class}{i}.png")),
                W,
                H,
                BIG,
            );
        }
    }
    // 0/1 mask with an ignore band, and an orphan mask.
    label(
        &root.join("car/masks/car1.png"),
        W,
        H,
        0,
        &[(1, BIG), (255, [0, 60, 96, 64])],
    );
    fixtures::binary(&root.join("car/masks/orphan.png"), W, H, BIG);
    let ds = Folders::open(root)?;
    let names: Vec<_> = ds.classes().iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["car", "dog"]);
    assert_eq!(ds.default_folds(), 2);
    assert_eq!(ds.fold_classes(0, 2)?, (vec![1], vec![0]));
    assert_eq!(ds.samples(1)?.len(), 3);
    let problems = ds.catalog().listing_problems();
    assert!(problems.len() == 1 && problems[0].path.ends_with("orphan.png"));
    let car1 = ds.samples(0)?[1].load_mask()?;
    assert_eq!(car1.foreground_count() as u64, area(BIG));
    assert_eq!(car1.data.iter().filter(|&&v| v == 255).count(), 96 * 4);
    Ok(())
}

/// MSRC-v2 layout with 4 images: class 0 (building) is a real class, 255 = void.
pub fn msrc(root: &Path) {
    let labels: [Vec<(u8, Rect)>; 4] = [
        vec![(0, BIG), (1, RIGHT)],
        vec![(8, BIG), (6, RIGHT)],
        vec![(4, BIG)],
        vec![(0, BIG), (3, [48, 0, 58, 10])],
    ];
    for (i, regions) in labels.iter().enumerate() {
        let stem = format!("1_{}_s", i + 1);
        rgb(&root.join(format!("MSRC_v2/Images/{stem}.png")), W, H);
        label(
            &root.join(format!("MSRC_v2/labels_png/{stem}_GT.png")),
            W,
            H,
            255,
            regions,
        );
    }
}

#[test]
fn msrc_classes_folds_and_void() -> Result<()> {
    let dir = fixtures::tempdir();
    msrc(dir.path());
    let ds = MsrcV2::open(dir.path())?;
    assert_eq!(ds.classes().len(), 23);
    assert_eq!(ds.classes()[4].name, "horse");
    assert_eq!(ds.classes()[22].name, "boat");
    let (train, test) = ds.fold_classes(0, 4)?;
    assert_eq!(test, [0, 8, 12, 16, 20]);
    assert!(!train.contains(&4) && !test.contains(&4) && train.len() == 17);
    assert_eq!(ds.fold_classes(1, 4)?.1, [1, 5, 9, 13, 17, 21]);
    // Class 0 is a class here (not background); 255 is void.
    assert_eq!(ds.catalog().class_images(0, 2048), [0, 3]);
    assert_eq!(
        ds.catalog().scan().images[0].class_pixels,
        [(0, 2304), (1, 2304)]
    );
    // Fold 1 tests 1: image 0 leaves training; fold 0 tests 0 and 8: only image 2 (horse) stays.
    assert_eq!(ds.train_pool(1, 4)?.images(0), [3]);
    let train0 = ds.train_pool(0, 4)?;
    assert_eq!(train0.distinct_images(), 0);
    let m = ds.samples(0)?[0].load_mask()?;
    let count = |v: u8| m.data.iter().filter(|&&x| x == v).count() as u64;
    assert_eq!((count(1), count(0), count(255)), (2304, 2304, 6144 - 4608));
    // Also opens from the MSRC_v2 folder itself.
    assert_eq!(
        MsrcV2::open(dir.path().join("MSRC_v2"))?
            .catalog()
            .entries()
            .len(),
        4
    );
    Ok(())
}
