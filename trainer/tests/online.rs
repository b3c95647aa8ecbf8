//! Online training mode: augmented batches straight from the dataset, reproducible from the step's
//! generator, and a run that trains, checkpoints and resumes bit for bit like the cached mode.

use candle_core::{Device, Tensor};
use mce_core::inference::{lite0_weights_path, load_backbone};
use mce_testkit::SquareFolders;
use mce_train::augment::AugmentConfig;
use mce_train::data::{EpisodeSampler, FewShotDataset, Folders};
use mce_train::features::FeatureStore;
use mce_train::optim::SgdConfig;
use mce_train::train::batch::{self, Batch};
use mce_train::train::online::OnlineBatches;
use mce_train::train::{train, TrainConfig};
use mce_train::transform::Variant;
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha8Rng;

const SIZE: usize = 64;

fn dataset(dir: &std::path::Path) -> Folders {
    SquareFolders {
        images: 5,
        size: (90, 70),
        side: (40, 3),
    }
    .write(dir);
    Folders::open(dir).unwrap()
}

fn values(t: &Tensor) -> Vec<f32> {
    t.to_dtype(candle_core::DType::F32)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    values(a)
        .iter()
        .zip(values(b))
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn online_batches_are_augmented_and_reproducible() {
    let dir = tempfile::tempdir().unwrap();
    let ds = dataset(dir.path());
    let backbone = load_backbone(&config(1).model, &lite0_weights_path(), &Device::Cpu).unwrap();
    let pool = ds.train_pool(0, 2).unwrap();
    let episodes = EpisodeSampler::new(5).episodes(&pool, 2, 3).unwrap();
    let online = OnlineBatches::new(&ds, &backbone, SIZE);
    let draw = |seed: u64| -> Batch {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        online.assemble(&episodes, &mut rng, &Device::Cpu).unwrap()
    };
    let (a, again, other) = (draw(1), draw(1), draw(2));
    // shapes: 3 episodes, 2 shots, labels on the canvas
    assert_eq!(a.labels.dims(), &[3, SIZE, SIZE]);
    assert_eq!(a.shots.len(), 2);
    assert_eq!(a.shots[1].1.dims(), &[3, 1, SIZE, SIZE]);
    assert_eq!(a.query.level2.dim(0).unwrap(), 3);
    let labels = values(&a.labels);
    assert!(labels.iter().all(|&l| l == 0.0 || l == 1.0 || l == 255.0));
    assert!(labels.contains(&1.0) && labels.contains(&0.0));
    // same generator state: the same batch; another: other augmentations
    assert_eq!(max_diff(&a.query.level4, &again.query.level4), 0.0);
    assert_eq!(values(&a.labels), values(&again.labels));
    assert!(max_diff(&a.query.level4, &other.query.level4) > 1e-3);
    // with augmentation off except the crop, labels match the cached test transform's foreground
    // (the crop only pads and shifts, so the foreground pixel count is the same)
    let plain =
        OnlineBatches::new(&ds, &backbone, SIZE).with_augment(AugmentConfig::identity(SIZE));
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let p = plain.assemble(&episodes, &mut rng, &Device::Cpu).unwrap();
    let refs: Vec<_> = episodes
        .iter()
        .flat_map(|e| std::iter::once(e.query).chain(e.supports.iter().copied()))
        .collect();
    let store = FeatureStore::build(
        &ds,
        &refs,
        &backbone,
        mce_train::transform::Canvas::letterbox(SIZE),
        &[Variant::IDENTITY],
        &Device::Cpu,
    )
    .unwrap();
    let cached = batch::assemble(&store, &episodes, || 0, &Device::Cpu).unwrap();
    let fg = |t: &Tensor| values(t).iter().filter(|&&l| l == 1.0).count();
    assert_eq!(fg(&p.labels), fg(&cached.labels));
}

fn config(steps: usize) -> TrainConfig {
    TrainConfig {
        model: mce_testkit::tiny_edge_config(SIZE),
        fold: 0,
        folds: 2,
        shots: vec![1],
        batch: 2,
        steps,
        sgd: SgdConfig {
            lr: 0.01,
            ..SgdConfig::default()
        },
        poly_power: 0.9,
        warmup_steps: 0,
        seed: 9,
        scales: vec![1.0],
        flips: false,
        val_every_image: 3,
        val_episodes: 2,
        val_interval: 2,
        checkpoint_interval: 1,
        max_minutes: None,
        stop_at: None,
        online: true,
        loss: Default::default(),
        init: Default::default(),
        init_from: None,
    }
}

fn head_weights(path: &std::path::Path) -> Vec<(String, Vec<f32>)> {
    let f = mce_core::checkpoint::read(path, &Device::Cpu).unwrap();
    let mut v: Vec<_> = f
        .tensors
        .into_iter()
        .filter(|(k, _)| !k.starts_with("backbone."))
        .map(|(k, t)| (k, values(&t)))
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

#[test]
fn online_training_runs_and_resumes_bit_for_bit() {
    let dir = tempfile::tempdir().unwrap();
    let ds = dataset(&dir.path().join("data"));
    let weights = lite0_weights_path();
    let backbone = load_backbone(&config(1).model, &weights, &Device::Cpu).unwrap();
    let run = |cfg: &TrainConfig, out: &str, resume: bool| {
        train(
            &ds,
            cfg,
            &backbone,
            &weights,
            dir.path().join(out),
            resume,
            &Device::Cpu,
        )
        .unwrap()
    };
    let s = run(&config(3), "straight", false);
    assert_eq!(s.steps_done, 3);
    assert!(s.final_loss.is_finite());
    let paused = TrainConfig {
        stop_at: Some(1),
        ..config(3)
    };
    assert_eq!(run(&paused, "split", false).steps_done, 1);
    assert_eq!(run(&config(3), "split", true).steps_done, 3);
    let a = head_weights(&dir.path().join("straight/last.safetensors"));
    assert_eq!(a, head_weights(&dir.path().join("split/last.safetensors")));
    // the cached mode on the same schedule sees other (unaugmented) inputs: other weights
    let cached = TrainConfig {
        online: false,
        loss: Default::default(),
        init: Default::default(),
        ..config(3)
    };
    run(&cached, "cached", false);
    assert_ne!(a, head_weights(&dir.path().join("cached/last.safetensors")));
}
