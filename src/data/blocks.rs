//! Fixed-length token blocks, held as a token shard stores them: the ids little-endian in u16
//! (a vocabulary of at most 65,536) or u32, block after block, and one loss bit per token
//! (least significant bit first, running on across blocks), whether predicting that token
//! counts. In memory, or memory-mapped from a shard (see [`super::shards`]).

use std::io::Write;

use serde::{Deserialize, Serialize};

use super::Example;
use crate::error::{LorsError, Result};

/// How wide a stored token id is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IdWidth {
    U16,
    U32,
}

impl IdWidth {
    /// The narrowest width that holds every id of a vocabulary of `vocab` tokens.
    pub fn for_vocab(vocab: usize) -> Self {
        if vocab <= 1 << 16 {
            Self::U16
        } else {
            Self::U32
        }
    }

    fn bytes(self) -> usize {
        match self {
            Self::U16 => 2,
            Self::U32 => 4,
        }
    }
}

/// How examples become blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fill {
    /// Examples concatenated and cut every `seq_len` tokens (the remainder is dropped).
    Pack,
    /// One block per example, truncated or padded with `pad_id` (out of the loss).
    Pad { pad_id: u32 },
}

/// Bytes owned or mapped from a file.
enum Bytes {
    Owned(Vec<u8>),
    Mapped(memmap2::Mmap),
}

impl std::ops::Deref for Bytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Bytes::Owned(v) => v,
            Bytes::Mapped(m) => m,
        }
    }
}

/// Blocks of `seq_len` tokens with their loss bits.
pub struct Blocks {
    ids: Bytes,
    loss: Bytes,
    width: IdWidth,
    seq_len: usize,
    len: usize,
}

impl Blocks {
    /// Blocks from `examples` in memory (see [`BlockWriter`]).
    pub fn from_examples(
        examples: impl IntoIterator<Item = Example>,
        fill: Fill,
        seq_len: usize,
        width: IdWidth,
    ) -> Result<Self> {
        let mut writer = BlockWriter::new(Vec::new(), Vec::new(), width, seq_len, fill);
        for e in examples {
            writer.push(e)?;
        }
        writer.into_blocks()
    }

    /// Blocks from their stored bytes (as a [`BlockWriter`] over memory wrote them).
    pub fn owned(ids: Vec<u8>, loss: Vec<u8>, width: IdWidth, seq_len: usize) -> Self {
        let len = ids.len() / (width.bytes() * seq_len.max(1));
        Self {
            ids: Bytes::Owned(ids),
            loss: Bytes::Owned(loss),
            width,
            seq_len,
            len,
        }
    }

    /// Blocks mapped from a shard's `ids` and `loss` files, checked against their length.
    pub(super) fn mapped(
        ids: &std::path::Path,
        loss: &std::path::Path,
        width: IdWidth,
        seq_len: usize,
        len: usize,
    ) -> Result<Self> {
        let map = |path: &std::path::Path| -> Result<memmap2::Mmap> {
            let file = std::fs::File::open(path).map_err(|e| LorsError::io(path, e))?;
            // SAFETY: shards are written once, under a new name, and never modified in place.
            unsafe { memmap2::Mmap::map(&file) }.map_err(|e| LorsError::io(path, e))
        };
        let blocks = Self {
            ids: Bytes::Mapped(map(ids)?),
            loss: Bytes::Mapped(map(loss)?),
            width,
            seq_len,
            len,
        };
        let tokens = len * seq_len;
        if blocks.ids.len() != tokens * width.bytes() || blocks.loss.len() != tokens.div_ceil(8) {
            return Err(LorsError::parse(ids, "a token shard of the wrong length"));
        }
        Ok(blocks)
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn seq_len(&self) -> usize {
        self.seq_len
    }

    fn token(&self, k: usize) -> u32 {
        match self.width {
            IdWidth::U16 => u16::from_le_bytes([self.ids[2 * k], self.ids[2 * k + 1]]).into(),
            IdWidth::U32 => {
                let b = &self.ids[4 * k..4 * k + 4];
                u32::from_le_bytes([b[0], b[1], b[2], b[3]])
            }
        }
    }

    fn counts(&self, k: usize) -> bool {
        self.loss[k / 8] >> (k % 8) & 1 == 1
    }

    /// Block `i`'s token ids.
    pub fn ids(&self, i: usize) -> Vec<u32> {
        let start = i * self.seq_len;
        (start..start + self.seq_len)
            .map(|k| self.token(k))
            .collect()
    }

    /// Block `i`'s loss flags.
    pub fn loss(&self, i: usize) -> Vec<bool> {
        let start = i * self.seq_len;
        (start..start + self.seq_len)
            .map(|k| self.counts(k))
            .collect()
    }

    /// Append block `i`'s ids and loss weights (1.0 or 0.0).
    pub fn append(&self, i: usize, ids: &mut Vec<u32>, weights: &mut Vec<f32>) {
        let start = i * self.seq_len;
        for k in start..start + self.seq_len {
            ids.push(self.token(k));
            weights.push(if self.counts(k) { 1.0 } else { 0.0 });
        }
    }

    /// The blocks at `indices`, in that order, in memory.
    pub fn select(&self, indices: &[usize]) -> Result<Self> {
        let mut writer =
            BlockWriter::new(Vec::new(), Vec::new(), self.width, self.seq_len, Fill::Pack);
        for &i in indices {
            writer.write_block(&self.ids(i), &self.loss(i))?;
        }
        writer.into_blocks()
    }
}

/// Writes blocks as examples arrive, in the stored layout, to any two writers (files of a
/// shard being built, or memory): nothing but the current block is held.
pub struct BlockWriter<W: Write> {
    ids: W,
    loss: W,
    width: IdWidth,
    seq_len: usize,
    fill: Fill,
    /// Packing: tokens not yet making a whole block.
    pending: (Vec<u32>, Vec<bool>),
    /// Loss bits not yet making a whole byte, and how many.
    bits: (u8, u32),
    blocks: usize,
}

impl<W: Write> BlockWriter<W> {
    pub fn new(ids: W, loss: W, width: IdWidth, seq_len: usize, fill: Fill) -> Self {
        Self {
            ids,
            loss,
            width,
            seq_len,
            fill,
            pending: (Vec::with_capacity(seq_len), Vec::with_capacity(seq_len)),
            bits: (0, 0),
            blocks: 0,
        }
    }

    /// Blocks written so far.
    pub fn blocks(&self) -> usize {
        self.blocks
    }

    /// Add an example: packed onto the stream (writing every block it completes) or padded
    /// into a block of its own.
    pub fn push(&mut self, e: Example) -> Result<()> {
        match self.fill {
            Fill::Pack => {
                for (id, l) in e.ids.into_iter().zip(e.loss) {
                    self.pending.0.push(id);
                    self.pending.1.push(l);
                    if self.pending.0.len() == self.seq_len {
                        let (ids, loss) = std::mem::take(&mut self.pending);
                        self.write_block(&ids, &loss)?;
                        self.pending = (ids, loss);
                        self.pending.0.clear();
                        self.pending.1.clear();
                    }
                }
                Ok(())
            }
            Fill::Pad { pad_id } => {
                let (mut ids, mut loss) = (e.ids, e.loss);
                ids.resize(self.seq_len, pad_id);
                loss.resize(self.seq_len, false);
                self.write_block(&ids, &loss)
            }
        }
    }

    fn write_block(&mut self, ids: &[u32], loss: &[bool]) -> Result<()> {
        let io = |e: std::io::Error| LorsError::invalid("data", format!("writing blocks: {e}"));
        for &id in ids {
            match self.width {
                IdWidth::U16 => {
                    let narrow = u16::try_from(id).map_err(|_| {
                        LorsError::invalid("data", format!("token id {id} does not fit in u16"))
                    })?;
                    self.ids.write_all(&narrow.to_le_bytes()).map_err(io)?;
                }
                IdWidth::U32 => self.ids.write_all(&id.to_le_bytes()).map_err(io)?,
            }
        }
        for &l in loss {
            self.bits.0 |= u8::from(l) << self.bits.1;
            self.bits.1 += 1;
            if self.bits.1 == 8 {
                self.loss.write_all(&[self.bits.0]).map_err(io)?;
                self.bits = (0, 0);
            }
        }
        self.blocks += 1;
        Ok(())
    }

    /// Write the last partial byte of loss bits; the writers and the number of blocks.
    pub fn finish(mut self) -> Result<(W, W, usize)> {
        if self.bits.1 > 0 {
            self.loss
                .write_all(&[self.bits.0])
                .map_err(|e| LorsError::invalid("data", format!("writing blocks: {e}")))?;
        }
        Ok((self.ids, self.loss, self.blocks))
    }
}

impl BlockWriter<Vec<u8>> {
    /// The blocks written, in memory.
    pub fn into_blocks(self) -> Result<Blocks> {
        let (width, seq_len) = (self.width, self.seq_len);
        let (ids, loss, _) = self.finish()?;
        Ok(Blocks::owned(ids, loss, width, seq_len))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn example(ids: &[u32], loss: &[bool]) -> Example {
        Example {
            ids: ids.to_vec(),
            loss: loss.to_vec(),
        }
    }

    #[test]
    fn packing_cuts_the_stream_and_drops_the_remainder() {
        let examples = [
            example(&[1, 2, 3], &[true, false, true]),
            example(&[4, 5, 6, 7, 8], &[true; 5]),
        ];
        for width in [IdWidth::U16, IdWidth::U32] {
            let b = Blocks::from_examples(examples.clone(), Fill::Pack, 3, width).unwrap();
            assert_eq!(b.len(), 2);
            assert_eq!((b.ids(0), b.ids(1)), (vec![1, 2, 3], vec![4, 5, 6]));
            assert_eq!(b.loss(0), vec![true, false, true]);
            let (mut ids, mut w) = (Vec::new(), Vec::new());
            b.append(1, &mut ids, &mut w);
            assert_eq!((ids, w), (vec![4, 5, 6], vec![1.0; 3]));
        }
    }

    #[test]
    fn padding_gives_each_example_a_block_with_its_loss_bits_across_bytes() {
        let loss: Vec<bool> = (0..7).map(|i| i % 3 == 0).collect();
        let examples = [
            example(&[9; 7], &loss),
            example(&[70_000, 2], &[false, true]),
        ];
        let b = Blocks::from_examples(examples, Fill::Pad { pad_id: 0 }, 5, IdWidth::U32).unwrap();
        assert_eq!(b.len(), 2);
        assert_eq!(b.ids(0), vec![9; 5]);
        assert_eq!(b.loss(0), loss[..5].to_vec());
        assert_eq!(b.ids(1), vec![70_000, 2, 0, 0, 0]);
        assert_eq!(b.loss(1), vec![false, true, false, false, false]);
        assert_eq!(b.select(&[1, 0]).unwrap().ids(0), b.ids(1));
    }

    #[test]
    fn an_id_too_wide_for_u16_is_an_error() {
        let err = Blocks::from_examples([example(&[70_000], &[true])], Fill::Pack, 1, IdWidth::U16)
            .err()
            .unwrap();
        assert!(err.to_string().contains("70000"), "{err}");
    }
}
