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
pub use low_rank_op::GradMode;
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

/// Whether a forward records candle's graph for the adapter tensors.
#[derive(Debug, Clone, Copy)]
enum Track {
    Graph,
    Detached,
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

    /// `y = adapted(x)` for `x` of shape (..., in_features), recorded in candle's graph (the
    /// adapter tensors are variables).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_with(x, Track::Graph)
    }

    /// [`forward`](Self::forward) without a graph: the adapter tensors enter detached.
    pub fn infer(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_with(x, Track::Detached)
    }

    /// The trainable tensors in the compute dtype `dtype`, detached or not.
    fn params_in(&self, dtype: DType, track: Track) -> Result<(Tensor, Tensor)> {
        let [(_, a), (_, b)] = self.trainable();
        let cast = |v: &Var| -> Result<Tensor> {
            let t = match track {
                Track::Graph => v.as_tensor().clone(),
                Track::Detached => v.as_tensor().detach(),
            };
            Ok(t.to_dtype(dtype)?)
        };
        Ok((cast(a)?, cast(b)?))
    }

    fn forward_with(&self, x: &Tensor, track: Track) -> Result<Tensor> {
        self.base.check_input(x)?;
        let x = x.contiguous()?;
        let (a, b) = self.params_in(x.dtype(), track)?;
        let y = match &self.adapter {
            Adapter::Lora(m) => x.apply_op3(&a, &b, m.op(&self.base))?,
            Adapter::Lors(m) => x.apply_op3(&a, &b, m.op(&self.base))?,
            Adapter::Sqft(m) => m.forward(&self.base, &x, &a, &b)?,
            Adapter::Spp(m) => m.forward(&self.base, &x, &a, &b)?,
        };
        self.base.add_bias(y)
    }

    /// Gradients for the output gradient `grad_y` of input `x` (..., in_features): the input's,
    /// and the two trainable tensors' (in their own dtype, aligned with
    /// [`trainable`](Self::trainable)). `lora` and `lors` use their ops' hand-written
    /// backward; `sqft` and `spp` re-run the layer through candle's autograd.
    pub fn backward(&self, x: &Tensor, grad_y: &Tensor) -> Result<(Tensor, [Tensor; 2])> {
        let x = x.contiguous()?;
        let (a, b) = self.params_in(x.dtype(), Track::Detached)?;
        let op = match &self.adapter {
            Adapter::Lora(m) => Some(m.op(&self.base)),
            Adapter::Lors(m) => Some(m.op(&self.base)),
            Adapter::Sqft(_) | Adapter::Spp(_) => None,
        };
        let (grad_x, grad_a, grad_b) = match op {
            Some(op) => {
                let (gx, ga, gb) = op.backward(&x, &a, &b, grad_y, true)?;
                (gx.expect("asked for the input gradient"), ga, gb)
            }
            None => self.backward_by_autograd(&x, grad_y)?,
        };
        let [(_, va), (_, vb)] = self.trainable();
        Ok((
            grad_x,
            [grad_a.to_dtype(va.dtype())?, grad_b.to_dtype(vb.dtype())?],
        ))
    }

    /// The layer's gradients through candle's autograd, from a local re-run of its forward.
    fn backward_by_autograd(
        &self,
        x: &Tensor,
        grad_y: &Tensor,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        let input = Var::from_tensor(&x.detach())?;
        let y = self.forward(input.as_tensor())?;
        let grads = (y * grad_y)?.sum_all()?.backward()?;
        let [(_, va), (_, vb)] = self.trainable();
        let get = |v: &Tensor| -> Result<Tensor> {
            grads.get(v).cloned().ok_or_else(|| {
                LorsError::invalid("backward", "an adapter tensor received no gradient")
            })
        };
        Ok((
            get(input.as_tensor())?,
            get(va.as_tensor())?,
            get(vb.as_tensor())?,
        ))
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
