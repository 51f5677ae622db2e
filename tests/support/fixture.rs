//! A tiny random 50%-sparse Llama and sentence data in a temporary folder, and a short
//! training profile on them (shared by the engine and reliability tests).

use std::path::{Path, PathBuf};

use lors::model::random::{random_weights, small_config, write_checkpoint};
use lors::sparsity::Pattern;
use lors::train::Profile;

pub const HALF: Pattern = Pattern::Unstructured { sparsity: 0.5 };

pub fn tiny_model(dir: &Path) {
    let config = small_config(32, 2, 4, 2, 64);
    write_checkpoint(
        dir,
        &config,
        &random_weights(&config, 7, Some(HALF)).unwrap(),
    )
    .unwrap();
}

pub fn sentences(n: usize) -> String {
    let subjects = ["The cat", "A dog", "My friend", "The bird", "Tom"];
    let verbs = ["sees", "likes", "finds", "wants"];
    let objects = [
        "a red ball.",
        "the big tree.",
        "some milk.",
        "a little boat.",
    ];
    (0..n)
        .map(|i| {
            let text = format!(
                "{} {} {}",
                subjects[i % 5],
                verbs[(i / 5) % 4],
                objects[(i / 20) % 4]
            );
            format!("{}\n", serde_json::json!({ "text": text }))
        })
        .collect()
}

pub struct Fixture {
    pub _tmp: tempfile::TempDir,
    pub root: PathBuf,
}

pub fn fixture() -> Fixture {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().to_path_buf();
    tiny_model(&root.join("model"));
    std::fs::write(root.join("train.jsonl"), sentences(160)).unwrap();
    std::fs::write(root.join("valid.jsonl"), sentences(40)).unwrap();
    Fixture { _tmp: tmp, root }
}

/// The TOML of a short LoRS run with gradient init on the fixture (6 steps, evaluating and
/// saving every 3).
pub fn profile_text(f: &Fixture) -> String {
    format!(
        r#"
[model]
path = "{root}/model"
[data]
train = "{root}/train.jsonl"
valid = "{root}/valid.jsonl"
seq_len = 32
shard_dir = "{root}/shards"
[adapter]
method = "lors"
rank = 4
init = "gradient"
init_samples = 8
[optim]
lr = 0.01
warmup_steps = 2
[train]
max_steps = 6
batch_size = 4
eval_every = 3
save_every = 3
output_dir = "{root}/runs"
"#,
        root = f.root.display()
    )
}

/// [`profile_text`] with `key=value` overrides.
pub fn profile(f: &Fixture, extra: &[&str]) -> Profile {
    let text = profile_text(f);
    let overrides: Vec<lors::train::Override> = extra.iter().map(|s| s.parse().unwrap()).collect();
    Profile::parse(&text, &overrides).unwrap()
}
