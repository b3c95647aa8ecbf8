//! Random training augmentation of an (image, label) pair, as PFENet's training transform.
//!
//! [`augment`] applies, in PFENet's order:
//!
//! 1. **RandScale**: both sides × `s ~ U(scale)` (image bilinear/Triangle, label nearest);
//! 2. **RandRotate**: with probability `rotate_prob`, rotate about the centre by
//!    `θ ~ U(-rotate_deg, rotate_deg)` keeping the size (image bilinear, padding `pad_rgb`; label
//!    nearest, padding 255);
//! 3. **RandomGaussianBlur**: with probability `blur_prob`, a Gaussian blur of the image only,
//!    `σ ~ U(blur_sigma)` (σ = 1.1 is OpenCV's σ for a 5×5 kernel, PFENet's `GaussianBlur(5×5, 0)`);
//! 4. **RandomHorizontalFlip**: with probability `flip_prob`, mirror both;
//! 5. **Crop**: pad centred to at least `crop` on each side (image `pad_rgb`, label 255), then a
//!    random `crop × crop` window.
//!
//! The output image and label are exactly `crop × crop` and pixel-aligned. Labels are only ever
//! sampled by nearest neighbour, so their values stay within the input's values plus 255.
//!
//! Randomness comes only from `rng.next_u64()`, and every call draws exactly [`DRAWS_PER_CALL`]
//! numbers whatever the outcome, so a run is reproducible from the trainer's ChaCha8 state and the
//! stream position does not depend on the image.

use image::imageops::{self, FilterType};
use image::{GrayImage, Rgb, RgbImage};
use mce_core::preprocess::Mask;
use rand_chacha::rand_core::RngCore;
use serde::{Deserialize, Serialize};

/// Label value of padded / unknown pixels.
const IGNORE: u8 = 255;

/// Numbers drawn from the generator by each [`augment`] call.
pub const DRAWS_PER_CALL: usize = 8;

/// Parameters of [`augment`]; the defaults are PFENet's.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(default)]
pub struct AugmentConfig {
    /// Range of the scale factor applied to both sides (PFENet: 0.9–1.1).
    pub scale: (f32, f32),
    /// Maximum rotation in degrees; the angle is uniform in `[-rotate_deg, rotate_deg]`.
    pub rotate_deg: f32,
    /// Probability of rotating at all (PFENet's `RandRotate` uses 0.5).
    pub rotate_prob: f32,
    /// Probability of blurring the image.
    pub blur_prob: f32,
    /// Range of the blur's σ in pixels; (1.1, 1.1) is exactly a 5×5 OpenCV kernel with σ = 0.
    pub blur_sigma: (f32, f32),
    /// Probability of a horizontal flip.
    pub flip_prob: f32,
    /// Side `S` of the square output (the model canvas).
    pub crop: usize,
    /// Image padding colour (rotation corners and crop padding): the ImageNet mean.
    pub pad_rgb: [u8; 3],
}

impl Default for AugmentConfig {
    fn default() -> Self {
        Self::with_crop(473)
    }
}

impl AugmentConfig {
    /// PFENet's augmentation for an `crop × crop` canvas.
    pub fn with_crop(crop: usize) -> Self {
        Self {
            scale: (0.9, 1.1),
            rotate_deg: 10.0,
            rotate_prob: 0.5,
            blur_prob: 0.5,
            blur_sigma: (1.1, 1.1),
            flip_prob: 0.5,
            crop,
            pad_rgb: [124, 116, 104],
        }
    }

    /// No randomness except the crop position: scale 1, no rotation, blur or flip.
    pub fn identity(crop: usize) -> Self {
        Self {
            scale: (1.0, 1.0),
            rotate_deg: 0.0,
            rotate_prob: 0.0,
            blur_prob: 0.0,
            flip_prob: 0.0,
            ..Self::with_crop(crop)
        }
    }
}

/// A uniform number in `[0, 1)` from the top 53 bits of one `next_u64()`.
fn unit(rng: &mut impl RngCore) -> f64 {
    (rng.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

/// A uniform number in `[lo, hi)` (exactly `lo` when `lo == hi`) from one `next_u64()`.
pub fn uniform(rng: &mut impl RngCore, lo: f32, hi: f32) -> f32 {
    (lo as f64 + (hi as f64 - lo as f64) * unit(rng)) as f32
}

/// Integer uniform in `0..=n` from a unit draw `u ∈ [0, 1)`.
fn pick(u: f64, n: usize) -> usize {
    ((u * (n as f64 + 1.0)) as usize).min(n)
}

/// Augment an image and its label (same size) into a `cfg.crop × cfg.crop` training pair.
///
/// See the module documentation for the steps. Images of any size, including 1×1 and empty ones
/// (which give a fully padded pair), are accepted.
///
/// # Panics
///
/// If the label's size differs from the image's, or its data length from `width × height`.
pub fn augment(
    img: &RgbImage,
    label: &Mask,
    cfg: &AugmentConfig,
    rng: &mut impl RngCore,
) -> (RgbImage, Mask) {
    assert_eq!(
        (img.width() as usize, img.height() as usize),
        (label.width, label.height),
        "augment: image and label sizes differ"
    );
    assert_eq!(
        label.data.len(),
        label.width * label.height,
        "augment: bad mask data length"
    );
    // Draw everything first: a fixed number of draws per call.
    let s = uniform(rng, cfg.scale.0, cfg.scale.1);
    let rotate = unit(rng) < cfg.rotate_prob as f64;
    let angle = uniform(rng, -cfg.rotate_deg, cfg.rotate_deg);
    let blur = unit(rng) < cfg.blur_prob as f64;
    let sigma = uniform(rng, cfg.blur_sigma.0, cfg.blur_sigma.1);
    let flip = unit(rng) < cfg.flip_prob as f64;
    let (uy, ux) = (unit(rng), unit(rng));

    let (w, h) = (label.width, label.height);
    if w == 0 || h == 0 {
        return pad_crop(img, &[], 0, 0, cfg, uy, ux);
    }
    let mut lab = GrayImage::from_raw(w as u32, h as u32, label.data.clone()).expect("checked");

    // 1. RandScale.
    let side = |n: usize| {
        let v = (n as f64 * s as f64).round();
        if v.is_finite() {
            (v as usize).max(1)
        } else {
            n
        }
    };
    let (nw, nh) = (side(w), side(h));
    let mut image = if (nw, nh) == (w, h) {
        img.clone()
    } else {
        lab = imageops::resize(&lab, nw as u32, nh as u32, FilterType::Nearest);
        imageops::resize(img, nw as u32, nh as u32, FilterType::Triangle)
    };

    // 2. RandRotate.
    if rotate && angle != 0.0 && angle.is_finite() {
        (image, lab) = rotate_pair(&image, &lab, angle, cfg.pad_rgb);
    }

    // 3. RandomGaussianBlur (image only).
    if blur && sigma.is_normal() && sigma > 0.0 {
        image = imageops::blur(&image, sigma);
    }

    // 4. RandomHorizontalFlip.
    if flip {
        imageops::flip_horizontal_in_place(&mut image);
        imageops::flip_horizontal_in_place(&mut lab);
    }

    // 5. Pad + random crop.
    pad_crop(&image, lab.as_raw(), nw, nh, cfg, uy, ux)
}

/// Rotate image and label by `deg` degrees (counter-clockwise on screen, as OpenCV's
/// `getRotationMatrix2D`) about the exact centre, keeping the size.
///
/// Output pixel centres are mapped back into the source; the image is sampled bilinearly with
/// `pad` outside, the label by nearest neighbour with 255 outside.
fn rotate_pair(img: &RgbImage, lab: &GrayImage, deg: f32, pad: [u8; 3]) -> (RgbImage, GrayImage) {
    let (w, h) = (img.width() as usize, img.height() as usize);
    let (sin, cos) = (deg as f64).to_radians().sin_cos();
    let (cx, cy) = (w as f64 / 2.0, h as f64 / 2.0);
    let src = img.as_raw();
    let lsrc = lab.as_raw();
    let mut out = vec![0u8; 3 * w * h];
    let mut lout = vec![IGNORE; w * h];
    let fetch = |x: i64, y: i64| -> [f64; 3] {
        if x < 0 || y < 0 || x >= w as i64 || y >= h as i64 {
            return pad.map(f64::from);
        }
        let i = 3 * (y as usize * w + x as usize);
        [src[i] as f64, src[i + 1] as f64, src[i + 2] as f64]
    };
    for y in 0..h {
        let dy = y as f64 + 0.5 - cy;
        for x in 0..w {
            let dx = x as f64 + 0.5 - cx;
            // Inverse of the forward map dst = R(θ)·src (y down): source point of this centre.
            let sx = cx + cos * dx - sin * dy;
            let sy = cy + sin * dx + cos * dy;
            let o = y * w + x;
            // Label: the source pixel containing the point.
            let (ix, iy) = (sx.floor(), sy.floor());
            if ix >= 0.0 && iy >= 0.0 && ix < w as f64 && iy < h as f64 {
                lout[o] = lsrc[iy as usize * w + ix as usize];
            }
            // Image: bilinear between pixel centres.
            let (fx, fy) = (sx - 0.5, sy - 0.5);
            let (x0, y0) = (fx.floor(), fy.floor());
            let (ax, ay) = (fx - x0, fy - y0);
            let (x0, y0) = (x0 as i64, y0 as i64);
            let (p00, p10) = (fetch(x0, y0), fetch(x0 + 1, y0));
            let (p01, p11) = (fetch(x0, y0 + 1), fetch(x0 + 1, y0 + 1));
            for c in 0..3 {
                let top = p00[c] + (p10[c] - p00[c]) * ax;
                let bot = p01[c] + (p11[c] - p01[c]) * ax;
                out[3 * o + c] = (top + (bot - top) * ay).round().clamp(0.0, 255.0) as u8;
            }
        }
    }
    (
        RgbImage::from_raw(w as u32, h as u32, out).expect("size"),
        GrayImage::from_raw(w as u32, h as u32, lout).expect("size"),
    )
}

/// PFENet's `Crop(rand)`: pad `img`/`lab` (`w × h`) centred to at least `S` per side (image
/// `pad_rgb`, label 255), then cut the `S × S` window at offsets picked from `uy`, `ux`.
fn pad_crop(
    img: &RgbImage,
    lab: &[u8],
    w: usize,
    h: usize,
    cfg: &AugmentConfig,
    uy: f64,
    ux: f64,
) -> (RgbImage, Mask) {
    let size = cfg.crop;
    let (pw, ph) = (w.max(size), h.max(size));
    let (left, top) = ((pw - w) / 2, (ph - h) / 2);
    let (ox, oy) = (pick(ux, pw - size), pick(uy, ph - size));
    let mut image = RgbImage::from_pixel(size as u32, size as u32, Rgb(cfg.pad_rgb));
    let mut data = vec![IGNORE; size * size];
    // Rows/columns of the window that fall on the source: source index = window index + o - pad.
    let x_from = left.saturating_sub(ox);
    let x_to = (left + w).saturating_sub(ox).min(size);
    let y_from = top.saturating_sub(oy);
    let y_to = (top + h).saturating_sub(oy).min(size);
    if x_from < x_to {
        let (src, dst) = (img.as_raw(), &mut *image);
        for y in y_from..y_to {
            let sy = y + oy - top;
            let sx0 = x_from + ox - left;
            let n = x_to - x_from;
            data[y * size + x_from..y * size + x_to]
                .copy_from_slice(&lab[sy * w + sx0..sy * w + sx0 + n]);
            dst[3 * (y * size + x_from)..3 * (y * size + x_to)]
                .copy_from_slice(&src[3 * (sy * w + sx0)..3 * (sy * w + sx0 + n)]);
        }
    }
    let mask = Mask {
        width: size,
        height: size,
        data,
    };
    (image, mask)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_chacha::rand_core::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    /// An asymmetric pattern: colours vary with x and y, label 1 on a left block, 255 on a line.
    fn fixture(w: u32, h: u32) -> (RgbImage, Mask) {
        let img = RgbImage::from_fn(w, h, |x, y| {
            Rgb([
                (x * 7 % 256) as u8,
                (y * 13 % 256) as u8,
                ((x * y) % 256) as u8,
            ])
        });
        let data = (0..h)
            .flat_map(|y| (0..w).map(move |x| (x, y)))
            .map(|(x, y)| match (x, y) {
                (_, 2) => 255,
                (x, y) if x < w / 3 && y > h / 4 => 1,
                _ => 0,
            })
            .collect();
        (img, mk_mask(w, h, data))
    }

    fn mk_mask(w: u32, h: u32, data: Vec<u8>) -> Mask {
        let (width, height) = (w as usize, h as usize);
        Mask {
            width,
            height,
            data,
        }
    }

    #[test]
    fn output_sizes_and_label_values() {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let cfg = AugmentConfig {
            rotate_prob: 1.0,
            rotate_deg: 30.0,
            blur_prob: 1.0,
            scale: (0.5, 2.0),
            ..AugmentConfig::with_crop(48)
        };
        let sizes = [(1, 1), (1, 90), (90, 1), (3, 2), (60, 40), (40, 70)];
        for (w, h) in sizes {
            let (img, mask) = fixture(w, h);
            for _ in 0..5 {
                let (i, m) = augment(&img, &mask, &cfg, &mut rng);
                assert_eq!((i.width(), i.height()), (48, 48));
                assert_eq!((m.width, m.height, m.data.len()), (48, 48, 48 * 48));
                assert!(m.data.iter().all(|v| matches!(v, 0 | 1 | 255)));
            }
        }
        let (img, mask) = fixture(500, 375);
        let (i, m) = augment(&img, &mask, &AugmentConfig::default(), &mut rng);
        assert_eq!(
            (i.width(), i.height(), m.width, m.height),
            (473, 473, 473, 473)
        );
        let (i, m) = augment(&RgbImage::new(0, 0), &mk_mask(0, 0, vec![]), &cfg, &mut rng);
        assert_eq!((i.width(), m.width), (48, 48));
        assert!(m.data.iter().all(|&v| v == 255));
    }

    #[test]
    fn deterministic_from_seed_with_fixed_draws() {
        let (img, mask) = fixture(70, 50);
        let cfg = AugmentConfig::with_crop(40);
        let run = |seed| {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let out: Vec<_> = (0..4)
                .map(|_| augment(&img, &mask, &cfg, &mut rng))
                .collect();
            (out, rng.next_u64())
        };
        assert_eq!(run(3), run(3));
        assert_ne!(run(3).0, run(4).0);
        // Each call consumes exactly DRAWS_PER_CALL numbers.
        let mut a = ChaCha8Rng::seed_from_u64(9);
        let mut b = ChaCha8Rng::seed_from_u64(9);
        augment(&img, &mask, &AugmentConfig::identity(8), &mut a);
        (0..DRAWS_PER_CALL).for_each(|_| {
            b.next_u64();
        });
        assert_eq!(a.next_u64(), b.next_u64());
    }

    #[test]
    fn no_randomness_on_canvas_sized_input_is_identity() {
        let (img, mask) = fixture(32, 32);
        let cfg = AugmentConfig {
            scale: (1.0, 1.0),
            rotate_deg: 0.0,
            rotate_prob: 1.0,
            blur_prob: 0.0,
            flip_prob: 0.0,
            ..AugmentConfig::with_crop(32)
        };
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        for _ in 0..3 {
            let (i, m) = augment(&img, &mask, &cfg, &mut rng);
            assert_eq!(i, img);
            assert_eq!(m, mask);
        }
    }

    #[test]
    fn flip_mirrors_image_and_label_together() {
        let (img, mask) = fixture(24, 24);
        let cfg = AugmentConfig {
            flip_prob: 1.0,
            ..AugmentConfig::identity(24)
        };
        let (i, m) = augment(&img, &mask, &cfg, &mut ChaCha8Rng::seed_from_u64(2));
        assert_ne!(i, img);
        for y in 0..24 {
            for x in 0..24 {
                assert_eq!(i.get_pixel(x, y), img.get_pixel(23 - x, y));
                let (o, s) = ((y * 24 + x) as usize, (y * 24 + 23 - x) as usize);
                assert_eq!(m.data[o], mask.data[s]);
            }
        }
        assert_eq!(m.data[10 * 24 + 23], 1); // the left block is now on the right
        assert_eq!(m.data[10 * 24], 0);
    }

    #[test]
    fn rotation_keeps_centred_object_and_pads_corners() {
        let n = 101u32;
        let img = RgbImage::from_fn(n, n, |x, y| Rgb([(x * 2) as u8, (y * 2) as u8, 50]));
        // A centred ellipse (not rotation-invariant, but its area is).
        let inside = |x: u32, y: u32| {
            let (dx, dy) = (x as f64 - 50.0, y as f64 - 50.0);
            (dx / 30.0).powi(2) + (dy / 18.0).powi(2) <= 1.0
        };
        let data = (0..n * n).map(|i| u8::from(inside(i % n, i / n))).collect();
        let mask = mk_mask(n, n, data);
        let before = mask.foreground_count() as f64;
        for deg in [10.0f32, -10.0, 45.0, 33.0] {
            let lab = GrayImage::from_raw(n, n, mask.data.clone()).unwrap();
            let (ri, rl) = rotate_pair(&img, &lab, deg, [1, 2, 3]);
            let after = rl.as_raw().iter().filter(|&&v| v == 1).count() as f64;
            assert!(
                (after / before - 1.0).abs() < 0.03,
                "{deg}: {before} -> {after}"
            );
            assert!(rl.as_raw().iter().all(|v| matches!(v, 0 | 1 | 255)));
            for (x, y) in [(0, 0), (n - 1, 0), (0, n - 1), (n - 1, n - 1)] {
                assert_eq!(rl.get_pixel(x, y)[0], 255, "{deg}: corner ({x},{y})");
                assert_eq!(ri.get_pixel(x, y).0, [1, 2, 3]);
            }
            // The centre does not move.
            assert_eq!(rl.get_pixel(50, 50)[0], 1);
            assert_eq!(ri.get_pixel(50, 50), img.get_pixel(50, 50));
        }
        // Positive angle is counter-clockwise on screen: a point right of centre moves up.
        let mut dot = vec![0u8; (n * n) as usize];
        dot[(50 * n + 80) as usize] = 1;
        let lab = GrayImage::from_raw(n, n, dot).unwrap();
        let (_, rl) = rotate_pair(&img, &lab, 90.0, [0; 3]);
        assert_eq!(rl.get_pixel(50, 20)[0], 1);
        // Through augment: a forced rotation also pads the label's corners.
        let cfg = AugmentConfig {
            rotate_prob: 1.0,
            rotate_deg: 20.0,
            ..AugmentConfig::identity(101)
        };
        let (_, m) = augment(&img, &mask, &cfg, &mut ChaCha8Rng::seed_from_u64(5));
        assert_eq!((m.data[0], m.data[100], m.data[100 * 101]), (255, 255, 255));
    }

    #[test]
    fn padding_when_scaled_image_is_smaller_than_canvas() {
        let (img, mut mask) = fixture(40, 40);
        mask.data.iter_mut().for_each(|v| *v = u8::from(*v == 1));
        let cfg = AugmentConfig {
            scale: (0.5, 0.5),
            ..AugmentConfig::identity(32)
        };
        let (i, m) = augment(&img, &mask, &cfg, &mut ChaCha8Rng::seed_from_u64(0));
        // 20×20 centred on 32×32: 6 pixels of padding on each side.
        assert_eq!(m.data.iter().filter(|&&v| v != 255).count(), 20 * 20);
        assert_eq!(m.data[0], 255);
        assert_eq!(i.get_pixel(0, 0).0, cfg.pad_rgb);
        assert_eq!(i.get_pixel(31, 31).0, cfg.pad_rgb);
        assert_eq!(m.data[31 * 32 + 31], 255);
        assert_ne!(i.get_pixel(16, 16).0, cfg.pad_rgb);
        // Larger than the canvas on one side only: crop there, pad the other.
        let (img, mask) = fixture(80, 10);
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let (i, m) = augment(&img, &mask, &AugmentConfig::identity(32), &mut rng);
        assert_eq!((i.width(), i.height()), (32, 32));
        assert_eq!(m.data.iter().filter(|&&v| v != 255).count(), 32 * 10 - 32);
        assert_eq!(i.get_pixel(5, 0).0, cfg.pad_rgb);
    }
}
