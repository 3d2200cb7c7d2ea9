//! Reading a kind's settings by field name, with errors that name the kind and the field.
use super::kind::{Kind, Value};
use crate::bail;
use crate::error::Result;

fn get<'a>(kind: Kind, s: &'a [Value], field: &str) -> Result<&'a Value> {
    match kind
        .fields()
        .iter()
        .position(|f| *f == field)
        .and_then(|i| s.get(i))
    {
        Some(v) => Ok(v),
        None => bail!(Value, "{}: missing setting `{field}`", kind.name()),
    }
}

fn bad(kind: Kind, field: &str, v: &Value) -> crate::error::Error {
    crate::error::Error::Value(format!("{}: unusable setting {field}={v:?}", kind.name()))
}

/// A kind with its settings, in the order of `Kind::fields`.
pub struct Settings<'a>(pub Kind, pub &'a [Value]);

impl Settings<'_> {
    pub fn ints(&self, f: &str, n: usize, default: &[i64]) -> Result<Vec<i64>> {
        let v = get(self.0, self.1, f)?;
        v.ints(n, default).ok_or_else(|| bad(self.0, f, v))
    }
    pub fn int(&self, f: &str) -> Result<i64> {
        let v = get(self.0, self.1, f)?;
        v.int().ok_or_else(|| bad(self.0, f, v))
    }
    pub fn float(&self, f: &str) -> Result<f64> {
        let v = get(self.0, self.1, f)?;
        v.float().ok_or_else(|| bad(self.0, f, v))
    }
    pub fn opt_float(&self, f: &str) -> Result<Option<f64>> {
        match get(self.0, self.1, f)? {
            Value::None => Ok(None),
            v => v.float().map(Some).ok_or_else(|| bad(self.0, f, v)),
        }
    }
    pub fn bool(&self, f: &str) -> Result<bool> {
        let v = get(self.0, self.1, f)?;
        v.bool().ok_or_else(|| bad(self.0, f, v))
    }
    /// An adaptive pool's output size: an int, a pair, or a pair with `None` (keep that size).
    pub fn out_size(&self, f: &str) -> Result<Vec<Option<i64>>> {
        let v = get(self.0, self.1, f)?;
        match v {
            Value::None => Ok(vec![Some(1), Some(1)]),
            Value::Sizes(s) if s.len() == 2 => Ok(s.clone()),
            _ => v
                .ints(2, &[1, 1])
                .map(|s| s.into_iter().map(Some).collect())
                .ok_or_else(|| bad(self.0, f, v)),
        }
    }
}
