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
    /// `A` from `config.init` and `B = 0` (or the orthogonal pair with `B·A = 0`), so the
    /// adapter starts as the identity; with OLoRA, the QR start, whose product the adapted
    /// layer subtracts.
    pub fn init(
        base: &SparseLinear,
        config: &AdapterConfig,
        dtype: DType,
        device: &Device,
        rng: &mut impl Rng,
    ) -> Result<Self> {
        let (out_f, in_f) = base.dims();
        let r = config.rank;
        let (a, b) = match config.init {
            Init::Standard | Init::Gradient => (
                kaiming_uniform((r, in_f), dtype, device, rng)?,
                Tensor::zeros((out_f, r), dtype, device)?,
            ),
            Init::Gaussian => (
                normal((r, in_f), 1.0 / r as f64, dtype, device, rng)?,
                Tensor::zeros((out_f, r), dtype, device)?,
            ),
            Init::Olora => olora_pair(base, r, dtype)?,
            Init::Orthogonal => {
                let (a, b) = orthogonal_pair(r, in_f, out_f, rng)?;
                (
                    a.to_dtype(dtype)?.to_device(device)?,
                    b.to_dtype(dtype)?.to_device(device)?,
                )
            }
        };
        Ok(Self {
            a: Var::from_tensor(&a)?,
            b: Var::from_tensor(&b)?,
        })
    }

    pub fn vars(&self) -> (&Var, &Var) {
        (&self.a, &self.b)
    }
}

/// OLoRA's start (`A₀`, `B₀`) in `dtype`: `B₀ = Q[:, :r]` and `A₀ = R[:r, :]` of the QR
/// factorisation `W = Q·R`. Only the first r columns of `W` decide `Q[:, :r]`, so this
/// factors `W[:, :r]` (out×r, on the host in f64; Householder, so a column that pruning
/// zeroed still gets an orthonormal `Q` column) and takes `A₀ = Q[:, :r]ᵀ·W`, which is
/// `R[:r, :]` without factoring the whole out×in weight.
pub(crate) fn olora_pair(base: &SparseLinear, r: usize, dtype: DType) -> Result<(Tensor, Tensor)> {
    use nalgebra::DMatrix;
    let w = base.weight().to_dtype(DType::F64)?;
    let (out_f, _) = w.dims2()?;
    let first = w.narrow(1, 0, r)?.to_device(&Device::Cpu)?;
    let first = DMatrix::from_row_slice(out_f, r, &first.flatten_all()?.to_vec1::<f64>()?);
    let q = first.qr().q();
    // nalgebra stores columns first; the tensor wants rows.
    let q = Tensor::from_vec(q.transpose().as_slice().to_vec(), (out_f, r), w.device())?;
    let a = q.t()?.matmul(&w)?;
    Ok((a.to_dtype(dtype)?, q.to_dtype(dtype)?))
}

/// PEFT's orthogonal start, in f64 on the host: `Q` from the QR factorisation of an r×r
/// Gaussian matrix, `A = (N_in · Q[0::2])ᵀ / 10` (r×in) and `B = N_out · Q[1::2] / 10`
/// (out×r) with Gaussian `N_in` (in×r/2) and `N_out` (out×r/2). The two row sets of `Q` are
/// orthogonal, so `B·A = N_out·Q[1::2]·Q[0::2]ᵀ·N_inᵀ/100 = 0`.
pub(crate) fn orthogonal_pair(
    r: usize,
    in_f: usize,
    out_f: usize,
    rng: &mut impl Rng,
) -> Result<(Tensor, Tensor)> {
    use nalgebra::DMatrix;
    use rand_distr::{Distribution, StandardNormal};
    if !r.is_multiple_of(2) {
        return Err(crate::error::LorsError::invalid(
            "adapter.rank",
            format!("orthogonal init needs an even rank, got {r}"),
        ));
    }
    let mut gaussian = |rows: usize, cols: usize| {
        DMatrix::<f64>::from_fn(rows, cols, |_, _| StandardNormal.sample(&mut *rng))
    };
    let q = gaussian(r, r).qr().q();
    let rows = |first: usize| {
        let picked: Vec<usize> = (first..r).step_by(2).collect();
        q.select_rows(picked.iter())
    };
    let (odd, even) = (rows(0), rows(1));
    let a = (gaussian(in_f, r / 2) * odd).transpose() / 10.0;
    let b = gaussian(r / 2, out_f).transpose() * even / 10.0;
    let to_tensor = |m: &DMatrix<f64>| -> Result<Tensor> {
        // nalgebra stores columns first; the tensor wants rows.
        let data: Vec<f64> = m.transpose().as_slice().to_vec();
        Ok(Tensor::from_vec(
            data,
            (m.nrows(), m.ncols()),
            &Device::Cpu,
        )?)
    };
    Ok((to_tensor(&a)?, to_tensor(&b)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    /// `B·A` vanishes (to f64 rounding) while `A` and `B` carry PEFT's scale (entries of
    /// standard deviation ~ 1/10 of a unit Gaussian's); an odd rank is refused.
    #[test]
    fn orthogonal_pair_multiplies_to_zero_with_both_factors_nonzero() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(4);
        let (a, b) = orthogonal_pair(8, 48, 40, &mut rng).unwrap();
        assert_eq!((a.dims2().unwrap(), b.dims2().unwrap()), ((8, 48), (40, 8)));
        let rms = |t: &Tensor| {
            (t.sqr()
                .unwrap()
                .mean_all()
                .unwrap()
                .to_scalar::<f64>()
                .unwrap())
            .sqrt()
        };
        // Each entry is a sum of r/2 unit Gaussians times orthonormal weights, over 10.
        for t in [&a, &b] {
            let v = rms(t);
            assert!(v > 0.03 && v < 0.3, "rms {v}");
        }
        let product = b.matmul(&a).unwrap().abs().unwrap().max_all().unwrap();
        let product = product.to_scalar::<f64>().unwrap();
        assert!(product < 1e-14, "max |B·A| = {product:e}");
        let again =
            orthogonal_pair(8, 48, 40, &mut rand_chacha::ChaCha8Rng::seed_from_u64(4)).unwrap();
        assert_eq!(
            a.to_vec2::<f64>().unwrap(),
            again.0.to_vec2::<f64>().unwrap()
        );
        let err = orthogonal_pair(5, 8, 8, &mut rng).unwrap_err().to_string();
        assert!(err.contains("even rank"), "{err}");
    }
}
