//! The training engine end to end on a tiny random Llama written by this crate: save/reload,
//! resume equals uninterrupted, replay equals original, merge keeps the mask, and the errors
//! bad input must produce.

mod common;
#[path = "support/fixture.rs"]
mod fixture;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use candle_core::{DType, Device, Tensor};
use lors::data::TextTokenizer;
use lors::model::random::{random_weights, small_config, write_checkpoint};
use lors::model::{CausalLm, ModelDir, WeightSource};
use lors::train::run_dir::compare_metrics;
use lors::train::{self, Event, MetricRow, Profile, RunDir, RunState};
use lors::LorsError;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use fixture::{fixture, profile, sentences, tiny_model, HALF};

fn run(p: &Profile, dir: &Path, stop_at: Option<usize>) -> lors::Result<train::RunOutcome> {
    let run = if dir.exists() {
        RunDir::open(dir)?
    } else {
        RunDir::create(dir, p)?
    };
    run.write_profile(&p.to_toml())?;
    let stop = AtomicBool::new(false);
    let start = if run.latest_checkpoint().is_some() {
        train::Start::Resume {
            accept_profile_change: false,
        }
    } else {
        train::Start::Fresh
    };
    train::train(p, &run, start, &stop, &mut |e| {
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
    resume_matches_an_uninterrupted_run(&[]);
}

/// The same with the first block frozen (no adapter, no backward through it).
#[test]
fn resume_is_exact_with_frozen_leading_blocks() {
    resume_matches_an_uninterrupted_run(&["adapter.frozen_blocks=1"]);
}

/// The same from PEFT's orthogonal init.
#[test]
fn resume_is_exact_from_an_orthogonal_init() {
    resume_matches_an_uninterrupted_run(&["adapter.init=\"orthogonal\""]);
}

/// The same with RM-LoRA's regulariser and rank masks (drawn from seed, layer and step).
#[test]
fn resume_is_exact_with_rank_regularisation() {
    resume_matches_an_uninterrupted_run(&["adapter.orth_reg=0.05", "adapter.rank_keep=2"]);
}

/// The same from OLoRA's QR start (recomputed from the weights on resume).
#[test]
fn resume_is_exact_from_an_olora_init() {
    resume_matches_an_uninterrupted_run(&["adapter.init=\"olora\""]);
}

/// The same with Flat-LoRA's perturbations (drawn again from seed, layer and step).
#[test]
fn resume_is_exact_with_flat_lora() {
    resume_matches_an_uninterrupted_run(&["adapter.flat=true", "adapter.flat_rho=0.2"]);
}

/// The same with XGBLoRA's boosting: rounds of 2 steps (the stop at step 3 falls mid-round)
/// and of 3 (it falls on a round's end); the resumed run replays the folded rounds.
#[test]
fn resume_is_exact_across_boosting_rounds() {
    resume_matches_an_uninterrupted_run(&["adapter.boost_every=2"]);
    resume_matches_an_uninterrupted_run(&["adapter.boost_every=3", "adapter.sora=true"]);
}

/// A boosted run (rounds of 2 of its 6 steps) keeps its two finished rounds in the final
/// checkpoint, and loading that checkpoint (rounds replayed into the base, current booster on
/// top) reproduces the run's merged export bit for bit.
#[test]
fn boosting_keeps_its_rounds_and_replays_them_into_the_export() {
    let f = fixture();
    let p = profile(&f, &["adapter.boost_every=2", "train.merge_at_end=true"]);
    let dir = f.root.join("runs/boost");
    run(&p, &dir, None).unwrap();
    let last = dir.join("checkpoints/step-000006");
    let rounds = train::checkpoint::read_boosters(&last).unwrap();
    assert_eq!(rounds.len(), 2, "rounds end after steps 2 and 4");
    assert_ne!(
        rounds[0].values().next().unwrap().to_vec2::<f32>().unwrap(),
        rounds[1][rounds[0].keys().next().unwrap()]
            .to_vec2::<f32>()
            .unwrap(),
        "each round trains its own booster"
    );
    let trained = train::load_trained(&RunDir::open(&dir).unwrap(), Some(&last)).unwrap();
    let exported =
        candle_core::safetensors::load(dir.join("merged/model.safetensors"), &Device::Cpu).unwrap();
    let mut compared = 0;
    for (module, layer) in trained.model.adapted() {
        let name = format!("{module}.weight");
        let (merged, _) = layer.merge().unwrap();
        assert!(common::same_bits(&merged, &exported[&name]), "{name}");
        compared += 1;
    }
    assert!(compared > 0);
}

/// The same under LoRA-RITE (its moments and bases restored from the checkpoint).
#[test]
fn resume_is_exact_under_lora_rite() {
    resume_matches_an_uninterrupted_run(&["optim.name=\"lora-rite\""]);
}

/// The same with SoRA's gates (their values and Adam moments restored) and a threshold large
/// enough to zero some of them within the run.
#[test]
fn resume_is_exact_with_sora_gates() {
    resume_matches_an_uninterrupted_run(&["adapter.sora=true", "adapter.sora_threshold=0.1"]);
}

/// SoRA with ξ = 0.17 (6 steps at lr 0.01 take gates from 1 to ~0.03 without the threshold
/// beyond 1/6, so the ones the gradient pushed up least end at zero): the live
/// ranks shrink in the sparsity rows, and `adapter/` is a PEFT adapter whose update, by PEFT's
/// rule (`lora_alpha/√r` with `rank_pattern`), is the gated one the run trained. Spp and
/// lora-rite on spp are refused, naming the key.
#[test]
fn sora_lowers_ranks_and_exports_a_folded_peft_adapter() {
    let f = fixture();
    let p = profile(&f, &["adapter.sora=true", "adapter.sora_threshold=0.17"]);
    let dir = f.root.join("runs/sora");
    run(&p, &dir, None).unwrap();
    let live: Vec<usize> = comparable_rows(&dir)
        .iter()
        .rev()
        .find_map(|r| match r {
            MetricRow::Sparsity { layers, .. } => Some(layers),
            _ => None,
        })
        .unwrap()
        .iter()
        .map(|l| l.live_rank.expect("gated layers report their rank"))
        .collect();
    let rank = p.adapter.rank;
    assert!(
        live.iter().any(|r| *r < rank),
        "some gate reached zero: {live:?}"
    );
    assert!(
        live.iter().any(|r| *r > 0),
        "not every gate is zero: {live:?}"
    );
    let config: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("adapter/adapter_config.json")).unwrap(),
    )
    .unwrap();
    let folded =
        candle_core::safetensors::load(dir.join("adapter/adapter_model.safetensors"), &Device::Cpu)
            .unwrap();
    let trained = candle_core::safetensors::load(
        dir.join("checkpoints/step-000006/adapter_model.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    let alpha = config["lora_alpha"].as_f64().unwrap();
    assert_eq!(config["use_rslora"], true);
    let mut lowered = 0;
    for name in trained.keys().filter(|n| n.ends_with("lora_gate.weight")) {
        let prefix = name.trim_end_matches("lora_gate.weight");
        let module = prefix
            .trim_start_matches("base_model.model.")
            .trim_end_matches('.');
        let get =
            |t: &HashMap<String, Tensor>, part: &str| t[&format!("{prefix}{part}.weight")].clone();
        let gate = trained[name].unsqueeze(0).unwrap();
        let b_gated = get(&trained, "lora_B").broadcast_mul(&gate).unwrap();
        let want = (b_gated.matmul(&get(&trained, "lora_A")).unwrap()
            * (alpha / (rank as f64).sqrt()))
        .unwrap();
        let r = config["rank_pattern"]
            .get(module)
            .map_or(rank, |v| v.as_u64().unwrap() as usize);
        let (a, b) = (get(&folded, "lora_A"), get(&folded, "lora_B"));
        assert_eq!(a.dim(0).unwrap(), r, "{module}");
        lowered += usize::from(r < rank);
        let got = (b.matmul(&a).unwrap() * (alpha / (r as f64).sqrt())).unwrap();
        let diff = common::max_abs_diff(&got, &want);
        assert!(diff < 1e-6, "{module}: folded update off by {diff}");
    }
    assert!(lowered > 0, "rank_pattern lists the lowered layers");
    for (set, key) in [
        ("adapter.sora=true", "adapter.sora"),
        ("optim.name=\"lora-rite\"", "optim.name"),
    ] {
        let sets = ["adapter.method=\"spp\"", "adapter.init=\"standard\"", set]
            .map(|s| s.parse::<lors::train::Override>().unwrap());
        let err = Profile::parse(&fixture::profile_text(&f), &sets)
            .unwrap_err()
            .to_string();
        assert!(err.contains(key) && err.contains("spp"), "{set}: {err}");
    }
}

/// A run stopped at step 3 and resumed gives the metrics of an uninterrupted one bit for bit.
fn resume_matches_an_uninterrupted_run(extra: &[&str]) {
    let f = fixture();
    let p = profile(&f, extra);
    let full = f.root.join("runs/full");
    let outcome = run(&p, &full, None).unwrap();
    assert_eq!((outcome.state, outcome.step), (RunState::Finished, 6));

    let split = f.root.join("runs/split");
    let stopped = run(&p, &split, Some(3)).unwrap();
    assert_eq!((stopped.state, stopped.step), (RunState::Stopped, 3));
    let stopped_status = RunDir::open(&split).unwrap().read_status().unwrap();
    assert_eq!(stopped_status.state, RunState::Stopped);
    let resumed = run(&p, &split, None).unwrap();
    assert_eq!((resumed.state, resumed.step), (RunState::Finished, 6));
    // The elapsed time goes on from where the stopped process left it, in the status and in
    // the resumed steps' rows.
    let split_dir = RunDir::open(&split).unwrap();
    let after = split_dir.read_status().unwrap().elapsed_s;
    assert!(
        after > stopped_status.elapsed_s,
        "{after} after {}",
        stopped_status.elapsed_s
    );
    let elapsed: Vec<f64> = split_dir
        .read_metrics()
        .unwrap()
        .iter()
        .filter_map(|r| match r {
            MetricRow::Train { elapsed_s, .. } => Some(*elapsed_s),
            _ => None,
        })
        .collect();
    assert!(elapsed.windows(2).all(|w| w[1] >= w[0]), "{elapsed:?}");

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
                assert_eq!(
                    common::pruned_not_positive_zero(m, w),
                    0,
                    "{method}: pruned weights of {name} are +0.0"
                );
            }
            let diff = common::max_abs_diff(m, w);
            if adapted && diff > 0.0 {
                changed += 1;
            }
            if !adapted {
                assert!(common::same_bits(m, w), "{name} is copied bit for bit");
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
    let err = Profile::parse(
        &base,
        &["adapter.rnak=4".parse::<lors::train::Override>().unwrap()],
    )
    .unwrap_err();
    assert!(err.to_string().contains("rnak"), "{err}");
    for (set, key) in [
        ("adapter.rank=0", "adapter.rank"),
        ("optim.lr=-1.0", "optim.lr"),
        ("data.seq_len=1", "data.seq_len"),
        ("train.device=\"gpu0\"", "train.device"),
        ("adapter.method=\"lors-fast\"", "method"),
        ("model.dtype=\"bf16\"", "model.dtype"),
    ] {
        let err =
            Profile::parse(&base, &[set.parse::<lors::train::Override>().unwrap()]).unwrap_err();
        assert!(err.to_string().contains(key), "{set}: {err}");
    }
    // CUDA computes in bf16 or f32 only.
    let set = [
        "train.device=\"cuda:0\""
            .parse::<lors::train::Override>()
            .unwrap(),
        "model.dtype=\"f16\""
            .parse::<lors::train::Override>()
            .unwrap(),
    ];
    let err = Profile::parse(&base, &set).unwrap_err();
    assert!(err.to_string().contains("model.dtype"), "{err}");
    // A CUDA device in a build without CUDA says how to get one.
    if !cfg!(feature = "cuda") {
        let p = profile(&f, &["train.device=\"cuda:0\""]);
        let err = train::prepare(&p).err().expect("no CUDA in this build");
        assert!(err.to_string().contains("--features cuda"), "{err}");
    }
    // A layer name that matches nothing: the profile is refused, naming it and the key.
    let qkv = "adapter.target_modules=[\"qkv\"]".parse().unwrap();
    let err = Profile::parse(&base, &[qkv]).unwrap_err().to_string();
    assert!(
        err.contains("qkv") && err.contains("adapter.target_modules"),
        "{err}"
    );
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
    let pad = lors::data::Fill::Pad { pad_id: 2 };
    let blocks =
        lors::data::Blocks::from_examples(ex, pad, n + 5, lors::data::IdWidth::U16).unwrap();
    assert_eq!(blocks.loss(0).iter().filter(|&&l| l).count(), 3);
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
    let run = RunDir::create(&dir, &p).unwrap();
    let worker = {
        let (p, run) = (p.clone(), run.clone());
        std::thread::spawn(move || {
            train::train(
                &p,
                &run,
                train::Start::Fresh,
                &AtomicBool::new(false),
                &mut |_| {},
            )
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
    let paused_at = Instant::now();
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
    let resumed = wait("resume", &|s| {
        s.control_ack == id && s.step > paused.step + 2
    });
    // The pause (over 0.4 s) is not counted in the elapsed time: between the two statuses
    // less time elapsed than the wall clock saw, by at least the pause.
    let wall = paused_at.elapsed().as_secs_f64();
    let counted = resumed.elapsed_s - paused.elapsed_s;
    assert!(
        counted > 0.0 && counted <= wall - 0.35,
        "elapsed {counted:.3} s over {wall:.3} s of wall time with a 0.4 s pause"
    );
    run.request(ControlRequest::Stop).unwrap();
    let outcome = worker.join().unwrap().unwrap();
    assert_eq!(outcome.state, RunState::Stopped);
    assert!(outcome.step > paused.step && outcome.step < 100000);
    assert_eq!(run.read_status().unwrap().state, RunState::Stopped);
}

fn resume(p: &Profile, dir: &Path, accept_profile_change: bool) -> lors::Result<train::RunOutcome> {
    let run = RunDir::open(dir)?;
    run.write_profile(&p.to_toml())?;
    let start = train::Start::Resume {
        accept_profile_change,
    };
    train::train(p, &run, start, &AtomicBool::new(false), &mut |_| {})
}

/// Every row of a run, times and memory left out, floats compared bit for bit.
fn reproducible_rows(dir: &Path) -> Vec<serde_json::Value> {
    comparable_rows(dir)
        .iter()
        .map(|r| lors::train::run_dir::reproducible(&serde_json::to_value(r).unwrap()))
        .collect()
}

/// A process that has ended: its pid is free for a stale temporary's name.
fn dead_pid() -> u32 {
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let pid = child.id();
    child.wait().unwrap();
    pid
}

#[test]
fn resuming_after_a_crash_before_the_first_checkpoint_starts_over_cleanly() {
    let f = fixture();
    let p = profile(&f, &[]);
    let full = f.root.join("runs/full");
    run(&p, &full, None).unwrap();
    // What a process killed after step 2 (before the checkpoint of step 3) leaves: rows, no
    // checkpoint, a status saying `running` under a dead pid, and temporaries.
    let crashed = f.root.join("runs/crashed");
    let dir = RunDir::create(&crashed, &p).unwrap();
    let text = std::fs::read_to_string(full.join("metrics.jsonl")).unwrap();
    let partial: String = text.lines().take(4).map(|l| format!("{l}\n")).collect();
    std::fs::write(dir.metrics_path(), format!("{partial}{{\"kind\":\"tra")).unwrap();
    let mut status = RunDir::open(&full).unwrap().read_status().unwrap();
    (status.state, status.pid, status.step) = (RunState::Running, dead_pid(), 2);
    dir.write_status(&status).unwrap();
    let pid = dead_pid();
    let stale_ckpt = crashed.join(format!("checkpoints/.step-000003.tmp-{pid}"));
    std::fs::create_dir_all(&stale_ckpt).unwrap();
    std::fs::write(stale_ckpt.join("adapter_model.safetensors"), b"half").unwrap();
    std::fs::write(crashed.join(format!(".status.json.tmp-{pid}")), b"{").unwrap();
    let resumed = resume(&p, &crashed, false).unwrap();
    assert_eq!(resumed.state, RunState::Finished);
    assert_eq!(reproducible_rows(&crashed), reproducible_rows(&full));
    assert!(!stale_ckpt.exists());
    assert!(!crashed.join(format!(".status.json.tmp-{pid}")).exists());
}

#[test]
fn a_broken_newest_checkpoint_falls_back_to_the_previous_intact_one() {
    let f = fixture();
    let p = profile(&f, &[]);
    let full = f.root.join("runs/full");
    run(&p, &full, None).unwrap();
    let split = f.root.join("runs/split");
    run(&p, &split, Some(3)).unwrap();
    run(&p, &split, Some(5)).unwrap();
    let dir = RunDir::open(&split).unwrap();
    let newest = dir.checkpoints()[0].clone();
    assert!(newest.ends_with("step-000005"));
    // One flipped byte in the adapter: the manifest's checksum no longer matches.
    let adapter = newest.join("adapter_model.safetensors");
    let mut bytes = std::fs::read(&adapter).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x40;
    std::fs::write(&adapter, bytes).unwrap();
    let err = lors::train::checkpoint::verify(&newest).unwrap_err();
    assert!(
        err.to_string().contains("adapter_model.safetensors"),
        "{err}"
    );
    assert!(dir.latest_checkpoint().unwrap().ends_with("step-000003"));
    let mut notices = Vec::new();
    let start = train::Start::Resume {
        accept_profile_change: false,
    };
    let outcome = train::train(&p, &dir, start, &AtomicBool::new(false), &mut |e| {
        if let Event::Notice(n) = e {
            notices.push(n.clone());
        }
    })
    .unwrap();
    assert_eq!(outcome.state, RunState::Finished);
    assert!(
        notices.iter().any(|n| n.contains("step-000005")),
        "{notices:?}"
    );
    assert_eq!(reproducible_rows(&split), reproducible_rows(&full));
}

#[test]
fn an_edited_profile_is_refused_on_resume_unless_accepted() {
    let f = fixture();
    let p = profile(&f, &[]);
    let dir = f.root.join("runs/edited");
    run(&p, &dir, Some(3)).unwrap();
    let edited = profile(&f, &["adapter.method=\"lora\"", "optim.lr=0.02"]);
    let err = resume(&edited, &dir, false).unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("adapter.method")
            && text.contains("optim.lr")
            && text.contains("--accept-profile-change"),
        "{text}"
    );
    assert_eq!(
        RunDir::open(&dir).unwrap().read_status().unwrap().state,
        RunState::Failed
    );
    let outcome = resume(&edited, &dir, true).unwrap();
    assert_eq!(outcome.state, RunState::Finished);
}

#[test]
fn divergence_keeps_the_last_finite_step_and_merge_refuses_non_finite_adapters() {
    let f = fixture();
    let p = profile(
        &f,
        &[
            "optim.lr=1e30",
            "optim.grad_clip=0.0",
            "optim.warmup_steps=0",
            "train.max_steps=20",
            "train.save_every=0",
            "train.eval_every=0",
        ],
    );
    let dir = f.root.join("runs/diverged");
    let LorsError::Diverged { step, kept, .. } = run(&p, &dir, None).unwrap_err() else {
        panic!("expected divergence");
    };
    let run_dir = RunDir::open(&dir).unwrap();
    let status = run_dir.read_status().unwrap();
    assert_eq!(status.state, RunState::Failed);
    assert!(status.error.unwrap().contains("diverged"));
    let ckpt = run_dir
        .latest_checkpoint()
        .expect("the last finite step's checkpoint");
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(ckpt.join("trainer_state.json")).unwrap())
            .unwrap();
    let kept_step = state["step"].as_u64().unwrap() as usize;
    assert!(kept.contains(&format!("step-{kept_step:06}")), "{kept}");
    // Its parameters gave the finite loss of step kept_step + 1; the next update diverged.
    assert_eq!(kept_step + 2, step);
    let rows = comparable_rows(&dir);
    let loss_of = |s: usize| {
        rows.iter().find_map(|r| match r {
            MetricRow::Train { step, loss, .. } if *step == s => Some(*loss),
            _ => None,
        })
    };
    assert!(loss_of(kept_step + 1).unwrap().is_finite());
    let model_dir = ModelDir::open(&f.root.join("model")).unwrap();
    let model = train::load_adapted(&p, &model_dir).unwrap();
    let adapter = ckpt.join("adapter_model.safetensors");
    lors::train::peft::load_adapter(&adapter, &model).unwrap();
    // The same checkpoint with one NaN is refused, naming the tensor.
    let mut tensors = candle_core::safetensors::load(&adapter, &Device::Cpu).unwrap();
    let name = tensors.keys().next().unwrap().clone();
    let t = &tensors[&name];
    let nan = Tensor::full(f32::NAN, t.dims(), &Device::Cpu).unwrap();
    tensors.insert(name.clone(), nan);
    let poisoned = f.root.join("poisoned.safetensors");
    candle_core::safetensors::save(&tensors, &poisoned).unwrap();
    let err = lors::train::peft::load_adapter(&poisoned, &model).unwrap_err();
    assert!(
        err.to_string().contains(&name) && err.to_string().contains("NaN"),
        "{err}"
    );
}

#[test]
fn profile_values_must_be_finite_in_range_and_run_names_plain() {
    let f = fixture();
    let text = fixture::profile_text(&f);
    for (set, key) in [
        ("optim.weight_decay=nan", "optim.weight_decay"),
        ("optim.grad_clip=nan", "optim.grad_clip"),
        ("optim.grad_clip=-1.0", "optim.grad_clip"),
        ("optim.eps=inf", "optim.eps"),
        ("optim.lr=nan", "optim.lr"),
        ("optim.lr=inf", "optim.lr"),
        ("optim.betas=[0.9, nan]", "optim.betas"),
        ("adapter.alpha=nan", "adapter.alpha"),
        ("adapter.stable_gamma=inf", "adapter.stable_gamma"),
        ("adapter.sora_threshold=-1.0", "adapter.sora_threshold"),
        ("optim.name=\"sgd\"", "optim.name"),
        ("data.valid_fraction=nan", "data.valid_fraction"),
        ("train.run_name=\"../../x\"", "train.run_name"),
        ("train.run_name=\"/tmp/x\"", "train.run_name"),
        ("train.run_name=\"a/b\"", "train.run_name"),
        ("train.run_name=\"..\"", "train.run_name"),
        ("train.run_name=\"\"", "train.run_name"),
    ] {
        let err =
            Profile::parse(&text, &[set.parse::<lors::train::Override>().unwrap()]).unwrap_err();
        assert!(err.to_string().contains(key), "{set}: {err}");
    }
    Profile::parse(
        &text,
        &["train.run_name=\"my-run_2\""
            .parse::<lors::train::Override>()
            .unwrap()],
    )
    .unwrap();
}

#[test]
fn configs_that_disagree_with_the_weights_and_overlong_sequences_are_errors() {
    let f = fixture();
    let model = f.root.join("model");
    let config_path = model.join("config.json");
    let original = std::fs::read_to_string(&config_path).unwrap();
    let mut config: serde_json::Value = serde_json::from_str(&original).unwrap();
    config["num_hidden_layers"] = 1.into();
    std::fs::write(&config_path, config.to_string()).unwrap();
    let dir = ModelDir::open(&model).unwrap();
    let err = CausalLm::load_frozen(&dir).err().unwrap().to_string();
    assert!(
        err.contains("num_hidden_layers") && err.contains("model.layers.1."),
        "{err}"
    );
    config["num_hidden_layers"] = 2.into();
    config["vocab_size"] = 300.into();
    std::fs::write(&config_path, config.to_string()).unwrap();
    let err = CausalLm::load_frozen(&ModelDir::open(&model).unwrap())
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("model.embed_tokens.weight"), "{err}");
    std::fs::write(&config_path, &original).unwrap();
    // seq_len beyond max_position_embeddings (1024) needs the explicit opt-in.
    let long = profile(&f, &["data.seq_len=2048", "train.max_steps=1"]);
    let err = train::prepare(&long).err().unwrap().to_string();
    assert!(
        err.contains("data.seq_len") && err.contains("1024"),
        "{err}"
    );
    let allowed = profile(
        &f,
        &[
            "data.seq_len=1100",
            "data.allow_long_sequences=true",
            "train.max_steps=1",
        ],
    );
    std::fs::write(f.root.join("train.jsonl"), sentences(2000)).unwrap();
    std::fs::write(f.root.join("valid.jsonl"), sentences(400)).unwrap();
    train::prepare(&allowed).unwrap();
}

#[test]
fn metrics_floats_survive_the_file_bit_for_bit() {
    // Serialised shortest and parsed exactly (serde_json's float_roundtrip): a replay or a
    // resume compares what was computed, not a neighbouring float.
    let f = fixture();
    let dir = RunDir::create(&f.root.join("runs/floats"), &profile(&f, &[])).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let values: Vec<f64> = (0..20000)
        .map(|_| f64::from_bits(rand::Rng::random::<u64>(&mut rng)))
        .filter(|v| v.is_finite())
        .collect();
    for (i, &v) in values.iter().enumerate() {
        dir.append_metric(&MetricRow::Eval {
            step: i,
            eval_loss: v,
            eval_ppl: v / 3.0,
        })
        .unwrap();
    }
    let back = dir.read_metrics().unwrap();
    for (row, &v) in back.iter().zip(&values) {
        let MetricRow::Eval {
            eval_loss,
            eval_ppl,
            ..
        } = row
        else {
            panic!()
        };
        assert_eq!(eval_loss.to_bits(), v.to_bits());
        assert_eq!(eval_ppl.to_bits(), (v / 3.0).to_bits());
    }
    assert_eq!(back.len(), values.len());
}

#[test]
fn stale_temporaries_are_cleaned_and_an_interrupted_replacement_is_undone() {
    let tmp = tempfile::tempdir().unwrap();
    let pid = dead_pid();
    let live = std::process::id();
    let target = tmp.path().join("out");
    // A replacement killed between its two renames: the old directory is moved aside.
    let aside = tmp.path().join(format!(".out.old-{pid}"));
    std::fs::create_dir_all(&aside).unwrap();
    std::fs::write(aside.join("kept.txt"), "previous").unwrap();
    let half = tmp.path().join(format!(".other.tmp-{pid}"));
    std::fs::create_dir_all(&half).unwrap();
    let ours = tmp.path().join(format!(".mine.tmp-{live}"));
    std::fs::write(&ours, "in progress").unwrap();
    assert_eq!(lors::io::clean_stale_temps(tmp.path()).unwrap(), 2);
    assert_eq!(
        std::fs::read_to_string(target.join("kept.txt")).unwrap(),
        "previous"
    );
    assert!(
        !half.exists() && ours.exists(),
        "only dead processes' temporaries go"
    );
}

#[test]
fn long_texts_are_tokenised_in_pieces_exactly_as_whole() {
    let shared = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared");
    let wiki = std::fs::read_to_string(shared.join("data/wikitext2-test.raw")).unwrap();
    let stories: Vec<String> =
        std::fs::read_to_string(shared.join("data/tinystories-synth-train.jsonl"))
            .unwrap()
            .lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["text"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect();
    let stories = stories.join(" ");
    for tokenizer in [
        shared.join("models/stories260K/tokenizer.json"),
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("assets/demo-model/tokenizer.json"),
    ] {
        let tok = TextTokenizer::from_file(&tokenizer, Some(2)).unwrap();
        assert!(tok.cuts_long_texts(), "{}", tokenizer.display());
        let reference = tokenizers::Tokenizer::from_file(&tokenizer).unwrap();
        for text in [&wiki, &stories] {
            assert!(text.len() > 1 << 20, "long enough for many pieces");
            for special in [true, false] {
                let whole = reference.encode(text.as_str(), special).unwrap();
                assert_eq!(
                    tok.encode(text, special).unwrap(),
                    whole.get_ids(),
                    "{} special={special}",
                    tokenizer.display()
                );
            }
        }
    }
}

#[test]
fn data_files_in_other_encodings_get_a_hint() {
    let tmp = tempfile::tempdir().unwrap();
    let line = "{\"text\": \"Once upon a time.\"}\n";
    let utf16: Vec<u8> = [0xFF, 0xFE]
        .into_iter()
        .chain(line.encode_utf16().flat_map(|u| u.to_le_bytes()))
        .collect();
    let path = tmp.path().join("utf16.jsonl");
    std::fs::write(&path, utf16).unwrap();
    let err = lors::data::read_records(&path, lors::data::DataFormat::Auto, false).unwrap_err();
    assert!(
        err.to_string().contains("UTF-16") && err.to_string().contains("iconv"),
        "{err}"
    );
    // A UTF-8 byte-order mark is skipped.
    let path = tmp.path().join("bom.jsonl");
    std::fs::write(&path, format!("\u{feff}{line}{line}")).unwrap();
    let set = lors::data::read_records(&path, lors::data::DataFormat::Auto, false).unwrap();
    assert_eq!(set.records.len(), 2);
    // Invalid UTF-8 names its line, in JSON Lines and in plain text.
    for name in ["latin1.jsonl", "latin1.txt"] {
        let path = tmp.path().join(name);
        let mut bytes = line.as_bytes().to_vec();
        bytes.extend(b"{\"text\": \"caf\xe9\"}\n");
        std::fs::write(&path, bytes).unwrap();
        let err = lors::data::read_records(&path, lors::data::DataFormat::Auto, false).unwrap_err();
        assert!(
            err.to_string().contains("line 2") && err.to_string().contains("UTF-8"),
            "{err}"
        );
    }
}

#[test]
fn a_checkpoint_from_before_manifests_still_resumes() {
    let f = fixture();
    let p = profile(&f, &[]);
    let full = f.root.join("runs/full");
    run(&p, &full, None).unwrap();
    let old = f.root.join("runs/old");
    run(&p, &old, Some(3)).unwrap();
    let ckpt = RunDir::open(&old).unwrap().checkpoints()[0].clone();
    for f in ["manifest.json", "profile.toml"] {
        std::fs::remove_file(ckpt.join(f)).unwrap();
    }
    lors::train::checkpoint::verify(&ckpt).unwrap();
    run(&p, &old, None).unwrap();
    assert_eq!(reproducible_rows(&old), reproducible_rows(&full));
    std::fs::remove_file(ckpt.join("optimizer.safetensors")).unwrap();
    let err = lors::train::checkpoint::verify(&ckpt).unwrap_err();
    assert!(err.to_string().contains("optimizer.safetensors"), "{err}");
}

/// The two recompute policies run the same operations in the same order (`block` only runs
/// each block's forward once more), so a run's loss, gradient-norm and eval curves are
/// identical bit for bit, for LoRS with gradient init and for SQFT (autograd inside).
#[test]
fn recompute_policies_give_identical_runs() {
    let f = fixture();
    for method in ["lors", "sqft"] {
        let curves: Vec<Vec<String>> = ["selective", "block"]
            .iter()
            .map(|policy| {
                let p = profile(
                    &f,
                    &[
                        &format!("adapter.method={method}"),
                        &format!("train.recompute={policy}"),
                    ],
                );
                let dir = f.root.join(format!("run-{method}-{policy}"));
                run(&p, &dir, None).unwrap();
                comparable_rows(&dir)
                    .iter()
                    .filter_map(|r| match r {
                        MetricRow::Train {
                            loss, grad_norm, ..
                        } => Some(format!("{loss:e} {grad_norm:e}")),
                        MetricRow::Eval { eval_loss, .. } => Some(format!("{eval_loss:e}")),
                        _ => None,
                    })
                    .collect()
            })
            .collect();
        assert!(curves[0].len() >= 8, "{method}: {:?}", curves[0]);
        assert_eq!(curves[0], curves[1], "{method}");
    }
    let err = Profile::parse(
        &fixture::profile_text(&f),
        &["train.recompute=all"
            .parse::<lors::train::Override>()
            .unwrap()],
    )
    .unwrap_err();
    assert!(err.to_string().contains("recompute"), "{err}");
}

/// The method-zoo options (OLoRA's start or XGBLoRA's boosting, frozen leading blocks, RM-LoRA's
/// regulariser and rank masks, SoRA's gates, Flat-LoRA, LoRA-RITE; all at once on lors-exact)
/// keep the base's zero pattern bit for bit in the merged export, on
/// an unstructured and on a 2:4 model; the frozen block's weights are the base's exactly.
#[test]
fn zoo_options_keep_every_zero_on_unstructured_and_2_of_4_models() {
    let f = fixture();
    let patterns = [HALF, lors::sparsity::Pattern::NofM { n: 2, m: 4 }];
    // Boosting restarts from B = 0 each round, so it goes with a plain init.
    let zoo = [
        "adapter.init=\"olora\"",
        "adapter.frozen_blocks=1",
        "adapter.orth_reg=0.05",
        "adapter.rank_keep=2",
    ];
    let boosted = [
        "adapter.init=\"standard\"",
        "adapter.boost_every=2",
        "adapter.frozen_blocks=1",
        "adapter.rank_keep=2",
    ];
    let cases = patterns.into_iter().flat_map(|p| [(p, zoo), (p, boosted)]);
    for (i, (pattern, options)) in cases.enumerate() {
        let model = f.root.join(format!("model-{i}"));
        let config = small_config(32, 2, 4, 2, 64);
        let tensors = random_weights(&config, 11, Some(pattern)).unwrap();
        write_checkpoint(&model, &config, &tensors).unwrap();
        let p = profile(
            &f,
            &[
                &format!("model.path=\"{}\"", model.display()),
                "adapter.method=\"lors-exact\"",
                options[0],
                options[1],
                options[2],
                options[3],
                "adapter.sora=true",
                "adapter.flat=true",
                "optim.name=\"lora-rite\"",
                "train.merge_at_end=true",
            ],
        );
        let dir = f.root.join(format!("runs/zoo-{i}"));
        run(&p, &dir, None).unwrap();
        let base =
            candle_core::safetensors::load(model.join("model.safetensors"), &Device::Cpu).unwrap();
        let merged =
            candle_core::safetensors::load(dir.join("merged/model.safetensors"), &Device::Cpu)
                .unwrap();
        for (name, w) in &base {
            let m = &merged[name];
            assert_eq!(
                zero_pattern(m),
                zero_pattern(w),
                "{pattern:?}: zeros of {name}"
            );
            assert_eq!(
                common::pruned_not_positive_zero(m, w),
                0,
                "{pattern:?}: pruned weights of {name} are +0.0"
            );
            let diff = common::max_abs_diff(m, w);
            if name.starts_with("model.layers.1.") && name.contains("_proj") {
                assert!(diff > 0.0, "{name} was trained");
            } else {
                assert!(common::same_bits(m, w), "{name} is the base's, bit for bit");
            }
        }
    }
}

/// The gradient init's `A`s do not depend on how its layers are grouped to fit its memory
/// budget (every layer's gradient is taken from the same start, `B = 0` everywhere): all
/// layers in one group against one layer per group, bit for bit.
#[test]
fn gradient_init_is_the_same_however_its_layers_are_grouped() {
    let f = fixture();
    let p = profile(&f, &[]);
    let dir = ModelDir::open(&f.root.join("model")).unwrap();
    let ids: Vec<u32> = (0..2 * 24).map(|i| (i * 7 + 3) % 32).collect();
    let batch = lors::data::Batch {
        ids: Tensor::from_vec(ids, (2, 24), &Device::Cpu).unwrap(),
        loss_mask: Tensor::ones((2, 24), DType::F32, &Device::Cpu).unwrap(),
    };
    let a_bits = |model: &CausalLm| -> Vec<Vec<u64>> {
        let adapted = model.adapted();
        adapted
            .iter()
            .map(|(_, l)| common::raw_bits(l.trainable()[0].1.as_tensor()))
            .collect()
    };
    let init = |budget_bytes: usize| {
        let model = train::load_adapted(&p, &dir).unwrap();
        let before = a_bits(&model);
        let report = lors::train::grad_init::gradient_init(
            &model,
            std::slice::from_ref(&batch),
            p.adapter.stable_gamma,
            budget_bytes,
            lors::model::Recompute::default(),
            p.train.seed,
            &mut |_| {},
        )
        .unwrap();
        let after = a_bits(&model);
        assert!(
            before.iter().zip(&after).all(|(b, a)| b != a),
            "every A set"
        );
        (report.sweeps, after)
    };
    let (one_sweep, grouped) = init(usize::MAX);
    let (sweeps, alone) = init(1);
    assert_eq!(one_sweep, 1);
    assert_eq!(sweeps, grouped.len(), "one sweep per layer");
    assert!(sweeps > 1);
    assert_eq!(grouped, alone);
}
