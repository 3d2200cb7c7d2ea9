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
        match py
            .import("siamese_rs.exceptions")
            .and_then(|m| m.getattr(class_name(&e)))
        {
            Ok(cls) => PyErr::from_type(
                cls.downcast_into().expect("exception classes are types"),
                msg,
            ),
            Err(_) => PyRuntimeError::new_err(msg),
        }
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
