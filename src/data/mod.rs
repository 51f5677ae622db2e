//! Training and evaluation data: reading records (JSONL/JSON with `text`, Alpaca-style
//! instruction records, plain text), tokenising, packing into fixed-length blocks, and
//! deterministic batching.

mod batch;
mod records;
mod tokenize;

pub use batch::{Batch, Batcher};
pub use records::{
    for_each_json_row, for_each_record, parse_records, read_records, DataFormat, Record, RecordSet,
};
pub use tokenize::{
    pack_blocks, pad_blocks, tokenize_record, tokenize_records, Block, Example, TextTokenizer,
};

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

/// The blocks a file makes, and how many bad records were skipped.
pub struct LoadedData {
    pub blocks: Vec<Block>,
    pub skipped: usize,
}

/// Tokenise `records` and cut them into blocks.
pub fn records_to_blocks(
    records: &[Record],
    tok: &TextTokenizer,
    opts: &BlockOptions,
) -> Result<Vec<Block>> {
    let examples = tokenize_records(records, tok, opts.train_on_prompt)?;
    Ok(examples_to_blocks(
        has_instructions(records),
        examples,
        tok,
        opts,
    ))
}

fn has_instructions(records: &[Record]) -> bool {
    records
        .iter()
        .any(|r| matches!(r, Record::Instruction { .. }))
}

/// Blocks of examples: packed, unless the options say pad (or, by default, the records are
/// instructions).
fn examples_to_blocks(
    instruction: bool,
    examples: Vec<Example>,
    tok: &TextTokenizer,
    opts: &BlockOptions,
) -> Vec<Block> {
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
    let tokens = examples.iter().map(|e| e.ids.len()).sum();
    let blocks = examples_to_blocks(has_instructions(&set.records), examples, tok, opts);
    check_not_empty(path, &blocks, opts)?;
    Ok(DataSummary {
        format: match instructions {
            0 => "text",
            n if n == set.records.len() => "alpaca",
            _ => "mixed",
        },
        records: set.records.len(),
        skipped: set.skipped,
        tokens,
        sequences: blocks.len(),
    })
}

/// Read a file and make its blocks, tokenising each record as it is read (the records'
/// text is never all in memory at once).
pub fn load_blocks(path: &Path, tok: &TextTokenizer, opts: &BlockOptions) -> Result<LoadedData> {
    let mut examples = Vec::new();
    let mut instruction = false;
    let (_, skipped) = for_each_record(path, opts.format, opts.skip_bad, &mut |r| {
        instruction |= matches!(r, Record::Instruction { .. });
        examples.push(tokenize_record(&r, tok, opts.train_on_prompt)?);
        Ok(())
    })?;
    let blocks = examples_to_blocks(instruction, examples, tok, opts);
    check_not_empty(path, &blocks, opts)?;
    Ok(LoadedData { blocks, skipped })
}

/// Split records into (train, valid) with `fraction` of them, chosen by `seed`, held out;
/// each keeps the records' order.
pub fn split_records(records: Vec<Record>, fraction: f64, seed: u64) -> (Vec<Record>, Vec<Record>) {
    let mut order: Vec<usize> = (0..records.len()).collect();
    order.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(seed));
    let n_valid = ((records.len() as f64) * fraction).ceil() as usize;
    let mut held_out = vec![false; records.len()];
    for &i in &order[..n_valid.min(records.len())] {
        held_out[i] = true;
    }
    let (valid, train): (Vec<_>, Vec<_>) = records
        .into_iter()
        .zip(held_out)
        .partition(|(_, held)| *held);
    let strip = |v: Vec<(Record, bool)>| v.into_iter().map(|(r, _)| r).collect();
    (strip(train), strip(valid))
}
