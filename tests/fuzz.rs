//! Fuzzing every parser of user input (profile TOML, `config.json`, the data readers, the
//! safetensors header path, GGUF): mutated valid inputs must give a clear error or a success,
//! never a panic. Each parser gets `LORS_FUZZ_CASES` inputs (2000 by default; `scripts/fuzz.sh`
//! runs a million in all) from a fixed seed (`LORS_FUZZ_SEED`). proptest shrinks a failing
//! input and reports it.

#[path = "support/gguf.rs"]
mod gguf_support;

use std::collections::HashMap;
use std::io::Cursor;
use std::path::{Path, PathBuf};

use candle_core::quantized::GgmlDType;
use candle_core::{DType, Device, Tensor};
use lors::data::{parse_records, read_records, DataFormat};
use lors::model::random::{random_weights, small_config, write_checkpoint};
use lors::model::ModelConfig;
use lors::sweep::SweepSpec;
use lors::train::Profile;
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// One edit of an input; positions wrap around its length.
#[derive(Debug, Clone)]
enum Mutation {
    FlipBit {
        at: usize,
        bit: u8,
    },
    SetByte {
        at: usize,
        byte: u8,
    },
    /// Overwrite 8 bytes with an extreme little-endian integer (lengths, counts, dims).
    SetWord {
        at: usize,
        word: u64,
    },
    Insert {
        at: usize,
        bytes: Vec<u8>,
    },
    Delete {
        at: usize,
        len: usize,
    },
    /// Copy a range of the input elsewhere (repeats keys, records, tensors).
    Duplicate {
        from: usize,
        len: usize,
        to: usize,
    },
    Truncate {
        at: usize,
    },
    /// Replace the text at `at` with a token that parsers find hard.
    Token {
        at: usize,
        token: &'static str,
    },
}

const TOKENS: [&str; 16] = [
    "nan",
    "inf",
    "-1",
    "0",
    "1e309",
    "18446744073709551616",
    "4294967296",
    "\"\"",
    "null",
    "[]",
    "{}",
    "\"x\"",
    "\n",
    "\u{feff}",
    "\\u0000",
    "true",
];

const WORDS: [u64; 8] = [
    0,
    1,
    0x7FFF_FFFF,
    0x8000_0000,
    u32::MAX as u64,
    1 << 31 << 31,
    u64::MAX,
    1 << 62,
];

fn mutation() -> impl Strategy<Value = Mutation> {
    let at = any::<usize>();
    prop_oneof![
        (at, 0u8..8).prop_map(|(at, bit)| Mutation::FlipBit { at, bit }),
        (
            at,
            prop::sample::select(vec![0u8, 0xFF, 0x7F, 0x80, b'"', b'[', b'{', b'\n'])
        )
            .prop_map(|(at, byte)| Mutation::SetByte { at, byte }),
        (at, prop::sample::select(WORDS.to_vec()))
            .prop_map(|(at, word)| Mutation::SetWord { at, word }),
        (at, vec(any::<u8>(), 1..16)).prop_map(|(at, bytes)| Mutation::Insert { at, bytes }),
        (at, 1usize..64).prop_map(|(at, len)| Mutation::Delete { at, len }),
        (at, 1usize..256, any::<usize>()).prop_map(|(from, len, to)| Mutation::Duplicate {
            from,
            len,
            to
        }),
        at.prop_map(|at| Mutation::Truncate { at }),
        (at, prop::sample::select(TOKENS.to_vec()))
            .prop_map(|(at, token)| Mutation::Token { at, token }),
    ]
}

fn apply(seed: &[u8], mutations: &[Mutation]) -> Vec<u8> {
    let mut b = seed.to_vec();
    for m in mutations {
        let n = b.len().max(1);
        match m {
            Mutation::FlipBit { at, bit } => {
                if let Some(x) = b.get_mut(at % n) {
                    *x ^= 1 << bit;
                }
            }
            Mutation::SetByte { at, byte } => {
                if let Some(x) = b.get_mut(at % n) {
                    *x = *byte;
                }
            }
            Mutation::SetWord { at, word } => {
                let at = at % n;
                for (i, byte) in word.to_le_bytes().into_iter().enumerate() {
                    if let Some(x) = b.get_mut(at + i) {
                        *x = byte;
                    }
                }
            }
            Mutation::Insert { at, bytes } => {
                let at = at % (b.len() + 1);
                b.splice(at..at, bytes.iter().copied());
            }
            Mutation::Delete { at, len } => {
                let at = at % n;
                let end = (at + len).min(b.len());
                if at < end {
                    b.drain(at..end);
                }
            }
            Mutation::Duplicate { from, len, to } => {
                let from = from % n;
                let end = (from + len).min(b.len());
                if from < end {
                    let piece: Vec<u8> = b[from..end].to_vec();
                    let to = to % (b.len() + 1);
                    b.splice(to..to, piece);
                }
            }
            Mutation::Truncate { at } => b.truncate(at % n),
            Mutation::Token { at, token } => {
                let at = at % (b.len() + 1);
                let end = b[at..]
                    .iter()
                    .position(|c| !c.is_ascii_alphanumeric() && *c != b'.')
                    .map_or(b.len(), |p| at + p);
                b.splice(at..end, token.bytes());
            }
        }
    }
    b
}

/// Run `target` on `LORS_FUZZ_CASES` mutations of `seeds`; fails (with the shrunk input) if
/// it panics.
fn fuzz(name: &str, seeds: &[Vec<u8>], target: impl Fn(&[u8])) {
    assert!(!seeds.is_empty(), "{name}: no seeds");
    let cases = std::env::var("LORS_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    // A fixed seed (LORS_FUZZ_SEED, 0 by default): the same inputs on every run of CI.
    let seed: u64 = std::env::var("LORS_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut seed_bytes = [0u8; 32];
    seed_bytes[..8].copy_from_slice(&seed.to_le_bytes());
    let config = Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    };
    let rng = TestRng::from_seed(RngAlgorithm::ChaCha, &seed_bytes);
    let mut runner = TestRunner::new_with_rng(config, rng);
    let strategy = (0..seeds.len(), vec(mutation(), 0..6));
    let start = std::time::Instant::now();
    let result = runner.run(&strategy, |(i, mutations)| {
        target(&apply(&seeds[i], &mutations));
        Ok(())
    });
    if let Err(e) = result {
        panic!("{name}: {e}");
    }
    eprintln!(
        "fuzz {name}: {cases} inputs from {} seeds in {:.1} s, no panic",
        seeds.len(),
        start.elapsed().as_secs_f64()
    );
}

/// Count the errors that are a third-party reader's panic, caught by
/// [`lors::error::catch_parser_panic`].
fn count_caught<T>(caught: &std::cell::Cell<usize>, result: lors::Result<T>) {
    if result.is_err_and(|e| e.to_string().contains("reader failed on this file")) {
        caught.set(caught.get() + 1);
    }
}

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Profiles, and the `[sweep]` sections of the sweep profiles among them.
#[test]
fn profiles_never_panic() {
    let seeds: Vec<Vec<u8>> = std::fs::read_dir(repo().join("profiles"))
        .unwrap()
        .map(|e| read(&e.unwrap().path()))
        .collect();
    for s in &seeds {
        let mut table: toml::Table = toml::from_str(std::str::from_utf8(s).unwrap()).unwrap();
        if let Some(toml::Value::Table(sweep)) = table.remove("sweep") {
            SweepSpec::from_table(&sweep).expect("seed sweeps parse");
        }
        Profile::parse(&table.to_string(), &[]).expect("seed profiles parse");
    }
    fuzz("profile", &seeds, |b| {
        let text = String::from_utf8_lossy(b);
        let _ = Profile::parse(&text, &[]);
        // A `[sweep]` section: parsed, and its trials expanded.
        let table = toml::from_str::<toml::Table>(&text).unwrap_or_default();
        if let Some(toml::Value::Table(sweep)) = table.get("sweep") {
            let _ = SweepSpec::from_table(sweep).map(|s| s.trials());
        }
    });
}

#[test]
fn model_configs_never_panic() {
    let shared = repo().join("../shared/models");
    let mut seeds: Vec<Vec<u8>> = ["stories260K", "stories260K-wanda-50"]
        .iter()
        .map(|m| read(&shared.join(m).join("config.json")))
        .collect();
    seeds.push(read(&repo().join("assets/demo-model/config.json")));
    let mut qwen = small_config(64, 2, 4, 2, 128);
    qwen.model_type = Some("qwen2".into());
    seeds.push(serde_json::to_vec(&qwen).unwrap());
    let path = Path::new("config.json");
    for s in &seeds {
        ModelConfig::from_json(std::str::from_utf8(s).unwrap(), path).expect("seed configs parse");
    }
    fuzz("config.json", &seeds, |b| {
        if let Ok(c) = ModelConfig::from_json(&String::from_utf8_lossy(b), path) {
            let _ = c.linear_parameters();
            let _ = c.check_positions("seq_len", 4096, false);
        }
    });
}

#[test]
fn data_readers_never_panic() {
    let demo = std::fs::read_to_string(repo().join("assets/demo-data/train.jsonl")).unwrap();
    let jsonl: String = demo.lines().take(20).map(|l| format!("{l}\n")).collect();
    let alpaca = r#"[
 {"instruction": "Add 2 and 3.", "input": "2+3", "output": "5"},
 {"instruction": "Say hi.", "input": "", "output": "hi"}
]"#;
    let alpaca_lines = "{\"instruction\": \"a\", \"output\": \"b\"}\n{\"instruction\": \"c\", \"input\": \"d\", \"output\": \"e\"}\n";
    let seeds: Vec<Vec<u8>> = [
        jsonl.as_str(),
        alpaca,
        alpaca_lines,
        "Once upon a time.\nThe end.\n",
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect();
    let path = Path::new("data.jsonl");
    for (i, s) in seeds.iter().enumerate() {
        parse_records(Cursor::new(s), path, i == 3, DataFormat::Auto, false).expect("seeds parse");
    }
    fuzz("data (JSONL, JSON, Alpaca, text)", &seeds, |b| {
        for plain_text in [false, true] {
            for format in [DataFormat::Auto, DataFormat::Text, DataFormat::Alpaca] {
                for skip_bad in [false, true] {
                    let _ = parse_records(Cursor::new(b), path, plain_text, format, skip_bad);
                }
            }
        }
    });
}

#[test]
fn parquet_files_never_panic() {
    let seeds: Vec<Vec<u8>> = ["alpaca_sample.parquet", "text_sample.parquet"]
        .iter()
        .map(|f| read(&repo().join("tests/fixtures").join(f)))
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("data.parquet");
    let caught = std::cell::Cell::new(0);
    fuzz("parquet", &seeds, |b| {
        std::fs::write(&path, b).unwrap();
        count_caught(&caught, read_records(&path, DataFormat::Auto, true));
    });
    eprintln!(
        "fuzz parquet: {} inputs made the parquet reader panic (caught)",
        caught.get()
    );
}

#[test]
fn safetensors_never_panic() {
    let mut rng = 0u32;
    let mut next = || {
        rng = rng.wrapping_mul(1664525).wrapping_add(1013904223);
        (rng >> 8) as f32 / (1 << 24) as f32
    };
    let a: Vec<f32> = (0..48).map(|_| next()).collect();
    let tensors = HashMap::from([
        (
            "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight".to_string(),
            Tensor::from_vec(a.clone(), (4, 12), &Device::Cpu).unwrap(),
        ),
        (
            "b16".to_string(),
            Tensor::from_vec(a[..8].to_vec(), 8, &Device::Cpu)
                .unwrap()
                .to_dtype(DType::BF16)
                .unwrap(),
        ),
        (
            "ids".to_string(),
            Tensor::new(&[1i64, 2, 3], &Device::Cpu).unwrap(),
        ),
    ]);
    let bytes = safetensors::serialize(tensors.iter().map(|(k, v)| (k.as_str(), v)), None).unwrap();
    candle_core::safetensors::load_buffer(&bytes, &Device::Cpu).expect("the seed loads");
    fuzz("safetensors", &[bytes], |b| {
        let _ = candle_core::safetensors::load_buffer(b, &Device::Cpu);
    });
}

#[test]
fn gguf_files_never_panic() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model");
    let config = small_config(32, 1, 2, 1, 64);
    write_checkpoint(&model, &config, &random_weights(&config, 1, None).unwrap()).unwrap();
    let tokenizer = repo().join("../shared/models/stories260K/tokenizer.json");
    let seeds: Vec<Vec<u8>> = [GgmlDType::Q8_0, GgmlDType::F16]
        .into_iter()
        .map(|dtype| {
            let out = dir.path().join(format!("{dtype:?}.gguf"));
            gguf_support::write_gguf(&model, &out, dtype, gguf_support::spm_metadata(&tokenizer));
            read(&out)
        })
        .collect();
    let path = Path::new("model.gguf");
    for s in &seeds {
        lors::sources::read_gguf(&mut Cursor::new(s), path, DType::F32).expect("seeds read");
    }
    let caught = std::cell::Cell::new(0);
    fuzz("gguf", &seeds, |b| {
        count_caught(
            &caught,
            lors::sources::read_gguf(&mut Cursor::new(b), path, DType::F32),
        );
    });
    eprintln!(
        "fuzz gguf: {} inputs made candle's GGUF reader panic (caught)",
        caught.get()
    );
}
