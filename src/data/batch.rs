//! Deterministic batching: each epoch visits every block once, in an order shuffled by
//! `(seed, epoch)`, so a run can resume at any step and see the same batches.

use candle_core::{DType, Device, Tensor};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::Block;
use crate::error::{LorsError, Result};

/// A batch: ids (batch, seq) u32 and the loss weights of each target (batch, seq) f32.
pub struct Batch {
    pub ids: Tensor,
    pub loss_mask: Tensor,
}

impl Batch {
    /// Stack blocks into tensors.
    pub fn from_blocks(blocks: &[&Block], dtype: DType) -> Result<Self> {
        let seq = blocks.first().map(|b| b.ids.len()).unwrap_or(0);
        let ids: Vec<u32> = blocks.iter().flat_map(|b| b.ids.iter().copied()).collect();
        let mask: Vec<f32> = blocks
            .iter()
            .flat_map(|b| b.loss.iter().map(|&l| f32::from(u8::from(l))))
            .collect();
        Ok(Self {
            ids: Tensor::from_vec(ids, (blocks.len(), seq), &Device::Cpu)?,
            loss_mask: Tensor::from_vec(mask, (blocks.len(), seq), &Device::Cpu)?
                .to_dtype(dtype)?,
        })
    }
}

/// Yields batches of `batch_size` blocks; the position is a plain counter.
pub struct Batcher {
    blocks: Vec<Block>,
    batch_size: usize,
    seed: u64,
}

impl Batcher {
    pub fn new(blocks: Vec<Block>, batch_size: usize, seed: u64) -> Result<Self> {
        if batch_size == 0 {
            return Err(LorsError::invalid("train.batch_size", "must be at least 1"));
        }
        if blocks.len() < batch_size {
            return Err(LorsError::invalid(
                "train.batch_size",
                format!(
                    "{batch_size} is more than the {} blocks the training data makes",
                    blocks.len()
                ),
            ));
        }
        Ok(Self {
            blocks,
            batch_size,
            seed,
        })
    }

    /// Full batches per epoch (a partial last batch is dropped).
    pub fn batches_per_epoch(&self) -> usize {
        self.blocks.len() / self.batch_size
    }

    /// Number of blocks.
    pub fn len(&self) -> usize {
        self.blocks.len()
    }

    /// Whether there are no blocks.
    pub fn is_empty(&self) -> bool {
        self.blocks.is_empty()
    }

    fn order(&self, epoch: usize) -> Vec<usize> {
        let mut order: Vec<usize> = (0..self.blocks.len()).collect();
        let mut rng = ChaCha8Rng::seed_from_u64(
            self.seed ^ (epoch as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15),
        );
        order.shuffle(&mut rng);
        order
    }

    /// The `index`-th batch of the whole run (epochs follow each other).
    pub fn batch(&self, index: usize, dtype: DType) -> Result<Batch> {
        let per_epoch = self.batches_per_epoch();
        let (epoch, within) = (index / per_epoch, index % per_epoch);
        let order = self.order(epoch);
        let blocks: Vec<&Block> = order[within * self.batch_size..(within + 1) * self.batch_size]
            .iter()
            .map(|&i| &self.blocks[i])
            .collect();
        Batch::from_blocks(&blocks, dtype)
    }

    /// All blocks in file order, in batches (for evaluation).
    pub fn sequential(&self, dtype: DType) -> impl Iterator<Item = Result<Batch>> + '_ {
        self.blocks
            .chunks(self.batch_size)
            .map(move |c| Batch::from_blocks(&c.iter().collect::<Vec<_>>(), dtype))
    }
}
