//! [`QuantVarBuilder`]: a candle `VarBuilder` together with the quantization plan of the model
//! being built, passed explicitly to every constructor (as candle's `quantized_nn` passes its own
//! VarBuilder). A model is exactly what its builder asked for, on whatever thread it is built.
//!
//! A plain `VarBuilder` converts into a builder without a plan (`From`), so float models are built
//! as `Mce::new(&cfg, vb)`; a quantized or observed one as
//! `Mce::new(&cfg, QuantVarBuilder::new(vb, plan))`.

use super::layers::{LayerHook, LayerInfo, QuantPlan};
use candle_core::{Result, Shape, Tensor};
use candle_nn::{Init, VarBuilder};
use std::sync::Arc;

/// A VarBuilder and the plan that decides each conv / linear layer's [`LayerHook`].
#[derive(Clone)]
pub struct QuantVarBuilder<'a> {
    vb: VarBuilder<'a>,
    plan: Option<Arc<dyn QuantPlan>>,
}

impl<'a> QuantVarBuilder<'a> {
    /// Build with `plan` deciding every layer's hook.
    pub fn new(vb: VarBuilder<'a>, plan: Arc<dyn QuantPlan>) -> Self {
        Self {
            vb,
            plan: Some(plan),
        }
    }

    /// The same builder, one name level down (`vb.pp`).
    pub fn pp<S: ToString>(&self, name: S) -> Self {
        Self {
            vb: self.vb.pp(name),
            plan: self.plan.clone(),
        }
    }

    /// The candle VarBuilder at this prefix.
    pub fn vb(&self) -> &VarBuilder<'a> {
        &self.vb
    }

    /// The tensor names' prefix here, which is also the layer's name in plans and artifacts.
    pub fn prefix(&self) -> String {
        self.vb.prefix()
    }

    pub fn get<S: Into<Shape>>(&self, shape: S, name: &str) -> Result<Tensor> {
        self.vb.get(shape, name)
    }

    pub fn get_with_hints<S: Into<Shape>>(
        &self,
        shape: S,
        name: &str,
        init: Init,
    ) -> Result<Tensor> {
        self.vb.get_with_hints(shape, name, init)
    }

    pub fn contains_tensor(&self, name: &str) -> bool {
        self.vb.contains_tensor(name)
    }

    /// The hook the plan gives the layer `info` (none without a plan).
    pub fn hook(&self, info: LayerInfo) -> Result<Option<Arc<LayerHook>>> {
        match &self.plan {
            Some(plan) => Ok(plan.hook(&info)?.map(Arc::new)),
            None => Ok(None),
        }
    }
}

impl<'a> From<VarBuilder<'a>> for QuantVarBuilder<'a> {
    /// A float model: no plan, no hooks.
    fn from(vb: VarBuilder<'a>) -> Self {
        Self { vb, plan: None }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::HeadKind;
    use crate::quant::plan::RecordPlan;
    use crate::{Mce, MceConfig};
    use candle_core::{DType, Device};

    fn layer_names(cfg: &MceConfig, plan: Option<Arc<RecordPlan>>) -> Vec<String> {
        let vm = candle_nn::VarMap::new();
        let vb = VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
        let qvb = match &plan {
            Some(p) => QuantVarBuilder::new(vb, p.clone()),
            None => vb.into(),
        };
        Mce::new(cfg, qvb).unwrap();
        plan.map(|p| p.records().into_iter().map(|r| r.name).collect())
            .unwrap_or_default()
    }

    /// Two models built at once on two threads, each with its own plan, and a third without one:
    /// every plan sees exactly the layers of its own model, whichever thread built it.
    #[test]
    fn a_model_built_on_any_thread_gets_its_own_plan() {
        let paper = MceConfig {
            image_size: 64,
            ..MceConfig::edge_lite0()
        };
        let matching = paper.clone().with_head(HeadKind::Matching);
        let (p1, p2) = (Arc::new(RecordPlan::new()), Arc::new(RecordPlan::new()));
        let (a, b, c) = std::thread::scope(|s| {
            let a = s.spawn(|| layer_names(&paper, Some(p1.clone())));
            let b = s.spawn(|| layer_names(&matching, Some(p2.clone())));
            let c = s.spawn(|| layer_names(&paper, None));
            (a.join().unwrap(), b.join().unwrap(), c.join().unwrap())
        });
        assert!(a.iter().any(|n| n == "down_query.0") && a.iter().any(|n| n.starts_with("cross.")));
        assert!(b.iter().all(|n| n.starts_with("decoder.")), "{b:?}");
        assert!(b.iter().any(|n| n == "decoder.prior_skip"));
        assert!(c.is_empty());
        assert_eq!(a, layer_names(&paper, Some(Arc::new(RecordPlan::new()))));
    }
}
