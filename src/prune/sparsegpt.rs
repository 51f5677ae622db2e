//! SparseGPT (Frantar & Alistarh, 2023): prune one linear layer with the OBS update, following
//! the reference implementation: Hessian `H = 2XXᵀ/N`, dampening 1% of its mean diagonal,
//! the upper Cholesky factor of `H⁻¹`, blocks of 128 columns, the mask chosen per block
//! (per row within the block for unstructured sparsity, so every row keeps the same count;
//! per group of `m` for N:M), and the remaining weights updated to compensate.

use nalgebra::DMatrix;

use crate::error::{LorsError, Result};
use crate::sparsity::{BitMask, Pattern};

/// Columns per block.
pub const BLOCK_SIZE: usize = 128;
/// Dampening as a fraction of the mean Hessian diagonal.
pub const PERCDAMP: f64 = 0.01;

/// Prune `w` (rows x cols, row-major) given the Hessian `h` (cols x cols) of its inputs.
/// Returns the pruned weights and their mask.
pub fn sparsegpt(
    w: &[f64],
    rows: usize,
    cols: usize,
    h: &DMatrix<f64>,
    pattern: Pattern,
) -> Result<(Vec<f64>, BitMask)> {
    pattern.validate(cols)?;
    let mut w = DMatrix::from_row_slice(rows, cols, w);
    let mut h = h.clone();
    for j in 0..cols {
        if h[(j, j)] == 0.0 {
            // A dead input: never active in calibration, so its weights cannot matter.
            h[(j, j)] = 1.0;
            w.column_mut(j).fill(0.0);
        }
    }
    let damp = PERCDAMP * (0..cols).map(|j| h[(j, j)]).sum::<f64>() / cols as f64;
    for j in 0..cols {
        h[(j, j)] += damp;
    }
    let not_pd =
        || LorsError::invalid("sparsegpt", "the dampened Hessian is not positive definite");
    let h_inv = h.cholesky().ok_or_else(not_pd)?.inverse();
    // Upper factor U with H⁻¹ = Uᵀ·U.
    let u = h_inv.cholesky().ok_or_else(not_pd)?.l().transpose();

    let block = match pattern {
        Pattern::NofM { m, .. } => BLOCK_SIZE.div_ceil(m) * m,
        Pattern::Unstructured { .. } => BLOCK_SIZE,
    };
    let mut pruned = vec![false; rows * cols];
    let mut i1 = 0;
    while i1 < cols {
        let i2 = (i1 + block).min(cols);
        let count = i2 - i1;
        let mut w1 = w.columns(i1, count).into_owned();
        let mut err = DMatrix::<f64>::zeros(rows, count);
        let u1 = u.view((i1, i1), (count, count));
        let mut mask1 = vec![false; rows * count]; // true = prune, row-major within the block
        let score = |w1: &DMatrix<f64>, r: usize, c: usize| {
            let d = u1[(c, c)];
            w1[(r, c)] * w1[(r, c)] / (d * d)
        };
        if let Pattern::Unstructured { sparsity } = pattern {
            let k = (count as f64 * sparsity).round() as usize;
            for r in 0..rows {
                let mut order: Vec<usize> = (0..count).collect();
                order.sort_by(|&a, &b| {
                    score(&w1, r, a)
                        .total_cmp(&score(&w1, r, b))
                        .then(a.cmp(&b))
                });
                for &c in &order[..k] {
                    mask1[r * count + c] = true;
                }
            }
        }
        for i in 0..count {
            if let Pattern::NofM { n, m } = pattern {
                if i % m == 0 {
                    for r in 0..rows {
                        let mut order: Vec<usize> = (i..i + m).collect();
                        order.sort_by(|&a, &b| {
                            score(&w1, r, a)
                                .total_cmp(&score(&w1, r, b))
                                .then(a.cmp(&b))
                        });
                        for &c in &order[..m - n] {
                            mask1[r * count + c] = true;
                        }
                    }
                }
            }
            let d = u1[(i, i)];
            for r in 0..rows {
                let wv = w1[(r, i)];
                let q = if mask1[r * count + i] { 0.0 } else { wv };
                let e = (wv - q) / d;
                w1[(r, i)] = q;
                for j in i + 1..count {
                    w1[(r, j)] -= e * u1[(i, j)];
                }
                err[(r, i)] = e;
            }
        }
        w.columns_mut(i1, count).copy_from(&w1);
        if i2 < cols {
            let update = &err * u.view((i1, i2), (count, cols - i2));
            let mut rest = w.columns_mut(i2, cols - i2);
            rest -= update;
        }
        for r in 0..rows {
            for c in 0..count {
                pruned[r * cols + i1 + c] = mask1[r * count + c];
            }
        }
        i1 = i2;
    }
    let mut out = vec![0f64; rows * cols];
    for r in 0..rows {
        for c in 0..cols {
            out[r * cols + c] = if pruned[r * cols + c] { 0.0 } else { w[(r, c)] };
        }
    }
    Ok((out, BitMask::from_fn(rows, cols, |i| !pruned[i])))
}
