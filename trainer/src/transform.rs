//! Deterministic geometric variants of an (image, label) pair on the model's square canvas.
//!
//! A [`Variant`] rescales the image to `scale · S` (the longer side, letterbox; both sides, squash:
//! the model's [`Canvas`]), optionally mirrors, and places the result top-left on the `S × S`
//! canvas (cropping the centre when it is larger). `Variant::IDENTITY` is exactly the device's test
//! transform (`Resize::LongerSidePad(S)` or `Resize::Direct(S)`), so cached training features and
//! inference see the same geometry. Images are resized with the Triangle filter, labels with
//! nearest neighbour; the canvas is padded with the mean colour (0 after normalisation) and the label
//! with 255 (ignore).

use image::imageops::{self, FilterType};
use image::{GrayImage, RgbImage};
use mce_core::config::InputResize;
use mce_core::preprocess::Mask;
use mce_core::preprocess::Resize;
use mce_core::{BackboneKind, MceConfig};
use serde::{Deserialize, Serialize};

/// The model's square input: its side and how images are fitted to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Canvas {
    pub size: usize,
    pub fit: InputResize,
}

impl Canvas {
    /// The canvas a model with config `cfg` reads.
    pub fn of(cfg: &MceConfig) -> Self {
        Canvas {
            size: cfg.image_size,
            fit: cfg.resize,
        }
    }

    /// Longer side to `size`, padded.
    pub fn letterbox(size: usize) -> Self {
        Canvas {
            size,
            fit: InputResize::Letterbox,
        }
    }

    /// The same geometry as a pre-processing of `mce_core` (the test transform).
    pub fn resize(self) -> Resize {
        self.fit.at(self.size)
    }
}

/// A scale of the longer side (relative to the canvas) and a horizontal flip.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Variant {
    pub scale: f32,
    pub flip: bool,
}

impl Variant {
    /// The test transform: longer side = canvas, no flip.
    pub const IDENTITY: Variant = Variant {
        scale: 1.0,
        flip: false,
    };

    /// Every combination of `scales` with and without a flip (identity first when present).
    pub fn grid(scales: &[f32], flips: bool) -> Vec<Variant> {
        let mut v = Vec::new();
        for &scale in scales {
            v.push(Variant { scale, flip: false });
            if flips {
                v.push(Variant { scale, flip: true });
            }
        }
        v
    }
}

/// Side lengths after scaling the longer side of `h × w` to `long`.
fn scaled_hw(h: usize, w: usize, long: usize) -> (usize, usize) {
    let f = long as f64 / h.max(w) as f64;
    let r = |n: usize| ((n as f64 * f).round() as usize).max(1);
    if h >= w {
        (long, r(w))
    } else {
        (r(h), long)
    }
}

/// Apply `v` to an image and its label (same size), returning both at most `size × size`.
pub fn apply(img: &RgbImage, label: &Mask, v: Variant, canvas: Canvas) -> (RgbImage, Mask) {
    let size = canvas.size;
    let long = ((size as f32 * v.scale).round() as usize).max(1);
    let (h, w) = match canvas.fit {
        InputResize::Letterbox => scaled_hw(img.height() as usize, img.width() as usize, long),
        InputResize::Squash => (long, long),
    };
    let mut image = if (h, w) == (img.height() as usize, img.width() as usize) {
        img.clone()
    } else {
        imageops::resize(img, w as u32, h as u32, FilterType::Triangle)
    };
    let gray = GrayImage::from_raw(label.width as u32, label.height as u32, label.data.clone())
        .expect("label data matches its size");
    let mut lab = imageops::resize(&gray, w as u32, h as u32, FilterType::Nearest);
    if v.flip {
        imageops::flip_horizontal_in_place(&mut image);
        imageops::flip_horizontal_in_place(&mut lab);
    }
    let (ch, cw) = (h.min(size), w.min(size));
    let (y0, x0) = ((h - ch) / 2, (w - cw) / 2);
    let image = imageops::crop_imm(&image, x0 as u32, y0 as u32, cw as u32, ch as u32).to_image();
    let lab = imageops::crop_imm(&lab, x0 as u32, y0 as u32, cw as u32, ch as u32).to_image();
    let mask = Mask {
        width: cw,
        height: ch,
        data: lab.into_raw(),
    };
    (image, mask)
}

/// Normalise an image of at most `size × size` onto the canvas: `(3, S, S)` values, row-major.
pub fn image_canvas(img: &RgbImage, kind: BackboneKind, size: usize) -> Vec<f32> {
    let (mean, std) = kind.normalization();
    let plane = size * size;
    let mut data = vec![0f32; 3 * plane];
    for (x, y, p) in img.enumerate_pixels() {
        let at = y as usize * size + x as usize;
        for c in 0..3 {
            data[c * plane + at] = (p[c] as f32 - mean[c]) / std[c];
        }
    }
    data
}

/// A label of at most `size × size` on the canvas, padding 255: `S × S` row-major.
pub fn label_canvas(label: &Mask, size: usize) -> Vec<u8> {
    let mut out = vec![mce_core::model::loss::IGNORE_LABEL; size * size];
    for y in 0..label.height {
        let row = &label.data[y * label.width..(y + 1) * label.width];
        out[y * size..y * size + label.width].copy_from_slice(row);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;
    use image::Rgb;
    use mce_core::preprocess::prepare_image;

    fn fixture() -> (RgbImage, Mask) {
        let img = RgbImage::from_fn(30, 20, |x, y| Rgb([(x * 8) as u8, (y * 12) as u8, 77]));
        let data = (0..600).map(|i| u8::from(i % 30 < 10)).collect();
        let mask = Mask {
            width: 30,
            height: 20,
            data,
        };
        (img, mask)
    }

    #[test]
    fn identity_variant_is_the_device_test_transform() {
        let (img, mask) = fixture();
        let (placed, _) = apply(&img, &mask, Variant::IDENTITY, Canvas::letterbox(24));
        let ours = image_canvas(&placed, BackboneKind::EfficientnetLite0, 24);
        let prep = prepare_image(
            &img,
            Resize::LongerSidePad(24),
            BackboneKind::EfficientnetLite0,
            &Device::Cpu,
        )
        .unwrap();
        let theirs = prep.tensor.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(ours, theirs);
    }

    #[test]
    fn squash_identity_is_the_direct_resize() {
        let (img, mask) = fixture();
        let canvas = Canvas {
            size: 24,
            fit: InputResize::Squash,
        };
        let (placed, lab) = apply(&img, &mask, Variant::IDENTITY, canvas);
        assert_eq!(
            (placed.width(), placed.height(), lab.width, lab.height),
            (24, 24, 24, 24)
        );
        let ours = image_canvas(&placed, BackboneKind::EfficientnetLite0, 24);
        let prep = prepare_image(
            &img,
            canvas.resize(),
            BackboneKind::EfficientnetLite0,
            &Device::Cpu,
        )
        .unwrap();
        assert_eq!(canvas.resize(), Resize::Direct(24));
        let theirs = prep.tensor.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(ours, theirs);
        // the 10 foreground columns of 30 become 8 of 24 on every row
        let fg = lab.data.iter().filter(|&&v| v == 1).count();
        assert_eq!(fg, 8 * 24);
    }

    #[test]
    fn flip_mirrors_image_and_label_and_scale_crops_centre() {
        let (img, mask) = fixture();
        let (f, m) = apply(
            &img,
            &mask,
            Variant {
                scale: 1.0,
                flip: true,
            },
            Canvas::letterbox(30),
        );
        assert_eq!((f.width(), f.height(), m.width, m.height), (30, 20, 30, 20));
        assert_eq!(f.get_pixel(0, 5), img.get_pixel(29, 5));
        assert_eq!(m.data[0], 0); // left edge was the right edge: background
        assert_eq!(m.data[29], 1);
        let (big, bm) = apply(
            &img,
            &mask,
            Variant {
                scale: 2.0,
                flip: false,
            },
            Canvas::letterbox(30),
        );
        assert_eq!(
            (big.width(), big.height(), bm.width, bm.height),
            (30, 30, 30, 30)
        );
        let canvas = label_canvas(
            &apply(
                &img,
                &mask,
                Variant {
                    scale: 0.5,
                    flip: false,
                },
                Canvas::letterbox(30),
            )
            .1,
            30,
        );
        assert_eq!(canvas[29 * 30 + 29], 255); // padding is ignore
        assert_eq!(canvas[0], 1);
    }
}
