//! Training-readiness: one episode's loss backward gives every trainable head variable a finite,
//! non-zero gradient, and none reaches the frozen backbone (even when its weights are variables).

use candle_core::{DType, Device, Result, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use mce_core::model::init::{seeded_varbuilder_with, InitScheme};
use mce_core::model::loss::cross_entropy_ignore;
use mce_core::model::Mode;
use mce_core::{AnyBackbone, Backbone, Features, Mce, MceConfig};

fn block(s: usize, lo: usize, hi: usize) -> Vec<f32> {
    (0..s * s)
        .map(|k| {
            f32::from(u8::from(
                (lo..hi).contains(&(k / s)) && (lo..hi).contains(&(k % s)),
            ))
        })
        .collect()
}

#[test]
fn every_head_variable_gets_a_gradient_and_the_backbone_none() -> Result<()> {
    let dev = Device::Cpu;
    let cfg = MceConfig {
        image_size: 128,
        ..MceConfig::edge_lite0()
    };
    let s = cfg.image_size;

    // The real backbone, with its weights as variables.
    let path = mce_core::inference::lite0_weights_path();
    let backbone_vars = VarMap::new();
    {
        let mut data = backbone_vars.data().lock().unwrap();
        for (name, t) in candle_core::safetensors::load(&path, &dev)? {
            data.insert(name, Var::from_tensor(&t)?);
        }
    }
    let backbone = AnyBackbone::new(
        cfg.backbone,
        VarBuilder::from_varmap(&backbone_vars, DType::F32, &dev),
    )?;

    let head_vars = VarMap::new();
    let head = Mce::new(&cfg, VarBuilder::from_varmap(&head_vars, DType::F32, &dev))?;

    let images = Tensor::randn(0f32, 1f32, (2, 3, s, s), &dev)?;
    let query = backbone.features(&images.narrow(0, 0, 1)?)?;
    let support = backbone.features(&images.narrow(0, 1, 1)?)?;
    let mask = Tensor::from_vec(block(s, 32, 96), (1, 1, s, s), &dev)?;
    let labels = Tensor::from_vec(block(s, 40, 100), (1, s, s), &dev)?.to_dtype(DType::U8)?;

    let logits = head.forward(&query, &[(support, mask)], Mode::Train { seed: 1 })?;
    let loss = cross_entropy_ignore(&logits, &labels)?;
    let grads = loss.backward()?;

    let vars = head_vars.data().lock().unwrap();
    assert!(vars.len() > 40, "only {} head variables", vars.len());
    let mut names: Vec<_> = vars.keys().collect();
    names.sort();
    for name in names {
        let g = grads
            .get(vars[name].as_tensor())
            .unwrap_or_else(|| panic!("no gradient for `{name}`"));
        let v = g.flatten_all()?.to_vec1::<f32>()?;
        assert!(
            v.iter().all(|x| x.is_finite()),
            "non-finite gradient in `{name}`"
        );
        assert!(v.iter().any(|x| *x != 0.0), "all-zero gradient in `{name}`");
    }
    for (name, var) in backbone_vars.data().lock().unwrap().iter() {
        assert!(
            grads.get(var.as_tensor()).is_none(),
            "backbone `{name}` got a gradient"
        );
    }
    Ok(())
}

/// The loss of one fixed train-mode pass (dropout drawn from a fixed seed).
fn episode_loss(
    head: &Mce,
    query: &Features,
    shot: &(Features, Tensor),
    labels: &Tensor,
) -> Result<Tensor> {
    let logits = head.forward(query, std::slice::from_ref(shot), Mode::Train { seed: 3 })?;
    cross_entropy_ignore(&logits, labels)
}

/// Each head variable's gradient against central differences of the loss along it: the
/// directional derivative along the gradient's own direction must equal its squared norm (to 10 %:
/// f32, and ReLU kinks within the step). Checks the CPU kernels' backward passes (shifted sums,
/// softmax) in the composition the trainer runs, on the trainer's seeded variables.
#[test]
fn head_gradients_match_finite_differences() -> Result<()> {
    let dev = Device::Cpu;
    let cfg = MceConfig {
        image_size: 64,
        ..MceConfig::edge_lite0()
    };
    let s = cfg.image_size;
    let ch = cfg.backbone.channels();
    let level = |i: usize, seed: f32| -> Result<Tensor> {
        let g = cfg.level_grid(i + 2);
        Tensor::rand(0f32, 1f32, (1, ch[i], g, g), &dev)?.affine(1.0, f64::from(seed))
    };
    let feats = |seed: f32| -> Result<Features> {
        Ok(Features {
            level2: level(0, seed)?,
            level3: level(1, seed)?,
            level4: level(2, seed)?,
        })
    };
    let query = feats(0.0)?;
    let shot = (
        feats(0.1)?,
        Tensor::from_vec(block(s, 16, 48), (1, 1, s, s), &dev)?,
    );
    let labels = Tensor::from_vec(block(s, 20, 50), (1, s, s), &dev)?.to_dtype(DType::U8)?;
    let vars = VarMap::new();
    let vb = seeded_varbuilder_with(&vars, 0, InitScheme::Torch, DType::F32, &dev);
    let head = Mce::new(&cfg, vb)?;
    let grads = episode_loss(&head, &query, &shot, &labels)?.backward()?;
    let data = vars.data().lock().unwrap();
    let mut names: Vec<_> = data.keys().cloned().collect();
    names.sort();
    let mut bad = vec![];
    for name in names {
        let var = &data[&name];
        let g = grads.get(var.as_tensor()).expect("gradient").clone();
        let norm = g.sqr()?.sum_all()?.sqrt()?.to_scalar::<f32>()?;
        if norm < 1e-4 {
            continue;
        }
        let w0 = var.as_tensor().copy()?;
        let eps = 1e-2 / norm as f64;
        let at = |sign: f64| -> Result<f32> {
            var.set(&(&w0 + (&g * (sign * eps))?)?)?;
            episode_loss(&head, &query, &shot, &labels)?.to_scalar::<f32>()
        };
        let fd = (at(1.0)? - at(-1.0)?) / (2.0 * eps as f32);
        var.set(&w0)?;
        let want = norm * norm;
        if (fd - want).abs() > 0.1 * want + 1e-4 {
            bad.push(format!("{name}: analytic {want:.4e}, numeric {fd:.4e}"));
        }
    }
    assert!(bad.is_empty(), "gradients off:\n{}", bad.join("\n"));
    Ok(())
}
