//! fastai's `SiameseModel(encoder, head)`: `head(cat([encoder(x1), encoder(x2)], dim=1))`, the
//! root of a compiled graph that takes two inputs.
use crate::bail;
use crate::children;
use crate::error::Result;
use crate::nn::container::{Block, Container, Layout, Names, Wiring};
use crate::nn::exec::{layout, Exec, FlatModule, Run};
use crate::nn::Kind;
use tch::Tensor;

/// The root's row: a `SiameseModel` computes only as the root of a graph.
pub const CONTAINERS: &[Container] = &[Container::wired::<Siamese>(
    Kind::SiameseModel,
    Layout::Dense,
)];

children!(
    /// The encoder and head of a `SiameseModel`.
    Siamese { encoder, head }
);

impl Block for Siamese {
    fn forward(&self, _: &[Exec], _: Tensor, _: &Run, _: bool) -> Result<Tensor> {
        bail!(Type, "SiameseModel.forward takes two inputs (x1, x2)")
    }
}

impl Siamese {
    /// The wiring of root module `m`.
    pub(crate) fn of(m: &FlatModule) -> Result<Siamese> {
        Siamese::resolve(&Names {
            kind: m.kind,
            names: &m.children,
        })
    }

    /// `head(cat([encoder(x1), encoder(x2)], dim=1))` for the compiled `root`.
    pub(crate) fn forward(
        &self,
        root: &Exec,
        x1: Tensor,
        x2: Tensor,
        t: &Run,
        fast: bool,
    ) -> Result<Tensor> {
        let (s1, s2) = (x1.size(), x2.size());
        if s1 != s2 {
            bail!(Shape, "x1 and x2 must have the same shape (batch, channels, height, width); got x1 {s1:?} and x2 {s2:?}");
        }
        if s1.len() != 4 {
            bail!(
                Shape,
                "x1 and x2 must be 4-d (batch, channels, height, width); got shape {s1:?}"
            );
        }
        let (encoder, head) = (&root.children[self.encoder], &root.children[self.head]);
        let b = s1[0];
        let features = if layout::both_sides_at_once(encoder, b, s1[2] * s1[3]) {
            let both = Tensor::f_cat(&[x1, x2], 0)?;
            let f = layout::encode(encoder, both, t, fast, 2 * b)?;
            Tensor::f_cat(&[f.f_narrow(0, 0, b)?, f.f_narrow(0, b, b)?], 1)?
        } else {
            let f1 = layout::encode(encoder, x1, t, fast, b)?;
            let f2 = layout::encode(encoder, x2, t, fast, b)?;
            Tensor::f_cat(&[f1, f2], 1)?
        };
        if let Some(want) = input_channels(head, t) {
            let got = features.size().get(1).copied().unwrap_or(0);
            if got != want {
                bail!(
                    Shape,
                    "the head expects {want} input channels but the two encoder outputs concatenate to {got}; \
                     build it with create_head({got}, n_out) (create_head doubles nf itself for concat pooling)"
                );
            }
        }
        head.run(features, t)
    }
}

/// Channels a head expects: the first BatchNorm/Linear width, halved after a concat pool.
fn input_channels(head: &Exec, t: &Run) -> Option<i64> {
    use crate::nn::ops::Op;
    let mut concat = false;
    for c in &head.children {
        if c.kind == Kind::AdaptiveConcatPool2d {
            concat = true;
            continue;
        }
        let first = c.slot_tensors(t).next().flatten();
        let width = match c.op()? {
            Op::BatchNorm { dim: 1, .. } => {
                c.slot_tensors(t).flatten().map(Tensor::numel).next()? as i64
            }
            Op::Linear => *first?.size().get(1)?,
            Op::Conv2d { .. } | Op::BatchNorm { .. } => return None,
            _ => continue,
        };
        return Some(if concat { width / 2 } else { width });
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::nn::testing;
    use crate::{create_body, create_head, HeadConfig, SiameseModel};
    use tch::{Device, Kind as DType};

    /// `SiameseModel` against `head(cat([encoder(x1), encoder(x2)], 1))`, in train and eval, for
    /// batches that take the one-call and the side-by-side path.
    #[test]
    fn forward_matches_the_reference() {
        for (arch, nf, batch) in [("resnet18", 1024, 3), ("squeezenet1_1", 1024, 20)] {
            let body = create_body(arch, 3, None).unwrap();
            let model = SiameseModel::new(body, create_head(&HeadConfig::new(nf, 2)).unwrap());
            let x1 = Tensor::randn([batch, 3, 64, 64], (DType::Float, Device::Cpu));
            let x2 = Tensor::randn([batch, 3, 64, 64], (DType::Float, Device::Cpu));
            for train in [false, true] {
                tch::manual_seed(3);
                let ours = model.forward_t(&x1, &x2, train).unwrap();
                tch::manual_seed(3);
                let want = testing::siamese(model.node(), &x1, &x2, train);
                let diff = (&ours - &want).abs().max().double_value(&[]);
                assert!(diff < 1e-4, "{arch} train={train}: {diff}");
            }
            let enc = model.encode(&x1).unwrap();
            let want = testing::reference(&model.node().children[0].1, &x1, false);
            assert!((&enc - &want).abs().max().double_value(&[]) < 1e-5);
        }
    }

    /// An empty batch never reaches oneDNN: the encoder answers an empty batch of features as
    /// PyTorch does, and the head refuses it as fastai's does (its Flatten views `(0, -1)`).
    #[test]
    fn an_empty_batch_answers_as_pytorch() {
        let body = create_body("resnet18", 3, None).unwrap();
        let model = SiameseModel::new(body, create_head(&HeadConfig::new(1024, 2)).unwrap());
        let x = Tensor::randn([0, 3, 64, 64], (DType::Float, Device::Cpu));
        let want = testing::reference(&model.node().children[0].1, &x, false);
        assert_eq!(model.encode(&x).unwrap().size(), want.size());
        let err = model.forward_t(&x, &x, false).unwrap_err().to_string();
        assert!(err.contains("cannot reshape tensor of 0 elements"), "{err}");
        let x1 = Tensor::randn([2, 3, 64, 64], (DType::Float, Device::Cpu));
        assert_eq!(model.forward_t(&x1, &x1, false).unwrap().size(), [2, 2]);
    }
}
