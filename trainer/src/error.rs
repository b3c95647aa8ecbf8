//! Errors of `mce-train`. Every variant that concerns a file names it.

use std::path::PathBuf;

/// The error type of `mce-train`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An error from `mce-core` (image or mask decoding, ...); it already names its file.
    #[error(transparent)]
    Core(#[from] mce_core::Error),

    /// A tensor operation failed (training, evaluation).
    #[error(transparent)]
    Candle(#[from] candle_core::Error),

    /// Reading a file or listing a directory failed.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A dataset file (list, annotation json, label map) is malformed.
    #[error("{path}: {reason}")]
    Format { path: PathBuf, reason: String },

    /// The dataset layout is not what the format expects (missing directory, no images, ...).
    #[error("{root}: {reason}")]
    Layout { root: PathBuf, reason: String },

    /// A fold, shot count, class id or other argument is out of range for this dataset.
    #[error("{0}")]
    Input(String),
}

/// Result alias of `mce-train`.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// [`Error::Io`] for `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    /// [`Error::Format`] for `path`.
    pub fn format(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        Error::Format {
            path: path.into(),
            reason: reason.into(),
        }
    }

    /// [`Error::Layout`] for `root`.
    pub fn layout(root: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        Error::Layout {
            root: root.into(),
            reason: reason.into(),
        }
    }
}
