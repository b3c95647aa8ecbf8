//! The `check_data` report: serde (JSON) and a human table ([`std::fmt::Display`]).

use std::collections::BTreeMap;
use std::fmt::{self, Display, Formatter, Write as _};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::catalog::{FileProblem, Protocol};
use super::ClassId;

/// Everything `check_data` found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataReport {
    pub dataset: String,
    pub root: PathBuf,
    /// Listed images (with a label).
    pub images: usize,
    pub protocol: Protocol,
    pub shots: usize,
    pub n_folds: usize,
    pub classes: Vec<ClassCount>,
    /// The checked folds.
    pub folds: Vec<FoldCount>,
    /// Files that could not be listed, read or decoded, each with its error.
    pub unreadable: Vec<FileProblem>,
    pub size_mismatches: Vec<SizeMismatch>,
    /// Label maps holding values that are no class of the dataset.
    pub unknown_labels: Vec<UnknownLabels>,
    /// Classes with fewer than `shots + 1` images in a pool of a checked fold.
    pub too_few_images: Vec<SmallClass>,
}

/// Image counts of one class.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClassCount {
    pub id: ClassId,
    pub name: String,
    /// Images where the class covers at least `protocol.min_pixels` pixels.
    pub images: usize,
    /// Images with at least one pixel of the class.
    pub images_any: usize,
    /// The fold that tests the class (`None`: in no fold).
    pub test_fold: Option<usize>,
}

/// Counts of one fold.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FoldCount {
    pub fold: usize,
    pub train_classes: Vec<ClassId>,
    pub test_classes: Vec<ClassId>,
    /// Distinct images of the test pool.
    pub test_images: usize,
    /// Distinct images of the training pool, after the filter.
    pub train_images: usize,
    /// Images of training classes removed because they hold a test class.
    pub filtered_out: usize,
    pub test_class_images: BTreeMap<ClassId, usize>,
    pub train_class_images: BTreeMap<ClassId, usize>,
}

/// An image whose label has another size.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SizeMismatch {
    pub image: PathBuf,
    pub label: String,
    /// `(width, height)`.
    pub image_size: (u32, u32),
    pub label_size: (u32, u32),
}

/// A label map with values that are no class.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnknownLabels {
    pub label: String,
    pub values: Vec<u8>,
}

/// A class short of images in one pool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SmallClass {
    pub class: ClassId,
    pub name: String,
    pub fold: usize,
    /// "train" or "test".
    pub role: String,
    pub images: usize,
    pub needed: usize,
}

impl DataReport {
    /// Number of problems of every kind.
    pub fn problem_count(&self) -> usize {
        self.unreadable.len()
            + self.size_mismatches.len()
            + self.unknown_labels.len()
            + self.too_few_images.len()
    }

    /// No problem found.
    pub fn is_ok(&self) -> bool {
        self.problem_count() == 0
    }

    /// The per-class table (one column per checked fold: training images, or `<n>T` where the
    /// fold tests the class, `-` where the class is in neither pool).
    pub fn class_table(&self) -> String {
        let w = self
            .classes
            .iter()
            .map(|c| c.name.len())
            .max()
            .unwrap_or(5)
            .max(5);
        let mut s = format!(
            "{:>4}  {:<w$}  {:>7}  {:>7}  {:>4}",
            "id", "class", "images", "any px", "test"
        );
        for f in &self.folds {
            let _ = write!(s, "  {:>7}", format!("fold {}", f.fold));
        }
        s.push('\n');
        for c in &self.classes {
            let test = c.test_fold.map_or("-".to_string(), |f| f.to_string());
            let _ = write!(
                s,
                "{:>4}  {:<w$}  {:>7}  {:>7}  {:>4}",
                c.id, c.name, c.images, c.images_any, test
            );
            for f in &self.folds {
                let cell = match (
                    f.test_class_images.get(&c.id),
                    f.train_class_images.get(&c.id),
                ) {
                    (Some(n), _) => format!("{n}T"),
                    (None, Some(n)) => n.to_string(),
                    (None, None) => "-".to_string(),
                };
                let _ = write!(s, "  {cell:>7}");
            }
            s.push('\n');
        }
        s
    }
}

fn join<T: ToString>(v: &[T]) -> String {
    v.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

impl Display for DataReport {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        let filter = match self.protocol.filter_min_pixels {
            0 => "no training image is removed for its test classes".to_string(),
            n => format!("training images with >= {n} pixels of a test class are removed"),
        };
        writeln!(
            f,
            "dataset {} at {}: {} images, {} classes, {} folds; a class counts with >= {} pixels, \
             {filter}; shots {}",
            self.dataset,
            self.root.display(),
            self.images,
            self.classes.len(),
            self.n_folds,
            self.protocol.min_pixels,
            self.shots
        )?;
        writeln!(f, "\n{}", self.class_table())?;
        writeln!(
            f,
            "fold  test images  train images  removed by filter  test classes"
        )?;
        for fc in &self.folds {
            writeln!(
                f,
                "{:>4}  {:>11}  {:>12}  {:>17}  {}",
                fc.fold,
                fc.test_images,
                fc.train_images,
                fc.filtered_out,
                join(&fc.test_classes)
            )?;
        }
        if self.is_ok() {
            return writeln!(f, "\nno problem found");
        }
        writeln!(f, "\n{} problem(s):", self.problem_count())?;
        if !self.unreadable.is_empty() {
            writeln!(f, "unreadable files ({}):", self.unreadable.len())?;
            for p in &self.unreadable {
                let path = p.path.display().to_string();
                if p.error.starts_with(&path) {
                    writeln!(f, "  {}", p.error)?;
                } else {
                    writeln!(f, "  {path}: {}", p.error)?;
                }
            }
        }
        if !self.size_mismatches.is_empty() {
            writeln!(
                f,
                "image/label size mismatches ({}):",
                self.size_mismatches.len()
            )?;
            for m in &self.size_mismatches {
                writeln!(
                    f,
                    "  {}: image {}x{}, label {} {}x{}",
                    m.image.display(),
                    m.image_size.0,
                    m.image_size.1,
                    m.label,
                    m.label_size.0,
                    m.label_size.1
                )?;
            }
        }
        if !self.unknown_labels.is_empty() {
            writeln!(
                f,
                "labels with values that are no class ({}):",
                self.unknown_labels.len()
            )?;
            for u in &self.unknown_labels {
                writeln!(f, "  {}: values {}", u.label, join(&u.values))?;
            }
        }
        if !self.too_few_images.is_empty() {
            writeln!(
                f,
                "classes with too few images ({}):",
                self.too_few_images.len()
            )?;
            for c in &self.too_few_images {
                writeln!(
                    f,
                    "  fold {} {} class {} ({}): {} image(s), needs {} (query + {} shots)",
                    c.fold, c.role, c.class, c.name, c.images, c.needed, self.shots
                )?;
            }
        }
        Ok(())
    }
}
