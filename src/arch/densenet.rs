//! DenseNet-BC, as torchvision builds it: "Densely Connected Convolutional Networks"
//! (Huang et al., 2016). `features` is an `nn.Sequential` with torchvision's names
//! (`conv0`, `denseblock1`, `transition1`, ..., `norm5`); each `_DenseBlock` feeds every layer
//! the concatenation of all earlier outputs. The ReLU and pooling after `norm5` live in
//! `DenseNet.forward`, so fastai's body (`cut=-1`) ends at `norm5` without them.
use crate::bail;
use crate::children;
use crate::error::Result;
use crate::nn::container::{Block, Container, Layout};
use crate::nn::exec::{chain, layout::dense, Exec, Run};
use crate::nn::init::{avg_pool, batch_norm, conv2d, conv_cfg, linear, max_pool, relu, Init, BN};
use crate::nn::{Kind, Node, Value};
use tch::Tensor;

/// The containers of the family, for the arch table.
pub const CONTAINERS: &[Container] = &[
    Container::wired::<DenseNet>(Kind::DenseNet, Layout::Dense),
    Container {
        kind: Kind::_DenseBlock,
        children: None,
        layout: Layout::ChannelsLast,
        compile: |_, _| Ok(Box::new(DenseBlock)),
    },
    Container {
        kind: Kind::_DenseLayer,
        children: None,
        layout: Layout::Dense,
        compile: |_, settings| Ok(Box::new(DenseLayer::new(settings)?)),
    },
    Container::chain(Kind::_Transition, Layout::Blocked),
];

children!(
    /// torchvision's `DenseNet`, which applies ReLU and pooling in `forward`, after `features`.
    DenseNet { features, classifier }
);

impl Block for DenseNet {
    fn forward(&self, c: &[Exec], x: Tensor, t: &Run, _: bool) -> Result<Tensor> {
        let mut f = dense(c[self.features].run(x, t)?)?;
        let x = f
            .f_relu_()?
            .f_adaptive_avg_pool2d([1, 1])?
            .f_flatten(1, -1)?;
        c[self.classifier].run(x, t)
    }
}

/// `_DenseBlock`: each layer takes the concatenation of the input and all earlier outputs.
#[derive(Debug)]
struct DenseBlock;

impl Block for DenseBlock {
    fn forward(&self, c: &[Exec], x: Tensor, t: &Run, _: bool) -> Result<Tensor> {
        let mut features = vec![x];
        for layer in c {
            let input = Tensor::f_cat(&features, 1)?;
            features.push(layer.run(input, t)?);
        }
        Ok(Tensor::f_cat(&features, 1)?)
    }
}

/// `_DenseLayer`: its children in turn, then `F.dropout(drop_rate)` on the output.
#[derive(Debug)]
struct DenseLayer {
    drop_rate: f64,
}

impl DenseLayer {
    fn new(settings: &[Value]) -> Result<DenseLayer> {
        let drop_rate = match settings.first().and_then(Value::float) {
            Some(p) if (0.0..=1.0).contains(&p) => p,
            Some(p) => bail!(Value, "_DenseLayer: drop_rate must be in [0, 1], got {p}"),
            None => bail!(Value, "_DenseLayer: drop_rate must be a float in [0, 1]"),
        };
        Ok(DenseLayer { drop_rate })
    }
}

impl Block for DenseLayer {
    fn forward(&self, c: &[Exec], x: Tensor, t: &Run, training: bool) -> Result<Tensor> {
        let y = chain(c, x, t)?;
        if self.drop_rate > 0.0 {
            return Ok(y.f_dropout(self.drop_rate, training)?);
        }
        Ok(y)
    }

    fn batch_dependent(&self, training: bool) -> bool {
        training && self.drop_rate > 0.0
    }
}

/// torchvision's init: kaiming_normal_ (fan_in) convs; BatchNorm at weight 1, bias 0.
const INIT: Init = Init::KaimingNormal { fan_out: false };

/// The 4× bottleneck of every dense layer (`bn_size`).
const BN_SIZE: i64 = 4;

fn conv(cin: i64, cout: i64, k: i64) -> Result<Node> {
    conv2d(conv_cfg(cin, cout, k).padding(k / 2), INIT)
}

fn bn(c: i64) -> Result<Node> {
    batch_norm(Kind::BatchNorm2d, c, BN)
}

/// `_DenseLayer(cin, growth_rate, bn_size=4, drop_rate=0)`.
fn dense_layer(cin: i64, growth: i64) -> Result<Node> {
    let children = super::named(vec![
        ("norm1", bn(cin)?),
        ("relu1", relu(true)),
        ("conv1", conv(cin, BN_SIZE * growth, 1)?),
        ("norm2", bn(BN_SIZE * growth)?),
        ("relu2", relu(true)),
        ("conv2", conv(BN_SIZE * growth, growth, 3)?),
    ]);
    let settings = vec![Value::Float(0.0), Value::Bool(false)];
    Ok(Node::with_children(Kind::_DenseLayer, settings, children))
}

fn dense_block(n: i64, cin: i64, growth: i64) -> Result<Node> {
    let layers = (0..n)
        .map(|i| {
            Ok((
                format!("denselayer{}", i + 1),
                dense_layer(cin + i * growth, growth)?,
            ))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Node::with_children(Kind::_DenseBlock, vec![], layers))
}

fn transition(cin: i64, cout: i64) -> Result<Node> {
    let children = super::named(vec![
        ("norm", bn(cin)?),
        ("relu", relu(true)),
        ("conv", conv(cin, cout, 1)?),
        ("pool", avg_pool(2, 2, false)),
    ]);
    Ok(Node::with_children(Kind::_Transition, vec![], children))
}

/// The generic builder: `growth` filters per layer, `blocks` layers per dense block, `init`
/// filters out of the stem.
fn densenet(growth: i64, blocks: [i64; 4], init: i64, num_classes: i64) -> Result<Node> {
    let mut features = super::named(vec![
        (
            "conv0",
            conv2d(conv_cfg(3, init, 7).stride(2).padding(3), INIT)?,
        ),
        ("norm0", bn(init)?),
        ("relu0", relu(true)),
        ("pool0", max_pool(3, 2, 1, false)),
    ]);
    let mut nf = init;
    for (i, &n) in blocks.iter().enumerate() {
        features.push((format!("denseblock{}", i + 1), dense_block(n, nf, growth)?));
        nf += n * growth;
        if i != blocks.len() - 1 {
            features.push((format!("transition{}", i + 1), transition(nf, nf / 2)?));
            nf /= 2;
        }
    }
    features.push(("norm5".to_string(), bn(nf)?));
    // torchvision leaves the classifier's weight at PyTorch's default and zeroes its bias.
    let mut classifier = linear(nf, num_classes, true, Init::Default)?;
    for (_, t) in classifier.tensors.iter_mut().filter(|(n, _)| n == "bias") {
        let _ = t.f_zero_()?;
    }
    let children = vec![
        (
            "features".to_string(),
            Node::with_children(Kind::Sequential, vec![], features),
        ),
        ("classifier".to_string(), classifier),
    ];
    Ok(Node::with_children(Kind::DenseNet, vec![], children))
}

pub fn densenet121(num_classes: i64) -> Result<Node> {
    densenet(32, [6, 12, 24, 16], 64, num_classes)
}
pub fn densenet161(num_classes: i64) -> Result<Node> {
    densenet(48, [6, 12, 36, 24], 96, num_classes)
}
pub fn densenet169(num_classes: i64) -> Result<Node> {
    densenet(32, [6, 12, 32, 32], 64, num_classes)
}
pub fn densenet201(num_classes: i64) -> Result<Node> {
    densenet(32, [6, 12, 48, 32], 64, num_classes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn densenet121_keys_follow_torchvision() {
        let m = densenet121(1000).unwrap();
        let keys = m.state_keys();
        assert_eq!(keys[0], "features.conv0.weight");
        assert!(keys.contains(&"features.denseblock4.denselayer16.conv2.weight".to_string()));
        assert!(keys.contains(&"features.transition3.conv.weight".to_string()));
        assert_eq!(keys[keys.len() - 2], "classifier.weight");
        let norm5 = &m.children[0].1.children.last().unwrap().1;
        assert_eq!(norm5.tensors[0].1.size(), [1024]);
    }

    #[test]
    fn forward_matches_the_reference() {
        use crate::nn::testing::check;
        let mut layer = dense_layer(8, 4).unwrap();
        layer.settings[0] = Value::Float(0.2); // torchvision's drop_rate, applied in the forward
        check(layer, &[2, 8, 8, 8], 1e-5);
        check(dense_block(3, 8, 4).unwrap(), &[2, 8, 8, 8], 1e-5);
        check(transition(8, 4).unwrap(), &[2, 8, 8, 8], 1e-5);
        check(densenet121(10).unwrap(), &[2, 3, 32, 32], 1e-5);
    }

    /// torchvision's `_DenseLayer` applies `F.dropout(drop_rate)` to its output in training:
    /// about half the values are zeroed, the others are the dropout-free output times 2.
    #[test]
    fn dense_layer_drops_in_training() {
        let mut layer = dense_layer(8, 64).unwrap();
        layer.settings[0] = Value::Float(0.5);
        let x = Tensor::randn([4, 8, 16, 16], (tch::Kind::Float, tch::Device::Cpu));
        let model = crate::Model::new(layer);
        let dropped = model.forward_t(&x, true).unwrap();
        let mut node = model.into_node();
        node.settings[0] = Value::Float(0.0);
        let plain = crate::Model::new(node).forward_t(&x, true).unwrap();
        let kept = dropped.ne(0.0);
        let share = 1.0
            - kept
                .to_kind(tch::Kind::Float)
                .mean(tch::Kind::Float)
                .double_value(&[]);
        let diff = (dropped - plain * 2.0) * kept.to_kind(tch::Kind::Float);
        assert!(diff.abs().max().double_value(&[]) < 1e-5);
        assert!((0.45..0.55).contains(&share), "zeroed share {share}");
    }
}
