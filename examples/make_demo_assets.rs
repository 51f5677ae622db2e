//! Writes the bundled default under `assets/`: a tiny random Llama pruned to 50% by magnitude
//! (`assets/demo-model`, byte-level tokenizer) and a small synthetic text dataset
//! (`assets/demo-data`). It is a demo that runs offline in seconds, not a quality claim: the
//! real checks use `../shared`.
//!
//!     cargo run --release --example make_demo_assets

use std::path::Path;

use lors::model::random::{random_weights, small_config, write_checkpoint};
use lors::sparsity::Pattern;
use rand::seq::IndexedRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// Short sentences from a small grammar, one JSON record per line.
fn stories(n: usize, seed: u64) -> String {
    let names = ["Tom", "Lily", "Sam", "Mia", "Ben", "Anna"];
    let animals = ["cat", "dog", "bird", "fish", "frog"];
    let adjectives = ["little", "big", "red", "happy", "small", "funny"];
    let places = ["park", "garden", "house", "forest", "river"];
    let verbs = ["played", "ran", "jumped", "sang", "walked"];
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut out = String::new();
    for _ in 0..n {
        let mut pick = |xs: &[&'static str]| *xs.choose(&mut rng).expect("non-empty");
        let (name, animal, adj, place, verb) = (
            pick(&names),
            pick(&animals),
            pick(&adjectives),
            pick(&places),
            pick(&verbs),
        );
        let text = format!(
            "Once upon a time, {name} had a {adj} {animal}. One day, {name} and the {animal} {verb} in the {place}. They were very happy."
        );
        out.push_str(&serde_json::json!({ "text": text }).to_string());
        out.push('\n');
    }
    out
}

fn main() -> anyhow::Result<()> {
    let assets = Path::new(env!("CARGO_MANIFEST_DIR")).join("assets");
    let config = small_config(64, 2, 4, 2, 128);
    let weights = random_weights(&config, 2026, Some(Pattern::Unstructured { sparsity: 0.5 }))?;
    write_checkpoint(&assets.join("demo-model"), &config, &weights)?;
    let data = assets.join("demo-data");
    std::fs::create_dir_all(&data)?;
    std::fs::write(data.join("train.jsonl"), stories(400, 1))?;
    std::fs::write(data.join("valid.jsonl"), stories(40, 2))?;
    println!("wrote {}", assets.display());
    Ok(())
}
