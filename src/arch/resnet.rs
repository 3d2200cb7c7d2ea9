//! ResNet, as torchvision builds it: "Deep Residual Learning for Image Recognition"
//! (He et al., 2015), with the stride on the 3×3 conv of the bottleneck (ResNet v1.5).
//! Child names and order follow torchvision, so `state_dict` keys are the same.
use super::named;
use crate::children;
use crate::error::Result;
use crate::nn::container::{Block, Container, Layout};
use crate::nn::exec::{path, residual, Exec, Run};
use crate::nn::init::{batch_norm, conv2d, conv_cfg, linear, max_pool, relu, Init, BN};
use crate::nn::{Kind, Node, Value};
use tch::Tensor;

/// The containers of the family, for the arch table.
pub const CONTAINERS: &[Container] = &[
    Container::wired::<BasicBlock>(Kind::BasicBlock, Layout::Blocked),
    Container::wired::<Bottleneck>(Kind::Bottleneck, Layout::Blocked),
    Container::wired::<ResNet>(Kind::ResNet, Layout::Dense),
];

children!(
    /// torchvision's `BasicBlock`.
    BasicBlock { conv1, bn1, relu, conv2, bn2; downsample }
);

impl Block for BasicBlock {
    fn forward(&self, c: &[Exec], x: Tensor, t: &Run, _: bool) -> Result<Tensor> {
        let main = [self.conv1, self.bn1, self.relu, self.conv2, self.bn2];
        let out = path(c, &main, x.shallow_clone(), t)?;
        residual(c, out, x, self.downsample, self.relu, t, true)
    }
}

children!(
    /// torchvision's `Bottleneck` (one ReLU module, applied three times).
    Bottleneck { conv1, bn1, conv2, bn2, conv3, bn3, relu; downsample }
);

impl Block for Bottleneck {
    fn forward(&self, c: &[Exec], x: Tensor, t: &Run, _: bool) -> Result<Tensor> {
        let relu = self.relu;
        let main = [
            self.conv1, self.bn1, relu, self.conv2, self.bn2, relu, self.conv3, self.bn3,
        ];
        let out = path(c, &main, x.shallow_clone(), t)?;
        residual(c, out, x, self.downsample, relu, t, true)
    }
}

children!(
    /// torchvision's `ResNet`: the stem, four stages, pooling, flattening and `fc`.
    ResNet { conv1, bn1, relu, maxpool, layer1, layer2, layer3, layer4, avgpool, fc }
);

impl Block for ResNet {
    fn forward(&self, c: &[Exec], x: Tensor, t: &Run, _: bool) -> Result<Tensor> {
        let features = [
            self.conv1,
            self.bn1,
            self.relu,
            self.maxpool,
            self.layer1,
            self.layer2,
            self.layer3,
            self.layer4,
            self.avgpool,
        ];
        let x = path(c, &features, x, t)?.f_flatten(1, -1)?;
        c[self.fc].run(x, t)
    }
}

const FAN_OUT: Init = Init::KaimingNormal { fan_out: true };

fn conv(cin: i64, cout: i64, k: i64, stride: i64) -> Result<Node> {
    conv2d(
        conv_cfg(cin, cout, k).stride(stride).padding(k / 2),
        FAN_OUT,
    )
}

fn bn(c: i64) -> Result<Node> {
    batch_norm(Kind::BatchNorm2d, c, BN)
}

fn downsample(cin: i64, cout: i64, stride: i64) -> Result<Option<Node>> {
    if stride == 1 && cin == cout {
        return Ok(None);
    }
    Ok(Some(Node::seq(vec![
        conv(cin, cout, 1, stride)?,
        bn(cout)?,
    ])))
}

fn basic_block(cin: i64, planes: i64, stride: i64) -> Result<Node> {
    let mut c = named(vec![
        ("conv1", conv(cin, planes, 3, stride)?),
        ("bn1", bn(planes)?),
        ("relu", relu(true)),
        ("conv2", conv(planes, planes, 3, 1)?),
        ("bn2", bn(planes)?),
    ]);
    c.extend(downsample(cin, planes, stride)?.map(|d| ("downsample".to_string(), d)));
    Ok(Node::with_children(
        Kind::BasicBlock,
        vec![Value::Int(stride)],
        c,
    ))
}

fn bottleneck(cin: i64, planes: i64, stride: i64) -> Result<Node> {
    let mut c = named(vec![
        ("conv1", conv(cin, planes, 1, 1)?),
        ("bn1", bn(planes)?),
        ("conv2", conv(planes, planes, 3, stride)?),
        ("bn2", bn(planes)?),
        ("conv3", conv(planes, planes * 4, 1, 1)?),
        ("bn3", bn(planes * 4)?),
        ("relu", relu(true)),
    ]);
    c.extend(downsample(cin, planes * 4, stride)?.map(|d| ("downsample".to_string(), d)));
    Ok(Node::with_children(
        Kind::Bottleneck,
        vec![Value::Int(stride)],
        c,
    ))
}

/// The generic builder: `bottleneck` picks the block, `layers` the blocks per stage.
fn resnet(bottleneck_blocks: bool, layers: [usize; 4], num_classes: i64) -> Result<Node> {
    let expansion = if bottleneck_blocks { 4 } else { 1 };
    let mut children = named(vec![
        (
            "conv1",
            conv2d(conv_cfg(3, 64, 7).stride(2).padding(3), FAN_OUT)?,
        ),
        ("bn1", bn(64)?),
        ("relu", relu(true)),
        ("maxpool", max_pool(3, 2, 1, false)),
    ]);
    let mut cin = 64;
    for (i, (&n, planes)) in layers.iter().zip([64, 128, 256, 512]).enumerate() {
        let stride = if i == 0 { 1 } else { 2 };
        let blocks = (0..n)
            .map(|j| {
                let s = if j == 0 { stride } else { 1 };
                let block = if bottleneck_blocks {
                    bottleneck(cin, planes, s)
                } else {
                    basic_block(cin, planes, s)
                };
                cin = planes * expansion;
                block
            })
            .collect::<Result<Vec<_>>>()?;
        children.push((format!("layer{}", i + 1), Node::seq(blocks)));
    }
    children.push((
        "avgpool".to_string(),
        crate::nn::init::adaptive_avg_pool(Value::Ints(vec![1, 1])),
    ));
    children.push((
        "fc".to_string(),
        linear(512 * expansion, num_classes, true, Init::Default)?,
    ));
    Ok(Node::with_children(Kind::ResNet, vec![], children))
}

pub fn resnet18(num_classes: i64) -> Result<Node> {
    resnet(false, [2, 2, 2, 2], num_classes)
}
pub fn resnet34(num_classes: i64) -> Result<Node> {
    resnet(false, [3, 4, 6, 3], num_classes)
}
pub fn resnet50(num_classes: i64) -> Result<Node> {
    resnet(true, [3, 4, 6, 3], num_classes)
}
pub fn resnet101(num_classes: i64) -> Result<Node> {
    resnet(true, [3, 4, 23, 3], num_classes)
}
pub fn resnet152(num_classes: i64) -> Result<Node> {
    resnet(true, [3, 8, 36, 3], num_classes)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The executor against `nn::testing::reference`, in train and eval.
    #[test]
    fn forward_matches_the_reference() {
        use crate::nn::testing::check;
        check(basic_block(8, 8, 1).unwrap(), &[2, 8, 8, 8], 1e-5);
        check(basic_block(8, 16, 2).unwrap(), &[2, 8, 8, 8], 1e-5);
        check(bottleneck(16, 8, 2).unwrap(), &[2, 16, 8, 8], 1e-5);
        check(bottleneck(32, 8, 1).unwrap(), &[2, 32, 8, 8], 1e-5);
        check(resnet18(10).unwrap(), &[2, 3, 32, 32], 1e-5);
        check(resnet50(10).unwrap(), &[2, 3, 32, 32], 1e-5);
    }

    /// Children are found by name: a block listing them in another order computes the same, and
    /// a child its forward does not call is refused (by position, both went wrong silently).
    #[test]
    fn children_are_addressed_by_name() {
        let block = basic_block(8, 16, 2).unwrap();
        let mut shuffled = block.share();
        shuffled.children.reverse();
        let x = Tensor::randn([2, 8, 8, 8], (tch::Kind::Float, tch::Device::Cpu));
        let want = crate::Model::new(block).forward_t(&x, false).unwrap();
        let got = crate::Model::new(shuffled.share())
            .forward_t(&x, false)
            .unwrap();
        assert!(got.equal(&want));
        shuffled.children.push(("extra".to_string(), relu(true)));
        let err = crate::Model::new(shuffled)
            .forward_t(&x, false)
            .unwrap_err();
        assert!(
            err.to_string().contains("no child called \"extra\""),
            "{err}"
        );
    }
}
