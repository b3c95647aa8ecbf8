//! Drawing results on frames: binary mask images, coloured overlays and their [`legend`].

pub mod legend;

use image::{GrayImage, Luma, Rgb, RgbImage};

/// Distinct overlay colours, one per class index (cycled).
pub const PALETTE: [[u8; 3]; 6] = [
    [255, 40, 40],
    [40, 200, 255],
    [255, 200, 0],
    [160, 60, 255],
    [40, 220, 90],
    [255, 120, 200],
];

/// A 0/255 grayscale image from a row-major 0/1 mask.
pub fn mask_image(width: usize, height: usize, mask: &[u8]) -> GrayImage {
    GrayImage::from_fn(width as u32, height as u32, |x, y| {
        Luma([if mask[y as usize * width + x as usize] > 0 {
            255
        } else {
            0
        }])
    })
}

/// Blend `colour` into `frame` where `mask` is set (alpha 0.5), and darken nothing else.
pub fn blend(frame: &mut RgbImage, mask: &[u8], colour: [u8; 3]) {
    let width = frame.width() as usize;
    for (x, y, p) in frame.enumerate_pixels_mut() {
        if mask[y as usize * width + x as usize] > 0 {
            let Rgb(c) = *p;
            *p = Rgb(std::array::from_fn(|i| {
                ((c[i] as u16 + colour[i] as u16) / 2) as u8
            }));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blend_touches_only_masked_pixels() {
        let mut f = RgbImage::from_pixel(2, 1, Rgb([100, 100, 100]));
        blend(&mut f, &[1, 0], [200, 0, 50]);
        assert_eq!(f.get_pixel(0, 0).0, [150, 50, 75]);
        assert_eq!(f.get_pixel(1, 0).0, [100, 100, 100]);
        let m = mask_image(2, 1, &[0, 1]);
        assert_eq!(m.as_raw(), &vec![0, 255]);
    }
}
