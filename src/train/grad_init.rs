//! LoRS's gradient-based initialisation: accumulate the dense weight gradient `G` of each
//! adapted layer over calibration sequences, then set `A = (top-r right singular vectors of
//! G)ᵀ / stable_gamma` and `B = 0` (so the start adds nothing to `W`).
//!
//! Gradients are gathered for groups of layers whose `G`s fit `budget_bytes` together (one
//! forward+backward sweep over the calibration data per group), so they never all sit in
//! memory at once on a large model. In a data-parallel run each rank takes its share of the
//! layers (its own sweeps and SVDs) and the `A`s are then exchanged.

use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use faer::{Mat, Side};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};

use crate::adapters::AdaptedLinear;
use crate::data::Batch;
use crate::error::{LorsError, Result};
use crate::model::{CausalLm, Gradients, ModuleId, Recompute};

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

/// How far an initialisation is: forward+backward passes over calibration batches (one per
/// batch and sweep), layers whose SVD is done, and the seconds still to go (from the time
/// each kind of work has taken so far; unknown before the first pass).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct InitProgress {
    pub passes: (usize, usize),
    pub layers: (usize, usize),
    pub eta_s: Option<f64>,
}

impl std::fmt::Display for InitProgress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ((p, pt), (l, lt)) = (self.passes, self.layers);
        write!(f, "{p}/{pt} passes, {l}/{lt} layers")?;
        match self.eta_s {
            Some(eta) => write!(f, ", ETA {eta:.0}s"),
            None => Ok(()),
        }
    }
}

/// Times the two kinds of work of an initialisation, for its ETA.
struct InitClock {
    start: Instant,
    pass_s: f64,
    svd_s: f64,
    progress: InitProgress,
}

impl InitClock {
    fn new(passes: usize, layers: usize) -> Self {
        Self {
            start: Instant::now(),
            pass_s: 0.0,
            svd_s: 0.0,
            progress: InitProgress {
                passes: (0, passes),
                layers: (0, layers),
                eta_s: None,
            },
        }
    }

    /// Record one finished unit of work that began at `since`, and return the progress.
    fn tick(&mut self, since: Instant, svd: bool) -> InitProgress {
        let p = &mut self.progress;
        if svd {
            self.svd_s += since.elapsed().as_secs_f64();
            p.layers.0 += 1;
        } else {
            self.pass_s += since.elapsed().as_secs_f64();
            p.passes.0 += 1;
        }
        let per = |spent: f64, (done, _): (usize, usize)| (done > 0).then(|| spent / done as f64);
        let left = |(done, total): (usize, usize)| (total - done) as f64;
        // An SVD not yet timed is guessed at a pass's time: the order of magnitude it had.
        let per_pass = per(self.pass_s, p.passes);
        let per_svd = per(self.svd_s, p.layers).or(per_pass);
        p.eta_s = per_pass
            .zip(per_svd)
            .map(|(a, b)| a * left(p.passes) + b * left(p.layers));
        *p
    }
}

/// Run the initialisation on `batches` (calibration batches), reporting its progress after
/// every pass and every layer. The gradients come from the training step's backward
/// (`recompute` as in training), with the probed layers running frozen.
pub fn gradient_init(
    model: &CausalLm,
    batches: &[Batch],
    stable_gamma: f64,
    budget_bytes: usize,
    recompute: Recompute,
    seed: u64,
    progress: &mut dyn FnMut(InitProgress),
) -> Result<GradInitReport> {
    let adapted = model.adapted();
    if adapted.is_empty() {
        return Err(LorsError::invalid(
            "adapter.init",
            "no adapted layers to initialise",
        ));
    }
    // In a data-parallel run rank r initialises layers r, r + N, ...: the sweeps over the
    // calibration data that take their gradients and their SVDs (see [`share_solved`]).
    let ranks = crate::dist::ranks();
    let mine: Vec<usize> = (ranks.rank..adapted.len()).step_by(ranks.size).collect();
    let groups = budget_groups(&adapted, &mine, budget_bytes);
    let mut clock = InitClock::new(groups.len() * batches.len(), mine.len());
    let solver = solver_threads()?;
    let mut solved = Vec::with_capacity(mine.len());
    for group in &groups {
        let mut grads = Gradients::probing(group.iter().map(|&i| adapted[i].0));
        for batch in batches {
            let t = Instant::now();
            model.loss_and_grads(&batch.ids, &batch.loss_mask, 1.0, recompute, &mut grads)?;
            progress(clock.tick(t, false));
        }
        for &i in group {
            let t = Instant::now();
            let (name, layer) = &adapted[i];
            let g = grads.take_probe(*name).ok_or_else(|| {
                LorsError::invalid("adapter.init", format!("{name} received no gradient"))
            })?;
            let rank = layer.config().rank;
            let v = solver.install(|| top_right_singular_vectors(&g, rank, seed ^ i as u64))?;
            solved.push((i, (v / stable_gamma)?));
            progress(clock.tick(t, true));
        }
    }
    // Set once all are solved: every layer's gradient is taken from the same start (B = 0
    // everywhere), however the layers are grouped or shared out.
    for (i, a) in share_solved(&adapted, solved)? {
        let [(_, _), (_, b)] = adapted[i].1.trainable();
        adapted[i].1.set_adapter(&a, &b.zeros_like()?)?;
    }
    Ok(GradInitReport {
        seconds: clock.start.elapsed().as_secs_f64(),
        layers: adapted.len(),
        sequences: batches.iter().map(|b| b.ids.dim(0).unwrap_or(0)).sum(),
        sweeps: groups.len(),
    })
}

/// `layers` (indices into `adapted`) in order, in groups whose dense gradients fit
/// `budget_bytes` together (a layer larger than the budget is a group alone).
fn budget_groups(
    adapted: &[(ModuleId, &AdaptedLinear)],
    layers: &[usize],
    budget_bytes: usize,
) -> Vec<Vec<usize>> {
    let mut groups: Vec<Vec<usize>> = Vec::new();
    let mut used = 0usize;
    for &i in layers {
        let (o, n) = adapted[i].1.base().dims();
        let bytes = o * n * 4;
        match groups.last_mut() {
            Some(group) if used + bytes <= budget_bytes => group.push(i),
            _ => {
                groups.push(vec![i]);
                used = 0;
            }
        }
        used += bytes;
    }
    groups
}

/// Every layer's `A` (by index into `adapted`), on every rank, from `solved`, this rank's own:
/// layer `i` is solved by rank `i % N` alone and sent to all as f64 (exactly, and converted
/// to the adapter's dtype as the single process's `set_adapter` converts it).
fn share_solved(
    adapted: &[(ModuleId, &AdaptedLinear)],
    solved: Vec<(usize, Tensor)>,
) -> Result<Vec<(usize, Tensor)>> {
    let ranks = crate::dist::ranks();
    if ranks.size == 1 {
        return Ok(solved);
    }
    let shape = |i: usize| (adapted[i].1.config().rank, adapted[i].1.base().dims().1);
    let sizes: Vec<usize> = (0..adapted.len())
        .map(|i| shape(i).0 * shape(i).1)
        .collect();
    let starts: Vec<usize> = sizes
        .iter()
        .scan(0, |at, n| {
            *at += n;
            Some(*at - n)
        })
        .collect();
    let total: usize = sizes.iter().sum();
    let mut mine = vec![0f64; total];
    for (i, a) in &solved {
        let values = a.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?;
        mine[starts[*i]..starts[*i] + sizes[*i]].copy_from_slice(&values);
    }
    let all = crate::dist::all_gather_f64(&mine);
    (0..adapted.len())
        .map(|i| {
            let from = (i % ranks.size) * total + starts[i];
            let a = Tensor::from_slice(&all[from..from + sizes[i]], shape(i), &Device::Cpu)?;
            let var = adapted[i].1.trainable()[0].1;
            Ok((i, a.to_dtype(var.dtype())?.to_device(var.device())?))
        })
        .collect()
}

/// Threads of their own for the eigen- and singular-value solvers. faer's matrix kernels keep
/// a scratch buffer per thread of twice the L3 cache, allocated at their first use and never
/// touched after (no resident memory, but ~1 GiB each in the counting allocator's live
/// bytes); on these threads, which end with the init, the buffers go with them, and the live
/// bytes of the training that follows are its tensors again.
fn solver_threads() -> Result<rayon::ThreadPool> {
    rayon::ThreadPoolBuilder::new()
        .num_threads(rayon::current_num_threads())
        .thread_name(|i| format!("lors-init-solver-{i}"))
        .build()
        .map_err(|e| LorsError::invalid("adapter.init", format!("solver threads: {e}")))
}

/// `t` (2-D) as a host f64 matrix.
fn to_matrix(t: &Tensor) -> Result<Mat<f64>> {
    let (r, c) = t.dims2()?;
    let v = t.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?;
    Ok(Mat::from_fn(r, c, |i, j| v[i * c + j]))
}

/// The top-`rank` right singular vectors of `g` (out x in) as rows of an r x in tensor,
/// each signed so that its largest component is positive (an SVD's sign is arbitrary):
/// from the Gram matrix of the shorter side ([`gram_vectors`]) for matrices up to 1024 on
/// that side (a thin SVD where that is degenerate), else a randomised SVD (oversampling 10,
/// two power iterations).
pub fn top_right_singular_vectors(g: &Tensor, rank: usize, seed: u64) -> Result<Tensor> {
    let (out_f, in_f) = g.dims2()?;
    let rank = rank.min(out_f.min(in_f));
    let v = if out_f.min(in_f) <= FULL_SVD_MAX {
        match gram_vectors(g, rank)? {
            Some(v) => v,
            None => svd_vectors(&to_matrix(g)?, rank)?,
        }
    } else {
        randomized_vectors(&to_matrix(g)?, rank, seed)?
    };
    let mut rows = Vec::with_capacity(rank * in_f);
    for k in 0..rank {
        let col: Vec<f64> = (0..in_f).map(|j| v[(j, k)]).collect();
        let peak = col
            .iter()
            .copied()
            .fold(0f64, |m, x| if x.abs() > m.abs() { x } else { m });
        let sign = if peak < 0.0 { -1.0 } else { 1.0 };
        rows.extend(col.iter().map(|&x| (sign * x) as f32));
    }
    Ok(Tensor::from_vec(rows, (rank, in_f), &Device::Cpu)?)
}

/// Smallest `σ_k / σ_1` for which `v = Gᵀu / σ` is taken from the left Gram's vectors: the
/// division amplifies their rounding by `σ_1 / σ_k`.
const GRAM_MIN_RATIO: f64 = 1e-4;

/// The top-`rank` right singular vectors of `g` (as the columns of an in x rank matrix) from
/// the eigenvectors of its Gram matrix on the shorter side, in f64: those of `GᵀG` directly,
/// or those `u` of `GGᵀ` as `v = Gᵀu / σ`. The Gram product runs where `g` lives, and only
/// the small side's eigenproblem on the host. `None` when a needed `σ` is too small to
/// divide by (see [`GRAM_MIN_RATIO`]).
fn gram_vectors(g: &Tensor, rank: usize) -> Result<Option<Mat<f64>>> {
    let g = g.to_dtype(DType::F64)?;
    let (out_f, in_f) = g.dims2()?;
    let right = in_f <= out_f;
    let gram = if right {
        g.t()?.matmul(&g)?
    } else {
        g.matmul(&g.t()?)?
    };
    let side = gram.dim(0)?;
    let c = gram.flatten_all()?.to_vec1::<f64>()?;
    let eig = Mat::from_fn(side, side, |i, j| c[i * side + j])
        .self_adjoint_eigen(Side::Lower)
        .map_err(|e| LorsError::invalid("adapter.init", format!("eigensolver failed: {e:?}")))?;
    // Eigenvalues ascend: the top `rank` are the last columns, largest first.
    let (u, lambda) = (eig.U(), eig.S().column_vector());
    let top = |k: usize| side - 1 - k;
    if right {
        return Ok(Some(Mat::from_fn(in_f, rank, |i, k| u[(i, top(k))])));
    }
    let sigma: Vec<f64> = (0..rank).map(|k| lambda[top(k)].max(0.0).sqrt()).collect();
    if sigma.iter().any(|&s| s <= GRAM_MIN_RATIO * sigma[0]) {
        return Ok(None);
    }
    let u_top: Vec<f64> = (0..out_f)
        .flat_map(|i| (0..rank).map(move |k| (i, k)))
        .map(|(i, k)| u[(i, top(k))] / sigma[k])
        .collect();
    let u_top = Tensor::from_vec(u_top, (out_f, rank), &Device::Cpu)?.to_device(g.device())?;
    let v = g.t()?.matmul(&u_top)?.flatten_all()?.to_vec1::<f64>()?;
    Ok(Some(Mat::from_fn(in_f, rank, |i, k| v[i * rank + k])))
}

/// The top-`rank` right singular vectors of `g` (in x rank) by a thin SVD.
fn svd_vectors(g: &Mat<f64>, rank: usize) -> Result<Mat<f64>> {
    let svd = g
        .thin_svd()
        .map_err(|e| LorsError::invalid("adapter.init", format!("SVD failed: {e:?}")))?;
    Ok(svd.V().subcols(0, rank).to_owned())
}

/// [`svd_vectors`] of a randomised range: `Q` spans the top singular directions of `G`
/// (two power iterations), then the SVD of `Qᵀ·G`.
fn randomized_vectors(g: &Mat<f64>, rank: usize, seed: u64) -> Result<Mat<f64>> {
    let (out_f, in_f) = (g.nrows(), g.ncols());
    let k = (rank + 10).min(out_f.min(in_f));
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let omega = Mat::<f64>::from_fn(in_f, k, |_, _| StandardNormal.sample(&mut rng));
    let mut q = (g * &omega).qr().compute_thin_Q();
    for _ in 0..2 {
        let z = (g.transpose() * &q).qr().compute_thin_Q();
        q = (g * &z).qr().compute_thin_Q();
    }
    svd_vectors(&(q.transpose() * g), rank)
}

#[cfg(test)]
mod tests {
    use super::*;
    use nalgebra::DMatrix;

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
        let rows = got.to_dtype(DType::F64).unwrap().to_vec2::<f64>().unwrap();
        let basis = v.transpose().qr().q(); // in x r orthonormal basis of G's row space
        for (i, row) in rows.iter().enumerate() {
            let x = DMatrix::from_column_slice(in_f, 1, row);
            let proj = basis.transpose() * &x;
            assert!((proj.norm() - 1.0).abs() < 1e-6, "row {i}: {}", proj.norm());
        }
    }

    /// A wide gradient of lower rank than asked for (its left Gram's `σ_3` is zero) falls
    /// back to the thin SVD: orthonormal vectors, no division by zero.
    #[test]
    fn a_rank_deficient_wide_gradient_falls_back_to_the_svd() {
        let g: Vec<f64> = (0..4 * 10)
            .map(|i| match i / 10 {
                0 | 2 => ((i % 10) as f64 + 1.0).ln(),
                _ => ((i % 10) as f64 * 0.3).cos(),
            })
            .collect();
        let g = Tensor::from_vec(g, (4, 10), &Device::Cpu).unwrap();
        let v = top_right_singular_vectors(&g, 3, 0).unwrap();
        let v = v.to_dtype(DType::F64).unwrap().to_vec2::<f64>().unwrap();
        for a in 0..3 {
            for b in 0..3 {
                let dot: f64 = v[a].iter().zip(&v[b]).map(|(x, y)| x * y).sum();
                let want = if a == b { 1.0 } else { 0.0 };
                assert!((dot - want).abs() < 1e-5, "v{a}·v{b} = {dot}");
            }
        }
    }

    /// The init's vectors are those of the full SVD it used before (nalgebra's, in f64), up
    /// to each vector's sign, to f32 rounding (1e-6), on gradient-like matrices (a decaying
    /// spectrum, so the top vectors are well separated) of both orientations.
    #[test]
    fn the_svd_gives_the_vectors_of_the_previous_full_svd() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        for (out_f, in_f) in [(300, 120), (120, 300)] {
            let rank = 8;
            let g = DMatrix::<f64>::from_fn(out_f, in_f, |i, j| {
                let x: f64 = StandardNormal.sample(&mut rng);
                x * 0.8f64.powi((i % 40 + j % 40) as i32)
            });
            let svd = g.clone().svd(false, true);
            let mut order: Vec<usize> = (0..svd.singular_values.len()).collect();
            order.sort_by(|&a, &b| svd.singular_values[b].total_cmp(&svd.singular_values[a]));
            let v_t = svd.v_t.unwrap();
            let t = Tensor::from_vec(
                g.transpose().as_slice().to_vec(),
                (out_f, in_f),
                &Device::Cpu,
            )
            .unwrap();
            let got = top_right_singular_vectors(&t, rank, 0).unwrap();
            let got = got.to_vec2::<f32>().unwrap();
            for (k, &i) in order.iter().take(rank).enumerate() {
                let want: Vec<f64> = v_t.row(i).iter().copied().collect();
                let dot: f64 = want.iter().zip(&got[k]).map(|(a, &b)| a * b as f64).sum();
                let sign = dot.signum();
                let diff = want
                    .iter()
                    .zip(&got[k])
                    .map(|(a, &b)| (sign * a - b as f64).abs())
                    .fold(0f64, f64::max);
                assert!(diff < 1e-6, "{out_f}x{in_f} vector {k}: {diff}");
            }
        }
    }
}
