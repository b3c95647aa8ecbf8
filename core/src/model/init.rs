//! Reproducible initialisation of a trainable head.
//!
//! candle's CPU random generator cannot be seeded, so a `VarMap` initialised through it differs on
//! every run. [`seeded_varbuilder`] wraps a `VarMap` in a `VarBuilder` backend that honours the same
//! init hints (constant, normal, uniform, Kaiming) but draws each variable from a generator seeded by
//! `(seed, variable name)`: the same seed gives the same weights, whatever the creation order.

use crate::ops::splitmix64;
use candle_core::{DType, Device, Result, Shape, Tensor, Var};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{Init, VarBuilder, VarMap};

struct Seeded {
    varmap: VarMap,
    seed: u64,
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
        let t = Tensor::from_vec(values(&s, h, &mut stream), s, dev)?.to_dtype(dtype)?;
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

/// A `VarBuilder` that creates its variables in `varmap`, reproducibly from `seed`.
pub fn seeded_varbuilder(
    varmap: &VarMap,
    seed: u64,
    dtype: DType,
    device: &Device,
) -> VarBuilder<'static> {
    let backend: Box<dyn SimpleBackend> = Box::new(Seeded {
        varmap: varmap.clone(),
        seed,
    });
    VarBuilder::from_backend(backend, dtype, device.clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Mce, MceConfig};

    fn weights(seed: u64) -> Vec<(String, Vec<f32>)> {
        let vm = VarMap::new();
        let cfg = MceConfig {
            image_size: 64,
            ..MceConfig::edge_lite0()
        };
        Mce::new(&cfg, seeded_varbuilder(&vm, seed, DType::F32, &Device::Cpu)).unwrap();
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
}
