//! COCO-20i fixture: a json with 80 categories (ids with gaps), one polygon, one compressed RLE,
//! one uncompressed (crowd) RLE.

use std::path::Path;

use mce_train::data::coco::{CocoImage, Segmentation};
use mce_train::data::{Coco20i, FewShotDataset, LabelSource, MaskSource, Protocol};
use mce_train::Result;
use serde_json::json;

use super::fixtures::{self, rgb, H, W};

/// Box rows 0..10, columns 60..70 of a 64 × 96 image, compressed by pycocotools' `encode`.
const BOX_RLE: &str = "Ph3:f100000000000000000Pd1";

/// Uncompressed counts of rows 0..48, columns 0..50 (2400 pixels).
fn box_counts() -> Vec<u32> {
    let mut c = vec![0];
    for _ in 0..49 {
        c.extend([48, 16]);
    }
    c.extend([48, 2960]);
    c
}

/// Images 10 (a.jpg): class 1 polygon 48x48 + class 5 RLE 10x10; 11 (b.jpg): class 2 crowd RLE
/// 50x48; 12 (c.jpg): class 1 polygon + class 2 polygon 46x64; 13: no annotation.
pub fn coco(root: &Path) {
    for f in ["a", "b", "c", "d"] {
        rgb(&root.join(format!("val2014/{f}.jpg")), W, H);
    }
    // Category ids 1..=90 with gaps: id = i + i / 8 + 1.
    let cats: Vec<_> = (0..80)
        .map(
            |i| json!({"id": i + i / 8 + 1, "name": format!("cat{}", i + 1), "supercategory": "x"}),
        )
        .collect();
    let square = json!([[0, 0, 48, 0, 48, 48, 0, 48]]);
    let right = json!([[50, 0, 96, 0, 96, 64, 50, 64]]);
    let anns = json!([
        {"id": 1, "image_id": 10, "category_id": 1, "segmentation": square, "iscrowd": 0},
        {"id": 2, "image_id": 10, "category_id": 5,
         "segmentation": {"counts": BOX_RLE, "size": [64, 96]}, "iscrowd": 0},
        {"id": 3, "image_id": 11, "category_id": 2,
         "segmentation": {"counts": box_counts(), "size": [64, 96]}, "iscrowd": 1},
        {"id": 4, "image_id": 12, "category_id": 1, "segmentation": square, "iscrowd": 0},
        {"id": 5, "image_id": 12, "category_id": 2, "segmentation": right, "iscrowd": 0},
    ]);
    let images: Vec<_> = [(10, "a"), (11, "b"), (12, "c"), (13, "d")]
        .iter()
        .map(
            |(id, f)| json!({"id": id, "file_name": format!("{f}.jpg"), "height": 64, "width": 96}),
        )
        .collect();
    let doc = json!({"info": {}, "images": images, "annotations": anns, "categories": cats});
    let path = root.join("annotations/instances_val2014.json");
    std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    std::fs::write(path, doc.to_string()).expect("write json");
}

/// The COCO image of entry `index`, checking that the entry's label is that image, decoded.
fn coco_image(ds: &Coco20i, index: usize) -> &CocoImage {
    let img = &ds.images()[index];
    let label = &ds.catalog().entries()[index].label;
    assert!(
        matches!(label, LabelSource::Decoded(_)),
        "not a decoded label: {label:?}"
    );
    let want = format!("COCO image id {} ({})", img.id, img.file_name);
    assert_eq!(label.describe(), want);
    img
}

#[test]
fn coco_classes_folds_masks() -> Result<()> {
    let dir = fixtures::tempdir();
    coco(dir.path());
    let mut ds = Coco20i::open_root(dir.path(), "val")?;
    assert_eq!(ds.classes().len(), 80);
    assert_eq!(
        (ds.classes()[0].id, ds.classes()[79].name.as_str()),
        (1, "cat80")
    );
    let (train, test) = ds.fold_classes(0, 4)?;
    assert_eq!(test, (0..20).map(|k| 4 * k + 1).collect::<Vec<_>>());
    assert_eq!(&test[..4], [1, 5, 9, 13]);
    assert_eq!(train.len(), 60);
    assert_eq!(ds.fold_classes(3, 4)?.1[0], 4);
    assert_eq!(
        ds.catalog().entries().len(),
        3,
        "image 13 has no annotation"
    );

    // Category id 5 is class 5 (ids 1..8 have no gap); its RLE box is 100 px.
    let img = coco_image(&ds, 0);
    assert_eq!((img.id, img.classes()), (10, vec![1, 5]));
    let mask = img.class_mask(5).expect("decodes");
    for y in 0..64 {
        for x in 0..96 {
            let inside = y < 10 && (60..70).contains(&x);
            assert_eq!(mask[y * 96 + x], u8::from(inside), "({x}, {y})");
        }
    }
    // The polygon [0,0 .. 48,48] covers pixels 0..48 x 0..48 as in pycocotools.
    let scan = ds.catalog().scan();
    assert_eq!(scan.images[0].class_pixels, [(1, 2304), (5, 100)]);
    assert_eq!(scan.images[1].class_pixels, [(2, 2400)]);
    assert_eq!(scan.images[2].class_pixels, [(1, 2304), (2, 46 * 64)]);
    match &coco_image(&ds, 1).annotations[0].segmentation {
        Segmentation::Rle { size, .. } => assert_eq!(*size, [64, 96]),
        other => panic!("expected RLE, got {other:?}"),
    }

    // Threshold and filter: fold 1 tests 2, 6, ...: image 12 leaves class 1's training pool.
    assert_eq!(ds.samples(1)?.len(), 2);
    assert!(ds.samples(5)?.is_empty());
    assert_eq!(ds.train_pool(1, 4)?.images(1), [0]);
    assert_eq!(ds.test_pool(1, 4)?.images(2), [1, 2]);
    ds.set_protocol(Protocol {
        min_pixels: 100,
        ..Protocol::default()
    });
    let s = ds.samples(5)?;
    assert_eq!(s.len(), 1);
    assert!(matches!(s[0].mask, MaskSource::Decoded { class: 5, .. }));
    let m = s[0].load_mask()?;
    assert_eq!((m.width, m.height, m.foreground_count()), (96, 64, 100));
    assert!(s[0].image.ends_with("val2014/a.jpg"));
    Ok(())
}

#[test]
fn coco_problems_name_the_file() -> Result<()> {
    let dir = fixtures::tempdir();
    let root = dir.path();
    rgb(&root.join("imgs/a.jpg"), W, H);
    let doc = json!({
        "images": [{"id": 1, "file_name": "a.jpg", "height": 64, "width": 96},
                   {"id": 2, "file_name": "gone.jpg", "height": 64, "width": 96}],
        "annotations": [
            {"id": 7, "image_id": 1, "category_id": 3,
             "segmentation": {"counts": "!!bad", "size": [64, 96]}},
            {"id": 8, "image_id": 1, "category_id": 99, "segmentation": [[0, 0, 1, 1, 2, 0]]},
            {"id": 9, "image_id": 2, "category_id": 3, "segmentation": [[0, 0, 1, 1, 2, 0]]}],
        "categories": [{"id": 3, "name": "three"}]
    });
    let json_path = root.join("inst.json");
    std::fs::write(&json_path, doc.to_string()).expect("write");
    let ds = Coco20i::open(&json_path, root.join("imgs"))?;
    let problems: Vec<String> = ds
        .catalog()
        .listing_problems()
        .iter()
        .map(|p| format!("{}: {}", p.path.display(), p.error))
        .collect();
    assert_eq!(problems.len(), 2, "{problems:?}");
    assert!(problems
        .iter()
        .any(|p| p.contains("unknown category id 99")));
    assert!(problems.iter().any(|p| p.contains("gone.jpg")));
    let error = ds.catalog().scan().images[0]
        .error
        .clone()
        .expect("bad RLE");
    assert!(
        error.contains("inst.json") && error.contains("annotation 7"),
        "{error}"
    );

    std::fs::write(&json_path, "{\"images\": 3}").expect("write");
    let err = Coco20i::open(&json_path, root).unwrap_err().to_string();
    assert!(
        err.contains("inst.json") && err.contains("not a COCO instances file"),
        "{err}"
    );
    assert!(Coco20i::open_root(root, "train").is_err());
    Ok(())
}
