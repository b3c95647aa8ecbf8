//! Evaluation and baselines on a generated folder-per-class fixture: four classes, each a square
//! of a unique colour on a shared grey texture, masks 0/1 with an ignore band of 255, one image of
//! odd size (37 × 23) per class. Features come from the real bundled Lite0 weights.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use candle_nn::{VarBuilder, VarMap};
use image::{GrayImage, Luma, Rgb, RgbImage};
use mce_core::inference::{lite0_weights_path, load_backbone};
use mce_core::{Mce, MceConfig};
use mce_train::baselines::calibrate::prototype_sweep;
use mce_train::baselines::{
    run_baselines, AllForeground, BaselineOptions, CalibrationOptions, FeatureChoice,
    NearestNeighbour, PrototypeCosine,
};
use mce_train::data::{Folders, Protocol};
use mce_train::eval::{
    build_store, evaluate, evaluate_checkpoint, evaluate_model, predict_original, score_episodes,
    seed_episodes, t_quantile, CanvasView, EvalOptions, Grouping, Interval, MceEval,
};
use mce_train::features::FeatureStore;
use mce_train::{Episode, FewShotDataset, SampleRef};

const COLOURS: [[u8; 3]; 4] = [[220, 30, 30], [30, 200, 30], [30, 30, 220], [220, 220, 30]];
const SIZES: [(u32, u32); 5] = [(96, 64), (64, 96), (80, 80), (37, 23), (72, 56)];

/// The generated dataset and each image's mask values (as written), by image path.
struct Fixture {
    _dir: tempfile::TempDir,
    ds: Folders,
    truth: HashMap<PathBuf, Vec<u8>>,
}

fn hash(x: u32) -> u32 {
    let mut z = x.wrapping_mul(0x9E37_79B9) ^ 0x85EB_CA6B;
    z ^= z >> 15;
    z = z.wrapping_mul(0x2C1B_3C6D);
    z ^ (z >> 12)
}

fn write_sample(dir: &Path, name: &str, (w, h): (u32, u32), colour: [u8; 3], k: u32) -> Vec<u8> {
    let side = w.min(h) / 2;
    let x0 = hash(k * 2 + 1) % (w - side);
    let y0 = hash(k * 2 + 2) % (h - side);
    let inside = |x: u32, y: u32| (x0..x0 + side).contains(&x) && (y0..y0 + side).contains(&y);
    let image = RgbImage::from_fn(w, h, |x, y| {
        if inside(x, y) {
            Rgb(colour.map(|c| c.saturating_add((hash(x * 131 + y * 7 + k) % 12) as u8)))
        } else {
            Rgb([(100 + hash(x * 31 + y * 17 + k) % 40) as u8; 3])
        }
    });
    let mask = GrayImage::from_fn(w, h, |x, y| {
        Luma([match () {
            _ if y + 2 >= h => 255, // ignore band
            _ if inside(x, y) => 1,
            _ => 0,
        }])
    });
    std::fs::create_dir_all(dir.join("images")).unwrap();
    std::fs::create_dir_all(dir.join("masks")).unwrap();
    image
        .save(dir.join("images").join(format!("{name}.png")))
        .unwrap();
    mask.save(dir.join("masks").join(format!("{name}.png")))
        .unwrap();
    mask.into_raw()
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let mut truth = HashMap::new();
    for (c, colour) in COLOURS.iter().enumerate() {
        let class_dir = dir.path().join(format!("class{c}"));
        for (i, &size) in SIZES.iter().enumerate() {
            let name = format!("img{i}");
            let mask = write_sample(&class_dir, &name, size, *colour, (c * 10 + i) as u32);
            truth.insert(class_dir.join("images").join(format!("{name}.png")), mask);
        }
    }
    let mut ds = Folders::open(dir.path()).unwrap();
    ds.set_protocol(Protocol {
        min_pixels: 16,
        ..Protocol::default()
    });
    Fixture {
        _dir: dir,
        ds,
        truth,
    }
}

fn opts(episodes: usize, seeds: Vec<u64>) -> EvalOptions {
    // 2 folds over 4 classes: fold 0 tests classes 0 and 2, trains on 1 and 3.
    EvalOptions {
        fold: 0,
        n_folds: 2,
        shots: 1,
        episodes,
        seeds,
    }
}

fn config(size: usize) -> MceConfig {
    MceConfig {
        image_size: size,
        ..MceConfig::edge_lite0()
    }
}

fn store_for(ds: &Folders, lists: &[Vec<Episode>], size: usize) -> FeatureStore {
    let dev = Device::Cpu;
    let backbone = load_backbone(&config(size), &lite0_weights_path(), &dev).unwrap();
    build_store(
        ds,
        lists,
        &backbone,
        mce_train::transform::Canvas::letterbox(size),
        &dev,
    )
    .unwrap()
}

fn untrained_head(size: usize) -> Mce {
    let varmap = VarMap::new();
    let cfg = config(size);
    Mce::new(
        &cfg,
        VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu),
    )
    .unwrap();
    Mce::frozen(&cfg, &varmap).unwrap()
}

#[test]
fn all_foreground_iou_is_the_accumulated_foreground_share() {
    let fx = fixture();
    let o = opts(24, vec![0, 1]);
    let lists = seed_episodes(&fx.ds, &o).unwrap();
    let store = store_for(&fx.ds, &lists, 64);
    let report = evaluate_model(&fx.ds, &store, &AllForeground, &o, "all-foreground").unwrap();
    for (list, seed) in lists.iter().zip(&report.seeds) {
        // Independently: Σ |fg| / Σ |labelled| per class, from the masks as generated.
        let mut sums: BTreeMap<usize, (u64, u64)> = BTreeMap::new();
        let (mut fg_all, mut labelled_all) = (0u64, 0u64);
        for ep in list {
            let mask = &fx.truth[&fx.ds.sample(ep.query).unwrap().image];
            let fg = mask.iter().filter(|&&v| v == 1).count() as u64;
            let labelled = mask.iter().filter(|&&v| v != 255).count() as u64;
            let e = sums.entry(ep.class).or_default();
            (e.0, e.1) = (e.0 + fg, e.1 + labelled);
            (fg_all, labelled_all) = (fg_all + fg, labelled_all + labelled);
        }
        assert_eq!(seed.classes.len(), sums.len());
        for c in &seed.classes {
            let (fg, labelled) = sums[&c.class];
            assert_eq!(
                (c.intersection, c.union),
                (fg, labelled),
                "class {}",
                c.class
            );
            assert!((c.iou.unwrap() - fg as f64 / labelled as f64).abs() < 1e-12);
        }
        let miou = sums
            .values()
            .map(|&(f, l)| f as f64 / l as f64)
            .sum::<f64>()
            / 2.0;
        assert!((seed.miou.unwrap() - miou).abs() < 1e-12);
        // Background IoU is 0 (nothing predicted background), so FB-IoU = fg share / 2.
        let fb = fg_all as f64 / labelled_all as f64 / 2.0;
        assert!((seed.fb_iou.unwrap() - fb).abs() < 1e-12);
    }
    assert_eq!(report.episodes_per_seed, 24);
    assert!(report.to_string().contains("mIoU"));
    let json = serde_json::to_string(&report).unwrap();
    let back: mce_train::eval::EvalReport = serde_json::from_str(&json).unwrap();
    // serde_json may round the last bit of a float: compare the sums exactly, scores closely.
    let sums = |r: &mce_train::eval::EvalReport| -> Vec<(usize, u64, u64)> {
        let classes = r.seeds.iter().flat_map(|s| &s.classes);
        classes
            .map(|c| (c.class, c.intersection, c.union))
            .collect()
    };
    assert_eq!(sums(&back), sums(&report));
    assert!((back.miou.unwrap().mean - report.miou.unwrap().mean).abs() < 1e-12);
}

#[test]
fn nearest_neighbour_is_near_perfect_when_colour_separates_and_calibrates_on_train_classes() {
    let fx = fixture();
    let o = opts(16, vec![3]);
    let mut bo = BaselineOptions::new(o.clone(), 12);
    bo.calibration = CalibrationOptions {
        features: vec![FeatureChoice::Level2, FeatureChoice::Concat23],
        thresholds: (-10..=10).map(|i| f64::from(i) / 10.0).collect(),
    };
    let mut lists = seed_episodes(&fx.ds, &o).unwrap();
    let val = bo.validation(&fx.ds).unwrap();
    assert!(
        val.iter().all(|e| [1, 3].contains(&e.class)),
        "validation uses train classes"
    );
    lists.push(val);
    let store = store_for(&fx.ds, &lists, 128);
    let nn = NearestNeighbour {
        feature: FeatureChoice::Level2,
    };
    let nn = evaluate_model(&fx.ds, &store, &nn, &o, "nn").unwrap();
    let all = evaluate_model(&fx.ds, &store, &AllForeground, &o, "all").unwrap();
    let (nn_miou, all_miou) = (nn.miou.unwrap().mean, all.miou.unwrap().mean);
    // Measured 0.865 vs 0.205: the remaining error is the stride-8 boundary blur.
    assert!(nn_miou > 0.8, "nearest neighbour mIoU {nn_miou}");
    assert!(all_miou < 0.3, "all-foreground mIoU {all_miou}");

    let report = run_baselines(&fx.ds, &store, "efficientnet_lite0", &bo).unwrap();
    let cal = &report.calibration;
    assert_eq!(cal.train_classes, [1, 3]);
    assert_eq!(cal.candidates.len(), 4);
    assert!(cal.prototype_val_miou.unwrap() > all_miou);
    assert_eq!(report.methods.len(), 3);
    assert_eq!(report.methods[0].seeds, all.seeds);
    assert!(report.methods[2].miou.as_ref().unwrap().mean > 0.8);
    assert!(report.to_string().contains("nearest-neighbour"));
}

#[test]
fn grouping_by_query_matches_per_episode_evaluation() {
    let fx = fixture();
    let o = opts(20, vec![0, 5]);
    let lists = seed_episodes(&fx.ds, &o).unwrap();
    let store = store_for(&fx.ds, &lists, 64);
    let head = untrained_head(64);
    let view = CanvasView::new(&store).unwrap();
    let model = MceEval { head: &head };
    let bar = indicatif::ProgressBar::hidden();
    let grouped = score_episodes(&fx.ds, &view, &model, &lists, Grouping::ByQuery, &bar).unwrap();
    let single = score_episodes(&fx.ds, &view, &model, &lists, Grouping::PerEpisode, &bar).unwrap();
    let queries: std::collections::BTreeSet<usize> =
        lists.iter().flatten().map(|e| e.query.image).collect();
    assert!(queries.len() < 40, "some query images repeat");
    for (g, s) in grouped.iter().zip(&single) {
        assert_eq!(g.episodes, s.episodes);
        assert_eq!(g.accumulator.summary(), s.accumulator.summary());
    }
    let report = evaluate(&fx.ds, &head, &store, &o).unwrap();
    assert_eq!(report.seeds[1].miou, grouped[1].accumulator.miou());
    assert_eq!(report.miou.as_ref().unwrap().n, 2);
    let table = report.to_string();
    assert!(
        table.contains("Student t, 1 dof") && table.contains("seed 5"),
        "{table}"
    );
}

#[test]
fn odd_sized_image_is_predicted_and_scored_at_its_original_size() {
    let fx = fixture();
    let entries = fx.ds.catalog().entries();
    let path = |c: usize, i: usize| {
        fx.ds
            .catalog()
            .root()
            .join(format!("class{c}/images/img{i}.png"))
    };
    let find = |p: PathBuf| entries.iter().position(|e| e.image == p).unwrap();
    let query = SampleRef {
        image: find(path(0, 3)),
        class: 0,
    };
    let other = SampleRef {
        image: find(path(0, 0)),
        class: 0,
    };
    let ep = Episode {
        class: 0,
        query,
        supports: vec![other],
    };
    let lists = vec![vec![ep.clone()]];
    let store = store_for(&fx.ds, &lists, 64);
    assert_eq!(store.original_size(query.image), Some((23, 37)));
    let head = untrained_head(64);
    let view = CanvasView::new(&store).unwrap();
    let model = MceEval { head: &head };
    let q = mce_train::eval::EpisodeModel::encode_query(&model, &view, query.image).unwrap();
    let pred = predict_original(&view, &model, &q, &ep).unwrap();
    assert_eq!(
        (pred.height, pred.width, pred.data.len()),
        (23, 37, 37 * 23)
    );
    assert!(pred.data.iter().all(|&v| v <= 1));
    let bar = indicatif::ProgressBar::hidden();
    let scores = score_episodes(&fx.ds, &view, &model, &lists, Grouping::ByQuery, &bar).unwrap();
    let [(_, bg_union), (_, fg_union)] = scores[0].episodes[0];
    let labelled = 37 * 21; // the last 2 rows are the ignore band
    assert!(fg_union > 0 && bg_union > 0 && fg_union.max(bg_union) <= labelled);
}

#[test]
fn t_interval_on_known_numbers() {
    for (dof, want) in [
        (1.0, 12.706_204_736),
        (4.0, 2.776_445_105),
        (9.0, 2.262_157_163),
    ] {
        let t = t_quantile(0.975, dof);
        assert!((t - want).abs() < 1e-6, "t(0.975, {dof}) = {t}");
    }
    assert!((t_quantile(0.975, 30.0) - 2.042_272_456).abs() < 1e-6);
    assert!((t_quantile(0.975, 1e7) - 1.959_963_985).abs() < 1e-5);
    assert!((t_quantile(0.025, 4.0) + 2.776_445_105).abs() < 1e-6);
    // 1..5: mean 3, sd √2.5, half width t(0.975, 4) · √2.5 / √5.
    let i = Interval::from_values(&[1.0, 2.0, 3.0, 4.0, 5.0]).unwrap();
    let half = 2.776_445_105 * (2.5f64).sqrt() / 5f64.sqrt();
    assert!((i.mean - 3.0).abs() < 1e-12 && (i.std - 2.5f64.sqrt()).abs() < 1e-12);
    assert!((i.half_width - half).abs() < 1e-6 && (i.low - (3.0 - half)).abs() < 1e-6);
    assert_eq!((i.n, i.note.clone()), (5, None));
    let one = Interval::from_values(&[0.42]).unwrap();
    assert_eq!(
        (one.mean, one.low, one.high, one.half_width),
        (0.42, 0.42, 0.42, 0.0)
    );
    assert!(one.note.unwrap().contains("zero width"));
    assert!(Interval::from_values(&[]).is_none());
}

#[test]
fn threshold_sweep_agrees_with_the_episode_loop() {
    let fx = fixture();
    let mut bo = BaselineOptions::new(opts(4, vec![0]), 10);
    bo.val_seed = 9;
    let val = bo.validation(&fx.ds).unwrap();
    let store = store_for(&fx.ds, std::slice::from_ref(&val), 64);
    let view = CanvasView::new(&store).unwrap();
    let thresholds = [0.1, 0.3, 0.6];
    let feature = FeatureChoice::Concat23;
    let sweep = prototype_sweep(&fx.ds, &view, &val, feature, &thresholds).unwrap();
    let bar = indicatif::ProgressBar::hidden();
    for (&threshold, swept) in thresholds.iter().zip(sweep) {
        let model = PrototypeCosine { feature, threshold };
        let lists = [val.clone()];
        let scores = score_episodes(&fx.ds, &view, &model, &lists, Grouping::ByQuery, &bar);
        let direct = scores.unwrap()[0].accumulator.miou().unwrap();
        assert!(
            (swept.unwrap() - direct).abs() < 1e-3,
            "t {threshold}: {swept:?} vs {direct}"
        );
    }
}

#[test]
fn label_of_another_size_is_an_error_naming_the_file() {
    let fx = fixture();
    let root = fx.ds.catalog().root().join("class0");
    let bad = root.join("masks/img0.png");
    GrayImage::from_pixel(10, 10, Luma([1])).save(&bad).unwrap();
    let find = |p: PathBuf| {
        let entries = fx.ds.catalog().entries();
        entries.iter().position(|e| e.image == p).unwrap()
    };
    let r = |i: usize| SampleRef {
        image: find(root.join(format!("images/img{i}.png"))),
        class: 0,
    };
    let ep = Episode {
        class: 0,
        query: r(0),
        supports: vec![r(1)],
    };
    let lists = vec![vec![ep]];
    let store = store_for(&fx.ds, &lists, 64);
    let view = CanvasView::new(&store).unwrap();
    let bar = indicatif::ProgressBar::hidden();
    let err = score_episodes(
        &fx.ds,
        &view,
        &AllForeground,
        &lists,
        Grouping::ByQuery,
        &bar,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains(&bad.display().to_string()), "{err}");
    assert!(
        err.contains("label is 10x10") && err.contains("96x64"),
        "{err}"
    );
}

#[test]
fn checkpoint_evaluation_builds_exactly_the_needed_features() {
    let fx = fixture();
    let dev = Device::Cpu;
    let cfg = config(64);
    let varmap = VarMap::new();
    Mce::new(&cfg, VarBuilder::from_varmap(&varmap, DType::F32, &dev)).unwrap();
    let backbone = candle_core::safetensors::load(lite0_weights_path(), &dev).unwrap();
    let path = fx.ds.catalog().root().join("untrained.safetensors");
    let extra = BTreeMap::new();
    mce_core::checkpoint::save(&path, &cfg, &varmap, &backbone, &extra).unwrap();
    let o = opts(6, vec![0]);
    let report = evaluate_checkpoint(&fx.ds, &path, &o, &dev).unwrap();
    assert_eq!(report.method, "mce");
    assert_eq!(report.seeds[0].episodes, 6);
    assert!(report
        .notes
        .iter()
        .any(|n| n.contains("untrained.safetensors")));
    let lists = seed_episodes(&fx.ds, &o).unwrap();
    let refs = mce_train::eval::episode_refs(lists.iter().map(Vec::as_slice));
    let images: std::collections::BTreeSet<usize> = refs.iter().map(|r| r.image).collect();
    let built = format!("features of {} images", images.len());
    assert!(
        report.notes.iter().any(|n| n.contains(&built)),
        "{:?}",
        report.notes
    );
    let missing = fx.ds.catalog().root().join("missing.safetensors");
    let err = evaluate_checkpoint(&fx.ds, &missing, &o, &dev).unwrap_err();
    assert!(err.to_string().contains("missing.safetensors"), "{err}");
}
