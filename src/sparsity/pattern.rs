//! Sparsity patterns and the simplest mask that realises one (by weight magnitude).

use std::fmt;
use std::str::FromStr;

use candle_core::{DType, Tensor};

use super::BitMask;
use crate::error::{LorsError, Result};

/// How the zeros of a pruned weight are laid out.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Pattern {
    /// A fraction `sparsity` of each output row is zero, anywhere in the row.
    Unstructured { sparsity: f64 },
    /// At most `n` of every `m` consecutive inputs are kept (2:4 is the GPU-friendly one).
    NofM { n: usize, m: usize },
}

impl Pattern {
    /// Check the pattern's own parameters.
    pub fn check(&self) -> Result<()> {
        match *self {
            Pattern::Unstructured { sparsity } if !(sparsity > 0.0 && sparsity < 1.0) => Err(
                LorsError::invalid("sparsity", format!("{sparsity} is outside (0, 1)")),
            ),
            Pattern::NofM { n, m } if n == 0 || n >= m => Err(LorsError::invalid(
                "pattern",
                format!("{n}:{m} needs 0 < N < M"),
            )),
            _ => Ok(()),
        }
    }

    /// Check the pattern and that it fits a weight with `in_features` inputs.
    pub fn validate(&self, in_features: usize) -> Result<()> {
        self.check()?;
        match *self {
            Pattern::NofM { n, m } if !in_features.is_multiple_of(m) => Err(LorsError::invalid(
                "pattern",
                format!("{n}:{m} needs in-features divisible by {m}, got {in_features}"),
            )),
            _ => Ok(()),
        }
    }

    /// Fraction of weights the pattern keeps.
    pub fn density(&self) -> f64 {
        match *self {
            Pattern::Unstructured { sparsity } => 1.0 - sparsity,
            Pattern::NofM { n, m } => n as f64 / m as f64,
        }
    }

    /// Number of weights kept in a group of `len` inputs (a row, or `m` for N:M).
    pub fn kept_in_group(&self, len: usize) -> usize {
        match *self {
            Pattern::Unstructured { sparsity } => ((1.0 - sparsity) * len as f64).round() as usize,
            Pattern::NofM { n, .. } => n,
        }
    }

    /// Length of a selection group: the row for unstructured, `m` for N:M.
    pub fn group_len(&self, cols: usize) -> usize {
        match *self {
            Pattern::Unstructured { .. } => cols,
            Pattern::NofM { m, .. } => m,
        }
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Pattern::Unstructured { sparsity } => write!(f, "unstructured {sparsity}"),
            Pattern::NofM { n, m } => write!(f, "{n}:{m}"),
        }
    }
}

/// A pattern's layout as profiles and flags name it: `unstructured` (with its sparsity given
/// beside it) or `N:M` such as `2:4`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Layout {
    #[default]
    Unstructured,
    NofM {
        n: usize,
        m: usize,
    },
}

impl Layout {
    /// The pattern: this layout, at `sparsity` when unstructured (ignored for N:M), checked.
    pub fn with_sparsity(self, sparsity: f64) -> Result<Pattern> {
        let pattern = match self {
            Layout::Unstructured => Pattern::Unstructured { sparsity },
            Layout::NofM { n, m } => Pattern::NofM { n, m },
        };
        pattern.check()?;
        Ok(pattern)
    }
}

impl FromStr for Layout {
    type Err = LorsError;

    /// `"unstructured"` or `"N:M"` with `0 < N < M`.
    fn from_str(s: &str) -> Result<Self> {
        if s == "unstructured" {
            return Ok(Layout::Unstructured);
        }
        let bad = || LorsError::invalid("pattern", format!("`{s}` is not `unstructured` or N:M"));
        let (n, m) = s.split_once(':').ok_or_else(bad)?;
        let n: usize = n.trim().parse().map_err(|_| bad())?;
        let m: usize = m.trim().parse().map_err(|_| bad())?;
        Pattern::NofM { n, m }.check()?;
        Ok(Layout::NofM { n, m })
    }
}

impl fmt::Display for Layout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Layout::Unstructured => f.write_str("unstructured"),
            Layout::NofM { n, m } => write!(f, "{n}:{m}"),
        }
    }
}

crate::serde_as_text!(Layout);

/// Keep the largest-magnitude weights of each group (each row, or each `m` inputs for N:M).
/// Ties go to the lower index, so the result is deterministic.
pub fn magnitude_mask(weight: &Tensor, pattern: Pattern) -> Result<BitMask> {
    let (rows, cols) = weight.dims2()?;
    let scores = weight
        .to_dtype(DType::F64)?
        .abs()?
        .flatten_all()?
        .to_vec1::<f64>()?;
    mask_from_scores(&scores, rows, cols, pattern)
}

/// Keep the highest-scoring weights of each group (a row for unstructured, `m` consecutive
/// inputs for N:M) of a row-major `rows x cols` score matrix; ties go to the lower index.
pub fn mask_from_scores(
    scores: &[f64],
    rows: usize,
    cols: usize,
    pattern: Pattern,
) -> Result<BitMask> {
    pattern.validate(cols)?;
    if scores.len() != rows * cols {
        return Err(LorsError::shape("scores", rows * cols, scores.len()));
    }
    let group = pattern.group_len(cols);
    let keep_n = pattern.kept_in_group(group);
    let mut keep = vec![false; rows * cols];
    let mut order: Vec<usize> = Vec::with_capacity(group);
    for start in (0..rows * cols).step_by(group) {
        order.clear();
        order.extend(start..start + group);
        order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
        for &i in &order[..keep_n] {
            keep[i] = true;
        }
    }
    Ok(BitMask::from_fn(rows, cols, |i| keep[i]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn w(rows: &[[f32; 8]; 4]) -> Tensor {
        Tensor::new(rows, &Device::Cpu).unwrap()
    }

    fn kept(mask: &BitMask) -> Vec<Vec<u8>> {
        (0..mask.rows())
            .map(|r| {
                (0..mask.cols())
                    .map(|c| u8::from(mask.is_kept(r * mask.cols() + c)))
                    .collect()
            })
            .collect()
    }

    #[test]
    fn magnitude_keeps_the_largest_per_row_and_per_group() {
        let weight = w(&[
            [0.1, -0.9, 0.3, 0.2, -0.5, 0.05, 0.6, -0.4],
            [1.0, 1.0, -1.0, 1.0, 0.0, 0.0, 0.0, 0.0],
            [0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1],
            [-0.1, 0.2, -0.3, 0.4, -0.5, 0.6, -0.7, 0.8],
        ]);
        let half = magnitude_mask(&weight, Pattern::Unstructured { sparsity: 0.5 }).unwrap();
        assert_eq!(
            kept(&half),
            vec![
                vec![0, 1, 0, 0, 1, 0, 1, 1],
                // Ties go to the lower index.
                vec![1, 1, 1, 1, 0, 0, 0, 0],
                vec![1, 1, 1, 1, 0, 0, 0, 0],
                vec![0, 0, 0, 0, 1, 1, 1, 1],
            ]
        );
        let two_four = magnitude_mask(&weight, Pattern::NofM { n: 2, m: 4 }).unwrap();
        assert_eq!(
            kept(&two_four),
            vec![
                vec![0, 1, 1, 0, 1, 0, 1, 0],
                vec![1, 1, 0, 0, 1, 1, 0, 0],
                vec![1, 1, 0, 0, 1, 1, 0, 0],
                vec![0, 0, 1, 1, 0, 0, 1, 1],
            ]
        );
        assert_eq!(two_four.max_kept_per_group(4), Some(2));
        assert_eq!(half.max_kept_per_group(4), Some(4));
        assert_eq!(half.max_kept_per_group(3), None);
        assert!((0..4).all(|r| half.row_kept(r) == 4));
        assert_eq!(half.density(), 0.5);
    }

    #[test]
    fn bad_patterns_are_errors() {
        let weight = Tensor::zeros((2, 6), candle_core::DType::F32, &Device::Cpu).unwrap();
        for p in [
            Pattern::Unstructured { sparsity: 0.0 },
            Pattern::Unstructured { sparsity: 1.0 },
            Pattern::Unstructured { sparsity: f64::NAN },
            Pattern::NofM { n: 4, m: 4 },
            Pattern::NofM { n: 2, m: 4 }, // 6 inputs are not a multiple of 4
        ] {
            assert!(magnitude_mask(&weight, p).is_err(), "{p}");
        }
        assert_eq!(
            "2:4".parse::<Layout>().unwrap().with_sparsity(0.9).unwrap(),
            Pattern::NofM { n: 2, m: 4 }
        );
        assert!("4:4".parse::<Layout>().is_err());
        assert!("2-4".parse::<Layout>().is_err());
    }
}
