//! The model against published outputs of a real checkpoint, and save/reload round trips.

use std::path::PathBuf;

use candle_core::DType;
use lors::data::TextTokenizer;
use lors::model::{generate_greedy, CausalLm, ModelDir};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

fn shared(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../shared")
        .join(rel)
}

/// Published in ../shared/README.md: greedy decoding from BOS.
const STORIES_GREEDY: &str = "Once upon a time, there was a little girl named Lily. She loved to play outside in the park. One day, she saw a big, red ball. She wanted to play with it, but it was too high.";

#[test]
fn stories260k_greedy_continuation_matches_the_published_text() {
    let dir = ModelDir::open(&shared("models/stories260K")).unwrap();
    let model = CausalLm::from_source(
        &dir.config,
        &dir.weights().unwrap(),
        DType::F32,
        &candle_core::Device::Cpu,
        None,
        &mut ChaCha8Rng::seed_from_u64(0),
    )
    .unwrap();
    let tok = TextTokenizer::from_file(&dir.tokenizer_path(), None).unwrap();
    let out = generate_greedy(&model, &[1], 64).unwrap();
    let text = tok.decode(&out).unwrap();
    assert!(
        text.starts_with(STORIES_GREEDY),
        "greedy output differs:\n got: {text}\nwant: {STORIES_GREEDY}"
    );
}

use std::collections::HashMap;

use candle_core::{Device, Tensor};
use lors::model::random::{random_weights, small_config, write_checkpoint};
use lors::model::{ModelConfig, RawConfig, WeightSource};

fn logits(model: &CausalLm) -> Vec<f32> {
    let ids = Tensor::new(&[[1u32, 300, 301, 302, 40, 41, 42, 43]], &Device::Cpu)
        .unwrap()
        .clamp(0u32, model.config().vocab_size as u32 - 1)
        .unwrap();
    model
        .forward(&ids)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
}

fn load(config: &ModelConfig, src: &dyn WeightSource) -> CausalLm {
    CausalLm::from_source(
        config,
        src,
        DType::F32,
        &candle_core::Device::Cpu,
        None,
        &mut ChaCha8Rng::seed_from_u64(0),
    )
    .unwrap()
}

#[test]
fn wanda50_outputs_are_stable_across_storage_dtypes() {
    // bf16 keeps 8 significant bits (relative rounding 2^-9 = 0.2%), f16 11 bits (2^-12).
    // Logits of this model span about ±15, so we allow 0.25 (bf16) and 0.05 (f16) absolute,
    // and require the same greedy continuation for 40 tokens.
    let dir = ModelDir::open(&shared("models/stories260K-wanda-50")).unwrap();
    let src = dir.weights().unwrap();
    let f32_model = load(&dir.config, &src);
    let reference = logits(&f32_model);
    let greedy = generate_greedy(&f32_model, &[1], 40).unwrap();
    for (dtype, tol) in [(DType::BF16, 0.25f32), (DType::F16, 0.05)] {
        let cast: HashMap<String, Tensor> = src
            .names()
            .into_iter()
            .map(|n| {
                let t = src.tensor(&n).unwrap().to_dtype(dtype).unwrap();
                (n, t)
            })
            .collect();
        let model = load(&dir.config, &cast);
        let got = logits(&model);
        let worst = got
            .iter()
            .zip(&reference)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(worst < tol, "{dtype:?}: max logit difference {worst}");
        assert_eq!(
            generate_greedy(&model, &[1], 40).unwrap(),
            greedy,
            "{dtype:?} greedy"
        );
    }
}

#[test]
fn tied_embeddings_sharded_files_and_llama3_rope_load() {
    let tmp = tempfile::tempdir().unwrap();
    let mut config: RawConfig = small_config(32, 2, 4, 2, 64);
    config.tie_word_embeddings = Some(true);
    let mut tensors = random_weights(&config, 5, None).unwrap();
    tensors.remove("lm_head.weight");
    let single = tmp.path().join("single");
    write_checkpoint(&single, &config, &tensors).unwrap();
    let dir = ModelDir::open(&single).unwrap();
    let reference = logits(&load(&dir.config, &dir.weights().unwrap()));

    // The same tensors split over two shards with an index.
    let sharded = tmp.path().join("sharded");
    std::fs::create_dir_all(&sharded).unwrap();
    std::fs::copy(single.join("config.json"), sharded.join("config.json")).unwrap();
    std::fs::copy(
        single.join("tokenizer.json"),
        sharded.join("tokenizer.json"),
    )
    .unwrap();
    let mut names: Vec<&String> = tensors.keys().collect();
    names.sort();
    let (a, b) = names.split_at(names.len() / 2);
    let mut weight_map = serde_json::Map::new();
    for (file, part) in [
        ("model-00001-of-00002.safetensors", a),
        ("model-00002-of-00002.safetensors", b),
    ] {
        let shard: HashMap<String, Tensor> = part
            .iter()
            .map(|n| ((*n).clone(), tensors[*n].clone()))
            .collect();
        lors::io::write_safetensors_atomic(&sharded.join(file), &shard).unwrap();
        for n in part {
            weight_map.insert((*n).clone(), serde_json::json!(file));
        }
    }
    std::fs::write(
        sharded.join("model.safetensors.index.json"),
        serde_json::json!({ "metadata": {}, "weight_map": weight_map }).to_string(),
    )
    .unwrap();
    let dir = ModelDir::open(&sharded).unwrap();
    assert_eq!(dir.weight_files.len(), 2);
    assert_eq!(
        logits(&load(&dir.config, &dir.weights().unwrap())),
        reference
    );

    // Llama-3 rope scaling: parsed, and it changes the output.
    let mut scaled = config.clone();
    scaled.rope_scaling = Some(lors::model::RopeParameters {
        rope_type: Some("llama3".into()),
        factor: Some(8.0),
        low_freq_factor: Some(1.0),
        high_freq_factor: Some(4.0),
        original_max_position_embeddings: Some(16),
        rope_theta: None,
    });
    let scaled = ModelConfig::from_raw(scaled).unwrap();
    assert!(scaled.rope_llama3.is_some());
    assert_ne!(logits(&load(&scaled, &tensors)), reference);
    let mut bad = config.clone();
    bad.rope_scaling = Some(lors::model::RopeParameters {
        rope_type: Some("yarn".into()),
        ..Default::default()
    });
    let err = ModelConfig::from_raw(bad).unwrap_err();
    assert!(err.to_string().contains("rope_scaling.rope_type"), "{err}");
}
