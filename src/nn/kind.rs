//! Every module kind the core computes, with the settings that travel to and from Python.
//!
//! A kind's name is the Python class name (the `repr` fastai users know) and its fields are
//! that class's constructor arguments, so Python can build the module as `cls(**settings)`.
//! This table is the one place the field order is written down; Python reads it at import.

/// A setting's value, as Python holds it (`3`, `(3, 3)`, `None`, `0.1`, `True`).
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Ints(Vec<i64>),
    /// A tuple with `None` in it (an adaptive pool's `(None, 7)`).
    Sizes(Vec<Option<i64>>),
}

macro_rules! kinds {
    ($($kind:ident => [$($field:literal),*]),* $(,)?) => {
        /// A module kind; see the module docs.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        #[allow(non_camel_case_types)]
        pub enum Kind { $($kind),* }

        impl Kind {
            /// Every kind, in table order.
            pub const ALL: &'static [Kind] = &[$(Kind::$kind),*];

            /// The Python class name.
            pub fn name(self) -> &'static str {
                match self { $(Kind::$kind => stringify!($kind)),* }
            }

            /// The constructor arguments, in the order settings travel.
            pub fn fields(self) -> &'static [&'static str] {
                match self { $(Kind::$kind => &[$($field),*]),* }
            }
        }
    };
}

kinds! {
    Sequential => [],
    Conv2d => ["in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation", "groups", "bias"],
    BatchNorm1d => ["num_features", "eps", "momentum", "affine", "track_running_stats"],
    BatchNorm2d => ["num_features", "eps", "momentum", "affine", "track_running_stats"],
    Linear => ["in_features", "out_features", "bias"],
    ReLU => ["inplace"],
    MaxPool2d => ["kernel_size", "stride", "padding", "dilation", "ceil_mode"],
    AvgPool2d => ["kernel_size", "stride", "padding", "ceil_mode", "count_include_pad"],
    AdaptiveAvgPool2d => ["output_size"],
    AdaptiveMaxPool2d => ["output_size"],
    AdaptiveConcatPool2d => ["size"],
    Flatten => ["full"],
    Dropout => ["p", "inplace"],
    SigmoidRange => ["low", "high"],
    BasicBlock => ["stride"],
    Bottleneck => ["stride"],
    ResNet => [],
    ConvLayer => [],
    ResBlock => [],
    XResNet => [],
    VGG => [],
    AlexNet => [],
    _DenseLayer => ["drop_rate", "memory_efficient"],
    _DenseBlock => [],
    _Transition => [],
    DenseNet => [],
    Fire => ["inplanes"],
    SqueezeNet => ["num_classes"],
    SiameseModel => [],
    Identity => [],
}

impl Kind {
    /// The tensors the reference `forward` reads, by attribute name, in the order the executor
    /// takes them. Python reads each by name (so parametrized, pruned or plain-tensor weights are
    /// what PyTorch would use); any of them may be `None`.
    pub fn tensors(self) -> &'static [&'static str] {
        match self {
            Kind::Conv2d | Kind::Linear => &["weight", "bias"],
            Kind::BatchNorm1d | Kind::BatchNorm2d => &[
                "weight",
                "bias",
                "running_mean",
                "running_var",
                "num_batches_tracked",
            ],
            _ => &[],
        }
    }

    /// The children the reference `forward` calls, by attribute name, in call order (a trailing
    /// `?` marks one that may be absent); `None`: every child, in registration order. Layers have
    /// none. Each container declares them with its family (`nn::container`).
    pub fn children(self) -> Option<&'static [&'static str]> {
        match super::container::find(self) {
            Some(row) => row.children,
            None => Some(&[]),
        }
    }

    /// The kind called `name`, if the core knows it.
    pub fn from_name(name: &str) -> Option<Kind> {
        Kind::ALL.iter().copied().find(|k| k.name() == name)
    }
}

impl Value {
    /// An int or a pair as a list of `n` ints (PyTorch's `_pair`); `None` gives `default`.
    pub fn ints(&self, n: usize, default: &[i64]) -> Option<Vec<i64>> {
        match self {
            Value::Int(v) => Some(vec![*v; n]),
            Value::Ints(v) if v.len() == n => Some(v.clone()),
            Value::None => Some(default.to_vec()),
            _ => None,
        }
    }

    /// A number as f64 (ints allowed, as in Python).
    pub fn float(&self) -> Option<f64> {
        match self {
            Value::Float(v) => Some(*v),
            Value::Int(v) => Some(*v as f64),
            _ => None,
        }
    }

    /// An int.
    pub fn int(&self) -> Option<i64> {
        match self {
            Value::Int(v) => Some(*v),
            _ => None,
        }
    }

    /// A bool (Python's ints 0/1 allowed).
    pub fn bool(&self) -> Option<bool> {
        match self {
            Value::Bool(v) => Some(*v),
            Value::Int(v) => Some(*v != 0),
            _ => None,
        }
    }
}

/// A pair `(a, a)`, as PyTorch stores conv settings.
pub fn pair(a: i64) -> Value {
    Value::Ints(vec![a, a])
}
