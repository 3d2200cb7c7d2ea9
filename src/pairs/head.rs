//! What follows `u + v` in a split head, after Python folded every BatchNorm into a `Linear`.
use crate::bail;
use crate::error::Result;

/// Rows are padded to a multiple of this many floats: whole SIMD registers for every target.
pub const PAD: usize = 16;

/// `n` rounded up to a multiple of [`PAD`].
pub fn padded(n: usize) -> usize {
    n.div_ceil(PAD) * PAD
}

/// An affine map `w x + b` (`w` is `n_out × n_in`), optionally followed by a ReLU.
#[derive(Clone, Debug)]
pub struct Layer {
    pub n_in: usize,
    pub n_out: usize,
    /// `n_out` rows of `padded(n_in)` values, zero beyond `n_in`.
    pub(crate) w: Vec<f32>,
    pub(crate) b: Vec<f32>,
    pub relu: bool,
}

impl Layer {
    /// A layer from `w` (`n_out × n_in`, row-major) and `b` (`n_out`).
    pub fn new(w: &[f32], b: Vec<f32>, n_in: usize, relu: bool) -> Result<Layer> {
        let n_out = b.len();
        if n_in == 0 || n_out == 0 || w.len() != n_in * n_out {
            bail!(
                Shape,
                "layer: expected a weight of {n_out}×{n_in} values for {n_out} biases, got {}",
                w.len()
            );
        }
        let stride = padded(n_in);
        let mut packed = vec![0.0; n_out * stride];
        for (dst, src) in packed.chunks_exact_mut(stride).zip(w.chunks_exact(n_in)) {
            dst[..n_in].copy_from_slice(src);
        }
        Ok(Layer {
            n_in,
            n_out,
            w: packed,
            b,
            relu,
        })
    }
}

/// How the logits become P(same).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Output {
    /// One logit, `l1 - l0` of a two-class head: P(same) is its sigmoid.
    LogOdds,
    /// The head's logits (optionally through fastai's `SigmoidRange(low, high)`): P(same) is
    /// their softmax at class 1, computed as PyTorch's softmax does.
    Softmax { y_range: Option<(f32, f32)> },
}

/// The rest of a split head: `relu?(u + v)` of width `width`, then `layers`, then `output`.
#[derive(Clone, Debug)]
pub struct PairHead {
    pub width: usize,
    pub relu: bool,
    pub layers: Vec<Layer>,
    pub output: Output,
}

impl PairHead {
    /// Checks that the layers chain from `width` and end in logits `output` can read.
    pub fn new(width: usize, relu: bool, layers: Vec<Layer>, output: Output) -> Result<PairHead> {
        if width == 0 {
            bail!(Shape, "pair head: u and v need at least one column, got 0");
        }
        let mut n = width;
        for (i, l) in layers.iter().enumerate() {
            if l.n_in != n {
                bail!(
                    Shape,
                    "pair head: layer {i} takes {} inputs, expected {n}",
                    l.n_in
                );
            }
            n = l.n_out;
        }
        match output {
            Output::LogOdds if n != 1 => {
                bail!(Shape, "pair head: log-odds output needs 1 logit, got {n}")
            }
            Output::Softmax { .. } if n < 2 => {
                bail!(Shape, "pair head: P(same) is softmax(-1)[:, 1], which needs 2 or more logits, got {n}")
            }
            _ => {}
        }
        Ok(PairHead {
            width,
            relu,
            layers,
            output,
        })
    }

    /// Number of logits per pair.
    pub fn n_logits(&self) -> usize {
        self.layers.last().map_or(self.width, |l| l.n_out)
    }

    /// The widest activation (padded), for scratch buffers.
    pub(crate) fn max_stride(&self) -> usize {
        self.layers
            .iter()
            .map(|l| padded(l.n_out))
            .fold(padded(self.width), usize::max)
    }

    /// `Some(m)` when the head is `relu(u + v)` and one affine map to `m <= 4` logits: the
    /// shape the fused kernel computes without materialising the hidden layer.
    pub(crate) fn fused_rows(&self) -> Option<usize> {
        match self.layers.as_slice() {
            [l] if self.relu && !l.relu && l.n_out <= 4 => Some(l.n_out),
            _ => None,
        }
    }

    /// P(same) from a pair's logits `z` (biases included).
    #[inline(always)]
    pub(crate) fn probability(&self, z: &[f32]) -> f32 {
        match self.output {
            Output::LogOdds => log_odds(z[0]),
            Output::Softmax { y_range } => softmax1(z, y_range),
        }
    }
}

/// Sigmoid of `l1 - l0`, as PyTorch's softmax of the two logits computes it: `1 / (1 + e^-t)`
/// when class 1's logit is the larger, else `e^t / (1 + e^t)`, whose `e^t` underflows to
/// exactly 0 (through subnormals) where PyTorch's does. Not finite means a logit was infinite
/// or NaN, where PyTorch's softmax gives NaN, and so do we.
#[inline(always)]
pub(crate) fn log_odds(t: f32) -> f32 {
    let e = exp(-t.abs());
    let p = if t >= 0.0 {
        1.0 / (1.0 + e)
    } else {
        e / (1.0 + e)
    };
    if t.is_finite() {
        p
    } else {
        f32::NAN
    }
}

/// `e^x` within 2 ulp for `x <= 0` (Cephes' `expf`; 1 above), down to subnormal results and exactly 0
/// below them, with only arithmetic and bit operations so that it vectorises (libm's `expf`
/// is a call per value).
#[inline(always)]
fn exp(x: f32) -> f32 {
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // Below -104, e^x is under half the smallest subnormal: it rounds to 0.
    let x = x.clamp(-104.0, 0.0);
    let n = (x * std::f32::consts::LOG2_E + 0.5).floor();
    let r = x - n * LN2_HI - n * LN2_LO;
    // Plain products and sums: `mul_add` is a libm call on targets without FMA.
    let p = 1.987_569_1e-4_f32 * r + 1.398_199_9e-3;
    let p = p * r + 8.333_452e-3;
    let p = p * r + 4.166_579_6e-2;
    let p = p * r + 1.666_666_5e-1;
    let p = p * r + 0.5;
    let p = p * r * r + r + 1.0;
    // 2^n in two normal factors (n reaches -150): the second product rounds once, to a subnormal.
    let n = n as i32;
    let (n1, n2) = (n / 2, n - n / 2);
    let pow2 = |k: i32| f32::from_bits(((k + 127) as u32) << 23);
    p * pow2(n1) * pow2(n2)
}

/// `softmax(z)[1]` as PyTorch computes it (max subtracted), after `SigmoidRange` if any.
fn softmax1(z: &[f32], y_range: Option<(f32, f32)>) -> f32 {
    let mut buf = [0f32; 8];
    let z: &[f32] = match y_range {
        Some((low, high)) if z.len() <= buf.len() => {
            for (b, x) in buf.iter_mut().zip(z) {
                *b = 1.0 / (1.0 + (-x).exp()) * (high - low) + low;
            }
            &buf[..z.len()]
        }
        Some((low, high)) => {
            let y: Vec<f32> = z
                .iter()
                .map(|x| 1.0 / (1.0 + (-x).exp()) * (high - low) + low)
                .collect();
            return softmax1(&y, None);
        }
        None => z,
    };
    let m = z.iter().copied().fold(
        f32::NEG_INFINITY,
        |a, b| {
            if b > a || b.is_nan() {
                b
            } else {
                a
            }
        },
    );
    let sum: f32 = z.iter().map(|x| (x - m).exp()).sum();
    (z[1] - m).exp() / sum
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layers_must_chain() {
        let l = Layer::new(&[1.0; 6], vec![0.0; 2], 3, false).unwrap();
        assert!(PairHead::new(3, true, vec![l.clone()], Output::Softmax { y_range: None }).is_ok());
        assert!(
            PairHead::new(4, true, vec![l.clone()], Output::Softmax { y_range: None }).is_err()
        );
        assert!(PairHead::new(3, true, vec![l], Output::LogOdds).is_err());
        assert!(Layer::new(&[1.0; 5], vec![0.0; 2], 3, false).is_err());
    }

    #[test]
    fn log_odds_reach_exact_zero_and_one_as_pytorch() {
        // PyTorch: e^t / (1 + e^t) for t < 0, subnormal down to t = -103.9, then 0.
        for t in [-200.0f32, -104.5, -150.0] {
            assert_eq!(log_odds(t), 0.0, "{t}");
        }
        for t in [-100.0f32, -95.0, -88.5, -87.0, -60.0, -20.0] {
            let want = t.exp() / (1.0 + t.exp());
            assert!(
                want > 0.0 && (log_odds(t) - want).abs() <= want * 1e-6,
                "{t}"
            );
        }
        for t in [17.0f32, 50.0, 88.5, 200.0] {
            assert_eq!(log_odds(t), 1.0, "{t}");
        }
        assert!(log_odds(f32::NEG_INFINITY).is_nan() && log_odds(f32::NAN).is_nan());
    }

    #[test]
    fn weights_are_padded_with_zeros() {
        let l = Layer::new(&[1.0, 2.0, 3.0, 4.0], vec![0.0; 2], 2, false).unwrap();
        assert_eq!(l.w.len(), 2 * PAD);
        assert_eq!((l.w[0], l.w[1], l.w[2], l.w[PAD]), (1.0, 2.0, 0.0, 3.0));
    }

    #[test]
    fn outputs_match_softmax() {
        let soft = Output::Softmax { y_range: None };
        let h = PairHead::new(2, false, vec![], soft).unwrap();
        let p = h.probability(&[0.3, 1.1]);
        assert!((p - 1.0 / (1.0 + (-0.8f32).exp())).abs() < 1e-7);
        assert!(h.probability(&[f32::INFINITY, 0.0]).is_nan());
        let h1 = PairHead::new(1, false, vec![], Output::LogOdds).unwrap();
        assert!((h1.probability(&[0.8]) - p).abs() < 1e-7);
        assert!(h1.probability(&[f32::NAN]).is_nan());
        let yr = PairHead::new(
            2,
            false,
            vec![],
            Output::Softmax {
                y_range: Some((-1.0, 2.0)),
            },
        );
        let s = |x: f32| 3.0 / (1.0 + (-x).exp()) - 1.0;
        let want = 1.0 / (1.0 + (s(0.3) - s(1.1)).exp());
        assert!((yr.unwrap().probability(&[0.3, 1.1]) - want).abs() < 1e-6);
    }
}
