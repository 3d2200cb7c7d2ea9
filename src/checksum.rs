//! What objects derived from a model compare to notice that the model changed, including writes
//! through `.data` or numpy that leave PyTorch's version counters alone: `checksums`, of every byte
//! of each tensor, for a `PairIndex` (stale scores must never slip through), and `sample_digest`, of
//! a sample, for a frozen model, which checks its source on every forward call.
//!
//! The checksum is `Σ w_i · m_i mod 2^64` over the 32-bit words `w_i`, with odd multipliers `m_i`
//! that differ by position: changing one word changes it by `δ · m_i` with `0 < |δ · m_i| < 2^64`,
//! so any single change is always seen, and structured edits (a column, a sign flip of every
//! value) cancel only if a sum of pseudo-random multipliers does, about one chance in 2^32. It is
//! linear in position, so a large tensor is summed in pieces on several threads.
mod sample;

pub use sample::sample_digest;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Spreads the multipliers (the golden ratio in 32 bits).
const K: u32 = 0x9E37_79B9;
/// Words summed together, one lane each.
const LANES: usize = 8;
/// Bytes per piece of work.
const PIECE: usize = 1 << 20;

/// The multiplier of word `i`: odd, so no nonzero change of a word vanishes.
fn multiplier(i: usize) -> u32 {
    (i as u32).wrapping_mul(K).wrapping_mul(2).wrapping_add(1)
}

/// `Σ w_i · m_i` over the words of `bytes`, whose first word is word `first` of its tensor.
#[inline(always)]
fn sum_words(bytes: &[u8], first: usize) -> u64 {
    let (words, tail) = bytes.as_chunks::<4>();
    let mut acc = [0u64; LANES];
    let mut m: [u32; LANES] = std::array::from_fn(|l| multiplier(first + l));
    let step = (LANES as u32).wrapping_mul(K).wrapping_mul(2);
    let (blocks, rest) = words.as_chunks::<LANES>();
    for block in blocks {
        for l in 0..LANES {
            let w = u32::from_le_bytes(block[l]);
            acc[l] = acc[l].wrapping_add(u64::from(w) * u64::from(m[l]));
            m[l] = m[l].wrapping_add(step);
        }
    }
    let mut sum = acc.iter().fold(0u64, |a, b| a.wrapping_add(*b));
    let at = first + blocks.len() * LANES;
    for (k, w) in rest.iter().enumerate() {
        sum = sum.wrapping_add(u64::from(u32::from_le_bytes(*w)) * u64::from(multiplier(at + k)));
    }
    if !tail.is_empty() {
        let mut w = [0u8; 4];
        w[..tail.len()].copy_from_slice(tail);
        let i = first + words.len();
        sum = sum.wrapping_add(u64::from(u32::from_le_bytes(w)) * u64::from(multiplier(i)));
    }
    sum
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn sum_words_avx2(bytes: &[u8], first: usize) -> u64 {
    sum_words(bytes, first)
}

/// `sum_words` with the widest integer multiply this CPU has (the same number either way).
fn sum_piece(bytes: &[u8], first: usize) -> u64 {
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx2") {
        // SAFETY: the feature was just detected.
        return unsafe { sum_words_avx2(bytes, first) };
    }
    sum_words(bytes, first)
}

/// The checksum of each of `tensors` (their bytes), on up to `threads` threads.
pub fn checksums(tensors: &[&[u8]], threads: usize) -> Vec<u64> {
    // Pieces start on word boundaries, so each knows its first word's position.
    let pieces: Vec<(usize, usize)> = tensors
        .iter()
        .enumerate()
        .flat_map(|(t, b)| (0..b.len().div_ceil(PIECE).max(1)).map(move |p| (t, p * PIECE)))
        .collect();
    let total: usize = tensors.iter().map(|b| b.len()).sum();
    let threads = if total < 4 * PIECE { 1 } else { threads.max(1) };
    let sums: Vec<std::sync::Mutex<u64>> = tensors.iter().map(|_| 0.into()).collect();
    let next = AtomicUsize::new(0);
    let work = || loop {
        let k = next.fetch_add(1, Ordering::Relaxed);
        let Some(&(t, start)) = pieces.get(k) else {
            return;
        };
        let bytes = &tensors[t][start..tensors[t].len().min(start + PIECE)];
        let s = sum_piece(bytes, start / 4);
        let mut total = sums[t].lock().unwrap_or_else(|e| e.into_inner());
        *total = total.wrapping_add(s);
    };
    std::thread::scope(|s| {
        for _ in 1..threads {
            s.spawn(work);
        }
        work();
    });
    sums.into_iter()
        .zip(tensors)
        .map(|(s, b)| {
            let s = s.into_inner().unwrap_or_else(|e| e.into_inner());
            // The length too: appending zero bytes must not go unseen.
            s ^ (b.len() as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 7 + i / 13) as u8).collect()
    }

    #[test]
    fn pieces_and_threads_do_not_change_it() {
        let b = bytes(3 * PIECE + 4 * 37 + 3);
        let one = sum_words(&b, 0) ^ (b.len() as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        assert_eq!(checksums(&[&b], 1), vec![one]);
        assert_eq!(checksums(&[&b, &b[5..]], 4)[0], one);
    }

    #[test]
    fn any_one_change_is_seen() {
        let b = bytes(4 * 1000 + 2);
        let base = checksums(&[&b], 1)[0];
        for i in (0..b.len()).step_by(97).chain([b.len() - 1]) {
            let mut c = b.clone();
            c[i] ^= 0x80;
            assert_ne!(checksums(&[&c], 1)[0], base, "byte {i}");
        }
        let longer = [b.as_slice(), &[0u8; 4]].concat();
        assert_ne!(checksums(&[&longer], 1)[0], base);
    }

    #[test]
    fn a_column_of_sign_flips_is_seen() {
        // 64 rows of 32 float32 columns; flip the sign of column 1 in every row.
        let mut f: Vec<f32> = (0..64 * 32).map(|i| i as f32 * 0.25 + 1.0).collect();
        let before = checksums(&[bytemuck(&f)], 1)[0];
        (0..64).for_each(|r| f[r * 32 + 1] = -f[r * 32 + 1]);
        assert_ne!(checksums(&[bytemuck(&f)], 1)[0], before);
    }

    fn bytemuck(f: &[f32]) -> &[u8] {
        // SAFETY: any f32 is 4 readable bytes.
        unsafe { std::slice::from_raw_parts(f.as_ptr() as *const u8, f.len() * 4) }
    }
}
