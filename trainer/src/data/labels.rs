//! Reading class-index label maps whole (all classes at once) for the scan. Same value rules as
//! `mce_core::preprocess::load_mask` with `MaskEncoding::ClassIndex`: 8-bit grey, or a colour
//! file whose pixels are all grey; palette PNGs are refused (the decoder expands them to colours).

use std::path::Path;

use image::{DynamicImage, ImageReader, Limits};

use crate::{Error, Result};

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
