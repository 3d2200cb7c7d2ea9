//! Leaf operations: the settings each needs, compiled once, and its forward on libtorch.
//! Every call mirrors what the PyTorch module's `forward` calls, so results are bit-identical.
use super::kind::{Kind, Value};
use super::settings::Settings;
use crate::bail;
use crate::error::Result;
use tch::Tensor;

/// A module compiled for execution: leaf settings are concrete, containers keep their kind.
#[derive(Clone, Debug)]
pub enum Op {
    Conv2d {
        cin: i64,
        stride: Vec<i64>,
        padding: Vec<i64>,
        dilation: Vec<i64>,
        groups: i64,
        bias: bool,
    },
    BatchNorm {
        dim: i64,
        nf: i64,
        eps: f64,
        momentum: Option<f64>,
        affine: bool,
        track: bool,
    },
    Linear {
        cin: i64,
        bias: bool,
    },
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
    AdaptiveAvg(Vec<i64>),
    AdaptiveMax(Vec<i64>),
    Flatten {
        full: bool,
    },
    Dropout {
        p: f64,
    },
    SigmoidRange {
        low: f64,
        high: f64,
    },
    /// A container: its children and its kind decide what it computes (see `exec`).
    Container(Kind),
}

impl Op {
    /// Compiles `kind` with its settings.
    pub fn compile(kind: Kind, settings: &[Value]) -> Result<Op> {
        let s = Settings(kind, settings);
        Ok(match kind {
            Kind::Conv2d => Op::Conv2d {
                cin: s.int("in_channels")?,
                stride: s.ints("stride", 2, &[1, 1])?,
                padding: s.ints("padding", 2, &[0, 0])?,
                dilation: s.ints("dilation", 2, &[1, 1])?,
                groups: s.int("groups")?,
                bias: s.bool("bias")?,
            },
            Kind::BatchNorm1d | Kind::BatchNorm2d => Op::BatchNorm {
                dim: if kind == Kind::BatchNorm1d { 1 } else { 2 },
                nf: s.int("num_features")?,
                eps: s.float("eps")?,
                momentum: s.opt_float("momentum")?,
                affine: s.bool("affine")?,
                track: s.bool("track_running_stats")?,
            },
            Kind::Linear => Op::Linear {
                cin: s.int("in_features")?,
                bias: s.bool("bias")?,
            },
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
            Kind::Dropout => Op::Dropout { p: s.float("p")? },
            Kind::SigmoidRange => Op::SigmoidRange {
                low: s.float("low")?,
                high: s.float("high")?,
            },
            k => Op::Container(k),
        })
    }

    /// How many tensors (parameters, then buffers) the module holds with these settings.
    pub fn n_tensors(&self) -> usize {
        match self {
            Op::Conv2d { bias, .. } | Op::Linear { bias, .. } => 1 + usize::from(*bias),
            Op::BatchNorm { affine, track, .. } => {
                2 * usize::from(*affine) + 3 * usize::from(*track)
            }
            _ => 0,
        }
    }

    /// Forward of a leaf on `x` with its tensors `t`; `training` is the module's flag.
    pub fn forward_leaf(&self, x: Tensor, t: &[Tensor], training: bool) -> Result<Tensor> {
        Ok(match self {
            Op::Conv2d {
                cin,
                stride,
                padding,
                dilation,
                groups,
                bias,
            } => {
                check_channels(&x, *cin)?;
                x.f_conv2d(
                    &t[0],
                    bias.then(|| &t[1]),
                    stride,
                    padding,
                    dilation,
                    *groups,
                )?
            }
            Op::BatchNorm { .. } => self.batch_norm(x, t, training)?,
            Op::Linear { cin, bias } => {
                let got = x.size().last().copied().unwrap_or(0);
                if got != *cin {
                    bail!(
                        Shape,
                        "Linear expected inputs with {cin} features, got {got} (input shape {:?})",
                        x.size()
                    );
                }
                x.f_linear(&t[0], bias.then(|| &t[1]))?
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
            Op::Dropout { p } => x.f_dropout(*p, training)?,
            Op::SigmoidRange { low, high } => x
                .f_sigmoid()?
                .f_mul_scalar(high - low)?
                .f_add_scalar(*low)?,
            Op::Container(k) => bail!(Value, "{} is a container, not a layer", k.name()),
        })
    }

    /// `nn.BatchNorm{1,2}d.forward`, including its running-stat bookkeeping.
    fn batch_norm(&self, x: Tensor, t: &[Tensor], training: bool) -> Result<Tensor> {
        let Op::BatchNorm {
            dim,
            nf,
            eps,
            momentum,
            affine,
            track,
        } = *self
        else {
            unreachable!()
        };
        check_bn_input(&x, dim, nf, training)?;
        let (w, b) = if affine {
            (Some(&t[0]), Some(&t[1]))
        } else {
            (None, None)
        };
        let stats = if track {
            Some(&t[2 * usize::from(affine)..])
        } else {
            None
        };
        let mut factor = momentum.unwrap_or(0.0);
        if training {
            if let Some(s) = stats {
                let _guard = tch::no_grad_guard();
                let _ = s[2].shallow_clone().f_add_scalar_(1)?;
                if momentum.is_none() {
                    factor = 1.0 / s[2].f_double_value(&[])?;
                }
            }
        }
        let use_batch = training || stats.is_none();
        let (rm, rv) = match stats {
            Some(s) => (Some(&s[0]), Some(&s[1])),
            None => (None, None),
        };
        Ok(x.f_batch_norm(w, b, rm, rv, use_batch, factor, eps, false)?)
    }
}

/// `None` entries of an adaptive output size keep the input's size (PyTorch's rule).
fn resolve(size: &[i64], x: &Tensor) -> Vec<i64> {
    let dims = x.size();
    let n = dims.len();
    size.iter()
        .enumerate()
        .map(|(i, &s)| if s < 0 && n >= 2 { dims[n - 2 + i] } else { s })
        .collect()
}

fn check_channels(x: &Tensor, cin: i64) -> Result<()> {
    let size = x.size();
    let got = match size.len() {
        3 => size[0],
        4 => size[1],
        n => bail!(Shape, "Conv2d expected a 4-d input (batch, channels, height, width), got {n}-d input of shape {size:?}"),
    };
    if got != cin {
        bail!(
            Shape,
            "Conv2d expected input with {cin} channels, got {got} channels (input shape {size:?})"
        );
    }
    Ok(())
}

fn check_bn_input(x: &Tensor, dim: i64, nf: i64, training: bool) -> Result<()> {
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
    if size[1] != nf {
        bail!(
            Shape,
            "BatchNorm{dim}d expected {nf} features/channels, got {} (input shape {size:?})",
            size[1]
        );
    }
    let per_channel: i64 = size
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != 1)
        .map(|(_, s)| s)
        .product();
    if training && per_channel == 1 {
        bail!(
            Value,
            "Expected more than 1 value per channel when training, got input size {size:?}"
        );
    }
    Ok(())
}
