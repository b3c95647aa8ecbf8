//! Experiment (EVAL.md, "Warm start: the trained paper head plus the rule"): the untrained sum
//! `paper logits + w · prior_joint` as a `cross_matching` checkpoint.
//!
//! The paper head's tensors go in by the trainer's warm start (`mce_train::train::warm_start`: the
//! ASPP's four extra input channels zero), the prior skip's weight is set to `w`:
//! `cargo run --release -p mce-train --example paper_plus_rule -- runs/lr440/last.safetensors 24 sum24.safetensors`
//! then `mce-train eval --checkpoint sum24.safetensors ...`.

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use mce_core::checkpoint::{self, BACKBONE_PREFIX};
use mce_core::config::HeadKind;
use mce_core::Mce;
use mce_train::train::warm_start;
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [paper, w, out] = args.as_slice() else {
        bail!("usage: paper_plus_rule PAPER_CHECKPOINT W OUT");
    };
    let (paper, out) = (PathBuf::from(paper), PathBuf::from(out));
    let w: f32 = w.parse().context("W must be a number")?;
    let device = Device::Cpu;
    let file = checkpoint::read(&paper, &device)?;
    let config = file.config.clone().with_head(HeadKind::CrossMatching);
    let varmap = VarMap::new();
    Mce::new(
        &config,
        VarBuilder::from_varmap(&varmap, DType::F32, &device),
    )?;
    let done = warm_start::load_into(&file, &config, &varmap)?;
    if done.kept != ["decoder.prior_skip.weight"] {
        bail!(
            "{}: expected a paper head (left from the seed: {:?})",
            paper.display(),
            done.kept
        );
    }
    varmap
        .data()
        .lock()
        .expect("varmap lock")
        .get("decoder.prior_skip.weight")
        .context("no prior skip")?
        .set(&Tensor::full(w, (1, 1, 1, 1), &device)?)?;
    let backbone: HashMap<String, Tensor> = file
        .tensors
        .iter()
        .filter_map(|(k, t)| Some((k.strip_prefix(BACKBONE_PREFIX)?.to_string(), t.clone())))
        .collect();
    let extra = BTreeMap::from([(
        "paper_plus_rule".to_string(),
        format!("{} w={w}", paper.display()),
    )]);
    checkpoint::save(&out, &config, &varmap, &backbone, &extra)?;
    println!(
        "{}: paper head of {} + {w} · prior_joint",
        out.display(),
        paper.display()
    );
    Ok(())
}
