//! Evaluation: perplexity over windows of a text (a data file, or WikiText-2 the pruning
//! papers' way) and the zero-shot multiple-choice tasks of lm-evaluation-harness.

mod choice;
mod loglik;
pub mod perplexity;
mod progress;
mod suite;
mod tasks;
mod token_logprobs;

pub use choice::{score_task, summarize, ItemScore, Metric, TaskScore};
pub use loglik::{encode_request, Request, Scorer};
pub use perplexity::{
    evaluate, perplexity_of_file, wikitext_perplexity, wikitext_text, EvalResult,
};
pub use progress::{read_progress, EvalProgress, JobState, ProgressWriter};
pub use suite::{mean_accuracy, EvalReport, PerplexityReport, TaskOutcome, TaskSuite};
pub use tasks::{load_items, Item, Task};
pub use token_logprobs::{token_logprobs, TokenLogprobs};
