//! Time training steps of the edge paper head on random backbone features (no data needed):
//! `cargo run --release -p mce-train --example train_step -- [batch] [steps]`.

use candle_core::{DType, Device, Tensor};
use candle_nn::{Optimizer, VarMap};
use mce_core::model::loss::LossKind;
use mce_core::model::Mode;
use mce_core::{Features, Mce, MceConfig};
use mce_train::optim::{Sgd, SgdConfig};
use std::time::Instant;

// As the mce-train binary: big short-lived tensors would otherwise be page-faulted in each time.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn features(cfg: &MceConfig, b: usize, dev: &Device) -> candle_core::Result<Features> {
    let ch = cfg.backbone.channels();
    let level = |i: usize| {
        let g = cfg.level_grid(i + 2);
        Tensor::rand(0f32, 1f32, (b, ch[i], g, g), dev)
    };
    Ok(Features {
        level2: level(0)?,
        level3: level(1)?,
        level4: level(2)?,
    })
}

fn main() -> anyhow::Result<()> {
    mce_core::alloc::retain_freed_memory();
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse().unwrap())
        .collect();
    let (batch, steps) = (
        args.first().copied().unwrap_or(8),
        args.get(1).copied().unwrap_or(3),
    );
    let dev = Device::Cpu;
    let mut cfg = MceConfig::edge_lite0();
    if std::env::var("NOCROSS").is_ok() {
        cfg.paper_mut().unwrap().ablation = mce_core::config::PaperAblation::WithoutCrossMap;
    }
    let s = cfg.image_size;
    let varmap = VarMap::new();
    let vb = mce_core::model::init::seeded_varbuilder(&varmap, 0, DType::F32, &dev);
    let head = Mce::new(&cfg, vb)?;
    let mut opt = Sgd::from_varmap(&varmap, SgdConfig::default());
    let query = features(&cfg, batch, &dev)?;
    let mask = Tensor::rand(0f32, 1f32, (batch, 1, s, s), &dev)?
        .ge(0.5)?
        .to_dtype(DType::F32)?;
    let shots = vec![(features(&cfg, batch, &dev)?, mask)];
    let labels = Tensor::rand(0f32, 1f32, (batch, s, s), &dev)?
        .ge(0.5)?
        .to_dtype(DType::U8)?;
    for step in 0..steps {
        let t0 = Instant::now();
        let logits = head.forward(&query, &shots, Mode::Train { seed: step as u64 })?;
        let loss = LossKind::CrossEntropy.loss(&logits, &labels)?;
        let t1 = Instant::now();
        let grads = loss.backward()?;
        let t2 = Instant::now();
        opt.step(&grads)?;
        let t3 = Instant::now();
        println!(
            "step {step}: forward {:.2}s backward {:.2}s update {:.3}s = {:.2} episodes/s",
            (t1 - t0).as_secs_f64(),
            (t2 - t1).as_secs_f64(),
            (t3 - t2).as_secs_f64(),
            batch as f64 / (t3 - t0).as_secs_f64()
        );
    }
    Ok(())
}
