//! The checks of a model file's JSON document, field by field, before anything is built from it
//! (the same rules as Python's `siamese_rs._model_doc`): strict types (a bool is not an int, a
//! string not a bool), finite numbers, every field present and no other, sizes bounded.
use crate::error::{Error, Result};
use crate::head::MAX_FEATURES;
use serde_json::{Map, Value};

/// The document's fields, in the order `sr.export_model` writes them.
pub const FIELDS: &[&str] = &[
    "format",
    "format_version",
    "arch",
    "n_in",
    "cut",
    "head",
    "stats",
    "input",
    "labels",
    "fingerprint",
    "torch_version",
    "siamese_rs_version",
];
/// `create_head`'s arguments (fastai 2.8.12).
pub const HEAD_FIELDS: &[&str] = &[
    "nf",
    "n_out",
    "lin_ftrs",
    "ps",
    "pool",
    "concat_pool",
    "first_bn",
    "bn_final",
    "lin_first",
    "y_range",
];
/// Longest list the document may hold (layers, dropout probabilities).
pub const MAX_LIST: usize = 1024;
/// Most class labels.
pub const MAX_LABELS: usize = 1 << 20;
/// Largest side of the validation `Resize`, in pixels.
pub const MAX_SIDE: i64 = 8192;

/// One field's failure: `field` must be `expected`, and the document has `got`.
fn bad(field: &str, expected: &str, got: Option<&Value>) -> Error {
    let got = got.map_or("nothing (the field is missing)".to_string(), |v| {
        let s = v.to_string();
        if s.len() > 80 {
            format!("{}...", &s[..s.floor_char_boundary(77)])
        } else {
            s
        }
    });
    Error::Weights(format!(
        "metadata field {field} must be {expected}, got {got}"
    ))
}

/// An object with exactly the keys `keys`.
fn object<'a>(v: Option<&'a Value>, field: &str, keys: &[&str]) -> Result<&'a Map<String, Value>> {
    let expected = format!("an object with the keys {}", keys.join(", "));
    let Some(Value::Object(m)) = v else {
        return Err(bad(field, &expected, v));
    };
    for k in keys {
        if !m.contains_key(*k) {
            let f = if field.is_empty() {
                k.to_string()
            } else {
                format!("{field}.{k}")
            };
            return Err(bad(&f, "present", None));
        }
    }
    if let Some(extra) = m.keys().find(|k| !keys.contains(&k.as_str())) {
        return Err(bad(
            field_or_doc(field),
            &expected,
            Some(&Value::String(format!("an object with {extra:?}"))),
        ));
    }
    Ok(m)
}

fn field_or_doc(field: &str) -> &str {
    if field.is_empty() {
        "(the document)"
    } else {
        field
    }
}

/// An int (not a bool, not a float) in `lo..=hi`.
fn int(v: Option<&Value>, field: &str, lo: i64, hi: i64) -> Result<i64> {
    match v.and_then(Value::as_i64) {
        Some(i) if (lo..=hi).contains(&i) && v.is_some_and(|v| !v.is_f64()) => Ok(i),
        _ => Err(bad(field, &format!("an int from {lo} to {hi}"), v)),
    }
}

/// A finite number (an int or a float, not a bool).
fn number(v: Option<&Value>, field: &str) -> Result<f64> {
    match v {
        Some(Value::Number(n)) if n.as_i64().is_some() || n.is_f64() => n
            .as_f64()
            .filter(|f| f.is_finite())
            .ok_or_else(|| bad(field, "a finite number", v)),
        _ => Err(bad(field, "a finite number", v)),
    }
}

fn list<'a>(
    v: Option<&'a Value>,
    field: &str,
    what: &str,
    lens: (usize, usize),
) -> Result<&'a Vec<Value>> {
    match v {
        Some(Value::Array(a)) if (lens.0..=lens.1).contains(&a.len()) => Ok(a),
        _ => Err(bad(
            field,
            &format!("a list of {} to {} {what}", lens.0, lens.1),
            v,
        )),
    }
}

fn boolean(v: Option<&Value>, field: &str) -> Result<()> {
    match v {
        Some(Value::Bool(_)) => Ok(()),
        _ => Err(bad(field, "true or false", v)),
    }
}

fn string<'a>(v: Option<&'a Value>, field: &str, choices: &[&str]) -> Result<&'a str> {
    match v {
        Some(Value::String(s))
            if s.len() <= 256 && (choices.is_empty() || choices.contains(&s.as_str())) =>
        {
            Ok(s)
        }
        _ if choices.is_empty() => Err(bad(field, "a string", v)),
        _ => Err(bad(field, &format!("one of {}", choices.join(", ")), v)),
    }
}

/// Checks the document `doc` (format and version already checked) and returns it with its
/// labels as strings (Python's `str` of each), as `ModelInfo` holds them.
pub fn check(mut doc: Value, archs: &[&str]) -> Result<Value> {
    let m = object(Some(&doc), "", FIELDS)?;
    string(m.get("arch"), "arch", archs)?;
    let n_in = int(m.get("n_in"), "n_in", 1, MAX_FEATURES)?;
    if !m["cut"].is_null() {
        int(m.get("cut"), "cut", -MAX_FEATURES, MAX_FEATURES)?;
    }
    check_head(object(m.get("head"), "head", HEAD_FIELDS)?)?;
    if !m["stats"].is_null() {
        let s = object(m.get("stats"), "stats", &["mean", "std"])?;
        let n = n_in as usize;
        let what = format!("{n} finite numbers (one per input channel)");
        for (i, v) in list(s.get("mean"), "stats.mean", &what, (n, n))?
            .iter()
            .enumerate()
        {
            number(Some(v), &format!("stats.mean[{i}]"))?;
        }
        for (i, v) in list(s.get("std"), "stats.std", &what, (n, n))?
            .iter()
            .enumerate()
        {
            if number(Some(v), &format!("stats.std[{i}]"))? == 0.0 {
                return Err(bad(
                    &format!("stats.std[{i}]"),
                    "a non-zero finite number",
                    Some(v),
                ));
            }
        }
    }
    if !m["input"].is_null() {
        let i = object(m.get("input"), "input", &["size", "method", "pad_mode"])?;
        let size = list(i.get("size"), "input.size", "sides [h, w]", (2, 2))?;
        for (k, v) in size.iter().enumerate() {
            int(Some(v), &format!("input.size[{k}]"), 1, MAX_SIDE)?;
        }
        string(i.get("method"), "input.method", &["crop", "squish", "pad"])?;
        string(
            i.get("pad_mode"),
            "input.pad_mode",
            &["zeros", "border", "reflection"],
        )?;
    }
    let labels = if m["labels"].is_null() {
        None
    } else {
        let l = list(m.get("labels"), "labels", "labels", (0, MAX_LABELS))?;
        let strs = l
            .iter()
            .enumerate()
            .map(|(i, v)| label(v, &format!("labels[{i}]")));
        Some(strs.collect::<Result<Vec<_>>>()?)
    };
    let fp = string(m.get("fingerprint"), "fingerprint", &[])?;
    if fp.len() != 64
        || !fp
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return Err(bad(
            "fingerprint",
            "64 lowercase hex digits (sha256)",
            m.get("fingerprint"),
        ));
    }
    string(m.get("torch_version"), "torch_version", &[])?;
    string(m.get("siamese_rs_version"), "siamese_rs_version", &[])?;
    if let (Some(l), Value::Object(m)) = (labels, &mut doc) {
        m.insert("labels".into(), Value::from(l));
    }
    Ok(doc)
}

fn check_head(h: &Map<String, Value>) -> Result<()> {
    int(h.get("nf"), "head.nf", 1, MAX_FEATURES)?;
    int(h.get("n_out"), "head.n_out", 1, MAX_FEATURES)?;
    if !h["lin_ftrs"].is_null() {
        let l = list(
            h.get("lin_ftrs"),
            "head.lin_ftrs",
            "layer sizes",
            (0, MAX_LIST),
        )?;
        for (i, v) in l.iter().enumerate() {
            int(Some(v), &format!("head.lin_ftrs[{i}]"), 1, MAX_FEATURES)?;
        }
    }
    let ps = list(
        h.get("ps"),
        "head.ps",
        "dropout probabilities",
        (1, MAX_LIST),
    )?;
    for (i, v) in ps.iter().enumerate() {
        let p = number(Some(v), &format!("head.ps[{i}]"))?;
        if !(0.0..=1.0).contains(&p) {
            return Err(bad(
                &format!("head.ps[{i}]"),
                "a probability from 0 to 1",
                Some(v),
            ));
        }
    }
    for f in ["pool", "concat_pool", "first_bn", "bn_final", "lin_first"] {
        boolean(h.get(f), &format!("head.{f}"))?;
    }
    if !h["y_range"].is_null() {
        let y = list(
            h.get("y_range"),
            "head.y_range",
            "finite numbers [low, high]",
            (2, 2),
        )?;
        for (i, v) in y.iter().enumerate() {
            number(Some(v), &format!("head.y_range[{i}]"))?;
        }
    }
    Ok(())
}

/// A class label (a string, a number or a bool, as `export_model` writes them) as Python's `str`.
fn label(v: &Value, field: &str) -> Result<String> {
    Ok(match v {
        Value::String(s) => s.clone(),
        Value::Bool(b) => if *b { "True" } else { "False" }.to_string(),
        Value::Number(n) if n.is_f64() => super::fingerprint::py_float(number(Some(v), field)?),
        Value::Number(n) => n.to_string(),
        _ => return Err(bad(field, "a string, a number or a bool", Some(v))),
    })
}
