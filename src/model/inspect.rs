//! What a model directory holds, without building the model: architecture, parameter count,
//! storage dtype and the sparsity of every decoder linear layer.

use super::{ModelConfig, ModelDir, WeightSource};
use super::{ModuleId, Proj};
use crate::error::Result;
use crate::sparsity::{describe, summarize, BitMask, WeightSparsity};

/// A model directory as the workbench describes it.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelSummary {
    pub config: ModelConfig,
    /// Elements of every stored tensor.
    pub parameters: usize,
    /// Storage dtype of the decoder weights (e.g. `BF16`).
    pub dtype: String,
    /// Every decoder linear weight, in layer order.
    pub layers: Vec<WeightSparsity>,
}

impl ModelSummary {
    /// `dense`, `unstructured 50.0% sparse` or `2:4`.
    pub fn pattern(&self) -> String {
        summarize(&self.layers)
    }

    /// Kept fraction over the decoder linear weights.
    pub fn density(&self) -> f64 {
        self.layers.iter().map(|l| l.density).sum::<f64>() / self.layers.len().max(1) as f64
    }

    /// True when no decoder linear weight has a zero: fine-tuning it with a masked method keeps
    /// nothing sparse, so it wants the prune step first.
    pub fn is_dense(&self) -> bool {
        self.layers.iter().all(|l| l.density >= 1.0)
    }
}

/// Read `dir`'s weights (memory-mapped) and describe them.
pub fn inspect_model(dir: &ModelDir) -> Result<ModelSummary> {
    let source = dir.weights()?;
    let mut layers = Vec::new();
    let mut dtype = String::from("?");
    for i in 0..dir.config.num_layers {
        for &proj in Proj::ALL {
            let path = ModuleId { layer: i, proj }.to_string();
            let w = source.tensor(&format!("{path}.weight"))?;
            dtype = format!("{:?}", w.dtype());
            layers.push(describe(&path, &BitMask::from_nonzero(&w)?));
        }
    }
    Ok(ModelSummary {
        config: dir.config.clone(),
        parameters: source.parameter_count(),
        dtype,
        layers,
    })
}
