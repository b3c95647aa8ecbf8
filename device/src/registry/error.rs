//! [`RegistryError`]: everything the registry refuses or fails at. Every variant names the file or
//! the class it concerns and says what is wrong.

use std::path::PathBuf;

/// The error type of the exemplar registry.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// A class name outside `[a-z0-9_-]{1,64}`.
    #[error("invalid class name {name:?}: {reason} (allowed: 1 to 64 of a-z, 0-9, '_', '-', the first a letter or a digit)")]
    InvalidClassName { name: String, reason: String },

    /// `register` without any exemplar.
    #[error("class `{class}`: no exemplar given (pass --image IMAGE --mask MASK at least once)")]
    NoInputs { class: String },

    /// Different numbers of images and masks.
    #[error(
        "{images} --image but {masks} --mask: give exactly one mask per image, in the same order"
    )]
    CountMismatch { images: usize, masks: usize },

    /// An image or mask that cannot be used (undecodable, too large, wrong size, too little foreground).
    #[error("{path}: {reason}")]
    Input { path: PathBuf, reason: String },

    /// Reading or writing a file of the registry (or an input) failed.
    #[error("{path}: {error}")]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },

    /// The index was written by a newer mce: this build does not understand it and leaves it alone.
    #[error(
        "{path}: registry schema version {found} is newer than this build supports ({supported}); \
         upgrade mce-device"
    )]
    NewerSchema {
        path: PathBuf,
        found: u64,
        supported: u32,
    },

    /// A stored file or cache does not match what the index recorded.
    #[error("{path}: {reason}")]
    Corrupt { path: PathBuf, reason: String },

    /// `show` / `remove` / `exemplars` of a class that is not registered.
    #[error("unknown class `{class}` (registered: {known})")]
    UnknownClass { class: String, known: String },

    /// `remove --exemplar N` beyond the class's exemplars.
    #[error("class `{class}` has {count} exemplar(s) (0 to {last}), there is no exemplar {index}", last = count.saturating_sub(1))]
    ExemplarOutOfRange {
        class: String,
        index: usize,
        count: usize,
    },

    /// The model failed on an exemplar.
    #[error(transparent)]
    Model(#[from] mce_core::Error),
}

impl RegistryError {
    pub(crate) fn io(path: impl Into<PathBuf>, error: std::io::Error) -> Self {
        RegistryError::Io {
            path: path.into(),
            error,
        }
    }

    pub(crate) fn input(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        RegistryError::Input {
            path: path.into(),
            reason: reason.into(),
        }
    }

    pub(crate) fn corrupt(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        RegistryError::Corrupt {
            path: path.into(),
            reason: reason.into(),
        }
    }
}
