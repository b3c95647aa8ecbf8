//! The registry's library API with the real backbone: register, reopen, list, features equal to
//! freshly computed ones, append, remove, the feature cache following the backbone identity, and
//! `Segmenter::backbone_identity` itself.

use candle_core::{Device, Tensor};
use mce_core::inference::{lite0_weights_path, Exemplar, Segmenter};
use mce_core::preprocess::{load_mask, load_rgb, MaskEncoding};
use mce_core::MceConfig;
use mce_device::registry::{ClassSummary, ExemplarInput, RegisterOptions, Registry, RegistryError};
use std::path::{Path, PathBuf};

fn asset(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../assets/msrc")
        .join(name)
}

fn input(stem: &str) -> ExemplarInput {
    ExemplarInput {
        image: asset(&format!("{stem}.png")),
        mask: asset(&format!("{stem}_GT.png")),
    }
}

fn lite0(image_size: usize) -> Segmenter {
    let config = MceConfig {
        image_size,
        ..MceConfig::edge_lite0()
    };
    Segmenter::untrained(&config, &lite0_weights_path(), &Device::Cpu).unwrap()
}

fn bicycle_opts() -> RegisterOptions {
    RegisterOptions {
        mask_class: Some(12),
        ..RegisterOptions::default()
    }
}

/// Features computed straight from the original files, as `segment` does.
fn fresh(seg: &Segmenter, stem: &str, class: u8) -> Exemplar {
    let i = input(stem);
    let image = load_rgb(&i.image).unwrap();
    let mask = load_mask(&i.mask, MaskEncoding::ClassIndex(class)).unwrap();
    seg.exemplar(&image, &mask, &i.mask).unwrap()
}

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

fn assert_same(a: &Exemplar, b: &Exemplar) {
    let (fa, fb) = (&a.features, &b.features);
    for (x, y) in [
        (&fa.level2, &fb.level2),
        (&fa.level3, &fb.level3),
        (&fa.level4, &fb.level4),
        (&a.mask, &b.mask),
    ] {
        assert!(
            max_diff(x, y) <= 1e-6,
            "features differ by {}",
            max_diff(x, y)
        );
    }
}

fn summary(name: &str, exemplars: usize) -> ClassSummary {
    ClassSummary {
        name: name.into(),
        exemplars,
    }
}

fn sources(r: &Registry, class: &str) -> Vec<String> {
    let c = r.class(class).unwrap();
    c.exemplars.iter().map(|e| e.source_image.clone()).collect()
}

#[test]
fn register_reopen_read_remove() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("registry");
    let seg = lite0(320);
    let mut r = Registry::open(&dir).unwrap();
    assert!(r.classes().is_empty() && r.quarantined().is_empty());

    let s = r
        .register(
            "bicycle",
            &[input("8_10_s"), input("8_11_s")],
            &seg,
            &bicycle_opts(),
        )
        .unwrap();
    assert_eq!(s, summary("bicycle", 2));

    // Reopen: same classes, nothing quarantined, features from the cache equal fresh ones.
    let mut r = Registry::open(&dir).unwrap();
    assert!(r.quarantined().is_empty(), "{:?}", r.quarantined());
    assert_eq!(r.classes(), vec![summary("bicycle", 2)]);
    assert_eq!(sources(&r, "bicycle"), ["8_10_s.png", "8_11_s.png"]);
    let (ex, stats) = r.exemplars_with_stats("bicycle", &seg).unwrap();
    assert_eq!((stats.cached, stats.recomputed), (2, 0));
    assert_same(&ex[0], &fresh(&seg, "8_10_s", 12));
    assert_same(&ex[1], &fresh(&seg, "8_11_s", 12));

    // A second class, then appending to the first.
    let dog = RegisterOptions {
        mask_class: Some(20),
        ..RegisterOptions::default()
    };
    r.register("dog", &[input("16_10_s")], &seg, &dog).unwrap();
    let s = r
        .register("bicycle", &[input("8_13_s")], &seg, &bicycle_opts())
        .unwrap();
    assert_eq!(s, summary("bicycle", 3));
    assert_eq!(
        Registry::open(&dir).unwrap().classes(),
        vec![summary("bicycle", 3), summary("dog", 1)]
    );

    // Remove the middle exemplar: its files go, the others stay in order.
    let removed_id = r.class("bicycle").unwrap().exemplars[1].id;
    let (img, mask) = r.exemplar_files("bicycle", removed_id);
    assert!(img.exists() && mask.exists());
    assert_eq!(r.cached_identities("bicycle", removed_id).len(), 1);
    r.remove_exemplar("bicycle", 1).unwrap();
    assert!(!img.exists() && !mask.exists());
    assert!(r.cached_identities("bicycle", removed_id).is_empty());
    let r2 = Registry::open(&dir).unwrap();
    assert_eq!(sources(&r2, "bicycle"), ["8_10_s.png", "8_13_s.png"]);
    let ex = r2.exemplars("bicycle", &seg).unwrap();
    assert_same(&ex[1], &fresh(&seg, "8_13_s", 12));

    match r.remove_exemplar("bicycle", 2) {
        Err(RegistryError::ExemplarOutOfRange {
            index: 2, count: 2, ..
        }) => {}
        other => panic!("expected out of range, got {other:?}"),
    }
    r.remove_class("bicycle").unwrap();
    assert_eq!(r.classes(), vec![summary("dog", 1)]);
    assert!(!dir.join("exemplars/bicycle").exists());
    assert!(matches!(
        r.remove_class("bicycle"),
        Err(RegistryError::UnknownClass { .. })
    ));
    assert!(matches!(
        r.exemplars("bicycle", &seg),
        Err(RegistryError::UnknownClass { .. })
    ));
    // Removing the last exemplar removes the class.
    r.remove_exemplar("dog", 0).unwrap();
    assert!(Registry::open(&dir).unwrap().classes().is_empty());
    assert!(!dir.join("exemplars/dog").exists());
}

#[test]
fn feature_cache_follows_the_backbone_identity() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let seg = lite0(320);
    let mut r = Registry::open(dir).unwrap();
    r.register("bicycle", &[input("8_10_s")], &seg, &bicycle_opts())
        .unwrap();
    let id = r.class("bicycle").unwrap().exemplars[0].id;

    // Another input size: another identity, so recomputed once, then cached.
    let small = lite0(256);
    assert_ne!(small.backbone_identity(), seg.backbone_identity());
    let (ex, stats) = r.exemplars_with_stats("bicycle", &small).unwrap();
    assert_eq!((stats.cached, stats.recomputed), (0, 1));
    assert_same(&ex[0], &fresh(&small, "8_10_s", 12));
    let (_, stats) = r.exemplars_with_stats("bicycle", &small).unwrap();
    assert_eq!((stats.cached, stats.recomputed), (1, 0));
    let mut ids = vec![
        seg.backbone_identity().to_string(),
        small.backbone_identity().to_string(),
    ];
    ids.sort();
    assert_eq!(r.cached_identities("bicycle", id), ids);

    // A corrupt cache file (bit flips in the tensor data) is detected and recomputed.
    let cache = dir
        .join("features")
        .join(seg.backbone_identity())
        .join("bicycle")
        .join(format!("{id:06}.safetensors"));
    let mut bytes = std::fs::read(&cache).unwrap();
    let n = bytes.len();
    for b in &mut bytes[n - 4000..n - 3990] {
        *b ^= 0x55;
    }
    std::fs::write(&cache, &bytes).unwrap();
    let (ex, stats) = r.exemplars_with_stats("bicycle", &seg).unwrap();
    assert_eq!((stats.cached, stats.recomputed), (0, 1));
    assert_same(&ex[0], &fresh(&seg, "8_10_s", 12));
    // A stale one (another identity's file under this identity) too; truncated too.
    let other = dir
        .join("features")
        .join(small.backbone_identity())
        .join("bicycle")
        .join(format!("{id:06}.safetensors"));
    std::fs::copy(&other, &cache).unwrap();
    let (_, stats) = r.exemplars_with_stats("bicycle", &seg).unwrap();
    assert_eq!((stats.cached, stats.recomputed), (0, 1));
    std::fs::write(&cache, &std::fs::read(&cache).unwrap()[..100]).unwrap();
    let (_, stats) = r.exemplars_with_stats("bicycle", &seg).unwrap();
    assert_eq!((stats.cached, stats.recomputed), (0, 1));
    // Re-cached: the steady state reads the cache.
    let (ex, stats) = r.exemplars_with_stats("bicycle", &seg).unwrap();
    assert_eq!((stats.cached, stats.recomputed), (1, 0));
    assert_same(&ex[0], &fresh(&seg, "8_10_s", 12));
    // Reopening neither quarantines nor drops the re-cached files.
    let r = Registry::open(dir).unwrap();
    assert!(r.quarantined().is_empty());
    assert_eq!(r.cached_identities("bicycle", id).len(), 2);
}

#[test]
fn backbone_identity_tracks_the_model() {
    let a = lite0(320);
    let b = lite0(320);
    let id = a.backbone_identity().to_string();
    assert_eq!(id.len(), 16);
    assert!(id.bytes().all(|c| c.is_ascii_hexdigit()));
    assert_eq!(id, a.backbone_identity(), "cached");
    assert_eq!(id, b.backbone_identity(), "the same model twice");
    assert_ne!(id, lite0(288).backbone_identity(), "another input size");

    // Other backbone weights: one early convolution scaled by 1 %.
    let tmp = tempfile::tempdir().unwrap();
    let mut tensors = candle_core::safetensors::load(lite0_weights_path(), &Device::Cpu).unwrap();
    let mut names: Vec<String> = tensors
        .iter()
        .filter(|(_, t)| t.rank() == 4)
        .map(|(k, _)| k.clone())
        .collect();
    names.sort();
    let name = &names[0];
    let scaled = (tensors[name].clone() * 1.01).unwrap();
    tensors.insert(name.clone(), scaled);
    let path = tmp.path().join("lite0-modified.safetensors");
    candle_core::safetensors::save(&tensors, &path).unwrap();
    let c = Segmenter::untrained(&MceConfig::edge_lite0(), &path, &Device::Cpu).unwrap();
    assert_ne!(id, c.backbone_identity(), "weights changed in {name}");
}

#[test]
fn binary_and_resized_masks() {
    let tmp = tempfile::tempdir().unwrap();
    let seg = lite0(320);
    let mut r = Registry::open(&tmp.path().join("registry")).unwrap();
    // The class-index label as a binary 0/255 mask: same exemplar, same features.
    let label = image::open(asset("8_10_s_GT.png")).unwrap().to_luma8();
    let binary = image::GrayImage::from_fn(label.width(), label.height(), |x, y| {
        image::Luma([if label.get_pixel(x, y)[0] == 12 {
            255
        } else {
            0
        }])
    });
    let binary_path = tmp.path().join("binary.png");
    binary.save(&binary_path).unwrap();
    let bin = ExemplarInput {
        image: asset("8_10_s.png"),
        mask: binary_path,
    };
    r.register("bike", &[bin], &seg, &RegisterOptions::default())
        .unwrap();
    assert_same(
        &r.exemplars("bike", &seg).unwrap()[0],
        &fresh(&seg, "8_10_s", 12),
    );

    // A half-size mask: refused, unless --resize-mask (nearest neighbour back to the image size).
    let (w, h) = (label.width() / 2, label.height() / 2);
    let half = image::imageops::resize(&label, w, h, image::imageops::FilterType::Nearest);
    let half_path = tmp.path().join("half.png");
    half.save(&half_path).unwrap();
    let input = ExemplarInput {
        image: asset("8_10_s.png"),
        mask: half_path.clone(),
    };
    let err = r
        .register("half", std::slice::from_ref(&input), &seg, &bicycle_opts())
        .unwrap_err();
    assert!(
        matches!(err, RegistryError::Input { ref path, .. } if path == &half_path),
        "{err}"
    );
    assert!(r.classes().iter().all(|c| c.name != "half"));
    let opts = RegisterOptions {
        resize_mask: true,
        ..bicycle_opts()
    };
    r.register("half", &[input], &seg, &opts).unwrap();
    let e = &r.class("half").unwrap().exemplars[0];
    assert_eq!(e.mask_resized_from, Some((w, h)));
    let stored = image::open(r.exemplar_files("half", e.id).1).unwrap();
    assert_eq!(
        (stored.width(), stored.height()),
        (label.width(), label.height())
    );
    assert_eq!(r.exemplars("half", &seg).unwrap().len(), 1);
}

#[test]
fn concurrent_writers_lose_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let handles: Vec<_> = [("bicycle", "8_10_s", 12u8), ("dog", "16_10_s", 20)]
        .into_iter()
        .map(|(class, stem, id)| {
            // Both handles are opened before either writes: each must re-read the index under
            // the lock, or the second commit would drop the first class.
            let mut r = Registry::open(&dir).unwrap();
            std::thread::spawn(move || {
                let seg = lite0(128);
                let opts = RegisterOptions {
                    mask_class: Some(id),
                    ..RegisterOptions::default()
                };
                r.register(class, &[input(stem)], &seg, &opts).unwrap();
            })
        })
        .collect();
    handles.into_iter().for_each(|h| h.join().unwrap());
    let r = Registry::open(&dir).unwrap();
    assert_eq!(r.classes(), vec![summary("bicycle", 1), summary("dog", 1)]);
    assert_eq!(r.index().next_id, 3);
}
