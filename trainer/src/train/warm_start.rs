//! Warm start (`train --from`, without `--qat`): a new head starts from the weights of a trained checkpoint,
//! possibly of another head kind, instead of from the seed alone.
//!
//! ```text
//! for each variable v of the new head (name order):
//!   file has v, same shape            → copy
//!   file has v, narrower in dim 1     → copy into the leading input channels, zeros after
//!   file lacks v                      → keep the seeded initialisation
//! a head tensor of the file with no variable, or any other shape → error naming the file
//! ```
//!
//! The widening rule is what makes a trained `paper` head the start of a `cross_matching` head:
//! the latter's decoder reads four more input channels (the nearest-neighbour priors) after the
//! paper head's, so with zero weights on them, the copied classifier and the prior skip's own
//! initialisation, the warm-started head computes `paper logits + skip · prior`.

use crate::{Error, Result};
use candle_core::{DType, Tensor};
use candle_nn::VarMap;
use mce_core::checkpoint::{self, CheckpointFile};
use mce_core::MceConfig;

/// What a warm start did, by variable name.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct WarmStart {
    /// Copied as they are.
    pub copied: Vec<String>,
    /// Copied into the leading input channels of a wider variable.
    pub widened: Vec<String>,
    /// Not in the file: seeded initialisation kept.
    pub kept: Vec<String>,
}

/// Initialise `varmap` (the variables of a freshly built head for `model`) from `file`.
pub fn load_into(file: &CheckpointFile, model: &MceConfig, varmap: &VarMap) -> Result<WarmStart> {
    if file.config.backbone != model.backbone {
        return Err(Error::format(
            &file.path,
            format!(
                "cannot start from this checkpoint: its backbone is {:?}, the run's is {:?}",
                file.config.backbone, model.backbone
            ),
        ));
    }
    let vars = varmap.data().lock().expect("varmap lock");
    let mut names: Vec<&String> = vars.keys().collect();
    names.sort();
    let mut done = WarmStart::default();
    for name in names {
        let var = &vars[name];
        let Some(t) = file.tensors.get(name) else {
            done.kept.push(name.clone());
            continue;
        };
        let t = t.to_dtype(DType::F32)?.to_device(var.device())?;
        if t.dims() == var.dims() {
            var.set(&t)?;
            done.copied.push(name.clone());
        } else if let Some(wide) = widen_inputs(&t, var.dims())? {
            var.set(&wide)?;
            done.widened.push(name.clone());
        } else {
            return Err(Error::format(
                &file.path,
                format!(
                    "tensor `{name}` has shape {:?}, the new head's variable {:?} (only the input \
                     channels, dim 1, may grow)",
                    t.dims(),
                    var.dims()
                ),
            ));
        }
    }
    let unused = checkpoint::head_tensors_outside(file, &vars);
    if let Some(name) = unused.first() {
        return Err(Error::format(
            &file.path,
            format!(
                "tensor `{name}` has no place in the new head ({} such)",
                unused.len()
            ),
        ));
    }
    Ok(done)
}

/// `t` widened to `dims` with zeros after its input channels (dim 1), when `dims` differs from
/// `t`'s shape only by a larger dim 1; `None` otherwise.
fn widen_inputs(t: &Tensor, dims: &[usize]) -> Result<Option<Tensor>> {
    let have = t.dims();
    let same_elsewhere = have.len() == dims.len()
        && have.len() >= 2
        && have
            .iter()
            .zip(dims)
            .enumerate()
            .all(|(i, (a, b))| i == 1 || a == b);
    if !same_elsewhere || have[1] >= dims[1] {
        return Ok(None);
    }
    let mut pad = dims.to_vec();
    pad[1] = dims[1] - have[1];
    let zeros = Tensor::zeros(pad, t.dtype(), t.device())?;
    Ok(Some(Tensor::cat(&[t, &zeros], 1)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn widening_keeps_the_old_channels_and_zeros_the_new() {
        let t = Tensor::arange(0f32, 12., &Device::Cpu)
            .unwrap()
            .reshape((2, 3, 2, 1))
            .unwrap();
        let w = widen_inputs(&t, &[2, 5, 2, 1]).unwrap().unwrap();
        assert_eq!(w.dims(), &[2, 5, 2, 1]);
        let w: Vec<f32> = w.flatten_all().unwrap().to_vec1().unwrap();
        #[rustfmt::skip]
        let want = [0., 1., 2., 3., 4., 5., 0., 0., 0., 0.,
                    6., 7., 8., 9., 10., 11., 0., 0., 0., 0.];
        assert_eq!(w, want);
    }

    #[test]
    fn only_the_input_channels_may_grow() {
        let t = Tensor::zeros((2, 3, 3, 3), DType::F32, &Device::Cpu).unwrap();
        assert!(widen_inputs(&t, &[4, 3, 3, 3]).unwrap().is_none()); // outputs
        assert!(widen_inputs(&t, &[2, 2, 3, 3]).unwrap().is_none()); // narrower
        assert!(widen_inputs(&t, &[2, 4, 1, 1]).unwrap().is_none()); // kernel
        assert!(widen_inputs(&t, &[2, 4, 3, 3]).unwrap().is_some());
    }
}
