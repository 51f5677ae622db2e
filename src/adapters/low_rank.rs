//! The `A`/`B` pair shared by `lora`, `lors` and `sqft`.

use candle_core::{DType, Device, Tensor, Var};
use rand::Rng;

use super::init::{kaiming_uniform, normal};
use super::{AdapterConfig, Init, SparseLinear};
use crate::error::Result;

/// Trainable `A` (r x in) and `B` (out x r), `ΔW = s·B·A`.
#[derive(Debug, Clone)]
pub(crate) struct LowRank {
    pub a: Var,
    pub b: Var,
}

impl LowRank {
    /// `A` from `config.init`, `B = 0`, so the adapter starts as the identity.
    pub fn init(
        base: &SparseLinear,
        config: &AdapterConfig,
        dtype: DType,
        device: &Device,
        rng: &mut impl Rng,
    ) -> Result<Self> {
        let (out_f, in_f) = base.dims();
        let r = config.rank;
        let a = match config.init {
            Init::Standard | Init::Gradient => kaiming_uniform((r, in_f), dtype, device, rng)?,
            Init::Gaussian => normal((r, in_f), 1.0 / r as f64, dtype, device, rng)?,
        };
        let b = Tensor::zeros((out_f, r), dtype, device)?;
        Ok(Self {
            a: Var::from_tensor(&a)?,
            b: Var::from_tensor(&b)?,
        })
    }

    pub fn vars(&self) -> (&Var, &Var) {
        (&self.a, &self.b)
    }

    /// `ΔW = s·B·A` (out x in).
    pub fn delta(&self, scale: f64) -> Result<Tensor> {
        Ok((self.b.matmul(&self.a)? * scale)?)
    }
}
