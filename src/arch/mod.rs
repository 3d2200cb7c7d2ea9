//! The architectures fastai offers to `create_body`, and the arch table: the one place that
//! says, per architecture, how to build it, where to cut it, how to split it into parameter
//! groups, which statistics normalise its inputs and which pretrained file it loads.
mod alexnet;
mod densenet;
mod resnet;
mod squeezenet;
mod vgg;
mod xresnet;

pub use alexnet::alexnet;
pub use densenet::{densenet121, densenet161, densenet169, densenet201};
pub use resnet::{resnet101, resnet152, resnet18, resnet34, resnet50};
pub use squeezenet::{squeezenet1_0, squeezenet1_1};
pub use vgg::{vgg11_bn, vgg13_bn, vgg16_bn, vgg19_bn};
pub use xresnet::{xresnet101, xresnet152, xresnet18, xresnet34, xresnet50};

use crate::error::{Error, Result};
use crate::nn::container::Container;
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
    /// The containers its family's forward computes (`nn::container`).
    pub containers: &'static [Container],
    build: fn(i64) -> Result<Node>,
}

impl Arch {
    /// The full (uncut) model with fresh random weights and torchvision's 1,000 classes.
    pub fn build(&self) -> Result<Node> {
        self.build_with(1000)
    }

    /// The full model with `num_classes` outputs, as torchvision's `num_classes` argument.
    pub fn build_with(&self, num_classes: i64) -> Result<Node> {
        if num_classes <= 0 {
            crate::bail!(
                Value,
                "num_classes must be a positive number of classes, got {num_classes}"
            );
        }
        (self.build)(num_classes)
    }
}

/// Named children, in registration order.
fn named(children: Vec<(&str, Node)>) -> Vec<(String, Node)> {
    children
        .into_iter()
        .map(|(n, c)| (n.to_string(), c))
        .collect()
}

/// What a family shares: fastai's `_<family>_meta` cut and split, and its containers.
struct Family {
    name: &'static str,
    cut: i64,
    split: Split,
    containers: &'static [Container],
}

/// A family row: fastai's cut, its split `m[path][:at]`, `m[path][at:]`, head, and the
/// containers its file declares.
const fn family(
    name: &'static str,
    cut: i64,
    (path, at): (&'static [usize], usize),
    containers: &'static [Container],
) -> Family {
    Family {
        name,
        cut,
        split: Split { path, at },
        containers,
    }
}

const RESNET: Family = family("resnet", -2, (&[0], 6), resnet::CONTAINERS);
const XRESNET: Family = family("xresnet", -4, (&[0], 3), xresnet::CONTAINERS);
const SQUEEZENET: Family = family("squeezenet", -1, (&[0, 0], 5), squeezenet::CONTAINERS);
const DENSENET: Family = family("densenet", -1, (&[0, 0], 7), densenet::CONTAINERS);
const VGG: Family = family("vgg", -2, (&[0, 0], 22), vgg::CONTAINERS);
const ALEXNET: Family = family("alexnet", -2, (&[0, 0], 6), alexnet::CONTAINERS);

/// A row: `family`, `name`, the pretrained file (`None`: fastai has none) and its URL folder,
/// whether fastai's meta names torchvision's 'DEFAULT' weights, and the builder.
macro_rules! arch {
    ($family:expr, $name:literal, $build:path, tv $file:literal) => {
        arch!(@row $family, $name, $build,
              Some(($file, concat!("https://download.pytorch.org/models/", $file))), true)
    };
    ($family:expr, $name:literal, $build:path, fastai $file:literal) => {
        arch!(@row $family, $name, $build,
              Some(($file, concat!("https://s3.amazonaws.com/fast-ai-modelzoo/", $file))), false)
    };
    ($family:expr, $name:literal, $build:path, none) => {
        arch!(@row $family, $name, $build, None, false)
    };
    (@row $family:expr, $name:literal, $build:path, $weights:expr, $tv:literal) => {
        Arch {
            name: $name,
            family: $family.name,
            cut: $family.cut,
            split: $family.split,
            weights: $weights,
            tv_weights: $tv,
            containers: $family.containers,
            build: $build,
        }
    };
}

/// The arch table.
pub const ARCHS: &[Arch] = &[
    arch!(RESNET, "resnet18", resnet::resnet18, tv "resnet18-f37072fd.pth"),
    arch!(RESNET, "resnet34", resnet::resnet34, tv "resnet34-b627a593.pth"),
    arch!(RESNET, "resnet50", resnet::resnet50, tv "resnet50-11ad3fa6.pth"),
    arch!(RESNET, "resnet101", resnet::resnet101, tv "resnet101-cd907fc2.pth"),
    arch!(RESNET, "resnet152", resnet::resnet152, tv "resnet152-f82ba261.pth"),
    arch!(XRESNET, "xresnet18", xresnet::xresnet18, none),
    arch!(XRESNET, "xresnet34", xresnet::xresnet34, none),
    arch!(XRESNET, "xresnet50", xresnet::xresnet50, fastai "xrn50_940.pth"),
    arch!(XRESNET, "xresnet101", xresnet::xresnet101, none),
    arch!(XRESNET, "xresnet152", xresnet::xresnet152, none),
    arch!(SQUEEZENET, "squeezenet1_0", squeezenet::squeezenet1_0, tv "squeezenet1_0-b66bff10.pth"),
    arch!(SQUEEZENET, "squeezenet1_1", squeezenet::squeezenet1_1, tv "squeezenet1_1-b8a52dc0.pth"),
    arch!(DENSENET, "densenet121", densenet::densenet121, tv "densenet121-a639ec97.pth"),
    arch!(DENSENET, "densenet169", densenet::densenet169, tv "densenet169-b2777c0a.pth"),
    arch!(DENSENET, "densenet201", densenet::densenet201, tv "densenet201-c1103571.pth"),
    arch!(DENSENET, "densenet161", densenet::densenet161, tv "densenet161-8d451a50.pth"),
    arch!(VGG, "vgg11_bn", vgg::vgg11_bn, tv "vgg11_bn-6002323d.pth"),
    arch!(VGG, "vgg13_bn", vgg::vgg13_bn, tv "vgg13_bn-abd245e5.pth"),
    arch!(VGG, "vgg16_bn", vgg::vgg16_bn, tv "vgg16_bn-6c64b313.pth"),
    arch!(VGG, "vgg19_bn", vgg::vgg19_bn, tv "vgg19_bn-c79401a0.pth"),
    arch!(ALEXNET, "alexnet", alexnet::alexnet, tv "alexnet-owt-7be5be79.pth"),
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
