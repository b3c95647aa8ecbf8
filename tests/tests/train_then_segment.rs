//! Train a head with `mce-train` on a generated folder dataset, then segment a held-out class with
//! `mce-device segment --model <that checkpoint>`.

use clap::Parser;
use image::{GrayImage, Luma, Rgb, RgbImage};
use mce_core::inference::{lite0_weights_path, load_backbone};
use mce_core::MceConfig;
use mce_train::data::Folders;
use mce_train::optim::SgdConfig;
use mce_train::train::{train, TrainConfig};
use std::path::{Path, PathBuf};

fn write_class(root: &Path, name: &str, colour: [u8; 3]) {
    let dir = root.join(name);
    std::fs::create_dir_all(dir.join("images")).unwrap();
    std::fs::create_dir_all(dir.join("masks")).unwrap();
    for i in 0..4u32 {
        let (x0, y0) = (6 + 7 * i, 4 + 5 * i);
        let inside = |x: u32, y: u32| (x0..x0 + 50).contains(&x) && (y0..y0 + 50).contains(&y);
        let img = RgbImage::from_fn(96, 80, |x, y| {
            if inside(x, y) {
                Rgb(colour)
            } else {
                Rgb([100 + ((x + y) % 30) as u8; 3])
            }
        });
        let mask = GrayImage::from_fn(96, 80, |x, y| Luma([if inside(x, y) { 255 } else { 0 }]));
        img.save(dir.join(format!("images/{i}.png"))).unwrap();
        mask.save(dir.join(format!("masks/{i}.png"))).unwrap();
    }
}

fn tmp() -> PathBuf {
    let d = std::env::temp_dir().join(format!("mce-e2e-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn trained_checkpoint_segments_through_the_device_cli() {
    let dir = tmp();
    let data = dir.join("data");
    for (i, c) in [[220, 30, 30], [30, 200, 40], [40, 60, 230], [230, 220, 30]]
        .iter()
        .enumerate()
    {
        write_class(&data, &format!("c{i}"), *c);
    }
    let ds = Folders::open(&data).unwrap();
    let cfg = TrainConfig {
        model: MceConfig {
            image_size: 64,
            ..MceConfig::edge_lite0()
        },
        fold: 0,
        folds: 2,
        shots: vec![1],
        batch: 2,
        steps: 3,
        sgd: SgdConfig::default(),
        poly_power: 0.9,
        warmup_steps: 0,
        seed: 0,
        scales: vec![1.0],
        flips: false,
        val_every_image: 2,
        val_episodes: 2,
        val_interval: 3,
        checkpoint_interval: 3,
        max_minutes: None,
        stop_at: None,
        online: false,
        loss: Default::default(),
        init: Default::default(),
        init_from: None,
    };
    let device = candle_core::Device::Cpu;
    let weights = lite0_weights_path();
    let backbone = load_backbone(&cfg.model, &weights, &device).unwrap();
    let summary = train(
        &ds,
        &cfg,
        &backbone,
        &weights,
        dir.join("run"),
        false,
        &device,
    )
    .unwrap();
    assert_eq!(summary.steps_done, 3);

    // class c0 is a test class of fold 0: unseen in training
    let img = |i: u32| data.join(format!("c0/images/{i}.png"));
    let mask = |i: u32| data.join(format!("c0/masks/{i}.png"));
    let out = dir.join("pred.png");
    let support = format!("{}:{}", img(0).display(), mask(0).display());
    let query = img(2);
    let args = [
        "mce-device",
        "segment",
        "--model",
        summary.last.to_str().unwrap(),
        "--support",
        &support,
        "--query",
        query.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ];
    mce_device::run(mce_device::Cli::parse_from(args)).unwrap();
    let pred = image::open(&out).unwrap().to_luma8();
    assert_eq!((pred.width(), pred.height()), (96, 80));
    assert!(pred.pixels().all(|p| p.0[0] == 0 || p.0[0] == 255));
}
