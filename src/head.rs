//! fastai's `create_head` (fastai 2.8.12, `vision/learner.py`) and the `LinBnDrop` it
//! flattens into the head, rule for rule, including `zip`'s truncation of `ps`.
use crate::bail;
use crate::children;
use crate::error::Result;
use crate::nn::container::{Block, Container, Layout};
use crate::nn::exec::{Exec, Run};
use crate::nn::init::{adaptive_avg_pool, batch_norm, dropout, linear, relu, BnCfg, Init, BN};
use crate::nn::{Kind, Node, Value};
use tch::Tensor;

/// The head's containers.
pub const CONTAINERS: &[Container] = &[Container::wired::<ConcatPool>(
    Kind::AdaptiveConcatPool2d,
    Layout::Dense,
)];

children!(
    /// fastai's `AdaptiveConcatPool2d`: `cat([mp(x), ap(x)], 1)`.
    ConcatPool { ap, mp }
);

impl Block for ConcatPool {
    fn forward(&self, c: &[Exec], x: Tensor, t: &Run, _: bool) -> Result<Tensor> {
        let mp = c[self.mp].run(x.shallow_clone(), t)?;
        let ap = c[self.ap].run(x, t)?;
        Ok(Tensor::f_cat(&[mp, ap], 1)?)
    }
}

/// The tutorial's head: a resnet34 body's 512 features per image, concatenated (1,024), two classes.
impl Default for HeadConfig {
    fn default() -> HeadConfig {
        HeadConfig::new(1024, 2)
    }
}

/// fastai's `BatchNorm(nf, ndim=1)`: PyTorch's BatchNorm1d with its bias started at 1e-3.
const FASTAI_BN: BnCfg = BnCfg { bias: 1e-3, ..BN };

/// Largest `nf`, `n_out` or `lin_ftrs` entry: far above any real head, and small enough that
/// doubling `nf` for concat pooling cannot overflow.
pub const MAX_FEATURES: i64 = 1 << 31;

/// The arguments of `create_head`, with fastai's defaults in `new`. A model file's `"head"` (written by
/// `sr.export_model`) deserialises into it (the `cli` feature).
#[derive(Clone, Debug)]
#[cfg_attr(feature = "cli", derive(serde::Deserialize))]
pub struct HeadConfig {
    pub nf: i64,
    pub n_out: i64,
    pub lin_ftrs: Option<Vec<i64>>,
    /// `ps` as fastai's `L(ps)`: one value is expanded, a list is used as given.
    pub ps: Vec<f64>,
    pub pool: bool,
    pub concat_pool: bool,
    pub first_bn: bool,
    pub bn_final: bool,
    pub lin_first: bool,
    pub y_range: Option<(f64, f64)>,
}

impl HeadConfig {
    /// fastai's defaults for `nf` features in and `n_out` out.
    pub fn new(nf: i64, n_out: i64) -> HeadConfig {
        HeadConfig {
            nf,
            n_out,
            lin_ftrs: None,
            ps: vec![0.5],
            pool: true,
            concat_pool: true,
            first_bn: true,
            bn_final: false,
            lin_first: false,
            y_range: None,
        }
    }

    fn check(&self) -> Result<()> {
        let mut sizes = [self.nf, self.n_out]
            .into_iter()
            .chain(self.lin_ftrs.iter().flatten().copied());
        if let Some(n) = sizes.find(|n| *n > MAX_FEATURES) {
            bail!(
                Value,
                "create_head: layer sizes must be at most {MAX_FEATURES}, got {n}"
            );
        }
        if self.nf <= 0 {
            bail!(
                Value,
                "create_head: nf must be a positive number of features, got {}",
                self.nf
            );
        }
        if self.n_out <= 0 {
            bail!(
                Value,
                "create_head: n_out must be a positive number of outputs, got {}",
                self.n_out
            );
        }
        if let Some(f) = self.lin_ftrs.iter().flatten().find(|f| **f <= 0) {
            bail!(
                Value,
                "create_head: lin_ftrs must hold positive layer sizes, got {f} in {:?}",
                self.lin_ftrs.as_ref().unwrap_or(&vec![])
            );
        }
        if self.ps.is_empty() {
            bail!(
                Value,
                "create_head: ps must hold at least one dropout probability, got []"
            );
        }
        if let Some(p) = self.ps.iter().find(|p| !(0.0..=1.0).contains(*p)) {
            bail!(
                Value,
                "create_head: dropout probabilities in ps must be between 0 and 1, got {p}"
            );
        }
        if let Some((low, high)) = self
            .y_range
            .filter(|(l, h)| !l.is_finite() || !h.is_finite())
        {
            bail!(
                Value,
                "create_head: y_range must be two finite numbers, got ({low}, {high})"
            );
        }
        Ok(())
    }
}

/// `LinBnDrop(n_in, n_out, bn, p, act, lin_first)`, as the list of layers fastai flattens.
fn lin_bn_drop(
    n_in: i64,
    n_out: i64,
    bn: bool,
    p: f64,
    act: bool,
    lin_first: bool,
) -> Result<Vec<Node>> {
    let mut norm = vec![];
    if bn {
        norm.push(batch_norm(
            Kind::BatchNorm1d,
            if lin_first { n_out } else { n_in },
            FASTAI_BN,
        )?);
    }
    if p != 0.0 {
        norm.push(dropout(p));
    }
    let mut lin = vec![linear(n_in, n_out, !bn, Init::Default)?];
    if act {
        lin.push(relu(true));
    }
    let (mut first, second) = if lin_first { (lin, norm) } else { (norm, lin) };
    first.extend(second);
    Ok(first)
}

/// `create_head(...)` as an `nn.Sequential` node.
pub fn create_head(c: &HeadConfig) -> Result<Node> {
    c.check()?;
    let nf = if c.pool && c.concat_pool {
        c.nf * 2
    } else {
        c.nf
    };
    let ftrs: Vec<i64> = match &c.lin_ftrs {
        None => vec![nf, 512, c.n_out],
        Some(l) => [vec![nf], l.clone(), vec![c.n_out]].concat(),
    };
    let n = ftrs.len();
    let bns: Vec<bool> = std::iter::once(c.first_bn)
        .chain(std::iter::repeat(true))
        .take(n - 1)
        .collect();
    let mut ps = if c.ps.len() == 1 {
        [vec![c.ps[0] / 2.0; n - 2], c.ps.clone()].concat()
    } else {
        c.ps.clone()
    };
    let mut layers = vec![];
    if c.pool {
        layers.push(if c.concat_pool {
            concat_pool()
        } else {
            adaptive_avg_pool(Value::Int(1))
        });
        layers.push(Node::leaf(Kind::Flatten, vec![Value::Bool(false)]));
    }
    if c.lin_first {
        layers.push(dropout(ps.remove(0)));
    }
    // zip() in fastai: the shortest of the lists decides how many blocks there are.
    let blocks = (n - 1).min(ps.len());
    for i in 0..blocks {
        let act = i < n - 2;
        layers.extend(lin_bn_drop(
            ftrs[i],
            ftrs[i + 1],
            bns[i],
            ps[i],
            act,
            c.lin_first,
        )?);
    }
    if c.lin_first {
        layers.push(linear(ftrs[n - 2], c.n_out, true, Init::Default)?);
    }
    if c.bn_final {
        layers.push(batch_norm(
            Kind::BatchNorm1d,
            ftrs[n - 1],
            BnCfg {
                momentum: Some(0.01),
                ..BN
            },
        )?);
    }
    if let Some((low, high)) = c.y_range {
        layers.push(Node::leaf(
            Kind::SigmoidRange,
            vec![Value::Float(low), Value::Float(high)],
        ));
    }
    Ok(Node::seq(layers))
}

/// fastai's `AdaptiveConcatPool2d()`: children `ap` (average) and `mp` (max), size 1.
fn concat_pool() -> Node {
    let children = vec![
        (
            "ap".to_string(),
            Node::leaf(Kind::AdaptiveAvgPool2d, vec![Value::Int(1)]),
        ),
        (
            "mp".to_string(),
            Node::leaf(Kind::AdaptiveMaxPool2d, vec![Value::Int(1)]),
        ),
    ];
    Node::with_children(Kind::AdaptiveConcatPool2d, vec![Value::Int(1)], children)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(c: &HeadConfig) -> Vec<Kind> {
        create_head(c)
            .unwrap()
            .children
            .iter()
            .map(|(_, n)| n.kind)
            .collect()
    }

    #[test]
    fn fastai_test_cells() {
        let base = HeadConfig::new(5, 10);
        let k = kinds(&base);
        assert_eq!(k.len(), 9);
        assert_eq!(k[2], Kind::BatchNorm1d);
        assert_eq!(k[8], Kind::Linear);
        let k = kinds(&HeadConfig {
            lin_first: true,
            ..base.clone()
        });
        assert_eq!((k.len(), k[2]), (8, Kind::Dropout));
        let k = kinds(&HeadConfig {
            first_bn: false,
            ..base.clone()
        });
        assert_eq!((k.len(), k[2]), (8, Kind::Dropout));
    }

    #[test]
    fn nf_is_doubled_for_concat_pool() {
        let h = create_head(&HeadConfig::new(5, 10)).unwrap();
        assert_eq!(
            h.children[4].1.setting("in_features"),
            Some(&Value::Int(10))
        );
        let h = create_head(&HeadConfig {
            concat_pool: false,
            ..HeadConfig::new(5, 10)
        })
        .unwrap();
        assert_eq!(h.children[4].1.setting("in_features"), Some(&Value::Int(5)));
    }

    #[test]
    fn bad_arguments_are_errors() {
        assert!(create_head(&HeadConfig::new(0, 2)).is_err());
        assert!(create_head(&HeadConfig {
            ps: vec![1.5],
            ..HeadConfig::new(4, 2)
        })
        .is_err());
    }

    #[test]
    fn forward_matches_the_reference() {
        use crate::nn::testing::check;
        check(
            create_head(&HeadConfig::new(16, 2)).unwrap(),
            &[4, 16, 3, 3],
            1e-5,
        );
        let cfg = HeadConfig {
            lin_ftrs: Some(vec![12, 6]),
            ps: vec![0.3, 0.2, 0.1], // lin_first takes the first for its leading dropout
            bn_final: true,
            lin_first: true,
            y_range: Some((-1.0, 2.0)),
            ..HeadConfig::new(8, 3)
        };
        check(create_head(&cfg).unwrap(), &[4, 8, 3, 3], 1e-5);
        let cfg = HeadConfig {
            concat_pool: false,
            ..HeadConfig::new(8, 2)
        };
        check(create_head(&cfg).unwrap(), &[4, 8, 3, 3], 1e-5);
    }
}
