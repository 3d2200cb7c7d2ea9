//! A reference forward for tests, written from the PyTorch modules' `forward` with plain tch ops
//! and no executor code: the families' tests check the executor against it, in train and eval.
use super::{Kind, Node, Value};
use tch::Tensor;

fn child<'a>(n: &'a Node, name: &str) -> Option<&'a Node> {
    n.children.iter().find(|(k, _)| k == name).map(|(_, c)| c)
}

fn get<'a>(n: &'a Node, name: &str) -> Option<&'a Tensor> {
    n.tensors.iter().find(|(k, _)| k == name).map(|(_, t)| t)
}

fn ints(n: &Node, f: &str) -> Vec<i64> {
    match n.setting(f) {
        Some(Value::Int(v)) => vec![*v, *v],
        Some(Value::Ints(v)) => v.clone(),
        other => panic!("{}: {f} = {other:?}", n.kind.name()),
    }
}

fn int(n: &Node, f: &str) -> i64 {
    match n.setting(f) {
        Some(Value::Int(v)) => *v,
        other => panic!("{}: {f} = {other:?}", n.kind.name()),
    }
}

fn flag(n: &Node, f: &str) -> bool {
    matches!(n.setting(f), Some(Value::Bool(true)))
}

fn float(n: &Node, f: &str) -> f64 {
    match n.setting(f) {
        Some(Value::Float(v)) => *v,
        Some(Value::Int(v)) => *v as f64,
        other => panic!("{}: {f} = {other:?}", n.kind.name()),
    }
}

fn run(n: &Node, name: &str, x: &Tensor, train: bool) -> Tensor {
    reference(child(n, name).expect(name), x, train)
}

fn chain(n: &Node, names: &[&str], x: &Tensor, train: bool) -> Tensor {
    names
        .iter()
        .fold(x.shallow_clone(), |x, name| run(n, name, &x, train))
}

fn all(n: &Node, x: &Tensor, train: bool) -> Tensor {
    n.children
        .iter()
        .fold(x.shallow_clone(), |x, (_, c)| reference(c, &x, train))
}

/// `n`'s forward on `x`: the PyTorch module's, op for op.
pub fn reference(n: &Node, x: &Tensor, train: bool) -> Tensor {
    match n.kind {
        Kind::Conv2d => x.conv2d(
            get(n, "weight").unwrap(),
            get(n, "bias"),
            ints(n, "stride"),
            ints(n, "padding"),
            ints(n, "dilation"),
            int(n, "groups"),
        ),
        Kind::BatchNorm1d | Kind::BatchNorm2d => x.batch_norm(
            get(n, "weight"),
            get(n, "bias"),
            get(n, "running_mean"),
            get(n, "running_var"),
            train,
            0.1,
            float(n, "eps"),
            false,
        ),
        Kind::Linear => x.linear(get(n, "weight").unwrap(), get(n, "bias")),
        Kind::ReLU => x.relu(),
        Kind::MaxPool2d => x.max_pool2d(
            ints(n, "kernel_size"),
            ints(n, "stride"),
            ints(n, "padding"),
            ints(n, "dilation"),
            flag(n, "ceil_mode"),
        ),
        Kind::AvgPool2d => x.avg_pool2d(
            ints(n, "kernel_size"),
            ints(n, "stride"),
            ints(n, "padding"),
            flag(n, "ceil_mode"),
            flag(n, "count_include_pad"),
            None,
        ),
        Kind::AdaptiveAvgPool2d => x.adaptive_avg_pool2d(ints(n, "output_size")),
        Kind::AdaptiveMaxPool2d => x.adaptive_max_pool2d(ints(n, "output_size")).0,
        Kind::Flatten => x.flatten(1, -1),
        Kind::Dropout => x.dropout(float(n, "p"), train),
        Kind::SigmoidRange => {
            let (lo, hi) = (float(n, "low"), float(n, "high"));
            x.sigmoid() * (hi - lo) + lo
        }
        Kind::Identity => x.shallow_clone(),
        Kind::BasicBlock => {
            let out = chain(n, &["conv1", "bn1", "relu", "conv2", "bn2"], x, train);
            (out + skip(n, x, train)).relu()
        }
        Kind::Bottleneck => {
            let names = [
                "conv1", "bn1", "relu", "conv2", "bn2", "relu", "conv3", "bn3",
            ];
            (chain(n, &names, x, train) + skip(n, x, train)).relu()
        }
        Kind::ResNet => {
            let stem = [
                "conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3",
            ];
            let x = chain(n, &stem, x, train);
            let x = chain(n, &["layer4", "avgpool"], &x, train).flatten(1, -1);
            run(n, "fc", &x, train)
        }
        Kind::ResBlock => {
            let out = run(n, "convpath", x, train) + run(n, "idpath", x, train);
            run(n, "act", &out, train)
        }
        Kind::VGG | Kind::AlexNet => {
            let x = chain(n, &["features", "avgpool"], x, train).flatten(1, -1);
            run(n, "classifier", &x, train)
        }
        Kind::DenseNet => {
            let f = run(n, "features", x, train).relu();
            let x = f.adaptive_avg_pool2d([1, 1]).flatten(1, -1);
            run(n, "classifier", &x, train)
        }
        Kind::_DenseBlock => {
            let mut features = vec![x.shallow_clone()];
            for (_, layer) in &n.children {
                let y = reference(layer, &Tensor::cat(&features, 1), train);
                features.push(y);
            }
            Tensor::cat(&features, 1)
        }
        Kind::_DenseLayer => all(n, x, train).dropout(float(n, "drop_rate"), train),
        Kind::SqueezeNet => chain(n, &["features", "classifier"], x, train).flatten(1, -1),
        Kind::Fire => {
            let s = chain(n, &["squeeze", "squeeze_activation"], x, train);
            let a = chain(n, &["expand1x1", "expand1x1_activation"], &s, train);
            let b = chain(n, &["expand3x3", "expand3x3_activation"], &s, train);
            Tensor::cat(&[a, b], 1)
        }
        Kind::AdaptiveConcatPool2d => {
            Tensor::cat(&[run(n, "mp", x, train), run(n, "ap", x, train)], 1)
        }
        Kind::SiameseModel => panic!("SiameseModel takes two inputs: use `siamese`"),
        Kind::Sequential | Kind::ConvLayer | Kind::XResNet | Kind::_Transition => all(n, x, train),
    }
}

fn skip(n: &Node, x: &Tensor, train: bool) -> Tensor {
    match child(n, "downsample") {
        Some(d) => reference(d, x, train),
        None => x.shallow_clone(),
    }
}

/// `SiameseModel.forward`: `head(cat([encoder(x1), encoder(x2)], dim=1))`.
pub fn siamese(n: &Node, x1: &Tensor, x2: &Tensor, train: bool) -> Tensor {
    let f = Tensor::cat(
        &[run(n, "encoder", x1, train), run(n, "encoder", x2, train)],
        1,
    );
    run(n, "head", &f, train)
}

/// Runs the executor (through `Model`) and the reference on the same input, in eval, then in
/// training mode with every dropout off (the tests share torch's global generator across threads,
/// so random masks cannot be compared; `dense_layer_drops_in_training` checks one on its own),
/// and asserts they agree within `tol` (max abs difference, relative to the output's scale).
pub fn check(node: Node, input: &[i64], tol: f64) {
    let x = Tensor::randn(input, (tch::Kind::Float, tch::Device::Cpu));
    let eval = crate::Model::new(node);
    compare(&eval, &x, false, tol);
    let mut node = eval.into_node();
    no_dropout(&mut node);
    compare(&crate::Model::new(node), &x, true, tol);
}

fn compare(model: &crate::Model, x: &Tensor, train: bool, tol: f64) {
    let ours = model.forward_t(x, train).unwrap();
    let want = reference(model.node(), x, train);
    assert_eq!(ours.size(), want.size(), "train={train}");
    let diff = (&ours - &want).abs().max().double_value(&[]);
    let scale = want.abs().max().double_value(&[]).max(1.0);
    assert!(
        diff <= tol * scale,
        "{}: train={train}: max |ours - reference| = {diff} (scale {scale})",
        model.node().kind.name()
    );
}

/// Sets every dropout probability in the tree to 0.
pub fn no_dropout(n: &mut Node) {
    if matches!(n.kind, Kind::Dropout | Kind::_DenseLayer) {
        n.settings[0] = Value::Float(0.0);
    }
    n.children.iter_mut().for_each(|(_, c)| no_dropout(c));
}
