//! `lors eval`: perplexity on a data file or WikiText-2, and zero-shot multiple-choice tasks.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};

use lors::data::TextTokenizer;
use lors::eval::{
    mean_accuracy, perplexity_of_file, wikitext_perplexity, EvalReport, JobState, PerplexityReport,
    ProgressWriter, Task, TaskOutcome, TaskScore, TaskSuite,
};
use lors::model::{CausalLm, ModelDir};
use lors::train::{load_trained, RunDir};

#[derive(Args)]
pub struct EvalArgs {
    /// Model directory, or a run directory (its checkpoint's adapter applied, unmerged).
    #[arg(long)]
    pub model: PathBuf,
    /// With a run directory: the checkpoint (default: the newest).
    #[arg(long)]
    pub checkpoint: Option<PathBuf>,
    /// Perplexity on a data file (JSONL/JSON records or plain text), packed into windows.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Perplexity on a WikiText-2 raw file, joined and windowed as the pruning papers do.
    #[arg(long)]
    pub wikitext: Option<PathBuf>,
    /// Window length in tokens (default: 256 for `--data`; 2048, or the model's context if
    /// shorter, for `--wikitext`).
    #[arg(long)]
    pub seq_len: Option<usize>,
    #[arg(long, default_value_t = 8)]
    pub batch_size: usize,
    /// Evaluate only the first N windows.
    #[arg(long)]
    pub max_windows: Option<usize>,
    /// Comma-separated multiple-choice tasks (boolq, rte, hellaswag, winogrande, arc_easy,
    /// arc_challenge, openbookqa), scored zero-shot as lm-evaluation-harness does.
    #[arg(long)]
    pub tasks: Option<String>,
    /// Folder with `<task>.jsonl`, `.json` or `.parquet` per task.
    #[arg(long)]
    pub tasks_dir: Option<PathBuf>,
    /// A task's file or `hf://datasets/...` reference (repeatable).
    #[arg(long = "task-data", value_name = "TASK=FILE")]
    pub task_data: Vec<String>,
    /// Score only the first N items of each task.
    #[arg(long)]
    pub limit: Option<usize>,
    /// The tasks as a TOML file in the form of a profile's `[eval]` section (instead of
    /// --tasks, --tasks-dir, --task-data and --limit).
    #[arg(long, conflicts_with_all = ["tasks", "tasks_dir", "task_data", "limit"])]
    pub suite: Option<PathBuf>,
    /// Keep a progress file (JSON) up to date, for the workbench; needs --out.
    #[arg(long, requires = "out")]
    pub progress: Option<PathBuf>,
    /// Write the results as JSON.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Write every item's log-likelihoods and predictions as JSON Lines.
    #[arg(long)]
    pub samples: Option<PathBuf>,
    /// Each token's log-probability over this plain-text file (BOS first, cut to the
    /// context), into `--out`'s report: to compare with another runtime token by token.
    #[arg(long, value_name = "TEXT_FILE", requires = "out")]
    pub token_logprobs: Option<PathBuf>,
}

/// The model to evaluate, its tokenizer, and the checkpoint applied (for a run).
struct Loaded {
    model: CausalLm,
    tok: TextTokenizer,
    checkpoint: Option<PathBuf>,
}

fn load(path: &Path, checkpoint: Option<&Path>) -> Result<Loaded> {
    if let Ok(run) = RunDir::open(path) {
        let trained = load_trained(&run, checkpoint)?;
        return Ok(Loaded {
            tok: trained.base.tokenizer()?,
            model: trained.model,
            checkpoint: Some(trained.checkpoint),
        });
    }
    if checkpoint.is_some() {
        bail!("--checkpoint needs a run directory as --model");
    }
    let dir = ModelDir::open(path)?;
    Ok(Loaded {
        model: CausalLm::load_frozen(&dir)?,
        tok: dir.tokenizer()?,
        checkpoint: None,
    })
}

/// The task suite the flags describe.
fn suite(args: &EvalArgs, list: &str) -> Result<TaskSuite> {
    let mut suite = TaskSuite {
        tasks: Task::parse_list(list)?,
        data_dir: args.tasks_dir.clone(),
        limit: args.limit,
        ..TaskSuite::default()
    };
    for spec in &args.task_data {
        let (name, file) = spec
            .split_once('=')
            .with_context(|| format!("--task-data `{spec}`: expected TASK=FILE"))?;
        let task = Task::parse_list(name)?
            .into_iter()
            .next()
            .with_context(|| format!("--task-data `{spec}`: no task name"))?;
        suite.data.insert(task, PathBuf::from(file));
    }
    suite.validate()?;
    Ok(suite)
}

/// The suite of `--suite FILE`.
fn suite_file(path: &Path) -> Result<TaskSuite> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let suite: TaskSuite = toml::from_str(&text)
        .with_context(|| format!("{} is not an [eval] table", path.display()))?;
    suite
        .validate()
        .with_context(|| format!("in {}", path.display()))?;
    Ok(suite)
}

pub fn eval(args: EvalArgs) -> Result<()> {
    let Some(progress) = &args.progress else {
        return evaluate(&args, None);
    };
    let report = args.out.clone().unwrap_or_default();
    let mut writer = ProgressWriter::new(progress, &report, 0);
    let result = evaluate(&args, Some(&mut writer));
    let (state, error) = match &result {
        Ok(()) => (JobState::Finished, None),
        Err(e) => (JobState::Failed, Some(format!("{e:#}"))),
    };
    writer.end(state, error)?;
    result
}

fn evaluate(args: &EvalArgs, mut progress: Option<&mut ProgressWriter>) -> Result<()> {
    if args.data.is_none()
        && args.wikitext.is_none()
        && args.tasks.is_none()
        && args.suite.is_none()
        && args.token_logprobs.is_none()
    {
        bail!("nothing to evaluate: give --data, --wikitext, --tasks, --suite or --token-logprobs");
    }
    // Check the task flags and make the output folders before the (slow) model load, so
    // nothing scored is lost to a bad flag.
    let suite = match (&args.suite, &args.tasks) {
        (Some(file), _) => Some(suite_file(file)?),
        (None, Some(list)) => Some(suite(args, list)?),
        (None, None) => None,
    };
    if let (Some(p), Some(s)) = (progress.as_deref_mut(), &suite) {
        p.progress.tasks_total = s.tasks.len();
    }
    for out in [&args.out, &args.samples].into_iter().flatten() {
        if let Some(parent) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("cannot create {}", parent.display()))?;
        }
    }
    let loaded = load(&args.model, args.checkpoint.as_deref())?;
    let mut report = EvalReport {
        model: args.model.clone(),
        checkpoint: loaded.checkpoint.clone(),
        perplexity: None,
        wikitext2: None,
        tasks: Vec::new(),
        mean_acc: None,
        token_logprobs: None,
    };
    if let Some(text) = &args.token_logprobs {
        report.token_logprobs = Some(token_logprobs(&loaded, text)?);
    }
    perplexities(args, &loaded, &mut report)?;
    if let Some(suite) = &suite {
        let outcomes = run_tasks(&loaded, suite, progress)?;
        if let Some(path) = &args.samples {
            write_samples(path, &outcomes)?;
        }
        report.tasks = outcomes.into_iter().map(|o| o.score).collect();
        report.mean_acc = mean_accuracy(&report.tasks);
        print_tasks(&report.tasks);
    }
    if let Some(out) = &args.out {
        lors::io::write_json_atomic(out, &report)?;
        println!("wrote {}", out.display());
    }
    Ok(())
}

/// The perplexity of `--data` (windows of `--seq-len`, default 256) and of `--wikitext`
/// (default: 2048 or the model's context), printed and put in `report`.
fn perplexities(args: &EvalArgs, loaded: &Loaded, report: &mut EvalReport) -> Result<()> {
    if let Some(data) = &args.data {
        let seq_len = args.seq_len.unwrap_or(256);
        let result = perplexity_of_file(
            &loaded.model,
            &loaded.tok,
            data,
            seq_len,
            args.batch_size,
            args.max_windows,
        )?;
        let r = PerplexityReport {
            data: data.clone(),
            seq_len,
            result,
        };
        print_perplexity(&r);
        report.perplexity = Some(r);
    }
    if let Some(file) = &args.wikitext {
        let context = loaded.model.config().max_position_embeddings;
        let seq_len = args.seq_len.unwrap_or(2048.min(context));
        let result =
            wikitext_perplexity(&loaded.model, &loaded.tok, file, seq_len, args.max_windows)?;
        let r = PerplexityReport {
            data: file.clone(),
            seq_len,
            result,
        };
        print_perplexity(&r);
        report.wikitext2 = Some(r);
    }
    Ok(())
}

/// Each token's log-probability over `text`, with a one-line summary.
fn token_logprobs(loaded: &Loaded, text: &Path) -> Result<lors::eval::TokenLogprobs> {
    let t = lors::eval::token_logprobs(&loaded.model, &loaded.tok, text)?;
    println!(
        "{}: {} tokens, mean log-probability {:.4}",
        text.display(),
        t.tokens.len(),
        t.logprobs.iter().sum::<f64>() / t.logprobs.len() as f64
    );
    Ok(t)
}

fn print_perplexity(r: &PerplexityReport) {
    let e = &r.result;
    println!(
        "{}: perplexity {:.4} (loss {:.4}) over {} windows of {} tokens ({} predictions), \
         scored in {:.2} s ({:.0} tokens/s)",
        r.data.display(),
        e.perplexity,
        e.loss,
        e.windows,
        r.seq_len,
        e.tokens,
        e.seconds,
        e.tokens as f64 / e.seconds
    );
}

/// Score the suite with a progress bar per task (and the progress file's updates).
fn run_tasks(
    loaded: &Loaded,
    suite: &TaskSuite,
    mut file: Option<&mut ProgressWriter>,
) -> Result<Vec<TaskOutcome>> {
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("{msg:14} {bar:30} {pos}/{len} items  [{elapsed} < {eta}]")
            .expect("valid template"),
    );
    let mut current = None;
    let mut file_error = None;
    let outcomes = suite.run(&loaded.model, &loaded.tok, &mut |task, done, total| {
        if current != Some(task) {
            current = Some(task);
            bar.reset();
            bar.set_length(total as u64);
            bar.set_message(task.name());
        }
        bar.set_position(done as u64);
        if let Some(Err(e)) = file.as_deref_mut().map(|f| f.items(task, done, total)) {
            file_error.get_or_insert(e);
        }
    })?;
    if let Some(e) = file_error {
        return Err(e.into());
    }
    bar.finish_and_clear();
    Ok(outcomes)
}

fn print_tasks(scores: &[TaskScore]) {
    let metric = |m: Option<&lors::eval::Metric>| match m {
        Some(m) => format!(
            "{:.4} ± {}",
            m.value,
            m.stderr.map_or("-".into(), |s| format!("{s:.4}"))
        ),
        None => "-".into(),
    };
    println!(
        "{:<14} {:>6}  {:<16} {:<16} {:>8}",
        "task", "items", "acc", "acc_norm", "items/s"
    );
    for s in scores {
        println!(
            "{:<14} {:>6}  {:<16} {:<16} {:>8.1}",
            s.task.name(),
            s.items,
            metric(Some(&s.acc)),
            metric(s.acc_norm.as_ref()),
            s.items as f64 / s.seconds
        );
    }
    if let Some(mean) = mean_accuracy(scores) {
        println!("{:<14} {:>6}  {:.4}", "mean acc", "", mean);
    }
}

/// One JSON line per item: the task, the item's index, log-likelihoods, gold and predictions.
fn write_samples(path: &Path, outcomes: &[TaskOutcome]) -> Result<()> {
    let mut text = Vec::new();
    for o in outcomes {
        for item in &o.items {
            let mut row = serde_json::to_value(item)?;
            row["task"] = serde_json::Value::String(o.score.task.name().into());
            writeln!(text, "{row}")?;
        }
    }
    lors::io::write_atomic(path, &text)?;
    Ok(())
}
