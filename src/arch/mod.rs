//! The architectures fastai offers to `create_body`, and the arch table: the one place that
//! says, per architecture, how to build it, where to cut it, how to split it into parameter
//! groups, which statistics normalise its inputs and which pretrained file it loads.
mod resnet;

use crate::error::{Error, Result};
use crate::nn::Node;

/// ImageNet mean and std (fastai's `imagenet_stats`).
pub const IMAGENET_STATS: ([f64; 3], [f64; 3]) = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]);

/// fastai's split of a cut model `m = Sequential(body, head)` into three parameter groups:
/// `m[path][:at]`, `m[path][at:]` and the head `m[1:]`.
#[derive(Clone, Copy, Debug)]
pub struct Split {
    pub path: &'static [usize],
    pub at: usize,
}

/// One row of the arch table.
#[derive(Clone, Copy, Debug)]
pub struct Arch {
    pub name: &'static str,
    /// The family, as fastai names its `_<family>_meta`.
    pub family: &'static str,
    pub cut: i64,
    pub split: Split,
    /// The pretrained file in torch's hub cache, and where torch's hub downloads it from.
    pub weights: Option<(&'static str, &'static str)>,
    /// Whether fastai's model_meta names torchvision's `'DEFAULT'` weights for it.
    pub tv_weights: bool,
    build: fn() -> Result<Node>,
}

impl Arch {
    /// The full (uncut) model with fresh random weights.
    pub fn build(&self) -> Result<Node> {
        (self.build)()
    }
}

const RESNET: Split = Split { path: &[0], at: 6 };

macro_rules! tv_arch {
    ($name:literal, $family:literal, $cut:expr, $split:expr, $file:literal, $build:path) => {
        Arch {
            name: $name,
            family: $family,
            cut: $cut,
            split: $split,
            weights: Some((
                $file,
                concat!("https://download.pytorch.org/models/", $file),
            )),
            tv_weights: true,
            build: $build,
        }
    };
}

/// The arch table.
pub const ARCHS: &[Arch] = &[
    tv_arch!(
        "resnet18",
        "resnet",
        -2,
        RESNET,
        "resnet18-f37072fd.pth",
        resnet::resnet18
    ),
    tv_arch!(
        "resnet34",
        "resnet",
        -2,
        RESNET,
        "resnet34-b627a593.pth",
        resnet::resnet34
    ),
    tv_arch!(
        "resnet50",
        "resnet",
        -2,
        RESNET,
        "resnet50-11ad3fa6.pth",
        resnet::resnet50
    ),
    tv_arch!(
        "resnet101",
        "resnet",
        -2,
        RESNET,
        "resnet101-cd907fc2.pth",
        resnet::resnet101
    ),
    tv_arch!(
        "resnet152",
        "resnet",
        -2,
        RESNET,
        "resnet152-f82ba261.pth",
        resnet::resnet152
    ),
];

/// The row for `name`, or an error that lists the known names.
pub fn find(name: &str) -> Result<&'static Arch> {
    ARCHS.iter().find(|a| a.name == name).ok_or_else(|| {
        let known: Vec<_> = ARCHS.iter().map(|a| a.name).collect();
        Error::UnknownArch(format!(
            "unknown architecture {name:?}; expected one of {}",
            known.join(", ")
        ))
    })
}
