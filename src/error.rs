//! The library's error type: every failure names what was wrong (and the file, where there is one).
use std::path::PathBuf;

/// Errors of the dsno library.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An argument or input value that cannot be used (bad time grid, NaN input, …).
    #[error("invalid input: {0}")]
    Invalid(String),
    /// A file that could not be read, written or parsed.
    #[error("{}: {msg}", path.display())]
    File { path: PathBuf, msg: String },
    /// An error raised by libtorch.
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
}

impl Error {
    /// An [`Error::Invalid`] from anything printable.
    pub fn invalid(msg: impl Into<String>) -> Self {
        Error::Invalid(msg.into())
    }
    /// An [`Error::File`] for `path`.
    pub fn file(path: impl Into<PathBuf>, msg: impl std::fmt::Display) -> Self {
        Error::File {
            path: path.into(),
            msg: msg.to_string(),
        }
    }
}

/// The library's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
