//! VGG with batch normalisation, as torchvision builds it: "Very Deep Convolutional Networks
//! for Large-Scale Image Recognition" (Simonyan & Zisserman, 2014). `features` is a plain
//! `nn.Sequential` (conv, BatchNorm, ReLU per layer; a max pool per "M"), so fastai's split
//! index 22 falls on the same module as in torchvision.
use crate::children;
use crate::error::Result;
use crate::nn::container::{Block, Container, Layout};
use crate::nn::exec::{layout::dense, path, Exec, Run};
use crate::nn::init::{
    adaptive_avg_pool, batch_norm, conv2d, conv_cfg, dropout, linear, max_pool, relu, Init, BN,
};
use crate::nn::{Kind, Node, Value};
use tch::Tensor;

/// The containers of the family, for the arch table.
pub const CONTAINERS: &[Container] = &[Container::wired::<Vgg>(Kind::VGG, Layout::Dense)];

children!(
    /// torchvision's `VGG` (and `AlexNet`): features, pooling, flattening, classifier.
    Vgg { features, avgpool, classifier }
);

impl Block for Vgg {
    fn forward(&self, c: &[Exec], x: Tensor, t: &Run, _: bool) -> Result<Tensor> {
        let x = dense(path(c, &[self.features, self.avgpool], x, t)?)?.f_flatten(1, -1)?;
        c[self.classifier].run(x, t)
    }
}

/// A layer of `features`: a conv width, or a 2×2 max pool.
#[derive(Clone, Copy)]
enum L {
    C(i64),
    M,
}
use L::{C, M};

#[rustfmt::skip]
const A: &[L] = &[C(64), M, C(128), M, C(256), C(256), M, C(512), C(512), M, C(512), C(512), M];
#[rustfmt::skip]
const B: &[L] = &[C(64), C(64), M, C(128), C(128), M, C(256), C(256), M, C(512), C(512), M, C(512), C(512), M];
#[rustfmt::skip]
const D: &[L] = &[C(64), C(64), M, C(128), C(128), M, C(256), C(256), C(256), M, C(512), C(512), C(512), M, C(512), C(512), C(512), M];
#[rustfmt::skip]
const E: &[L] = &[C(64), C(64), M, C(128), C(128), M, C(256), C(256), C(256), C(256), M, C(512), C(512), C(512), C(512), M, C(512), C(512), C(512), C(512), M];

/// torchvision's `make_layers(cfg, batch_norm=True)`; convs are kaiming_normal_ (fan_out).
fn features(cfg: &[L]) -> Result<Node> {
    let mut layers = vec![];
    let mut cin = 3;
    for l in cfg {
        match *l {
            M => layers.push(max_pool(2, 2, 0, false)),
            C(c) => {
                let cfg = conv_cfg(cin, c, 3).padding(1).bias(true);
                layers.push(conv2d(cfg, Init::KaimingNormal { fan_out: true })?);
                layers.push(batch_norm(Kind::BatchNorm2d, c, BN)?);
                layers.push(relu(true));
                cin = c;
            }
        }
    }
    Ok(Node::seq(layers))
}

/// The generic builder; linear layers are normal_(0, 0.01) as torchvision's VGG draws them.
fn vgg(cfg: &[L], num_classes: i64) -> Result<Node> {
    let lin = |cin, cout| linear(cin, cout, true, Init::Normal(0.01));
    let classifier = Node::seq(vec![
        lin(512 * 7 * 7, 4096)?,
        relu(true),
        dropout(0.5),
        lin(4096, 4096)?,
        relu(true),
        dropout(0.5),
        lin(4096, num_classes)?,
    ]);
    let children = super::named(vec![
        ("features", features(cfg)?),
        ("avgpool", adaptive_avg_pool(Value::Ints(vec![7, 7]))),
        ("classifier", classifier),
    ]);
    Ok(Node::with_children(Kind::VGG, vec![], children))
}

pub fn vgg11_bn(num_classes: i64) -> Result<Node> {
    vgg(A, num_classes)
}
pub fn vgg13_bn(num_classes: i64) -> Result<Node> {
    vgg(B, num_classes)
}
pub fn vgg16_bn(num_classes: i64) -> Result<Node> {
    vgg(D, num_classes)
}
pub fn vgg19_bn(num_classes: i64) -> Result<Node> {
    vgg(E, num_classes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vgg16_bn_features_follow_torchvision() {
        let f = features(D).unwrap();
        // 13 convs × (conv, bn, relu) + 5 pools.
        assert_eq!(f.children.len(), 44);
        assert_eq!(f.children[22].1.kind, Kind::ReLU);
        assert_eq!(f.state_keys()[0], "0.weight");
    }

    #[test]
    fn forward_matches_the_reference() {
        crate::nn::testing::check(vgg11_bn(10).unwrap(), &[2, 3, 32, 32], 1e-5);
    }
}
