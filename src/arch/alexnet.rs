//! AlexNet, as torchvision builds it: "One weird trick for parallelizing convolutional neural
//! networks" (Krizhevsky, 2014), the single-tower variant torchvision's weights were trained on.
//! torchvision keeps PyTorch's default initialisation for every layer.
use crate::error::Result;
use crate::nn::container::{Container, Layout};
use crate::nn::init::{adaptive_avg_pool, conv2d, conv_cfg, dropout, linear, max_pool, relu, Init};
use crate::nn::{Kind, Node, Value};

/// The containers of the family, for the arch table: `AlexNet.forward` is `VGG.forward`.
pub const CONTAINERS: &[Container] = &[Container::wired::<super::vgg::Vgg>(
    Kind::AlexNet,
    Layout::Dense,
)];

fn conv(cin: i64, cout: i64, k: i64, stride: i64, padding: i64) -> Result<Node> {
    let cfg = conv_cfg(cin, cout, k)
        .stride(stride)
        .padding(padding)
        .bias(true);
    conv2d(cfg, Init::Default)
}

fn lin(cin: i64, cout: i64) -> Result<Node> {
    linear(cin, cout, true, Init::Default)
}

/// The builder (AlexNet has one variant).
pub fn alexnet(num_classes: i64) -> Result<Node> {
    let features = Node::seq(vec![
        conv(3, 64, 11, 4, 2)?,
        relu(true),
        max_pool(3, 2, 0, false),
        conv(64, 192, 5, 1, 2)?,
        relu(true),
        max_pool(3, 2, 0, false),
        conv(192, 384, 3, 1, 1)?,
        relu(true),
        conv(384, 256, 3, 1, 1)?,
        relu(true),
        conv(256, 256, 3, 1, 1)?,
        relu(true),
        max_pool(3, 2, 0, false),
    ]);
    let classifier = Node::seq(vec![
        dropout(0.5),
        lin(256 * 6 * 6, 4096)?,
        relu(true),
        dropout(0.5),
        lin(4096, 4096)?,
        relu(true),
        lin(4096, num_classes)?,
    ]);
    let children = super::named(vec![
        ("features", features),
        ("avgpool", adaptive_avg_pool(Value::Ints(vec![6, 6]))),
        ("classifier", classifier),
    ]);
    Ok(Node::with_children(Kind::AlexNet, vec![], children))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alexnet_keys_follow_torchvision() {
        let keys = alexnet(1000).unwrap().state_keys();
        assert_eq!(keys.len(), 16);
        assert_eq!(keys[0], "features.0.weight");
        assert_eq!(keys[15], "classifier.6.bias");
    }

    #[test]
    fn forward_matches_the_reference() {
        crate::nn::testing::check(alexnet(10).unwrap(), &[2, 3, 64, 64], 1e-5);
    }
}
