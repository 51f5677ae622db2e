//! The training step's hand-written backward (each decoder block's own, under both recompute
//! policies, with the chunked attention and the fused chunked loss) against candle's autograd
//! through the differentiable reference forward (`forward_autograd`), for every method, on
//! the real stories260K-wanda-50 and on a random Qwen2-shaped model (GQA, q/k/v bias).
//!
//! In f64 the two must agree to 1e-10 of the largest gradient entry (and of the loss): they
//! add the same terms in different orders (fused RMSNorm, chunked softmax, scores scaled
//! after the product), so only roundings differ (~1e-15), while a wrong term is O(1). In f32,
//! the training dtype, the bound is 1e-5.

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use lors::adapters::{AdapterConfig, Init, Method};
use lors::model::random::{random_weights, small_config, write_checkpoint};
use lors::model::{AdapterSpec, CausalLm, Gradients, ModelDir, Recompute};
use lors::sparsity::Pattern;
use lors::train::loss::causal_lm_loss;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const METHODS: [Method; 5] = [
    Method::Lors,
    Method::LorsExact,
    Method::Lora,
    Method::Sqft,
    Method::Spp,
];

/// What varies between the checked models besides the method.
#[derive(Clone, Copy, Default)]
struct Variant {
    /// Leading blocks without adapters.
    frozen_blocks: usize,
    /// SoRA's gates (set to random values, so their gradients carry signal).
    sora: bool,
}

fn adapted_model(dir: &ModelDir, method: Method, dtype: DType, variant: Variant) -> CausalLm {
    let spec = AdapterSpec {
        config: AdapterConfig {
            method,
            rank: 4,
            alpha: 8.0,
            rslora: false,
            init: Init::Standard,
            sora: variant.sora,
        },
        targets: lors::model::Proj::ALL.to_vec(),
        frozen_blocks: variant.frozen_blocks,
    };
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let model = CausalLm::from_source(
        &dir.config,
        &dir.weights().unwrap(),
        dtype,
        &Device::Cpu,
        Some(&spec),
        &mut rng,
    )
    .unwrap();
    // Both adapter tensors nonzero, so every gradient path carries signal.
    for (_, layer) in model.adapted() {
        let [(_, a), (_, b)] = layer.trainable();
        let mut random = |t: &Tensor| {
            let v: Vec<f64> = (0..t.elem_count())
                .map(|_| rng.random_range(-0.2..0.2))
                .collect();
            Tensor::from_vec(v, t.shape(), &Device::Cpu).unwrap()
        };
        let (a2, b2) = (random(a.as_tensor()), random(b.as_tensor()));
        layer.set_adapter(&a2, &b2).unwrap();
        if let Some(g) = layer.gate() {
            let g2 = (random(g.as_tensor()) + 1.0).unwrap();
            layer.set_gate(&g2).unwrap();
        }
    }
    model
}

fn batch(vocab: usize, t: usize) -> (Tensor, Tensor) {
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    let ids: Vec<u32> = (0..2 * t)
        .map(|_| rng.random_range(0..vocab as u32))
        .collect();
    // The second row is padded after 3/4 of its length.
    let mask: Vec<f32> = (0..2 * t)
        .map(|i| {
            if i >= t && i - t >= 3 * t / 4 {
                0.0
            } else {
                1.0
            }
        })
        .collect();
    (
        Tensor::from_vec(ids, (2, t), &Device::Cpu).unwrap(),
        Tensor::from_vec(mask, (2, t), &Device::Cpu).unwrap(),
    )
}

fn values(t: &Tensor) -> Vec<f64> {
    let t = t.to_dtype(DType::F64).unwrap();
    t.flatten_all().unwrap().to_vec1::<f64>().unwrap()
}

fn max_rel(got: &Tensor, want: &Tensor) -> f64 {
    let (g, w) = (values(got), values(want));
    let scale = w.iter().fold(0f64, |m, x| m.max(x.abs()));
    assert!(scale > 0.0, "a reference gradient is all zeros");
    g.iter()
        .zip(&w)
        .map(|(a, b)| (a - b).abs() / scale)
        .fold(0.0, f64::max)
}

/// Every method under both policies: the loss and every adapter gradient of the engine in
/// `dtype` within `tol` of the largest entry of autograd's through the reference forward in
/// f64 (the truth, so an f32 check measures the engine's rounding alone, not the sum of its
/// and f32 autograd's); returns the largest difference seen.
fn check_model(dir: &ModelDir, seq: usize, dtype: DType, tol: f64) -> f64 {
    check_methods(dir, seq, dtype, tol, &METHODS, Variant::default())
}

/// [`check_model`] for `methods`, on models of `variant`.
fn check_methods(
    dir: &ModelDir,
    seq: usize,
    dtype: DType,
    tol: f64,
    methods: &[Method],
    variant: Variant,
) -> f64 {
    let (ids, mask) = batch(dir.config.vocab_size, seq);
    let mut worst = 0f64;
    for &method in methods {
        let model = adapted_model(dir, method, dtype, variant);
        let truth = adapted_model(dir, method, DType::F64, variant);
        let logits = truth.forward_autograd(&ids).unwrap();
        let (loss, _) = causal_lm_loss(&logits, &ids, &mask).unwrap();
        let store = loss.backward().unwrap();
        let loss = values(&loss)[0];
        for &recompute in Recompute::ALL {
            let mut grads = Gradients::new();
            let (sum, count) = model
                .loss_and_grads(&ids, &mask, 1.0, recompute, &mut grads)
                .unwrap();
            let what = format!("{method} / {}", recompute.name());
            assert!(
                (sum / count - loss).abs() <= tol * loss.abs(),
                "{what}: loss {} vs {loss}",
                sum / count
            );
            for ((module, layer), (_, reference)) in model.adapted().iter().zip(truth.adapted()) {
                let vars = |l: &lors::adapters::AdaptedLinear| {
                    let gate = l.gate().map(|g| ("lora_gate", g.clone()));
                    let parts = l.trainable().into_iter().map(|(p, v)| (p, v.clone()));
                    parts.chain(gate).collect::<Vec<_>>()
                };
                for ((part, var), (_, want)) in vars(layer).into_iter().zip(vars(reference)) {
                    let want = store.get(&want).expect("reference gradient");
                    let got = grads.get(&var).expect("engine gradient");
                    let e = max_rel(&got.to_dtype(DType::F64).unwrap(), want);
                    worst = worst.max(e);
                    assert!(e <= tol, "{what}: {module}.{part} differs by {e:e}");
                }
            }
        }
    }
    worst
}

#[test]
fn block_backward_equals_autograd_on_stories260k_wanda_50() {
    let dir = ModelDir::open(Path::new("../shared/models/stories260K-wanda-50")).unwrap();
    let f64_worst = check_model(&dir, 40, DType::F64, 1e-10);
    let f32_worst = check_model(&dir, 40, DType::F32, 1e-5);
    eprintln!("largest difference: f64 {f64_worst:e}, f32 {f32_worst:e}");
}

#[test]
fn block_backward_equals_autograd_on_a_qwen2_shaped_gqa_model_with_bias() {
    let tmp = tempfile::tempdir().unwrap();
    let mut config = small_config(64, 2, 8, 2, 96);
    config.model_type = Some("qwen2".into());
    let tensors =
        random_weights(&config, 5, Some(Pattern::Unstructured { sparsity: 0.5 })).unwrap();
    write_checkpoint(tmp.path(), &config, &tensors).unwrap();
    let dir = ModelDir::open(tmp.path()).unwrap();
    assert!(dir.config.qkv_bias && dir.config.num_kv_heads < dir.config.num_heads);
    let f64_worst = check_model(&dir, 37, DType::F64, 1e-10);
    let f32_worst = check_model(&dir, 37, DType::F32, 1e-5);
    eprintln!("largest difference: f64 {f64_worst:e}, f32 {f32_worst:e}");
}

/// With SoRA's gates (random, so `B·diag(g)` differs from `B`), the gates' gradients from the
/// blocks' own backward equal autograd's through the whole model, for every low-rank method,
/// in f64 (1e-10) and f32 (1e-5), as above.
#[test]
fn sora_gate_gradients_equal_autograd_through_the_model() {
    let dir = ModelDir::open(Path::new("../shared/models/stories260K-wanda-50")).unwrap();
    let methods = [Method::Lors, Method::LorsExact, Method::Lora, Method::Sqft];
    let sora = Variant {
        sora: true,
        ..Variant::default()
    };
    for (dtype, tol) in [(DType::F64, 1e-10), (DType::F32, 1e-5)] {
        let worst = check_methods(&dir, 24, dtype, tol, &methods, sora);
        eprintln!("largest difference ({dtype:?}): {worst:e}");
    }
}

/// With the first blocks frozen (`adapter.frozen_blocks`), those blocks carry no adapter and
/// the step runs no backward through them, yet every gradient still equals autograd's.
#[test]
fn frozen_leading_blocks_have_no_adapters_and_exact_gradients() {
    let dir = ModelDir::open(Path::new("../shared/models/stories260K-wanda-50")).unwrap();
    let frozen = Variant {
        frozen_blocks: 3,
        ..Variant::default()
    };
    let model = adapted_model(&dir, Method::Lors, DType::F64, frozen);
    let layers: std::collections::BTreeSet<usize> =
        model.adapted().iter().map(|(m, _)| m.layer).collect();
    assert_eq!(layers.into_iter().collect::<Vec<_>>(), vec![3, 4]);
    let worst = check_methods(
        &dir,
        24,
        DType::F64,
        1e-10,
        &[Method::Lors, Method::Sqft],
        frozen,
    );
    eprintln!("largest difference: {worst:e}");
    let spec = AdapterSpec {
        config: AdapterConfig::default(),
        targets: vec![lors::model::Proj::Q],
        frozen_blocks: 5,
    };
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let err = CausalLm::from_source(
        &dir.config,
        &dir.weights().unwrap(),
        DType::F32,
        &Device::Cpu,
        Some(&spec),
        &mut rng,
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("adapter.frozen_blocks") && err.contains("5 decoder blocks"),
        "{err}"
    );
}

/// Greedy decoding with the key-value cache gives the tokens of decoding without it (the
/// whole sequence run again for every token), and the cached logits equal the full ones.
#[test]
fn cached_decoding_equals_recomputing_the_whole_sequence() {
    let dir = ModelDir::open(Path::new("../shared/models/stories260K")).unwrap();
    let model = CausalLm::load_frozen(&dir).unwrap();
    let prompt = [1u32, 403, 407, 261, 378];
    let new = lors::model::generate_greedy(&model, &prompt, 30).unwrap();
    let mut ids = prompt.to_vec();
    for &want in &new {
        let input = Tensor::new(ids.as_slice(), &Device::Cpu)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        let logits = model.forward(&input).unwrap().squeeze(0).unwrap();
        let last = logits.get(ids.len() - 1).unwrap();
        let next = last.argmax(0).unwrap().to_scalar::<u32>().unwrap();
        assert_eq!(next, want, "after {} tokens", ids.len());
        ids.push(next);
    }
}

/// What data-parallel ranks can rely on: the gradients of a step's micro-batches, each
/// computed into its own store and then added in micro-batch order, are the gradients one
/// process accumulates over them, bit for bit (every method, both recompute policies, SoRA's
/// gates too), so ranks that each compute a share and combine in that order train exactly as
/// one process.
#[test]
fn micro_batch_gradients_computed_apart_add_up_to_the_accumulated_ones_bit_for_bit() {
    let dir = ModelDir::open(Path::new("../shared/models/stories260K-wanda-50")).unwrap();
    let (ids, mask) = batch(dir.config.vocab_size, 16);
    let row = |r: usize| (ids.narrow(0, r, 1).unwrap(), mask.narrow(0, r, 1).unwrap());
    let micros = [row(0), row(1), (ids.clone(), mask.clone())];
    let weight = 1.0 / micros.len() as f64;
    let bits = |t: &Tensor| -> Vec<u32> {
        let v = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        v.iter().map(|x| x.to_bits()).collect()
    };
    let sora = Variant {
        sora: true,
        ..Variant::default()
    };
    let cases = METHODS
        .iter()
        .map(|&m| (m, Variant::default()))
        .chain([(Method::Lors, sora)]);
    for (method, variant) in cases {
        let model = adapted_model(&dir, method, DType::F32, variant);
        for &recompute in Recompute::ALL {
            let mut together = Gradients::new();
            let mut apart = Vec::new();
            for (ids, mask) in &micros {
                let mut own = Gradients::new();
                for store in [&mut together, &mut own] {
                    model
                        .loss_and_grads(ids, mask, weight, recompute, store)
                        .unwrap();
                }
                apart.push(own);
            }
            for (module, layer) in model.adapted() {
                let gate = layer.gate().cloned();
                let parts = layer.trainable().into_iter().map(|(_, v)| v.clone());
                for var in parts.chain(gate) {
                    let mut sum = apart[0].get(&var).unwrap().clone();
                    for store in &apart[1..] {
                        sum = (sum + store.get(&var).unwrap()).unwrap();
                    }
                    assert_eq!(
                        bits(&sum),
                        bits(together.get(&var).unwrap()),
                        "{method} / {} / {module}",
                        recompute.name()
                    );
                }
            }
        }
    }
}
