//! Training and evaluation data: reading records (JSONL/JSON with `text`, Alpaca-style
//! instruction records, plain text), tokenising, packing into fixed-length blocks, and
//! deterministic batching.

mod batch;
mod records;
mod tokenize;

pub use batch::{Batch, Batcher};
pub use records::{read_records, DataFormat, Record, RecordSet};
pub use tokenize::{pack_blocks, pad_blocks, tokenize_records, Block, Example, TextTokenizer};
