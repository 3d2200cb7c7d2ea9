//! One typed mapping from the core's `Error` to the exception classes of `siamese_rs.exceptions`
//! (each a subclass of `SiameseError` and of the matching builtin), the polars way.
use crate::error::Error;
use pyo3::prelude::*;

pyo3::import_exception!(siamese_rs.exceptions, ArgumentError);
pyo3::import_exception!(siamese_rs.exceptions, ShapeError);
pyo3::import_exception!(siamese_rs.exceptions, ArgumentTypeError);
pyo3::import_exception!(siamese_rs.exceptions, UnknownArchError);
pyo3::import_exception!(siamese_rs.exceptions, WeightsError);
pyo3::import_exception!(siamese_rs.exceptions, TorchError);

impl From<Error> for PyErr {
    fn from(e: Error) -> PyErr {
        match e {
            Error::Value(m) => ArgumentError::new_err(m),
            Error::Shape(m) => ShapeError::new_err(m),
            Error::Type(m) => ArgumentTypeError::new_err(m),
            Error::UnknownArch(m) => UnknownArchError::new_err(m),
            Error::Weights(m) => WeightsError::new_err(m),
            Error::Torch(m) => TorchError::new_err(m),
        }
    }
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
        self.map_err(PyErr::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `siamese_rs.exceptions`, loaded from the source tree on its own (not the package, which
    /// would load the built extension).
    fn load_exceptions(py: Python<'_>) -> PyResult<()> {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/python/siamese_rs/exceptions.py"
        );
        let code = std::ffi::CString::new(std::fs::read_to_string(path)?)?;
        let module = PyModule::from_code(py, &code, c"exceptions.py", c"siamese_rs.exceptions")?;
        let sys = py.import("sys")?;
        sys.getattr("modules")?
            .set_item("siamese_rs.exceptions", module)?;
        Ok(())
    }

    #[test]
    fn every_variant_maps_to_its_class() -> PyResult<()> {
        pyo3::prepare_freethreaded_python();
        Python::with_gil(|py| {
            load_exceptions(py)?;
            let cases = [
                (Error::Value("v".into()), "ArgumentError", "ValueError"),
                (Error::Shape("s".into()), "ShapeError", "ValueError"),
                (Error::Type("t".into()), "ArgumentTypeError", "TypeError"),
                (
                    Error::UnknownArch("a".into()),
                    "UnknownArchError",
                    "KeyError",
                ),
                (Error::Weights("w".into()), "WeightsError", "ValueError"),
                (Error::Torch("x".into()), "TorchError", "RuntimeError"),
            ];
            let exceptions = py.import("siamese_rs.exceptions")?;
            let base = exceptions.getattr("SiameseError")?;
            for (e, class, builtin) in cases {
                let msg = e.to_string();
                let err = PyErr::from(e);
                let value = err.value(py);
                assert_eq!(value.get_type().name()?.to_string(), class);
                assert!(value.is_instance(&base)?, "{class} is not a SiameseError");
                let builtin = py.import("builtins")?.getattr(builtin)?;
                assert!(value.is_instance(&builtin)?, "{class} is not a {builtin}");
                assert_eq!(value.str()?.to_string(), msg);
            }
            Ok(())
        })
    }
}
