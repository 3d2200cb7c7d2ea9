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
    /// What `sr.PairIndex` records of the model, as exported (`ModelFile::fingerprint` is the
    /// one computed from the weights read, which must equal it).
    pub fingerprint: Option<String>,
    /// Which of `head.y_range`'s bounds the document writes as ints (their `repr` differs).
    #[serde(skip)]
    pub y_range_ints: Vec<Option<i64>>,
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

/// A loaded model file: its document, the model with its weights (eval mode) and the model's
/// fingerprint, computed from those weights (what galleries are compared with).
#[derive(Debug)]
pub struct ModelFile {
    pub info: ModelInfo,
    pub model: SiameseModel,
    pub fingerprint: String,
}

impl ModelFile {
    /// Reads `path` (no pickled code: safetensors only) and builds the model it describes. Every
    /// field of the document is checked, and the header's tensors are compared with the shapes
    /// the document implies, before anything is built; a file whose weights are not those it
    /// was exported with (its recorded fingerprint differs) is refused.
    pub fn load(path: impl AsRef<Path>) -> Result<ModelFile> {
        let path = path.as_ref();
        let at = |e: Error| Error::Weights(format!("{}: {e}", path.display()));
        let bytes = std::fs::read(path)
            .map_err(|e| Error::Weights(format!("cannot read {}: {e}", path.display())))?;
        let (info, header) = read_info(&bytes, path)?;
        check_shapes(&info, &header).map_err(at)?;
        let body = create_body(&info.arch, info.n_in, Some(cut(&info)?))?;
        let mut head = create_head(&info.head)?;
        keep_ints(&mut head, &info.y_range_ints);
        let mut model = SiameseModel::new(body, head);
        let state = read_tensors(&bytes).map_err(|e| {
            Error::Weights(format!(
                "cannot read the weights of {}: {e}",
                path.display()
            ))
        })?;
        model.load_state_dict(&state)?;
        let fingerprint = super::fingerprint::fingerprint(&model)?;
        if info.fingerprint.as_deref() != Some(fingerprint.as_str()) {
            bail!(
                Weights,
                "{}: the weights are not the ones the file was exported with (their fingerprint is {fingerprint}, \
                 the file records {}); export the model again",
                path.display(),
                info.fingerprint.as_deref().unwrap_or("none")
            );
        }
        Ok(ModelFile {
            info,
            model,
            fingerprint,
        })
    }
}

/// The document's cut: `null` is what Python's `create_body(cut=None)` did (fastai's rule).
fn cut(info: &ModelInfo) -> Result<i64> {
    info.cut
        .map_or_else(|| crate::body::pool_cut(&info.arch), Ok)
}

/// fastai's `SigmoidRange` keeps the numbers it was given: an int bound prints as one (the
/// fingerprint hashes the `repr`).
fn keep_ints(head: &mut crate::nn::Node, ints: &[Option<i64>]) {
    use crate::nn::{Kind, Value};
    if let Some((_, n)) = head
        .children
        .last_mut()
        .filter(|(_, n)| n.kind == Kind::SigmoidRange)
    {
        for (s, i) in n.settings.iter_mut().zip(ints) {
            if let Some(i) = i {
                *s = Value::Int(*i);
            }
        }
    }
}

/// The header's tensors, by name: dtype and shape.
type Header = Vec<(String, safetensors::Dtype, Vec<usize>)>;

/// The header's tensors against those the document implies (found without allocating them).
fn check_shapes(info: &ModelInfo, header: &Header) -> Result<()> {
    use safetensors::Dtype;
    let want = SiameseModel::state_shapes(&info.arch, info.n_in, Some(cut(info)?), &info.head)?;
    let show = |d: &Dtype, s: &[usize]| format!("{d:?} {s:?}");
    let mut odd = vec![];
    for (k, kind, shape) in &want {
        let dtype = if *kind == tch::Kind::Int64 {
            Dtype::I64
        } else {
            Dtype::F32
        };
        let shape: Vec<usize> = shape.iter().map(|&s| s as usize).collect();
        match header.iter().find(|(n, _, _)| n == k) {
            None => odd.push(format!(
                "{k} is missing (the model has {})",
                show(&dtype, &shape)
            )),
            Some((_, d, s)) if *d != dtype || *s != shape => odd.push(format!(
                "{k} is {} where the model has {}",
                show(d, s),
                show(&dtype, &shape)
            )),
            _ => {}
        }
    }
    let extra = header
        .iter()
        .filter(|(n, _, _)| !want.iter().any(|(k, _, _)| k == n));
    odd.extend(extra.map(|(n, _, _)| format!("{n} is not a tensor of the model")));
    if !odd.is_empty() {
        let more = if odd.len() > 4 {
            format!(" (and {} more)", odd.len() - 4)
        } else {
            String::new()
        };
        bail!(
            Weights,
            "the weights do not fit the model the metadata describes ({} {}, n_in {}): {}{more}",
            info.arch,
            if info.cut.is_some() {
                "cut as recorded"
            } else {
                "at its own cut"
            },
            info.n_in,
            odd[..odd.len().min(4)].join("; ")
        );
    }
    Ok(())
}

/// The document of the file `bytes` (checked field by field) and the header's tensors.
fn read_info(bytes: &[u8], path: &Path) -> Result<(ModelInfo, Header)> {
    let not_ours = |why: String| {
        Error::Weights(format!(
            "{} is not a siamese-rs model file ({why}); write one with sr.export_model(learn, path)",
            path.display()
        ))
    };
    // The header's offsets, dtypes and shapes are checked against the data's length here.
    let (_, meta) = safetensors::SafeTensors::read_metadata(bytes)
        .map_err(|e| not_ours(format!("not safetensors: {e:?}")))?;
    let header: Header = meta
        .tensors()
        .into_iter()
        .map(|(k, t)| (k, t.dtype, t.shape.clone()))
        .collect();
    let Some(doc) = meta.metadata().as_ref().and_then(|m| m.get("siamese_rs")) else {
        return Err(not_ours("no \"siamese_rs\" metadata".into()));
    };
    // Strict JSON: NaN and Infinity are not JSON, and serde_json refuses them.
    let doc: serde_json::Value =
        serde_json::from_str(doc).map_err(|e| not_ours(format!("metadata: {e}")))?;
    let format = doc.get("format").and_then(|v| v.as_str());
    if format != Some(FORMAT) {
        return Err(not_ours(format!("format {}", shown(doc.get("format")))));
    }
    let version = doc.get("format_version");
    if version.and_then(|v| v.as_u64()) != Some(FORMAT_VERSION as u64)
        || version.is_some_and(|v| v.is_f64())
    {
        bail!(
            Weights,
            "{} is a model file of format version {} (metadata field format_version), this siamese-rs reads version {FORMAT_VERSION}; \
             export the model again with this release",
            path.display(),
            shown(version)
        );
    }
    let archs: Vec<&str> = crate::arch::ARCHS.iter().map(|a| a.name).collect();
    let at = |e: Error| Error::Weights(format!("{}: {e}", path.display()));
    let doc = super::document::check(doc, &archs).map_err(at)?;
    let y_range_ints = doc["head"]["y_range"]
        .as_array()
        .map(|y| {
            y.iter()
                .map(|v| v.as_i64().filter(|_| !v.is_f64()))
                .collect()
        })
        .unwrap_or_default();
    let mut info: ModelInfo =
        serde_json::from_value(doc).map_err(|e| not_ours(format!("metadata: {e}")))?;
    info.y_range_ints = y_range_ints;
    Ok((info, header))
}

/// A JSON value as the error shows it.
fn shown(v: Option<&serde_json::Value>) -> String {
    v.map_or("(missing)".into(), |v| v.to_string())
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
