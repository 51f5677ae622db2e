//! The training engine end to end on a tiny random Llama written by this crate: save/reload,
//! resume equals uninterrupted, replay equals original, merge keeps the mask, and the errors
//! bad input must produce.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use candle_core::{DType, Device, Tensor};
use lors::data::TextTokenizer;
use lors::model::random::{random_weights, small_config, write_checkpoint};
use lors::model::{CausalLm, ModelDir, WeightSource};
use lors::sparsity::Pattern;
use lors::train::run_dir::compare_metrics;
use lors::train::{self, Event, MetricRow, Profile, RunDir, RunState};
use lors::LorsError;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

const HALF: Pattern = Pattern::Unstructured { sparsity: 0.5 };

fn tiny_model(dir: &Path) {
    let config = small_config(32, 2, 4, 2, 64);
    write_checkpoint(
        dir,
        &config,
        &random_weights(&config, 7, Some(HALF)).unwrap(),
    )
    .unwrap();
}

fn sentences(n: usize) -> String {
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

struct Fixture {
    _tmp: tempfile::TempDir,
    root: PathBuf,
}

fn fixture() -> Fixture {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().to_path_buf();
    tiny_model(&root.join("model"));
    std::fs::write(root.join("train.jsonl"), sentences(160)).unwrap();
    std::fs::write(root.join("valid.jsonl"), sentences(40)).unwrap();
    Fixture { _tmp: tmp, root }
}

fn profile(f: &Fixture, extra: &[&str]) -> Profile {
    let text = format!(
        r#"
[model]
path = "{root}/model"
[data]
train = "{root}/train.jsonl"
valid = "{root}/valid.jsonl"
seq_len = 32
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
    );
    let overrides: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
    Profile::parse(&text, &overrides).unwrap()
}

fn run(p: &Profile, dir: &Path, stop_at: Option<usize>) -> lors::Result<train::RunOutcome> {
    let run = if dir.exists() {
        RunDir::open(dir)?
    } else {
        RunDir::create(dir)?
    };
    run.write_profile(&p.to_toml())?;
    let stop = AtomicBool::new(false);
    let resume = run.latest_checkpoint().is_some();
    train::train(p, &run, resume, &stop, &mut |e| {
        if let (Some(at), Event::Metric(MetricRow::Train { step, .. })) = (stop_at, e) {
            if *step == at {
                stop.store(true, Ordering::SeqCst);
            }
        }
    })
}

#[test]
fn random_checkpoint_reloads_with_identical_logits() {
    let tmp = tempfile::tempdir().unwrap();
    let config = small_config(32, 2, 4, 2, 64);
    let tensors = random_weights(&config, 3, Some(HALF)).unwrap();
    write_checkpoint(tmp.path(), &config, &tensors).unwrap();
    let dir = ModelDir::open(tmp.path()).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let reloaded = CausalLm::from_source(
        &dir.config,
        &dir.weights().unwrap(),
        DType::F32,
        &candle_core::Device::Cpu,
        None,
        &mut rng,
    )
    .unwrap();
    let in_memory = CausalLm::from_source(
        &dir.config,
        &tensors,
        DType::F32,
        &candle_core::Device::Cpu,
        None,
        &mut rng,
    )
    .unwrap();
    let ids = Tensor::new(
        &[[1u32, 40, 50, 60, 70, 80], [1, 90, 100, 7, 8, 9]],
        &Device::Cpu,
    )
    .unwrap();
    let a = reloaded
        .forward(&ids)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let b = in_memory
        .forward(&ids)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    assert_eq!(a, b);
    assert!(a.iter().any(|&v| v != 0.0));

    let tok = TextTokenizer::from_file(&dir.tokenizer_path(), Some(2)).unwrap();
    let ids = tok.encode("héllo world", true).unwrap();
    assert_eq!(ids[0], 1, "BOS first");
    assert_eq!(ids.len(), 1 + "héllo world".len(), "one token per byte");
    assert_eq!(tok.decode(&ids).unwrap(), "héllo world");
}

#[test]
fn qwen2_needs_and_uses_qkv_bias() {
    let tmp = tempfile::tempdir().unwrap();
    let mut config = small_config(32, 1, 4, 2, 64);
    config.model_type = Some("qwen2".into());
    let mut tensors = random_weights(&config, 1, None).unwrap();
    let dir_path = tmp.path().join("qwen");
    write_checkpoint(&dir_path, &config, &tensors).unwrap();
    let dir = ModelDir::open(&dir_path).unwrap();
    assert!(dir.config.qkv_bias);
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    CausalLm::from_source(
        &dir.config,
        &dir.weights().unwrap(),
        DType::F32,
        &candle_core::Device::Cpu,
        None,
        &mut rng,
    )
    .unwrap();
    tensors.remove("model.layers.0.self_attn.k_proj.bias");
    let err = CausalLm::from_source(
        &dir.config,
        &tensors,
        DType::F32,
        &candle_core::Device::Cpu,
        None,
        &mut rng,
    )
    .unwrap_err();
    assert!(
        err.to_string()
            .contains("model.layers.0.self_attn.k_proj.bias"),
        "{err}"
    );
}

fn comparable_rows(dir: &Path) -> Vec<MetricRow> {
    RunDir::open(dir).unwrap().read_metrics().unwrap()
}

#[test]
fn resume_continues_exactly_like_an_uninterrupted_run() {
    let f = fixture();
    let p = profile(&f, &[]);
    let full = f.root.join("runs/full");
    let outcome = run(&p, &full, None).unwrap();
    assert_eq!((outcome.state, outcome.step), (RunState::Finished, 6));

    let split = f.root.join("runs/split");
    let stopped = run(&p, &split, Some(3)).unwrap();
    assert_eq!((stopped.state, stopped.step), (RunState::Stopped, 3));
    assert_eq!(
        RunDir::open(&split).unwrap().read_status().unwrap().state,
        RunState::Stopped
    );
    let resumed = run(&p, &split, None).unwrap();
    assert_eq!((resumed.state, resumed.step), (RunState::Finished, 6));

    let rows = compare_metrics(
        &RunDir::open(&full).unwrap(),
        &RunDir::open(&split).unwrap(),
    )
    .unwrap();
    assert_eq!(rows, 6 + 2, "6 train rows and 2 eval rows");
    let losses: Vec<f64> = comparable_rows(&full)
        .iter()
        .filter_map(|r| match r {
            MetricRow::Train { loss, .. } => Some(*loss),
            _ => None,
        })
        .collect();
    assert!(
        losses[5] < losses[0],
        "training lowers the loss: {losses:?}"
    );
}

#[test]
fn a_replay_reproduces_the_metrics_bit_for_bit_and_a_change_is_detected() {
    let f = fixture();
    let p = profile(&f, &["train.max_steps=4", "train.eval_every=2"]);
    run(&p, &f.root.join("runs/a"), None).unwrap();
    run(&p, &f.root.join("runs/b"), None).unwrap();
    let (a, b) = (
        RunDir::open(&f.root.join("runs/a")).unwrap(),
        RunDir::open(&f.root.join("runs/b")).unwrap(),
    );
    assert_eq!(compare_metrics(&a, &b).unwrap(), 4 + 2);
    let other = profile(
        &f,
        &["train.max_steps=4", "train.eval_every=2", "train.seed=1"],
    );
    run(&other, &f.root.join("runs/c"), None).unwrap();
    let c = RunDir::open(&f.root.join("runs/c")).unwrap();
    assert!(
        compare_metrics(&a, &c).is_err(),
        "another seed must not compare equal"
    );
}

/// Zero positions of any tensor (viewed as one row), compared with `==`.
fn zero_pattern(t: &Tensor) -> lors::sparsity::BitMask {
    lors::sparsity::BitMask::from_nonzero(&t.reshape((1, ())).unwrap()).unwrap()
}

#[test]
fn merged_export_keeps_every_zero_and_lora_reports_its_density() {
    let f = fixture();
    let base = candle_core::safetensors::load(f.root.join("model/model.safetensors"), &Device::Cpu)
        .unwrap();
    for method in ["lors", "sqft", "spp", "lora"] {
        let init = if method == "spp" {
            "standard"
        } else {
            "gradient"
        };
        let p = profile(
            &f,
            &[
                &format!("adapter.method=\"{method}\""),
                &format!("adapter.init=\"{init}\""),
                "train.merge_at_end=true",
            ],
        );
        let dir = f.root.join(format!("runs/merge-{method}"));
        run(&p, &dir, None).unwrap();
        let merged =
            candle_core::safetensors::load(dir.join("merged/model.safetensors"), &Device::Cpu)
                .unwrap();
        let report: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(dir.join("merged/sparsity.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(merged.len(), base.len());
        let mut changed = 0;
        for (name, w) in &base {
            let m = &merged[name];
            assert_eq!(m.dtype(), w.dtype(), "{name}");
            let adapted = name.contains("_proj");
            if method != "lora" || !adapted {
                assert_eq!(
                    zero_pattern(m),
                    zero_pattern(w),
                    "{method}: zeros of {name}"
                );
            }
            let diff = common::max_abs_diff(m, w);
            if adapted && diff > 0.0 {
                changed += 1;
            }
            if !adapted {
                assert_eq!(diff, 0.0, "{name} is copied bit for bit");
            }
        }
        assert_eq!(changed, 14, "{method}: every adapted weight moved");
        assert!(dir.join("merged/tokenizer.json").is_file());
        assert_eq!(report["method"], method);
        if method == "lora" {
            assert_eq!(report["pattern_preserved"], false);
            assert!(report["density_after"].as_f64().unwrap() > 0.99);
        } else {
            assert_eq!(report["pattern_preserved"], true);
            assert_eq!(report["density_after"], report["density_before"]);
        }
        // The sparsity rows the TUI shows: at the start the would-be merged weight is the
        // base (B = 0 or W_col = 1 start); at the end it is what the export wrote.
        let rows: Vec<(usize, Vec<lors::model::LayerSparsity>)> = comparable_rows(&dir)
            .into_iter()
            .filter_map(|r| match r {
                MetricRow::Sparsity { step, layers } => Some((step, layers)),
                _ => None,
            })
            .collect();
        let (first, last) = (&rows[0], rows.last().unwrap());
        assert_eq!(first.0, 0);
        assert!(first.1.iter().all(|l| l.density_after == l.density_before));
        assert_eq!(last.0, 6);
        let exported = report["layers"].as_array().unwrap();
        assert_eq!(last.1.len(), exported.len());
        for (l, e) in last.1.iter().zip(exported) {
            assert_eq!(l.name, e["name"].as_str().unwrap());
            assert_eq!(
                l.density_after,
                e["density_after"].as_f64().unwrap(),
                "{}",
                l.name
            );
            assert_eq!(l.pattern_preserved, method != "lora");
        }
    }
}

#[test]
fn divergence_fails_the_run_with_a_last_good_checkpoint() {
    let f = fixture();
    let p = profile(
        &f,
        &[
            "optim.lr=1e30",
            "optim.grad_clip=0.0",
            "optim.warmup_steps=0",
            "train.max_steps=20",
            "train.save_every=0",
        ],
    );
    let dir = f.root.join("runs/nan");
    let err = run(&p, &dir, None).unwrap_err();
    assert!(matches!(err, LorsError::Diverged { .. }), "{err}");
    let run_dir = RunDir::open(&dir).unwrap();
    let status = run_dir.read_status().unwrap();
    assert_eq!(status.state, RunState::Failed);
    assert!(status.error.unwrap().contains("diverged"));
    let ckpt = run_dir.latest_checkpoint().expect("a last good checkpoint");
    let adapter =
        candle_core::safetensors::load(ckpt.join("adapter_model.safetensors"), &Device::Cpu)
            .unwrap();
    for (name, t) in adapter {
        let finite = t
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
            .iter()
            .all(|v| v.is_finite());
        assert!(finite, "{name} in the last good checkpoint is finite");
    }
}

#[test]
fn bad_input_names_the_file_line_key_or_tensor() {
    let f = fixture();
    // A bad record names its file and line; skipping counts it instead.
    let bad = f.root.join("bad.jsonl");
    std::fs::write(
        &bad,
        "{\"text\": \"ok\"}\n{\"text\": \"fine\"}\n{\"txt\": \"oops\"}\nnot json\n",
    )
    .unwrap();
    let err = lors::data::read_records(&bad, lors::data::DataFormat::Text, false).unwrap_err();
    assert!(
        err.to_string().contains("bad.jsonl, line 3") && err.to_string().contains("`text`"),
        "{err}"
    );
    let set = lors::data::read_records(&bad, lors::data::DataFormat::Text, true).unwrap();
    assert_eq!((set.records.len(), set.skipped), (2, 2));
    let arr = f.root.join("bad.json");
    std::fs::write(&arr, "[\n {\"instruction\": \"a\", \"output\": \"b\"},\n {\"instruction\": 3, \"output\": \"b\"}\n]").unwrap();
    let err = lors::data::read_records(&arr, lors::data::DataFormat::Auto, false).unwrap_err();
    assert!(err.to_string().contains("bad.json, line 3"), "{err}");
    let empty = f.root.join("empty.jsonl");
    std::fs::write(&empty, "\n").unwrap();
    assert!(lors::data::read_records(&empty, lors::data::DataFormat::Auto, false).is_err());

    // Profiles: unknown keys and bad values name the key.
    let base = profile(&f, &[]).to_toml();
    let err = Profile::parse(&base, &["adapter.rnak=4".into()]).unwrap_err();
    assert!(err.to_string().contains("rnak"), "{err}");
    for (set, key) in [
        ("adapter.rank=0", "adapter.rank"),
        ("optim.lr=-1.0", "optim.lr"),
        ("data.seq_len=1", "data.seq_len"),
        ("train.device=\"gpu0\"", "train.device"),
        ("adapter.method=\"lors-fast\"", "method"),
        ("model.dtype=\"bf16\"", "model.dtype"),
    ] {
        let err = Profile::parse(&base, &[set.into()]).unwrap_err();
        assert!(err.to_string().contains(key), "{set}: {err}");
    }
    // CUDA computes in bf16 or f32 only.
    let set = [
        "train.device=\"cuda:0\"".into(),
        "model.dtype=\"f16\"".into(),
    ];
    let err = Profile::parse(&base, &set).unwrap_err();
    assert!(err.to_string().contains("model.dtype"), "{err}");
    // A CUDA device in a build without CUDA says how to get one.
    if !cfg!(feature = "cuda") {
        let p = profile(&f, &["train.device=\"cuda:0\""]);
        let err = train::prepare(&p).err().expect("no CUDA in this build");
        assert!(err.to_string().contains("--features cuda"), "{err}");
    }
    // A layer name that matches nothing.
    let p = profile(&f, &["adapter.target_modules=[\"qkv\"]"]);
    let err = train::prepare(&p).err().expect("no layer named qkv");
    assert!(err.to_string().contains("qkv"), "{err}");
    // Rank above what a layer allows.
    let p = profile(&f, &["adapter.rank=40"]);
    let err = train::prepare(&p).err().expect("rank too large");
    assert!(err.to_string().contains("adapter.rank"), "{err}");

    // A model directory with a missing tensor or a bad config.
    let mut tensors: HashMap<String, Tensor> = HashMap::new();
    let dir = ModelDir::open(&f.root.join("model")).unwrap();
    let src = dir.weights().unwrap();
    for n in src.names() {
        if n != "model.layers.1.mlp.up_proj.weight" {
            tensors.insert(n.clone(), src.tensor(&n).unwrap());
        }
    }
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let err = CausalLm::from_source(
        &dir.config,
        &tensors,
        DType::F32,
        &candle_core::Device::Cpu,
        None,
        &mut rng,
    )
    .unwrap_err();
    assert!(
        err.to_string()
            .contains("model.layers.1.mlp.up_proj.weight"),
        "{err}"
    );
    let broken = f.root.join("broken");
    std::fs::create_dir_all(&broken).unwrap();
    std::fs::write(broken.join("config.json"), "{\"hidden_size\": 64}").unwrap();
    let err = ModelDir::open(&broken).unwrap_err();
    assert!(
        err.to_string().contains("config.json") && err.to_string().contains("intermediate_size"),
        "{err}"
    );
}

#[test]
fn alpaca_records_train_on_the_response_only() {
    let tmp = tempfile::tempdir().unwrap();
    tiny_model(tmp.path());
    let tok = TextTokenizer::from_file(&tmp.path().join("tokenizer.json"), Some(2)).unwrap();
    let records = vec![lors::data::Record::Instruction {
        instruction: "Say hi".into(),
        input: String::new(),
        output: "hi".into(),
    }];
    let ex = lors::data::tokenize_records(&records, &tok, false).unwrap();
    let n = ex[0].ids.len();
    // " hi" is not prepended: the response is encoded alone, "hi" + EOS.
    assert_eq!(ex[0].ids[n - 1], 2);
    assert_eq!(
        ex[0].loss.iter().filter(|&&l| l).count(),
        3,
        "h, i and EOS count"
    );
    assert!(!ex[0].loss[0]);
    let blocks = lors::data::pad_blocks(&ex, n + 5, 2);
    assert_eq!(blocks[0].loss.iter().filter(|&&l| l).count(), 3);
    let all = lors::data::tokenize_records(&records, &tok, true).unwrap();
    assert!(all[0].loss.iter().all(|&l| l));
}

#[test]
fn another_process_can_pause_resume_checkpoint_and_stop_a_run() {
    use lors::train::ControlRequest;
    use std::time::{Duration, Instant};
    let f = fixture();
    let p = profile(
        &f,
        &[
            "train.max_steps=100000",
            "train.eval_every=0",
            "train.save_every=0",
            "adapter.init=\"standard\"",
        ],
    );
    let dir = f.root.join("runs/controlled");
    let run = RunDir::create(&dir).unwrap();
    run.write_profile(&p.to_toml()).unwrap();
    let worker = {
        let (p, run) = (p.clone(), run.clone());
        std::thread::spawn(move || {
            train::train(&p, &run, false, &AtomicBool::new(false), &mut |_| {})
        })
    };
    let wait = |what: &str, ok: &dyn Fn(&lors::train::Status) -> bool| {
        let start = Instant::now();
        loop {
            if let Ok(s) = run.read_status() {
                if ok(&s) {
                    return s;
                }
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "timed out waiting for {what}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    wait("training", &|s| s.state == RunState::Running && s.step >= 2);
    let id = run.request(ControlRequest::Pause).unwrap();
    let paused = wait("pause", &|s| {
        s.state == RunState::Paused && s.control_ack == id
    });
    std::thread::sleep(Duration::from_millis(400));
    let still = run.read_status().unwrap();
    assert_eq!(
        (still.state, still.step),
        (RunState::Paused, paused.step),
        "no step while paused"
    );
    // A checkpoint while paused is saved at once and the run stays paused.
    let id = run.request(ControlRequest::Checkpoint).unwrap();
    let s = wait("checkpoint", &|s| s.control_ack == id);
    assert_eq!(s.state, RunState::Paused);
    assert!(dir
        .join(format!("checkpoints/step-{:06}", paused.step))
        .is_dir());
    let id = run.request(ControlRequest::Resume).unwrap();
    wait("resume", &|s| {
        s.control_ack == id && s.step > paused.step + 2
    });
    run.request(ControlRequest::Stop).unwrap();
    let outcome = worker.join().unwrap().unwrap();
    assert_eq!(outcome.state, RunState::Stopped);
    assert!(outcome.step > paused.step && outcome.step < 100000);
    assert_eq!(run.read_status().unwrap().state, RunState::Stopped);
}
