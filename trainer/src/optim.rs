//! SGD with momentum and weight decay (PyTorch semantics), and the poly learning-rate schedule
//! (with an optional linear warm-up).
//!
//! `candle_nn::optim::SGD` has neither momentum nor weight decay. Per variable `p` with gradient `g`:
//!
//! ```text
//! g ← g + wd · p            (L2 weight decay)
//! b ← g                     on the first step,   b ← μ · b + g   afterwards
//! p ← p − lr · b
//! ```
//!
//! The momentum buffers are part of the training state: [`Sgd::state`] / [`Sgd::load_state`] let a
//! resumed run continue bit for bit.

use candle_core::{backprop::GradStore, Result, Tensor, Var};
use candle_nn::Optimizer;
use std::collections::BTreeMap;

/// Hyper-parameters of [`Sgd`].
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SgdConfig {
    pub lr: f64,
    pub momentum: f64,
    pub weight_decay: f64,
}

impl Default for SgdConfig {
    /// The paper's PASCAL setting: lr 0.0025, momentum 0.9, weight decay 1e-4.
    fn default() -> Self {
        Self {
            lr: 0.0025,
            momentum: 0.9,
            weight_decay: 1e-4,
        }
    }
}

/// SGD with momentum and weight decay over named variables.
pub struct Sgd {
    vars: Vec<(String, Var)>,
    buffers: BTreeMap<String, Tensor>,
    config: SgdConfig,
}

impl Sgd {
    /// Optimise `vars` (name, variable), e.g. from a `VarMap`.
    pub fn with_names(mut vars: Vec<(String, Var)>, config: SgdConfig) -> Self {
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        Self {
            vars,
            buffers: BTreeMap::new(),
            config,
        }
    }

    /// All variables of a `VarMap`.
    pub fn from_varmap(varmap: &candle_nn::VarMap, config: SgdConfig) -> Self {
        let vars = varmap
            .data()
            .lock()
            .expect("varmap lock")
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        Self::with_names(vars, config)
    }

    /// The momentum buffers, by variable name (empty before the first step).
    pub fn state(&self) -> &BTreeMap<String, Tensor> {
        &self.buffers
    }

    /// Restore momentum buffers saved by [`Sgd::state`]; unknown names or shapes are an error.
    pub fn load_state(&mut self, buffers: BTreeMap<String, Tensor>) -> Result<()> {
        for (name, t) in &buffers {
            let Some((_, var)) = self.vars.iter().find(|(n, _)| n == name) else {
                candle_core::bail!("optimizer state has unknown variable `{name}`")
            };
            if var.dims() != t.dims() {
                candle_core::bail!(
                    "optimizer state `{name}` has shape {:?}, the variable {:?}",
                    t.dims(),
                    var.dims()
                )
            }
        }
        self.buffers = buffers;
        Ok(())
    }
}

impl Optimizer for Sgd {
    type Config = SgdConfig;

    fn new(vars: Vec<Var>, config: SgdConfig) -> Result<Self> {
        let named = vars
            .into_iter()
            .enumerate()
            .map(|(i, v)| (format!("{i:06}"), v))
            .collect();
        Ok(Self::with_names(named, config))
    }

    fn step(&mut self, grads: &GradStore) -> Result<()> {
        let SgdConfig {
            lr,
            momentum,
            weight_decay,
        } = self.config;
        for (name, var) in &self.vars {
            let Some(g) = grads.get(var.as_tensor()) else {
                continue;
            };
            let g = if weight_decay != 0.0 {
                (g + (var.as_tensor() * weight_decay)?)?
            } else {
                g.clone()
            };
            let b = match self.buffers.get(name) {
                Some(b) if momentum != 0.0 => ((b * momentum)? + g)?,
                _ => g,
            };
            var.set(&(var.as_tensor() - (&b * lr)?)?)?;
            self.buffers.insert(name.clone(), b.detach());
        }
        Ok(())
    }

    fn learning_rate(&self) -> f64 {
        self.config.lr
    }

    fn set_learning_rate(&mut self, lr: f64) {
        self.config.lr = lr;
    }
}

/// Poly schedule with an optional linear warm-up: `lr = base · (1 − step / total)^power` (power 0.9
/// in PFENet/BAM/MCE), times `(step + 1) / warmup` during the first `warmup` steps.
pub fn warmup_poly_lr(base: f64, step: usize, total: usize, power: f64, warmup: usize) -> f64 {
    let ramp = if step < warmup {
        (step + 1) as f64 / warmup as f64
    } else {
        1.0
    };
    ramp * poly_lr(base, step, total, power)
}

/// Poly schedule: `lr = base · (1 − step / total)^power` (power 0.9 in PFENet/BAM/MCE).
pub fn poly_lr(base: f64, step: usize, total: usize, power: f64) -> f64 {
    if total == 0 {
        return base;
    }
    let frac = (step.min(total) as f64) / total as f64;
    base * (1.0 - frac).powf(power)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn step_on_square(opt: &mut Sgd, p: &Var) -> Result<()> {
        let loss = p.as_tensor().sqr()?.sum_all()?; // d/dp p² = 2p
        opt.step(&loss.backward()?)
    }

    #[test]
    fn matches_hand_computed_momentum_and_decay_steps() -> Result<()> {
        let p = Var::new(&[1f32], &Device::Cpu)?;
        let cfg = SgdConfig {
            lr: 0.1,
            momentum: 0.9,
            weight_decay: 0.01,
        };
        let mut opt = Sgd::with_names(vec![("p".into(), p.clone())], cfg);
        step_on_square(&mut opt, &p)?;
        // g = 2 + 0.01 = 2.01, b = 2.01, p = 1 - 0.201
        let v = p.as_tensor().to_vec1::<f32>()?[0];
        assert!((v - 0.799).abs() < 1e-6, "{v}");
        step_on_square(&mut opt, &p)?;
        // g = 1.598 + 0.00799 = 1.60599, b = 1.809 + 1.60599 = 3.41499, p = 0.799 - 0.341499
        let v = p.as_tensor().to_vec1::<f32>()?[0];
        assert!((v - 0.457501).abs() < 1e-5, "{v}");
        Ok(())
    }

    #[test]
    fn restored_state_continues_identically() -> Result<()> {
        let cfg = SgdConfig {
            lr: 0.05,
            momentum: 0.9,
            weight_decay: 1e-4,
        };
        let a = Var::new(&[0.7f32, -1.3], &Device::Cpu)?;
        let mut opt_a = Sgd::with_names(vec![("w".into(), a.clone())], cfg);
        step_on_square(&mut opt_a, &a)?;
        // snapshot, then continue the original, a copy with restored state, and one without
        let snapshot = a.as_tensor().copy()?;
        let b = Var::from_tensor(&snapshot)?;
        let mut opt_b = Sgd::with_names(vec![("w".into(), b.clone())], cfg);
        opt_b.load_state(opt_a.state().clone())?;
        let c = Var::from_tensor(&snapshot)?;
        let mut opt_c = Sgd::with_names(vec![("w".into(), c.clone())], cfg);
        for _ in 0..3 {
            step_on_square(&mut opt_a, &a)?;
            step_on_square(&mut opt_b, &b)?;
            step_on_square(&mut opt_c, &c)?;
        }
        let a = a.as_tensor().to_vec1::<f32>()?;
        assert_eq!(a, b.as_tensor().to_vec1::<f32>()?);
        assert_ne!(a, c.as_tensor().to_vec1::<f32>()?);
        Ok(())
    }

    #[test]
    fn poly_schedule() {
        assert_eq!(poly_lr(0.01, 0, 100, 0.9), 0.01);
        assert!((poly_lr(0.01, 50, 100, 0.9) - 0.01 * 0.5f64.powf(0.9)).abs() < 1e-12);
        assert_eq!(poly_lr(0.01, 100, 100, 0.9), 0.0);
        assert!((warmup_poly_lr(0.01, 0, 100, 0.9, 4) - 0.0025).abs() < 1e-12);
        assert_eq!(
            warmup_poly_lr(0.01, 50, 100, 0.9, 4),
            poly_lr(0.01, 50, 100, 0.9)
        );
    }
}
