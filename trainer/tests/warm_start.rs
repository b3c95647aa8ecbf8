//! Warm start (`train --from` without `--qat`): a `cross_matching` head started from a trained
//! `paper` head computes the paper head's logits plus the prior skip's rule, on any input.

use candle_core::{DType, Device, Result, Tensor};
use candle_nn::VarMap;
use mce_core::checkpoint::CheckpointFile;
use mce_core::config::{HeadKind, MceConfig};
use mce_core::model::init::{seeded_varbuilder_with, InitScheme};
use mce_core::model::Mode;
use mce_core::{Features, Mce};
use mce_train::train::warm_start;
use std::collections::{BTreeMap, HashMap};

fn small() -> MceConfig {
    let mut cfg = MceConfig {
        image_size: 64,
        ..MceConfig::edge_lite0()
    };
    let p = cfg.paper_mut().unwrap();
    (p.reduce_dim, p.d_model, p.heads, p.mlp_ratio) = (16, 8, 2, 2);
    (p.decoder.dim, p.decoder.aspp_rates) = (8, [1, 2, 3]);
    cfg
}

fn seeded(cfg: &MceConfig, seed: u64) -> Result<(VarMap, Mce)> {
    let vm = VarMap::new();
    let vb = seeded_varbuilder_with(&vm, seed, InitScheme::Torch, DType::F32, &Device::Cpu);
    let m = Mce::new(cfg, vb)?;
    Ok((vm, m))
}

fn features(cfg: &MceConfig) -> Result<Features> {
    let ch = cfg.backbone.channels();
    let level = |i: usize| {
        let g = cfg.level_grid(i + 2);
        Tensor::rand(0f32, 1., (1, ch[i], g, g), &Device::Cpu)
    };
    Ok(Features {
        level2: level(0)?,
        level3: level(1)?,
        level4: level(2)?,
    })
}

/// The variables of `vars` by name, as a checkpoint file holds them.
fn tensors_of(vars: &VarMap) -> HashMap<String, Tensor> {
    let vars = vars.data().lock().unwrap();
    vars.iter()
        .map(|(k, v)| (k.clone(), v.as_tensor().clone()))
        .collect()
}

/// The margin `fg − bg` of `m`'s logits for one query and two shots.
fn margin(m: &Mce, query: &Features, shots: &[(Features, Tensor)]) -> Result<Tensor> {
    let q = m.encode_query(query, Mode::Eval)?;
    let enc = shots
        .iter()
        .map(|(f, mask)| m.encode_support(f, mask, Mode::Eval))
        .collect::<Result<Vec<_>>>()?;
    let logits = m.decode_grid(&q, &enc)?;
    logits.narrow(1, 1, 1)? - logits.narrow(1, 0, 1)?
}

#[test]
fn a_cross_matching_head_from_a_paper_head_is_its_logits_plus_the_rule() -> Result<()> {
    let paper_cfg = small();
    let (paper_vars, paper) = seeded(&paper_cfg, 3)?;
    let file = CheckpointFile {
        path: "paper.safetensors".into(),
        config: paper_cfg.clone(),
        extra: BTreeMap::new(),
        tensors: tensors_of(&paper_vars),
    };
    let cross_cfg = small().with_head(HeadKind::CrossMatching);
    let (cross_vars, cross) = seeded(&cross_cfg, 4)?;
    let done = warm_start::load_into(&file, &cross_cfg, &cross_vars).unwrap();
    assert_eq!(done.kept, ["decoder.prior_skip.weight"]);
    assert_eq!(done.widened.len(), 5, "{:?}", done.widened); // ASPP's pool, 1x1, 3 atrous
    assert!(done.widened.iter().all(|n| n.starts_with("decoder.aspp.")));
    assert_eq!(done.copied.len(), file.tensors.len() - 5);

    let s = cross_cfg.image_size;
    let mask = |lo: usize, hi: usize| {
        let v: Vec<f32> = (0..s * s)
            .map(|k| {
                f32::from(u8::from(
                    (lo..hi).contains(&(k / s)) && (lo..hi).contains(&(k % s)),
                ))
            })
            .collect();
        Tensor::from_vec(v, (1, 1, s, s), &Device::Cpu)
    };
    let query = features(&cross_cfg)?;
    let shots = [
        (features(&cross_cfg)?, mask(8, 40)?),
        (features(&cross_cfg)?, mask(20, 60)?),
    ];
    let x = {
        let q = cross.encode_query(&query, Mode::Eval)?;
        let enc = shots
            .iter()
            .map(|(f, m)| cross.encode_support(f, m, Mode::Eval))
            .collect::<Result<Vec<_>>>()?;
        cross.decoder_input(&q, &enc)?
    };
    let joint = &x.priors.as_ref().expect("priors").joint;
    let skip = mce_core::model::decoder::PRIOR_SKIP_INIT;
    let expected = (margin(&paper, &query, &shots)? + (joint * skip)?)?;
    let got = margin(&cross, &query, &shots)?;
    let diff = (got - &expected)?.abs()?.max_all()?.to_scalar::<f32>()?;
    assert!(diff < 1e-4, "max |difference| {diff}");
    assert!(joint.abs()?.max_all()?.to_scalar::<f32>()? > 1e-2);
    Ok(())
}

#[test]
fn a_tensor_that_does_not_fit_is_an_error_naming_the_file() -> Result<()> {
    let paper_cfg = small();
    let (paper_vars, _) = seeded(&paper_cfg, 3)?;
    let mut tensors = tensors_of(&paper_vars);
    tensors.insert(
        "down_query.0.weight".into(),
        Tensor::zeros((3, 3, 1, 1), DType::F32, &Device::Cpu)?,
    );
    let file = CheckpointFile {
        path: "odd.safetensors".into(),
        config: paper_cfg.clone(),
        extra: BTreeMap::new(),
        tensors,
    };
    let (vars, _) = seeded(&paper_cfg, 4)?;
    let err = warm_start::load_into(&file, &paper_cfg, &vars)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("odd.safetensors") && err.contains("down_query.0.weight"),
        "{err}"
    );
    Ok(())
}
