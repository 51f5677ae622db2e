//! Deterministic batching: each epoch visits every block once, in an order shuffled by
//! `(seed, epoch)`, so a run can resume at any step and see the same batches.

use candle_core::{DType, Device, Tensor};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::Blocks;
use crate::error::{LorsError, Result};

/// A batch: ids (batch, seq) u32 and the loss weights of each target (batch, seq) f32.
pub struct Batch {
    pub ids: Tensor,
    pub loss_mask: Tensor,
}

impl Batch {
    /// Stack the blocks at `indices` into tensors.
    pub fn from_blocks(blocks: &Blocks, indices: &[usize], dtype: DType) -> Result<Self> {
        let seq = blocks.seq_len();
        let (mut ids, mut mask) = (
            Vec::with_capacity(indices.len() * seq),
            Vec::with_capacity(indices.len() * seq),
        );
        for &i in indices {
            blocks.append(i, &mut ids, &mut mask);
        }
        Ok(Self {
            ids: Tensor::from_vec(ids, (indices.len(), seq), &Device::Cpu)?,
            loss_mask: Tensor::from_vec(mask, (indices.len(), seq), &Device::Cpu)?
                .to_dtype(dtype)?,
        })
    }
}

/// Yields batches of `batch_size` blocks; the position is a plain counter.
pub struct Batcher {
    blocks: Blocks,
    batch_size: usize,
    seed: u64,
}

impl Batcher {
    pub fn new(blocks: Blocks, batch_size: usize, seed: u64) -> Result<Self> {
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
        let indices = &order[within * self.batch_size..(within + 1) * self.batch_size];
        Batch::from_blocks(&self.blocks, indices, dtype)
    }
}
