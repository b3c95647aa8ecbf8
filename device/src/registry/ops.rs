//! The changes: register exemplars, remove an exemplar, remove a class. Each one takes the lock,
//! re-reads the index, writes in the order that makes the index rename its commit point (see the
//! module documentation of [`crate::registry`]) and only then updates this handle.

use super::error::RegistryError;
use super::features::{self, CacheMeta};
use super::index::{self, ClassEntry, ExemplarEntry, FileRecord, Loaded};
use super::recover::unix_now;
use super::store::{self, DirLock};
use super::validate::{self, check_class_name, check_existing_class_name, prepare_input};
use super::{ClassSummary, ExemplarInput, PreparedInput, RegisterOptions, Registry};
use indicatif::ProgressBar;
use mce_core::inference::Segmenter;
use std::path::Path;

type Result<T> = std::result::Result<T, RegistryError>;

fn file_name(path: &Path) -> String {
    path.file_name().map_or_else(
        || path.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    )
}

impl Registry {
    /// Validate `inputs`, compute their features and append them to `class` (created if new).
    pub fn register(
        &mut self,
        class: &str,
        inputs: &[ExemplarInput],
        segmenter: &Segmenter,
        opts: &RegisterOptions,
    ) -> Result<ClassSummary> {
        check_class_name(class)?;
        let prepared = inputs
            .iter()
            .map(|i| prepare_input(i, opts))
            .collect::<Result<Vec<_>>>()?;
        self.register_prepared(class, &prepared, segmenter, None)
    }

    /// [`Registry::register`] for inputs already validated by [`prepare_input`]; `progress` is
    /// advanced once per exemplar whose features are computed.
    pub fn register_prepared(
        &mut self,
        class: &str,
        prepared: &[PreparedInput],
        segmenter: &Segmenter,
        progress: Option<&ProgressBar>,
    ) -> Result<ClassSummary> {
        check_class_name(class)?;
        if prepared.is_empty() {
            return Err(RegistryError::NoInputs {
                class: class.to_string(),
            });
        }
        let identity = segmenter.backbone_identity().to_string();
        validate::check_identity(&identity)?;
        let mut computed = Vec::with_capacity(prepared.len());
        for p in prepared {
            let x = segmenter
                .exemplar(&p.image, &p.mask, &p.source.mask)
                .map_err(validate::from_core)?;
            computed.push(x);
            if let Some(pb) = progress {
                pb.inc(1);
            }
        }
        store::step("features computed");

        let _lock = self.lock_and_reload()?;
        let mut index = self.index.clone();
        let first_id = index.next_id;
        index.next_id += prepared.len() as u64;
        let now = unix_now();
        let entry = index
            .classes
            .entry(class.to_string())
            .or_insert_with(|| ClassEntry {
                created_unix: now,
                exemplars: Vec::new(),
            });
        store::ensure_dir(&self.layout.class_dir(class))?;
        for (n, (p, x)) in prepared.iter().zip(&computed).enumerate() {
            let id = first_id + n as u64;
            store::step(&format!("write exemplar {id}"));
            store::write_atomic(&self.layout.image(class, id), &p.image_png)?;
            store::write_atomic(&self.layout.mask(class, id), &p.mask_png)?;
            let meta = CacheMeta::new(&identity, class, id, &p.image_sha256, &p.mask_sha256);
            features::write(&self.layout.features(&identity, class, id), x, &meta)?;
            entry.exemplars.push(ExemplarEntry {
                id,
                created_unix: now,
                source_image: file_name(&p.source.image),
                source_mask: file_name(&p.source.mask),
                width: p.image.width(),
                height: p.image.height(),
                foreground_pixels: p.foreground_pixels,
                mask_resized_from: p.mask_resized_from,
                image: FileRecord {
                    bytes: p.image_png.len() as u64,
                    sha256: p.image_sha256.clone(),
                },
                mask: FileRecord {
                    bytes: p.mask_png.len() as u64,
                    sha256: p.mask_sha256.clone(),
                },
            });
        }
        let summary = ClassSummary {
            name: class.to_string(),
            exemplars: entry.exemplars.len(),
        };
        index::save(&self.layout.index(), &index)?;
        self.index = index;
        Ok(summary)
    }

    /// Remove a class with all its exemplars and caches.
    pub fn remove_class(&mut self, class: &str) -> Result<()> {
        check_existing_class_name(class)?;
        let _lock = self.lock_and_reload()?;
        let mut index = self.index.clone();
        if index.classes.remove(class).is_none() {
            return Err(self.unknown(class));
        }
        index::save(&self.layout.index(), &index)?;
        self.index = index;
        store::step("delete class files");
        let mut dirs = vec![self.layout.class_dir(class)];
        dirs.extend(self.feature_dirs(class));
        for d in dirs {
            if let Err(e) = store::remove_dir_all(&d) {
                tracing::warn!("class `{class}` is removed, but not yet its files ({e}); the next open deletes them");
            }
        }
        Ok(())
    }

    /// Remove one exemplar (0-based, in registration order, as `show` lists them). Removing the
    /// last exemplar removes the class.
    pub fn remove_exemplar(&mut self, class: &str, index: usize) -> Result<()> {
        check_existing_class_name(class)?;
        let _lock = self.lock_and_reload()?;
        let mut new = self.index.clone();
        let entry = new
            .classes
            .get_mut(class)
            .ok_or_else(|| self.unknown(class))?;
        let count = entry.exemplars.len();
        if index >= count {
            return Err(RegistryError::ExemplarOutOfRange {
                class: class.to_string(),
                index,
                count,
            });
        }
        let id = entry.exemplars.remove(index).id;
        if entry.exemplars.is_empty() {
            new.classes.remove(class);
        }
        index::save(&self.layout.index(), &new)?;
        self.index = new;
        store::step("delete exemplar files");
        let (image, mask) = self.exemplar_files(class, id);
        let mut files = vec![image, mask];
        files.extend(
            self.feature_dirs(class)
                .into_iter()
                .map(|d| d.join(index::features_name(id))),
        );
        for f in files {
            if let Err(e) = store::remove_file(&f) {
                tracing::warn!("exemplar {id} of `{class}` is removed, but not yet its files ({e}); the next open deletes them");
            }
        }
        if !self.index.classes.contains_key(class) {
            let mut dirs = vec![self.layout.class_dir(class)];
            dirs.extend(self.feature_dirs(class));
            for d in dirs {
                let _ = store::remove_dir_all(&d);
            }
        }
        Ok(())
    }

    /// `features/<identity>/<class>` for every identity.
    fn feature_dirs(&self, class: &str) -> Vec<std::path::PathBuf> {
        std::fs::read_dir(self.layout.features_root())
            .into_iter()
            .flatten()
            .flatten()
            .map(|d| d.path().join(class))
            .filter(|p| p.is_dir())
            .collect()
    }

    /// Take the lock and re-read the index, which another process may have changed.
    fn lock_and_reload(&mut self) -> Result<DirLock> {
        if self.read_only {
            let why = std::io::Error::new(
                std::io::ErrorKind::ReadOnlyFilesystem,
                "the registry was opened read-only (not writable by this process)",
            );
            return Err(RegistryError::io(self.layout.root.join(".lock"), why));
        }
        let lock = store::lock(&self.layout.root)?;
        self.index = match index::load(&self.layout.index())? {
            Loaded::Missing => index::Index::default(),
            Loaded::Valid(i) => i,
            Loaded::Corrupt(reason) => {
                return Err(RegistryError::corrupt(
                    self.layout.index(),
                    format!("{reason}; open the registry again to quarantine it"),
                ))
            }
        };
        Ok(lock)
    }
}
