//! LoRS's gradient-based initialisation: accumulate the dense weight gradient `G` of each
//! adapted layer over calibration sequences, then set `A = (top-r right singular vectors of
//! G)ᵀ / stable_gamma` and `B = 0` (so the start adds nothing to `W`).
//!
//! Gradients are gathered for groups of layers whose `G`s fit `budget_bytes` together (one
//! forward+backward sweep over the calibration data per group), so they never all sit in
//! memory at once on a large model.

use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use nalgebra::DMatrix;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};

use crate::data::Batch;
use crate::error::{LorsError, Result};
use crate::model::{CausalLm, Gradients, Recompute};

/// What the initialisation did.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct GradInitReport {
    pub seconds: f64,
    pub layers: usize,
    pub sequences: usize,
    /// Forward+backward sweeps over the calibration data (one per group of layers).
    pub sweeps: usize,
}

/// Largest side up to which a full SVD is taken; beyond it, a randomised one.
const FULL_SVD_MAX: usize = 1024;

/// Run the initialisation on `batches` (calibration batches), reporting progress as
/// `(layers done, layers total)`. The gradients come from the training step's backward
/// (`recompute` as in training), with the probed layers running frozen.
pub fn gradient_init(
    model: &CausalLm,
    batches: &[Batch],
    stable_gamma: f64,
    budget_bytes: usize,
    recompute: Recompute,
    seed: u64,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<GradInitReport> {
    let start = Instant::now();
    let adapted = model.adapted();
    if adapted.is_empty() {
        return Err(LorsError::invalid(
            "adapter.init",
            "no adapted layers to initialise",
        ));
    }
    let mut groups: Vec<Vec<usize>> = vec![Vec::new()];
    let mut used = 0usize;
    for (i, (_, layer)) in adapted.iter().enumerate() {
        let (o, n) = layer.base().dims();
        let bytes = o * n * 4;
        if used + bytes > budget_bytes && !groups.last().expect("non-empty").is_empty() {
            groups.push(Vec::new());
            used = 0;
        }
        groups.last_mut().expect("non-empty").push(i);
        used += bytes;
    }
    let mut done = 0;
    for group in &groups {
        let mut grads = Gradients::probing(group.iter().map(|&i| adapted[i].0));
        for batch in batches {
            model.loss_and_grads(&batch.ids, &batch.loss_mask, 1.0, recompute, &mut grads)?;
        }
        for &i in group {
            let (name, layer) = &adapted[i];
            let g = grads.take_probe(*name).ok_or_else(|| {
                LorsError::invalid("adapter.init", format!("{name} received no gradient"))
            })?;
            let rank = layer.config().rank;
            let v = top_right_singular_vectors(&g, rank, seed ^ i as u64)?;
            let a = (v / stable_gamma)?;
            let [(_, _), (_, b)] = layer.trainable();
            layer.set_adapter(&a, &b.zeros_like()?)?;
            done += 1;
            progress(done, adapted.len());
        }
    }
    Ok(GradInitReport {
        seconds: start.elapsed().as_secs_f64(),
        layers: adapted.len(),
        sequences: batches.iter().map(|b| b.ids.dim(0).unwrap_or(0)).sum(),
        sweeps: groups.len(),
    })
}

fn to_matrix(t: &Tensor) -> Result<DMatrix<f64>> {
    let (r, c) = t.dims2()?;
    let v = t.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?;
    Ok(DMatrix::from_row_slice(r, c, &v))
}

/// The top-`rank` right singular vectors of `g` (out x in) as rows of an r x in tensor:
/// a full SVD for small matrices, a randomised one (oversampling 10, two power iterations)
/// for large ones.
pub fn top_right_singular_vectors(g: &Tensor, rank: usize, seed: u64) -> Result<Tensor> {
    let (out_f, in_f) = g.dims2()?;
    let g = to_matrix(g)?;
    let small = if out_f.min(in_f) <= FULL_SVD_MAX {
        g
    } else {
        // Range finder: Q spans the top singular directions of G; then SVD of Qᵀ·G.
        let k = (rank + 10).min(out_f.min(in_f));
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let omega = DMatrix::from_fn(in_f, k, |_, _| StandardNormal.sample(&mut rng));
        let mut q = (&g * omega).qr().q();
        for _ in 0..2 {
            let z = (g.transpose() * &q).qr().q();
            q = (&g * z).qr().q();
        }
        q.transpose() * &g
    };
    let svd = small.svd(false, true);
    let v_t = svd
        .v_t
        .ok_or_else(|| LorsError::invalid("adapter.init", "SVD did not converge"))?;
    let mut order: Vec<usize> = (0..svd.singular_values.len()).collect();
    order.sort_by(|&a, &b| svd.singular_values[b].total_cmp(&svd.singular_values[a]));
    let mut rows = Vec::with_capacity(rank * in_f);
    for &i in order.iter().take(rank) {
        rows.extend(v_t.row(i).iter().map(|&x| x as f32));
    }
    Ok(Tensor::from_vec(rows, (rank, in_f), &Device::Cpu)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recovers_the_dominant_right_singular_vectors() {
        // G = 5·e1·e1ᵀ + 2·e2·e2ᵀ + 1·e3·e3ᵀ: its top-2 right singular vectors are e1, e2.
        let (out_f, in_f) = (6, 4);
        let mut g = vec![0f64; out_f * in_f];
        g[0] = 5.0;
        g[in_f + 1] = -2.0;
        g[2 * in_f + 2] = 1.0;
        let g = Tensor::from_vec(g, (out_f, in_f), &Device::Cpu).unwrap();
        let v = top_right_singular_vectors(&g, 2, 0)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        assert!((v[0][0].abs() - 1.0).abs() < 1e-5, "{v:?}");
        assert!((v[1][1].abs() - 1.0).abs() < 1e-5, "{v:?}");
    }

    #[test]
    fn randomised_svd_agrees_with_the_full_one_on_a_low_rank_matrix() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let (out_f, in_f, r) = (1100, 1030, 3);
        let u = DMatrix::<f64>::from_fn(out_f, r, |_, _| StandardNormal.sample(&mut rng));
        let v = DMatrix::<f64>::from_fn(r, in_f, |_, _| StandardNormal.sample(&mut rng));
        let g = &u * &v;
        let t = Tensor::from_vec(
            g.transpose().as_slice().to_vec(),
            (out_f, in_f),
            &Device::Cpu,
        )
        .unwrap();
        let got = top_right_singular_vectors(&t, r, 7).unwrap();
        // Projection onto the true row space keeps every vector's norm.
        let vt = to_matrix(&got).unwrap();
        let basis = v.transpose().qr().q(); // in x r orthonormal basis of G's row space
        for row in 0..r {
            let x = vt.row(row).transpose();
            let proj = basis.transpose() * &x;
            assert!(
                (proj.norm() - 1.0).abs() < 1e-6,
                "row {row}: {}",
                proj.norm()
            );
        }
    }
}
