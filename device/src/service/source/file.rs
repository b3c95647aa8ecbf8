//! File sources: a directory of images played in file-name order, or one image.
//!
//! Corrupt files inside a sequence, and frames above the pixel limit, are skipped (a
//! [`SourceError::Corrupt`] per frame, which the capture loop warns about and counts); a looping
//! sequence in which no file decodes stops with [`SourceError::NothingDecodable`] instead of
//! spinning.
//!
//! Reading is not decoding: a file that cannot be *read* (EMFILE when descriptors run out, EIO,
//! a file that vanished) is a transient [`SourceError::Unavailable`]: the capture loop backs off
//! and asks again for the same frame, nothing is counted as corrupt. A vanished file makes the
//! sequence re-list its directory, so frames that are moved away and back, or replaced, play
//! again; a looping sequence also re-lists at the start of every pass, picking up new files.

use super::{Captured, FrameSource, SourceError, MAX_FRAME_PIXELS};
use mce_core::preprocess::load_rgb_with_limit;
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
        let one = vec![path.to_path_buf()];
        Ok(Box::new(ImageSequence::new(path, one, looping, interval)))
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
    max_pixels: u64,
}

impl ImageSequence {
    /// List the images of `dir`. Fails on a missing, unreadable or image-less directory.
    pub fn open(
        dir: &Path,
        looping: bool,
        interval: Option<Duration>,
    ) -> Result<Self, SourceError> {
        let files = list_images(dir).map_err(|error| SourceError::Io {
            path: dir.to_path_buf(),
            error,
        })?;
        if files.is_empty() {
            return Err(SourceError::EmptyDir {
                dir: dir.to_path_buf(),
            });
        }
        Ok(Self::new(dir, files, looping, interval))
    }

    /// `files` of `dir` (or the one file `dir` itself), from the first, at the default limit.
    fn new(dir: &Path, files: Vec<PathBuf>, looping: bool, interval: Option<Duration>) -> Self {
        Self {
            dir: dir.to_path_buf(),
            files,
            next: 0,
            looping,
            interval,
            good_in_pass: 0,
            max_pixels: MAX_FRAME_PIXELS,
        }
    }

    /// Refuse frames above `max_pixels` (counted as corrupt) instead of [`MAX_FRAME_PIXELS`].
    pub fn with_max_pixels(mut self, max_pixels: u64) -> Self {
        self.max_pixels = max_pixels;
        self
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
            self.relist();
            self.next = 0;
            self.good_in_pass = 0;
        }
        let path = self.files[self.next].clone();
        match load_rgb_with_limit(&path, self.max_pixels) {
            Ok(image) => {
                self.next += 1;
                self.good_in_pass += 1;
                Ok(Some(Captured {
                    image,
                    label: Some(path.display().to_string()),
                }))
            }
            Err(mce_core::Error::Io { error, .. }) => {
                // Not the frame's fault: ask again for the same one after the back-off.
                if error.kind() == std::io::ErrorKind::NotFound && self.relist() {
                    // Go on from the first image that sorts after the vanished one.
                    self.next = self.files.partition_point(|f| *f < path);
                }
                Err(SourceError::Unavailable { path, error })
            }
            Err(e) => {
                // Non-looping sequences of only corrupt files end after one pass.
                self.next += 1;
                Err(SourceError::Corrupt {
                    what: path.display().to_string(),
                    reason: e.to_string(),
                })
            }
        }
    }

    fn is_recorded(&self) -> bool {
        true
    }

    fn frame_interval(&self) -> Option<Duration> {
        self.interval
    }
}

impl ImageSequence {
    /// List the directory again (each new pass of a loop, and when a file vanished); returns
    /// whether the list was replaced. An unreadable or image-less directory keeps the old list
    /// (its images may come back), and so does a single-image source (it waits for its file).
    fn relist(&mut self) -> bool {
        if self.files.len() == 1 && self.files[0] == self.dir {
            return false;
        }
        match list_images(&self.dir) {
            Ok(files) if !files.is_empty() => {
                self.files = files;
                true
            }
            _ => false,
        }
    }
}

/// The images of `dir` (by extension, [`IMAGE_EXTENSIONS`]), sorted by name.
fn list_images(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let is_image = path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()));
        if is_image && path.is_file() {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
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
    fn frames_above_the_pixel_limit_are_corrupt() {
        let tmp = dir();
        RgbImage::from_pixel(40, 30, Rgb([9, 9, 9]))
            .save(tmp.path().join("big.png"))
            .unwrap();
        let mut s = ImageSequence::open(tmp.path(), false, None)
            .unwrap()
            .with_max_pixels(40 * 30 - 1);
        let e = s.next_frame().unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Skip);
        assert!(
            e.to_string().contains("40x30 pixels exceeds the limit"),
            "{e}"
        );
    }

    #[test]
    fn frames_that_vanish_are_retried_and_play_again_when_back() {
        let tmp = dir();
        let (d, away) = (tmp.path().join("frames"), tmp.path().join("away"));
        std::fs::create_dir_all(&d).unwrap();
        for (name, v) in [("a.png", 10u8), ("b.png", 20), ("c.png", 30)] {
            RgbImage::from_pixel(4, 4, Rgb([v, v, v]))
                .save(d.join(name))
                .unwrap();
        }
        let mut s = ImageSequence::open(&d, true, None).unwrap();
        assert!(s
            .next_frame()
            .unwrap()
            .unwrap()
            .label
            .unwrap()
            .ends_with("a.png"));
        // Everything moves away: transient, retried, never corrupt or fatal, however often asked.
        std::fs::rename(&d, &away).unwrap();
        for _ in 0..10 {
            let e = s.next_frame().unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Retry, "{e}");
            assert!(e.to_string().contains("b.png"), "{e}");
        }
        // Back, with one frame replaced by a new name: the directory is listed again.
        std::fs::rename(&away, &d).unwrap();
        std::fs::rename(d.join("b.png"), d.join("bb.png")).unwrap();
        // b.png is still missing: once more a retry, after which the new listing plays.
        assert_eq!(s.next_frame().unwrap_err().kind(), ErrorKind::Retry);
        let labels: Vec<String> = (0..4)
            .map(|_| s.next_frame().unwrap().unwrap().label.unwrap())
            .collect();
        let names: Vec<&str> = labels
            .iter()
            .map(|l| l.rsplit('/').next().unwrap())
            .collect();
        assert_eq!(names, ["bb.png", "c.png", "a.png", "bb.png"]);
    }

    #[test]
    fn a_loop_picks_up_new_files_on_its_next_pass() {
        let tmp = dir();
        let d = tmp.path();
        RgbImage::from_pixel(4, 4, Rgb([5, 5, 5]))
            .save(d.join("a.png"))
            .unwrap();
        let mut s = ImageSequence::open(d, true, None).unwrap();
        assert!(s.next_frame().unwrap().is_some());
        RgbImage::from_pixel(4, 4, Rgb([6, 6, 6]))
            .save(d.join("b.png"))
            .unwrap();
        let names: Vec<String> = (0..3)
            .map(|_| s.next_frame().unwrap().unwrap().label.unwrap())
            .collect();
        assert!(
            names[0].ends_with("a.png") && names[1].ends_with("b.png"),
            "{names:?}"
        );
    }

    #[test]
    fn an_unreadable_frame_is_retried_not_corrupt() {
        let tmp = dir();
        let f = tmp.path().join("x.png");
        RgbImage::from_pixel(4, 4, Rgb([1, 1, 1])).save(&f).unwrap();
        let mut s = ImageSequence::open(tmp.path(), false, None).unwrap();
        // A directory where the frame was: reading fails with an I/O error (EISDIR), as EMFILE
        // or EIO would.
        std::fs::remove_file(&f).unwrap();
        std::fs::create_dir(&f).unwrap();
        let e = s.next_frame().unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Retry, "{e}");
        std::fs::remove_dir(&f).unwrap();
        RgbImage::from_pixel(4, 4, Rgb([1, 1, 1])).save(&f).unwrap();
        assert!(s.next_frame().unwrap().is_some());
        assert!(s.next_frame().unwrap().is_none());
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
