//! XResNet, as fastai builds it: "Bag of Tricks for Image Classification with Convolutional
//! Neural Networks" (He et al., 2018): ResNet-D with a three-conv stem and an average pool
//! before the 1×1 conv of a downsampling shortcut. Modules are fastai's (`ConvLayer`,
//! `ResBlock`, `XResNet` as an `nn.Sequential`), so keys and child indices are fastai's.
use crate::children;
use crate::error::Result;
use crate::nn::container::{Block, Container, Layout};
use crate::nn::exec::{residual, Exec, Run};
use crate::nn::init::{batch_norm, conv2d, conv_cfg, linear, max_pool, relu, BnCfg, Init, BN};
use crate::nn::{Kind, Node, Value};
use tch::Tensor;

/// The containers of the family, for the arch table (`ConvLayer` and `XResNet` are
/// `nn.Sequential`s).
pub const CONTAINERS: &[Container] = &[
    Container::chain(Kind::ConvLayer, Layout::Blocked),
    Container::chain(Kind::XResNet, Layout::Blocked),
    Container::wired::<ResBlock>(Kind::ResBlock, Layout::Blocked),
];

children!(
    /// fastai's `ResBlock`: `act(convpath(x) + idpath(x))`, the sum out of place.
    ResBlock { convpath, idpath, act }
);

impl Block for ResBlock {
    fn forward(&self, c: &[Exec], x: Tensor, t: &Run, _: bool) -> Result<Tensor> {
        let out = c[self.convpath].run(x.shallow_clone(), t)?;
        residual(c, out, x, Some(self.idpath), self.act, t, false)
    }
}

/// fastai's `init_cnn`: kaiming_normal_ (fan_in) on every conv and linear, every bias 0.
const INIT: Init = Init::KaimingNormal { fan_out: false };

/// `ConvLayer(cin, cout, k, stride)`: conv, BatchNorm, then ReLU when `act`. The last BatchNorm
/// of a residual path starts at weight 0 (`NormType.BatchZero`) so each block starts as identity;
/// `init_cnn` zeroes every BatchNorm bias (fastai's `BatchNorm` had set 1e-3).
fn conv_layer(cin: i64, cout: i64, k: i64, stride: i64, act: bool, zero: bool) -> Result<Node> {
    let bn = BnCfg {
        weight: if zero { 0.0 } else { 1.0 },
        ..BN
    };
    let mut layers = vec![
        conv2d(
            conv_cfg(cin, cout, k).stride(stride).padding((k - 1) / 2),
            INIT,
        )?,
        batch_norm(Kind::BatchNorm2d, cout, bn)?,
    ];
    if act {
        // `act_cls()`: a fresh, not in-place ReLU.
        layers.push(relu(false));
    }
    Ok(Node::numbered(Kind::ConvLayer, layers))
}

/// fastai's `ResBlock(expansion, ni, nf, stride)`.
fn res_block(expansion: i64, ni: i64, nf: i64, stride: i64) -> Result<Node> {
    let (ni, nh, nf) = (ni * expansion, nf, nf * expansion);
    let convpath = if expansion == 1 {
        vec![
            conv_layer(ni, nh, 3, stride, true, false)?,
            conv_layer(nh, nf, 3, 1, false, true)?,
        ]
    } else {
        vec![
            conv_layer(ni, nh, 1, 1, true, false)?,
            conv_layer(nh, nh, 3, stride, true, false)?,
            conv_layer(nh, nf, 1, 1, false, true)?,
        ]
    };
    let mut idpath = vec![];
    if stride != 1 {
        // `AvgPool(stride, ceil_mode=True)`, placed before the 1×1 conv (`pool_first`).
        idpath.push(crate::nn::init::avg_pool(stride, stride, true));
    }
    if ni != nf {
        idpath.push(conv_layer(ni, nf, 1, 1, false, false)?);
    }
    let children = super::named(vec![
        ("convpath", Node::seq(convpath)),
        ("idpath", Node::seq(idpath)),
        ("act", relu(true)),
    ]);
    Ok(Node::with_children(Kind::ResBlock, vec![], children))
}

/// The generic builder: `expansion` 1 or 4, `layers` the blocks per stage.
fn xresnet(expansion: i64, layers: [i64; 4], num_classes: i64) -> Result<Node> {
    let mut children = vec![
        conv_layer(3, 32, 3, 2, true, false)?,
        conv_layer(32, 32, 3, 1, true, false)?,
        conv_layer(32, 64, 3, 1, true, false)?,
        max_pool(3, 2, 1, false),
    ];
    let sizes = [64 / expansion, 64, 128, 256, 512];
    for (i, &n) in layers.iter().enumerate() {
        let stride = if i == 0 { 1 } else { 2 };
        let blocks = (0..n)
            .map(|j| {
                let ni = if j == 0 { sizes[i] } else { sizes[i + 1] };
                res_block(expansion, ni, sizes[i + 1], if j == 0 { stride } else { 1 })
            })
            .collect::<Result<Vec<_>>>()?;
        children.push(Node::seq(blocks));
    }
    children.extend([
        crate::nn::init::adaptive_avg_pool(Value::Int(1)),
        Node::leaf(Kind::Flatten, vec![Value::Bool(false)]),
        crate::nn::init::dropout(0.0),
        linear(512 * expansion, num_classes, true, INIT)?,
    ]);
    Ok(Node::numbered(Kind::XResNet, children))
}

pub fn xresnet18(num_classes: i64) -> Result<Node> {
    xresnet(1, [2, 2, 2, 2], num_classes)
}
pub fn xresnet34(num_classes: i64) -> Result<Node> {
    xresnet(1, [3, 4, 6, 3], num_classes)
}
pub fn xresnet50(num_classes: i64) -> Result<Node> {
    xresnet(4, [3, 4, 6, 3], num_classes)
}
pub fn xresnet101(num_classes: i64) -> Result<Node> {
    xresnet(4, [3, 4, 23, 3], num_classes)
}
pub fn xresnet152(num_classes: i64) -> Result<Node> {
    xresnet(4, [3, 8, 36, 3], num_classes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xresnet18_keys_follow_fastai() {
        let m = xresnet18(1000).unwrap();
        assert_eq!(m.children.len(), 12);
        let keys = m.state_keys();
        assert_eq!(keys[0], "0.0.weight");
        assert!(keys.contains(&"5.0.idpath.1.0.weight".to_string()));
        assert_eq!(keys.last().unwrap(), "11.bias");
    }

    #[test]
    fn xresnet50_first_block_widens_its_shortcut() {
        let m = xresnet50(1000).unwrap();
        let block = &m.children[4].1.children[0].1;
        assert_eq!(block.kind, Kind::ResBlock);
        // stride 1: no pool, only the 1×1 ConvLayer from 64 to 256 channels.
        let idpath = &block.children[1].1;
        assert_eq!(idpath.children.len(), 1);
        assert_eq!(
            idpath.children[0].1.children[0].1.tensors[0].1.size(),
            [256, 64, 1, 1]
        );
    }

    #[test]
    fn forward_matches_the_reference() {
        use crate::nn::testing::check;
        check(res_block(1, 8, 16, 2).unwrap(), &[2, 8, 8, 8], 1e-5);
        check(res_block(4, 16, 16, 1).unwrap(), &[2, 64, 8, 8], 1e-5);
        check(xresnet18(10).unwrap(), &[2, 3, 32, 32], 1e-5);
    }
}
