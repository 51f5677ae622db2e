//! Sparsity-aware adapters behind one interface: `lors` (approx and exact gradients) and the
//! baselines `sqft`, `spp` and `lora`, one file per method. The method zoo's options that act
//! on a layer live on [`AdaptedLinear`] too: SoRA's gate, OLoRA's start, Flat-LoRA's
//! perturbation (`flat.rs`) and boosting's fold into the base.
//!
//! A layer is a frozen [`SparseLinear`] (weight `W`, optional bias, bit-packed mask `M`) plus an
//! adapter. PEFT shapes: `A` is r x in, `B` is out x r, scale `s = alpha/r` (or `alpha/sqrt(r)`
//! with `rslora`).

mod config;
#[cfg(feature = "cuda")]
mod cuda_mask;
mod flat;
mod init;
mod lora;
mod lors;
mod low_rank;
mod low_rank_op;
mod merge;
mod rank_r_grads;
mod sparse_linear;
mod spp;
mod sqft;

use std::borrow::Cow;
use std::sync::{Arc, Mutex};

use candle_core::{DType, Tensor, Var};
use rand::Rng;

pub use config::{AdapterConfig, Init, Method};
pub use flat::{ramp as flat_ramp, FlatNoise};
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
    /// SoRA's gate `g` (r, the adapter's dtype), when `config.sora`: `B` enters every product as `B·diag(g)`.
    gate: Option<Var>,
    /// OLoRA's start `(A₀, B₀)`, frozen: the update is `s·(B·A − B₀·A₀)`, computed by the ops
    /// as the rank-2r product `[B, −B₀]·[A; A₀]`.
    start: Option<(Tensor, Tensor)>,
    /// Flat-LoRA's perturbation of the current training step, when set (shared by clones).
    noise: Arc<Mutex<Option<FlatNoise>>>,
    /// The f32 master of a lower-precision base weight once boosting folded an update into
    /// it (the base then holds its rounding).
    master: Option<Tensor>,
}

/// The gradients of one adapted layer's backward.
pub struct LayerGrads {
    /// The input's.
    pub x: Tensor,
    /// `A`'s and `B`'s, aligned with [`AdaptedLinear::trainable`], in their own dtype.
    pub pair: [Tensor; 2],
    /// The SoRA gate's, when the layer has one.
    pub gate: Option<Tensor>,
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
        let gate = match (config.sora, config.method) {
            (false, _) => None,
            (true, Method::Spp) => {
                return Err(LorsError::invalid(
                    "adapter.sora",
                    "gates a low-rank pair A, B, which spp does not have",
                ))
            }
            (true, _) => Some(Var::ones(config.rank, dtype, &device)?),
        };
        let mut layer = Self {
            base,
            config: config.clone(),
            adapter,
            gate,
            start: None,
            noise: Arc::default(),
            master: None,
        };
        if config.init == Init::Olora {
            let [(_, a), (_, b)] = layer.trainable();
            // Detached: a copy of a variable is still a graph node leading back to it.
            let frozen = |v: &Var| v.as_tensor().detach().copy();
            layer.start = Some((frozen(a)?, frozen(b)?));
        }
        Ok(layer)
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

    /// Train against Flat-LoRA's perturbed weight `noise` (None: the plain weight), until set
    /// again.
    pub fn set_flat_noise(&self, noise: Option<FlatNoise>) {
        *self.noise.lock().expect("no panic while holding it") = noise;
    }

    /// The base the current step computes with: `W + ε ⊙ M` while Flat-LoRA's noise is set
    /// (drawn again on every call, never kept), else the frozen base itself.
    fn step_base(&self) -> Result<Cow<'_, SparseLinear>> {
        let noise = *self.noise.lock().expect("no panic while holding it");
        let Some(noise) = noise else {
            return Ok(Cow::Borrowed(&self.base));
        };
        let w = self.base.weight();
        let merged = self
            .base
            .mask()
            .select(&(w + self.delta_weight()?.to_dtype(w.dtype())?)?)?;
        let eps = noise.perturbation(&merged, self.base.mask())?;
        Ok(Cow::Owned(self.base.with_weight((w + eps)?)))
    }

    /// Fold the current update into the frozen base, `W ← M ? W + ΔW : +0.0` (XGBLoRA's round
    /// end; in an f32 master when the base is bf16 or f16). Every pruned weight is `+0.0`.
    pub fn fold_into_base(&mut self) -> Result<()> {
        let w = self.base.weight();
        let dtype = match w.dtype() {
            DType::BF16 | DType::F16 => DType::F32,
            other => other,
        };
        let master = match &self.master {
            Some(m) => m.clone(),
            None => w.to_dtype(dtype)?,
        };
        let folded = self
            .base
            .mask()
            .select(&(master + self.delta_weight()?.to_dtype(dtype)?)?)?;
        let base = folded.to_dtype(w.dtype())?.contiguous()?;
        if dtype != w.dtype() {
            self.master = Some(folded);
        }
        self.base = self.base.with_weight(base);
        Ok(())
    }

    /// Start a fresh adapter as `config.init` does (`B = 0`: the layer computes its base),
    /// with gates back at 1.
    pub fn reset_adapter(&self, rng: &mut impl Rng) -> Result<()> {
        let [(_, a), _] = self.trainable();
        let device = a.device().clone();
        let fresh = low_rank::LowRank::init(&self.base, &self.config, a.dtype(), &device, rng)?;
        let (a, b) = fresh.vars();
        self.set_adapter(a.as_tensor(), b.as_tensor())?;
        if let Some(g) = &self.gate {
            self.set_gate(&g.ones_like()?)?;
        }
        Ok(())
    }

    /// SoRA's gate, when the layer has one.
    pub fn gate(&self) -> Option<&Var> {
        self.gate.as_ref()
    }

    /// Components whose gate is nonzero (the rank SoRA leaves), or the rank without a gate.
    pub fn live_rank(&self) -> Result<usize> {
        match &self.gate {
            Some(g) => Ok(gate_values(g)?.iter().filter(|v| **v != 0.0).count()),
            None => Ok(self.config.rank),
        }
    }

    /// Replace the adapter tensors (same shapes), e.g. from a checkpoint or an initialiser.
    pub fn set_adapter(&self, a: &Tensor, b: &Tensor) -> Result<()> {
        for ((name, var), value) in self.trainable().into_iter().zip([a, b]) {
            set_var(name, var, value)?;
        }
        Ok(())
    }

    /// Replace SoRA's gate (an error when the layer has none).
    pub fn set_gate(&self, g: &Tensor) -> Result<()> {
        match &self.gate {
            Some(var) => set_var("lora_gate", var, g),
            None => Err(LorsError::invalid("adapter.sora", "this layer has no gate")),
        }
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

    /// `A` and the effective `B` (gated by SoRA's `g` when there is one) in the compute dtype
    /// `dtype`, detached or not.
    fn params_in(&self, dtype: DType, track: Track) -> Result<(Tensor, Tensor)> {
        let (a, b) = self.raw_params_in(dtype, track)?;
        self.with_start(a, self.gated(b, track)?)
    }

    /// With OLoRA's start, `[A; A₀]` and `[B, −B₀]`, whose product is `B·A − B₀·A₀`.
    fn with_start(&self, a: Tensor, b: Tensor) -> Result<(Tensor, Tensor)> {
        match &self.start {
            Some((a0, b0)) => Ok((
                Tensor::cat(&[&a, &a0.to_dtype(a.dtype())?], 0)?,
                Tensor::cat(&[&b, &b0.to_dtype(b.dtype())?.neg()?], 1)?,
            )),
            None => Ok((a, b)),
        }
    }

    /// `B·diag(g)` with SoRA's gate, else `b` itself.
    fn gated(&self, b: Tensor, track: Track) -> Result<Tensor> {
        match &self.gate {
            Some(g) => Ok(b.broadcast_mul(&cast(g, b.dtype(), track)?.unsqueeze(0)?)?),
            None => Ok(b),
        }
    }

    /// `A` and `B` as stored, in the compute dtype `dtype`.
    fn raw_params_in(&self, dtype: DType, track: Track) -> Result<(Tensor, Tensor)> {
        let [(_, a), (_, b)] = self.trainable();
        Ok((cast(a, dtype, track)?, cast(b, dtype, track)?))
    }

    fn forward_with(&self, x: &Tensor, track: Track) -> Result<Tensor> {
        self.base.check_input(x)?;
        let x = x.contiguous()?;
        let (a, b) = self.params_in(x.dtype(), track)?;
        let base = self.step_base()?;
        let y = match &self.adapter {
            Adapter::Lora(m) => x.apply_op3(&a, &b, m.op(&base))?,
            Adapter::Lors(m) => x.apply_op3(&a, &b, m.op(&base))?,
            Adapter::Sqft(m) => m.forward(&base, &x, &a, &b)?,
            Adapter::Spp(m) => m.forward(&base, &x, &a, &b)?,
        };
        self.base.add_bias(y)
    }

    /// Gradients for the output gradient `grad_y` of input `x` (..., in_features): the input's,
    /// and the two trainable tensors' (in their own dtype, aligned with
    /// [`trainable`](Self::trainable)). `lora` and `lors` use their ops' hand-written
    /// backward; `sqft` and `spp` re-run the layer through candle's autograd.
    pub fn backward(&self, x: &Tensor, grad_y: &Tensor) -> Result<LayerGrads> {
        let x = x.contiguous()?;
        let base = self.step_base()?;
        let op = match &self.adapter {
            Adapter::Lora(m) => m.op(&base),
            Adapter::Lors(m) => m.op(&base),
            Adapter::Sqft(_) | Adapter::Spp(_) => return self.backward_by_autograd(&x, grad_y),
        };
        let (a, b) = self.raw_params_in(x.dtype(), Track::Detached)?;
        let b_eff = self.gated(b.clone(), Track::Detached)?;
        let (a_op, b_op) = self.with_start(a, b_eff)?;
        let (gx, grad_a, grad_b_eff) = op.backward(&x, &a_op, &b_op, grad_y, true)?;
        // OLoRA's frozen start takes the last r rows of `A`'s and columns of `B`'s gradient.
        let r = self.config.rank;
        let (grad_a, grad_b_eff) = (grad_a.narrow(0, 0, r)?, grad_b_eff.narrow(1, 0, r)?);
        // With a gate, `B_eff = B·diag(g)`: `∇B = ∇B_eff·diag(g)`, `∇g = Σ_rows ∇B_eff ⊙ B`.
        let (grad_b, gate) = match &self.gate {
            Some(g) => {
                let g = g.as_tensor().to_dtype(b.dtype())?.unsqueeze(0)?;
                let grad_g = (&grad_b_eff * &b)?.sum(0)?;
                (grad_b_eff.broadcast_mul(&g)?, Some(grad_g))
            }
            None => (grad_b_eff, None),
        };
        let [(_, va), (_, vb)] = self.trainable();
        Ok(LayerGrads {
            x: gx.expect("asked for the input gradient"),
            pair: [grad_a.to_dtype(va.dtype())?, grad_b.to_dtype(vb.dtype())?],
            gate: gate.map(|g| g.to_dtype(va.dtype())).transpose()?,
        })
    }

    /// The layer's gradients through candle's autograd, from a local re-run of its forward.
    fn backward_by_autograd(&self, x: &Tensor, grad_y: &Tensor) -> Result<LayerGrads> {
        let input = Var::from_tensor(&x.detach())?;
        let y = self.forward(input.as_tensor())?;
        let grads = (y * grad_y)?.sum_all()?.backward()?;
        let [(_, va), (_, vb)] = self.trainable();
        let get = |v: &Tensor| -> Result<Tensor> {
            grads.get(v).cloned().ok_or_else(|| {
                LorsError::invalid("backward", "an adapter tensor received no gradient")
            })
        };
        Ok(LayerGrads {
            x: get(input.as_tensor())?,
            pair: [get(va.as_tensor())?, get(vb.as_tensor())?],
            gate: self.gate.as_ref().map(|g| get(g.as_tensor())).transpose()?,
        })
    }

    /// The weight update `ΔW` before masking, in the adapter's dtype.
    pub fn delta_weight(&self) -> Result<Tensor> {
        let dtype = self.trainable()[0].1.dtype();
        let scale = match &self.adapter {
            Adapter::Lora(m) => m.scale,
            Adapter::Lors(m) => m.scale,
            Adapter::Sqft(m) => m.scale,
            Adapter::Spp(m) => return m.delta(&self.base),
        };
        let (a, b) = self.raw_params_in(dtype, Track::Detached)?;
        let product = self.gated(b, Track::Detached)?.matmul(&a)?;
        // `B·A − B₀·A₀` as two products, so an untrained layer's update is exactly zero.
        let product = match &self.start {
            Some((a0, b0)) => (product - b0.matmul(a0)?.to_dtype(dtype)?)?,
            None => product,
        };
        Ok((product * scale)?)
    }

    /// The adapter as a plain PEFT LoRA with the same update: SoRA's gates folded into `B`
    /// and the components they zeroed dropped (at least one is kept), OLoRA's start appended
    /// as `[B, −B₀]·[A; A₀]`, and `B` rescaled to PEFT's scale at the resulting rank, so
    /// `s'·B'·A'` is the trained update. Without either, `A` and `B` as they are.
    pub fn folded_pair(&self) -> Result<(Tensor, Tensor)> {
        let [(_, a), (_, b)] = self.trainable();
        if self.gate.is_none() && self.start.is_none() {
            return Ok((a.as_tensor().clone(), b.as_tensor().clone()));
        }
        let (a, b) = self.raw_params_in(a.dtype(), Track::Detached)?;
        let b = self.gated(b, Track::Detached)?;
        let (a, b) = match &self.gate {
            Some(g) => {
                let gates = gate_values(g)?;
                let mut kept: Vec<u32> = (0..gates.len() as u32)
                    .filter(|&j| gates[j as usize] != 0.0)
                    .collect();
                if kept.is_empty() {
                    kept.push(0); // PEFT needs a rank of at least 1; its B column is zero.
                }
                let index = Tensor::new(kept.as_slice(), a.device())?;
                (a.index_select(&index, 0)?, b.index_select(&index, 1)?)
            }
            None => (a, b),
        };
        let (a, b) = self.with_start(a, b)?;
        let rescale = self.config.scale() / self.config.scale_at(a.dim(0)?);
        Ok((a, (b * rescale)?))
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

/// `v` as a tensor of the compute dtype `dtype`, detached or not.
fn cast(v: &Var, dtype: DType, track: Track) -> Result<Tensor> {
    let t = match track {
        Track::Graph => v.as_tensor().clone(),
        Track::Detached => v.as_tensor().detach(),
    };
    Ok(t.to_dtype(dtype)?)
}

/// Set `var` to `value` (same shape; cast and moved), naming the tensor on a mismatch.
fn set_var(name: &str, var: &Var, value: &Tensor) -> Result<()> {
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
    Ok(())
}

/// A gate's values on the host.
fn gate_values(g: &Var) -> Result<Vec<f64>> {
    Ok(g.as_tensor().to_dtype(DType::F64)?.to_vec1::<f64>()?)
}
