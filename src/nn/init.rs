//! Layer constructors with PyTorch's initialisation rules, drawn from torch's global
//! generator (so `torch.manual_seed` in Python seeds our models too).
use super::kind::{pair, Kind, Value};
use super::node::Node;
use crate::error::Result;
use tch::{Device, Kind as DType, Tensor};

/// How a weight is drawn. `Default` is what `nn.Conv2d`/`nn.Linear` do on construction.
#[derive(Clone, Copy, Debug)]
pub enum Init {
    /// kaiming_uniform_(a=√5): U(±1/√fan_in); the bias too.
    Default,
    /// kaiming_normal_(nonlinearity='relu'), fan_in or fan_out; the bias is zeroed.
    KaimingNormal { fan_out: bool },
    /// kaiming_uniform_() with a=0: U(±√(6/fan_in)); the bias is zeroed.
    KaimingUniform,
    /// normal_(0, std); the bias is zeroed.
    Normal(f64),
}

/// Most elements one tensor of a layer may hold (8 GiB of float32): sizes beyond it are refused
/// before libtorch is asked for the memory, so absurd sizes are an error and not an abort.
pub const MAX_ELEMENTS: i64 = 1 << 31;

thread_local! {
    /// Set while `shapes_only` runs: tensors are zero-strided views of one element, not drawn.
    static SHAPES_ONLY: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `build` with every layer's tensors as one-element views of their shape, nothing drawn
/// from the generator: what a model's `state_dict` shapes would be, at no memory cost.
pub fn shapes_only<T>(build: impl FnOnce() -> Result<T>) -> Result<T> {
    let before = SHAPES_ONLY.with(|s| s.replace(true));
    let out = build();
    SHAPES_ONLY.with(|s| s.set(before));
    out
}

fn is_shapes_only() -> bool {
    SHAPES_ONLY.with(|s| s.get())
}

/// `shape`, checked: sizes not negative, at most `MAX_ELEMENTS` elements in all.
fn checked(shape: &[i64]) -> Result<()> {
    if let Some(n) = shape.iter().find(|n| **n < 0) {
        crate::bail!(Value, "a layer size must not be negative, got {n}");
    }
    let n = shape.iter().try_fold(1i64, |a, b| a.checked_mul(*b));
    if n.is_none_or(|n| n > MAX_ELEMENTS) {
        crate::bail!(
            Value,
            "a layer of shape {shape:?} would hold more than {MAX_ELEMENTS} values"
        );
    }
    Ok(())
}

fn empty(shape: &[i64]) -> Result<Tensor> {
    checked(shape)?;
    if is_shapes_only() {
        return Ok(Tensor::f_zeros([], (DType::Float, Device::Cpu))?.f_expand(shape, false)?);
    }
    Ok(Tensor::f_empty(shape, (DType::Float, Device::Cpu))?)
}

fn uniform(shape: &[i64], bound: f64) -> Result<Tensor> {
    if is_shapes_only() {
        return empty(shape);
    }
    Ok(empty(shape)?.f_uniform_(-bound, bound)?)
}

fn normal(shape: &[i64], std: f64) -> Result<Tensor> {
    if is_shapes_only() {
        return empty(shape);
    }
    Ok(empty(shape)?.f_normal_(0.0, std)?)
}

fn filled(shape: &[i64], v: f64) -> Result<Tensor> {
    // Not tch's `f_full`: it panics (in its scalar's drop) instead of returning libtorch's error.
    if is_shapes_only() {
        return empty(shape);
    }
    let mut t = empty(shape)?;
    let _ = t.f_fill_(v)?;
    Ok(t)
}

/// Weight and optional bias of a layer with `fan_in`/`fan_out` (weights, counted as PyTorch does).
fn weight_and_bias(shape: &[i64], bias: bool, init: Init) -> Result<(Tensor, Option<Tensor>)> {
    let receptive: i64 = shape[2..].iter().product();
    let (fan_in, fan_out) = (shape[1] * receptive, shape[0] * receptive);
    let w = match init {
        Init::Default => uniform(shape, 1.0 / (fan_in as f64).sqrt())?,
        Init::KaimingNormal { fan_out: fo } => {
            let fan = if fo { fan_out } else { fan_in };
            normal(shape, (2.0 / fan as f64).sqrt())?
        }
        Init::KaimingUniform => uniform(shape, (6.0 / fan_in as f64).sqrt())?,
        Init::Normal(std) => normal(shape, std)?,
    };
    let b = match (bias, init) {
        (false, _) => None,
        (true, Init::Default) => Some(uniform(&[shape[0]], 1.0 / (fan_in as f64).sqrt())?),
        (true, _) => Some(filled(&[shape[0]], 0.0)?),
    };
    Ok((w, b))
}

/// Settings of a Conv2d; `k`, `stride`, `padding` are square as in every family we build.
#[derive(Clone, Copy, Debug)]
pub struct ConvCfg {
    pub cin: i64,
    pub cout: i64,
    pub k: i64,
    pub stride: i64,
    pub padding: i64,
    pub groups: i64,
    pub bias: bool,
}

/// `ConvCfg` for a `k`×`k` conv without bias, stride 1 and padding 0.
pub fn conv_cfg(cin: i64, cout: i64, k: i64) -> ConvCfg {
    ConvCfg {
        cin,
        cout,
        k,
        stride: 1,
        padding: 0,
        groups: 1,
        bias: false,
    }
}

impl ConvCfg {
    pub fn stride(self, stride: i64) -> Self {
        ConvCfg { stride, ..self }
    }
    pub fn padding(self, padding: i64) -> Self {
        ConvCfg { padding, ..self }
    }
    pub fn bias(self, bias: bool) -> Self {
        ConvCfg { bias, ..self }
    }
}

/// `nn.Conv2d` initialised by `init`.
pub fn conv2d(c: ConvCfg, init: Init) -> Result<Node> {
    let settings = vec![
        Value::Int(c.cin),
        Value::Int(c.cout),
        pair(c.k),
        pair(c.stride),
        pair(c.padding),
        pair(1),
        Value::Int(c.groups),
        Value::Bool(c.bias),
    ];
    let (w, b) = weight_and_bias(&[c.cout, c.cin / c.groups, c.k, c.k], c.bias, init)?;
    let node = Node::leaf(Kind::Conv2d, settings).tensor("weight", w);
    Ok(match b {
        Some(b) => node.tensor("bias", b),
        None => node,
    })
}

/// `nn.Linear` initialised by `init`.
pub fn linear(cin: i64, cout: i64, bias: bool, init: Init) -> Result<Node> {
    let settings = vec![Value::Int(cin), Value::Int(cout), Value::Bool(bias)];
    let (w, b) = weight_and_bias(&[cout, cin], bias, init)?;
    let node = Node::leaf(Kind::Linear, settings).tensor("weight", w);
    Ok(match b {
        Some(b) => node.tensor("bias", b),
        None => node,
    })
}

/// Settings of a BatchNorm layer beyond its size.
#[derive(Clone, Copy, Debug)]
pub struct BnCfg {
    pub eps: f64,
    pub momentum: Option<f64>,
    /// Initial weight and bias (PyTorch: 1 and 0; fastai's `BatchNorm`: 1 and 1e-3).
    pub weight: f64,
    pub bias: f64,
}

/// PyTorch's defaults: eps 1e-5, momentum 0.1, weight 1, bias 0.
pub const BN: BnCfg = BnCfg {
    eps: 1e-5,
    momentum: Some(0.1),
    weight: 1.0,
    bias: 0.0,
};

impl Default for BnCfg {
    fn default() -> BnCfg {
        BN
    }
}

/// `nn.BatchNorm1d`/`2d` (by `kind`) with `nf` features, affine, tracking running stats.
pub fn batch_norm(kind: Kind, nf: i64, c: BnCfg) -> Result<Node> {
    let momentum = c.momentum.map_or(Value::None, Value::Float);
    let settings = vec![
        Value::Int(nf),
        Value::Float(c.eps),
        momentum,
        Value::Bool(true),
        Value::Bool(true),
    ];
    Ok(Node::leaf(kind, settings)
        .tensor("weight", filled(&[nf], c.weight)?)
        .tensor("bias", filled(&[nf], c.bias)?)
        .tensor("running_mean", filled(&[nf], 0.0)?)
        .tensor("running_var", filled(&[nf], 1.0)?)
        .tensor(
            "num_batches_tracked",
            Tensor::f_zeros([], (DType::Int64, Device::Cpu))?,
        ))
}

/// `nn.ReLU(inplace)`.
pub fn relu(inplace: bool) -> Node {
    Node::leaf(Kind::ReLU, vec![Value::Bool(inplace)])
}

/// `nn.Dropout(p)`.
pub fn dropout(p: f64) -> Node {
    Node::leaf(Kind::Dropout, vec![Value::Float(p), Value::Bool(false)])
}

/// `nn.MaxPool2d(k, stride, padding)` with ints, as the torchvision families write it.
pub fn max_pool(k: i64, stride: i64, padding: i64, ceil_mode: bool) -> Node {
    let settings = vec![
        Value::Int(k),
        Value::Int(stride),
        Value::Int(padding),
        Value::Int(1),
        Value::Bool(ceil_mode),
    ];
    Node::leaf(Kind::MaxPool2d, settings)
}

/// `nn.AvgPool2d(k, stride)` without padding, counting padding as PyTorch does by default.
pub fn avg_pool(k: i64, stride: i64, ceil_mode: bool) -> Node {
    let settings = vec![
        Value::Int(k),
        Value::Int(stride),
        Value::Int(0),
        Value::Bool(ceil_mode),
        Value::Bool(true),
    ];
    Node::leaf(Kind::AvgPool2d, settings)
}

/// `nn.AdaptiveAvgPool2d(size)`; `size` is an int or a pair as the reference writes it.
pub fn adaptive_avg_pool(size: Value) -> Node {
    Node::leaf(Kind::AdaptiveAvgPool2d, vec![size])
}
