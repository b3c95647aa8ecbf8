//! [`SampleRef`] (an image of the pool seen as an instance of one class), its resolved
//! [`Sample`] (image path + [`MaskSource`]) and the loaded pair.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use image::RgbImage;
use mce_core::preprocess::{load_mask, load_rgb, Mask, MaskEncoding};
use serde::{Deserialize, Serialize};

use super::labels::LabelDecoder;
use super::ClassId;
use crate::{Error, Result};

/// An image of a dataset (index into its catalog's entries) taken as an instance of `class`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SampleRef {
    pub image: usize,
    pub class: ClassId,
}

/// How to obtain the episode label of one image for one class.
#[derive(Debug, Clone)]
pub enum MaskSource {
    /// A mask file: `ClassIndex(c)` for label maps, `Binary` for one-class masks.
    File {
        path: PathBuf,
        encoding: MaskEncoding,
    },
    /// A label its format decodes from memory (COCO: the union of the class's annotations).
    Decoded {
        label: Arc<dyn LabelDecoder>,
        class: ClassId,
    },
}

impl MaskSource {
    /// The file the label is read from (for a decoded label, e.g. the COCO annotation json).
    pub fn path(&self) -> &Path {
        match self {
            MaskSource::File { path, .. } => path,
            MaskSource::Decoded { label, .. } => label.file(),
        }
    }

    /// The episode label: 1 = the class, 0 = other labelled pixels, 255 = ignore (kept).
    pub fn load(&self) -> Result<Mask> {
        match self {
            MaskSource::File { path, encoding } => Ok(load_mask(path, *encoding)?),
            MaskSource::Decoded { label, class } => label.mask(*class),
        }
    }
}

/// An image path and the mask source of its class.
#[derive(Debug, Clone)]
pub struct Sample {
    pub image: PathBuf,
    pub mask: MaskSource,
}

/// A decoded image and its episode label (same size).
#[derive(Debug, Clone)]
pub struct LoadedSample {
    pub image: RgbImage,
    pub mask: Mask,
}

impl Sample {
    /// Decode the image (8-bit RGB).
    pub fn load_image(&self) -> Result<RgbImage> {
        Ok(load_rgb(&self.image)?)
    }

    /// Decode the episode label (see [`MaskSource::load`]).
    pub fn load_mask(&self) -> Result<Mask> {
        self.mask.load()
    }

    /// Decode both; [`Error::Format`] naming the image when the sizes differ.
    pub fn load(&self) -> Result<LoadedSample> {
        let image = self.load_image()?;
        let mask = self.load_mask()?;
        if (image.width() as usize, image.height() as usize) != (mask.width, mask.height) {
            return Err(Error::format(
                &self.image,
                format!(
                    "image is {}x{} but its label is {}x{}",
                    image.width(),
                    image.height(),
                    mask.width,
                    mask.height
                ),
            ));
        }
        Ok(LoadedSample { image, mask })
    }
}
