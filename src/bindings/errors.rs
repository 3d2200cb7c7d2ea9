//! One mapping from the core's `Error` to the exception classes of `siamese_rs.exceptions`.
use crate::error::Error;
use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;

fn class_name(e: &Error) -> &'static str {
    match e {
        Error::Value(_) => "ArgumentError",
        Error::Shape(_) => "ShapeError",
        Error::Type(_) => "ArgumentTypeError",
        Error::UnknownArch(_) => "UnknownArchError",
        Error::Weights(_) => "WeightsError",
        Error::Torch(_) => "TorchError",
    }
}

/// The Python exception for `e`.
pub fn to_py(e: Error) -> PyErr {
    Python::with_gil(|py| {
        let msg = e.to_string();
        let cls = py
            .import("siamese_rs.exceptions")
            .and_then(|m| m.getattr(class_name(&e)))
            .ok()
            .and_then(|c| c.downcast_into::<pyo3::types::PyType>().ok());
        match cls {
            Some(cls) => PyErr::from_type(cls, msg),
            None => PyRuntimeError::new_err(msg),
        }
    })
}

/// Runs `f`, turning a panic into a `TorchError`: pyo3's `PanicException` derives from
/// BaseException and would escape the `except Exception` of user code and training loops.
/// (tch panics instead of returning an error in a few places, e.g. a failed op taking a scalar.)
pub fn no_panic<T>(f: impl FnOnce() -> Result<T, Error>) -> Result<T, Error> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or_else(|p| {
        let msg = p
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| p.downcast_ref::<&str>().copied())
            .unwrap_or("unknown panic");
        let msg = msg
            .split("Exception raised from")
            .next()
            .unwrap_or_default();
        let msg = msg.trim_end().trim_end_matches("\\n").trim_end();
        Err(Error::Torch(format!("libtorch failed: {msg}")))
    })
}

/// `Result<T, Error>` → `PyResult<T>`.
pub trait IntoPy<T> {
    fn py(self) -> PyResult<T>;
}

impl<T> IntoPy<T> for Result<T, Error> {
    fn py(self) -> PyResult<T> {
        self.map_err(to_py)
    }
}
