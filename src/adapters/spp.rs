//! `spp`: SPP's update `ΔW = (repeat_interleave(Wa, out/r rows) ⊙ w_col·1ᵀ) ⊙ W`, `Wa` r x in
//! (kaiming), `w_col` out x 1 (zeros). Multiplying by `W` keeps pruned weights at zero. Row `i`
//! of the update uses row `⌊i·r/out⌋` of `Wa`, which is `repeat_interleave` when `r` divides
//! `out` and spreads the rows as evenly as possible otherwise. SPP has no `alpha` scale.

use candle_core::{DType, Device, Tensor, Var};
use rand::Rng;

use super::init::kaiming_uniform;
use super::sqft::linear_through;
use super::{AdapterConfig, SparseLinear};
use crate::error::Result;

#[derive(Debug, Clone)]
pub(crate) struct Spp {
    pub wa: Var,
    pub w_col: Var,
    row_index: Tensor,
}

impl Spp {
    pub fn new(
        base: &SparseLinear,
        config: &AdapterConfig,
        dtype: DType,
        device: &Device,
        rng: &mut impl Rng,
    ) -> Result<Self> {
        let (out_f, in_f) = base.dims();
        let r = config.rank;
        let wa = kaiming_uniform((r, in_f), dtype, device, rng)?;
        let w_col = Tensor::zeros((out_f, 1), dtype, device)?;
        let rows: Vec<u32> = (0..out_f).map(|i| (i * r / out_f) as u32).collect();
        Ok(Self {
            wa: Var::from_tensor(&wa)?,
            w_col: Var::from_tensor(&w_col)?,
            row_index: Tensor::from_vec(rows, out_f, device)?,
        })
    }

    /// `ΔW` in the parameters' dtype.
    pub fn delta(&self, base: &SparseLinear) -> Result<Tensor> {
        let w = base.weight().to_dtype(self.wa.dtype())?;
        self.delta_with(&w, self.wa.as_tensor(), self.w_col.as_tensor())
    }

    fn delta_with(&self, w: &Tensor, wa: &Tensor, w_col: &Tensor) -> Result<Tensor> {
        let repeated = wa.index_select(&self.row_index, 0)?; // out x in
        Ok(repeated.broadcast_mul(w_col)?.mul(w)?)
    }

    /// `y` for `Wa`, `w_col` in the compute dtype (graph nodes when they are variables).
    pub fn forward(
        &self,
        base: &SparseLinear,
        x: &Tensor,
        wa: &Tensor,
        w_col: &Tensor,
    ) -> Result<Tensor> {
        let w = base.weight();
        let merged = (w + self.delta_with(w, wa, w_col)?)?;
        linear_through(x, &merged)
    }
}
