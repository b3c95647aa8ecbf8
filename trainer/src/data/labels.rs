//! Label decoding shared by the formats.
//!
//! - [`LabelDecoder`]: a label that its format module decodes itself, from memory, instead of a
//!   mask file (COCO's per-image annotations). The generic [`super::LabelSource`] and
//!   [`super::MaskSource`] hold it as `Arc<dyn LabelDecoder>`, so they do not name any format.
//! - [`label_histogram`]: a class-index label map read whole (all classes at once) for the scan.
//!   Same value rules as `mce_core::preprocess::load_mask` with `MaskEncoding::ClassIndex`: 8-bit
//!   grey, or a colour file whose pixels are all grey; palette PNGs are refused (the decoder
//!   expands them to colours).

use std::fmt::Debug;
use std::path::Path;

use image::{DynamicImage, ImageReader, Limits};
use mce_core::preprocess::Mask;

use super::scan::ImageScan;
use super::ClassId;
use crate::{Error, Result};

/// A label decoded on demand by its format module (implemented by `coco::CocoImage`).
pub trait LabelDecoder: Send + Sync + Debug {
    /// The episode label of `class`: 1 where the class is, 0 elsewhere. The error names the file
    /// and the image in it.
    fn mask(&self, class: ClassId) -> Result<Mask>;

    /// The scan of this label: its size and the pixels of every class present. A decoding error
    /// does not stop it; it is kept in [`ImageScan::error`] (naming the file).
    fn scan(&self) -> ImageScan;

    /// The file the label is read from (for COCO, the annotation json).
    fn file(&self) -> &Path;

    /// A name for reports (`check_data`): which image of [`LabelDecoder::file`] this is.
    fn describe(&self) -> String;
}

/// Largest label map accepted, in pixels (as `mce_core::preprocess::DEFAULT_MAX_PIXELS`).
pub const MAX_LABEL_PIXELS: u64 = mce_core::preprocess::DEFAULT_MAX_PIXELS;

/// The size and value histogram of a class-index label map.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabelHistogram {
    pub width: u32,
    pub height: u32,
    /// Pixels per value 0..=255.
    pub counts: Box<[u64; 256]>,
}

/// Decode a class-index label map and count its values.
pub fn label_histogram(path: &Path) -> Result<LabelHistogram> {
    let img = decode(path)?;
    let (width, height) = (img.width(), img.height());
    let mut counts = Box::new([0u64; 256]);
    match &img {
        DynamicImage::ImageLuma8(b) => b.as_raw().iter().for_each(|&v| counts[v as usize] += 1),
        DynamicImage::ImageLumaA8(_) | DynamicImage::ImageRgb8(_) | DynamicImage::ImageRgba8(_) => {
            for p in img.to_rgb8().pixels() {
                if p[0] != p[1] || p[1] != p[2] {
                    return Err(Error::format(
                        path,
                        "class-index label map is in colour (palette PNG?): save the class \
                         indices as 8-bit grey",
                    ));
                }
                counts[p[0] as usize] += 1;
            }
        }
        other => {
            return Err(Error::format(
                path,
                format!(
                    "class-index label map must be 8-bit, got {:?}",
                    other.color()
                ),
            ))
        }
    }
    Ok(LabelHistogram {
        width,
        height,
        counts,
    })
}

/// `(width, height)` from the file header, without decoding the pixels.
pub fn image_size(path: &Path) -> Result<(u32, u32)> {
    ImageReader::open(path)
        .map_err(|e| Error::io(path, e))?
        .with_guessed_format()
        .map_err(|e| Error::io(path, e))?
        .into_dimensions()
        .map_err(|e| Error::format(path, format!("cannot read image header: {e}")))
}

fn decode(path: &Path) -> Result<DynamicImage> {
    let mut reader = ImageReader::open(path)
        .and_then(|r| r.with_guessed_format())
        .map_err(|e| Error::io(path, e))?;
    let mut limits = Limits::default();
    limits.max_alloc = Some(MAX_LABEL_PIXELS * 8);
    reader.limits(limits);
    reader
        .decode()
        .map_err(|e| Error::format(path, format!("cannot decode label map: {e}")))
}
