//! Opening any supported format by name (used by the command line).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{Coco20i, FewShotDataset, Folders, Fss1000, MsrcV2, Pascal5i, Protocol};
use crate::Result;

/// The supported formats (see [`Pascal5i`], [`Coco20i`], [`Fss1000`], [`Folders`], [`MsrcV2`]).
/// The variants' docs are `--dataset`'s help, so they are plain text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum DatasetKind {
    /// PASCAL-5i: VOC2012 with SBD labels, 4 folds of 5 classes
    Pascal,
    /// COCO-20i: COCO 2014 instances, 4 folds of 20 classes
    Coco,
    /// FSS-1000: one folder per class, image + mask pairs
    Fss,
    /// your own data: <class>/images and <class>/masks
    Folders,
    /// MSRC-v2: 591 images, 23 classes (horse in no fold), class-index label maps
    Msrc,
}

/// Format-specific options; each format ignores what it does not use.
#[derive(Debug, Clone, Default)]
pub struct OpenOptions {
    /// PASCAL: the image list; FSS-1000: the test-class list; COCO: an `instances_*.json` (its
    /// images are then looked for in `root`).
    pub list: Option<PathBuf>,
    /// COCO with no `list`: the split ("train" or "val"; default "val").
    pub split: Option<String>,
    /// Protocol thresholds (default: 2048 pixels, filter at 1 pixel).
    pub protocol: Protocol,
}

/// Open the dataset of `kind` at `root`.
pub fn open_dataset(
    kind: DatasetKind,
    root: &Path,
    options: &OpenOptions,
) -> Result<Box<dyn FewShotDataset>> {
    let list = options.list.as_deref();
    let mut ds: Box<dyn FewShotDataset> = match kind {
        DatasetKind::Pascal => Box::new(Pascal5i::open(root, list)?),
        DatasetKind::Coco => match list {
            Some(json) => Box::new(Coco20i::open(json, root)?),
            None => Box::new(Coco20i::open_root(
                root,
                options.split.as_deref().unwrap_or("val"),
            )?),
        },
        DatasetKind::Fss => Box::new(Fss1000::open(root, list)?),
        DatasetKind::Folders => Box::new(Folders::open(root)?),
        DatasetKind::Msrc => Box::new(MsrcV2::open(root)?),
    };
    ds.set_protocol(options.protocol);
    Ok(ds)
}

/// The command-line flags that name a dataset, shared by every subcommand that reads one.
#[derive(Debug, Clone, clap::Args)]
pub struct DatasetArgs {
    /// Dataset format.
    #[arg(long, value_enum)]
    pub dataset: DatasetKind,
    /// Dataset root.
    #[arg(long)]
    pub root: PathBuf,
    /// PASCAL: image list; FSS-1000: test-class list; COCO: instances json (images in --root).
    #[arg(long)]
    pub list: Option<PathBuf>,
    /// COCO without --list: split to open (train or val).
    #[arg(long)]
    pub split: Option<String>,
    /// Pixels a class needs to count in an image.
    #[arg(long, default_value_t = Protocol::default().min_pixels)]
    pub min_pixels: u64,
    /// Training images holding at least this many pixels of a test class are removed (the
    /// field's rule: any pixel). 0 keeps them (test classes then appear as background).
    #[arg(long, default_value_t = Protocol::default().filter_min_pixels)]
    pub filter_min_pixels: u64,
}

impl DatasetArgs {
    /// Open the dataset these flags describe.
    pub fn open(&self) -> Result<Box<dyn FewShotDataset>> {
        let options = OpenOptions {
            list: self.list.clone(),
            split: self.split.clone(),
            protocol: Protocol {
                min_pixels: self.min_pixels,
                filter_min_pixels: self.filter_min_pixels,
            },
        };
        open_dataset(self.dataset, &self.root, &options)
    }
}
