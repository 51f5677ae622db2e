//! A bit-packed weight mask: one bit per weight, row-major, `true` where the weight is kept.

use candle_core::{DType, Device, Tensor, WithDType};

use crate::error::{LorsError, Result};

/// Mask `M` of an `rows x cols` weight, packed 64 weights to a word.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BitMask {
    rows: usize,
    cols: usize,
    words: Vec<u64>,
}

/// What [`BitMask::check_pattern`] found in a weight.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PatternCheck {
    /// Weights the mask prunes that are not exactly zero.
    pub pruned_nonzero: usize,
    /// Weights the mask keeps that are exactly zero.
    pub kept_zero: usize,
}

impl PatternCheck {
    /// True when the weight's zeros are exactly the mask's pruned positions.
    pub fn is_exact(&self) -> bool {
        self.pruned_nonzero == 0 && self.kept_zero == 0
    }
}

impl BitMask {
    /// Build a mask from a predicate on the flat (row-major) index.
    pub fn from_fn(rows: usize, cols: usize, mut keep: impl FnMut(usize) -> bool) -> Self {
        let n = rows * cols;
        let mut words = vec![0u64; n.div_ceil(64)];
        for i in 0..n {
            if keep(i) {
                words[i / 64] |= 1 << (i % 64);
            }
        }
        Self { rows, cols, words }
    }

    /// `M = (W != 0)` for a 2-D weight of any float dtype.
    pub fn from_nonzero(weight: &Tensor) -> Result<Self> {
        let (rows, cols) = weight.dims2().map_err(|_| {
            LorsError::shape(
                "mask source",
                "a 2-D weight",
                format!("{:?}", weight.dims()),
            )
        })?;
        let nonzero = weight.ne(0f64)?.flatten_all()?.to_vec1::<u8>()?;
        Ok(Self::from_flags(rows, cols, &nonzero))
    }

    /// A mask from one 0/1 flag per weight (row-major), packed in parallel.
    fn from_flags(rows: usize, cols: usize, flags: &[u8]) -> Self {
        use rayon::prelude::*;
        let words = flags
            .par_chunks(64)
            .map(|chunk| {
                chunk
                    .iter()
                    .enumerate()
                    .fold(0u64, |w, (bit, &f)| w | (u64::from(f != 0) << bit))
            })
            .collect();
        Self { rows, cols, words }
    }

    /// Number of rows (output features).
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Number of columns (input features).
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// `(rows, cols)`.
    pub fn dims(&self) -> (usize, usize) {
        (self.rows, self.cols)
    }

    /// Whether the weight at flat index `i` is kept.
    #[inline]
    pub fn is_kept(&self, i: usize) -> bool {
        (self.words[i / 64] >> (i % 64)) & 1 == 1
    }

    /// The packed words: bit `i % 64` of word `i / 64` is flat index `i`.
    pub fn words(&self) -> &[u64] {
        &self.words
    }

    /// Number of kept weights.
    pub fn count_kept(&self) -> usize {
        self.words.iter().map(|w| w.count_ones() as usize).sum()
    }

    /// Fraction of weights kept.
    pub fn density(&self) -> f64 {
        let n = self.rows * self.cols;
        if n == 0 {
            return 1.0;
        }
        self.count_kept() as f64 / n as f64
    }

    /// Number of kept weights in row `r`.
    pub fn row_kept(&self, r: usize) -> usize {
        (r * self.cols..(r + 1) * self.cols)
            .filter(|&i| self.is_kept(i))
            .count()
    }

    /// The largest number of kept weights in any group of `m` consecutive inputs of a row,
    /// or `None` when `m` does not divide the number of columns.
    pub fn max_kept_per_group(&self, m: usize) -> Option<usize> {
        if m == 0 || !self.cols.is_multiple_of(m) {
            return None;
        }
        let groups = self.rows * self.cols / m;
        Some(
            (0..groups)
                .map(|g| (g * m..(g + 1) * m).filter(|&i| self.is_kept(i)).count())
                .max()
                .unwrap_or(0),
        )
    }

    /// Bytes the packed bits occupy.
    pub fn storage_bytes(&self) -> usize {
        self.words.len() * std::mem::size_of::<u64>()
    }

    /// Zero every pruned entry of a row-major buffer of this mask's size.
    pub fn apply<T: WithDType>(&self, data: &mut [T]) {
        debug_assert_eq!(data.len(), self.rows * self.cols);
        for (wi, &word) in self.words.iter().enumerate() {
            if word == u64::MAX {
                continue;
            }
            let start = wi * 64;
            let end = (start + 64).min(data.len());
            for (bit, v) in data[start..end].iter_mut().enumerate() {
                if (word >> bit) & 1 == 0 {
                    *v = T::zero();
                }
            }
        }
    }

    /// The mask as a dense 0/1 tensor.
    pub fn to_tensor(&self, dtype: DType, device: &Device) -> Result<Tensor> {
        use rayon::prelude::*;
        let n = self.rows * self.cols;
        let mut dense = vec![0u8; n];
        dense
            .par_chunks_mut(64)
            .zip(self.words.par_iter())
            .for_each(|(chunk, &word)| {
                for (bit, d) in chunk.iter_mut().enumerate() {
                    *d = ((word >> bit) & 1) as u8;
                }
            });
        Ok(Tensor::from_vec(dense, (self.rows, self.cols), device)?.to_dtype(dtype)?)
    }

    /// The packed words as a u32 tensor on `device` (two u32 per word, low half first: bit
    /// `i % 32` of element `i / 32` is flat index `i`), for device kernels that read the
    /// mask without expanding it.
    pub fn to_packed_tensor(&self, device: &Device) -> Result<Tensor> {
        let halves: Vec<u32> = self
            .words
            .iter()
            .flat_map(|&w| [w as u32, (w >> 32) as u32])
            .collect();
        let n = halves.len();
        Ok(Tensor::from_vec(halves, n, device)?)
    }

    /// Error unless `(rows, cols)` matches this mask.
    pub fn expect_dims(&self, what: &str, rows: usize, cols: usize) -> Result<()> {
        if self.dims() != (rows, cols) {
            return Err(LorsError::shape(
                what,
                format!("[{rows}, {cols}]"),
                format!("[{}, {}]", self.rows, self.cols),
            ));
        }
        Ok(())
    }

    /// Set kept weights that are exactly zero (an exact cancellation, or underflow in a narrow
    /// dtype) to the dtype's smallest positive subnormal, so that the weight still encodes this
    /// mask as `W != 0`. Returns the weight and how many entries were set.
    pub fn nudge_kept_zeros(&self, weight: &Tensor) -> Result<(Tensor, usize)> {
        fn fix<T: WithDType>(m: &BitMask, weight: &Tensor, tiny: T) -> Result<(Tensor, usize)> {
            let mut values = weight.flatten_all()?.to_vec1::<T>()?;
            let mut nudged = 0;
            for (i, v) in values.iter_mut().enumerate() {
                if m.is_kept(i) && v.to_f64() == 0.0 {
                    *v = tiny;
                    nudged += 1;
                }
            }
            if nudged == 0 {
                return Ok((weight.clone(), 0));
            }
            Ok((
                Tensor::from_vec(values, weight.shape(), weight.device())?,
                nudged,
            ))
        }
        let (r, c) = weight.dims2()?;
        self.expect_dims("weight", r, c)?;
        match weight.dtype() {
            DType::F32 => fix(self, weight, f32::from_bits(1)),
            DType::F64 => fix(self, weight, f64::from_bits(1)),
            DType::BF16 => fix(self, weight, half::bf16::from_bits(1)),
            DType::F16 => fix(self, weight, half::f16::from_bits(1)),
            other => Err(LorsError::UnsupportedDType {
                dtype: other,
                what: "a masked weight".into(),
            }),
        }
    }

    /// Compare a weight's zero pattern with the mask.
    pub fn check_pattern(&self, weight: &Tensor) -> Result<PatternCheck> {
        let (r, c) = weight.dims2()?;
        self.expect_dims("weight checked against mask", r, c)?;
        let nonzero = weight.ne(0f64)?.flatten_all()?.to_vec1::<u8>()?;
        let mut check = PatternCheck {
            pruned_nonzero: 0,
            kept_zero: 0,
        };
        for (i, &nz) in nonzero.iter().enumerate() {
            match (self.is_kept(i), nz != 0) {
                (false, true) => check.pruned_nonzero += 1,
                (true, false) => check.kept_zero += 1,
                _ => {}
            }
        }
        Ok(check)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packs_one_bit_per_weight_across_word_boundaries() {
        let (rows, cols) = (3, 50); // 150 bits: three words, the last one partial
        let mask = BitMask::from_fn(rows, cols, |i| i % 3 == 0 || i == 149);
        assert_eq!(mask.storage_bytes(), 3 * 8);
        assert_eq!(mask.count_kept(), 50 + 1);
        for i in 0..rows * cols {
            assert_eq!(mask.is_kept(i), i % 3 == 0 || i == 149, "bit {i}");
        }
        let mut data = vec![1.0f32; rows * cols];
        mask.apply(&mut data);
        assert!(data
            .iter()
            .enumerate()
            .all(|(i, &v)| (v != 0.0) == mask.is_kept(i)));
        // The layout the CUDA kernels read: bit i % 32 of u32 number i / 32.
        let packed = mask
            .to_packed_tensor(&Device::Cpu)
            .unwrap()
            .to_vec1::<u32>()
            .unwrap();
        assert_eq!(packed.len(), 6);
        for i in 0..rows * cols {
            assert_eq!(
                (packed[i / 32] >> (i % 32)) & 1 == 1,
                mask.is_kept(i),
                "bit {i}"
            );
        }
        // The dense 0/1 tensor and a mask read back from it agree with the bits.
        let dense = mask.to_tensor(DType::F32, &Device::Cpu).unwrap();
        assert_eq!(BitMask::from_nonzero(&dense).unwrap(), mask);
    }

    #[test]
    fn from_nonzero_and_check_pattern_round_trip() {
        let w = Tensor::new(&[[0.0f32, 1.5, -0.0], [2.0, 0.0, -3.0]], &Device::Cpu).unwrap();
        let mask = BitMask::from_nonzero(&w).unwrap();
        assert_eq!(mask.count_kept(), 3);
        assert!(mask.check_pattern(&w).unwrap().is_exact());
        let other = Tensor::new(&[[1.0f32, 1.5, 0.0], [2.0, 0.0, 0.0]], &Device::Cpu).unwrap();
        let check = mask.check_pattern(&other).unwrap();
        assert_eq!((check.pruned_nonzero, check.kept_zero), (1, 1));
        let dense = mask.to_tensor(DType::F32, &Device::Cpu).unwrap();
        assert_eq!(
            dense.to_vec2::<f32>().unwrap(),
            vec![vec![0., 1., 0.], vec![1., 0., 1.]]
        );
    }
}
