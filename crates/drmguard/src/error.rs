//! The library's error type: every failure a user can cause names the file, line or value at fault.

use std::path::PathBuf;

/// Errors raised by the drmguard library.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    // The I/O error is part of the message rather than a `source`, so that error chains printed
    // with `{:#}` do not repeat it.
    #[error("cannot read {path}: {cause}")]
    Read { path: PathBuf, cause: std::io::Error },
    #[error("cannot write {path}: {cause}")]
    Write { path: PathBuf, cause: std::io::Error },
    #[error("{path}:{line}: {message}")]
    Csv {
        path: PathBuf,
        line: u64,
        message: String,
    },
    #[error("cannot decode image {path}: {message}")]
    Image { path: PathBuf, message: String },
    #[error("{path}: {message}")]
    Json { path: PathBuf, message: String },
    #[error("cannot load model weights from {path}: {message}")]
    Weights { path: PathBuf, message: String },
    #[error("invalid {what}: {message}")]
    Invalid { what: &'static str, message: String },
    #[error("unknown {what} '{name}' (expected one of: {expected})")]
    UnknownName {
        what: &'static str,
        name: String,
        expected: String,
    },
    #[error("{0}")]
    Data(String),
    #[error("numerical failure: {0}")]
    Numerical(String),
    #[error("device '{0}' is not available in this build (rebuild with `--features {0}`)")]
    DeviceUnavailable(String),
    #[error("cannot start worker threads: {0}")]
    Threads(String),
}

/// Shorthand for results of this library.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn invalid(what: &'static str, message: impl Into<String>) -> Self {
        Error::Invalid {
            what,
            message: message.into(),
        }
    }
}
