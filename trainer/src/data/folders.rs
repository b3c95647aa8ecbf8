//! Plain folders, for one's own data: `<root>/<class>/images/*` with binary masks in
//! `<root>/<class>/masks/*`, a mask matched to its image by file stem (`cat1.jpg` ↔ `cat1.png`).
//! Class ids are 0..N-1 over the class folders sorted by name; folds are interleaved over the
//! ids (fold i tests the classes with id % n_folds == i), at most 4 by default.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::catalog::{Catalog, FileProblem, ImageEntry, LabelSource};
use super::fss::{files_with_ext, subdirs};
use super::{folds, ClassId, ClassInfo, FewShotDataset};
use crate::{Error, Result};

/// Image (and mask) file extensions looked at.
pub const IMAGE_EXTENSIONS: [&str; 5] = ["png", "jpg", "jpeg", "bmp", "webp"];

/// A root of class folders.
#[derive(Debug)]
pub struct Folders {
    catalog: Catalog,
}

impl Folders {
    /// Open `root`: every sub-folder with an `images/` folder is a class.
    pub fn open(root: impl AsRef<Path>) -> Result<Self> {
        let root = root.as_ref();
        let names: Vec<String> = subdirs(root)?
            .into_iter()
            .filter(|n| root.join(n).join("images").is_dir())
            .collect();
        if names.is_empty() {
            return Err(Error::layout(root, "no <class>/images/ folder"));
        }
        let (mut entries, mut problems, mut classes) = (Vec::new(), Vec::new(), Vec::new());
        for (id, name) in names.iter().enumerate() {
            classes.push(ClassInfo {
                id,
                name: name.clone(),
            });
            let dir = root.join(name);
            let mut masks = by_stem(&dir.join("masks"))?;
            for (stem, image) in by_stem(&dir.join("images"))? {
                match masks.remove(&stem) {
                    Some(mask) => entries.push(ImageEntry {
                        image,
                        label: LabelSource::Binary {
                            path: mask,
                            class: id,
                        },
                    }),
                    None => problems.push(FileProblem {
                        path: image,
                        error: format!("no mask named {stem}.* in {}", dir.join("masks").display()),
                    }),
                }
            }
            problems.extend(masks.into_values().map(|mask| FileProblem {
                path: mask,
                error: "mask without an image of the same stem".into(),
            }));
        }
        Ok(Folders {
            catalog: Catalog::new("folders", root, classes, entries, problems),
        })
    }
}

/// Image files of `dir` by stem (empty when `dir` is missing).
fn by_stem(dir: &Path) -> Result<BTreeMap<String, PathBuf>> {
    if !dir.is_dir() {
        return Ok(BTreeMap::new());
    }
    Ok(files_with_ext(dir, &IMAGE_EXTENSIONS)?
        .into_iter()
        .filter_map(|p| Some((p.file_stem()?.to_string_lossy().into_owned(), p)))
        .collect())
}

impl FewShotDataset for Folders {
    fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    fn catalog_mut(&mut self) -> &mut Catalog {
        &mut self.catalog
    }

    fn default_folds(&self) -> usize {
        self.catalog.classes().len().clamp(1, 4)
    }

    fn fold_classes(&self, fold: usize, n_folds: usize) -> Result<(Vec<ClassId>, Vec<ClassId>)> {
        folds::interleaved(&self.catalog.class_ids(), fold, n_folds)
    }
}
