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
    /// A failure of the process group: a rank that died or timed out, a store that cannot be
    /// reached, a launch environment that does not describe a group.
    #[error("distributed: {0}")]
    Distributed(String),
    /// An error raised by libtorch.
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
}

impl Error {
    /// An [`Error::Invalid`] from anything printable.
    pub fn invalid(msg: impl Into<String>) -> Self {
        Error::Invalid(msg.into())
    }
    /// This error as one about `path`: an invalid value read from that file names it.
    pub fn in_file(self, path: &std::path::Path) -> Self {
        match self {
            Error::Invalid(msg) => Error::file(path, msg),
            e => e,
        }
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

/// Checks that `value` of the configuration or metadata field `field` lies in `[lo, hi]`; the
/// error names the field, the value and the range (NaN is outside every range).
pub fn check_range<T: PartialOrd + std::fmt::Display>(
    field: &str,
    value: T,
    lo: T,
    hi: T,
) -> Result<()> {
    if lo <= value && value <= hi {
        Ok(())
    } else {
        Err(Error::Invalid(format!(
            "field `{field}` = {value}: must be in [{lo}, {hi}]"
        )))
    }
}

/// Checks a field against a condition described by `range` (e.g. "in (0, 1]").
pub fn check_field(
    field: &str,
    value: impl std::fmt::Display,
    ok: bool,
    range: &str,
) -> Result<()> {
    if ok {
        Ok(())
    } else {
        Err(Error::Invalid(format!(
            "field `{field}` = {value}: must be {range}"
        )))
    }
}
