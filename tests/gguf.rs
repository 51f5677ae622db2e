//! GGUF import. The GGUF files here are written with candle's GGUF writer the way llama.cpp's
//! `convert_hf_to_gguf.py` lays them out (llama.cpp names, q/k rows permuted for its rotary
//! layout, tokenizer metadata), from the real `stories260K` and from a random model whose
//! sides fit every quantisation block. The real SmolLM2 Q4_1 check is `scripts/gguf_check.sh`.

mod common;
#[path = "support/gguf.rs"]
mod gguf_support;

use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Device, Tensor};
use lors::data::TextTokenizer;
use lors::model::{CausalLm, ModelDir};
use lors::sources::convert_gguf;

use gguf_support::{spm_metadata, write_gguf};

fn shared() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared")
}

fn logits(model: &CausalLm, ids: &[u32]) -> Tensor {
    model
        .forward(
            &Tensor::new(ids, &Device::Cpu)
                .unwrap()
                .unsqueeze(0)
                .unwrap(),
        )
        .unwrap()
}

#[test]
fn stories260k_round_trips_through_gguf_exactly() {
    let src = shared().join("models/stories260K");
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("stories260K.F32.gguf");
    write_gguf(
        &src,
        &file,
        GgmlDType::F32,
        spm_metadata(&src.join("tokenizer.json")),
    );
    let out = tmp.path().join("hf");
    let report = convert_gguf(&file, &out, DType::F32).unwrap();
    assert_eq!(
        (report.architecture.as_str(), report.tokenizer.as_str()),
        ("llama", "llama")
    );
    let (ours, theirs) = (ModelDir::open(&out).unwrap(), ModelDir::open(&src).unwrap());
    assert_eq!(ours.config, {
        let mut c = theirs.config.clone();
        c.stored_dtype = ours.config.stored_dtype.clone();
        c
    });
    // Same weights (the q/k permutation undone), so the same logits, bit for bit.
    let ids: Vec<u32> = (0..40).map(|i| (i * 37 + 1) % 512).collect();
    let (a, b) = (
        logits(&CausalLm::load_frozen(&ours).unwrap(), &ids),
        logits(&CausalLm::load_frozen(&theirs).unwrap(), &ids),
    );
    assert_eq!(common::max_abs_diff(&a, &b), 0.0);
    // The tokenizer rebuilt from pieces and scores encodes like the original.
    let (tok, reference) = (ours.tokenizer().unwrap(), theirs.tokenizer().unwrap());
    let text =
        std::fs::read_to_string(shared().join("data/tinystories-synth-valid.jsonl")).unwrap();
    let mut checked = 0;
    for line in text.lines().take(60) {
        let story: serde_json::Value = serde_json::from_str(line).unwrap();
        let s = story["text"].as_str().unwrap();
        let ids = tok.encode(s, true).unwrap();
        assert_eq!(ids, reference.encode(s, true).unwrap(), "{s}");
        assert_eq!(ids[0], 1, "BOS first");
        assert_eq!(
            tok.decode(&ids[1..]).unwrap(),
            reference.decode(&ids[1..]).unwrap()
        );
        checked += ids.len();
    }
    assert!(checked > 5000);
    // Bytes outside the pieces fall back to byte tokens and decode back.
    let odd = "naïve café ☃";
    let ids = tok.encode(odd, false).unwrap();
    assert_eq!(ids, reference.encode(odd, false).unwrap());
    assert_eq!(tok.decode(&ids).unwrap(), odd);
}

/// Every type candle reads dequantises as candle does; the offset types lose the zeros of a
/// sparse weight and the symmetric ones keep them all.
#[test]
fn every_supported_quantisation_dequantises_exactly_as_candle_does() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("random");
    // Sides that are multiples of 256, so every type's blocks fit every weight.
    let mut config = lors::model::random::small_config(256, 2, 4, 2, 512);
    config.vocab_size = 512;
    let weights = lors::model::random::random_weights(
        &config,
        7,
        Some(lors::sparsity::Pattern::Unstructured { sparsity: 0.5 }),
    )
    .unwrap();
    lors::model::random::write_checkpoint(&src, &config, &weights).unwrap();
    let reference =
        candle_core::safetensors::load(src.join("model.safetensors"), &Device::Cpu).unwrap();
    let tokenizer = spm_metadata(&shared().join("models/stories260K/tokenizer.json"));
    for dtype in [
        GgmlDType::F16,
        GgmlDType::BF16,
        GgmlDType::Q8_0,
        GgmlDType::Q4_0,
        GgmlDType::Q4_1,
        GgmlDType::Q5_0,
        GgmlDType::Q5_1,
        GgmlDType::Q2K,
        GgmlDType::Q3K,
        GgmlDType::Q4K,
        GgmlDType::Q5K,
        GgmlDType::Q6K,
    ] {
        let file = tmp.path().join(format!("{dtype:?}.gguf"));
        write_gguf(&src, &file, dtype, tokenizer.clone());
        let out = tmp.path().join(format!("{dtype:?}"));
        let report = convert_gguf(&file, &out, DType::F32).unwrap();
        assert!(
            report.tensor_types.contains_key(&format!("{dtype:?}")),
            "{report:?}"
        );
        let got =
            candle_core::safetensors::load(out.join("model.safetensors"), &Device::Cpu).unwrap();
        assert_eq!(got.len(), reference.len());
        let lost: usize = reference
            .iter()
            .filter(|(_, w)| w.rank() == 2)
            .map(|(n, w)| common::pruned_not_positive_zero(&got[n], w))
            .sum();
        // Why `lors export` refuses the offset types: each of their blocks dequantises
        // as `d·q − m`, so zeros come back nonzero; the symmetric ones keep every zero.
        let offset = matches!(
            dtype,
            GgmlDType::Q4_1 | GgmlDType::Q5_1 | GgmlDType::Q2K | GgmlDType::Q4K | GgmlDType::Q5K
        );
        assert_eq!(
            lost > 0,
            offset,
            "{dtype:?}: {lost} zeros read back nonzero"
        );
        for (name, w) in &reference {
            let w = w.to_dtype(DType::F32).unwrap();
            let want = if w.rank() == 2 {
                QTensor::quantize(&w, dtype)
                    .unwrap()
                    .dequantize(&Device::Cpu)
                    .unwrap()
            } else {
                w.clone()
            };
            assert_eq!(
                common::max_abs_diff(&got[name], &want),
                0.0,
                "{dtype:?} {name}"
            );
        }
        // And the model loads and runs.
        let model = CausalLm::load_frozen(&ModelDir::open(&out).unwrap()).unwrap();
        assert_eq!(logits(&model, &[1, 2, 3]).dims(), [1, 3, 512]);
    }
    // bf16 output dtype.
    let out = tmp.path().join("bf16-out");
    convert_gguf(&tmp.path().join("Q8_0.gguf"), &out, DType::BF16).unwrap();
    let got = candle_core::safetensors::load(out.join("model.safetensors"), &Device::Cpu).unwrap();
    assert!(got.values().all(|t| t.dtype() == DType::BF16));
}

/// GPT-2's byte-to-character map.
fn byte_chars() -> Vec<char> {
    let mut bs: Vec<u32> = (b'!' as u32..=b'~' as u32)
        .chain(0xA1..=0xAC)
        .chain(0xAE..=0xFF)
        .collect();
    let mut cs = bs.clone();
    let mut n = 0;
    for b in 0..256 {
        if !bs.contains(&b) {
            bs.push(b);
            cs.push(256 + n);
            n += 1;
        }
    }
    let mut out = vec![' '; 256];
    for (b, c) in bs.into_iter().zip(cs) {
        out[b as usize] = char::from_u32(c).unwrap();
    }
    out
}

/// A small byte-level BPE vocabulary (SmolLM's pre-tokenizer) padded to stories260K's 512
/// embeddings, as GGUF tokenizer metadata, with its tokens.
fn byte_level_vocab() -> (Vec<String>, Vec<(String, Value)>) {
    let chars = byte_chars();
    let mut tokens: Vec<String> = vec!["<|endoftext|>".into(), "<|im_start|>".into()];
    tokens.extend(chars.iter().map(|c| c.to_string()));
    for t in [
        "he", "hel", "hell", "hello", "Ġw", "Ġwor", "Ġworld", "or", "ld",
    ] {
        tokens.push(t.into());
    }
    // Pad to the model's 512 embeddings.
    while tokens.len() < 512 {
        tokens.push(format!("<unused{}>", tokens.len()));
    }
    let merges = [
        "h e", "he l", "hel l", "hell o", "Ġ w", "o r", "Ġw or", "l d", "Ġwor ld",
    ];
    let types: Vec<Value> = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| {
            Value::I32(if i < 2 || t.starts_with("<unused") {
                3
            } else {
                1
            })
        })
        .collect();
    let meta = vec![
        ("tokenizer.ggml.model".into(), Value::String("gpt2".into())),
        ("tokenizer.ggml.pre".into(), Value::String("smollm".into())),
        (
            "tokenizer.ggml.tokens".into(),
            Value::Array(tokens.iter().cloned().map(Value::String).collect()),
        ),
        (
            "tokenizer.ggml.merges".into(),
            Value::Array(
                merges
                    .iter()
                    .map(|m| Value::String(m.to_string()))
                    .collect(),
            ),
        ),
        ("tokenizer.ggml.token_type".into(), Value::Array(types)),
        ("tokenizer.ggml.bos_token_id".into(), Value::U32(0)),
        ("tokenizer.ggml.eos_token_id".into(), Value::U32(0)),
        ("tokenizer.ggml.add_bos_token".into(), Value::Bool(false)),
    ];
    (tokens, meta)
}

#[test]
fn a_byte_level_bpe_tokenizer_keeps_specials_digits_and_bytes() {
    let tmp = tempfile::tempdir().unwrap();
    let src = shared().join("models/stories260K");
    let (tokens, meta) = byte_level_vocab();
    let file = tmp.path().join("bpe.gguf");
    write_gguf(&src, &file, GgmlDType::F32, meta);
    let out = tmp.path().join("hf");
    assert_eq!(
        convert_gguf(&file, &out, DType::F32).unwrap().tokenizer,
        "gpt2"
    );
    let tok = TextTokenizer::from_file(&out.join("tokenizer.json"), Some(0)).unwrap();
    let id = |t: &str| tokens.iter().position(|x| x == t).unwrap() as u32;
    let ids = tok.encode("<|im_start|>hello world 42", false).unwrap();
    assert_eq!(
        ids,
        [
            id("<|im_start|>"),
            id("hello"),
            id("Ġworld"),
            id("Ġ"),
            id("4"),
            id("2")
        ]
    );
    let text = "hello wörld\n\ttabs 2024 ☃";
    assert_eq!(tok.decode(&tok.encode(text, false).unwrap()).unwrap(), text);
}

#[test]
fn bad_gguf_files_are_clear_errors_and_a_gguf_path_is_a_model() {
    let tmp = tempfile::tempdir().unwrap();
    let not_gguf = tmp.path().join("x.gguf");
    std::fs::write(&not_gguf, b"definitely not gguf").unwrap();
    let err = convert_gguf(&not_gguf, &tmp.path().join("o"), DType::F32)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("x.gguf") && err.contains("not a readable GGUF"),
        "{err}"
    );
    assert!(!tmp.path().join("o").exists());
    // Another architecture.
    let other = tmp.path().join("gpt2.gguf");
    let meta = [("general.architecture", &Value::String("gpt2".into()))];
    gguf_file::write(&mut std::fs::File::create(&other).unwrap(), &meta, &[]).unwrap();
    let err = convert_gguf(&other, &tmp.path().join("o"), DType::F32)
        .unwrap_err()
        .to_string();
    assert!(err.contains("`gpt2` is not supported"), "{err}");
    // A missing metadata key is named.
    let partial = tmp.path().join("partial.gguf");
    let meta = [("general.architecture", &Value::String("llama".into()))];
    gguf_file::write(&mut std::fs::File::create(&partial).unwrap(), &meta, &[]).unwrap();
    let err = convert_gguf(&partial, &tmp.path().join("o"), DType::F32)
        .unwrap_err()
        .to_string();
    assert!(err.contains("`llama.embedding_length` is missing"), "{err}");
    // A crafted tensor of 2^31 x 2^31 elements is an error naming it, not an allocation panic.
    let crafted = tmp.path().join("crafted.gguf");
    let mut bytes = b"GGUF".to_vec();
    bytes.extend(3u32.to_le_bytes());
    bytes.extend(1u64.to_le_bytes()); // tensors
    bytes.extend(0u64.to_le_bytes()); // metadata entries
    let name = b"token_embd.weight";
    bytes.extend((name.len() as u64).to_le_bytes());
    bytes.extend(name);
    bytes.extend(2u32.to_le_bytes());
    bytes.extend((1u64 << 31).to_le_bytes());
    bytes.extend((1u64 << 31).to_le_bytes());
    bytes.extend(0u32.to_le_bytes()); // F32
    bytes.extend(0u64.to_le_bytes()); // offset
    bytes.resize(bytes.len().div_ceil(32) * 32 + 64, 0);
    std::fs::write(&crafted, bytes).unwrap();
    let err = convert_gguf(&crafted, &tmp.path().join("c"), DType::F32)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("token_embd.weight") && err.contains("2147483648"),
        "{err}"
    );
    // An alignment of 0 makes candle's reader divide by zero: an error, not a crash.
    let unaligned = tmp.path().join("unaligned.gguf");
    let meta = [
        ("general.architecture", &Value::String("llama".into())),
        ("general.alignment", &Value::U32(0)),
    ];
    gguf_file::write(&mut std::fs::File::create(&unaligned).unwrap(), &meta, &[]).unwrap();
    let err = convert_gguf(&unaligned, &tmp.path().join("u"), DType::F32)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("unaligned.gguf") && err.contains("GGUF"),
        "{err}"
    );
    // A .gguf path used as a model converts once into the user's cache and evaluates like
    // the model it came from.
    let src = shared().join("models/stories260K");
    let file = tmp.path().join("stories.gguf");
    write_gguf(
        &src,
        &file,
        GgmlDType::F32,
        spm_metadata(&src.join("tokenizer.json")),
    );
    let eval = |model: &Path| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_lors"))
            .args(["eval", "--model"])
            .arg(model)
            .arg("--data")
            .arg(shared().join("data/tinystories-synth-valid.jsonl"))
            .args(["--max-windows", "4"])
            .env("XDG_CACHE_HOME", tmp.path().join("cache"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        // The figures, without the time they took.
        let s = String::from_utf8_lossy(&out.stdout).into_owned();
        s[s.find("perplexity").unwrap()..s.find(", scored in").unwrap()].to_string()
    };
    assert_eq!(eval(&file), eval(&src));
    assert!(tmp.path().join("cache/lors/gguf").is_dir());
}

/// `lors <args>`: its stdout, or its stderr as the error.
fn lors(args: &[&std::ffi::OsStr]) -> Result<String, String> {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_lors"))
        .args(args)
        .output()
        .unwrap();
    let text = |b: Vec<u8>| String::from_utf8_lossy(&b).into_owned();
    if out.status.success() {
        Ok(text(out.stdout))
    } else {
        Err(text(out.stderr))
    }
}

/// `lors export --from FROM --gguf OUT --type TY` plus `extra`.
fn export(from: &Path, out: &Path, ty: &str, extra: &[&str]) -> Result<String, String> {
    let mut args: Vec<&std::ffi::OsStr> = vec![
        "export".as_ref(),
        "--from".as_ref(),
        from.as_os_str(),
        "--gguf".as_ref(),
        out.as_os_str(),
        "--type".as_ref(),
        ty.as_ref(),
    ];
    args.extend(extra.iter().map(std::ffi::OsStr::new));
    lors(&args)
}

/// A short LoRS run on stories260K-wanda-50 (gradient init, 4 steps), merged at the end.
fn trained_wanda_run(root: &Path) -> PathBuf {
    let text = format!(
        r#"
[model]
path = "{shared}/models/stories260K-wanda-50"
[data]
train = "{shared}/data/tinystories-synth-train.jsonl"
valid = "{shared}/data/tinystories-synth-valid.jsonl"
seq_len = 64
[adapter]
method = "lors"
rank = 4
init = "gradient"
init_samples = 4
[optim]
lr = 0.02
warmup_steps = 1
[train]
max_steps = 4
batch_size = 2
eval_every = 4
save_every = 4
merge_at_end = true
output_dir = "{root}/runs"
"#,
        shared = shared().display(),
        root = root.display()
    );
    let p = lors::train::Profile::parse(&text, &[]).unwrap();
    let dir = root.join("runs/wanda");
    let run = lors::train::RunDir::create(&dir, &p).unwrap();
    run.write_profile(&p.to_toml()).unwrap();
    let stop = std::sync::atomic::AtomicBool::new(false);
    lors::train::train(&p, &run, lors::train::Start::Fresh, &stop, &mut |_| {}).unwrap();
    dir
}

fn load(path: &Path) -> std::collections::HashMap<String, Tensor> {
    candle_core::safetensors::load(path, &Device::Cpu).unwrap()
}

/// A trained sparse run exports to GGUF in every exact-zero type, from the run and from its
/// merged directory, and `lors convert --gguf` reads it back: for f32 every tensor bit for
/// bit, for the others each weight as the type rounds it; in every type each pruned weight
/// as `+0.0`. The config and tokenizer survive the trip.
#[test]
fn a_trained_sparse_run_exports_to_gguf_and_reads_back_with_its_zeros() {
    let tmp = tempfile::tempdir().unwrap();
    let run = trained_wanda_run(tmp.path());
    let merged_dir = run.join("merged");
    let merged = load(&merged_dir.join("model.safetensors"));
    let base = load(&shared().join("models/stories260K-wanda-50/model.safetensors"));
    for ty in ["f32", "f16", "bf16", "q8_0", "q4_0"] {
        let file = tmp.path().join(format!("{ty}.gguf"));
        let said = export(&run, &file, ty, &[]).unwrap();
        assert!(said.contains("all read back as zero"), "{said}");
        let back = tmp.path().join(format!("back-{ty}"));
        convert_gguf(&file, &back, DType::F32).unwrap();
        let (ours, theirs) = (
            ModelDir::open(&back).unwrap(),
            ModelDir::open(&merged_dir).unwrap(),
        );
        assert_eq!(ours.config.head_dim, theirs.config.head_dim);
        assert_eq!(ours.config.num_kv_heads, theirs.config.num_kv_heads);
        assert_eq!(ours.config.rms_norm_eps, theirs.config.rms_norm_eps);
        assert_eq!(ours.config.rope_theta, theirs.config.rope_theta);
        let got = load(&back.join("model.safetensors"));
        assert_eq!(got.len(), merged.len(), "{ty}");
        let ggml: GgmlDType = match ty {
            "f32" => GgmlDType::F32,
            "f16" => GgmlDType::F16,
            "bf16" => GgmlDType::BF16,
            "q8_0" => GgmlDType::Q8_0,
            _ => GgmlDType::Q4_0,
        };
        for (name, w) in &merged {
            let g = &got[name];
            if w.rank() == 1 || ty == "f32" {
                assert!(common::same_bits(g, w), "{ty} {name}: bit for bit");
                continue;
            }
            // Rows that do not fit the type's blocks fall back to F16, as llama.cpp's do.
            let fits = w.dims()[1] % ggml.block_size() == 0;
            let want = QTensor::quantize(w, if fits { ggml } else { GgmlDType::F16 })
                .unwrap()
                .dequantize(&Device::Cpu)
                .unwrap();
            assert_eq!(common::max_abs_diff(g, &want), 0.0, "{ty} {name}");
            assert_eq!(
                common::pruned_not_positive_zero(g, w),
                0,
                "{ty} {name}: +0.0"
            );
            if name.contains("_proj") {
                assert_eq!(
                    common::pruned_not_positive_zero(g, &base[name]),
                    0,
                    "{ty} {name}: every pruned weight of the base is +0.0"
                );
            }
        }
        let (tok, reference) = (ours.tokenizer().unwrap(), theirs.tokenizer().unwrap());
        for s in [
            "Once upon a time, there was a little girl.",
            "naïve café ☃ 42",
        ] {
            assert_eq!(
                tok.encode(s, true).unwrap(),
                reference.encode(s, true).unwrap()
            );
        }
    }
    // The merged directory as input writes the same tensors.
    let from_dir = tmp.path().join("from-dir.gguf");
    export(&merged_dir, &from_dir, "f32", &[]).unwrap();
    let back = tmp.path().join("back-dir");
    convert_gguf(&from_dir, &back, DType::F32).unwrap();
    let again = load(&back.join("model.safetensors"));
    assert!(merged.iter().all(|(n, w)| common::same_bits(&again[n], w)));
}

/// The export's reader side of the tokenizer: the byte-level BPE kind keeps its tokens,
/// types, merges and pre-tokenizer through HF and back; the SentencePiece kind its pieces,
/// types, special ids and space prefix.
#[test]
fn tokenizers_survive_the_trip_to_hf_and_back_to_gguf() {
    let tmp = tempfile::tempdir().unwrap();
    let src = shared().join("models/stories260K");
    // GGUF with `meta` -> HF -> GGUF again; the keys must read the same in both files.
    let round_trip = |name: &str, meta: Vec<(String, Value)>, keys: &[&str]| {
        let read_meta = |file: &Path| {
            let mut f = std::fs::File::open(file).unwrap();
            gguf_file::Content::read(&mut f).unwrap().metadata
        };
        let first = tmp.path().join(format!("{name}.gguf"));
        write_gguf(&src, &first, GgmlDType::F32, meta);
        let hf = tmp.path().join(format!("{name}-hf"));
        convert_gguf(&first, &hf, DType::F32).unwrap();
        let second = tmp.path().join(format!("{name}-again.gguf"));
        export(&hf, &second, "f32", &[]).unwrap();
        let (a, b) = (read_meta(&first), read_meta(&second));
        for key in keys {
            assert_eq!(
                format!("{:?}", a[*key]),
                format!("{:?}", b[*key]),
                "{name} {key}"
            );
        }
        b
    };
    // SentencePiece kind: stories260K.
    let b = round_trip(
        "spm",
        spm_metadata(&src.join("tokenizer.json")),
        &[
            "tokenizer.ggml.model",
            "tokenizer.ggml.tokens",
            "tokenizer.ggml.token_type",
            "tokenizer.ggml.bos_token_id",
            "tokenizer.ggml.eos_token_id",
            "tokenizer.ggml.unknown_token_id",
            "tokenizer.ggml.add_bos_token",
            "tokenizer.ggml.add_space_prefix",
        ],
    );
    let types = b["tokenizer.ggml.token_type"].to_vec().unwrap();
    let kinds: Vec<i32> = types.iter().map(|v| v.to_i32().unwrap()).collect();
    assert_eq!(
        &kinds[..4],
        [2, 3, 3, 6],
        "unknown, BOS, EOS, then byte pieces"
    );
    // The byte-level kind: the GGUF of the byte-level test's vocabulary, through HF and back.
    round_trip(
        "bpe",
        byte_level_vocab().1,
        &[
            "tokenizer.ggml.model",
            "tokenizer.ggml.pre",
            "tokenizer.ggml.tokens",
            "tokenizer.ggml.merges",
            "tokenizer.ggml.token_type",
            "tokenizer.ggml.bos_token_id",
            "tokenizer.ggml.add_bos_token",
        ],
    );
}

/// Bad input to `lors export` is a clear error and writes nothing: a type that cannot keep
/// zeros, an existing output file (kept as it was), a non-Llama architecture, a run without
/// a checkpoint, a directory as the output.
#[test]
fn gguf_export_refuses_bad_input_and_overwrites_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let model = shared().join("models/stories260K-wanda-50");
    let out = tmp.path().join("m.gguf");
    let err = export(&model, &out, "q4_k", &[]).unwrap_err();
    assert!(
        err.contains("cannot keep the model's zeros") && err.contains("q8_0, q4_0"),
        "{err}"
    );
    assert!(!out.exists());
    std::fs::write(&out, b"keep me").unwrap();
    let err = export(&model, &out, "f16", &[]).unwrap_err();
    assert!(err.contains("m.gguf") && err.contains("--force"), "{err}");
    assert_eq!(std::fs::read(&out).unwrap(), b"keep me");
    export(&model, &out, "f16", &["--force"]).unwrap();
    assert_ne!(std::fs::read(&out).unwrap(), b"keep me");
    let err = export(&model, tmp.path(), "f16", &[]).unwrap_err();
    assert!(err.contains("is a directory"), "{err}");
    // Qwen2 (q/k/v biases) is not llama.cpp's `llama` architecture.
    let mut config = lors::model::random::small_config(32, 1, 4, 2, 512);
    config.model_type = Some("qwen2".into());
    let qwen = tmp.path().join("qwen");
    let weights = lors::model::random::random_weights(&config, 1, None).unwrap();
    lors::model::random::write_checkpoint(&qwen, &config, &weights).unwrap();
    for f in ["tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(model.join(f), qwen.join(f)).unwrap();
    }
    let q = tmp.path().join("q.gguf");
    let err = export(&qwen, &q, "f16", &[]).unwrap_err();
    assert!(
        err.contains("`llama` architecture") && err.contains("Qwen2"),
        "{err}"
    );
    assert!(!q.exists());
    // A run that has not saved a checkpoint yet.
    let text = format!(
        "[model]\npath = \"{}\"\n[data]\ntrain = \"{}\"\n[train]\nmax_steps = 1\n",
        model.display(),
        shared()
            .join("data/tinystories-synth-train.jsonl")
            .display()
    );
    let p = lors::train::Profile::parse(&text, &[]).unwrap();
    let run = lors::train::RunDir::create(&tmp.path().join("runs/empty"), &p).unwrap();
    run.write_profile(&p.to_toml()).unwrap();
    let err = export(&run.path, &q, "f16", &[]).unwrap_err();
    assert!(err.contains("no checkpoint"), "{err}");
    assert!(!q.exists());
    let leftovers: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains(".tmp-"))
        .collect();
    assert!(leftovers.is_empty(), "no temporaries left");
}
