//! `check_data`: look at every image and label of a dataset once and collect every problem
//! (unreadable files, image/label size mismatches, unexpected label values, classes with too
//! few images for the shots) together with counts per class and per fold. Nothing stops at the
//! first problem. The report types and their table are in [`super::report`].

use std::collections::BTreeMap;

use mce_core::preprocess::load_rgb;

use super::catalog::FileProblem;
use super::labels::image_size;
use super::report::{ClassCount, DataReport, FoldCount, SizeMismatch, SmallClass, UnknownLabels};
use super::scan::par_map;
use super::{ClassId, FewShotDataset};
use crate::{Error, Result};

/// What to check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckOptions {
    /// Check only this fold (default: every fold).
    pub fold: Option<usize>,
    /// Number of folds (default: the dataset's).
    pub n_folds: Option<usize>,
    /// Shots K: a class needs K + 1 images (query + K supports) in each pool it is in.
    pub shots: usize,
    /// Decode every image fully (finds truncated files); `false` reads only the headers.
    pub decode_images: bool,
}

impl Default for CheckOptions {
    fn default() -> Self {
        CheckOptions {
            fold: None,
            n_folds: None,
            shots: 1,
            decode_images: true,
        }
    }
}

/// Check `dataset` (scans it if not yet scanned) and report.
pub fn check_data<D: FewShotDataset + ?Sized>(
    dataset: &D,
    options: &CheckOptions,
) -> Result<DataReport> {
    if options.shots == 0 {
        return Err(Error::Input("shots must be at least 1".into()));
    }
    let cat = dataset.catalog();
    let n_folds = options.n_folds.unwrap_or_else(|| dataset.default_folds());
    let all_folds: Vec<(Vec<ClassId>, Vec<ClassId>)> = (0..n_folds)
        .map(|f| dataset.fold_classes(f, n_folds))
        .collect::<Result<_>>()?;
    let checked: Vec<usize> = match options.fold {
        Some(f) => {
            super::check_fold(f, n_folds)?;
            vec![f]
        }
        None => (0..n_folds).collect(),
    };

    let scan = cat.scan();
    let sizes = par_map(cat.entries(), |e| {
        if options.decode_images {
            load_rgb(&e.image)
                .map(|img| img.dimensions())
                .map_err(Error::from)
        } else {
            image_size(&e.image)
        }
    });

    let mut unreadable = cat.listing_problems().to_vec();
    let mut size_mismatches = Vec::new();
    let mut unknown_labels = Vec::new();
    for ((entry, image), s) in cat.entries().iter().zip(&sizes).zip(&scan.images) {
        if let Err(e) = image {
            unreadable.push(FileProblem {
                path: entry.image.clone(),
                error: e.to_string(),
            });
        }
        if let Some(error) = &s.error {
            unreadable.push(FileProblem {
                path: entry.label.path().to_path_buf(),
                error: error.clone(),
            });
        }
        if !s.unknown_values.is_empty() {
            unknown_labels.push(UnknownLabels {
                label: entry.label.describe(),
                values: s.unknown_values.clone(),
            });
        }
        if let (Ok(img), Some(lab)) = (image, s.label_size) {
            if *img != lab {
                size_mismatches.push(SizeMismatch {
                    image: entry.image.clone(),
                    label: entry.label.describe(),
                    image_size: *img,
                    label_size: lab,
                });
            }
        }
    }

    let min = cat.protocol().min_pixels;
    let classes: Vec<ClassCount> = cat
        .classes()
        .iter()
        .map(|c| ClassCount {
            id: c.id,
            name: c.name.clone(),
            images: cat.class_images(c.id, min).len(),
            images_any: cat.class_images(c.id, 1).len(),
            test_fold: all_folds.iter().position(|(_, test)| test.contains(&c.id)),
        })
        .collect();

    let mut folds = Vec::new();
    let mut too_few_images = Vec::new();
    let needed = options.shots + 1;
    for &f in &checked {
        let (train_classes, test_classes) = all_folds[f].clone();
        let train = dataset.train_pool(f, n_folds)?;
        let test = dataset.test_pool(f, n_folds)?;
        let unfiltered = cat.pool(&train_classes, &[]);
        let counts = |p: &super::ClassPool| -> BTreeMap<ClassId, usize> {
            p.classes.iter().map(|(&c, v)| (c, v.len())).collect()
        };
        for (role, pool) in [("test", &test), ("train", &train)] {
            for (&class, imgs) in &pool.classes {
                if imgs.len() < needed {
                    too_few_images.push(SmallClass {
                        class,
                        name: cat.class_name(class).unwrap_or("?").to_string(),
                        fold: f,
                        role: role.to_string(),
                        images: imgs.len(),
                        needed,
                    });
                }
            }
        }
        folds.push(FoldCount {
            fold: f,
            test_images: test.distinct_images(),
            train_images: train.distinct_images(),
            filtered_out: unfiltered.distinct_images() - train.distinct_images(),
            test_class_images: counts(&test),
            train_class_images: counts(&train),
            train_classes,
            test_classes,
        });
    }

    Ok(DataReport {
        dataset: cat.name().to_string(),
        root: cat.root().to_path_buf(),
        images: cat.entries().len(),
        protocol: cat.protocol(),
        shots: options.shots,
        n_folds,
        classes,
        folds,
        unreadable,
        size_mismatches,
        unknown_labels,
        too_few_images,
    })
}
