//! The parts of fastai's `create_body` that make tensors: a first conv for `n_in` channels.
use crate::bail;
use crate::error::Result;
use crate::nn::init::{conv2d, ConvCfg, Init};
use crate::nn::{Kind, Node, Value};
use tch::Tensor;

/// fastai's rule for a pretrained first conv's weight with `n_in` input channels:
/// 1 → the sum over RGB, 2 → the first two channels × 1.5, more → RGB then zeros.
pub fn adapt_weight(w: &Tensor, n_in: i64) -> Result<Tensor> {
    let size = w.size();
    if size.len() != 4 || size[1] != 3 {
        bail!(Value, "n_in: the first conv must take 3 input channels to adapt its weights, its weight has shape {size:?}");
    }
    Ok(match n_in {
        1 => w.f_sum_dim_intlist(1, true, None)?,
        2 => w.f_narrow(1, 0, 2)?.f_mul_scalar(1.5)?,
        n if n > 3 => {
            let zeros =
                Tensor::f_zeros([size[0], n - 3, size[2], size[3]], (w.kind(), w.device()))?;
            Tensor::f_cat(&[w.f_detach()?, zeros], 1)?
        }
        n => bail!(
            Value,
            "n_in must be a positive number of input channels, got {n}"
        ),
    })
}

/// A fresh first conv like `c` but for `n_in` channels (PyTorch's default init), with the
/// weight adapted from `pretrained` when given (fastai keeps the new conv's own bias).
pub fn first_conv(c: ConvCfg, n_in: i64, pretrained: Option<&Tensor>) -> Result<Node> {
    if n_in <= 0 {
        bail!(
            Value,
            "n_in must be a positive number of input channels, got {n_in}"
        );
    }
    let mut node = conv2d(ConvCfg { cin: n_in, ..c }, Init::Default)?;
    if let Some(w) = pretrained {
        node.tensors[0].1 = adapt_weight(w, n_in)?.f_detach()?;
    }
    Ok(node)
}

/// fastai's `create_body(arch, n_in, pretrained=False, cut)`: the arch-table model `arch` with
/// fresh weights, its first conv rebuilt for `n_in` channels (`_update_first_layer`), cut to
/// `nn.Sequential(*list(model.children())[:cut])`; `cut` `None` is the arch's own (its model_meta).
///
/// ```
/// let body = siamese_rs::create_body("resnet34", 1, None)?;
/// assert_eq!(body.children.len(), 8); // torchvision's ResNet up to `layer4`
/// assert_eq!(body.state_keys()[0], "0.weight");
/// # Ok::<(), siamese_rs::Error>(())
/// ```
pub fn create_body(arch: &str, n_in: i64, cut: Option<i64>) -> Result<Node> {
    let row = crate::arch::find(arch)?;
    let mut model = row.build()?;
    if n_in != 3 {
        replace_first_conv(&mut model, n_in)?;
    }
    let n = model.children.len() as i64;
    let cut = cut.unwrap_or(row.cut);
    // Python's `[:cut]`.
    let end = if cut < 0 {
        (n + cut).max(0)
    } else {
        cut.min(n)
    };
    let children = model.children.into_iter().take(end as usize);
    Ok(Node::seq(children.map(|(_, c)| c).collect()))
}

/// What fastai's `create_body(model, cut=None)` cuts at (Python's `create_body` too, and so a
/// model file's `"cut": null`): the last child of the arch's model with a pooling layer in it
/// (a class named `...Pool1d/2d/3d`). Not the arch table's cut, which `create_learner` uses.
pub fn pool_cut(arch: &str) -> Result<i64> {
    fn has_pool(n: &Node) -> bool {
        let name = n.kind.name();
        ["Pool1d", "Pool2d", "Pool3d"]
            .iter()
            .any(|p| name.ends_with(p))
            || n.children.iter().any(|(_, c)| has_pool(c))
    }
    let model = crate::nn::init::shapes_only(|| crate::arch::find(arch)?.build())?;
    match model.children.iter().rposition(|(_, c)| has_pool(c)) {
        Some(i) => Ok(i as i64),
        None => bail!(
            Value,
            "create_body: cut=None needs a child of {arch} with a pooling layer; pass cut"
        ),
    }
}

/// fastai's `_update_first_layer`: the module holding the first parameter must be a 3-channel
/// Conv2d; it becomes a fresh one for `n_in` channels with the same settings.
fn replace_first_conv(model: &mut Node, n_in: i64) -> Result<()> {
    let mut m = model;
    while m.tensors.is_empty() {
        let Some(i) = m.children.iter().position(|(_, c)| has_tensors(c)) else {
            bail!(Value, "n_in: the model has no parameters to adapt");
        };
        m = &mut m.children[i].1;
    }
    if m.kind != Kind::Conv2d {
        bail!(
            Value,
            "n_in: changing the input channels is only supported with a first Conv2d, found {}",
            m.kind.name()
        );
    }
    let int = |f: &str| match m.setting(f) {
        Some(Value::Int(v)) => Some(*v),
        Some(Value::Ints(v)) if v.iter().all(|x| *x == v[0]) => v.first().copied(),
        _ => None,
    };
    let (cin, cout, k) = (int("in_channels"), int("out_channels"), int("kernel_size"));
    let (stride, padding, groups) = (int("stride"), int("padding"), int("groups"));
    let bias = matches!(m.setting("bias"), Some(Value::Bool(true)));
    let (Some(3), Some(cout), Some(k), Some(stride), Some(padding), Some(1)) =
        (cin, cout, k, stride, padding, groups)
    else {
        bail!(
            Value,
            "n_in: changing the input channels needs a first Conv2d with 3 input channels, square settings and groups=1; found {}",
            m.kind.name()
        );
    };
    let cfg = ConvCfg {
        cin: n_in,
        cout,
        k,
        stride,
        padding,
        groups: 1,
        bias,
    };
    *m = first_conv(cfg, n_in, None)?;
    Ok(())
}

fn has_tensors(n: &Node) -> bool {
    !n.tensors.is_empty() || n.children.iter().any(|(_, c)| has_tensors(c))
}
