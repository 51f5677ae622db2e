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
    let u = inverse_hessian_factor(&mut w, h)?;
    let block = match pattern {
        Pattern::NofM { m, .. } => BLOCK_SIZE.div_ceil(m) * m,
        Pattern::Unstructured { .. } => BLOCK_SIZE,
    };
    let mut pruned = vec![false; rows * cols];
    let mut i1 = 0;
    while i1 < cols {
        let i2 = (i1 + block).min(cols);
        let count = i2 - i1;
        let (mask1, err) = prune_block(&mut w, &u, i1..i2, pattern);
        // The lazy batch update: the block's errors reach the columns after it at once.
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

/// The upper factor `U` with `H⁻¹ = Uᵀ·U` of the Hessian made invertible: a dead input (never
/// active in calibration, so its weights cannot matter) gets diagonal 1 and its weights in
/// `w` zeroed; then the diagonal is dampened by `PERCDAMP` of its mean.
fn inverse_hessian_factor(w: &mut DMatrix<f64>, h: &DMatrix<f64>) -> Result<DMatrix<f64>> {
    let cols = h.ncols();
    let mut h = h.clone();
    for j in 0..cols {
        if h[(j, j)] == 0.0 {
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
    Ok(h_inv.cholesky().ok_or_else(not_pd)?.l().transpose())
}

/// Prune the columns `range` of `w` in place, one column at a time, each pruned weight's error
/// spread over the block's later columns (the OBS update through `U`). Returns the block's
/// mask (true = pruned, row-major within the block) and its errors, for the lazy update of
/// the columns after it. The mask is chosen by `w²/U_cc²`: for unstructured per row over the
/// whole block, for N:M per group of `m` as the sweep reaches it.
fn prune_block(
    w: &mut DMatrix<f64>,
    u: &DMatrix<f64>,
    range: std::ops::Range<usize>,
    pattern: Pattern,
) -> (Vec<bool>, DMatrix<f64>) {
    let (rows, i1, count) = (w.nrows(), range.start, range.len());
    let mut w1 = w.columns(i1, count).into_owned();
    let mut err = DMatrix::<f64>::zeros(rows, count);
    let u1 = u.view((i1, i1), (count, count));
    let mut mask1 = vec![false; rows * count];
    let diag: Vec<f64> = (0..count).map(|c| u1[(c, c)]).collect();
    if let Pattern::Unstructured { sparsity } = pattern {
        let k = (count as f64 * sparsity).round() as usize;
        mark_lowest(&w1, &diag, 0..count, k, &mut mask1);
    }
    for i in 0..count {
        if let Pattern::NofM { n, m } = pattern {
            if i % m == 0 {
                mark_lowest(&w1, &diag, i..i + m, m - n, &mut mask1);
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
    (mask1, err)
}

/// In every row of the block `w1`, mark the `k` columns of `cols` with the smallest
/// `w²/d²` (`d` the block's diagonal of `U`) in `mask` (row-major over the block's columns);
/// ties go to the lower column.
fn mark_lowest(
    w1: &DMatrix<f64>,
    diag: &[f64],
    cols: std::ops::Range<usize>,
    k: usize,
    mask: &mut [bool],
) {
    let count = w1.ncols();
    let score = |r: usize, c: usize| w1[(r, c)] * w1[(r, c)] / (diag[c] * diag[c]);
    for r in 0..w1.nrows() {
        let mut order: Vec<usize> = cols.clone().collect();
        order.sort_by(|&a, &b| score(r, a).total_cmp(&score(r, b)).then(a.cmp(&b)));
        for &c in &order[..k] {
            mask[r * count + c] = true;
        }
    }
}
