//! Whether an encoded JPEG or PNG is complete, checked on its bytes before decoding.
//!
//! Decoders are lenient with truncated files: a JPEG cut in half decodes without an error, its
//! missing rows grey. A cut file is a broken file (a copy interrupted, a frame half-written), so it
//! is refused, naming what is missing:
//!
//! * JPEG: the marker segments are walked from SOI by their lengths to the first scan (SOS); after
//!   it, the EOI marker `FF D9` must follow (inside entropy-coded data every `FF` is stuffed, so
//!   `FF D9` is only ever the end). A thumbnail's markers inside an APP segment are skipped with it.
//! * PNG: the chunks are walked by their lengths from the signature; `IEND` must be reached
//!   within the file.
//!
//! Other formats are not checked.

use image::ImageFormat;

/// `Err(reason)` when `bytes` of `format` end before the image does.
pub fn check_complete(bytes: &[u8], format: ImageFormat) -> Result<(), String> {
    match format {
        ImageFormat::Jpeg => check_jpeg(bytes),
        ImageFormat::Png => check_png(bytes),
        _ => Ok(()),
    }
}

fn check_jpeg(b: &[u8]) -> Result<(), String> {
    if !b.starts_with(&[0xFF, 0xD8]) {
        return Err("not a JPEG (no SOI marker)".into());
    }
    let mut at = 2;
    loop {
        // Markers may be preceded by fill bytes FF.
        while b.get(at) == Some(&0xFF) && b.get(at + 1) == Some(&0xFF) {
            at += 1;
        }
        let (Some(&0xFF), Some(&marker)) = (b.get(at), b.get(at + 1)) else {
            return Err(format!(
                "truncated JPEG: the file ends at byte {} before any image data",
                b.len()
            ));
        };
        match marker {
            0xD9 => return Err("JPEG without image data (EOI before any scan)".into()),
            // Standalone markers (TEM, RSTn) carry no length.
            0x01 | 0xD0..=0xD7 => at += 2,
            _ => {
                let Some(len) = b.get(at + 2..at + 4) else {
                    return Err(format!(
                        "truncated JPEG: the file ends at byte {} inside a marker",
                        b.len()
                    ));
                };
                let len = usize::from(u16::from_be_bytes([len[0], len[1]]));
                if marker == 0xDA {
                    return match b[at..].windows(2).any(|w| w == [0xFF, 0xD9]) {
                        true => Ok(()),
                        false => Err(format!(
                            "truncated JPEG: no end-of-image marker after the scan ({} bytes)",
                            b.len()
                        )),
                    };
                }
                at += 2 + len;
            }
        }
    }
}

const PNG_SIGNATURE: [u8; 8] = [0x89, b'P', b'N', b'G', 0x0D, 0x0A, 0x1A, 0x0A];

fn check_png(b: &[u8]) -> Result<(), String> {
    if !b.starts_with(&PNG_SIGNATURE) {
        return Err("not a PNG (bad signature)".into());
    }
    let mut at = PNG_SIGNATURE.len();
    while let Some(head) = b.get(at..at + 8) {
        let len = u32::from_be_bytes([head[0], head[1], head[2], head[3]]) as usize;
        let end = at + 12 + len; // length, type, data, CRC
        if end > b.len() {
            break;
        }
        if &head[4..8] == b"IEND" {
            return Ok(());
        }
        at = end;
    }
    Err(format!(
        "truncated PNG: the file ends at byte {} before the IEND chunk",
        b.len()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{ImageEncoder, RgbImage};

    fn gradient() -> RgbImage {
        RgbImage::from_fn(64, 48, |x, y| {
            image::Rgb([(x * 4) as u8, (y * 5) as u8, 90])
        })
    }

    fn jpeg() -> Vec<u8> {
        let mut out = Vec::new();
        let img = gradient();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 90)
            .write_image(img.as_raw(), 64, 48, image::ExtendedColorType::Rgb8)
            .unwrap();
        out
    }

    fn png() -> Vec<u8> {
        let mut out = Vec::new();
        let img = gradient();
        image::codecs::png::PngEncoder::new(&mut out)
            .write_image(img.as_raw(), 64, 48, image::ExtendedColorType::Rgb8)
            .unwrap();
        out
    }

    #[test]
    fn whole_files_pass_and_every_cut_is_refused() {
        for (bytes, format) in [(jpeg(), ImageFormat::Jpeg), (png(), ImageFormat::Png)] {
            check_complete(&bytes, format).unwrap();
            for cut in [bytes.len() - 1, bytes.len() - 2, bytes.len() / 2, 20, 3] {
                let e = check_complete(&bytes[..cut], format).unwrap_err();
                assert!(
                    cut < 8 || e.contains("truncated"),
                    "{format:?} at {cut}: {e}"
                );
            }
        }
    }

    #[test]
    fn the_decoder_alone_accepts_a_half_jpeg() {
        // Why the check exists: image decodes the first half of the file without an error.
        let bytes = jpeg();
        let half = &bytes[..bytes.len() / 2];
        assert!(image::load_from_memory_with_format(half, ImageFormat::Jpeg).is_ok());
        assert!(check_complete(half, ImageFormat::Jpeg).is_err());
    }

    #[test]
    fn trailing_bytes_after_eoi_and_other_formats_pass() {
        let mut bytes = jpeg();
        bytes.extend_from_slice(b"camera trailer");
        check_complete(&bytes, ImageFormat::Jpeg).unwrap();
        check_complete(b"BM....", ImageFormat::Bmp).unwrap();
        assert!(check_complete(b"not a jpeg", ImageFormat::Jpeg).is_err());
    }
}
