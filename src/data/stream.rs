//! A data file to blocks in one streaming pass (two when the blocks' fill or a held-out split
//! depends on all the records): records are read one at a time, tokenised a chunk at a time
//! on every core, and written in their order as blocks. Memory holds one chunk, not the file.

use std::io::Write;
use std::path::Path;

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rayon::prelude::*;

use super::blocks::{BlockWriter, Fill, IdWidth};
use super::{for_each_record, tokenize_record, BlockOptions, Example, Record, TextTokenizer};
use crate::error::{LorsError, Result};

/// Records are tokenised in parallel this many at a time, or fewer when their text reaches
/// [`CHUNK_BYTES`].
const CHUNK_RECORDS: usize = 4096;
const CHUNK_BYTES: usize = 4 << 20;

/// A seeded share of the records held out for validation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HoldOut {
    pub fraction: f64,
    pub seed: u64,
}

/// What one part of a file made: its writers, blocks and tokens (before cutting).
pub struct PartOutput<W> {
    pub ids: W,
    pub loss: W,
    pub blocks: usize,
    pub tokens: usize,
}

/// A file's blocks: every record's (`train` only), or the kept and held-out records'.
pub struct FileOutput<W> {
    pub train: PartOutput<W>,
    pub valid: Option<PartOutput<W>>,
    pub records: usize,
    /// Bad records skipped (with `skip_bad`).
    pub skipped: usize,
    /// Records that are instructions.
    pub instructions: usize,
}

/// Which records are held out: `ceil(n × fraction)` of them, chosen by a shuffle seeded
/// with `seed`.
pub fn held_out(n: usize, hold: HoldOut) -> Vec<bool> {
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(hold.seed));
    let n_valid = ((n as f64) * hold.fraction).ceil() as usize;
    let mut held = vec![false; n];
    for &i in &order[..n_valid.min(n)] {
        held[i] = true;
    }
    held
}

/// The fill of a part's blocks: the options' choice, else packed unless its records hold an
/// instruction (padded with EOS).
fn fill(opts: &BlockOptions, tok: &TextTokenizer, instruction: bool) -> Fill {
    if opts.pack.unwrap_or(!instruction) {
        Fill::Pack
    } else {
        Fill::Pad {
            pad_id: tok.eos_id.unwrap_or(0),
        }
    }
}

/// Which records are instructions, from a first pass that only parses them.
fn instruction_flags(path: &Path, opts: &BlockOptions) -> Result<Vec<bool>> {
    let mut flags = Vec::new();
    for_each_record(path, opts.format, opts.skip_bad, &mut |r| {
        flags.push(matches!(r, Record::Instruction { .. }));
        Ok(())
    })?;
    Ok(flags)
}

/// Tokenise `path` into blocks: `writers()` gives each part's two writers. With `hold_out`,
/// the held-out records go to `valid` (none when no record is held out).
pub fn tokenize_file<W: Write>(
    path: &Path,
    tok: &TextTokenizer,
    opts: &BlockOptions,
    hold_out: Option<HoldOut>,
    writers: &mut dyn FnMut() -> Result<(W, W)>,
) -> Result<FileOutput<W>> {
    let flags = match (hold_out, opts.pack) {
        (None, Some(_)) => None,
        _ => Some(instruction_flags(path, opts)?),
    };
    let held = match (hold_out, &flags) {
        (Some(h), Some(f)) => held_out(f.len(), h),
        _ => Vec::new(),
    };
    let any_in = |valid: bool| {
        flags.as_ref().is_some_and(|f| {
            f.iter()
                .enumerate()
                .any(|(i, &ins)| ins && held.get(i).copied().unwrap_or(false) == valid)
        })
    };
    let width = IdWidth::for_vocab(tok.vocab_size());
    let mut part = |valid: bool| -> Result<BlockWriter<W>> {
        let (ids, loss) = writers()?;
        Ok(BlockWriter::new(
            ids,
            loss,
            width,
            opts.seq_len,
            fill(opts, tok, any_in(valid)),
        ))
    };
    let mut train = (part(false)?, 0usize);
    let mut valid = match held.iter().any(|&h| h) {
        true => Some((part(true)?, 0usize)),
        false => None,
    };
    let mut chunk = Chunk::new(tok, opts.train_on_prompt);
    let mut route = |i: usize, e: Example| -> Result<()> {
        let (writer, tokens) = match valid.as_mut().filter(|_| held[i]) {
            Some(v) => v,
            None => &mut train,
        };
        *tokens += e.ids.len();
        writer.push(e)
    };
    let mut instructions = 0;
    let (_, skipped) = for_each_record(path, opts.format, opts.skip_bad, &mut |r| {
        instructions += usize::from(matches!(r, Record::Instruction { .. }));
        chunk.push(r, &mut route)
    })?;
    chunk.flush(&mut route)?;
    let records = chunk.seen;
    let finish = |(w, tokens): (BlockWriter<W>, usize)| -> Result<PartOutput<W>> {
        let (ids, loss, blocks) = w.finish()?;
        Ok(PartOutput {
            ids,
            loss,
            blocks,
            tokens,
        })
    };
    Ok(FileOutput {
        train: finish(train)?,
        valid: valid.map(finish).transpose()?,
        records,
        skipped,
        instructions,
    })
}

/// Records waiting to be tokenised together.
struct Chunk<'a> {
    tok: &'a TextTokenizer,
    train_on_prompt: bool,
    records: Vec<Record>,
    bytes: usize,
    /// Records seen before this chunk's.
    seen: usize,
}

impl<'a> Chunk<'a> {
    fn new(tok: &'a TextTokenizer, train_on_prompt: bool) -> Self {
        Self {
            tok,
            train_on_prompt,
            records: Vec::new(),
            bytes: 0,
            seen: 0,
        }
    }

    fn push(
        &mut self,
        r: Record,
        sink: &mut dyn FnMut(usize, Example) -> Result<()>,
    ) -> Result<()> {
        self.bytes += match &r {
            Record::Text(t) => t.len(),
            Record::Instruction {
                instruction,
                input,
                output,
            } => instruction.len() + input.len() + output.len(),
        };
        self.records.push(r);
        if self.records.len() >= CHUNK_RECORDS || self.bytes >= CHUNK_BYTES {
            self.flush(sink)?;
        }
        Ok(())
    }

    /// Tokenise the waiting records on every core; hand them on in their order.
    fn flush(&mut self, sink: &mut dyn FnMut(usize, Example) -> Result<()>) -> Result<()> {
        let (tok, top) = (self.tok, self.train_on_prompt);
        let examples: Vec<Result<Example>> = self
            .records
            .par_iter()
            .map(|r| tokenize_record(r, tok, top))
            .collect();
        for e in examples {
            sink(self.seen, e?)?;
            self.seen += 1;
        }
        self.records.clear();
        self.bytes = 0;
        Ok(())
    }
}

/// The error of a part that makes no block.
pub fn no_block(path: &Path, seq_len: usize) -> LorsError {
    LorsError::parse(
        path,
        format!("too little text for one block of {seq_len} tokens"),
    )
}
