//! One test matrix across every method (PEFT-style): gradients against central finite
//! differences in f64, forward against dense references, merge keeping the zero pattern,
//! and bad input.
//!
//! Tolerances: the loss `L = Σ y ⊙ G` is linear in each of `x`, `A` and `B` taken alone, so a
//! central difference has no truncation error; what is left is rounding, about
//! `ε_f64·|L|/h ≈ 1e-16·10/1e-4 = 1e-11`. We allow `1e-8` (absolute, plus the same relative).

mod common;

use candle_core::{DType, Device, Tensor, Var};
use lors::adapters::{AdaptedLinear, AdapterConfig, Init, Method, SparseLinear};
use lors::sparsity::{magnitude_mask, BitMask, Pattern};
use lors::LorsError;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};

const H: f64 = 1e-4;
const TOL: f64 = 1e-8;

fn randn(rng: &mut ChaCha8Rng, dims: &[usize]) -> Tensor {
    let n: usize = dims.iter().product();
    let v: Vec<f64> = (0..n).map(|_| StandardNormal.sample(rng)).collect();
    Tensor::from_vec(v, dims, &Device::Cpu).unwrap()
}

#[derive(Clone, Copy, Debug)]
enum MaskKind {
    AllKept,
    Unstructured50,
    TwoFour,
}

/// A pruned f64 weight (out x in) and its mask.
fn sparse_weight(
    rng: &mut ChaCha8Rng,
    out_f: usize,
    in_f: usize,
    kind: MaskKind,
) -> (Tensor, BitMask) {
    let dense = randn(rng, &[out_f, in_f]);
    let mask = match kind {
        MaskKind::AllKept => BitMask::from_fn(out_f, in_f, |_| true),
        MaskKind::Unstructured50 => {
            magnitude_mask(&dense, Pattern::Unstructured { sparsity: 0.5 }).unwrap()
        }
        MaskKind::TwoFour => magnitude_mask(&dense, Pattern::NofM { n: 2, m: 4 }).unwrap(),
    };
    let m = mask.to_tensor(DType::F64, &Device::Cpu).unwrap();
    ((dense * m).unwrap(), mask)
}

struct Case {
    layer: AdaptedLinear,
    w: Tensor,
    mask: Tensor,
    x: Tensor,
    upstream: Tensor,
    scale: f64,
}

fn case(method: Method, kind: MaskKind, seed: u64) -> Case {
    case_with(method, kind, seed, false)
}

/// [`case`], with SoRA's gate when `sora` (set to `[0, 1.7]`: one component switched off).
fn case_with(method: Method, kind: MaskKind, seed: u64, sora: bool) -> Case {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let (out_f, in_f) = match kind {
        MaskKind::TwoFour => (7, 8),
        _ => (7, 5),
    };
    let (w, mask) = sparse_weight(&mut rng, out_f, in_f, kind);
    let mask_t = mask.to_tensor(DType::F64, &Device::Cpu).unwrap();
    let config = AdapterConfig {
        method,
        rank: 2,
        alpha: 3.0,
        rslora: true,
        init: Init::Standard,
        sora,
    };
    let layer = AdaptedLinear::new(
        SparseLinear::new(w.clone(), None, Some(mask)).unwrap(),
        &config,
        &mut rng,
    )
    .unwrap();
    // Nonzero A and B so that every gradient is nontrivial.
    let [(_, a), (_, b)] = layer.trainable();
    let (a_dims, b_dims) = (a.dims().to_vec(), b.dims().to_vec());
    layer
        .set_adapter(&randn(&mut rng, &a_dims), &randn(&mut rng, &b_dims))
        .unwrap();
    if sora {
        let g = Tensor::new(&[0.0f64, 1.7], &Device::Cpu).unwrap();
        layer.set_gate(&g).unwrap();
    }
    let x = randn(&mut rng, &[2, 3, in_f]);
    let upstream = randn(&mut rng, &[2, 3, out_f]);
    Case {
        layer,
        w,
        mask: mask_t,
        x,
        upstream,
        scale: config.scale(),
    }
}

/// Independent dense references, written with plain tensor ops.
fn lora_ref(c: &Case, x: &Tensor, a: &Tensor, b: &Tensor) -> Tensor {
    let base = x.broadcast_matmul(&c.w.t().unwrap()).unwrap();
    let side = x
        .broadcast_matmul(&a.t().unwrap())
        .unwrap()
        .broadcast_matmul(&b.t().unwrap())
        .unwrap();
    (base + (side * c.scale).unwrap()).unwrap()
}

fn masked_ref(c: &Case, x: &Tensor, a: &Tensor, b: &Tensor) -> Tensor {
    let merged = ((&c.w + (b.matmul(a).unwrap() * c.scale).unwrap()).unwrap() * &c.mask).unwrap();
    x.broadcast_matmul(&merged.t().unwrap()).unwrap()
}

fn spp_ref(c: &Case, x: &Tensor, wa: &Tensor, w_col: &Tensor) -> Tensor {
    let (out_f, in_f) = c.w.dims2().unwrap();
    let r = wa.dim(0).unwrap();
    let wa_v = wa.to_vec2::<f64>().unwrap();
    let col = w_col.flatten_all().unwrap().to_vec1::<f64>().unwrap();
    let w_v = c.w.to_vec2::<f64>().unwrap();
    let mut merged = vec![0f64; out_f * in_f];
    for i in 0..out_f {
        for j in 0..in_f {
            let delta = wa_v[i * r / out_f][j] * col[i] * w_v[i][j];
            merged[i * in_f + j] = w_v[i][j] + delta;
        }
    }
    let merged = Tensor::from_vec(merged, (out_f, in_f), &Device::Cpu).unwrap();
    x.broadcast_matmul(&merged.t().unwrap()).unwrap()
}

type RefFn = fn(&Case, &Tensor, &Tensor, &Tensor) -> Tensor;

fn loss(c: &Case, y: &Tensor) -> f64 {
    (y * &c.upstream)
        .unwrap()
        .sum_all()
        .unwrap()
        .to_scalar::<f64>()
        .unwrap()
}

/// Central differences of `loss(f(x, a, b))` with respect to argument `which` (0: x, 1: a, 2: b).
fn finite_diff(c: &Case, f: RefFn, which: usize) -> Vec<f64> {
    let [(_, a), (_, b)] = c.layer.trainable();
    let args = [c.x.clone(), a.as_tensor().clone(), b.as_tensor().clone()];
    let base = args[which].flatten_all().unwrap().to_vec1::<f64>().unwrap();
    let dims = args[which].dims().to_vec();
    (0..base.len())
        .map(|i| {
            let at = |delta: f64| {
                let mut v = base.clone();
                v[i] += delta;
                let mut p = args.clone();
                p[which] = Tensor::from_vec(v, dims.as_slice(), &Device::Cpu).unwrap();
                loss(c, &f(c, &p[0], &p[1], &p[2]))
            };
            (at(H) - at(-H)) / (2.0 * H)
        })
        .collect()
}

/// Gradients of `loss(layer(x))` from the layer's own backward: (x, A, B).
fn analytic(c: &Case) -> [Vec<f64>; 3] {
    let x = Var::from_tensor(&c.x).unwrap();
    let y = c.layer.forward(x.as_tensor()).unwrap();
    let grads = (&y * &c.upstream)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    let [(_, a), (_, b)] = c.layer.trainable();
    let flat = |t: &Tensor| {
        grads
            .get(t)
            .expect("gradient")
            .flatten_all()
            .unwrap()
            .to_vec1::<f64>()
            .unwrap()
    };
    [
        flat(x.as_tensor()),
        flat(a.as_tensor()),
        flat(b.as_tensor()),
    ]
}

fn assert_close(what: &str, got: &[f64], want: &[f64]) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= TOL * (1.0 + w.abs()),
            "{what}[{i}]: got {g}, finite differences give {w}"
        );
    }
}

const MASKS: [MaskKind; 3] = [
    MaskKind::AllKept,
    MaskKind::Unstructured50,
    MaskKind::TwoFour,
];

#[test]
fn gradients_match_finite_differences_for_every_method_and_mask() {
    for (k, kind) in MASKS.into_iter().enumerate() {
        for &method in Method::ALL {
            let c = case(method, kind, 100 + k as u64);
            let [gx, ga, gb] = analytic(&c);
            let label = |p: &str| format!("{method} {kind:?} grad_{p}");
            // The reference each gradient must equal (module docs of `low_rank_op`).
            let (fx, fa, fb): (RefFn, RefFn, RefFn) = match method {
                Method::Lora => (lora_ref, lora_ref, lora_ref),
                Method::Sqft | Method::LorsExact => (masked_ref, masked_ref, masked_ref),
                // Forward is the masked one; adapter gradients are LoRA's (graph rearrangement).
                Method::Lors => (masked_ref, lora_ref, lora_ref),
                Method::Spp => (spp_ref, spp_ref, spp_ref),
            };
            assert_close(&label("x"), &gx, &finite_diff(&c, fx, 0));
            assert_close(&label("A"), &ga, &finite_diff(&c, fa, 1));
            assert_close(&label("B"), &gb, &finite_diff(&c, fb, 2));
        }
    }
}

/// Central differences of `f` with respect to each entry of `at`.
fn finite_diff_of(at: &Tensor, f: impl Fn(&Tensor) -> f64) -> Vec<f64> {
    let base = at.flatten_all().unwrap().to_vec1::<f64>().unwrap();
    (0..base.len())
        .map(|i| {
            let moved = |delta: f64| {
                let mut v = base.clone();
                v[i] += delta;
                f(&Tensor::from_vec(v, at.dims(), &Device::Cpu).unwrap())
            };
            (moved(H) - moved(-H)) / (2.0 * H)
        })
        .collect()
}

/// SoRA's gate: `B` enters every product as `B·diag(g)`. For each low-rank method, the
/// layer's hand-written backward (the engine's path) gives the gradients of x, A, B and the
/// gate equal to central differences of the method's reference with `B·diag(g)` (f64, the
/// same tolerance as above: the loss is linear in g taken alone); the graph's forward gives
/// the same gate gradient, and the merge folds the gate in.
#[test]
fn sora_gate_gradients_match_finite_differences() {
    for method in [Method::Lors, Method::LorsExact, Method::Sqft, Method::Lora] {
        let c = case_with(method, MaskKind::Unstructured50, 300, true);
        let [(_, a), (_, b)] = c.layer.trainable();
        let (a, b) = (a.as_tensor().clone(), b.as_tensor().clone());
        let g = c.layer.gate().expect("a gated layer").as_tensor().clone();
        let (fx, fab): (RefFn, RefFn) = match method {
            Method::Lora => (lora_ref, lora_ref),
            Method::Lors => (masked_ref, lora_ref),
            _ => (masked_ref, masked_ref),
        };
        let gated = |f: RefFn, x: &Tensor, a: &Tensor, b: &Tensor, g: &Tensor| {
            loss(
                &c,
                &f(
                    &c,
                    x,
                    a,
                    &b.broadcast_mul(&g.unsqueeze(0).unwrap()).unwrap(),
                ),
            )
        };
        let grads = c.layer.backward(&c.x, &c.upstream).unwrap();
        let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f64>().unwrap();
        let label = |p: &str| format!("{method} sora grad_{p}");
        let want_x = finite_diff_of(&c.x, |x| gated(fx, x, &a, &b, &g));
        assert_close(&label("x"), &flat(&grads.x), &want_x);
        let want_a = finite_diff_of(&a, |a| gated(fab, &c.x, a, &b, &g));
        assert_close(&label("A"), &flat(&grads.pair[0]), &want_a);
        let want_b = finite_diff_of(&b, |b| gated(fab, &c.x, &a, b, &g));
        assert_close(&label("B"), &flat(&grads.pair[1]), &want_b);
        let want_g = finite_diff_of(&g, |g| gated(fab, &c.x, &a, &b, g));
        let got_g = flat(grads.gate.as_ref().expect("a gate gradient"));
        assert_close(&label("gate"), &got_g, &want_g);
        assert!(want_g[0] != 0.0, "a zero gate still has a gradient");
        if method != Method::Lors {
            // The graph's gradient is the exact one (lors' rearranged one is only in backward).
            let y = c.layer.forward(&c.x).unwrap();
            let graph = (&y * &c.upstream)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            let gate_var = c.layer.gate().unwrap().as_tensor();
            assert_close(
                &label("gate, graph"),
                &flat(graph.get(gate_var).unwrap()),
                &want_g,
            );
        }
        let merged = c.layer.merge().unwrap().0;
        let b_eff = b.broadcast_mul(&g.unsqueeze(0).unwrap()).unwrap();
        let want = masked_or_dense(&c, method, &b_eff.matmul(&a).unwrap());
        assert!(
            common::max_abs_diff(&merged, &want) < 1e-12,
            "{method}: merge folds g"
        );
    }
}

/// `W + s·ΔW`, masked for the masked methods.
fn masked_or_dense(c: &Case, method: Method, delta: &Tensor) -> Tensor {
    let sum = (&c.w + (delta * c.scale).unwrap()).unwrap();
    match method.is_masked() {
        true => (sum * &c.mask).unwrap(),
        false => sum,
    }
}

#[test]
fn approx_and_exact_agree_without_pruning_and_differ_with_it() {
    let grads = |method, kind| analytic(&case(method, kind, 7));
    let [_, ea, eb] = grads(Method::LorsExact, MaskKind::AllKept);
    let [_, aa, ab] = grads(Method::Lors, MaskKind::AllKept);
    assert_close("all-kept grad_A approx vs exact", &aa, &ea);
    assert_close("all-kept grad_B approx vs exact", &ab, &eb);
    let [_, ea, _] = grads(Method::LorsExact, MaskKind::Unstructured50);
    let [_, aa, _] = grads(Method::Lors, MaskKind::Unstructured50);
    let diff: f64 = ea.iter().zip(&aa).map(|(e, a)| (e - a).abs()).sum();
    assert!(
        diff > 1e-3,
        "with a 50% mask the exact gradient must differ from the approx one"
    );
}

#[test]
fn forward_equals_dense_reference() {
    for kind in MASKS {
        for &method in Method::ALL {
            let c = case(method, kind, 300);
            let [(_, a), (_, b)] = c.layer.trainable();
            let reference: RefFn = match method {
                Method::Lora => lora_ref,
                Method::Spp => spp_ref,
                _ => masked_ref,
            };
            let want = reference(&c, &c.x, a.as_tensor(), b.as_tensor());
            let got = c.layer.forward(&c.x).unwrap();
            assert_eq!(got.dims(), want.dims());
            let g = got.flatten_all().unwrap().to_vec1::<f64>().unwrap();
            let w = want.flatten_all().unwrap().to_vec1::<f64>().unwrap();
            // Same math in a different order: f64 rounding only.
            assert_close(&format!("{method} {kind:?} forward"), &g, &w);
        }
    }
}

#[test]
fn bias_is_added_and_frozen() {
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let (w, _) = sparse_weight(&mut rng, 6, 8, MaskKind::TwoFour);
    let bias = randn(&mut rng, &[6]);
    let x = randn(&mut rng, &[4, 8]);
    let config = AdapterConfig {
        method: Method::Lors,
        rank: 2,
        ..AdapterConfig::default()
    };
    let with = AdaptedLinear::new(
        SparseLinear::new(w.clone(), Some(bias.clone()), None).unwrap(),
        &config,
        &mut rng,
    )
    .unwrap();
    let without = SparseLinear::new(w, None, None).unwrap();
    // B = 0 at init, so the adapted layer is the base layer plus its bias.
    let diff = (with.forward(&x).unwrap()
        - without.forward(&x).unwrap().broadcast_add(&bias).unwrap())
    .unwrap()
    .abs()
    .unwrap()
    .max_all()
    .unwrap()
    .to_scalar::<f64>()
    .unwrap();
    assert!(diff < 1e-12, "bias: {diff}");
}

/// Zero positions of a weight, one bit per weight (compared with `==`).
/// A 64x96 weight pruned as `kind`, in `dtype`, and a layer with `config`'s adapter on it.
fn adapted_sparse_layer(
    rng: &mut ChaCha8Rng,
    kind: MaskKind,
    dtype: DType,
    config: &AdapterConfig,
) -> (Tensor, AdaptedLinear) {
    let (w, _) = sparse_weight(rng, 64, 96, kind);
    let w = w.to_dtype(dtype).unwrap();
    let base = SparseLinear::new(w.clone(), None, None).unwrap();
    (w, AdaptedLinear::new(base, config, rng).unwrap())
}

fn zero_bits(t: &Tensor) -> BitMask {
    BitMask::from_nonzero(t).unwrap()
}

#[test]
fn merge_keeps_zero_pattern_bit_for_bit() {
    for dtype in [DType::F32, DType::BF16] {
        for kind in [MaskKind::Unstructured50, MaskKind::TwoFour] {
            for method in Method::ALL.iter().copied().filter(|m| m.is_masked()) {
                let mut rng = ChaCha8Rng::seed_from_u64(11);
                let config = AdapterConfig {
                    method,
                    rank: 4,
                    ..AdapterConfig::default()
                };
                let (w, layer) = adapted_sparse_layer(&mut rng, kind, dtype, &config);
                let [(_, a), (_, b)] = layer.trainable();
                let (ad, bd) = (a.dims().to_vec(), b.dims().to_vec());
                layer
                    .set_adapter(&randn(&mut rng, &ad), &randn(&mut rng, &bd))
                    .unwrap();
                let (merged, report) = layer.merge().unwrap();
                assert_eq!(merged.dtype(), dtype);
                assert_eq!(
                    zero_bits(&merged),
                    zero_bits(&w),
                    "{method} {kind:?} {dtype:?}"
                );
                assert_eq!(
                    common::pruned_not_positive_zero(&merged, &w),
                    0,
                    "{method} {kind:?} {dtype:?}: pruned weights are +0.0"
                );
                assert!(report.pattern_preserved);
                assert_eq!(report.density_after, report.density_before);
                assert!((report.density_before - 0.5).abs() < 1e-12);
                // And the merge did change the kept weights.
                let changed = common::max_abs_diff(&merged, &w);
                assert!(changed > 1e-3, "{method}: merge changed nothing");
            }
        }
    }
}

#[test]
fn merged_forward_equals_adapted_forward() {
    for &method in Method::ALL {
        let c = case(method, MaskKind::Unstructured50, 21);
        let (merged, _) = c.layer.merge().unwrap();
        let y_merged = SparseLinear::new(merged, None, None)
            .unwrap()
            .forward(&c.x)
            .unwrap();
        let y_adapted = c.layer.forward(&c.x).unwrap();
        let g = y_merged.flatten_all().unwrap().to_vec1::<f64>().unwrap();
        let w = y_adapted.flatten_all().unwrap().to_vec1::<f64>().unwrap();
        assert_close(&format!("{method} merged vs adapted"), &g, &w);
    }
}

#[test]
fn lora_merge_reports_the_density_it_produced() {
    let c = case(Method::Lora, MaskKind::Unstructured50, 31);
    let (merged, report) = c.layer.merge().unwrap();
    assert!(!report.pattern_preserved);
    // 7x5 at 50% keeps round(2.5) = 3 of 5 per row.
    assert_eq!(report.density_before, c.layer.base().density());
    assert!((report.density_before - 0.6).abs() < 1e-12);
    assert_eq!(report.density_after, zero_bits(&merged).density());
    assert!(
        report.density_after > 0.99,
        "a dense B·A fills the pruned weights"
    );
}

#[test]
fn merge_keeps_a_kept_weight_nonzero_on_exact_cancellation() {
    // W = [[0.5, 0], [0, 0.25]], s = 1 (alpha = r = 1, no rslora), B·A = -W at (0, 0).
    let w = Tensor::new(&[[0.5f32, 0.0], [0.0, 0.25]], &Device::Cpu).unwrap();
    let config = AdapterConfig {
        method: Method::Lors,
        rank: 1,
        alpha: 1.0,
        rslora: false,
        init: Init::Standard,
        sora: false,
    };
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let layer = AdaptedLinear::new(
        SparseLinear::new(w.clone(), None, None).unwrap(),
        &config,
        &mut rng,
    )
    .unwrap();
    let a = Tensor::new(&[[1f32, 1.0]], &Device::Cpu).unwrap();
    let b = Tensor::new(&[[-0.5f32], [1.0]], &Device::Cpu).unwrap();
    layer.set_adapter(&a, &b).unwrap();
    let (merged, report) = layer.merge().unwrap();
    assert_eq!(report.nudged, 1);
    assert_eq!(zero_bits(&merged), zero_bits(&w));
    let v = merged.to_vec2::<f32>().unwrap();
    assert_eq!(v[0][0], f32::from_bits(1));
    assert_eq!(v[1][1], 1.25);
    assert_eq!((v[0][1], v[1][0]), (0.0, 0.0));
}

#[test]
fn bad_input_is_a_typed_error() {
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let (w, mask) = sparse_weight(&mut rng, 6, 4, MaskKind::Unstructured50);
    let base = || SparseLinear::new(w.clone(), None, None).unwrap();
    let config = |rank| AdapterConfig {
        method: Method::Lors,
        rank,
        ..AdapterConfig::default()
    };

    let err = AdaptedLinear::new(base(), &config(0), &mut rng).unwrap_err();
    assert!(
        matches!(err, LorsError::InvalidValue { ref field, .. } if field == "rank"),
        "{err}"
    );
    let err = AdaptedLinear::new(base(), &config(5), &mut rng).unwrap_err();
    assert!(
        matches!(
            err,
            LorsError::Rank {
                rank: 5,
                max: 4,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("between 1 and 4"), "{err}");

    let wrong_mask = BitMask::from_fn(4, 6, |_| true);
    let err = SparseLinear::new(w.clone(), None, Some(wrong_mask)).unwrap_err();
    assert!(matches!(err, LorsError::Shape { .. }), "{err}");
    assert!(err.to_string().contains("[6, 4]"), "{err}");
    assert!(SparseLinear::new(w.clone(), None, Some(mask)).is_ok());

    let err = SparseLinear::new(w.clone(), Some(randn(&mut rng, &[4])), None).unwrap_err();
    assert!(matches!(err, LorsError::Shape { .. }), "{err}");
    let err = SparseLinear::new(randn(&mut rng, &[2, 3, 4]), None, None).unwrap_err();
    assert!(matches!(err, LorsError::Shape { .. }), "{err}");

    for &method in Method::ALL {
        let layer = AdaptedLinear::new(
            base(),
            &AdapterConfig {
                method,
                rank: 2,
                ..AdapterConfig::default()
            },
            &mut rng,
        )
        .unwrap();
        let err = layer.forward(&randn(&mut rng, &[3, 5])).unwrap_err();
        assert!(matches!(err, LorsError::Shape { .. }), "{method}: {err}");
        let err = layer
            .forward(&randn(&mut rng, &[3, 4]).to_dtype(DType::F32).unwrap())
            .unwrap_err();
        assert!(
            matches!(err, LorsError::UnsupportedDType { .. }),
            "{method}: {err}"
        );
        let err = layer
            .set_adapter(&randn(&mut rng, &[3, 4]), &randn(&mut rng, &[6, 2]))
            .unwrap_err();
        assert!(matches!(err, LorsError::Shape { .. }), "{method}: {err}");
    }

    let err = AdaptedLinear::new(
        base(),
        &AdapterConfig {
            alpha: f64::NAN,
            ..config(2)
        },
        &mut rng,
    )
    .unwrap_err();
    assert!(
        matches!(err, LorsError::InvalidValue { ref field, .. } if field == "alpha"),
        "{err}"
    );
    assert!("5:4".parse::<lors::sparsity::Layout>().is_err());
    assert!("lors-fast".parse::<Method>().is_err());
}

/// Orthogonal init (PEFT's): both factors nonzero, yet the untrained merge is the base to
/// rounding (B·A vanishes in exact arithmetic, ~1e-9 in f32) on unstructured and 2:4 weights.
/// The masked methods keep every zero; plain lora's dense merge already fills the pruned
/// positions with that rounding noise, before any training (why PEFT's init is not mask-safe).
#[test]
fn orthogonal_init_starts_as_the_base_and_keeps_every_zero() {
    for kind in [MaskKind::Unstructured50, MaskKind::TwoFour] {
        for method in [Method::Lors, Method::LorsExact, Method::Sqft, Method::Lora] {
            let mut rng = ChaCha8Rng::seed_from_u64(12);
            let config = AdapterConfig {
                method,
                rank: 8,
                init: Init::Orthogonal,
                ..AdapterConfig::default()
            };
            let (w, layer) = adapted_sparse_layer(&mut rng, kind, DType::F32, &config);
            let [(_, a), (_, b)] = layer.trainable();
            for t in [a, b] {
                let max = t
                    .abs()
                    .unwrap()
                    .max_all()
                    .unwrap()
                    .to_dtype(DType::F64)
                    .unwrap();
                assert!(
                    max.to_scalar::<f64>().unwrap() > 0.01,
                    "{method}: a zero factor"
                );
            }
            let (merged, report) = layer.merge().unwrap();
            if method.is_masked() {
                assert_eq!(zero_bits(&merged), zero_bits(&w), "{method} {kind:?}");
            } else {
                assert!(!report.pattern_preserved && report.density_after > 0.9);
            }
            let diff = common::max_abs_diff(&merged, &w);
            assert!(
                diff < 1e-6,
                "{method} {kind:?}: untrained merge moved by {diff}"
            );
        }
    }
}

/// OLoRA (mask-safe): `B₀` has orthonormal columns and `A₀ = B₀ᵀ·W` (so `B₀·A₀` is `W`
/// projected on its first r columns' span, as PEFT's `Q[:, :r]·R[:r, :]`), even when pruning
/// zeroed the whole first column; the untrained merge is the base **bit for bit** (the update
/// `s·(B·A − B₀·A₀)` is exactly zero), on unstructured and 2:4 weights, in f32 and f64; and
/// with trained (random) factors every gradient matches central differences of
/// `(W + s·(B·A − B₀·A₀)) ⊙ M` (f64, the tolerance above), with lors' adapter gradients the
/// rearranged (unmasked) ones as usual.
#[test]
fn olora_starts_as_the_base_bit_for_bit_and_trains_the_residual_form() {
    for kind in [MaskKind::Unstructured50, MaskKind::TwoFour] {
        for method in [Method::Lors, Method::LorsExact, Method::Sqft, Method::Lora] {
            let mut rng = ChaCha8Rng::seed_from_u64(21);
            let (w, _) = sparse_weight(&mut rng, 12, 16, kind);
            let w = w
                .slice_assign(
                    &[0..12, 0..1],
                    &Tensor::zeros((12, 1), DType::F64, &Device::Cpu).unwrap(),
                )
                .unwrap();
            let mask = zero_bits(&w);
            let config = AdapterConfig {
                method,
                rank: 3,
                init: Init::Olora,
                ..AdapterConfig::default()
            };
            for dtype in [DType::F64, DType::F32] {
                let w = w.to_dtype(dtype).unwrap();
                let base = SparseLinear::new(w.clone(), None, Some(mask.clone())).unwrap();
                let layer = AdaptedLinear::new(base, &config, &mut rng).unwrap();
                let merged = layer.merge().unwrap().0;
                let same = merged
                    .to_dtype(DType::F64)
                    .unwrap()
                    .to_vec2::<f64>()
                    .unwrap()
                    == w.to_dtype(DType::F64).unwrap().to_vec2::<f64>().unwrap();
                assert!(
                    same,
                    "{method} {kind:?} {dtype:?}: untrained merge is not the base"
                );
            }
            let base = SparseLinear::new(w.clone(), None, Some(mask.clone())).unwrap();
            let layer = AdaptedLinear::new(base, &config, &mut rng).unwrap();
            let [(_, a0), (_, b0)] = layer.trainable();
            // Copies: setting the variables below writes into their storage.
            let (a0, b0) = (
                a0.as_tensor().copy().unwrap(),
                b0.as_tensor().copy().unwrap(),
            );
            let gram = b0.t().unwrap().matmul(&b0).unwrap();
            let eye = Tensor::eye(3, DType::F64, &Device::Cpu).unwrap();
            assert!(
                common::max_abs_diff(&gram, &eye) < 1e-12,
                "{method}: B₀ orthonormal"
            );
            let projected = b0.t().unwrap().matmul(&w).unwrap();
            assert!(common::max_abs_diff(&a0, &projected) < 1e-12, "A₀ = B₀ᵀW");
            // Train-like factors, then gradients against the residual form's differences.
            let (a, b) = (randn(&mut rng, &[3, 16]), randn(&mut rng, &[12, 3]));
            layer.set_adapter(&a, &b).unwrap();
            let c = Case {
                layer,
                w: w.clone(),
                mask: mask.to_tensor(DType::F64, &Device::Cpu).unwrap(),
                x: randn(&mut rng, &[2, 3, 16]),
                upstream: randn(&mut rng, &[2, 3, 12]),
                scale: config.scale(),
            };
            let (fx, fab): (RefFn, RefFn) = match method {
                Method::Lora => (lora_ref, lora_ref),
                Method::Lors => (masked_ref, lora_ref),
                _ => (masked_ref, masked_ref),
            };
            let residual = |f: RefFn, x: &Tensor, a: &Tensor, b: &Tensor| {
                let a_cat = Tensor::cat(&[a, &a0], 0).unwrap();
                let b_cat = Tensor::cat(&[b, &b0.neg().unwrap()], 1).unwrap();
                loss(&c, &f(&c, x, &a_cat, &b_cat))
            };
            let grads = c.layer.backward(&c.x, &c.upstream).unwrap();
            let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f64>().unwrap();
            let label = |p: &str| format!("{method} {kind:?} olora grad_{p}");
            let want_x = finite_diff_of(&c.x, |x| residual(fx, x, &a, &b));
            assert_close(&label("x"), &flat(&grads.x), &want_x);
            let want_a = finite_diff_of(&a, |a| residual(fab, &c.x, a, &b));
            assert_close(&label("A"), &flat(&grads.pair[0]), &want_a);
            let want_b = finite_diff_of(&b, |b| residual(fab, &c.x, &a, b));
            assert_close(&label("B"), &flat(&grads.pair[1]), &want_b);
        }
    }
}

/// Flat-LoRA: with a step's noise set, a layer computes (forward and backward, bit for bit) what
/// the same layer computes on the explicitly perturbed base `W + ε ⊙ M` (ε drawn from the
/// merged weight `(W + s·B·A) ⊙ M` as the step does), which differs from the plain layer's
/// output and input gradient; the
/// merge never includes ε; clearing the noise restores the plain layer exactly.
#[test]
fn flat_lora_trains_against_the_masked_perturbed_weight() {
    use lors::adapters::FlatNoise;
    for method in [Method::Lors, Method::LorsExact, Method::Sqft, Method::Lora] {
        let c = case(method, MaskKind::Unstructured50, 500);
        let noise = FlatNoise {
            seed: 1,
            layer: 4,
            step: 9,
            strength: 0.3,
        };
        let plain_y = c.layer.forward(&c.x).unwrap();
        let plain = c.layer.backward(&c.x, &c.upstream).unwrap();
        let merged = c.layer.merge().unwrap().0;
        c.layer.set_flat_noise(Some(noise));
        let y = c.layer.forward(&c.x).unwrap();
        let noisy = c.layer.backward(&c.x, &c.upstream).unwrap();
        assert_eq!(
            c.layer.merge().unwrap().0.to_vec2::<f64>().unwrap(),
            merged.to_vec2::<f64>().unwrap()
        );
        // The same layer on an explicitly perturbed base.
        let bits = c.layer.base().mask().as_ref().clone();
        let eps = noise.perturbation(&merged_plain(&c), &bits).unwrap();
        let perturbed = SparseLinear::new((&c.w + &eps).unwrap(), None, Some(bits)).unwrap();
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        let twin = AdaptedLinear::new(perturbed, c.layer.config(), &mut rng).unwrap();
        let [(_, a), (_, b)] = c.layer.trainable();
        twin.set_adapter(a.as_tensor(), b.as_tensor()).unwrap();
        let want_y = twin.forward(&c.x).unwrap();
        let want = twin.backward(&c.x, &c.upstream).unwrap();
        let v = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f64>().unwrap();
        assert_eq!(v(&y), v(&want_y), "{method}: forward");
        for (got, want) in [
            (&noisy.x, &want.x),
            (&noisy.pair[0], &want.pair[0]),
            (&noisy.pair[1], &want.pair[1]),
        ] {
            assert_eq!(v(got), v(want), "{method}: backward");
        }
        assert!(
            common::max_abs_diff(&y, &plain_y) > 1e-3,
            "{method}: the noise matters"
        );
        // Alone, a layer's adapter gradients do not depend on its weight (the loss is linear
        // in it); the input's does, and reaches the adapters of the layers before it.
        assert!(common::max_abs_diff(&noisy.x, &plain.x) > 1e-3);
        c.layer.set_flat_noise(None);
        assert_eq!(v(&c.layer.forward(&c.x).unwrap()), v(&plain_y));
    }
}

/// `(W + s·B·A) ⊙ M` of a case, written out.
fn merged_plain(c: &Case) -> Tensor {
    let [(_, a), (_, b)] = c.layer.trainable();
    let delta = b.as_tensor().matmul(a.as_tensor()).unwrap();
    ((&c.w + (delta * c.scale).unwrap()).unwrap() * &c.mask).unwrap()
}

/// XGBLoRA's fold on a bf16 base: three rounds of `W ← M ? W + s·B·A : +0.0` with different
/// boosters give, bit for bit, the f32 computation rounded once to bf16 (the f32 master keeps
/// the rounds from drifting), every pruned weight `+0.0` after each round, and the
/// reset adapter computes the folded base (`B = 0`).
#[test]
fn boosting_folds_through_the_mask_in_an_f32_master() {
    let mut rng = ChaCha8Rng::seed_from_u64(31);
    let config = AdapterConfig {
        method: Method::LorsExact,
        rank: 2,
        ..AdapterConfig::default()
    };
    let (w, mut layer) = adapted_sparse_layer(&mut rng, MaskKind::TwoFour, DType::BF16, &config);
    let keep = zero_bits(&w).to_tensor(DType::F32, &Device::Cpu).unwrap();
    let mut want = w.to_dtype(DType::F32).unwrap();
    for _ in 0..3 {
        let [(_, a), (_, b)] = layer.trainable();
        let (a, b) = (
            randn(&mut rng, a.dims()).to_dtype(DType::F32).unwrap(),
            (randn(&mut rng, b.dims()) * 0.01)
                .unwrap()
                .to_dtype(DType::F32)
                .unwrap(),
        );
        layer.set_adapter(&a, &b).unwrap();
        let delta = (b.matmul(&a).unwrap() * config.scale()).unwrap();
        want = ((want + delta).unwrap() * &keep).unwrap();
        layer.fold_into_base().unwrap();
        let base = layer.base().weight();
        assert_eq!(base.dtype(), DType::BF16);
        assert_eq!(zero_bits(base), zero_bits(&w), "zeros after a round");
        assert_eq!(
            common::pruned_not_positive_zero(base, &w),
            0,
            "+0.0 after a round"
        );
        let want_bf16 = want.to_dtype(DType::BF16).unwrap();
        assert_eq!(
            base.to_dtype(DType::F32).unwrap().to_vec2::<f32>().unwrap(),
            want_bf16
                .to_dtype(DType::F32)
                .unwrap()
                .to_vec2::<f32>()
                .unwrap()
        );
        layer.reset_adapter(&mut rng).unwrap();
        let merged = layer.merge().unwrap().0;
        assert_eq!(
            common::max_abs_diff(&merged, base),
            0.0,
            "a fresh booster adds nothing"
        );
    }
}
