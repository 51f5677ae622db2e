//! Sparsity: bit-packed masks, sparsity patterns (unstructured, N:M) and their checks.

mod mask;
mod pattern;

pub use mask::{BitMask, PatternCheck};
pub use pattern::{magnitude_mask, mask_from_scores, Layout, Pattern};

use serde::{Deserialize, Serialize};

/// The sparsity found in one weight.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WeightSparsity {
    pub name: String,
    pub density: f64,
    /// `(N, M)` when every group of `M` consecutive inputs keeps exactly `N < M` (M in 4, 8, 16).
    pub n_of_m: Option<(usize, usize)>,
}

/// Describe a weight's sparsity: density and the tightest N:M pattern it satisfies.
pub fn describe(name: &str, mask: &BitMask) -> WeightSparsity {
    let (rows, cols) = mask.dims();
    let n_of_m = [4usize, 8, 16].into_iter().find_map(|m| {
        let n = mask.max_kept_per_group(m)?;
        (n < m && mask.count_kept() == n * rows * cols / m).then_some((n, m))
    });
    WeightSparsity {
        name: name.to_string(),
        density: mask.density(),
        n_of_m,
    }
}

/// One line for a set of layers: `dense`, `unstructured 50.0%`, or `2:4` when every layer is.
pub fn summarize(layers: &[WeightSparsity]) -> String {
    let density = layers.iter().map(|l| l.density).sum::<f64>() / layers.len().max(1) as f64;
    if layers.is_empty() || density >= 1.0 {
        return "dense".into();
    }
    let first = layers[0].n_of_m;
    match first {
        Some((n, m)) if layers.iter().all(|l| l.n_of_m == first) => format!("{n}:{m}"),
        _ => format!("unstructured {:.1}% sparse", 100.0 * (1.0 - density)),
    }
}
