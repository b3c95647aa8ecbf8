//! COCO-20i from a COCO 2014 / 2017 `instances_*.json` and its image folder.
//!
//! Categories are numbered 1..=80 in category-id order (COCO's ids run to 90 with gaps). Each
//! image keeps its annotations in memory ([`CocoImage`], the catalog's [`LabelDecoder`] for it);
//! the mask of a class is the union of its annotations (polygons and RLE, crowd annotations
//! included, as pycocotools' `annToMask` does per annotation), decoded on demand. Images without
//! annotations are left out. Folds are interleaved: fold i of 4 tests classes
//! {4k + i + 1 : k = 0..19}.

pub mod rle;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use mce_core::preprocess::Mask;

use self::rle::{polygon_mask, Rle};
use super::catalog::{Catalog, FileProblem, ImageEntry, LabelSource};
use super::labels::LabelDecoder;
use super::scan::ImageScan;
use super::{folds, ClassId, ClassInfo, FewShotDataset};
use crate::{Error, Result};

/// A COCO `segmentation` field.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Segmentation {
    /// One or more polygons `[x0, y0, x1, y1, ...]` (their union).
    Polygons(Vec<Vec<f64>>),
    /// A run-length encoded mask; `size` is `[height, width]`.
    Rle { counts: RleCounts, size: [usize; 2] },
}

/// RLE counts: an array (uncompressed, crowd annotations) or COCO's compressed string.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum RleCounts {
    Uncompressed(Vec<u32>),
    Compressed(String),
}

impl Segmentation {
    /// Row-major 0/1 mask of a `height × width` image.
    pub fn to_mask(&self, height: usize, width: usize) -> std::result::Result<Vec<u8>, String> {
        match self {
            Segmentation::Polygons(polys) => {
                let mut mask = vec![0u8; height * width];
                for poly in polys {
                    if poly.len() % 2 != 0 {
                        return Err(format!(
                            "polygon with an odd number ({}) of coordinates",
                            poly.len()
                        ));
                    }
                    let part = polygon_mask(poly, height, width);
                    mask.iter_mut().zip(part).for_each(|(m, p)| *m |= p);
                }
                Ok(mask)
            }
            Segmentation::Rle { counts, size } => {
                if *size != [height, width] {
                    return Err(format!(
                        "RLE size {}x{} (h x w) differs from the image's {height}x{width}",
                        size[0], size[1]
                    ));
                }
                let rle = match counts {
                    RleCounts::Uncompressed(c) => Rle {
                        height,
                        width,
                        counts: c.clone(),
                    },
                    RleCounts::Compressed(s) => Rle::from_compressed(s, height, width)?,
                };
                rle.decode()
            }
        }
    }
}

/// One annotation of a [`CocoImage`].
#[derive(Debug, Clone, PartialEq)]
pub struct CocoAnnotation {
    pub id: u64,
    /// Class id 1..=N (not the COCO category id).
    pub class: ClassId,
    pub iscrowd: bool,
    pub segmentation: Segmentation,
}

/// A COCO image and its annotations.
#[derive(Debug, Clone, PartialEq)]
pub struct CocoImage {
    pub id: u64,
    pub file_name: String,
    pub height: usize,
    pub width: usize,
    /// The json the annotations come from (for error messages).
    pub annotation_file: Arc<Path>,
    pub annotations: Vec<CocoAnnotation>,
}

impl CocoImage {
    /// The distinct classes annotated in the image, ascending.
    pub fn classes(&self) -> Vec<ClassId> {
        let mut c: Vec<ClassId> = self.annotations.iter().map(|a| a.class).collect();
        c.sort_unstable();
        c.dedup();
        c
    }

    /// Row-major mask: 1 where any annotation of `class` is, else 0.
    pub fn class_mask(&self, class: ClassId) -> std::result::Result<Vec<u8>, String> {
        let mut mask = vec![0u8; self.height * self.width];
        for a in self.annotations.iter().filter(|a| a.class == class) {
            let part = a
                .segmentation
                .to_mask(self.height, self.width)
                .map_err(|e| format!("annotation {}: {e}", a.id))?;
            mask.iter_mut().zip(part).for_each(|(m, p)| *m |= p);
        }
        Ok(mask)
    }
}

impl LabelDecoder for CocoImage {
    fn mask(&self, class: ClassId) -> Result<Mask> {
        let data = self.class_mask(class).map_err(|reason| {
            Error::format(
                self.annotation_file.to_path_buf(),
                format!("image id {}: {reason}", self.id),
            )
        })?;
        Ok(Mask {
            width: self.width,
            height: self.height,
            data,
        })
    }

    fn scan(&self) -> ImageScan {
        let mut out = ImageScan {
            label_size: Some((self.width as u32, self.height as u32)),
            ..ImageScan::default()
        };
        for class in self.classes() {
            match self.class_mask(class) {
                Ok(m) => {
                    let n = m.iter().filter(|&&v| v == 1).count() as u64;
                    if n > 0 {
                        out.class_pixels.push((class, n));
                    }
                }
                Err(reason) => {
                    out.error = Some(format!(
                        "{}: image id {} ({}): {reason}",
                        self.annotation_file.display(),
                        self.id,
                        self.file_name
                    ));
                }
            }
        }
        out
    }

    fn file(&self) -> &Path {
        &self.annotation_file
    }

    fn describe(&self) -> String {
        format!("COCO image id {} ({})", self.id, self.file_name)
    }
}

#[derive(Deserialize)]
struct InstancesJson {
    images: Vec<JsonImage>,
    annotations: Vec<JsonAnnotation>,
    categories: Vec<JsonCategory>,
}

#[derive(Deserialize)]
struct JsonImage {
    id: u64,
    file_name: String,
    height: usize,
    width: usize,
}

#[derive(Deserialize)]
struct JsonAnnotation {
    #[serde(default)]
    id: u64,
    image_id: u64,
    category_id: u64,
    segmentation: Segmentation,
    #[serde(default)]
    iscrowd: u8,
}

#[derive(Deserialize)]
struct JsonCategory {
    id: u64,
    name: String,
}

/// A COCO-20i split (one `instances_*.json`).
#[derive(Debug)]
pub struct Coco20i {
    catalog: Catalog,
    /// The image behind each catalog entry, in entry order (shared with the entry's label).
    images: Vec<Arc<CocoImage>>,
}

impl Coco20i {
    /// Open `annotations` (an `instances_*.json`) with image files under `images`.
    pub fn open(annotations: impl AsRef<Path>, images: impl AsRef<Path>) -> Result<Self> {
        let (json_path, images) = (annotations.as_ref(), images.as_ref());
        let bytes = std::fs::read(json_path).map_err(|e| Error::io(json_path, e))?;
        let json: InstancesJson = serde_json::from_slice(&bytes)
            .map_err(|e| Error::format(json_path, format!("not a COCO instances file: {e}")))?;
        drop(bytes);
        let mut cats = json.categories;
        cats.sort_by_key(|c| c.id);
        let class_of: HashMap<u64, ClassId> = cats
            .iter()
            .enumerate()
            .map(|(i, c)| (c.id, i + 1))
            .collect();
        let classes = cats
            .iter()
            .enumerate()
            .map(|(i, c)| ClassInfo {
                id: i + 1,
                name: c.name.clone(),
            })
            .collect();

        let file: Arc<Path> = Arc::from(json_path);
        let mut problems = Vec::new();
        let mut by_image: BTreeMap<u64, Vec<CocoAnnotation>> = BTreeMap::new();
        for a in json.annotations {
            let Some(&class) = class_of.get(&a.category_id) else {
                problems.push(FileProblem {
                    path: json_path.to_path_buf(),
                    error: format!("annotation {}: unknown category id {}", a.id, a.category_id),
                });
                continue;
            };
            by_image
                .entry(a.image_id)
                .or_default()
                .push(CocoAnnotation {
                    id: a.id,
                    class,
                    iscrowd: a.iscrowd != 0,
                    segmentation: a.segmentation,
                });
        }
        let mut imgs = json.images;
        imgs.sort_by_key(|i| i.id);
        let (mut entries, mut coco_images) = (Vec::new(), Vec::new());
        for img in imgs {
            let Some(annotations) = by_image.remove(&img.id) else {
                continue;
            };
            let path = images.join(&img.file_name);
            if !path.is_file() {
                problems.push(FileProblem {
                    path,
                    error: format!("image id {} is annotated but the file is missing", img.id),
                });
                continue;
            }
            let image = Arc::new(CocoImage {
                id: img.id,
                file_name: img.file_name,
                height: img.height,
                width: img.width,
                annotation_file: Arc::clone(&file),
                annotations,
            });
            let label = LabelSource::Decoded(Arc::clone(&image) as Arc<dyn LabelDecoder>);
            entries.push(ImageEntry { image: path, label });
            coco_images.push(image);
        }
        for (id, _) in by_image {
            problems.push(FileProblem {
                path: json_path.to_path_buf(),
                error: format!("annotations refer to image id {id}, which is not in 'images'"),
            });
        }
        Ok(Coco20i {
            catalog: Catalog::new("coco", images, classes, entries, problems),
            images: coco_images,
        })
    }

    /// The COCO image (annotations) of each catalog entry, in entry order.
    pub fn images(&self) -> &[Arc<CocoImage>] {
        &self.images
    }

    /// Open a COCO root for `split` ("train" or "val"): `annotations/instances_<split>2014.json`
    /// (or 2017) with images in `<split>2014/` (or `images/<split>2014/`).
    pub fn open_root(root: impl AsRef<Path>, split: &str) -> Result<Self> {
        let root = root.as_ref();
        let mut tried = Vec::new();
        for year in ["2014", "2017"] {
            let json = root
                .join("annotations")
                .join(format!("instances_{split}{year}.json"));
            tried.push(json.clone());
            if !json.is_file() {
                continue;
            }
            let dirs = [
                root.join(format!("{split}{year}")),
                root.join("images").join(format!("{split}{year}")),
            ];
            return match dirs.iter().find(|d| d.is_dir()) {
                Some(dir) => Coco20i::open(&json, dir),
                None => Err(Error::layout(
                    root,
                    format!(
                        "{} found but no image folder {}",
                        json.display(),
                        paths(&dirs)
                    ),
                )),
            };
        }
        Err(Error::layout(
            root,
            format!("no annotation file: tried {}", paths(&tried)),
        ))
    }
}

fn paths(p: &[PathBuf]) -> String {
    p.iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

impl FewShotDataset for Coco20i {
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
        folds::interleaved(&self.catalog.class_ids(), fold, n_folds)
    }
}
