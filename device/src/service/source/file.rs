//! File sources: a directory of images played in file-name order, or one image.
//!
//! Corrupt or vanished files inside a sequence are skipped (a [`SourceError::Corrupt`] per frame,
//! which the capture loop warns about and counts); a looping sequence in which no file decodes
//! stops with [`SourceError::NothingDecodable`] instead of spinning.

use super::{Captured, FrameSource, SourceError};
use mce_core::preprocess::load_rgb;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Extensions a sequence picks up (case-insensitive).
pub const IMAGE_EXTENSIONS: [&str; 4] = ["png", "jpg", "jpeg", "bmp"];

/// Open `path` as a sequence (directory) or a single image.
pub fn open(
    path: &Path,
    looping: bool,
    interval: Option<Duration>,
) -> Result<Box<dyn FrameSource>, SourceError> {
    let meta = std::fs::metadata(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => SourceError::NotFound {
            path: path.to_path_buf(),
        },
        _ => SourceError::Io {
            path: path.to_path_buf(),
            error: e,
        },
    })?;
    if meta.is_dir() {
        Ok(Box::new(ImageSequence::open(path, looping, interval)?))
    } else {
        Ok(Box::new(ImageSequence {
            dir: path.to_path_buf(),
            files: vec![path.to_path_buf()],
            next: 0,
            looping,
            interval,
            good_in_pass: 0,
        }))
    }
}

/// Images of a directory in file-name order (or one file).
#[derive(Debug)]
pub struct ImageSequence {
    dir: PathBuf,
    files: Vec<PathBuf>,
    next: usize,
    looping: bool,
    interval: Option<Duration>,
    good_in_pass: usize,
}

impl ImageSequence {
    /// List the images of `dir`. Fails on a missing, unreadable or image-less directory.
    pub fn open(
        dir: &Path,
        looping: bool,
        interval: Option<Duration>,
    ) -> Result<Self, SourceError> {
        let io = |error| SourceError::Io {
            path: dir.to_path_buf(),
            error,
        };
        let mut files = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(io)? {
            let path = entry.map_err(io)?.path();
            let is_image = path
                .extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()));
            if is_image && path.is_file() {
                files.push(path);
            }
        }
        if files.is_empty() {
            return Err(SourceError::EmptyDir {
                dir: dir.to_path_buf(),
            });
        }
        files.sort();
        Ok(Self {
            dir: dir.to_path_buf(),
            files,
            next: 0,
            looping,
            interval,
            good_in_pass: 0,
        })
    }

    /// The files in play order.
    pub fn files(&self) -> &[PathBuf] {
        &self.files
    }
}

impl FrameSource for ImageSequence {
    fn describe(&self) -> String {
        if self.files.len() == 1 && self.files[0] == self.dir {
            format!("image {}", self.dir.display())
        } else {
            format!(
                "{} images in {}{}",
                self.files.len(),
                self.dir.display(),
                if self.looping { " (looping)" } else { "" }
            )
        }
    }

    fn next_frame(&mut self) -> Result<Option<Captured>, SourceError> {
        if self.next == self.files.len() {
            if !self.looping {
                return Ok(None);
            }
            if self.good_in_pass == 0 {
                return Err(SourceError::NothingDecodable {
                    dir: self.dir.clone(),
                });
            }
            self.next = 0;
            self.good_in_pass = 0;
        }
        let path = &self.files[self.next];
        self.next += 1;
        match load_rgb(path) {
            Ok(image) => {
                self.good_in_pass += 1;
                Ok(Some(Captured {
                    image,
                    label: Some(path.display().to_string()),
                }))
            }
            Err(e) => {
                // Non-looping sequences of only corrupt files end after one pass.
                Err(SourceError::Corrupt {
                    what: path.display().to_string(),
                    reason: e.to_string(),
                })
            }
        }
    }

    fn frame_interval(&self) -> Option<Duration> {
        self.interval
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::source::ErrorKind;
    use image::{Rgb, RgbImage};

    fn dir() -> tempfile::TempDir {
        tempfile::tempdir().unwrap()
    }

    #[test]
    fn sequence_plays_sorted_skips_corrupt_and_loops() {
        let tmp = dir();
        let d = tmp.path();
        for (name, v) in [("b.png", 20u8), ("a.png", 10), ("c.jpg", 30)] {
            RgbImage::from_pixel(4, 4, Rgb([v, v, v]))
                .save(d.join(name))
                .unwrap();
        }
        std::fs::write(d.join("broken.png"), b"\x89PNG garbage").unwrap();
        std::fs::write(d.join("notes.txt"), b"ignored").unwrap();
        let mut s = ImageSequence::open(d, true, None).unwrap();
        let names: Vec<_> = s
            .files()
            .iter()
            .map(|p| p.file_name().unwrap().to_str().unwrap().to_string())
            .collect();
        assert_eq!(names, ["a.png", "b.png", "broken.png", "c.jpg"]);
        let mut seen = Vec::new();
        let mut corrupt = 0;
        for _ in 0..8 {
            match s.next_frame() {
                Ok(Some(c)) => seen.push(c.label.unwrap()),
                Err(e) => {
                    assert_eq!(e.kind(), ErrorKind::Skip);
                    assert!(e.to_string().contains("broken.png"), "{e}");
                    corrupt += 1;
                }
                Ok(None) => panic!("looping sequence ended"),
            }
        }
        assert_eq!(corrupt, 2);
        assert!(seen[3].ends_with("a.png"));
    }

    #[test]
    fn a_truncated_frame_is_corrupt() {
        let tmp = dir();
        let d = tmp.path();
        let img = RgbImage::from_fn(64, 48, |x, y| Rgb([(x * 4) as u8, (y * 5) as u8, 90]));
        img.save(d.join("whole.jpg")).unwrap();
        let bytes = std::fs::read(d.join("whole.jpg")).unwrap();
        std::fs::write(d.join("half.jpg"), &bytes[..bytes.len() / 2]).unwrap();
        let mut s = ImageSequence::open(d, false, None).unwrap();
        let e = s.next_frame().unwrap_err(); // half.jpg sorts first
        assert_eq!(e.kind(), ErrorKind::Skip);
        assert!(
            e.to_string().contains("half.jpg") && e.to_string().contains("truncated"),
            "{e}"
        );
        assert!(s.next_frame().unwrap().is_some(), "whole.jpg still plays");
    }

    #[test]
    fn open_errors_name_the_path() {
        let missing = std::env::temp_dir().join("mce-no-such-dir-xyz");
        let e = open(&missing, false, None).err().unwrap();
        assert!(matches!(e, SourceError::NotFound { .. }));
        assert!(e.to_string().contains("mce-no-such-dir-xyz"));
        let empty = dir();
        let e = open(empty.path(), false, None).err().unwrap();
        assert!(e.to_string().contains("no images"), "{e}");

        let bad = dir();
        std::fs::write(bad.path().join("x.png"), b"nope").unwrap();
        let mut s = ImageSequence::open(bad.path(), true, None).unwrap();
        assert_eq!(s.next_frame().unwrap_err().kind(), ErrorKind::Skip);
        let e = s.next_frame().unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Fatal);
        assert!(e.to_string().contains("no image in the sequence"), "{e}");
    }

    #[test]
    fn single_image_plays_once() {
        let d = dir();
        let f = d.path().join("one.bmp");
        RgbImage::from_pixel(3, 2, Rgb([1, 2, 3])).save(&f).unwrap();
        let mut s = open(&f, false, Some(Duration::from_millis(100))).unwrap();
        assert_eq!(s.frame_interval(), Some(Duration::from_millis(100)));
        assert!(s.describe().contains("one.bmp"));
        assert_eq!(s.next_frame().unwrap().unwrap().image.dimensions(), (3, 2));
        assert!(s.next_frame().unwrap().is_none());
    }
}
