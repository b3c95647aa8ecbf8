//! Fixture writers: small RGB images, class-index label maps and binary masks.

use std::path::{Path, PathBuf};

use image::{GrayImage, Luma, Rgb, RgbImage};

/// Fixture images are 96 wide × 64 high (6144 pixels).
pub const W: u32 = 96;
pub const H: u32 = 64;

/// A rectangle `[x0, y0, x1, y1)`.
pub type Rect = [u32; 4];

/// 48 × 48 = 2304 pixels: counts at the 2048 threshold.
pub const BIG: Rect = [0, 0, 48, 48];
/// 40 × 40 = 1600 pixels: present but does not count.
pub const SMALL: Rect = [0, 0, 40, 40];

pub fn area(r: Rect) -> u64 {
    u64::from(r[2] - r[0]) * u64::from(r[3] - r[1])
}

fn inside(r: Rect, x: u32, y: u32) -> bool {
    x >= r[0] && x < r[2] && y >= r[1] && y < r[3]
}

fn parent(path: &Path) -> &Path {
    let dir = path.parent().expect("fixture path has a parent");
    std::fs::create_dir_all(dir).expect("create fixture dir");
    dir
}

/// An RGB image of `w × h` (format from the extension: .jpg or .png).
pub fn rgb(path: &Path, w: u32, h: u32) -> PathBuf {
    parent(path);
    RgbImage::from_fn(w, h, |x, y| Rgb([(x * 2) as u8, (y * 3) as u8, 90]))
        .save(path)
        .expect("write fixture image");
    path.to_path_buf()
}

/// A grey label map: `fill` everywhere, then each `(value, rect)` painted in order.
pub fn label(path: &Path, w: u32, h: u32, fill: u8, regions: &[(u8, Rect)]) -> PathBuf {
    parent(path);
    GrayImage::from_fn(w, h, |x, y| {
        let v = regions
            .iter()
            .rev()
            .find(|(_, r)| inside(*r, x, y))
            .map_or(fill, |(v, _)| *v);
        Luma([v])
    })
    .save(path)
    .expect("write fixture label");
    path.to_path_buf()
}

/// A 0/255 binary mask with foreground `fg`.
pub fn binary(path: &Path, w: u32, h: u32, fg: Rect) -> PathBuf {
    label(path, w, h, 0, &[(255, fg)])
}

/// Random bytes under an image name.
pub fn corrupt(path: &Path) -> PathBuf {
    parent(path);
    let mut state = 7u32;
    let bytes: Vec<u8> = (0..600)
        .map(|_| {
            state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (state >> 24) as u8
        })
        .collect();
    std::fs::write(path, bytes).expect("write corrupt file");
    path.to_path_buf()
}

/// A fresh temp dir.
pub fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().expect("temp dir")
}
