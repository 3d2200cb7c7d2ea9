//! Layout and batching policy, apart from what is computed: where oneDNN's blocked layout is used,
//! when inputs are converted back, and how large batches are chunked. Every choice here gives the
//! reference's values (bench/ measured what each gains).
use super::{Exec, Run};
use crate::error::Result;
use crate::nn::container::Layout;
use crate::nn::ops::Op;
use tch::Tensor;

/// Pixels a chunk of the encoder's batch holds in eval: 8 images at 224 px, where the
/// activations still fit in cache (bench/: densenet121 at 32 x 224 px is 2x faster in chunks).
const CHUNK_PIXELS: i64 = 8 * 224 * 224;

/// Pair batches below this size (of small images) run both sides in one encoder call.
const SMALL_BATCH: i64 = 16;

/// Images up to this many pixels take the batched path in eval.
const SMALL_IMAGE: i64 = 96 * 96;

/// Whether a pair batch of `b` images of `pixels` pixels runs both sides in one encoder call.
/// With running stats and no dropout that is exact, and small batches of small images make better
/// use of the convolution kernels together (bench/: 1.3-2.9x at 64 px). Larger batches go side by
/// side, in chunks, so that no more activations are alive at once than in the reference; at
/// 224 px batching the two sides gained too little for the doubled memory.
pub(crate) fn both_sides_at_once(encoder: &Exec, b: i64, pixels: i64) -> bool {
    encoder.is_batch_independent() && pixels <= SMALL_IMAGE && b < SMALL_BATCH
}

/// `x` as module `m` takes it: a blocked input is converted unless `m` computes the same on it.
pub(super) fn arriving(m: &Exec, x: Tensor) -> Result<Tensor> {
    if !x.is_mkldnn() || takes_blocked(m, &x) {
        return Ok(x);
    }
    let x = dense(x)?;
    match m.container_layout() {
        Some(Layout::ChannelsLast) => channels_last(x),
        _ => Ok(x),
    }
}

/// Whether `m` computes on oneDNN-blocked tensors as it does on dense ones.
fn takes_blocked(m: &Exec, x: &Tensor) -> bool {
    if let Some(layout) = m.container_layout() {
        return layout == Layout::Blocked;
    }
    match m.op() {
        // oneDNN's batch norm is the eval form with running statistics and both affine tensors.
        Some(Op::BatchNorm {
            dim: 2,
            running: true,
            affine: true,
            ..
        }) => !m.training,
        Some(Op::Dropout { .. }) => !m.training,
        // oneDNN pools adaptively only when the output size divides the input's (VGG's 7×7
        // after a 1×1 feature map does not).
        Some(Op::AdaptiveAvg(size)) => {
            let dims = x.size();
            size.iter()
                .zip(dims.iter().skip(dims.len().saturating_sub(2)))
                .all(|(s, &d)| s.is_none_or(|s| s > 0 && d % s == 0))
        }
        // oneDNN's max pool refuses dilation, and skips the checks of PyTorch's kernel
        // (it pads with -FLT_MAX where PyTorch refuses a padding over half the kernel).
        Some(Op::MaxPool2d {
            k,
            stride,
            padding,
            dilation,
            ..
        }) => {
            let within = k.iter().zip(padding).all(|(&k, &p)| p >= 0 && 2 * p <= k);
            within && dilation.iter().all(|&d| d == 1) && stride.iter().all(|&s| s > 0)
        }
        Some(Op::Conv2d { .. } | Op::ReLU { .. } | Op::Identity) => true,
        _ => false,
    }
}

/// The encoder `m` on a batch of images, densely laid out. Without batch statistics a large
/// batch runs in chunks of at most `max_images`, which gives the same values: each chunk's
/// activations stay in cache and only one chunk's are alive. The blocked layout is used only
/// then, and is rerun densely when a NaN or infinity may have met an op that hides it.
pub(crate) fn encode(m: &Exec, x: Tensor, t: &Run, fast: bool, max_images: i64) -> Result<Tensor> {
    if !fast || !m.is_batch_independent() {
        return encode_in(m, x, t, false, max_images);
    }
    let out = encode_in(m, x.shallow_clone(), t, true, max_images)?;
    if t.all_finite()? {
        return Ok(out);
    }
    encode_in(m, x, t, false, max_images)
}

fn encode_in(m: &Exec, x: Tensor, t: &Run, fast: bool, max_images: i64) -> Result<Tensor> {
    let s = x.size();
    let pixels = s.iter().skip(2).product::<i64>().max(1);
    let most = (CHUNK_PIXELS / pixels).clamp(1, max_images.max(1));
    let n = s.first().copied().unwrap_or(0);
    if !m.is_batch_independent() || n <= most {
        return dense(m.run(blocked(x, fast)?, t)?);
    }
    // Chunks of equal size: 128 images in two of 64 rather than 98 and 30 (bench/: a convolution's
    // speed falls with its batch at small images, 1.1-1.3x from 64 to 32 images of 64 px).
    let parts = (n + most - 1) / most;
    let chunk = (n + parts - 1) / parts;
    let outs = x
        .f_split(chunk, 0)?
        .into_iter()
        .map(|c| dense(m.run(blocked(c, fast)?, t)?))
        .collect::<Result<Vec<_>>>()?;
    Ok(Tensor::f_cat(&outs, 0)?)
}

/// `x` in oneDNN's blocked layout when `fast` allows it and oneDNN takes this tensor. Python
/// asks for it with float32 inputs, and with bfloat16 ones only for a frozen bfloat16 model.
fn blocked(x: Tensor, fast: bool) -> Result<Tensor> {
    let kind_ok = matches!(x.kind(), tch::Kind::Float | tch::Kind::BFloat16);
    let ok = fast && kind_ok && x.device() == tch::Device::Cpu && x.dim() == 4;
    Ok(if ok { x.f_to_mkldnn(None)? } else { x })
}

/// `x` as an ordinary strided tensor.
pub(crate) fn dense(x: Tensor) -> Result<Tensor> {
    Ok(if x.is_mkldnn() {
        x.f_to_dense(None, false)?
    } else {
        x
    })
}

/// A 4-d tensor in channels-last order, which oneDNN's convolutions and PyTorch's BatchNorm,
/// concatenation and pooling take without reordering. DenseNet's blocks, which concatenate
/// and cannot stay blocked, run 1.2-1.4x faster so (bench/); the values match the reference
/// within 1e-5. Elsewhere (e.g. SqueezeNet's Fire) it gains nothing and rounds differently.
fn channels_last(x: Tensor) -> Result<Tensor> {
    if x.dim() != 4 {
        return Ok(x);
    }
    Ok(x.f_permute([0, 2, 3, 1])?
        .f_contiguous()?
        .f_permute([0, 3, 1, 2])?)
}

/// Both tensors in one layout (blocked only if both are).
pub(crate) fn same_layout(a: Tensor, b: Tensor) -> Result<(Tensor, Tensor)> {
    if a.is_mkldnn() == b.is_mkldnn() {
        return Ok((a, b));
    }
    Ok((dense(a)?, dense(b)?))
}
