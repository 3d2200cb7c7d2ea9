//! Containers of the torchvision and fastai families beyond ResNet, computed as their
//! reference `forward` computes them (same ops, same order, so results match bit for bit).
use super::{chain, dense, same_layout, Exec, FlatModule, Run};
use crate::bail;
use crate::error::Result;
use crate::nn::kind::Kind;
use tch::Tensor;

/// Whether `kind` is one of the containers below.
pub(super) fn runs(kind: Kind) -> bool {
    matches!(
        kind,
        Kind::ResBlock
            | Kind::VGG
            | Kind::AlexNet
            | Kind::DenseNet
            | Kind::SqueezeNet
            | Kind::_DenseBlock
            | Kind::_DenseLayer
            | Kind::Fire
    )
}

/// The `F.dropout` rate of a torchvision `_DenseLayer` (0 for every other module).
pub(super) fn drop_rate(m: &FlatModule) -> Result<f64> {
    match (m.kind, m.settings.first()) {
        (Kind::_DenseLayer, Some(v)) => match v.float() {
            Some(p) if (0.0..=1.0).contains(&p) => Ok(p),
            Some(p) => bail!(Value, "_DenseLayer: drop_rate must be in [0, 1], got {p}"),
            None => bail!(Value, "_DenseLayer: drop_rate must be a float in [0, 1]"),
        },
        _ => Ok(0.0),
    }
}

impl Exec {
    /// The forward of family container `kind` (one for which `runs` holds).
    pub(super) fn run_family(&self, kind: Kind, x: Tensor, t: &Run) -> Result<Tensor> {
        let c = &self.children;
        match kind {
            Kind::ResBlock => {
                // fastai: `act(convpath(x) + idpath(x))`, the sum out of place.
                let out = c[0].run(x.shallow_clone(), t)?;
                let (out, id) = same_layout(out, c[1].run(x, t)?)?;
                c[2].run(out.f_add(&id)?, t)
            }
            Kind::VGG | Kind::AlexNet => {
                let x = dense(chain(&c[..2], x, t)?)?.f_flatten(1, -1)?;
                c[2].run(x, t)
            }
            Kind::DenseNet => {
                // torchvision applies ReLU and pooling in `forward`, after `features`.
                let mut f = dense(c[0].run(x, t)?)?;
                let x = f
                    .f_relu_()?
                    .f_adaptive_avg_pool2d([1, 1])?
                    .f_flatten(1, -1)?;
                c[1].run(x, t)
            }
            Kind::SqueezeNet => Ok(dense(chain(c, x, t)?)?.f_flatten(1, -1)?),
            Kind::_DenseBlock => {
                let mut features = vec![x];
                for layer in c {
                    let input = Tensor::f_cat(&features, 1)?;
                    features.push(layer.run(input, t)?);
                }
                Ok(Tensor::f_cat(&features, 1)?)
            }
            Kind::_DenseLayer => {
                let y = chain(c, x, t)?;
                if self.drop_rate > 0.0 {
                    return Ok(y.f_dropout(self.drop_rate, self.training)?);
                }
                Ok(y)
            }
            Kind::Fire => {
                let s = c[1].run(c[0].run(x, t)?, t)?;
                let a = c[3].run(c[2].run(s.shallow_clone(), t)?, t)?;
                let b = c[5].run(c[4].run(s, t)?, t)?;
                Ok(Tensor::f_cat(&[a, b], 1)?)
            }
            _ => chain(c, x, t),
        }
    }
}
