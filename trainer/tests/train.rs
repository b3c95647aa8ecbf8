//! Training end to end on a generated folder dataset: checkpoints that the device can load, a JSONL
//! log, validation on the training classes only, and a resume that continues bit for bit.

use mce_core::inference::{lite0_weights_path, load_backbone};
use mce_testkit::SquareFolders;
use mce_train::data::{FewShotDataset, Folders};
use mce_train::optim::SgdConfig;
use mce_train::train::{train, TrainConfig};
use std::path::{Path, PathBuf};

/// 4 classes × 6 images: a coloured square (class colour) on a noisy background, exact masks.
fn fixture(root: &Path) {
    SquareFolders {
        images: 6,
        size: (100, 80),
        side: (48, 2),
    }
    .write(root);
}

fn config(steps: usize) -> TrainConfig {
    TrainConfig {
        model: mce_testkit::tiny_edge_config(64),
        fold: 0,
        folds: 2,
        shots: vec![1, 2],
        batch: 2,
        steps,
        sgd: SgdConfig {
            lr: 0.01,
            ..SgdConfig::default()
        },
        poly_power: 0.9,
        warmup_steps: 1,
        seed: 3,
        scales: vec![1.0, 0.8],
        flips: true,
        val_every_image: 3,
        val_episodes: 4,
        val_interval: 2,
        checkpoint_interval: 2,
        max_minutes: None,
        stop_at: None,
        online: false,
        loss: Default::default(),
        init: Default::default(),
        init_from: None,
    }
}

fn weights(path: &Path) -> Vec<(String, Vec<f32>)> {
    let f = mce_core::checkpoint::read(path, &candle_core::Device::Cpu).unwrap();
    let mut v: Vec<_> = f
        .tensors
        .into_iter()
        .filter(|(k, _)| !k.starts_with("backbone."))
        .map(|(k, t)| (k, t.flatten_all().unwrap().to_vec1::<f32>().unwrap()))
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

fn tmp(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("mce-train-test-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn trains_checkpoints_and_resumes_bit_for_bit() {
    let root = tmp("data");
    fixture(&root);
    let ds = Folders::open(&root).unwrap();
    let (train_classes, test_classes) = ds.fold_classes(0, 2).unwrap();
    assert_eq!((train_classes, test_classes), (vec![1, 3], vec![0, 2]));
    let device = candle_core::Device::Cpu;
    let cfg = config(4);
    let weights_path = lite0_weights_path();
    let backbone = load_backbone(&cfg.model, &weights_path, &device).unwrap();

    // 4 steps in one go
    let straight = tmp("straight");
    let s = train(
        &ds,
        &cfg,
        &backbone,
        &weights_path,
        straight.clone(),
        false,
        &device,
    )
    .unwrap();
    assert_eq!(s.steps_done, 4);
    assert!(s.final_loss.is_finite());
    assert!(s.best_val_miou.is_some());
    let log = std::fs::read_to_string(straight.join("log.jsonl")).unwrap();
    assert_eq!(log.lines().filter(|l| l.contains("\"loss\"")).count(), 4);
    assert!(log.lines().any(|l| l.contains("val_miou")));

    // interrupted after 2 of the 4 steps, then resumed on the same schedule
    let split = tmp("split");
    let paused = TrainConfig {
        stop_at: Some(2),
        ..config(4)
    };
    let p = train(
        &ds,
        &paused,
        &backbone,
        &weights_path,
        split.clone(),
        false,
        &device,
    )
    .unwrap();
    assert_eq!(p.steps_done, 2);
    let resumed = train(
        &ds,
        &cfg,
        &backbone,
        &weights_path,
        split.clone(),
        true,
        &device,
    )
    .unwrap();
    assert_eq!(resumed.steps_done, 4);
    let (a, b) = (
        weights(&straight.join("last.safetensors")),
        weights(&split.join("last.safetensors")),
    );
    assert_eq!(a.len(), b.len());
    for ((ka, va), (kb, vb)) in a.iter().zip(&b) {
        assert_eq!(ka, kb);
        assert_eq!(va, vb, "{ka} differs after resume");
    }
    // and training moved the weights at all: a 2-step run differs from the 4-step one
    let two = tmp("two");
    train(
        &ds,
        &config(2),
        &backbone,
        &weights_path,
        two.clone(),
        false,
        &device,
    )
    .unwrap();
    assert_ne!(weights(&two.join("last.safetensors")), a);

    // the Dice term is really minimised: the same 2 steps end elsewhere, and the first step's loss
    // (same start, same batch) is the cross-entropy plus a positive Dice term
    let dice = tmp("dice");
    let with_dice = TrainConfig {
        loss: mce_core::model::loss::LossKind::CrossEntropyDice,
        ..config(2)
    };
    train(
        &ds,
        &with_dice,
        &backbone,
        &weights_path,
        dice.clone(),
        false,
        &device,
    )
    .unwrap();
    assert_ne!(
        weights(&dice.join("last.safetensors")),
        weights(&two.join("last.safetensors"))
    );
    let first_loss = |dir: &Path| -> f64 {
        let log = std::fs::read_to_string(dir.join("log.jsonl")).unwrap();
        let line = log.lines().find(|l| l.contains("\"loss\"")).unwrap();
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        v["loss"].as_f64().unwrap()
    };
    let (ce, ce_dice) = (first_loss(&two), first_loss(&dice));
    assert!(
        ce_dice > ce + 0.05 && ce_dice < ce + 1.0,
        "{ce} vs {ce_dice}"
    );

    // the checkpoint is a complete model the device can load
    let seg = mce_core::inference::Segmenter::from_checkpoint(
        &straight.join("best.safetensors"),
        &device,
    )
    .unwrap();
    assert_eq!(seg.config().image_size, 64);
}

/// `--from` without `--qat`: a `cross_matching` run starts from a trained `paper` run's head
/// (at learning rate 0 its checkpoint is that start): shared tensors copied, the decoder's wider
/// inputs zero after the paper head's channels, the prior skip at its own initialisation.
#[test]
fn a_warm_start_begins_from_the_given_checkpoint() {
    let root = tmp("warm-data");
    fixture(&root);
    let ds = Folders::open(&root).unwrap();
    let device = candle_core::Device::Cpu;
    let weights_path = lite0_weights_path();
    let paper_cfg = TrainConfig {
        val_every_image: 0,
        ..config(2)
    };
    let backbone = load_backbone(&paper_cfg.model, &weights_path, &device).unwrap();
    let run = |cfg: &TrainConfig, dir: &Path| {
        train(
            &ds,
            cfg,
            &backbone,
            &weights_path,
            dir.to_path_buf(),
            false,
            &device,
        )
        .unwrap()
    };
    let paper_dir = tmp("warm-paper");
    run(&paper_cfg, &paper_dir);
    let paper = paper_dir.join("last.safetensors");
    let cross_cfg = TrainConfig {
        model: paper_cfg
            .model
            .clone()
            .with_head(mce_core::config::HeadKind::CrossMatching),
        sgd: SgdConfig {
            lr: 0.0,
            ..SgdConfig::default()
        },
        init_from: Some(paper.clone()),
        ..paper_cfg.clone()
    };
    let cross_dir = tmp("warm-cross");
    run(&cross_cfg, &cross_dir);
    let (start, got) = (
        weights(&paper),
        weights(&cross_dir.join("last.safetensors")),
    );
    let got: std::collections::HashMap<_, _> = got.into_iter().collect();
    for (name, want) in &start {
        let have = &got[name];
        if name.starts_with("decoder.aspp.") && name.ends_with(".weight") && have.len() > want.len()
        {
            // (out, in + 4, k, k): each output row is the paper row followed by zeros
            let out = paper_cfg.model.head.decoder().dim;
            let (row_want, row_have) = (want.len() / out, have.len() / out);
            for o in 0..out {
                let row = &have[o * row_have..(o + 1) * row_have];
                assert_eq!(
                    &row[..row_want],
                    &want[o * row_want..(o + 1) * row_want],
                    "{name}"
                );
                assert!(row[row_want..].iter().all(|&v| v == 0.0), "{name}");
            }
        } else {
            assert_eq!(have, want, "{name}");
        }
    }
    assert_eq!(got["decoder.prior_skip.weight"], [6.0]);
    assert_eq!(got.len(), start.len() + 1);
}
