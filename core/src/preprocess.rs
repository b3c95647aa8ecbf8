//! Image and mask pre-processing, and mapping the model's logits back to the original image.
//!
//! * Loading: [`load_rgb`] (size-limited against decompression bombs) and [`load_mask`] (binary or
//!   class-index PNG -> [`Mask`] with values 0 = background, 1 = foreground, 255 = ignore).
//! * Transforms ([`Resize`]): the image is resized bilinearly (image crate `Triangle` filter) into the
//!   top-left `valid_h × valid_w` corner of an `S × S` canvas and normalised with the backbone's
//!   mean / std -> `(3, S, S)` f32. Masks are resized with nearest neighbour, padding 255 -> `(1, S, S)`.
//! * Mapping back: [`logits_to_original`] / [`probabilities_to_original`] turn `(2, S, S)` logits into
//!   a prediction at the original `orig_h × orig_w` resolution (bilinear, `align_corners = true`).

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use image::imageops::FilterType;
use image::{DynamicImage, ImageDecoder, ImageReader, Limits, RgbImage};
use serde::{Deserialize, Serialize};

use crate::backbone::BackboneKind;
use crate::metrics::IGNORE;
use crate::Error;

/// Default limit on decoded pixels (64 Mpx): larger files are refused before decoding.
pub const DEFAULT_MAX_PIXELS: u64 = 64 * 1024 * 1024;
/// A binary mask may hold at most this fraction of pixels that are neither 0, 1 nor 255 (anti-aliased
/// or JPEG-damaged edges); more means the file is not a binary mask.
pub const MAX_SOFT_EDGE_FRACTION: f64 = 0.05;

/// Load an image as 8-bit RGB, refusing more than [`DEFAULT_MAX_PIXELS`] pixels.
pub fn load_rgb(path: impl AsRef<Path>) -> crate::Result<RgbImage> {
    load_rgb_with_limit(path, DEFAULT_MAX_PIXELS)
}

/// [`load_rgb`] with an explicit pixel limit. Missing / unreadable file -> [`Error::Io`], undecodable
/// or too large -> [`Error::Image`]; both name the file.
pub fn load_rgb_with_limit(path: impl AsRef<Path>, max_pixels: u64) -> crate::Result<RgbImage> {
    Ok(decode(path.as_ref(), max_pixels)?.to_rgb8())
}

fn decode(path: &Path, max_pixels: u64) -> crate::Result<DynamicImage> {
    let image_err = |reason: String| Error::Image {
        path: path.to_path_buf(),
        reason,
    };
    // Read whole (bounded), so that a truncated file can be refused before decoding.
    let len = std::fs::metadata(path)
        .map_err(|e| Error::io(path, e))?
        .len();
    let max_file = max_pixels.saturating_mul(8).max(1 << 20);
    if len > max_file {
        return Err(image_err(format!(
            "the file has {len} bytes, more than the {max_file} an image within the limit of \
             {max_pixels} pixels needs"
        )));
    }
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let mut reader = ImageReader::new(std::io::Cursor::new(bytes.as_slice()))
        .with_guessed_format()
        .map_err(|e| Error::io(path, e))?;
    if let Some(format) = reader.format() {
        crate::image_file::check_complete(&bytes, format).map_err(image_err)?;
    }
    let mut limits = Limits::default();
    // 8 bytes per pixel covers 16-bit RGBA, the widest of the enabled formats.
    limits.max_alloc = Some(max_pixels.saturating_mul(8).max(1 << 20));
    reader.limits(limits);
    let decoder = reader
        .into_decoder()
        .map_err(|e| image_err(e.to_string()))?;
    let (w, h) = decoder.dimensions();
    if u64::from(w) * u64::from(h) > max_pixels {
        return Err(image_err(format!(
            "{w}x{h} pixels exceeds the limit of {max_pixels} pixels"
        )));
    }
    DynamicImage::from_decoder(decoder).map_err(|e| image_err(e.to_string()))
}

/// How a mask file encodes the object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum MaskEncoding {
    /// 0/255 (255 or, with soft edges, >= 128 -> foreground) or 0/1 with optional 255 = ignore.
    Binary,
    /// A class-index label map (8-bit grey): value == c -> 1, 255 -> ignore, else 0.
    ClassIndex(u8),
}

/// A row-major mask, values 0 (background), 1 (foreground), 255 (ignore).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mask {
    pub width: usize,
    pub height: usize,
    pub data: Vec<u8>,
}

impl Mask {
    /// Number of foreground (1) pixels.
    pub fn foreground_count(&self) -> usize {
        self.data.iter().filter(|&&v| v == 1).count()
    }

    /// [`Error::Mask`] naming `path` when the mask has no foreground pixel.
    pub fn check_nonempty(&self, path: impl AsRef<Path>) -> crate::Result<()> {
        if self.foreground_count() > 0 {
            return Ok(());
        }
        Err(Error::Mask {
            path: path.as_ref().to_path_buf(),
            reason: format!(
                "mask has no foreground pixel ({}x{})",
                self.width, self.height
            ),
        })
    }
}

/// Load a mask file (PNG, BMP, ...; pixel limit [`DEFAULT_MAX_PIXELS`]).
///
/// Binary files are classified by their value set: only {0, 1} or {0, 1, 255} -> 0/1 with 255 =
/// ignore; only {0, 255} -> 255 is foreground; mostly 0/255 with at most [`MAX_SOFT_EDGE_FRACTION`]
/// other values -> `>= 128` is foreground; anything else (a photo, a class-index map) is an
/// [`Error::Mask`]. Colour files are converted to luma. Class-index files must be grey (palette PNGs
/// are expanded to colours by the decoder, so convert them to grey indices first).
pub fn load_mask(path: impl AsRef<Path>, encoding: MaskEncoding) -> crate::Result<Mask> {
    let path = path.as_ref();
    let img = decode(path, DEFAULT_MAX_PIXELS)?;
    let (width, height) = (img.width() as usize, img.height() as usize);
    let mask_err = |reason: String| Error::Mask {
        path: path.to_path_buf(),
        reason,
    };
    let data = match encoding {
        MaskEncoding::Binary => binary_values(&img.to_luma8().into_raw()).map_err(mask_err)?,
        MaskEncoding::ClassIndex(c) => {
            let grey = grey_values(&img).map_err(&mask_err)?;
            class_values(&grey, c).map_err(mask_err)?
        }
    };
    Ok(Mask {
        width,
        height,
        data,
    })
}

/// 0/1/255 from the grey values of a binary mask file (see [`load_mask`]).
fn binary_values(values: &[u8]) -> Result<Vec<u8>, String> {
    let mut hist = [0usize; 256];
    values.iter().for_each(|&v| hist[v as usize] += 1);
    let soft = values.len() - hist[0] - hist[1] - hist[255];
    if soft == 0 && hist[1] > 0 {
        return Ok(values.to_vec()); // 0/1, 255 = ignore
    }
    let limit = MAX_SOFT_EDGE_FRACTION * values.len() as f64;
    if ((soft + hist[1]) as f64) <= limit {
        return Ok(values.iter().map(|&v| u8::from(v >= 128)).collect()); // 0/255
    }
    let distinct = hist.iter().filter(|&&n| n > 0).count();
    Err(format!(
        "not a binary mask: {distinct} distinct values, {:.1}% of pixels are neither 0, 1 nor 255 \
         (a photo? a class-index map needs MaskEncoding::ClassIndex)",
        100.0 * soft as f64 / values.len() as f64
    ))
}

/// The raw 8-bit values of a grey (or grey-looking colour) image.
fn grey_values(img: &DynamicImage) -> Result<Vec<u8>, String> {
    match img {
        DynamicImage::ImageLuma8(b) => Ok(b.as_raw().clone()),
        DynamicImage::ImageLumaA8(_) | DynamicImage::ImageRgb8(_) | DynamicImage::ImageRgba8(_) => {
            let rgb = img.to_rgb8();
            if rgb.pixels().any(|p| p[0] != p[1] || p[1] != p[2]) {
                return Err(
                    "class-index mask is in colour (palette PNG?): save the class indices \
                            as 8-bit grey"
                        .into(),
                );
            }
            Ok(rgb.pixels().map(|p| p[0]).collect())
        }
        other => Err(format!(
            "class-index mask must be 8-bit, got {:?}",
            other.color()
        )),
    }
}

fn class_values(values: &[u8], class: u8) -> Result<Vec<u8>, String> {
    if class == IGNORE {
        return Err("class index 255 is the ignore label".into());
    }
    Ok(values
        .iter()
        .map(|&v| match v {
            v if v == class => 1,
            IGNORE => IGNORE,
            _ => 0,
        })
        .collect())
}

/// How an image is brought to the model's square input of side `S`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Resize {
    /// Longer side to `S` keeping the aspect ratio (shorter side rounded, at least 1), image top-left,
    /// padding bottom/right with the mean colour (0 after normalisation). Mapped back by cropping the
    /// valid region and resizing it to the original size.
    LongerSidePad(usize),
    /// Stretch to `S × S`.
    Direct(usize),
    /// PFENet / BAM `test_Resize` exactly: longer side `S`, shorter side `int(len * S / longer)`, then
    /// both floored to a multiple of 8 (so 473 -> 472), padding with black pixels (0 before
    /// normalisation). Mapped back as their `test.py` does: the whole `S × S` logits are resized to
    /// `L × L`, `L` = the longer original side, and the top-left `orig_h × orig_w` is kept.
    FieldTest(usize),
}

impl Resize {
    /// The canvas side `S`.
    pub fn size(self) -> usize {
        match self {
            Resize::LongerSidePad(s) | Resize::Direct(s) | Resize::FieldTest(s) => s,
        }
    }

    /// `(valid_h, valid_w)`: the region an `h × w` image occupies on the canvas.
    pub fn valid_hw(self, h: usize, w: usize) -> (usize, usize) {
        let s = self.size();
        let short = |n: usize, long: usize| n as f64 * (s as f64 / long as f64);
        let (sh, sw) = if h >= w {
            (s as f64, short(w, h))
        } else {
            (short(h, w), s as f64)
        };
        let round = |x: f64| (x.round() as usize).max(1);
        let floor8 = |x: f64| ((x as usize) / 8 * 8).max(1);
        match self {
            Resize::Direct(_) => (s, s),
            Resize::LongerSidePad(_) => (round(sh), round(sw)),
            Resize::FieldTest(_) => (floor8(sh), floor8(sw)),
        }
    }
}

/// A pre-processed image and what is needed to map predictions back.
#[derive(Debug, Clone)]
pub struct Prepared {
    /// `(3, S, S)` normalised f32.
    pub tensor: Tensor,
    pub valid_h: usize,
    pub valid_w: usize,
    pub orig_h: usize,
    pub orig_w: usize,
    pub resize: Resize,
}

/// Resize (bilinear, `Triangle` filter), place top-left, normalise with `kind.normalization()`.
pub fn prepare_image(
    img: &RgbImage,
    resize: Resize,
    kind: BackboneKind,
    device: &Device,
) -> crate::Result<Prepared> {
    let (orig_h, orig_w) = (img.height() as usize, img.width() as usize);
    let s = resize.size();
    if orig_h == 0 || orig_w == 0 || s == 0 {
        return Err(Error::Input(format!(
            "cannot prepare a {orig_w}x{orig_h} image at size {s}"
        )));
    }
    let (valid_h, valid_w) = resize.valid_hw(orig_h, orig_w);
    let resized = if (valid_h, valid_w) == (orig_h, orig_w) {
        img.clone()
    } else {
        image::imageops::resize(img, valid_w as u32, valid_h as u32, FilterType::Triangle)
    };
    let (mean, std) = kind.normalization();
    let plane = s * s;
    let mut data = vec![0f32; 3 * plane];
    if let Resize::FieldTest(_) = resize {
        for c in 0..3 {
            data[c * plane..(c + 1) * plane].fill(-mean[c] / std[c]); // black
        }
    }
    for (x, y, p) in resized.enumerate_pixels() {
        for c in 0..3 {
            data[c * plane + y as usize * s + x as usize] = (p[c] as f32 - mean[c]) / std[c];
        }
    }
    Ok(Prepared {
        tensor: Tensor::from_vec(data, (3, s, s), device)?,
        valid_h,
        valid_w,
        orig_h,
        orig_w,
        resize,
    })
}

/// Nearest-neighbour resize (source index `floor(dst * in / out)`, as cv2 / torch `nearest`) into the
/// top-left corner of an `S × S` canvas filled with 255 -> `(1, S, S)` f32 with values 0/1/255.
pub fn prepare_mask(mask: &Mask, resize: Resize, device: &Device) -> crate::Result<Tensor> {
    let (h, w, s) = (mask.height, mask.width, resize.size());
    if h == 0 || w == 0 || s == 0 || mask.data.len() != h * w {
        return Err(Error::Input(format!(
            "bad mask: {w}x{h} with {} values, size {s}",
            mask.data.len()
        )));
    }
    let (vh, vw) = resize.valid_hw(h, w);
    let mut data = vec![IGNORE as f32; s * s];
    for y in 0..vh {
        let sy = y * h / vh;
        for x in 0..vw {
            data[y * s + x] = mask.data[sy * w + x * w / vw] as f32;
        }
    }
    Ok(Tensor::from_vec(data, (1, s, s), device)?)
}

/// Support mask for the model: foreground (1) -> 1, background and ignore (0, 255) -> 0, f32.
pub fn mask_tensor_for_model(mask: &Tensor) -> crate::Result<Tensor> {
    Ok(mask.to_dtype(DType::F32)?.eq(1f32)?.to_dtype(DType::F32)?)
}

/// `(2, S, S)` or `(1, 2, S, S)` logits of an `orig_h × orig_w` image brought to the canvas by
/// `resize` -> `(1, 2, orig_h, orig_w)` f32 (see [`Resize`]; the valid region is
/// `resize.valid_hw(orig_h, orig_w)`, as [`prepare_image`] places it). For callers that keep only
/// the original size (cached features), not a [`Prepared`].
pub fn logits_at_original_size(
    logits: &Tensor,
    resize: Resize,
    orig_h: usize,
    orig_w: usize,
) -> crate::Result<Tensor> {
    let l = match logits.rank() {
        3 => logits.unsqueeze(0)?,
        _ => logits.clone(),
    };
    let s = resize.size();
    if l.dims() != [1, 2, s, s] {
        return Err(Error::Input(format!(
            "expected logits (2, {s}, {s}) or (1, 2, {s}, {s}), got {:?}",
            logits.dims()
        )));
    }
    let l = l.to_dtype(DType::F32)?;
    let (oh, ow) = (orig_h, orig_w);
    let (valid_h, valid_w) = resize.valid_hw(oh, ow);
    let out = if let Resize::FieldTest(_) = resize {
        let side = oh.max(ow);
        crate::ops::resize_bilinear(&l, side, side)?
            .narrow(2, 0, oh)?
            .narrow(3, 0, ow)?
    } else {
        let valid = l.narrow(2, 0, valid_h)?.narrow(3, 0, valid_w)?;
        crate::ops::resize_bilinear(&valid.contiguous()?, oh, ow)?
    };
    Ok(out.contiguous()?)
}

/// Per original pixel, row-major: 1 where the foreground logit is larger, else 0 (ties -> 0, like
/// `argmax`).
pub fn logits_to_original(logits: &Tensor, prepared: &Prepared) -> crate::Result<Vec<u8>> {
    let p = prepared;
    logits_to_original_size(logits, p.resize, p.orig_h, p.orig_w)
}

/// [`logits_to_original`] for an `orig_h × orig_w` image brought to the canvas by `resize`.
pub fn logits_to_original_size(
    logits: &Tensor,
    resize: Resize,
    orig_h: usize,
    orig_w: usize,
) -> crate::Result<Vec<u8>> {
    let l = logits_at_original_size(logits, resize, orig_h, orig_w)?;
    let fg_wins = l.narrow(1, 1, 1)?.gt(&l.narrow(1, 0, 1)?)?;
    Ok(fg_wins.flatten_all()?.to_vec1::<u8>()?)
}

/// Per original pixel, row-major: softmax foreground probability.
pub fn probabilities_to_original(logits: &Tensor, prepared: &Prepared) -> crate::Result<Vec<f32>> {
    let p = prepared;
    let l = logits_at_original_size(logits, p.resize, p.orig_h, p.orig_w)?;
    let prob = candle_nn::ops::softmax(&l, 1)?.narrow(1, 1, 1)?;
    Ok(prob.flatten_all()?.to_vec1::<f32>()?)
}
