//! Random initialisers for adapter tensors (seeded, reproducible).

use candle_core::{DType, Device, Tensor};
use rand::Rng;
use rand_distr::{Distribution, Normal, Uniform};

use crate::error::{LorsError, Result};

/// Uniform samples in `[-bound, bound)` as a tensor of `dims`.
pub(crate) fn uniform(
    dims: (usize, usize),
    bound: f64,
    dtype: DType,
    device: &Device,
    rng: &mut impl Rng,
) -> Result<Tensor> {
    let dist = Uniform::new(-bound, bound)
        .map_err(|e| LorsError::invalid("init", format!("uniform bound {bound}: {e}")))?;
    let values: Vec<f64> = (0..dims.0 * dims.1).map(|_| dist.sample(rng)).collect();
    Ok(Tensor::from_vec(values, dims, device)?.to_dtype(dtype)?)
}

/// Normal samples with standard deviation `std` as a tensor of `dims`.
pub(crate) fn normal(
    dims: (usize, usize),
    std: f64,
    dtype: DType,
    device: &Device,
    rng: &mut impl Rng,
) -> Result<Tensor> {
    let dist = Normal::new(0.0, std)
        .map_err(|e| LorsError::invalid("init", format!("normal std {std}: {e}")))?;
    let values: Vec<f64> = (0..dims.0 * dims.1).map(|_| dist.sample(rng)).collect();
    Ok(Tensor::from_vec(values, dims, device)?.to_dtype(dtype)?)
}

/// PEFT's kaiming-uniform for a (fan_out, fan_in) matrix: bound `1/sqrt(fan_in)`
/// (`kaiming_uniform_(a=sqrt(5))`).
pub(crate) fn kaiming_uniform(
    dims: (usize, usize),
    dtype: DType,
    device: &Device,
    rng: &mut impl Rng,
) -> Result<Tensor> {
    uniform(dims, 1.0 / (dims.1 as f64).sqrt(), dtype, device, rng)
}
