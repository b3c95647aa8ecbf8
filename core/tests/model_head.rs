//! The MCE head on synthetic backbone features: mask semantics, an independent loop-based reference
//! of one cross-encoding level, K-shot averaging, shapes for both presets.

// Attention maps of the paper preset are ~400 MB each; see device/src/main.rs.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use candle_core::Module;
use candle_core::{DType, Device, Result, Tensor};
use candle_nn::{VarBuilder, VarMap};
use mce_core::config::{Attention, Branches, HeadKind, MceConfig};
use mce_core::model::decoder::DecoderInput;
use mce_core::model::{Head, Mode, QueryEncoding, SupportEncoding};
use mce_core::{Features, Mce};

fn features(cfg: &MceConfig, b: usize, seed: f32) -> Result<Features> {
    let dev = Device::Cpu;
    let ch = cfg.backbone.channels();
    let level = |i: usize| -> Result<Tensor> {
        let g = cfg.level_grid(i + 2);
        // deterministic, non-negative (post-ReLU-like) but varied values
        let n = b * ch[i] * g * g;
        let v: Vec<f32> = (0..n)
            .map(|k| {
                ((k as f32 * 0.6180339 + seed).sin() * 43758.547)
                    .fract()
                    .abs()
            })
            .collect();
        Tensor::from_vec(v, (b, ch[i], g, g), &dev)
    };
    Ok(Features {
        level2: level(0)?,
        level3: level(1)?,
        level4: level(2)?,
    })
}

/// A square foreground block `[lo, hi)` in an `s × s` mask, batch of `b`.
fn block_mask(b: usize, s: usize, lo: usize, hi: usize) -> Result<Tensor> {
    let v: Vec<f32> = (0..b * s * s)
        .map(|k| {
            let (y, x) = ((k % (s * s)) / s, k % s);
            f32::from(u8::from((lo..hi).contains(&y) && (lo..hi).contains(&x)))
        })
        .collect();
    Tensor::from_vec(v, (b, 1, s, s), &Device::Cpu)
}

/// Token width of [`small`].
const D_MODEL: usize = 8;

fn small(branches: Branches) -> MceConfig {
    let mut cfg = MceConfig {
        image_size: 64,
        ..MceConfig::edge_lite0()
    };
    let p = cfg.paper_mut().unwrap();
    (p.reduce_dim, p.d_model, p.heads, p.mlp_ratio) = (16, D_MODEL, 2, 2);
    (p.decoder.dim, p.decoder.aspp_rates, p.branches) = (8, [1, 2, 3], branches);
    cfg
}

/// The small config with the class-agnostic matching head.
fn small_matching() -> MceConfig {
    small(Branches::Both).with_head(HeadKind::Matching)
}

fn head(cfg: &MceConfig) -> Result<(VarMap, Mce)> {
    let vm = VarMap::new();
    let m = Mce::new(cfg, VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu))?;
    Ok((vm, m))
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> Result<f32> {
    (a - b)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()
}

/// Set the level-2 feature vector at grid position `(y, x)` of image 0 to other values.
fn perturb_level2(f: &Features, y: usize, x: usize) -> Result<Features> {
    let (b, c, h, w) = f.level2.dims4()?;
    let mut data = f.level2.flatten_all()?.to_vec1::<f32>()?;
    for ch in 0..c {
        data[ch * h * w + y * w + x] += 3.0 + ch as f32;
    }
    Ok(Features {
        level2: Tensor::from_vec(data, (b, c, h, w), &Device::Cpu)?,
        ..f.clone()
    })
}

#[test]
fn support_branch_gives_background_keys_zero_weight() -> Result<()> {
    let cfg = small(Branches::SupportOnly);
    let (_, m) = head(&cfg)?;
    let enc = &m
        .cross_encoding()
        .expect("cross")
        .levels()
        .next()
        .unwrap()
        .1;
    let (q, s) = (features(&cfg, 1, 1.0)?, features(&cfg, 1, 2.0)?);
    let g = cfg.level_grid(2); // 8
    let mask = block_mask(1, g, 2, 6)?; // foreground rows/cols 2..6 at the level's own grid
    let base = enc.forward(
        &enc.encode_query(&q.level2)?,
        &enc.encode_support(&s.level2, &mask)?,
    )?;
    // Change the support token at background position (0, 0): as a key it is masked, so every other
    // output position must stay bit-identical (position (0,0) itself changes through its own S_q row).
    let s2 = perturb_level2(&s, 0, 0)?;
    let out = enc.forward(
        &enc.encode_query(&q.level2)?,
        &enc.encode_support(&s2.level2, &mask)?,
    )?;
    let diff = (out - &base)?.abs()?.flatten_from(2)?.to_vec3::<f32>()?;
    for (pos, _) in diff[0][0].iter().enumerate() {
        let worst = (0..D_MODEL).map(|c| diff[0][c][pos]).fold(0f32, f32::max);
        if pos == 0 {
            assert!(worst > 0.0, "the perturbed position's own row must change");
        } else {
            assert_eq!(worst, 0.0, "position {pos} changed by {worst}");
        }
    }
    // The same change at a foreground position (3, 3) must reach other positions.
    let s3 = perturb_level2(&s, 3, 3)?;
    let out = enc.forward(
        &enc.encode_query(&q.level2)?,
        &enc.encode_support(&s3.level2, &mask)?,
    )?;
    assert!(max_abs_diff(&out.narrow(3, 7, 1)?, &base.narrow(3, 7, 1)?)? > 0.0);
    Ok(())
}

/// Concatenate two batches of features.
fn cat_features(a: &Features, b: &Features) -> Result<Features> {
    Ok(Features {
        level2: Tensor::cat(&[&a.level2, &b.level2], 0)?,
        level3: Tensor::cat(&[&a.level3, &b.level3], 0)?,
        level4: Tensor::cat(&[&a.level4, &b.level4], 0)?,
    })
}

#[test]
fn a_batch_of_episodes_gives_each_episodes_own_logits() -> Result<()> {
    // Each support image attends to its own foreground keys, so a batch whose masks differ must
    // give the logits of its episodes run one at a time.
    let cfg = small(Branches::Both);
    let (_, m) = head(&cfg)?;
    let s = cfg.image_size;
    let (q0, q1) = (features(&cfg, 1, 1.0)?, features(&cfg, 1, 3.0)?);
    let (s0, s1) = (features(&cfg, 1, 2.0)?, features(&cfg, 1, 4.0)?);
    let (m0, m1) = (block_mask(1, s, 8, 40)?, block_mask(1, s, 20, 28)?);
    let one = |q: &Features, f: &Features, mask: &Tensor| {
        m.forward(q, &[(f.clone(), mask.clone())], Mode::Eval)
    };
    let both = m.forward(
        &cat_features(&q0, &q1)?,
        &[(cat_features(&s0, &s1)?, Tensor::cat(&[&m0, &m1], 0)?)],
        Mode::Eval,
    )?;
    let singles = Tensor::cat(&[one(&q0, &s0, &m0)?, one(&q1, &s1, &m1)?], 0)?;
    let d = max_abs_diff(&both, &singles)?;
    assert!(d < 1e-4, "batched and single episodes differ by {d}");
    Ok(())
}

/// The query branch of `cfg`'s first level: changing support tokens at background positions
/// leaves its output bit-identical; changing one at a foreground position does not.
fn assert_query_branch_ignores_background_support(cfg: &MceConfig) -> Result<()> {
    let (_, m) = head(cfg)?;
    let enc = &m
        .cross_encoding()
        .expect("cross")
        .levels()
        .next()
        .unwrap()
        .1;
    let (q, s) = (features(cfg, 1, 1.0)?, features(cfg, 1, 2.0)?);
    let mask = block_mask(1, cfg.level_grid(2), 2, 6)?;
    let qt = enc.encode_query(&q.level2)?;
    let base = enc.forward(&qt, &enc.encode_support(&s.level2, &mask)?)?;
    let mut s_bg = s.clone();
    for (y, x) in [(0, 0), (7, 7), (1, 5), (6, 0)] {
        s_bg = perturb_level2(&s_bg, y, x)?;
    }
    let out = enc.forward(&qt, &enc.encode_support(&s_bg.level2, &mask)?)?;
    assert_eq!(max_abs_diff(&out, &base)?, 0.0);
    let s_fg = perturb_level2(&s, 4, 4)?;
    let out = enc.forward(&qt, &enc.encode_support(&s_fg.level2, &mask)?)?;
    assert!(max_abs_diff(&out, &base)? > 1e-6);
    Ok(())
}

#[test]
fn query_branch_ignores_background_support_values() -> Result<()> {
    assert_query_branch_ignores_background_support(&small(Branches::QueryOnly))
}

/// The conventional (ablation) query branch attends to support keys: background keys get zero
/// weight, so background support tokens cannot reach the output either.
#[test]
fn conventional_query_branch_ignores_background_support() -> Result<()> {
    let mut cfg = small(Branches::QueryOnly);
    cfg.paper_mut().unwrap().attention = Attention::Conventional;
    assert_query_branch_ignores_background_support(&cfg)
}

#[test]
fn empty_and_tiny_masks_give_finite_outputs() -> Result<()> {
    let cfg = small(Branches::Both);
    let (_, m) = head(&cfg)?;
    let q = features(&cfg, 1, 1.0)?;
    let s = features(&cfg, 1, 2.0)?;
    let s_img = cfg.image_size;
    for mask in [
        Tensor::zeros((1, 1, s_img, s_img), DType::F32, &Device::Cpu)?, // empty
        block_mask(1, s_img, 30, 31)?,                                  // one pixel
    ] {
        let logits = m.forward(&q, &[(s.clone(), mask)], Mode::Eval)?;
        assert_eq!(logits.dims(), &[1, 2, s_img, s_img]);
        let finite = logits
            .flatten_all()?
            .to_vec1::<f32>()?
            .iter()
            .all(|v| v.is_finite());
        assert!(finite, "non-finite logits");
    }
    Ok(())
}

#[test]
fn k_shot_decoder_input_is_the_average_of_single_shots() -> Result<()> {
    let cfg = small(Branches::Both);
    let (_, m) = head(&cfg)?;
    let q = m.encode_query(&features(&cfg, 2, 1.0)?, Mode::Eval)?;
    let shots = (0..3)
        .map(|k| {
            let mask = block_mask(2, cfg.image_size, 8 + 4 * k, 40)?;
            m.encode_support(&features(&cfg, 2, 5.0 + k as f32)?, &mask, Mode::Eval)
        })
        .collect::<Result<Vec<_>>>()?;
    let joint = m.decoder_input(&q, &shots)?.tensor()?;
    let singles = shots
        .iter()
        .map(|s| m.decoder_input(&q, std::slice::from_ref(s))?.tensor())
        .collect::<Result<Vec<_>>>()?;
    let mean = ((&singles[0] + &singles[1])? + &singles[2])? / 3.0;
    assert!(max_abs_diff(&joint, &mean?)? < 1e-5);
    // and the shots do differ, so the test would catch using only the first one
    assert!(max_abs_diff(&singles[0], &singles[2])? > 1e-3);
    Ok(())
}

/// A batch of two episodes: the query encoding and two support shots with different masks.
fn two_shot_episodes(cfg: &MceConfig, m: &Mce) -> Result<(QueryEncoding, Vec<SupportEncoding>)> {
    let q = m.encode_query(&features(cfg, 2, 1.0)?, Mode::Eval)?;
    let shots = (0..2)
        .map(|k| {
            let mask = block_mask(2, cfg.image_size, 8 + 8 * k, 40)?;
            m.encode_support(&features(cfg, 2, 5.0 + k as f32)?, &mask, Mode::Eval)
        })
        .collect::<Result<Vec<_>>>()?;
    Ok((q, shots))
}

#[test]
fn matching_head_averages_a_sim_and_matches_priors_over_all_shots() -> Result<()> {
    let cfg = small_matching();
    let (_, m) = head(&cfg)?;
    let (q, shots) = two_shot_episodes(&cfg, &m)?;
    let joint = m.decoder_input(&q, &shots)?;
    assert_eq!(joint.tensor()?.dim(1)?, cfg.decoder_in());
    let priors = |x: &mce_core::model::decoder::DecoderInput| -> Result<Tensor> {
        let p = x.priors.as_ref().expect("priors");
        Tensor::cat(&[&p.levels, &p.joint], 1)
    };
    let singles = shots
        .iter()
        .map(|s| m.decoder_input(&q, std::slice::from_ref(s)))
        .collect::<Result<Vec<_>>>()?;
    // A_sim is averaged; the prior is not the average of per-shot priors (a max over the union
    // of positions), and never below either shot's foreground evidence.
    let sim = |x: &mce_core::model::decoder::DecoderInput| x.similarity.clone().expect("A_sim");
    let mean_sim = ((sim(&singles[0]) + sim(&singles[1]))? / 2.0)?;
    assert!(max_abs_diff(&sim(&joint), &mean_sim)? < 1e-5);
    let mean_prior = ((priors(&singles[0])? + priors(&singles[1])?)? / 2.0)?;
    assert!(max_abs_diff(&priors(&joint)?, &mean_prior)? > 1e-3);
    let p = priors(&joint)?.flatten_all()?.to_vec1::<f32>()?;
    assert!(p.iter().all(|v| v.is_finite() && (-2.0..=2.0).contains(v)));
    Ok(())
}

fn check_shapes(cfg: &MceConfig, shots: &[usize]) -> Result<()> {
    let vm = VarMap::new();
    Mce::new(cfg, VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu))?;
    let m = Mce::frozen(cfg, &vm)?;
    let q = m.encode_query(&features(cfg, 1, 1.0)?, Mode::Eval)?;
    let s = cfg.image_size;
    let g = cfg.grid();
    let mut encoded = Vec::new();
    for k in 0..*shots.iter().max().unwrap() {
        let mask = block_mask(1, s, s / 4, s / 2 + k)?;
        encoded.push(m.encode_support(&features(cfg, 1, 3.0 + k as f32)?, &mask, Mode::Eval)?);
    }
    for &k in shots {
        let x = m.decoder_input(&q, &encoded[..k])?;
        assert_eq!(x.tensor()?.dims(), &[1, cfg.decoder_in(), g, g], "K={k}");
        let logits = m.decode_input(&x)?;
        assert_eq!(logits.dims(), &[1, 2, g, g], "K={k}");
    }
    let full = mce_core::ops::resize_bilinear(&m.decode_grid(&q, &encoded[..1])?, s, s)?;
    assert_eq!(full.dims(), &[1, 2, s, s]);
    Ok(())
}

#[test]
fn shapes_edge_preset_k_1_2_5() -> Result<()> {
    check_shapes(&MceConfig::edge_lite0(), &[1, 2, 5])?;
    let agnostic = MceConfig::edge_lite0().with_head(HeadKind::Matching);
    assert_eq!(agnostic.decoder_in(), 5); // A_sim + 3 level priors + the joint prior
    check_shapes(&agnostic, &[1, 5])?;
    // only class-agnostic layers exist: no feature reduction, no cross-encoding
    let vm = VarMap::new();
    Mce::new(
        &agnostic,
        VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu),
    )?;
    let names: Vec<String> = vm.data().lock().unwrap().keys().cloned().collect();
    assert!(names.iter().all(|n| n.starts_with("decoder.")), "{names:?}");
    assert!(names.iter().any(|n| n == "decoder.prior_skip.weight"));
    Ok(())
}

#[test]
fn shapes_paper_preset_k_1_2_5() -> Result<()> {
    let cfg = MceConfig::paper_resnet50();
    assert_eq!(cfg.grid(), 60);
    check_shapes(&cfg, &[1, 2, 5])
}

/// A fresh matching head is the nearest-neighbour rule: its fg − bg logit is exactly
/// 6 · (the joint prior), so `fg > bg` wherever that prior is positive.
#[test]
fn matching_head_starts_as_the_matching_rule() -> Result<()> {
    let cfg = small_matching();
    let (_, m) = head(&cfg)?;
    let q = m.encode_query(&features(&cfg, 2, 1.0)?, Mode::Eval)?;
    let mask = block_mask(2, cfg.image_size, 8, 40)?;
    let shot = m.encode_support(&features(&cfg, 2, 5.0)?, &mask, Mode::Eval)?;
    let x = m.decoder_input(&q, std::slice::from_ref(&shot))?;
    let logits = m.decode_grid(&q, std::slice::from_ref(&shot))?;
    let margin = (logits.narrow(1, 1, 1)? - logits.narrow(1, 0, 1)?)?;
    let expected = (&x.priors.as_ref().expect("priors").joint * 6.0)?;
    assert!(max_abs_diff(&margin, &expected)? < 1e-5);
    assert!(expected.abs()?.max_all()?.to_scalar::<f32>()? > 1e-2);
    // and the joint prior is the last decoder-input channel, as the checkpoints were trained
    let c = cfg.decoder_in();
    assert!(max_abs_diff(&x.tensor()?.narrow(1, c - 1, 1)?, &(expected / 6.0)?)? < 1e-6);
    Ok(())
}

/// MCE with matching: a fresh head is the nearest-neighbour rule (fg − bg = 6 · joint prior),
/// its decoder sees every part of the paper head plus the priors, and its priors are the matching
/// head's, matched over all K shots at once.
#[test]
fn cross_matching_head_is_the_paper_head_plus_the_rule() -> Result<()> {
    let cfg = small(Branches::Both).with_head(HeadKind::CrossMatching);
    let (vm, m) = head(&cfg)?;
    let names: Vec<String> = vm.data().lock().unwrap().keys().cloned().collect();
    for want in [
        "down_query.0.weight",
        "cross.merge.weight",
        "decoder.prior_skip.weight",
    ] {
        assert!(names.iter().any(|n| n == want), "{want} not in {names:?}");
    }
    let s = cfg.image_size;
    let q_feats = features(&cfg, 2, 1.0)?;
    let shots = [
        (features(&cfg, 2, 5.0)?, block_mask(2, s, 8, 40)?),
        (features(&cfg, 2, 9.0)?, block_mask(2, s, 24, 56)?),
    ];
    let q = m.encode_query(&q_feats, Mode::Eval)?;
    let enc = shots
        .iter()
        .map(|(f, mask)| m.encode_support(f, mask, Mode::Eval))
        .collect::<Result<Vec<_>>>()?;
    let x = m.decoder_input(&q, &enc)?;
    assert!(x.query.is_some() && x.prototype.is_some() && x.cross.is_some());
    assert!(x.similarity.is_some());
    assert_eq!(x.tensor()?.dim(1)?, cfg.decoder_in());
    // the priors are exactly the matching head's on the same features and shots
    let matching = small_matching();
    let (_, mm) = head(&matching)?;
    let mq = mm.encode_query(&q_feats, Mode::Eval)?;
    let menc = shots
        .iter()
        .map(|(f, mask)| mm.encode_support(f, mask, Mode::Eval))
        .collect::<Result<Vec<_>>>()?;
    let (p, mp) = (
        x.priors.as_ref().unwrap(),
        mm.decoder_input(&mq, &menc)?.priors.unwrap(),
    );
    assert!(max_abs_diff(&p.joint, &mp.joint)? < 1e-6);
    assert!(max_abs_diff(&p.levels, &mp.levels)? < 1e-6);
    let logits = m.decode_input(&x)?;
    let margin = (logits.narrow(1, 1, 1)? - logits.narrow(1, 0, 1)?)?;
    let expected = (&p.joint * 6.0)?;
    assert!(max_abs_diff(&margin, &expected)? < 1e-5);
    assert!(expected.abs()?.max_all()?.to_scalar::<f32>()? > 1e-2);
    Ok(())
}

#[test]
fn the_decoder_by_parts_matches_the_concatenated_input() -> Result<()> {
    // On the CPU the first layer runs part by part (f_Q's products once per query, V_s as a
    // vector): it must give the logits of the plain decoder on X = cat(parts), for every head.
    for cfg in [
        small(Branches::Both),
        small(Branches::Both).with_head(HeadKind::CrossMatching),
        small_matching(),
    ] {
        let (_, m) = head(&cfg)?;
        let (q, shots) = two_shot_episodes(&cfg, &m)?;
        let x = m.decoder_input(&q, &shots)?;
        let decoder = match m.head() {
            Head::Paper(h) => h.decoder(),
            Head::CrossMatching(h) => h.mce().decoder(),
            Head::Matching(h) => h.decoder(),
        };
        let plain = decoder.forward(&x.tensor()?)?;
        let by_parts = decoder.forward_input(&x)?;
        let uncached = decoder.forward_input(&DecoderInput {
            query_products: None,
            ..x.clone()
        })?;
        let scale = plain.abs()?.max_all()?.to_scalar::<f32>()?.max(1e-6);
        for (name, y) in [("cached", &by_parts), ("uncached", &uncached)] {
            let d = max_abs_diff(&plain, y)? / scale;
            assert!(d < 1e-5, "{}: {name} differs by {d}", cfg.head.kind());
        }
        assert_eq!(x.query.is_some(), x.query_products.is_some());
    }
    Ok(())
}
