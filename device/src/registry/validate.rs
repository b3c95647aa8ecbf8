//! Validation of everything a user hands the registry, before anything is written: class names, and
//! each image + mask pair (decodable, within the pixel limit, same size or `--resize-mask`, enough
//! foreground). A valid pair becomes a [`PreparedInput`]: the decoded image and its binary mask, both
//! already encoded as the PNG bytes that will be stored.

use super::error::RegistryError;
use super::store::sha256_hex;
use image::imageops::FilterType;
use image::{GrayImage, ImageFormat, RgbImage};
use mce_core::preprocess::{load_mask, load_rgb_with_limit, Mask, MaskEncoding};
use std::io::Cursor;
use std::path::{Path, PathBuf};

/// Longest class name.
pub const MAX_CLASS_NAME_LEN: usize = 64;
/// A mask needs at least this many foreground pixels ...
pub const MIN_FOREGROUND_PIXELS: u64 = 64;
/// ... and at least this fraction of its pixels as foreground (0.1 %).
pub const MIN_FOREGROUND_FRACTION: f64 = 0.001;
/// Default `--max-pixels`: images (and masks) with more pixels are refused before decoding.
pub const DEFAULT_MAX_PIXELS: u64 = 40_000_000;

/// One exemplar to register: an image and its mask.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExemplarInput {
    pub image: PathBuf,
    pub mask: PathBuf,
}

/// How inputs are read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegisterOptions {
    /// Masks are class-index maps and this class is the foreground (else binary 0/255 or 0/1 masks).
    pub mask_class: Option<u8>,
    /// Resize a mask of another size than its image (nearest neighbour) instead of refusing it.
    pub resize_mask: bool,
    /// Refuse images and masks with more pixels than this (decompression bombs).
    pub max_pixels: u64,
}

impl Default for RegisterOptions {
    fn default() -> Self {
        Self {
            mask_class: None,
            resize_mask: false,
            max_pixels: DEFAULT_MAX_PIXELS,
        }
    }
}

/// A validated exemplar, ready to be stored.
#[derive(Debug, Clone)]
pub struct PreparedInput {
    pub source: ExemplarInput,
    pub image: RgbImage,
    /// 0 = background, 1 = foreground, at the image's size.
    pub mask: Mask,
    pub foreground_pixels: u64,
    pub mask_resized_from: Option<(u32, u32)>,
    pub image_png: Vec<u8>,
    pub mask_png: Vec<u8>,
    pub image_sha256: String,
    pub mask_sha256: String,
}

/// Check the name of a class to register: 1 to 64 characters of `a-z`, `0-9`, `_`, `-` (no paths,
/// no dots, no upper case, no other scripts), beginning with a letter or a digit (so that no name
/// reads as a command-line option, like `-rf` or `--help`).
pub fn check_class_name(name: &str) -> Result<(), RegistryError> {
    check_existing_class_name(name)?;
    match name.chars().next() {
        Some('a'..='z' | '0'..='9') => Ok(()),
        _ => Err(RegistryError::InvalidClassName {
            name: name.to_string(),
            reason: "it must begin with a letter or a digit".to_string(),
        }),
    }
}

/// Check the name of a class that may already be registered: [`check_class_name`]'s characters,
/// any first character (older versions accepted `-` and `_` first; such classes can still be
/// shown and removed).
pub fn check_existing_class_name(name: &str) -> Result<(), RegistryError> {
    let reason = if name.is_empty() {
        "it is empty".to_string()
    } else if name.chars().count() > MAX_CLASS_NAME_LEN {
        format!(
            "it has {} characters, at most {MAX_CLASS_NAME_LEN} are allowed",
            name.chars().count()
        )
    } else if let Some(c) = name
        .chars()
        .find(|c| !matches!(c, 'a'..='z' | '0'..='9' | '_' | '-'))
    {
        format!("character {c:?} is not allowed")
    } else {
        return Ok(());
    };
    Err(RegistryError::InvalidClassName {
        name: name.to_string(),
        reason,
    })
}

/// A backbone identity is used as a folder name: accept lower-case hex only.
pub(crate) fn check_identity(identity: &str) -> Result<(), RegistryError> {
    let ok = (1..=64).contains(&identity.len())
        && identity
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    if ok {
        return Ok(());
    }
    Err(RegistryError::input(
        identity,
        "backbone identity is not a short lower-case hex string",
    ))
}

/// Turn an error of `mce-core` (which names the file) into a registry error.
pub(crate) fn from_core(e: mce_core::Error) -> RegistryError {
    match e {
        mce_core::Error::Io { path, error } => RegistryError::io(path, error),
        mce_core::Error::Image { path, reason } => {
            RegistryError::input(path, format!("cannot decode image: {reason}"))
        }
        mce_core::Error::Mask { path, reason } => RegistryError::input(path, reason),
        other => RegistryError::Model(other),
    }
}

/// Validate one image + mask pair and encode what will be stored.
pub fn prepare_input(
    input: &ExemplarInput,
    opts: &RegisterOptions,
) -> Result<PreparedInput, RegistryError> {
    let image = load_rgb_with_limit(&input.image, opts.max_pixels).map_err(from_core)?;
    let (w, h) = image.dimensions();
    check_mask_dimensions(&input.mask, opts.max_pixels)?;
    let encoding = opts
        .mask_class
        .map_or(MaskEncoding::Binary, MaskEncoding::ClassIndex);
    let mut mask = load_mask(&input.mask, encoding).map_err(|e| match from_core(e) {
        RegistryError::Input { path, reason } if opts.mask_class.is_none() => {
            RegistryError::Input {
                path,
                reason: reason.replace("needs MaskEncoding::ClassIndex", "needs --mask-class N"),
            }
        }
        other => other,
    })?;
    let mut mask_resized_from = None;
    if (mask.width, mask.height) != (w as usize, h as usize) {
        if !opts.resize_mask {
            return Err(RegistryError::input(
                &input.mask,
                format!(
                    "mask is {}x{} but its image {} is {w}x{h} (pass --resize-mask to resize the mask, \
                     nearest neighbour)",
                    mask.width,
                    mask.height,
                    input.image.display()
                ),
            ));
        }
        mask_resized_from = Some((mask.width as u32, mask.height as u32));
        mask = resize_nearest(&mask, w, h);
    }
    let foreground = mask.foreground_count() as u64;
    let total = u64::from(w) * u64::from(h);
    let needed = MIN_FOREGROUND_PIXELS.max((MIN_FOREGROUND_FRACTION * total as f64).ceil() as u64);
    if foreground < needed {
        return Err(RegistryError::input(
            &input.mask,
            format!(
                "{} foreground pixel(s) ({:.3}% of {w}x{h}); an exemplar needs at least {needed} \
                 ({MIN_FOREGROUND_PIXELS} pixels and {}% of the image){}",
                foreground,
                100.0 * foreground as f64 / total as f64,
                100.0 * MIN_FOREGROUND_FRACTION,
                if opts.mask_class.is_some() {
                    ""
                } else {
                    " — a class-index label map needs --mask-class N"
                }
            ),
        ));
    }
    let binary: Vec<u8> = mask
        .data
        .iter()
        .map(|&v| if v == 1 { 255 } else { 0 })
        .collect();
    let mask_img = GrayImage::from_raw(w, h, binary).expect("mask has the image's size");
    let image_png = png_bytes(&image, &input.image)?;
    let mask_png = png_bytes(&mask_img, &input.mask)?;
    let mask = Mask {
        width: w as usize,
        height: h as usize,
        data: mask.data.iter().map(|&v| u8::from(v == 1)).collect(),
    };
    Ok(PreparedInput {
        source: input.clone(),
        image_sha256: sha256_hex(&image_png),
        mask_sha256: sha256_hex(&mask_png),
        image,
        mask,
        foreground_pixels: foreground,
        mask_resized_from,
        image_png,
        mask_png,
    })
}

/// Refuse a mask whose header announces more than `max_pixels` pixels, before decoding it.
fn check_mask_dimensions(path: &Path, max_pixels: u64) -> Result<(), RegistryError> {
    let reader = image::ImageReader::open(path)
        .and_then(|r| r.with_guessed_format())
        .map_err(|e| RegistryError::io(path, e))?;
    let (w, h) = reader
        .into_dimensions()
        .map_err(|e| RegistryError::input(path, format!("cannot decode mask: {e}")))?;
    if u64::from(w) * u64::from(h) > max_pixels {
        return Err(RegistryError::input(
            path,
            format!("mask is {w}x{h} pixels, more than the limit of {max_pixels} (--max-pixels)"),
        ));
    }
    Ok(())
}

/// Nearest-neighbour resize of a 0/1/255 mask.
fn resize_nearest(mask: &Mask, w: u32, h: u32) -> Mask {
    let src = GrayImage::from_raw(mask.width as u32, mask.height as u32, mask.data.clone())
        .expect("mask data matches its size");
    let dst = image::imageops::resize(&src, w, h, FilterType::Nearest);
    Mask {
        width: w as usize,
        height: h as usize,
        data: dst.into_raw(),
    }
}

/// PNG encoding of an image in memory (`source` only names the input in an error).
fn png_bytes<P, C>(img: &image::ImageBuffer<P, C>, source: &Path) -> Result<Vec<u8>, RegistryError>
where
    P: image::PixelWithColorType,
    [P::Subpixel]: image::EncodableLayout,
    C: std::ops::Deref<Target = [P::Subpixel]>,
{
    let mut out = Cursor::new(Vec::new());
    img.write_to(&mut out, ImageFormat::Png)
        .map_err(|e| RegistryError::input(source, format!("cannot encode as PNG: {e}")))?;
    Ok(out.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_class_names_begin_with_a_letter_or_digit() {
        for ok in ["bicycle", "9lives", "a-b_c", "x"] {
            check_class_name(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        for bad in ["-rf", "--help", "_x", "-"] {
            let e = check_class_name(bad).unwrap_err().to_string();
            assert!(e.contains("begin with a letter or a digit"), "{bad}: {e}");
        }
        for bad in ["", "../x", "Bike", "a.b", "a b"] {
            assert!(check_class_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn classes_registered_before_the_first_character_rule_stay_reachable() {
        for old in ["-rf", "--help", "_x"] {
            check_existing_class_name(old).unwrap_or_else(|e| panic!("{old}: {e}"));
        }
        for bad in ["", "../x", "a/b", "Bike"] {
            assert!(check_existing_class_name(bad).is_err(), "{bad:?}");
        }
    }
}
