//! Experiment (EVAL.md, "What limits the model"): how much does deciding on the stride-8 grid cost
//! by itself?
//!
//! The oracle knows the query's ground truth. It resizes the canvas label to the model's `g × g`
//! decision grid (the share of class pixels per cell), decides `share > 0.5` there, and goes back
//! to the original label resolution exactly as the model's logits do (bilinear, then argmax). Its
//! mIoU is the ceiling of any head that decides on that grid:
//! `cargo run --release -p mce-train --example grid_oracle -- ../shared/data/msrc-v2 0`
//! (root, fold; 1,000 one-shot test episodes, seed 0).

use anyhow::Context;
use candle_core::{Device, Tensor};
use mce_core::inference::{lite0_weights_path, load_backbone};
use mce_core::ops::resize_bilinear;
use mce_core::MceConfig;
use mce_train::baselines::similarity::score_logits;
use mce_train::data::msrc::MsrcV2;
use mce_train::data::Episode;
use mce_train::eval::{
    build_store, evaluate_model, seed_episodes, CanvasView, EpisodeModel, EvalOptions,
};
use mce_train::Result;

struct GridOracle {
    grid: usize,
}

impl EpisodeModel for GridOracle {
    type Query = ();

    fn encode_query(&self, _: &CanvasView, _: usize) -> Result<()> {
        Ok(())
    }

    fn logits(&self, view: &CanvasView, _: &(), ep: &Episode) -> Result<Tensor> {
        // The query's canvas label as a 0/1 mask, as a support's would be.
        let class = view.support_mask(ep.query)?;
        let share = resize_bilinear(&class, self.grid, self.grid)?;
        score_logits(&share, 0.5, view.size())
    }
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [root, fold] = args.as_slice() else {
        anyhow::bail!("usage: grid_oracle <msrc-v2 root> <fold>");
    };
    let ds = MsrcV2::open(root).with_context(|| format!("opening {root}"))?;
    let opts = EvalOptions {
        fold: fold.parse()?,
        n_folds: 4,
        shots: 1,
        episodes: 1000,
        seeds: vec![0],
    };
    let config = MceConfig::edge_lite0();
    let backbone = load_backbone(&config, &lite0_weights_path(), &Device::Cpu)?;
    let lists = seed_episodes(&ds, &opts)?;
    let store = build_store(
        &ds,
        &lists,
        &backbone,
        mce_train::transform::Canvas::of(&config),
        &Device::Cpu,
    )?;
    for grid in [config.grid(), 2 * config.grid(), 4 * config.grid()] {
        let report = evaluate_model(&ds, &store, &GridOracle { grid }, &opts, "grid oracle")?;
        let seed = &report.seeds[0];
        println!(
            "grid {grid}×{grid}: mIoU {:.2}, FB-IoU {:.2}",
            100.0 * seed.miou.unwrap_or(0.0),
            100.0 * seed.fb_iou.unwrap_or(0.0)
        );
    }
    Ok(())
}
