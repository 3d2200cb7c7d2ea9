//! The stateless executor. Python sends the module tree (kinds, settings, training flags) once
//! and the current parameter and buffer tensors on every call, so the core never computes with
//! stale tensors after `.to()`, `load_state_dict` or unpickling.
use super::kind::{Kind, Value};
use super::ops::Op;
use crate::bail;
use crate::error::Result;
use std::cell::RefCell;
use tch::Tensor;

mod families;

/// One module as Python describes it, in pre-order.
#[derive(Clone, Debug)]
pub struct FlatModule {
    pub kind: Kind,
    pub settings: Vec<Value>,
    pub n_children: usize,
    pub training: bool,
    /// Which of `kind.tensors()` the module holds (the others are `None` in PyTorch's forward).
    pub present: Vec<bool>,
}

/// A compiled module tree; `forward` takes the tensor slots in the order the modules listed them.
#[derive(Debug)]
pub struct Graph {
    root: Exec,
    n_tensors: usize,
}

#[derive(Debug)]
struct Exec {
    op: Op,
    children: Vec<Exec>,
    /// Index of this module's first tensor slot in the flat tensor list.
    first: usize,
    /// How many slots it has (`kind.tensors().len()`).
    slots: usize,
    training: bool,
    /// The `F.dropout` rate a torchvision `_DenseLayer` applies to its output (0 elsewhere).
    drop_rate: f64,
}

impl Graph {
    /// Compiles a pre-order list of modules.
    pub fn compile(modules: &[FlatModule]) -> Result<Graph> {
        let (mut pos, mut n_tensors) = (0, 0);
        let root = compile_at(modules, &mut pos, &mut n_tensors)?;
        if pos != modules.len() {
            bail!(
                Value,
                "module list has {} entries but the tree uses {pos}",
                modules.len()
            );
        }
        Ok(Graph { root, n_tensors })
    }

    /// The root's kind.
    pub fn kind(&self) -> Kind {
        match &self.root.op {
            Op::Container(k) => *k,
            _ => Kind::Sequential,
        }
    }

    /// Runs the tree on `inputs` (two for a SiameseModel, one otherwise). `fast` allows oneDNN's
    /// blocked layout for the convolutional part; the caller sets it only without autograd or
    /// autocast, where it gives the same values faster (bench/).
    pub fn forward(
        &self,
        tensors: &[Option<Tensor>],
        inputs: Vec<Tensor>,
        fast: bool,
    ) -> Result<Tensor> {
        if tensors.len() != self.n_tensors {
            bail!(
                Value,
                "expected {} parameter/buffer tensors, got {}",
                self.n_tensors,
                tensors.len()
            );
        }
        let want = if matches!(self.root.op, Op::Container(Kind::SiameseModel)) {
            2
        } else {
            1
        };
        if inputs.len() != want {
            bail!(
                Type,
                "forward() takes {want} input tensor(s), got {}",
                inputs.len()
            );
        }
        let t = &Run {
            tensors,
            probes: RefCell::new(vec![]),
        };
        let mut inputs = inputs.into_iter();
        let Some(x) = inputs.next() else {
            bail!(Type, "forward() takes {want} input tensor(s), got none")
        };
        match inputs.next() {
            Some(x2) => self.root.siamese(x, x2, t, fast),
            None => {
                let n = x.size().first().copied().unwrap_or(1);
                self.root.encode(x, t, fast, n)
            }
        }
    }
}

fn compile_at(modules: &[FlatModule], pos: &mut usize, n_tensors: &mut usize) -> Result<Exec> {
    let Some(m) = modules.get(*pos) else {
        bail!(Value, "module list ends early at entry {pos}")
    };
    *pos += 1;
    let op = Op::compile(m.kind, &m.settings, &m.present)?;
    let drop_rate = families::drop_rate(m)?;
    let (first, slots) = (*n_tensors, m.present.len());
    *n_tensors += slots;
    let children = (0..m.n_children)
        .map(|_| compile_at(modules, pos, n_tensors))
        .collect::<Result<Vec<_>>>()?;
    let exec = Exec {
        op,
        children,
        first,
        slots,
        training: m.training,
        drop_rate,
    };
    exec.check_arity()?;
    Ok(exec)
}

impl Exec {
    /// Containers that index their children need the reference's child count.
    fn check_arity(&self) -> Result<()> {
        let n = self.children.len();
        let ok = match self.op {
            Op::Container(k) => k.children().is_none_or(|names| names.len() == n),
            _ => n == 0,
        };
        if !ok {
            let name = match self.op {
                Op::Container(k) => k.name(),
                _ => "a layer",
            };
            bail!(Value, "{name} cannot run with {n} children");
        }
        Ok(())
    }

    fn run(&self, x: Tensor, t: &Run) -> Result<Tensor> {
        let x = if x.is_mkldnn() && !self.takes_blocked(&x) {
            let x = dense(x)?;
            if matches!(self.op, Op::Container(Kind::_DenseBlock)) {
                channels_last(x)?
            } else {
                x
            }
        } else {
            x
        };
        let c = &self.children;
        match self.op {
            Op::Container(Kind::BasicBlock) => self.residual(x, t, &[0, 1, 2, 3, 4], 2, 5),
            Op::Container(Kind::Bottleneck) => self.residual(x, t, &[0, 1, 6, 2, 3, 6, 4, 5], 6, 7),
            Op::Container(Kind::ResNet) => {
                let x = chain(&c[..9], x, t)?.f_flatten(1, -1)?;
                c[9].run(x, t)
            }
            Op::Container(k) if families::runs(k) => self.run_family(k, x, t),
            Op::Container(Kind::AdaptiveConcatPool2d) => {
                let mp = c[1].run(x.shallow_clone(), t)?;
                let ap = c[0].run(x, t)?;
                Ok(Tensor::f_cat(&[mp, ap], 1)?)
            }
            Op::Container(Kind::SiameseModel) => {
                bail!(Type, "SiameseModel.forward takes two inputs (x1, x2)")
            }
            Op::Container(_) => chain(c, x, t),
            _ => {
                if x.is_mkldnn() && self.op.may_hide_nan() {
                    t.probe(&x)?;
                }
                let slots = &t.tensors[self.first..self.first + self.slots];
                self.op.forward_leaf(x, slots, self.training)
            }
        }
    }

    /// torchvision's residual blocks: `order` lists the main path's children (the shared ReLU
    /// appears where it is applied), `relu` is the child applied after the skip is added and
    /// `base` the `downsample` (the identity when the block has none).
    fn residual(
        &self,
        x: Tensor,
        t: &Run,
        order: &[usize],
        relu: usize,
        base: usize,
    ) -> Result<Tensor> {
        let c = &self.children;
        let out = order
            .iter()
            .try_fold(x.shallow_clone(), |y, &i| c[i].run(y, t))?;
        let identity = c[base].run(x, t)?;
        let (out, identity) = same_layout(out, identity)?;
        let out = out.shallow_clone().f_add_(&identity)?;
        c[relu].run(out, t)
    }

    /// `head(cat([encoder(x1), encoder(x2)], dim=1))`.
    fn siamese(&self, x1: Tensor, x2: Tensor, t: &Run, fast: bool) -> Result<Tensor> {
        let (s1, s2) = (x1.size(), x2.size());
        if s1 != s2 {
            bail!(Shape, "x1 and x2 must have the same shape (batch, channels, height, width); got x1 {s1:?} and x2 {s2:?}");
        }
        if s1.len() != 4 {
            bail!(
                Shape,
                "x1 and x2 must be 4-d (batch, channels, height, width); got shape {s1:?}"
            );
        }
        let (encoder, head) = (&self.children[0], &self.children[1]);
        let (b, pixels) = (s1[0], s1[2] * s1[3]);
        let features = if encoder.is_batch_independent() && pixels <= SMALL_IMAGE && b < SMALL_BATCH
        {
            // With running stats and no dropout one encoder call on both images is exact, and
            // small batches of small images make better use of the convolution kernels together
            // (bench/: 1.3-2.9x at 64 px). Larger batches go side by side, in chunks, so that no
            // more activations are alive at once than in the reference; at 224 px batching the
            // two sides gained too little for the doubled memory.
            let both = Tensor::f_cat(&[x1, x2], 0)?;
            let f = encoder.encode(both, t, fast, 2 * b)?;
            Tensor::f_cat(&[f.f_narrow(0, 0, b)?, f.f_narrow(0, b, b)?], 1)?
        } else {
            let f1 = encoder.encode(x1, t, fast, b)?;
            let f2 = encoder.encode(x2, t, fast, b)?;
            Tensor::f_cat(&[f1, f2], 1)?
        };
        if let Some(want) = head.input_channels(t) {
            let got = features.size().get(1).copied().unwrap_or(0);
            if got != want {
                bail!(
                    Shape,
                    "the head expects {want} input channels but the two encoder outputs concatenate to {got}; \
                     build it with create_head({got}, n_out) (create_head doubles nf itself for concat pooling)"
                );
            }
        }
        head.run(features, t)
    }

    /// The encoder on a batch of images, densely laid out. Without batch statistics a large
    /// batch runs in chunks of at most `max_images`, which gives the same values: each chunk's
    /// activations stay in cache and only one chunk's are alive. The blocked layout is used only
    /// then, and is rerun densely when a NaN or infinity may have met an op that hides it.
    fn encode(&self, x: Tensor, t: &Run, fast: bool, max_images: i64) -> Result<Tensor> {
        if !fast || !self.is_batch_independent() {
            return self.encode_in(x, t, false, max_images);
        }
        let out = self.encode_in(x.shallow_clone(), t, true, max_images)?;
        if t.all_finite()? {
            return Ok(out);
        }
        self.encode_in(x, t, false, max_images)
    }

    fn encode_in(&self, x: Tensor, t: &Run, fast: bool, max_images: i64) -> Result<Tensor> {
        let s = x.size();
        let pixels = s.iter().skip(2).product::<i64>().max(1);
        let chunk = (CHUNK_PIXELS / pixels).clamp(1, max_images.max(1));
        if !self.is_batch_independent() || s.first().is_none_or(|&n| n <= chunk) {
            return dense(self.run(blocked(x, fast)?, t)?);
        }
        let parts = x
            .f_split(chunk, 0)?
            .into_iter()
            .map(|c| dense(self.run(blocked(c, fast)?, t)?))
            .collect::<Result<Vec<_>>>()?;
        Ok(Tensor::f_cat(&parts, 0)?)
    }

    /// Whether this module computes on oneDNN-blocked tensors as it does on dense ones.
    fn takes_blocked(&self, x: &Tensor) -> bool {
        match self.op {
            Op::Container(k) => matches!(
                k,
                Kind::Sequential
                    | Kind::BasicBlock
                    | Kind::Bottleneck
                    | Kind::ConvLayer
                    | Kind::ResBlock
                    | Kind::XResNet
                    | Kind::_Transition
            ),
            // oneDNN's batch norm is the eval form with running statistics and both affine tensors.
            Op::BatchNorm {
                dim: 2,
                running: true,
                affine: true,
                ..
            } => !self.training,
            Op::Dropout { .. } => !self.training,
            // oneDNN pools adaptively only when the output size divides the input's (VGG's 7×7
            // after a 1×1 feature map does not).
            Op::AdaptiveAvg(ref size) => {
                let dims = x.size();
                size.iter()
                    .zip(dims.iter().skip(dims.len().saturating_sub(2)))
                    .all(|(&s, &d)| s < 0 || (s > 0 && d % s == 0))
            }
            // oneDNN's max pool refuses dilation, and skips the checks of PyTorch's kernel
            // (it pads with -FLT_MAX where PyTorch refuses a padding over half the kernel).
            Op::MaxPool2d {
                ref k,
                ref stride,
                ref padding,
                ref dilation,
                ..
            } => {
                let within = k.iter().zip(padding).all(|(&k, &p)| p >= 0 && 2 * p <= k);
                within && dilation.iter().all(|&d| d == 1) && stride.iter().all(|&s| s > 0)
            }
            Op::Conv2d { .. } | Op::ReLU { .. } | Op::Identity => true,
            _ => false,
        }
    }

    /// True when no module in the subtree uses batch statistics or random masks.
    fn is_batch_independent(&self) -> bool {
        let own = match self.op {
            Op::BatchNorm { running, .. } => !self.training && running,
            Op::Dropout { p, .. } => !self.training || p == 0.0,
            Op::Container(Kind::_DenseLayer) => !self.training || self.drop_rate == 0.0,
            _ => true,
        };
        own && self.children.iter().all(Exec::is_batch_independent)
    }

    /// Channels a head expects: the first BatchNorm/Linear width, halved after a concat pool.
    fn input_channels(&self, t: &Run) -> Option<i64> {
        let mut concat = false;
        for c in &self.children {
            let first = t.tensors.get(c.first).and_then(Option::as_ref);
            let width = match &c.op {
                Op::Container(Kind::AdaptiveConcatPool2d) => {
                    concat = true;
                    continue;
                }
                Op::BatchNorm { dim: 1, .. } => {
                    c.slot_tensors(t).flatten().map(Tensor::numel).next()? as i64
                }
                Op::Linear => *first?.size().get(1)?,
                Op::Conv2d { .. } | Op::BatchNorm { .. } | Op::Container(_) => return None,
                _ => continue,
            };
            return Some(if concat { width / 2 } else { width });
        }
        None
    }

    /// This module's tensor slots.
    fn slot_tensors<'t>(&self, t: &'t Run) -> impl Iterator<Item = Option<&'t Tensor>> {
        t.tensors[self.first..self.first + self.slots]
            .iter()
            .map(Option::as_ref)
    }
}

/// The tensors of one forward call, and what the blocked layout has to check afterwards.
struct Run<'a> {
    tensors: &'a [Option<Tensor>],
    /// Per-channel means of the blocked inputs of ops that hide NaN (oneDNN's ReLU maps NaN
    /// to 0, its max pool skips it): a NaN or infinity anywhere in such an input makes its mean
    /// non-finite, where PyTorch's dense kernels would have carried it to the output.
    probes: RefCell<Vec<Tensor>>,
}

impl Run<'_> {
    fn probe(&self, x: &Tensor) -> Result<()> {
        let mean = dense(x.f_adaptive_avg_pool2d([1, 1])?)?.f_flatten(0, -1)?;
        self.probes.borrow_mut().push(mean);
        Ok(())
    }

    /// Whether every probe since the last call is finite (and forgets them).
    fn all_finite(&self) -> Result<bool> {
        let probes = std::mem::take(&mut *self.probes.borrow_mut());
        if probes.is_empty() {
            return Ok(true);
        }
        let all = Tensor::f_cat(&probes, 0)?.f_isfinite()?.f_all()?;
        Ok(all.f_int64_value(&[])? != 0)
    }
}

/// `x` in oneDNN's blocked layout when `fast` allows it and oneDNN takes this tensor. Python
/// asks for it with float32 inputs, and with bfloat16 ones only for a frozen bfloat16 model.
fn blocked(x: Tensor, fast: bool) -> Result<Tensor> {
    let kind_ok = matches!(x.kind(), tch::Kind::Float | tch::Kind::BFloat16);
    let ok = fast && kind_ok && x.device() == tch::Device::Cpu && x.dim() == 4;
    Ok(if ok { x.f_to_mkldnn(None)? } else { x })
}

/// `x` as an ordinary strided tensor.
fn dense(x: Tensor) -> Result<Tensor> {
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
fn same_layout(a: Tensor, b: Tensor) -> Result<(Tensor, Tensor)> {
    if a.is_mkldnn() == b.is_mkldnn() {
        return Ok((a, b));
    }
    Ok((dense(a)?, dense(b)?))
}

/// Pixels a chunk of the encoder's batch holds in eval: 8 images at 224 px, where the
/// activations still fit in cache (bench/: densenet121 at 32 x 224 px is 2x faster in chunks).
const CHUNK_PIXELS: i64 = 8 * 224 * 224;

/// Pair batches below this size (of small images) run both sides in one encoder call.
const SMALL_BATCH: i64 = 16;

/// Images up to this many pixels take the batched path in eval.
const SMALL_IMAGE: i64 = 96 * 96;

fn chain(children: &[Exec], x: Tensor, t: &Run) -> Result<Tensor> {
    children.iter().try_fold(x, |x, c| c.run(x, t))
}
