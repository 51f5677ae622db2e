//! Sparsity: bit-packed masks, sparsity patterns (unstructured, N:M) and their checks.

mod mask;
mod pattern;

pub use mask::{BitMask, PatternCheck};
pub use pattern::{magnitude_mask, Pattern};
