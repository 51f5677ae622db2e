//! A linear layer of the model: frozen, or carrying an adapter.

use candle_core::{DType, Tensor};

use crate::adapters::{AdaptedLinear, MergeReport, SparseLinear};
use crate::error::Result;

/// One linear layer of a model.
#[derive(Debug, Clone)]
pub enum Linear {
    /// Frozen, no adapter.
    Frozen(SparseLinear),
    /// With a trainable adapter.
    Adapted(AdaptedLinear),
}

impl Linear {
    /// `y = layer(x)`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Linear::Frozen(l) => l.forward(x),
            Linear::Adapted(l) => l.forward(x),
        }
    }

    /// `y = layer(x)` without recording a graph.
    pub fn infer(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Linear::Frozen(l) => l.infer(x),
            Linear::Adapted(l) => l.infer(x),
        }
    }

    /// The frozen base layer.
    pub fn base(&self) -> &SparseLinear {
        match self {
            Linear::Frozen(l) => l,
            Linear::Adapted(l) => l.base(),
        }
    }

    /// The adapter, if any.
    pub fn adapted(&self) -> Option<&AdaptedLinear> {
        match self {
            Linear::Frozen(_) => None,
            Linear::Adapted(l) => Some(l),
        }
    }

    /// The weight to export in `dtype`: merged for adapted layers, the base weight otherwise.
    pub fn export_weight(&self, dtype: DType) -> Result<(Tensor, Option<MergeReport>)> {
        match self {
            Linear::Frozen(l) => Ok((l.weight().to_dtype(dtype)?, None)),
            Linear::Adapted(l) => {
                let (w, report) = l.merge_to(dtype)?;
                Ok((w, Some(report)))
            }
        }
    }
}
