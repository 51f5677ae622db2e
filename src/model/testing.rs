//! Helpers of the model's unit tests.

use candle_core::{Device, Tensor};

/// A deterministic test tensor (f64) whose values sweep [-1.26, 1.26] in a pattern set by
/// `k`: `((i·k mod 29) − 14)·0.09` for element `i`.
pub(crate) fn wave(shape: &[usize], k: usize) -> Tensor {
    let n: usize = shape.iter().product();
    let v: Vec<f64> = (0..n)
        .map(|i| (((i * k) % 29) as f64 - 14.0) * 0.09)
        .collect();
    Tensor::from_vec(v, shape, &Device::Cpu).expect("a test tensor")
}

/// Equal to 1e-12 relative (plus 1e-12 absolute), in f64: two exact formulas that differ
/// only in rounding.
pub(crate) fn assert_close(a: &Tensor, b: &Tensor) {
    let a = a.flatten_all().unwrap().to_vec1::<f64>().unwrap();
    let b = b.flatten_all().unwrap().to_vec1::<f64>().unwrap();
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(&b) {
        assert!((x - y).abs() <= 1e-12 * (1.0 + y.abs()), "{x} vs {y}");
    }
}
