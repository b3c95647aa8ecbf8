//! Experiment (EVAL.md, "What was tried"): does *query self-support* improve the training-free
//! nearest-neighbour rule on MSRC-v2?
//!
//! ```text
//! d0 = best cos(query, support fg) − best cos(query, support bg)        (the `nearest` baseline)
//! confident query positions: Q_fg = {d0 > t}, Q_bg = {d0 < −t}
//! prototype self-support: s = cos(query, mean Q_fg) − cos(query, mean Q_bg)
//! matching self-support:  s = best cos(query, Q_fg \ itself) − best cos(query, Q_bg \ itself)
//! score = d0 + λ·s, foreground where > 0
//! ```
//!
//! Every variant runs on the validation episodes of the training classes and on the held-out
//! test episodes (300 each, seed 0):
//! `cargo run --release -p mce-train --example self_support -- ../shared/data/msrc-v2 0 1`
//! (root, fold, shots).

use anyhow::Context;
use candle_core::{Device, Tensor, D};
use mce_core::inference::{lite0_weights_path, load_backbone};
use mce_core::MceConfig;
use mce_train::baselines::similarity::{feature_map, score_logits, FeatureMap};
use mce_train::baselines::NearestNeighbour;
use mce_train::baselines::{build_baseline_store, BaselineOptions, FeatureChoice};
use mce_train::data::msrc::MsrcV2;
use mce_train::data::{Episode, FewShotDataset};
use mce_train::eval::{
    score_episodes, seed_episodes, CanvasView, EpisodeModel, EvalOptions, Grouping,
};
use mce_train::Result;

/// Cosine of excluded pairs, so they never win a max.
const EXCLUDE: f32 = -4.0;

#[derive(Debug, Clone, Copy)]
enum SelfSupport {
    None,
    Prototype,
    Matching,
}

#[derive(Debug, Clone, Copy)]
struct Variant {
    kind: SelfSupport,
    threshold: f32,
    lambda: f64,
}

struct SelfSupported {
    nn: NearestNeighbour,
    v: Variant,
}

fn unit_rows(x: &Tensor) -> Result<Tensor> {
    let n = (x.sqr()?.sum_keepdim(D::Minus1)?.sqrt()? + 1e-7)?;
    Ok(x.broadcast_div(&n)?)
}

/// `(n, C)` rows of the query at `positions`.
fn rows(q: &FeatureMap, positions: &[u32]) -> Result<Tensor> {
    let idx = Tensor::from_vec(positions.to_vec(), positions.len(), q.rows.device())?;
    Ok(q.rows.index_select(&idx, 0)?)
}

/// Best cosine of every query position to the positions `p`, a position never matching itself.
fn best_other(q: &FeatureMap, p: &[u32]) -> Result<Tensor> {
    let cos = q.rows.matmul(&rows(q, p)?.t()?)?; // (hw, n)
    let (hw, n) = cos.dims2()?;
    let mut own = vec![0f32; hw * n];
    for (j, &i) in p.iter().enumerate() {
        own[i as usize * n + j] = EXCLUDE;
    }
    let own = Tensor::from_vec(own, (hw, n), q.rows.device())?;
    Ok((cos + own)?.max_keepdim(D::Minus1)?)
}

impl SelfSupported {
    fn score(&self, view: &CanvasView, q: &FeatureMap, ep: &Episode) -> Result<Tensor> {
        let d0 = self.nn.score(view, q, ep)?; // (1, 1, h, w)
        let d: Vec<f32> = d0.flatten_all()?.to_vec1()?;
        let pick = |keep: &dyn Fn(f32) -> bool| -> Vec<u32> {
            (0..d.len() as u32)
                .filter(|&i| keep(d[i as usize]))
                .collect()
        };
        let t = self.v.threshold;
        let (fg, bg) = (pick(&|x| x > t), pick(&|x| x < -t));
        if fg.is_empty() || bg.is_empty() {
            return Ok(d0);
        }
        let s = match self.v.kind {
            SelfSupport::None => return Ok(d0),
            SelfSupport::Prototype => {
                let proto = |p: &[u32]| unit_rows(&rows(q, p)?.mean_keepdim(0)?);
                let cos = |p: &[u32]| -> Result<Tensor> { Ok(q.rows.matmul(&proto(p)?.t()?)?) };
                (cos(&fg)? - cos(&bg)?)?
            }
            SelfSupport::Matching => (best_other(q, &fg)? - best_other(q, &bg)?)?,
        };
        let s = s.reshape(d0.shape())?;
        Ok((d0 + (s * self.v.lambda)?)?)
    }
}

impl EpisodeModel for SelfSupported {
    type Query = FeatureMap;

    fn encode_query(&self, view: &CanvasView, image: usize) -> Result<FeatureMap> {
        feature_map(view.features(image)?, self.nn.feature)
    }

    fn logits(&self, view: &CanvasView, q: &FeatureMap, ep: &Episode) -> Result<Tensor> {
        score_logits(&self.score(view, q, ep)?, 0.0, view.size())
    }
}

/// (mIoU, FB-IoU) in percent over one episode list.
fn scores(
    ds: &dyn FewShotDataset,
    view: &CanvasView,
    m: &SelfSupported,
    list: &[Episode],
) -> Result<(f64, f64)> {
    let bar = indicatif::ProgressBar::hidden();
    let s = score_episodes(ds, view, m, &[list.to_vec()], Grouping::ByQuery, &bar)?;
    let acc = &s[0].accumulator;
    let [bg, fg] = acc.fb_ious();
    let fb = 50.0 * (bg.unwrap_or(0.0) + fg.unwrap_or(0.0));
    Ok((100.0 * acc.miou().unwrap_or(0.0), fb))
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [root, fold, shots] = args.as_slice() else {
        anyhow::bail!("usage: self_support <msrc-v2 root> <fold> <shots>");
    };
    let (fold, shots): (usize, usize) = (fold.parse()?, shots.parse()?);
    let ds = MsrcV2::open(root).with_context(|| format!("opening {root}"))?;
    let eval = EvalOptions {
        fold,
        n_folds: 4,
        shots,
        episodes: 300,
        seeds: vec![0],
    };
    let opts = BaselineOptions::new(eval.clone(), 300);
    let config = MceConfig::edge_lite0();
    let device = Device::Cpu;
    let backbone = load_backbone(&config, &lite0_weights_path(), &device)?;
    let store = build_baseline_store(
        &ds,
        &backbone,
        mce_train::transform::Canvas::of(&config),
        &opts,
        &device,
    )?;
    let view = CanvasView::new(&store)?;
    let (val, test) = (opts.validation(&ds)?, seed_episodes(&ds, &eval)?.remove(0));
    let nn = NearestNeighbour {
        feature: FeatureChoice::Concat234,
    };
    let mut variants = vec![Variant {
        kind: SelfSupport::None,
        threshold: 0.0,
        lambda: 0.0,
    }];
    for kind in [SelfSupport::Prototype, SelfSupport::Matching] {
        for threshold in [0.1, 0.2, 0.05] {
            for lambda in [0.5, 1.0, 2.0] {
                variants.push(Variant {
                    kind,
                    threshold,
                    lambda,
                });
            }
        }
    }
    println!("variant                                   val mIoU/FB-IoU   test mIoU/FB-IoU");
    for v in variants {
        let m = SelfSupported { nn, v };
        let (vm, vf) = scores(&ds, &view, &m, &val)?;
        let (tm, tf) = scores(&ds, &view, &m, &test)?;
        let name = format!("{:?} t={:.2} λ={:.1}", v.kind, v.threshold, v.lambda);
        println!("{name:<40} {vm:>7.2}/{vf:<7.2}     {tm:>7.2}/{tf:<7.2}");
    }
    Ok(())
}
