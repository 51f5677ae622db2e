//! Training and evaluation data: reading records (JSONL/JSON with `text`, Alpaca-style
//! instruction records, plain text), tokenising, packing into fixed-length blocks, token
//! shards on disk, and deterministic batching.

mod batch;
mod blocks;
mod records;
pub mod shards;
mod stream;
mod tokenize;

pub use batch::{Batch, Batcher};
pub use blocks::{BlockWriter, Blocks, Fill, IdWidth};
pub use records::{
    for_each_json_row, for_each_record, parse_records, read_records, DataFormat, Record, RecordSet,
};
pub use stream::{held_out, tokenize_file, FileOutput, HoldOut, PartOutput};
pub use tokenize::{tokenize_record, tokenize_records, Example, TextTokenizer};

use std::path::Path;

use crate::error::Result;

/// How records become blocks.
#[derive(Debug, Clone, Copy, PartialEq)]
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
    pub blocks: Blocks,
    pub skipped: usize,
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

/// Read and tokenise `path` as a run would, and count what it gives (nothing is kept); an
/// error where the run would fail (bad records, too little text for one sequence).
pub fn summarize_file(
    path: &Path,
    tok: &TextTokenizer,
    opts: &BlockOptions,
) -> Result<DataSummary> {
    let out = tokenize_file(path, tok, opts, None, &mut || {
        Ok((std::io::sink(), std::io::sink()))
    })?;
    if out.train.blocks == 0 {
        return Err(stream::no_block(path, opts.seq_len));
    }
    Ok(DataSummary {
        format: match out.instructions {
            0 => "text",
            n if n == out.records => "alpaca",
            _ => "mixed",
        },
        records: out.records,
        skipped: out.skipped,
        tokens: out.train.tokens,
        sequences: out.train.blocks,
    })
}

/// Read a file and make its blocks in memory, tokenising the records as they are read (their
/// text is never all in memory at once). Runs keep theirs in token shards ([`shards`]).
pub fn load_blocks(path: &Path, tok: &TextTokenizer, opts: &BlockOptions) -> Result<LoadedData> {
    let out = tokenize_file(path, tok, opts, None, &mut || Ok((Vec::new(), Vec::new())))?;
    if out.train.blocks == 0 {
        return Err(stream::no_block(path, opts.seq_len));
    }
    let width = IdWidth::for_vocab(tok.vocab_size());
    Ok(LoadedData {
        blocks: Blocks::owned(out.train.ids, out.train.loss, width, opts.seq_len),
        skipped: out.skipped,
    })
}
