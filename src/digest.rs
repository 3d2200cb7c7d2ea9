//! A cheap fingerprint of many tensors' current values, for objects derived from a model (a pair
//! index, a frozen model) to notice that the model moved on. fastai's optimisers write through
//! `p.data`, which leaves version counters alone, so values must be compared; reading a strided
//! sample of each tensor's memory costs microseconds where PyTorch ops cost a dispatch per tensor.
use crate::error::Result;
use tch::{Device, Tensor};

/// A 64-bit digest of up to `per_tensor` evenly spaced elements of each tensor (their bit
/// patterns, so NaN equals NaN), with each tensor's position and size. Equal digests mean, with
/// high probability, that no sampled value changed.
pub fn sample_digest(tensors: &[Tensor], per_tensor: usize) -> Result<u64> {
    let mut h = Hasher::default();
    for (i, t) in tensors.iter().enumerate() {
        h.add(i as u64);
        h.add(t.numel() as u64);
        if t.numel() == 0 || t.is_mkldnn() {
            continue;
        }
        if t.device() == Device::Cpu && t.is_contiguous() {
            sample_raw(t, per_tensor, &mut h);
        } else {
            // Other devices and layouts: gather the sample with one copy to the CPU.
            let step = step(t.numel(), per_tensor) as i64;
            let flat = t.f_reshape([-1])?;
            let sample = flat
                .f_slice(0, 0, t.numel() as i64, step)?
                .f_to_device(Device::Cpu)?
                .f_contiguous()?;
            sample_raw(&sample, per_tensor, &mut h);
        }
    }
    Ok(h.0)
}

fn step(numel: usize, per_tensor: usize) -> usize {
    (numel / per_tensor.max(1)).max(1)
}

/// Hashes the bytes of the sampled elements of a contiguous CPU tensor.
fn sample_raw(t: &Tensor, per_tensor: usize, h: &mut Hasher) {
    let (n, size) = (t.numel(), t.kind().elt_size_in_bytes());
    let base = t.data_ptr() as *const u8;
    if base.is_null() {
        return;
    }
    for i in (0..n).step_by(step(n, per_tensor)).take(per_tensor) {
        // SAFETY: `t` is contiguous with `n` elements of `size` bytes from `base`, and `i < n`,
        // so the bytes read lie inside its storage; unaligned reads need no alignment.
        let v = unsafe {
            let p = base.add(i * size);
            match size {
                16 => {
                    let hi = std::ptr::read_unaligned(p.add(8) as *const u64);
                    std::ptr::read_unaligned(p as *const u64) ^ hi.rotate_left(32)
                }
                8 => std::ptr::read_unaligned(p as *const u64),
                4 => std::ptr::read_unaligned(p as *const u32) as u64,
                2 => std::ptr::read_unaligned(p as *const u16) as u64,
                _ => *p as u64,
            }
        };
        h.add(v);
    }
}

/// FxHash's multiply-rotate mixing: fast, and enough to tell changed samples apart.
#[derive(Default)]
struct Hasher(u64);

impl Hasher {
    fn add(&mut self, v: u64) {
        self.0 = (self.0.rotate_left(5) ^ v).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_sees_a_sampled_change_and_nothing_else() {
        let a = Tensor::arange(5000, (tch::Kind::Float, Device::Cpu));
        let b = Tensor::ones([3, 4], (tch::Kind::Double, Device::Cpu));
        let d = sample_digest(&[a.shallow_clone(), b.shallow_clone()], 64).unwrap();
        assert_eq!(d, sample_digest(&[a.copy(), b.copy()], 64).unwrap());
        let _ = b.shallow_clone().f_mul_scalar_(2.0).unwrap();
        assert_ne!(d, sample_digest(&[a.shallow_clone(), b.shallow_clone()], 64).unwrap());
        let nan = Tensor::full([10], f64::NAN, (tch::Kind::Float, Device::Cpu));
        let dn = sample_digest(&[nan.shallow_clone()], 4).unwrap();
        assert_eq!(dn, sample_digest(&[nan.copy()], 4).unwrap());
    }

    #[test]
    fn strided_tensors_are_sampled_through_a_copy() {
        let a = Tensor::randn([64, 64], (tch::Kind::Float, Device::Cpu));
        let t = a.tr();
        assert_eq!(
            sample_digest(&[t.shallow_clone()], 100).unwrap(),
            sample_digest(&[t.contiguous()], 100).unwrap()
        );
    }
}
