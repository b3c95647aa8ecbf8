//! Reproducible initialisation of a trainable head.
//!
//! candle's CPU random generator cannot be seeded, so a `VarMap` initialised through it differs on
//! every run. [`seeded_varbuilder`] wraps a `VarMap` in a `VarBuilder` backend that honours the same
//! init hints (constant, normal, uniform, Kaiming) but draws each variable from a generator seeded by
//! `(seed, variable name)`: the same seed gives the same weights, whatever the creation order.
//!
//! [`InitScheme`] chooses how the Kaiming hints of conv and linear weights are read: candle's own
//! (normal, std `√2/√fan_in`), or PyTorch's default for `nn.Conv2d` / `nn.Linear`
//! (`kaiming_uniform_(a = √5)`: uniform on `±1/√fan_in`, a std √6 ≈ 2.45 times smaller).
//! Biases (uniform `±1/√fan_in`) and constants are the same in both.

use crate::ops::splitmix64;
use candle_core::{DType, Device, Result, Shape, Tensor, Var};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{Init, VarBuilder, VarMap};
use serde::{Deserialize, Serialize};

/// How the weights of conv and linear layers are drawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InitScheme {
    /// candle's hints as given: Kaiming normal, gain √2 (`std = √(2 / fan_in)`).
    #[default]
    Candle,
    /// PyTorch's default: uniform on `±1/√fan_in`.
    Torch,
}

impl InitScheme {
    /// The init a weight with hint `init` gets under this scheme.
    fn apply(self, init: Init) -> Init {
        match (self, init) {
            (InitScheme::Torch, Init::Kaiming { fan, .. }) => Init::Kaiming {
                dist: candle_nn::init::NormalOrUniform::Uniform,
                fan,
                // uniform bound √3 · gain / √fan_in = 1/√fan_in
                non_linearity: candle_nn::init::NonLinearity::ExplicitGain(1.0 / 3f64.sqrt()),
            },
            (_, init) => init,
        }
    }
}

struct Seeded {
    varmap: VarMap,
    seed: u64,
    scheme: InitScheme,
}

/// A stream of uniform numbers in [0, 1) from SplitMix64.
struct Stream(u64);

impl Stream {
    fn uniform(&mut self) -> f64 {
        self.0 = splitmix64(self.0);
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Standard normal (Box–Muller).
    fn normal(&mut self) -> f64 {
        let u = self.uniform().max(f64::MIN_POSITIVE);
        let v = self.uniform();
        (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
    }
}

fn name_hash(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

fn values(shape: &Shape, init: Init, stream: &mut Stream) -> Vec<f32> {
    let n = shape.elem_count();
    let mut draw = |f: &mut dyn FnMut(&mut Stream) -> f64| -> Vec<f32> {
        (0..n).map(|_| f(stream) as f32).collect()
    };
    match init {
        Init::Const(c) => vec![c as f32; n],
        Init::Randn { mean, stdev } => draw(&mut |s| mean + stdev * s.normal()),
        Init::Uniform { lo, up } => draw(&mut |s| lo + (up - lo) * s.uniform()),
        Init::Kaiming {
            dist,
            fan,
            non_linearity,
        } => {
            let std = non_linearity.gain() / (fan.for_shape(shape) as f64).sqrt();
            match dist {
                candle_nn::init::NormalOrUniform::Normal => draw(&mut |s| std * s.normal()),
                candle_nn::init::NormalOrUniform::Uniform => {
                    let bound = 3f64.sqrt() * std;
                    draw(&mut |s| bound * (2.0 * s.uniform() - 1.0))
                }
            }
        }
    }
}

impl SimpleBackend for Seeded {
    fn get(&self, s: Shape, name: &str, h: Init, dtype: DType, dev: &Device) -> Result<Tensor> {
        let mut data = self.varmap.data().lock().expect("varmap lock");
        if let Some(var) = data.get(name) {
            if var.shape() != &s {
                candle_core::bail!(
                    "variable `{name}` exists with shape {:?}, asked for {s:?}",
                    var.shape()
                )
            }
            return Ok(var.as_tensor().clone());
        }
        let mut stream = Stream(self.seed ^ name_hash(name));
        let init = self.scheme.apply(h);
        let t = Tensor::from_vec(values(&s, init, &mut stream), s, dev)?.to_dtype(dtype)?;
        let var = Var::from_tensor(&t)?;
        let out = var.as_tensor().clone();
        data.insert(name.to_string(), var);
        Ok(out)
    }

    fn get_unchecked(&self, name: &str, _dtype: DType, _dev: &Device) -> Result<Tensor> {
        candle_core::bail!("`{name}`: a seeded VarMap creates variables with a shape and an init")
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.varmap
            .data()
            .lock()
            .expect("varmap lock")
            .contains_key(name)
    }
}

/// A `VarBuilder` that creates its variables in `varmap`, reproducibly from `seed` (candle's init).
pub fn seeded_varbuilder(
    varmap: &VarMap,
    seed: u64,
    dtype: DType,
    device: &Device,
) -> VarBuilder<'static> {
    seeded_varbuilder_with(varmap, seed, InitScheme::Candle, dtype, device)
}

/// [`seeded_varbuilder`] with the weights drawn by `scheme`.
pub fn seeded_varbuilder_with(
    varmap: &VarMap,
    seed: u64,
    scheme: InitScheme,
    dtype: DType,
    device: &Device,
) -> VarBuilder<'static> {
    let backend: Box<dyn SimpleBackend> = Box::new(Seeded {
        varmap: varmap.clone(),
        seed,
        scheme,
    });
    VarBuilder::from_backend(backend, dtype, device.clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Mce, MceConfig};

    fn weights(seed: u64) -> Vec<(String, Vec<f32>)> {
        weights_with(seed, InitScheme::Candle)
    }

    fn weights_with(seed: u64, scheme: InitScheme) -> Vec<(String, Vec<f32>)> {
        let vm = VarMap::new();
        let cfg = MceConfig {
            image_size: 64,
            ..MceConfig::edge_lite0()
        };
        let vb = seeded_varbuilder_with(&vm, seed, scheme, DType::F32, &Device::Cpu);
        Mce::new(&cfg, vb).unwrap();
        let mut v: Vec<_> = vm
            .data()
            .lock()
            .unwrap()
            .iter()
            .map(|(k, t)| {
                (
                    k.clone(),
                    t.as_tensor().flatten_all().unwrap().to_vec1().unwrap(),
                )
            })
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    #[test]
    fn same_seed_same_weights_other_seed_other_weights() {
        let (a, b, c) = (weights(1), weights(1), weights(2));
        assert_eq!(a, b);
        assert_ne!(a, c);
        // Kaiming-normal conv weights: fan_in = 152 for down_query (40 + 112 channels), gain √2
        let w = &a
            .iter()
            .find(|(k, _)| k == "down_query.0.weight")
            .unwrap()
            .1;
        let var = w.iter().map(|x| x * x).sum::<f32>() / w.len() as f32;
        let expect = 2.0 / 152.0;
        assert!(
            (var / expect - 1.0).abs() < 0.15,
            "variance {var}, expected {expect}"
        );
        // LayerNorm weights are constant 1
        let ln = &a
            .iter()
            .find(|(k, _)| k.ends_with("query_norm.weight"))
            .unwrap()
            .1;
        assert!(ln.iter().all(|&x| x == 1.0));
    }

    fn named<'a>(w: &'a [(String, Vec<f32>)], name: &str) -> &'a [f32] {
        &w.iter().find(|(k, _)| k.ends_with(name)).unwrap().1
    }

    #[test]
    fn torch_scheme_draws_weights_uniform_on_one_over_sqrt_fan_in() {
        let w = weights_with(3, InitScheme::Torch);
        // down_query: fan_in 152; a linear of the cross-encoding: fan_in d_model = 128
        for (name, fan_in) in [("down_query.0.weight", 152.0), ("query_q.weight", 128.0)] {
            let v = named(&w, name);
            let bound = 1.0 / f32::sqrt(fan_in);
            let max = v.iter().fold(0f32, |m, x| m.max(x.abs()));
            assert!(
                max <= bound && max > 0.95 * bound,
                "{name}: max {max}, bound {bound}"
            );
            let var = v.iter().map(|x| x * x).sum::<f32>() / v.len() as f32;
            let expect = bound * bound / 3.0; // variance of U(-b, b)
            assert!((var / expect - 1.0).abs() < 0.15, "{name}: variance {var}");
        }
        // biases and LayerNorm constants are drawn the same under both schemes
        let candle = weights_with(3, InitScheme::Candle);
        assert_eq!(named(&w, "down_query.0.weight").len(), 152 * 128);
        assert_eq!(
            named(&w, "query_norm.weight"),
            named(&candle, "query_norm.weight")
        );
        assert_eq!(
            named(&w, "cross.0.proj.bias"),
            named(&candle, "cross.0.proj.bias")
        );
    }
}
