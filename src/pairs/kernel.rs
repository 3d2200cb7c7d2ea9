//! The inner loops. The fused head (`relu(u + v)` then at most four logits, the default head's
//! shape) runs on explicit SIMD registers (`simd`): the accumulators of a block of `Q` queries ×
//! `G` gallery rows × `M` logits stay in registers while `relu(u + v)` is formed and consumed
//! chunk by chunk. Other heads go layer by layer in portable Rust the compiler vectorises. Each
//! loop is compiled for AVX-512, AVX2+FMA and baseline x86-64 (or the target's own features
//! elsewhere) and chosen at run time; every pair goes through the same sequence of operations
//! whatever block it falls in, so a score does not depend on where the pair sits in a batch.
use super::head::{log_odds, padded, Layer, Output, PairHead};
use super::simd::{Portable, Simd};
#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::__m256;

/// The instruction set a kernel was compiled for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Isa {
    Avx512,
    Avx2Fma,
    Portable,
}

impl Isa {
    /// The best one this CPU runs.
    pub fn detect() -> Isa {
        Isa::available()[0]
    }

    /// Every one this CPU runs, best first.
    pub fn available() -> Vec<Isa> {
        let mut out = vec![];
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx512f") {
                out.push(Isa::Avx512);
            }
            if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                out.push(Isa::Avx2Fma);
            }
        }
        out.push(Isa::Portable);
        out
    }
}

/// `a * b + c`, fused where the target has FMA; both are deterministic.
pub(crate) trait MulAdd {
    fn mul_add(a: f32, b: f32, c: f32) -> f32;
}

pub(crate) struct Fused;
pub(crate) struct Separate;

impl MulAdd for Fused {
    #[inline(always)]
    fn mul_add(a: f32, b: f32, c: f32) -> f32 {
        a.mul_add(b, c)
    }
}

impl MulAdd for Separate {
    #[inline(always)]
    fn mul_add(a: f32, b: f32, c: f32) -> f32 {
        a * b + c
    }
}

/// One packed tile: `qn` query rows of `u` and `gn` gallery rows of `v`, each `stride` floats.
pub(crate) struct Tile<'a> {
    pub u: &'a [f32],
    pub v: &'a [f32],
    pub qn: usize,
    pub gn: usize,
    pub stride: usize,
}

/// Scratch of the layered path: two activation buffers of `PAIRS` rows.
#[derive(Default)]
pub(crate) struct Scratch {
    a: Vec<f32>,
    b: Vec<f32>,
}

/// Gallery rows the layered path carries through the head together.
const PAIRS: usize = 32;

/// P(same) of every pair of `tile` into `out` (`qn × gn`, row-major), on `isa`.
pub(crate) fn tile_probs(isa: Isa, head: &PairHead, t: &Tile, s: &mut Scratch, out: &mut [f32]) {
    match isa {
        // SAFETY: `Isa::available` detected these features on this CPU.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => unsafe { avx512(head, t, s, out) },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2Fma => unsafe { avx2(head, t, s, out) },
        // SAFETY: plain Rust, any CPU.
        _ => unsafe { probs::<Separate, 8, Portable>(head, t, s, out) },
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn avx512(head: &PairHead, t: &Tile, s: &mut Scratch, out: &mut [f32]) {
    // 256-bit registers for the fused head: measured interleaved on a 2-core AVX-512 Xeon, 512-bit
    // ones ran it 1.4–1.8× slower (in blocks of 4 × 4 or 4 × 2 pairs), as heavy 512-bit
    // arithmetic lowers the clock and has fewer ports.
    probs::<Fused, 16, __m256>(head, t, s, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn avx2(head: &PairHead, t: &Tile, s: &mut Scratch, out: &mut [f32]) {
    probs::<Fused, 8, __m256>(head, t, s, out)
}

/// # Safety
/// The CPU runs `V`'s instruction set; `V::L == L`.
#[inline(always)]
unsafe fn probs<F: MulAdd, const L: usize, V: Simd>(
    head: &PairHead,
    t: &Tile,
    s: &mut Scratch,
    out: &mut [f32],
) {
    // Blocks sized so the accumulators (Q × G × M registers) and the Q query registers of a
    // chunk fit in 16 registers with room for the temporaries; 4 × 2 beat 4 × 4 with 32.
    match head.fused_rows() {
        Some(1) => fused::<V, 1, 4, 2>(head, t, out),
        Some(2) => fused::<V, 2, 2, 2>(head, t, out),
        Some(3) => fused::<V, 3, 2, 2>(head, t, out),
        Some(_) => fused::<V, 4, 2, 1>(head, t, out),
        None => layered::<F, L>(head, t, s, out),
    }
}

/// `s` as chunks of `L` floats (its length is a multiple of `PAD`, so of `L`).
#[inline(always)]
fn chunks<const L: usize>(s: &[f32]) -> &[[f32; L]] {
    s.as_chunks::<L>().0
}

/// Sum of the lanes, in a fixed order.
#[inline(always)]
fn hsum<const L: usize>(a: [f32; L]) -> f32 {
    let mut a = a;
    let mut n = L;
    while n > 1 {
        n /= 2;
        for i in 0..n {
            a[i] += a[i + n];
        }
    }
    a[0]
}

/// `max(0, s)` lane by lane, keeping NaN as PyTorch's ReLU does (one `max` instruction).
#[inline(always)]
fn relu_sum<const L: usize>(u: &[f32; L], v: &[f32; L]) -> [f32; L] {
    std::array::from_fn(|l| {
        let s = u[l] + v[l];
        if 0.0 > s {
            0.0
        } else {
            s
        }
    })
}

/// The fused head `w · relu(u + v) + b` with `M` rows in `w`, in blocks of `Q × G` pairs.
#[inline(always)]
unsafe fn fused<V: Simd, const M: usize, const Q: usize, const G: usize>(
    head: &PairHead,
    t: &Tile,
    out: &mut [f32],
) {
    let w: [*const f32; M] = std::array::from_fn(|m| head.layers[0].w[m * t.stride..].as_ptr());
    let row = |i: usize| t.u[i * t.stride..(i + 1) * t.stride].as_ptr();
    let mut q = 0;
    while q < t.qn {
        if q + Q <= t.qn {
            fused_rows::<V, M, Q, G>(head, std::array::from_fn(|k| row(q + k)), w, t, q, out);
            q += Q;
        } else {
            fused_rows::<V, M, 1, G>(head, [row(q)], w, t, q, out);
            q += 1;
        }
    }
}

/// Rows `q..q + Q` of the fused head against every gallery row of the tile.
#[inline(always)]
unsafe fn fused_rows<V: Simd, const M: usize, const Q: usize, const G: usize>(
    head: &PairHead,
    us: [*const f32; Q],
    w: [*const f32; M],
    t: &Tile,
    q: usize,
    out: &mut [f32],
) {
    let nc = t.stride / V::L;
    let row = |g: usize| t.v[g * t.stride..(g + 1) * t.stride].as_ptr();
    let b = &head.layers[0].b;
    // One log-odds per pair is turned into P(same) afterwards, a whole row at a time.
    let raw = M == 1 && head.output == Output::LogOdds;
    let mut emit = |k: usize, g: usize, z: [f32; M]| {
        let z: [f32; M] = std::array::from_fn(|m| z[m] + b[m]);
        out[(q + k) * t.gn + g] = if raw { z[0] } else { head.probability(&z) };
    };
    let mut g = 0;
    while g < t.gn {
        if g + G <= t.gn {
            let z = block::<V, M, Q, G>(us, std::array::from_fn(|j| row(g + j)), w, nc);
            for (k, zk) in z.into_iter().enumerate() {
                for (j, zj) in zk.into_iter().enumerate() {
                    emit(k, g + j, zj);
                }
            }
            g += G;
        } else {
            let z = block::<V, M, Q, 1>(us, [row(g)], w, nc);
            for (k, zk) in z.into_iter().enumerate() {
                emit(k, g, zk[0]);
            }
            g += 1;
        }
    }
    if raw {
        out[q * t.gn..(q + Q) * t.gn]
            .iter_mut()
            .for_each(|x| *x = log_odds(*x));
    }
}

/// `w[m] · relu(u[q] + v[g])` for a block of `Q × G` pairs over `nc` chunks, accumulators in
/// registers; every pair sees the same operations in the same order, whatever `Q` and `G`.
///
/// # Safety
/// Each pointer has `nc * V::L` readable floats; the CPU runs `V`'s instruction set.
#[inline(always)]
unsafe fn block<V: Simd, const M: usize, const Q: usize, const G: usize>(
    u: [*const f32; Q],
    v: [*const f32; G],
    w: [*const f32; M],
    nc: usize,
) -> [[[f32; M]; G]; Q] {
    let mut acc = [[[V::zero(); M]; G]; Q];
    for c in 0..nc {
        let at = c * V::L;
        let wc: [V; M] = std::array::from_fn(|m| V::load(w[m].add(at)));
        let uc: [V; Q] = std::array::from_fn(|k| V::load(u[k].add(at)));
        for j in 0..G {
            let vc = V::load(v[j].add(at));
            for k in 0..Q {
                let h = V::relu_sum(uc[k], vc);
                for m in 0..M {
                    acc[k][j][m] = V::mul_add(wc[m], h, acc[k][j][m]);
                }
            }
        }
    }
    acc.map(|a| a.map(|a| a.map(|x| x.hsum())))
}

/// Any other head: `PAIRS` pairs at a time through the sum, then each layer.
#[inline(always)]
fn layered<F: MulAdd, const L: usize>(head: &PairHead, t: &Tile, s: &mut Scratch, out: &mut [f32]) {
    let width = head.max_stride();
    s.a.resize(PAIRS * width, 0.0);
    s.b.resize(PAIRS * width, 0.0);
    for q in 0..t.qn {
        let u = &t.u[q * t.stride..(q + 1) * t.stride];
        for g0 in (0..t.gn).step_by(PAIRS) {
            let n = PAIRS.min(t.gn - g0);
            for (p, h) in s.a.chunks_exact_mut(width).take(n).enumerate() {
                let v = &t.v[(g0 + p) * t.stride..(g0 + p + 1) * t.stride];
                hidden::<L>(u, v, head.relu, &mut h[..t.stride]);
            }
            for layer in &head.layers {
                dense::<F, L>(layer, &s.a, &mut s.b, width, n);
                std::mem::swap(&mut s.a, &mut s.b);
            }
            let nl = head.n_logits();
            for (p, z) in s.a.chunks_exact(width).take(n).enumerate() {
                out[q * t.gn + g0 + p] = head.probability(&z[..nl]);
            }
        }
    }
}

/// `relu?(u + v)` into `h`.
#[inline(always)]
fn hidden<const L: usize>(u: &[f32], v: &[f32], relu: bool, h: &mut [f32]) {
    let (u, v) = (chunks::<L>(u), chunks::<L>(v));
    let h = h.as_chunks_mut::<L>().0;
    for ((h, u), v) in h.iter_mut().zip(u).zip(v) {
        *h = if relu {
            relu_sum(u, v)
        } else {
            std::array::from_fn(|l| u[l] + v[l])
        };
    }
}

/// `relu?(w x + b)` of `n` rows of `x` into `y` (rows of `width`), zero beyond `n_out`.
#[inline(always)]
fn dense<F: MulAdd, const L: usize>(
    layer: &Layer,
    x: &[f32],
    y: &mut [f32],
    width: usize,
    n: usize,
) {
    let si = padded(layer.n_in);
    let nc = si / L;
    for p in 0..n {
        let xr = &chunks::<L>(&x[p * width..])[..nc];
        let yr = &mut y[p * width..(p + 1) * width];
        yr.fill(0.0);
        for (o, yo) in yr.iter_mut().enumerate().take(layer.n_out) {
            let wr = &chunks::<L>(&layer.w[o * si..])[..nc];
            let mut acc = [0f32; L];
            for c in 0..nc {
                for l in 0..L {
                    acc[l] = F::mul_add(wr[c][l], xr[c][l], acc[l]);
                }
            }
            let z = hsum(acc) + layer.b[o];
            *yo = if layer.relu && 0.0 > z { 0.0 } else { z };
        }
    }
}
