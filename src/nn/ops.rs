//! Leaf operations: the settings each needs, compiled once, and its forward on libtorch.
//! Every call mirrors what the PyTorch module's `forward` calls, so results are bit-identical.
use super::kind::{Kind, Value};
use super::settings::Settings;
use crate::bail;
use crate::error::Result;
use tch::Tensor;

/// A layer compiled for execution, its settings typed (containers are `nn::container`'s).
/// Tensors are not part of it: the executor hands each leaf the tensors of `Kind::tensors`,
/// each `None` when the module holds none under that name (as PyTorch's `forward` sees it).
#[derive(Clone, Debug)]
pub enum Op {
    Conv2d {
        stride: Vec<i64>,
        padding: Vec<i64>,
        dilation: Vec<i64>,
        groups: i64,
    },
    BatchNorm {
        dim: i64,
        eps: f64,
        momentum: Option<f64>,
        track: bool,
        /// Whether `running_mean` and `running_var` are both there (eval then uses them).
        running: bool,
        /// Whether `weight` and `bias` are both there.
        affine: bool,
    },
    Linear,
    ReLU {
        inplace: bool,
    },
    MaxPool2d {
        k: Vec<i64>,
        stride: Vec<i64>,
        padding: Vec<i64>,
        dilation: Vec<i64>,
        ceil: bool,
    },
    AvgPool2d {
        k: Vec<i64>,
        stride: Vec<i64>,
        padding: Vec<i64>,
        ceil: bool,
        count_pad: bool,
    },
    /// Output sizes; `None` keeps the input's size (PyTorch's `(None, 7)`).
    AdaptiveAvg(Vec<Option<i64>>),
    AdaptiveMax(Vec<Option<i64>>),
    Flatten {
        full: bool,
    },
    Dropout {
        p: f64,
        inplace: bool,
    },
    SigmoidRange {
        low: f64,
        high: f64,
    },
    /// `nn.Identity` (what a folded BatchNorm becomes in a frozen model).
    Identity,
}

impl Op {
    /// Compiles `kind` with its settings; `present` says which of `kind.tensors()` are there.
    pub fn compile(kind: Kind, settings: &[Value], present: &[bool]) -> Result<Op> {
        let names = kind.tensors();
        if present.len() != names.len() {
            bail!(
                Value,
                "{}: expected {} tensor slots ({}), got {}",
                kind.name(),
                names.len(),
                names.join(", "),
                present.len()
            );
        }
        let has = |name: &str| names.iter().zip(present).any(|(n, &p)| *n == name && p);
        let s = Settings(kind, settings);
        if matches!(kind, Kind::Conv2d | Kind::Linear) && !has("weight") {
            bail!(Value, "{}: weight is None", kind.name());
        }
        Ok(match kind {
            Kind::Conv2d => Op::Conv2d {
                stride: s.ints("stride", 2, &[1, 1])?,
                padding: s.ints("padding", 2, &[0, 0])?,
                dilation: s.ints("dilation", 2, &[1, 1])?,
                groups: s.int("groups")?,
            },
            Kind::BatchNorm1d | Kind::BatchNorm2d => Op::BatchNorm {
                dim: if kind == Kind::BatchNorm1d { 1 } else { 2 },
                eps: s.float("eps")?,
                momentum: s.opt_float("momentum")?,
                track: s.bool("track_running_stats")?,
                running: has("running_mean") && has("running_var"),
                affine: has("weight") && has("bias"),
            },
            Kind::Linear => Op::Linear,
            Kind::ReLU => Op::ReLU {
                inplace: s.bool("inplace")?,
            },
            Kind::MaxPool2d => {
                let k = s.ints("kernel_size", 2, &[])?;
                Op::MaxPool2d {
                    stride: s.ints("stride", 2, &k)?,
                    k,
                    padding: s.ints("padding", 2, &[0, 0])?,
                    dilation: s.ints("dilation", 2, &[1, 1])?,
                    ceil: s.bool("ceil_mode")?,
                }
            }
            Kind::AvgPool2d => {
                let k = s.ints("kernel_size", 2, &[])?;
                Op::AvgPool2d {
                    stride: s.ints("stride", 2, &k)?,
                    k,
                    padding: s.ints("padding", 2, &[0, 0])?,
                    ceil: s.bool("ceil_mode")?,
                    count_pad: s.bool("count_include_pad")?,
                }
            }
            Kind::AdaptiveAvgPool2d => Op::AdaptiveAvg(s.out_size("output_size")?),
            Kind::AdaptiveMaxPool2d => Op::AdaptiveMax(s.out_size("output_size")?),
            Kind::Flatten => Op::Flatten {
                full: s.bool("full")?,
            },
            Kind::Dropout => Op::Dropout {
                p: s.float("p")?,
                inplace: s.bool("inplace")?,
            },
            Kind::SigmoidRange => Op::SigmoidRange {
                low: s.float("low")?,
                high: s.float("high")?,
            },
            Kind::Identity => Op::Identity,
            k => bail!(Value, "{} is a container, not a layer", k.name()),
        })
    }

    /// Whether this op drops a NaN that PyTorch's dense kernel keeps, when run on a
    /// oneDNN-blocked tensor (its ReLU maps NaN to 0, its max pool skips NaN).
    pub fn may_hide_nan(&self) -> bool {
        matches!(self, Op::ReLU { .. } | Op::MaxPool2d { .. })
    }

    /// Forward of a leaf on `x` with its tensors `t` (see `Kind::tensors`); `training` is
    /// the module's flag.
    pub fn forward_leaf(&self, x: Tensor, t: &[Option<Tensor>], training: bool) -> Result<Tensor> {
        let slot = |i: usize| t.get(i).and_then(Option::as_ref);
        Ok(match self {
            Op::Conv2d {
                stride,
                padding,
                dilation,
                groups,
            } => {
                let w = weight(slot(0))?;
                check_channels(&x, w, *groups)?;
                if w.is_mkldnn() && !x.is_mkldnn() && x.kind() == tch::Kind::Float {
                    // A float32 weight prepacked for this input's size (`siamese_rs.freeze`, small
                    // batches): dense channels-last in and out, where PyTorch's own ReLU and max
                    // pool then keep NaN (bench/FROZEN.md: 1.1-1.5x the blocked layout here).
                    super::onednn::conv_pointwise(
                        &x,
                        w,
                        slot(1),
                        padding,
                        stride,
                        dilation,
                        *groups,
                    )?
                } else if w.is_mkldnn() {
                    // A weight prepacked in oneDNN's layout (`siamese_rs.freeze`): oneDNN's own
                    // convolution takes it with a blocked or a dense input, and answers in kind.
                    x.f_mkldnn_convolution(w, slot(1), padding, stride, dilation, *groups)?
                } else {
                    x.f_conv2d(w, slot(1), stride, padding, dilation, *groups)?
                }
            }
            Op::BatchNorm { .. } => self.batch_norm(x, t, training)?,
            Op::Linear => {
                let w = weight(slot(0))?;
                let got = x.size().last().copied().unwrap_or(0);
                let want = w.size().get(1).copied().unwrap_or(0);
                if got != want {
                    bail!(
                        Shape,
                        "Linear expected inputs with {want} features, got {got} (input shape {:?})",
                        x.size()
                    );
                }
                x.f_linear(w, slot(1))?
            }
            Op::ReLU { inplace: true } => x.shallow_clone().f_relu_()?,
            Op::ReLU { inplace: false } => x.f_relu()?,
            Op::MaxPool2d {
                k,
                stride,
                padding,
                dilation,
                ceil,
            } => x.f_max_pool2d(k, stride, padding, dilation, *ceil)?,
            Op::AvgPool2d {
                k,
                stride,
                padding,
                ceil,
                count_pad,
            } => x.f_avg_pool2d(k, stride, padding, *ceil, *count_pad, None)?,
            Op::AdaptiveAvg(size) => x.f_adaptive_avg_pool2d(resolve(size, &x))?,
            Op::AdaptiveMax(size) => x.f_adaptive_max_pool2d(resolve(size, &x))?.0,
            Op::Flatten { full: true } => x.f_view_([-1])?,
            Op::Flatten { full: false } => {
                let n = x.size().first().copied().unwrap_or(1);
                x.f_view_([n, -1])?
            }
            Op::Dropout { p, inplace: true } => x.shallow_clone().f_dropout_(*p, training)?,
            Op::Dropout { p, inplace: false } => x.f_dropout(*p, training)?,
            Op::SigmoidRange { low, high } => x
                .f_sigmoid()?
                .f_mul_scalar(high - low)?
                .f_add_scalar(*low)?,
            Op::Identity => x,
        })
    }

    /// `nn.BatchNorm{1,2}d.forward`, step for step: its running-stat bookkeeping and its
    /// choice between batch and running statistics.
    fn batch_norm(&self, x: Tensor, t: &[Option<Tensor>], training: bool) -> Result<Tensor> {
        let Op::BatchNorm {
            dim,
            eps,
            momentum,
            track,
            ..
        } = *self
        else {
            bail!(Value, "batch_norm: not a BatchNorm layer")
        };
        let slot = |i: usize| t.get(i).and_then(Option::as_ref);
        let (w, b, rm, rv, nbt) = (slot(0), slot(1), slot(2), slot(3), slot(4));
        let bn_training = training || (rm.is_none() && rv.is_none());
        check_bn_input(&x, dim, [w, b, rm, rv], bn_training)?;
        let mut factor = momentum.unwrap_or(0.0);
        if training && track {
            if let Some(n) = nbt {
                let _guard = tch::no_grad_guard();
                let _ = n.shallow_clone().f_add_scalar_(1)?;
                if momentum.is_none() {
                    factor = 1.0 / n.f_double_value(&[])?;
                }
            }
        }
        let (rm, rv) = if !training || track {
            (rm, rv)
        } else {
            (None, None)
        };
        Ok(x.f_batch_norm(w, b, rm, rv, bn_training, factor, eps, false)?)
    }
}

fn weight(w: Option<&Tensor>) -> Result<&Tensor> {
    match w {
        Some(w) => Ok(w),
        None => bail!(Value, "weight is None"),
    }
}

/// `None` entries of an adaptive output size keep the input's size (PyTorch's rule).
fn resolve(size: &[Option<i64>], x: &Tensor) -> Vec<i64> {
    let dims = x.size();
    let n = dims.len();
    size.iter()
        .enumerate()
        .map(|(i, s)| match s {
            Some(s) => *s,
            None if n >= 2 => dims[n - 2 + i],
            None => -1,
        })
        .collect()
}

fn check_channels(x: &Tensor, w: &Tensor, groups: i64) -> Result<()> {
    let size = x.size();
    let got = match size.len() {
        3 => size[0],
        4 => size[1],
        n => bail!(Shape, "Conv2d expected a 4-d input (batch, channels, height, width), got {n}-d input of shape {size:?}"),
    };
    let cin = w.size().get(1).copied().unwrap_or(0) * groups;
    if got != cin {
        bail!(
            Shape,
            "Conv2d expected input with {cin} channels, got {got} channels (input shape {size:?})"
        );
    }
    Ok(())
}

/// `_check_input_dim`, the channel count the tensors imply, and `F.batch_norm`'s batch check.
fn check_bn_input(
    x: &Tensor,
    dim: i64,
    tensors: [Option<&Tensor>; 4],
    bn_training: bool,
) -> Result<()> {
    let size = x.size();
    let ok = if dim == 1 {
        size.len() == 2 || size.len() == 3
    } else {
        size.len() == 4
    };
    if !ok {
        let want = if dim == 1 { "2D or 3D" } else { "4D" };
        bail!(
            Shape,
            "BatchNorm{dim}d expected {want} input (got {}D input of shape {size:?})",
            size.len()
        );
    }
    if let Some(nf) = tensors.iter().flatten().map(|t| t.numel() as i64).next() {
        if size[1] != nf {
            bail!(
                Shape,
                "BatchNorm{dim}d expected {nf} features/channels, got {} (input shape {size:?})",
                size[1]
            );
        }
    }
    let per_channel: i64 = size
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != 1)
        .map(|(_, s)| s)
        .product();
    if bn_training && per_channel == 1 {
        bail!(
            Value,
            "Expected more than 1 value per channel when training, got input size {size:?}"
        );
    }
    Ok(())
}
