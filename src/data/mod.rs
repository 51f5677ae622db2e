//! Training and evaluation data: reading records (JSONL/JSON with `text`, Alpaca-style
//! instruction records, plain text), tokenising, packing into fixed-length blocks, and
//! deterministic batching.

mod batch;
mod records;
mod tokenize;

pub use batch::{Batch, Batcher};
pub use records::{read_records, DataFormat, Record, RecordSet};
pub use tokenize::{pack_blocks, pad_blocks, tokenize_records, Block, Example, TextTokenizer};

use std::path::Path;

use rand::seq::SliceRandom;
use rand::SeedableRng;

use crate::error::Result;

/// How records become blocks.
#[derive(Debug, Clone, Copy)]
pub struct BlockOptions {
    pub format: DataFormat,
    pub seq_len: usize,
    /// `None`: pack documents, pad instruction records.
    pub pack: Option<bool>,
    pub train_on_prompt: bool,
    pub skip_bad: bool,
}

impl BlockOptions {
    /// Every record packed into `seq_len` blocks, every token in the loss: evaluation and
    /// calibration data.
    pub fn evaluation(seq_len: usize) -> Self {
        Self {
            format: DataFormat::Auto,
            seq_len,
            pack: Some(true),
            train_on_prompt: true,
            skip_bad: false,
        }
    }
}

/// Records of a file and the blocks they make.
pub struct LoadedData {
    pub records: RecordSet,
    pub blocks: Vec<Block>,
}

/// Tokenise `records` and cut them into blocks.
pub fn records_to_blocks(
    records: &[Record],
    tok: &TextTokenizer,
    opts: &BlockOptions,
) -> Result<Vec<Block>> {
    let examples = tokenize_records(records, tok, opts.train_on_prompt)?;
    Ok(examples_to_blocks(records, &examples, tok, opts))
}

fn examples_to_blocks(
    records: &[Record],
    examples: &[Example],
    tok: &TextTokenizer,
    opts: &BlockOptions,
) -> Vec<Block> {
    let instruction = records
        .iter()
        .any(|r| matches!(r, Record::Instruction { .. }));
    if opts.pack.unwrap_or(!instruction) {
        pack_blocks(examples, opts.seq_len)
    } else {
        pad_blocks(examples, opts.seq_len, tok.eos_id.unwrap_or(0))
    }
}

fn check_not_empty(path: &Path, blocks: &[Block], opts: &BlockOptions) -> Result<()> {
    if blocks.is_empty() {
        return Err(crate::error::LorsError::parse(
            path,
            format!("too little text for one block of {} tokens", opts.seq_len),
        ));
    }
    Ok(())
}

/// What a data file holds, as the workbench shows it before a run.
#[derive(Debug, Clone, PartialEq)]
pub struct DataSummary {
    /// `text`, `alpaca` or `mixed`.
    pub format: &'static str,
    pub records: usize,
    /// Bad records skipped (with `skip_bad`).
    pub skipped: usize,
    /// Tokens after tokenisation (with BOS/EOS and prompt template).
    pub tokens: usize,
    /// Training sequences of `seq_len` those tokens make.
    pub sequences: usize,
}

/// Read and tokenise `path` as a run would, and count what it gives; an error where the run
/// would fail (bad records, too little text for one sequence).
pub fn summarize_file(
    path: &Path,
    tok: &TextTokenizer,
    opts: &BlockOptions,
) -> Result<DataSummary> {
    let set = read_records(path, opts.format, opts.skip_bad)?;
    let examples = tokenize_records(&set.records, tok, opts.train_on_prompt)?;
    let instructions = set
        .records
        .iter()
        .filter(|r| matches!(r, Record::Instruction { .. }))
        .count();
    let blocks = examples_to_blocks(&set.records, &examples, tok, opts);
    check_not_empty(path, &blocks, opts)?;
    Ok(DataSummary {
        format: match instructions {
            0 => "text",
            n if n == set.records.len() => "alpaca",
            _ => "mixed",
        },
        records: set.records.len(),
        skipped: set.skipped,
        tokens: examples.iter().map(|e| e.ids.len()).sum(),
        sequences: blocks.len(),
    })
}

/// Read a file and make its blocks.
pub fn load_blocks(path: &Path, tok: &TextTokenizer, opts: &BlockOptions) -> Result<LoadedData> {
    let records = read_records(path, opts.format, opts.skip_bad)?;
    let blocks = records_to_blocks(&records.records, tok, opts)?;
    check_not_empty(path, &blocks, opts)?;
    Ok(LoadedData { records, blocks })
}

/// Split records into (train, valid) with `fraction` of them, chosen by `seed`, held out.
pub fn split_records(records: &[Record], fraction: f64, seed: u64) -> (Vec<Record>, Vec<Record>) {
    let mut order: Vec<usize> = (0..records.len()).collect();
    order.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(seed));
    let n_valid = ((records.len() as f64) * fraction).ceil() as usize;
    let (valid, train) = order.split_at(n_valid.min(records.len()));
    let pick = |ix: &[usize]| {
        let mut ix = ix.to_vec();
        ix.sort_unstable();
        ix.into_iter().map(|i| records[i].clone()).collect()
    };
    (pick(train), pick(valid))
}
