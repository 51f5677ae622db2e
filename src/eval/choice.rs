//! Multiple-choice scoring of a task's items: `acc` (the choice of highest log-likelihood is
//! the gold one) and `acc_norm` (the same per character of the choice), with
//! lm-evaluation-harness's standard error of a mean.

use serde::{Deserialize, Serialize};

use super::loglik::{encode_request, Scorer};
use super::tasks::{Item, Task};
use crate::data::TextTokenizer;
use crate::error::{LorsError, Result};
use crate::model::CausalLm;

/// A mean over items and its standard error (absent below two items).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Metric {
    pub value: f64,
    pub stderr: Option<f64>,
}

impl Metric {
    /// The mean of `xs` and `sample_stddev / √n`.
    pub fn mean_of(xs: &[f64]) -> Metric {
        let n = xs.len() as f64;
        let mean = xs.iter().sum::<f64>() / n;
        let stderr = (xs.len() >= 2).then(|| {
            let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0);
            var.sqrt() / n.sqrt()
        });
        Metric {
            value: mean,
            stderr,
        }
    }
}

/// A task's result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskScore {
    pub task: Task,
    pub items: usize,
    pub acc: Metric,
    /// For the tasks lm-evaluation-harness reports it for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acc_norm: Option<Metric>,
    /// Seconds spent tokenising and scoring.
    pub seconds: f64,
}

/// One item's result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ItemScore {
    /// The item's index in the task file.
    pub doc: usize,
    /// The summed log-likelihood of each choice's continuation.
    pub loglikelihoods: Vec<f64>,
    pub gold: usize,
    pub pred: usize,
    pub pred_norm: usize,
}

/// The index of the largest value, the first on ties; a NaN counts as largest (as numpy's
/// `argmax`).
fn argmax(xs: impl IntoIterator<Item = f64>) -> usize {
    let mut best: Option<(usize, f64)> = None;
    for (i, x) in xs.into_iter().enumerate() {
        match best {
            Some((_, b)) if b.is_nan() || !(x > b || x.is_nan()) => {}
            _ => best = Some((i, x)),
        }
    }
    best.map_or(0, |(i, _)| i)
}

/// The token a request with an empty context is conditioned on: BOS, else the first EOS.
fn prefix_token(model: &CausalLm) -> Result<u32> {
    let c = model.config();
    c.bos_token_id
        .or_else(|| c.eos_token_ids.first().copied())
        .ok_or_else(|| LorsError::invalid("eval", "the model has neither a BOS nor an EOS token"))
}

/// Score `items` of `task`; `progress` hears the count of items done after each.
pub fn score_task(
    model: &CausalLm,
    tok: &TextTokenizer,
    task: Task,
    items: &[Item],
    progress: &mut dyn FnMut(usize),
) -> Result<(TaskScore, Vec<ItemScore>)> {
    let started = std::time::Instant::now();
    let scorer = Scorer::new(model);
    let prefix = prefix_token(model)?;
    let mut scores = Vec::with_capacity(items.len());
    for (doc, item) in items.iter().enumerate() {
        let requests = item
            .requests
            .iter()
            .map(|(context, continuation)| encode_request(tok, prefix, context, continuation))
            .collect::<Result<Vec<_>>>()?;
        let lls = scorer.loglikelihoods(&requests)?;
        let per_char = lls
            .iter()
            .zip(&item.choices)
            .map(|(ll, c)| ll / c.chars().count() as f64);
        scores.push(ItemScore {
            doc,
            pred: argmax(lls.iter().copied()),
            pred_norm: argmax(per_char),
            loglikelihoods: lls,
            gold: item.gold,
        });
        progress(doc + 1);
    }
    Ok((
        summarize(task, &scores, started.elapsed().as_secs_f64()),
        scores,
    ))
}

/// The task's metrics over its item scores.
pub fn summarize(task: Task, scores: &[ItemScore], seconds: f64) -> TaskScore {
    let hits = |pred: fn(&ItemScore) -> usize| -> Vec<f64> {
        scores
            .iter()
            .map(|s| f64::from(u8::from(pred(s) == s.gold)))
            .collect()
    };
    TaskScore {
        task,
        items: scores.len(),
        acc: Metric::mean_of(&hits(|s| s.pred)),
        acc_norm: task
            .has_acc_norm()
            .then(|| Metric::mean_of(&hits(|s| s.pred_norm))),
        seconds,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argmax_takes_the_first_maximum_and_nan_first() {
        assert_eq!(argmax([-3.0, -1.0, -1.0, -2.0]), 1);
        assert_eq!(argmax([-3.0, f64::NAN, -1.0, f64::NAN]), 1);
        assert_eq!(argmax([f64::NEG_INFINITY, -5.0]), 1);
    }

    #[test]
    fn standard_error_is_the_sample_deviation_over_root_n() {
        // 3 hits of 4: mean 0.75, sample variance 0.25, stderr 0.5/2.
        let m = Metric::mean_of(&[1.0, 1.0, 0.0, 1.0]);
        assert_eq!(m.value, 0.75);
        assert!((m.stderr.unwrap() - 0.25).abs() < 1e-15);
        assert_eq!(Metric::mean_of(&[1.0]).stderr, None);
    }
}
