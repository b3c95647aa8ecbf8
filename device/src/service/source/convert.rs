//! Camera pixel formats to RGB: packed YUYV 4:2:2 (BT.601, limited range) and MJPEG frames
//! (JPEG images, often without Huffman tables: the standard ones are inserted then).

use image::codecs::jpeg::JpegDecoder;
use image::{DynamicImage, ImageDecoder, ImageFormat, RgbImage};

/// Convert one Y'CbCr sample (BT.601, limited "video" range 16–235 / 16–240) to RGB with the
/// usual 8-bit fixed-point coefficients.
pub fn ycbcr_to_rgb(y: u8, u: u8, v: u8) -> [u8; 3] {
    let c = i32::from(y) - 16;
    let d = i32::from(u) - 128;
    let e = i32::from(v) - 128;
    let clip = |x: i32| ((x + 128) >> 8).clamp(0, 255) as u8;
    [
        clip(298 * c + 409 * e),
        clip(298 * c - 100 * d - 208 * e),
        clip(298 * c + 516 * d),
    ]
}

/// Convert a packed YUYV frame (`Y0 U Y1 V` per two pixels) with `stride` bytes per row
/// (0 = `2 * width`).
pub fn yuyv_to_rgb(data: &[u8], width: u32, height: u32, stride: u32) -> Result<RgbImage, String> {
    if width == 0 || height == 0 || !width.is_multiple_of(2) {
        return Err(format!(
            "YUYV frame of {width}x{height}: width must be even and non-zero"
        ));
    }
    let (w, h) = (width as usize, height as usize);
    let stride = if stride == 0 { 2 * w } else { stride as usize };
    if stride < 2 * w {
        return Err(format!("YUYV stride {stride} is below 2 x width {w}"));
    }
    let need = stride * (h - 1) + 2 * w;
    if data.len() < need {
        return Err(format!(
            "YUYV frame of {width}x{height} needs {need} bytes, got {}",
            data.len()
        ));
    }
    let mut out = Vec::with_capacity(w * h * 3);
    for row in 0..h {
        let line = &data[row * stride..row * stride + 2 * w];
        for quad in line.chunks_exact(4) {
            let (y0, u, y1, v) = (quad[0], quad[1], quad[2], quad[3]);
            out.extend_from_slice(&ycbcr_to_rgb(y0, u, v));
            out.extend_from_slice(&ycbcr_to_rgb(y1, u, v));
        }
    }
    RgbImage::from_raw(width, height, out).ok_or_else(|| "YUYV buffer size mismatch".to_string())
}

/// The standard Huffman tables of ITU-T T.81 Annex K.3 as (class/id byte, code counts per length
/// 1–16, symbols): DC luminance, DC chrominance, AC luminance, AC chrominance.
#[rustfmt::skip]
const STANDARD_TABLES: [(u8, [u8; 16], &[u8]); 4] = [
    (0x00, [0, 1, 5, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0], &[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]),
    (0x01, [0, 3, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0], &[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]),
    (0x10, [0, 2, 1, 3, 3, 2, 4, 3, 5, 5, 4, 4, 0, 0, 1, 0x7d], &[
        0x01, 0x02, 0x03, 0x00, 0x04, 0x11, 0x05, 0x12, 0x21, 0x31, 0x41, 0x06, 0x13, 0x51, 0x61, 0x07,
        0x22, 0x71, 0x14, 0x32, 0x81, 0x91, 0xa1, 0x08, 0x23, 0x42, 0xb1, 0xc1, 0x15, 0x52, 0xd1, 0xf0,
        0x24, 0x33, 0x62, 0x72, 0x82, 0x09, 0x0a, 0x16, 0x17, 0x18, 0x19, 0x1a, 0x25, 0x26, 0x27, 0x28,
        0x29, 0x2a, 0x34, 0x35, 0x36, 0x37, 0x38, 0x39, 0x3a, 0x43, 0x44, 0x45, 0x46, 0x47, 0x48, 0x49,
        0x4a, 0x53, 0x54, 0x55, 0x56, 0x57, 0x58, 0x59, 0x5a, 0x63, 0x64, 0x65, 0x66, 0x67, 0x68, 0x69,
        0x6a, 0x73, 0x74, 0x75, 0x76, 0x77, 0x78, 0x79, 0x7a, 0x83, 0x84, 0x85, 0x86, 0x87, 0x88, 0x89,
        0x8a, 0x92, 0x93, 0x94, 0x95, 0x96, 0x97, 0x98, 0x99, 0x9a, 0xa2, 0xa3, 0xa4, 0xa5, 0xa6, 0xa7,
        0xa8, 0xa9, 0xaa, 0xb2, 0xb3, 0xb4, 0xb5, 0xb6, 0xb7, 0xb8, 0xb9, 0xba, 0xc2, 0xc3, 0xc4, 0xc5,
        0xc6, 0xc7, 0xc8, 0xc9, 0xca, 0xd2, 0xd3, 0xd4, 0xd5, 0xd6, 0xd7, 0xd8, 0xd9, 0xda, 0xe1, 0xe2,
        0xe3, 0xe4, 0xe5, 0xe6, 0xe7, 0xe8, 0xe9, 0xea, 0xf1, 0xf2, 0xf3, 0xf4, 0xf5, 0xf6, 0xf7, 0xf8,
        0xf9, 0xfa,
    ]),
    (0x11, [0, 2, 1, 2, 4, 4, 3, 4, 7, 5, 4, 4, 0, 1, 2, 0x77], &[
        0x00, 0x01, 0x02, 0x03, 0x11, 0x04, 0x05, 0x21, 0x31, 0x06, 0x12, 0x41, 0x51, 0x07, 0x61, 0x71,
        0x13, 0x22, 0x32, 0x81, 0x08, 0x14, 0x42, 0x91, 0xa1, 0xb1, 0xc1, 0x09, 0x23, 0x33, 0x52, 0xf0,
        0x15, 0x62, 0x72, 0xd1, 0x0a, 0x16, 0x24, 0x34, 0xe1, 0x25, 0xf1, 0x17, 0x18, 0x19, 0x1a, 0x26,
        0x27, 0x28, 0x29, 0x2a, 0x35, 0x36, 0x37, 0x38, 0x39, 0x3a, 0x43, 0x44, 0x45, 0x46, 0x47, 0x48,
        0x49, 0x4a, 0x53, 0x54, 0x55, 0x56, 0x57, 0x58, 0x59, 0x5a, 0x63, 0x64, 0x65, 0x66, 0x67, 0x68,
        0x69, 0x6a, 0x73, 0x74, 0x75, 0x76, 0x77, 0x78, 0x79, 0x7a, 0x82, 0x83, 0x84, 0x85, 0x86, 0x87,
        0x88, 0x89, 0x8a, 0x92, 0x93, 0x94, 0x95, 0x96, 0x97, 0x98, 0x99, 0x9a, 0xa2, 0xa3, 0xa4, 0xa5,
        0xa6, 0xa7, 0xa8, 0xa9, 0xaa, 0xb2, 0xb3, 0xb4, 0xb5, 0xb6, 0xb7, 0xb8, 0xb9, 0xba, 0xc2, 0xc3,
        0xc4, 0xc5, 0xc6, 0xc7, 0xc8, 0xc9, 0xca, 0xd2, 0xd3, 0xd4, 0xd5, 0xd6, 0xd7, 0xd8, 0xd9, 0xda,
        0xe2, 0xe3, 0xe4, 0xe5, 0xe6, 0xe7, 0xe8, 0xe9, 0xea, 0xf2, 0xf3, 0xf4, 0xf5, 0xf6, 0xf7, 0xf8,
        0xf9, 0xfa,
    ]),
];

/// A DHT segment holding [`STANDARD_TABLES`].
fn standard_dht() -> Vec<u8> {
    let body: usize = STANDARD_TABLES.iter().map(|t| 17 + t.2.len()).sum();
    let mut out = vec![0xFF, 0xC4];
    out.extend_from_slice(&((body + 2) as u16).to_be_bytes());
    for (id, counts, symbols) in STANDARD_TABLES {
        out.push(id);
        out.extend_from_slice(&counts);
        out.extend_from_slice(symbols);
    }
    out
}

/// UVC cameras commonly send MJPEG frames without Huffman tables, relying on the standard ones
/// (the "MJPEG" convention); a JPEG decoder needs them. Returns the frame with a standard DHT
/// segment inserted before the scan when no DHT precedes it, else `None` (use it as it is).
pub fn with_standard_huffman_tables(data: &[u8]) -> Option<Vec<u8>> {
    let mut i = 2;
    while i + 4 <= data.len() {
        if data[i] != 0xFF {
            return None; // malformed: let the decoder report it
        }
        match data[i + 1] {
            0xFF => i += 1,
            0x01 | 0xD0..=0xD7 => i += 2,
            0xC4 => return None,
            0xDA => {
                let mut out = Vec::with_capacity(data.len() + 432);
                out.extend_from_slice(&data[..i]);
                out.extend_from_slice(&standard_dht());
                out.extend_from_slice(&data[i..]);
                return Some(out);
            }
            _ => i += 2 + usize::from(u16::from_be_bytes([data[i + 2], data[i + 3]])),
        }
    }
    None
}

/// Decode one MJPEG frame (a complete JPEG image, with or without Huffman tables, of at most
/// `max_pixels` pixels by its header) to RGB.
pub fn decode_mjpeg(data: &[u8], max_pixels: u64) -> Result<RgbImage, String> {
    if data.len() < 4 || data[0] != 0xFF || data[1] != 0xD8 {
        return Err(format!(
            "MJPEG frame of {} bytes does not start with a JPEG SOI marker",
            data.len()
        ));
    }
    mce_core::image_file::check_complete(data, ImageFormat::Jpeg)
        .map_err(|e| format!("MJPEG frame of {} bytes: {e}", data.len()))?;
    let fixed = with_standard_huffman_tables(data);
    let err = |e: image::ImageError| format!("MJPEG frame of {} bytes: {e}", data.len());
    let decoder =
        JpegDecoder::new(std::io::Cursor::new(fixed.as_deref().unwrap_or(data))).map_err(err)?;
    let (w, h) = decoder.dimensions();
    if u64::from(w) * u64::from(h) > max_pixels {
        return Err(format!(
            "MJPEG frame of {w}x{h} pixels exceeds the limit of {max_pixels} pixels"
        ));
    }
    DynamicImage::from_decoder(decoder)
        .map(|img| img.to_rgb8())
        .map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::codecs::jpeg::JpegEncoder;
    use image::Rgb;
    const MAX: u64 = crate::service::source::MAX_FRAME_PIXELS;

    #[test]
    fn ycbcr_matches_hand_computed_values() {
        // Black and white at the limits of the video range.
        assert_eq!(ycbcr_to_rgb(16, 128, 128), [0, 0, 0]);
        assert_eq!(ycbcr_to_rgb(235, 128, 128), [255, 255, 255]);
        // Mid grey: C = 110, 298 * 110 = 32780, (32780 + 128) >> 8 = 128.
        assert_eq!(ycbcr_to_rgb(126, 128, 128), [128, 128, 128]);
        // BT.601 red (81, 90, 240): C = 65, D = -38, E = 112.
        // R = (19370 + 45808 + 128) >> 8 = 255; G = (19370 + 3800 - 23296 + 128) >> 8 = 0;
        // B = (19370 - 19608 + 128) >> 8 = -1 -> 0.
        assert_eq!(ycbcr_to_rgb(81, 90, 240), [255, 0, 0]);
        // Y = 100, U = 150, V = 110: C = 84, D = 22, E = -18.
        // R = (25032 - 7362 + 128) >> 8 = 69; G = (25032 - 2200 + 3744 + 128) >> 8 = 104;
        // B = (25032 + 11352 + 128) >> 8 = 142.
        assert_eq!(ycbcr_to_rgb(100, 150, 110), [69, 104, 142]);
    }

    #[test]
    fn yuyv_frame_converts_pairs_and_honours_stride() {
        // 2x2 frame, stride 6 (2 bytes padding per row).
        let data = [
            16, 128, 235, 128, 0xAA, 0xAA, // row 0: black, white
            81, 90, 81, 240, 0xAA, 0xAA, // row 1: red, red
        ];
        let img = yuyv_to_rgb(&data, 2, 2, 6).unwrap();
        assert_eq!(img.get_pixel(0, 0), &Rgb([0, 0, 0]));
        assert_eq!(img.get_pixel(1, 0), &Rgb([255, 255, 255]));
        assert_eq!(img.get_pixel(0, 1), &Rgb([255, 0, 0]));
        assert_eq!(img.get_pixel(1, 1), &Rgb([255, 0, 0]));
        assert!(yuyv_to_rgb(&data[..8], 2, 2, 6)
            .unwrap_err()
            .contains("needs 10 bytes"));
        assert!(yuyv_to_rgb(&data, 3, 1, 0).unwrap_err().contains("even"));
    }

    /// The JPEG without its DHT segments (markers before the scan data only).
    fn strip_dht(jpeg: &[u8]) -> Vec<u8> {
        let mut out = jpeg[..2].to_vec();
        let mut i = 2;
        while i + 4 <= jpeg.len() {
            let marker = jpeg[i + 1];
            let len = usize::from(u16::from_be_bytes([jpeg[i + 2], jpeg[i + 3]]));
            if marker == 0xDA {
                out.extend_from_slice(&jpeg[i..]);
                break;
            }
            if marker != 0xC4 {
                out.extend_from_slice(&jpeg[i..i + 2 + len]);
            }
            i += 2 + len;
        }
        out
    }

    #[test]
    fn mjpeg_decodes_a_jpeg_encoded_here() {
        let src = RgbImage::from_fn(32, 16, |x, _| {
            if x < 16 {
                Rgb([200, 30, 30])
            } else {
                Rgb([30, 30, 200])
            }
        });
        let mut jpeg = Vec::new();
        JpegEncoder::new_with_quality(&mut jpeg, 95)
            .encode_image(&src)
            .unwrap();
        let img = decode_mjpeg(&jpeg, MAX).unwrap();
        assert_eq!(img.dimensions(), (32, 16));
        let e = decode_mjpeg(&jpeg, 32 * 16 - 1).unwrap_err();
        assert!(e.contains("32x16 pixels exceeds the limit of 511"), "{e}");
        for (x, want) in [(4, [200, 30, 30]), (28, [30, 30, 200])] {
            let got = img.get_pixel(x, 8).0;
            for c in 0..3 {
                assert!(
                    (i32::from(got[c]) - want[c]).abs() <= 12,
                    "{got:?} vs {want:?}"
                );
            }
        }
        // Many UVC cameras send MJPEG without Huffman tables (DHT), relying on the standard
        // ones; the encoder here writes exactly those, so strip them and decode again.
        let stripped = strip_dht(&jpeg);
        assert!(stripped.len() < jpeg.len());
        assert!(
            image::load_from_memory(&stripped).is_err(),
            "needs its tables"
        );
        let img2 = decode_mjpeg(&stripped, MAX).unwrap();
        assert_eq!(img2.as_raw(), img.as_raw());
        assert!(
            with_standard_huffman_tables(&jpeg).is_none(),
            "has tables already"
        );
        // The image crate's encoder writes the Annex K tables: ours must be identical.
        let mut written = Vec::new();
        let mut i = 2;
        while jpeg[i + 1] != 0xDA {
            let len = usize::from(u16::from_be_bytes([jpeg[i + 2], jpeg[i + 3]]));
            if jpeg[i + 1] == 0xC4 {
                let mut t = &jpeg[i + 4..i + 2 + len];
                while !t.is_empty() {
                    let n: usize = t[1..17].iter().map(|&c| usize::from(c)).sum();
                    written.push((t[0], t[1..17].to_vec(), t[17..17 + n].to_vec()));
                    t = &t[17 + n..];
                }
            }
            i += 2 + len;
        }
        written.sort();
        let ours: Vec<_> = STANDARD_TABLES
            .iter()
            .map(|(id, c, s)| (*id, c.to_vec(), s.to_vec()))
            .collect();
        assert_eq!(written, ours);
        assert!(decode_mjpeg(b"not a jpeg", MAX)
            .unwrap_err()
            .contains("SOI"));
        assert!(decode_mjpeg(&jpeg[..jpeg.len() / 3], MAX).is_err());
        let half = decode_mjpeg(&jpeg[..jpeg.len() / 2], MAX).unwrap_err();
        assert!(half.contains("truncated"), "{half}");
    }
}
