//! The pair stage of a split Siamese head: P(same) for every (query, gallery) pair.
//!
//! In eval mode everything in fastai's `create_head` up to its first `Linear` acts on each
//! image's features separately, and that `Linear` of a concatenation is a sum of two products.
//! So each image is encoded once into `u` (its columns as the first image of a pair) and `v`
//! (as the second), and a pair's logits are the rest of the head applied to `u(x1) + v(x2)`:
//! for the default head `relu(u + v)` followed by one small affine map. Python splits and folds
//! the head (BatchNorm into the neighbouring `Linear`s) and hands this module the result as a
//! [`PairHead`]; here the pairs are scored, tile by tile on all cores.
//!
//! `head` describes what follows the sum, `kernel` holds the vectorised inner loops, `simd`
//! the registers they run on and `tiles` the blocking, packing and threads.
mod head;
mod kernel;
mod simd;
mod tiles;

#[cfg(test)]
mod tests;

pub use head::{Layer, Output, PairHead};
pub use kernel::Isa;
pub use tiles::{matches, score, score_each, Matches};

/// Row-major rows of `u` or `v`: float32, or bfloat16 bits (the upper half of a float32),
/// which halves the memory of a large index.
#[derive(Clone, Copy, Debug)]
pub enum Rows<'a> {
    F32(&'a [f32]),
    Bf16(&'a [u16]),
}

impl Rows<'_> {
    /// Number of values held.
    pub fn len(&self) -> usize {
        match self {
            Rows::F32(s) => s.len(),
            Rows::Bf16(s) => s.len(),
        }
    }

    /// Whether no value is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Rows `first..first + n` as padded float32: borrowed when they already are (float32 of a
    /// padded width, the default head's 512), else packed into `buf`. Copying every tile's rows
    /// cost as much as scoring them.
    pub(crate) fn rows<'s>(
        &'s self,
        width: usize,
        first: usize,
        n: usize,
        stride: usize,
        buf: &'s mut Vec<f32>,
    ) -> &'s [f32] {
        match self {
            Rows::F32(s) if width == stride => &s[first * width..(first + n) * width],
            _ => {
                self.pack(width, first, n, stride, buf);
                buf
            }
        }
    }

    /// Rows `first..first + n` of width `width` as float32 in `dst`, each padded with zeros to
    /// `stride` (a zero column adds nothing to a pair: `relu(0 + 0) * w = 0`).
    pub(crate) fn pack(
        &self,
        width: usize,
        first: usize,
        n: usize,
        stride: usize,
        dst: &mut Vec<f32>,
    ) {
        dst.clear();
        dst.resize(n * stride, 0.0);
        for (r, out) in dst.chunks_exact_mut(stride).enumerate() {
            let at = (first + r) * width;
            match self {
                Rows::F32(s) => out[..width].copy_from_slice(&s[at..at + width]),
                Rows::Bf16(s) => {
                    for (o, b) in out[..width].iter_mut().zip(&s[at..at + width]) {
                        *o = f32::from_bits(u32::from(*b) << 16);
                    }
                }
            }
        }
    }
}
