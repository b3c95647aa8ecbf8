//! FSS-1000: `<root>/<class>/<n>.jpg` with the binary mask `<root>/<class>/<n>.png`. Class ids
//! are 0..N-1 over the class folders sorted by name. With a class-list file (one class name a
//! line, as HSNet's `splits/fss/test.txt`) the dataset has one fold that tests the listed
//! classes and trains on the others; without one, folds are interleaved over the class ids.

use std::path::{Path, PathBuf};

use super::catalog::{Catalog, FileProblem, ImageEntry, LabelSource};
use super::{check_fold, folds, ClassId, ClassInfo, FewShotDataset};
use crate::{Error, Result};

/// An FSS-1000 root.
#[derive(Debug)]
pub struct Fss1000 {
    catalog: Catalog,
    test_classes: Option<Vec<ClassId>>,
}

impl Fss1000 {
    /// Open `root`; `test_list` names the test classes.
    pub fn open(root: impl AsRef<Path>, test_list: Option<&Path>) -> Result<Self> {
        let root = root.as_ref();
        let names = subdirs(root)?;
        if names.is_empty() {
            return Err(Error::layout(root, "no class folder"));
        }
        let mut entries = Vec::new();
        let mut problems = Vec::new();
        let mut classes = Vec::new();
        for (id, name) in names.iter().enumerate() {
            classes.push(ClassInfo {
                id,
                name: name.clone(),
            });
            let dir = root.join(name);
            for image in files_with_ext(&dir, &["jpg", "jpeg"])? {
                let mask = image.with_extension("png");
                if mask.is_file() {
                    entries.push(ImageEntry {
                        image,
                        label: LabelSource::Binary {
                            path: mask,
                            class: id,
                        },
                    });
                } else {
                    problems.push(FileProblem {
                        path: image,
                        error: format!("no mask {}", mask.display()),
                    });
                }
            }
        }
        let test_classes = match test_list {
            Some(list) => Some(read_class_list(list, &names)?),
            None => None,
        };
        Ok(Fss1000 {
            catalog: Catalog::new("fss", root, classes, entries, problems),
            test_classes,
        })
    }
}

impl FewShotDataset for Fss1000 {
    fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    fn catalog_mut(&mut self) -> &mut Catalog {
        &mut self.catalog
    }

    fn default_folds(&self) -> usize {
        if self.test_classes.is_some() {
            1
        } else {
            4
        }
    }

    fn fold_classes(&self, fold: usize, n_folds: usize) -> Result<(Vec<ClassId>, Vec<ClassId>)> {
        let ids = self.catalog.class_ids();
        let Some(test) = &self.test_classes else {
            return folds::interleaved(&ids, fold, n_folds);
        };
        check_fold(fold, n_folds)?;
        if n_folds != 1 {
            return Err(Error::Input(format!(
                "FSS-1000 with a class list has one fold, not {n_folds}"
            )));
        }
        let train = ids.into_iter().filter(|c| !test.contains(c)).collect();
        Ok((train, test.clone()))
    }
}

/// Class ids (positions in `names`) of the names in `list`, ascending.
fn read_class_list(list: &Path, names: &[String]) -> Result<Vec<ClassId>> {
    let text = std::fs::read_to_string(list).map_err(|e| Error::io(list, e))?;
    let mut ids = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let name = line.trim();
        if name.is_empty() {
            continue;
        }
        let id = names.iter().position(|c| c == name).ok_or_else(|| {
            Error::format(list, format!("line {}: no class folder {name:?}", n + 1))
        })?;
        ids.push(id);
    }
    ids.sort_unstable();
    ids.dedup();
    if ids.is_empty() {
        return Err(Error::format(list, "class list is empty"));
    }
    Ok(ids)
}

/// Names of the sub-directories of `dir`, sorted.
pub(crate) fn subdirs(dir: &Path) -> Result<Vec<String>> {
    let mut out: Vec<String> = std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.'))
        .collect();
    out.sort();
    Ok(out)
}

/// Files of `dir` whose extension is one of `exts` (case-insensitive), sorted.
pub(crate) fn files_with_ext(dir: &Path, exts: &[&str]) -> Result<Vec<PathBuf>> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .filter(|p| {
            p.extension()
                .and_then(|x| x.to_str())
                .is_some_and(|x| exts.iter().any(|e| x.eq_ignore_ascii_case(e)))
        })
        .collect();
    out.sort();
    Ok(out)
}
