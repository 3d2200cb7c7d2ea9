//! The model file of `sr.export_model`: safetensors weights under fastai's `state_dict` keys and
//! one metadata entry, `"siamese_rs"`, a JSON document that says how to build the model.
use crate::bail;
use crate::error::{Error, Result};
use crate::{create_body, create_head, HeadConfig, SiameseModel};
use serde::Deserialize;
use std::path::Path;

/// The model file format this build reads.
pub const FORMAT: &str = "siamese-rs model";
pub const FORMAT_VERSION: u32 = 1;

/// The JSON document of a model file (see the README's "Exporting a model").
#[derive(Clone, Debug, Deserialize)]
pub struct ModelInfo {
    pub format: String,
    pub format_version: u32,
    pub arch: String,
    pub n_in: i64,
    pub cut: Option<i64>,
    /// `create_head`'s arguments (fastai 2.8.12's names).
    pub head: HeadConfig,
    pub stats: Option<Stats>,
    pub input: Option<Input>,
    pub labels: Option<Vec<String>>,
    /// What `sr.PairIndex` records of the model; galleries carry it.
    pub fingerprint: Option<String>,
}

/// The `Normalize` statistics of the learner's data.
#[derive(Clone, Debug, Deserialize)]
pub struct Stats {
    pub mean: Vec<f64>,
    pub std: Vec<f64>,
}

/// The validation `Resize`: `size` is `[h, w]`; `method` crop, squish or pad.
#[derive(Clone, Debug, Deserialize)]
pub struct Input {
    pub size: [u32; 2],
    pub method: String,
    pub pad_mode: String,
}

/// A loaded model file: its document and the model with its weights, in eval mode.
#[derive(Debug)]
pub struct ModelFile {
    pub info: ModelInfo,
    pub model: SiameseModel,
}

impl ModelFile {
    /// Reads `path` (no pickled code: safetensors only) and builds the model it describes.
    pub fn load(path: impl AsRef<Path>) -> Result<ModelFile> {
        let path = path.as_ref();
        let bytes = std::fs::read(path)
            .map_err(|e| Error::Weights(format!("cannot read {}: {e}", path.display())))?;
        let info = read_info(&bytes, path)?;
        let body = create_body(&info.arch, info.n_in, info.cut)?;
        let mut model = SiameseModel::new(body, create_head(&info.head)?);
        let state = read_tensors(&bytes).map_err(|e| {
            Error::Weights(format!(
                "cannot read the weights of {}: {e}",
                path.display()
            ))
        })?;
        model.load_state_dict(&state)?;
        Ok(ModelFile { info, model })
    }
}

/// The document of the file `bytes`, checked for format and version.
fn read_info(bytes: &[u8], path: &Path) -> Result<ModelInfo> {
    let not_ours = |why: String| {
        Error::Weights(format!(
            "{} is not a siamese-rs model file ({why}); write one with sr.export_model(learn, path)",
            path.display()
        ))
    };
    let (_, meta) = safetensors::SafeTensors::read_metadata(bytes)
        .map_err(|e| not_ours(format!("not safetensors: {e:?}")))?;
    let Some(doc) = meta.metadata().as_ref().and_then(|m| m.get("siamese_rs")) else {
        return Err(not_ours("no \"siamese_rs\" metadata".into()));
    };
    let head: serde_json::Value =
        serde_json::from_str(doc).map_err(|e| not_ours(format!("metadata: {e}")))?;
    let format = head.get("format").and_then(|v| v.as_str()).unwrap_or("");
    let version = head.get("format_version").and_then(|v| v.as_u64());
    if format != FORMAT {
        return Err(not_ours(format!("format {format:?}")));
    }
    if version != Some(FORMAT_VERSION as u64) {
        bail!(
            Weights,
            "{} is a model file of format version {}, this siamese-rs reads version {FORMAT_VERSION}; \
             export the model again with this release",
            path.display(),
            version.map_or("unknown".to_string(), |v| v.to_string())
        );
    }
    serde_json::from_value(head).map_err(|e| not_ours(format!("metadata: {e}")))
}

/// Every tensor of safetensors `bytes`, by name (the file is read once, for its document and weights).
pub fn read_tensors(bytes: &[u8]) -> std::result::Result<Vec<(String, tch::Tensor)>, String> {
    use safetensors::tensor::Dtype;
    let file = safetensors::SafeTensors::deserialize(bytes).map_err(|e| format!("{e:?}"))?;
    file.tensors()
        .into_iter()
        .map(|(name, v)| {
            let kind = match v.dtype() {
                Dtype::F32 => tch::Kind::Float,
                Dtype::F64 => tch::Kind::Double,
                Dtype::F16 => tch::Kind::Half,
                Dtype::BF16 => tch::Kind::BFloat16,
                Dtype::I64 => tch::Kind::Int64,
                Dtype::I32 => tch::Kind::Int,
                d => return Err(format!("{name}: unsupported dtype {d:?}")),
            };
            let shape: Vec<i64> = v.shape().iter().map(|&s| s as i64).collect();
            let t =
                tch::Tensor::f_from_data_size(v.data(), &shape, kind).map_err(|e| e.to_string())?;
            Ok((name, t))
        })
        .collect()
}
