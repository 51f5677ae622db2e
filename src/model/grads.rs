//! What the hand-written backward of a model produces: the adapters' gradients, summed over
//! backward passes, and, for the gradient-based initialisation, the weight gradients of
//! chosen ("probed") layers.

use std::collections::HashMap;

use candle_core::{Tensor, TensorId, Var};

use super::{Linear, ModuleId};
use crate::error::Result;

/// Gradients gathered by [`CausalLm::loss_and_grads`](super::CausalLm::loss_and_grads) passes.
#[derive(Debug, Default)]
pub struct Gradients {
    adapters: HashMap<TensorId, Tensor>,
    probes: HashMap<ModuleId, Option<Tensor>>,
}

impl Gradients {
    /// Gather the adapters' gradients only.
    pub fn new() -> Self {
        Self::default()
    }

    /// Also gather `Σ grad_yᵀ·x` (out x in, f32) for the frozen weights of `modules`, which
    /// then run as their frozen base layer (the gradient-based initialisation's probes).
    pub fn probing(modules: impl IntoIterator<Item = ModuleId>) -> Self {
        Self {
            adapters: HashMap::new(),
            probes: modules.into_iter().map(|m| (m, None)).collect(),
        }
    }

    /// The summed gradient of an adapter tensor.
    pub fn get(&self, var: &Var) -> Option<&Tensor> {
        self.adapters.get(&var.id())
    }

    /// The summed weight gradient of a probed layer, leaving its slot empty.
    pub fn take_probe(&mut self, module: ModuleId) -> Option<Tensor> {
        self.probes.get_mut(&module).and_then(Option::take)
    }

    /// Whether `module` runs as a probe.
    pub(crate) fn is_probed(&self, module: ModuleId) -> bool {
        self.probes.contains_key(&module)
    }

    fn add(slot: &mut Option<Tensor>, g: Tensor) -> Result<()> {
        *slot = Some(match slot.take() {
            Some(acc) => (acc + g)?,
            None => g,
        });
        Ok(())
    }

    /// The backward of linear layer `module` with input `x` and output gradient `grad_y`:
    /// gathers its gradients and returns the input's.
    pub(crate) fn linear(
        &mut self,
        module: ModuleId,
        linear: &Linear,
        x: &Tensor,
        grad_y: &Tensor,
    ) -> Result<Tensor> {
        if let Some(slot) = self.probes.get_mut(&module) {
            Self::add(slot, linear.base().weight_grad(x, grad_y)?)?;
            return linear.base().backward_input(grad_y);
        }
        match linear {
            Linear::Frozen(l) => l.backward_input(grad_y),
            Linear::Adapted(l) => {
                let grads = l.backward(x, grad_y)?;
                let pair = l.trainable().into_iter().map(|(_, v)| v).zip(grads.pair);
                for (var, g) in pair.chain(l.gate().zip(grads.gate)) {
                    let mut slot = self.adapters.remove(&var.id());
                    Self::add(&mut slot, g)?;
                    self.adapters.insert(var.id(), slot.expect("just added"));
                }
                Ok(grads.x)
            }
        }
    }
}
