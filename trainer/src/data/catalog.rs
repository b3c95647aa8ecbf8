//! [`Catalog`]: what a format module lists (classes, images, labels) plus the protocol and the
//! cached per-image class pixel counts; and [`ClassPool`], the images per class after the
//! protocol's threshold and filter.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use serde::{Deserialize, Serialize};

use super::labels::LabelDecoder;
use super::sample::{MaskSource, Sample, SampleRef};
use super::scan::Scan;
use super::{ClassId, ClassInfo};
use crate::{Error, Result};

/// Default minimum pixels for a class to count in an image: 2 · 32 · 32 (PFENet / BAM).
pub const DEFAULT_MIN_PIXELS: u64 = 2 * 32 * 32;

/// The field's protocol thresholds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Protocol {
    /// A class counts in an image (as query or support) only with at least this many pixels.
    pub min_pixels: u64,
    /// A training image is removed when it holds at least this many pixels of a test class. The
    /// field (PFENet / BAM `filter_intersection`) removes it for any pixel: default 1. 0 removes
    /// none (test classes then reach training as background: an ablation, not the protocol).
    pub filter_min_pixels: u64,
}

impl Default for Protocol {
    fn default() -> Self {
        Protocol {
            min_pixels: DEFAULT_MIN_PIXELS,
            filter_min_pixels: 1,
        }
    }
}

/// Where the label of one image comes from.
#[derive(Debug, Clone)]
pub enum LabelSource {
    /// A class-index label map (8-bit grey): value = class id, 255 = ignore.
    ClassIndex(PathBuf),
    /// A binary mask (0/255 or 0/1 with 255 = ignore) of a single class.
    Binary { path: PathBuf, class: ClassId },
    /// A label its format decodes on demand (COCO annotations), see [`LabelDecoder`].
    Decoded(Arc<dyn LabelDecoder>),
}

impl LabelSource {
    /// The mask source of `class` in this label.
    pub fn mask_source(&self, class: ClassId) -> Result<MaskSource> {
        match self {
            LabelSource::ClassIndex(path) => {
                let c = u8::try_from(class)
                    .ok()
                    .filter(|&c| c != mce_core::metrics::IGNORE)
                    .ok_or_else(|| {
                        Error::Input(format!("class {class} does not fit a class-index map"))
                    })?;
                Ok(MaskSource::File {
                    path: path.clone(),
                    encoding: mce_core::preprocess::MaskEncoding::ClassIndex(c),
                })
            }
            LabelSource::Binary { path, .. } => Ok(MaskSource::File {
                path: path.clone(),
                encoding: mce_core::preprocess::MaskEncoding::Binary,
            }),
            LabelSource::Decoded(label) => Ok(MaskSource::Decoded {
                label: Arc::clone(label),
                class,
            }),
        }
    }

    /// The file the label is read from (for a decoded label, e.g. the COCO annotation json).
    pub fn path(&self) -> &Path {
        match self {
            LabelSource::ClassIndex(p) | LabelSource::Binary { path: p, .. } => p,
            LabelSource::Decoded(label) => label.file(),
        }
    }

    /// A name for reports: the label file, or what the decoder says (COCO: the image's id and
    /// file name).
    pub fn describe(&self) -> String {
        match self {
            LabelSource::ClassIndex(p) | LabelSource::Binary { path: p, .. } => {
                p.display().to_string()
            }
            LabelSource::Decoded(label) => label.describe(),
        }
    }
}

/// One image of the pool.
#[derive(Debug, Clone)]
pub struct ImageEntry {
    pub image: PathBuf,
    pub label: LabelSource,
}

/// A file that could not be used, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileProblem {
    pub path: PathBuf,
    pub error: String,
}

/// The listing of one dataset split, its protocol and its cached scan.
#[derive(Debug)]
pub struct Catalog {
    name: String,
    root: PathBuf,
    classes: Vec<ClassInfo>,
    entries: Vec<ImageEntry>,
    problems: Vec<FileProblem>,
    protocol: Protocol,
    scan: OnceLock<Scan>,
}

impl Catalog {
    /// A catalog. `classes` are sorted by id; `problems` are listing problems (an image without
    /// label, a list line naming a missing file, ...), reported by `check_data`.
    pub fn new(
        name: impl Into<String>,
        root: impl Into<PathBuf>,
        mut classes: Vec<ClassInfo>,
        entries: Vec<ImageEntry>,
        problems: Vec<FileProblem>,
    ) -> Self {
        classes.sort_by_key(|c| c.id);
        Catalog {
            name: name.into(),
            root: root.into(),
            classes,
            entries,
            problems,
            protocol: Protocol::default(),
            scan: OnceLock::new(),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn classes(&self) -> &[ClassInfo] {
        &self.classes
    }

    /// The class ids, ascending.
    pub fn class_ids(&self) -> Vec<ClassId> {
        self.classes.iter().map(|c| c.id).collect()
    }

    /// The name of `class`, if it exists.
    pub fn class_name(&self, class: ClassId) -> Option<&str> {
        self.classes
            .binary_search_by_key(&class, |c| c.id)
            .ok()
            .map(|i| self.classes[i].name.as_str())
    }

    /// [`Error::Input`] unless `class` is a class of this dataset.
    pub fn check_class(&self, class: ClassId) -> Result<()> {
        match self.class_name(class) {
            Some(_) => Ok(()),
            None => Err(Error::Input(format!(
                "{}: no class with id {class}",
                self.name
            ))),
        }
    }

    pub fn entries(&self) -> &[ImageEntry] {
        &self.entries
    }

    /// Problems found while listing (before any decoding).
    pub fn listing_problems(&self) -> &[FileProblem] {
        &self.problems
    }

    pub fn protocol(&self) -> Protocol {
        self.protocol
    }

    pub fn set_protocol(&mut self, protocol: Protocol) {
        self.protocol = protocol;
    }

    /// Per-image class pixel counts: computed on the first call (all cores), then cached.
    pub fn scan(&self) -> &Scan {
        self.scan.get_or_init(|| Scan::run(self))
    }

    /// Images where `class` has at least `min_pixels` pixels, ascending.
    pub fn class_images(&self, class: ClassId, min_pixels: u64) -> Vec<usize> {
        let scan = self.scan();
        (0..self.entries.len())
            .filter(|&i| scan.images[i].pixels(class) >= min_pixels.max(1))
            .collect()
    }

    /// For each of `classes`, the images where it counts (`protocol.min_pixels`), leaving out
    /// every image holding at least `protocol.filter_min_pixels` pixels of one of `exclude`
    /// (none when that is 0).
    pub fn pool(&self, classes: &[ClassId], exclude: &[ClassId]) -> ClassPool {
        let scan = self.scan();
        let p = self.protocol;
        let excluded = |i: usize| {
            p.filter_min_pixels > 0
                && exclude
                    .iter()
                    .any(|&c| scan.images[i].pixels(c) >= p.filter_min_pixels)
        };
        let mut map = BTreeMap::new();
        for &class in classes {
            let images = (0..self.entries.len())
                .filter(|&i| scan.images[i].pixels(class) >= p.min_pixels.max(1) && !excluded(i))
                .collect();
            map.insert(class, images);
        }
        ClassPool { classes: map }
    }

    /// The image path and mask source behind a reference.
    pub fn sample(&self, r: SampleRef) -> Result<Sample> {
        let entry = self.entries.get(r.image).ok_or_else(|| {
            Error::Input(format!(
                "{}: image index {} out of range ({} images)",
                self.name,
                r.image,
                self.entries.len()
            ))
        })?;
        self.check_class(r.class)?;
        Ok(Sample {
            image: entry.image.clone(),
            mask: entry.label.mask_source(r.class)?,
        })
    }
}

/// Images per class (indices into [`Catalog::entries`]), classes ascending, images ascending.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClassPool {
    pub classes: BTreeMap<ClassId, Vec<usize>>,
}

impl ClassPool {
    /// The class ids, ascending.
    pub fn class_ids(&self) -> Vec<ClassId> {
        self.classes.keys().copied().collect()
    }

    /// The images of `class` (empty when absent).
    pub fn images(&self, class: ClassId) -> &[usize] {
        self.classes.get(&class).map_or(&[], Vec::as_slice)
    }

    /// The classes with at least `shots + 1` images (a query and `shots` distinct supports).
    pub fn eligible(&self, shots: usize) -> Vec<ClassId> {
        self.classes
            .iter()
            .filter(|(_, imgs)| imgs.len() > shots)
            .map(|(&c, _)| c)
            .collect()
    }

    /// Distinct images over all classes.
    pub fn distinct_images(&self) -> usize {
        let mut all: Vec<usize> = self.classes.values().flatten().copied().collect();
        all.sort_unstable();
        all.dedup();
        all.len()
    }
}
