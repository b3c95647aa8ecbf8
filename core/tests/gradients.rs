//! Training-readiness: one episode's loss backward gives every trainable head variable a finite,
//! non-zero gradient, and none reaches the frozen backbone (even when its weights are variables).

use candle_core::{DType, Device, Result, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use mce_core::model::loss::cross_entropy_ignore;
use mce_core::model::Mode;
use mce_core::{AnyBackbone, Backbone, Mce, MceConfig};

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
