//! Zero-shot task evaluation: lm-evaluation-harness's per-item log-likelihoods and accuracies
//! on the real stories260K (a reference file it wrote), the scorer's shared-prefix path against
//! plain forwards, task files in every format and their errors, WikiText-2's join, and the
//! `[eval]` section of a run (before/after rows).

#[path = "support/fixture.rs"]
#[allow(dead_code)]
mod fixture;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor, D};
use serde_json::json;

use lors::eval::{
    encode_request, load_items, score_task, wikitext_text, Request, Scorer, Task, TaskSuite,
};
use lors::model::{CausalLm, ModelDir};

fn repo(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

fn shared(rel: &str) -> PathBuf {
    repo("../shared").join(rel)
}

/// lm-evaluation-harness 0.4.13 (transformers 5.24, f32, CPU) on the bundled task files
/// `assets/tasks/` with `../shared/models/stories260K`: one row per item (see
/// `scripts/compare_lm_eval.py --dump-reference`).
struct Reference {
    loglikelihoods: Vec<f64>,
    acc: f64,
    acc_norm: Option<f64>,
}

fn reference() -> HashMap<(String, usize), Reference> {
    let text = std::fs::read_to_string(repo("tests/fixtures/lm_eval_stories260K.jsonl")).unwrap();
    text.lines()
        .map(|line| {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            let key = (
                v["task"].as_str().unwrap().to_string(),
                v["doc"].as_u64().unwrap() as usize,
            );
            let lls = v["loglikelihoods"].as_array().unwrap();
            let r = Reference {
                loglikelihoods: lls.iter().map(|x| x.as_f64().unwrap()).collect(),
                acc: v["acc"].as_f64().unwrap(),
                acc_norm: v["acc_norm"].as_f64(),
            };
            (key, r)
        })
        .collect()
}

/// Every bundled task file, scored on stories260K, agrees with lm-evaluation-harness item by
/// item: each choice's log-likelihood to 1e-4 relative (the bar; f32 forwards of
/// different shapes differ by ~1e-6 relative here), acc and acc_norm identical.
#[test]
fn every_task_matches_lm_evaluation_harness_on_stories260k() {
    let dir = ModelDir::open(&shared("models/stories260K")).unwrap();
    let model = CausalLm::load_frozen(&dir).unwrap();
    let tok = dir.tokenizer().unwrap();
    let reference = reference();
    for &task in Task::ALL {
        let items = load_items(task, &repo(&format!("assets/tasks/{task}.jsonl")), None).unwrap();
        let (score, scores) = score_task(&model, &tok, task, &items, &mut |_| {}).unwrap();
        assert_eq!(score.items, items.len());
        let mut hits = 0.0;
        for s in &scores {
            let r = &reference[&(task.name().to_string(), s.doc)];
            assert_eq!(
                s.loglikelihoods.len(),
                r.loglikelihoods.len(),
                "{task} {}",
                s.doc
            );
            for (a, b) in s.loglikelihoods.iter().zip(&r.loglikelihoods) {
                let rel = (a - b).abs() / b.abs();
                assert!(rel < 1e-4, "{task} item {}: {a} vs lm-eval {b}", s.doc);
            }
            let acc = f64::from(u8::from(s.pred == s.gold));
            assert_eq!(acc, r.acc, "{task} item {} acc", s.doc);
            if let Some(norm) = r.acc_norm {
                assert_eq!(
                    f64::from(u8::from(s.pred_norm == s.gold)),
                    norm,
                    "{task} {}",
                    s.doc
                );
            }
            hits += acc;
        }
        assert_eq!(score.acc.value, hits / scores.len() as f64);
        assert_eq!(score.acc_norm.is_some(), task.has_acc_norm());
    }
}

/// Log-probabilities of `continuation` after `context` straight from one full forward's
/// logits (log-softmax in f64): the scorer's reference.
fn plain_loglikelihood(model: &CausalLm, r: &Request) -> f64 {
    let all: Vec<u32> = r.context.iter().chain(&r.continuation).copied().collect();
    let ids = Tensor::new(&all[..all.len() - 1], &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    let logits = model
        .forward(&ids)
        .unwrap()
        .squeeze(0)
        .unwrap()
        .to_dtype(candle_core::DType::F64)
        .unwrap();
    let logp = candle_nn::ops::log_softmax(&logits, D::Minus1)
        .unwrap()
        .to_vec2::<f64>()
        .unwrap();
    let n = r.context.len();
    r.continuation
        .iter()
        .enumerate()
        .map(|(j, &t)| logp[n - 1 + j][t as usize])
        .sum()
}

/// Continuations sharing a context go through one cached forward of it and a padded batch;
/// alone they go through one forward: both equal a plain full forward per request, with
/// continuations of different lengths (1 to 5 tokens) and contexts repeated or not.
#[test]
fn shared_prefix_scoring_equals_one_forward_per_request() {
    let dir = tempfile::tempdir().unwrap();
    fixture::tiny_model(dir.path());
    let model = CausalLm::load_frozen(&ModelDir::open(dir.path()).unwrap()).unwrap();
    let ctx = |n: u32| (1..=n).map(|i| (i * 7) % 60 + 1).collect::<Vec<u32>>();
    let requests: Vec<Request> = [
        (ctx(9), vec![5]),
        (ctx(9), vec![6, 7, 8]),
        (ctx(9), vec![9, 10, 11, 12, 13]),
        (ctx(4), vec![3, 2]),
        (ctx(9), vec![40]),
    ]
    .into_iter()
    .map(|(context, continuation)| Request {
        context,
        continuation,
    })
    .collect();
    let scored = Scorer::new(&model).loglikelihoods(&requests).unwrap();
    for (r, got) in requests.iter().zip(scored) {
        let want = plain_loglikelihood(&model, r);
        // f32 forwards of different shapes: ~1e-6 relative apart.
        assert!(
            (got - want).abs() <= 1e-5 * want.abs().max(1.0),
            "{:?}: {got} vs {want}",
            r.continuation
        );
    }
}

/// Inputs longer than the model's context are cut from the left as lm-evaluation-harness
/// does: the last `max_len + 1` tokens of context and continuation, less the last.
#[test]
fn long_inputs_are_truncated_from_the_left() {
    let dir = tempfile::tempdir().unwrap();
    fixture::tiny_model(dir.path());
    let model = CausalLm::load_frozen(&ModelDir::open(dir.path()).unwrap()).unwrap();
    let max = model.config().max_position_embeddings;
    let long: Vec<u32> = (0..max as u32 + 10).map(|i| i % 50 + 1).collect();
    let continuation = vec![7, 8, 9];
    let request = Request {
        context: long.clone(),
        continuation: continuation.clone(),
    };
    let got = Scorer::new(&model).loglikelihoods(&[request]).unwrap()[0];
    let keep = max + 1 - continuation.len();
    let cut = Request {
        context: long[long.len() - keep..].to_vec(),
        continuation,
    };
    let want = plain_loglikelihood(&model, &cut);
    assert!((got - want).abs() <= 1e-5 * want.abs(), "{got} vs {want}");
}

/// Trailing spaces of a context move to the continuation, and the continuation's tokens are
/// what encoding both adds after the context's.
#[test]
fn requests_are_tokenised_like_lm_evaluation_harness() {
    let dir = ModelDir::open(&shared("models/stories260K")).unwrap();
    let tok = dir.tokenizer().unwrap();
    let r = encode_request(&tok, 1, "Question: Who ran?\nAnswer: ", "Lily").unwrap();
    assert_eq!(
        r.context,
        tok.encode("Question: Who ran?\nAnswer:", true).unwrap()
    );
    let whole = tok
        .encode("Question: Who ran?\nAnswer: Lily", true)
        .unwrap();
    assert_eq!(r.continuation, whole[r.context.len()..].to_vec());
    assert_eq!(
        r.context[0], 1,
        "the tokenizer's BOS, as transformers adds it"
    );
    let empty = encode_request(&tok, 1, "", " Lily").unwrap();
    assert_eq!(empty.context, vec![1]);
    assert_eq!(empty.continuation, tok.encode(" Lily", false).unwrap());
}

/// The prompts, continuations and gold answers of every task, written out from
/// lm-evaluation-harness's task definitions.
#[test]
fn task_templates_follow_lm_evaluation_harness() {
    let item = |task: Task, row: serde_json::Value| task.item(&row).unwrap();
    let boolq = item(
        Task::Boolq,
        json!({"passage": "Tom ran.", "question": "did tom run", "label": 1}),
    );
    assert_eq!(
        boolq.requests[1],
        (
            "Tom ran.\nQuestion: did tom run?\nAnswer:".into(),
            " yes".into()
        )
    );
    assert_eq!(boolq.gold, 1);
    let rte = item(
        Task::Rte,
        json!({"sentence1": "A.", "sentence2": "B.", "label": 0}),
    );
    assert_eq!(
        rte.requests[0],
        (
            "A.\nQuestion: B. True or False?\nAnswer:".into(),
            " True".into()
        )
    );
    let hs = item(
        Task::Hellaswag,
        json!({"activity_label": "Baking", "ctx_a": "A man [title] mixes.", "ctx_b": "HE then",
               "endings": ["bakes [step] it.", " eats  [it\n] now "], "label": "1"}),
    );
    assert_eq!(hs.requests[0].0, "Baking: A man. mixes. He then");
    assert_eq!(hs.choices, vec!["bakes it.", "eats [it\n] now"]);
    assert_eq!(
        (hs.requests[1].1.as_str(), hs.gold),
        (" eats [it\n] now", 1)
    );
    let wino = item(
        Task::Winogrande,
        json!({"sentence": "Sue helped Tom because _ was kind. ", "option1": "Sue",
               "option2": "Tom", "answer": "2"}),
    );
    assert_eq!(
        wino.requests,
        vec![
            ("Sue helped Tom because Sue".into(), " was kind.".into()),
            ("Sue helped Tom because Tom".into(), " was kind.".into())
        ]
    );
    assert_eq!(wino.gold, 1);
    let arc = item(
        Task::ArcChallenge,
        json!({"question": "Why?", "choices": {"text": ["a", "b", "c"], "label": ["1", "2", "3"]},
               "answerKey": "3"}),
    );
    assert_eq!(
        arc.requests[2],
        ("Question: Why?\nAnswer:".into(), " c".into())
    );
    assert_eq!(arc.gold, 2);
    let obqa = item(
        Task::Openbookqa,
        json!({"question_stem": "Sun is", "choices": {"text": ["hot", "cold"], "label": ["A", "B"]},
               "answerKey": " A"}),
    );
    assert_eq!((obqa.requests[0].0.as_str(), obqa.gold), ("Sun is", 0));
}

/// A parquet task file with a nested `choices` struct (as the hub serves ARC) makes the same
/// items as its JSON Lines twin.
#[test]
fn parquet_task_files_with_nested_columns_read_like_json_lines() {
    let parquet = load_items(
        Task::ArcEasy,
        &repo("tests/fixtures/arc_easy_sample.parquet"),
        None,
    )
    .unwrap();
    let jsonl = load_items(Task::ArcEasy, &repo("assets/tasks/arc_easy.jsonl"), None).unwrap();
    assert_eq!(parquet, jsonl);
    let limited = load_items(Task::ArcEasy, &repo("assets/tasks/arc_easy.jsonl"), Some(3)).unwrap();
    assert_eq!(limited[..], jsonl[..3]);
}

/// Bad task files are errors naming the file, the line (row) and the column.
#[test]
fn bad_task_files_name_file_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, rows: &[serde_json::Value]| {
        let path = dir.path().join(name);
        let text: String = rows.iter().map(|r| format!("{r}\n")).collect();
        std::fs::write(&path, text).unwrap();
        path
    };
    let ok = json!({"question": "q", "passage": "p", "label": 0});
    let cases = [
        (
            Task::Boolq,
            write(
                "missing.jsonl",
                &[ok.clone(), json!({"question": "q", "label": 0})],
            ),
            vec!["missing.jsonl", "line 2", "`passage`", "missing"],
        ),
        (
            Task::Boolq,
            write(
                "range.jsonl",
                &[
                    ok.clone(),
                    ok.clone(),
                    json!({"question": "q", "passage": "p", "label": 2}),
                ],
            ),
            vec!["range.jsonl", "line 3", "`label`", "out of range"],
        ),
        (
            Task::Hellaswag,
            write(
                "ends.jsonl",
                &[json!({"activity_label": "a", "ctx_a": "b", "ctx_b": "c",
                                         "endings": ["x", "y"], "label": "2"})],
            ),
            vec!["ends.jsonl", "line 1", "`label`", "out of range"],
        ),
        (
            Task::ArcEasy,
            write(
                "key.jsonl",
                &[
                    json!({"question": "q", "choices": {"text": ["a"], "label": ["A"]},
                                        "answerKey": "E"}),
                ],
            ),
            vec!["key.jsonl", "line 1", "`answerKey`", "`E`"],
        ),
        (
            Task::Winogrande,
            write(
                "blank.jsonl",
                &[
                    json!({"sentence": "no blank", "option1": "a", "option2": "b",
                                          "answer": "1"}),
                ],
            ),
            vec!["blank.jsonl", "line 1", "`sentence`", "blank"],
        ),
        (
            Task::Rte,
            write("empty.jsonl", &[]),
            vec!["empty.jsonl", "no rte rows", "sentence1"],
        ),
    ];
    for (task, path, needles) in cases {
        let err = load_items(task, &path, None).unwrap_err().to_string();
        for n in needles {
            assert!(err.contains(n), "{task}: `{n}` not in: {err}");
        }
    }
}

/// WikiText-2 joined as SparseGPT and Wanda join the hub's rows: lines keep their newline,
/// blank lines become empty rows, rows joined with a blank line.
#[test]
fn wikitext_is_joined_like_the_pruning_papers() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("wiki.raw");
    std::fs::write(&path, " = A = \n \n Text one .\r\n\n Two").unwrap();
    assert_eq!(
        wikitext_text(&path).unwrap(),
        " = A = \n\n\n\n\n Text one .\n\n\n\n\n Two"
    );
    let real = wikitext_text(&shared("data/wikitext2-test.raw")).unwrap();
    // 4,358 rows (the hub's test split) joined by 4,357 separators.
    let lines = std::fs::read_to_string(shared("data/wikitext2-test.raw")).unwrap();
    assert_eq!(lines.lines().count(), 4358);
    let content: usize = lines
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.len() + 1)
        .sum();
    assert_eq!(real.len(), content + 2 * 4357);
}

/// The `[eval]` section's checks name the key.
#[test]
fn eval_sections_are_checked() {
    let suite = |tasks: Vec<Task>, dir: bool| TaskSuite {
        tasks,
        data_dir: dir.then(|| PathBuf::from("assets/tasks")),
        ..TaskSuite::default()
    };
    let err = |s: TaskSuite| s.validate().unwrap_err().to_string();
    assert!(err(suite(vec![], true)).contains("eval.tasks"));
    assert!(err(suite(vec![Task::Rte, Task::Rte], true)).contains("twice"));
    assert!(err(suite(vec![Task::Rte], false)).contains("eval.data"));
    let mut limited = suite(vec![Task::Rte], true);
    limited.limit = Some(0);
    assert!(err(limited).contains("eval.limit"));
    assert!(Task::parse_list("rte,nope")
        .unwrap_err()
        .to_string()
        .contains("nope"));
}

/// A profile with `[eval]` (the bundled wanda-50 one, shortened) scores every task before
/// training (on the pruned model) and after it (on the merged export): rows in
/// `metrics.jsonl` with the task's items; the before rows equal `lors eval` of the pruned
/// model on the same files, and the after rows that of the merged model.
#[test]
fn a_run_with_an_eval_section_scores_before_and_after() {
    use lors::train::{self, EvalStage, MetricRow, Profile, RunDir};
    let tmp = tempfile::tempdir().unwrap();
    let sets = [
        "train.max_steps=3",
        "train.batch_size=2",
        "train.eval_every=0",
        "train.save_every=0",
        "train.merge_at_end=true",
        "data.seq_len=64",
        "adapter.init=\"standard\"",
        "eval.limit=6",
        "eval.tasks=[\"hellaswag\", \"boolq\"]",
    ]
    .map(|s| s.parse::<lors::train::Override>().unwrap());
    let mut p = Profile::load(&repo("profiles/stories-wanda50-lors.toml"), &sets).unwrap();
    p.resolve_paths(&repo("."));
    let run = RunDir::create(&tmp.path().join("run"), &p).unwrap();
    let stop = std::sync::atomic::AtomicBool::new(false);
    train::train(&p, &run, train::Start::Fresh, &stop, &mut |_| {}).unwrap();
    let rows: Vec<(EvalStage, lors::eval::TaskScore)> = run
        .read_metrics()
        .unwrap()
        .into_iter()
        .filter_map(|r| match r {
            MetricRow::Task { stage, score, .. } => Some((stage, score)),
            _ => None,
        })
        .collect();
    let stages: Vec<(EvalStage, Task)> = rows.iter().map(|(s, t)| (*s, t.task)).collect();
    assert_eq!(
        stages,
        [
            (EvalStage::Before, Task::Hellaswag),
            (EvalStage::Before, Task::Boolq),
            (EvalStage::After, Task::Hellaswag),
            (EvalStage::After, Task::Boolq),
        ]
    );
    let standalone = |model_dir: &Path, task: Task| {
        let dir = ModelDir::open(model_dir).unwrap();
        let model = CausalLm::load_frozen(&dir).unwrap();
        let items =
            load_items(task, &repo(&format!("assets/tasks/{task}.jsonl")), Some(6)).unwrap();
        score_task(&model, &dir.tokenizer().unwrap(), task, &items, &mut |_| {})
            .unwrap()
            .0
    };
    for (stage, score) in &rows {
        assert_eq!(score.items, 6);
        let model = match stage {
            EvalStage::Before => shared("models/stories260K-wanda-50"),
            EvalStage::After => run.path.join("merged"),
        };
        let alone = standalone(&model, score.task);
        assert_eq!(
            (score.acc, score.acc_norm),
            (alone.acc, alone.acc_norm),
            "{stage} {}",
            score.task
        );
    }
}

/// `[eval]` with per-task files survives a profile's round trip (the run directory's copy),
/// and its relative paths are made absolute like the profile's others; hub references stay.
#[test]
fn eval_sections_round_trip_through_profiles() {
    use lors::train::Profile;
    let text = std::fs::read_to_string(repo("profiles/demo.toml")).unwrap()
        + "\n[eval]\ntasks = [\"rte\", \"boolq\"]\nlimit = 4\n[eval.data]\nrte = \"tasks/rte.jsonl\"\n\
           boolq = \"hf://datasets/aps/super_glue/boolq/validation.parquet\"\n";
    let mut p = Profile::parse(&text, &[]).unwrap();
    p.resolve_paths(Path::new("/base"));
    let suite = p.eval.clone().unwrap();
    assert_eq!(suite.tasks, vec![Task::Rte, Task::Boolq]);
    assert_eq!(
        suite.file(Task::Rte).unwrap(),
        Path::new("/base/tasks/rte.jsonl")
    );
    assert_eq!(
        suite.file(Task::Boolq).unwrap(),
        Path::new("hf://datasets/aps/super_glue/boolq/validation.parquet")
    );
    let again = Profile::parse(&p.to_toml(), &[]).unwrap();
    assert_eq!(again.eval, p.eval);
    let bad = text.replace(
        "tasks = [\"rte\", \"boolq\"]",
        "tasks = [\"rte\", \"piqa\"]",
    );
    let err = Profile::parse(&bad, &[]).unwrap_err().to_string();
    assert!(err.contains("piqa"), "{err}");
}
