//! Errors raised inside `mce-core`. Every variant that concerns a file names it.

use std::path::PathBuf;

/// The error type of `mce-core`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A tensor operation failed (shape mismatch, unsupported op, ...).
    #[error(transparent)]
    Candle(#[from] candle_core::Error),

    /// Reading or writing a file failed.
    #[error("{path}: {error}")]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },

    /// An image or mask file could not be decoded.
    #[error("{path}: cannot decode image: {reason}")]
    Image { path: PathBuf, reason: String },

    /// A mask is unusable (empty foreground, wrong size, unexpected values, ...).
    #[error("{path}: {reason}")]
    Mask { path: PathBuf, reason: String },

    /// A checkpoint or weight file is truncated, corrupt, of another version or does not match the model.
    #[error("{path}: {reason}")]
    Checkpoint { path: PathBuf, reason: String },

    /// The model computed NaN or infinite logits (a corrupt checkpoint, or inputs out of range).
    #[error("the model produced non-finite logits ({0}); its weights may be corrupt")]
    NonFinite(String),

    /// A configuration value is invalid.
    #[error("invalid config: {0}")]
    Config(String),

    /// The caller passed inconsistent inputs (e.g. zero support shots).
    #[error("{0}")]
    Input(String),
}

/// Result alias of `mce-core`.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            error: source,
        }
    }
}
