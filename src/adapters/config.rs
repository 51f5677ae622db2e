//! Adapter settings shared by every method.

use serde::{Deserialize, Serialize};
use strum::{IntoStaticStr, VariantArray};

use crate::error::{LorsError, Result};

/// Fine-tuning method.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, IntoStaticStr, VariantArray)]
#[strum(serialize_all = "kebab-case")]
pub enum Method {
    /// LoRS with the paper's rearranged (approximate) adapter gradient.
    Lors,
    /// LoRS with the exact masked gradient, at LoRS's memory cost.
    LorsExact,
    /// SQFT: the masked adapter through ordinary autograd.
    Sqft,
    /// SPP: a row-shared, column-scaled update multiplied by `W`.
    Spp,
    /// Plain LoRA: unmasked, its merge is dense.
    Lora,
}

impl Method {
    /// Whether the merged weight keeps the base's sparsity.
    pub fn is_masked(self) -> bool {
        self != Method::Lora
    }
}

crate::named!(Method, "method");

/// How the adapter starts (`B`, or SPP's column scale, starts at zero except with
/// `orthogonal`, where `B·A = 0` with both nonzero), listed LoRS's own first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, IntoStaticStr, VariantArray)]
#[strum(serialize_all = "kebab-case")]
pub enum Init {
    /// LoRS's gradient-based start: the training engine sets `A` from the top right singular
    /// vectors of the calibration gradient (`train::gradient_init`); a layer built alone starts
    /// as `standard`.
    Gradient,
    /// `A` kaiming-uniform (PEFT's default, bound `1/sqrt(in)`).
    #[default]
    Standard,
    /// `A ~ N(0, 1/r²)` (PEFT's `init_lora_weights="gaussian"`).
    Gaussian,
    /// PEFT's `init_lora_weights="orthogonal"`: `A` and `B` from the odd and even rows of one
    /// random orthogonal r×r matrix (times Gaussian factors, over 10), so `B·A = 0` (to
    /// rounding) while both are nonzero. Needs an even rank.
    Orthogonal,
    /// OLoRA (arXiv 2406.01775; PEFT's `init_lora_weights="olora"`): `B₀ = Q[:, :r]` and
    /// `A₀ = R[:r, :]` of the QR factorisation of `W`, with the start subtracted so the layer
    /// begins as the base: `ΔW = s·(B·A − B₀·A₀)`, exactly zero before training, masked like
    /// any update (the mask-safe form of PEFT's residual `W − s·B₀·A₀`, which it does not
    /// mask).
    Olora,
}

crate::named!(Init, "adapter.init");

/// Settings of one adapter.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdapterConfig {
    pub method: Method,
    pub rank: usize,
    pub alpha: f64,
    /// Scale `alpha/sqrt(r)` instead of `alpha/r` (the LoRS paper's choice).
    pub rslora: bool,
    pub init: Init,
    /// SoRA's gate (arXiv 2311.11696): `ΔW = s·B·diag(g)·A` with a trainable gate `g`
    /// (starting at 1) that the training's proximal step can zero, lowering the rank.
    #[serde(default)]
    pub sora: bool,
}

impl Default for AdapterConfig {
    fn default() -> Self {
        Self {
            method: Method::Lors,
            rank: 8,
            alpha: 16.0,
            rslora: true,
            init: Init::Standard,
            sora: false,
        }
    }
}

impl AdapterConfig {
    /// The adapter scale `s`.
    pub fn scale(&self) -> f64 {
        self.scale_at(self.rank)
    }

    /// The scale PEFT gives the same `alpha` at rank `rank` (a layer whose rank SoRA lowered).
    pub fn scale_at(&self, rank: usize) -> f64 {
        let r = rank as f64;
        if self.rslora {
            self.alpha / r.sqrt()
        } else {
            self.alpha / r
        }
    }

    /// Check values that do not depend on a layer.
    pub fn validate(&self) -> Result<()> {
        if self.rank == 0 {
            return Err(LorsError::invalid("rank", "must be at least 1"));
        }
        if !self.alpha.is_finite() || self.alpha <= 0.0 {
            return Err(LorsError::invalid(
                "alpha",
                format!("{} must be a positive number", self.alpha),
            ));
        }
        Ok(())
    }
}
