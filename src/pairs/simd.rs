//! One SIMD register of float32 lanes and the four operations the fused kernel needs, per
//! instruction set. Written with intrinsics because the compiler, left to vectorise arrays of
//! lanes nested in blocks of pairs, chose gathers and scatters across the block and ran at a
//! tenth of the register-resident speed.
//!
//! 256 bits at most: see `kernel::avx512` for why.
//!
//! Every implementation sums its lanes in the same tree order as the portable one (lane `i`
//! plus lane `i + n/2`, halving), so a score does not depend on the block a pair falls in.
#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

/// A register of `L` float32 lanes.
pub(crate) trait Simd: Copy {
    const L: usize;

    fn zero() -> Self;

    /// `L` floats from `p`.
    ///
    /// # Safety
    /// `p` points to `L` readable floats, and the CPU has this type's instruction set.
    unsafe fn load(p: *const f32) -> Self;

    /// `max(0, u + v)` lane by lane, keeping NaN as PyTorch's ReLU does.
    ///
    /// # Safety
    /// The CPU has this type's instruction set (so for every method below).
    unsafe fn relu_sum(u: Self, v: Self) -> Self;

    /// `w * h + acc`, fused where the instruction set has FMA.
    unsafe fn mul_add(w: Self, h: Self, acc: Self) -> Self;

    /// Sum of the lanes, halving: lane `i` plus lane `i + n/2`.
    unsafe fn hsum(self) -> f32;
}

/// Eight lanes in plain Rust: any target, no FMA (a `mul_add` there is a libm call).
#[derive(Clone, Copy)]
pub(crate) struct Portable([f32; 8]);

impl Simd for Portable {
    const L: usize = 8;

    #[inline(always)]
    fn zero() -> Self {
        Portable([0.0; 8])
    }

    #[inline(always)]
    unsafe fn load(p: *const f32) -> Self {
        Portable(std::ptr::read_unaligned(p as *const [f32; 8]))
    }

    #[inline(always)]
    unsafe fn relu_sum(u: Self, v: Self) -> Self {
        Portable(std::array::from_fn(|l| {
            let s = u.0[l] + v.0[l];
            if 0.0 > s {
                0.0
            } else {
                s
            }
        }))
    }

    #[inline(always)]
    unsafe fn mul_add(w: Self, h: Self, acc: Self) -> Self {
        Portable(std::array::from_fn(|l| w.0[l] * h.0[l] + acc.0[l]))
    }

    #[inline(always)]
    unsafe fn hsum(self) -> f32 {
        let mut a = self.0;
        let mut n = 8;
        while n > 1 {
            n /= 2;
            for i in 0..n {
                a[i] += a[i + n];
            }
        }
        a[0]
    }
}

/// Lanes 0 and 1 of `[a0 + a2, a1 + a3]`, then their sum: the last two halvings.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn hsum4(x: __m128) -> f32 {
    let x = _mm_add_ps(x, _mm_movehl_ps(x, x));
    _mm_cvtss_f32(_mm_add_ss(x, _mm_shuffle_ps::<1>(x, x)))
}

#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn hsum8(x: __m256) -> f32 {
    hsum4(_mm_add_ps(
        _mm256_castps256_ps128(x),
        _mm256_extractf128_ps::<1>(x),
    ))
}

#[cfg(target_arch = "x86_64")]
impl Simd for __m256 {
    const L: usize = 8;

    #[inline(always)]
    fn zero() -> Self {
        // SAFETY: AVX is present wherever this type is used (see `Simd`).
        unsafe { _mm256_setzero_ps() }
    }

    #[inline(always)]
    unsafe fn load(p: *const f32) -> Self {
        _mm256_loadu_ps(p)
    }

    #[inline(always)]
    unsafe fn relu_sum(u: Self, v: Self) -> Self {
        // `maxps(a, b)` is `a > b ? a : b`: NaN in `b` comes through.
        _mm256_max_ps(_mm256_setzero_ps(), _mm256_add_ps(u, v))
    }

    #[inline(always)]
    unsafe fn mul_add(w: Self, h: Self, acc: Self) -> Self {
        _mm256_fmadd_ps(w, h, acc)
    }

    #[inline(always)]
    unsafe fn hsum(self) -> f32 {
        hsum8(self)
    }
}
