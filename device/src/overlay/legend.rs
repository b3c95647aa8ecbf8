//! The legend drawn into the overlay's top-left corner: one row per class, a swatch of its
//! colour, its name and the share of the frame it covers (`bicycle 12.5%`).
//!
//! Text uses the public-domain 8x8 bitmap glyphs of `font8x8`, scaled by 1 below 480 px of frame
//! width and by 2 from there; characters without a glyph print as `?`. The panel behind the rows
//! is the frame darkened to a third, so that the text stays readable on any background.
//! Everything is clipped to the frame: a frame too small for the panel shows what fits.

use font8x8::{UnicodeFonts, BASIC_FONTS, LATIN_FONTS};
use image::{Rgb, RgbImage};

/// One legend row.
#[derive(Debug, Clone, PartialEq)]
pub struct LegendEntry<'a> {
    pub name: &'a str,
    pub colour: [u8; 3],
    /// Share of the frame's pixels, 0-1.
    pub area: f64,
}

/// Glyph cell size before scaling, pixels.
const GLYPH: u32 = 8;
/// Padding around the panel's content and between rows, in glyph pixels (scaled).
const PAD: u32 = 2;
/// Names longer than this are cut (the last kept character becomes `~`).
pub const MAX_NAME_CHARS: usize = 20;
const TEXT: [u8; 3] = [255, 255, 255];

/// Pixel scale of the glyphs for a frame `width` pixels wide.
pub fn scale_for(width: u32) -> u32 {
    if width >= 480 {
        2
    } else {
        1
    }
}

/// The text of one row.
pub fn row_text(e: &LegendEntry) -> String {
    let mut name: String = e.name.chars().take(MAX_NAME_CHARS).collect();
    if e.name.chars().count() > MAX_NAME_CHARS {
        name.pop();
        name.push('~');
    }
    format!("{name} {:.1}%", 100.0 * e.area.clamp(0.0, 1.0))
}

/// Draw the legend of `entries` into `image` (nothing when there are none).
pub fn draw(image: &mut RgbImage, entries: &[LegendEntry]) {
    if entries.is_empty() {
        return;
    }
    let s = scale_for(image.width());
    let rows: Vec<String> = entries.iter().map(row_text).collect();
    let chars = rows.iter().map(|r| r.chars().count()).max().unwrap_or(0) as u32;
    // swatch, a space, the text; PAD around and between rows
    let width = (PAD + GLYPH + GLYPH + chars * GLYPH + PAD) * s;
    let row_h = (GLYPH + PAD) * s;
    let height = PAD * s + rows.len() as u32 * row_h;
    darken(image, width, height);
    for (i, (entry, text)) in entries.iter().zip(&rows).enumerate() {
        let y = PAD * s + i as u32 * row_h;
        fill(image, PAD * s, y, GLYPH * s, GLYPH * s, entry.colour);
        let mut x = (PAD + 2 * GLYPH) * s;
        for c in text.chars() {
            glyph(image, x, y, s, c);
            x += GLYPH * s;
        }
    }
}

/// The frame under the panel at a third of its brightness.
fn darken(image: &mut RgbImage, width: u32, height: u32) {
    for y in 0..height.min(image.height()) {
        for x in 0..width.min(image.width()) {
            let Rgb(c) = *image.get_pixel(x, y);
            image.put_pixel(x, y, Rgb(c.map(|v| v / 3)));
        }
    }
}

/// A `w` x `h` rectangle of `colour` at (`x`, `y`), clipped.
fn fill(image: &mut RgbImage, x: u32, y: u32, w: u32, h: u32, colour: [u8; 3]) {
    for yy in y..(y + h).min(image.height()) {
        for xx in x..(x + w).min(image.width()) {
            image.put_pixel(xx, yy, Rgb(colour));
        }
    }
}

/// The 8x8 bitmap of `c` (bit `i` of row `r` is pixel `i` from the left); `?` without one.
pub fn bitmap(c: char) -> [u8; 8] {
    BASIC_FONTS
        .get(c)
        .or_else(|| LATIN_FONTS.get(c))
        .or_else(|| BASIC_FONTS.get('?'))
        .unwrap_or([0; 8])
}

/// Character `c` in white at (`x`, `y`), each glyph pixel an `s` x `s` square, clipped.
fn glyph(image: &mut RgbImage, x: u32, y: u32, s: u32, c: char) {
    for (r, bits) in bitmap(c).iter().enumerate() {
        for i in 0..GLYPH {
            if bits & (1 << i) != 0 {
                fill(image, x + i * s, y + r as u32 * s, s, s, TEXT);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &str, colour: [u8; 3], area: f64) -> LegendEntry<'_> {
        LegendEntry { name, colour, area }
    }

    #[test]
    fn rows_read_name_and_percent_and_long_names_are_cut() {
        assert_eq!(row_text(&entry("bicycle", [0; 3], 0.125)), "bicycle 12.5%");
        assert_eq!(row_text(&entry("dog", [0; 3], 1.5)), "dog 100.0%");
        let long = "a".repeat(30);
        let t = row_text(&entry(&long, [0; 3], 0.0));
        assert_eq!(t, format!("{}~ 0.0%", "a".repeat(MAX_NAME_CHARS - 1)));
    }

    #[test]
    fn the_8x8_glyph_of_a_capital_i_is_a_bar_with_serifs() {
        // font8x8's 'I': 0x1E top and bottom, 0x0C in between (bits 1-4 / 2-3 from the left).
        assert_eq!(
            bitmap('I'),
            [0x1E, 0x0C, 0x0C, 0x0C, 0x0C, 0x0C, 0x1E, 0x00]
        );
        // No glyph for a CJK character: a question mark.
        assert_eq!(bitmap('猫'), bitmap('?'));
    }

    #[test]
    fn swatch_text_and_panel_are_where_the_layout_puts_them() {
        let grey = Rgb([90, 90, 90]);
        let mut img = RgbImage::from_pixel(200, 100, grey);
        draw(
            &mut img,
            &[
                entry("I", [255, 40, 40], 0.5),
                entry("I", [40, 200, 255], 0.0),
            ],
        );
        // scale 1; rows at y = 2 and 12; the swatch spans x 2..10
        assert_eq!(img.get_pixel(2, 2).0, [255, 40, 40]);
        assert_eq!(img.get_pixel(9, 9).0, [255, 40, 40]);
        assert_eq!(img.get_pixel(5, 12).0, [40, 200, 255]);
        // text starts at x = 18: the 'I' has its top serif at bits 1-4 of row 0
        assert_eq!(img.get_pixel(18 + 1, 2).0, [255; 3]);
        assert_eq!(
            img.get_pixel(18, 2).0,
            [30; 3],
            "glyph background is the darkened frame"
        );
        // "I 50.0%" is 7 characters: panel width (2 + 8 + 8 + 56 + 2) = 76, height 2 + 2*10 = 22
        assert_eq!(img.get_pixel(75, 21).0, [30; 3]);
        assert_eq!(
            img.get_pixel(76, 5),
            &grey,
            "right of the panel is untouched"
        );
        assert_eq!(img.get_pixel(5, 22), &grey, "below the panel is untouched");
    }

    #[test]
    fn wide_frames_get_double_size_glyphs() {
        let mut img = RgbImage::new(640, 480);
        draw(&mut img, &[entry("I", [255, 200, 0], 0.0)]);
        // scale 2: swatch 4..20 x 4..20, text at x = 36, serif pixel 1 -> x 38..40
        assert_eq!(img.get_pixel(19, 19).0, [255, 200, 0]);
        assert_eq!(img.get_pixel(20, 19).0, [0; 3]);
        assert_eq!(img.get_pixel(39, 5).0, [255; 3]);
    }

    #[test]
    fn nothing_to_draw_or_no_room_is_fine() {
        let mut img = RgbImage::from_pixel(4, 3, Rgb([7, 7, 7]));
        draw(&mut img, &[]);
        assert!(img.pixels().all(|p| p.0 == [7, 7, 7]));
        draw(&mut img, &[entry("a long class name", [1, 2, 3], 0.2)]); // clipped, no panic
        assert_eq!(img.get_pixel(3, 2).0, [1, 2, 3]);
    }
}
