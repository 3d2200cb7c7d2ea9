//! The checks a gallery file passes before its rows are used: it is untrusted input, so the
//! safetensors header (validated by `safetensors` against the file's real size before any
//! tensor is made), each metadata field, each tensor's role, dtype and shape, and the checksum
//! of each tensor's bytes recorded at save time (format version 2, as `sr.PairIndex.save`
//! writes; see `python/siamese_rs/_index_file.py`) are checked, so that a damaged, swapped or
//! tampered file is a one-line error naming the field, never wrong scores.
use crate::error::{Error, Result};
use safetensors::tensor::{Dtype, SafeTensors, TensorInfo};
use std::collections::HashMap;
use std::path::Path;

/// `sr.PairIndex`'s file format, the version written and those read (1 has no checksums).
pub const FORMAT: &str = "siamese_rs.PairIndex";
pub const VERSION: &str = "2";
const VERSIONS: [&str; 2] = ["1", "2"];
/// The only pair stage the command line computes: rows `a` and `b` of float32.
pub const KIND: &str = "kernel";
/// Values of the declared image (as Python bounds the image it encodes to check a file).
const MAX_IMAGE: i64 = 1 << 24;
const IMAGE_DTYPES: [&str; 4] = ["float16", "bfloat16", "float32", "float64"];

/// What a checked gallery file holds: the bytes of `a` and `b`, their shape, the image's, names.
pub struct Checked<'a> {
    pub a: &'a [u8],
    pub b: &'a [u8],
    /// Rows and columns of `a` (and `b`).
    pub shape: [i64; 2],
    pub image: Vec<i64>,
    pub files: Option<Vec<String>>,
}

/// An error naming the file, the field, what was expected and what it holds.
fn bad(path: &Path, field: &str, expected: &str, got: impl std::fmt::Debug) -> Error {
    let mut got = format!("{got:?}").replace('\n', " ");
    if got.len() > 200 {
        got = got.chars().take(200).collect::<String>() + "…";
    }
    Error::Weights(format!(
        "{} is not a valid gallery file: {field}: expected {expected}, got {got}",
        path.display()
    ))
}

/// The checksum of a tensor's bytes as 16 hex digits (`crate::checksum::checksums`).
pub fn checksum_hex(bytes: &[u8]) -> String {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    format!("{:016x}", crate::checksum::checksums(&[bytes], threads)[0])
}

/// Checks every field of the gallery file `bytes` read from `path`, whose model must have
/// `fingerprint`.
pub fn check<'a>(path: &Path, bytes: &'a [u8], fingerprint: &str) -> Result<Checked<'a>> {
    // Validates the header's length, JSON, dtypes, shapes and offsets against the buffer.
    let (n, header) = SafeTensors::read_metadata(bytes)
        .map_err(|e| bad(path, "safetensors header", "a valid header", e))?;
    let meta = header.metadata().clone().unwrap_or_default();
    let get = |k: &str| meta.get(k).map(String::as_str);
    if get("format") != Some(FORMAT) {
        return Err(bad(path, "format", FORMAT, get("format")));
    }
    let version = get("version").unwrap_or("");
    if !VERSIONS.contains(&version) {
        return Err(bad(
            path,
            "version",
            "1 or 2 (this siamese-rs)",
            get("version"),
        ));
    }
    if get("model") != Some(fingerprint) {
        return Err(Error::Weights(format!(
            "{} was built with another model (architecture, head or weights differ); build it again with this model",
            path.display()
        )));
    }
    if get("kind") != Some(KIND) {
        return Err(bad(
            path,
            "kind",
            "\"kernel\" (per-image encodings)",
            get("kind"),
        ));
    }
    let image = image(path, get("image"))?;
    let infos = header.tensors();
    let mut names: Vec<&String> = infos.keys().collect();
    names.sort();
    if names != ["a", "b"] {
        return Err(bad(path, "tensors", "exactly [\"a\", \"b\"]", names));
    }
    let (a, b) = (infos["a"], infos["b"]);
    for (name, t) in [("a", a), ("b", b)] {
        if t.dtype != Dtype::F32 || t.shape.len() != 2 || t.shape != a.shape {
            let want = format!("F32 rows of 2 sizes, like a's {:?}", a.shape);
            return Err(bad(
                path,
                &format!("tensor {name}"),
                &want,
                (t.dtype, &t.shape),
            ));
        }
    }
    let data = |t: &TensorInfo| &bytes[8 + n + t.data_offsets.0..8 + n + t.data_offsets.1];
    let (a_data, b_data) = (data(a), data(b));
    let shape = [a.shape[0] as i64, a.shape[1] as i64];
    if version != "1" {
        checksums(path, get("checksums"), [("a", a_data), ("b", b_data)])?;
    }
    let files = match get("files") {
        Some(s) => match serde_json::from_str::<Vec<String>>(s) {
            Ok(f) if f.len() as i64 == shape[0] => Some(f),
            _ => {
                return Err(bad(
                    path,
                    "files",
                    &format!("a list of {} names", shape[0]),
                    s,
                ))
            }
        },
        None => None,
    };
    Ok(Checked {
        a: a_data,
        b: b_data,
        shape,
        image,
        files,
    })
}

/// The declared image's shape: 1 to 4 sizes >= 1, at most `MAX_IMAGE` values, a float dtype.
fn image(path: &Path, text: Option<&str>) -> Result<Vec<i64>> {
    let want = "[shape of 1 to 4 sizes >= 1 and at most 2^24 values, a float dtype]";
    let parsed: Option<(Vec<i64>, String)> = text.and_then(|s| serde_json::from_str(s).ok());
    match parsed {
        Some((shape, dtype))
            if (1..=4).contains(&shape.len())
                && shape.iter().all(|&s| (1..=MAX_IMAGE).contains(&s))
                && shape
                    .iter()
                    .try_fold(1i64, |n, &s| n.checked_mul(s))
                    .is_some_and(|n| n <= MAX_IMAGE)
                && IMAGE_DTYPES.contains(&dtype.as_str()) =>
        {
            Ok(shape)
        }
        _ => Err(bad(path, "image", want, text)),
    }
}

/// Each tensor's bytes against the checksum recorded for its role.
fn checksums(path: &Path, text: Option<&str>, data: [(&str, &[u8]); 2]) -> Result<()> {
    let want = "an object of 16 hex digits for each of a and b";
    let sums: HashMap<String, String> = text
        .and_then(|s| serde_json::from_str(s).ok())
        .filter(|m: &HashMap<String, String>| {
            m.len() == 2
                && data.iter().all(|(n, _)| m.contains_key(*n))
                && m.values().all(|v| {
                    v.len() == 16 && v.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'))
                })
        })
        .ok_or_else(|| bad(path, "checksums", want, text))?;
    for (name, bytes) in data {
        let got = checksum_hex(bytes);
        if sums[name] != got {
            let want = format!("bytes of checksum {} (recorded at save)", sums[name]);
            return Err(bad(
                path,
                &format!("tensor {name}"),
                &want,
                format!("checksum {got}"),
            ));
        }
    }
    Ok(())
}
