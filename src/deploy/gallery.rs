//! The pair stage of an exported model and galleries of encoded images.
//!
//! As `sr.PairIndex` does (see `python/siamese_rs/_split.py`), the head is split at its first
//! `Linear`: everything before it acts on each image's features alone in eval, and the Linear of a
//! concatenation is a sum, so each image is encoded once into `a` (as first image) and `b` (as
//! second), and a pair's logits are the rest of the head on `a[i] + b[j]`. A gallery file is
//! `PairIndex.save`'s format, so `sr.PairIndex.load(path, sr.load_model(model_file))` reads it.
use super::model_file::ModelInfo;
use crate::error::{Error, Result};
use crate::nn::{Kind as NodeKind, Node};
use crate::{Model, SiameseModel};
use safetensors::tensor::{Dtype, TensorView};
use std::collections::HashMap;
use std::path::Path;
use tch::{Kind, Tensor};

use super::gallery_file::{check, checksum_hex, FORMAT, KIND, VERSION};

/// The head of a model split for pairs.
#[derive(Debug)]
pub struct PairStage {
    /// The head up to its first Linear (pooling, flattening, BatchNorm, dropout).
    pre: Model,
    /// The head after it (starting with its ReLU).
    tail: Model,
    /// The first Linear's weight, transposed, in float64, and its bias.
    weight: Tensor,
    bias: Tensor,
    /// Per-channel reductions of the pooling (2 for concat pooling).
    pooled: i64,
}

impl PairStage {
    /// The split of `model`'s head, or an error saying why the command line cannot split it.
    pub fn of(model: &SiameseModel, info: &ModelInfo) -> Result<PairStage> {
        let head = &model.node().children[1].1;
        let cannot = |why: &str| {
            Error::Value(format!(
                "this model's head cannot be split into per-image encodings ({why}); \
                 `score` works, and sr.PairIndex in Python handles any head"
            ))
        };
        if info.head.n_out != 2 || info.head.y_range.is_some() {
            return Err(cannot("P(same) needs two logits and no y_range"));
        }
        if !info.head.pool {
            return Err(cannot("pool=False"));
        }
        let kids = &head.children;
        let Some(i) = kids.iter().position(|(_, c)| c.kind == NodeKind::Linear) else {
            return Err(cannot("no Linear"));
        };
        let next = kids[i + 1..]
            .iter()
            .find(|(_, c)| c.kind != NodeKind::Dropout);
        if !matches!(next, Some((_, c)) if c.kind == NodeKind::ReLU) {
            return Err(cannot(
                "its first Linear is not followed by a ReLU (lin_first, or a single Linear)",
            ));
        }
        let part = |r: &[(String, Node)]| {
            Model::new(Node::seq(r.iter().map(|(_, c)| c.share()).collect()))
        };
        let lin = &kids[i].1;
        let get = |n: &str| lin.tensors.iter().find(|(k, _)| k == n).map(|(_, t)| t);
        let Some(w) = get("weight") else {
            return Err(cannot("the first Linear has no weight"));
        };
        let weight = w.f_to_kind(Kind::Double)?.f_t_copy()?;
        let bias = match get("bias") {
            Some(b) => b.f_to_kind(Kind::Double)?,
            None => Tensor::f_zeros([weight.size()[1]], (Kind::Double, weight.device()))?,
        };
        Ok(PairStage {
            pre: part(&kids[..i]),
            tail: part(&kids[i + 1..]),
            weight,
            bias,
            pooled: if info.head.concat_pool { 2 } else { 1 },
        })
    }

    /// `(a, b)` of each image from its encoder features `(n, c, h, w)`: float64, then float32.
    pub fn encode(&self, feats: &Tensor) -> Result<(Tensor, Tensor)> {
        let c = feats.size()[1];
        let z = self
            .pre
            .forward_t(&Tensor::f_cat(&[feats, feats], 1)?, false)?
            .f_to_kind(Kind::Double)?;
        let cols: Vec<i64> = (0..self.pooled)
            .flat_map(|k| (0..c).map(move |i| k * 2 * c + i))
            .collect();
        let ia = Tensor::from_slice(&cols);
        let ib = ia.f_add_scalar(c)?;
        let part = |idx: &Tensor| -> Result<Tensor> {
            let w = self.weight.f_index_select(0, idx)?;
            Ok(z.f_index_select(1, idx)?.f_matmul(&w)?)
        };
        let a = part(&ia)?.f_to_kind(Kind::Float)?;
        let b = part(&ib)?.f_add(&self.bias)?.f_to_kind(Kind::Float)?;
        Ok((a, b))
    }

    /// P(same) of `(query i, image j)` for rows `a` of the queries and `b` of the images: `(q, n)`.
    pub fn score(&self, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        let (q, n) = (a.size()[0], b.size()[0]);
        let rows = (0..q)
            .map(|i| {
                let x = a.f_narrow(0, i, 1)?.f_add(b)?;
                let logits = self.tail.forward_t(&x, false)?;
                Ok(logits.f_softmax(-1, Kind::Float)?.f_select(1, 1)?)
            })
            .collect::<Result<Vec<_>>>()?;
        if rows.is_empty() {
            return Ok(Tensor::f_zeros([0, n], (Kind::Float, tch::Device::Cpu))?);
        }
        Ok(Tensor::f_stack(&rows, 0)?)
    }
}

/// Encoded images in `sr.PairIndex`'s file format, with their file names.
#[derive(Debug)]
pub struct Gallery {
    pub files: Vec<String>,
    pub a: Tensor,
    pub b: Tensor,
    /// The model's fingerprint (`ModelInfo::fingerprint`).
    pub model: String,
    /// One image's shape after its transforms.
    pub image: Vec<i64>,
}

impl Gallery {
    pub fn save(&self, path: &Path) -> Result<()> {
        let (a, b) = (floats(&self.a)?, floats(&self.b)?);
        let image = serde_json::json!([self.image, "float32"]).to_string();
        let sums = serde_json::json!({"a": checksum_hex(&a), "b": checksum_hex(&b)}).to_string();
        let files = serde_json::to_string(&self.files).map_err(|e| Error::Value(e.to_string()))?;
        let meta: HashMap<String, String> = [
            ("format", FORMAT.to_string()),
            ("version", VERSION.to_string()),
            ("model", self.model.clone()),
            ("kind", KIND.to_string()),
            ("image", image),
            ("files", files),
            ("checksums", sums),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let data = vec![("a", view(&self.a, &a)?), ("b", view(&self.b, &b)?)];
        safetensors::tensor::serialize_to_file(data, &Some(meta), path)
            .map_err(|e| Error::Value(format!("cannot write {}: {e:?}", path.display())))
    }

    /// The gallery at `path`, which must have been built with the model of `fingerprint`:
    /// every field is checked first (`gallery_file::check`).
    pub fn load(path: &Path, fingerprint: &str) -> Result<Gallery> {
        let bytes = std::fs::read(path)
            .map_err(|e| Error::Value(format!("cannot read gallery {}: {e}", path.display())))?;
        let g = check(path, &bytes, fingerprint)?;
        let rows = |data: &[u8]| Tensor::f_from_data_size(data, &g.shape, Kind::Float);
        let files = g
            .files
            .clone()
            .unwrap_or_else(|| (0..g.shape[0]).map(|i| format!("#{i}")).collect());
        Ok(Gallery {
            files,
            a: rows(g.a)?,
            b: rows(g.b)?,
            model: fingerprint.to_string(),
            image: g.image,
        })
    }
}

fn view<'a>(t: &Tensor, bytes: &'a [u8]) -> Result<TensorView<'a>> {
    let shape: Vec<usize> = t.size().iter().map(|&s| s as usize).collect();
    TensorView::new(Dtype::F32, shape, bytes).map_err(|e| Error::Value(format!("{e:?}")))
}

/// A float32 tensor's bytes, little-endian.
fn floats(t: &Tensor) -> Result<Vec<u8>> {
    let v = Vec::<f32>::try_from(t.f_contiguous()?.f_view([-1])?)?;
    Ok(v.iter().flat_map(|x| x.to_le_bytes()).collect())
}
