//! Fixtures shared by the tests of the mce crates. Only ever a `dev-dependency`: library and
//! binary code carries no fixtures.
//!
//! [`SquareFolders`] writes a small folder-per-class dataset (`<class>/images/*.png` +
//! `<class>/masks/*.png`, the layout of `mce-train`'s `folders` loader): per class, a square of the
//! class colour on a noisy grey background, with its exact binary mask. [`tiny_edge_config`] is the
//! narrow model config the training, calibration and QAT tests share.

use image::{GrayImage, Luma, Rgb, RgbImage};
use std::path::Path;

/// Class colours: red, green, blue, yellow.
pub const COLOURS: [[u8; 3]; 4] = [[220, 30, 30], [30, 200, 40], [40, 60, 230], [230, 220, 30]];

/// A coloured-square folder dataset of 4 classes (`class0` … `class3`).
#[derive(Debug, Clone, Copy)]
pub struct SquareFolders {
    /// Images per class.
    pub images: u32,
    /// Image width and height.
    pub size: (u32, u32),
    /// Side of image `i`'s square: `side.0 + side.1 · i`.
    pub side: (u32, u32),
}

impl SquareFolders {
    /// Write the dataset under `root`. Panics on I/O errors (a test fixture).
    pub fn write(&self, root: &Path) {
        let (w, h) = self.size;
        for (c, colour) in COLOURS.iter().enumerate() {
            let dir = root.join(format!("class{c}"));
            std::fs::create_dir_all(dir.join("images")).unwrap();
            std::fs::create_dir_all(dir.join("masks")).unwrap();
            for i in 0..self.images {
                let (x0, y0, side) = (4 + 5 * i, 3 + 3 * i, self.side.0 + self.side.1 * i);
                let inside =
                    |x: u32, y: u32| (x0..x0 + side).contains(&x) && (y0..y0 + side).contains(&y);
                let img = RgbImage::from_fn(w, h, |x, y| {
                    if inside(x, y) {
                        Rgb(*colour)
                    } else {
                        let n = ((x * 31 + y * 17 + i * 7) % 50) as u8;
                        Rgb([90 + n, 90 + n, 90 + n])
                    }
                });
                let mask = GrayImage::from_fn(w, h, |x, y| Luma([255 * u8::from(inside(x, y))]));
                img.save(dir.join(format!("images/{i}.png"))).unwrap();
                mask.save(dir.join(format!("masks/{i}.png"))).unwrap();
            }
        }
    }
}

/// The edge preset's paper head at `image_size` with narrow widths (reduce 32, d 32, 2 heads,
/// decoder 32): a model small enough for tests that train, calibrate or quantize it.
pub fn tiny_edge_config(image_size: usize) -> mce_core::MceConfig {
    let mut cfg = mce_core::MceConfig {
        image_size,
        ..mce_core::MceConfig::edge_lite0()
    };
    let p = cfg.paper_mut().expect("the edge preset has the paper head");
    (p.reduce_dim, p.d_model, p.heads, p.decoder.dim) = (32, 32, 2, 32);
    cfg
}

/// Every help text of the command-line binary `bin`: `--help` of the binary and of each of its
/// subcommands, as `(command, text)`.
pub fn help_texts(bin: &str) -> Vec<(String, String)> {
    let help = |args: &[&str]| {
        let o = std::process::Command::new(bin)
            .args(args)
            .arg("--help")
            .output()
            .expect("run the binary");
        assert!(o.status.success(), "{bin} {args:?} --help failed");
        String::from_utf8(o.stdout).expect("utf-8 help")
    };
    let top = help(&[]);
    let subcommands: Vec<String> = top
        .lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .filter(|c| c != "help")
        .collect();
    assert!(!subcommands.is_empty(), "no subcommands in:\n{top}");
    let mut out = vec![(String::new(), top)];
    for c in subcommands {
        let text = help(&[c.as_str()]);
        out.push((c, text));
    }
    out
}

/// Panics when a help text of `bin` shows rustdoc syntax (intra-doc links, `[`Type`]`).
pub fn assert_help_is_plain(bin: &str) {
    for (command, text) in help_texts(bin) {
        for (i, line) in text.lines().enumerate() {
            assert!(
                !line.contains("[`") && !line.contains("`]"),
                "{bin} {command} --help, line {}: rustdoc syntax: {line}",
                i + 1
            );
        }
    }
}
