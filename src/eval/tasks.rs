//! The zero-shot multiple-choice tasks of the pruning papers (LoRS, SparseGPT, Wanda, SQFT,
//! SPP), defined exactly as lm-evaluation-harness 0.4 defines them: each task's prompt, target
//! delimiter (`" "`), choices, gold answer and metrics, from the columns of its hub dataset.

use std::path::Path;

use serde_json::Value;

use crate::error::{LorsError, Result};

/// A multiple-choice task.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    strum::IntoStaticStr,
    strum::VariantArray,
)]
#[strum(serialize_all = "snake_case")]
pub enum Task {
    Boolq,
    Rte,
    Hellaswag,
    Winogrande,
    ArcEasy,
    ArcChallenge,
    Openbookqa,
}

crate::named!(Task, "tasks");

/// Why a row does not make an item (names the column).
type RowResult<T> = std::result::Result<T, String>;

impl Task {
    /// A name of at most five characters, for table columns.
    pub fn short_name(self) -> &'static str {
        match self {
            Task::Boolq => "boolq",
            Task::Rte => "rte",
            Task::Hellaswag => "hswag",
            Task::Winogrande => "wino",
            Task::ArcEasy => "arc-e",
            Task::ArcChallenge => "arc-c",
            Task::Openbookqa => "obqa",
        }
    }

    /// Tasks from a comma-separated list of names; an unknown name is an error listing them.
    pub fn parse_list(list: &str) -> Result<Vec<Task>> {
        list.split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::parse)
            .collect()
    }

    /// The hub dataset (and configuration) and split lm-evaluation-harness scores.
    pub fn source(self) -> (&'static str, &'static str) {
        match self {
            Task::Boolq => ("aps/super_glue, boolq", "validation"),
            Task::Rte => ("nyu-mll/glue, rte", "validation"),
            Task::Hellaswag => ("Rowan/hellaswag", "validation"),
            Task::Winogrande => ("allenai/winogrande, winogrande_xl", "validation"),
            Task::ArcEasy => ("allenai/ai2_arc, ARC-Easy", "test"),
            Task::ArcChallenge => ("allenai/ai2_arc, ARC-Challenge", "test"),
            Task::Openbookqa => ("allenai/openbookqa, main", "test"),
        }
    }

    /// The columns an item is built from.
    pub fn columns(self) -> &'static [&'static str] {
        match self {
            Task::Boolq => &["passage", "question", "label"],
            Task::Rte => &["sentence1", "sentence2", "label"],
            Task::Hellaswag => &["activity_label", "ctx_a", "ctx_b", "endings", "label"],
            Task::Winogrande => &["sentence", "option1", "option2", "answer"],
            Task::ArcEasy | Task::ArcChallenge => &["question", "choices", "answerKey"],
            Task::Openbookqa => &["question_stem", "choices", "answerKey"],
        }
    }

    /// Whether lm-evaluation-harness reports `acc_norm` for the task (it always reports `acc`).
    pub fn has_acc_norm(self) -> bool {
        matches!(
            self,
            Task::Hellaswag | Task::ArcEasy | Task::ArcChallenge | Task::Openbookqa
        )
    }

    /// The item a dataset row makes.
    pub fn item(self, row: &Value) -> RowResult<Item> {
        let row = Row(row
            .as_object()
            .ok_or_else(|| "a row must be a JSON object".to_string())?);
        match self {
            Task::Boolq => Item::same_context(
                format!(
                    "{}\nQuestion: {}?\nAnswer:",
                    row.str("passage")?,
                    row.str("question")?
                ),
                strings(&["no", "yes"]),
                row.index("label", 2)?,
            ),
            Task::Rte => Item::same_context(
                format!(
                    "{}\nQuestion: {} True or False?\nAnswer:",
                    row.str("sentence1")?,
                    row.str("sentence2")?
                ),
                strings(&["True", "False"]),
                row.index("label", 2)?,
            ),
            Task::Hellaswag => hellaswag(&row),
            Task::Winogrande => winogrande(&row),
            Task::ArcEasy | Task::ArcChallenge => {
                let (choices, gold) = lettered_choices(&row, row.str("answerKey")?)?;
                let question = row.str("question")?;
                Item::same_context(format!("Question: {question}\nAnswer:"), choices, gold)
            }
            Task::Openbookqa => {
                let key = row.str("answerKey")?.trim_start();
                let (choices, gold) = lettered_choices(&row, key)?;
                Item::same_context(row.str("question_stem")?.to_string(), choices, gold)
            }
        }
    }
}

/// One multiple-choice item as lm-evaluation-harness scores it.
#[derive(Debug, Clone, PartialEq)]
pub struct Item {
    /// `(context, continuation)` per choice, whose log-likelihoods are compared.
    pub requests: Vec<(String, String)>,
    /// The choice strings, whose lengths in characters normalise `acc_norm`.
    pub choices: Vec<String>,
    /// The index of the right choice.
    pub gold: usize,
}

/// lm-evaluation-harness's default target delimiter between context and continuation.
const TARGET_DELIMITER: &str = " ";

impl Item {
    /// One context, each choice as a continuation (after the target delimiter).
    fn same_context(context: String, choices: Vec<String>, gold: usize) -> RowResult<Item> {
        let requests = choices
            .iter()
            .map(|c| (context.clone(), format!("{TARGET_DELIMITER}{c}")))
            .collect();
        Ok(Item {
            requests,
            choices,
            gold,
        })
    }
}

fn strings(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

/// A dataset row's columns.
struct Row<'a>(&'a serde_json::Map<String, Value>);

impl Row<'_> {
    fn get(&self, column: &str) -> RowResult<&Value> {
        match self.0.get(column) {
            None | Some(Value::Null) => Err(format!("column `{column}` is missing")),
            Some(v) => Ok(v),
        }
    }

    fn str(&self, column: &str) -> RowResult<&str> {
        let v = self.get(column)?;
        v.as_str()
            .ok_or_else(|| format!("column `{column}` must be a string, got {v}"))
    }

    fn str_list(&self, column: &str) -> RowResult<Vec<String>> {
        let v = self.get(column)?;
        string_list(v).ok_or_else(|| format!("column `{column}` must be a list of strings"))
    }

    /// A 0-based label (an integer, or a string of digits as in HellaSwag) below `n`.
    fn index(&self, column: &str, n: usize) -> RowResult<usize> {
        let v = self.get(column)?;
        let label = match v {
            Value::Number(x) => x.as_u64(),
            Value::String(s) => s.trim().parse::<u64>().ok(),
            Value::Bool(b) => Some(u64::from(*b)),
            _ => None,
        };
        match label {
            Some(l) if (l as usize) < n => Ok(l as usize),
            _ => Err(format!(
                "column `{column}`: label {v} is out of range (0..={})",
                n.saturating_sub(1)
            )),
        }
    }
}

fn string_list(v: &Value) -> Option<Vec<String>> {
    v.as_array()?
        .iter()
        .map(|s| s.as_str().map(str::to_string))
        .collect()
}

/// ARC and OpenBookQA: `choices = {text: [...], label: ["A", ...]}`, gold the index of `key`.
fn lettered_choices(row: &Row, key: &str) -> RowResult<(Vec<String>, usize)> {
    let choices = row.get("choices")?;
    let field = |name: &str| {
        choices.get(name).and_then(string_list).ok_or_else(|| {
            format!("column `choices` must hold `{name}`, a list of strings, got {choices}")
        })
    };
    let (text, labels) = (field("text")?, field("label")?);
    if text.len() != labels.len() || text.is_empty() {
        return Err(format!(
            "column `choices`: {} texts and {} labels",
            text.len(),
            labels.len()
        ));
    }
    let gold = labels.iter().position(|l| l == key).ok_or_else(|| {
        format!("column `answerKey`: `{key}` is not one of the choice labels {labels:?}")
    })?;
    Ok((text, gold))
}

/// HellaSwag: the activity label and both context halves (the second capitalised), cleaned of
/// WikiHow's bracketed artefacts, as lm-evaluation-harness's `process_docs` does.
fn hellaswag(row: &Row) -> RowResult<Item> {
    let ctx = format!("{} {}", row.str("ctx_a")?, py_capitalize(row.str("ctx_b")?));
    let query = hellaswag_clean(&format!("{}: {ctx}", row.str("activity_label")?));
    let endings = row.str_list("endings")?;
    if endings.is_empty() {
        return Err("column `endings` is empty".into());
    }
    let gold = row.index("label", endings.len())?;
    let choices = endings.iter().map(|e| hellaswag_clean(e)).collect();
    Item::same_context(query, choices, gold)
}

/// WinoGrande: each option fills the blank to make a context, the rest of the sentence is the
/// continuation; `answer` is "1" or "2".
fn winogrande(row: &Row) -> RowResult<Item> {
    let sentence = row.str("sentence")?;
    let blank = sentence
        .find('_')
        .ok_or_else(|| "column `sentence` has no blank `_`".to_string())?;
    let rest = py_strip(&sentence[blank + 1..]);
    let choices: Vec<String> = [row.str("option1")?, row.str("option2")?]
        .iter()
        .map(|option| format!("{}{option}", &sentence[..blank]))
        .collect();
    let gold = match row.get("answer")? {
        Value::String(s) if s == "1" || s == "2" => s.parse::<usize>().unwrap_or(1) - 1,
        other => {
            return Err(format!(
                "column `answer`: label {other} is out of range (\"1\" or \"2\")"
            ))
        }
    };
    let requests = choices
        .iter()
        .map(|c| (c.clone(), format!("{TARGET_DELIMITER}{rest}")))
        .collect();
    Ok(Item {
        requests,
        choices,
        gold,
    })
}

/// Python's `str.isspace()` characters (Unicode White_Space plus the four ASCII separators).
pub(crate) fn py_space(c: char) -> bool {
    c.is_whitespace() || ('\x1c'..='\x1f').contains(&c)
}

/// Python's `str.strip()`.
fn py_strip(s: &str) -> &str {
    s.trim_matches(py_space)
}

/// Python's `str.capitalize()`: the first character upper-cased, the rest lower-cased.
fn py_capitalize(s: &str) -> String {
    let mut chars = s.chars();
    match chars.next() {
        None => String::new(),
        Some(first) => first
            .to_uppercase()
            .chain(chars.as_str().to_lowercase().chars())
            .collect(),
    }
}

/// lm-evaluation-harness's HellaSwag `preprocess`: strip, `" [title]"` → `". "`, every
/// `[...]` (not across a newline) removed, double spaces halved.
fn hellaswag_clean(text: &str) -> String {
    let text = py_strip(text).replace(" [title]", ". ");
    let mut out = String::with_capacity(text.len());
    let mut rest = text.as_str();
    while let Some(open) = rest.find('[') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        match closing_bracket(after) {
            Some(close) => rest = &after[close + 1..],
            None => {
                out.push('[');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out.replace("  ", " ")
}

/// Where the lazy `.*?\]` after a `[` ends: the first `]`, unless a newline comes before it
/// (a `[` in between belongs to the match).
fn closing_bracket(after: &str) -> Option<usize> {
    let close = after.find(']')?;
    (!after[..close].contains('\n')).then_some(close)
}

/// The items of a task file (JSON Lines, JSON array or parquet, or a hub reference), at most
/// `limit` of them (the first ones, as lm-evaluation-harness's `--limit`); a row that does not
/// make an item is an error naming the file, the row and the column.
pub fn load_items(task: Task, path: &Path, limit: Option<usize>) -> Result<Vec<Item>> {
    let mut items = Vec::new();
    let limit = limit.unwrap_or(usize::MAX);
    let resolved = crate::data::for_each_json_row(path, &mut |line, value| {
        if items.len() >= limit {
            return Ok(());
        }
        let item = value
            .and_then(|v| task.item(&v))
            .map_err(|detail| LorsError::Record {
                path: path.to_path_buf(),
                line,
                detail: format!("{task}: {detail}"),
            })?;
        items.push(item);
        Ok(())
    })?;
    if items.is_empty() {
        return Err(LorsError::parse(
            &resolved,
            format!(
                "no {task} rows (expected JSON Lines, a JSON array or parquet with columns {})",
                task.columns().join(", ")
            ),
        ));
    }
    Ok(items)
}
