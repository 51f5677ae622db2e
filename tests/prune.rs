//! Pruning: hand-checkable Wanda scores, exact densities, SparseGPT's least-squares property,
//! the sequential pipeline end to end (also as a profile's first step), and bad input.

mod common;

use std::path::Path;
use std::sync::atomic::AtomicBool;

use candle_core::{Device, Tensor};
use lors::model::random::{random_weights, small_config, write_checkpoint};
use lors::model::{ModelDir, WeightSource};
use lors::prune::{prune_to_dir, sparsegpt, PruneMethod, PruneSettings};
use lors::sparsity::{mask_from_scores, BitMask, Pattern};
use lors::train::{self, Profile, RunDir, RunState};
use nalgebra::DMatrix;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};

#[test]
fn wanda_scores_a_4x8_matrix_as_by_hand() {
    // Row 0 of W: magnitudes 8..1; input norms favour the last columns 8x.
    let w: Vec<f64> = (0..32).map(|i| 8.0 - (i % 8) as f64).collect();
    let norms = [1.0, 1.0, 1.0, 1.0, 8.0, 8.0, 8.0, 8.0];
    let scores: Vec<f64> = w
        .iter()
        .enumerate()
        .map(|(i, v)| v * norms[i % 8])
        .collect();
    // |W|·‖X‖ per row: 8 7 6 5 32 24 16 8 -> keep columns 4, 5, 6 and 0 (8 ties 8: lower index).
    let half = mask_from_scores(&scores, 4, 8, Pattern::Unstructured { sparsity: 0.5 }).unwrap();
    let magnitude = mask_from_scores(&w, 4, 8, Pattern::Unstructured { sparsity: 0.5 }).unwrap();
    for r in 0..4 {
        let kept: Vec<usize> = (0..8).filter(|c| half.is_kept(r * 8 + c)).collect();
        assert_eq!(kept, vec![0, 4, 5, 6]);
        let kept: Vec<usize> = (0..8).filter(|c| magnitude.is_kept(r * 8 + c)).collect();
        assert_eq!(kept, vec![0, 1, 2, 3]);
    }
    // 2:4: groups (8 7 6 5) and (32 24 16 8).
    let nm = mask_from_scores(&scores, 4, 8, Pattern::NofM { n: 2, m: 4 }).unwrap();
    let kept: Vec<usize> = (0..8).filter(|&c| nm.is_kept(c)).collect();
    assert_eq!(kept, vec![0, 1, 4, 5]);
}

fn randn(rng: &mut ChaCha8Rng, rows: usize, cols: usize) -> DMatrix<f64> {
    DMatrix::from_fn(rows, cols, |_, _| StandardNormal.sample(rng))
}

fn row_major(m: &DMatrix<f64>) -> Vec<f64> {
    m.transpose().as_slice().to_vec()
}

#[test]
fn sparsegpt_reconstructs_better_than_masking_and_keeps_exact_densities() {
    let mut rng = ChaCha8Rng::seed_from_u64(4);
    let (rows, cols, n) = (24, 160, 400); // 160 columns: one full block of 128 and one of 32
    let w = randn(&mut rng, rows, cols);
    // Correlated inputs, as real activations are.
    let mix = randn(&mut rng, cols, cols) * 0.3 + DMatrix::identity(cols, cols);
    let x = mix * randn(&mut rng, cols, n);
    let h = &x * x.transpose() * (2.0 / n as f64);
    for pattern in [
        Pattern::Unstructured { sparsity: 0.5 },
        Pattern::NofM { n: 2, m: 4 },
    ] {
        let (pruned, mask) = sparsegpt(&row_major(&w), rows, cols, &h, pattern).unwrap();
        let pruned = DMatrix::from_row_slice(rows, cols, &pruned);
        let mut masked = w.clone();
        for r in 0..rows {
            assert_eq!(mask.row_kept(r), cols / 2, "{pattern}: row {r}");
            for c in 0..cols {
                if !mask.is_kept(r * cols + c) {
                    masked[(r, c)] = 0.0;
                    assert_eq!(pruned[(r, c)], 0.0);
                }
            }
        }
        if let Pattern::NofM { n, m } = pattern {
            assert_eq!(mask.max_kept_per_group(m), Some(n));
        }
        let err_sgpt = (&w * &x - &pruned * &x).norm();
        let err_mask = (&w * &x - &masked * &x).norm();
        assert!(
            err_sgpt < err_mask,
            "{pattern}: SparseGPT {err_sgpt} vs masking {err_mask}"
        );
    }
}

fn tiny(dir: &Path) {
    let config = small_config(32, 2, 4, 2, 64);
    write_checkpoint(dir, &config, &random_weights(&config, 9, None).unwrap()).unwrap();
}

fn calib_file(path: &Path) {
    let text: String = (0..80)
        .map(|i| format!("{}\n", serde_json::json!({"text": format!("Story {i}: a cat and a dog played in the park {} times.", i * 7)})))
        .collect();
    std::fs::write(path, text).unwrap();
}

fn settings(method: PruneMethod, pattern: &str, calib: Option<&Path>) -> PruneSettings {
    PruneSettings {
        method,
        pattern: pattern.parse().unwrap(),
        sparsity: 0.5,
        calib: calib.map(Path::to_path_buf),
        nsamples: 16,
        seq_len: 32,
        seed: 0,
    }
}

#[test]
fn every_method_prunes_every_layer_to_the_exact_pattern() {
    let tmp = tempfile::tempdir().unwrap();
    tiny(&tmp.path().join("dense"));
    let calib = tmp.path().join("calib.jsonl");
    calib_file(&calib);
    for method in [
        PruneMethod::Magnitude,
        PruneMethod::Wanda,
        PruneMethod::SparseGpt,
    ] {
        for pattern in ["unstructured", "2:4"] {
            let out = tmp
                .path()
                .join(format!("{method}-{}", pattern.replace(':', "of")));
            let report = prune_to_dir(
                &tmp.path().join("dense"),
                &settings(method, pattern, Some(&calib)),
                &out,
                &mut |_, _| {},
            )
            .unwrap();
            assert_eq!(report.layers.len(), 14);
            assert_eq!(report.density, 0.5);
            let dir = ModelDir::open(&out).unwrap();
            let src = dir.weights().unwrap();
            for l in &report.layers {
                let w = src.tensor(&format!("{}.weight", l.name)).unwrap();
                let mask = BitMask::from_nonzero(&w).unwrap();
                let (rows, cols) = mask.dims();
                for r in 0..rows {
                    assert_eq!(
                        mask.row_kept(r),
                        cols / 2,
                        "{method} {pattern} {} row {r}",
                        l.name
                    );
                }
                if pattern == "2:4" {
                    assert_eq!(mask.max_kept_per_group(4), Some(2), "{method} {}", l.name);
                }
            }
            assert!(out.join("sparsity.json").is_file() && out.join("tokenizer.json").is_file());
        }
    }
}

#[test]
fn with_outlier_features_wanda_reconstructs_better_than_magnitude() {
    // Wanda's premise: a few input features are much larger than the rest, so a small weight
    // on them matters more than a large weight elsewhere. Its mask must then lose less of the
    // layer output ‖WX - (W⊙M)X‖ than magnitude's.
    let mut rng = ChaCha8Rng::seed_from_u64(8);
    let (rows, cols, n) = (32, 64, 256);
    let w = randn(&mut rng, rows, cols);
    let mut x = randn(&mut rng, cols, n);
    for c in (0..cols).step_by(8) {
        x.row_mut(c).scale_mut(20.0);
    }
    let err = |mask: &BitMask| {
        let mut masked = w.clone();
        for r in 0..rows {
            for c in 0..cols {
                if !mask.is_kept(r * cols + c) {
                    masked[(r, c)] = 0.0;
                }
            }
        }
        (&w * &x - masked * &x).norm()
    };
    let wv = row_major(&w);
    let norms: Vec<f64> = (0..cols).map(|c| x.row(c).norm()).collect();
    for pattern in [
        Pattern::Unstructured { sparsity: 0.5 },
        Pattern::NofM { n: 2, m: 4 },
    ] {
        let magnitude: Vec<f64> = wv.iter().map(|v| v.abs()).collect();
        let wanda: Vec<f64> = wv
            .iter()
            .enumerate()
            .map(|(i, v)| v.abs() * norms[i % cols])
            .collect();
        let e_mag = err(&mask_from_scores(&magnitude, rows, cols, pattern).unwrap());
        let e_wanda = err(&mask_from_scores(&wanda, rows, cols, pattern).unwrap());
        assert!(
            e_wanda < e_mag,
            "{pattern}: wanda {e_wanda} vs magnitude {e_mag}"
        );
    }
}

#[test]
fn bad_prune_input_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    tiny(&tmp.path().join("dense"));
    let dense = tmp.path().join("dense");
    let calib = tmp.path().join("calib.jsonl");
    calib_file(&calib);
    let out = tmp.path().join("out");
    let run = |s: PruneSettings| {
        prune_to_dir(&dense, &s, &out, &mut |_, _| {})
            .unwrap_err()
            .to_string()
    };
    for sparsity in [0.0, 1.0, 1.5] {
        let mut s = settings(PruneMethod::Wanda, "unstructured", Some(&calib));
        s.sparsity = sparsity;
        assert!(run(s).contains("outside (0, 1)"));
    }
    // An N:M with N >= M is refused where the pattern is read (flag, profile or code).
    let err = "4:4".parse::<lors::sparsity::Layout>().unwrap_err();
    assert!(err.to_string().contains("0 < N < M"), "{err}");
    // 32 inputs are not a multiple of 6.
    let err = run(settings(PruneMethod::Magnitude, "2:6", None));
    assert!(err.contains("divisible by 6"), "{err}");
    let empty = tmp.path().join("empty.jsonl");
    std::fs::write(&empty, "").unwrap();
    let err = run(settings(PruneMethod::Wanda, "unstructured", Some(&empty)));
    assert!(err.contains("empty.jsonl"), "{err}");
    assert!(run(settings(PruneMethod::SparseGpt, "unstructured", None)).contains("calibration"));
    // A model with no decoder layers has nothing to prune.
    let config = small_config(32, 0, 4, 2, 64);
    write_checkpoint(
        &tmp.path().join("empty-model"),
        &config,
        &random_weights(&config, 1, None).unwrap(),
    )
    .unwrap();
    let err = prune_to_dir(
        &tmp.path().join("empty-model"),
        &settings(PruneMethod::Magnitude, "unstructured", None),
        &out,
        &mut |_, _| {},
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("no layers to prune"), "{err}");
    assert!(!out.exists(), "a failed prune leaves no output");
}

#[test]
fn a_profile_goes_dense_to_sparse_to_lors_to_merged() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().display().to_string();
    tiny(&tmp.path().join("dense"));
    calib_file(&tmp.path().join("calib.jsonl"));
    let text = format!(
        r#"
[model]
path = "{root}/dense"
[prune]
method = "wanda"
pattern = "2:4"
calib = "{root}/calib.jsonl"
nsamples = 8
seq_len = 32
[data]
train = "{root}/calib.jsonl"
valid_fraction = 0.1
seq_len = 32
[adapter]
rank = 4
init_samples = 8
[train]
max_steps = 3
batch_size = 4
merge_at_end = true
output_dir = "{root}/runs"
"#
    );
    let p = Profile::parse(&text, &[]).unwrap();
    let run = RunDir::create(&tmp.path().join("runs/r"), &p).unwrap();
    let outcome = train::train(
        &p,
        &run,
        train::Start::Fresh,
        &AtomicBool::new(false),
        &mut |_| {},
    )
    .unwrap();
    assert_eq!(outcome.state, RunState::Finished);
    let pruned =
        candle_core::safetensors::load(run.path.join("pruned/model.safetensors"), &Device::Cpu)
            .unwrap();
    let merged =
        candle_core::safetensors::load(run.path.join("merged/model.safetensors"), &Device::Cpu)
            .unwrap();
    let zeros = |t: &Tensor| BitMask::from_nonzero(t).unwrap();
    for (name, w) in &pruned {
        if name.contains("_proj") {
            let mask = BitMask::from_nonzero(w).unwrap();
            assert_eq!(mask.max_kept_per_group(4), Some(2), "{name}");
            assert_eq!(
                common::pruned_not_positive_zero(w, w),
                0,
                "pruned {name} is +0.0"
            );
            assert_eq!(zeros(&merged[name]), zeros(w), "{name}");
            assert_eq!(
                common::pruned_not_positive_zero(&merged[name], w),
                0,
                "{name}"
            );
        }
    }
}
