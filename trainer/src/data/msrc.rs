//! MSRC-v2 (591 images, 23 classes): `<root>/MSRC_v2/Images/<R>_<N>_s.png` with class-index
//! labels `<root>/MSRC_v2/labels_png/<R>_<N>_s_GT.png` (8-bit grey, value = class id 0..=22,
//! 255 = void; there is no background class). `root` may also be the `MSRC_v2` folder itself.
//! Class 4 (horse, 3 images) is in no fold; fold i of 4 tests the classes c ≠ 4 with
//! c mod 4 == i and trains on the other classes ≠ 4.

use std::path::Path;

use super::catalog::{Catalog, FileProblem, ImageEntry, LabelSource};
use super::fss::files_with_ext;
use super::{folds, ClassId, ClassInfo, FewShotDataset};
use crate::{Error, Result};

/// The 23 class names, ids 0..=22.
pub const MSRC_CLASSES: [&str; 23] = [
    "building",
    "grass",
    "tree",
    "cow",
    "horse",
    "sheep",
    "sky",
    "mountain",
    "aeroplane",
    "water",
    "face",
    "car",
    "bicycle",
    "flower",
    "sign",
    "bird",
    "book",
    "chair",
    "road",
    "cat",
    "dog",
    "body",
    "boat",
];

/// Classes in no fold: horse (3 images).
pub const MSRC_EXCLUDED: [ClassId; 1] = [4];

/// The MSRC-v2 pool.
#[derive(Debug)]
pub struct MsrcV2 {
    catalog: Catalog,
}

impl MsrcV2 {
    /// Open `root` (the folder holding `MSRC_v2/`, or `MSRC_v2/` itself).
    pub fn open(root: impl AsRef<Path>) -> Result<Self> {
        let root = root.as_ref();
        let base = if root.join("MSRC_v2").is_dir() {
            root.join("MSRC_v2")
        } else {
            root.to_path_buf()
        };
        let (images, labels) = (base.join("Images"), base.join("labels_png"));
        for dir in [&images, &labels] {
            if !dir.is_dir() {
                return Err(Error::layout(
                    root,
                    format!(
                        "no folder {} (expected MSRC_v2/Images and MSRC_v2/labels_png)",
                        dir.display()
                    ),
                ));
            }
        }
        let mut entries = Vec::new();
        let mut problems = Vec::new();
        for image in files_with_ext(&images, &["png", "bmp"])? {
            let stem = image.file_stem().map(|s| s.to_string_lossy().into_owned());
            let label = labels.join(format!("{}_GT.png", stem.unwrap_or_default()));
            if label.is_file() {
                entries.push(ImageEntry {
                    image,
                    label: LabelSource::ClassIndex(label),
                });
            } else {
                problems.push(FileProblem {
                    path: image,
                    error: format!("no label {}", label.display()),
                });
            }
        }
        let classes = MSRC_CLASSES
            .iter()
            .enumerate()
            .map(|(id, n)| ClassInfo {
                id,
                name: (*n).to_string(),
            })
            .collect();
        Ok(MsrcV2 {
            catalog: Catalog::new("msrc", root, classes, entries, problems),
        })
    }
}

impl FewShotDataset for MsrcV2 {
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
        folds::by_id_modulo(&self.catalog.class_ids(), &MSRC_EXCLUDED, fold, n_folds)
    }
}
