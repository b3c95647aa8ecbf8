//! The exemplar registry: named classes, each with a few exemplars (image + mask) stored on disk
//! with their backbone features, so that a device service can segment those classes after any
//! restart without recomputing anything.
//!
//! Layout and schema: [`index`]. Validation of inputs: [`validate`]. The feature cache: [`features`].
//!
//! ## Crash safety
//!
//! Every file is written as a temporary file in its own folder, fsynced, renamed into place, and the
//! folder fsynced ([`store`]). The rename of `index.json` is the commit point of every change:
//!
//! * `register` writes the image, mask and feature files of the new exemplars first and the index
//!   last; a crash before the index rename leaves unreferenced files, which the next open deletes;
//! * `remove` commits the index first and deletes the files after; a crash in between leaves
//!   unreferenced files, again deleted on the next open.
//!
//! So a registry left by a crash at any instant opens as either the old or the new state. Changes
//! (and the repairs of [`Registry::open`]) hold an exclusive lock on `<dir>/.lock`; `register`
//! validates its inputs and computes features before it takes the lock, and re-reads the index under
//! it, so concurrent writers never lose each other's changes.
//!
//! ## Corruption
//!
//! [`Registry::open`] verifies every exemplar's image and mask against the SHA-256 in the index and
//! moves bad ones to `<dir>/quarantine/` ([`recover`]); a corrupt `index.json` is quarantined with
//! the data it described and the registry opens **empty, with the problem reported** in
//! [`Registry::quarantined`] (a service keeps running and says so rather than crash-looping; nothing
//! is deleted). An index of a newer schema is an error ([`RegistryError::NewerSchema`]) and is left
//! untouched. Feature caches verify themselves and are recomputed when stale or corrupt.

pub mod cli;
pub mod error;
pub mod features;
pub mod index;
mod ops;
pub mod recover;
pub mod store;
pub mod validate;

pub use error::RegistryError;
pub use index::{ClassEntry, ExemplarEntry, FileRecord, Index, SCHEMA_VERSION};
pub use recover::Quarantined;
pub use validate::{
    check_class_name, check_existing_class_name, prepare_input, ExemplarInput, PreparedInput,
    RegisterOptions, DEFAULT_MAX_PIXELS, MIN_FOREGROUND_FRACTION, MIN_FOREGROUND_PIXELS,
};

use features::{CacheMeta, CacheRead};
use index::{Layout, Loaded};
use mce_core::inference::{Exemplar, Segmenter};
use mce_core::preprocess::Mask;
use serde::Serialize;
use std::path::{Path, PathBuf};

type Result<T> = std::result::Result<T, RegistryError>;

/// A registry folder, opened.
#[derive(Debug)]
pub struct Registry {
    layout: Layout,
    index: Index,
    quarantined: Vec<Quarantined>,
    /// Opened without the write lock: nothing was repaired and changes fail.
    read_only: bool,
}

/// A class and how many exemplars it has.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ClassSummary {
    pub name: String,
    pub exemplars: usize,
}

/// Where the features [`Registry::exemplars_with_stats`] returned came from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Read from a valid cache file.
    pub cached: usize,
    /// Computed by the backbone (no cache for this identity, or a corrupt one) and cached again.
    pub recomputed: usize,
}

impl Registry {
    /// The default registry folder, following systemd: `$STATE_DIRECTORY` (its first path when
    /// colon-separated), else `/var/lib/mce` when running as root, else `<XDG data dir>/mce`
    /// (e.g. `~/.local/share/mce`), else `./mce-registry` when there is no home folder.
    pub fn default_dir() -> PathBuf {
        use std::os::unix::ffi::OsStrExt;
        if let Some(v) = std::env::var_os("STATE_DIRECTORY") {
            let first = v.as_bytes().split(|&b| b == b':').next().unwrap_or(&[]);
            if !first.is_empty() {
                return PathBuf::from(std::ffi::OsStr::from_bytes(first));
            }
        }
        if effective_uid() == Some(0) {
            return PathBuf::from("/var/lib/mce");
        }
        dirs::data_dir()
            .map(|d| d.join("mce"))
            .unwrap_or_else(|| PathBuf::from("mce-registry"))
    }

    /// Open (creating the folder if missing), verify and repair a registry; see the module docs.
    /// A registry this process may not write (a read-only mount, another user's folder) opens as
    /// [`Registry::open_read_only`] does, with a warning.
    pub fn open(dir: &Path) -> Result<Registry> {
        store::ensure_dir(dir)?;
        let _lock = match store::lock(dir) {
            Err(RegistryError::Io { error, .. }) if store::is_not_writable(&error) => {
                return Self::open_read_only(dir);
            }
            other => other?,
        };
        let layout = Layout {
            root: dir.to_path_buf(),
        };
        let mut quarantined = Vec::new();
        let mut index = match index::load(&layout.index())? {
            Loaded::Missing => Index::default(),
            Loaded::Valid(i) => i,
            Loaded::Corrupt(reason) => {
                quarantined.push(recover::quarantine_index(&layout, &reason)?);
                Index::default()
            }
        };
        quarantined.extend(recover::verify_exemplars(&layout, &mut index)?);
        recover::clean_orphans(&layout, &index)?;
        Ok(Registry {
            layout,
            index,
            quarantined,
            read_only: false,
        })
    }

    /// Open a registry for reading only: no lock, no repairs, nothing written. Exemplars whose
    /// files do not match the index are left out and a corrupt index reads as empty, each with a
    /// warning that the repair was skipped; feature caches that are missing are computed and not
    /// stored. Registering or removing through this handle fails.
    pub fn open_read_only(dir: &Path) -> Result<Registry> {
        let layout = Layout {
            root: dir.to_path_buf(),
        };
        let mut skipped = Vec::new();
        let mut index = match index::load(&layout.index())? {
            Loaded::Missing => Index::default(),
            Loaded::Valid(i) => i,
            Loaded::Corrupt(reason) => {
                skipped.push(format!("{}: {reason}", layout.index().display()));
                Index::default()
            }
        };
        skipped.extend(recover::skip_bad_exemplars(&layout, &mut index)?);
        tracing::warn!(
            "registry {} is not writable by this process: opened read-only, repairs skipped",
            dir.display()
        );
        for problem in &skipped {
            tracing::warn!("registry: left in place (read-only): {problem}");
        }
        Ok(Registry {
            layout,
            index,
            quarantined: Vec::new(),
            read_only: true,
        })
    }

    /// Whether this handle was opened read-only (see [`Registry::open_read_only`]).
    pub fn is_read_only(&self) -> bool {
        self.read_only
    }

    /// The registry folder.
    pub fn dir(&self) -> &Path {
        &self.layout.root
    }

    /// What the last open moved aside, with reasons.
    pub fn quarantined(&self) -> &[Quarantined] {
        &self.quarantined
    }

    /// The registered classes, by name.
    pub fn classes(&self) -> Vec<ClassSummary> {
        self.index
            .classes
            .iter()
            .map(|(name, c)| ClassSummary {
                name: name.clone(),
                exemplars: c.exemplars.len(),
            })
            .collect()
    }

    /// The index as loaded (or as last changed by this handle).
    pub fn index(&self) -> &Index {
        &self.index
    }

    /// One class's entry; [`RegistryError::UnknownClass`] (or an invalid name) otherwise.
    pub fn class(&self, class: &str) -> Result<&ClassEntry> {
        check_existing_class_name(class)?;
        self.index
            .classes
            .get(class)
            .ok_or_else(|| self.unknown(class))
    }

    /// Re-read the index from disk (another process may have changed it), without repairs.
    pub fn reload(&mut self) -> Result<()> {
        self.index = match index::load(&self.layout.index())? {
            Loaded::Missing => Index::default(),
            Loaded::Valid(i) => i,
            Loaded::Corrupt(reason) => {
                return Err(RegistryError::corrupt(
                    self.layout.index(),
                    format!("{reason}; open the registry again to quarantine it"),
                ))
            }
        };
        Ok(())
    }

    /// The stored image and mask files of one exemplar.
    pub fn exemplar_files(&self, class: &str, id: u64) -> (PathBuf, PathBuf) {
        (self.layout.image(class, id), self.layout.mask(class, id))
    }

    /// The backbone identities that have a feature cache file for this exemplar.
    pub fn cached_identities(&self, class: &str, id: u64) -> Vec<String> {
        let mut out: Vec<String> = std::fs::read_dir(self.layout.features_root())
            .into_iter()
            .flatten()
            .flatten()
            .filter(|d| {
                d.path()
                    .join(class)
                    .join(index::features_name(id))
                    .is_file()
            })
            .map(|d| d.file_name().to_string_lossy().into_owned())
            .collect();
        out.sort();
        out
    }

    /// The backbone features of a class's exemplars for this model: from the cache when it holds
    /// them for `segmenter.backbone_identity()`, else computed from the stored files and cached.
    /// This handle's index is the one of its open or last change: when another process may have
    /// changed the registry since (a `register` / `remove` from the CLI), call [`Registry::reload`]
    /// (or open again) first.
    pub fn exemplars(&self, class: &str, segmenter: &Segmenter) -> Result<Vec<Exemplar>> {
        Ok(self.exemplars_with_stats(class, segmenter)?.0)
    }

    /// [`Registry::exemplars`], and how many came from the cache.
    pub fn exemplars_with_stats(
        &self,
        class: &str,
        segmenter: &Segmenter,
    ) -> Result<(Vec<Exemplar>, CacheStats)> {
        let entry = self.class(class)?;
        let identity = segmenter.backbone_identity();
        validate::check_identity(identity)?;
        let mut stats = CacheStats::default();
        let mut out = Vec::with_capacity(entry.exemplars.len());
        for e in &entry.exemplars {
            let path = self.layout.features(identity, class, e.id);
            let expect = CacheMeta::new(identity, class, e.id, &e.image.sha256, &e.mask.sha256);
            match features::read(&path, &expect, segmenter.device()) {
                CacheRead::Hit(x) => {
                    stats.cached += 1;
                    out.push(x);
                    continue;
                }
                CacheRead::Missing => {}
                CacheRead::Invalid(reason) => tracing::warn!(
                    "{}: feature cache unusable ({reason}); recomputing",
                    path.display()
                ),
            }
            let x = self.compute(class, e, segmenter)?;
            if self.read_only {
                // nothing is written to a read-only registry
            } else if let Err(err) = features::write(&path, &x, &expect) {
                tracing::warn!("cannot cache features: {err}");
            }
            stats.recomputed += 1;
            out.push(x);
        }
        Ok((out, stats))
    }

    /// Features of a stored exemplar, from its files (verified against the index).
    fn compute(&self, class: &str, e: &ExemplarEntry, segmenter: &Segmenter) -> Result<Exemplar> {
        let (image_path, mask_path) = self.exemplar_files(class, e.id);
        let load = |path: &Path, rec: &FileRecord| -> Result<image::DynamicImage> {
            let bytes = store::read(path)?;
            if store::sha256_hex(&bytes) != rec.sha256 {
                return Err(RegistryError::corrupt(
                    path,
                    "checksum mismatch with the index; open the registry again to quarantine it",
                ));
            }
            image::load_from_memory_with_format(&bytes, image::ImageFormat::Png)
                .map_err(|err| RegistryError::corrupt(path, format!("cannot decode: {err}")))
        };
        let image = load(&image_path, &e.image)?.to_rgb8();
        let grey = load(&mask_path, &e.mask)?.to_luma8();
        let mask = Mask {
            width: grey.width() as usize,
            height: grey.height() as usize,
            data: grey
                .into_raw()
                .iter()
                .map(|&v| u8::from(v >= 128))
                .collect(),
        };
        segmenter
            .exemplar(&image, &mask, &mask_path)
            .map_err(validate::from_core)
    }

    fn unknown(&self, class: &str) -> RegistryError {
        let known: Vec<&str> = self.index.classes.keys().map(String::as_str).collect();
        RegistryError::UnknownClass {
            class: class.to_string(),
            known: if known.is_empty() {
                "none".into()
            } else {
                known.join(", ")
            },
        }
    }
}

/// The effective user id, from `/proc/self/status` (None where that does not exist).
fn effective_uid() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    line.split_whitespace().nth(2)?.parse().ok()
}
