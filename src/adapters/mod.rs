//! Sparsity-aware adapters behind one interface: `lors` (approx and exact gradients) and the
//! baselines `sqft`, `spp` and `lora`, one file per method.
//!
//! A layer is a frozen [`SparseLinear`] (weight `W`, optional bias, bit-packed mask `M`) plus an
//! adapter. PEFT shapes: `A` is r x in, `B` is out x r, scale `s = alpha/r` (or `alpha/sqrt(r)`
//! with `rslora`).

mod config;
#[cfg(feature = "cuda")]
mod cuda_mask;
mod init;
mod lora;
mod lors;
mod low_rank;
mod low_rank_op;
mod merge;
mod sparse_linear;
mod spp;
mod sqft;

use candle_core::{DType, Tensor, Var};
use rand::Rng;

pub use config::{AdapterConfig, Init, Method};
pub(crate) use init::normal;
pub use low_rank_op::{GradMode, GradProbe};
pub use merge::MergeReport;
pub use sparse_linear::SparseLinear;

use crate::error::{LorsError, Result};

/// The trainable part of an adapted layer, per method.
#[derive(Debug, Clone)]
enum Adapter {
    Lora(lora::Lora),
    Lors(lors::Lors),
    Sqft(sqft::Sqft),
    Spp(spp::Spp),
}

/// A frozen sparse linear layer with an adapter.
#[derive(Debug, Clone)]
pub struct AdaptedLinear {
    base: SparseLinear,
    config: AdapterConfig,
    adapter: Adapter,
}

impl AdaptedLinear {
    /// Attach a freshly initialised adapter to `base`.
    pub fn new(base: SparseLinear, config: &AdapterConfig, rng: &mut impl Rng) -> Result<Self> {
        config.validate()?;
        let (out_f, in_f) = base.dims();
        let max = out_f.min(in_f);
        if config.rank == 0 || config.rank > max {
            return Err(LorsError::Rank {
                what: format!("{} adapter", config.method),
                rank: config.rank,
                out_features: out_f,
                in_features: in_f,
                max,
            });
        }
        let dtype = base.param_dtype();
        let device = base.weight().device().clone();
        let scale = config.scale();
        let adapter = match config.method {
            Method::Lora => Adapter::Lora(lora::Lora::new(
                low_rank::LowRank::init(&base, config, dtype, &device, rng)?,
                scale,
            )),
            Method::Lors | Method::LorsExact => Adapter::Lors(lors::Lors::new(
                low_rank::LowRank::init(&base, config, dtype, &device, rng)?,
                scale,
                if config.method == Method::LorsExact {
                    GradMode::Exact
                } else {
                    GradMode::Approx
                },
            )),
            Method::Sqft => Adapter::Sqft(sqft::Sqft::new(
                &base,
                low_rank::LowRank::init(&base, config, dtype, &device, rng)?,
                scale,
            )?),
            Method::Spp => Adapter::Spp(spp::Spp::new(&base, config, dtype, &device, rng)?),
        };
        Ok(Self {
            base,
            config: config.clone(),
            adapter,
        })
    }

    /// The frozen base layer.
    pub fn base(&self) -> &SparseLinear {
        &self.base
    }

    /// The adapter settings.
    pub fn config(&self) -> &AdapterConfig {
        &self.config
    }

    /// Trainable tensors with their PEFT suffixes (`lora_A`, `lora_B`).
    pub fn trainable(&self) -> [(&'static str, &Var); 2] {
        let (a, b) = match &self.adapter {
            Adapter::Lora(m) => m.params.vars(),
            Adapter::Lors(m) => m.params.vars(),
            Adapter::Sqft(m) => m.params.vars(),
            Adapter::Spp(m) => (&m.wa, &m.w_col),
        };
        [("lora_A", a), ("lora_B", b)]
    }

    /// Replace the adapter tensors (same shapes), e.g. from a checkpoint or an initialiser.
    pub fn set_adapter(&self, a: &Tensor, b: &Tensor) -> Result<()> {
        for ((name, var), value) in self.trainable().into_iter().zip([a, b]) {
            if var.shape() != value.shape() {
                return Err(LorsError::shape(
                    format!("adapter tensor {name}"),
                    format!("{:?}", var.dims()),
                    format!("{:?}", value.dims()),
                ));
            }
            var.set(
                &value
                    .to_device(var.device())?
                    .to_dtype(var.dtype())?
                    .copy()?,
            )?;
        }
        Ok(())
    }

    /// `y = adapted(x)` for `x` of shape (..., in_features).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.base.check_input(x)?;
        let x = x.contiguous()?;
        let y = match &self.adapter {
            Adapter::Lora(m) => m.forward(&self.base, &x)?,
            Adapter::Lors(m) => m.forward(&self.base, &x)?,
            Adapter::Sqft(m) => m.forward(&self.base, &x)?,
            Adapter::Spp(m) => m.forward(&self.base, &x)?,
        };
        self.base.add_bias(y)
    }

    /// The weight update `ΔW` before masking, in the adapter's dtype.
    pub fn delta_weight(&self) -> Result<Tensor> {
        match &self.adapter {
            Adapter::Lora(m) => m.params.delta(m.scale),
            Adapter::Lors(m) => m.params.delta(m.scale),
            Adapter::Sqft(m) => m.params.delta(m.scale),
            Adapter::Spp(m) => m.delta(&self.base),
        }
    }

    /// The merged weight in the base dtype and what the merge did to sparsity.
    ///
    /// Masked methods give `(W + ΔW) ⊙ M`, nonzero exactly where `M` keeps a weight; this is
    /// checked here and a violation is an error. `lora` gives the dense `W + ΔW` and reports
    /// the density it produced.
    pub fn merge(&self) -> Result<(Tensor, MergeReport)> {
        self.merge_to(self.base.weight().dtype())
    }

    /// [`merge`](Self::merge), cast to `dtype` (the checkpoint's storage dtype) before the
    /// sparsity check.
    pub fn merge_to(&self, dtype: DType) -> Result<(Tensor, MergeReport)> {
        let delta = self.delta_weight()?;
        merge::merge(&self.base, &delta, self.config.method.is_masked(), dtype)
    }
}
