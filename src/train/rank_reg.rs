//! RM-LoRA's options (arXiv 2407.12074) on any adapter: an orthogonality regulariser
//! `λ(‖AAᵀ − I‖_F + ‖BᵀB − I‖_F)` whose gradient is added to the adapters', and random
//! rank-component gradient masks (each step, only `k` of the `r` components — row `j` of A
//! with column `j` of B — receive a gradient). Both live in A and B alone, so the merged
//! weight `(W + s·B·A) ⊙ M` keeps its zeros.

use candle_core::{DType, Tensor, Var};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::error::Result;

/// The options, from the profile's `adapter.orth_reg` and `adapter.rank_keep`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RankRegularizer {
    /// λ; 0 disables the regulariser.
    pub lambda: f64,
    /// Components per step that receive a gradient; 0 (or ≥ r) keeps all.
    pub keep: usize,
    pub seed: u64,
}

impl RankRegularizer {
    /// Whether it changes anything.
    pub fn is_active(&self) -> bool {
        self.lambda > 0.0 || self.keep > 0
    }

    /// Apply to the gradients of adapter pairs at optimizer step `step`: `vars` and `grads`
    /// hold `[A, B]` per adapted layer, in order.
    pub fn apply(&self, vars: &[Var], grads: &mut [Tensor], step: usize) -> Result<()> {
        for (layer, (v, g)) in vars
            .chunks_exact(2)
            .zip(grads.chunks_exact_mut(2))
            .enumerate()
        {
            let (a, b) = (v[0].as_tensor(), v[1].as_tensor());
            if self.lambda > 0.0 {
                g[0] = (&g[0] + (orthogonality_grad(a, false)? * self.lambda)?)?;
                g[1] = (&g[1] + (orthogonality_grad(b, true)? * self.lambda)?)?;
            }
            let r = a.dim(0)?;
            if self.keep > 0 && self.keep < r {
                let kept = self.components(layer, step, r);
                let m = Tensor::from_vec(kept, r, a.device())?.to_dtype(g[0].dtype())?;
                g[0] = g[0].broadcast_mul(&m.unsqueeze(1)?)?;
                g[1] = g[1].broadcast_mul(&m.unsqueeze(0)?)?;
            }
        }
        Ok(())
    }

    /// 1 for the `keep` components of layer `layer` drawn at `step`, else 0 (seeded by the
    /// run's seed, the layer and the step, so a resume draws the same ones).
    pub fn components(&self, layer: usize, step: usize, r: usize) -> Vec<f32> {
        let stream = (layer as u64) << 32 | step as u64;
        let mut rng = ChaCha8Rng::seed_from_u64(self.seed ^ 0x524d_4c6f_5241);
        rng.set_stream(stream);
        let mut kept = vec![0f32; r];
        for j in rand::seq::index::sample(&mut rng, r, self.keep) {
            kept[j] = 1.0;
        }
        kept
    }
}

/// `E = XXᵀ − I` (or `XᵀX − I` with `transposed`) of `x` in f64, and `‖E‖_F`.
fn gram_error(x: &Tensor, transposed: bool) -> Result<(Tensor, f64)> {
    let gram = if transposed {
        x.t()?.matmul(x)?
    } else {
        x.matmul(&x.t()?)?
    };
    let r = gram.dim(0)?;
    let e = (gram - Tensor::eye(r, DType::F64, x.device())?)?;
    let norm = e.sqr()?.sum_all()?.to_scalar::<f64>()?.sqrt();
    Ok((e, norm))
}

/// The gradient of `‖XXᵀ − I‖_F` for A (r×in), or of `‖XᵀX − I‖_F` for B (out×r) with
/// `transposed`: `2·E·X / ‖E‖` (resp. `2·X·E / ‖E‖`), zero where `E = 0`. Computed in f64
/// and returned in the tensor's dtype.
pub fn orthogonality_grad(x: &Tensor, transposed: bool) -> Result<Tensor> {
    let x64 = x.to_dtype(DType::F64)?;
    let (e, norm) = gram_error(&x64, transposed)?;
    if norm == 0.0 {
        return Ok(x.zeros_like()?);
    }
    let g = if transposed {
        x64.matmul(&e)?
    } else {
        e.matmul(&x64)?
    };
    Ok((g * (2.0 / norm))?.to_dtype(x.dtype())?)
}

/// The regulariser's value `‖AAᵀ − I‖_F + ‖BᵀB − I‖_F` for one pair.
pub fn orthogonality(a: &Tensor, b: &Tensor) -> Result<f64> {
    let a = gram_error(&a.to_dtype(DType::F64)?, false)?.1;
    let b = gram_error(&b.to_dtype(DType::F64)?, true)?.1;
    Ok(a + b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn random(dims: (usize, usize), seed: u64) -> Tensor {
        use rand::Rng;
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let v: Vec<f64> = (0..dims.0 * dims.1)
            .map(|_| rng.random_range(-0.6..0.6))
            .collect();
        Tensor::from_vec(v, dims, &Device::Cpu).unwrap()
    }

    /// The analytic gradients equal central finite differences of the regulariser (f64,
    /// step 1e-6: agreement to ~1e-9 expected; 1e-7 asserted).
    #[test]
    fn orthogonality_gradient_matches_finite_differences() {
        let (a, b) = (random((3, 5), 1), random((4, 3), 2));
        for (x, transposed) in [(&a, false), (&b, true)] {
            let g = orthogonality_grad(x, transposed)
                .unwrap()
                .to_vec2::<f64>()
                .unwrap();
            let values = x.to_vec2::<f64>().unwrap();
            let f = |v: &Vec<Vec<f64>>| {
                let t = Tensor::new(v.clone(), &Device::Cpu).unwrap();
                gram_error(&t, transposed).unwrap().1
            };
            let h = 1e-6;
            for i in 0..values.len() {
                for j in 0..values[0].len() {
                    let (mut up, mut down) = (values.clone(), values.clone());
                    up[i][j] += h;
                    down[i][j] -= h;
                    let fd = (f(&up) - f(&down)) / (2.0 * h);
                    assert!(
                        (fd - g[i][j]).abs() < 1e-7,
                        "({i},{j}): {fd} vs {}",
                        g[i][j]
                    );
                }
            }
        }
    }

    /// Each step draws exactly `keep` components per layer, the same ones again for the same
    /// (seed, layer, step), and the masked gradients are zero outside them.
    #[test]
    fn rank_masks_are_seeded_and_zero_the_other_components() {
        let reg = RankRegularizer {
            lambda: 0.0,
            keep: 2,
            seed: 7,
        };
        let first = reg.components(0, 3, 5);
        assert_eq!(first.iter().sum::<f32>(), 2.0);
        assert_eq!(first, reg.components(0, 3, 5));
        let draws: std::collections::BTreeSet<Vec<u32>> = (0..20)
            .map(|step| {
                reg.components(1, step, 5)
                    .iter()
                    .map(|&x| x as u32)
                    .collect()
            })
            .collect();
        assert!(draws.len() > 3, "steps draw different components");
        let vars = [
            Var::from_tensor(&random((5, 4), 3)).unwrap(),
            Var::from_tensor(&random((6, 5), 4)).unwrap(),
        ];
        let mut grads = [random((5, 4), 5), random((6, 5), 6)];
        reg.apply(&vars, &mut grads, 3).unwrap();
        let ga = grads[0].to_vec2::<f64>().unwrap();
        let gb = grads[1].to_vec2::<f64>().unwrap();
        for (j, &k) in first.iter().enumerate() {
            let zero_row = ga[j].iter().all(|&x| x == 0.0);
            let zero_col = gb.iter().all(|row| row[j] == 0.0);
            assert_eq!((zero_row, zero_col), (k == 0.0, k == 0.0), "component {j}");
        }
    }
}
