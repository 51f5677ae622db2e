//! LoRA-RITE (Yen et al., arXiv 2410.20625): an adaptive optimiser for `ΔW = B·A` whose
//! update of `ΔW` does not depend on how the product is split between the factors
//! (`A → S·A`, `B → B·S⁻¹` give the same steps). Per layer, with the factors as n×r matrices
//! `L = Aᵀ` and `R = B`:
//!
//! 1. thin QR `L = Q_L·R_L`, `R = Q_R·R_R`; the *unmagnified* gradients `ū_L = ∇_L·R_R⁺` and
//!    `ū_R = ∇_R·R_L⁺` (each in the other factor's orthonormal basis; `⁺`: pseudo-inverse);
//! 2. a factor whose `ū` has an RMS above 1 skips the step, and all `ū` together are clipped
//!    to a global norm of 1 (the authors' defaults);
//! 3. the r×r second moment `V ← β₂'·P·V·Pᵀ + (1−β₂')·ūᵀū/n`, with `P = Q_newᵀ·Q_old` of the
//!    other factor carrying the old moment into the new basis;
//! 4. the preconditioned `ū·(V)^{-1/2}` (symmetric eigendecomposition, `1/(√λ + eps)`), the
//!    first moment `M ← β₁'·M·Pᵀ + (1−β₁')·ū·V^{-1/2}`, and the step
//!    `L ← L − lr·(M·R_R⁺ᵀ + wd·L)`.
//!
//! `β'` is the bias-corrected decay of the authors' code (`β(1−β^{t−1})/(1−β^t)`), so no
//! separate bias correction follows. Small dense algebra runs on the host in f64 with
//! nalgebra. Unlike the authors' code, eigenvalues that rounding makes slightly negative are
//! clamped to zero (theirs turn the whole update into NaN, then zero); the escaped-mass term,
//! off by default there, is not offered.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor, Var};
use nalgebra::DMatrix;

use super::OptimSection;
use crate::error::{LorsError, Result};

type Mat = DMatrix<f64>;

/// The global norm the unmagnified gradients are clipped to (the authors' default).
const UNMAGNIFIED_CLIP_NORM: f64 = 1.0;
/// A factor whose unmagnified gradient has a larger RMS skips the step (the authors' default).
const SKIP_ABOVE_RMS: f64 = 1.0;

/// LoRA-RITE over the `[A, B]` pairs of the adapted layers.
pub struct LoraRite {
    config: OptimSection,
    step: usize,
    pairs: Vec<Pair>,
}

/// One layer's factors and their state.
struct Pair {
    /// The name of `A`, which names the state in checkpoints.
    name: String,
    a: Var,
    b: Var,
    /// `L = Aᵀ` (in×r).
    left: Factor,
    /// `R = B` (out×r).
    right: Factor,
}

/// The state of one factor: moments in the other factor's basis, and its own latest basis.
struct Factor {
    /// First moment, n×r.
    m: Mat,
    /// Second moment, r×r.
    v: Mat,
    /// `Q` of this factor's thin QR at the previous step, n×r (zeros before the first).
    basis: Mat,
}

/// What step 1 finds for one layer, before the global clipping.
struct Unmagnified {
    l: Mat,
    r: Mat,
    u_l: Mat,
    u_r: Mat,
    q_l: Mat,
    q_r: Mat,
    inv_l: Mat,
    inv_r: Mat,
}

impl LoraRite {
    /// Fresh state for `vars`, which must be `[A, B]` pairs (PEFT names `…lora_A.weight`,
    /// `…lora_B.weight`, A r×in and B out×r).
    pub fn new(vars: Vec<(String, Var)>, config: &OptimSection) -> Result<Self> {
        if !vars.len().is_multiple_of(2) {
            return Err(not_pairs("an odd number of adapter tensors"));
        }
        let mut pairs = Vec::with_capacity(vars.len() / 2);
        let mut it = vars.into_iter();
        while let (Some((name, a)), Some((name_b, b))) = (it.next(), it.next()) {
            let ((r, in_f), (out_f, r_b)) = (a.dims2()?, b.dims2()?);
            if !name.ends_with("lora_A.weight") || !name_b.ends_with("lora_B.weight") || r != r_b {
                return Err(not_pairs(&format!(
                    "`{name}` {:?} and `{name_b}` {:?} are not an A (r×in), B (out×r) pair",
                    a.dims(),
                    b.dims()
                )));
            }
            pairs.push(Pair {
                name,
                a,
                b,
                left: Factor::zeros(in_f, r),
                right: Factor::zeros(out_f, r),
            });
        }
        Ok(Self {
            config: config.clone(),
            step: 0,
            pairs,
        })
    }

    /// Steps taken.
    pub fn step_count(&self) -> usize {
        self.step
    }

    /// One update with `grads` (`[∇A, ∇B]` per pair, in order), first scaled by `grad_scale`.
    pub fn step(&mut self, grads: &[Tensor], lr: f64, grad_scale: f64) -> Result<()> {
        let mut found = Vec::with_capacity(self.pairs.len());
        for (pair, g) in self.pairs.iter().zip(grads.chunks_exact(2)) {
            found.push(pair.unmagnified(&g[0], &g[1], grad_scale)?);
        }
        let norm = found
            .iter()
            .map(|u| u.u_l.norm_squared() + u.u_r.norm_squared())
            .sum::<f64>()
            .sqrt();
        let clip = if norm > UNMAGNIFIED_CLIP_NORM {
            UNMAGNIFIED_CLIP_NORM / norm
        } else {
            1.0
        };
        let (t, c) = (self.step, &self.config);
        for (pair, u) in self.pairs.iter_mut().zip(found) {
            // L's gradient lives in R's basis, and R's in L's.
            let p_l = u.q_r.transpose() * &pair.right.basis;
            let p_r = u.q_l.transpose() * &pair.left.basis;
            let l = pair
                .left
                .update(t, u.u_l * clip, &p_l, &u.inv_r, &u.l, lr, c);
            let r = pair
                .right
                .update(t, u.u_r * clip, &p_r, &u.inv_l, &u.r, lr, c);
            pair.left.basis = u.q_l;
            pair.right.basis = u.q_r;
            set_var(&pair.a, &l.transpose())?;
            set_var(&pair.b, &r)?;
        }
        self.step += 1;
        Ok(())
    }

    /// The moments and bases by `<A's name>.rite.<left|right>.<m|v|basis>` (f64).
    pub fn state_tensors(&self) -> HashMap<String, Tensor> {
        let mut out = HashMap::new();
        for p in &self.pairs {
            for (side, f) in [("left", &p.left), ("right", &p.right)] {
                for (part, m) in [("m", &f.m), ("v", &f.v), ("basis", &f.basis)] {
                    let key = format!("{}.rite.{side}.{part}", p.name);
                    out.insert(key, to_tensor(m).expect("a host matrix converts"));
                }
            }
        }
        out
    }

    /// Restore the state saved by [`state_tensors`](Self::state_tensors) after `step` steps.
    pub fn restore(&mut self, state: &HashMap<String, Tensor>, step: usize) -> Result<()> {
        for p in &mut self.pairs {
            for (side, f) in [("left", &mut p.left), ("right", &mut p.right)] {
                for (part, slot) in [("m", &mut f.m), ("v", &mut f.v), ("basis", &mut f.basis)] {
                    let key = format!("{}.rite.{side}.{part}", p.name);
                    let dims = [slot.nrows(), slot.ncols()];
                    *slot = to_host(super::saved_state(state, &key, &dims)?)?;
                }
            }
        }
        self.step = step;
        Ok(())
    }
}

impl Pair {
    /// Step 1 for this layer with gradients `grad_a`, `grad_b` times `scale`.
    fn unmagnified(&self, grad_a: &Tensor, grad_b: &Tensor, scale: f64) -> Result<Unmagnified> {
        let l = to_host(self.a.as_tensor())?.transpose();
        let r = to_host(self.b.as_tensor())?;
        let (q_l, r_l) = thin_qr(&l);
        let (q_r, r_r) = thin_qr(&r);
        let (inv_l, inv_r) = (pseudo_inverse(&r_l), pseudo_inverse(&r_r));
        let u_l = skip_if_large(to_host(grad_a)?.transpose() * scale * &inv_r);
        let u_r = skip_if_large(to_host(grad_b)? * scale * &inv_l);
        Ok(Unmagnified {
            l,
            r,
            u_l,
            u_r,
            q_l,
            q_r,
            inv_l,
            inv_r,
        })
    }
}

impl Factor {
    fn zeros(n: usize, r: usize) -> Self {
        Self {
            m: Mat::zeros(n, r),
            v: Mat::zeros(r, r),
            basis: Mat::zeros(n, r),
        }
    }

    /// Steps 3–4 for this factor at step `t` (0-based): the unmagnified gradient `u`, the
    /// basis transport `p`, the other factor's `R⁺`; returns the new factor.
    #[allow(clippy::too_many_arguments)]
    fn update(
        &mut self,
        t: usize,
        u: Mat,
        p: &Mat,
        inv_other: &Mat,
        param: &Mat,
        lr: f64,
        c: &OptimSection,
    ) -> Mat {
        let [beta1, beta2] = c.betas.map(|b| bias_corrected_decay(t, b));
        let n = u.nrows() as f64;
        let second = symmetric(&(u.transpose() * &u / n));
        let moved = symmetric(&(p * &self.v * p.transpose())).map(zero_if_nan);
        self.v = symmetric(&(second * (1.0 - beta2) + moved * beta2));
        let preconditioned = (u * inverse_sqrt(&self.v, c.eps)).map(zero_if_nan);
        self.m = preconditioned * (1.0 - beta1) + &self.m * p.transpose() * beta1;
        let update = &self.m * inv_other.transpose() + param * c.weight_decay;
        param - update * lr
    }
}

/// `β(1 − β^{t})/(1 − β^{t+1})` at 0-based step `t`: 0 at the first step, → β later.
fn bias_corrected_decay(t: usize, beta: f64) -> f64 {
    let t = t as f64 + 1.0;
    beta * (1.0 - beta.powf(t - 1.0)) / (1.0 - beta.powf(t))
}

/// `Q` (n×r) and `R` (r×r) of the thin QR factorisation of an n×r matrix (n ≥ r).
fn thin_qr(m: &Mat) -> (Mat, Mat) {
    let qr = m.clone().qr();
    (qr.q(), qr.r())
}

/// The pseudo-inverse, with singular values below `σ_max·size·ε_f32` taken as zero (the
/// adapters are f32; PyTorch's default tolerance for an f32 matrix).
fn pseudo_inverse(m: &Mat) -> Mat {
    let svd = m.clone().svd(true, true);
    let tol = svd.singular_values.max() * m.nrows().max(m.ncols()) as f64 * f32::EPSILON as f64;
    svd.pseudo_inverse(tol)
        .expect("tolerance is non-negative and both factors were computed")
}

/// `(V)^{-1/2}` of a symmetric r×r matrix as `Σ vᵢvᵢᵀ/(√max(λᵢ, 0) + eps)`.
fn inverse_sqrt(v: &Mat, eps: f64) -> Mat {
    let e = v.clone().symmetric_eigen();
    let w = e.eigenvalues.map(|l| 1.0 / (l.max(0.0).sqrt() + eps));
    symmetric(&(&e.eigenvectors * Mat::from_diagonal(&w) * e.eigenvectors.transpose()))
}

fn symmetric(m: &Mat) -> Mat {
    (m + m.transpose()) * 0.5
}

fn zero_if_nan(x: f64) -> f64 {
    if x.is_nan() {
        0.0
    } else {
        x
    }
}

/// Zero when the RMS of `u` is above [`SKIP_ABOVE_RMS`].
fn skip_if_large(u: Mat) -> Mat {
    let rms = (u.norm_squared() / u.len().max(1) as f64).sqrt();
    if rms > SKIP_ABOVE_RMS {
        Mat::zeros(u.nrows(), u.ncols())
    } else {
        u
    }
}

fn not_pairs(what: &str) -> LorsError {
    LorsError::invalid(
        "optim.name",
        format!("lora-rite updates low-rank A/B pairs, but found {what}"),
    )
}

/// A 2-D tensor as an f64 host matrix.
fn to_host(t: &Tensor) -> Result<Mat> {
    let (rows, cols) = t.dims2()?;
    let values = t.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?;
    Ok(Mat::from_row_slice(rows, cols, &values))
}

/// A host matrix as an f64 tensor on the CPU.
fn to_tensor(m: &Mat) -> Result<Tensor> {
    // nalgebra stores columns first; the tensor wants rows.
    let values = m.transpose().as_slice().to_vec();
    Ok(Tensor::from_vec(
        values,
        (m.nrows(), m.ncols()),
        &Device::Cpu,
    )?)
}

fn set_var(var: &Var, m: &Mat) -> Result<()> {
    let t = to_tensor(m)?
        .to_device(var.device())?
        .to_dtype(var.dtype())?;
    var.set(&t)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::PairOptimizer;
    use super::*;
    use rand::{Rng, SeedableRng};

    fn random(rows: usize, cols: usize, scale: f64, rng: &mut impl Rng) -> Mat {
        Mat::from_fn(rows, cols, |_, _| rng.random_range(-scale..scale))
    }

    /// Random A (r×in) and B (out×r) with entries in `[-scale, scale)`.
    fn random_pair(
        r: usize,
        in_f: usize,
        out_f: usize,
        scale: f64,
        rng: &mut impl Rng,
    ) -> (Mat, Mat) {
        (random(r, in_f, scale, rng), random(out_f, r, scale, rng))
    }

    fn var(m: &Mat) -> Var {
        Var::from_tensor(&to_tensor(m).unwrap()).unwrap()
    }

    fn config(eps: f64, weight_decay: f64) -> OptimSection {
        OptimSection {
            eps,
            weight_decay,
            ..Default::default()
        }
    }

    /// One layer: A (r×in) and B (out×r) as f64 variables, under LoRA-RITE.
    fn one_pair(a: &Mat, b: &Mat, c: &OptimSection) -> (LoraRite, Var, Var) {
        let (va, vb) = (var(a), var(b));
        let vars = vec![
            ("m.lora_A.weight".to_string(), va.clone()),
            ("m.lora_B.weight".to_string(), vb.clone()),
        ];
        (LoraRite::new(vars, c).unwrap(), va, vb)
    }

    /// The first step, computed independently in f64: with zero moments, `M = ū·(ūᵀū/n)^{-1/2}`,
    /// which is `√n·U·Wᵀ` for the thin SVD `ū = U·Σ·Wᵀ` (the polar factor), and `R_other`
    /// comes from the Cholesky factor of `XᵀX` instead of a QR. Agreement to 1e-9 relative
    /// (f64 with eps = 1e-12, so only rounding differs).
    #[test]
    fn first_step_matches_the_polar_form_in_f64() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let (r, in_f, out_f) = (3, 9, 7);
        let (a, b) = random_pair(r, in_f, out_f, 1.0, &mut rng);
        let (ga, gb) = random_pair(r, in_f, out_f, 1e-2, &mut rng);
        let (lr, wd) = (0.01, 0.1);
        let c = config(1e-12, wd);
        let (mut opt, va, vb) = one_pair(&a, &b, &c);
        opt.step(&[to_tensor(&ga).unwrap(), to_tensor(&gb).unwrap()], lr, 1.0)
            .unwrap();
        let r_of = |x: &Mat| (x.transpose() * x).cholesky().unwrap().l().transpose();
        let polar = |u: &Mat| {
            let svd = u.clone().svd(true, true);
            (svd.u.unwrap() * svd.v_t.unwrap()) * (u.nrows() as f64).sqrt()
        };
        let (l, rr) = (a.transpose(), b.clone());
        let (inv_l, inv_r) = (
            r_of(&l).try_inverse().unwrap(),
            r_of(&rr).try_inverse().unwrap(),
        );
        let u_l = ga.transpose() * &inv_r;
        let u_r = &gb * &inv_l;
        assert!(
            u_l.norm_squared() + u_r.norm_squared() < 1.0,
            "no clipping here"
        );
        let want_l = &l - (polar(&u_l) * inv_r.transpose() + &l * wd) * lr;
        let want_r = &rr - (polar(&u_r) * inv_l.transpose() + &rr * wd) * lr;
        for (got, want, start) in [
            (to_host(va.as_tensor()).unwrap().transpose(), want_l, &l),
            (to_host(vb.as_tensor()).unwrap(), want_r, &rr),
        ] {
            let (diff, moved) = ((&got - &want).norm(), (&want - start).norm());
            assert!(diff < 1e-9 * moved, "{diff:e} off a step of {moved:e}");
        }
    }

    /// Three steps on `½‖B·A − T‖²` from `(A, B)` and from `(S·A, B·S⁻¹)` give the same
    /// `B·A` after each step (to 1e-9 relative; f64), while AdamW's products differ by far
    /// more: the invariance LoRA-RITE is built for.
    #[test]
    fn updates_of_b_a_do_not_depend_on_how_it_is_factored() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
        let (r, in_f, out_f) = (4, 10, 8);
        let (a, b) = random_pair(r, in_f, out_f, 1.0, &mut rng);
        let target = random(out_f, in_f, 1.0, &mut rng);
        let s = random(r, r, 1.0, &mut rng) + Mat::identity(r, r) * 2.0;
        let (a2, b2) = (&s * &a, &b * s.clone().try_inverse().unwrap());
        let c = config(1e-12, 0.0);
        let products = |a: &Mat, b: &Mat, rite: bool| -> Vec<Mat> {
            let (va, vb) = (var(a), var(b));
            let vars = vec![
                ("m.lora_A.weight".to_string(), va.clone()),
                ("m.lora_B.weight".to_string(), vb.clone()),
            ];
            let mut opt = match rite {
                true => PairOptimizer::LoraRite(LoraRite::new(vars, &c).unwrap()),
                false => PairOptimizer::AdamW(super::super::AdamW::new(vars, &c).unwrap()),
            };
            (0..3)
                .map(|_| {
                    let (a, b) = (
                        to_host(va.as_tensor()).unwrap(),
                        to_host(vb.as_tensor()).unwrap(),
                    );
                    // Small gradients keep the clipping and skipping out of the comparison.
                    let g = (&b * &a - &target) * 1e-3;
                    let (ga, gb) = (b.transpose() * &g, &g * a.transpose());
                    let grads = [to_tensor(&ga).unwrap(), to_tensor(&gb).unwrap()];
                    match &mut opt {
                        PairOptimizer::LoraRite(o) => o.step(&grads, 0.05, 1.0).unwrap(),
                        PairOptimizer::AdamW(o) => o.step(&grads, 0.05, 1.0).unwrap(),
                    }
                    to_host(vb.as_tensor()).unwrap() * to_host(va.as_tensor()).unwrap()
                })
                .collect()
        };
        let start = &b * &a;
        let (one, two) = (products(&a, &b, true), products(&a2, &b2, true));
        for (step, (p, q)) in one.iter().zip(&two).enumerate() {
            let moved = (p - &start).norm();
            assert!(moved > 1e-3, "step {step} moved B·A by {moved:e}");
            let diff = (p - q).norm();
            assert!(
                diff < 1e-9 * moved,
                "step {step}: {diff:e} vs a move of {moved:e}"
            );
        }
        let (one, two) = (products(&a, &b, false), products(&a2, &b2, false));
        let diff = (&one[2] - &two[2]).norm();
        assert!(
            diff > 1e-2 * (&one[2] - &start).norm(),
            "AdamW differs by {diff:e}"
        );
    }

    /// The state survives a save and restore: a restored optimiser takes the same next step
    /// as the original, bit for bit; and lists that are not A/B pairs are refused.
    #[test]
    fn restored_state_continues_bit_for_bit_and_pairs_are_checked() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let (a, b) = (random(2, 6, 1.0, &mut rng), Mat::zeros(5, 2));
        let c = config(1e-8, 0.01);
        let grads = |rng: &mut rand_chacha::ChaCha8Rng| {
            [
                to_tensor(&random(2, 6, 0.1, rng)).unwrap(),
                to_tensor(&random(5, 2, 0.1, rng)).unwrap(),
            ]
        };
        let (mut opt, va, vb) = one_pair(&a, &b, &c);
        for _ in 0..2 {
            opt.step(&grads(&mut rng), 0.01, 0.5).unwrap();
        }
        let (mut again, va2, vb2) = one_pair(
            &to_host(va.as_tensor()).unwrap(),
            &to_host(vb.as_tensor()).unwrap(),
            &c,
        );
        again
            .restore(&opt.state_tensors(), opt.step_count())
            .unwrap();
        let g = grads(&mut rng);
        opt.step(&g, 0.01, 1.0).unwrap();
        again.step(&g, 0.01, 1.0).unwrap();
        for (x, y) in [(&va, &va2), (&vb, &vb2)] {
            let (x, y) = (
                to_host(x.as_tensor()).unwrap(),
                to_host(y.as_tensor()).unwrap(),
            );
            assert!(x.iter().all(|v| v.is_finite()));
            assert_eq!(x, y);
        }
        let lone = vec![("m.lora_A.weight".to_string(), var(&a))];
        let err = LoraRite::new(lone, &c).err().unwrap().to_string();
        assert!(err.contains("optim.name") && err.contains("odd"), "{err}");
    }
}
