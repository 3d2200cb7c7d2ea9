//! The parts of fastai's `create_body` that make tensors: a first conv for `n_in` channels.
use crate::bail;
use crate::error::Result;
use crate::nn::init::{conv2d, ConvCfg, Init};
use crate::nn::Node;
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
