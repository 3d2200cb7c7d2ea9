//! SqueezeNet, as torchvision builds it: "SqueezeNet: AlexNet-level accuracy with 50x fewer
//! parameters and <0.5MB model size" (Iandola et al., 2016); 1.1 is the cheaper variant from
//! the authors' repository. Convs are kaiming_uniform_ (a=0) with zero bias; the final conv
//! is normal_(0, 0.01).
use crate::children;
use crate::error::Result;
use crate::nn::container::{Block, Container, Layout};
use crate::nn::exec::{layout::dense, path, Exec, Run};
use crate::nn::init::{adaptive_avg_pool, conv2d, conv_cfg, dropout, max_pool, relu, Init};
use crate::nn::{Kind, Node, Value};
use tch::Tensor;

/// The containers of the family, for the arch table.
pub const CONTAINERS: &[Container] = &[
    Container::wired::<SqueezeNet>(Kind::SqueezeNet, Layout::Dense),
    Container::wired::<FireBlock>(Kind::Fire, Layout::Dense),
];

children!(
    /// torchvision's `SqueezeNet`: `flatten(classifier(features(x)), 1)`.
    SqueezeNet { features, classifier }
);

impl Block for SqueezeNet {
    fn forward(&self, c: &[Exec], x: Tensor, t: &Run, _: bool) -> Result<Tensor> {
        let y = path(c, &[self.features, self.classifier], x, t)?;
        Ok(dense(y)?.f_flatten(1, -1)?)
    }
}

children!(
    /// torchvision's `Fire`: a squeeze, then two expands concatenated.
    FireBlock { squeeze, squeeze_activation, expand1x1, expand1x1_activation, expand3x3, expand3x3_activation }
);

impl Block for FireBlock {
    fn forward(&self, c: &[Exec], x: Tensor, t: &Run, _: bool) -> Result<Tensor> {
        let s = path(c, &[self.squeeze, self.squeeze_activation], x, t)?;
        let a = path(
            c,
            &[self.expand1x1, self.expand1x1_activation],
            s.shallow_clone(),
            t,
        )?;
        let b = path(c, &[self.expand3x3, self.expand3x3_activation], s, t)?;
        Ok(Tensor::f_cat(&[a, b], 1)?)
    }
}

fn conv(cin: i64, cout: i64, k: i64, stride: i64, init: Init) -> Result<Node> {
    let cfg = conv_cfg(cin, cout, k)
        .stride(stride)
        .padding(k / 2)
        .bias(true);
    conv2d(cfg, init)
}

fn pool() -> Node {
    max_pool(3, 2, 0, true)
}

/// `Fire(inplanes, squeeze, expand1x1, expand3x3)` with equal expand widths, as in every use.
fn fire(cin: i64, squeeze: i64, expand: i64) -> Result<Node> {
    let u = Init::KaimingUniform;
    let children = super::named(vec![
        ("squeeze", conv(cin, squeeze, 1, 1, u)?),
        ("squeeze_activation", relu(true)),
        ("expand1x1", conv(squeeze, expand, 1, 1, u)?),
        ("expand1x1_activation", relu(true)),
        ("expand3x3", conv(squeeze, expand, 3, 1, u)?),
        ("expand3x3_activation", relu(true)),
    ]);
    Ok(Node::with_children(
        Kind::Fire,
        vec![Value::Int(cin)],
        children,
    ))
}

/// One step of `features` after the stem: a max pool or `Fire(inplanes, squeeze, expand)`.
enum Step {
    Pool,
    Fire(i64, i64, i64),
}
use Step::{Fire, Pool};

/// The generic builder: a stem conv (`stem_out` channels, `k`×`k`, stride 2, no padding),
/// ReLU, a pool, then `steps`; a dropout/conv/ReLU/avg-pool classifier.
fn squeezenet(stem_out: i64, k: i64, steps: &[Step], num_classes: i64) -> Result<Node> {
    let stem = conv2d(
        conv_cfg(3, stem_out, k).stride(2).bias(true),
        Init::KaimingUniform,
    )?;
    let mut features = vec![stem, relu(true), pool()];
    for step in steps {
        features.push(match *step {
            Pool => pool(),
            Fire(cin, squeeze, expand) => fire(cin, squeeze, expand)?,
        });
    }
    let classifier = Node::seq(vec![
        dropout(0.5),
        conv(512, num_classes, 1, 1, Init::Normal(0.01))?,
        relu(true),
        adaptive_avg_pool(Value::Ints(vec![1, 1])),
    ]);
    let children = super::named(vec![
        ("features", Node::seq(features)),
        ("classifier", classifier),
    ]);
    Ok(Node::with_children(
        Kind::SqueezeNet,
        vec![Value::Int(num_classes)],
        children,
    ))
}

/// 1.0: a 7×7 stem of 96 channels.
pub fn squeezenet1_0(num_classes: i64) -> Result<Node> {
    squeezenet(
        96,
        7,
        &[
            Fire(96, 16, 64),
            Fire(128, 16, 64),
            Fire(128, 32, 128),
            Pool,
            Fire(256, 32, 128),
            Fire(256, 48, 192),
            Fire(384, 48, 192),
            Fire(384, 64, 256),
            Pool,
            Fire(512, 64, 256),
        ],
        num_classes,
    )
}

/// 1.1: a 3×3 stem of 64 channels and earlier pooling.
pub fn squeezenet1_1(num_classes: i64) -> Result<Node> {
    squeezenet(
        64,
        3,
        &[
            Fire(64, 16, 64),
            Fire(128, 16, 64),
            Pool,
            Fire(128, 32, 128),
            Fire(256, 32, 128),
            Pool,
            Fire(256, 48, 192),
            Fire(384, 48, 192),
            Fire(384, 64, 256),
            Fire(512, 64, 256),
        ],
        num_classes,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn squeezenet_keys_follow_torchvision() {
        for m in [squeezenet1_0(1000).unwrap(), squeezenet1_1(1000).unwrap()] {
            let keys = m.state_keys();
            assert_eq!(keys.len(), 52);
            assert_eq!(keys[2], "features.3.squeeze.weight");
            assert_eq!(keys[51], "classifier.1.bias");
        }
    }

    #[test]
    fn forward_matches_the_reference() {
        use crate::nn::testing::check;
        check(fire(8, 4, 8).unwrap(), &[2, 8, 8, 8], 1e-5);
        check(squeezenet1_0(10).unwrap(), &[2, 3, 64, 64], 1e-5);
        check(squeezenet1_1(10).unwrap(), &[2, 3, 64, 64], 1e-5);
    }
}
