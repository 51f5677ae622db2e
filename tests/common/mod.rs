//! Helpers shared by the integration tests.

use candle_core::{DType, Tensor};

/// `max |a - b|`, both read as f32.
#[allow(dead_code)] // not every test binary compares values
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a.to_dtype(DType::F32).unwrap() - b.to_dtype(DType::F32).unwrap())
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// Raw bits of every element of a float tensor (f32, f64, bf16, f16), widened, row-major.
#[allow(dead_code)] // not every test binary compares bits
pub fn raw_bits(t: &Tensor) -> Vec<u64> {
    let flat = t.flatten_all().unwrap();
    match t.dtype() {
        DType::F32 => flat
            .to_vec1::<f32>()
            .unwrap()
            .iter()
            .map(|v| v.to_bits().into())
            .collect(),
        DType::F64 => flat
            .to_vec1::<f64>()
            .unwrap()
            .iter()
            .map(|v| v.to_bits())
            .collect(),
        DType::BF16 => flat
            .to_vec1::<half::bf16>()
            .unwrap()
            .iter()
            .map(|v| v.to_bits().into())
            .collect(),
        DType::F16 => flat
            .to_vec1::<half::f16>()
            .unwrap()
            .iter()
            .map(|v| v.to_bits().into())
            .collect(),
        other => panic!("raw_bits of {other:?}"),
    }
}

/// Where `base` is zero (either sign), how many elements of `out` are not `+0.0` bit for bit.
#[allow(dead_code)] // not every test binary compares bits
pub fn pruned_not_positive_zero(out: &Tensor, base: &Tensor) -> usize {
    assert_eq!(out.dims(), base.dims());
    let base = base.to_dtype(DType::F64).unwrap().flatten_all().unwrap();
    let base = base.to_vec1::<f64>().unwrap();
    raw_bits(out)
        .into_iter()
        .zip(base)
        .filter(|&(bits, b)| b == 0.0 && bits != 0)
        .count()
}

/// Same dtype, shape and bits.
#[allow(dead_code)] // not every test binary compares bits
pub fn same_bits(a: &Tensor, b: &Tensor) -> bool {
    a.dtype() == b.dtype() && a.dims() == b.dims() && raw_bits(a) == raw_bits(b)
}
