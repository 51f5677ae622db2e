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

/// What [`BitMask::check_pattern`] found in a weight, read from its raw bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PatternCheck {
    /// Weights the mask prunes that are not zero.
    pub pruned_nonzero: usize,
    /// Weights the mask prunes that are `-0.0` (zero by value, sign bit set).
    pub pruned_negative_zero: usize,
    /// Weights the mask keeps that are zero (either sign).
    pub kept_zero: usize,
}

impl PatternCheck {
    /// True when every pruned position holds `+0.0` (all bits clear) and no kept one is zero.
    pub fn is_exact(&self) -> bool {
        self.pruned_nonzero == 0 && self.pruned_negative_zero == 0 && self.kept_zero == 0
    }
}

/// How a weight's raw bits read: `+0.0`, `-0.0` or anything else.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ZeroBits {
    Positive,
    Negative,
    Nonzero,
}

impl ZeroBits {
    /// The class of `bits`, a float whose sign bit is `sign`.
    fn of(bits: u64, sign: u64) -> Self {
        match bits {
            0 => Self::Positive,
            b if b == sign => Self::Negative,
            _ => Self::Nonzero,
        }
    }

    /// Every element of a float tensor (f32, f64, bf16, f16), row-major.
    fn classes(weight: &Tensor) -> Result<Vec<Self>> {
        let flat = weight.flatten_all()?;
        Ok(match weight.dtype() {
            DType::F32 => flat
                .to_vec1::<f32>()?
                .into_iter()
                .map(|v| Self::of(v.to_bits().into(), 1 << 31))
                .collect(),
            DType::F64 => flat
                .to_vec1::<f64>()?
                .into_iter()
                .map(|v| Self::of(v.to_bits(), 1 << 63))
                .collect(),
            DType::BF16 => flat
                .to_vec1::<half::bf16>()?
                .into_iter()
                .map(|v| Self::of(v.to_bits().into(), 1 << 15))
                .collect(),
            DType::F16 => flat
                .to_vec1::<half::f16>()?
                .into_iter()
                .map(|v| Self::of(v.to_bits().into(), 1 << 15))
                .collect(),
            other => {
                return Err(LorsError::UnsupportedDType {
                    dtype: other,
                    what: "a masked weight".into(),
                })
            }
        })
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

    /// `M ? v : +0.0` for a weight `values` of this mask's shape (any float dtype, any
    /// device): every pruned position gets `+0.0`, whatever `values` holds there. Multiplying
    /// by the 0/1 mask instead would leave `-0.0` wherever the value is negative.
    pub fn select(&self, values: &Tensor) -> Result<Tensor> {
        let (r, c) = values.dims2()?;
        self.expect_dims("masked weight", r, c)?;
        let keep = self.to_tensor(DType::U8, values.device())?;
        Ok(keep.where_cond(values, &values.zeros_like()?)?)
    }

    /// Set kept weights that are exactly zero (an exact cancellation, or underflow in a narrow
    /// dtype) to the dtype's smallest subnormal of the zero's sign (`-0.0`, a negative value
    /// that underflowed, becomes the negative one), so that the weight still encodes this mask
    /// as `W != 0`. Returns the weight and how many entries were set.
    pub fn nudge_kept_zeros(&self, weight: &Tensor) -> Result<(Tensor, usize)> {
        fn fix<T: WithDType>(m: &BitMask, weight: &Tensor, tiny: T) -> Result<(Tensor, usize)> {
            let mut values = weight.flatten_all()?.to_vec1::<T>()?;
            let negative_tiny = T::from_f64(-tiny.to_f64());
            let mut nudged = 0;
            for (i, v) in values.iter_mut().enumerate() {
                let x = v.to_f64();
                if m.is_kept(i) && x == 0.0 {
                    *v = if x.is_sign_negative() {
                        negative_tiny
                    } else {
                        tiny
                    };
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

    /// Compare a weight's zero pattern with the mask, bit by bit: a pruned position passes
    /// only as `+0.0`.
    pub fn check_pattern(&self, weight: &Tensor) -> Result<PatternCheck> {
        let (r, c) = weight.dims2()?;
        self.expect_dims("weight checked against mask", r, c)?;
        let mut check = PatternCheck {
            pruned_nonzero: 0,
            pruned_negative_zero: 0,
            kept_zero: 0,
        };
        for (i, class) in ZeroBits::classes(weight)?.into_iter().enumerate() {
            match (self.is_kept(i), class) {
                (false, ZeroBits::Nonzero) => check.pruned_nonzero += 1,
                (false, ZeroBits::Negative) => check.pruned_negative_zero += 1,
                (true, ZeroBits::Positive | ZeroBits::Negative) => check.kept_zero += 1,
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
        let w = Tensor::new(&[[0.0f32, 1.5, 0.0], [2.0, 0.0, -3.0]], &Device::Cpu).unwrap();
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

    /// `-0.0` is zero by value (`M = W != 0` does not see it) but fails the bit-level check;
    /// a kept `-0.0` counts as a kept zero.
    #[test]
    fn check_pattern_reads_bits_so_negative_zeros_fail() {
        let w = Tensor::new(&[[-0.0f32, 1.5, 0.0], [2.0, -0.0, -3.0]], &Device::Cpu).unwrap();
        let mask = BitMask::from_nonzero(&w).unwrap();
        assert_eq!(mask.count_kept(), 3);
        let check = mask.check_pattern(&w).unwrap();
        assert_eq!(
            (
                check.pruned_nonzero,
                check.pruned_negative_zero,
                check.kept_zero
            ),
            (0, 2, 0)
        );
        assert!(!check.is_exact());
        let kept_negative_zero =
            Tensor::new(&[[0.0f32, -0.0, 0.0], [2.0, 0.0, -3.0]], &Device::Cpu).unwrap();
        assert_eq!(
            mask.check_pattern(&kept_negative_zero).unwrap().kept_zero,
            1
        );
    }

    /// The masked merge's old form, `(W + ΔW) ⊙ M`, leaves `-0.0` at pruned positions where
    /// `W + ΔW < 0`, and the bit-level check catches it; `select` writes `+0.0` there in every
    /// float dtype.
    #[test]
    fn select_writes_positive_zeros_where_the_multiply_wrote_negative_ones() {
        let (rows, cols) = (4, 96);
        let mask = BitMask::from_fn(rows, cols, |i| i % 2 == 0);
        let values: Vec<f32> = (0..rows * cols)
            .map(|i| (i as f32 * 0.37 + 0.5).sin())
            .collect();
        let v = Tensor::from_vec(values, (rows, cols), &Device::Cpu).unwrap();
        for dtype in [DType::F32, DType::F64, DType::BF16, DType::F16] {
            let v = v.to_dtype(dtype).unwrap();
            let multiplied = (&v * mask.to_tensor(dtype, &Device::Cpu).unwrap()).unwrap();
            let old = mask.check_pattern(&multiplied).unwrap();
            assert_eq!(old.pruned_nonzero, 0, "{dtype:?}");
            assert!(old.pruned_negative_zero > 0, "{dtype:?}: {old:?}");
            let selected = mask.select(&v).unwrap();
            assert!(
                mask.check_pattern(&selected).unwrap().is_exact(),
                "{dtype:?}"
            );
            let bits = selected
                .to_dtype(DType::F64)
                .unwrap()
                .flatten_all()
                .unwrap();
            for (i, x) in bits.to_vec1::<f64>().unwrap().into_iter().enumerate() {
                if !mask.is_kept(i) {
                    assert_eq!(x.to_bits(), 0, "{dtype:?} at {i}");
                }
            }
        }
    }

    /// A kept weight that is exactly zero becomes the smallest subnormal of its zero's sign.
    #[test]
    fn nudged_kept_zeros_keep_their_sign() {
        let mask = BitMask::from_fn(1, 4, |i| i < 3);
        let w = Tensor::new(&[[0.0f32, -0.0, 1.0, 0.0]], &Device::Cpu).unwrap();
        for dtype in [DType::F32, DType::BF16, DType::F16] {
            let (nudged, n) = mask.nudge_kept_zeros(&w.to_dtype(dtype).unwrap()).unwrap();
            assert_eq!(n, 2, "{dtype:?}");
            let v = nudged
                .to_dtype(DType::F64)
                .unwrap()
                .to_vec2::<f64>()
                .unwrap()[0]
                .clone();
            assert!(
                v[0] > 0.0 && v[1] < 0.0 && v[0] == -v[1],
                "{dtype:?}: {v:?}"
            );
            assert_eq!(v[3].to_bits(), 0, "{dtype:?}: the pruned zero is untouched");
            assert!(mask.check_pattern(&nudged).unwrap().is_exact());
        }
    }
}
