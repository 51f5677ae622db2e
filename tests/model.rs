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
