//! One error type for the core; `bindings::errors` maps each variant to a Python exception.

/// What can go wrong in the core, phrased in the user's terms.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An argument has the right type but a value the model cannot use.
    #[error("{0}")]
    Value(String),
    /// An input tensor has the wrong number of dimensions or the wrong sizes.
    #[error("{0}")]
    Shape(String),
    /// An argument of the wrong type.
    #[error("{0}")]
    Type(String),
    /// An architecture name the arch table does not know.
    #[error("{0}")]
    UnknownArch(String),
    /// A weight file or state dict that does not fit the model.
    #[error("{0}")]
    Weights(String),
    /// libtorch refused an operation; the message is libtorch's, without its C++ backtrace.
    #[error("{0}")]
    Torch(String),
}

pub type Result<T> = std::result::Result<T, Error>;

impl From<tch::TchError> for Error {
    fn from(e: tch::TchError) -> Self {
        let msg = match e {
            tch::TchError::Torch(m) => m,
            other => other.to_string(),
        };
        // libtorch appends a C++ backtrace that means nothing to a Python user.
        let msg = msg
            .split("\nException raised from")
            .next()
            .and_then(|m| m.split("\nframe #0").next())
            .unwrap_or_default();
        Error::Torch(msg.trim().to_string())
    }
}

/// `Err(Error::Value(..))` from a format string.
#[macro_export]
macro_rules! bail {
    ($variant:ident, $($arg:tt)*) => {
        return Err($crate::error::Error::$variant(format!($($arg)*)))
    };
}
