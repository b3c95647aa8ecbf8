//! The dataset layer: few-shot benchmark formats behind one trait, the field's protocol (pixel
//! threshold, training-image filter, fold splits), episode sampling and a data checker.
//!
//! ```text
//! format module (pascal, coco, fss, folders, msrc)
//!     lists images + labels, names classes, defines the fold rule
//!         └─▶ Catalog (classes, ImageEntry list, Protocol)
//!                 └─ scan() once, in parallel, cached: per image, pixels of every class
//!                        ├─▶ ClassPool (train: filtered / test) ─▶ EpisodeSampler ─▶ Episode
//!                        │        Episode's SampleRefs ─▶ Sample (image path + MaskSource)
//!                        │                                     └─▶ load: RgbImage + Mask 0/1/255
//!                        └─▶ check_data ─▶ DataReport (JSON, table)
//! ```
//!
//! Class ids are the dataset's own: PASCAL 1..=20, COCO 1..=80 (categories in id order),
//! MSRC-v2 0..=22, FSS-1000 and folders 0..N-1 (class names sorted).

pub mod catalog;
pub mod check;
pub mod coco;
pub mod folders;
pub mod folds;
pub mod fss;
pub mod labels;
pub mod msrc;
pub mod open;
pub mod pascal;
pub mod report;
pub mod sample;
pub mod sampler;
pub mod scan;

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

pub use catalog::{Catalog, ClassPool, FileProblem, ImageEntry, LabelSource, Protocol};
pub use check::{check_data, CheckOptions};
pub use coco::Coco20i;
pub use folders::Folders;
pub use fss::Fss1000;
pub use msrc::MsrcV2;
pub use open::{open_dataset, DatasetArgs, DatasetKind, OpenOptions};
pub use pascal::Pascal5i;
pub use report::DataReport;
pub use sample::{LoadedSample, MaskSource, Sample, SampleRef};
pub use sampler::{load_episode, test_episodes, Episode, EpisodeSampler, LoadedEpisode};
pub use scan::{ImageScan, Scan};

/// A class id of a dataset (see the module docs for each format's numbering).
pub type ClassId = usize;

/// One class of a dataset.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClassInfo {
    pub id: ClassId,
    pub name: String,
}

/// A few-shot segmentation dataset: one pool of images (one split of the benchmark), its classes
/// and its fold rule. Format modules implement the four required methods; everything else
/// (scanning, the protocol's threshold and filter, pools, samples) is provided on top of the
/// [`Catalog`].
pub trait FewShotDataset: Send + Sync {
    /// The listing: classes, images and labels, protocol, cached scan.
    fn catalog(&self) -> &Catalog;

    /// Mutable access, to change the [`Protocol`].
    fn catalog_mut(&mut self) -> &mut Catalog;

    /// The benchmark's number of folds (4 for PASCAL-5i, COCO-20i, MSRC-v2).
    fn default_folds(&self) -> usize;

    /// `(train_classes, test_classes)` of `fold` out of `n_folds`, ascending. Errors when the fold
    /// is out of range or has no test class.
    fn fold_classes(&self, fold: usize, n_folds: usize) -> Result<(Vec<ClassId>, Vec<ClassId>)>;

    /// Short name of the format ("pascal", "coco", ...).
    fn name(&self) -> &str {
        self.catalog().name()
    }

    /// All classes, ascending by id.
    fn classes(&self) -> &[ClassInfo] {
        self.catalog().classes()
    }

    /// Replace the protocol (pixel threshold, filter threshold); the cached scan stays valid.
    fn set_protocol(&mut self, protocol: Protocol) {
        self.catalog_mut().set_protocol(protocol);
    }

    /// Every image in which `class` covers at least `protocol.min_pixels` pixels, with its mask
    /// source for that class. Scans the dataset on first use.
    fn samples(&self, class: ClassId) -> Result<Vec<Sample>> {
        let cat = self.catalog();
        cat.check_class(class)?;
        let pool = cat.pool(&[class], &[]);
        let images = pool.images(class);
        images
            .iter()
            .map(|&image| cat.sample(SampleRef { image, class }))
            .collect()
    }

    /// Training pool of a fold: every train class with the images in which it counts, after
    /// removing every image that contains a test class (the field's filter).
    fn train_pool(&self, fold: usize, n_folds: usize) -> Result<ClassPool> {
        let (train, test) = self.fold_classes(fold, n_folds)?;
        Ok(self.catalog().pool(&train, &test))
    }

    /// Test pool of a fold: every test class with the images in which it counts (no filter).
    fn test_pool(&self, fold: usize, n_folds: usize) -> Result<ClassPool> {
        let (_, test) = self.fold_classes(fold, n_folds)?;
        Ok(self.catalog().pool(&test, &[]))
    }

    /// The image path and mask source behind a reference.
    fn sample(&self, r: SampleRef) -> Result<Sample> {
        self.catalog().sample(r)
    }
}

/// Check `fold < n_folds` and `n_folds >= 1`.
pub(crate) fn check_fold(fold: usize, n_folds: usize) -> Result<()> {
    if n_folds == 0 || fold >= n_folds {
        return Err(Error::Input(format!(
            "fold {fold} is out of range for {n_folds} folds"
        )));
    }
    Ok(())
}
