//! PASCAL-5i: a VOC root with `JPEGImages/*.jpg` and `SegmentationClassAug/*.png` (class-index
//! grey PNG: 0 = background, 1..=20 classes, 255 = ignore). The split's images come from a list
//! file, one entry per line, either an image id (`2007_000032`) or the PFENet / BAM pair
//! `JPEGImages/2007_000032.jpg SegmentationClassAug/2007_000032.png` (paths relative to the root).
//! Without a list, every label PNG with a matching JPEG is taken. Fold i of 4 tests 5i+1..=5i+5.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use super::catalog::{Catalog, FileProblem, ImageEntry, LabelSource};
use super::{folds, ClassId, ClassInfo, FewShotDataset};
use crate::{Error, Result};

/// The 20 VOC classes, ids 1..=20 in this order.
pub const PASCAL_CLASSES: [&str; 20] = [
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
];

/// A PASCAL-5i split (train or val list).
#[derive(Debug)]
pub struct Pascal5i {
    catalog: Catalog,
}

impl Pascal5i {
    /// Open `root` with the images of `list` (or every label PNG when `None`). Lines naming a
    /// missing file are kept out and reported as listing problems.
    pub fn open(root: impl AsRef<Path>, list: Option<&Path>) -> Result<Self> {
        let root = root.as_ref();
        for dir in ["JPEGImages", "SegmentationClassAug"] {
            if !root.join(dir).is_dir() {
                return Err(Error::layout(root, format!("no {dir}/ directory")));
            }
        }
        let pairs = match list {
            Some(list) => read_list(root, list)?,
            None => all_labels(root)?,
        };
        let mut problems = Vec::new();
        let mut seen = HashSet::new();
        let mut entries = Vec::new();
        for (image, label) in pairs {
            if !seen.insert(label.clone()) {
                continue; // PFENet lists repeat a few lines
            }
            let missing = [&image, &label].into_iter().find(|p| !p.is_file());
            if let Some(path) = missing {
                problems.push(FileProblem {
                    path: path.clone(),
                    error: "listed but missing".into(),
                });
                continue;
            }
            entries.push(ImageEntry {
                image,
                label: LabelSource::ClassIndex(label),
            });
        }
        let classes = PASCAL_CLASSES
            .iter()
            .enumerate()
            .map(|(i, n)| ClassInfo {
                id: i + 1,
                name: (*n).to_string(),
            })
            .collect();
        Ok(Pascal5i {
            catalog: Catalog::new("pascal", root, classes, entries, problems),
        })
    }
}

impl FewShotDataset for Pascal5i {
    fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    fn catalog_mut(&mut self) -> &mut Catalog {
        &mut self.catalog
    }

    fn default_folds(&self) -> usize {
        4
    }

    fn fold_classes(&self, fold: usize, n_folds: usize) -> Result<(Vec<ClassId>, Vec<ClassId>)> {
        folds::contiguous(&self.catalog.class_ids(), fold, n_folds)
    }
}

/// `(image, label)` paths of a list file (both line formats).
fn read_list(root: &Path, list: &Path) -> Result<Vec<(PathBuf, PathBuf)>> {
    let text = std::fs::read_to_string(list).map_err(|e| Error::io(list, e))?;
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        match fields.as_slice() {
            [] => {}
            [id] => out.push(id_paths(root, id.trim_end_matches(".jpg"))),
            [image, label] => out.push((
                root.join(image.trim_start_matches('/')),
                root.join(label.trim_start_matches('/')),
            )),
            _ => {
                return Err(Error::format(
                    list,
                    format!(
                        "line {}: expected an image id or 'image label', got {line:?}",
                        n + 1
                    ),
                ))
            }
        }
    }
    Ok(out)
}

fn id_paths(root: &Path, id: &str) -> (PathBuf, PathBuf) {
    (
        root.join("JPEGImages").join(format!("{id}.jpg")),
        root.join("SegmentationClassAug").join(format!("{id}.png")),
    )
}

/// Every `SegmentationClassAug/*.png`, sorted, paired with `JPEGImages/<stem>.jpg`.
fn all_labels(root: &Path) -> Result<Vec<(PathBuf, PathBuf)>> {
    let dir = root.join("SegmentationClassAug");
    let mut ids: Vec<String> = std::fs::read_dir(&dir)
        .map_err(|e| Error::io(&dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x.eq_ignore_ascii_case("png")))
        .filter_map(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()))
        .collect();
    ids.sort();
    Ok(ids.iter().map(|id| id_paths(root, id)).collect())
}
